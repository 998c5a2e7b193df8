"""The executor of compiled programs: a graph as a list of steps over numbered slots, run by the
backend of the program's device.

A step is a `PrimStep` (one primitive on the backend's eager kernel) or a `KernelStep` (a fused
kernel that computes several nodes in one pass: `jitorch.ir.fusion` groups them, the backend
compiles them). The unfused steps are the reference: `mode="check"` compares against them, and a
run given `kernels` (primitive name -> kernel) runs them with those kernels in place of the
backend's (tests plant a wrong one and see check mode name it).

Memory: fused kernels' outputs, and those of eager kernels that can write into a given buffer
(matmul, im2col on the CPU), that the program uses only inside itself live in an arena planned
when the program is built (`_plan_memory`): values whose lifetimes do not overlap share a buffer,
so replays do not allocate them again. Graph outputs are always fresh arrays (the caller keeps
them). `JITORCH_CPU_FUSION=0` (read when a program is built) turns fusion off.

Where the backend offers native runs (the CPU's), consecutive steps it can take run as one call
(`native_runs.py`): `run_steps` is the plan as a run goes through it; `steps` stay the plan's own,
which profiles, check mode and recording run one by one.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import logs
from ..backends import Backend, backend_for
from ..errors import FusionWarning
from ..ir.fusion import (
    Kernel,
    KernelGroup,
    MatmulEpilogue,
    absorb_matmul_epilogues,
    describe,
    group_horizontally,
    partition,
)
from ..ir.graph import Graph, Node, Value, format_node
from ..primitives import PRIMS, VIEW_PRIMS, PrimKind
from .native_runs import NativeRun, native_steps
from .native_runs import count as count_runs

step_observer = None  # while `jitorch.profiler.profile` records: told of each step a plan runs


def fusion_enabled() -> bool:
    return os.environ.get("JITORCH_CPU_FUSION", "1") != "0"


_FRESH_KINDS = frozenset({PrimKind.REDUCE, PrimKind.MATMUL})  # eager kernels whose outputs never alias an input


@dataclass(frozen=True, slots=True)
class PrimStep:
    """One node on the backend's eager kernel: env[out] = kernel(*env[ins], **node.params); or, when
    the plan gave its output an arena buffer, the backend's kernel that writes into one (`into`)."""

    node: Node
    kernel: Callable
    ins: tuple[int, ...]
    out: int
    frees: tuple[int, ...]  # slots whose last reader this step is
    into: Callable | None = None  # into(buffer, *inputs, **params) -> the output (the buffer, or its own)
    # a view of a buffer that stays put (an arena buffer, a constant, a view of one): [(that buffer,
    # the view)] from the last run, handed out again while the step reads the same buffer object
    memo: list | None = None


@dataclass(frozen=True, slots=True)
class KernelStep:
    """A compiled fused kernel: env[outs] = kernel.run(env[ins], outs=arena buffers where planned)."""

    kernel: object  # the backend's launchable kernel: .run(inputs, outs) -> outputs (None in outs: allocate)
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    frees: tuple[int, ...]
    arena: tuple[int | None, ...]  # per output: its buffer in the program's arena, or None (fresh)
    overwrite: tuple[int | None, ...] = ()  # per output: the input slot whose buffer it is written into, if any


_QUIET = contextlib.nullcontext()  # (reusable: it holds no state)


class Plan:
    """A graph flattened into steps over numbered slots, freeing each value after its last use."""

    def __init__(self, graph: Graph, backend: Backend | None = None, fuse: bool | None = None,
                 overwrites: dict[int, int] | None = None) -> None:
        """`overwrites`: graph output index -> graph input index, for outputs that only replace that
        input's value (a parameter's update written back into it): where it is safe, the fused kernel
        that computes the output writes it straight into the input's buffer (see `_overwrites`)."""
        self.graph = graph
        self.overwrites = overwrites or {}
        self.backend = backend if backend is not None else backend_for("cpu")
        self.slot_of: dict[int, int] = {inp.value.id: i for i, inp in enumerate(graph.inputs)}
        self.n_inputs = len(graph.inputs)
        for node in graph.nodes:
            self.slot_of[node.out.id] = len(self.slot_of)
        self.n_slots = len(self.slot_of)
        self.output_slots = [self.slot_of[v.id] for v in graph.outputs]
        self.constants = [(self.slot_of[n.out.id], self.backend.from_numpy(n.params["value"].array))
                          for n in graph.nodes if n.op == "const"]
        self.reference_steps = self._steps([n for n in graph.nodes if n.op != "const"], {})
        self.kernels: list = []
        self.steps = self.reference_steps
        self.arena_sizes: list[int] = []  # bytes of each arena buffer
        self._arena_views: list[tuple[int, int, tuple[int, ...], np.dtype]] = []  # (value slot, buffer, shape, dtype)
        self._arenas: list[dict[int, object]] = []  # free arenas (slot -> its array), one per concurrent run
        if fuse if fuse is not None else fusion_enabled():
            self.steps = self._fused_steps()
        # the steps as one run goes through them: runs of native ops in one call where the backend
        # offers it (`native_runs`); `steps` stay the plan's own (profiles and checks go step by step)
        self.run_steps = self.steps
        if self.steps is not self.reference_steps:
            self.run_steps = native_steps(self, self.steps, PrimStep, KernelStep) or self.steps
            if self.run_steps is not self.steps:
                runs, ops = count_runs(self.run_steps)
                logs.log("fusion", f"{graph.name}: {runs} native runs take {ops} of its {len(self.steps)} steps")
                if logs.enabled("kernels"):
                    for k, run in enumerate(r for r in self.run_steps if type(r) is NativeRun):
                        logs.log("kernels", f"native run {k}:\n" + getattr(run.fn, "source", ""))
        # numpy's error state matters only to steps on numpy kernels that compute (a fused kernel or
        # a view raises no floating-point warning): a plan of fused kernels and views alone skips
        # setting it (a context manager's entry and exit a call)
        self.kernels_only = all(type(step) is not PrimStep or step.node.op in VIEW_PRIMS for step in self.steps)

    def _fused_steps(self) -> list:
        backend = self.backend
        order = partition(self.graph, lambda n: n.op != "const" and backend.can_fuse(n), backend.worth_a_kernel,
                          column_sums=backend.fuses_column_sums, scalars_together=not backend.groups_kernels,
                          side_chains=backend.joins_side_chains)
        descs = {id(k): describe(k) for k in order if isinstance(k, Kernel)}
        if backend.fuses_matmul_epilogues:
            order = absorb_matmul_epilogues(self.graph, order, descs, backend.takes_matmul_epilogue)
        if backend.groups_kernels:
            order = group_horizontally(order, descs)
        kernels = [k for k in order if isinstance(k, (Kernel, KernelGroup, MatmulEpilogue))]
        if not kernels:
            return self.reference_steps
        try:
            self.kernels = backend.compile_kernels([descs[id(k)] if isinstance(k, Kernel) else k for k in kernels])
        except Exception as err:  # a code generator bug must not take the user's program down with it
            warnings.warn(FusionWarning(
                f"{self.graph.name}: the fused {backend.device_type} kernels failed to compile "
                f"({type(err).__name__}: {err}); this program runs on the eager kernels instead. Please "
                "report it with the output of JITORCH_LOGS=fusion,kernels."), stacklevel=2)
            return self.reference_steps
        fused = sum(len(k.nodes) for k in kernels)
        logs.log("fusion", f"{self.graph.name}: {len(kernels)} fused kernels compute {fused} of "
                           f"{len(self.graph.nodes)} nodes\n" + "\n".join(k.format() for k in kernels))
        if logs.enabled("kernels"):
            for kernel in self.kernels:
                logs.log("kernels", kernel.source)
        compiled = dict(zip(map(id, kernels), self.kernels))
        items = [compiled.get(id(k), k) for k in order if not (isinstance(k, Node) and k.op == "const")]
        return self._steps(items, self._plan_memory(items), self._overwrites(items))

    def _overwrites(self, items: list) -> dict[int, int]:
        """Value id -> the slot of the graph input whose buffer the fused kernel making it writes into:
        for each output that `overwrites` allows, when a pointwise kernel (a row kernel rereads its
        input after writing) makes it from that input read element for element (same shape and
        dtype), and nothing reads the input, or a view of it, after that kernel. The old value is then
        dead when the new one is written over it, and no copy is needed to write it back."""
        graph = self.graph
        maker: dict[int, int] = {}
        last_read: dict[int, int] = {}
        views: dict[int, list[int]] = {}  # value id -> ids of the views eager steps made of it
        may_view = VIEW_PRIMS | self.backend.plan_kernels.keys()  # (a plan's cat may be a view too)
        for step, item in enumerate(items):
            made = [item.out] if isinstance(item, Node) else item.kernel.outputs
            for v in made:
                maker[v.id] = step
            for v in item.inputs if isinstance(item, Node) else item.kernel.inputs:
                last_read[v.id] = step
                if isinstance(item, Node) and item.op in may_view:
                    views.setdefault(v.id, []).append(item.out.id)
        output_ids = [v.id for v in graph.outputs]
        found: dict[int, int] = {}
        taken: set[int] = set()  # inputs whose buffers an output takes
        for out_index, in_index in self.overwrites.items():
            v, u = graph.outputs[out_index], graph.inputs[in_index].value
            step = maker.get(v.id)
            if (step is None or output_ids.count(v.id) != 1 or u.id in output_ids or u.id in taken
                    or v.shape != u.shape or v.dtype != u.dtype):
                continue
            item = items[step]
            making = None if isinstance(item, Node) else item.kernel.in_place_maker(v)
            if making is None:
                continue
            kernel, others = making  # (others: what the rest of its launch reads, which must not be u)
            if kernel.shape != v.shape:
                continue
            family, stack = set(), [u.id]  # u and every view of it
            while stack:
                w = stack.pop()
                if w not in family:
                    family.add(w)
                    stack.extend(views.get(w, ()))
            if any(last_read.get(w, -1) > step for w in family) or family & (set(output_ids) | others):
                continue
            reads = {w.id for w in kernel.inputs}
            if u.id not in reads or (reads & family) != {u.id}:  # read only as itself, element for element
                continue
            found[v.id] = self.slot_of[u.id]
            taken.add(u.id)
        return found

    def _steps(self, items: list, arena_of: dict[int, int], overwrite: dict[int, int] | None = None) -> list:
        slot_of = self.slot_of
        reads = [item.inputs if isinstance(item, Node) else item.kernel.inputs for item in items]
        last_use: dict[int, int] = {}
        for step, values in enumerate(reads):
            for v in values:
                last_use[v.id] = step
        keep = {v.id for v in self.graph.outputs}
        kernels, plan_kernels = self.backend.kernels, self.backend.plan_kernels
        # values whose buffer is the same object on every run (with the same arena): views of them
        # are remade only when it is not (a view step costs a backend call and an array object)
        settled = set(arena_of) | {n.out.id for n in self.graph.nodes if n.op == "const"} if arena_of else set()
        steps = []
        for step, (item, values) in enumerate(zip(items, reads)):
            frees = tuple(slot_of[v.id] for v in set(values) if last_use.get(v.id) == step and v.id not in keep)
            ins = tuple(slot_of[v.id] for v in values)
            if isinstance(item, Node):
                into = self.backend.kernels_into.get(item.op) if item.out.id in arena_of else None
                kernel = (item.out.id not in keep and plan_kernels.get(item.op)) or kernels[item.op]
                memo = None
                if item.op in VIEW_PRIMS and item.inputs[0].id in settled and item.out.id not in keep:
                    settled.add(item.out.id)
                    memo = [(None, None)]
                steps.append(PrimStep(item, kernel, ins, slot_of[item.out.id], frees, into, memo))
            else:
                outs = tuple(slot_of[v.id] for v in item.kernel.outputs)
                into = tuple((overwrite or {}).get(v.id) for v in item.kernel.outputs)
                steps.append(KernelStep(item, ins, outs, frees, tuple(arena_of.get(v.id) for v in item.kernel.outputs),
                                        into if any(i is not None for i in into) else ()))
        return steps

    def _plan_memory(self, items: list) -> dict[int, int]:
        """Arena buffers for values read only inside the program that fused kernels, or eager
        kernels able to write into a given buffer (`Backend.kernels_into`), make: value id -> buffer
        index. A value's buffer is busy from the step that writes it to the last step that reads it
        or any value another eager step made from it (an eager kernel may return a view of its input;
        a reduction's or a product's is always a new array: a parameter's gradient summed from a buffer
        leaves the buffer in the arena)."""
        writes_into = self.backend.kernels_into
        step_of: dict[int, int] = {}
        readers: dict[int, list[int]] = {}
        derived: dict[int, list[Value]] = {}  # value id -> values eager steps made from it
        for step, item in enumerate(items):
            made = [item.out] if isinstance(item, Node) else item.kernel.outputs
            reads = item.inputs if isinstance(item, Node) else item.kernel.inputs
            for v in made:
                step_of[v.id] = step
            for v in reads:
                readers.setdefault(v.id, []).append(step)
                if isinstance(item, Node) and item.op not in writes_into and item.op in PRIMS \
                        and PRIMS[item.op].kind not in _FRESH_KINDS:
                    derived.setdefault(v.id, []).append(item.out)
        outputs = {v.id for v in self.graph.outputs}
        candidates = []
        for item in items:
            if isinstance(item, Node) and item.op not in writes_into:
                continue
            for v in [item.out] if isinstance(item, Node) else item.kernel.outputs:
                end, escapes = step_of[v.id], False
                stack, seen = [v], set()
                while stack:
                    u = stack.pop()
                    if u.id in seen:
                        continue
                    seen.add(u.id)
                    escapes |= u.id in outputs
                    end = max([end, *readers.get(u.id, ())])
                    stack.extend(derived.get(u.id, ()))
                if not escapes:
                    nbytes = math.prod(v.shape) * v.dtype.np.itemsize
                    candidates.append((step_of[v.id], end, nbytes, v))
        free_at: list[int] = []  # per buffer: the last step it is busy
        arena_of: dict[int, int] = {}
        for start, end, nbytes, v in sorted(candidates, key=lambda c: (c[0], -c[2])):
            fits = [b for b in range(len(free_at)) if free_at[b] < start and self.arena_sizes[b] >= nbytes]
            if fits:
                b = min(fits, key=lambda b: self.arena_sizes[b])
            else:
                b = len(free_at)
                free_at.append(0)
                self.arena_sizes.append(nbytes)
            free_at[b] = end
            arena_of[v.id] = b
            self._arena_views.append((self.slot_of[v.id], b, v.shape, v.dtype.np))
        return arena_of

    def _take_arena(self) -> dict[int, object]:
        if self._arenas:
            return self._arenas.pop()
        buffers = [self.backend.empty((size,), np.dtype(np.uint8)) for size in self.arena_sizes]
        return {slot: _typed(buffers[b], shape, dtype) for slot, b, shape, dtype in self._arena_views}

    def reserve_arena(self) -> dict[int, object] | None:
        """A set of the memory plan's buffers that the caller keeps and passes to every `run` (a
        captured device graph writes the same buffers on each replay, so no other run may take
        them); None where the plan has no arena."""
        return self._take_arena() if self._arena_views else None

    def run(self, inputs: list, record: dict | None = None, kernels: dict[str, Callable] | None = None,
            arena: dict[int, object] | None = None) -> list:
        """Evaluate the graph. With `record`, store every value it materializes there by value id.
        With `kernels` (even empty), run the unfused reference steps, taking a primitive's kernel
        from `kernels` where it has one. `arena`: buffers from `reserve_arena` (else the run takes
        a free set and gives it back)."""
        env: list = [None] * self.n_slots
        env[: self.n_inputs] = inputs
        for slot, array in self.constants:
            env[slot] = array
        observer = step_observer  # (None but while `jitorch.profiler` records)
        if kernels is not None:
            steps = self.reference_steps
        else:
            steps = self.steps if record is not None or observer is not None else self.run_steps
        reserved = arena is not None
        if not reserved:
            arena = self._take_arena() if self._arena_views and kernels is None else None
        try:
            with _QUIET if steps is not self.reference_steps and self.kernels_only else np.errstate(all="ignore"):
                self._run_steps(steps, env, arena, kernels, record, observer)
        finally:
            if arena is not None and not reserved:
                self._arenas.append(arena)
        return [env[i] for i in self.output_slots]

    def _run_steps(self, steps, env: list, arena: dict | None, kernels: dict[str, Callable] | None,
                   record: dict | None, observer) -> None:
        """Run `steps` over `env` (a native run whose root buffers are not as it assumed runs its
        original steps here, through the same loop)."""
        buffer_type, as_buffer = self.backend.buffer_type, self.backend.as_buffer
        for step in steps:
            if type(step) is NativeRun:
                if not step.run(env, arena, self.backend.empty, self.backend.copy):
                    self._run_steps(step.fallback, env, arena, None, None, None)
                for i in step.frees:
                    env[i] = None
                continue
            args = [env[i] for i in step.ins]
            if observer is not None:
                began = observer.begin(self.backend)
            try:
                if type(step) is PrimStep:
                    if step.memo is not None:
                        source, result = step.memo[0]  # (one tuple: another thread may replace it)
                        if source is not args[0]:
                            result = _remembered_view(step, args, self.backend, source)
                    elif step.into is not None and arena is not None:
                        result = step.into(arena[step.out], *args, **step.node.params)
                    else:
                        kernel = kernels.get(step.node.op, step.kernel) if kernels else step.kernel
                        result = kernel(*args, **step.node.params)
                    env[step.out] = result if type(result) is buffer_type else as_buffer(result)
                else:
                    outs = None if arena is None else [arena.get(slot) for slot in step.outs]
                    if step.overwrite:
                        outs = _overwritten(step, env, outs, buffer_type)
                    results = step.kernel.run(args, outs)
                    for slot, result in zip(step.outs, results):
                        env[slot] = result
            except Exception as err:
                raise _step_error(step, args, err) from err
            if observer is not None:
                observer.end(began, step.node.op if type(step) is PrimStep else step.kernel.name)
            if record is not None:
                _record(step, env, record, self.backend)
            for i in step.frees:
                env[i] = None


_MOVED = object()  # a view step's memo once the buffer it reads has changed between runs


def _remembered_view(step: PrimStep, args: list, backend: Backend, source):
    """A view step's result where its memo does not have it: made, and remembered after a first run
    (when it is a view: a reshape may have had to copy); a buffer that changes between runs (another
    arena, a kernel that answered in an array of its own) ends the remembering, so that the memo
    never keeps a buffer of a finished run alive."""
    view = step.kernel(*args, **step.node.params)
    if type(view) is not backend.buffer_type:
        view = backend.as_buffer(view)
    if source is None and backend.is_view_of(view, args[0]):
        step.memo[0] = (args[0], view)
    elif source is not None and source is not _MOVED:
        step.memo[0] = (_MOVED, None)
    return view


def _overwritten(step: KernelStep, env: list, outs: list | None, buffer_type: type) -> list:
    """The output buffers of a kernel step that writes some outputs over its inputs' buffers: those
    inputs' arrays, where they are C-contiguous buffers of the backend (else a fresh array and the
    usual copy back)."""
    outs = list(outs) if outs is not None else [None] * len(step.outs)
    for j, slot in enumerate(step.overwrite):
        if slot is not None:
            buffer = env[slot]
            if type(buffer) is buffer_type and buffer.flags.c_contiguous:
                outs[j] = buffer
    return outs


def _typed(buffer, shape: tuple[int, ...], dtype: np.dtype):
    return buffer[: math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)


def _record(step, env: list, record: dict, backend: Backend) -> None:
    if type(step) is PrimStep:  # (an arena buffer is reused later in the run: keep a copy)
        record[step.node.out.id] = backend.copy(env[step.out]) if step.into is not None else env[step.out]
    else:  # arena buffers are reused later in the run: keep copies
        for v, slot in zip(step.kernel.kernel.outputs, step.outs):
            record[v.id] = backend.copy(env[slot])


def _step_error(step, args: list, err: Exception) -> RuntimeError:
    shapes = ", ".join(str(getattr(a, "shape", None)) for a in args)
    where = format_node(step.node) if type(step) is PrimStep else step.kernel.kernel.format()
    return RuntimeError(f"compiled program failed at `{where}` on input shapes [{shapes}]: {err}")
