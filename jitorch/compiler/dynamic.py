"""Dynamic shapes: one trace over size symbols serves every size of the dims it made symbolic.

`jitorch.compile(fn, dynamic=None | True | False)` and `jitorch.mark_dynamic(t, dim)`, as in
PyTorch: with `None` (the default) an argument dim whose size changes between calls is made
symbolic on the recompile (automatic dynamic shapes); `True` makes every argument dim symbolic from
the first call; `False` never does. `dynamic_dims` says which dims of which argument leaves are
symbolic for a call, and `masked_key` is the call's cache key with those sizes left out.

A trace with symbols (`jitorch.ir.symbolic`) becomes a `SymbolicProgram`: its graph, whose shapes
and params are expressions, and the guards it recorded. A call binds the symbols to its argument
sizes (`ShapeEnv.bind`: the guards must answer as they did) and runs the `Program` lowered from the
graph specialized to those sizes: lowered once per distinct set of sizes, without tracing again
(kernels take their sizes at run time, so each size finds the kernels already compiled).

Trust, but check: a size the trace read without the SymInt seeing it would be baked into the graph
as a constant. So a symbolic trace is compared, at one set of sizes other than the one it traced,
with a concrete trace at those sizes (the program an automatic recompile replaces, else a trace
made for the purpose): equal graphs, or the function goes back to a program per size, with the
reason in the recompile log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .. import logs
from ..ir.graph import Graph, format_node
from ..symbolic import ShapeEnv
from ..tensor import Tensor
from .program import Program


def mark_dynamic(t: Tensor, dim: int | list[int] | tuple[int, ...]) -> None:
    """Make `t`'s dim (or dims) symbolic in the trace of any compiled function it is passed to (PyTorch's
    `torch._dynamo.mark_dynamic`): that trace then serves every size of the dim, with no recompile."""
    if not isinstance(t, Tensor):
        raise TypeError(f"mark_dynamic: expected a Tensor, got {type(t).__name__}")
    dims = [dim] if isinstance(dim, int) else list(dim)
    for d in dims:
        if not isinstance(d, int) or not -t.ndim <= d < max(t.ndim, 1):
            raise IndexError(f"mark_dynamic: dim {d!r} is out of range for a tensor of shape {tuple(t.shape)}")
    t._dynamic_dims = frozenset(t._dynamic_dims or ()) | {d % t.ndim for d in dims}


def marked_dims(leaves: list) -> dict[int, set[int]]:
    """The dims `mark_dynamic` marked on the argument leaves: {leaf index: dims}."""
    return {i: set(x._dynamic_dims) for i, x in enumerate(leaves)
            if isinstance(x, Tensor) and x._dynamic_dims}


def all_dims(leaves: list) -> dict[int, set[int]]:
    """Every dim of every tensor leaf (`dynamic=True`)."""
    return {i: set(range(x.ndim)) for i, x in enumerate(leaves) if isinstance(x, Tensor) and x.ndim}


def changed_dims(old_key: tuple, new_key: tuple) -> dict[int, set[int]] | None:
    """The argument dims whose sizes differ between two cache keys that differ only there (same
    structure, dtypes, devices, ranks); None where anything else differs too."""
    (t_old, leaves_old, rest_old), (t_new, leaves_new, rest_new) = old_key, new_key
    if t_old != t_new or rest_old != rest_new or len(leaves_old) != len(leaves_new):
        return None
    found: dict[int, set[int]] = {}
    for i, (a, b) in enumerate(zip(leaves_old, leaves_new)):
        if a == b:
            continue
        if a[0] != "tensor" or b[0] != "tensor" or a[2:] != b[2:] or len(a[1]) != len(b[1]):
            return None
        found[i] = {k for k, (x, y) in enumerate(zip(a[1], b[1])) if x != y}
    return found or None


def masked_key(key: tuple, dims: dict[int, set[int]]) -> tuple:
    """A call's cache key with the sizes of its symbolic dims replaced by None."""
    if not dims:
        return key
    treedef, leaves, rest = key
    leaves = list(leaves)
    for i, ds in dims.items():
        guard = leaves[i]
        if guard[0] == "tensor":
            shape = tuple(None if k in ds else d for k, d in enumerate(guard[1]))
            leaves[i] = (guard[0], shape, *guard[2:])
    return (treedef, tuple(leaves), rest)


def leaf_shapes(leaves: list) -> list[tuple[int, ...] | None]:
    return [tuple(x._data.shape) if isinstance(x, Tensor) else None for x in leaves]


class SymbolicProgram:
    """A cache entry for a trace over size symbols: `program_for(leaves)` gives the Program for a
    call's sizes (lowered on first use of those sizes), or None and why the trace does not apply.

    `lower(env, constants)` lowers the trace's graph specialized to symbol values `env` into a
    Program (with `constants`, sizes used as numbers are constants, as a concrete trace has them:
    for the check; else inputs, so that fused kernels serve every size);
    `concrete(leaves)` traces the function without symbols for a call's leaves (the check, see the module
    docstring); `reference` is a concrete Program traced earlier at other sizes and its leaves'
    shapes, to check against without a trace."""

    def __init__(self, name: str, graph: Graph, env: ShapeEnv, lower: Callable[[dict[str, int], bool], Program],
                 concrete: Callable[[list], Program]) -> None:
        self.name = name
        self.graph = graph  # the trace, over the symbols (before optimization)
        self.env = env
        self.lower = lower
        self.concrete = concrete
        self.symbols = list(env.sources)
        self.programs: dict[tuple[int, ...], Program] = {}
        self.checked = False
        self.broken: str | None = None  # why the symbolic trace can't be trusted (it then serves no call)

    def check_against(self, program: Program, shapes: list) -> None:
        """Compare with `program`, a concrete trace of a call whose leaves had `shapes`."""
        env, _ = self.env.bind(shapes)
        if env is None:
            return  # (sizes this trace does not cover: the check waits for a call it does)
        self.checked = True
        self.broken = _difference(self.lower(env, True), program)
        if self.broken is None:  # the same computation: keep the program already run (its device graph)
            self.programs[tuple(env[s] for s in self.symbols)] = program

    def program_for(self, leaves: list) -> tuple[Program | None, str | None]:
        if self.broken is not None:
            return None, self.broken
        shapes = leaf_shapes(leaves)
        env, reason = self.env.bind(shapes)
        if env is None:
            return None, reason
        if not self.checked and any(env[s] != self.env.hints[s] for s in self.symbols):
            self.checked = True
            self.broken = _difference(self.lower(env, True), self.concrete(leaves))
            if self.broken is not None:
                return None, self.broken
        program = self._program(env)
        failure = program.guard_failure(leaves)
        return (program, None) if failure is None else (None, failure)

    def _program(self, env: dict[str, int]) -> Program:
        values = tuple(env[s] for s in self.symbols)
        program = self.programs.get(values)
        if program is None:
            started = time.perf_counter()
            program = self.programs[values] = self.lower(env, False)
            logs.log("perf", f"{self.name}: lowered for {self._sizes(env)} in "
                             f"{(time.perf_counter() - started) * 1e3:.1f} ms (no trace)")
        return program

    def _sizes(self, env: dict[str, int]) -> str:
        return ", ".join(f"{self.env.label(s)}={env[s]}" for s in self.symbols)

    def graph_text(self) -> str:
        return self.graph.format()

    def describe(self) -> list[str]:
        """The symbols and guards, and the sizes lowered so far, in words (for `explain`)."""
        lines = ["symbolic sizes:"] + ["  " + line for line in self.env.describe()]
        lines.append(f"  lowered for {len(self.programs)} set(s) of sizes: "
                     + "; ".join(", ".join(f"{s}={v}" for s, v in zip(self.symbols, values))
                                 for values in self.programs))
        return lines


def _difference(symbolic: Program, concrete: Program) -> str | None:
    """None where the two programs compute the same graphs; else what differs, in words."""
    if symbolic.computes == concrete.computes:
        return None
    return ("dynamic shapes: the trace depends on a size in a way its symbols do not follow"
            + _first_difference(symbolic.graph, concrete.graph) + "; compiling each size on its own")


def _first_difference(a: Graph, b: Graph) -> str:
    """Where two graphs first differ, for the message: a node of `a` that `b` has nothing like."""
    theirs = {(n.op, n.params_key(), n.out.type_str()) for n in b.nodes}
    for n in a.nodes:
        if (n.op, n.params_key(), n.out.type_str()) not in theirs:
            return f" (at {n.source or 'a node'}: {format_node(n, False)})"
    return ""
