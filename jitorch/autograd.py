"""Reverse-mode autograd: graph nodes, grad mode, and an iterative backward walk.

Each differentiable op's output carries a `Node` (its `grad_fn`): the primitive, its inputs and
params, and the output's data. `backward` walks the nodes in reverse topological order without
recursion (Kahn's algorithm), so a chain of 100,000 ops does not overflow the stack. Vector-Jacobian
products are written with Tensor ops, so with `create_graph=True` the backward pass is itself
recorded and can be differentiated again.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Sequence

from . import _autocast
from ._trace_state import grad_mode as _grad_mode
from ._trace_state import trace_state
from .symbolic import same_sizes
from .tensor import Tensor

# primitive name -> its vector-Jacobian product: `jitorch.gradients.VJP`, the one table of them,
# handed over by `use_vjps` when that module loads (it is written with ops, which build on this one)
_vjps: dict[str, Callable] = {}


def use_vjps(table: dict[str, Callable]) -> None:
    global _vjps
    _vjps = table


def is_grad_enabled() -> bool:
    """Whether operations are being recorded for autograd."""
    return _grad_mode.enabled


class set_grad_enabled(contextlib.ContextDecorator):
    """Context manager and decorator that turns gradient recording on or off."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self.prev = _grad_mode.enabled
        _grad_mode.enabled = self.mode  # like torch: also works as a plain function call

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc) -> None:
        _grad_mode.enabled = self.prev


class _GradModeContext(contextlib.ContextDecorator):
    mode = True

    def __enter__(self) -> None:
        self.prev = _grad_mode.enabled
        _grad_mode.enabled = self.mode

    def __exit__(self, *exc) -> None:
        _grad_mode.enabled = self.prev

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)

        return wrapper


class no_grad(_GradModeContext):
    """Disable gradient recording inside a `with` block or a decorated function."""

    mode = False


class enable_grad(_GradModeContext):
    """Enable gradient recording inside a `with` block or a decorated function."""

    mode = True


class Node:
    """One recorded op: what backward needs to compute its inputs' gradients."""

    __slots__ = ("prim", "inputs", "input_fns", "params", "out_data", "out_value", "out_device", "out_version",
                 "saved_versions", "needs", "hooks", "retain", "vjp", "__weakref__")

    def __init__(self, prim, inputs, params, out, vjp: Callable | None = None) -> None:
        self.prim = prim
        self.vjp = vjp  # this node's own rule (a compiled program's backward); else the table's
        self.inputs = inputs
        for t in inputs:
            if t._base is not None and t._hist != t._ver.history:  # (as `_fresh`, inline: every node)
                t._refresh_history()  # a view whose base was written in place since it was made
        # each input's history as it was when this op read it: an in-place write to an input later
        # (`y.add_(y * 3)`) gives that tensor a new grad_fn, which must not become this node's producer
        self.input_fns = tuple([t.grad_fn for t in inputs])
        self.params = params
        self.out_data = out._data
        self.out_value = out._value  # set while tracing for jitorch.compile
        self.out_device = out._device
        self.needs = tuple(t.requires_grad for t in inputs)
        self.hooks = None
        self.retain = None
        saves, saves_out = range(len(inputs)) if prim.saves is None else prim.saves, prim.saves_out
        if prim.saves_by_input is not None:  # only what the gradients this node computes read
            saves, saves_out = prim.saved_when(self.needs)
        self.saved_versions = tuple((i, inputs[i]._counter(), inputs[i]._version_value())
                                    for i in saves)
        self.out_version = (out._counter(), 0) if saves_out else None
        if _grad_mode.collecting is not None:  # (a checkpointed region: `jitorch.utils.checkpoint`)
            _grad_mode.collecting.append(self)

    @property
    def out(self):
        """The op's output as a Tensor whose grad_fn is this node (for vjps and double backward)."""
        out = Tensor._make(self.out_data, grad_fn=self)
        out._device = self.out_device
        out._value = self.out_value
        return out

    def name(self) -> str:
        return "".join(p.capitalize() for p in self.prim.name.split("_")) + "Backward0"

    @property
    def next_functions(self) -> tuple:
        return tuple((fn, 0) for fn in self.input_fns) if self.inputs is not None else ()

    def register_hook(self, fn: Callable):
        if self.hooks is None:
            self.hooks = []
        self.hooks.append(fn)
        return _RemovableHandle(self.hooks, fn)

    def __repr__(self) -> str:
        return f"<{self.name()} object>"

    def check_saved(self) -> None:
        """Raise if a tensor this node saved was modified in place after the op ran."""
        if self.inputs is None:
            raise RuntimeError(
                f"Trying to backward through the graph a second time (op `{self.prim.name}`): the "
                "saved values were freed after the first backward. Pass retain_graph=True to the "
                "first backward() if you need to call it twice."
            )
        for i, counter, version in self.saved_versions:
            if counter.value != version:
                t = self.inputs[i]
                raise RuntimeError(_inplace_message(self.prim.name, f"input {i}", t, counter.value, version))
        if self.out_version is not None:
            counter, version = self.out_version
            if counter.value != version:
                shape = tuple(self.out_data.shape)
                raise RuntimeError(
                    f"one of the variables needed for gradient computation has been modified by an "
                    f"inplace operation: the output of `{self.prim.name}` (shape {shape}) is at version "
                    f"{counter.value}; expected version {version} instead. Clone it before modifying "
                    "it in place (y = y.clone()), or use the out-of-place op."
                )


def _inplace_message(op: str, which: str, t, now: int, then: int) -> str:
    return (
        f"one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: {which} of `{op}`, a {t.dtype.name} tensor of shape {tuple(t.shape)}, is at "
        f"version {now}; expected version {then} instead. Clone it before modifying it in place "
        "(x = x.clone()), or use the out-of-place op."
    )


class _RemovableHandle:
    def __init__(self, hooks: list, fn: Callable) -> None:
        self._hooks = hooks
        self._fn = fn

    def remove(self) -> None:
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)


def _topo_dependencies(roots: Sequence[Node]) -> dict[Node, int]:
    """Count, for each node reachable from roots, how many reachable nodes consume its output."""
    deps: dict[Node, int] = {}
    stack = list(roots)
    seen = set(roots)
    for r in roots:
        deps.setdefault(r, 0)
    while stack:
        node = stack.pop()
        if node.inputs is None:
            continue
        for fn in node.input_fns:
            if fn is None:
                continue
            deps[fn] = deps.get(fn, 0) + 1
            if fn not in seen:
                seen.add(fn)
                stack.append(fn)
    return deps


def sum_to_shape(g: Tensor, shape: tuple) -> Tensor:
    """Reduce a broadcast gradient back to an input's shape."""
    g_shape = g._sizes()
    if same_sizes(g_shape, shape):
        return g
    lead = len(g_shape) - len(shape)
    if lead < 0:
        return g.reshape(tuple(shape))
    kept = tuple(i + lead for i, s in enumerate(shape) if s == 1 and g_shape[i + lead] != 1)
    dims = tuple(range(lead)) + kept
    if not dims:  # (equal sizes, written differently: a symbolic size and the number it was guarded to be)
        return g.reshape(tuple(shape))
    if not kept:  # only leading dims to drop: one sum lands on the shape
        return g.sum(dims)
    g = g.sum(dims, keepdim=True)
    return g if same_sizes(g._sizes(), shape) else g.reshape(tuple(shape))


class PartialGrad:
    """A gradient kept in pieces until the backward walk needs it whole (a VJP may return one):
    gradients that reach one tensor from several places are added with `plus`, which may merge
    pieces (the slices of a tensor that a split or chunk made: `gradients.SliceGrad`) where adding
    whole tensors would cost a full-size pass each; `whole()` makes the Tensor."""

    def _sizes(self) -> tuple:
        raise NotImplementedError

    def plus(self, other) -> PartialGrad | Tensor:
        raise NotImplementedError

    def whole(self) -> Tensor:
        raise NotImplementedError


def _plus(a, b):
    """a + b for gradients, either of which may be a `PartialGrad`."""
    if isinstance(a, PartialGrad):
        return a.plus(b)
    if isinstance(b, PartialGrad):
        return b.plus(a)
    return a + b


def _whole(g):
    return g.whole() if isinstance(g, PartialGrad) else g


def _no_gradient(g, node) -> tuple:
    return (None,) * len(node.inputs)


def _node_vjp(node: Node, g):
    rule = node.vjp or _vjps.get(node.prim.name, _no_gradient)
    value = node.out_value
    if value is None or value.node is None:
        return rule(g, node)
    # while tracing a backward pass, its ops are attributed to the forward op's source line
    trace_state.vjp_source = "backward of " + value.node.source
    try:
        return rule(g, node)
    finally:
        trace_state.vjp_source = None


def _release_inputs(node: Node, deps: dict, ready: list) -> None:
    # A node that received no gradient still counts as visited for its producers.
    for fn in node.input_fns if node.inputs is not None else ():
        if fn is not None:
            deps[fn] -= 1
            if deps[fn] == 0:
                ready.append(fn)


def run_backward(roots, root_grads, retain_graph: bool, create_graph: bool, capture=None):
    """The backward walk. Accumulates into leaves' `.grad`, or, when `capture` maps tensors to
    slots, returns the gradients of those tensors instead (for `autograd.grad`). Outside autocast,
    even when called inside a region: each gradient keeps its forward value's dtype."""
    with _autocast.disabled():
        return _walk(roots, root_grads, retain_graph, create_graph, capture)


def _walk(roots, root_grads, retain_graph: bool, create_graph: bool, capture=None):
    grads: dict[Node, Tensor] = {}
    leaf_roots = []
    # arrays that someone else may hold (the caller's root gradients, retained grads, grads already
    # given to a leaf): a leaf must copy these rather than adopt them
    handed_out = {id(g._data) for g in root_grads}
    for t, g in zip(roots, root_grads):
        if t.grad_fn is None:
            leaf_roots.append((t, g))
        else:
            prev = grads.get(t.grad_fn)
            grads[t.grad_fn] = g if prev is None else prev + g
    captured: dict[int, Tensor] = {}
    capture_nodes = {}
    if capture is not None:
        for slot, t in enumerate(capture):
            if t.grad_fn is not None:
                capture_nodes.setdefault(t.grad_fn, []).append(slot)
    capture_leaves = {id(t): slot for slot, t in enumerate(capture)} if capture is not None else {}

    # Leaf gradients are summed over all paths first, so a leaf's hooks run once, on the total.
    pending: dict[int, list] = {}

    def to_leaf(t: Tensor, g: Tensor) -> None:
        slot = capture_leaves.get(id(t))
        if capture is not None:
            if slot is not None:
                prev = captured.get(slot)
                captured[slot] = g if prev is None else _plus(prev, g)
            return
        entry = pending.get(id(t))
        if entry is None:
            pending[id(t)] = [t, g]
        else:
            entry[1] = _plus(entry[1], g)

    def accumulate(t: Tensor, g: Tensor) -> None:
        g = _whole(g)
        for hook in t._hooks or ():
            out = hook(g)
            if out is not None:
                g = out
        if not create_graph:
            g = g.detach()
        functional = create_graph or g._value is not None or trace_state.tracer is not None
        if t.grad is None:
            # .grad must own its buffer: a later in-place update must not write into a graph value
            # or another gradient. A fresh result nothing else holds is adopted as is, saving a copy.
            data = g._data
            backend = t._backend()
            if functional:
                t.grad = g
            elif backend.owns_buffer(data) and id(data) not in handed_out:
                handed_out.add(id(data))
                t.grad = _grad_tensor(data, t)
            else:
                t.grad = _grad_tensor(backend.copy(data), t)
        elif functional:
            t.grad = t.grad + g
        else:
            t._backend().add_into(t.grad._data, g._data)

    for t, g in leaf_roots:
        if t.requires_grad:
            to_leaf(t, g)

    deps = _topo_dependencies(list(grads))
    ready = [n for n in grads if deps[n] == 0]
    with set_grad_enabled(create_graph):
        while ready:
            node = ready.pop()
            g = grads.pop(node, None)
            if g is None:
                _release_inputs(node, deps, ready)
                continue
            g = _whole(g)
            if node.saved_versions or node.out_version is not None or node.inputs is None:
                node.check_saved()
            if node.hooks:
                for hook in node.hooks:
                    out = hook(g)
                    if out is not None:
                        g = out
            if node.retain is not None:
                target = node.retain()
                if target is not None and target.grad_fn is node:
                    target.grad = g if create_graph else g.detach()
                    handed_out.add(id(g._data))
            if capture_nodes:
                for slot in capture_nodes.get(node, ()):
                    captured[slot] = g
            in_grads = _node_vjp(node, g)
            for t, fn, gi in zip(node.inputs, node.input_fns, in_grads):
                if gi is not None:
                    if not t.requires_grad:  # (a constant or the data: its gradient goes nowhere)
                        gi = None
                    elif not same_sizes(gi._sizes(), t._sizes()):
                        gi = sum_to_shape(gi, t._sizes())
                if fn is not None:
                    deps[fn] -= 1
                    if gi is not None:
                        prev = grads.get(fn)
                        grads[fn] = gi if prev is None else _plus(prev, gi)
                    if deps[fn] == 0:
                        ready.append(fn)
                elif gi is not None and t.requires_grad:
                    to_leaf(t, gi)
            if not retain_graph:
                node.inputs = node.input_fns = None
                node.out_data = None
        for t, g in pending.values():
            accumulate(t, g)
    return {slot: _whole(g) for slot, g in captured.items()}


def _grad_tensor(data, like: Tensor) -> Tensor:
    g = Tensor._make(data)
    g._device = like._device
    return g


def _make_root_grads(outputs, grad_outputs, what: str):
    result = []
    for i, (t, g) in enumerate(zip(outputs, grad_outputs)):
        _fresh(t)
        if not t.requires_grad:
            raise RuntimeError(
                f"{what}: element {i} of the outputs (shape {tuple(t.shape)}) does not require grad "
                "and has no grad_fn. Did you compute it under no_grad(), or from tensors without "
                "requires_grad=True?"
            )
        if g is None:
            if t.numel() != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs, but {what} got an output "
                    f"of shape {tuple(t.shape)}. Pass a gradient of that shape, e.g. "
                    "out.backward(jitorch.ones_like(out)), or reduce it first (out.sum().backward())."
                )
            g = t.new_ones(t.shape)
        elif not isinstance(g, Tensor):
            g = t.new_tensor(g)
        if g.shape != t.shape:
            raise RuntimeError(
                f"{what}: gradient of shape {tuple(g.shape)} does not match output {i} of shape "
                f"{tuple(t.shape)}"
            )
        result.append(g)
    return result


def _fresh(t: Tensor) -> None:
    """Bring a view's grad_fn up to date if its base was written in place since it was made."""
    if t._base is not None and t._hist != t._ver.history:
        t._refresh_history()


def _as_seq(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def backward(tensors, grad_tensors=None, retain_graph: bool | None = None,
             create_graph: bool = False, inputs=None) -> None:
    """Accumulate gradients of `tensors` into the `.grad` of the leaves that require grad."""
    tensors = _as_seq(tensors)
    grads = _as_seq(grad_tensors) or [None] * len(tensors)
    roots = _make_root_grads(tensors, grads, "backward()")
    if retain_graph is None:
        retain_graph = create_graph
    if inputs is not None:
        inputs = _as_seq(inputs)
        found = run_backward(tensors, roots, retain_graph, create_graph, capture=inputs)
        for slot, t in enumerate(inputs):
            g = found.get(slot)
            if g is not None:
                t.grad = g if t.grad is None else t.grad + g
        return
    run_backward(tensors, roots, retain_graph, create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None,
         create_graph: bool = False, allow_unused: bool = False) -> tuple:
    """Return the gradients of `outputs` with respect to `inputs` without touching `.grad`.

    Example: `(gx,) = jitorch.autograd.grad(y.sum(), [x], create_graph=True)` then differentiate `gx`.
    """
    outputs = _as_seq(outputs)
    single = not isinstance(inputs, (list, tuple))
    inputs = _as_seq(inputs)
    for i, t in enumerate(inputs):
        _fresh(t)
        if not t.requires_grad:
            raise RuntimeError(f"autograd.grad: input {i} (shape {tuple(t.shape)}) does not require grad")
    grads = _as_seq(grad_outputs) or [None] * len(outputs)
    roots = _make_root_grads(outputs, grads, "autograd.grad()")
    if retain_graph is None:
        retain_graph = create_graph
    found = run_backward(outputs, roots, retain_graph, create_graph, capture=inputs)
    result = []
    for slot, t in enumerate(inputs):
        g = found.get(slot)
        if g is None and not allow_unused:
            raise RuntimeError(
                f"autograd.grad: input {slot} (shape {tuple(t.shape)}) was not used to compute the "
                "outputs. Pass allow_unused=True to get None for it."
            )
        result.append(g if g is None or create_graph else g.detach())
    return tuple(result) if not single or len(result) != 1 else tuple(result)


def retain_node_grad(t) -> None:
    """Make backward store the gradient of non-leaf `t` in `t.grad`."""
    if t.grad_fn is not None:
        t.grad_fn.retain = weakref.ref(t)


# --- the autograd methods of Tensor ---------------------------------------------------------------


def _tensor_backward(self: Tensor, gradient=None, retain_graph: bool | None = None, create_graph: bool = False,
                     inputs=None) -> None:
    """Accumulate d(self)/d(leaf) into every leaf's `.grad` (see `jitorch.autograd.backward`)."""
    backward(self, gradient, retain_graph, create_graph, inputs)


def _tensor_register_hook(self: Tensor, hook):
    """Call `hook(grad)` when this tensor's gradient is computed; it may return a new grad."""
    _fresh(self)
    if not self.requires_grad:
        raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
    if self.grad_fn is not None:
        return self.grad_fn.register_hook(hook)
    if self._hooks is None:
        self._hooks = []
    self._hooks.append(hook)
    return _RemovableHandle(self._hooks, hook)


def _tensor_retain_grad(self: Tensor) -> None:
    """Keep this non-leaf tensor's gradient in `.grad` after backward."""
    _fresh(self)
    if not self.requires_grad:
        raise RuntimeError("can't retain_grad on a tensor that has requires_grad=False")
    retain_node_grad(self)


Tensor.backward = _tensor_backward
Tensor.register_hook = _tensor_register_hook
Tensor.retain_grad = _tensor_retain_grad
