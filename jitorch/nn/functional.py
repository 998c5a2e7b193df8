"""`jitorch.nn.functional`: layers, activations and losses as functions, PyTorch's names and signatures.

Every function here is a composite of jitorch ops (Tensor methods), never a numpy shortcut: the
compiler traces, differentiates and fuses exactly this code. Shapes and other static values are
plain Python (checked eagerly, baked into a trace); data values are only read to raise PyTorch's
errors on eager tensors (e.g. a class index out of range), never while tracing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import dtypes as _dt
from .. import ops as _ops
from .._autocast import autocasts
from ..creation import rand
from ..dispatch import dispatch, fuses_composites
from ..primitives import PRIMS, broadcast_shapes
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
    "unfold",
    "fold",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "interpolate",
    "scaled_dot_product_attention",
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


# ---------------------------------------------------------------------------------------------
# linear


@autocasts("linear")
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b for x of shape (*, in_features), W of shape (out_features, in_features)."""
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
    out = _ops.where(input > 0, input, input * negative_slope)
    return input.copy_(out) if inplace else out


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x where x > 0, else alpha * (exp(x) - 1)."""
    neg = input.clamp(max=0.0).expm1()  # clamped: the discarded branch must not overflow
    out = _ops.where(input > 0, input, neg * alpha if alpha != 1 else neg)
    return input.copy_(out) if inplace else out


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


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (identity in eval).

    The mask comes from `jitorch.rand`, so a compiled step can turn it into a seeded random op.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        out = input * 0.0
    else:
        keep = rand(*input.shape, dtype=input.dtype, device=input.device) >= p
        out = _ops.where(keep, input * (1.0 / (1.0 - p)), 0.0)
    return input.copy_(out) if inplace else out


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
    if weight is not None:
        out = out * weight.reshape(cshape)
    if bias is not None:
        out = out + bias.reshape(cshape)
    return out


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
    cshape = _channel_shape(input)
    if weight is not None:
        out = out * weight.reshape(cshape)
    if bias is not None:
        out = out + bias.reshape(cshape)
    return out


@autocasts("normalize")
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """x / max(||x||_p, eps) along `dim`."""
    if p == 2:
        # clamp the squared norm, not the norm: sqrt's gradient at 0 would be inf * 0 = nan
        norm = (input * input).sum(dim, keepdim=True).clamp(min=eps * eps).sqrt()
    else:
        norm = input.norm(p, dim, keepdim=True).clamp(min=eps)
    return input / norm


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
        # make the weight's gradient N small matmuls and a sum
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
    """conv1d/conv2d: checks, the unbatched form, 'same' padding; a 1-D convolution runs as a 2-D
    one of height 1."""
    _check_conv_input(input, weight, groups, nd, name)
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
    else:
        out = _conv2d_core(x, weight, bias, stride, sym, dilation, groups)
    return out.squeeze(0) if unbatched else out


@autocasts("conv2d")
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


@autocasts("conv1d")
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


# ---------------------------------------------------------------------------------------------
# pooling


def _pool_args(input: Tensor, kernel_size, stride, padding, dilation, op: str):
    if input.ndim not in (3, 4):
        raise RuntimeError(
            f"{op}: Expected 3D or 4D (batch mode) tensor for input, but got input of size: "
            f"{list(input.shape)}"
        )
    kernel = _pair(kernel_size)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride)
    padding, dilation = _pair(padding), _pair(dilation)
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


def _is_tiling(input: Tensor, kernel, stride, padding, dilation) -> bool:
    """Non-overlapping, unpadded windows that tile the input: pool by a reshape, no im2col copy."""
    h, w = input.shape[-2:]
    return (
        stride == kernel
        and padding == (0, 0)
        and dilation == (1, 1)
        and h % kernel[0] == 0
        and w % kernel[1] == 0
    )


def _tiles(input: Tensor, kernel) -> Tensor:
    *lead, h, w = input.shape
    return input.reshape(*lead, h // kernel[0], kernel[0], w // kernel[1], kernel[1])


def _window_max(windows: Tensor, dim: int) -> Tensor:
    """The maximum over `dim` (a window's elements in row-major order), whose gradient goes to the
    window's first maximum alone, as PyTorch's max pooling sends it: `amax` would share it among ties,
    which the zeros after a ReLU make common. The first maximum's position comes from reductions over
    `dim` rather than an argmax, which numpy runs one window at a time (about 15 times slower here)."""
    if not windows.dtype.is_floating_point:
        return windows.amax(dim)  # (no gradient to route)
    size = windows.shape[dim]
    trailing = windows.ndim - 1 - dim % windows.ndim
    positions = _const(np.arange(size, dtype=np.int64).reshape((size,) + (1,) * trailing), windows)
    top = windows.amax(dim, keepdim=True).detach()
    hits = (windows == top) | windows.isnan()  # (a NaN is the maximum, as in PyTorch)
    first = _ops.where(hits, positions, size).amin(dim, keepdim=True)
    return _ops.where(positions == first, windows, 0.0).sum(dim)


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
    it, the window's gradient goes to the first of them in row-major order, as in PyTorch."""
    if return_indices:
        raise NotImplementedError("max_pool2d(return_indices=True) is not supported yet")
    kernel, stride, padding, dilation = _pool_args(
        input, kernel_size, stride, padding, dilation, "max_pool2d"
    )
    if _is_tiling(input, kernel, stride, padding, dilation):
        # (kh, kw) ahead of (oh, ow): numpy reduces over an outer axis many windows at a time
        return _window_max(_tiles(input, kernel).movedim((-3, -1), (-4, -3)).flatten(-4, -3), -3)
    x4 = input.unsqueeze(0) if input.ndim == 3 else input
    cols, oh, ow = _pool_windows(x4, kernel, stride, padding, dilation, ceil_mode, float("-inf"))
    out = _window_max(cols, 1).reshape(*x4.shape[:2], oh, ow)
    return out.squeeze(0) if input.ndim == 3 else out


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
    area = kernel[0] * kernel[1]
    if _is_tiling(input, kernel, stride, padding, dilation) and divisor_override is None:
        return _tiles(input, kernel).mean((-3, -1))
    x4 = input.unsqueeze(0) if input.ndim == 3 else input
    n, c, h, w = x4.shape
    cols, oh, ow = _pool_windows(x4, kernel, stride, padding, dilation, ceil_mode, 0.0)
    total = cols.sum(1).reshape(n, c, oh, ow)
    if divisor_override is not None:
        out = total / divisor_override
    elif not ceil_mode and count_include_pad:
        out = total / area
    else:
        out = total / _const(_avg_divisors(h, w, kernel, stride, padding, oh, ow, count_include_pad), x4)
    return out.squeeze(0) if input.ndim == 3 else out


def _avg_divisors(h, w, kernel, stride, padding, oh, ow, count_include_pad: bool) -> np.ndarray:
    """Per-output divisor: the window clipped to the padded input (or to the input itself)."""

    def axis(size, k, s, p, o):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, size + p)
        if not count_include_pad:
            return np.minimum(end, size) - np.maximum(start, 0)
        return end - start

    dh = axis(h, kernel[0], stride[0], padding[0], oh)
    dw = axis(w, kernel[1], stride[1], padding[1], ow)
    return (dh[:, None] * dw[None, :]).astype(np.float32)


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) averaging weights of PyTorch's adaptive bins [floor(i*n/o), ceil((i+1)*n/o))."""
    m = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Average over PyTorch's adaptive bins so the output is `output_size` (None keeps a dim)."""
    if input.ndim not in (3, 4):
        raise RuntimeError(f"adaptive_avg_pool2d: Expected 3D or 4D tensor, but got {list(input.shape)}")
    h, w = input.shape[-2:]
    size = (output_size, output_size) if isinstance(output_size, int) or output_size is None else output_size
    oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
    if h % oh == 0 and w % ow == 0:
        return _tiles(input, (h // oh, w // ow)).mean((-3, -1))
    # uneven bins: two small matmuls with static averaging matrices, P_h @ x @ P_w^T
    ph = _const(_adaptive_matrix(h, oh), input).to(input.dtype)
    pw = _const(_adaptive_matrix(w, ow).T, input).to(input.dtype)
    return ph @ input @ pw


def interpolate(
    input: Tensor,
    size=None,
    scale_factor=None,
    mode: str = "nearest",
    align_corners=None,
    recompute_scale_factor=None,
    antialias: bool = False,
) -> Tensor:
    """Resize the spatial dims (all after N, C); only mode='nearest' is supported."""
    if mode != "nearest":
        raise NotImplementedError(f"interpolate: mode={mode!r} is not supported yet (only 'nearest')")
    spatial = input.ndim - 2
    if spatial < 1:
        raise ValueError(
            f"interpolate expects a (N, C, ...) input with spatial dims, got {list(input.shape)}"
        )
    if (size is None) == (scale_factor is None):
        raise ValueError("only one of size or scale_factor should be defined")
    in_sizes = tuple(input.shape[2:])
    if size is not None:
        out_sizes = _pair(size, spatial)
        scales = [i / o for i, o in zip(in_sizes, out_sizes)]
    else:
        factors = (scale_factor,) * spatial if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
        out_sizes = tuple(int(math.floor(i * f)) for i, f in zip(in_sizes, factors))
        scales = [
            i / o if recompute_scale_factor else 1.0 / f for i, o, f in zip(in_sizes, out_sizes, factors)
        ]
    out = input
    for d, (n_in, n_out, scale) in enumerate(zip(in_sizes, out_sizes, scales)):
        if n_in == n_out:
            continue
        # PyTorch's 'nearest': src = floor(dst * scale), in float32 as its kernel computes it
        src = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * np.float32(scale)), n_in - 1)
        out = out.index_select(d + 2, _const(src.astype(np.int64), input))
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
