"""`jitorch.compile`: trace a function (a forward pass or a whole training step) into the IR, cache
the result under guards, and replay it.

    @jitorch.compile
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

Modes: "default" (trace, optimize, run the program), "eager" (run the Python as written: pdb and
print work), "check" (run both, compare, and name the first IR node that diverges). The environment
variable JITORCH_DISABLE=1 and the context manager `jitorch.compiler.disable()` force eager mode.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import os
import threading
import time
import types
import warnings
import weakref
from collections import Counter
from collections.abc import Callable

import numpy as np

from . import autograd as _ag
from . import logs
from ._trace_state import ModuleChanges, trace_state
from .autograd import Node as AutogradNode
from .ir import interpret
from .ir.graph import Graph, Input, Value, format_node
from .ir.passes import optimize
from .ir.python_state import PythonState
from .ir.pytree import flatten, unflatten
from .ir.trace import TraceError, Tracer, is_plain_value
from .primitives import Prim
from .random import default_generator
from .tensor import Tensor

RECOMPILE_LIMIT = 8


class CompileCheckError(AssertionError):
    """mode="check" found the compiled function disagreeing with the eager one."""


class _DisableState(threading.local):
    depth = 0


_disable = _DisableState()


@contextlib.contextmanager
def disable():
    """Inside this block every compiled function runs its plain Python, eagerly."""
    _disable.depth += 1
    try:
        yield
    finally:
        _disable.depth -= 1


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


def _eager_forced() -> bool:
    return _disable.depth > 0 or os.environ.get("JITORCH_DISABLE", "") not in ("", "0")


# ---------------------------------------------------------------------------------------------
# guards


def _leaf_guard(leaf) -> tuple:
    if isinstance(leaf, Tensor):
        return ("tensor", leaf._data.shape, leaf._data.dtype.str, str(leaf._device), leaf.requires_grad)
    try:
        hash(leaf)
        return ("value", type(leaf).__name__, leaf)
    except TypeError:
        return ("object", type(leaf).__name__, id(leaf))


def _describe_guard(g: tuple) -> str:
    if g[0] == "tensor":
        return f"shape {tuple(g[1])} {np.dtype(g[2]).name} requires_grad={g[4]}"
    return f"{g[1]} {g[2]!r}" if g[0] == "value" else f"{g[1]} object id {g[2]}"


# the fields of a tensor guard (see _leaf_guard), and how to show each in a recompile reason
_TENSOR_FIELDS = ((1, "shape", tuple), (2, "dtype", lambda s: np.dtype(s).name), (3, "device", str),
                  (4, "requires_grad", bool))


def _diff_keys(old: tuple, new: tuple, paths: list[str]) -> list[tuple[str, str]]:
    """Which guard changed between two cache keys: [(argument path, 'what -> what')]."""
    (t_old, leaves_old, grad_old), (t_new, leaves_new, grad_new) = old, new
    if grad_old != grad_new:
        return [("grad mode", f"{grad_old} -> {grad_new}")]
    if t_old != t_new or len(leaves_old) != len(leaves_new):
        return [("argument structure", "changed")]
    out = []
    for path, a, b in zip(paths, leaves_old, leaves_new):
        if a != b:
            if a[0] == b[0] == "tensor":
                for i, name, show in _TENSOR_FIELDS:
                    if a[i] != b[i]:
                        out.append((f"arg {path}", f"{name} {show(a[i])} -> {show(b[i])}"))
            else:
                out.append((f"arg {path}", f"{_describe_guard(a)} -> {_describe_guard(b)}"))
    return out


# ---------------------------------------------------------------------------------------------
# a compiled program: one cache entry


class Program:
    """A traced, optimized graph plus what the runtime reads, writes back and checks."""

    def __init__(self, graph: Graph, info: dict, out_treedef, out_consts: list, backward=None) -> None:
        self.graph = graph
        self.plan = interpret.Plan(graph)
        self.info = info
        self.out_treedef = out_treedef
        self.out_consts = out_consts
        self.backward = backward  # (plan, n_saved, diff output slots, diff input refs, used) or None
        self.one_shot: str | None = None  # why this program serves one call only (it is then traced again)
        self.trace_world: PythonState | None = None  # the Python state before its trace, until its first run
        self.fetch = [(i.kind, i.ref) for i in graph.inputs]
        self.lifted_guards = [(i.ref, i.ref._data.shape, i.ref._data.dtype, i.ref.requires_grad)
                              for i in graph.inputs if i.kind == "lifted"]
        self.grad_guards = info["grad_had"]
        self.python_guards = info["python_guards"]
        self.module_guards = info["module_guards"]
        self.modules_checked = -1  # ModuleChanges.count when the module guards last passed
        self.writes_anything = any(info[k] for k in ("writes", "born_writes", "arg_writes", "grad_writes",
                                                     "escaped"))
        # an output that is an input unchanged is returned as that very tensor, as eagerly
        by_value = {i.value.id: i for i in graph.inputs if i.kind in ("arg", "lifted")}
        self.passthrough = {slot: by_value[graph.outputs[slot].id] for slot in info["user_out"]
                            if slot is not None and graph.outputs[slot].id in by_value}

    def guard_failure(self) -> str | None:
        """Why this entry does not apply to the current state (None when it does)."""
        for t, shape, dtype, rg in self.lifted_guards:
            if t._data.shape != shape or t._data.dtype != dtype or t.requires_grad != rg:
                return (f"lifted tensor {self._label(t)}: shape {tuple(shape)} {dtype.name} "
                        f"requires_grad={rg} -> {tuple(t._data.shape)} {t._data.dtype.name} "
                        f"requires_grad={t.requires_grad}")
        for p, had in self.grad_guards:
            if (p._grad is not None) != had:
                state = ("None", "a tensor") if not had else ("a tensor", "None")
                return f"{self._label(p)}.grad: {state[0]} -> {state[1]}"
        for _, read, expected, _, reason in self.python_guards:
            now = read()
            if now != expected:
                return reason(expected, now)
        changes = ModuleChanges.count
        if changes != self.modules_checked:  # some module changed since: is it one of ours?
            for guard in self.module_guards:
                change = guard.change()
                if change is not None:
                    return change
            self.modules_checked = changes
        return None

    def _label(self, t) -> str:
        for inp in self.graph.inputs:
            if inp.ref is t:
                return inp.label
        return f"tensor{list(t.shape)}"

    def guard_text(self, arg_paths: list[str], key: tuple) -> str:
        lines = [f"grad mode is {'on' if key[2] else 'off'}"]
        lines += [f"arg {p}: {_describe_guard(g)}" for p, g in zip(arg_paths, key[1])]
        lines += [f"lifted {self._label(t)}: shape {tuple(s)} {d.name} requires_grad={rg}"
                  for t, s, d, rg in self.lifted_guards]
        lines += [f"{self._label(p)}.grad is {'a tensor' if had else 'None'}" for p, had in self.grad_guards]
        lines += [f"{label}: {show(expected)}" for label, _, expected, show, _ in self.python_guards]
        lines += [guard.show() for guard in self.module_guards]
        return "\n".join(lines)

    def inputs(self, leaves: list) -> list[np.ndarray]:
        arrays = []
        for kind, ref in self.fetch:
            if kind == "arg":
                arrays.append(leaves[ref]._data)
            elif kind == "lifted":
                arrays.append(ref._data)
            elif kind == "grad":
                arrays.append(ref._grad._data)
            else:  # the seed of this call's random numbers, drawn from the global generator
                arrays.append(np.asarray(default_generator._rng.integers(2**62), dtype=np.int64))
        return arrays

    @property
    def draws_random(self) -> bool:
        return any(kind == "rng" for kind, _ in self.fetch)

    def run(self, leaves: list, record: dict | None = None, inputs: list | None = None,
            rerun: Callable[[], object] | None = None, kernels: dict[str, Callable] | None = None):
        """Execute on the current arguments and state; write back; return the user's outputs.
        `rerun` calls the function again eagerly: double backward differentiates that. `record` and
        `kernels` are the executor's (see `interpret.Plan.run`)."""
        if inputs is None:
            inputs = self.inputs(leaves)
        results = self.plan.run(inputs, record, kernels)
        self._write_back(leaves, results, inputs)
        outs = []
        it = iter(self.out_consts)
        for slot in self.info["user_out"]:
            if slot is None:
                outs.append(next(it))
            elif slot in self.passthrough:
                inp = self.passthrough[slot]
                outs.append(leaves[inp.ref] if inp.kind == "arg" else inp.ref)
            else:
                outs.append(Tensor._make(_writable(results[slot])))
        if self.backward is not None and _ag._grad_mode.enabled:
            self._attach_backward(leaves, outs, results, rerun)
        return unflatten(self.out_treedef, outs)

    def _write_back(self, leaves: list, results: list, inputs: list) -> None:
        info = self.info
        if not self.writes_anything:
            return
        input_ids = {id(a) for a in inputs}
        targets = [(t, slot) for t, slot in info["writes"]]
        targets += [(ref(), slot) for ref, slot in info["born_writes"] if ref() is not None]
        targets += [(leaves[i], slot) for i, slot in info["arg_writes"]]
        # results may be views of inputs that are about to be overwritten: copy those first
        staged = [(t, _owned(results[slot], input_ids)) for t, slot in targets]
        for t, value in staged:
            np.copyto(t._data, value, casting="unsafe")
            t._bump_version()
        for p, slot in info["grad_writes"]:
            p._grad = None if slot is None else Tensor._make(_owned(results[slot], input_ids))
        for ref, slot in info["escaped"]:
            t = ref()
            if t is not None:  # a traced value the function stored away becomes a real tensor
                t._data, t._value, t._base, t.grad_fn = _owned(results[slot], input_ids), None, None, None

    def _attach_backward(self, leaves: list, outs: list, results: list, rerun) -> None:
        plan, n_saved, out_slots, diff_refs, used = self.backward
        diff_inputs = tuple(leaves[ref] if isinstance(ref, int) else ref for ref in diff_refs)
        if not any(t.requires_grad for t in diff_inputs):
            return
        saved = results[len(results) - n_saved:]
        user_slots = self.info["user_out"]
        shapes = [results[s] for s in out_slots]
        double = _DoubleBackward(self, rerun, diff_inputs)
        for k, slot in enumerate(out_slots):
            out = outs[user_slots.index(slot)]
            if slot in self.passthrough:
                continue  # an input returned as is keeps its own autograd identity
            prim = _backward_prim(plan, saved, k, shapes, used, functools.partial(double, user_slots.index(slot)))
            out.grad_fn = AutogradNode(prim, diff_inputs, {}, out)
            out.requires_grad = True


def _free_python_values(fn) -> list[tuple[tuple, str, Callable[[], object]]]:
    """The plain Python values (numbers, bools, strings) a function reads from its globals or its
    closure, found in its code and the code nested in it: a trace bakes them in, so a compiled
    program is guarded on each (a changed `scale = 0.5` retraces instead of being ignored).
    Functions it calls are not looked into."""
    code = getattr(fn, "__code__", None)
    if code is None or not hasattr(fn, "__globals__"):
        return []
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    found = []
    scope = fn.__globals__
    for name in sorted(names):
        if name in scope and is_plain_value(scope[name]):
            found.append(((id(scope), name), f"global {name}", functools.partial(scope.get, name)))
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            plain = is_plain_value(cell.cell_contents)
        except ValueError:  # a cell not assigned yet
            continue
        if plain:
            found.append(((id(cell), name), f"closure variable {name}", lambda cell=cell: cell.cell_contents))
    return found


def _writable(a: np.ndarray) -> np.ndarray:
    return a if a.flags.writeable else np.array(a, copy=True)


def _owned(a: np.ndarray, input_ids: set) -> np.ndarray:
    if a.base is None and a.flags.writeable and id(a) not in input_ids:
        return a
    return np.array(a, copy=True)


class _DoubleBackward:
    """A gradient that must itself be differentiable (`create_graph=True`): the compiled backward
    computes arrays with no graph behind them, so the function runs again eagerly and autograd
    differentiates that run. Refused, with the reason, where a rerun would not be the same
    computation: the function writes state (an optimizer step would be applied twice), draws
    random numbers, or its inputs were modified in place since the call."""

    def __init__(self, program: Program, rerun, inputs: tuple) -> None:
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
        with disable():
            leaves, _, _ = flatten(self.rerun())
        grads = _ag.grad([leaves[out_index]], [t for t, u in zip(self.inputs, used) if u], [g],
                         create_graph=True, allow_unused=True)
        it = iter(grads)
        return tuple(next(it) if u else None for u in used)


def _backward_prim(plan: interpret.Plan, saved: list, k: int, outs: list, used: list[bool],
                   double: Callable) -> Prim:
    """An autograd 'primitive' whose vjp runs the compiled backward graph for output k; `used` says
    which differentiable inputs get a gradient (the graph computes only those). Under
    `create_graph=True` the vjp is `double`'s, which keeps a graph."""

    def vjp(g: Tensor, node):
        if _ag._grad_mode.enabled:  # backward with create_graph=True
            return double(g, used)
        cots = [np.zeros_like(o) for o in outs]
        cots[k] = np.asarray(g._data, dtype=outs[k].dtype)
        grads = iter(plan.run(list(saved) + cots))
        return tuple(Tensor._make(np.array(next(grads), copy=True)) if u else None for u in used)

    return Prim("compiled_backward", "extern", None, None, vjp)


# ---------------------------------------------------------------------------------------------
# splitting a joint forward+backward graph


def _split_joint(graph: Graph, n_fwd_outputs: int):
    """Forward nodes are those not reached from a cotangent input; the backward graph reads the
    forward values it needs ("saved") as inputs."""
    cot = {i.value.id for i in graph.inputs if i.kind == "cotangent"}
    bwd_ids = set(cot)
    fwd_nodes, bwd_nodes = [], []
    for node in graph.nodes:
        if any(v.id in bwd_ids for v in node.inputs):
            bwd_ids.add(node.out.id)
            bwd_nodes.append(node)
        else:
            fwd_nodes.append(node)
    saved: dict[int, Value] = {}
    bwd_outputs = graph.outputs[n_fwd_outputs:]
    consts = []
    for v in [v for node in bwd_nodes for v in node.inputs] + list(bwd_outputs):
        if v.id in bwd_ids:
            continue
        if v.node is not None and v.node.op == "const":  # constants are cheaper to repeat than to save
            if v.id not in {c.out.id for c in consts}:
                consts.append(v.node)
        else:
            saved.setdefault(v.id, v)
    fwd = Graph(graph.name)
    fwd.inputs = [i for i in graph.inputs if i.kind != "cotangent"]
    fwd.nodes = fwd_nodes
    fwd.outputs = graph.outputs[:n_fwd_outputs] + list(saved.values())
    fwd.output_labels = graph.output_labels[:n_fwd_outputs] + ["saved"] * len(saved)
    bwd = Graph(graph.name + ".backward")
    bwd.inputs = [Input(v, "saved", "") for v in saved.values()]
    bwd.inputs += [i for i in graph.inputs if i.kind == "cotangent"]
    bwd.nodes = consts + bwd_nodes
    bwd.outputs = list(bwd_outputs)
    bwd.output_labels = graph.output_labels[n_fwd_outputs:]
    return fwd, bwd, len(saved)


# ---------------------------------------------------------------------------------------------
# the user-facing object


class CompiledFunction:
    """What `jitorch.compile(fn)` returns: call it like `fn`; see `explain()` for what it did."""

    def __init__(self, fn: Callable, mode: str = "default", fallback: str | None = None,
                 name: str | None = None) -> None:
        if mode not in ("default", "eager", "check"):
            raise ValueError(f"jitorch.compile: mode must be 'default', 'eager' or 'check', got {mode!r}")
        if fallback not in (None, "eager"):
            raise ValueError(f"jitorch.compile: fallback must be None or 'eager', got {fallback!r}")
        self.fn = fn
        self.mode = mode
        self.fallback = fallback
        self.name = name or getattr(fn, "__qualname__", getattr(fn, "__name__", type(fn).__name__))
        self.cache: dict[tuple, list[Program]] = {}
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
        named, call = self._bind(args, kwargs)
        leaves, paths, treedef = flatten(named)
        key = (treedef, tuple(_leaf_guard(x) for x in leaves), _ag._grad_mode.enabled)
        program, reason = self._lookup(key)
        if program is None:
            try:
                program = self._compile(call, leaves, paths, key, reason)
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
            out = self._check(program, args, kwargs, leaves, world)
        else:
            out = program.run(leaves, rerun=lambda: self.fn(*args, **kwargs))
        if program.one_shot:
            self._drop(key, program)
        return out

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

    def _lookup(self, key: tuple) -> tuple[Program | None, str | None]:
        entries = self.cache.get(key)
        reason, self._one_shot_reason = self._one_shot_reason, None
        if entries:
            for program in entries:
                failure = program.guard_failure()
                if failure is None:
                    return program, None
                reason = failure
        elif self._last_key is not None and reason is None:
            diffs = _diff_keys(self._last_key, key, self._last_paths)
            for what, _ in diffs:
                self._changed[what] += 1
            reason = "; ".join(f"{what}: {how}" for what, how in diffs) or "new arguments"
        return None, reason

    def _drop(self, key: tuple, program: Program) -> None:
        entries = self.cache.get(key, [])
        if program in entries:
            entries.remove(program)
        self._one_shot_reason = program.one_shot

    # --- compile ------------------------------------------------------------------------
    def _compile(self, call, leaves, paths, key, reason) -> Program:
        if reason is not None:
            self.recompile_reasons.append(reason)
            logs.log("recompiles", f"{self.name}: recompiling because {reason}")
            self._maybe_warn_limit()
        t0 = time.perf_counter()
        with _gc_paused():
            program = self._trace(call, leaves, paths, key[0])
        self.trace_seconds.append(time.perf_counter() - t0)
        self.compiles += 1
        logs.log("perf", f"{self.name}: traced and lowered in {self.trace_seconds[-1] * 1e3:.1f} ms")
        logs.log("graph", f"{self.name}:\n{program.graph.format()}")
        logs.log("guards", f"{self.name}:\n{program.guard_text(paths, key)}")
        self.cache.setdefault(key, []).append(program)
        self._last_key, self._last_paths = key, paths
        return program

    def _maybe_warn_limit(self) -> None:
        if self.compiles >= RECOMPILE_LIMIT and not self._warned_limit:
            self._warned_limit = True
            culprit = self._changed.most_common(1)
            if self.recompile_reasons and "writes Python state" in self.recompile_reasons[-1]:
                advice = (f"{self.recompile_reasons[-1]}. Keep such values in tensors (a step counter as "
                          "jitorch.tensor(0.0), updated in place) so the compiled program can update them")
            else:
                what = culprit[0][0] if culprit else "the guarded state"
                advice = f"{what} keeps changing. Pad or bucket that argument to a few shapes"
            warnings.warn(f"jitorch.compile({self.name}) has recompiled {self.compiles} times; {advice}, "
                          "or compile with mode='eager'.", stacklevel=4)

    def _trace(self, call, leaves: list, paths: list[str], treedef) -> Program:
        tracer = Tracer(self.name, _module_labels(self.fn))
        roots = _named_objects(self.fn) + [(f"arg {p}", x) for x, p in zip(leaves, paths) if not isinstance(x, Tensor)]
        world = PythonState(roots, tracer.label)  # before the trace: what Python state did it write?
        with tracer:
            info, out_treedef, out_consts, backward = self._record(tracer, call, leaves, paths, treedef)
        info["python_writes"] = world.writes()
        info["escaped"] = []
        for t in tracer.release():
            tracer.graph.add_output(t._value, "escaped state")
            info["escaped"].append((weakref.ref(t), len(tracer.graph.outputs) - 1))
        n_fwd = len(tracer.graph.outputs)
        if backward is not None:
            grad_values, diff_refs, out_slots, used = backward
            for value, label in grad_values:
                tracer.graph.add_output(value, label)
        graph = optimize(tracer.graph)
        _prune_inputs(graph)
        bwd = None
        if backward is not None:
            graph, bwd_graph, n_saved = _split_joint(graph, n_fwd)
            bwd = (interpret.Plan(bwd_graph), n_saved, out_slots, diff_refs, used)
        program = Program(graph, info, out_treedef, out_consts, bwd)
        program.trace_world = world
        if info["python_writes"]:
            program.one_shot = ("the function writes Python state that a replay would not repeat ("
                                + ", ".join(map(str, info["python_writes"][:3])) + "); it is traced on every call")
        elif info["escaped"] or any(ref() is not None for ref, _ in info["born_writes"]):
            program.one_shot = ("the previous call created state (e.g. optimizer buffers) that the trace had "
                                "baked in; tracing again with that state as inputs")
        return program

    def _record(self, tracer: Tracer, call, leaves: list, paths: list[str], treedef):
        """Run the function on traced arguments. Only values and plain data leave this frame, so
        that traced tensors still alive afterwards are exactly the ones the function stored away."""
        traced_leaves = [tracer.arg(x, path, i) if isinstance(x, Tensor) else x
                         for i, (x, path) in enumerate(zip(leaves, paths))]
        arg_tensors = [(t, i) for i, t in enumerate(traced_leaves) if isinstance(t, Tensor)]
        for key, label, read in _free_python_values(self.fn):
            tracer.note_python_value(key, label, read)
        out = call(unflatten(treedef, traced_leaves))
        out_leaves, out_paths, out_treedef = flatten(out)
        backward = self._trace_backward(tracer, out_leaves, out_paths, arg_tensors)
        info = tracer.finish(out_leaves, out_paths, arg_tensors)
        info["python_guards"] = list(tracer.python_guards.values())
        info["module_guards"] = list(tracer.modules.values())
        out_consts = [x for x in out_leaves if not isinstance(x, Tensor)]
        if backward is not None:
            diff_refs, grads, diff_leaves, used = backward
            grad_values = [(tracer.value_of(g), label) for g, label in grads]
            backward = (grad_values, diff_refs, [info["user_out"][i] for i in diff_leaves], used)
        return info, out_treedef, out_consts, backward

    def _trace_backward(self, tracer: Tracer, out_leaves: list, out_paths: list[str], arg_tensors):
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
        cots = [tracer.input(o.shape, o.dtype, "cotangent", f"d(out{p})") for o, p in diff_out]
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
        return [ref for _, ref in diff_in], kept, diff_leaves, used

    # --- check mode ---------------------------------------------------------------------
    def _check(self, program: Program, args, kwargs, leaves, world: PythonState | None):
        """Run compiled and eager from the same state; keep eager's effects; compare outputs, every
        tensor the program writes, and the state a traced call created (optimizer buffers).
        `world` is the Python state from before this call's trace, when this call traced."""
        state = _snapshot(program, leaves)
        rng_state = default_generator.get_state()
        inputs = program.inputs(leaves)
        frozen = [np.array(a, copy=True) for a in inputs]
        record: dict = {}
        compiled_out = program.run(leaves, record, inputs, kernels=self._planted_kernels)
        compiled_state = {name: value for name, (_, value) in _snapshot(program, leaves).items()}
        compiled_new = _arrays(world.new_tensors()) if world is not None else {}
        _restore(state)
        if world is not None:
            world.restore()  # undo the trace's Python writes: the eager run makes its own
        default_generator.set_state(rng_state)
        eager_out = self.fn(*args, **kwargs)
        eager_state = {name: value for name, (_, value) in _snapshot(program, leaves).items()}
        eager_new = _arrays(world.new_tensors()) if world is not None else {}
        problems = _compare(flatten(compiled_out)[0], flatten(eager_out)[0], "output")
        for what, compiled, eager in (("state", compiled_state, eager_state), ("new state", compiled_new, eager_new)):
            for name in sorted(compiled.keys() | eager.keys()):
                if name not in compiled or name not in eager:
                    problems.append(f"{what} {name}: made by the {'eager' if name in eager else 'compiled'} run only")
                else:
                    problems += _compare([compiled[name]], [eager[name]], f"{what} {name}")
        if problems:
            node = _first_diverging_node(program, frozen, record)
            randomness = (" The function draws random numbers, which compiled and eager runs draw differently: "
                          "check it with dropout off (model.eval())." if program.draws_random else "")
            raise CompileCheckError(
                f"jitorch.compile({self.name}, mode='check'): compiled and eager differ: "
                + "; ".join(problems) + (f". First diverging IR node: {node}" if node else "") + randomness
            )
        return eager_out

    # --- introspection ------------------------------------------------------------------
    def explain(self, *args, **kwargs) -> str:
        """The IR, the guards and the cache state for a call with these arguments (compiling if needed)."""
        named, call = self._bind(args, kwargs)
        leaves, paths, treedef = flatten(named)
        key = (treedef, tuple(_leaf_guard(x) for x in leaves), _ag._grad_mode.enabled)
        program, reason = self._lookup(key)
        lines = [f"jitorch.compile({self.name}), mode={self.mode!r}"]
        if program is None:
            lines.append(f"cache miss ({reason or 'first call'}): tracing now")
            program = self._compile(call, leaves, paths, key, reason)
        lines.append(
            f"cache: {sum(len(v) for v in self.cache.values())} entries; {self.calls} calls, {self.hits} hits, "
            f"{self.compiles} compiles"
        )
        if self.recompile_reasons:
            lines.append("recompile reasons:")
            lines += [f"  {r}" for r in self.recompile_reasons]
        if self.trace_seconds:
            lines.append(f"last trace + lowering: {self.trace_seconds[-1] * 1e3:.1f} ms")
        lines.append("guards:")
        lines += ["  " + line for line in program.guard_text(paths, key).splitlines()]
        lines.append("IR:")
        lines.append(program.graph.format())
        if program.backward is not None:
            lines.append("backward IR:")
            lines.append(program.backward[0].graph.format())
        plan = program.plan
        lines.append(f"plan: {len(plan.steps)} steps: {len(plan.kernels)} fused CPU kernels (LLVM), the rest "
                     "eager CPU kernels")
        lines += ["  " + line for k in plan.kernels for line in k.kernel.format().splitlines()]
        return "\n".join(lines)


def _named_objects(fn) -> list[tuple[str, object]]:
    """The objects `fn` can reach by name: its bound module, closure variables, globals it uses."""
    found = []
    target = getattr(fn, "__self__", None)
    if target is not None:
        found.append(("model", target))
    code = getattr(fn, "__code__", None)
    if code is None:
        return found
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        with contextlib.suppress(ValueError):  # an empty cell
            found.append((name, cell.cell_contents))
    globs = getattr(fn, "__globals__", {})
    found += [(name, globs[name]) for name in code.co_names if name in globs]
    return found


def _module_labels(fn) -> dict[int, str]:
    """Readable names (`model.fc1.weight`, `opt.param_groups[0].lr`) for the tensors `fn` can reach,
    so that lifted inputs in the IR and in recompile reasons say what they are."""
    labels: dict[int, str] = {}
    optimizers = []
    for name, obj in _named_objects(fn):
        if isinstance(obj, Tensor):
            labels.setdefault(id(obj), name)
        elif hasattr(obj, "named_parameters") and not isinstance(obj, type):
            with contextlib.suppress(Exception):
                for pname, p in obj.named_parameters():
                    labels.setdefault(id(p), f"{name}.{pname}")
                for bname, b in obj.named_buffers():
                    labels.setdefault(id(b), f"{name}.{bname}")
        elif hasattr(obj, "param_groups") and hasattr(obj, "state"):
            optimizers.append((name, obj))
    for name, opt in optimizers:  # after the modules, so state can be named after its parameter
        for i, group in enumerate(opt.param_groups):
            for key in group:
                try:
                    hyper = group.hyper(key)
                except (KeyError, AttributeError):  # a switch such as amsgrad, or a plain dict
                    continue
                for k, t in enumerate(hyper if isinstance(hyper, tuple) else (hyper,)):
                    suffix = f"[{k}]" if isinstance(hyper, tuple) else ""
                    labels.setdefault(id(t), f"{name}.param_groups[{i}].{key}{suffix}")
        for p, state in opt.state.items():
            owner = labels.get(id(p), f"param{list(p.shape)}")
            for key, t in state.items() if isinstance(state, dict) else ():
                if isinstance(t, Tensor):
                    labels.setdefault(id(t), f"{name}.state[{owner}].{key}")
    return labels


def _prune_inputs(graph: Graph) -> None:
    """Drop inputs nothing reads (lifted tensors only touched by dead code)."""
    used = set(graph.uses())
    graph.inputs = [i for i in graph.inputs if i.value.id in used or i.kind in ("arg", "cotangent")]


def _snapshot(program: Program, leaves: list) -> dict:
    state = {}
    for i in program.graph.inputs:
        if i.kind == "lifted":
            state[i.label] = (i.ref, np.array(i.ref._data, copy=True))
    for t, _ in program.info["writes"]:
        state.setdefault(program._label(t), (t, np.array(t._data, copy=True)))
    for p, _ in program.info["grad_writes"] + [(p, None) for p, _ in program.info["grad_had"]]:
        g = p._grad
        state.setdefault(program._label(p) + ".grad", (("grad", p), None if g is None else np.array(g._data)))
    for i, _ in program.info["arg_writes"]:
        state.setdefault(f"arg{i}", (leaves[i], np.array(leaves[i]._data, copy=True)))
    return state


def _arrays(tensors: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {name: np.array(t._data, copy=True) for name, t in tensors.items()}


def _restore(state: dict) -> None:
    for target, value in state.values():
        if isinstance(target, tuple):
            target[1]._grad = None if value is None else Tensor._make(np.array(value, copy=True))
        else:
            np.copyto(target._data, value)
            target._bump_version()


def _compare(compiled: list, eager: list, what: str, rtol: float = 1e-4) -> list[str]:
    problems = []
    for i, (a, b) in enumerate(zip(compiled, eager)):
        a = a._data if isinstance(a, Tensor) else a
        b = b._data if isinstance(b, Tensor) else b
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


def compile(fn: Callable | None = None, *, mode: str = "default", fallback: str | None = None,
            name: str | None = None):
    """Compile a function (or a Module) with jitorch's tracer.

    `@jitorch.compile`, `jitorch.compile(fn, mode="eager")`, `jitorch.compile(model)`. The first
    call with new argument shapes traces; later calls replay. See `CompiledFunction.explain`.
    """
    if fn is None:
        return lambda f: compile(f, mode=mode, fallback=fallback, name=name)
    if hasattr(fn, "forward") and hasattr(fn, "named_parameters"):
        return CompiledModule(fn, mode=mode, fallback=fallback, name=name)
    return CompiledFunction(fn, mode=mode, fallback=fallback, name=name)


class CompiledModule:
    """`jitorch.compile(model)`: calls run the compiled forward; everything else is the module's."""

    def __init__(self, module, mode: str, fallback: str | None, name: str | None) -> None:
        self._module = module
        self._compiled = CompiledFunction(module.__call__, mode=mode, fallback=fallback,
                                          name=name or type(module).__name__)

    def __call__(self, *args, **kwargs):
        return self._compiled(*args, **kwargs)

    def explain(self, *args, **kwargs) -> str:
        return self._compiled.explain(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)

    def __repr__(self) -> str:
        return f"Compiled({self._module!r})"
