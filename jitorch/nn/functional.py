"""`jitorch.nn.functional`: layers, activations and losses as functions, PyTorch's names and signatures.

Every function here is a composite of jitorch ops (Tensor methods), never a numpy shortcut: the
compiler traces, differentiates and fuses exactly this code. Shapes and other static values are
plain Python (checked eagerly, baked into a trace); data values are only read to raise PyTorch's
errors on eager tensors (e.g. a class index out of range), never while tracing.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from .. import dtypes as _dt
from .. import ops as _ops
from .._autocast import autocasts
from ..creation import full_like, rand
from ..dispatch import dispatch, fuses_composites
from ..primitives import PRIMS, broadcast_shapes, conv_out_size
from ..tensor import Tensor

__all__ = [
    "linear",
    "bilinear",
    "relu",
    "relu6",
    "gelu",
    "silu",
    "mish",
    "tanh",
    "sigmoid",
    "logsigmoid",
    "softplus",
    "leaky_relu",
    "elu",
    "hardtanh",
    "softmax",
    "log_softmax",
    "dropout",
    "layer_norm",
    "rms_norm",
    "batch_norm",
    "group_norm",
    "embedding",
    "embedding_bag",
    "one_hot",
    "pad",
    "normalize",
    "cross_entropy",
    "nll_loss",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "unfold",
    "fold",
    "max_pool2d",
    "max_pool3d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool3d",
    "adaptive_avg_pool2d",
    "interpolate",
    "affine_grid",
    "grid_sample",
    "scaled_dot_product_attention",
    "softmin",
    "selu",
    "celu",
    "glu",
    "hardsigmoid",
    "hardswish",
    "hardshrink",
    "softshrink",
    "softsign",
    "tanhshrink",
    "threshold",
    "prelu",
    "rrelu",
    "gumbel_softmax",
    "dropout1d",
    "dropout2d",
    "alpha_dropout",
    "instance_norm",
    "cosine_similarity",
    "pairwise_distance",
    "pixel_shuffle",
    "pixel_unshuffle",
    "kl_div",
    "cosine_embedding_loss",
    "margin_ranking_loss",
    "triplet_margin_loss",
    "hinge_embedding_loss",
    "soft_margin_loss",
    "multilabel_soft_margin_loss",
    "poisson_nll_loss",
    "gaussian_nll_loss",
    "ctc_loss",
    "max_pool1d",
    "avg_pool1d",
    "adaptive_avg_pool1d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
]

unfold = _ops.unfold
fold = _ops.fold


# ---------------------------------------------------------------------------------------------
# helpers


def _const(array, like: Tensor) -> Tensor:
    """A constant tensor (an index map, a mask pattern) on `like`'s device: static, never data."""
    return _ops.as_operand(np.asarray(array), like)


def _composites():
    """`jitorch.compiler.composites`, which runs an eager composite as a cached compiled function
    where the backend fuses eager composites (`fuses_composites`). The compiler is a layer above
    this module: imported when first needed."""
    from ..compiler import composites

    return composites


def _positions_along(t: Tensor, dim: int) -> Tensor:
    """0, 1, ..., t.shape[dim] - 1 along `dim`, shaped to broadcast against `t` (a static constant)."""
    size, trailing = t.shape[dim], t.ndim - 1 - dim % t.ndim
    return _const(np.arange(size, dtype=np.int64).reshape((size,) + (1,) * trailing), t)


def _is_concrete(t: Tensor) -> bool:
    """Whether `t` holds real data we may read for an eager error check (not traced, not meta)."""
    return t._value is None and t._device.type != "meta"


def _pair(v, n: int = 2) -> tuple[int, ...]:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 else v


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{reduction} is not a valid value for reduction (use 'mean', 'sum' or 'none')")


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    """PyTorch's deprecated size_average/reduce arguments, mapped to `reduction`."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "none" if not reduce else "mean" if size_average else "sum"


def _in_place_if(inplace: bool, input: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
    """`compute(input)`, written into `input` for the `inplace=True` forms of the activations and
    dropouts. In place it is computed from the value `input` held before the write (`Tensor._inplace`),
    so autograd reaches the input's history: computed from `input` itself and copied in, the result's
    graph would lead back to the rewritten tensor and the gradient would stop there."""
    return input._inplace(compute) if inplace else compute(input)


# ---------------------------------------------------------------------------------------------
# linear


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b for x of shape (*, in_features), W of shape (out_features, in_features).

    Where the backend fuses eager composites (the GPU), a well-formed call runs as one cached
    compiled function, autocast's casts included: its product takes the bias (and under autocast
    the casts of the gradients) as an epilogue, and its backward is one node, where op by op it
    is five dispatches forward (reshape, transpose, product, reshape, add) and as many backward."""
    if (weight.ndim == 2 and input.ndim >= 1 and input.shape[-1] == weight.shape[1]
            and input.dtype.is_floating_point and weight.dtype.is_floating_point
            and (bias is None or tuple(bias.shape) == (weight.shape[0],))
            and fuses_composites(input, weight, bias)):
        return _composites().call(_linear, input=input, weight=weight, bias=bias)
    return _linear(input, weight, bias)


@autocasts("linear")
def _linear(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # (traced as a composite, this wrapper's casts are traced too, under the caller's autocast state,
    # which the compiled function's guards check)
    if weight.ndim == 2 and input.ndim > 2:
        # one 2-D GEMM over all leading dims (and one for each gradient), never a broadcast batched
        # matmul: numpy runs those without BLAS, far slower, and the weight grad would need a sum
        lead = input.shape[:-1]
        out = input.reshape(-1, input.shape[-1]) @ weight.t()
        out = out.reshape(*lead, weight.shape[0])
    else:
        out = input @ weight.t() if weight.ndim == 2 else input @ weight
    return out if bias is None else out + bias


@autocasts("bilinear")
def bilinear(input1: Tensor, input2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y_k = x1^T W_k x2 + b_k, W of shape (out, in1, in2)."""
    lead = input1.shape[:-1]
    x1 = input1.reshape(-1, input1.shape[-1])
    x2 = input2.reshape(-1, input2.shape[-1])
    out_f, in1, in2 = weight.shape
    # (B, in1) @ (in1, out*in2) -> (B, out, in2), then contract in2 with x2
    t = (x1 @ weight.permute(1, 0, 2).reshape(in1, out_f * in2)).reshape(-1, out_f, in2)
    out = (t * x2.unsqueeze(1)).sum(-1)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, out_f)


# ---------------------------------------------------------------------------------------------
# activations


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """max(x, 0)."""
    return input.relu_() if inplace else input.relu()


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """min(max(x, 0), 6)."""
    return hardtanh(input, 0.0, 6.0, inplace)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    """x clamped to [min_val, max_val]."""
    return input.clamp_(min_val, max_val) if inplace else input.clamp(min_val, max_val)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x): exact through erf, or PyTorch's tanh approximation (`approximate="tanh"`)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate argument must be either none or tanh, got {approximate!r}")
    if input.dtype.is_floating_point and fuses_composites(input):
        return _composites().call(_gelu, input=input, approximate=approximate)
    return _gelu(input, approximate)


def _gelu(input: Tensor, approximate: str) -> Tensor:
    if approximate == "none":
        return input * 0.5 * (1.0 + (input * (1.0 / math.sqrt(2.0))).erf())
    inner = (input + 0.044715 * input * input * input) * math.sqrt(2.0 / math.pi)
    return input * 0.5 * (1.0 + inner.tanh())


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """x * sigmoid(x) (swish)."""
    return input * input.sigmoid()


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """x * tanh(softplus(x))."""
    return input * softplus(input).tanh()


def tanh(input: Tensor) -> Tensor:
    return input.tanh()


def sigmoid(input: Tensor) -> Tensor:
    return input.sigmoid()


def logsigmoid(input: Tensor) -> Tensor:
    """log(sigmoid(x)), stable for large |x|: min(x, 0) - log1p(exp(-|x|))."""
    return input.clamp(max=0.0) - (-input.abs()).exp().log1p()


@autocasts("softplus")
def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, linear where beta x > threshold (as PyTorch)."""
    scaled = input * beta if beta != 1 else input
    # clamp first so the branch `where` discards never overflows (inf * 0 would poison the gradient)
    soft = scaled.clamp(max=threshold).exp().log1p()
    if beta != 1:
        soft = soft / beta
    return _ops.where(scaled > threshold, input, soft)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """x where x > 0, else negative_slope * x."""
    return _in_place_if(inplace, input, lambda x: _ops.where(x > 0, x, x * negative_slope))


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x where x > 0, else alpha * (exp(x) - 1)."""
    def compute(x: Tensor) -> Tensor:
        neg = x.clamp(max=0.0).expm1()  # clamped: the discarded branch must not overflow
        return _ops.where(x > 0, x, neg * alpha if alpha != 1 else neg)

    return _in_place_if(inplace, input, compute)


def _softmax_dim(ndim: int) -> int:
    # PyTorch's legacy choice when dim is not given
    return 0 if ndim in (0, 1, 3) else 1


@autocasts("softmax")
def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    """exp(x) / sum(exp(x)) along `dim`."""
    return input.softmax(_softmax_dim(input.ndim) if dim is None else dim, dtype=dtype)


@autocasts("log_softmax")
def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    """x - logsumexp(x) along `dim`."""
    return input.log_softmax(_softmax_dim(input.ndim) if dim is None else dim, dtype=dtype)


def softmin(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    """softmax(-x) along `dim`: weights that favour the smallest entries."""
    return softmax(-input, dim, dtype=dtype)


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    """scale * elu(x, alpha) with the self-normalizing constants of Klambauer et al."""
    return _in_place_if(inplace, input, lambda x: elu(x, _SELU_ALPHA) * _SELU_SCALE)


def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x where x > 0, else alpha * (exp(x / alpha) - 1): elu made continuously differentiable."""
    if alpha == 0:
        raise RuntimeError("ZeroDivisionError: alpha cannot be 0 for CELU")
    def compute(x: Tensor) -> Tensor:
        neg = (x.clamp(max=0.0) / alpha).expm1() * alpha  # clamped: the discarded branch must not overflow
        return _ops.where(x > 0, x, neg)

    return _in_place_if(inplace, input, compute)


def glu(input: Tensor, dim: int = -1) -> Tensor:
    """a * sigmoid(b), where a and b are the two halves of `input` along `dim`."""
    if input.ndim == 0:
        raise RuntimeError("glu does not support scalars because halving size must be even")
    if input.shape[dim] % 2:
        raise RuntimeError(
            f"Halving dimension must be even, but dimension {dim % input.ndim} is size {input.shape[dim]} "
            f"(input shape {list(input.shape)})"
        )
    a, b = input.chunk(2, dim)
    return a * b.sigmoid()


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """relu6(x + 3) / 6: a piecewise-linear sigmoid."""
    return _in_place_if(inplace, input, lambda x: (x + 3.0).clamp(0.0, 6.0) / 6.0)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """x * relu6(x + 3) / 6 (MobileNetV3)."""
    return _in_place_if(inplace, input, lambda x: x * (x + 3.0).clamp(0.0, 6.0) / 6.0)


def hardshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """x where |x| > lambd, else 0."""
    return _ops.where(input.abs() > lambd, input, 0.0)


def softshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """x - lambd above lambd, x + lambd below -lambd, else 0 (the proximal operator of the L1 norm)."""
    if lambd < 0:
        raise RuntimeError(
            f"lambda must be in range [0, {_dt.finfo(input.dtype).max:g}] for input dtype {input.dtype}, but found "
            f"{lambd:g}"
        )
    return _ops.where(input > lambd, input - lambd, _ops.where(input < -lambd, input + lambd, 0.0))


def softsign(input: Tensor) -> Tensor:
    """x / (1 + |x|)."""
    return input / (input.abs() + 1.0)


def tanhshrink(input: Tensor) -> Tensor:
    """x - tanh(x)."""
    return input - input.tanh()


def threshold(input: Tensor, threshold: float, value: float, inplace: bool = False) -> Tensor:
    """x where x > threshold, else value."""
    return _in_place_if(inplace, input, lambda x: _ops.where(x > threshold, x, value))


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """x where x > 0, else weight * x, with one learned slope per channel (dim 1) or one for all."""
    if weight.ndim > 1:
        raise RuntimeError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: ndim = {weight.ndim}")
    if weight.numel() != 1:
        channels = input.shape[1] if input.ndim >= 2 else 1
        if weight.numel() != channels:
            raise RuntimeError(
                f"Mismatch of parameter numbers and input channel size. Found parameter numbers = "
                f"{weight.numel()} and channel size = {channels}. (input shape {list(input.shape)}: give PReLU "
                "num_parameters equal to the channels, dim 1, or 1)"
            )
    weight = weight.reshape(()) if weight.numel() == 1 else weight.reshape(_channel_shape(input))
    return _ops.where(input > 0, input, input * weight)


def rrelu(
    input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False, inplace: bool = False
) -> Tensor:
    """Leaky ReLU whose negative slope is drawn from U(lower, upper) per element in training (from
    jitorch's generator) and is (lower + upper) / 2 in eval."""
    if not training:
        return leaky_relu(input, (lower + upper) / 2, inplace)
    slopes = rand(*input.shape, dtype=input.dtype, device=input.device) * (upper - lower) + lower
    return _in_place_if(inplace, input, lambda x: _ops.where(x > 0, x, x * slopes))


def gumbel_softmax(logits: Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10, dim: int = -1) -> Tensor:
    """softmax((logits + g) / tau) with Gumbel(0, 1) noise g from jitorch's generator.

    `hard=True` returns the one-hot of the argmax, whose gradient is the soft sample's
    (the straight-through estimator). `eps` is unused, as in PyTorch (kept for its signature).
    """
    uniform = rand(*logits.shape, dtype=logits.dtype, device=logits.device)
    # -log(Exp(1)) as PyTorch draws it; the clamp keeps log(0) out of a rare u == 0
    gumbels = -(-uniform.clamp(min=_dt.finfo(logits.dtype).tiny).log()).log()
    soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return soft
    one_hot_max = (_positions_along(soft, dim) == soft.argmax(dim, keepdim=True)).to(soft.dtype)
    return one_hot_max - soft.detach() + soft


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (identity in eval).

    The mask comes from `jitorch.rand`, so a compiled step can turn it into a seeded random op.
    """
    _check_dropout_p(p)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return _in_place_if(inplace, input, lambda x: x * 0.0)
    keep = rand(*input.shape, dtype=input.dtype, device=input.device) >= p
    return _in_place_if(inplace, input, lambda x: _ops.where(keep, x * (1.0 / (1.0 - p)), 0.0))


def _check_dropout_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _feature_dropout(input: Tensor, p: float, training: bool, inplace: bool, batched: bool) -> Tensor:
    """Zero whole channels: one keep/drop draw per (sample, channel), broadcast over the rest."""
    _check_dropout_p(p)
    if not training or p == 0.0:
        return input
    lead = 2 if batched else 1
    mask_shape = tuple(input.shape[:lead]) + (1,) * (input.ndim - lead)
    keep = rand(*mask_shape, dtype=input.dtype, device=input.device) >= p
    if p == 1.0:
        return _in_place_if(inplace, input, lambda x: x * 0.0)
    return _in_place_if(inplace, input, lambda x: _ops.where(keep, x * (1.0 / (1.0 - p)), 0.0))


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of an (N, C, L) or (C, L) input with probability p (scale the rest by 1/(1-p))."""
    if input.ndim not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.ndim}D input of shape "
            f"{list(input.shape)}. Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
            "spatial dimension, a channel dimension, and an optional batch dimension (i.e. 2D or 3D inputs)."
        )
    return _feature_dropout(input, p, training, inplace, batched=input.ndim == 3)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of an (N, C, H, W) input with probability p. Other ranks are taken as
    (N, C, ...) with PyTorch's warnings: a 3-D input as (N, C, L), not as an unbatched (C, H, W)."""
    if input.ndim == 3:
        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout behavior is "
            "desired - input is interpreted as shape (N, C, L), where C is the channel dim. To maintain the 1D "
            "channel-wise dropout behavior, please switch to using dropout1d instead.",
            stacklevel=2,
        )
    elif input.ndim != 4:
        warnings.warn(
            f"dropout2d: Received a {input.ndim}-D input to dropout2d (shape {list(input.shape)}), which is "
            "deprecated. Use dropout instead; dropout2d exists for (N, C, H, W) or (C, H, W) inputs.",
            stacklevel=2,
        )
    return _feature_dropout(input, p, training, inplace, batched=True)


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of an (N, C, D, H, W) or unbatched (C, D, H, W) input with probability p.
    Other ranks are taken as unbatched (C, ...), as PyTorch takes them, with its warning."""
    if input.ndim not in (4, 5):
        warnings.warn(
            f"dropout3d: Received a {input.ndim}-D input to dropout3d (shape {list(input.shape)}), which is "
            "deprecated. Use dropout instead; dropout3d exists for (N, C, D, H, W) or (C, D, H, W) inputs.",
            stacklevel=2,
        )
    return _feature_dropout(input, p, training, inplace, batched=input.ndim == 5)


_ALPHA_DROPOUT_ALPHA = 1.7580993408473766  # -SELU's negative saturation value, scale * alpha


def alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False) -> Tensor:
    """Dropout for SELU networks: dropped elements take SELU's saturation value and an affine map
    restores zero mean and unit variance."""
    _check_dropout_p(p)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return _in_place_if(inplace, input, lambda x: x * 0.0)
    a = 1.0 / math.sqrt((_ALPHA_DROPOUT_ALPHA**2 * p + 1.0) * (1.0 - p))
    keep = rand(*input.shape, dtype=input.dtype, device=input.device) >= p
    dropped = _ALPHA_DROPOUT_ALPHA * a * (p - 1.0)
    return _in_place_if(inplace, input, lambda x: _ops.where(keep, x * a + _ALPHA_DROPOUT_ALPHA * a * p, dropped))


# ---------------------------------------------------------------------------------------------
# normalization


def _check_normalized_shape(input: Tensor, shape: tuple[int, ...], op: str) -> tuple[int, ...]:
    if tuple(input.shape[input.ndim - len(shape) :]) != shape or input.ndim < len(shape):
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [*, "
            f"{', '.join(map(str, shape))}], but got input of size{list(input.shape)} ({op})"
        )
    return tuple(range(input.ndim - len(shape), input.ndim))


@autocasts("layer_norm")
def layer_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize over the trailing `normalized_shape` dims (biased variance), then scale and shift."""
    shape = _pair(normalized_shape, 1) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = _check_normalized_shape(input, shape, "layer_norm")
    if _fused_norm(input, shape, weight, bias):
        return _composites().call(_layer_norm, input=input, weight=weight, bias=bias, dims=dims, eps=eps)
    return _layer_norm(input, weight, bias, dims, eps)


def _layer_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None, dims: tuple[int, ...],
                eps: float) -> Tensor:
    centered = input - input.mean(dims, keepdim=True)
    var = (centered * centered).mean(dims, keepdim=True)
    out = centered * (var + eps).rsqrt()
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def rms_norm(
    input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None
) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the trailing dims, times weight; eps defaults to finfo.eps."""
    shape = _pair(normalized_shape, 1) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = _check_normalized_shape(input, shape, "rms_norm")
    if eps is None:
        eps = _dt.finfo(input.dtype).eps
    if _fused_norm(input, shape, weight):
        return _composites().call(_rms_norm, input=input, weight=weight, dims=dims, eps=eps)
    return _rms_norm(input, weight, dims, eps)


def _rms_norm(input: Tensor, weight: Tensor | None, dims: tuple[int, ...], eps: float) -> Tensor:
    out = input * ((input * input).mean(dims, keepdim=True) + eps).rsqrt()
    return out if weight is None else out * weight


def _fused_norm(input: Tensor, shape: tuple[int, ...], *affine: Tensor | None) -> bool:
    """Whether a normalization runs as a compiled composite: on a backend that fuses them, for a
    floating-point input and weight and bias of `normalized_shape` (or none). Anything else takes
    the plain path, which broadcasts or raises its own error."""
    return (input.dtype.is_floating_point and all(t is None or tuple(t.shape) == shape for t in affine)
            and fuses_composites(input, *affine))


def _channel_shape(input: Tensor) -> tuple[int, ...]:
    """The shape that broadcasts a per-channel (dim 1) vector against `input`."""
    return (1, input.shape[1]) + (1,) * (input.ndim - 2)


def _per_channel_affine(out: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """out * weight + bias with (C,) weight and bias broadcast along dim 1 (the norms' affine step)."""
    cshape = _channel_shape(out)
    if weight is not None:
        out = out * weight.reshape(cshape)
    if bias is not None:
        out = out + bias.reshape(cshape)
    return out


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize each channel (dim 1) over the batch and spatial dims.

    In training it uses the batch statistics and updates `running_mean`/`running_var` in place
    (with the unbiased variance, as PyTorch); in eval it uses the running statistics.
    """
    if input.ndim < 2:
        raise ValueError(f"expected 2D or higher input to batch_norm (got {input.ndim}D input)")
    cshape = _channel_shape(input)
    dims = (0,) + tuple(range(2, input.ndim))
    if training:
        count = input.numel() // input.shape[1]
        if count <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {list(input.shape)}"
            )
        mean = input.mean(dims, keepdim=True)
        centered = input - mean
        var = (centered * centered).mean(dims, keepdim=True)
        if running_mean is not None and running_var is not None:
            _update_running_stats(running_mean, running_var, mean, var, count, momentum)
        out = centered * (var + eps).rsqrt()
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm in eval mode needs running_mean and running_var")
        out = (input - running_mean.reshape(cshape)) * (running_var.reshape(cshape) + eps).rsqrt()
    return _per_channel_affine(out, weight, bias)


def _update_running_stats(
    running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count: int, momentum: float
) -> None:
    from ..autograd import no_grad

    with no_grad():
        unbiased = var.reshape(-1) * (count / (count - 1))
        running_mean.mul_(1.0 - momentum).add_(mean.reshape(-1).to(running_mean.dtype) * momentum)
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype) * momentum)


@autocasts("group_norm")
def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize over groups of channels (and all spatial positions) per sample."""
    if input.ndim < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.ndim}")
    n, c = input.shape[0], input.shape[1]
    if c % num_groups:
        raise RuntimeError(
            f"Expected number of channels in input to be divisible by num_groups, but got input of shape "
            f"{list(input.shape)} and num_groups={num_groups}"
        )
    grouped = input.reshape(n, num_groups, -1)
    centered = grouped - grouped.mean(-1, keepdim=True)
    var = (centered * centered).mean(-1, keepdim=True)
    out = (centered * (var + eps).rsqrt()).reshape(input.shape)
    return _per_channel_affine(out, weight, bias)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize each (sample, channel) over its spatial dims, as style transfer does.

    With `use_input_stats` the statistics are each instance's own, and given running statistics are
    updated in place with their batch mean (unbiased variance, as PyTorch); without, the running
    statistics normalize.
    """
    if input.ndim < 3:
        raise ValueError(f"instance_norm expects an (N, C, *spatial) input, got shape {list(input.shape)}")
    dims = tuple(range(2, input.ndim))
    count = math.prod(input.shape[2:])
    cshape = _channel_shape(input)
    if use_input_stats:
        if count <= 1:
            raise ValueError(
                f"Expected more than 1 spatial element when training, got input size {list(input.shape)}"
            )
        mean = input.mean(dims, keepdim=True)
        centered = input - mean
        var = (centered * centered).mean(dims, keepdim=True)
        if running_mean is not None and running_var is not None:
            _update_running_stats(running_mean, running_var, mean.mean(0), var.mean(0), count, momentum)
        out = centered * (var + eps).rsqrt()
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("instance_norm with use_input_stats=False needs running_mean and running_var")
        out = (input - running_mean.reshape(cshape)) * (running_var.reshape(cshape) + eps).rsqrt()
    return _per_channel_affine(out, weight, bias)


@autocasts("normalize")
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """x / max(||x||_p, eps) along `dim`."""
    if p == 2:
        # clamp the squared norm, not the norm: sqrt's gradient at 0 would be inf * 0 = nan
        norm = (input * input).sum(dim, keepdim=True).clamp(min=eps * eps).sqrt()
    else:
        norm = input.norm(p, dim, keepdim=True).clamp(min=eps)
    return input / norm


def _clamped_forward(x: Tensor, eps: float) -> Tensor:
    """max(x, eps) in value with x's gradient unchanged: PyTorch clamps norms and variances in
    place under no_grad, so its backward ignores the clamp."""
    return x + (x.clamp(min=eps) - x).detach()


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """sum(x1/|x1| * x2/|x2|) along `dim` (broadcast), each norm clamped below at eps."""
    shape = broadcast_shapes(tuple(x1.shape), tuple(x2.shape))
    x1, x2 = x1.expand(*shape), x2.expand(*shape)
    n1 = _clamped_forward(_euclidean_norm(x1, dim), eps)
    n2 = _clamped_forward(_euclidean_norm(x2, dim), eps)
    return ((x1 / n1) * (x2 / n2)).sum(dim)


def _euclidean_norm(x: Tensor, dim: int) -> Tensor:
    """||x||_2 along `dim` (kept), with PyTorch's zero gradient where the norm is 0 (sqrt's is inf there)."""
    squares = (x * x).sum(dim, keepdim=True)
    positive = squares > 0
    return _ops.where(positive, _ops.where(positive, squares, 1.0).sqrt(), 0.0)


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    """The p-norm of x1 - x2 + eps over the last dim (eps keeps the norm's gradient finite at 0)."""
    return (x1 - x2 + eps).norm(p, max(x1.ndim, x2.ndim) - 1, keepdim=keepdim)


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """(*, C r^2, H, W) -> (*, C, H r, W r): channels become r x r spatial blocks (sub-pixel conv)."""
    r = upscale_factor
    if input.ndim < 3:
        raise RuntimeError(
            f"pixel_shuffle expects input to have at least 3 dimensions, but got input with {input.ndim} dimension(s)"
        )
    *lead, c, h, w = input.shape
    if c % (r * r):
        raise RuntimeError(
            f"pixel_shuffle expects its input's 'channel' dimension to be divisible by the square of "
            f"upscale_factor, but input.size(-3)={c} is not divisible by {r * r}"
        )
    n = len(lead)
    blocks = input.reshape(*lead, c // (r * r), r, r, h, w)
    return blocks.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2).reshape(*lead, c // (r * r), h * r, w * r)


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """(*, C, H r, W r) -> (*, C r^2, H, W): the inverse of `pixel_shuffle`."""
    r = downscale_factor
    if input.ndim < 3:
        raise RuntimeError(
            f"pixel_unshuffle expects input to have at least 3 dimensions, but got input with {input.ndim} "
            "dimension(s)"
        )
    *lead, c, h, w = input.shape
    for name, size in (("height", h), ("width", w)):
        if size % r:
            raise RuntimeError(
                f"pixel_unshuffle expects {name} to be divisible by downscale_factor, but input.size("
                f"{-2 if name == 'height' else -1})={size} is not divisible by {r}"
            )
    n = len(lead)
    blocks = input.reshape(*lead, c, h // r, r, w // r, r)
    return blocks.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3).reshape(*lead, c * r * r, h // r, w // r)


# ---------------------------------------------------------------------------------------------
# embedding, one_hot, pad


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm=None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Tensor:
    """Rows of `weight` picked by the integer tensor `input`; `padding_idx` rows get no gradient."""
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise NotImplementedError("embedding: max_norm, scale_grad_by_freq and sparse are not supported")
    if input.dtype not in (_dt.int64, _dt.int32):
        raise RuntimeError(
            f"Expected tensor for argument #1 'indices' to have one of the following scalar types: Long, "
            f"Int; but got {input.dtype.name} instead (while checking arguments for embedding)"
        )
    if _is_concrete(input) and input.numel():
        lo, hi = int(input._data.min()), int(input._data.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise IndexError(
                f"index {hi if hi >= weight.shape[0] else lo} is out of range for an embedding "
                f"of {weight.shape[0]} rows (weight shape {tuple(weight.shape)})"
            )
    rows = weight[input]
    if padding_idx is not None and weight.requires_grad:
        if padding_idx < 0:
            padding_idx += weight.shape[0]
        # same values, but the padding positions read a detached copy: their gradient is zero
        rows = _ops.where((input == padding_idx).unsqueeze(-1), rows.detach(), rows)
    return rows


def embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None = None,
    max_norm=None,
    norm_type: float = 2,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> Tensor:
    """The sum, mean or max of each bag of embedding rows (PyTorch's `F.embedding_bag`).

    A 2-D `input` is one bag per row; a 1-D one is cut into bags at `offsets`. Entries equal to
    `padding_idx` are left out of their bag (and of a mean's count); an empty bag gives zeros. The
    bags are a (bags, entries) membership matrix built with tensor ops (so offsets may be traced), and
    sum/mean are one matmul with it: O(bags * entries * dim) work, and mode='max' also holds a
    (bags, entries, dim) tensor, so this is slow for many long bags."""
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise NotImplementedError("embedding_bag: max_norm, scale_grad_by_freq and sparse are not supported")
    if mode not in ("sum", "mean", "max"):
        raise ValueError(f"mode has to be one of sum, mean or max, got {mode!r}")
    if per_sample_weights is not None:
        if mode != "sum":
            raise NotImplementedError(
                f"embedding_bag: per_sample_weights was not None. per_sample_weights is only supported for "
                f"mode='sum' (got mode='{mode}'). Please open a feature request on GitHub."
            )
        if per_sample_weights.shape != input.shape:
            raise ValueError(
                f"embedding_bag: If per_sample_weights ({list(per_sample_weights.shape)}) is not None, then it "
                f"must have the same shape as the input ({list(input.shape)})"
            )
    if padding_idx is not None:
        if not -weight.shape[0] <= padding_idx < weight.shape[0]:
            raise AssertionError("padding_idx must be within num_embeddings")
        padding_idx %= weight.shape[0]
    flat, starts, ends = _bag_bounds(input, offsets, include_last_offset)
    rows = embedding(flat, weight)  # (entries, dim), with embedding's index checks
    entries = _const(np.arange(flat.shape[0], dtype=np.int64), flat)
    member = (entries >= starts.unsqueeze(1)) & (entries < ends.unsqueeze(1))  # (bags, entries)
    if padding_idx is not None:
        member = member & (flat != padding_idx)
    count = member.sum(1, keepdim=True)
    if mode == "max":
        windows = _ops.where(member.unsqueeze(-1), rows.unsqueeze(0), float("-inf"))
        return _ops.where(count > 0, _window_max(windows, 1), 0.0)
    weights = member.to(weight.dtype)
    if per_sample_weights is not None:
        weights = weights * per_sample_weights.reshape(-1).to(weight.dtype)
    total = weights @ rows
    return total / count.clamp(min=1).to(weight.dtype) if mode == "mean" else total


def _bag_bounds(input: Tensor, offsets: Tensor | None, include_last_offset: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(the indices as one 1-D tensor, each bag's first entry, each bag's end) for embedding_bag."""
    if input.ndim == 2:
        if offsets is not None:
            raise ValueError(
                "if input is 2D, then offsets has to be None, as input is treated is a mini-batch of fixed "
                f"length sequences. However, found offsets of type {type(offsets).__name__}"
            )
        bags, length = input.shape
        starts = _const(np.arange(bags, dtype=np.int64) * length, input)
        return input.reshape(-1), starts, starts + length
    if input.ndim != 1:
        raise ValueError(f"input has to be 1D or 2D Tensor, but got Tensor of dimension {input.ndim}")
    if offsets is None:
        raise ValueError("offsets has to be a 1D Tensor but got None")
    if offsets.ndim != 1:
        raise ValueError(f"offsets has to be a 1D Tensor, got one of shape {list(offsets.shape)}")
    if _is_concrete(offsets) and offsets.numel() and int(offsets._data[0]) != 0:
        raise RuntimeError(
            f"offsets[0] has to be 0, i.e., the first sequence in the mini-batch has to start from position 0. "
            f"However, got {int(offsets._data[0])}"
        )
    offsets = offsets.to(_dt.int64)
    if include_last_offset:
        return input, offsets[:-1], offsets[1:]
    end = _const(np.array([input.shape[0]], dtype=np.int64), input)
    return input, offsets, _ops.cat([offsets[1:], end])


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """(*) integer classes -> (*, num_classes) int64 one-hot."""
    if tensor.dtype is not _dt.int64:
        raise RuntimeError("one_hot is only applicable to index tensor of type LongTensor.")
    if num_classes < 0:
        num_classes = int(tensor.amax().item()) + 1 if tensor.numel() else 0
    if _is_concrete(tensor) and tensor.numel():
        if int(tensor._data.min()) < 0 or int(tensor._data.max()) >= num_classes:
            raise RuntimeError("Class values must be smaller than num_classes.")
    classes = _const(np.arange(num_classes, dtype=np.int64), tensor)
    return (tensor.unsqueeze(-1) == classes).long()


def _edge_indices(size: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """The source index of each output position along one padded dim."""
    pos = np.arange(-lo, size + hi)
    if mode == "replicate":
        return np.clip(pos, 0, size - 1)
    if mode == "circular":
        return pos % size
    if mode == "reflect":
        if lo >= size or hi >= size:
            raise RuntimeError(
                f"Argument #4: Padding size should be less than the corresponding input dimension, but got: "
                f"padding ({lo}, {hi}) at dimension of size {size}"
            )
        period = 2 * (size - 1) if size > 1 else 1
        pos = np.abs(pos) % period
        return np.where(pos >= size, period - pos, pos)
    raise NotImplementedError(f"pad mode {mode!r}: use 'constant', 'reflect', 'replicate' or 'circular'")


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> Tensor:
    """Pad the last dims: `pad=(left, right, top, bottom, ...)`; modes constant/reflect/replicate/circular."""
    if mode == "constant":
        return _ops.pad(input, pad, "constant", 0.0 if value is None else value)
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise RuntimeError(f"Padding length must be divisible by 2 and at most 2*ndim, got {len(pad)}")
    out = input
    for i in range(len(pad) // 2):
        dim = input.ndim - 1 - i
        lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
        if lo or hi:
            idx = _edge_indices(input.shape[dim], lo, hi, mode)
            out = out.index_select(dim, _const(idx, input))
    return out


# ---------------------------------------------------------------------------------------------
# losses


def _check_targets(target: Tensor, n_classes: int, ignore_index: int) -> None:
    """Class targets in [0, n_classes) or `ignore_index`, as PyTorch's error says (on the GPU the
    error comes at the next wait for the device, as PyTorch's device-side assert does)."""
    if not _is_concrete(target) or target.numel() == 0:
        return

    def error(value: int | None) -> IndexError:
        return IndexError(f"Target {'' if value is None else f'{value} '}is out of bounds "
                          f"(class targets must be in [0, {n_classes}) or ignore_index {ignore_index}).")

    target._backend().check_indices(target._data, 0, n_classes, error, skip=ignore_index)


def _class_layout(input: Tensor, target: Tensor, op: str) -> tuple[Tensor, Tensor]:
    """Check (N, C, d1, ...) input against an (N, d1, ...) index target; unbatched (C,) -> (1, C)."""
    if input.ndim == 1:
        if target.ndim != 0:
            raise RuntimeError(
                f"{op}: 1D input of shape {tuple(input.shape)} expects a 0D target, got {tuple(target.shape)}"
            )
        return input.unsqueeze(0), target.unsqueeze(0)
    expected = (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != expected:
        if target.ndim >= 1 and target.shape[0] != input.shape[0]:
            raise ValueError(
                f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
                f"({target.shape[0]})."
            )
        raise RuntimeError(
            f"{op}: expected target of shape {list(expected)} for input of shape {list(input.shape)}, "
            f"got {list(target.shape)}"
        )
    return input, target


def _check_index_target(input: Tensor, target: Tensor, op: str) -> None:
    """Class indices must be integers: int64 as in PyTorch (int32 is accepted too)."""
    if target.dtype in (_dt.int64, _dt.int32):
        return
    index_shape = list(input.shape[:1] + input.shape[2:]) if input.ndim > 1 else []
    message = (f"{op}: expected target dtype to be Long (int64) for class indices (shape {index_shape}), but got "
               f"a {target.dtype.name} target of shape {list(target.shape)} for input of shape {list(input.shape)}. ")
    if target.dtype.is_floating_point and op == "cross_entropy":
        message += "A floating-point target holds class probabilities and must have the input's shape. "
    raise RuntimeError(message + "For class indices pass target.long().")


def _target_mask(input: Tensor, target: Tensor) -> Tensor:
    """A bool tensor shaped like `input` (N, C, ...), True at each row's target class.

    A comparison against the class index, instead of gather: the backward pass is then an
    elementwise product, and a compiler fuses it into the row reduction.
    """
    c = input.shape[1]
    classes = _const(np.arange(c, dtype=np.int64).reshape((1, c) + (1,) * (input.ndim - 2)), input)
    return target.unsqueeze(1) == classes


@autocasts("nll_loss")
def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    ignore_index: int = -100,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """Negative log likelihood of class indices `target` under log-probabilities `input` (N, C, ...)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    return _nll_loss(input, target, weight, ignore_index, reduction)


def _nll_loss(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
              mask: Tensor | None = None) -> Tensor:
    """`nll_loss`; `mask`: `_target_mask` of the inputs in their class layout, where made already."""
    _check_index_target(input, target, "nll_loss")
    squeeze = input.ndim == 1
    input, target = _class_layout(input, target, "nll_loss")
    _check_targets(target, input.shape[1], ignore_index)
    if mask is None:
        mask = _target_mask(input, target)
    picked = _ops.where(mask, input, 0.0)
    if weight is not None:
        picked = picked * weight.reshape(_channel_shape(input))
    # summed keeping the class dim: for (N, C) inputs a sum over the last dim that keeps it is a row
    # reduction, which the compiler fuses into the log-softmax's kernel
    losses = -picked.sum(1, keepdim=True).squeeze(1)
    valid = target != ignore_index
    losses = _ops.where(valid, losses, 0.0)
    if reduction == "none":
        return losses.squeeze(0) if squeeze else losses
    if reduction == "sum":
        return losses.sum()
    if reduction != "mean":
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if weight is None:
        return losses.sum() / valid.sum().to(losses.dtype)
    denom = (_ops.where(mask, 1.0, 0.0).to(input.dtype) * weight.reshape(_channel_shape(input))).sum(1)
    return losses.sum() / _ops.where(valid, denom, 0.0).sum()


@autocasts("cross_entropy")
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    ignore_index: int = -100,
    reduce=None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """log_softmax over dim 1 (dim 0 for a 1-D input) then the negative log likelihood.

    `target` holds class indices (shape (N, d1, ...)) or class probabilities (same shape as input).
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    probabilities = target.dtype.is_floating_point and tuple(target.shape) == tuple(input.shape)
    if not probabilities:
        _check_index_target(input, target, "cross_entropy")
    well_formed = input.dtype.is_floating_point and input.ndim > 0 and (
        weight is None or tuple(weight.shape) == (input.shape[1 if input.ndim > 1 else 0],))
    if well_formed and fuses_composites(input, target, weight):
        if not probabilities:  # what nll_loss checks on data, which a traced call cannot read
            layout, index = _class_layout(input, target, "nll_loss")
            _check_targets(index, layout.shape[1], ignore_index)
        return _composites().call(_cross_entropy, input=input, target=target, weight=weight,
                                  ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                                  probabilities=probabilities)
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, probabilities)


def _cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
                   label_smoothing: float, probabilities: bool) -> Tensor:
    # the target mask first: made before the log-softmax, the compiler fuses picking each row's target
    # log-probability into the log-softmax's kernel (a kernel reads only values that exist when it starts)
    mask = None if probabilities else _target_mask(*_class_layout(input, target, "nll_loss"))
    logp = input.log_softmax(0 if input.ndim == 1 else 1)
    if probabilities:
        return _cross_entropy_probs(logp, target, weight, reduction, label_smoothing)
    nll = _nll_loss(logp, target, weight, ignore_index, reduction, mask)
    if label_smoothing == 0.0:
        return nll
    return _smoothed(logp, target, weight, ignore_index, reduction, label_smoothing, nll)


def _smoothed(
    logp: Tensor, target: Tensor, weight, ignore_index: int, reduction: str, eps: float, nll: Tensor
) -> Tensor:
    """PyTorch's label smoothing for index targets: (1-eps) * nll + eps/C * (-sum_c w_c logp_c)."""
    squeeze = logp.ndim == 1
    logp, target = _class_layout(logp, target, "cross_entropy")
    n_classes = logp.shape[1]
    cshape = _channel_shape(logp)
    scaled = logp if weight is None else logp * weight.reshape(cshape)
    valid = target != ignore_index
    smooth = _ops.where(valid, -scaled.sum(1), 0.0)
    if reduction == "none":
        smooth = smooth.squeeze(0) if squeeze else smooth
    elif reduction == "sum":
        smooth = smooth.sum()
    elif weight is None:
        smooth = smooth.sum() / valid.sum().to(smooth.dtype)
    else:
        picked = _ops.where(_target_mask(logp, target), 1.0, 0.0).to(logp.dtype) * weight.reshape(cshape)
        smooth = smooth.sum() / _ops.where(valid, picked.sum(1), 0.0).sum()
    return (1.0 - eps) * nll + smooth * (eps / n_classes)


def _cross_entropy_probs(logp: Tensor, target: Tensor, weight, reduction: str, eps: float) -> Tensor:
    class_dim = 0 if logp.ndim == 1 else 1
    n_classes = logp.shape[class_dim]
    if eps > 0:
        target = target * (1.0 - eps) + eps / n_classes
    prod = logp * target
    if weight is not None:
        prod = prod * (weight if logp.ndim == 1 else weight.reshape(_channel_shape(logp)))
    losses = -prod.sum(class_dim)
    if reduction == "mean" and logp.ndim > 1:
        return losses.sum() / (logp.numel() // n_classes)
    return _reduce(losses, reduction)


def _check_same_size(input: Tensor, target: Tensor) -> None:
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(
            f"Using a target size ({tuple(target.shape)}) that is different to the input size "
            f"({tuple(input.shape)}) is deprecated. Please ensure they have the same size."
        )


@autocasts("mse_loss")
def mse_loss(
    input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean"
) -> Tensor:
    """Mean squared error."""
    diff = input - target
    return _reduce(diff * diff, _legacy_reduction(size_average, reduce, reduction))


@autocasts("l1_loss")
def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    """Mean absolute error."""
    return _reduce((input - target).abs(), _legacy_reduction(size_average, reduce, reduction))


@autocasts("smooth_l1_loss")
def smooth_l1_loss(
    input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0
) -> Tensor:
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    d = (input - target).abs()
    if beta == 0.0:
        return _reduce(d, reduction)
    return _reduce(_ops.where(d < beta, (0.5 / beta) * d * d, d - 0.5 * beta), reduction)


@autocasts("huber_loss")
def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta)."""
    d = (input - target).abs()
    return _reduce(_ops.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)), reduction)


@autocasts("binary_cross_entropy")
def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """-(t log p + (1 - t) log(1 - p)), each log clamped at -100 as in PyTorch."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_same_size(input, target)
    if _is_concrete(input) and input.numel() and (input._data.min() < 0 or input._data.max() > 1):
        raise RuntimeError("all elements of input should be between 0 and 1")
    log_p = input.log().clamp(min=-100.0)
    log_q = (1.0 - input).log().clamp(min=-100.0)
    loss = -(target * log_p + (1.0 - target) * log_q)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


@autocasts("binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Sigmoid + binary cross entropy in one stable formula; `pos_weight` scales positive targets."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_same_size(input, target)
    log_sig = logsigmoid(input)
    log_one_minus = log_sig - input  # log(1 - sigmoid(x)) = log sigmoid(x) - x
    pos = target * log_sig if pos_weight is None else pos_weight * target * log_sig
    loss = -(pos + (1.0 - target) * log_one_minus)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def _xlogy(x: Tensor, y: Tensor) -> Tensor:
    """x * log(y), 0 where x == 0 (so a zero target contributes nothing, gradient included)."""
    nonzero = x != 0
    return _ops.where(nonzero, x * _ops.where(nonzero, y, 1.0).log(), 0.0)


@autocasts("kl_div")
def kl_div(
    input: Tensor,
    target: Tensor,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """KL(target || exp(input)) pointwise: target * (log target - input), `input` being log-probabilities.

    reduction="batchmean" divides the sum by the batch size (dim 0): the true KL divergence per
    sample; "mean" divides by the element count, as PyTorch (which warns about it).
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if log_target:
        loss = target.exp() * (target - input)
    else:
        loss = _xlogy(target, target) - target * input
    if reduction == "batchmean":
        return loss.sum() / input.shape[0] if input.ndim else loss.sum()
    if reduction == "mean":
        warnings.warn(
            "reduction: 'mean' divides the total loss by both the batch size and the support size.'batchmean' "
            "divides only by the batch size, and aligns with the KL div math definition.'mean' will be changed "
            "to behave the same as 'batchmean' in the next major release.",
            stacklevel=2,
        )
    return _reduce(loss, reduction)


def _check_same_ndim(op: str, **tensors: Tensor) -> None:
    """PyTorch's check that the inputs of a pairwise loss have the same number of dims."""
    ranks = {t.ndim for t in tensors.values()}
    if len(ranks) > 1:
        shapes = ", ".join(f"{name}: {list(t.shape)}" for name, t in tensors.items())
        raise RuntimeError(f"{op} : All input tensors should have same dimension but got sizes: {shapes}")


def cosine_embedding_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0.0,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """1 - cos(x1, x2) for target 1, max(0, cos(x1, x2) - margin) for target -1 (cosine over the last dim)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if target.ndim not in (0, 1):
        raise RuntimeError(
            f"0D or 1D target tensor expected, multi-target not supported (target shape {list(target.shape)})"
        )
    if not input1.ndim == input2.ndim == target.ndim + 1:
        raise RuntimeError(
            f"{target.ndim}D target tensor expects {target.ndim + 1}D input tensors, but found inputs with sizes "
            f"{list(input1.shape)} and {list(input2.shape)}."
        )
    eps = 1e-12  # PyTorch's, added to each squared magnitude
    dot = (input1 * input2).sum(-1)
    magnitudes = ((input1 * input1).sum(-1) + eps) * ((input2 * input2).sum(-1) + eps)
    cos = dot / magnitudes.sqrt()
    loss = _ops.where(target == 1, 1.0 - cos, 0.0) + _ops.where(target == -1, (cos - margin).clamp(min=0.0), 0.0)
    return _reduce(loss, reduction)


def margin_ranking_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0.0,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """max(0, -target * (x1 - x2) + margin): target 1 wants x1 ranked above x2, -1 below."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_same_ndim("margin_ranking_loss", input1=input1, input2=input2, target=target)
    return _reduce((-target * (input1 - input2) + margin).clamp(min=0.0), reduction)


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2,
    eps: float = 1e-6,
    swap: bool = False,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """max(0, d(a, p) - d(a, n) + margin) with `pairwise_distance` d; `swap` uses min(d(a, n), d(p, n))."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    if not anchor.ndim == positive.ndim == negative.ndim:
        raise RuntimeError(
            f"The anchor, positive, and negative tensors are expected to have the same number of dimensions, "
            f"but got: anchor {anchor.ndim}D, positive {positive.ndim}D, and negative {negative.ndim}D inputs"
        )
    d_pos = pairwise_distance(anchor, positive, p, eps)
    d_neg = pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = _ops.minimum(d_neg, pairwise_distance(positive, negative, p, eps))
    return _reduce((d_pos - d_neg + margin).clamp(min=0.0), reduction)


def hinge_embedding_loss(
    input: Tensor, target: Tensor, margin: float = 1.0, size_average=None, reduce=None, reduction: str = "mean"
) -> Tensor:
    """x for target 1, max(0, margin - x) for target -1 (x typically a distance)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    below_margin = _ops.where(target != 1, (margin - input).clamp(min=0.0), 0.0)
    return _reduce(below_margin + _ops.where(target != -1, input, 0.0), reduction)


def soft_margin_loss(
    input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean"
) -> Tensor:
    """log(1 + exp(-target * x)): a two-class logistic loss with targets in {1, -1}."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    return _reduce((-target * input).exp().log1p(), reduction)


def multilabel_soft_margin_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross entropy with logits per class of an (N, C) input, averaged over the C classes."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    loss = -(target * logsigmoid(input) + (1.0 - target) * logsigmoid(-input))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss.sum(-1) / input.shape[-1], reduction)


def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    size_average=None,
    eps: float = 1e-8,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    """Negative log likelihood of `target` under Poisson(rate), the rate given as its log
    (`log_input`, the default) or itself; `full` adds Stirling's term for target > 1."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if log_input:
        loss = input.exp() - target * input
    else:
        loss = input - target * (input + eps).log()
    if full:
        safe = _ops.where(target > 1, target, 1.0)
        stirling = safe * safe.log() - safe + 0.5 * (2 * math.pi * safe).log()
        loss = loss + _ops.where(target > 1, stirling, 0.0)
    return _reduce(loss, reduction)


def _gaussian_var(input: Tensor, var: Tensor) -> Tensor:
    """`var` shaped to broadcast against `input`: the same shape, one dim short (homoscedastic),
    or one mismatched dim of size 1."""
    if tuple(var.shape) == tuple(input.shape):
        return var
    if tuple(var.shape) == tuple(input.shape[:-1]):
        return var.unsqueeze(-1)
    mismatched = [v for i, v in zip(input.shape, var.shape) if i != v]
    if var.ndim == input.ndim and sum(mismatched) == 1:
        return var
    raise ValueError(
        f"var is of incorrect size: {list(var.shape)} for input {list(input.shape)} (give var the input's shape, "
        "its shape without the last dim, or a 1 in one dim)"
    )


def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Tensor | float,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    """0.5 (log var + (input - target)^2 / var) (+ 0.5 log 2 pi if `full`): the negative log
    likelihood of `target` under N(input, var), var clamped below at eps (its gradient unclamped)."""
    if isinstance(var, (int, float)):
        if var < 0:
            raise ValueError("var has negative entry/entries")
        var = full_like(input, float(var))
    elif _is_concrete(var) and var.numel() and bool(var._data.min() < 0):
        raise ValueError("var has negative entry/entries")
    var = _gaussian_var(input, var)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{reduction} is not valid")
    var = _clamped_forward(var, eps)
    diff = input - target
    loss = 0.5 * (var.log() + diff * diff / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction)


# A stand-in for log(0) in the CTC recursion: finite, so an unreachable state's gradient is 0 rather
# than NaN (inf - inf); far enough below any real log-likelihood that exp() of it is exactly 0.
_CTC_LOG_ZERO = -1e30


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths,
    target_lengths,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """Connectionist Temporal Classification loss: -log of the total probability of all alignments of
    each target (without blanks and repeats) to its input frames.

    log_probs (T, N, C) (or (T, C)) are log-softmax outputs; targets are padded (N, S) or concatenated
    (sum(target_lengths),); the lengths are read as Python ints (they fix the recursion's shape). The
    forward (alpha) recursion runs in log space as a loop over time of whole-batch tensor ops, so the
    gradient is autograd's: T small steps, slow for long inputs. 'mean' divides each loss by its target
    length, then averages; an impossible alignment gives inf (0 with zero_infinity, its gradient 0)."""
    unbatched = log_probs.ndim == 2
    if unbatched:
        log_probs, targets = log_probs.unsqueeze(1), targets.unsqueeze(0)
    if log_probs.ndim != 3:
        raise RuntimeError(f"ctc_loss: expected log_probs of shape (T, N, C) or (T, C), got {list(log_probs.shape)}")
    frames, batch, classes = log_probs.shape
    if not 0 <= blank < classes:
        raise RuntimeError(f"blank must be in label range: blank={blank}, but log_probs has {classes} classes")
    in_lens, tgt_lens = _ctc_lengths(input_lengths, batch, "input_lengths"), _ctc_lengths(target_lengths, batch,
                                                                                           "target_lengths")
    if max(in_lens) > frames:
        raise RuntimeError(f"Expected input_lengths to have value at most {frames}, but got value {max(in_lens)}")
    labels = _ctc_extended_labels(targets, tgt_lens, blank)  # (N, 2*S+1)
    emissions = log_probs.gather(2, labels.unsqueeze(0).expand(frames, batch, -1))  # (T, N, 2*S+1)
    log_likelihood = _ctc_forward(emissions, labels, in_lens, tgt_lens, blank)
    feasible = log_likelihood > _CTC_LOG_ZERO / 2
    loss = _ops.where(feasible, -log_likelihood, 0.0 if zero_infinity else float("inf"))
    if reduction == "mean":
        loss = (loss / _const(np.maximum(tgt_lens, 1), loss).to(loss.dtype)).mean()
    else:
        loss = _reduce(loss, reduction)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


def _ctc_lengths(lengths, batch: int, name: str) -> list[int]:
    values = lengths.reshape(-1).tolist() if isinstance(lengths, Tensor) else list(np.atleast_1d(lengths))
    if len(values) != batch:
        raise RuntimeError(f"ctc_loss: {name} must have one entry per batch element ({batch}), got {len(values)}")
    return [int(v) for v in values]


def _ctc_extended_labels(targets: Tensor, tgt_lens: list[int], blank: int) -> Tensor:
    """(N, 2*S+1) labels blank, t1, blank, t2, ..., blank; past a target's length, all blanks."""
    longest, batch = max(tgt_lens), len(tgt_lens)
    if targets.ndim == 1:  # concatenated: each target's slice, padded by repeating its last entry
        starts = np.cumsum([0] + tgt_lens[:-1])
        index = np.minimum(starts[:, None] + np.arange(longest)[None, :], max(targets.shape[0] - 1, 0))
        padded = targets[_const(index, targets)]
    else:
        if targets.shape[1] < longest:
            raise RuntimeError(
                f"Expected tensor to have size at least {longest} at dimension 1, but got size {targets.shape[1]} "
                f"for argument #2 'targets' (while checking arguments for ctc_loss)"
            )
        padded = targets[:, :longest]
    within = np.arange(longest)[None, :] < np.asarray(tgt_lens)[:, None]
    padded = _ops.where(_const(within, targets), padded.long(), blank)
    blanks = _const(np.full((batch, longest + 1), blank, dtype=np.int64), targets)
    interleaved = _ops.stack([blanks[:, :longest], padded], dim=2).reshape(batch, 2 * longest)
    return _ops.cat([interleaved, blanks[:, :1]], 1)


def _shift_right(x: Tensor, k: int, fill) -> Tensor:
    """x[:, s - k] at each state s (`fill` for s < k): the state k steps back along the labels."""
    states = x.shape[1]
    head = _const(np.full((x.shape[0], min(k, states)), fill), x).to(x.dtype)
    return _ops.cat([head, x[:, : max(states - k, 0)]], 1)


def _ctc_forward(emissions: Tensor, labels: Tensor, in_lens: list[int], tgt_lens: list[int], blank: int) -> Tensor:
    """log p(target | input) per batch element from the alpha recursion over the extended labels."""
    states = emissions.shape[2]
    # a label may be reached from two states back unless it is a blank or repeats that label
    may_skip = (labels != blank) & (labels != _shift_right(labels, 2, -1))
    alpha = _ops.where(_const(np.arange(states) < 2, emissions), emissions[0], _CTC_LOG_ZERO)
    still_running = _const(np.asarray(in_lens)[:, None], emissions)
    for t in range(1, max(in_lens)):
        skip = _ops.where(may_skip, _shift_right(alpha, 2, _CTC_LOG_ZERO), _CTC_LOG_ZERO)
        paths = _ops.stack([alpha, _shift_right(alpha, 1, _CTC_LOG_ZERO), skip])
        step = paths.logsumexp(0) + emissions[t]
        alpha = _ops.where(still_running > t, step, alpha)  # a finished input keeps its last alpha
    # a path ends on the last label or the blank after it
    final = np.asarray([[2 * n, 2 * n - 1] for n in tgt_lens])
    ends = alpha.gather(1, _const(np.maximum(final, 0), labels))
    return _ops.where(_const(final >= 0, emissions), ends, _CTC_LOG_ZERO).logsumexp(1)

# ---------------------------------------------------------------------------------------------
# convolution (im2col: unfold -> one matmul -> reshape)


def _conv_padding(
    padding, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...], n: int
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(symmetric padding for unfold, extra explicit pad for F.pad or None) for int/tuple/'same'/'valid'."""
    if padding == "valid":
        return (0,) * n, None
    if padding == "same":
        if any(s != 1 for s in stride):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        lo = tuple(t // 2 for t in total)
        if all(t % 2 == 0 for t in total):
            return lo, None
        # odd total: PyTorch puts the extra element on the right/bottom
        extra = []
        for t in reversed(total):
            extra += [0, t % 2]
        return lo, tuple(extra)
    if isinstance(padding, str):
        raise ValueError(f"Invalid padding string {padding!r}, should be one of ('valid', 'same')")
    return _pair(padding, n), None


def _check_conv_input(input: Tensor, weight: Tensor, groups: int, spatial: int, op: str) -> None:
    if input.ndim not in (spatial + 1, spatial + 2):
        raise RuntimeError(
            f"Expected {spatial + 1}D (unbatched) or {spatial + 2}D (batched) input to {op}, but got input "
            f"of size: {list(input.shape)}"
        )
    channels = input.shape[-spatial - 1]
    if weight.ndim != spatial + 2:
        raise RuntimeError(f"{op}: expected a {spatial + 2}D weight, got weight of size {list(weight.shape)}")
    if channels != weight.shape[1] * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected "
            f"input{list(input.shape)} to "
            f"have {weight.shape[1] * groups} channels, but got {channels} channels instead"
        )
    if weight.shape[0] % groups:
        raise RuntimeError(f"{op}: out_channels ({weight.shape[0]}) must be divisible by groups ({groups})")


def _conv2d_core(x: Tensor, weight: Tensor, bias, stride, padding, dilation, groups: int) -> Tensor:
    """Batched NCHW convolution with symmetric padding already resolved."""
    n, c, h, w = x.shape
    out_c, c_per_group, kh, kw = weight.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if oh <= 0 or ow <= 0:
        raise RuntimeError(
            f"Calculated output size: ({out_c}x{oh}x{ow}). Output size is too small (input {list(x.shape)}, "
            f"kernel {kh}x{kw}, padding {padding}, dilation {dilation}, stride {stride})"
        )
    if (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0) and groups == 1:
        cols = x.reshape(n, c, h * w)  # a 1x1 convolution needs no im2col
    else:
        cols = _ops.unfold(x, (kh, kw), dilation, padding, stride)  # (N, C*kh*kw, L)
    if groups == 1:
        # one GEMM over the whole batch, (O, K) @ (K, N*L): a batched (O, K) @ (N, K, L) would
        # make the weight's gradient N small matmuls and a sum. The CPU's unfold lays its columns
        # out as (K, N, L), so that the permute below is free and the input's gradient reaches
        # fold in that layout, straight from its GEMM.
        k, length = cols.shape[1], cols.shape[2]
        flat = cols.permute(1, 0, 2).reshape(k, n * length)
        out = (weight.reshape(out_c, k) @ flat).reshape(out_c, n, length).permute(1, 0, 2)
    else:
        k = cols.shape[1] // groups
        w_g = weight.reshape(groups, out_c // groups, k)
        out = (w_g @ cols.reshape(n, groups, k, -1)).reshape(n, out_c, -1)
    out = out.reshape(n, out_c, oh, ow)
    if bias is not None:
        out = out + bias.reshape(1, out_c, 1, 1)
    return out


def _convolve(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int,
              nd: int, name: str) -> Tensor:
    """conv1d/2d/3d: checks, then `_convolution` under the op's autocast policy; where the backend
    fuses eager composites (the GPU), a call whose output has room runs as one cached compiled
    function, forward and backward (im2col, the product, the bias and autocast's casts: a dozen
    dispatches each way op by op)."""
    _check_conv_input(input, weight, groups, nd, name)
    arguments = dict(input=input, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation,
                     groups=groups)
    if (input.dtype.is_floating_point and weight.dtype.is_floating_point and fuses_composites(input, weight, bias)
            and _conv_output_has_room(input, weight, stride, padding, dilation, nd)):
        return _composites().call(_CONVOLUTIONS[name], **arguments)
    return _CONVOLUTIONS[name](**arguments)


def _conv_output_has_room(input: Tensor, weight: Tensor, stride, padding, dilation, nd: int) -> bool:
    """Whether every spatial output size is positive (else the plain path raises its error)."""
    try:
        stride, dilation = _pair(stride, nd), _pair(dilation, nd)
        sym, extra = _conv_padding(padding, tuple(weight.shape[2:]), dilation, stride, nd)
    except (RuntimeError, ValueError, TypeError):
        return False
    extra = extra or (0,) * (2 * nd)  # (F.pad's order: the last dim's pair first)
    sizes = [size + extra[2 * (nd - 1 - i)] + extra[2 * (nd - 1 - i) + 1] for i, size in enumerate(input.shape[-nd:])]
    return all(conv_out_size(*args) > 0 for args in zip(sizes, weight.shape[2:], stride, sym, dilation))


@autocasts("conv1d")
def _conv1d(input, weight, bias, stride, padding, dilation, groups):
    return _convolution(input, weight, bias, stride, padding, dilation, groups, 1)


@autocasts("conv2d")
def _conv2d(input, weight, bias, stride, padding, dilation, groups):
    return _convolution(input, weight, bias, stride, padding, dilation, groups, 2)


@autocasts("conv3d")
def _conv3d(input, weight, bias, stride, padding, dilation, groups):
    return _convolution(input, weight, bias, stride, padding, dilation, groups, 3)


_CONVOLUTIONS = {"conv1d": _conv1d, "conv2d": _conv2d, "conv3d": _conv3d}


def _convolution(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int,
                 nd: int) -> Tensor:
    """The unbatched form, 'same' padding; a 1-D convolution runs as a 2-D one of height 1, a 3-D
    one as a 2-D one over depth windows lifted into channels."""
    unbatched = input.ndim == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    stride, dilation = _pair(stride, nd), _pair(dilation, nd)
    sym, extra = _conv_padding(padding, tuple(weight.shape[2:]), dilation, stride, nd)
    if extra is not None:
        x = pad(x, extra)
    if nd == 1:
        out = _conv2d_core(
            x.unsqueeze(2), weight.unsqueeze(2), bias, (1,) + stride, (0,) + sym, (1,) + dilation, groups
        ).squeeze(2)
    elif nd == 3:
        out = _conv3d_core(x, weight, bias, stride, sym, dilation, groups)
    else:
        out = _conv2d_core(x, weight, bias, stride, sym, dilation, groups)
    return out.squeeze(0) if unbatched else out


def _lift_depth(x: Tensor, kd: int, stride: int, dilation: int, od: int) -> Tensor:
    """(N, C, D, H, W) -> (N*od, C*kd, H, W): each output depth's kd input slices stacked as channels
    (channel c*kd + j holds tap j of channel c), so a 3-d window is a 2-d window over these channels
    and every 3-d conv or pool runs as one 2-d one. Copies the input kd/stride times."""
    n, c, _, h, w = x.shape
    taps = np.arange(od)[:, None] * stride + np.arange(kd)[None, :] * dilation
    picked = x.index_select(2, _const(taps.reshape(-1), x)).reshape(n, c, od, kd, h, w)
    return picked.permute(0, 2, 1, 3, 4, 5).reshape(n * od, c * kd, h, w)


def _conv3d_core(x: Tensor, weight: Tensor, bias, stride, padding, dilation, groups: int) -> Tensor:
    """Batched NCDHW convolution: depth windows lifted into channels, then one 2-d convolution whose
    weight (O, C/groups * kd, kh, kw) keeps each group's channels together."""
    n, d = x.shape[0], x.shape[2]
    out_c, c_per_group, kd, kh, kw = weight.shape
    od = (d + 2 * padding[0] - dilation[0] * (kd - 1) - 1) // stride[0] + 1
    if od <= 0:
        raise RuntimeError(
            f"Calculated output depth {od} is too small (input {list(x.shape)}, kernel {kd}x{kh}x{kw}, "
            f"padding {padding}, dilation {dilation}, stride {stride})"
        )
    if padding[0]:
        x = _ops.pad(x, (0, 0, 0, 0, padding[0], padding[0]), "constant", 0.0)
    lifted = _lift_depth(x, kd, stride[0], dilation[0], od)
    out = _conv2d_core(lifted, weight.reshape(out_c, c_per_group * kd, kh, kw), bias, stride[1:], padding[1:],
                       dilation[1:], groups)
    return out.reshape(n, od, *out.shape[1:]).movedim(1, 2)


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution of (N, C, H, W) (or unbatched (C, H, W)) with weight (O, C/groups, kh, kw)."""
    return _convolve(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """1-D convolution of (N, C, L) (or (C, L)) with weight (O, C/groups, k): a conv2d of height 1."""
    return _convolve(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def conv3d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """3-D convolution of (N, C, D, H, W) (or (C, D, H, W)) with weight (O, C/groups, kd, kh, kw). Runs
    as one conv2d over depth windows stacked as channels: the input is copied kd/stride times."""
    return _convolve(input, weight, bias, stride, padding, dilation, groups, 3, "conv3d")


def _check_conv_transpose_input(input: Tensor, weight: Tensor, groups: int, spatial: int, op: str) -> None:
    if input.ndim not in (spatial + 1, spatial + 2):
        raise RuntimeError(
            f"Expected {spatial + 1}D (unbatched) or {spatial + 2}D (batched) input to {op}, but got input "
            f"of size: {list(input.shape)}"
        )
    if weight.ndim != spatial + 2:
        raise RuntimeError(f"{op}: expected a {spatial + 2}D weight, got weight of size {list(weight.shape)}")
    channels = input.shape[-spatial - 1]
    if channels != weight.shape[0]:
        raise RuntimeError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected input{list(input.shape)} to "
            f"have {weight.shape[0]} channels, but got {channels} channels instead"
        )
    if groups <= 0 or weight.shape[0] % groups:
        raise RuntimeError(f"{op}: in_channels ({weight.shape[0]}) must be divisible by groups ({groups})")


def _conv_transpose_sizes(sizes, kernel, stride, padding, output_padding, dilation) -> tuple[tuple, tuple]:
    """(the full result's size, the output's size) per spatial dim of a transposed convolution, with
    PyTorch's errors for an output_padding too large or an output too small."""
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= s and op >= d:
            raise RuntimeError(
                f"output padding must be smaller than either stride or dilation, but got output_padding "
                f"{tuple(output_padding)}, stride {tuple(stride)}, dilation {tuple(dilation)}"
            )
    full = tuple((size - 1) * s + d * (k - 1) + 1 for size, s, d, k in zip(sizes, stride, dilation, kernel))
    out_size = tuple(f - 2 * p + op for f, p, op in zip(full, padding, output_padding))
    if any(o <= 0 for o in out_size):
        raise RuntimeError(
            f"Given input size per channel: {list(sizes)}. Calculated output size per channel: {list(out_size)}. "
            f"Output size is too small (reduce padding {tuple(padding)} or enlarge the input)"
        )
    return full, out_size


def _conv_transpose2d_core(x: Tensor, weight: Tensor, bias, stride, padding, output_padding, dilation,
                           groups: int) -> Tensor:
    """Batched NCHW transposed convolution, the adjoint of `_conv2d_core`: each input pixel's channel
    vector times the weight gives its (C_out, kh, kw) window (one matmul), `fold` adds the windows up
    at stride `stride`, then the full result is cropped by `padding` and extended by `output_padding`."""
    n, c_in, h, w = x.shape
    _, out_per_group, kh, kw = weight.shape
    full, out_size = _conv_transpose_sizes((h, w), (kh, kw), stride, padding, output_padding, dilation)
    w_g = weight.reshape(groups, c_in // groups, out_per_group * kh * kw).transpose(-1, -2)
    cols = (w_g @ x.reshape(n, groups, c_in // groups, h * w)).reshape(n, groups * out_per_group * kh * kw, h * w)
    out = _ops.fold(cols, full, (kh, kw), dilation, 0, stride)
    # output_padding may reach past the full result (where nothing was written): zeros there
    beyond = [max(0, p + o - f) for p, o, f in zip(padding, out_size, full)]
    if any(beyond):
        out = _ops.pad(out, (0, beyond[1], 0, beyond[0]), "constant", 0.0)
    out = out[:, :, padding[0]:padding[0] + out_size[0], padding[1]:padding[1] + out_size[1]]
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


def _conv_transpose3d_core(x: Tensor, weight: Tensor, bias, stride, padding, output_padding, dilation,
                           groups: int) -> Tensor:
    """Batched NCDHW transposed convolution, the adjoint of `_conv3d_core`: one 2-d transposed
    convolution of every input depth slice, whose weight (C_in, C_out/groups * kd, kh, kw) gives each
    slice's contribution to its kd output depths as channels; `index_add` then adds those channels up
    at their depths (the adjoint of `_lift_depth`), and the depth is cropped and extended as H and W are."""
    n, c_in, d = x.shape[:3]
    _, out_per_group, kd, kh, kw = weight.shape
    full, out_size = _conv_transpose_sizes(x.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation)
    slices = x.movedim(2, 1).reshape(n * d, c_in, *x.shape[3:])
    planes = _conv_transpose2d_core(slices, weight.reshape(c_in, out_per_group * kd, kh, kw), None, stride[1:],
                                    padding[1:], output_padding[1:], dilation[1:], groups)
    c_out = out_per_group * groups
    planes = planes.reshape(n, d, c_out, kd, *planes.shape[2:]).permute(0, 2, 1, 3, 4, 5).flatten(2, 3)
    depths = np.arange(d)[:, None] * stride[0] + np.arange(kd)[None, :] * dilation[0]
    out = planes.new_zeros((n, c_out, full[0], *planes.shape[3:]))
    out = out.index_add(2, _const(depths.reshape(-1), x), planes)
    # output_padding may reach past the full result (where nothing was written): zeros there
    beyond = max(0, padding[0] + out_size[0] - full[0])
    if beyond:
        out = _ops.pad(out, (0, 0, 0, 0, 0, beyond), "constant", 0.0)
    out = out[:, :, padding[0]:padding[0] + out_size[0]]
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1, 1)
    return out


def _conv_transpose(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, output_padding,
                    groups: int, dilation, nd: int, name: str) -> Tensor:
    """conv_transpose1d/2d/3d: checks and the unbatched form; the 1-D form runs as a 2-D one of height 1."""
    _check_conv_transpose_input(input, weight, groups, nd, name)
    if isinstance(padding, str):
        raise RuntimeError(f"{name}: padding must be an int or a tuple of ints, got {padding!r}")
    unbatched = input.ndim == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    args = [_pair(a, nd) for a in (stride, padding, output_padding, dilation)]
    if nd == 1:
        args = [(one,) + a for one, a in zip((1, 0, 0, 1), args)]
        out = _conv_transpose2d_core(x.unsqueeze(2), weight.unsqueeze(2), bias, *args[:3], args[3], groups)
        out = out.squeeze(2)
    elif nd == 3:
        out = _conv_transpose3d_core(x, weight, bias, *args, groups)
    else:
        out = _conv_transpose2d_core(x, weight, bias, *args, groups)
    return out.squeeze(0) if unbatched else out


@autocasts("conv_transpose2d")
def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    output_padding=0,
    groups: int = 1,
    dilation=1,
) -> Tensor:
    """2-D transposed convolution ("deconvolution", the gradient of conv2d with respect to its input) of
    (N, C_in, H, W) with weight (C_in, C_out/groups, kh, kw): one matmul and a `fold`.

    >>> F.conv_transpose2d(jitorch.randn(1, 4, 8, 8), jitorch.randn(4, 2, 4, 4), stride=2, padding=1).shape
    jitorch.Size([1, 2, 16, 16])
    """
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 2,
                           "conv_transpose2d")


@autocasts("conv_transpose1d")
def conv_transpose1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    output_padding=0,
    groups: int = 1,
    dilation=1,
) -> Tensor:
    """1-D transposed convolution of (N, C_in, L) (or (C_in, L)) with weight (C_in, C_out/groups, k)."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 1,
                           "conv_transpose1d")


@autocasts("conv_transpose3d")
def conv_transpose3d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    output_padding=0,
    groups: int = 1,
    dilation=1,
) -> Tensor:
    """3-D transposed convolution of (N, C_in, D, H, W) (or (C_in, D, H, W)) with weight
    (C_in, C_out/groups, kd, kh, kw): a 2-d one per input depth slice, added up along depth.

    >>> F.conv_transpose3d(jitorch.randn(1, 4, 3, 8, 8), jitorch.randn(4, 2, 2, 2, 2), stride=2).shape
    jitorch.Size([1, 2, 6, 16, 16])
    """
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, 3,
                           "conv_transpose3d")


# ---------------------------------------------------------------------------------------------
# pooling


def _pool_args(input: Tensor, kernel_size, stride, padding, dilation, op: str):
    if input.ndim not in (3, 4):
        raise RuntimeError(
            f"{op}: Expected 3D or 4D (batch mode) tensor for input, but got input of size: "
            f"{list(input.shape)}"
        )
    return _pool_geometry(kernel_size, stride, padding, dilation, 2)


def _pool_geometry(kernel_size, stride, padding, dilation, n: int):
    """(kernel, stride, padding, dilation) as n-tuples; no stride means the kernel's; PyTorch's padding check."""
    kernel = _pair(kernel_size, n)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, n)
    padding, dilation = _pair(padding, n), _pair(dilation, n)
    for p, k, d in zip(padding, kernel, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise RuntimeError(
                f"pad should be at most half of effective kernel size, but got pad={p}, kernel_size={k} and "
                f"dilation={d}"
            )
    return kernel, stride, padding, dilation


def _pool_out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def _pool_windows(x4: Tensor, kernel, stride, padding, dilation, ceil_mode: bool, fill: float):
    """(N*C, kh*kw, L) windows of an (N, C, H, W) tensor padded with `fill`, plus (oh, ow)."""
    n, c, h, w = x4.shape
    oh = _pool_out_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = _pool_out_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    # the padded extent the windows read, including ceil_mode's ragged last window
    need_h = (oh - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (ow - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    pads = (padding[1], need_w - w - padding[1], padding[0], need_h - h - padding[0])
    flat = x4.reshape(n * c, 1, h, w)
    if any(pads):
        flat = _ops.pad(flat, pads, "constant", fill)
    cols = _ops.unfold(flat, kernel, dilation, 0, stride)
    return cols, oh, ow


def _tiles(input: Tensor, kernel) -> Tensor:
    *lead, h, w = input.shape
    return input.reshape(*lead, h // kernel[0], kernel[0], w // kernel[1], kernel[1])


def _window_max(windows: Tensor, dim: int, sources: np.ndarray | None = None):
    """The maximum over `dim` (a window's elements in row-major order), whose gradient goes to the
    window's first maximum alone, as PyTorch's max pooling sends it: `amax` would share it among ties,
    which the zeros after a ReLU make common. The first maximum's position comes from reductions over
    `dim` rather than an argmax, which numpy runs one window at a time (about 15 times slower here).

    With `sources` (each window element's flat index in its input plane, laid out as the trailing
    dims of `windows`; see `_window_sources`) returns (maximum, the first maximum's flat index)."""
    if not windows.dtype.is_floating_point and sources is None:
        return windows.amax(dim)  # (no gradient to route)
    size = windows.shape[dim]
    positions = _positions_along(windows, dim)
    top = windows.amax(dim, keepdim=True).detach()
    hits = windows == top
    if windows.dtype.is_floating_point:
        hits = hits | windows.isnan()  # (a NaN is the maximum, as in PyTorch)
    first = _ops.where(hits, positions, size).amin(dim, keepdim=True)
    chosen = positions == first
    out = _ops.where(chosen, windows, 0).sum(dim).to(windows.dtype)
    if sources is None:
        return out
    return out, _ops.where(chosen, _const(sources, windows), 0).sum(dim)


_MAX_TAPS = 16  # windows of more elements pool by reductions (`_window_max`): one op per tap is too many


def _taps_max(windows: Tensor, sources: np.ndarray | None = None):
    """`_window_max(windows, 1, sources)` by pointwise ops alone, for windows (M, K, L) of a few
    taps K. The windows seen as (K, M, L), each tap a view (M, L) (contiguous on the CPU, where
    unfold lays its columns out that way), give each window's first maximum in one pointwise pass;
    the output is the sum over the taps of the windows where they are that maximum (one nonzero
    term: exact), a sum over the leading dim that adds whole slabs. Its gradient is then one
    pointwise pass over the taps and a col2im (unfold's adjoint), where reductions over the
    windows' middle dim cost several passes each way."""
    taps = windows.permute(1, 0, 2)
    first = _first_tap_max(taps.detach())
    chosen = _const(np.arange(taps.shape[0], dtype=np.int32).reshape(-1, 1, 1), first) == first
    out = _ops.where(chosen, taps, 0).sum(0)
    if sources is None:
        return out
    index = _const(np.int64(-1), first)
    for k in range(taps.shape[0]):
        index = _ops.where(first == k, _const(sources[k], first), index)
    return out, index


def _first_tap_max(taps: Tensor) -> Tensor:
    """(M, L) int32: for taps (K, M, L), the first k where taps[k] is the maximum over k (a NaN
    counting as the maximum), as PyTorch's max pooling picks the element its gradient goes to."""
    rows = [taps[k] for k in range(taps.shape[0])]
    top = rows[0]
    for row in rows[1:]:
        top = _ops.maximum(top, row)  # (NaN wins)
    first = _const(np.int32(len(rows)), taps)
    for k in reversed(range(len(rows))):
        first = _ops.where((rows[k] == top) | rows[k].isnan(), _const(np.int32(k), taps), first)
    return first


def _window_sources(sizes, kernel, stride, padding, dilation, out_sizes) -> np.ndarray:
    """(prod(kernel), *out_sizes): the flat index in the input plane (row-major over `sizes`) of
    each element of each pooling window, -1 where a window reads padding. The static table that
    turns the position of a window's maximum into PyTorch's `return_indices`."""
    nd = len(sizes)
    flat, valid = np.zeros((1,) * 2 * nd, dtype=np.int64), np.ones((1,) * 2 * nd, dtype=bool)
    for axis, (size, k, s, p, d, o) in enumerate(zip(sizes, kernel, stride, padding, dilation, out_sizes)):
        shape = [1] * 2 * nd
        shape[axis], shape[nd + axis] = k, o
        pos = (np.arange(k)[:, None] * d + np.arange(o)[None, :] * s - p).reshape(shape)
        flat, valid = flat * size + pos, valid & (pos >= 0) & (pos < size)
    return np.where(valid, flat, -1).reshape(math.prod(kernel), *out_sizes)


def max_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor:
    """The maximum of each window (padding counts as -inf). Where several inputs of a window tie for
    it, the window's gradient goes to the first of them in row-major order, as in PyTorch.
    `return_indices=True` also returns each maximum's flat index in its (H, W) input plane (int64),
    as `max_unpool2d` takes it."""
    kernel, stride, padding, dilation = _pool_args(
        input, kernel_size, stride, padding, dilation, "max_pool2d"
    )
    if not return_indices and input.dtype.is_floating_point and fuses_composites(input):
        # (the taps' pointwise passes as fused kernels, not a launch per op)
        return _composites().call(_max_pool2d, input=input, kernel=kernel, stride=stride, padding=padding,
                                  dilation=dilation, ceil_mode=ceil_mode)
    return _max_pool2d(input, kernel, stride, padding, dilation, ceil_mode, return_indices)


def _max_pool2d(input: Tensor, kernel, stride, padding, dilation, ceil_mode: bool, return_indices: bool = False):
    h, w = input.shape[-2:]
    x4 = input.unsqueeze(0) if input.ndim == 3 else input
    windows, oh, ow = _pool_windows(x4, kernel, stride, padding, dilation, ceil_mode, float("-inf"))
    sources = None
    if return_indices:  # laid out as the windows: (kh*kw, oh*ow) after im2col
        sources = _window_sources((h, w), kernel, stride, padding, dilation, (oh, ow)).reshape(-1, oh * ow)
    if windows.dtype.is_floating_point and windows.shape[1] <= _MAX_TAPS:
        results = _taps_max(windows, sources)
    else:
        results = _window_max(windows, 1, sources)
    shape = (*input.shape[:-2], oh, ow)
    return tuple(r.reshape(shape) for r in results) if return_indices else results.reshape(shape)


def avg_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """The mean of each window (zero padding counted unless count_include_pad=False)."""
    kernel, stride, padding, dilation = _pool_args(input, kernel_size, stride, padding, 1, "avg_pool2d")
    if input.dtype.is_floating_point and fuses_composites(input):
        return _composites().call(_avg_pool2d, input=input, kernel=kernel, stride=stride, padding=padding,
                                  ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                                  divisor_override=divisor_override)
    return _avg_pool2d(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _avg_pool2d(input: Tensor, kernel, stride, padding, ceil_mode: bool, count_include_pad: bool,
                divisor_override: int | None) -> Tensor:
    dilation = (1, 1)
    area = kernel[0] * kernel[1]
    x4 = input.unsqueeze(0) if input.ndim == 3 else input
    n, c, h, w = x4.shape
    cols, oh, ow = _pool_windows(x4, kernel, stride, padding, dilation, ceil_mode, 0.0)
    # the taps as (kh*kw, N*C, L), contiguous on the CPU (unfold's layout there): a sum over the
    # leading dim adds whole slabs, and the gradient is one broadcast and a col2im
    total = cols.permute(1, 0, 2).sum(0).reshape(n, c, oh, ow)
    if divisor_override is not None:
        out = total / divisor_override
    elif not ceil_mode and count_include_pad:
        out = total / area
    else:
        out = total / _const(_avg_divisors(h, w, kernel, stride, padding, oh, ow, count_include_pad), x4)
    return out.squeeze(0) if input.ndim == 3 else out


def _avg_divisors(h, w, kernel, stride, padding, oh, ow, count_include_pad: bool) -> np.ndarray:
    """Per-output divisor: the window clipped to the padded input (or to the input itself)."""
    dh = _avg_divisor_axis(h, kernel[0], stride[0], padding[0], oh, count_include_pad)
    dw = _avg_divisor_axis(w, kernel[1], stride[1], padding[1], ow, count_include_pad)
    return (dh[:, None] * dw[None, :]).astype(np.float32)


def _avg_divisor_axis(size: int, k: int, s: int, p: int, out: int, count_include_pad: bool) -> np.ndarray:
    """One axis's window lengths, clipped to the padded input (or to the input itself)."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if not count_include_pad:
        return np.minimum(end, size) - np.maximum(start, 0)
    return end - start


def _pool3d_windows(input: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool, fill: float, op: str):
    """(N, C, od, kd*kh*kw, oh, ow) windows of an (N, C, D, H, W) or (C, D, H, W) input padded with
    `fill`: depth windows lifted into channels (see `_lift_depth`), then the 2-d windows of those."""
    if input.ndim not in (4, 5):
        raise RuntimeError(
            f"{op}: Expected 4D or 5D (batch mode) tensor for input, but got input of size: {list(input.shape)}"
        )
    kernel, stride, padding, dilation = _pool_geometry(kernel_size, stride, padding, dilation, 3)
    x = input.unsqueeze(0) if input.ndim == 4 else input
    n, c, d = x.shape[:3]
    od = _pool_out_size(d, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    need_d = (od - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    x = _ops.pad(x, (0, 0, 0, 0, padding[0], need_d - d - padding[0]), "constant", fill)
    lifted = _lift_depth(x.reshape(n * c, 1, *x.shape[2:]), kernel[0], stride[0], dilation[0], od)
    cols, oh, ow = _pool_windows(lifted, kernel[1:], stride[1:], padding[1:], dilation[1:], ceil_mode, fill)
    windows = cols.reshape(n, c, od, kernel[0] * kernel[1] * kernel[2], oh, ow)
    return windows, (kernel, stride, padding, dilation)


def max_pool3d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor:
    """The maximum of each 3-d window of an (N, C, D, H, W) or (C, D, H, W) input (padding counts as
    -inf); ties send the gradient to the window's first maximum, as in PyTorch. `return_indices=True`
    also returns each maximum's flat index in its (D, H, W) input plane. Copies each element about
    kd*kh*kw/(stride volume) times: slow for large overlapping windows."""
    windows, geometry = _pool3d_windows(input, kernel_size, stride, padding, dilation, ceil_mode, float("-inf"),
                                        "max_pool3d")
    sources = None
    if return_indices:
        out_sizes = (windows.shape[2], *windows.shape[-2:])
        sources = np.moveaxis(_window_sources(input.shape[-3:], *geometry, out_sizes), 0, 1)
    results = _window_max(windows, 3, sources)
    if input.ndim == 4:
        results = tuple(r.squeeze(0) for r in results) if return_indices else results.squeeze(0)
    return results


def avg_pool3d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """The mean of each 3-d window of an (N, C, D, H, W) or (C, D, H, W) input (zero padding counted
    unless count_include_pad=False)."""
    windows, (kernel, stride, padding, _) = _pool3d_windows(input, kernel_size, stride, padding, 1, ceil_mode, 0.0,
                                                            "avg_pool3d")
    total = windows.sum(3)
    if divisor_override is not None:
        out = total / divisor_override
    else:
        sizes = zip(input.shape[-3:], kernel, stride, padding, total.shape[-3:])
        per_axis = [_avg_divisor_axis(*args, count_include_pad) for args in sizes]
        divisor = np.einsum("i,j,k->ijk", *per_axis).astype(np.float32)
        out = total / _const(divisor, total)
    return out.squeeze(0) if input.ndim == 4 else out


def adaptive_avg_pool3d(input: Tensor, output_size) -> Tensor:
    """Average over PyTorch's adaptive bins so an (N, C, D, H, W) or (C, D, H, W) input becomes
    `output_size` (None keeps a dim): one static averaging matrix per axis."""
    if input.ndim not in (4, 5):
        raise RuntimeError(f"adaptive_avg_pool3d: Expected 4D or 5D tensor, but got {list(input.shape)}")
    size = (output_size,) * 3 if isinstance(output_size, int) or output_size is None else tuple(output_size)
    out = input
    for axis, (n, o) in enumerate(zip(input.shape[-3:], size)):
        matrix = _const(_adaptive_matrix(n, n if o is None else int(o)), input).to(input.dtype)
        out = out.movedim(axis - 3, -1) @ matrix.T
        out = out.movedim(-1, axis - 3)
    return out


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) averaging weights of PyTorch's adaptive bins [floor(i*n/o), ceil((i+1)*n/o))."""
    m = np.zeros((out, size), dtype=np.float64)  # (cast to the input's dtype where used)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Average over PyTorch's adaptive bins so the output is `output_size` (None keeps a dim)."""
    h, w = input.shape[-2:]
    oh, ow = _adaptive_output_size(input, output_size, "adaptive_avg_pool2d")
    if h % oh == 0 and w % ow == 0:
        return _tiles(input, (h // oh, w // ow)).mean((-3, -1))
    # uneven bins: two small matmuls with static averaging matrices, P_h @ x @ P_w^T
    ph = _const(_adaptive_matrix(h, oh), input).to(input.dtype)
    pw = _const(_adaptive_matrix(w, ow).T, input).to(input.dtype)
    return ph @ input @ pw


def _adaptive_output_size(input: Tensor, output_size, op: str, nd: int = 2) -> tuple[int, ...]:
    """The output's spatial sizes of an nd-d adaptive pool; None keeps that dim's input size."""
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"{op}: Expected {nd + 1}D or {nd + 2}D tensor, but got {list(input.shape)}")
    size = (output_size,) * nd if isinstance(output_size, int) or output_size is None else tuple(output_size)
    if len(size) != nd:
        raise ValueError(f"{op}: output_size must be an int or {nd} values, got {output_size!r}")
    return tuple(n if o is None else int(o) for n, o in zip(input.shape[-nd:], size))


def _adaptive_bins(size: int, out: int) -> tuple[np.ndarray, int]:
    """The input indices of PyTorch's adaptive bins [floor(i*n/o), ceil((i+1)*n/o)), as an
    (out * k) index array with every bin padded to the longest, k, by repeating its last index
    (a repeat never changes a maximum, and the first copy keeps the gradient)."""
    starts = [(i * size) // out for i in range(out)]
    ends = [-(-((i + 1) * size) // out) for i in range(out)]
    k = max(e - b for b, e in zip(starts, ends))
    index = [min(b + j, e - 1) for b, e in zip(starts, ends) for j in range(k)]
    return np.asarray(index, dtype=np.int64), k


def _adaptive_max(input: Tensor, out_sizes: tuple[int, ...], return_indices: bool):
    """The maximum over PyTorch's adaptive bins of the last len(out_sizes) dims: each axis's bins
    gathered (index_select) as (out, k) windows, then one reduction over the k1*k2*... elements."""
    nd, lead = len(out_sizes), input.ndim - len(out_sizes)
    in_sizes = tuple(input.shape[lead:])
    picked, bins = input, []
    for axis, (size, out) in enumerate(zip(in_sizes, out_sizes)):
        index, k = _adaptive_bins(size, out)
        picked = picked.index_select(lead + axis, _const(index, input))
        bins.append(index.reshape(out, k))
    split = [d for b in bins for d in b.shape]  # (o1, k1, o2, k2, ...)
    order = [lead + 2 * i for i in range(nd)] + [lead + 2 * i + 1 for i in range(nd)]
    windows = picked.reshape(*picked.shape[:lead], *split).permute(*range(lead), *order).flatten(-nd)
    sources = None
    if return_indices:  # (o1, o2, ..., k1*k2*...), as the windows are laid out
        flat = np.zeros((1,) * 2 * nd, dtype=np.int64)
        for axis, (b, size) in enumerate(zip(bins, in_sizes)):
            shape = [1] * 2 * nd
            shape[axis], shape[nd + axis] = b.shape
            flat = flat * size + b.reshape(shape)
        sources = flat.reshape(*out_sizes, -1)
    return _window_max(windows, -1, sources)


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False) -> Tensor:
    """The maximum over PyTorch's adaptive bins so the output is `output_size` (None keeps a dim);
    ties send the gradient to the first maximum, as in PyTorch. `return_indices=True` also returns
    each maximum's flat index in its (H, W) input plane."""
    out_sizes = _adaptive_output_size(input, output_size, "adaptive_max_pool2d")
    return _adaptive_max(input, out_sizes, return_indices)


def adaptive_max_pool3d(input: Tensor, output_size, return_indices: bool = False) -> Tensor:
    """`adaptive_max_pool2d` over the last three dims of an (N, C, D, H, W) or (C, D, H, W) input;
    indices are flat in the (D, H, W) plane."""
    out_sizes = _adaptive_output_size(input, output_size, "adaptive_max_pool3d", 3)
    return _adaptive_max(input, out_sizes, return_indices)


def adaptive_max_pool1d(input: Tensor, output_size, return_indices: bool = False) -> Tensor:
    """`adaptive_max_pool2d` over an (N, C, L) or (C, L) input seen as height 1."""
    _check_pool1d_input(input, "adaptive_max_pool1d")
    out = adaptive_max_pool2d(input.unsqueeze(-2), (1, _pair(output_size, 1)[0]), return_indices)
    return tuple(r.squeeze(-2) for r in out) if return_indices else out.squeeze(-2)


def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    """`adaptive_avg_pool2d` over an (N, C, L) or (C, L) input seen as height 1."""
    _check_pool1d_input(input, "adaptive_avg_pool1d")
    return adaptive_avg_pool2d(input.unsqueeze(-2), (1, _pair(output_size, 1)[0])).squeeze(-2)


def _check_pool1d_input(input: Tensor, op: str) -> None:
    if input.ndim not in (2, 3):
        raise RuntimeError(
            f"{op}: Expected 2D or 3D (batch mode) tensor for input, but got input of size: {list(input.shape)}"
        )


def _as_height_one(kernel_size, stride, padding, dilation=1):
    """1-d pooling arguments as 2-d ones over a height-1 input."""
    kernel = _pair(kernel_size, 1)[0]
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, 1)[0]
    return (1, kernel), (1, stride), (0, _pair(padding, 1)[0]), (1, _pair(dilation, 1)[0])


def max_pool1d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor:
    """`max_pool2d` over an (N, C, L) or (C, L) input seen as height 1."""
    _check_pool1d_input(input, "max_pool1d")
    kernel, stride, padding, dilation = _as_height_one(kernel_size, stride, padding, dilation)
    out = max_pool2d(input.unsqueeze(-2), kernel, stride, padding, dilation, ceil_mode, return_indices)
    # (on a height-1 plane the 2-d flat indices are the 1-d ones)
    return tuple(r.squeeze(-2) for r in out) if return_indices else out.squeeze(-2)


def avg_pool1d(
    input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True
) -> Tensor:
    """`avg_pool2d` over an (N, C, L) or (C, L) input seen as height 1."""
    _check_pool1d_input(input, "avg_pool1d")
    kernel, stride, padding, _ = _as_height_one(kernel_size, stride, padding)
    return avg_pool2d(input.unsqueeze(-2), kernel, stride, padding, ceil_mode, count_include_pad).squeeze(-2)


def _unpool_output_size(input: Tensor, kernel, stride, padding, output_size) -> tuple[int, ...]:
    """PyTorch's `_unpool_output_size`: the pooled input's size, (in - 1) * stride - 2 * padding + kernel,
    or `output_size` (spatial dims, or with N and C) if it lies strictly within a stride of that."""
    n = len(kernel)
    default = [(size - 1) * s + k - 2 * p for size, k, s, p in zip(input.shape[-n:], kernel, stride, padding)]
    if output_size is None:
        return tuple(default)
    output_size = tuple(int(o) for o in output_size)
    if len(output_size) == n + 2:
        output_size = output_size[2:]
    if len(output_size) != n:
        raise ValueError(
            f"output_size should be a sequence containing {n} or {n + 2} elements, but it has a length of "
            f"'{len(output_size)}'"
        )
    for d, (size, default_size, s) in enumerate(zip(output_size, default, stride)):
        if not default_size - s < size < default_size + s:
            raise ValueError(
                f'invalid output_size "{list(output_size)}" (dim {d} must be between {default_size - s} and '
                f"{default_size + s})"
            )
    return output_size


def _max_unpool(input: Tensor, indices: Tensor, kernel_size, stride, padding, output_size, nd: int,
                op: str) -> Tensor:
    """Each value of `input` written at its flat `indices` (as a max pool returned them) in a zero
    plane of the unpooled size: one scatter per plane, differentiable in `input`."""
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(
            f"{op}: Expected {nd + 1}D or {nd + 2}D (batch mode) tensor for input, but got input of size: "
            f"{list(input.shape)}"
        )
    if indices.dtype is not _dt.int64:
        raise RuntimeError(f"{op}: elements in indices should be type int64 but got: {indices.dtype.name}")
    if tuple(indices.shape) != tuple(input.shape):
        raise RuntimeError(
            f"{op}: Expected shape of indices to be same as that of the input tensor ({list(input.shape)}) but got "
            f"indices tensor with shape: {list(indices.shape)}"
        )
    kernel = _pair(kernel_size, nd)
    stride = kernel if stride is None else _pair(stride, nd)
    sizes = _unpool_output_size(input, kernel, stride, _pair(padding, nd), output_size)
    plane = math.prod(sizes)
    if _is_concrete(indices) and indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= plane):
        bad = int(indices.min()) if int(indices.min()) < 0 else int(indices.max())
        raise RuntimeError(
            f"{op}: Found an invalid max index: {bad} (output volumes are of size {'x'.join(map(str, sizes))}); "
            "pass the indices the matching max pool returned, and its input size as output_size"
        )
    lead = tuple(input.shape[:-nd])
    flat_in = input.reshape(*lead, -1)
    out = flat_in.new_zeros((*lead, plane)).scatter(-1, indices.reshape(*lead, -1), flat_in)
    return out.reshape(*lead, *sizes)


def max_unpool1d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0, output_size=None) -> Tensor:
    """The partial inverse of `max_pool1d`: each maximum back at its index, zeros elsewhere."""
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 1, "max_unpool1d")


def max_unpool2d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0, output_size=None) -> Tensor:
    """The partial inverse of `max_pool2d`: each maximum back at its flat (H, W) index, zeros elsewhere.

        out, idx = F.max_pool2d(x, 2, return_indices=True)
        F.max_unpool2d(out, idx, 2, output_size=x.shape)   # x's maxima in place, zeros elsewhere
    """
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 2, "max_unpool2d")


def max_unpool3d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0, output_size=None) -> Tensor:
    """The partial inverse of `max_pool3d`: each maximum back at its flat (D, H, W) index, zeros elsewhere."""
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 3, "max_unpool3d")


_INTERPOLATE_RANKS = {
    "nearest": (3, 4, 5), "nearest-exact": (3, 4, 5), "area": (3, 4, 5), "linear": (3,), "bilinear": (4,),
    "bicubic": (4,), "trilinear": (5,),
}


def interpolate(
    input: Tensor,
    size=None,
    scale_factor=None,
    mode: str = "nearest",
    align_corners=None,
    recompute_scale_factor=None,
    antialias: bool = False,
) -> Tensor:
    """Resize the spatial dims (all after N, C) to `size`, or by `scale_factor`.

    Modes 'nearest', 'nearest-exact' (pixel centres, as PIL and scikit-image pick), 'linear' (3-D
    input), 'bilinear' and 'bicubic' (4-D; Keys' cubic with A = -0.75, clamped at the borders),
    'trilinear' (5-D), with PyTorch's source coordinates for both `align_corners`. Each is separable:
    one axis at a time, a sum of a few gathers (index_select) of the input times static weights, so
    autograd and the compiler see ordinary ops. 'area' is adaptive average pooling to the output size.

        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    """
    _check_interpolate_mode(input, mode, align_corners, antialias)
    out_sizes, factors = _interpolate_sizes(input, size, scale_factor, recompute_scale_factor)
    if mode == "area":
        return _area_resize(input, out_sizes)
    taps = {"nearest": _nearest_taps, "nearest-exact": _nearest_exact_taps, "bicubic": _cubic_taps}.get(
        mode, _linear_taps)
    precision = np.float64 if input.dtype is _dt.float64 else np.float32  # as PyTorch's kernels compute
    out = input
    # the last axis first: PyTorch's kernels interpolate along the width innermost
    for d in reversed(range(len(out_sizes))):
        n_in, n_out = input.shape[d + 2], out_sizes[d]
        scale = _source_scale(n_in, n_out, factors[d], bool(align_corners), mode)
        if n_in == n_out and scale == 1.0:
            continue  # the identity
        out = _resample_axis(out, d + 2, taps(n_in, n_out, scale, bool(align_corners), precision))
    return out


def _area_resize(input: Tensor, out_sizes: tuple[int, ...]) -> Tensor:
    pool = {3: adaptive_avg_pool1d, 4: adaptive_avg_pool2d, 5: adaptive_avg_pool3d}[input.ndim]
    return pool(input, out_sizes)


def _check_interpolate_mode(input: Tensor, mode: str, align_corners, antialias: bool) -> None:
    if mode in ("nearest", "nearest-exact", "area") and align_corners is not None:
        raise ValueError(
            "align_corners option can only be set with the interpolating modes: linear | bilinear | bicubic | trilinear"
        )
    ranks = _INTERPOLATE_RANKS.get(mode, ())
    if mode in ("linear", "bilinear", "trilinear") and input.ndim in (3, 4, 5) and input.ndim not in ranks:
        raise NotImplementedError(f"Got {input.ndim}D input, but {mode} mode needs {ranks[0]}D input")
    if input.ndim not in ranks:
        raise NotImplementedError(
            f"Input Error: Only 3D, 4D and 5D input Tensors supported (got {input.ndim}D) for the modes: nearest | "
            f"linear | bilinear | bicubic | trilinear | area | nearest-exact (got {mode})"
        )
    if antialias:
        raise NotImplementedError("interpolate(antialias=True) is not supported yet")


def _interpolate_sizes(input: Tensor, size, scale_factor, recompute_scale_factor) -> tuple[tuple, tuple]:
    """(output sizes, the scale factors the kernel uses or None where it derives them from the sizes)."""
    spatial = input.ndim - 2
    in_sizes = list(input.shape[2:])
    if (size is None) == (scale_factor is None):
        raise ValueError(
            "only one of size or scale_factor should be defined" if size is not None
            else "either size or scale_factor should be defined"
        )
    if size is not None:
        sizes = (size,) * spatial if isinstance(size, (int, np.integer)) else tuple(size)
        if len(sizes) != spatial:
            raise ValueError(
                f"Input and output must have the same number of spatial dimensions, but got input with spatial "
                f"dimensions of {in_sizes} and output size of {sizes}. Please provide input tensor in (N, C, d1, d2, "
                "...,dK) format and output size in (o1, o2, ...,oK) format."
            )
        return tuple(int(o) for o in sizes), (None,) * spatial
    factors = (scale_factor,) * spatial if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
    if len(factors) != spatial:
        raise ValueError(
            f"Input and scale_factor must have the same number of spatial dimensions, but got input with spatial "
            f"dimensions of {in_sizes} and scale_factor of shape {factors}. Please provide input tensor in (N, C, "
            "d1, d2, ...,dK) format and scale_factor in (s1, s2, ...,sK) format."
        )
    out_sizes = tuple(int(math.floor(i * float(f))) for i, f in zip(in_sizes, factors))
    return out_sizes, (None,) * spatial if recompute_scale_factor else tuple(float(f) for f in factors)


def _source_scale(n_in: int, n_out: int, factor: float | None, align_corners: bool, mode: str) -> float:
    """PyTorch's area_pixel_compute_scale: input pixels per output pixel along one axis."""
    if align_corners and not mode.startswith("nearest"):
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / factor if factor is not None and factor > 0 else n_in / n_out


def _source_coords(n_out: int, scale: float, align_corners: bool, dtype) -> np.ndarray:
    """Where each output pixel centre falls in input coordinates, in the kernel's precision."""
    dst = np.arange(n_out, dtype=dtype)
    scale = dtype(scale)
    return dst * scale if align_corners else scale * (dst + dtype(0.5)) - dtype(0.5)


Taps = list[tuple[np.ndarray, np.ndarray | None]]


def _nearest_taps(n_in: int, n_out: int, scale: float, align_corners: bool, dtype) -> Taps:
    # PyTorch's 'nearest': src = floor(dst * scale), in float32 whatever the input dtype
    src = np.floor(np.arange(n_out, dtype=np.float32) * np.float32(scale))
    return [(np.minimum(src, n_in - 1).astype(np.int64), None)]


def _nearest_exact_taps(n_in: int, n_out: int, scale: float, align_corners: bool, dtype) -> Taps:
    # PyTorch's 'nearest-exact': the pixel whose centre is nearest, src = floor((dst + 0.5) * scale)
    src = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(scale))
    return [(np.minimum(src, n_in - 1).astype(np.int64), None)]


def _linear_taps(n_in: int, n_out: int, scale: float, align_corners: bool, dtype) -> Taps:
    src = np.maximum(_source_coords(n_out, scale, align_corners, dtype), dtype(0))
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    frac = np.clip(src - low.astype(dtype), 0, 1).astype(dtype)
    high = low + (low < n_in - 1)
    return [(low, dtype(1) - frac), (high, frac)]


def _cubic_taps(n_in: int, n_out: int, scale: float, align_corners: bool, dtype) -> Taps:
    """Keys' cubic convolution with A = -0.75 over four neighbours, clamped at the borders."""
    src = _source_coords(n_out, scale, align_corners, dtype)
    base = np.floor(src)
    t = (src - base).astype(dtype)
    a = dtype(-0.75)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = (far(t + 1), near(t), near(1 - t), far(2 - t))
    base = base.astype(np.int64)
    return [(np.clip(base - 1 + j, 0, n_in - 1), w.astype(dtype)) for j, w in enumerate(weights)]


def _resample_axis(x: Tensor, dim: int, taps: Taps) -> Tensor:
    """sum_j x.index_select(dim, index_j) * weight_j, the weights broadcast along `dim`."""
    out = None
    for index, weight in taps:
        term = x.index_select(dim, _const(index, x))
        if weight is not None:
            term = term * _const(weight.reshape((-1,) + (1,) * (x.ndim - 1 - dim)), x).to(x.dtype)
        out = term if out is None else out + term
    return out


# ---------------------------------------------------------------------------------------------
# spatial transformers: affine_grid, grid_sample


def _resolve_align_corners(align_corners: bool | None) -> bool:
    if align_corners is None:
        warnings.warn(
            "Default grid_sample and affine_grid behavior has changed to align_corners=False since 1.3.0. Please "
            "specify align_corners=True if the old behavior is desired. See the documentation of grid_sample for "
            "details.",
            stacklevel=3,
        )
        return False
    return align_corners


def _normalized_positions(size: int, align_corners: bool) -> np.ndarray:
    """The [-1, 1] coordinate of each of `size` pixels: their centers, or with align_corners their
    corner pixels' centers at -1 and 1."""
    if size <= 1:
        return np.zeros(size)
    steps = np.linspace(-1.0, 1.0, size)
    return steps if align_corners else steps * (size - 1) / size


def affine_grid(theta: Tensor, size: Sequence[int], align_corners: bool | None = None) -> Tensor:
    """The sampling grid (N, H, W, 2) (or (N, D, H, W, 3)) that `grid_sample` reads to apply the affine
    maps `theta` (N, 2, 3) (or (N, 3, 4)) to an image of `size` (N, C, H, W) (or (N, C, D, H, W)).

    >>> theta = jitorch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # the identity
    >>> F.affine_grid(theta, (1, 3, 4, 5), align_corners=False).shape
    jitorch.Size([1, 4, 5, 2])
    """
    align_corners = _resolve_align_corners(align_corners)
    if not theta.dtype.is_floating_point:
        raise ValueError(f"Expected theta to have floating point type, but got {theta.dtype}")
    size = tuple(int(s) for s in size)
    if len(size) not in (4, 5):
        raise NotImplementedError(
            f"affine_grid only supports 4D and 5D sizes, for 2D and 3D affine transforms, respectively. Got size "
            f"{size}."
        )
    nd = len(size) - 2
    if theta.ndim != 3 or tuple(theta.shape[-2:]) != (nd, nd + 1):
        raise ValueError(
            f"Expected a batch of {nd}D affine matrices of shape Nx{nd}x{nd + 1} for size {size}. Got "
            f"{tuple(theta.shape)}."
        )
    if min(size) <= 0:
        raise ValueError(f"Expected non-zero, positive output size. Got {size}")
    spatial = size[2:]
    # (x, y[, z], 1) at each output pixel: x runs along the last dim
    axes = [_normalized_positions(s, align_corners) for s in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")
    base = np.stack([*reversed(mesh), np.ones(spatial)], axis=-1).reshape(-1, nd + 1)
    grid = _const(base, theta).to(theta.dtype) @ theta.transpose(1, 2)
    return grid.reshape(size[0], *spatial, nd)


def _grid_source(coord: Tensor, size: int, padding_mode: str, align_corners: bool) -> Tensor:
    """Normalized grid coordinates -> pixel positions along one axis, folded into the image for the
    border and reflection padding modes (as PyTorch's grid sampler computes them)."""
    pos = (coord + 1) / 2 * (size - 1) if align_corners else ((coord + 1) * size - 1) / 2
    if padding_mode == "border":
        return pos.clamp(0, size - 1)
    if padding_mode == "reflection":
        pos = _reflect(pos, 0, 2 * (size - 1)) if align_corners else _reflect(pos, -1, 2 * size - 1)
        return pos.clamp(0, size - 1)
    return pos


def _reflect(pos: Tensor, twice_low: int, twice_high: int) -> Tensor:
    """`pos` mirrored at low and high (given doubled, so half-pixel bounds stay integers) until inside."""
    if twice_low == twice_high:
        return pos * 0.0
    low, span = twice_low / 2, (twice_high - twice_low) / 2
    dist = (pos - low).abs()
    flips = (dist / span).floor().detach()
    extra = dist - flips * span
    return _ops.where(flips % 2 == 0, extra + low, span - extra + low)


def _gather_pixels(input: Tensor, positions: Sequence[Tensor]) -> Tensor:
    """input[n, :, *positions] at integer-valued float positions (one (N, *out) tensor per spatial dim,
    in dim order) -> (N, C, *out); zero outside the image."""
    n, c, *sizes = input.shape
    inside, flat = None, None
    for pos, size in zip(positions, sizes):
        within = (pos >= 0) & (pos <= size - 1)
        inside = within if inside is None else inside & within
        flat = pos.clamp(0, size - 1) if flat is None else flat * size + pos.clamp(0, size - 1)
    index = flat.long().reshape(n, 1, -1).expand(n, c, -1)
    values = input.reshape(n, c, -1).gather(2, index).reshape(n, c, *positions[0].shape[1:])
    return _ops.where(inside.unsqueeze(1), values, 0.0)


def _check_grid_sample(input: Tensor, grid: Tensor, mode: str, padding_mode: str) -> None:
    """PyTorch's checks of grid_sample's arguments, with its messages."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(
            f"nn.functional.grid_sample(): expected mode to be 'bilinear' or 'nearest' (bicubic is not supported "
            f"yet), but got: '{mode}'"
        )
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(
            "nn.functional.grid_sample(): expected padding_mode to be 'zeros', 'border', or 'reflection', "
            f"but got: '{padding_mode}'"
        )
    sizes = f"input with sizes {list(input.shape)} and grid with sizes {list(grid.shape)}"
    # (in PyTorch's order of checks, so the same call fails with the same message)
    if input.ndim and grid.ndim and grid.shape[0] != input.shape[0]:
        raise RuntimeError(f"grid_sampler(): expected grid and input to have same batch size, but got {sizes}")
    if grid.ndim and grid.shape[-1] != input.ndim - 2:
        raise RuntimeError(
            f"grid_sampler(): expected grid to have size {input.ndim - 2} in last dimension, but got grid with "
            f"sizes {list(grid.shape)}"
        )
    if input.ndim not in (4, 5) or grid.ndim != input.ndim:
        raise RuntimeError(
            f"grid_sampler(): expected 4D or 5D input and grid with same number of dimensions, but got {sizes}"
        )


def grid_sample(
    input: Tensor,
    grid: Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool | None = None,
) -> Tensor:
    """Sample the (N, C, H, W) `input` at the normalized (x, y) positions of `grid` (N, Ho, Wo, 2), or
    the (N, C, D, H, W) one at the (x, y, z) of `grid` (N, Do, Ho, Wo, 3); -1 and 1 are the image's
    edges (or its corner pixels' centers with align_corners). Bilinear ('bilinear' is trilinear for
    5-d input, as in PyTorch) or nearest, with zeros, border or reflection padding. Differentiable in
    both input and grid (nearest: in input only). Each output gathers 2**dims pixels (1 for nearest);
    no bicubic form yet."""
    _check_grid_sample(input, grid, mode, padding_mode)
    align_corners = _resolve_align_corners(align_corners)
    sizes = input.shape[2:]
    # grid's last dim runs x, y[, z]: the reverse of the input's spatial dims
    positions = [_grid_source(grid[..., len(sizes) - 1 - d], size, padding_mode, align_corners)
                 for d, size in enumerate(sizes)]
    if mode == "nearest":
        return _gather_pixels(input, [p.round().detach() for p in positions])
    lows = [p.floor().detach() for p in positions]
    fracs = [(p - low).unsqueeze(1) for p, low in zip(positions, lows)]
    out = None
    for corner in itertools.product((0, 1), repeat=len(sizes)):
        weight = None
        for up, frac in zip(corner, fracs):
            w = frac if up else 1 - frac
            weight = w if weight is None else weight * w
        term = _gather_pixels(input, [low + up for low, up in zip(lows, corner)]) * weight
        out = term if out is None else out + term
    return out


# ---------------------------------------------------------------------------------------------
# attention


def _causal_mask(q_len: int, k_len: int, like: Tensor) -> Tensor:
    return _const(np.tril(np.ones((q_len, k_len), dtype=bool)), like)


@autocasts("scaled_dot_product_attention")
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """softmax(Q K^T * scale + mask) V over (..., L, E) queries and (..., S, E) keys.

    A boolean `attn_mask` marks the positions that take part (True = attend); a float mask is added.
    `is_causal` masks keys after each query (query i sees keys j <= i).

    Where the tensors' backend has a fused attention kernel for their dtype and head dims (the GPU:
    flash attention in Triton, `jitorch.backends.cuda.attention`), attention without a mask or
    dropout is the `attention` primitive, which never materializes the (..., L, S) scores; eagerly
    and in `jitorch.compile`d programs alike. Everywhere else, and on the CPU always, it is the
    composite of ops below (whose softmax a compiled program fuses).
    """
    if query.shape[-1] != key.shape[-1]:
        raise RuntimeError(
            f"scaled_dot_product_attention: query {list(query.shape)} and key {list(key.shape)} must "
            "have the "
            "same embedding size"
        )
    if is_causal and attn_mask is not None:
        raise RuntimeError(
            "_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True"
        )
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def _attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    dropout_p: float,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool = False,
) -> Tensor:
    """`scaled_dot_product_attention`, where `is_causal` together with an `attn_mask` is PyTorch's
    hint (as nn.MultiheadAttention and nn.TransformerEncoderLayer take it) that the mask is the
    causal mask: the fused primitive applies its causal rule instead of reading the mask; the
    composite adds the mask as given."""
    if enable_gqa and query.ndim >= 3 and key.shape[-3] != query.shape[-3]:
        reps = query.shape[-3] // key.shape[-3]
        key = (
            key.unsqueeze(-3)
            .expand(*key.shape[:-2], reps, *key.shape[-2:])
            .reshape(*key.shape[:-3], -1, *key.shape[-2:])
        )
        value = (
            value.unsqueeze(-3)
            .expand(*value.shape[:-2], reps, *value.shape[-2:])
            .reshape(*value.shape[:-3], -1, *value.shape[-2:])
        )
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if (dropout_p == 0.0 and (attn_mask is None or is_causal)) and _has_fused_attention(query, key, value):
        return _fused_attention(query, key, value, is_causal, scale)
    scores = (query * scale) @ key.mT
    if is_causal and attn_mask is None:
        attn_mask = _causal_mask(query.shape[-2], key.shape[-2], query)
    if attn_mask is not None:
        if attn_mask.dtype is _dt.bool_:
            scores = scores.masked_fill(attn_mask.logical_not(), float("-inf"))
        else:
            scores = scores + attn_mask
    weights = scores.softmax(-1)
    if dropout_p > 0.0:
        weights = dropout(weights, dropout_p)
    return weights @ value


def _has_fused_attention(query: Tensor, key: Tensor, value: Tensor) -> bool:
    """Whether the tensors' backend computes the `attention` primitive fused for them: one device
    (mixed ones take the composite, which raises the usual error), one dtype, at least one query
    and one key (the composite's answer for empty ones stands), and the backend's say."""
    device = query._device
    if key._device is not device or value._device is not device or min(query.ndim, key.ndim, value.ndim) < 2:
        return False
    if not (query.dtype is key.dtype is value.dtype) or query.shape[-2] == 0 or key.shape[-2] == 0:
        return False
    return query._backend().fuses_attention(query.dtype.np, query.shape[-1], value.shape[-1])


def _fused_attention(query: Tensor, key: Tensor, value: Tensor, is_causal: bool, scale: float) -> Tensor:
    """The `attention` primitive over (B, H, length, E) views of the inputs: their batch dims
    broadcast together, then fewer than two padded with ones or more merged into the first."""
    batch = broadcast_shapes(tuple(query.shape[:-2]), tuple(key.shape[:-2]), tuple(value.shape[:-2]))
    lead = (1,) * (2 - len(batch)) + batch if len(batch) <= 2 else (math.prod(batch[:-1]), batch[-1])

    def as_4d(t: Tensor) -> Tensor:
        if tuple(t.shape[:-2]) != batch:
            t = t.expand(*batch, *t.shape[-2:])
        return t if lead == batch else t.reshape(*lead, *t.shape[-2:])

    out = dispatch(PRIMS["attention"], (as_4d(query), as_4d(key), as_4d(value)),
                   {"is_causal": bool(is_causal), "scale": float(scale)})
    return out if lead == batch else out.reshape(*batch, *out.shape[-2:])
