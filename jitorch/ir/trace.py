"""Tracing: run a Python function once on traced tensors and record every primitive into a Graph.

- Tensor arguments become `arg` inputs. A concrete tensor that the function touches but did not
  receive (a parameter, an optimizer state, a buffer) is lifted as a `lifted` input by identity: the
  compiled program reads it fresh on every call.
- Mutation is functionalized: an in-place write to a concrete tensor only rebinds the tracer's view
  of it; its final value becomes a write-back output. Reads and writes of `.grad` go through the
  tracer too (`grad` inputs and outputs), so a compiled step leaves the model, its gradients and the
  optimizer exactly as the eager step would.
- Tensors created while tracing (constants, `zeros`, the ones that seed `backward()`) are constants.
  If such a tensor is written in place and outlives the call (optimizer state made on the first
  step), the trace baked its starting value, so that trace is used once and the next call retraces.
- Needing a concrete value (`.item()`, `bool(t)`, `.numpy()`, printing) raises TraceError naming
  the user's source line.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .. import dtypes as _dt
from .._trace_state import trace_state, user_source
from ..autograd import Node as AutogradNode
from ..autograd import _grad_mode, no_grad
from ..errors import TraceError
from ..primitives import VIEW_PRIMS
from ..symbolic import ShapeEnv, hints, is_symbolic
from ..tensor import Tensor, view_record
from ..views import replay, unview
from .graph import Const, Graph, Value, abstract_array


class _View:
    """How a traced view was made from its base (`Tensor._base`): the view ops in order, and the
    version of the shared counter its value reflects. In-place writes through a view are
    functionalized as PyTorch does: the base gets the written view scattered back into it, and a
    view read after its base changed is made again from the base."""

    __slots__ = ("chain", "uncertain", "seen")

    def __init__(self, chain: tuple, uncertain: bool) -> None:
        self.chain = chain  # ((prim, params), ...) from the base to the view
        # a reshape of a tensor whose layout the trace does not know: eagerly numpy may copy instead
        self.uncertain = uncertain
        self.seen = 0


def _view_of(prim, src: Tensor, params: dict) -> tuple[Tensor, _View] | None:
    """(base, view record) when the eager op would return a view of src's storage, else None."""
    if prim.name == "getitem" and params["key"] and any(type(k) is tuple and k[0] == "tensor"
                                                          for k in params["key"]):
        return None  # advanced indexing copies
    parent = src._view
    if src._value is None:  # a concrete tensor: the view's base is the tensor it stands for
        base, chain, uncertain = src, (), False
    elif parent is not None:
        base, chain, uncertain = src._base, parent.chain, parent.uncertain
    else:
        base, chain, uncertain = src, (), False
    uncertain = uncertain or (prim.name == "reshape" and not _is_contiguous(src))
    return base, _View(chain + ((prim, params),), uncertain)


def _is_contiguous(t: Tensor) -> bool:
    return t._data.flags.c_contiguous if t._value is None else t._contig


class _Aval(NamedTuple):
    """A traced input as a shape rule reads it, with its symbolic sizes."""

    shape: tuple
    dtype: np.dtype


def _traced(value: Value, device, contiguous: bool = True) -> Tensor:
    t = Tensor._make(abstract_array(value.shape, value.dtype.np))
    t._device = device
    t._value = value
    t._contig = contiguous  # whether eagerly this value would be a C-contiguous array
    tracer = trace_state.tracer
    if tracer is not None:
        tracer.traced.append(weakref.ref(t))
    return t


def _same_storage(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


_UNREAD = object()  # the initial grad of a slot whose first touch was a write


class _GradSlot:
    """One parameter's `.grad` as the traced function sees it."""

    __slots__ = ("p", "current", "initial", "guarded", "arg")

    def __init__(self, p: Tensor, current, initial, guarded: bool, arg: int | None = None) -> None:
        self.p = p
        self.current = current  # traced tensor, concrete tensor or None
        self.initial = initial  # the grad input (or None) when read first; _UNREAD when written first
        self.guarded = guarded  # the graph depends on whether p.grad was None at the call
        self.arg = arg  # p stands for tensor argument number `arg` (its .grad is the caller's tensor's)


_REGISTRIES = {"_parameters": "parameter", "_buffers": "buffer", "_modules": "child module",
               "_forward_pre_hooks": "forward pre-hook", "_forward_hooks": "forward hook",
               "_backward_pre_hooks": "backward pre-hook", "_backward_hooks": "backward hook"}


class _ModuleGuard:
    """What a traced module's forward baked in: its training flag, its plain Python attributes (a
    dropout's p, a norm's eps) and which objects its registries hold (parameters, buffers,
    children, forward hooks), snapshot when the trace reached the module. A program checks it only
    on calls after some module changed (`ModuleChanges`)."""

    def __init__(self, module) -> None:
        self.module = module
        self.name = type(module).__name__
        self.attributes = tuple(k for k, v in vars(module).items()
                                if not k.startswith("_") and k != "training" and is_plain_value(v))
        self.traced = self._snapshot()

    def _snapshot(self) -> tuple:
        d = self.module.__dict__
        return (d["training"], tuple(d.get(k) for k in self.attributes),
                [{key: id(v) for key, v in d[r].items()} for r in _REGISTRIES])

    def show(self) -> str:
        training, values, _ = self.traced
        attributes = ", ".join(f"{k}={v!r}" for k, v in zip(self.attributes, values))
        return f"{self.name}.training == {training}" + (f"; {attributes}" if attributes else "")

    def change(self) -> str | None:
        """What changed since the trace, in words; None if nothing did."""
        (training, values, registries), (now_training, now_values, now_registries) = self.traced, self._snapshot()
        if training != now_training:
            return f"module {self.name}.training: {training} -> {now_training}"
        if values != now_values:
            changed = [(k, a, b) for k, a, b in zip(self.attributes, values, now_values) if a != b]
            return f"{self.name} attributes: " + ", ".join(f"{k}={a!r} -> {k}={b!r}" for k, a, b in changed)
        for kind, old, new in zip(_REGISTRIES.values(), registries, now_registries):
            for key in [*old, *new]:
                # (a hook is named by its place among the module's hooks: its handle's id is global)
                label = repr(key) if isinstance(key, str) else str(list(new if key in new else old).index(key))
                if key not in new:
                    return f"{self.name}: {kind} {label} removed"
                if key not in old:
                    return f"{self.name}: {kind} {label} added"
                if old[key] != new[key]:
                    return f"{self.name}: {kind} {label} replaced by another object"
            if list(old) != list(new):
                return f"{self.name}: {kind} order changed"
        return None


def is_plain_value(value) -> bool:
    """A Python value a trace can bake in: a number, bool, string, None, or a tuple of those."""
    if isinstance(value, tuple):
        return all(map(is_plain_value, value))
    return value is None or isinstance(value, (bool, int, float, str))


class PythonGuard(NamedTuple):
    """A Python value the trace depends on (see `Tracer.note_python_value`)."""

    label: str  # what the value is, for `explain`
    read: Callable[[], object]  # reads the value now
    expected: object  # the value when traced: the program applies only while `read()` returns it
    show: Callable[[object], str]  # words a value for `explain`
    reason: Callable[[object, object], str]  # words a change (traced value, value now) for the recompile log


@dataclass(slots=True)
class TraceInfo:
    """What the runtime of a traced call needs besides its graph: where each result and each write
    went among the graph's outputs (by output slot), and what the trace depends on."""

    user_out: list[int | None]  # per flattened result: its output slot, or None for a non-tensor
    arg_writes: list[tuple[int, int]]  # (tensor argument's leaf index, slot) written in place
    writes: list[tuple[Tensor, int]]  # (tensor from outside the call, slot) written in place
    # (tensor made during the trace, slot) written in place; usually gone after the call
    born_writes: list[tuple[weakref.ref, int]]
    grad_writes: list[tuple[Tensor, int | None]]  # (p, slot of its new .grad, or None for p.grad = None)
    arg_grad_writes: list[tuple[int, int | None]]  # (tensor argument's leaf index, slot of its new .grad or None)
    arg_grad_had: list[tuple[int, bool]]  # (argument's leaf index, whether its .grad was a tensor): guarded
    grad_had: list[tuple[Tensor, bool]]  # (p, whether p.grad was a tensor): the trace depends on it
    python_guards: list[PythonGuard]  # the Python values the trace read
    module_guards: list[_ModuleGuard]  # the modules whose forward ran, and what each baked in
    random_count: int  # random counters a call takes from the generator (one per element drawn)
    # filled in once the trace is over: (traced tensor the function stored away, slot), each made a
    # real tensor after every call (see `release`), and the Python state the trace wrote
    escaped: list[tuple[weakref.ref, int]] = field(default_factory=list)
    python_writes: list = field(default_factory=list)


class Tracer:
    """Records one call of a function into a Graph (see the module docstring)."""

    def __init__(self, name: str, labels: dict[int, str] | None = None, shape_env: ShapeEnv | None = None,
                 dynamic: dict[int, set[int]] | None = None) -> None:
        self.graph = Graph(name)
        # a dynamic-shape trace: the symbols and guards, and which dims of which argument leaves are symbolic
        self.shape_env = shape_env
        self.dynamic = dynamic or {}
        self.sizes: dict = {}  # symbolic size (its Expr) -> its "size" input (see size_value)
        self.labels = labels or {}  # id(tensor) -> a readable name such as "model.fc1.weight"
        self.env: dict[int, tuple[Tensor, Value]] = {}  # concrete tensor -> its current value
        self.lifted: list[Tensor] = []
        self.written: dict[int, Tensor] = {}  # concrete tensors written in place
        self.grads: dict[int, _GradSlot] = {}  # id(p) -> the function's view of p.grad
        self.args: dict[int, tuple[int, Tensor]] = {}  # id(traced argument) -> (its index, the caller's tensor)
        self.modules: dict[int, _ModuleGuard] = {}  # modules whose forward ran, and what it baked in
        self.python_guards: dict[tuple, tuple] = {}  # see note_python_value
        self.rng: tuple[Value, Value] | None = None
        self.traced: list[weakref.ref] = []  # every traced tensor made, to find the ones that escape
        self.n_random = 0  # random counters the traced function takes per call
        self.born_mark = object()  # tensors made during this trace carry it (Tensor._make)

    # --- activation ---------------------------------------------------------------------
    def __enter__(self) -> Tracer:
        if trace_state.tracer is not None:
            raise TraceError("jitorch.compile: a compiled function called another while tracing; "
                             "nested compilation is not supported, call the inner function uncompiled")
        trace_state.tracer = self
        if self.shape_env is not None:
            self.shape_env.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        trace_state.tracer = None
        if self.shape_env is not None:
            self.shape_env.__exit__()

    # --- values -------------------------------------------------------------------------
    def _root(self, t: Tensor) -> Tensor:
        # `p.detach()` or `p.data` is the same storage as p: track it as p.
        while t._base is not None and t._value is None and _same_storage(t._data, t._base._data):
            t = t._base
        return t

    def label(self, t: Tensor) -> str:
        label = self.labels.get(id(t))
        if label is None:
            label = self.labels[id(t)] = f"tensor#{len(self.labels)}{list(t.shape)}"
        return label

    def value_of(self, t: Tensor) -> Value:
        """The graph value a tensor stands for, lifting or embedding concrete tensors on first use."""
        if t._value is not None:
            view = t._view
            if view is not None and view.seen != t._version_value():
                self._remake_view(t)  # written through its base or another view since it was made
            return t._value
        t = self._root(t)
        entry = self.env.get(id(t))
        if entry is not None:
            return entry[1]
        dtype = _dt.from_numpy_dtype(t._data.dtype)
        if t._born is self.born_mark:
            host = t._backend().to_numpy(t._data)  # constants are host arrays; the executor places them
            v = self.graph.add_node("const", (), {"value": Const(host)}, t._data.shape, dtype, "")
        else:
            v = self.graph.add_input(t._data.shape, dtype, "lifted", self.label(t), ref=t)
            self.lifted.append(t)
        self.env[id(t)] = (t, v)
        return v

    def arg(self, t: Tensor, label: str, index: int) -> Tensor:
        """A traced stand-in for tensor argument number `index` (in the flattened arguments)."""
        shape = tuple(t._data.shape)
        dims = self.dynamic.get(index)
        if dims:
            shape = tuple(self.shape_env.size(d, index, k, f"{label}.size({k})") if k in dims else d
                          for k, d in enumerate(shape))
        v = self.graph.add_input(shape, t.dtype, "arg", label, ref=index)
        out = _traced(v, t._device, bool(t._data.flags.c_contiguous))
        out.requires_grad = t.requires_grad
        out._arg_input = v
        self.args[id(out)] = (index, t)
        return out

    def size_value(self, size, device) -> Tensor:
        """A symbolic size (a SymInt) as a 0-d int64 tensor: a graph input of kind "size" that holds
        its value for each call's sizes (a constant would hold this call's)."""
        found = self.sizes.get(size.expr)
        if found is None:
            found = self.sizes[size.expr] = self.graph.add_input((), _dt.int64, "size", repr(size.expr), ref=size.expr)
        return _traced(found, device)

    def input(self, shape, dtype: _dt.DType, kind: str, label: str, device, ref: object = None) -> Tensor:
        return _traced(self.graph.add_input(shape, dtype, kind, label, ref), device)

    def detach(self, src: Tensor, out: Tensor) -> None:
        """`src.detach()` while tracing: the same value without autograd history, and a view of src's
        base through src's own view ops (none when src is not a view), so writes to either reach
        the other."""
        out._value = src._value
        out._contig = src._contig
        view = src._view
        out._view = _View(view.chain, view.uncertain) if view is not None else _View((), False)
        out._view.seen = out._version_value()

    # --- recording ----------------------------------------------------------------------
    def record(self, prim, inputs: tuple, params: dict, device) -> Tensor:
        """Append one primitive application; return its traced output."""
        values = tuple(self.value_of(t) for t in inputs)
        if self.shape_env is not None and (any(v.symbolic for v in values) or is_symbolic(tuple(params.values()))):
            avals = [_Aval(v.shape, t._data.dtype) for v, t in zip(values, inputs)]  # (shape rules on symbols)
        else:
            avals = [t._data for t in inputs]
        try:
            shape, np_dtype = prim.infer(*avals, **params)
        except (ValueError, IndexError, TypeError) as err:
            raise type(err)(f"{prim.name}: {err} (at {user_source()})") from None
        dtype = _dt.from_numpy_dtype(np.dtype(np_dtype))
        value = self.graph.add_node(prim.name, values, params, shape, dtype, user_source(), trace_state.recompute)
        view = _view_of(prim, inputs[0], params) if prim.name in VIEW_PRIMS else None
        if view is None:
            # numpy keeps C order when every full-size operand has it (broadcast operands don't count)
            shape = hints(shape)  # (bookkeeping on this call's sizes: no guard)
            out = _traced(value, device, all(_is_contiguous(t) for t in inputs if t._data.shape == shape))
        else:
            out = _traced(value, device, prim.name == "reshape" and _is_contiguous(inputs[0]))
            out._base, out._view = view
            out._ver = out._base._counter()  # a view shares its base's version counter, as eagerly
            out._view.seen = out._version_value()
            view_record(inputs[0], prim, params, out)
        if _grad_mode.enabled and dtype.is_floating_point and any(
                t.requires_grad or (t._base is not None and t._hist != t._ver.history and t._refresh_history())
                for t in inputs):
            out.grad_fn = AutogradNode(prim, inputs, params, out)
            out.requires_grad = True
        return out

    def random(self, shape, dtype: _dt.DType, dist: str, device) -> Tensor:
        """A random tensor drawn from the call's seed (a graph input), so each call draws anew."""
        if self.rng is None:  # the seed, and this call's first counter, taken from the generator per call
            self.rng = (self.graph.add_input((), _dt.int64, "rng", "seed", ref="seed"),
                        self.graph.add_input((), _dt.int64, "rng", "counter", ref="counter"))
        params = {"shape": tuple(shape), "dtype": dtype, "dist": dist, "offset": self.n_random}
        self.n_random += math.prod(shape)  # counters taken: one per element, in the order eager takes them
        return _traced(self.graph.add_node("random", self.rng, params, tuple(shape), dtype, user_source(),
                                           trace_state.recompute), device)

    def assign(self, target: Tensor, result: Tensor) -> None:
        """An in-place write: from now on `target` reads as `result`; a view's base reads as the
        base with `result` scattered into it."""
        value = self.value_of(result)
        if target._value is None:
            self._assign_concrete(target, value)
        else:
            if target._view is not None:
                self._write_through(target, result)
            target._value = value
        target._bump_version()
        if target._view is not None:
            target._view.seen = target._version_value()

    def _assign_concrete(self, target: Tensor, value: Value) -> None:
        root = self._root(target)
        if root._base is not None:
            raise TraceError(
                f"in-place write into a view (shape {tuple(target.shape)}) that was made before "
                f"jitorch.compile was called, at {user_source()}: the trace cannot tell which tensor it "
                "shares memory with. Take the view inside the compiled function, or write to its base.")
        self.value_of(root)  # lift it first, so the graph reads its old value where needed
        self.env[id(root)] = (root, value)
        self.written[id(root)] = root

    def _write_through(self, view: Tensor, result: Tensor) -> None:
        """The base of `view` with `result` written where the view looks (PyTorch's view scatter)."""
        record = view._view
        if record.uncertain:
            raise TraceError(
                f"in-place write into a reshape (shape {tuple(view.shape)}) of a tensor that is not "
                f"contiguous, at {user_source()}: eagerly such a reshape may be a copy or a view, so the "
                "trace cannot tell whether the write reaches the original. Call .contiguous() before "
                ".reshape(), or .clone() the reshape to write a copy.")
        base = view._base
        with no_grad():
            new = unview(record.chain, base, result)
        if base._value is None:
            self._assign_concrete(base, self.value_of(new))
        else:
            base._value = self.value_of(new)

    def _remake_view(self, t: Tensor) -> None:
        record = t._view
        if record.uncertain:
            raise TraceError(
                f"a reshape (shape {tuple(t.shape)}) of a tensor that is not contiguous is read at "
                f"{user_source()} after that tensor was written in place: eagerly such a reshape may be a "
                "copy or a view, so the trace cannot tell which value it holds. Call .contiguous() "
                "before .reshape(), or .clone() it.")
        with no_grad():
            remade = replay(record.chain, t._base)
        t._value = remade._value
        record.seen = t._version_value()

    # --- .grad --------------------------------------------------------------------------
    def read_grad(self, p: Tensor) -> Tensor | None:
        slot = self.grads.get(id(p))
        if slot is None:  # first touch is a read: the graph takes the grad as an input (or None, guarded)
            found = self.args.get(id(p))
            if found is not None:  # an argument's: the caller's tensor's .grad, read on each call
                index, caller = found
                g = caller._grad
                # (the argument's own sizes, symbols included: a grad has its tensor's shape)
                initial = None if g is None else self.input(tuple(p._value.shape), g.dtype, "arg_grad",
                                                            f"arg{index}.grad", caller._device, ref=index)
                slot = self.grads[id(p)] = _GradSlot(p, initial, initial, guarded=True, arg=index)
                return slot.current
            if p._value is not None:
                return p._grad  # (an intermediate's: the tensor's own, as eagerly)
            g = p._grad
            initial = None if g is None else self.input(g.shape, g.dtype, "grad", self.label(p) + ".grad", p._device,
                                                        ref=p)
            slot = self.grads[id(p)] = _GradSlot(p, initial, initial, guarded=True)
        return slot.current

    def write_grad(self, p: Tensor, value: Tensor | None) -> None:
        found = self.args.get(id(p))
        if found is not None and id(p) not in self.grads:  # first touch of an argument's grad is a write
            self.grads[id(p)] = _GradSlot(p, value, _UNREAD, guarded=False, arg=found[0])
            return
        if p._value is not None and found is None:
            raise TraceError(
                f"setting .grad of a value computed inside the compiled function is not supported "
                f"({user_source()}): a leaf's .grad (a parameter's, an argument's) is; for an intermediate "
                "value's gradient return jitorch.autograd.grad(loss, value) from the function")
        slot = self.grads.get(id(p))
        if slot is None:  # first touch is a write (zero_grad): the old grad is never read nor guarded
            slot = self.grads[id(p)] = _GradSlot(p, value, _UNREAD, guarded=False)
        slot.current = value

    def note_module(self, module) -> None:
        """A module's forward runs in the trace: the program is guarded on what it baked in."""
        if id(module) not in self.modules:
            self.modules[id(module)] = _ModuleGuard(module)

    def note_python_value(self, key: tuple, label: str, read: Callable[[], object],
                          show: Callable[[object], str] = repr,
                          reason: Callable[[object, object], str] | None = None) -> None:
        """The trace depends on a Python value (an optimizer's switch, its parameter list, a
        module's state): the program applies only while `read()` returns what it returns now.
        `show` words a value for `explain`, `reason` a change for the recompile log."""
        if key not in self.python_guards:
            reason = reason or (lambda before, now: f"{label}: {show(before)} -> {show(now)}")
            self.python_guards[key] = (label, read, read(), show, reason)

    def note_host_read(self, t: Tensor, what: str) -> None:
        """The trace read the values of `t`, a tensor from outside the call, on the host (`.tolist()`,
        `.item()`, a Python `if` on it): they are baked into the program, which therefore applies
        only while `t` keeps its buffer and is not written in place."""
        data, version = t._data, t._version_value()
        name = self.labels.get(id(t), f"a tensor{list(t.shape)}")

        def read():  # (the values themselves only once the tensor was written or given a new buffer)
            if t._data is data and t._version_value() == version:
                return traced
            return t.shape, t.dtype, t._backend().to_numpy(t._data).tobytes()

        traced = (t.shape, t.dtype, t._backend().to_numpy(data).tobytes())
        self.note_python_value(
            ("host read", id(t)), f"the values of {name}, read by {what} at {user_source()}", read,
            show=lambda v: "as when traced",
            reason=lambda before, now: f"the values of {name}, which the trace read by {what}, changed")

    # --- the end ------------------------------------------------------------------------
    def finish(self, out_leaves: list, out_paths: list[str], arg_tensors: list[tuple[Tensor, int]]) -> TraceInfo:
        """Add outputs for results, write-backs and grads. Returns what the runtime needs."""
        g = self.graph
        user_out = []
        for leaf, path in zip(out_leaves, out_paths):
            if isinstance(leaf, Tensor):
                g.add_output(self.value_of(leaf), f"out{path}")
                user_out.append(len(g.outputs) - 1)
            else:
                user_out.append(None)
        arg_writes = []
        for traced, index in arg_tensors:
            if traced._value is not traced._arg_input:
                g.add_output(traced._value, f"writeback arg{index}")
                arg_writes.append((index, len(g.outputs) - 1))
        writes, born_writes = [], []
        for key, t in self.written.items():
            g.add_output(self.env[key][1], f"writeback {self.label(t)}")
            if t._born is self.born_mark:
                born_writes.append((weakref.ref(t), len(g.outputs) - 1))
            else:
                writes.append((t, len(g.outputs) - 1))
        grad_writes, arg_grad_writes = [], []
        for slot in self.grads.values():
            if slot.current is slot.initial:
                continue
            writes_to = arg_grad_writes if slot.arg is not None else grad_writes
            target = slot.arg if slot.arg is not None else slot.p
            if slot.current is None:
                writes_to.append((target, None))
            else:
                label = f"arg{slot.arg}" if slot.arg is not None else self.label(slot.p)
                g.add_output(self.value_of(slot.current), f"grad {label}")
                writes_to.append((target, len(g.outputs) - 1))
        return TraceInfo(user_out=user_out, arg_writes=arg_writes, writes=writes, born_writes=born_writes,
                         grad_writes=grad_writes, arg_grad_writes=arg_grad_writes,
                         arg_grad_had=[(s.arg, s.initial is not None) for s in self.grads.values()
                                       if s.guarded and s.arg is not None],
                         grad_had=[(s.p, s.initial is not None) for s in self.grads.values()
                                   if s.guarded and s.arg is None],
                         python_guards=[PythonGuard(*entry) for entry in self.python_guards.values()],
                         module_guards=list(self.modules.values()), random_count=self.n_random)

    def release(self) -> list[Tensor]:
        """Drop references (after finish) and return the traced tensors still alive: values the
        function stored somewhere (optimizer state made from a gradient, a cache on a module)."""
        self.env.clear()
        self.written.clear()
        self.grads.clear()
        alive = [t for t in (ref() for ref in self.traced) if t is not None]
        if alive:  # maybe only garbage in a reference cycle: collect, then look again
            del alive
            gc.collect()
            alive = [t for t in (ref() for ref in self.traced) if t is not None]
        return alive
