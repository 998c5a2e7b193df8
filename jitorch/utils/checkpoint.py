"""Activation checkpointing, as `torch.utils.checkpoint`: `checkpoint(fn, *args)` keeps only what
enters and leaves `fn` for the backward pass, and runs `fn` again during backward to recompute the
rest, trading compute for the memory of its intermediate values.

The forward runs once as usual, building `fn`'s autograd graph; the nodes made inside it are noted
(`grad_mode.collecting`), and what they read from outside (the arguments, parameters and earlier
values that require grad: the region's boundary) is found from them. Each differentiable output then
gets one node of its own over that boundary in place of the region's graph, which is dropped, so
the intermediate values it held are freed. That node's backward restores the random number
generator as it was before the forward (a dropout draws the same mask), runs `fn` again with grad
on, and differentiates the recomputed output with respect to the boundary (`_recompute_vjp`). Under
`jitorch.compile` the recompute is traced into the backward graph, its nodes marked with a region
number (`Node.region`) so that no pass merges them with the forward values they recompute: those die
at the end of the forward region, and the backward computes them again (fused into its kernels),
drawing its random numbers from the same place in the call's stream as the forward did.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator

from .. import autograd as _ag
from .._trace_state import grad_mode, trace_state
from ..primitives import Prim, PrimKind
from ..random import get_rng_state, set_rng_state
from ..tensor import Tensor

_regions = itertools.count(1)  # numbers for traced recomputes (`Node.region`)
_CHECKPOINT = Prim("checkpoint", PrimKind.EXTERN, None, saves=None)  # (the recompute reads every input)


def checkpoint(function: Callable, *args, use_reentrant: bool | None = None, context_fn=None,
               determinism_check: str = "default", debug: bool = False, preserve_rng_state: bool = True,
               **kwargs):
    """`function(*args, **kwargs)`, whose intermediate values are recomputed in the backward pass
    instead of kept (PyTorch's `torch.utils.checkpoint.checkpoint`; `use_reentrant` True or False
    behave alike here, as PyTorch's non-reentrant form: parameters read inside `function` get their
    gradients, and inputs need not require grad). Returns what `function` returns."""
    if use_reentrant not in (None, True, False):
        raise TypeError(f"checkpoint: use_reentrant must be True, False or None, got {use_reentrant!r}")
    if context_fn is not None:
        raise NotImplementedError("checkpoint: context_fn (selective checkpointing) is not supported")
    if determinism_check not in ("default", "none"):
        raise ValueError(f"checkpoint: determinism_check must be 'default' or 'none', got {determinism_check!r}")
    if not _ag.is_grad_enabled():
        return function(*args, **kwargs)
    start = _RandomStart() if preserve_rng_state else None
    made: list = []
    saved, grad_mode.collecting = grad_mode.collecting, made
    try:
        out = function(*args, **kwargs)
    finally:
        grad_mode.collecting = saved
    if saved is not None:
        saved.extend(made)  # (a checkpoint inside another: the outer region holds these nodes too)
    outputs = [out] if isinstance(out, Tensor) else list(out) if isinstance(out, (tuple, list)) else []
    region = {id(node) for node in made}
    boundary = _boundary(made, region)
    if not boundary:
        return out
    for k, t in enumerate(outputs):
        if isinstance(t, Tensor) and t.grad_fn is not None and id(t.grad_fn) in region:
            vjp = _recompute_vjp(function, args, kwargs, k, boundary, start)
            t.grad_fn = _ag.Node(_CHECKPOINT, tuple(boundary), {}, t, vjp=vjp)
    return out


def _boundary(made: list, region: set[int]) -> list[Tensor]:
    """The tensors requiring grad that the region's nodes read from outside it, each once."""
    found: dict[int, Tensor] = {}
    for node in made:
        for t in node.inputs or ():
            if t.requires_grad and (t.grad_fn is None or id(t.grad_fn) not in region):
                found.setdefault(id(t), t)
    return list(found.values())


class _RandomStart:
    """Where a region's random numbers start: the generator's state eagerly; while traced, the
    trace's count of numbers drawn (a traced draw's place in the call's stream)."""

    def __init__(self) -> None:
        self.tracer = trace_state.tracer
        self.at = self._now()

    def _now(self):
        return get_rng_state() if self.tracer is None else self.tracer.n_random

    def _set(self, at) -> None:
        if self.tracer is None:
            set_rng_state(at)
        else:
            self.tracer.n_random = at

    @contextlib.contextmanager
    def replayed(self) -> Iterator[None]:
        """Inside: random numbers drawn from where the region's were; after, from where they were."""
        after = self._now()
        self._set(self.at)
        try:
            yield
        finally:
            self._set(after)


def _recompute_vjp(function: Callable, args: tuple, kwargs: dict, k: int, boundary: list[Tensor],
                   start: _RandomStart | None):
    """The backward of output `k`: run `function` again and differentiate that output with respect
    to the boundary. While it runs, each boundary tensor computed by earlier ops stands as a leaf
    (its `grad_fn` set aside and put back after), so that differentiating the recomputed output stops
    at the boundary instead of walking, and freeing, the graph before it: the backward pass that
    called this goes on from there."""

    def vjp(g: Tensor, node) -> tuple:
        cut = [(t, t.grad_fn) for t in boundary if t.grad_fn is not None]
        region = trace_state.recompute
        try:
            for t, _ in cut:
                t.grad_fn = None
            if trace_state.tracer is not None:  # (its nodes marked: no pass merges them with the forward's)
                trace_state.recompute = next(_regions)
            with start.replayed() if start is not None else contextlib.nullcontext(), _ag.enable_grad():
                out = function(*args, **kwargs)
            recomputed = out if isinstance(out, Tensor) else list(out)[k]
            return tuple(_ag.grad([recomputed], boundary, [g], allow_unused=True))
        finally:
            trace_state.recompute = region
            for t, fn in cut:
                t.grad_fn = fn

    return vjp


def checkpoint_sequential(functions, segments: int, input, use_reentrant: bool | None = None, **kwargs):
    """Run `functions` (an `nn.Sequential` or a list of modules) on `input` in `segments` chunks,
    each but the last checkpointed (PyTorch's `torch.utils.checkpoint.checkpoint_sequential`)."""
    layers: list = list(functions.children()) if hasattr(functions, "children") else list(functions)
    if segments < 1:
        raise ValueError(f"checkpoint_sequential: segments must be at least 1, got {segments}")
    size = len(layers) // segments or 1
    x = input
    start = 0
    for _ in range(segments - 1):
        end = min(start + size, len(layers))
        if start >= end:
            break
        x = checkpoint(_run_layers(layers[start:end]), x, use_reentrant=use_reentrant, **kwargs)
        start = end
    return _run_layers(layers[start:])(x)


def _run_layers(layers: Iterable) -> Callable:
    layers = list(layers)

    def run(x):
        for layer in layers:
            x = layer(x)
        return x

    return run
