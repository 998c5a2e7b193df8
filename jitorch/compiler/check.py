"""Check mode (`jitorch.compile(fn, mode="check")`): every call runs compiled and eager from the same
state, keeps eager's effects, and compares outputs, every tensor the program writes and the state a
traced call created (optimizer buffers). On a difference it names the first IR node whose value
diverges from the reference kernels', with the user's source line.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..ir.graph import format_node
from ..ir.python_state import PythonState
from ..ir.pytree import flatten
from ..random import default_generator
from ..tensor import Tensor
from .program import Program


class CompileCheckError(AssertionError):
    """mode="check" found the compiled function disagreeing with the eager one."""


def run_checked(program: Program, fn: Callable, name: str, args: tuple, kwargs: dict, leaves: list,
                world: PythonState | None, kernels: dict[str, Callable] | None = None):
    """Run `program` and then `fn(*args, **kwargs)` eagerly from the same state; return eager's
    outputs, or raise CompileCheckError naming what differs. `world` is the Python state from
    before this call's trace, when this call traced; `kernels` replace the compiled run's (a test
    plants a wrong one to see it caught)."""
    state = _snapshot(program, leaves)
    rng_state = default_generator.get_state()
    inputs = program.inputs(leaves)
    frozen = [program.backend.copy(a) for a in inputs]
    record: dict = {}
    compiled_out = program.run(leaves, record, inputs, kernels=kernels)
    compiled_state = {label: value for label, (_, value) in _snapshot(program, leaves).items()}
    compiled_new = _host_copies(world.new_tensors()) if world is not None else {}
    _restore(state)
    if world is not None:
        world.restore()  # undo the trace's Python writes: the eager run makes its own
    default_generator.set_state(rng_state)
    eager_out = fn(*args, **kwargs)
    eager_state = {label: value for label, (_, value) in _snapshot(program, leaves).items()}
    eager_new = _host_copies(world.new_tensors()) if world is not None else {}
    problems = _compare(flatten(compiled_out)[0], flatten(eager_out)[0], "output")
    for what, compiled, eager in (("state", compiled_state, eager_state), ("new state", compiled_new, eager_new)):
        for label in sorted(compiled.keys() | eager.keys()):
            if label not in compiled or label not in eager:
                problems.append(f"{what} {label}: made by the {'eager' if label in eager else 'compiled'} run only")
            else:
                problems += _compare([compiled[label]], [eager[label]], f"{what} {label}")
    if problems:
        node = _first_diverging_node(program, frozen, record)
        raise CompileCheckError(
            f"jitorch.compile({name}, mode='check'): compiled and eager differ: "
            + "; ".join(problems) + (f". First diverging IR node: {node}" if node else "")
        )
    return eager_out


def _snapshot(program: Program, leaves: list) -> dict:
    """Host copies of everything the program reads or writes: {label: (where it lives, array)}; a
    grad lives at ("grad", p) and may be None."""
    state = {}
    info = program.info
    for i in program.graph.inputs:
        if i.kind == "lifted":
            state[i.label] = (i.ref, _host_copy(i.ref))
    for t, _ in info.writes:
        state.setdefault(program.label(t), (t, _host_copy(t)))
    for p, _ in info.grad_writes + [(p, None) for p, _ in info.grad_had]:
        g = p._grad
        state.setdefault(program.label(p) + ".grad", (("grad", p), None if g is None else _host_copy(g)))
    for i, _ in info.arg_writes:
        state.setdefault(f"arg{i}", (leaves[i], _host_copy(leaves[i])))
    for i, _ in info.arg_grad_writes:
        g = leaves[i]._grad
        state.setdefault(f"arg{i}.grad", (("grad", leaves[i]), None if g is None else _host_copy(g)))
    return state


def _host_copy(t: Tensor) -> np.ndarray:
    return np.array(t._backend().to_numpy(t._data), copy=True)


def _host_copies(tensors: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {name: _host_copy(t) for name, t in tensors.items()}


def _restore(state: dict) -> None:
    for target, value in state.values():
        if isinstance(target, tuple):
            p = target[1]
            if value is None:
                p._grad = None
            else:
                p._grad = Tensor._make(p._backend().from_numpy(np.array(value, copy=True)))
                p._grad._device = p._device
        else:
            backend = target._backend()
            backend.copy_into(target._data, backend.from_numpy(value))
            target._bump_version()


def _compare(compiled: list, eager: list, what: str, rtol: float = 1e-4) -> list[str]:
    problems = []
    for i, (a, b) in enumerate(zip(compiled, eager)):
        a = a._backend().to_numpy(a._data) if isinstance(a, Tensor) else a
        b = b._backend().to_numpy(b._data) if isinstance(b, Tensor) else b
        if a is None or b is None:
            if (a is None) != (b is None):
                problems.append(f"{what} {i}: one side is None")
            continue
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            if a64.shape != b64.shape:
                problems.append(f"{what} {i}: shape {a64.shape} vs {b64.shape}")
                continue
            err = np.linalg.norm(a64 - b64) / max(np.linalg.norm(b64), 1e-12)
            if not err <= rtol:
                problems.append(f"{what} {i}: relative error {err:.3g}")
        elif a != b:
            problems.append(f"{what} {i}: {a!r} vs {b!r}")
    return problems


def _first_diverging_node(program: Program, inputs: list, record: dict) -> str | None:
    """Re-run the program's graph on the same inputs with the reference kernels and return the first
    node whose value differs from the compiled run's."""
    reference: dict = {}
    program.plan.run(inputs, reference, kernels={})
    for node in program.graph.nodes:
        a, b = record.get(node.out.id), reference.get(node.out.id)
        if a is not None and b is not None and _compare([a], [b], "node"):
            return format_node(node)
    return None
