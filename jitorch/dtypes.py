"""Data types and PyTorch's type-promotion rules.

A `DType` is a small immutable object (`jitorch.float32`, ...) that knows its numpy dtype. Promotion
follows PyTorch: tensors with dimensions decide first, zero-dim tensors only when they are of a higher
category (bool < integer < floating), Python scalars last and only by category.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np


class DType:
    """A tensor element type. Compare with `is` or `==`; print as `jitorch.float32`."""

    __slots__ = ("name", "np", "itemsize", "is_floating_point", "is_signed", "category")

    def __init__(self, name: str, np_dtype: np.dtype, category: int) -> None:
        self.name = name
        self.np = np.dtype(np_dtype)
        self.itemsize = self.np.itemsize
        self.category = category  # 0 bool, 1 integer, 2 floating
        self.is_floating_point = category == 2
        self.is_signed = category == 2 or self.np.kind == "i"  # (uint8 and bool are not)

    def __repr__(self) -> str:
        return f"jitorch.{self.name}"

    def __reduce__(self):
        return (get_dtype, (self.name,))


bool_ = DType("bool", np.bool_, 0)
uint8 = DType("uint8", np.uint8, 1)
int8 = DType("int8", np.int8, 1)
int16 = DType("int16", np.int16, 1)
int32 = DType("int32", np.int32, 1)
int64 = DType("int64", np.int64, 1)
float16 = DType("float16", np.float16, 2)
bfloat16 = DType("bfloat16", ml_dtypes.bfloat16, 2)
float32 = DType("float32", np.float32, 2)
float64 = DType("float64", np.float64, 2)

ALL_DTYPES = (bool_, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64)
FLOAT_DTYPES = (float16, bfloat16, float32, float64)

_BY_NAME = {d.name: d for d in ALL_DTYPES}
_BY_NAME.update({"float": float32, "double": float64, "half": float16, "long": int64, "int": int32, "short": int16})
_BY_NP = {d.np: d for d in ALL_DTYPES}

_default_float = float32


def get_default_dtype() -> DType:
    """The dtype of floating tensors made from Python floats (float32 unless changed)."""
    return _default_float


def set_default_dtype(dtype: DType) -> None:
    """Set the default floating dtype, as `torch.set_default_dtype` does."""
    global _default_float
    dtype = get_dtype(dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"set_default_dtype only supports floating point dtypes, got {dtype}")
    _default_float = dtype


def get_dtype(spec) -> DType:
    """Turn a DType, a name ("float32", "bfloat16") or a numpy dtype into a DType."""
    if isinstance(spec, DType):
        return spec
    if isinstance(spec, str):
        name = spec.removeprefix("jitorch.").removeprefix("torch.")
        if name in _BY_NAME:
            return _BY_NAME[name]
        raise TypeError(f"unknown dtype {spec!r}; expected one of {sorted(_BY_NAME)}")
    if spec is bool:
        return bool_
    if spec is int:
        return int64
    if spec is float:
        return _default_float
    try:
        npd = np.dtype(spec)
    except TypeError:
        npd = None
    if npd is not None and npd in _BY_NP:
        return _BY_NP[npd]
    raise TypeError(f"unsupported dtype {spec!r}; jitorch supports {[d.name for d in ALL_DTYPES]}")


def from_numpy_dtype(npd: np.dtype) -> DType:
    """The DType of a numpy dtype, with a clear error for unsupported ones (uint16, complex, ...)."""
    d = _BY_NP.get(npd)
    if d is None:
        raise TypeError(
            f"numpy dtype {npd} is not supported by jitorch; convert with .astype() to one of "
            f"{[d.name for d in ALL_DTYPES]}"
        )
    return d


def _promote_integers(a: DType, b: DType) -> DType:
    """The wider type; beside a signed type, uint8 (the one unsigned type) needs a signed type that
    also holds 128..255: int16 at least, so uint8 + int8 is int16, as in PyTorch."""
    if a.is_signed == b.is_signed:
        return max(a, b, key=lambda d: d.itemsize)
    signed = a if a.is_signed else b
    return signed if signed.itemsize > 1 else int16


def _build_promotion_table() -> dict[tuple[DType, DType], DType]:
    # Floating types promote by this lattice; fp16 and bf16 meet at float32, as in PyTorch.
    float_rank = {float16: 1, bfloat16: 1, float32: 2, float64: 3}
    table = {}
    for a in ALL_DTYPES:
        for b in ALL_DTYPES:
            if a is b:
                r = a
            elif a.category != b.category:
                r = a if a.category > b.category else b
            elif a.category == 1:
                r = _promote_integers(a, b)
            elif {a, b} == {float16, bfloat16}:
                r = float32
            else:
                r = a if float_rank[a] >= float_rank[b] else b
            table[a, b] = r
    return table


_PROMOTE = _build_promotion_table()


def promote_types(a: DType, b: DType) -> DType:
    """The smallest dtype both `a` and `b` convert to safely (`torch.promote_types`)."""
    return _PROMOTE[a, b]


def scalar_dtype(value) -> DType:
    """The dtype PyTorch gives a Python scalar operand on its own."""
    if isinstance(value, bool):
        return bool_
    if isinstance(value, int):
        return int64
    return _default_float


def _combine_categories(higher: DType | None, lower: DType | None) -> DType | None:
    # PyTorch's rule: a lower-priority operand only matters when its category is higher.
    if higher is None:
        return lower
    if lower is None:
        return higher
    if higher.is_floating_point:
        return higher
    if higher is bool_ or lower.is_floating_point:
        return _PROMOTE[higher, lower]
    return higher


def result_type(*operands) -> DType:
    """Promote tensors and Python scalars by PyTorch's rules (`torch.result_type` for many)."""
    dim_result = zero_result = scalar_result = None
    for op in operands:
        dtype = getattr(op, "dtype", None)
        if isinstance(dtype, DType):
            if op.ndim == 0:
                zero_result = dtype if zero_result is None else _PROMOTE[zero_result, dtype]
            else:
                dim_result = dtype if dim_result is None else _PROMOTE[dim_result, dtype]
        else:
            d = scalar_dtype(op)
            scalar_result = d if scalar_result is None else _PROMOTE[scalar_result, d]
    out = _combine_categories(dim_result, _combine_categories(zero_result, scalar_result))
    if out is None:
        raise TypeError("result_type needs at least one operand")
    return out


def finfo(dtype: DType):
    """Machine limits of a floating dtype (`eps`, `max`, `min`, `tiny`), like `torch.finfo`."""
    dtype = get_dtype(dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"finfo needs a floating dtype, got {dtype}")
    return ml_dtypes.finfo(dtype.np)


def iinfo(dtype: DType):
    """Machine limits of an integer dtype (`bits`, `min`, `max`), like `torch.iinfo`:
    `jitorch.iinfo(jitorch.uint8).max` is 255."""
    dtype = get_dtype(dtype)
    if dtype.category != 1:
        raise TypeError(f"iinfo needs an integer dtype, got {dtype}; use jitorch.finfo for floating dtypes")
    return np.iinfo(dtype.np)


def scalar_for(value, dtype: DType, *, checked: bool = False):
    """A Python scalar converted for a tensor of `dtype`: a Python int for an integer dtype wrapped
    modulo 2**bits as an operand (`wrap_integer`) or, with `checked`, as a fill value
    (`checked_integer`); anything else unchanged. An int beyond int64 is left to numpy's
    OverflowError, as PyTorch refuses it."""
    if dtype.category != 1 or not isinstance(value, int) or isinstance(value, bool):
        return value
    if checked:
        return checked_integer(value, dtype)
    return wrap_integer(value, dtype) if -(1 << 63) <= value < 1 << 63 else value


def wrap_integer(value: int, dtype: DType) -> int:
    """A Python int as `dtype` holds it, modulo 2**bits, as PyTorch converts a scalar operand:
    `uint8_tensor + 300` adds 44, `uint8_tensor > -1` compares with 255."""
    bits = 8 * dtype.itemsize
    wrapped = int(value) % (1 << bits)
    return wrapped - (1 << bits) if dtype.is_signed and wrapped >= 1 << (bits - 1) else wrapped


def checked_integer(value: int, dtype: DType) -> int:
    """A Python int stored into `dtype` by a fill (`full`, `fill_`, `masked_fill`), or a
    RuntimeError when it does not fit, as PyTorch checks: an unsigned type also takes negative
    values down to -max, wrapped (`full((2,), -1, dtype=uint8)` is 255s)."""
    info = np.iinfo(dtype.np)
    low = -int(info.max) if info.min == 0 else int(info.min)
    if not low <= value <= int(info.max):
        raise RuntimeError(
            f"value {value} cannot be converted to type {dtype.name} without overflow: {dtype.name} holds "
            f"{int(info.min)}..{int(info.max)}; use a wider dtype, or wrap the value yourself")
    return wrap_integer(value, dtype)
