"""Autocast's state and op policy (the user's side is `jitorch.amp.autocast`).

Inside an autocast region for a device type, an op listed in that device's policy casts its
floating-point arguments on that device before it runs, as PyTorch's autocast does:

- "lower": to the region's dtype (bfloat16 or float16): the products and convolutions, which the
  GPU's tensor cores run many times faster in 16 bits;
- "float32": to float32: ops whose results lose too much in 16 bits (exponentials and logarithms,
  softmax, normalizations, sums, the losses);
- "promote": to the widest floating dtype among them: ops that need one dtype across their inputs;
- "as_given": no cast, and the op's own inner ops run outside autocast (a composite PyTorch runs
  below autocast on that device).

Every other op runs in the dtypes it is given (binary ops promote as always). float64 arguments are
never cast, nor tensors on other devices than the region's, as in PyTorch. The tables are PyTorch's
own lists (per device type: its CUDA and CPU lists differ) restricted to the ops jitorch has.

The policy sits at the op level (`autocasts(name)` on the function users call), so composites
follow it and a traced function records the casts as IR nodes that fuse like any other. The state
is per thread; a region's entry and exit are the only writers. Backward runs outside autocast
(`disabled()`): each gradient keeps the dtype of the forward value it belongs to.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_HALF_AND_SINGLE = ("float16", "bfloat16", "float32")

# PyTorch's autocast lists (torch/csrc/autograd/autocast_mode.cpp and its docs), per device type,
# for the ops jitorch has: op name -> policy
_CUDA_POLICY = {
    **dict.fromkeys(("matmul", "mm", "bmm", "addmm", "baddbmm", "linear", "conv1d", "conv2d", "conv3d",
                     "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "scaled_dot_product_attention"),
                    "lower"),
    "einsum": "lower",  # (on the GPU every einsum, a diagonal too: measured against PyTorch's)
    **dict.fromkeys(("pow", "exp", "expm1", "log", "log1p", "log2", "log10", "reciprocal", "rsqrt", "sum", "prod",
                     "cumsum", "norm", "softmax", "log_softmax", "layer_norm", "group_norm", "normalize", "softplus",
                     "nll_loss", "cross_entropy", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div",
                     "binary_cross_entropy_with_logits", "cosine_similarity"), "float32"),
    **dict.fromkeys(("dot", "bilinear", "addcmul", "addcdiv"), "promote"),
    # not on the list, and PyTorch's CUDA tensordot multiplies into an output of the inputs' type
    # (an out= product, which autocast leaves alone): its product stays in the given dtypes
    "tensordot": "as_given",
}
_CPU_POLICY = {
    **dict.fromkeys(("matmul", "mm", "bmm", "addmm", "baddbmm", "linear", "conv1d", "conv2d", "conv3d",
                     "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "scaled_dot_product_attention"),
                    "lower"),
    # einsum is not on the CPU's list, but PyTorch runs a product of operands that sums an index two
    # of them share as bmm, which is: then its result is the low type, else float32
    "einsum": "contraction",
    **dict.fromkeys(("prod", "binary_cross_entropy", "nll_loss", "cross_entropy", "mse_loss", "l1_loss",
                     "smooth_l1_loss", "huber_loss", "kl_div", "binary_cross_entropy_with_logits"), "float32"),
    **dict.fromkeys(("cat", "stack"), "promote"),
}
POLICY = {"cuda": _CUDA_POLICY, "cpu": _CPU_POLICY}
DEFAULT_DTYPE = {"cuda": "float16", "cpu": "bfloat16"}  # as PyTorch's


class _State(threading.local):
    def __init__(self) -> None:
        self.regions: dict[str, object] = {}  # device type -> the dtype of its innermost enabled region


_state = _State()


def regions() -> dict[str, object]:
    """Device type -> the autocast dtype of each device type inside an enabled region (this thread)."""
    return _state.regions


def key() -> tuple:
    """The autocast state as a compiled function's guard: (device type, dtype name) pairs."""
    regions = _state.regions
    return tuple(sorted((d, t.name) for d, t in regions.items())) if regions else ()  # (every compiled call asks)


@contextmanager
def region(device_type: str, dtype, enabled: bool) -> Iterator[None]:
    """Inside: autocast on `device_type` in `dtype` (or off for it, `enabled=False`); then as before."""
    saved = dict(_state.regions)
    if enabled:
        _state.regions[device_type] = dtype
    else:
        _state.regions.pop(device_type, None)
    try:
        yield
    finally:
        _state.regions = saved


@contextmanager
def disabled() -> Iterator[None]:
    """No autocast inside (a backward pass: gradients keep their forward values' dtypes)."""
    saved = _state.regions
    _state.regions = {}
    try:
        yield
    finally:
        _state.regions = saved


def autocasts(name: str) -> Callable[[Callable], Callable]:
    """Make op `name` follow the autocast policy (`POLICY`): outside any region it costs one
    attribute read per call."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def op(*args, **kwargs):
            active = _state.regions
            if not active or not any(name in POLICY.get(device_type, ()) for device_type in active):
                return fn(*args, **kwargs)
            args, kwargs = _cast_arguments(name, active, args, kwargs)
            with disabled():  # (as PyTorch runs a listed op below autocast: a composite's own ops stay put)
                return fn(*args, **kwargs)

        return op

    return wrap


def _contracts(equation: str) -> bool:
    """Whether einsum `equation` multiplies operands summing an index two of them have ("ij,jk->ik")."""
    inputs, arrow, output = equation.replace(" ", "").partition("->")
    operands = [set(op) - {"."} for op in inputs.split(",")]
    shared = {c for k, op in enumerate(operands) for other in operands[k + 1:] for c in op & other}
    kept = set(output) if arrow else {c for c in set(inputs) if inputs.count(c) == 1}
    return len(operands) >= 2 and bool(shared - kept)


def _cast_arguments(name: str, active: dict, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    from .tensor import Tensor

    def eligible(x) -> bool:
        return (isinstance(x, Tensor) and x.dtype.name in _HALF_AND_SINGLE and x._device.type in active
                and name in POLICY.get(x._device.type, ()))

    found = [x for x in (*args, *kwargs.values()) if eligible(x)]
    found += [y for x in args if isinstance(x, (list, tuple)) for y in x if eligible(y)]
    if not found:
        return args, kwargs
    device_type = found[0]._device.type
    kind = POLICY[device_type][name]
    if kind == "as_given":
        return args, kwargs
    if kind == "contraction":
        if not _contracts(args[0] if args and isinstance(args[0], str) else kwargs.get("equation", "")):
            return args, kwargs
        kind = "lower"
    if kind == "lower":
        target = active[device_type]
    elif kind == "float32":
        from .dtypes import float32 as target
    else:  # the widest: one 16-bit type as it is, float32 where there is one or both 16-bit types meet
        names = {x.dtype.name for x in found}
        if len(names) == 1:
            target = found[0].dtype
        else:
            from .dtypes import float32 as target

    def cast(x):
        if isinstance(x, (list, tuple)):
            return type(x)(cast(y) for y in x)
        return x.to(target) if eligible(x) and x.dtype != target else x

    return tuple(cast(x) for x in args), {k: cast(v) for k, v in kwargs.items()}
