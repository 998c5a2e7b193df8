"""PyTorch's small integer dtypes, `jitorch.uint8`, `int8` and `int16`, against PyTorch: attributes and
limits, type promotion for every pair of dtypes, arithmetic that wraps, comparisons and bitwise ops,
casts both ways, reductions, creation, numpy interop, save/load, printing, byte masks, and the same
ops compiled (LLVM kernels on the CPU) equal to eager and to PyTorch.

What PyTorch leaves undefined is not tested against it: a float out of an integer type's range
converted to it (`torch.tensor([-1.0]).to(torch.uint8)`) is C's undefined conversion, whose answer
depends on the CPU. Only in-range values are compared with PyTorch; out-of-range ones are checked to
give the same answer compiled as eager, on x86, where both are defined by its conversion instruction.
"""

from __future__ import annotations

import io
import json
import platform
import struct

import ml_dtypes
import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch.codegen import triton as triton_codegen
from jitorch.ir.fusion import describe
from jitorch.utils.data import default_collate

SMALL = ("uint8", "int8", "int16")
DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")
FLOATS = ("float16", "bfloat16", "float32", "float64")


def jt_dtype(name: str) -> jt.dtype:
    return getattr(jt, name)


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def both(values, dtype: str) -> tuple[jt.Tensor, torch.Tensor]:
    """The same tensor in both libraries: `values` (ints or floats) converted to `dtype` from int64 or
    float64, so an int out of a narrow type's range wraps alike in both."""
    base = np.asarray(values)
    base = base.astype(np.float64 if base.dtype.kind == "f" else np.int64)
    return jt.tensor(base).to(jt_dtype(dtype)), torch.from_numpy(base.copy()).to(torch_dtype(dtype))


def as_numpy(t) -> np.ndarray:
    t = t.detach().cpu()
    if isinstance(t, torch.Tensor):
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    a = t.numpy()
    return a.astype(np.float32) if a.dtype == ml_dtypes.bfloat16 else a


def assert_same(ours, theirs, what: str = "") -> None:
    """Equal dtype names, shapes and values (exactly: integers, and floats that both compute exactly)."""
    if isinstance(ours, (tuple, list)):
        for k, (o, t) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(o, t, f"{what}[{k}]")
        return
    assert str(ours.dtype).split(".")[-1] == str(theirs.dtype).split(".")[-1], f"{what}: {ours.dtype} vs {theirs.dtype}"
    assert tuple(ours.shape) == tuple(theirs.shape), f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    np.testing.assert_array_equal(as_numpy(ours), as_numpy(theirs), err_msg=what)


def fused_nodes(compiled) -> list:
    """The IR nodes that the compiled function's fused kernels compute (one program in its cache)."""
    programs = [p for entries in compiled.cache.values() for p in entries]
    assert len(programs) == 1
    return [n for k in programs[0].plan.kernels for n in k.kernel.nodes]


# ---------------------------------------------------------------------------------------------
# the dtypes themselves


@pytest.mark.parametrize("name", DTYPES)
def test_dtype_attributes_match_torch(name):
    ours, theirs = jt_dtype(name), torch_dtype(name)
    assert repr(ours) == f"jitorch.{name}"
    assert (ours.itemsize, ours.is_signed, ours.is_floating_point) == (
        theirs.itemsize, theirs.is_signed, theirs.is_floating_point)
    if name in SMALL + ("int32", "int64"):
        info, expected = jt.iinfo(ours), torch.iinfo(theirs)
        assert (info.bits, int(info.min), int(info.max)) == (expected.bits, expected.min, expected.max)
    else:
        with pytest.raises(TypeError, match=name):
            jt.iinfo(ours)


def test_names_conversions_and_legacy_types_match_torch():
    assert jt.short is jt.int16 and jt.tensor([1], dtype="int16").dtype is jt.int16
    x, tx = both([1, -2, 300], "int64")
    for method in ("byte", "char", "short"):
        assert_same(getattr(x, method)(), getattr(tx, method)(), method)
    for legacy, dtype in ((jt.ByteTensor, jt.uint8), (jt.CharTensor, jt.int8), (jt.ShortTensor, jt.int16)):
        made = legacy([1, 2, 3])
        assert made.dtype is dtype and isinstance(made, legacy) and not isinstance(made.long(), legacy)
        assert legacy(2, 3).shape == (2, 3) and legacy(2, 3).dtype is dtype
        assert made.type() == f"torch.{legacy.__name__}" == torch.tensor([1], dtype=torch_dtype(dtype.name)).type()
        assert x.type(legacy).dtype is dtype and x.type(f"torch.{legacy.__name__}").dtype is dtype


# ---------------------------------------------------------------------------------------------
# type promotion


@pytest.mark.parametrize("a", DTYPES)
def test_promotion_matches_torch_for_every_pair(a):
    for b in DTYPES:
        ja, ta = both([1, 2], a)
        jb, tb = both([1, 2], b)
        assert jt.promote_types(jt_dtype(a), jt_dtype(b)).name == str(torch.promote_types(ta.dtype, tb.dtype))[6:]
        for ours, theirs in (((ja, jb), (ta, tb)), ((ja, jb[0]), (ta, tb[0])), ((ja[0], jb), (ta[0], tb)),
                             ((ja[0], jb[0]), (ta[0], tb[0]))):
            got, want = jt.result_type(*ours), torch.result_type(*theirs)
            assert got.name == str(want)[6:], f"result_type of {a}{list(ours[0].shape)}, {b}{list(ours[1].shape)}"
    for scalar in (True, 3, -3, 300, 2.5):
        ja, ta = both([1, 2], a)
        assert jt.result_type(ja, scalar).name == str(torch.result_type(ta, scalar))[6:], (a, scalar)
        assert jt.result_type(ja[0], scalar).name == str(torch.result_type(ta[0], scalar))[6:], (a, scalar)


_MIXED_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b,
    "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b,
    "lt": lambda a, b: a < b,
    "ne": lambda a, b: a != b,
    "maximum": lambda a, b: jt.maximum(a, b) if isinstance(a, jt.Tensor) else torch.maximum(a, b),
    "where": lambda a, b: (jt if isinstance(a, jt.Tensor) else torch).where(b > 2, a, b),
}


@pytest.mark.parametrize("a", SMALL)
@pytest.mark.parametrize("b", DTYPES)
def test_mixed_dtype_ops_promote_and_compute_as_torch(a, b):
    """Every binary op between a small integer tensor and a tensor of every dtype, both ways round:
    the result's dtype and values (uint8 + int8 is int16; int16 + float16 is float16, ...)."""
    ja, ta = both([0, 1, 7, 100, 200, -3, -128, 127], a)
    jb, tb = both([1, 3, 2, 5, 1, 4, 2, 3] if b != "bool" else [1, 0, 1, 1, 0, 1, 0, 1], b)
    for name, op in _MIXED_OPS.items():
        for (x, tx), (y, ty) in (((ja, ta), (jb, tb)), ((jb, tb), (ja, ta))):
            if name in ("floordiv", "mod") and (ty == 0).any():
                continue  # an integer division by zero: an error in PyTorch
            if name == "where" and ty.dtype == torch.bool:
                continue  # `b > 2` on bools
            if name == "sub" and torch.bool in (tx.dtype, ty.dtype):
                continue  # PyTorch refuses a bool tensor in a subtraction (jitorch computes it, in any dtype)
            assert_same(op(x, y), op(tx, ty), f"{x.dtype} {name} {y.dtype}")


# ---------------------------------------------------------------------------------------------
# arithmetic, comparisons and bit operations


_EXTREMES = [0, 1, 2, 3, 100, 127, 128, 200, 255, -1, -2, -127, -128, 32767, -32768]


@pytest.mark.parametrize("dtype", SMALL)
def test_arithmetic_wraps_as_torch(dtype):
    x, tx = both(_EXTREMES, dtype)
    for name, op in {
        "x + 1": lambda x: x + 1, "x - 1": lambda x: x - 1, "x * 3": lambda x: x * 3, "-x": lambda x: -x,
        "x + x": lambda x: x + x, "x * x": lambda x: x * x, "abs": lambda x: x.abs(), "x ** 2": lambda x: x**2,
        "x ** 3": lambda x: x.pow(3), "x + 300": lambda x: x + 300, "x - 1000": lambda x: x - 1000,
        "x * -1": lambda x: x * -1, "x + 2**40": lambda x: x + 2**40, "x // 3": lambda x: x // 3,
        "x % 3": lambda x: x % 3, "x // -2": lambda x: x // -2, "x % -7": lambda x: x % -7, "x / 2": lambda x: x / 2,
        "2 - x": lambda x: 2 - x, "x + True": lambda x: x + True, "x * 1.5": lambda x: x * 1.5,
        "sign": lambda x: x.sign(), "clamp": lambda x: x.clamp(2, 100), "clamp(min=-1)": lambda x: x.clamp(min=-1),
        "square": lambda x: x.square(), "float": lambda x: x.float() * 0.5,
        "floor": lambda x: x.floor(), "div floor": lambda x: x.div(7, rounding_mode="floor"),
        "div trunc": lambda x: x.div(-7, rounding_mode="trunc"), "x ** 0": lambda x: x**0,
    }.items():
        assert_same(op(x), op(tx), f"{dtype}: {name}")


def test_integer_divisions_are_exact_and_bools_keep_their_dtype_or_are_refused():
    """numpy divides and raises bools in int8, which is now a jitorch dtype too: bool ops must not
    come back as int8. And a division rounded toward zero is exact for any int64, not through floats."""
    b, tb = both([1, 0, 1], "bool")
    assert_same(b ** True, tb ** True)
    for op in (lambda x: x // x, lambda x: x % x, lambda x: x.div(x, rounding_mode="trunc")):
        with pytest.raises(NotImplementedError):
            op(tb)
        with pytest.raises(NotImplementedError, match="not implemented for bool tensors"):
            op(b)
    big, tbig = both([2**40 + 1, -(2**40) - 1, 7, -7], "int64")
    for divisor in (3, -3):
        assert_same(big.div(divisor, rounding_mode="trunc"), tbig.div(divisor, rounding_mode="trunc"))
    i8, ti8 = both([-128, 7, -7, 0], "int8")
    d8, td8 = both([-1, -2, 2, 3], "int8")
    assert_same(i8.div(d8, rounding_mode="trunc"), ti8.div(td8, rounding_mode="trunc"))  # -128 / -1 wraps


@pytest.mark.parametrize("dtype", SMALL)
def test_in_place_ops_keep_the_dtype_and_refuse_floats_as_torch(dtype):
    x, tx = both(_EXTREMES, dtype)
    x.add_(300)
    tx.add_(300)
    x.mul_(x)
    tx.mul_(tx)
    assert_same(x, tx)
    for ours in (lambda: x.add_(1.5), lambda: x.mul_(jt.tensor(2.0))):
        with pytest.raises(RuntimeError, match=f"float32 can't be cast to the desired output type {dtype}"):
            ours()
    with pytest.raises(RuntimeError, match="negative integer powers"):
        x ** -1  # (uint8: the -1 must not wrap to 255 first)
    with pytest.raises(RuntimeError, match="negative integer powers"):
        tx ** -1


@pytest.mark.parametrize("dtype", SMALL)
def test_comparisons_match_torch_with_wrapped_scalars(dtype):
    x, tx = both(_EXTREMES, dtype)
    y, ty = both(list(reversed(_EXTREMES)), dtype)
    for scalar in (-1, 0, 1, 127, 128, 200, 255, 256, 257, -129, 40000, 1.5, -0.5, True):
        for name in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
            assert_same(getattr(x, name)(scalar), getattr(tx, name)(scalar), f"{dtype} {name} {scalar!r}")
    for op in (jt.eq, jt.ne, jt.lt, jt.le, jt.gt, jt.ge, jt.maximum, jt.minimum):
        assert_same(op(x, y), getattr(torch, op.__name__)(tx, ty), f"{op.__name__}({dtype}, {dtype})")


def test_uint8_compares_unsigned_and_int8_signed():
    u, tu = both([200, 100, 5], "uint8")
    i, ti = both([-56, 100, -1], "int8")  # -56 and 200 are the same byte
    assert (u > 150).tolist() == [True, False, False]
    assert (i > 0).tolist() == [False, True, False]
    assert_same(u < i, tu < ti)  # in int16
    assert_same(u.max(), tu.max())
    assert_same(u.argmax(), tu.argmax())
    assert_same(u.sort(descending=True), tu.sort(descending=True))
    assert_same(u.topk(2), tu.topk(2))


@pytest.mark.parametrize("dtype", SMALL)
def test_bitwise_ops_match_torch(dtype):
    x, tx = both(_EXTREMES, dtype)
    y, ty = both(list(range(-7, 8)), dtype)
    for name, op in {
        "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b, "~": lambda a, b: ~a,
        "& 0x0F": lambda a, b: a & 0x0F, "| -1": lambda a, b: a | -1, "255 ^": lambda a, b: 255 ^ a,
        "& True": lambda a, b: a & True, "bitwise_not": lambda a, b: a.bitwise_not(),
        "&= (in place)": lambda a, b: a.clone().__iand__(b),
    }.items():
        assert_same(op(x, y), op(tx, ty), f"{dtype} {name}")
    with pytest.raises(RuntimeError, match="bitwise_and.*float"):
        x & 1.5


def test_bitwise_ops_between_small_dtypes_promote_as_torch():
    u, tu = both([0xF0, 0x0F, 0xFF], "uint8")
    i, ti = both([-1, 1, -128], "int8")
    s, ts = both([-300, 7, 1024], "int16")
    assert_same(u & i, tu & ti)  # int16
    assert_same(u | s, tu | ts)
    assert_same(i ^ s, ti ^ ts)
    assert_same(u & (u > 0), tu & (tu > 0))  # with bool: uint8


# ---------------------------------------------------------------------------------------------
# casts


_IN_RANGE_FLOATS = {
    "uint8": [0.0, 0.25, 0.5, 1.75, 100.75, 200.5, 254.875, 255.0, -0.75],  # (-0.75 truncates to 0: in range)
    "int8": [-128.0, -127.75, -100.5, -1.5, -0.5, 0.0, 0.5, 1.75, 100.75, 127.0],
    "int16": [-32768.0, -1000.5, -1.5, 0.0, 0.5, 255.75, 256.0, 1000.5, 32767.0],
}


@pytest.mark.parametrize("dtype", SMALL)
@pytest.mark.parametrize("other", DTYPES)
def test_casts_both_ways_match_torch_eager_and_compiled(dtype, other):
    """small -> other for every value of the small type's range; other -> small for values that
    fit (integers wrap, which PyTorch defines; floats truncate toward zero)."""
    x, tx = both(_EXTREMES, dtype)
    source = _IN_RANGE_FLOATS[dtype] if other in FLOATS else _EXTREMES
    y, ty = both(source, other)
    if other in ("float16", "bfloat16"):  # values the half type holds exactly (bfloat16: 8 bits)
        y, ty = both([v for v in source if float(torch.tensor(v).to(ty.dtype)) == v], other)
    to_other = jt.compile(lambda x: x.to(jt_dtype(other)))
    to_small = jt.compile(lambda y: y.to(jt_dtype(dtype)))
    assert_same(x.to(jt_dtype(other)), tx.to(torch_dtype(other)), f"{dtype} -> {other}")
    assert_same(to_other(x), tx.to(torch_dtype(other)), f"{dtype} -> {other} compiled")
    assert_same(y.to(jt_dtype(dtype)), ty.to(torch_dtype(dtype)), f"{other} -> {dtype}")
    assert_same(to_small(y), ty.to(torch_dtype(dtype)), f"{other} -> {dtype} compiled")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="out-of-range float conversions are defined by x86's conversion instruction only")
@pytest.mark.parametrize("dtype", SMALL)
def test_out_of_range_float_casts_are_the_same_compiled_as_eager(dtype):
    """Undefined in PyTorch, so not compared with it; jitorch's fused kernel converts as its eager
    kernel (numpy) does on x86: through int32, wrapping (-1.0 is uint8's 255)."""
    x = jt.tensor([-1.0, -2.5, 300.0, -300.0, 255.9, -129.0, 128.0, 40000.0, -40000.0, 1e6, -1e9, 2e9] * 3)

    def convert(x):
        return (x + 0.25).to(jt_dtype(dtype)), (x + 0.25).to(jt_dtype(dtype)) + 1

    compiled = jt.compile(convert)
    assert_same(compiled(x), convert(x))
    assert "cast" in {n.op for n in fused_nodes(compiled)}  # converted in the fused kernel, not eagerly
    if dtype == "uint8":
        assert convert(x)[0][:4].tolist() == [0, 254, 44, 213]  # -0.75 truncates to 0; -2.25 to -2, 254


# ---------------------------------------------------------------------------------------------
# reductions


@pytest.mark.parametrize("dtype", SMALL)
def test_reductions_match_torch(dtype):
    x, tx = both(np.array(_EXTREMES[:12]).reshape(3, 4), dtype)
    for name, op in {
        "sum": lambda x: x.sum(), "sum(1)": lambda x: x.sum(1), "sum(dtype)": lambda x: x.sum(dtype=x.dtype),
        "sum(0, keepdim, dtype=int16)": lambda x: x.sum(0, keepdim=True, dtype=torch.int16 if isinstance(
            x, torch.Tensor) else jt.int16),
        "prod": lambda x: x.prod(1), "prod(dtype)": lambda x: x.prod(1, dtype=x.dtype),
        "cumsum": lambda x: x.cumsum(1), "cumsum(dtype)": lambda x: x.cumsum(0, dtype=x.dtype),
        "cumprod": lambda x: x.cumprod(1), "amax": lambda x: x.amax(1), "amin": lambda x: x.amin(0),
        "max": lambda x: x.max(), "min(dim)": lambda x: x.min(1), "argmax": lambda x: x.argmax(),
        "argmin(0)": lambda x: x.argmin(0), "any": lambda x: x.any(1), "all": lambda x: x.all(),
        "count_nonzero": lambda x: x.count_nonzero(), "float().mean()": lambda x: x.float().mean(),
    }.items():
        assert_same(op(x), op(tx), f"{dtype}: {name}")
    with pytest.raises(RuntimeError, match=f"mean.*{dtype}"):
        x.mean()


# ---------------------------------------------------------------------------------------------
# creation, autograd, numpy, save/load, printing, indexing


@pytest.mark.parametrize("dtype", SMALL)
def test_creation_with_small_dtypes_matches_torch(dtype):
    d, td = jt_dtype(dtype), torch_dtype(dtype)
    for name, make in {
        "tensor": lambda lib, d: lib.tensor([[1, 2], [3, 4]], dtype=d),
        "zeros": lambda lib, d: lib.zeros(2, 3, dtype=d),
        "ones": lambda lib, d: lib.ones((3,), dtype=d),
        "full": lambda lib, d: lib.full((2,), 7, dtype=d),
        "full -1": lambda lib, d: lib.full((2,), -1, dtype=d),
        "full 1.5": lambda lib, d: lib.full((2,), 1.5, dtype=d),
        "arange": lambda lib, d: lib.arange(120, 130, dtype=d),
        "arange wraps": lambda lib, d: lib.arange(250, 260, dtype=d),
        "zeros_like": lambda lib, d: lib.zeros_like(lib.ones(2), dtype=d),
        "fill_": lambda lib, d: lib.zeros(3, dtype=d).fill_(-2),
        "new_full": lambda lib, d: lib.ones(1, dtype=d).new_full((2,), 9),
        "eye": lambda lib, d: lib.eye(3, dtype=d),
        "masked_fill": lambda lib, d: lib.zeros(3, dtype=d).masked_fill(lib.tensor([True, False, True]), 5),
        "empty shape": lambda lib, d: lib.empty(2, 5, dtype=d).zero_(),
        "where -1": lambda lib, d: lib.where(lib.tensor([True, False]), lib.ones(2, dtype=d), -1),
        "clamp(min=-1)": lambda lib, d: lib.arange(3, dtype=d).clamp(min=-1),
    }.items():
        assert_same(make(jt, d), make(torch, td), f"{dtype}: {name}")
    for refused in (lambda lib, d: lib.full((2,), 70000, dtype=d), lambda lib, d: lib.zeros(2, dtype=d).fill_(-70000),
                    lambda lib, d: lib.zeros(2, dtype=d).masked_fill(lib.tensor([True, False]), 70000),
                    lambda lib, d: lib.where(lib.tensor([True, False]), lib.ones(2, dtype=d), 70000),
                    lambda lib, d: lib.ones(2, dtype=d).clamp(max=70000)):
        with pytest.raises(RuntimeError, match="overflow"):
            refused(torch, td)
        with pytest.raises(RuntimeError, match=f"70000 cannot be converted to type {dtype} without overflow"):
            refused(jt, d)
    low, high = (0, 256) if dtype == "uint8" else (-128, 128)
    drawn = jt.randint(low, high, (4000,), dtype=d)
    assert drawn.dtype is d and int(drawn.min()) == low and int(drawn.max()) == high - 1
    bits = jt.zeros(4000, dtype=d).random_()  # [0, the dtype's max], as in torch
    assert bits.dtype is d and 0 <= int(bits.min()) < 200 and jt.iinfo(d).max // 2 < int(bits.max()) <= jt.iinfo(d).max


@pytest.mark.parametrize("dtype", SMALL)
def test_small_integer_tensors_cannot_require_grad_but_feed_float_ops(dtype):
    with pytest.raises(RuntimeError, match=f"floating point.*{dtype}"):
        jt.tensor([1, 2], dtype=jt_dtype(dtype), requires_grad=True)
    x, tx = both([1, 2, 3], dtype)
    with pytest.raises(RuntimeError, match=f"floating point.*{dtype}"):
        x.requires_grad_()
    w, tw = jt.tensor([0.5, -1.0, 2.0], requires_grad=True), torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    (w * x).sum().backward()
    (tw * tx).sum().backward()
    assert_same(w.grad, tw.grad)
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("dtype", SMALL)
def test_numpy_interop_shares_memory_and_keeps_the_dtype(dtype):
    array = np.array([[0, 1], [100, 127]], dtype=dtype)
    shared = jt.from_numpy(array)
    assert shared.dtype is jt_dtype(dtype)
    shared[0, 0] = 9
    array[1, 1] = -1 if dtype != "uint8" else 255
    assert array[0, 0] == 9 and shared[1, 1].item() == array[1, 1]
    assert jt.as_tensor(array).dtype is jt_dtype(dtype) and jt.tensor(array).dtype is jt_dtype(dtype)
    assert jt.tensor(array[0, 1]).dtype is jt_dtype(dtype)  # a numpy scalar keeps its dtype, as in torch
    assert shared.numpy().dtype == array.dtype and np.asarray(shared).dtype == array.dtype
    assert type(shared[1, 0].item()) is int and shared.tolist() == array.tolist()
    assert jt.from_dlpack(torch.tensor([1, 2], dtype=torch_dtype(dtype))).dtype is jt_dtype(dtype)


def test_images_are_uint8_through_numpy_and_collate_and_unsupported_ones_say_what_to_do():
    images = [np.full((2, 2, 3), 250, np.uint8), np.zeros((2, 2, 3), np.uint8)]
    batch = default_collate(images)
    assert batch.dtype is jt.uint8 and batch.shape == (2, 2, 2, 3)
    as_float = batch.permute(0, 3, 1, 2).float() / 255
    assert as_float.dtype is jt.float32 and float(as_float.max()) == pytest.approx(250 / 255)
    with pytest.raises(TypeError, match=r"uint16 is not supported by jitorch; convert with .astype\(\)"):
        jt.from_numpy(np.zeros(2, np.uint16))


def test_save_and_load_round_trip_small_dtypes(tmp_path):
    u, i8, i16 = (both([0, 1, 127, 200, 255, -1, -128, 32767], d)[0] for d in SMALL)
    state = {"u8": u, "i8": i8, "i16": i16.reshape(2, 4), "scalar": jt.tensor(7, dtype=jt.uint8),
             "empty": jt.zeros(0, 3, dtype=jt.int8), "dtype": jt.int16}
    path = tmp_path / "small.safetensors"
    jt.save(state, path)
    buffer = io.BytesIO()
    jt.save(state, buffer)
    buffer.seek(0)
    for loaded in (jt.load(path), jt.load(buffer)):
        assert loaded["dtype"] is jt.int16
        for key in ("u8", "i8", "i16", "scalar", "empty"):
            assert loaded[key].dtype is state[key].dtype and loaded[key].shape == state[key].shape, key
            np.testing.assert_array_equal(loaded[key].numpy(), state[key].numpy())
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert {header[k]["dtype"] for k in ("u8", "i8", "i16")} == {"U8", "I8", "I16"}  # safetensors' own codes


@pytest.mark.parametrize("dtype", SMALL)
def test_printing_matches_torch(dtype):
    for values in ([0, 1, 127, 200, -1], [[-128, 5], [3, 64]], 7, []):
        x, tx = both(values, dtype)
        assert repr(x) == repr(tx).replace("torch.", "jitorch."), values
    x, tx = both(list(range(2000)), dtype)
    assert repr(x) == repr(tx).replace("torch.", "jitorch.")


def test_uint8_masks_read_as_bool_masks_with_torchs_deprecation_warning_and_write_nothing():
    x, tx = both(np.arange(12).reshape(3, 4), "float32")
    mask, tmask = both([1, 0, 1], "uint8")
    with pytest.warns(UserWarning, match="indexing with dtype jitorch.uint8 is now deprecated"):
        got = x[mask]
    with pytest.warns(UserWarning, match="torch.uint8 is now deprecated"):
        want = tx[tmask]
    assert_same(got, want)
    with pytest.warns(UserWarning, match="deprecated"):
        got = x[mask, 1:]
    with pytest.warns(UserWarning, match="deprecated"):
        assert_same(got, tx[tmask, 1:])
    # PyTorch 2.13 writes through no byte mask (its index_put goes through masked_fill, bools only)
    for write in (lambda t, m: t.__setitem__(m, -1.0), lambda t, m: t.__setitem__((m, 0), -1.0),
                  lambda t, m: t.index_put_((m,), t.new_tensor(-2.0))):
        with pytest.raises(RuntimeError, match="boolean masks"):
            write(tx, tmask)
        with pytest.raises(RuntimeError, match="uint8 mask is not supported.*mask.bool()"):
            write(x, mask)
    assert_same(x, tx)
    for dtype in ("int8", "int16"):
        index, tindex = both([0, 2], dtype)
        with pytest.raises(IndexError, match="long, int, byte or bool"):
            tx[tindex]
        with pytest.raises(IndexError, match=f"long, int, byte or bool tensors, got {dtype}"):
            x[index]


# ---------------------------------------------------------------------------------------------
# compiled: fused LLVM kernels (and their Triton rendering)


def _fused_small_int_ops(lib, u, v, i8, i16):
    return (u + v * 3 - u, lib.maximum(u, v), lib.minimum(u, v), u < v, u >= 200, -u, u.abs(), i8.abs(),
            lib.minimum(i8, -i8), i8 * i8, (i8 * 3) > 0, u.to(lib.int16) * i16, u.to(lib.float32) * 0.5,
            i8.to(lib.float64), u.to(lib.int8), i8.to(lib.uint8) + 1, u + i8, lib.where(u > v, u, v),
            (u < i8) & (i16 != 0), u.bool(), u + 300, u == 257, i16 - 30000)


def _unfused_small_int_ops(lib, u, v, i8, i16):
    return (u & v, u | i8, ~i16, u ^ 0x5A, u // 7, i8 % 5, u.sum(), u.sum(1, dtype=lib.uint8), i8.cumsum(1),
            u.amax(1), i16.prod(1), u.argmax(1), u.sort(1, descending=True)[0], u / 3, i8 // -2)


def _small_int_inputs() -> tuple[list, list]:
    rng = np.random.default_rng(0)
    values = [rng.integers(0, 256, (5, 33)), rng.integers(0, 256, (33,)), rng.integers(-128, 128, (5, 33)),
              rng.integers(-2**15, 2**15, (5, 33))]
    pairs = [both(v, d) for v, d in zip(values, ("uint8", "uint8", "int8", "int16"))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_compiled_small_int_ops_are_fused_and_equal_eager_and_torch():
    ours, theirs = _small_int_inputs()
    fn = jt.compile(lambda *args: _fused_small_int_ops(jt, *args))
    expected = _fused_small_int_ops(torch, *theirs)
    assert_same(fn(*ours), expected, "compiled")
    assert_same(_fused_small_int_ops(jt, *ours), expected, "eager")
    fused = fused_nodes(fn)
    small = [n for n in fused if n.out.dtype.name in SMALL or any(v.dtype.name in SMALL for v in n.inputs)]
    assert {"add", "mul", "sub", "maximum", "minimum", "lt", "ge", "neg", "abs", "cast", "where"} <= {
        n.op for n in small}  # in the LLVM kernel, not left to the eager kernels


def test_compiled_ops_the_kernels_leave_to_eager_equal_torch():
    ours, theirs = _small_int_inputs()
    fn = jt.compile(lambda *args: _unfused_small_int_ops(jt, *args))
    assert_same(fn(*ours), _unfused_small_int_ops(torch, *theirs), "compiled")


def test_triton_renders_small_int_pointers_and_types():
    """The Triton rendering of the fused kernel above (run in Triton's interpreter and compiled for
    sm_90 by tests/test_triton_codegen.py's small_ints case): typed pointers and unsigned values."""
    ours, _ = _small_int_inputs()
    fn = jt.compile(lambda *args: _fused_small_int_ops(jt, *args))
    fn(*ours)
    programs = [p for entries in fn.cache.values() for p in entries]
    sources = [triton_codegen.render(describe(k.kernel)) for k in programs[0].plan.kernels]
    pointers = {p.type for source in sources for p in source.params}
    assert {"*u8", "*i8", "*i16"} <= pointers
    text = "\n".join(source.text for source in sources)
    for expected in (".to(tl.int16)", ".to(tl.uint8)", ".to(tl.float32)", ".to(tl.int8)"):
        assert expected in text, expected


# ---------------------------------------------------------------------------------------------
# on an NVIDIA GPU: CuPy's eager kernels and fused Triton kernels


@pytest.mark.gpu
@pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU and CuPy")
def test_small_int_ops_on_the_gpu_eager_and_compiled_equal_torch():
    ours, theirs = _small_int_inputs()
    on_gpu = [t.to("cuda") for t in ours]
    for ops in (_fused_small_int_ops, _unfused_small_int_ops):
        expected = ops(torch, *theirs)
        assert_same(ops(jt, *on_gpu), expected, f"{ops.__name__} eager on the GPU")
        compiled = jt.compile(lambda *args, ops=ops: ops(jt, *args))
        assert_same(compiled(*on_gpu), expected, f"{ops.__name__} compiled on the GPU")
    for dtype in SMALL:
        y, ty = both(_IN_RANGE_FLOATS[dtype], "float32")
        convert = jt.compile(lambda y, dtype=dtype: ((y * 1.0).to(jt_dtype(dtype)), (y * 1.0).to(jt_dtype(dtype)) < 0))
        assert_same(convert(y.to("cuda")), (ty.to(torch_dtype(dtype)), ty.to(torch_dtype(dtype)) < 0), dtype)
