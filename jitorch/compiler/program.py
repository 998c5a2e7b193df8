"""A compiled program, one cache entry: it gathers its inputs, runs its plan, writes back what the
traced call wrote, returns the user's outputs, and gives them a compiled backward.

The backward of a traced call is traced into the same graph as its forward, then split off
(`jitorch.ir.joint`); here it becomes the `grad_fn` of the outputs, an autograd node whose vjp runs
the backward plan. A gradient that must itself be differentiable (`create_graph=True`) comes from
an eager rerun of the function instead (`_DoubleBackward`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .. import autograd as _ag
from .._trace_state import ModuleChanges
from ..autograd import Node as AutogradNode
from ..backends import Backend, backend_for
from ..ir.graph import Graph, Input
from ..ir.python_state import PythonState
from ..ir.pytree import flatten, unflatten
from ..ir.trace import TraceInfo
from ..primitives import Prim, PrimKind
from ..random import default_generator
from ..runtime.executor import Plan
from ..tensor import Tensor
from .guards import describe_guard


@dataclass(slots=True)
class CompiledBackward:
    """The backward half of a program's traced graph, run when autograd differentiates its outputs."""

    plan: Plan  # inputs: the saved forward values, then a cotangent per differentiable output
    n_saved: int  # how many values the forward saves for it (its last outputs)
    out_slots: list[int]  # the forward's output slot of each differentiable output
    diff_refs: list  # each differentiable input: its argument's leaf index, or the lifted tensor itself
    used: list[bool]  # per differentiable input: whether it gets a gradient (the plan computes only those)


class _LiftedGuard(NamedTuple):
    """A lifted tensor, and what the program was traced for: it applies only while these still hold."""

    tensor: Tensor
    shape: tuple
    dtype: np.dtype
    requires_grad: bool
    device: object  # a jitorch.device: a model moved in place after tracing needs another program


def program_device(graph: Graph, leaves: list):
    """The device a program runs on: its tensor inputs' (all on one, as eager ops require, but for
    CPU scalars such as an optimizer's hyperparameters), or None when it reads no tensor."""
    devices = []
    for inp in graph.inputs:
        t = leaves[inp.ref] if inp.kind == "arg" else inp.ref
        if isinstance(t, Tensor):
            devices.append(t._device)
    return next((d for d in devices if d.type != "cpu"), devices[0] if devices else None)


class Program:
    """A traced, optimized graph plus what the runtime reads, writes back and checks."""

    def __init__(self, graph: Graph, info: TraceInfo, out_treedef, out_consts: list, backend: Backend,
                 device, backward: CompiledBackward | None = None) -> None:
        self.graph = graph
        self.backend = backend
        self.device = device
        self.plan = Plan(graph, backend, overwrites=_overwrites(graph, info, backward))
        self.info = info
        self.out_treedef = out_treedef
        self.out_consts = out_consts
        self.backward = backward
        self.one_shot: str | None = None  # why this program serves one call only (it is then traced again)
        self.trace_world: PythonState | None = None  # the Python state before its trace, until its first run
        self.graphed = None  # mode="reduce-overhead": its device graph and why or why not (compiler/cudagraphs.py)
        self.computes: str | None = None  # the traced graph's `dag_key` after optimization (see dynamic.py)
        self.fetch = [(i.kind, i.ref) for i in graph.inputs]
        self.lifted_guards = [_LiftedGuard(i.ref, i.ref._data.shape, i.ref._data.dtype, i.ref.requires_grad,
                                           i.ref._device) for i in graph.inputs if i.kind == "lifted"]
        self.grad_guards = info.grad_had
        self.python_guards = info.python_guards
        self.module_guards = info.module_guards
        self.modules_checked = -1  # ModuleChanges.count when the module guards last passed
        self.writes_anything = bool(info.writes or info.born_writes or info.arg_writes or info.grad_writes
                                    or info.arg_grad_writes
                                    or info.escaped)
        # an output that is an input unchanged is returned as that very tensor, as eagerly
        by_value = {i.value.id: i for i in graph.inputs if i.kind in ("arg", "lifted")}
        # ... unless the call also writes that tensor: then the output is its value from before the
        # write (as `w * 1` or `w.clone()` would be eagerly; a view of it would have been traced as
        # a view of the new value), copied before the write-back
        written, written_args = {id(t) for t, _ in info.writes}, {i for i, _ in info.arg_writes}

        def overwritten(inp: Input) -> bool:
            return id(inp.ref) in written if inp.kind == "lifted" else inp.ref in written_args

        changed = {slot for slot in info.user_out if slot is not None and graph.outputs[slot].id in by_value
                   and overwritten(by_value[graph.outputs[slot].id])}
        self.passthrough = {slot: by_value[graph.outputs[slot].id] for slot in info.user_out
                            if slot is not None and graph.outputs[slot].id in by_value and slot not in changed}
        self.before_writes = sorted(changed)  # output slots to copy before the write-back

    # --- guards -------------------------------------------------------------------------
    def guard_failure(self, leaves: list) -> str | None:
        """Why this entry does not apply to the current state and the call's argument `leaves`
        (None when it does)."""
        for i, had in self.info.arg_grad_had:
            if (leaves[i]._grad is not None) != had:
                state = ("None", "a tensor") if not had else ("a tensor", "None")
                return f"arg{i}.grad: {state[0]} -> {state[1]}"
        for t, shape, dtype, rg, device in self.lifted_guards:
            if t._data.shape != shape or t._data.dtype != dtype or t.requires_grad != rg or t._device is not device:
                return (f"lifted tensor {self.label(t)}: shape {tuple(shape)} {dtype.name} on {device} "
                        f"requires_grad={rg} -> {tuple(t._data.shape)} {t._data.dtype.name} on {t._device} "
                        f"requires_grad={t.requires_grad}")
        for p, had in self.grad_guards:
            if (p._grad is not None) != had:
                state = ("None", "a tensor") if not had else ("a tensor", "None")
                return f"{self.label(p)}.grad: {state[0]} -> {state[1]}"
        for guard in self.python_guards:
            now = guard.read()
            if now != guard.expected:
                return guard.reason(guard.expected, now)
        changes = ModuleChanges.count
        if changes != self.modules_checked:  # some module changed since: is it one of ours?
            for guard in self.module_guards:
                change = guard.change()
                if change is not None:
                    return change
            self.modules_checked = changes
        return None

    def label(self, t) -> str:
        """The name of tensor `t` among the program's inputs (`model.fc1.weight`)."""
        for inp in self.graph.inputs:
            if inp.ref is t:
                return inp.label
        return f"tensor{list(t.shape)}"

    def guard_text(self, arg_paths: list[str], key: tuple) -> str:
        """Every guard of this program, one per line, for `explain` and the guards log."""
        _, arg_guards, (grad_mode, autocast) = key
        lines = [f"grad mode is {'on' if grad_mode else 'off'}"]
        if autocast:
            lines.append("autocast: " + ", ".join(f"{device} {dtype}" for device, dtype in autocast))
        lines += [f"arg {p}: {describe_guard(g)}" for p, g in zip(arg_paths, arg_guards)]
        lines += [f"lifted {self.label(g.tensor)}: shape {tuple(g.shape)} {g.dtype.name}"
                  + ("" if g.device.type == "cpu" else f" on {g.device}")
                  + f" requires_grad={g.requires_grad}" for g in self.lifted_guards]
        lines += [f"{self.label(p)}.grad is {'a tensor' if had else 'None'}" for p, had in self.grad_guards]
        lines += [f"arg {arg_paths[i]}.grad is {'a tensor' if had else 'None'}" for i, had in self.info.arg_grad_had]
        lines += [f"{g.label}: {g.show(g.expected)}" for g in self.python_guards]
        lines += [guard.show() for guard in self.module_guards]
        return "\n".join(lines)

    # --- running ------------------------------------------------------------------------
    def inputs(self, leaves: list) -> list[np.ndarray]:
        """The arrays the graph reads on this call, in the order of its inputs."""
        arrays = []
        for kind, ref in self.fetch:
            value = self.read_input(kind, ref, leaves)
            arrays.append(value if kind in ("arg", "lifted", "grad", "arg_grad") else self.backend.from_numpy(value))
        return arrays

    def read_input(self, kind: str, ref, leaves: list):
        """This call's value of one graph input (`fetch`'s kind and ref): a tensor's buffer, or a
        random-number input as a numpy scalar (see `random_input`)."""
        if kind == "arg":
            return leaves[ref]._data
        if kind == "lifted":
            return ref._data
        if kind == "grad":
            return ref._grad._data
        if kind == "arg_grad":  # (the call's key says the argument has one, as when traced)
            return leaves[ref]._grad._data
        if kind == "size":  # (a symbolic size used as a number: its value for this program's sizes)
            return np.array(ref, dtype=np.int64)
        return self.random_input(ref)

    def random_input(self, ref: str) -> np.ndarray:
        """This call's value of a random-number input: "seed" (the generator's seed, its 64 bits as
        an int64) or "counter" (the first of the counters this call's draws take, as eager draws
        would: it advances the generator)."""
        if ref == "seed":
            return np.array((default_generator.initial_seed() + 2**63) % 2**64 - 2**63, dtype=np.int64)
        return np.array(default_generator.take(self.info.random_count), dtype=np.int64)

    @property
    def draws_random(self) -> bool:
        return any(kind == "rng" for kind, _ in self.fetch)

    def run(self, leaves: list, record: dict | None = None, inputs: list | None = None,
            rerun: Callable[[], object] | None = None, kernels: dict[str, Callable] | None = None):
        """Execute on the current arguments and state; write back; return the user's outputs.
        `rerun` calls the function again eagerly: double backward differentiates that. `record` and
        `kernels` are the executor's (see `Plan.run`)."""
        if inputs is None:
            inputs = self.inputs(leaves)
        results = self.plan.run(inputs, record, kernels)
        for slot in self.before_writes:
            results[slot] = self.backend.copy(results[slot])
        self._write_back(leaves, results, inputs)
        return self.outputs(leaves, results, rerun)

    def outputs(self, leaves: list, results: list, rerun: Callable[[], object] | None = None,
                fresh: Callable | None = None):
        """The user's outputs of a run that computed `results`, each a tensor of its own (`fresh`
        copies a result that must not stay where the run left it), with the compiled backward attached."""
        outs = []
        it = iter(self.out_consts)
        for slot in self.info.user_out:
            if slot is None:
                outs.append(next(it))
            elif slot in self.passthrough:
                inp = self.passthrough[slot]
                outs.append(leaves[inp.ref] if inp.kind == "arg" else inp.ref)
            else:
                outs.append(self._tensor(results[slot] if fresh is None else fresh(results[slot])))
        if self.backward is not None and _ag._grad_mode.enabled:
            self._attach_backward(leaves, outs, results, rerun)
        return unflatten(self.out_treedef, outs)

    def write_targets(self, leaves: list) -> list[tuple[Tensor, int]]:
        """(tensor, output slot) of every in-place write this call makes, but `.grad` and escaped state."""
        info = self.info
        targets = list(info.writes)
        targets += [(ref(), slot) for ref, slot in info.born_writes if ref() is not None]
        targets += [(leaves[i], slot) for i, slot in info.arg_writes]
        return targets

    def _write_back(self, leaves: list, results: list, inputs: list) -> None:
        if not self.writes_anything:
            return
        info = self.info
        input_ids = {id(a) for a in inputs}
        targets = self.write_targets(leaves)
        # results may be views of inputs that are about to be overwritten: copy those first
        staged = [(t, None if results[slot] is t._data else self._owned(results[slot], input_ids))
                  for t, slot in targets]
        for t, value in staged:
            if value is not None:  # (None: the plan wrote the new value into the tensor's own buffer)
                t._backend().copy_into(t._data, self._placed(value, t._device))
            t._bump_version()
        self.set_grads(leaves, results, lambda data: self._owned(data, input_ids))
        for ref, slot in info.escaped:
            t = ref()
            if t is not None:  # a traced value the function stored away becomes a real tensor, where it was made
                value = self._placed(self._owned(results[slot], input_ids), t._device)
                t._data, t._value, t._base, t.grad_fn = value, None, None, None

    def set_grads(self, leaves: list, results: list, own: Callable) -> None:
        """Every `.grad` the call set (a parameter's, a tensor argument's): None, or a tensor of the
        result `own` makes a buffer of its own."""
        info = self.info
        targets = info.grad_writes + [(leaves[i], slot) for i, slot in info.arg_grad_writes]
        for p, slot in targets:
            p._grad = None if slot is None else self._tensor(own(results[slot]))

    def _placed(self, data, device):
        """A result as a buffer of `device`: a program on the GPU also updates CPU scalars (a step
        count, as PyTorch keeps it on the CPU), which get host copies."""
        if device is None or self.device is None or device is self.device:
            return data
        return backend_for(device.type).from_numpy(self.backend.to_numpy(data))

    def _tensor(self, data) -> Tensor:
        """A result as a tensor of the program's device, owning its buffer."""
        t = Tensor._make(data if self.backend.owns_buffer(data) else self.backend.copy(data))
        if self.device is not None:
            t._device = self.device
        return t

    def _owned(self, data, input_ids: set):
        backend = self.backend
        return data if backend.owns_buffer(data) and id(data) not in input_ids else backend.copy(data)

    def _attach_backward(self, leaves: list, outs: list, results: list, rerun) -> None:
        backward = self.backward
        diff_inputs = tuple(leaves[ref] if isinstance(ref, int) else ref for ref in backward.diff_refs)
        if not any(t.requires_grad for t in diff_inputs):
            return
        saved = results[len(results) - backward.n_saved:]
        user_slots = self.info.user_out
        shapes = [results[s] for s in backward.out_slots]
        double = _DoubleBackward(self, rerun, diff_inputs)
        for k, slot in enumerate(backward.out_slots):
            out = outs[user_slots.index(slot)]
            if slot in self.passthrough:
                continue  # an input returned as is keeps its own autograd identity
            vjp = _backward_vjp(backward.plan, saved, k, shapes, backward.used,
                                functools.partial(double, user_slots.index(slot)))
            out.grad_fn = AutogradNode(_COMPILED_BACKWARD, diff_inputs, {}, out, vjp=vjp)
            out.requires_grad = True


def _overwrites(graph: Graph, info: TraceInfo, backward: CompiledBackward | None) -> dict[int, int]:
    """Graph output index -> graph input index, for outputs read by nothing but the write-back of
    the tensor that input is (a parameter's or a state's update, an argument written in place): the
    plan may compute them straight into that tensor's buffer (`Plan`'s `overwrites`)."""
    lifted = {id(inp.ref): i for i, inp in enumerate(graph.inputs) if inp.kind == "lifted"}
    args = {inp.ref: i for i, inp in enumerate(graph.inputs) if inp.kind == "arg"}
    wanted = {slot: lifted.get(id(t)) for t, slot in info.writes}
    wanted.update({slot: args.get(leaf) for leaf, slot in info.arg_writes})
    read_otherwise = [slot for slot in info.user_out if slot is not None]
    read_otherwise += [slot for _, slot in info.grad_writes + info.arg_grad_writes if slot is not None]
    read_otherwise += [slot for _, slot in info.escaped] + [slot for _, slot in info.born_writes]
    if backward is not None:
        read_otherwise += list(range(len(graph.outputs) - backward.n_saved, len(graph.outputs)))
        read_otherwise += list(backward.out_slots)
    written = [slot for _, slot in info.writes] + [slot for _, slot in info.arg_writes]
    return {slot: i for slot, i in wanted.items()
            if i is not None and slot not in read_otherwise and written.count(slot) == 1}


class _DoubleBackward:
    """A gradient that must itself be differentiable (`create_graph=True`): the compiled backward
    computes arrays with no graph behind them, so the function runs again eagerly (`rerun`) and
    autograd differentiates that run. Refused, with the reason, where a rerun would not be the same
    computation: the function writes state (an optimizer step would be applied twice), draws
    random numbers, or its inputs were modified in place since the call."""

    def __init__(self, program: Program, rerun: Callable[[], object] | None, inputs: tuple) -> None:
        self.program, self.rerun, self.inputs = program, rerun, inputs
        self.versions = [t._version for t in inputs]

    def __call__(self, out_index: int, g: Tensor, used: list[bool]) -> tuple:
        program = self.program
        why = ("it writes tensors or state" if program.writes_anything
               else "it draws random numbers" if program.draws_random
               else "it was called without its arguments" if self.rerun is None
               else "an input was modified in place after the call"
               if [t._version for t in self.inputs] != self.versions else None)
        if why is not None:
            raise RuntimeError(
                f"double backward (create_graph=True) through the compiled function "
                f"{program.graph.name} needs an eager rerun of it, and {why}. Take the gradient of an "
                "uncompiled function, or compile with mode='eager'.")
        leaves, _, _ = flatten(self.rerun())
        grads = _ag.grad([leaves[out_index]], [t for t, u in zip(self.inputs, used) if u], [g],
                         create_graph=True, allow_unused=True)
        it = iter(grads)
        return tuple(next(it) if u else None for u in used)


_COMPILED_BACKWARD = Prim("compiled_backward", PrimKind.EXTERN, None)  # the node type of those outputs


def _backward_vjp(plan: Plan, saved: list, k: int, outs: list, used: list[bool], double: Callable) -> Callable:
    """The vjp of output k: runs the compiled backward graph; `used` says which differentiable
    inputs get a gradient (the graph computes only those). Under `create_graph=True` it is
    `double`'s, which keeps a graph."""

    def vjp(g: Tensor, node):
        if _ag._grad_mode.enabled:  # backward with create_graph=True
            return double(g, used)
        backend = plan.backend
        cots = []
        for o in outs:
            cot = backend.empty(o.shape, o.dtype)
            backend.copy_into(cot, g._data if len(cots) == k else backend.from_numpy(np.zeros((), o.dtype)))
            cots.append(cot)
        grads = iter(plan.run(list(saved) + cots))
        return tuple(_grad(backend.copy(next(grads)), t) if u else None for u, t in zip(used, node.inputs))

    return vjp


def _grad(data, like: Tensor) -> Tensor:
    g = Tensor._make(data)
    g._device = like._device
    return g
