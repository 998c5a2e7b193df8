"""The user-facing side of `jitorch.compile`: `compile` (torch.compile's interface), `CompiledFunction`
(call, cache lookup, tracing a call into a `Program`, `explain`), `disable`, `is_compiling`
and `forget_programs` (for `jitorch.compiler.reset`). A compiled Module is wrapped by nn's
`OptimizedModule` (`Module._wrapped_by_compile`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import inspect
import os
import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .. import autograd as _ag
from .. import logs
from .._trace_state import trace_state
from ..backends import backend_for, wide_autotuning
from ..ir.graph import Graph, Value
from ..ir.joint import prune_inputs, split_joint
from ..ir.passes import optimize
from ..ir.python_state import PythonState
from ..ir.pytree import flatten, unflatten
from ..ir.trace import TraceError, TraceInfo, Tracer
from ..runtime.executor import Plan
from ..symbolic import ShapeEnv, SizeEscape, concrete, strict
from ..tensor import Tensor
from .check import run_checked
from .cudagraphs import GraphedProgram
from .dynamic import SymbolicProgram, all_dims, changed_dims, leaf_shapes, marked_dims, masked_key
from .guards import call_key, diff_keys, free_python_values, module_labels, named_objects
from .program import CompiledBackward, Program, program_device

RECOMPILE_LIMIT = 8
# mode -> (replay a device graph, search launch configurations wide): PyTorch's four, and jitorch's
# "eager" and "check" (neither graphs nor tuning: they run the Python)
MODES = {"default": (False, False), "reduce-overhead": (True, False), "max-autotune": (True, True),
         "max-autotune-no-cudagraphs": (False, True), "eager": (False, False), "check": (False, False)}
# torch.compile's `backend`: jitorch's own name, PyTorch's default's (the compiler a script asks for
# without naming it) and "eager" (trace nothing: the Python as written, as mode="eager")
BACKENDS = ("jitorch", "inductor", "eager")
# torch.compile's `options` that mean something here: Inductor's names for what the modes set
OPTIONS = {"triton.cudagraphs": "replay the program as a CUDA graph (what mode='reduce-overhead' turns on)",
           "max_autotune": "time a wider set of launch configurations per kernel (mode='max-autotune')"}


class _DisableState(threading.local):
    depth = 0


_disable = _DisableState()


@contextlib.contextmanager
def disable():
    """Inside this block every compiled function runs its plain Python, eagerly.

        with jitorch.compiler.disable():
            loss = train_step(x, y)  # pdb and print work inside train_step
    """
    _disable.depth += 1
    try:
        yield
    finally:
        _disable.depth -= 1


def _eager_forced() -> bool:
    return _disable.depth > 0 or _disabled_by_environment()


# JITORCH_DISABLE may be set while the program runs (a test, a debugging session), so it is read on
# every compiled call; `os.environ.get` encodes the key each time, a sizeable share of a call on
# tiny inputs (`python bench/compile.py` times those), so the lookup goes to the mapping os.environ
# keeps underneath, by the key encoded once, where this Python has one (CPython's `_data`)
_ENV_DATA = getattr(os.environ, "_data", None)
_DISABLE_KEY = os.environ.encodekey("JITORCH_DISABLE") if hasattr(os.environ, "encodekey") else None


def _disabled_by_environment() -> bool:
    if type(_ENV_DATA) is not dict or _DISABLE_KEY is None:
        return os.environ.get("JITORCH_DISABLE", "") not in ("", "0")
    value = _ENV_DATA.get(_DISABLE_KEY)
    return value is not None and os.environ.decodevalue(value) not in ("", "0")


@contextlib.contextmanager
def _gc_paused():
    """Tracing and lowering allocate many small objects (values, nodes, tracer tensors) that all live
    until the program is built; Python's cyclic collector would walk that growing heap again and
    again meanwhile (`python bench/compile.py` times trace + lowering). Paused for that span only."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class _Gradients:
    """The gradients of a traced call's differentiable outputs, traced while recording it. Its
    tensors are traced ones: it never leaves `CompiledFunction._record`."""

    diff_leaves: list[int]  # which output leaves are differentiable
    diff_refs: list  # each differentiable input: its argument's leaf index, or the lifted tensor itself
    used: list[bool]  # per differentiable input: whether the outputs depend on it
    grads: list[tuple[Tensor, str]]  # each used input's gradient, and its label as a graph output


@dataclass
class _Traced:
    """One traced call, before lowering: its graph (forward outputs, then the backward's gradients
    when traced into it), what the runtime needs, and its size symbols (None: all sizes concrete)."""

    graph: Graph
    n_fwd: int  # the forward's outputs: the graph's first ones
    info: TraceInfo
    out_treedef: object
    out_consts: list
    joint: _JointBackward | None
    world: PythonState | None  # the Python state before the trace, for the first program's first run
    env: ShapeEnv | None


@dataclass
class _JointBackward:
    """The same, as graph values: the backward traced into the call's graph, still to be split off."""

    diff_refs: list
    used: list[bool]
    out_slots: list[int]  # the graph's output slot of each differentiable output
    grads: list[tuple[Value, str]]


_every_compiled: weakref.WeakSet = weakref.WeakSet()  # (for `forget_programs`)


class CompiledFunction:
    """What `jitorch.compile(fn)` returns: call it like `fn`; see `explain()` for what it did."""

    def __init__(self, fn: Callable, mode: str = "default", fallback: str | None = None,
                 name: str | None = None, options: dict | None = None, dynamic: bool | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"jitorch.compile: mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if fallback not in (None, "eager"):
            raise ValueError(f"jitorch.compile: fallback must be None or 'eager', got {fallback!r}")
        self.fn = fn
        self.mode = mode
        _every_compiled.add(self)
        self.graphs, self.wide_autotuning = MODES[mode]
        if options:  # (compile() has checked the keys)
            self.graphs = bool(options.get("triton.cudagraphs", self.graphs))
            self.wide_autotuning = bool(options.get("max_autotune", self.wide_autotuning))
        self.fallback = fallback
        self.name = name or getattr(fn, "__qualname__", getattr(fn, "__name__", type(fn).__name__))
        self.dynamic = dynamic
        self._auto_dims: dict[int, set[int]] = {}  # argument dims made symbolic after their size changed
        self._static_only: str | None = None  # why symbolic traces are off for this function (see dynamic.py)
        self._last_concrete: tuple[Program, list, tuple] | None = None  # see _previous_program
        self.cache: dict[tuple, list[Program | SymbolicProgram]] = {}
        self.calls = self.hits = self.compiles = 0
        self.recompile_reasons: list[str] = []
        self._changed = Counter()
        self._warned_limit = False
        self._fell_back: str | None = None
        self._last_key: tuple | None = None
        self._one_shot_reason: str | None = None
        self._last_paths: list[str] = []
        self.trace_seconds: list[float] = []
        # primitive name -> kernel, used by check mode's compiled run instead of the real kernels: a
        # test plants a wrong one to see check mode catch it and name the node
        self._planted_kernels: dict[str, Callable] | None = None
        try:
            self._signature = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None
        plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = list(self._signature.parameters.values()) if self._signature is not None else []
        # names of the leading plain positional parameters (stop at *args: it binds differently)
        self._positional = []
        self._tensor_trees: dict[int, tuple[list[str], tuple]] = {}  # see _tensor_arguments
        for p in params:
            if p.kind not in plain:
                break
            self._positional.append(p.name)
        functools.update_wrapper(self, fn, updated=())

    # --- call ---------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if self.mode == "eager" or _eager_forced() or self._fell_back or trace_state.tracer is not None:
            return self.fn(*args, **kwargs)  # (a compiled call inside a trace is simply inlined)
        self.calls += 1
        flat = None if kwargs else self._tensor_arguments(args)
        if flat is None:
            named, call = self._bind(args, kwargs)
            leaves, paths, treedef = flatten(named)
        else:
            (paths, treedef), leaves, call = flat, list(args), None
        key, dims = self._key(treedef, leaves)
        program, reason = self._lookup(key, leaves)
        if program is None:
            if call is None:
                call = self._bind(args, kwargs)[1]
            key, dims = self._widen(key, dims, treedef, leaves)
            try:
                program = self._compile(call, leaves, paths, key, reason, dims)
            except TraceError as err:
                if self.fallback != "eager":
                    raise
                self._fell_back = str(err)
                warnings.warn(f"jitorch.compile({self.name}) falls back to eager: {err}", stacklevel=2)
                return self.fn(*args, **kwargs)
        else:
            self.hits += 1
        world, program.trace_world = program.trace_world, None
        if self.mode == "check":
            out = run_checked(program, self.fn, self.name, args, kwargs, leaves, world, self._planted_kernels)
        elif self.graphs:
            out = self._graphed(program).run(leaves, rerun=lambda: self._rerun(args, kwargs))
        else:
            out = program.run(leaves, rerun=lambda: self._rerun(args, kwargs))
        if program.one_shot:
            self._drop(key, program)
        return out

    def _graphed(self, program: Program) -> GraphedProgram:
        """The program's device-graph state under mode="reduce-overhead" or "max-autotune" (made on its
        first call)."""
        if program.graphed is None:
            program.graphed = GraphedProgram(program, self.name)
        return program.graphed

    def _rerun(self, args: tuple, kwargs: dict):
        """The function called again, eagerly all the way down (double backward differentiates it)."""
        with disable():
            return self.fn(*args, **kwargs)

    def _tensor_arguments(self, args: tuple) -> tuple[list[str], tuple] | None:
        """For positional arguments that are all tensors (the usual call): (their paths, the
        treedef `flatten` gives their dict of names), made once per count; else None."""
        if len(args) > len(self._positional):
            return None
        for a in args:
            if not isinstance(a, Tensor):
                return None
        found = self._tensor_trees.get(len(args))
        if found is None:
            names = self._positional[: len(args)]
            _, paths, treedef = flatten(dict(zip(names, args)))
            found = self._tensor_trees[len(args)] = (paths, treedef)
        return found

    def _bind(self, args: tuple, kwargs: dict):
        """The arguments keyed by parameter name (so guards and logs say `x`, `batch[0]`), and a
        function that calls `fn` again with such a dict of (traced) values."""
        if not kwargs and len(args) <= len(self._positional):
            # the common call: positional arguments only, no binding machinery needed
            return dict(zip(self._positional, args)), lambda named: self.fn(*named.values())
        if self._signature is not None:
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError:
                pass  # let the call itself raise Python's own error below
            else:
                signature = bound.signature
                return dict(bound.arguments), lambda named: self._call_bound(signature, named)
        return {"args": args, "kwargs": kwargs}, lambda named: self.fn(*named["args"], **named["kwargs"])

    def _call_bound(self, signature: inspect.Signature, named: dict):
        bound = inspect.BoundArguments(signature, dict(named))
        return self.fn(*bound.args, **bound.kwargs)

    def _key(self, treedef, leaves: list) -> tuple[tuple, dict[int, set[int]]]:
        """A call's cache key, and the argument dims its trace makes symbolic (left out of the key)."""
        key = call_key(treedef, leaves)
        if self._static_only is not None or self.dynamic is False:
            return key, {}
        dims = all_dims(leaves) if self.dynamic else {i: set(d) for i, d in self._auto_dims.items()}
        for i, marked in marked_dims(leaves).items():
            dims.setdefault(i, set()).update(marked)
        return (masked_key(key, dims) if dims else key), dims

    def _widen(self, key: tuple, dims: dict[int, set[int]], treedef, leaves: list
               ) -> tuple[tuple, dict[int, set[int]]]:
        """Automatic dynamic shapes (dynamic=None): on a miss where only argument sizes changed since
        the last compile, those dims become symbolic from now on."""
        if self.dynamic is not None or self._static_only is not None or self._last_key is None:
            return key, dims
        changed = changed_dims(self._last_key, key)
        if not changed:
            return key, dims
        for i, ds in changed.items():
            self._auto_dims.setdefault(i, set()).update(ds)
            dims.setdefault(i, set()).update(ds)
        return masked_key(call_key(treedef, leaves), dims), dims

    def _lookup(self, key: tuple, leaves: list) -> tuple[Program | None, str | None]:
        entries = self.cache.get(key)
        reason, self._one_shot_reason = self._one_shot_reason, None
        if entries:
            for entry in entries:
                if isinstance(entry, SymbolicProgram):
                    program, failure = entry.program_for(leaves)
                    if entry.broken is not None:
                        self._go_static(entry.broken)
                        return None, entry.broken
                else:
                    program, failure = entry, entry.guard_failure(leaves)
                if failure is None:
                    return program, None
                reason = failure
        elif self._last_key is not None and reason is None:
            diffs = diff_keys(self._last_key, key, self._last_paths)
            for what, _ in diffs:
                self._changed[what] += 1
            reason = "; ".join(f"{what}: {how}" for what, how in diffs) or "new arguments"
        return None, reason

    def _go_static(self, reason: str) -> None:
        """Symbolic traces off for this function from now on: a program per size, as dynamic=False."""
        self._static_only = reason
        self.recompile_reasons.append(reason)
        logs.log("recompiles", f"{self.name}: {reason}")
        self._last_key = None

    def _drop(self, key: tuple, program: Program) -> None:
        entries = self.cache.get(key, [])
        if program in entries:
            entries.remove(program)
        self._one_shot_reason = program.one_shot

    # --- compile ------------------------------------------------------------------------
    def _compile(self, call, leaves, paths, key, reason, dims: dict[int, set[int]] | None = None) -> Program:
        if reason is not None:
            self.recompile_reasons.append(reason)
            logs.log("recompiles", f"{self.name}: recompiling because {reason}")
            self._maybe_warn_limit()
        t0 = time.perf_counter()
        previous = self._previous_program(key, dims or {})
        try:
            with _gc_paused(), wide_autotuning(self.wide_autotuning):
                traced = self._record_call(call, leaves, paths, key[0], dims)
                entry = self._entry(traced, call, leaves, paths, key[0])
                if isinstance(entry, SymbolicProgram) and previous is not None:
                    entry.check_against(*previous)
                program, failure = entry.program_for(leaves) if isinstance(entry, SymbolicProgram) else (entry, None)
        except Exception as err:
            if not dims:
                raise
            # (the same function traced with plain sizes: it works as before, or raises the user's own error)
            entry = None
            failure = (f"dynamic shapes: tracing with symbolic sizes failed ({type(err).__name__}: {err}); "
                       "compiling each size on its own")
        if entry is None or isinstance(entry, SymbolicProgram) and entry.broken is not None:
            self._go_static(failure if entry is None else entry.broken)
            return self._compile(call, leaves, paths, call_key(key[0], leaves), None)
        if program is None:  # (the trace's own guards failing at its own sizes: a bug, said plainly)
            raise RuntimeError(f"jitorch.compile({self.name}): a symbolic trace does not apply to the call it "
                               f"traced ({failure}); compile with dynamic=False")
        self.trace_seconds.append(time.perf_counter() - t0)
        self.compiles += 1
        logs.log("perf", f"{self.name}: traced and lowered in {self.trace_seconds[-1] * 1e3:.1f} ms")
        if isinstance(entry, SymbolicProgram):
            logs.log("guards", f"{self.name}:\n" + "\n".join(entry.describe()))
        logs.log("graph", f"{self.name}:\n{program.graph.format()}")
        logs.log("guards", f"{self.name}:\n{program.guard_text(paths, key)}")
        if isinstance(entry, SymbolicProgram):
            self.cache.setdefault(key, []).append(entry)
        else:  # (under the call's own sizes: a program traced with symbols that serves one call only)
            self.cache.setdefault(call_key(key[0], leaves) if dims else key, []).append(entry)
            if not dims and program.one_shot is None:  # (a one-shot trace baked state a later one reads)
                self._last_concrete = (program, leaf_shapes(leaves), key)
        self._last_key, self._last_paths = key, paths
        return program

    def _previous_program(self, key: tuple, dims: dict[int, set[int]]) -> tuple[Program, list] | None:
        """The program of the last concrete trace and its call's argument shapes, where that call
        differed from this one (cache key `key`, symbolic `dims`) in sizes only: a symbolic trace
        made now is checked against it (see dynamic.py)."""
        if self._last_key is None or self._last_concrete is None:
            return None
        program, shapes, concrete_key = self._last_concrete
        return (program, shapes) if masked_key(concrete_key, dims) == key else None

    def _maybe_warn_limit(self) -> None:
        if self.compiles >= RECOMPILE_LIMIT and not self._warned_limit:
            self._warned_limit = True
            culprit = self._changed.most_common(1)
            if self.recompile_reasons and "writes Python state" in self.recompile_reasons[-1]:
                advice = (f"{self.recompile_reasons[-1]}. Keep such values in tensors (a step counter as "
                          "jitorch.tensor(0.0), updated in place) so the compiled program can update them")
            else:
                what = culprit[0][0] if culprit else "the guarded state"
                advice = (f"{what} keeps changing. If it is a size, let it be symbolic (dynamic=True, or "
                          "jitorch.mark_dynamic(tensor, dim)); else pad or bucket that argument to a few shapes")
            warnings.warn(f"jitorch.compile({self.name}) has recompiled {self.compiles} times; {advice}, "
                          "or compile with mode='eager'.", stacklevel=4)

    def _trace(self, call, leaves: list, paths: list[str], treedef) -> Program:
        """A concrete trace of a call (no symbols), lowered."""
        return self._lower(self._record_call(call, leaves, paths, treedef), leaves)

    def _record_call(self, call, leaves: list, paths: list[str], treedef,
                     dims: dict[int, set[int]] | None = None) -> _Traced:
        """Trace a call into a graph (its forward, and the backward traced into it), over size
        symbols for the argument dims in `dims`."""
        env = ShapeEnv() if dims else None
        tracer = Tracer(self.name, module_labels(self.fn), env, dims)
        roots = named_objects(self.fn) + [(f"arg {p}", x) for x, p in zip(leaves, paths) if not isinstance(x, Tensor)]
        world = PythonState(roots, tracer.label)  # before the trace: what Python state did it write?
        with tracer:
            info, out_treedef, out_consts, joint = self._record(tracer, call, leaves, paths, treedef)
        info.python_writes = world.writes()
        for t in tracer.release():
            tracer.graph.add_output(t._value, "escaped state")
            info.escaped.append((weakref.ref(t), len(tracer.graph.outputs) - 1))
        n_fwd = len(tracer.graph.outputs)
        if joint is not None:
            for value, label in joint.grads:
                tracer.graph.add_output(value, label)
        return _Traced(tracer.graph, n_fwd, info, out_treedef, out_consts, joint, world,
                       env if env is not None and env.sources else None)

    def _entry(self, traced: _Traced, call, leaves: list, paths: list[str], treedef) -> Program | SymbolicProgram:
        """The cache entry of a trace: a Program, or a SymbolicProgram where the trace has size symbols
        (and writes no Python state: such a program serves one call, traced for its sizes)."""
        info, env = traced.info, traced.env
        if env is None or info.python_writes or info.escaped or info.born_writes:
            return self._lower(traced, leaves, env.hints if env is not None else None)
        split = self._split_symbolic(traced)

        def lower(values: dict[str, int], constants: bool) -> Program:
            with _gc_paused():
                if constants or split is None:
                    return self._lower(traced, leaves, values, constants)
                forward, backward, n_saved = split
                sized = dataclasses.replace(info, random_count=concrete(info.random_count, values))
                return self._program(traced, sized, forward.specialized(values),
                                     backward and backward.specialized(values), n_saved, leaves)

        return SymbolicProgram(self.name, traced.graph, env, lower,
                               lambda now: self._trace(call, now, paths, treedef))

    def _lower(self, traced: _Traced, leaves: list, env: dict[str, int] | None = None,
               sizes_as_constants: bool = False) -> Program:
        """A traced graph (specialized to symbol values `env` where it has symbols: see
        `Graph.specialized`) optimized, split into forward and backward, and planned on the
        arguments' device."""
        info, joint = traced.info, traced.joint
        graph = traced.graph
        if env is not None:
            graph = graph.specialized(env, sizes_as_constants)
            info = dataclasses.replace(info, random_count=concrete(info.random_count, env))
        graph = optimize(graph)
        prune_inputs(graph)
        computes = graph.dag_key()  # (what a symbolic trace is checked by: see dynamic.py)
        bwd_graph = n_saved = None
        if joint is not None:
            graph, bwd_graph, n_saved = split_joint(graph, traced.n_fwd)
        program = self._program(traced, info, graph, bwd_graph, n_saved, leaves)
        program.computes = computes
        return program

    def _split_symbolic(self, traced: _Traced) -> tuple[Graph, Graph | None, int | None] | None:
        """A symbolic trace optimized and split once, over its symbols, so that each size only
        specializes and plans the two halves; None where a pass needs a size as a number (each
        size is then optimized on its own: `_lower`)."""
        try:
            with strict(), _gc_paused():
                graph = optimize(traced.graph.copy())
                prune_inputs(graph)
                if traced.joint is None:
                    return graph, None, None
                return split_joint(graph, traced.n_fwd)
        except SizeEscape as err:
            logs.log("perf", f"{self.name}: the symbolic graph is optimized per size ({err})")
            return None

    def _program(self, traced: _Traced, info: TraceInfo, graph: Graph, bwd_graph: Graph | None,
                 n_saved: int | None, leaves: list) -> Program:
        """The Program of an optimized forward graph (and its backward), planned on the arguments' device."""
        device = program_device(graph, leaves)
        backend = backend_for(device.type if device is not None else "cpu")
        backward = None
        if bwd_graph is not None:
            joint = traced.joint
            backward = CompiledBackward(plan=Plan(bwd_graph, backend), n_saved=n_saved, out_slots=joint.out_slots,
                                        diff_refs=joint.diff_refs, used=joint.used)
        program = Program(graph, info, traced.out_treedef, traced.out_consts, backend, device, backward)
        program.trace_world, traced.world = traced.world, None  # (the first program's first run reads it)
        if info.python_writes:
            program.one_shot = ("the function writes Python state that a replay would not repeat ("
                                + ", ".join(map(str, info.python_writes[:3])) + "); it is traced on every call")
        elif info.escaped or any(ref() is not None for ref, _ in info.born_writes):
            program.one_shot = ("the previous call created state (e.g. optimizer buffers) that the trace had "
                                "baked in; tracing again with that state as inputs")
        return program

    def _record(self, tracer: Tracer, call, leaves: list, paths: list[str], treedef
                ) -> tuple[TraceInfo, object, list, _JointBackward | None]:
        """Run the function on traced arguments. Only values and plain data leave this frame, so
        that traced tensors still alive afterwards are exactly the ones the function stored away."""
        traced_leaves = [tracer.arg(x, path, i) if isinstance(x, Tensor) else x
                         for i, (x, path) in enumerate(zip(leaves, paths))]
        arg_tensors = [(t, i) for i, t in enumerate(traced_leaves) if isinstance(t, Tensor)]
        for key, label, read in free_python_values(self.fn):
            tracer.note_python_value(key, label, read)
        out = call(unflatten(treedef, traced_leaves))
        out_leaves, out_paths, out_treedef = flatten(out)
        gradients = self._trace_backward(tracer, out_leaves, out_paths, arg_tensors)
        info = tracer.finish(out_leaves, out_paths, arg_tensors)
        out_consts = [x for x in out_leaves if not isinstance(x, Tensor)]
        joint = None
        if gradients is not None:
            joint = _JointBackward(diff_refs=gradients.diff_refs, used=gradients.used,
                                   out_slots=[info.user_out[i] for i in gradients.diff_leaves],
                                   grads=[(tracer.value_of(g), label) for g, label in gradients.grads])
        return info, out_treedef, out_consts, joint

    def _trace_backward(self, tracer: Tracer, out_leaves: list, out_paths: list[str], arg_tensors
                        ) -> _Gradients | None:
        """When outputs are differentiable, trace their backward into the same graph."""
        if not _ag._grad_mode.enabled:
            return None
        diff_out = [(o, p) for o, p in zip(out_leaves, out_paths)
                    if isinstance(o, Tensor) and o.requires_grad and o.grad_fn is not None]
        if not diff_out:
            return None
        diff_in = [(t, i) for t, i in arg_tensors if t.requires_grad]
        diff_in += [(t, t) for t in tracer.lifted if t.requires_grad]
        if not diff_in or any(o.grad_fn.inputs is None for o, _ in diff_out):
            return None  # no differentiable input, or the function already ran backward itself
        cots = [tracer.input(o.shape, o.dtype, "cotangent", f"d(out{p})", o._device) for o, p in diff_out]
        try:
            grads = _ag.grad([o for o, _ in diff_out], [t for t, _ in diff_in], cots, allow_unused=True)
        except RuntimeError as err:
            if "second time" in str(err):  # the function ran backward itself (a training step)
                return None
            raise
        # an input the outputs do not depend on gets no gradient (None), as in eager autograd
        used = [g is not None for g in grads]
        if not any(used):
            return None
        kept = [(g, f"d{tracer.label(t) if t is ref else 'arg' + str(ref)}")
                for g, (t, ref) in zip(grads, diff_in) if g is not None]
        diff_leaves = [i for i, o in enumerate(out_leaves) if any(o is d for d, _ in diff_out)]
        return _Gradients(diff_leaves=diff_leaves, diff_refs=[ref for _, ref in diff_in], used=used, grads=kept)

    # --- introspection ------------------------------------------------------------------
    def programs(self) -> list[Program]:
        """Every program in the cache: each entry's, and each size a symbolic trace was lowered for."""
        found: dict[int, Program] = {}  # (a program checked equal to a symbolic trace serves it too)
        for entries in self.cache.values():
            for entry in entries:
                for program in entry.programs.values() if isinstance(entry, SymbolicProgram) else [entry]:
                    found.setdefault(id(program), program)
        return list(found.values())

    def explain(self, *args, **kwargs) -> str:
        """The IR, the guards and the cache state for a call with these arguments (compiling if needed).

            print(jitorch.compile(step).explain(x, y))
        """
        named, call = self._bind(args, kwargs)
        leaves, paths, treedef = flatten(named)
        key, dims = self._key(treedef, leaves)
        program, reason = self._lookup(key, leaves)
        lines = [f"jitorch.compile({self.name}), mode={self.mode!r}"]
        if program is None:
            lines.append(f"cache miss ({reason or 'first call'}): tracing now")
            key, dims = self._widen(key, dims, treedef, leaves)
            program = self._compile(call, leaves, paths, key, reason, dims)
        lines.append(
            f"cache: {len(self.programs())} programs; {self.calls} calls, {self.hits} hits, "
            f"{self.compiles} compiles"
        )
        if self.recompile_reasons:
            lines.append("recompile reasons:")
            lines += [f"  {r}" for r in self.recompile_reasons]
        if self.trace_seconds:
            lines.append(f"last trace + lowering: {self.trace_seconds[-1] * 1e3:.1f} ms")
        lines.append("guards:")
        lines += ["  " + line for line in program.guard_text(paths, key).splitlines()]
        for entry in self.cache.get(key, []):
            if isinstance(entry, SymbolicProgram) and program in entry.programs.values():
                lines += entry.describe()
                lines.append("symbolic IR:")
                lines.append(entry.graph_text())
        if self._static_only:
            lines.append(f"dynamic shapes off: {self._static_only}")
        lines.append("IR:")
        lines.append(program.graph.format())
        if program.backward is not None:
            lines.append("backward IR:")
            lines.append(program.backward.plan.graph.format())
        plan = program.plan
        device = plan.backend.device_type
        made = {"cpu": "fused CPU kernels (LLVM)", "cuda": "fused GPU kernels (Triton)"}.get(device, "fused kernels")
        lines.append(f"plan: {len(plan.steps)} steps: {len(plan.kernels)} {made}, the rest eager {device} kernels")
        lines += ["  " + line for k in plan.kernels for line in k.kernel.format().splitlines()]
        if self.graphs:
            lines.append(self._graphed(program).describe())
        return "\n".join(lines)


def is_compiling() -> bool:
    """Whether the calling code is being traced by `jitorch.compile` (PyTorch's
    `torch.compiler.is_compiling()`): True inside a function while it is traced, False when it runs
    eagerly or as a compiled program's replay."""
    return trace_state.tracer is not None


def forget_programs() -> None:
    """Drop every compiled function's programs: each traces again on its next call."""
    for compiled in list(_every_compiled):
        compiled.cache.clear()
        compiled._last_key = None


def compile(model: Callable | None = None, *, fullgraph: bool = False, dynamic: bool | None = None,
            backend: str = "jitorch", mode: str | None = None, options: dict | None = None, disable: bool = False,
            fallback: str | None = None, name: str | None = None):
    """Compile a function (or a Module) with jitorch's tracer: torch.compile's interface.

    `@jitorch.compile`, `jitorch.compile(step, mode="reduce-overhead")`, `jitorch.compile(model)`
    (an `OptimizedModule`, as PyTorch returns). The first call with new argument shapes traces;
    later calls replay. See `CompiledFunction.explain`.

    - `mode`: "default"; "reduce-overhead", as PyTorch's: a program on the GPU runs once as in
      "default", is then captured into a CUDA graph, and later calls replay the graph (one launch
      instead of one per kernel; see `jitorch.compiler.cudagraphs` for what is captured and when it
      is not; on the CPU it is "default", as PyTorch runs CPU code); "max-autotune": as
      "reduce-overhead", and each GPU kernel's first launch times a wider set of launch
      configurations, small kernels too (a longer first call); "max-autotune-no-cudagraphs": the
      wider search alone. jitorch's own: "eager" runs the Python as written (pdb and print work);
      "check" runs both and names the first IR node that differs. Outputs are tensors of their own,
      never overwritten by a later replay.
    - `options`: instead of `mode` (not both, as in PyTorch), a dict of the settings modes make:
      `{"triton.cudagraphs": bool, "max_autotune": bool}`.
    - `backend`: "jitorch" (the default), "inductor" (PyTorch's default's name: jitorch's compiler)
      or "eager" (trace nothing: as mode="eager").
    - `fullgraph`: jitorch always compiles the whole function, as `fullgraph=True` asks: it never
      splits one at a graph break. `False` (PyTorch's default) changes nothing; code that cannot be
      traced raises a `TraceError` naming the line, or, with `fallback="eager"`, the function runs
      as written from then on.
    - `dynamic`: None (the default): an argument dim whose size changes between calls is traced
      again once with a symbolic size, and that trace serves every later size (automatic dynamic
      shapes); True: every argument dim is symbolic from the first call; False: each new
      combination of argument shapes traces a program of its own. `jitorch.mark_dynamic(t, dim)`
      makes one dim symbolic from the start. Sizes 0 and 1 always get programs of their own, and
      argument dims of equal size share one symbol while they stay equal (as in PyTorch); what a
      trace assumed about its sizes, and why a call needed another trace, are in `explain()` and
      the "recompiles" log. See `jitorch.compiler.dynamic`.
    - `disable=True`: returns `model` itself, uncompiled, as PyTorch does.
    - `fallback` and `name` are jitorch's: the eager fallback above, and the name logs and
      `explain()` give the compiled function.
    """
    if model is None:
        return lambda f: compile(f, fullgraph=fullgraph, dynamic=dynamic, backend=backend, mode=mode,
                                 options=options, disable=disable, fallback=fallback, name=name)
    mode = _mode_of(backend, mode, options, dynamic, fullgraph)
    if disable:
        return model
    if hasattr(model, "forward") and hasattr(model, "named_parameters"):  # a Module (nn sits above the compiler)
        compiled = CompiledFunction(model.__call__, mode=mode, fallback=fallback, name=name or type(model).__name__,
                                    options=options, dynamic=dynamic)
        return model._wrapped_by_compile(compiled)  # PyTorch's OptimizedModule: `jitorch.nn.Module`
    return CompiledFunction(model, mode=mode, fallback=fallback, name=name, options=options, dynamic=dynamic)


def _mode_of(backend, mode: str | None, options: dict | None, dynamic, fullgraph) -> str:
    """The CompiledFunction mode torch.compile's arguments ask for; a clear error where they ask for
    something jitorch does not do."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        what = (f"a callable ({getattr(backend, '__name__', type(backend).__name__)})" if callable(backend)
                else repr(backend))
        raise ValueError(f"jitorch.compile: backend must be one of {', '.join(map(repr, BACKENDS))}, got {what}. "
                         "jitorch compiles with its own tracer and code generators; a torch.fx backend has no "
                         "meaning here.")
    if mode is not None and options is not None:
        raise RuntimeError("Either mode or options can be specified, but both can't be specified at the same time.")
    if options is not None:
        if not isinstance(options, dict):
            raise TypeError(f"jitorch.compile: options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"jitorch.compile: unknown options {unknown}; jitorch reads "
                             + "; ".join(f"{k!r}: {what}" for k, what in OPTIONS.items()))
    if dynamic not in (None, False, True):
        raise TypeError(f"jitorch.compile: dynamic must be None, True or False, got {dynamic!r}")
    if not isinstance(fullgraph, bool):
        raise TypeError(f"jitorch.compile: fullgraph must be True or False, got {fullgraph!r}")
    return "eager" if backend == "eager" else mode or "default"


