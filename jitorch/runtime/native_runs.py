"""Runs of a compiled program's steps as one native call, where the backend offers it (the CPU's
walks a table of fused kernels and BLAS calls with one fixed function: `Backend.compile_native_runs`).

Each step of a plan costs a Python call (the executor's loop, the launcher's argument marshalling,
numpy's matmul wrapper: microseconds), which at small shapes is most of a training step. Here the
plan's steps are walked once, when it is built, with every value's memory layout known:

- a value that a step writes into a buffer of its own (a fused kernel's or a product's output, in
  the memory plan's arena or a fresh array), a graph input or a Python step's result is a *root*;
- a view (reshape, permute, expand, a slice) of a value whose layout is known is a byte offset and
  strides from that value's root (`jitorch.ir.layouts.view_layout`: exactly numpy's view, and a
  reshape that numpy would copy is no view here).

Steps the backend takes (`runs_natively`) whose operands are all known become native ops, and
consecutive ones one `NativeRun` step: the views between them vanish. Every other step stays a
Python step; a view that one reads is made just before it. At run time a native run checks the
root buffers it reads (of their shapes and dtypes, C-contiguous, as assumed: a graph input or a
numpy result may be anything): a strided one is copied first, and where that cannot serve, the run
runs its original steps instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..backends import NativeOp, Operand
from ..ir.layouts import c_strides, view_layout
from ..primitives import VIEW_PRIMS

MIN_OPS = 1  # (even one kernel costs less host time as a run than through the launcher)


class NativeRun:
    """Steps of a plan run by one call of the backend's native function `fn(buffers)`."""

    __slots__ = ("fn", "reads", "makes", "written", "fallback", "frees", "names")

    def __init__(self, fn: Callable, reads: tuple, makes: tuple, fallback: tuple, names: tuple[str, ...]) -> None:
        self.fn = fn
        # (slot, shape, dtype, strides): roots read from the environment, table entries first; strides
        # None for a C-contiguous root, else the layout it is read in (declared by the backend)
        self.reads = reads
        self.makes = makes  # (slot, shape, dtype, arena slot or None, slot whose buffer it writes or None)
        self.written = frozenset(m[4] for m in makes if m[4] is not None)  # roots read that it writes into
        self.fallback = fallback  # the original steps, for a run whose roots are not as assumed
        self.frees: tuple[int, ...] = ()
        self.names = names  # what it runs, for logs

    def run(self, env: list, arena: dict | None, empty: Callable, copy: Callable) -> bool:
        """Run natively, writing the values it makes into `env`; False (nothing done) where a root
        buffer it reads is not as assumed. One that is only strided (a batch sliced from a larger
        array) is read from a C-contiguous copy, as a kernel's launch would copy it, unless the run
        writes into it."""
        buffers = []
        for slot, shape, dtype, strides in self.reads:
            array = env[slot]
            if array.shape != shape or array.dtype != dtype:
                return False
            if strides is not None:  # (a layout the backend declared: read in place, or not at all)
                if array.strides != strides:
                    return False
            elif not array.flags.c_contiguous:
                if slot in self.written:
                    return False
                array = copy(array)
            buffers.append(array)
        for slot, shape, dtype, planned, into in self.makes:
            if into is not None:
                env[slot] = env[into]
                continue
            buffer = arena.get(planned) if arena is not None and planned is not None else None
            env[slot] = buffer = empty(shape, dtype) if buffer is None else buffer
            buffers.append(buffer)
        self.fn(buffers)
        return True


class _Layouts:
    """Each slot's layout as the walk knows it: its root slot and an `Operand` (root, byte offset,
    shape, strides, dtype) there; a slot with none recorded is a root of its own, C-contiguous."""

    def __init__(self, values: dict[int, object]) -> None:
        self.values = values
        self.known: dict[int, Operand] = {}

    def root(self, slot: int, strides: tuple[int, ...]) -> None:
        """Record `slot` as a root of its own laid out with `strides` (a Python step's result whose
        layout the backend declares: `Backend.into_strides`)."""
        v = self.values[slot]
        self.known[slot] = Operand(slot, 0, tuple(v.shape), strides, np.dtype(v.dtype.np))

    def operand(self, slot: int) -> Operand:
        found = self.known.get(slot)
        if found is None:
            v = self.values[slot]
            dtype = np.dtype(v.dtype.np)
            found = self.known[slot] = Operand(slot, 0, tuple(v.shape), c_strides(v.shape, dtype.itemsize), dtype)
        return found

    def view(self, slot: int, source: int, op: str, params: dict) -> bool:
        """Record `slot` as view `op` of `source`, where it is one (else False)."""
        src = self.operand(source)
        found = view_layout(src.shape, src.strides, src.dtype, op, tuple(sorted(params.items())))
        if found is None:
            return False
        offset, shape, strides = found
        self.known[slot] = Operand(src.root, src.offset + offset, shape, strides, src.dtype)
        return True


def native_steps(plan, steps: list, prim_step: type, kernel_step: type) -> list | None:
    """`steps` with runs of native ops as `NativeRun`s, or None where the plan has none worth one
    (or sizes that are only known at run time)."""
    backend = plan.backend
    values = {plan.slot_of[inp.value.id]: inp.value for inp in plan.graph.inputs}
    values.update({plan.slot_of[n.out.id]: n.out for n in plan.graph.nodes})
    if any(v.symbolic for v in values.values()):
        return None
    layouts = _Layouts(values)
    arena_slots = {slot for slot, *_ in plan._arena_views}
    constants = dict(plan.constants)
    elided: dict[int, object] = {}  # slot -> the view step that would make it (not run unless needed)
    items: list = []  # (step, NativeOp over root slots, or None)
    for step in steps:
        if type(step) is prim_step and step.node.op in VIEW_PRIMS and len(step.ins) == 1:
            if layouts.view(step.out, step.ins[0], step.node.op, step.node.params):
                elided[step.out] = step
                continue
        items.append((step, _native_op(step, layouts, backend, prim_step, kernel_step)))
        if type(step) is prim_step and step.into is not None:
            v = values[step.out]
            strides = backend.into_strides(step.node.op, tuple(v.shape), np.dtype(v.dtype.np))
            if strides is not None:
                layouts.root(step.out, strides)
    if sum(op is not None for _, op in items) < MIN_OPS:
        return None

    out: list = []
    made: set[int] = set(range(plan.n_inputs)) | {slot for slot, _ in plan.constants}
    pending: list = []
    to_compile: list = []  # (run, (ops, roots, fixed buffers)): the program's runs, compiled in one go

    def view_steps(slots, into: list, seen: set | None = None) -> None:  # the elided views `slots` read, inputs first
        seen = {id(step) for step in into} if seen is None else seen
        for slot in slots:
            step = elided.get(slot)
            if step is not None and id(step) not in seen:
                seen.add(id(step))
                view_steps(step.ins, into, seen)
                into.append(step)

    def materialize(slots) -> None:
        needed: list = []
        view_steps([s for s in slots if s not in made], needed)
        for step in needed:
            out.append(step)
            made.add(step.out)

    def flush() -> None:
        if len(pending) >= MIN_OPS:
            run, compiled = _make_run(pending, values, arena_slots, constants, view_steps, layouts)
            out.append(run)
            to_compile.append((run, compiled))
        else:
            for step, _ in pending:
                materialize(step.ins)
                out.append(step)
        for step, _ in pending:
            made.update(_outputs(step, kernel_step))
        pending.clear()

    for step, op in items:
        if op is not None:
            pending.append((step, op))
            continue
        flush()
        materialize(step.ins)
        out.append(step)
        made.update(_outputs(step, kernel_step))
    flush()
    materialize(plan.output_slots)
    for (run, _), fn in zip(to_compile, backend.compile_native_runs([compiled for _, compiled in to_compile])):
        run.fn = fn
    return _with_frees(out, plan, kernel_step)


def _outputs(step, kernel_step: type) -> tuple[int, ...]:
    return step.outs if type(step) is kernel_step else (step.out,)


def _native_op(step, layouts: _Layouts, backend, prim_step: type, kernel_step: type) -> NativeOp | None:
    """The step as a native op over root slots (operands' `root`: a slot number), or None."""
    if type(step) is kernel_step:
        if any(into is not None and layouts.operand(into).root != into for into in step.overwrite):
            return None  # (an input it writes over must be a whole root buffer, not a view)
        ins = tuple(layouts.operand(s) for s in step.ins)
        outs = []
        for j, slot in enumerate(step.outs):
            into = step.overwrite[j] if step.overwrite else None
            outs.append(layouts.operand(into if into is not None else slot))
        op = NativeOp("kernel", ins, tuple(outs), kernel=step.kernel)
    elif type(step) is prim_step and step.node.op in ("reshape", "copy"):  # (a reshape here is one numpy copies)
        op = NativeOp("copy", (layouts.operand(step.ins[0]),), (layouts.operand(step.out),))
    elif type(step) is prim_step and step.node.op in ("matmul", "sum") and step.node.params.get("dtype") is None:
        ins = tuple(layouts.operand(s) for s in step.ins)
        op = NativeOp(step.node.op, ins, (layouts.operand(step.out),), params=step.node.params)
    else:
        return None
    return op if backend.runs_natively(op) else None


def _make_run(pending: list, values: dict, arena_slots: set[int], constants: dict,
              view_steps: Callable, layouts: _Layouts) -> tuple[NativeRun, tuple]:
    """One NativeRun of the (step, op) pairs in `pending` (its function still to compile), and what
    the backend compiles it from: (its ops, its number of roots, its fixed buffers). Roots are
    numbered reads first, then the buffers it makes, in the order its ops make them, then the
    plan's constants it reads."""
    made_here: dict[int, int | None] = {}  # slot -> the slot whose buffer it takes (overwrites), or None
    reads: list[int] = []
    for step, op in pending:
        for operand in op.ins:
            if operand.root not in made_here and operand.root not in reads:
                reads.append(operand.root)
        for j, slot in enumerate(step.outs if hasattr(step, "outs") else (step.out,)):
            into = op.outs[j].root if op.outs[j].root != slot else None
            if into is not None and into not in reads and into not in made_here:
                reads.append(into)
            made_here[slot] = into
    fresh = [slot for slot, into in made_here.items() if into is None]
    # constants the run reads are roots of fixed address (the plan holds them): the backend takes
    # their addresses once, not on every call
    fixed = [slot for slot in reads if _fixed(constants.get(slot), values[slot])]
    reads = [slot for slot in reads if slot not in fixed]
    number = {slot: k for k, slot in enumerate(reads + fresh + fixed)}
    for slot, into in made_here.items():
        if into is not None:
            number[slot] = number[into]
    ops = [dataclasses.replace(op, ins=tuple(dataclasses.replace(o, root=number[o.root]) for o in op.ins),
                               outs=tuple(dataclasses.replace(o, root=number[o.root]) for o in op.outs))
           for _, op in pending]

    def spec(slot: int) -> tuple:
        v = values[slot]
        return slot, tuple(v.shape), np.dtype(v.dtype.np)

    def read_spec(slot: int) -> tuple:  # (with the strides a root is read in, where not C-contiguous)
        operand = layouts.operand(slot)
        return spec(slot) + (None if operand.c_contiguous else operand.strides,)

    makes = tuple(spec(slot) + (slot if slot in arena_slots else None, into) for slot, into in made_here.items())
    fallback: list = []
    seen: set = set()
    for step, _ in pending:
        view_steps(step.ins, fallback, seen)
        fallback.append(step)
    # (their frees were for the plan's own order: a fallback frees nothing, the run's frees follow it)
    fallback = [dataclasses.replace(step, frees=()) for step in fallback]
    names = tuple(op.kernel.name if op.kind == "kernel" else op.kind for _, op in pending)
    run = NativeRun(None, tuple(read_spec(s) for s in reads), makes, tuple(fallback), names)
    return run, (ops, len(reads) + len(fresh) + len(fixed), tuple(constants[slot] for slot in fixed))


def _fixed(array, value) -> bool:
    """Whether `array` (a plan's constant, or None) can serve as a root of fixed address for `value`."""
    return (array is not None and array.flags.c_contiguous and tuple(array.shape) == tuple(value.shape)
            and array.dtype == np.dtype(value.dtype.np))


def _with_frees(steps: list, plan, kernel_step: type) -> list:
    """The steps with each one's `frees` made again for this order: the slots it is the last to read."""
    keep = set(plan.output_slots)
    last: dict[int, int] = {}
    for k, step in enumerate(steps):
        for slot in _reads(step):
            last[slot] = k
    result = []
    for k, step in enumerate(steps):
        frees = tuple(s for s in set(_reads(step)) if last[s] == k and s not in keep)
        if type(step) is NativeRun:
            step.frees = frees
            result.append(step)
        else:
            result.append(dataclasses.replace(step, frees=frees))
    return result


def _reads(step) -> tuple[int, ...]:
    if type(step) is NativeRun:
        return tuple(slot for slot, *_ in step.reads)
    return step.ins


def count(steps: list) -> tuple[int, int]:
    """(native runs, the ops they run) among `steps`, for logs."""
    runs = [s for s in steps if type(s) is NativeRun]
    return len(runs), sum(len(r.names) for r in runs)

