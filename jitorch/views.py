"""Views and in-place writes: remaking a view from its base, writing a view back into its base, and
the autograd history of an in-place op on a view.

A view remembers how it was made from its base (`Tensor._view_of`: the view primitives in order, see
`tensor.view_record`). That is all PyTorch's semantics need:

- `v.op_()` on a view under autograd gives the base the history "the old base with v's region
  replaced by op(v)" (a `copy_slices` node, PyTorch's CopySlices). Its backward sends the base's
  gradient, with that region zeroed, to the old base, and the region itself to op's result.
- v's own grad_fn, and that of every other view of the same storage, is then the view ops replayed
  on the base's new history. v gets it at once; the others when next used (`Tensor._refresh_history`:
  the storage's `_Counter.history` moved past the view's `_hist`), as PyTorch regenerates a view's
  grad_fn when its base's version changed.

The tracer (`jitorch.ir.trace`) uses `replay` and `unview` to functionalize writes through views.
"""

from __future__ import annotations

from ._trace_state import grad_mode, trace_state, user_source
from .autograd import Node
from .dispatch import dispatch
from .primitives import PRIMS, Prim, PrimKind
from .tensor import VIEW_NO_GRAD, Tensor, move_retain

# the node type of a write through a view: not a primitive of the IR, only an autograd step
COPY_SLICES = Prim("copy_slices", PrimKind.EXTERN, None)


def replay(chain: tuple, t: Tensor) -> Tensor:
    """The view of `t` that the view ops `chain` ((prim, params), ...) make (recorded like any op)."""
    for prim, params in chain:
        t = dispatch(prim, (t,), params)
    return t


def unview(chain: tuple, base: Tensor, written: Tensor) -> Tensor:
    """`base` with `written` put where the view `replay(chain, base)` looks (a new tensor)."""
    sources = [base]  # the base, then each intermediate view
    for prim, params in chain[:-1]:
        sources.append(dispatch(prim, (sources[-1],), params))
    new = written
    for (prim, params), source in zip(reversed(chain), reversed(sources)):
        new = _unview_one(prim, params, source, new)
    return new


def _unview_one(prim: Prim, params: dict, source: Tensor, written: Tensor) -> Tensor:
    name = prim.name
    if name == "reshape":
        return dispatch(PRIMS["reshape"], (written,), {"shape": tuple(source.shape)})
    if name == "permute":
        inverse = [0] * len(params["dims"])
        for i, d in enumerate(params["dims"]):
            inverse[d] = i
        return dispatch(PRIMS["permute"], (written,), {"dims": tuple(inverse)})
    if name == "getitem":
        return dispatch(PRIMS["index_put"], (source, written), {"key": params["key"], "accumulate": False})
    raise RuntimeError(
        f"unsupported in-place operation on a tensor of shape {tuple(written.shape)} at {user_source()}: it "
        "is an expanded view where several elements share one memory location. Use .clone() first.")


def _stand_in(t: Tensor, grad_fn=None, requires_grad: bool | None = None) -> Tensor:
    """A tensor sharing t's data (or traced value) with t's history as it is now (or `grad_fn`): an
    input for a node that t's later in-place writes, which replace t's grad_fn, must leave alone."""
    if requires_grad is None and t.requires_grad and t.grad_fn is None:
        return t  # a leaf that requires grad: its history never changes, and its gradient must reach it
    h = Tensor._make(t._data)
    h.grad_fn = t.grad_fn if requires_grad is None else grad_fn
    h.requires_grad = t.requires_grad if requires_grad is None else requires_grad
    h._device = t._device
    h._ver = t._counter()
    tracer = trace_state.tracer
    if t._value is not None:
        h._value = tracer.value_of(t) if tracer is not None else t._value
        h._contig = t._contig
    elif tracer is not None:
        # a concrete tensor: the tracer follows a same-storage alias to t (one lifted input, not two)
        h._base = t
        h._hist = h._ver.history
    return h


def _remade(chain: tuple, base: Tensor):
    """The grad_fn of the view `chain` of base's current history (recorded whatever the grad mode)."""
    prev = grad_mode.enabled
    grad_mode.enabled = True
    try:
        return replay(chain, _stand_in(base)).grad_fn
    finally:
        grad_mode.enabled = prev


def refresh_history(self: Tensor) -> bool:
    """Remake this view's grad_fn from its base's history (its base was written in place since it
    was made); returns whether it requires grad now. Installed as `Tensor._refresh_history`."""
    self._hist = self._ver.history
    view_of = self._view_of
    if view_of is None or self._base is None:
        return self.requires_grad  # (not a differentiable view: `detach()`'s tensor keeps its own history)
    base, chain, made = view_of
    if made != VIEW_NO_GRAD and base.requires_grad:
        self.grad_fn = _remade(chain, base)
        self.requires_grad = True
    return self.requires_grad


def rewrite_view_history(self: Tensor, node: Node | None) -> None:
    """After an in-place op wrote `node`'s result into view `self`: its base's history becomes the
    old base with this region replaced, and self's the view of that. Installed as
    `Tensor._rewrite_view_history`."""
    base, chain, _ = self._view_of
    written = _stand_in(self, node, node is not None)
    cs = Node(COPY_SLICES, (_stand_in(base), written), {"chain": chain}, base, vjp=_copy_slices_vjp)
    retained = base.grad_fn
    base.grad_fn = cs
    base.requires_grad = True
    move_retain(retained, base)
    self.grad_fn = _remade(chain, base)
    self.requires_grad = True


def _copy_slices_vjp(g: Tensor, node: Node) -> tuple:
    """The old base gets g with the view's region zeroed; the written result gets that region of g."""
    chain = node.params["chain"]
    base_needs, written_needs = node.needs
    written = node.inputs[1]
    g_written = replay(chain, g) if written_needs else None
    g_base = unview(chain, g, g.new_zeros(written._sizes())) if base_needs else None
    return g_base, g_written


Tensor._refresh_history = refresh_history
Tensor._rewrite_view_history = rewrite_view_history
