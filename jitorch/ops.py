"""Tensor operations: each is one function here, exposed as `jitorch.NAME` and as `Tensor.NAME`.

Ops either dispatch one primitive (after PyTorch's dtype promotion) or are composites of other ops.
"""

from __future__ import annotations

import builtins
import math
import warnings
from collections import namedtuple
from collections.abc import Sequence

import numpy as np

from . import cuda
from . import dtypes as _dt
from ._autocast import autocasts
from ._trace_state import grad_mode, trace_state
from .autograd import Node
from .backends import backend_for
from .device import Device, cpu, placement
from .dispatch import dispatch, fuses_composites
from .primitives import PRIMS, Prim, PrimKind, numpy_key
from .symbolic import SymInt, is_symbolic
from .tensor import Size, Tensor, _wrap_dim, mark_multi_output_views

P = PRIMS
values_indices = namedtuple("values_indices", ["values", "indices"])

# ---------------------------------------------------------------------------------------------
# operands and promotion


def as_operand(x, like: Tensor, dtype: _dt.DType | None = None, *, checked: bool = False) -> Tensor:
    """A Tensor for `x`: tensors pass through; scalars and arrays become constants on `like`'s device.
    A Python int for a narrower integer dtype wraps as PyTorch's operands do (`uint8_tensor + 300`
    adds 44), or, `checked` (a fill value), must fit (`_dt.scalar_for`)."""
    if isinstance(x, Tensor):
        return x
    if type(x) is SymInt and trace_state.tracer is not None and trace_state.tracer.shape_env is not None:
        size = trace_state.tracer.size_value(x, like._device)  # (a size of this call would be a constant)
        return size if dtype is None or dtype is _dt.int64 else size.to(dtype)
    if dtype is None:
        dtype = _dt.result_type(x) if isinstance(x, (bool, int, float)) else None
    if dtype is not None:
        x = _dt.scalar_for(x, dtype, checked=checked)
    arr = np.asarray(x, dtype=None if dtype is None else dtype.np)
    if dtype is None:
        arr = arr.astype(_dt.get_default_dtype().np) if arr.dtype == np.float64 and not isinstance(
            x, np.ndarray) else arr
    return _on_device_of(like, arr)


def _on_device_of(like: Tensor, host: np.ndarray) -> Tensor:
    """A new tensor holding `host` on `like`'s device (while tracing, a constant of the trace)."""
    device = like._device
    if device is cpu:
        return Tensor._make(host)
    t = Tensor._make(_buffer_on(device, host))
    t._device = device
    return t


def _buffer_on(device: Device, host: np.ndarray):
    """`host` copied into a buffer of `device`'s backend (on a CUDA device, made with it current)."""
    backend = backend_for(device.type)
    if device.type != "cuda":
        return backend.from_numpy(host)
    with cuda.placing(device.index):
        return backend.from_numpy(host)


def _cast(t: Tensor, dtype: _dt.DType) -> Tensor:
    if t._data.dtype == dtype.np:
        return t
    return dispatch(P["cast"], (t,), {"dtype": dtype})


def _binary_operands(a, b, dtype: _dt.DType | None = None):
    """Promote two operands (tensors or scalars) to one dtype, PyTorch's way."""
    if (dtype is None and isinstance(a, Tensor) and isinstance(b, Tensor)
            and a._data.dtype == b._data.dtype):
        return a, b
    if dtype is None:
        dtype = _dt.result_type(a, b)
    like = a if isinstance(a, Tensor) else b
    if not isinstance(a, Tensor):
        a = as_operand(a, like, dtype)
    if not isinstance(b, Tensor):
        b = as_operand(b, like, dtype)
    return _cast(a, dtype), _cast(b, dtype)


def _binary(name: str, a, b) -> Tensor:
    a, b = _binary_operands(a, b)
    return dispatch(P[name], (a, b), {})


def _float_binary(name: str, a, b) -> Tensor:
    dtype = _dt.result_type(a, b)
    if not dtype.is_floating_point:
        dtype = _dt.get_default_dtype()
    a, b = _binary_operands(a, b, dtype)
    return dispatch(P[name], (a, b), {})


def _unary(name: str, x: Tensor) -> Tensor:
    return dispatch(P[name], (x,), {})


def _float_unary(name: str, x: Tensor) -> Tensor:
    if not x.dtype.is_floating_point:
        x = _cast(x, _dt.get_default_dtype())
    return dispatch(P[name], (x,), {})


# ---------------------------------------------------------------------------------------------
# elementwise


def add(input, other, *deprecated, alpha=1) -> Tensor:
    """input + alpha * other, broadcast and promoted as in PyTorch (also its deprecated
    `add(input, alpha, other)`, which old scripts' `p.data.add_(-lr, p.grad.data)` uses)."""
    if deprecated:
        other, alpha = _alpha_first("add", other, deprecated, alpha)
    if alpha != 1:
        other = mul(other, alpha)
    return _binary("add", input, other)


def sub(input, other, *deprecated, alpha=1) -> Tensor:
    """input - alpha * other (also the deprecated `sub(input, alpha, other)`)."""
    if deprecated:
        other, alpha = _alpha_first("sub", other, deprecated, alpha)
    if alpha != 1:
        other = mul(other, alpha)
    return _binary("sub", input, other)


def _alpha_first(op: str, other, deprecated: tuple, alpha):
    """(other, alpha) of PyTorch's deprecated `op(Number alpha, Tensor other)` overload (`deprecated`:
    the extra positional arguments), with its warning."""
    if len(deprecated) == 1 and isinstance(deprecated[0], Tensor) and isinstance(other, (int, float)) and alpha == 1:
        warnings.warn(f"This overload of {op} is deprecated: {op}(Number alpha, Tensor other). Consider using "
                      f"{op}(Tensor other, *, Number alpha = 1) instead.", UserWarning, stacklevel=4)
        return deprecated[0], other
    raise TypeError(f"{op}() takes the input, one other tensor or number, and alpha= by keyword; got "
                    f"{2 + len(deprecated)} positional arguments")


def mul(input, other) -> Tensor:
    return _binary("mul", input, other)


def div(input, other, *, rounding_mode: str | None = None) -> Tensor:
    """True division (integers give floats), or `rounding_mode="floor"|"trunc"`."""
    if rounding_mode is None:
        return _float_binary("div", input, other)
    if rounding_mode in ("floor", "trunc"):
        _refuse_bools(f"div(rounding_mode={rounding_mode!r})", input, other)
    if rounding_mode == "floor":
        if not _dt.result_type(input, other).is_floating_point:
            return _binary("floor_divide", input, other)
        return _float_binary("div", input, other).floor()
    if rounding_mode == "trunc":
        if _dt.result_type(input, other).is_floating_point:
            return _float_binary("div", input, other).trunc()
        return _integer_trunc_divide(*_binary_operands(input, other))
    raise ValueError(
        f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found {rounding_mode!r}"
    )


def _integer_trunc_divide(a: Tensor, b: Tensor) -> Tensor:
    """a / b rounded toward zero, for integers of one dtype: the floor quotient, one more where the
    exact quotient is negative and not whole. Exact for every int64 (a float quotient is not), and
    in the integer dtype, so a uint8 divisor of -7 is 249 as in PyTorch."""
    q = _binary("floor_divide", a, b)
    inexact = _binary("remainder", a, b) != 0
    negative = (a < 0) != (b < 0)
    return q + _cast(inexact & negative, q.dtype)


def floor_divide(input, other) -> Tensor:
    return div(input, other, rounding_mode="floor")


def remainder(input, other) -> Tensor:
    """Python-style modulus (the result has the sign of the divisor)."""
    _refuse_bools("remainder", input, other)
    return _binary("remainder", input, other)


def _refuse_bools(op: str, a, b) -> None:
    """An integer division of bools is an error in PyTorch, and here (numpy would answer in int8)."""
    if _dt.result_type(a, b) is _dt.bool_:
        raise NotImplementedError(f"{op} is not implemented for bool tensors; convert them with .int() first")


@autocasts("pow")
def pow(input, exponent) -> Tensor:
    """input ** exponent."""
    if isinstance(exponent, int) and exponent < 0 and _dt.result_type(input, exponent).category == 1:
        # (checked before the exponent is converted: a uint8 one would wrap to a large power)
        raise RuntimeError(f"Integers to negative integer powers are not allowed (a {input.dtype.name} tensor to "
                           f"the power {exponent}); convert the base with .float() first")
    return _binary("pow", input, exponent)


def maximum(input: Tensor, other: Tensor) -> Tensor:
    return _binary("maximum", input, other)


def minimum(input: Tensor, other: Tensor) -> Tensor:
    return _binary("minimum", input, other)


def eq(input, other) -> Tensor:
    return _binary("eq", input, other)


def ne(input, other) -> Tensor:
    return _binary("ne", input, other)


def lt(input, other) -> Tensor:
    return _binary("lt", input, other)


def le(input, other) -> Tensor:
    return _binary("le", input, other)


def gt(input, other) -> Tensor:
    return _binary("gt", input, other)


def ge(input, other) -> Tensor:
    return _binary("ge", input, other)


def _logical(name, a, b):
    a = a if isinstance(a, Tensor) else as_operand(a, b)
    b = b if isinstance(b, Tensor) else as_operand(b, a)
    return dispatch(P[name], (_cast(a, _dt.bool_), _cast(b, _dt.bool_)), {})


def logical_and(input, other) -> Tensor:
    return _logical("logical_and", input, other)


def logical_or(input, other) -> Tensor:
    return _logical("logical_or", input, other)


def logical_xor(input, other) -> Tensor:
    return _logical("logical_xor", input, other)


def logical_not(input: Tensor) -> Tensor:
    return _unary("logical_not", _cast(input, _dt.bool_))


def _bitwise(name: str, a, b) -> Tensor:
    dtype = _dt.result_type(a, b)
    if dtype is _dt.bool_:
        return _logical(name.replace("bitwise", "logical"), a, b)
    if dtype.is_floating_point:
        raise RuntimeError(f"{name} is only defined for integer and bool tensors, got {dtype.name}")
    return _binary(name, a, b)


def bitwise_and(input, other) -> Tensor:
    """`&`: bitwise AND of integers, logical AND of bools."""
    return _bitwise("bitwise_and", input, other)


def bitwise_or(input, other) -> Tensor:
    """`|`: bitwise OR of integers, logical OR of bools."""
    return _bitwise("bitwise_or", input, other)


def bitwise_xor(input, other) -> Tensor:
    """`^`: bitwise XOR of integers, logical XOR of bools."""
    return _bitwise("bitwise_xor", input, other)


def bitwise_not(input: Tensor) -> Tensor:
    """`~`: bitwise NOT of integers (-x - 1), logical NOT of bools."""
    if input.dtype is _dt.bool_:
        return logical_not(input)
    if input.dtype.is_floating_point:
        raise RuntimeError(
            f"bitwise_not is only defined for integer and bool tensors, got {input.dtype.name}"
        )
    return _unary("bitwise_not", input)


def where(condition: Tensor, input=None, other=None) -> Tensor:
    """Elementwise `input if condition else other`; with one argument, the indices of nonzeros."""
    if input is None and other is None:
        return nonzero(condition, as_tuple=True)
    if isinstance(input, int) or isinstance(other, int):  # an int value must fit an integer result, as in PyTorch
        dtype = _dt.result_type(input, other)
        input, other = (_dt.scalar_for(x, dtype, checked=True) for x in (input, other))
    like = input if isinstance(input, Tensor) else other if isinstance(other, Tensor) else condition
    a, b = _binary_operands(input if isinstance(input, Tensor) else input,
                            other if isinstance(other, Tensor) else other) if (
        isinstance(input, Tensor) or isinstance(other, Tensor)) else (
        as_operand(input, like), as_operand(other, like))
    if a._data.dtype != b._data.dtype:
        dtype = _dt.result_type(a, b)
        a, b = _cast(a, dtype), _cast(b, dtype)
    return dispatch(P["where"], (_cast(condition, _dt.bool_), a, b), {})


def _tensor_where(self: Tensor, condition: Tensor, other) -> Tensor:
    return where(condition, self, other)


def neg(input: Tensor) -> Tensor:
    if input.dtype is _dt.bool_:
        raise RuntimeError(
            "Negation, the `-` operator, on a bool tensor is not supported; use ~ or logical_not()"
        )
    return _unary("neg", input)


@autocasts("exp")
def exp(input: Tensor) -> Tensor:
    return _float_unary("exp", input)


@autocasts("log")
def log(input: Tensor) -> Tensor:
    return _float_unary("log", input)


@autocasts("log1p")
def log1p(input: Tensor) -> Tensor:
    return _float_unary("log1p", input)


@autocasts("expm1")
def expm1(input: Tensor) -> Tensor:
    return _float_unary("expm1", input)


def sqrt(input: Tensor) -> Tensor:
    return _float_unary("sqrt", input)


@autocasts("rsqrt")
def rsqrt(input: Tensor) -> Tensor:
    return _float_unary("rsqrt", input)


def sin(input: Tensor) -> Tensor:
    return _float_unary("sin", input)


def cos(input: Tensor) -> Tensor:
    return _float_unary("cos", input)


def tanh(input: Tensor) -> Tensor:
    return _float_unary("tanh", input)


def sigmoid(input: Tensor) -> Tensor:
    return _float_unary("sigmoid", input)


def erf(input: Tensor) -> Tensor:
    return _float_unary("erf", input)


@autocasts("reciprocal")
def reciprocal(input: Tensor) -> Tensor:
    return _float_unary("reciprocal", input)


def abs(input: Tensor) -> Tensor:
    return _unary("abs", input)


def sign(input: Tensor) -> Tensor:
    return _unary("sign", input)


def _rounding(name):
    def op(input: Tensor) -> Tensor:
        if not input.dtype.is_floating_point:
            return input.clone()  # integers are already whole
        return _unary(name, input)

    op.__name__ = name
    op.__doc__ = f"Elementwise {name}; integer tensors are returned unchanged (as a copy)."
    return op


floor = _rounding("floor")
ceil = _rounding("ceil")
trunc = _rounding("trunc")
_round_half_even = _rounding("round")


def round(input: Tensor, *, decimals: int = 0) -> Tensor:
    """Round half to even, as PyTorch does; `decimals` scales first."""
    if decimals == 0:
        return _round_half_even(input)
    scale = 10.0 ** decimals
    return _round_half_even(input * scale) / scale


def isnan(input: Tensor) -> Tensor:
    return _unary("isnan", input)


def isinf(input: Tensor) -> Tensor:
    return _unary("isinf", input)


def isfinite(input: Tensor) -> Tensor:
    return (input.isnan() | input.isinf()).logical_not()


def square(input: Tensor) -> Tensor:
    return input * input


def exp2(input: Tensor) -> Tensor:
    return (input * math.log(2.0)).exp() if input.dtype.is_floating_point else exp2(input.float())


@autocasts("log2")
def log2(input: Tensor) -> Tensor:
    return log(input) / math.log(2.0)


@autocasts("log10")
def log10(input: Tensor) -> Tensor:
    return log(input) / math.log(10.0)


def relu(input: Tensor) -> Tensor:
    """max(x, 0) with gradient 0 at 0 and NaN kept, as in PyTorch."""
    return _unary("relu", input)


def _relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    """grad where relu's output is positive, else 0 (relu's vector-Jacobian product)."""
    return dispatch(P["relu_backward"], (grad, out), {})


def clamp(input: Tensor, min=None, max=None) -> Tensor:
    """Limit values to [min, max]; the gradient passes where min <= x <= max."""
    if min is None and max is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    # an int bound must fit an integer input, as PyTorch checks (a wrapped bound would clamp elsewhere)
    min, max = (_dt.scalar_for(bound, input.dtype, checked=True) for bound in (min, max))
    out = input
    if min is not None:
        out = where(out < min, min if not isinstance(min, Tensor) else min.to(out.dtype), out)
    if max is not None:
        out = where(out > max, max if not isinstance(max, Tensor) else max.to(out.dtype), out)
    if out.dtype != input.dtype and not isinstance(min, Tensor) and not isinstance(max, Tensor):
        out = _cast(out, _dt.result_type(input, min if min is not None else max))
    return out


clip = clamp


def lerp(input: Tensor, end: Tensor, weight) -> Tensor:
    return input + weight * (end - input)


@autocasts("addcmul")
def addcmul(input: Tensor, tensor1: Tensor, tensor2: Tensor, *, value=1) -> Tensor:
    """input + value * tensor1 * tensor2 (optimizers' moment updates), broadcast, in the three tensors'
    promoted dtype; `value` is converted to that dtype first, as in PyTorch (0.5 is 0 for integers)."""
    input, tensor1, tensor2, value = _addc_operands("addcmul", input, tensor1, tensor2, value)
    return input + (tensor1 if value == 1 else tensor1 * value) * tensor2


@autocasts("addcdiv")
def addcdiv(input: Tensor, tensor1: Tensor, tensor2: Tensor, *, value=1) -> Tensor:
    """input + value * tensor1 / tensor2 (Adam's step), broadcast, in the three tensors' promoted dtype.
    As in PyTorch, tensor1 and tensor2 may not both be integers (that once meant integer division)."""
    input, tensor1, tensor2, value = _addc_operands("addcdiv", input, tensor1, tensor2, value)
    return input + (tensor1 if value == 1 else tensor1 * value) / tensor2


def _addc_operands(op: str, input: Tensor, tensor1: Tensor, tensor2: Tensor, value):
    """addcmul's and addcdiv's tensors cast to their promoted dtype, and `value` as a scalar of it, after
    PyTorch's checks."""
    tensors = {"input": input, "tensor1": tensor1, "tensor2": tensor2}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}(): argument '{name}' must be Tensor, not {type(t).__name__}")
    if op == "addcdiv" and not (tensor1.dtype.is_floating_point or tensor2.dtype.is_floating_point):
        raise RuntimeError(
            f"Integer division with addcdiv is no longer supported (tensor1 is {tensor1.dtype}, tensor2 "
            f"{tensor2.dtype}). For a true division write input + value * tensor1 / tensor2, for the historic "
            "behaviour (input + value * jitorch.trunc(tensor1 / tensor2)).to(input.dtype)"
        )
    dtype = _dt.result_type(input, tensor1, tensor2)
    if dtype is _dt.bool_:
        raise NotImplementedError(f"{op} is not implemented for bool tensors; convert them with .int() or .float()")
    scalar = float(value) if dtype.is_floating_point else int(value)
    return (*(_cast(t, dtype) for t in tensors.values()), scalar)


def cast(input: Tensor, dtype) -> Tensor:
    return _cast(input, _dt.get_dtype(dtype))


def to(self: Tensor, *args, **kwargs) -> Tensor:
    """Convert dtype and/or device, as PyTorch's `Tensor.to`: `x.to(jitorch.float64)`, `x.to("cuda")`,
    `x.to("cuda", jitorch.float16)`, `x.to(other)` (other's device and dtype), `x.to(device=..., copy=True)`.

    Returns `self` when nothing changes (unless `copy=True`). A move between devices is differentiable:
    the gradient goes back to the source device (`ToCopyBackward0`, as in PyTorch)."""
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    kwargs.pop("non_blocking", None)  # every copy here is synchronous with the host
    copy = kwargs.pop("copy", False)
    kwargs.pop("memory_format", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    flags = []
    for a in args:
        if isinstance(a, Tensor):
            dtype, device = a.dtype, a.device
        elif isinstance(a, _dt.DType):
            dtype = a
        elif isinstance(a, bool):
            flags.append(a)  # PyTorch's positional non_blocking, copy
        elif isinstance(a, (Device, int)) or (isinstance(a, str) and a.partition(":")[0] in ("cpu", "cuda", "meta")):
            device = a
        elif a is not None:
            dtype = _dt.get_dtype(a)
    if len(flags) > 1:
        copy = flags[1]
    out = self
    if device is not None:
        device = placement(device)
        if device is not self._device:
            out = _move(self, device)
    if dtype is not None:
        out = _cast(out, _dt.get_dtype(dtype))
    if copy and out is self:
        out = out.clone()
    return out


# a move between devices as one autograd step of its own: the gradient goes back to the source device
_TO_COPY = Prim("to_copy", PrimKind.EXTERN, None)


def _move(t: Tensor, device: Device) -> Tensor:
    """A copy of `t` on another device: through host memory (each backend's to_numpy/from_numpy)."""
    tracer = trace_state.tracer
    if tracer is not None and (t._value is not None or t._born is not tracer.born_mark):
        from ._trace_state import user_source
        from .errors import TraceError

        raise TraceError(
            f"moving a tensor (shape {tuple(t.shape)}) from {t._device} to {device} inside jitorch.compile "
            f"(at {user_source()}): a compiled program runs on one device. Move the arguments, the model "
            "and the optimizer before calling the compiled function.")
    if t._device.type == "meta":
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")
    out = Tensor._make(_buffer_on(device, t._concrete(f".to({device})")))
    out._device = device
    if t.requires_grad and grad_mode.enabled:
        out.grad_fn = Node(_TO_COPY, (t,), {"device": t._device}, out, vjp=_to_copy_vjp)
        out.requires_grad = True
    return out


def _to_copy_vjp(g: Tensor, node) -> tuple[Tensor]:
    return (to(g, node.params["device"]),)


def _tensor_cuda(self: Tensor, device=None, non_blocking: bool = False, memory_format=None) -> Tensor:
    """This tensor on a CUDA device (the current one by default); `self` when it is there already."""
    if device is None or isinstance(device, int):
        target = Device("cuda", device)
    else:
        target = Device(device)
    if target.type != "cuda":
        raise RuntimeError("Invalid device, must be cuda device")
    return to(self, target)


def _tensor_cpu(self: Tensor, memory_format=None) -> Tensor:
    """This tensor in host memory; `self` when it is there already."""
    return to(self, cpu)


def _converter(dtype):
    def conv(self: Tensor) -> Tensor:
        return _cast(self, dtype)

    conv.__doc__ = f"`self.to({dtype})`"
    return conv


def type_as(self: Tensor, other: Tensor) -> Tensor:
    return _cast(self, other.dtype)


# ---------------------------------------------------------------------------------------------
# reductions


def _dims(x: Tensor, dim) -> tuple[int, ...]:
    nd = x.ndim
    if dim is None:
        return tuple(range(nd))
    if isinstance(dim, (list, tuple)):
        dims = tuple(sorted({_wrap_dim(d, nd) for d in dim}))
        return dims if dims or len(dim) else tuple(range(nd))
    return (_wrap_dim(dim, nd),) if nd else ()


def _reduce(name: str, x: Tensor, dim, keepdim: bool) -> Tensor:
    return dispatch(P[name], (x,), {"dims": _dims(x, dim), "keepdim": bool(keepdim)})


def _in_dtype(reduced: Tensor, dtype) -> Tensor:
    """A sum or product in the `dtype=` asked for: the primitives accumulate integers in int64, and
    its low bits are what a narrower integer type would have wrapped to (`sum(dtype=uint8)`)."""
    return reduced if dtype is None else _cast(reduced, _dt.get_dtype(dtype))


@autocasts("sum")
def sum(input: Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    """Sum over `dim` (int, tuple, or all); bools and integers sum to int64 unless `dtype` says."""
    if dtype is not None:
        input = _cast(input, _dt.get_dtype(dtype))
    return _in_dtype(_reduce("sum", input, dim, keepdim), dtype)


@autocasts("prod")
def prod(input: Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    if dtype is not None:
        input = _cast(input, _dt.get_dtype(dtype))
    return _in_dtype(_reduce("prod", input, dim, keepdim), dtype)


def mean(input: Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    """The arithmetic mean over `dim`; needs a floating dtype, as in PyTorch."""
    if dtype is not None:
        input = _cast(input, _dt.get_dtype(dtype))
    if not input.dtype.is_floating_point:
        raise RuntimeError(
            f"mean(): could not infer output dtype. Input dtype must be floating point, but got "
            f"{input.dtype.name}; call .float() first or pass dtype="
        )
    dims = _dims(input, dim)
    count = 1
    for d in dims:
        count *= input.shape[d]
    return _reduce("sum", input, dims, keepdim) / builtins.max(count, 0) if count else (
        _reduce("sum", input, dims, keepdim) * float("nan"))


def amax(input: Tensor, dim=(), keepdim: bool = False) -> Tensor:
    """The maximum over `dim` (all dims when empty); ties share the gradient evenly."""
    _check_nonempty(input, "amax")
    return _reduce("amax", input, None if dim == () else dim, keepdim)


def amin(input: Tensor, dim=(), keepdim: bool = False) -> Tensor:
    _check_nonempty(input, "amin")
    return _reduce("amin", input, None if dim == () else dim, keepdim)


def _check_nonempty(x: Tensor, op: str) -> None:
    if x.numel() == 0:
        raise RuntimeError(f"{op}(): Expected reduction over a non-empty tensor, got shape {tuple(x.shape)}")


def argmax(input: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    _check_nonempty(input, "argmax")
    d = None if dim is None else _wrap_dim(dim, input.ndim) if input.ndim else None
    return dispatch(P["argmax"], (input,), {"dim": d, "keepdim": bool(keepdim)})


def argmin(input: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    _check_nonempty(input, "argmin")
    d = None if dim is None else _wrap_dim(dim, input.ndim) if input.ndim else None
    return dispatch(P["argmin"], (input,), {"dim": d, "keepdim": bool(keepdim)})


def _select_extreme(input: Tensor, dim, keepdim: bool, arg) -> values_indices:
    # the gradient goes to the one selected element, as in PyTorch's max(dim)
    d = _wrap_dim(dim, input.ndim) if input.ndim else 0
    if input.ndim == 0:
        return values_indices(input.clone(), zeros((), dtype=_dt.int64))
    idx = arg(input, d, keepdim=True)
    values = input.gather(d, idx)
    if not keepdim:
        values, idx = values.squeeze(d), idx.squeeze(d)
    return values_indices(values, idx)


def max(input: Tensor, dim=None, keepdim: bool = False):
    """`max(x)` the largest value; `max(x, dim)` (values, indices); `max(x, other)` elementwise."""
    if isinstance(dim, Tensor):
        return maximum(input, dim)
    if dim is None:
        return amax(input)
    return _select_extreme(input, dim, keepdim, argmax)


def min(input: Tensor, dim=None, keepdim: bool = False):
    """`min(x)`, `min(x, dim)` -> (values, indices), or `min(x, other)` elementwise."""
    if isinstance(dim, Tensor):
        return minimum(input, dim)
    if dim is None:
        return amin(input)
    return _select_extreme(input, dim, keepdim, argmin)


def var(input: Tensor, dim=None, *, correction=1, keepdim: bool = False, unbiased=None) -> Tensor:
    """Variance with Bessel's `correction` (1 = sample variance, 0 = population)."""
    if unbiased is not None:
        correction = 1 if unbiased else 0
    dims = _dims(input, dim)
    n = 1
    for d in dims:
        n *= input.shape[d]
    centered = input - input.mean(dims, keepdim=True)
    return (centered * centered).sum(dims, keepdim=keepdim) / builtins.max(n - correction, 0)


def std(input: Tensor, dim=None, *, correction=1, keepdim: bool = False, unbiased=None) -> Tensor:
    return var(input, dim, correction=correction, keepdim=keepdim, unbiased=unbiased).sqrt()


def logsumexp(input: Tensor, dim, keepdim: bool = False) -> Tensor:
    """log(sum(exp(x))) over `dim`, computed stably."""
    dims = _dims(input, dim)
    m = input.amax(dims, keepdim=True).detach()
    m = where(m.isinf(), 0.0, m)
    out = (input - m).exp().sum(dims, keepdim=True).log() + m
    return out if keepdim else out.squeeze(dims)


def _truth_in(reduced: Tensor, input: Tensor) -> Tensor:
    """any/all's answer in PyTorch's dtype: bool, but uint8 for a uint8 input (from the days when
    masks were bytes)."""
    return _cast(reduced, _dt.uint8) if input.dtype is _dt.uint8 else reduced


def any(input: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return _truth_in(_reduce("amax", _cast(input, _dt.bool_), dim, keepdim), input)


def all(input: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return _truth_in(_reduce("amin", _cast(input, _dt.bool_), dim, keepdim), input)


@autocasts("cumsum")
def cumsum(input: Tensor, dim: int, *, dtype=None) -> Tensor:
    if dtype is not None:
        input = _cast(input, _dt.get_dtype(dtype))
    return _in_dtype(dispatch(P["cumsum"], (input,), {"dim": _wrap_dim(dim, input.ndim) if input.ndim else 0}), dtype)


@autocasts("norm")
def norm(input: Tensor, p=2, dim=None, keepdim: bool = False) -> Tensor:
    """The vector p-norm over `dim` (all elements by default)."""
    if p == 2 or p == "fro":
        return (input * input).sum(dim, keepdim=keepdim).sqrt()
    if p == 1:
        return input.abs().sum(dim, keepdim=keepdim)
    if p == float("inf"):
        return input.abs().amax(() if dim is None else dim, keepdim=keepdim)
    return (input.abs() ** p).sum(dim, keepdim=keepdim) ** (1.0 / p)


@autocasts("softmax")
def softmax(input: Tensor, dim: int, dtype=None) -> Tensor:
    """exp(x) / sum(exp(x)) along `dim`, shifted by the max for stability."""
    return _along_dim(_softmax, input, dim, dtype)


def _softmax(input: Tensor, dim: int, dtype) -> Tensor:
    if dtype is not None:
        input = _cast(input, _dt.get_dtype(dtype))
    e = (input - input.amax(dim, keepdim=True).detach()).exp()
    return e / e.sum(dim, keepdim=True)


@autocasts("log_softmax")
def log_softmax(input: Tensor, dim: int, dtype=None) -> Tensor:
    """x - logsumexp(x) along `dim`."""
    return _along_dim(_log_softmax, input, dim, dtype)


def _log_softmax(input: Tensor, dim: int, dtype) -> Tensor:
    if dtype is not None:
        input = _cast(input, _dt.get_dtype(dtype))
    shifted = input - input.amax(dim, keepdim=True).detach()
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def _along_dim(composite, input: Tensor, dim: int, dtype) -> Tensor:
    """`composite(input, dim, dtype)`; on a backend that fuses eager composites (the GPU) as one
    cached compiled function: a fused kernel each way instead of five launches forward and more back."""
    if input.ndim and input.dtype.is_floating_point and fuses_composites(input):
        from .compiler import composites  # a layer above this one: imported when first needed

        dim = _wrap_dim(dim, input.ndim)  # a bad dim is raised here, as amax raises it; -1 and ndim-1 share a program
        return composites.call(composite, input=input, dim=dim, dtype=dtype)
    return composite(input, dim, dtype)


# ---------------------------------------------------------------------------------------------
# shapes and views


def _shape_arg(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(s if type(s) is SymInt else int(s) for s in shape)  # (a symbolic size stays one)


def _infer_shape(x: Tensor, shape: tuple, op: str) -> tuple:
    n = x.numel()
    if shape.count(-1) > 1:
        raise RuntimeError(f"{op}: only one dimension can be inferred, got shape {list(shape)}")
    if -1 in shape:
        known = 1
        for s in shape:
            if s != -1:
                known *= s
        if known == 0 or n % known:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
        shape = tuple(n // known if s == -1 else s for s in shape)
    total = 1
    for s in shape:
        total *= s
    if total != n or builtins.any(s < 0 for s in shape):
        raise RuntimeError(
            f"shape '{list(shape)}' is invalid for input of size {n} (input shape {tuple(x.shape)})"
        )
    return shape


def reshape(input: Tensor, *shape) -> Tensor:
    """The same data in a new shape (a view when the layout allows, else a copy); -1 is inferred."""
    shape = _infer_shape(input, _shape_arg(shape), "reshape")
    if shape == input.shape:
        return input
    return dispatch(P["reshape"], (input,), {"shape": shape})


def view(input: Tensor, *shape) -> Tensor:
    """Like reshape, but never copies: an error when the strides don't allow a view."""
    if len(shape) == 1 and isinstance(shape[0], (_dt.DType, str)):
        raise NotImplementedError("view(dtype) is not supported; use .to(dtype)")
    shape = _infer_shape(input, _shape_arg(shape), "view")
    if input._value is None and input._device.type == "cpu":
        try:
            np.reshape(input._data, shape, copy=False)
        except ValueError:
            raise RuntimeError(
                f"view size is not compatible with input tensor's size and stride (shape "
                f"{tuple(input.shape)}, strides {input.stride()} -> {list(shape)}). Use .reshape(...) "
                "instead."
            ) from None
    return dispatch(P["reshape"], (input,), {"shape": shape})


def view_as(input: Tensor, other: Tensor) -> Tensor:
    return view(input, other.shape)


def reshape_as(input: Tensor, other: Tensor) -> Tensor:
    return reshape(input, other.shape)


def permute(input: Tensor, *dims) -> Tensor:
    dims = _shape_arg(dims)
    nd = input.ndim
    if len(dims) != nd:
        raise RuntimeError(
            f"permute(sparse_coo): number of dimensions in the tensor input does not match the length "
            f"of the desired ordering of dimensions i.e. input.dim() = {nd} is not equal to "
            f"len(dims) = {len(dims)}"
        )
    dims = tuple(_wrap_dim(d, nd) for d in dims)
    if len(set(dims)) != nd:
        raise RuntimeError(f"permute(): duplicate dims are not allowed, got {list(dims)}")
    if dims == tuple(range(nd)):
        return input
    return dispatch(P["permute"], (input,), {"dims": dims})


def transpose(input: Tensor, dim0: int, dim1: int) -> Tensor:
    nd = input.ndim
    if nd < 2 and dim0 in (0, -1) and dim1 in (0, -1):
        return input
    order = list(range(nd))
    d0, d1 = _wrap_dim(dim0, nd), _wrap_dim(dim1, nd)
    order[d0], order[d1] = order[d1], order[d0]
    return permute(input, order)


swapaxes = swapdims = transpose  # PyTorch's aliases


def t(input: Tensor) -> Tensor:
    if input.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {input.ndim}D")
    return transpose(input, 0, 1) if input.ndim == 2 else input


def movedim(input: Tensor, source, destination) -> Tensor:
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    nd = input.ndim
    src = [_wrap_dim(s, nd) for s in src]
    dst = [_wrap_dim(d, nd) for d in dst]
    order = [None] * nd
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(i for i in range(nd) if i not in src)
    order = [o if o is not None else next(rest) for o in order]
    return permute(input, order)


def squeeze(input: Tensor, dim=None) -> Tensor:
    """Drop size-1 dimensions (all of them, or those in `dim`)."""
    dims = _dims(input, dim) if dim is not None else tuple(i for i, s in enumerate(input.shape) if s == 1)
    shape = tuple(s for i, s in enumerate(input.shape) if not (i in dims and s == 1))
    return reshape(input, shape)


def unsqueeze(input: Tensor, dim: int) -> Tensor:
    nd = input.ndim + 1
    d = _wrap_dim(dim, nd)
    shape = list(input.shape)
    shape.insert(d, 1)
    return reshape(input, tuple(shape))


def expand(input: Tensor, *sizes) -> Tensor:
    """Broadcast to a larger shape without copying; -1 keeps a dimension."""
    sizes = _shape_arg(sizes)
    lead = len(sizes) - input.ndim
    if lead < 0:
        raise RuntimeError(
            f"expand: the number of sizes provided ({len(sizes)}) must be greater or equal to the "
            f"number of dimensions in the tensor ({input.ndim})"
        )
    shape = tuple(input.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    for i, s in enumerate(input.shape):
        if s != 1 and s != shape[i + lead]:
            raise RuntimeError(
                f"The expanded size of the tensor ({shape[i + lead]}) must match the existing size ({s}) "
                f"at non-singleton dimension {i + lead}.  Target sizes: {list(sizes)}.  Tensor sizes: "
                f"{list(input.shape)}"
            )
    if shape == input.shape:
        return input
    return dispatch(P["expand"], (input,), {"shape": shape})


def expand_as(input: Tensor, other: Tensor) -> Tensor:
    return expand(input, other.shape)


def broadcast_to(input: Tensor, shape) -> Tensor:
    return expand(input, tuple(shape))


def broadcast_tensors(*tensors: Tensor) -> list[Tensor]:
    from .primitives import broadcast_shapes

    shape = broadcast_shapes(*(t.shape for t in tensors))
    return [expand(t, shape) for t in tensors]


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if input.ndim == 0:
        return reshape(input, (1,))
    s, e = _wrap_dim(start_dim, input.ndim), _wrap_dim(end_dim, input.ndim)
    shape = input.shape[:s] + (-1,) + input.shape[e + 1:]
    return reshape(input, shape) if input.numel() else reshape(
        input, input.shape[:s] + (math.prod(input.shape[s:e + 1]),) + input.shape[e + 1:])


def unflatten(input: Tensor, dim: int, sizes) -> Tensor:
    d = _wrap_dim(dim, input.ndim)
    return reshape(input, input.shape[:d] + tuple(sizes) + input.shape[d + 1:])


def contiguous(input: Tensor, memory_format=None) -> Tensor:
    if input._data.flags.c_contiguous and input._value is None:
        return input
    return dispatch(P["copy"], (input,), {})


def clone(input: Tensor, memory_format=None) -> Tensor:
    """A copy with its own storage (differentiable)."""
    return dispatch(P["copy"], (input,), {})


def flip(input: Tensor, dims) -> Tensor:
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    dims = tuple(_wrap_dim(d, input.ndim) for d in dims)
    # a 0-d tensor accepts dim 0 (as in PyTorch) and has nothing to flip
    return dispatch(P["flip"], (input,), {"dims": dims if input.ndim else ()})


def narrow(input: Tensor, dim: int, start: int, length: int) -> Tensor:
    """A view of `length` elements along `dim` from `start`."""
    d = _wrap_dim(dim, input.ndim)
    size = input.shape[d]
    if start < 0:
        start += size
    if not 0 <= start <= size or length < 0 or start + length > size:
        raise RuntimeError(f"start ({start}) + length ({length}) exceeds dimension size ({size}).")
    key = tuple(("slice", start, start + length, 1) if i == d else ("slice", None, None, None)
                for i in range(d + 1))
    return input._index(key, ())


def select(input: Tensor, dim: int, index: int) -> Tensor:
    d = _wrap_dim(dim, input.ndim)
    return input[(slice(None),) * d + (index,)]


def repeat(input: Tensor, *sizes) -> Tensor:
    """Tile the tensor `sizes[i]` times along each dimension (copies)."""
    sizes = _shape_arg(sizes)
    x = input.reshape((1,) * (len(sizes) - input.ndim) + tuple(input.shape))
    inter = []
    for r, s in zip(sizes, x.shape):
        inter += [r, s]
    y = x.reshape(tuple(v for pair in zip([1] * x.ndim, x.shape) for v in pair)).expand(inter)
    return y.reshape(tuple(r * s for r, s in zip(sizes, x.shape)))


@autocasts("cat")
def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join tensors along an existing dimension."""
    tensors = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)] or list(tensors)[:1]
    if not tensors:
        raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
    ref = tensors[0]
    d = _wrap_dim(dim, ref.ndim)
    for i, t in enumerate(tensors):
        if t.ndim != ref.ndim or builtins.any(
                a != b for j, (a, b) in enumerate(zip(t.shape, ref.shape)) if j != d):
            raise RuntimeError(
                f"Sizes of tensors must match except in dimension {d}. Expected shape like "
                f"{tuple(ref.shape)} but got {tuple(t.shape)} for tensor number {i} in the list."
            )
    if len(tensors) == 1:
        return tensors[0]
    dtype = _dt.result_type(*tensors)
    return dispatch(P["cat"], tuple(_cast(t, dtype) for t in tensors), {"dim": d})


concat = cat
concatenate = cat


@autocasts("stack")
def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join same-shaped tensors along a new dimension."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise RuntimeError(
                f"stack expects each tensor to be equal size, but got {list(tensors[0].shape)} at entry 0 "
                f"and {list(t.shape)} at entry {i}"
            )
    d = _wrap_dim(dim, tensors[0].ndim + 1)
    return cat([t.unsqueeze(d) for t in tensors], d)


def split(input: Tensor, split_size_or_sections, dim: int = 0) -> tuple[Tensor, ...]:
    """Split into chunks of a size, or into the listed section sizes."""
    d = _wrap_dim(dim, input.ndim)
    size = input.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        sections = [builtins.min(step, size - s) for s in range(0, size, step)] or [0]
    else:
        sections = list(split_size_or_sections)
        if builtins.sum(sections) != size:
            raise RuntimeError(
                f"split_with_sizes expects split_sizes to sum exactly to {size} (input tensor's size at "
                f"dimension {d}), but got split_sizes={sections}"
            )
    out, start = [], 0
    for s in sections:
        out.append(narrow(input, d, start, s))
        start += s
    return mark_multi_output_views(tuple(out), "split")


def chunk(input: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    size = input.shape[_wrap_dim(dim, input.ndim)]
    return split(input, builtins.max(1, -(-size // chunks)), dim)


def unbind(input: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    d = _wrap_dim(dim, input.ndim)
    return mark_multi_output_views(tuple(select(input, d, i) for i in range(input.shape[d])), "unbind")


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad the last dimensions: `pad=(left, right, top, bottom, ...)` as in `F.pad`; negative crops."""
    if mode != "constant":
        raise NotImplementedError(f"pad mode {mode!r}: only 'constant' is supported")
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise RuntimeError(f"Padding length must be divisible by 2 and at most 2*ndim, got {len(pad)}")
    pads = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        pads[input.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    crop = tuple(("slice", -lo if lo < 0 else 0, (d + hi) if hi < 0 else d, 1)
                 for (lo, hi), d in zip(pads, input.shape))
    if builtins.any(lo < 0 or hi < 0 for lo, hi in pads):
        input = input._index(crop, ())
        pads = [(builtins.max(lo, 0), builtins.max(hi, 0)) for lo, hi in pads]
    if builtins.all(p == (0, 0) for p in pads):
        return input
    return dispatch(P["pad"], (input,), {"pads": tuple(pads), "value": value})


# ---------------------------------------------------------------------------------------------
# indexing


def _index_tensor(idx, like: Tensor) -> Tensor:
    if not isinstance(idx, Tensor):
        idx = as_operand(np.asarray(idx), like)
    if idx.dtype is _dt.uint8:  # PyTorch's old byte masks: still masks, not indices
        warnings.warn("indexing with dtype jitorch.uint8 is now deprecated, please use a dtype jitorch.bool "
                      "instead.", UserWarning, stacklevel=4)
        return _cast(idx, _dt.bool_)
    if idx.dtype not in (_dt.int64, _dt.int32, _dt.bool_):
        raise IndexError(
            f"tensors used as indices must be long, int, byte or bool tensors, got {idx.dtype.name}; "
            "convert the index with .long()"
        )
    return idx


def normalize_key(x: Tensor, key) -> tuple[tuple, list[Tensor]]:
    """Turn a Python index into hashable items plus the index tensors it uses."""
    if not isinstance(key, tuple):
        key = (key,)
    tensors: list[Tensor] = []
    items = []
    consumed = 0
    for k in key:
        if isinstance(k, (list, np.ndarray)) or isinstance(k, Tensor):
            k = _index_tensor(k, x)
            consumed += k.ndim if k.dtype is _dt.bool_ else 1
        elif k is not None and k is not Ellipsis:
            consumed += 1
        items.append(k)
    if consumed > x.ndim:
        raise IndexError(f"too many indices for tensor of dimension {x.ndim} (shape {tuple(x.shape)})")
    out = []
    dim = 0
    for k in items:
        if k is None:
            out.append(None)
        elif k is Ellipsis:
            out.append(Ellipsis)
            dim += x.ndim - consumed
        elif isinstance(k, slice):
            if k.step is not None and k.step <= 0:
                raise ValueError("step must be greater than zero")
            out.append(("slice", _int_or_none(k.start), _int_or_none(k.stop), _int_or_none(k.step)))
            dim += 1
        elif isinstance(k, Tensor):
            if k.dtype is _dt.bool_:
                if tuple(k.shape) != tuple(x.shape[dim:dim + k.ndim]):
                    raise IndexError(
                        f"The shape of the mask {tuple(k.shape)} does not match the shape of the indexed "
                        f"tensor {tuple(x.shape)} starting at dimension {dim}"
                    )
                for part in nonzero(k, as_tuple=True):
                    out.append(("tensor", len(tensors)))
                    tensors.append(part)
                dim += k.ndim
            else:
                out.append(("tensor", len(tensors)))
                tensors.append(k)
                dim += 1
        else:
            i = int(k)
            size = x.shape[dim]
            if not -size <= i < size:
                raise IndexError(
                    f"index {i} is out of bounds for dimension {dim} with size {size} "
                    f"(tensor shape {tuple(x.shape)})"
                )
            out.append(i)
            dim += 1
    return tuple(out), tensors


def _int_or_none(v):
    return v if v is None or type(v) is SymInt else int(v)  # (a symbolic bound stays one)


def getitem(self: Tensor, key) -> Tensor:
    """x[key]: ints, slices, None, Ellipsis, integer tensors and boolean masks, like PyTorch."""
    nkey, tensors = normalize_key(self, key)
    return self._index(nkey, tensors)


def _index_setitem(self: Tensor, key, value) -> None:
    """The general `self[key] = value`: index_put at the selected indices."""
    nkey, tensors = normalize_key(self, key)
    value = as_operand(value, self)
    if value._data.dtype != self._data.dtype:
        value = value.to(self.dtype)
    src, graph = self._inplace_source(value)
    if graph or trace_state.tracer is not None:
        self._assign(src._index_put(value, nkey, tensors, accumulate=False), graph)
        return
    try:
        self._data[numpy_key(nkey, [t._data for t in tensors])] = value._data
    except ValueError as err:
        raise RuntimeError(
            f"cannot assign a value of shape {tuple(value.shape)} to the indexed part of a tensor "
            f"of shape {tuple(self.shape)}: {err}"
        ) from None
    self._bump_version()


def _refuse_byte_masks(key, op: str) -> None:
    """PyTorch reads through a uint8 mask (deprecated) but writes through none: the same error here."""
    keys = key if isinstance(key, tuple) else (key,)
    if builtins.any(isinstance(k, Tensor) and k.dtype is _dt.uint8 for k in keys):
        raise RuntimeError(f"{op} through a uint8 mask is not supported, as in PyTorch (only reading is, deprecated); "
                           "use a bool mask instead: mask.bool()")


def setitem(self: Tensor, key, value) -> None:
    """`self[key] = value`, like PyTorch.

    A boolean mask over the leading dims (`x[x > 0] = 0.5`), with a value that is the same for every
    selected element (a scalar, or a tensor broadcast along the mask's dims), becomes
    `where(mask, value, self)`: the result has no data-dependent indices, so it also traces under
    `jitorch.compile`, and its gradient is PyTorch's (none to `self` where written; to `value`, the
    sum over the selected elements). Every other key writes through `index_put`.
    """
    _refuse_byte_masks(key, "assigning")
    mask = key[0] if isinstance(key, tuple) and len(key) == 1 else key
    if isinstance(mask, Tensor) and mask.dtype is _dt.bool_:
        value = as_operand(value, self)
        fill = _mask_fill_value(self, mask, value)
        if fill is not None:
            cond = mask.reshape(tuple(mask.shape) + (1,) * (self.ndim - mask.ndim))
            self._inplace(lambda src, v: where(cond, v, src), fill)
            return
    _index_setitem(self, key, value)


def _mask_fill_value(x: Tensor, mask: Tensor, value: Tensor) -> Tensor | None:
    """`value` shaped to broadcast over x where `x[mask] = value` writes the same value into every
    selected element; None when it needs the selected indices (or the key is an error for the
    general path to report)."""
    if tuple(mask.shape) != tuple(x.shape[: mask.ndim]):
        return None
    rest = tuple(x.shape[mask.ndim:])
    shape = tuple(value.shape)
    extra = len(shape) - len(rest)  # dims of value that line up with the selected elements
    if extra > 0 and builtins.any(d != 1 for d in shape[:extra]):
        return None
    core = shape[builtins.max(extra, 0):]
    if builtins.any(d not in (1, r) for d, r in zip(core, rest[len(rest) - len(core):])):
        return None
    value = value.reshape(core) if extra > 0 else value
    return value if value._data.dtype == x._data.dtype else value.to(x.dtype)


def _on_device(tensors, like: Tensor) -> tuple:
    """Index tensors on the indexed tensor's device: PyTorch lets a CPU index list index a GPU tensor."""
    device = like._device
    return tuple(t if t._device is device else t.to(device) for t in tensors)


def _index(self: Tensor, key: tuple, tensors) -> Tensor:
    return dispatch(P["getitem"], (self, *_on_device(tensors, self)), {"key": key})


def _index_put(self: Tensor, value: Tensor, key: tuple, tensors, accumulate: bool) -> Tensor:
    if value._data.dtype != self._data.dtype:
        value = _cast(value, self.dtype)
    return dispatch(P["index_put"], (self, value, *_on_device(tensors, self)), {"key": key, "accumulate": accumulate})


def index_put(input: Tensor, indices: tuple, values: Tensor, accumulate: bool = False) -> Tensor:
    _refuse_byte_masks(tuple(indices), "index_put")
    nkey, tensors = normalize_key(input, tuple(indices))
    return _index_put(input, as_operand(values, input), nkey, tensors, accumulate)


def nonzero(input: Tensor, *, as_tuple: bool = False):
    """Indices of nonzero elements (data-dependent shape: eager only)."""
    data = input._concrete("nonzero() (its output shape depends on the data)")
    idx = np.nonzero(data)
    parts = tuple(Tensor._make(np.asarray(i, dtype=np.int64)) for i in idx)
    if as_tuple:
        return parts
    return Tensor._make(np.stack([p._data for p in parts], axis=1) if parts else np.zeros((0, 0), np.int64))


def masked_select(input: Tensor, mask: Tensor) -> Tensor:
    input, mask = broadcast_tensors(input, mask)
    return input[mask]


def _check_index(index: Tensor, op: str) -> None:
    if index.dtype not in (_dt.int64, _dt.int32):
        raise RuntimeError(f"{op}(): Expected dtype int64 for index, got {index.dtype.name}")


def _check_index_range(input: Tensor, dim: int, index: Tensor, op: str) -> None:
    if index._value is not None or index._device.type == "meta" or index.numel() == 0:
        return
    size = input.shape[dim]

    def error(bad: int | None) -> IndexError:
        return IndexError(
            f"{op}(): index {'' if bad is None else f'{bad} '}is out of bounds for dimension {dim} with size {size} "
            f"(input shape {tuple(input.shape)}, index shape {tuple(index.shape)})"
        )

    index._backend().check_indices(index._data, -size, size, error)


def gather(input: Tensor, dim: int, index: Tensor) -> Tensor:
    """out[i][j] = input[index[i][j]][j] (for dim=0), as `torch.gather`."""
    d = _wrap_dim(dim, input.ndim)
    _check_index(index, "gather")
    if index.ndim != input.ndim:
        raise RuntimeError(
            f"gather(): Index tensor must have the same number of dimensions as input tensor "
            f"(index shape {tuple(index.shape)}, input shape {tuple(input.shape)})"
        )
    _check_index_range(input, d, index, "gather")
    return dispatch(P["gather"], (input, index), {"dim": d})


def _scatter_args(input, dim, index, src, op):
    d = _wrap_dim(dim, input.ndim)
    _check_index(index, op)
    _check_index_range(input, d, index, op)
    src = as_operand(src, input, input.dtype) if not isinstance(src, Tensor) else src
    if src.ndim == 0:
        src = src.expand(index.shape)
    return d, _cast(src, input.dtype)


def scatter(input: Tensor, dim: int, index: Tensor, src=None, value=None) -> Tensor:
    """Write `src` (or a scalar `value`) into a copy of input at `index` along `dim`."""
    d, src = _scatter_args(input, dim, index, src if src is not None else value, "scatter")
    return dispatch(P["scatter"], (input, index, src), {"dim": d})


def scatter_add(input: Tensor, dim: int, index: Tensor, src: Tensor) -> Tensor:
    """Add `src` into a copy of input at `index` along `dim`; repeated indices accumulate."""
    d, src = _scatter_args(input, dim, index, src, "scatter_add")
    return dispatch(P["scatter_add"], (input, index, src), {"dim": d})


def index_select(input: Tensor, dim: int, index: Tensor) -> Tensor:
    d = _wrap_dim(dim, input.ndim)
    _check_index(index, "index_select")
    if index.ndim > 1:
        raise IndexError(f"index_select(): Index is supposed to be a vector, got shape {tuple(index.shape)}")
    _check_index_range(input, d, index, "index_select")
    return input._index((("slice", None, None, None),) * d + (("tensor", 0),), (index.reshape(-1),))


def take_along_dim(input: Tensor, indices: Tensor, dim: int) -> Tensor:
    return gather(input, dim, indices)


def masked_fill(input: Tensor, mask: Tensor, value) -> Tensor:
    """Replace elements where `mask` is True with `value`."""
    if mask.dtype is not _dt.bool_:
        raise RuntimeError(
            f"masked_fill only supports boolean masks, but got mask with dtype {mask.dtype.name}"
        )
    if isinstance(value, Tensor):
        value = value.to(input.dtype)
    else:
        value = as_operand(value, input, input.dtype, checked=True)
    return where(mask, value, input)


def _tri_mask(x: Tensor, diagonal: int, upper: bool) -> Tensor:
    rows, cols = x.shape[-2], x.shape[-1]
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    keep = (c - r >= diagonal) if upper else (c - r <= diagonal)
    return as_operand(keep, x)


def tril(input: Tensor, diagonal: int = 0) -> Tensor:
    """Keep the lower triangle (j - i <= diagonal) of the last two dims."""
    # a zero of input's own dtype: a Python 0 would promote a bool tensor to int64
    return where(_tri_mask(input, diagonal, upper=False), input, input.new_zeros(()))


def triu(input: Tensor, diagonal: int = 0) -> Tensor:
    """Keep the upper triangle (j - i >= diagonal) of the last two dims."""
    return where(_tri_mask(input, diagonal, upper=True), input, input.new_zeros(()))


def argsort(input: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> Tensor:
    if input.ndim == 0:
        return zeros((), dtype=_dt.int64)
    params = {"dim": _wrap_dim(dim, input.ndim), "descending": bool(descending)}
    return dispatch(P["argsort"], (input,), params)


def sort(input: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> values_indices:
    """(values, indices) sorted along `dim`; stable."""
    idx = argsort(input, dim, descending)
    return values_indices(gather(input, dim, idx) if input.ndim else input.clone(), idx)


def topk(input: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> values_indices:
    """The k largest (or smallest) elements along `dim`, with their indices."""
    d = _wrap_dim(dim, input.ndim)
    if not 0 <= k <= input.shape[d]:
        raise RuntimeError(f"selected index k out of range: k={k} for dimension {d} of size {input.shape[d]}")
    idx = narrow(argsort(input, d, descending=largest), d, 0, k)
    return values_indices(gather(input, d, idx), idx)


# ---------------------------------------------------------------------------------------------
# matrix products


@autocasts("matmul")
def matmul(input: Tensor, other: Tensor) -> Tensor:
    """Matrix product with NumPy/PyTorch semantics for 1-D operands and broadcast batch dims."""
    if input.ndim == 0 or other.ndim == 0:
        raise RuntimeError(
            f"both arguments to matmul need to be at least 1D, but they are {input.ndim}D and {other.ndim}D"
        )
    a, b = _binary_operands(input, other)
    if a.dtype is _dt.bool_:
        raise RuntimeError(f"matmul is not implemented for {a.dtype.name}; convert the operands with .int() or "
                           ".float()")
    squeeze_a = a.ndim == 1
    squeeze_b = b.ndim == 1
    if squeeze_a:
        a = a.unsqueeze(0)
    if squeeze_b:
        b = b.unsqueeze(-1)
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({'x'.join(map(str, input.shape))} and "
            f"{'x'.join(map(str, other.shape))}): inner sizes {a.shape[-1]} != {b.shape[-2]}"
        )
    out = dispatch(P["matmul"], (a, b), {})
    if squeeze_a:
        out = out.squeeze(-2)
    if squeeze_b:
        out = out.squeeze(-1)
    return out


@autocasts("mm")
def mm(input: Tensor, mat2: Tensor) -> Tensor:
    if input.ndim != 2 or mat2.ndim != 2:
        raise RuntimeError(f"mm: expected 2D tensors, got {input.ndim}D and {mat2.ndim}D")
    return matmul(input, mat2)


@autocasts("bmm")
def bmm(input: Tensor, mat2: Tensor) -> Tensor:
    if input.ndim != 3 or mat2.ndim != 3:
        raise RuntimeError(f"bmm: expected 3D tensors, got {input.ndim}D and {mat2.ndim}D")
    if input.shape[0] != mat2.shape[0]:
        raise RuntimeError(
            f"bmm: batch sizes differ: {tuple(input.shape)} and {tuple(mat2.shape)}"
        )
    return matmul(input, mat2)


@autocasts("dot")
def dot(input: Tensor, other: Tensor) -> Tensor:
    return (input * other).sum()


def outer(input: Tensor, vec2: Tensor) -> Tensor:
    return input.unsqueeze(-1) * vec2


@autocasts("einsum")
def einsum(equation: str, *operands) -> Tensor:
    """Einstein summation, e.g. `einsum("bij,bjk->bik", a, b)`."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    eq = equation.replace(" ", "")
    if "->" not in eq:
        lhs = eq
        letters = sorted(c for c in set(lhs.replace(",", "")) if lhs.replace(",", "").count(c) == 1)
        eq = lhs + "->" + "".join(letters)
    if "..." in eq:
        raise NotImplementedError("einsum with '...' is not supported yet; write out the dimensions")
    lhs = eq.split("->")[0].split(",")
    if len(lhs) != len(operands):
        raise RuntimeError(f"einsum(): {len(lhs)} operands in the equation but {len(operands)} given")
    for sub, op in zip(lhs, operands):
        if len(sub) != op.ndim:
            raise RuntimeError(
                f"einsum(): the number of subscripts in '{sub}' ({len(sub)}) does not match the number "
                f"of dimensions ({op.ndim}) of an operand of shape {tuple(op.shape)}"
            )
    dtype = _dt.result_type(*operands)
    return dispatch(P["einsum"], tuple(_cast(o, dtype) for o in operands), {"equation": eq})


def unfold(input: Tensor, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """im2col: (N, C, H, W) -> (N, C*kh*kw, L), as `torch.nn.functional.unfold`."""
    pair = _pair
    return dispatch(P["unfold"], (input,), {"kernel": pair(kernel_size), "dilation": pair(dilation),
                                            "padding": pair(padding), "stride": pair(stride)})


def fold(input: Tensor, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """col2im, the adjoint of `unfold`: overlapping windows add up."""
    pair = _pair
    return dispatch(P["fold"], (input,), {"output_size": pair(output_size), "kernel": pair(kernel_size),
                                          "dilation": pair(dilation), "padding": pair(padding),
                                          "stride": pair(stride)})


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


# ---------------------------------------------------------------------------------------------
# more composites users reach for


def isclose(input: Tensor, other, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> Tensor:
    """Elementwise |input - other| <= atol + rtol * |other| (NaNs equal only with `equal_nan`)."""
    other = as_operand(other, input)
    close = (input - other).abs() <= atol + rtol * other.abs()
    close = close | (input == other)  # equal infinities
    if equal_nan:
        close = close | (input.isnan() & other.isnan())
    return close


def allclose(input: Tensor, other, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> bool:
    """Whether every element is close (see `isclose`); a Python bool."""
    return bool(isclose(input, other, rtol, atol, equal_nan).all())


def equal(input: Tensor, other: Tensor) -> bool:
    """True when both tensors have the same shape and the same values."""
    return input.shape == other.shape and bool((input == other).all())


def numel(input: Tensor) -> int:
    return input.numel()


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor)


def ravel(input: Tensor) -> Tensor:
    return input.reshape(-1)


def roll(input: Tensor, shifts, dims=None) -> Tensor:
    """Rotate elements along `dims` by `shifts` (flattened first when `dims` is None)."""
    if dims is None:
        return roll(input.reshape(-1), shifts, 0).reshape(input.shape)
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    out = input
    for shift, dim in zip(shifts, dims):
        d = _wrap_dim(dim, out.ndim)
        size = out.shape[d]
        k = shift % size if size else 0
        if k:
            out = cat([narrow(out, d, size - k, k), narrow(out, d, 0, size - k)], d)
    return out


def tile(input: Tensor, dims) -> Tensor:
    dims = tuple(dims)
    return input.repeat((1,) * (input.ndim - len(dims)) + dims)


def hstack(tensors: Sequence[Tensor]) -> Tensor:
    return cat(tensors, 0 if tensors[0].ndim == 1 else 1)


def vstack(tensors: Sequence[Tensor]) -> Tensor:
    return cat([t.reshape(1, -1) if t.ndim == 1 else t for t in tensors], 0)


@autocasts("addmm")
def addmm(input: Tensor, mat1: Tensor, mat2: Tensor, *, beta=1, alpha=1) -> Tensor:
    """beta * input + alpha * (mat1 @ mat2)."""
    return _scaled_sum(input, mm(mat1, mat2), beta, alpha)


def logaddexp(input: Tensor, other: Tensor) -> Tensor:
    """log(exp(input) + exp(other)), computed stably."""
    m = maximum(input, other).detach()
    m = where(m.isinf(), 0.0, m)
    return m + ((input - m).exp() + (other - m).exp()).log()


def nan_to_num(input: Tensor, nan: float = 0.0, posinf: float | None = None, neginf: float | None = None) -> Tensor:
    """Replace NaN, +inf and -inf by finite numbers (the dtype's extremes by default)."""
    info = _dt.finfo(input.dtype)
    out = where(input.isnan(), nan, input)
    out = where(out == float("inf"), float(info.max) if posinf is None else posinf, out)
    return where(out == float("-inf"), float(info.min) if neginf is None else neginf, out)


def count_nonzero(input: Tensor, dim=None) -> Tensor:
    return (input != 0).sum(dim)


def argwhere(input: Tensor) -> Tensor:
    return nonzero(input)


def diag(input: Tensor, diagonal: int = 0) -> Tensor:
    """A 1-D tensor's values on a diagonal of a square matrix, or a 2-D tensor's diagonal."""
    if input.ndim == 1:
        n = input.shape[0] + builtins.abs(diagonal)
        rows = np.arange(input.shape[0]) + builtins.max(-diagonal, 0)
        cols = np.arange(input.shape[0]) + builtins.max(diagonal, 0)
        key = (("tensor", 0), ("tensor", 1))
        index = (as_operand(rows, input), as_operand(cols, input))
        return input.new_zeros((n, n))._index_put(input, key, index, accumulate=False)
    if input.ndim != 2:
        raise RuntimeError(f"diag(): Supports 1D or 2D tensors. Got {input.ndim}D (shape {tuple(input.shape)})")
    r, c = input.shape
    length = builtins.max(0, builtins.min(r + builtins.min(diagonal, 0), c - builtins.max(diagonal, 0)))
    rows = np.arange(length) + builtins.max(-diagonal, 0)
    cols = np.arange(length) + builtins.max(diagonal, 0)
    return input._index((("tensor", 0), ("tensor", 1)), (as_operand(rows, input), as_operand(cols, input)))


# ---------------------------------------------------------------------------------------------
# more ops common PyTorch code uses: scans, bins, grids, products, diagonals, index updates, unique


def cumprod(input: Tensor, dim: int, *, dtype=None) -> Tensor:
    """The running product along `dim` (integers and bools give int64, as in PyTorch).

    A log-depth scan of multiplications (step k multiplies in the value 2**k places back), so the
    gradient is exact through zeros in the input, which a division by the input would turn into NaN.
    """
    if dtype is not None:
        input = _cast(input, _dt.get_dtype(dtype))
    elif not input.dtype.is_floating_point:
        input = _cast(input, _dt.int64)
    if input.ndim == 0:
        return input.clone()
    d = _wrap_dim(dim, input.ndim)
    n = input.shape[d]
    out, shift = input, 1
    while shift < n:
        ones = out.new_ones(tuple(shift if i == d else s for i, s in enumerate(out.shape)))
        out = out * cat([ones, narrow(out, d, 0, n - shift)], d)
        shift *= 2
    return out


def _concrete_ints(t: Tensor, op: str) -> np.ndarray:
    """A tensor's integer values on the host, for an op whose output size depends on them."""
    if t.dtype.is_floating_point or t.dtype is _dt.bool_:
        raise RuntimeError(f"{op}: expected an integer tensor, got {t.dtype.name} (shape {tuple(t.shape)})")
    return t._concrete(f"{op}() (its output shape depends on the data)")


def repeat_interleave(input: Tensor, repeats=None, dim: int | None = None, *, output_size=None) -> Tensor:
    """Repeat each element `repeats` times along `dim` (the flattened input when None).

    `repeats` is an int (traceable) or a tensor with one count per element (its values decide the
    output's size: eager only). `repeat_interleave(counts)` alone gives `arange(len(counts))` repeated.
    `output_size` is accepted for PyTorch's signature; the size is always computed.
    """
    if repeats is None:
        return repeat_interleave(_arange_like(input, input.shape[0] if input.ndim else 1), input, 0)
    if dim is None:
        input, dim = input.reshape(-1), 0
    d = _wrap_dim(dim, input.ndim)
    if isinstance(repeats, Tensor) and repeats.numel() == 1 and input.shape[d] != 1:
        repeats = int(repeats.item())
    if not isinstance(repeats, Tensor):
        if repeats < 0:
            raise RuntimeError(f"repeats can not be negative, got {repeats}")
        shape = list(input.shape)
        grown = input.unsqueeze(d + 1).expand(shape[:d + 1] + [int(repeats)] + shape[d + 1:])
        return grown.flatten(d, d + 1)
    counts = _concrete_ints(repeats, "repeat_interleave").reshape(-1)
    if counts.shape[0] != input.shape[d]:
        raise RuntimeError(
            f"repeats must have the same size as input along dim, but got repeats.size(0) = {counts.shape[0]} "
            f"and input.size({d}) = {input.shape[d]}"
        )
    if (counts < 0).any():
        raise RuntimeError("repeats can not be negative")
    index = as_operand(np.repeat(np.arange(counts.shape[0]), counts), input, _dt.int64)
    return index_select(input, d, index)


def _arange_like(like: Tensor, n: int) -> Tensor:
    """arange(n) as int64 on `like`'s device."""
    return as_operand(np.arange(n, dtype=np.int64), like, _dt.int64)


def bincount(input: Tensor, weights: Tensor | None = None, minlength: int = 0) -> Tensor:
    """Counts (or summed `weights`) of each value of a 1-D non-negative integer tensor; no gradient.

    The length is max(input) + 1 (at least `minlength`), read from the data: eager only.
    """
    if minlength < 0:
        raise RuntimeError("minlength should be >= 0")
    if input.ndim != 1 or input.dtype.is_floating_point or input.dtype is _dt.bool_:
        raise RuntimeError(
            f"bincount only supports 1-d non-negative integral inputs (got shape {tuple(input.shape)}, "
            f"{input.dtype.name})"
        )
    values = _concrete_ints(input, "bincount")
    if values.size and values.min() < 0:
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs (got a negative value)")
    if weights is not None and (weights.ndim != 1 or weights.shape[0] != input.shape[0]):
        raise RuntimeError(
            f"weights should be 1-d and have the same length as input (input shape {tuple(input.shape)}, "
            f"weights shape {tuple(weights.shape)})"
        )
    size = builtins.max(int(values.max()) + 1 if values.size else 0, minlength)
    index = input.to(_dt.int64)
    if weights is None:
        return index.new_zeros((size,)).scatter_add(0, index, index.new_ones(index.shape))
    dtype = weights.dtype if weights.dtype.is_floating_point else _dt.float64
    return index.new_zeros((size,), dtype=dtype).scatter_add(0, index, weights.detach().to(dtype))


def searchsorted(sorted_sequence: Tensor, input, *, out_int32: bool = False, right: bool = False,
                 side: str | None = None, sorter: Tensor | None = None) -> Tensor:
    """For each value, its insertion index in the innermost dim of `sorted_sequence` (the first
    position whose element is >= it; with `right` or side="right", > it).
    """
    if side is not None:
        if side not in ("left", "right"):
            raise RuntimeError(f"side can only be 'left' or 'right' but got {side!r}")
        if right and side == "left":
            raise RuntimeError("side and right can't be set to opposites, got side of left while right was True")
        right = side == "right"
    values = as_operand(input, sorted_sequence)
    if sorter is not None:
        sorted_sequence = gather(sorted_sequence, -1, sorter)
    if sorted_sequence.ndim > 1 and tuple(sorted_sequence.shape[:-1]) != tuple(values.shape[:-1]):
        raise RuntimeError(
            f"torch.searchsorted(): boundaries tensor should be 1 dimension or the first N-1 dimensions of "
            f"boundaries tensor and input value tensor must match, but we got boundaries tensor "
            f"{list(sorted_sequence.shape)} and input value tensor {list(values.shape)}"
        )
    rows = values.reshape(-1) if sorted_sequence.ndim == 1 else values
    out = _insertion_points(*_binary_operands(sorted_sequence, rows), right).reshape(values.shape)
    return out.to(_dt.int32) if out_int32 else out


def _insertion_points(boundaries: Tensor, values: Tensor, right: bool) -> Tensor:
    """Where each value goes among the sorted boundaries (both sorted along the last dim).

    One stable sort of boundaries and values together (values first for the left side, so that
    they sort before equal boundaries; last for the right side): a value's insertion point is the
    number of boundaries before it. O((n + m) log(n + m)), and traceable.
    """
    n, m = boundaries.shape[-1], values.shape[-1]
    both = cat([boundaries, values], -1) if right else cat([values, boundaries], -1)
    order = argsort(both, -1, stable=True)
    is_boundary = order < n if right else order >= m
    boundaries_before = cumsum(is_boundary, -1)  # at a value's place: the boundaries sorted before it
    by_element = scatter(order.new_zeros(order.shape), -1, order, boundaries_before)
    return narrow(by_element, -1, n, m) if right else narrow(by_element, -1, 0, m)


def bucketize(input, boundaries: Tensor, *, out_int32: bool = False, right: bool = False) -> Tensor:
    """The bucket of each value among 1-D `boundaries` (boundaries[i-1] < x <= boundaries[i];
    with `right`, boundaries[i-1] <= x < boundaries[i])."""
    if boundaries.ndim != 1:
        raise RuntimeError(f"boundaries tensor must be 1 dimension, but got dim({boundaries.ndim})")
    return searchsorted(boundaries, input, out_int32=out_int32, right=right)


def meshgrid(*tensors, indexing: str = "ij") -> tuple[Tensor, ...]:
    """Coordinate grids from 1-D tensors, as broadcast views ("xy" swaps the first two axes)."""
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing not in ("ij", "xy"):
        raise RuntimeError(f"torch.meshgrid: indexing must be one of \"xy\" or \"ij\", but received: {indexing}")
    if builtins.any(t.ndim > 1 for t in tensors):
        raise RuntimeError(
            "torch.meshgrid: Expected 0D or 1D tensor in the tensor list but got: "
            + ", ".join(str(tuple(t.shape)) for t in tensors)
        )
    order = list(range(len(tensors)))
    if indexing == "xy" and len(tensors) >= 2:
        order[0], order[1] = 1, 0
    shape = tuple(tensors[i].numel() for i in order)
    grids = []
    for k, t in enumerate(tensors):
        axis = order.index(k)
        grids.append(t.reshape((1,) * axis + (-1,) + (1,) * (len(shape) - axis - 1)).expand(shape))
    return tuple(grids)


@autocasts("tensordot")
def tensordot(a: Tensor, b: Tensor, dims=2) -> Tensor:
    """Sum of products over `dims`: an int n (a's last n dims with b's first n) or a pair of dim lists."""
    if isinstance(dims, int):
        if dims < 0:
            raise RuntimeError(f"tensordot expects dims >= 0, but got dims={dims}")
        dims_a, dims_b = list(range(a.ndim - dims, a.ndim)), list(range(dims))
    else:
        dims_a, dims_b = ([d] if isinstance(d, int) else list(d) for d in dims)
    dims_a = [_wrap_dim(d, a.ndim) for d in dims_a]
    dims_b = [_wrap_dim(d, b.ndim) for d in dims_b]
    if len(dims_a) != len(dims_b):
        raise RuntimeError(f"both dimension lists should have same length, got {dims_a} and {dims_b}")
    for da, db in zip(dims_a, dims_b):
        if a.shape[da] != b.shape[db]:
            raise RuntimeError(
                f"contracted dimensions need to match, but first has size {a.shape[da]} in dim {da} and second "
                f"has size {b.shape[db]} in dim {db}"
            )
    free_a = [d for d in range(a.ndim) if d not in dims_a]
    free_b = [d for d in range(b.ndim) if d not in dims_b]
    k = math.prod(a.shape[d] for d in dims_a)
    out_a, out_b = [a.shape[d] for d in free_a], [b.shape[d] for d in free_b]
    lhs, rhs = _binary_operands(a.permute(free_a + dims_a).reshape(math.prod(out_a), k),
                                b.permute(dims_b + free_b).reshape(k, math.prod(out_b)))
    return mm(lhs, rhs).reshape(out_a + out_b)


def kron(input: Tensor, other: Tensor) -> Tensor:
    """The Kronecker product: each element of `input` scales a whole copy of `other`."""
    nd = builtins.max(input.ndim, other.ndim)
    a_shape = (1,) * (nd - input.ndim) + tuple(input.shape)
    b_shape = (1,) * (nd - other.ndim) + tuple(other.shape)
    a = input.reshape(tuple(x for s in a_shape for x in (s, 1)))
    b = other.reshape(tuple(x for s in b_shape for x in (1, s)))
    return (a * b).reshape(tuple(x * y for x, y in zip(a_shape, b_shape)))


def cdist(x1: Tensor, x2: Tensor, p: float = 2.0, compute_mode=None) -> Tensor:
    """p-norm distances between each row of x1 (..., P, M) and each row of x2 (..., R, M).

    For p=2 the gradient at a zero distance is 0 (as in PyTorch), not the NaN of sqrt's at 0.
    """
    for name, x in (("X1", x1), ("X2", x2)):
        if not x.dtype.is_floating_point:
            raise RuntimeError(f"cdist only supports floating-point dtypes, {name} got: {x.dtype.name}")
        if x.ndim < 2:
            raise RuntimeError(f"cdist only supports at least 2D tensors, {name} got: {x.ndim}D")
    if x1.shape[-1] != x2.shape[-1]:
        raise RuntimeError(
            f"X1 and X2 must have the same number of columns. X1: {x1.shape[-1]} X2: {x2.shape[-1]}"
        )
    if p < 0:
        raise RuntimeError("cdist only supports non-negative p values")
    diff = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    if p == 0:
        return (diff != 0).sum(-1).to(diff.dtype)
    if p == 2:
        squared = (diff * diff).sum(-1)
        is_zero = squared == 0
        return where(is_zero, 0.0, where(is_zero, 1.0, squared).sqrt())
    return norm(diff, p, -1)


def diagonal(input: Tensor, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
    """The diagonal over (dim1, dim2), moved to the last dim; `offset` > 0 is above the main one.

    A view of `input` when the two dims are adjacent in a contiguous tensor (a strided slice of
    their merged dim); otherwise a gathered copy.
    """
    d1, d2 = _wrap_dim(dim1, input.ndim), _wrap_dim(dim2, input.ndim)
    if d1 == d2:
        raise RuntimeError(f"diagonal dimensions cannot be identical {dim1}, {dim2}")
    if d1 > d2:
        d1, d2, offset = d2, d1, -offset
    rows, cols = input.shape[d1], input.shape[d2]
    length = builtins.max(0, builtins.min(rows + builtins.min(offset, 0), cols - builtins.max(offset, 0)))
    start = builtins.max(-offset, 0) * cols + builtins.max(offset, 0)
    if d2 == d1 + 1 and input.is_contiguous():
        merged = input.reshape(tuple(input.shape[:d1]) + (rows * cols,) + tuple(input.shape[d2 + 1:]))
        key = (slice(None),) * d1 + (slice(start, start + length * (cols + 1), cols + 1),)
        return merged[key].movedim(d1, -1)
    key, index = _diagonal_key(input, length, offset, input.ndim - 2)
    return input.movedim((d1, d2), (-2, -1))._index(key, index)


def _diagonal_key(like: Tensor, length: int, offset: int, batch_dims: int) -> tuple[tuple, tuple]:
    """An index key (and its row and column index tensors) for the `offset` diagonal, `length` long,
    of the last two dims, after `batch_dims` whole dims."""
    rows = as_operand(np.arange(length) + builtins.max(-offset, 0), like, _dt.int64)
    cols = as_operand(np.arange(length) + builtins.max(offset, 0), like, _dt.int64)
    return (("slice", None, None, None),) * batch_dims + (("tensor", 0), ("tensor", 1)), (rows, cols)


def diag_embed(input: Tensor, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
    """Matrices (in dims dim1, dim2 of a result with one more dim) whose `offset` diagonal is the last
    dim of `input`, zeros elsewhere."""
    nd = input.ndim + 1
    d1, d2 = _wrap_dim(dim1, nd), _wrap_dim(dim2, nd)
    if d1 == d2:
        raise RuntimeError(f"diagonal dimensions cannot be identical {dim1}, {dim2}")
    length = input.shape[-1]
    n = length + builtins.abs(offset)
    key, index = _diagonal_key(input, length, offset, input.ndim - 1)
    out = input.new_zeros(tuple(input.shape[:-1]) + (n, n))._index_put(input, key, index, accumulate=False)
    return out.movedim((-2, -1), (d1, d2))


def trace(input: Tensor) -> Tensor:
    """The sum of a matrix's main diagonal (integers sum to int64)."""
    if input.ndim != 2:
        raise RuntimeError(
            f"trace: expected a matrix, but got tensor with dim {input.ndim} (shape {tuple(input.shape)})"
        )
    return diagonal(input).sum()


def cross(input: Tensor, other: Tensor, dim: int | None = None) -> Tensor:
    """The 3-D cross product along `dim` (by default the first dim of size 3, as `torch.cross`)."""
    input, other = broadcast_tensors(*_binary_operands(input, other))
    if dim is None:
        dim = next((i for i, s in enumerate(input.shape) if s == 3), None)
        if dim is None:
            raise RuntimeError(f"no dimension of size 3 in input (shape {tuple(input.shape)})")
    d = _wrap_dim(dim, input.ndim)
    if input.shape[d] != 3:
        raise RuntimeError(
            f"linalg.cross: inputs dimension {dim} must have length 3. Got {input.shape[d]} and {other.shape[d]}"
        )
    return roll(input, -1, d) * roll(other, -2, d) - roll(input, -2, d) * roll(other, -1, d)


def rot90(input: Tensor, k: int = 1, dims=(0, 1)) -> Tensor:
    """Rotate by 90 degrees `k` times in the plane of `dims`, from the first towards the second."""
    dims = tuple(dims)
    if len(dims) != 2:
        raise RuntimeError(f"expected total rotation dims == 2, but got dims = {len(dims)}")
    if input.ndim < 2:
        raise RuntimeError(f"expected total dims >= 2, but got total dims = {input.ndim}")
    d0, d1 = _wrap_dim(dims[0], input.ndim), _wrap_dim(dims[1], input.ndim)
    if d0 == d1:
        raise RuntimeError(f"expected rotation dims to be different, but got dim0 = {d0} and dim1 = {d1}")
    k %= 4
    if k == 1:
        return input.flip(d1).transpose(d0, d1)
    if k == 2:
        return input.flip((d0, d1))
    if k == 3:
        return input.flip(d0).transpose(d0, d1)
    return input.clone()


def _scaled_sum(input: Tensor, product: Tensor, beta, alpha) -> Tensor:
    """beta * input + alpha * product, for the add-a-product ops (beta=0 ignores input's NaNs)."""
    scaled = product if alpha == 1 else product * alpha
    if beta == 0:
        return scaled + input.new_zeros(()).expand(input.shape)
    return (input if beta == 1 else input * beta) + scaled


@autocasts("baddbmm")
def baddbmm(input: Tensor, batch1: Tensor, batch2: Tensor, *, beta=1, alpha=1) -> Tensor:
    """beta * input + alpha * (batch1 @ batch2), batched matrices."""
    return _scaled_sum(input, bmm(batch1, batch2), beta, alpha)


# Giles' single-precision approximation of erfinv ("Approximating the erfinv function", GPU Gems 4),
# coefficients highest degree first, for w = -log(1 - x^2) below 5 (in w - 2.5) and above (in sqrt(w) - 3)
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def _horner(coefficients, w: Tensor) -> Tensor:
    out = w.new_full((), coefficients[0])
    for c in coefficients[1:]:
        out = out * w + c
    return out


def erfinv(input: Tensor) -> Tensor:
    """The inverse error function on (-1, 1) (+-inf at +-1, NaN outside).

    Giles' approximation (a few float32 ulps), refined by two Newton steps in float64; half types
    compute in float32. Its gradient is sqrt(pi)/2 * exp(erfinv(x)^2), attached to the detached value.
    """
    dtype = input.dtype if input.dtype.is_floating_point else _dt.get_default_dtype()
    x = input.to(_dt.float64 if dtype is _dt.float64 else _dt.float32)
    xd = x.detach()
    inside = xd.abs() < 1
    xs = where(inside, xd, 0.0)  # +-1 and beyond are set below, without computing log(0) or log(<0)
    w = -((1 - xs) * (1 + xs)).log()
    central, tail = _horner(_ERFINV_CENTRAL, w - 2.5), _horner(_ERFINV_TAIL, where(w < 5, 5.0, w).sqrt() - 3)
    y = where(w < 5, central, tail) * xs
    if x.dtype is _dt.float64:
        for _ in range(2):
            y = y - (y.erf() - xs) / ((2 / math.sqrt(math.pi)) * (-y * y).exp())
    slope = where(inside, (math.sqrt(math.pi) / 2) * (y * y).exp(), 0.0)
    edge = where(xd > 0, float("inf"), float("-inf"))
    y = where(inside, y, where(xd.abs() == 1, edge, float("nan")))
    return (y + (x - xd) * slope).to(dtype)


def var_mean(input: Tensor, dim=None, unbiased=None, keepdim: bool = False, *, correction=None) -> tuple:
    """(variance, mean) over `dim`, with Bessel's `correction` (or `unbiased`) as in `var`."""
    if isinstance(dim, bool):  # var_mean(x, unbiased)
        dim, unbiased = None, dim
    correction = 1 if correction is None else correction
    return (var(input, dim, correction=correction, keepdim=keepdim, unbiased=unbiased),
            mean(input, dim, keepdim=keepdim))


def std_mean(input: Tensor, dim=None, unbiased=None, keepdim: bool = False, *, correction=None) -> tuple:
    """(standard deviation, mean) over `dim`, with `correction` (or `unbiased`) as in `std`."""
    v, m = var_mean(input, dim, unbiased, keepdim, correction=correction)
    return v.sqrt(), m


def _tri_indices(row: int, col: int, offset: int, dtype, device, upper: bool) -> Tensor:
    r, c = (np.triu_indices if upper else np.tril_indices)(row, offset, col)
    dtype = _dt.int64 if dtype is None else _dt.get_dtype(dtype)
    t = Tensor._make(np.stack([r, c]).astype(dtype.np).reshape(2, -1))
    return t if device is None else t.to(device)


def tril_indices(row: int, col: int, offset: int = 0, *, dtype=None, device=None, layout=None) -> Tensor:
    """The (2, N) row and column indices of the lower triangle (j - i <= offset) of a row x col matrix."""
    return _tri_indices(row, col, offset, dtype, device, upper=False)


def triu_indices(row: int, col: int, offset: int = 0, *, dtype=None, device=None, layout=None) -> Tensor:
    """The (2, N) row and column indices of the upper triangle (j - i >= offset) of a row x col matrix."""
    return _tri_indices(row, col, offset, dtype, device, upper=True)


def _index_along(index: Tensor, dim: int, shape: tuple, op: str) -> Tensor:
    """A 1-D `index` over `dim`, expanded to `shape` (one index per element), for scatter and gather."""
    _check_index(index, op)
    if index.ndim > 1:
        raise IndexError(f"{op}(): Index is supposed to be a vector, got shape {tuple(index.shape)}")
    if shape[dim] != index.numel():
        raise RuntimeError(
            f"{op}(): Number of indices ({index.numel()}) should be equal to source.size(dim) ({shape[dim]}), "
            f"source shape {tuple(shape)}"
        )
    view = (1,) * dim + (-1,) + (1,) * (len(shape) - dim - 1)
    return index.reshape(view).expand(shape)


def _index_source(input: Tensor, dim: int, index: Tensor, source: Tensor, op: str) -> tuple[int, Tensor]:
    d = _wrap_dim(dim, input.ndim)
    if source.dtype is not input.dtype:
        raise RuntimeError(
            f"{op}_(): self ({input.dtype.name}) and source ({source.dtype.name}) must have the same scalar type; "
            "convert source with .to(self.dtype)"
        )
    if source.ndim != input.ndim or builtins.any(
            s != t for i, (s, t) in enumerate(zip(source.shape, input.shape)) if i != d):
        raise RuntimeError(
            f"{op}(): source shape {tuple(source.shape)} must match self shape {tuple(input.shape)} except "
            f"in dimension {d}"
        )
    return d, _index_along(index, d, tuple(source.shape), op)


def index_add(input: Tensor, dim: int, index: Tensor, source: Tensor, *, alpha=1) -> Tensor:
    """A copy of input with alpha * source[.., i, ..] added at input[.., index[i], ..]; repeats add up."""
    d, idx = _index_source(input, dim, index, source, "index_add")
    return scatter_add(input, d, idx, source if alpha == 1 else source * alpha)


def index_copy(input: Tensor, dim: int, index: Tensor, source: Tensor) -> Tensor:
    """A copy of input with source[.., i, ..] written at input[.., index[i], ..]."""
    d, idx = _index_source(input, dim, index, source, "index_copy")
    return scatter(input, d, idx, source)


def index_fill(input: Tensor, dim: int, index: Tensor, value) -> Tensor:
    """A copy of input with `value` (a scalar or 0-d tensor) written in the slices `index` of `dim`."""
    if isinstance(value, Tensor) and value.ndim:
        raise RuntimeError(
            f"index_fill_ only supports a 0-dimensional value tensor, but got tensor with {value.ndim} dimension(s)"
        )
    d = _wrap_dim(dim, input.ndim)
    shape = tuple(index.numel() if i == d else s for i, s in enumerate(input.shape))
    return scatter(input, d, _index_along(index.reshape(-1), d, shape, "index_fill"), value)


_SCATTER_REDUCTIONS = ("sum", "prod", "mean", "amax", "amin")


def scatter_reduce(input: Tensor, dim: int, index: Tensor, src: Tensor, reduce: str, *,
                   include_self: bool = True) -> Tensor:
    """Reduce the `src` values scattered to each position of input along `dim` ("sum", "prod",
    "mean", "amax", "amin"), with input's own value among them when `include_self`.

    Sums scatter; the others reduce over a one-hot of index (index.numel() * input.shape[dim]
    elements), so ties share the gradient evenly, as PyTorch's do, and zeros in a product have
    exact gradients.
    """
    if reduce not in _SCATTER_REDUCTIONS:
        raise RuntimeError(f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce}")
    d = _wrap_dim(dim, input.ndim)
    _check_index(index, "scatter_reduce")
    _check_index_range(input, d, index, "scatter_reduce")
    if src.dtype is not input.dtype:
        raise RuntimeError(
            f"scatter(): Expected self.dtype to be equal to src.dtype (self {input.dtype.name}, src {src.dtype.name})"
        )
    # only the part of input and src that index covers takes part (index may be smaller in other dims)
    own = input[tuple(slice(0, s) if i != d else slice(None) for i, s in enumerate(index.shape))]
    src = src[tuple(slice(0, s) for s in index.shape)]
    reduced = (_scatter_reduce_sums if reduce in ("sum", "mean") else _scatter_reduce_one_hot)(
        own, d, index, src, reduce, include_self)
    if tuple(reduced.shape) == tuple(input.shape):
        return reduced
    pads = [p for i in reversed(range(input.ndim)) for p in (0, input.shape[i] - reduced.shape[i])]
    inside = pad(reduced.new_ones(reduced.shape, dtype=_dt.bool_), pads, value=False)
    return where(inside, pad(reduced, pads), input)


def _scatter_reduce_sums(input: Tensor, d: int, index: Tensor, src: Tensor, reduce: str,
                         include_self: bool) -> Tensor:
    """scatter_reduce's sum and mean (integer means round down, as PyTorch's do)."""
    total = scatter_add(input if include_self else scatter(input, d, index, 0), d, index, src)
    if reduce == "sum":
        return total
    count = scatter_add(input.new_full(input.shape, int(include_self)), d, index, input.new_ones(index.shape))
    count = where(count == 0, 1, count).to(input.dtype)
    return total / count if input.dtype.is_floating_point else div(total, count, rounding_mode="floor")


def _scatter_reduce_one_hot(input: Tensor, d: int, index: Tensor, src: Tensor, reduce: str,
                            include_self: bool) -> Tensor:
    """scatter_reduce's prod, amax and amin: each output position reduces the src values sent to it
    (the others replaced by the reduction's identity) over an axis the size of index's `d`."""
    hot = index.movedim(d, -1).unsqueeze(-1) == _arange_like(input, input.shape[d])  # (..., k, size)
    candidates = where(hot, src.movedim(d, -1).unsqueeze(-1), _reduction_identity(reduce, input))
    own = input.movedim(d, -1).unsqueeze(-2)  # (..., 1, size)
    if include_self:
        candidates = cat([candidates, own], -2)
    reduced = _product_tree(candidates, -2) if reduce == "prod" else _reduce(reduce, candidates, -2, False)
    return where(hot.any(-2), reduced, own.squeeze(-2)).movedim(-1, d)


def _product_tree(x: Tensor, dim: int) -> Tensor:
    """The product over `dim` as a tree of multiplications (halves times halves), so that, unlike
    prod's (which divides by the input), the gradient is exact through zeros."""
    d = _wrap_dim(dim, x.ndim)
    while x.shape[d] > 1:
        if x.shape[d] % 2:
            x = cat([x, x.new_ones(tuple(1 if i == d else s for i, s in enumerate(x.shape)))], d)
        half = x.shape[d] // 2
        x = narrow(x, d, 0, half) * narrow(x, d, half, half)
    return x.squeeze(d) if x.shape[d] == 1 else x.new_ones(tuple(s for i, s in enumerate(x.shape) if i != d))


def _reduction_identity(reduce: str, like: Tensor) -> Tensor:
    """The value that leaves a prod, amax or amin unchanged, in `like`'s dtype."""
    if reduce == "prod":
        value = 1
    elif like.dtype.is_floating_point:
        value = float("-inf") if reduce == "amax" else float("inf")
    else:
        info = _dt.iinfo(like.dtype)
        value = int(info.min if reduce == "amax" else info.max)
    return as_operand(value, like, like.dtype)


def masked_scatter(input: Tensor, mask: Tensor, source: Tensor) -> Tensor:
    """A copy of input with source's first elements (in order) written where `mask` is True.

    Traceable: the k-th True position reads source.flatten()[k], k from a running count of the mask.
    """
    if mask.dtype is not _dt.bool_:
        raise RuntimeError(f"masked_scatter_ only supports boolean masks, but got mask with dtype {mask.dtype.name}")
    if source.dtype != input.dtype:
        raise RuntimeError(
            f"masked_scatter: expected self and source to have same dtypes but got {input.dtype.name} and "
            f"{source.dtype.name}"
        )
    mask = mask.expand(input.shape)
    flat = source.reshape(-1)
    position = cumsum(mask.reshape(-1), 0) - 1
    if trace_state.tracer is None and mask.numel() and int(position[-1].item()) + 1 > flat.shape[0]:
        raise RuntimeError(
            f"masked_scatter: expected source to have at least {int(position[-1].item()) + 1} elements (the "
            f"number of True values in mask), but it has {flat.shape[0]} (shape {tuple(source.shape)})"
        )
    taken = index_select(flat, 0, position.clamp(0, builtins.max(flat.shape[0] - 1, 0)))
    return where(mask, taken.reshape(input.shape), input)


def unique(input: Tensor, sorted: bool = True, return_inverse: bool = False, return_counts: bool = False,
           dim: int | None = None):
    """The distinct values (or slices along `dim`) in ascending order, with the index of each
    element's value (`return_inverse`) and how often each occurs (`return_counts`).

    The output size depends on the data: eager only (inside jitorch.compile, a TraceError).
    """
    data = input._concrete("unique() (its output shape depends on the data)")
    axis = None if dim is None else _wrap_dim(dim, input.ndim)
    values, inverse, counts = np.unique(data, return_inverse=True, return_counts=True, axis=axis)
    inverse = inverse.reshape(data.shape if axis is None else (data.shape[axis],))
    out = (_on_device_of(input, np.ascontiguousarray(values)),)
    if return_inverse:
        out += (_on_device_of(input, inverse.astype(np.int64)),)
    if return_counts:
        out += (_on_device_of(input, counts.astype(np.int64)),)
    return out[0] if len(out) == 1 else out


def _fill_with(self: Tensor, draw) -> Tensor:
    """Fill self in place with `draw()` (random values as a tensor on its device), outside autograd."""
    with _no_grad_for_init(self):
        return self._assign(draw().to(self.device).to(self.dtype), False)


def _uniforms_for(self: Tensor, generator, dtype=None):
    """Uniform [0, 1) draws shaped like self from `generator` (the global one by default)."""
    from .random import uniform

    dtype = dtype or (self.dtype if self.dtype in (_dt.float32, _dt.float64) else _dt.float32)
    return uniform(tuple(self.shape), 0.0, 1.0, dtype, generator, self.device).to(self.device)


def bernoulli_(self: Tensor, p=0.5, *, generator=None) -> Tensor:
    """Fill with 1 with probability `p` (a float or a tensor broadcast to self), else 0, in place."""
    if not isinstance(p, Tensor) and not 0 <= p <= 1:
        raise RuntimeError(f"bernoulli_ expects p to be in [0, 1], but got p={p}")
    return _fill_with(self, lambda: _uniforms_for(self, generator) < p)


def exponential_(self: Tensor, lambd: float = 1.0, *, generator=None) -> Tensor:
    """Fill with draws from the exponential distribution of rate `lambd`, in place."""
    if not self.dtype.is_floating_point:
        raise RuntimeError(f"exponential_ not implemented for '{self.dtype.name}'; use a floating tensor")
    if lambd <= 0:
        raise RuntimeError(f"exponential_ expects lambda > 0.0, but found lambda={lambd}")
    return _fill_with(self, lambda: -(1 - _uniforms_for(self, generator)).log() / lambd)


def _random_upper(dtype: _dt.DType) -> int:
    """One past the largest value `random_()` draws: every integer the dtype holds exactly."""
    if dtype is _dt.bool_:
        return 2
    if dtype.is_floating_point:
        return 2 ** (int(_dt.finfo(dtype).nmant) + 1) + 1
    return int(_dt.iinfo(dtype).max) + 1


def random_(self: Tensor, from_: int = 0, to: int | None = None, *, generator=None) -> Tensor:
    """Fill with integers drawn uniformly from [from, to - 1], in place; `random_(to)` is [0, to - 1],
    `random_()` [0, the largest integer the dtype holds exactly]."""
    if to is None and from_ != 0:
        from_, to = 0, from_
    if to is None:
        to = _random_upper(self.dtype)
    if from_ >= to:
        raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={from_} >= to={to}")
    span = to - from_
    return _fill_with(self, lambda: (_uniforms_for(self, generator, _dt.float64) * span).floor() + from_)


_MORE_METHODS = [
    cumprod, repeat_interleave, bincount, kron, diagonal, diag_embed, trace, cross, rot90, baddbmm, erfinv,
    index_add, index_copy, index_fill, scatter_reduce, masked_scatter, unique, bernoulli_, exponential_, random_,
]
_MORE_INPLACE = ["cumprod", "baddbmm", "erfinv", "index_add", "index_copy", "index_fill", "scatter_reduce",
                 "masked_scatter"]


# ---------------------------------------------------------------------------------------------
# creation helpers used above (the public creation API is in creation.py)


def zeros(*shape, dtype=None) -> Tensor:
    from .creation import zeros as _zeros

    return _zeros(*shape, dtype=dtype)


def new_zeros(self: Tensor, *size, dtype=None, requires_grad: bool = False) -> Tensor:
    return new_full(self, _shape_arg(size), 0, dtype=dtype, requires_grad=requires_grad)


def new_ones(self: Tensor, *size, dtype=None, requires_grad: bool = False) -> Tensor:
    return new_full(self, _shape_arg(size), 1, dtype=dtype, requires_grad=requires_grad)


def new_full(self: Tensor, size, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    np_dtype = self._data.dtype if dtype is None else _dt.get_dtype(dtype).np
    fill_value = _dt.scalar_for(fill_value, _dt.from_numpy_dtype(np_dtype), checked=True)
    size = tuple(size)
    if is_symbolic(size):  # (in a dynamic-shape trace: made by the graph for every size)
        from .creation import _symbolic_fill

        out = _symbolic_fill(size, fill_value, _dt.from_numpy_dtype(np_dtype), self._device)
    else:
        from .creation import filled_on

        out = filled_on(self._device, size, fill_value, np_dtype)
    out.requires_grad = requires_grad
    return out


def new_tensor(self: Tensor, data, dtype=None, requires_grad: bool = False) -> Tensor:
    from .creation import tensor

    return tensor(data, dtype=dtype or self.dtype, device=self.device, requires_grad=requires_grad)


# ---------------------------------------------------------------------------------------------
# PyTorch's legacy tensor types and constructors, which old scripts still use: `Tensor.type()`,
# `torch.FloatTensor(...)`, `torch.Tensor(...)`, `isinstance(t, torch.LongTensor)`

_LEGACY_NAMES = {
    _dt.float32: "FloatTensor",
    _dt.float64: "DoubleTensor",
    _dt.float16: "HalfTensor",
    _dt.bfloat16: "BFloat16Tensor",
    _dt.int64: "LongTensor",
    _dt.int32: "IntTensor",
    _dt.int16: "ShortTensor",
    _dt.int8: "CharTensor",
    _dt.uint8: "ByteTensor",
    _dt.bool_: "BoolTensor",
}
_LEGACY_DTYPES = {name: dtype for dtype, name in _LEGACY_NAMES.items()}


class _LegacyTensorType(type):
    """The type of `jitorch.FloatTensor` & co, which scripts call and test against as they do PyTorch's:
    `LongTensor([1, 2])` makes an int64 tensor of the data, `FloatTensor(2, 3)` a float32 one of that
    shape; `isinstance(t, FloatTensor)` holds for a float32 tensor on the CPU. As in PyTorch, these are
    not subclasses of Tensor: a tensor's class is always Tensor."""

    dtype: _dt.DType
    is_cuda = False

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, Tensor) and obj._device.type == "cpu" and obj.dtype is cls.dtype

    def __call__(cls, *args, device=None) -> Tensor:
        return _legacy_new(cls.dtype, args, device)


def _legacy_type(dtype: _dt.DType) -> _LegacyTensorType:
    doc = f"PyTorch's legacy constructor of {dtype} CPU tensors: `{_LEGACY_NAMES[dtype]}(data)` or `(*shape)`."
    return _LegacyTensorType(_LEGACY_NAMES[dtype], (), {"dtype": dtype, "__module__": "jitorch", "__doc__": doc})


FloatTensor = _legacy_type(_dt.float32)
DoubleTensor = _legacy_type(_dt.float64)
HalfTensor = _legacy_type(_dt.float16)
BFloat16Tensor = _legacy_type(_dt.bfloat16)
LongTensor = _legacy_type(_dt.int64)
IntTensor = _legacy_type(_dt.int32)
ShortTensor = _legacy_type(_dt.int16)
CharTensor = _legacy_type(_dt.int8)
ByteTensor = _legacy_type(_dt.uint8)
BoolTensor = _legacy_type(_dt.bool_)


def _tensor_new(cls, *args, device=None) -> Tensor:
    """`Tensor(2, 3)` (a float tensor of that shape) or `Tensor([1., 2.])` (the data in the default
    float dtype): PyTorch's legacy constructor, installed as `Tensor.__new__`."""
    return _legacy_new(None, args, device)


def _legacy_new(dtype: _dt.DType | None, args: tuple, device) -> Tensor:
    """PyTorch's legacy constructors, `Tensor(...)` (dtype None: the default float dtype) and
    `FloatTensor(...)` & co: no arguments an empty tensor; ints (or a Size) a shape (zeros, where
    PyTorch leaves the memory uninitialized); a tensor a view of it (of the same dtype for a typed
    constructor); anything else data to copy and convert."""
    from .creation import tensor

    kind = "cpu" if device is None else Device(device).type
    if kind != "cpu":
        raise RuntimeError(
            f"legacy constructor expects device type: cpu but device type: {kind} was passed; make the "
            "tensor with jitorch.tensor(data, device=...) or jitorch.zeros(shape, device=...)"
        )
    target = _dt.get_default_dtype() if dtype is None else dtype
    if len(args) == 1 and isinstance(args[0], Tensor):
        return _legacy_alias(args[0], dtype)
    if len(args) == 1 and isinstance(args[0], Size):
        args = tuple(args[0])
    if builtins.all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in args):
        return zeros(*(args or (0,)), dtype=target)
    if len(args) == 1 and not isinstance(args[0], (bool, float, complex, np.generic)):
        return tensor(args[0], dtype=target)
    raise TypeError(
        f"new(): expected a shape (ints), a tensor or one sequence of data, got "
        f"({', '.join(type(a).__name__ for a in args)}); for a scalar use jitorch.tensor(value)"
    )


def _legacy_alias(t: Tensor, dtype: _dt.DType | None) -> Tensor:
    """`Tensor(t)`: a view of all of t (shared storage, autograd kept), as PyTorch's alias."""
    if dtype is not None and t.dtype is not dtype:
        raise TypeError(
            f"expected a {dtype} tensor for {_LEGACY_NAMES[dtype]}(tensor), got {t.dtype}; convert with "
            f".to({dtype}) instead"
        )
    return view(t, t.shape)


def _tensor_type(self: Tensor, dtype=None, non_blocking: bool = False) -> str | Tensor:
    """PyTorch's legacy type API. With no argument, the type string (`"torch.FloatTensor"`,
    `"torch.cuda.LongTensor"`); with a dtype (`jitorch.int64`), a legacy type (`jitorch.LongTensor`) or
    a type string (`"torch.cuda.FloatTensor"`, `"jitorch.IntTensor"`), this tensor converted to it:
    itself when it already is one. A legacy type or string names a device too (none: the CPU); a
    dtype keeps this tensor's device."""
    if dtype is None:
        prefix = "torch." if self._device.type == "cpu" else f"torch.{self._device.type}."
        return prefix + _LEGACY_NAMES[self.dtype]
    if isinstance(dtype, _dt.DType):
        return to(self, dtype, non_blocking=non_blocking)
    target, device = _parse_legacy_type(dtype)
    return to(self, device=device, dtype=target, non_blocking=non_blocking)


def _parse_legacy_type(spec) -> tuple[_dt.DType, str]:
    """The dtype and device type a legacy type (`jitorch.LongTensor`) or a type string names
    ("torch.FloatTensor", "torch.cuda.HalfTensor", "jitorch.IntTensor")."""
    if isinstance(spec, _LegacyTensorType):
        return spec.dtype, "cpu"
    if not isinstance(spec, str):
        raise TypeError(f"dtype must be a type, str, or dtype object, got {spec!r}")
    module, _, name = spec.rpartition(".")
    package, _, device = module.partition(".")
    if package in ("torch", "jitorch") and device in ("", "cuda") and name in _LEGACY_DTYPES:
        return _LEGACY_DTYPES[name], device or "cpu"
    raise ValueError(
        f"invalid type: {spec!r}; expected a dtype such as jitorch.float32, a legacy type such as "
        f"jitorch.FloatTensor, or a string 'torch.NAME' or 'torch.cuda.NAME' with NAME one of "
        f"{sorted(_LEGACY_DTYPES)}"
    )


# ---------------------------------------------------------------------------------------------
# Tensor methods

_INPLACE = ["add", "sub", "mul", "div", "pow", "clamp", "clip", "exp", "log", "sqrt", "neg", "abs",
            "tanh", "sigmoid", "relu", "floor", "ceil", "round", "trunc", "reciprocal", "masked_fill",
            "lerp", "sin", "cos", "rsqrt", "sign", "scatter", "scatter_add", "index_put", "remainder",
            "maximum", "minimum", "square", "log1p", "expm1", "erf", "tril", "triu", "logical_not",
            "addcmul", "addcdiv"]


def _make_inplace(fn):
    def method(self: Tensor, *args, **kwargs) -> Tensor:
        return self._inplace(lambda src, *a: fn(src, *a, **kwargs), *args)

    method.__name__ = fn.__name__ + "_"
    method.__doc__ = f"In-place version of `{fn.__name__}`."
    return method


def zero_(self: Tensor) -> Tensor:
    return fill_(self, 0)


def fill_(self: Tensor, value) -> Tensor:
    """Fill with a scalar (or 0-d tensor) value, in place."""
    src, graph = self._inplace_source(value)
    v = as_operand(value, self, self.dtype, checked=True) if not isinstance(value, Tensor) else value.to(self.dtype)
    return self._assign(src * 0 + v if graph else v.expand(self.shape), graph)


def copy_(self: Tensor, src: Tensor, non_blocking: bool = False) -> Tensor:
    """Copy `src` (broadcast, converted to this dtype, moved from its device) into this tensor."""
    src = as_operand(src, self)
    # from another device: a move (a CPU scalar joins a traced op as it is, as in any other op)
    if src._device is not self._device and self._device.type != "meta" and (trace_state.tracer is None or src.ndim):
        src = to(src, self._device)
    dst, graph = self._inplace_source(src)
    value = src.to(self.dtype).expand(self.shape)
    if graph:
        value = value + dst * 0 if dst.requires_grad else value.clone()
    return self._assign(value, graph)


def uniform_(self: Tensor, a: float = 0.0, b: float = 1.0, generator=None) -> Tensor:
    from .random import uniform

    with _no_grad_for_init(self):
        return self._assign(uniform(self.shape, a, b, self.dtype, generator, self.device).to(self.device), False)


def normal_(self: Tensor, mean: float = 0.0, std: float = 1.0, generator=None) -> Tensor:
    from .random import normal

    with _no_grad_for_init(self):
        return self._assign(normal(self.shape, mean, std, self.dtype, generator, self.device).to(self.device), False)


def _no_grad_for_init(t: Tensor):
    from .autograd import _grad_mode, no_grad

    if _grad_mode.enabled and t.requires_grad and t.grad_fn is None:
        raise RuntimeError(
            "a leaf tensor that requires grad is being filled in place; wrap it in `with jitorch.no_grad():`"
        )
    return no_grad()


def _reflect(fn):
    def method(self, other):
        return fn(other, self)

    return method


def _binary_method(fn):
    def method(self, other):
        return fn(self, other)

    return method


def _same_dtype_method(name: str, fn, floating_only: bool = False):
    """`Tensor.__<name>__`: two tensors of one dtype (a float one, with `floating_only`: true division
    promotes integers) go straight to the primitive, the most common call skipping the promotion
    machinery's frames (a few tenths of a microsecond per op, which small GPU ops feel); anything
    else takes `fn`."""
    prim = P[name]

    def method(self, other):
        dtype = self._data.dtype
        if isinstance(other, Tensor) and other._data.dtype is dtype and (not floating_only or dtype.kind == "f"):
            return dispatch(prim, (self, other), {})
        return fn(self, other)

    return method


def _swap_last_two(self: Tensor) -> Tensor:
    """`x.mT`, directly: matmul's backward takes it twice per product."""
    nd = self._data.ndim
    if nd < 2:
        raise RuntimeError(f"tensor.mT is only supported on matrices or batches of matrices. Got {nd}-D tensor.")
    dims = tuple(range(nd - 2)) + (nd - 1, nd - 2)
    return dispatch(P["permute"], (self,), {"dims": dims})


def install_methods() -> None:
    """Attach the op functions to Tensor as methods and operators (done once, at import)."""
    T = Tensor
    plain = [
        add, sub, mul, div, floor_divide, remainder, pow, maximum, minimum, eq, ne, lt, le, gt, ge,
        logical_and, logical_or, logical_xor, logical_not, bitwise_and, bitwise_or, bitwise_xor, bitwise_not,
        neg, exp, log, log1p, expm1, sqrt, rsqrt, sin, cos, addcmul, addcdiv,
        tanh, sigmoid, erf, reciprocal, abs, sign, floor, ceil, trunc, round, isnan, isinf, isfinite, square,
        exp2, log2, log10, relu, clamp, clip, lerp, to, type_as, sum, prod, mean, amax, amin, argmax, argmin,
        max, min, var, std, logsumexp, any, all, cumsum, norm, softmax, log_softmax, reshape, view, view_as,
        reshape_as, permute, transpose, swapaxes, t, movedim, squeeze, unsqueeze, expand, expand_as,
        broadcast_to, flatten, unflatten, contiguous, clone, flip, narrow, select, repeat, split, chunk,
        unbind,
        gather, scatter, scatter_add, index_select, take_along_dim, masked_fill, tril, triu, argsort, sort,
        topk, matmul, mm, bmm, dot, outer, nonzero, masked_select, index_put, new_zeros, new_ones, new_full,
        new_tensor, zero_, fill_, copy_, uniform_, normal_, _index, _index_put, _relu_backward,
        isclose, allclose, equal, ravel, roll, tile, addmm, logaddexp, nan_to_num, count_nonzero, argwhere, diag,
    ]
    for fn in plain + _MORE_METHODS:
        setattr(T, fn.__name__, fn)
    T.swapaxes = T.swapdims = transpose  # (aliases: `plain` names each method by its function's name)
    T.where = _tensor_where
    T.__new__ = staticmethod(_tensor_new)
    T.type = _tensor_type
    T.cuda = _tensor_cuda
    T.cpu = _tensor_cpu
    T.__getitem__ = getitem
    T.__setitem__ = setitem
    for name in _INPLACE + _MORE_INPLACE:
        setattr(T, name + "_", _make_inplace(globals()[name]))
    conversions = {"float": _dt.float32, "double": _dt.float64, "half": _dt.float16,
                   "bfloat16": _dt.bfloat16, "long": _dt.int64, "int": _dt.int32, "short": _dt.int16,
                   "char": _dt.int8, "byte": _dt.uint8, "bool": _dt.bool_}
    for name, dtype in conversions.items():
        setattr(T, name, _converter(dtype))
    T.T = property(lambda self: self.permute(tuple(reversed(range(self.ndim)))))
    T.mT = property(_swap_last_two)
    ops = {"add": add, "sub": sub, "mul": mul, "truediv": div, "floordiv": floor_divide, "mod": remainder,
           "pow": pow, "matmul": matmul, "and": bitwise_and, "or": bitwise_or, "xor": bitwise_xor}
    for name, fn in ops.items():
        setattr(T, f"__{name}__", _binary_method(fn))
        setattr(T, f"__r{name}__", _reflect(fn))
    for name in ("add", "sub", "mul"):
        setattr(T, f"__{name}__", _same_dtype_method(name, ops[name]))
    T.__truediv__ = _same_dtype_method("div", div, floating_only=True)
    for name in ("add", "sub", "mul", "truediv", "pow", "and", "or"):
        fn = {"truediv": div, "and": bitwise_and, "or": bitwise_or}.get(name) or globals()[name]
        setattr(T, f"__i{name}__", _make_inplace(fn))
    T.__eq__ = _binary_method(eq)
    T.__ne__ = _binary_method(ne)
    T.__lt__ = _binary_method(lt)
    T.__le__ = _binary_method(le)
    T.__gt__ = _binary_method(gt)
    T.__ge__ = _binary_method(ge)
    T.__neg__ = neg
    T.__pos__ = lambda self: self
    T.__abs__ = abs
    T.__invert__ = bitwise_not
