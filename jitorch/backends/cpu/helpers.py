"""Fixed CPU helper kernels that numpy lacks or runs slowly: sums through BLAS, and a few loops
(`where`'s select, relu's backward, the max of each row, rows added at indices, erf, and im2col /
col2im for convolutions) written as LLVM IR and compiled by the engine that compiles the fused
kernels (`jit.py`).

Each loop compiles on its first call for each element type, and the engine keeps the machine code
on disk (~/.cache/jitorch, or JITORCH_CACHE_DIR), where the next process finds it: a process's first
conv2d costs tens of milliseconds, most of it importing llvmlite. Numba, which compiled these loops
before, cost about half a second in every process however warm its cache, the time it takes to
initialize itself (`python bench/startup.py` times both). A cache problem never fails a call: a
missing, unwritable or damaged cache only means compiling again.

The loops take C-contiguous arrays as plain pointers, and every output is a fresh array, so no
output aliases an input: the `noalias` that lets LLVM vectorize without run-time overlap checks.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ...codegen import llvm_math
from ..array_kernels import as_rows
from . import jit

# ---------------------------------------------------------------------------------------------
# loops as LLVM IR


class _Loop(NamedTuple):
    """`for name in range(bound)`: the counter is the i64 `%name`, `bound` an i64 operand; `before`
    and `after` are straight-line IR run in each iteration before and after the loops inside it."""

    name: str
    bound: str
    before: str = ""
    after: str = ""


def _loop_nest(loops: list[_Loop], body: str) -> str:
    """The blocks of `loops`, nested in order, around `body` (straight-line IR using the counters);
    the function returns after them."""
    lines = [f"  br label %{loops[0].name}.head"]
    for depth, loop in enumerate(loops):
        name, outer = loop.name, f"{loops[depth - 1].name}.body" if depth else "entry"
        lines += [
            f"{name}.head:",
            f"  %{name} = phi i64 [0, %{outer}], [%{name}.next, %{name}.latch]",
            f"  %{name}.more = icmp slt i64 %{name}, {loop.bound}",
            f"  br i1 %{name}.more, label %{name}.body, label %{name}.exit",
            f"{name}.body:",
            loop.before.strip("\n"),
        ]
        if depth + 1 < len(loops):
            lines.append(f"  br label %{loops[depth + 1].name}.head")
    lines.append(body.strip("\n"))
    for depth in reversed(range(len(loops))):
        name = loops[depth].name
        if depth + 1 < len(loops):
            lines += [f"{loops[depth + 1].name}.exit:", loops[depth].after.strip("\n")]
        lines += [
            f"  br label %{name}.latch",
            f"{name}.latch:",
            f"  %{name}.next = add nuw nsw i64 %{name}, 1",
            f"  br label %{name}.head",
        ]
    lines += [f"{loops[0].name}.exit:", "  ret void"]
    return "\n".join(line for line in lines if line)


def _compile(params: str, loops: list[_Loop], body: str, argtypes: tuple, setup: str = "",
             extra: str = "") -> Callable:
    """Compile a function of `params` that runs `setup` (e.g. allocas) and then the loop nest,
    callable from Python with ints (pointers and sizes); `extra` holds more definitions the IR
    calls, such as math helpers."""
    text = (f'define void @"kernel"({params}) {{\nentry:\n{setup.strip(chr(10))}\n{_loop_nest(loops, body)}\n}}\n'
            f"{extra}")
    digest = jit.digest_of(text)
    return ctypes.CFUNCTYPE(None, *argtypes)(jit.compile_texts({digest: text})[digest])


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_FLOAT_TYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# unsigned views of each element size: kernels that only move data serve every dtype through them
UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _address(array: np.ndarray) -> int:
    return array.ctypes.data


# ---------------------------------------------------------------------------------------------
# erf


@functools.cache
def _erf_kernel(t: str) -> Callable:

    return _compile("ptr noalias %x, ptr noalias %out, i64 %n", [_Loop("i", "%n")], f"""
  %px = getelementptr inbounds {t}, ptr %x, i64 %i
  %v = load {t}, ptr %px
  %e = call {t} @{llvm_math.function_name("erf", t)}({t} %v)
  %po = getelementptr inbounds {t}, ptr %out, i64 %i
  store {t} %e, ptr %po""", (_PTR, _PTR, _I64), extra=llvm_math.math_functions(t))


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise error function (float16/bfloat16 are computed in float32)."""
    if x.dtype not in _FLOAT_TYPE:
        return erf(x.astype(np.float32)).astype(x.dtype)
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, x.dtype)
    _erf_kernel(_FLOAT_TYPE[x.dtype])(_address(x), _address(out), x.size)
    return out


# ---------------------------------------------------------------------------------------------
# sums through BLAS

# Sums over the leading or the trailing dims of a contiguous float array as a product with a ones
# vector: BLAS's GEMV is vectorized and multi-threaded, while numpy adds a leading axis one row at
# a time and a short trailing axis one row per inner-loop call (`python bench/eager.py` times both
# on a training step's bias-gradient and softmax shapes).
BLAS_SUM_MIN_ELEMENTS = 16384
_ones: dict[tuple[np.dtype, int], np.ndarray] = {}


def _ones_vector(dtype: np.dtype, n: int) -> np.ndarray:
    key = (dtype, n)
    if key not in _ones:
        _ones[key] = np.ones(n, dtype)
    return _ones[key]


def sum_by_blas(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray | None:
    """The sums of `x` over `dims`, flat, through BLAS when `dims` are the leading or the trailing
    dims of a C-contiguous float32/float64 array of some size; None otherwise (numpy then sums)."""
    found = as_rows(x, dims) if x.dtype in _FLOAT_TYPE and x.size >= BLAS_SUM_MIN_ELEMENTS else None
    if found is None:
        return None
    rows, trailing = found
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN without a warning, as in PyTorch
        if trailing:
            return rows @ _ones_vector(x.dtype, rows.shape[1])
        return _ones_vector(x.dtype, rows.shape[0]) @ rows


# ---------------------------------------------------------------------------------------------
# the max of each row: numpy reduces a short trailing axis with one inner-loop call per row. The
# running max is a compare and select that LLVM may treat as NaN-free (`nnan nsz`, so that it
# vectorizes the reduction); NaNs are counted apart and make the row's result NaN at the end.
# The running max and count live in memory (out[r], an alloca) that LLVM keeps in registers.


@functools.cache
def _row_max_kernel(t: str) -> Callable:
    return _compile("ptr noalias %x, ptr noalias %out, i64 %rows, i64 %cols", [
        _Loop("r", "%rows", before=f"""
  %start = mul nsw i64 %r, %cols
  %pfirst = getelementptr inbounds {t}, ptr %x, i64 %start
  %first = load {t}, ptr %pfirst
  %pmax = getelementptr inbounds {t}, ptr %out, i64 %r
  store {t} %first, ptr %pmax
  store i64 0, ptr %nans""", after=f"""
  %found = load i64, ptr %nans
  %has_nan = icmp ne i64 %found, 0
  %max = load {t}, ptr %pmax
  %result = select i1 %has_nan, {t} 0x7FF8000000000000, {t} %max
  store {t} %result, ptr %pmax"""),
        _Loop("c", "%cols"),
    ], f"""
  %at = add nsw i64 %start, %c
  %px = getelementptr inbounds {t}, ptr %x, i64 %at
  %v = load {t}, ptr %px
  %m = load {t}, ptr %pmax
  %greater = fcmp nnan nsz ogt {t} %v, %m
  %m.next = select nnan nsz i1 %greater, {t} %v, {t} %m
  store {t} %m.next, ptr %pmax
  %is_nan = fcmp uno {t} %v, 0.0
  %one = zext i1 %is_nan to i64
  %n = load i64, ptr %nans
  %n.next = add nuw nsw i64 %n, %one
  store i64 %n.next, ptr %nans""", (_PTR, _PTR, _I64, _I64), setup="  %nans = alloca i64")


def amax_rows(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray | None:
    """The maxima of `x` over `dims`, flat, by a row kernel when `dims` are the trailing dims of a
    contiguous float array of some size (softmax's and cross_entropy's max); None otherwise."""
    found = as_rows(x, dims) if x.dtype in _FLOAT_TYPE and x.size >= 4096 else None
    if found is None or not found[1]:
        return None
    rows = found[0]
    out = np.empty(rows.shape[0], x.dtype)
    _row_max_kernel(_FLOAT_TYPE[x.dtype])(_address(rows), _address(out), *rows.shape)
    return out


# ---------------------------------------------------------------------------------------------
# rows added into a table at repeated indices (an embedding's gradient): np.add.at takes a slow
# generic path per element


@functools.cache
def _add_rows_kernel(t: str) -> Callable:
    return _compile("ptr noalias %out, ptr noalias %index, ptr noalias %values, i64 %n, i64 %cols", [
        _Loop("i", "%n", before="""
  %pindex = getelementptr inbounds i64, ptr %index, i64 %i
  %row = load i64, ptr %pindex
  %to = mul nsw i64 %row, %cols
  %from = mul nsw i64 %i, %cols"""),
        _Loop("c", "%cols"),
    ], f"""
  %at = add nsw i64 %to, %c
  %po = getelementptr inbounds {t}, ptr %out, i64 %at
  %src = add nsw i64 %from, %c
  %pv = getelementptr inbounds {t}, ptr %values, i64 %src
  %o = load {t}, ptr %po
  %v = load {t}, ptr %pv
  %sum = fadd {t} %o, %v
  store {t} %sum, ptr %po""", (_PTR, _PTR, _PTR, _I64, _I64))


def add_rows_at(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> bool:
    """`np.add.at(out, index, values)` for integer `index` along dim 0 and `values` of exactly
    index.shape + out.shape[1:], by a loop; returns False (nothing done) for anything else,
    including out-of-range indices, which np.add.at then reports."""
    if (out.dtype not in _FLOAT_TYPE or values.dtype != out.dtype or index.dtype.kind not in "iu"
            or out.ndim == 0 or values.shape != index.shape + out.shape[1:] or not out.flags.c_contiguous
            or index.size < 64):
        return False
    rows = out.shape[0]
    flat = index.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < -rows or flat.max() >= rows):
        return False
    flat = np.where(flat < 0, flat + rows, flat)
    values = np.ascontiguousarray(values)
    _add_rows_kernel(_FLOAT_TYPE[out.dtype])(_address(out), _address(flat), _address(values), flat.size,
                                             out.size // rows)
    return True


# ---------------------------------------------------------------------------------------------
# `where` and relu's backward as plain selects: LLVM turns `c ? a : b` into a vector blend, where
# numpy's np.where branches per element (slow on an unpredictable mask). The arrays arrive as
# unsigned-integer views of the data, so one kernel per element size serves every dtype.


_UINT_CTYPE = {8: ctypes.c_uint8, 16: ctypes.c_uint16, 32: ctypes.c_uint32, 64: ctypes.c_uint64}


@functools.cache
def _select_kernel(bits: int, scalar: str) -> Callable:
    """out = cond ? a : b over n elements of `bits` bits; `scalar` names the one of a, b that is a
    single value passed by value rather than an array ("" for neither)."""
    t = f"i{bits}"
    params, loads, argtypes = [], [], []
    for name in ("a", "b"):
        if name == scalar:
            params.append(f"{t} %{name}.value")
            argtypes.append(_UINT_CTYPE[bits])
        else:
            params.append(f"ptr noalias %{name}")
            argtypes.append(_PTR)
            loads.append(f"  %p{name} = getelementptr inbounds {t}, ptr %{name}, i64 %i\n"
                         f"  %{name}.value = load {t}, ptr %p{name}")
    return _compile(f"ptr noalias %cond, {', '.join(params)}, ptr noalias %out, i64 %n", [_Loop("i", "%n")], f"""
  %pc = getelementptr inbounds i8, ptr %cond, i64 %i
  %c = load i8, ptr %pc
  %take_a = icmp ne i8 %c, 0
{chr(10).join(loads)}
  %v = select i1 %take_a, {t} %a.value, {t} %b.value
  %po = getelementptr inbounds {t}, ptr %out, i64 %i
  store {t} %v, ptr %po""", (_PTR, *argtypes, _PTR, _I64))


def _flat(a: np.ndarray, shape: tuple, u) -> np.ndarray | None:
    """`a` as a flat unsigned view if it has the full shape (a strided one is copied first: a copy
    costs less than numpy's np.where on an unpredictable mask)."""
    if a.shape != shape:
        return None
    return np.ascontiguousarray(a).reshape(-1).view(u)


def where(cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise `x if cond else y` with broadcasting (same dtype for x and y)."""
    shape = np.broadcast_shapes(cond.shape, x.shape, y.shape)
    u = UINT_OF_SIZE[x.dtype.itemsize]
    c = _flat(cond, shape, np.uint8)
    if c is None or c.size < 4096:
        return np.where(cond, x, y)  # small or oddly strided: numpy is fine
    a, b = _flat(x, shape, u), _flat(y, shape, u)
    bits = 8 * x.dtype.itemsize
    if a is not None and b is not None:
        kernel, args = _select_kernel(bits, ""), (_address(a), _address(b))
    elif a is not None and y.size == 1:
        kernel, args = _select_kernel(bits, "b"), (_address(a), int(y.reshape(()).view(u)))
    elif b is not None and x.size == 1:
        kernel, args = _select_kernel(bits, "a"), (int(x.reshape(()).view(u)), _address(b))
    else:
        return np.where(cond, x, y)
    out = np.empty(shape, dtype=x.dtype)
    kernel(_address(c), *args, _address(out), out.size)
    return out


@functools.cache
def _relu_kernel(t: str) -> Callable:
    return _compile("ptr noalias %x, ptr noalias %result, i64 %n", [_Loop("i", "%n")], f"""
  %px = getelementptr inbounds {t}, ptr %x, i64 %i
  %xv = load {t}, ptr %px
  %neg = fcmp olt {t} %xv, 0.0
  %v = select i1 %neg, {t} 0.0, {t} %xv
  %pr = getelementptr inbounds {t}, ptr %result, i64 %i
  store {t} %v, ptr %pr""", (_PTR, _PTR, _I64))


def relu(x: np.ndarray) -> np.ndarray:
    """0 where x < 0, else x (NaN and -0.0 kept, as PyTorch's relu and jitorch's fused kernels do)."""
    if x.dtype in _FLOAT_TYPE and x.size >= 4096:
        x = np.ascontiguousarray(x)
        result = np.empty(x.shape, dtype=x.dtype)
        _relu_kernel(_FLOAT_TYPE[x.dtype])(_address(x), _address(result), x.size)
        return result
    return where(x < 0, np.zeros((), x.dtype), x)


@functools.cache
def _relu_grad_kernel(t: str) -> Callable:
    return _compile("ptr noalias %g, ptr noalias %out, ptr noalias %result, i64 %n", [_Loop("i", "%n")], f"""
  %pg = getelementptr inbounds {t}, ptr %g, i64 %i
  %po = getelementptr inbounds {t}, ptr %out, i64 %i
  %gv = load {t}, ptr %pg
  %ov = load {t}, ptr %po
  %off = fcmp ole {t} %ov, 0.0
  %v = select i1 %off, {t} 0.0, {t} %gv
  %pr = getelementptr inbounds {t}, ptr %result, i64 %i
  store {t} %v, ptr %pr""", (_PTR, _PTR, _PTR, _I64))


def relu_backward(g: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`g` where relu's output is not <= 0, else 0 (PyTorch's test: a NaN output passes `g`)."""
    if g.shape == out.shape and g.dtype == out.dtype and g.dtype in _FLOAT_TYPE and g.size >= 4096:
        g, out = np.ascontiguousarray(g), np.ascontiguousarray(out)
        result = np.empty(g.shape, dtype=g.dtype)
        _relu_grad_kernel(_FLOAT_TYPE[g.dtype])(_address(g), _address(out), _address(result), g.size)
        return result
    return where(out <= 0, np.zeros((), g.dtype), g)


# ---------------------------------------------------------------------------------------------
# im2col / col2im for convolution: numpy's strided-view copy and a Python loop of strided adds
# are slower on the small images CNNs see. The (N, C) planes of an image run as one loop.


_WINDOW_PARAMS = "i64 %planes, i64 %hp, i64 %wp, i64 %kh, i64 %kw, i64 %dh, i64 %dw, i64 %sh, i64 %sw, i64 %oh, i64 %ow"
_WINDOW_LOOPS = [_Loop("p", "%planes"), _Loop("i", "%kh"), _Loop("j", "%kw"), _Loop("y", "%oh"), _Loop("x", "%ow")]
# %col: where element (p, (i, j), y, x) is in the columns (P, kh*kw, oh*ow); %pixel: where the
# pixel it holds is in the padded image (P, Hp, Wp), at row i*dh + y*sh and column j*dw + x*sw
_WINDOW_INDICES = """
  %pi = mul nsw i64 %p, %kh
  %pi.i = add nsw i64 %pi, %i
  %row.kw = mul nsw i64 %pi.i, %kw
  %row = add nsw i64 %row.kw, %j
  %row.oh = mul nsw i64 %row, %oh
  %row.y = add nsw i64 %row.oh, %y
  %row.yow = mul nsw i64 %row.y, %ow
  %col = add nsw i64 %row.yow, %x
  %iy.k = mul nsw i64 %i, %dh
  %iy.o = mul nsw i64 %y, %sh
  %iy = add nsw i64 %iy.k, %iy.o
  %plane.row = mul nsw i64 %p, %hp
  %image.row = add nsw i64 %plane.row, %iy
  %image.rowstart = mul nsw i64 %image.row, %wp
  %ix.k = mul nsw i64 %j, %dw
  %ix.o = mul nsw i64 %x, %sw
  %ix = add nsw i64 %ix.k, %ix.o
  %pixel = add nsw i64 %image.rowstart, %ix"""
_WINDOW_ARGTYPES = (_PTR, _PTR) + (_I64,) * 11


@functools.cache
def _im2col_kernel(bits: int) -> Callable:
    t = f"i{bits}"
    return _compile(f"ptr noalias %image, ptr noalias %cols, {_WINDOW_PARAMS}", _WINDOW_LOOPS, f"""{_WINDOW_INDICES}
  %pfrom = getelementptr inbounds {t}, ptr %image, i64 %pixel
  %v = load {t}, ptr %pfrom
  %pto = getelementptr inbounds {t}, ptr %cols, i64 %col
  store {t} %v, ptr %pto""", _WINDOW_ARGTYPES)


def im2col(xp: np.ndarray, kh: int, kw: int, dh: int, dw: int, sh: int, sw: int, oh: int, ow: int,
           out: np.ndarray) -> None:
    """xp (N, C, Hp, Wp), padded and C-contiguous -> out (N, C*kh*kw, oh*ow), unfold's layout, for
    unsigned-integer views of the data (one kernel per element size)."""
    n, c, hp, wp = xp.shape
    _im2col_kernel(8 * xp.itemsize)(_address(xp), _address(out), n * c, hp, wp, kh, kw, dh, dw, sh, sw, oh, ow)


@functools.cache
def _col2im_kernel(t: str) -> Callable:
    return _compile(f"ptr noalias %cols, ptr noalias %image, {_WINDOW_PARAMS}", _WINDOW_LOOPS, f"""{_WINDOW_INDICES}
  %pfrom = getelementptr inbounds {t}, ptr %cols, i64 %col
  %pto = getelementptr inbounds {t}, ptr %image, i64 %pixel
  %v = load {t}, ptr %pfrom
  %o = load {t}, ptr %pto
  %sum = fadd {t} %o, %v
  store {t} %sum, ptr %pto""", _WINDOW_ARGTYPES)


def col2im(cols: np.ndarray, kh: int, kw: int, dh: int, dw: int, sh: int, sw: int, oh: int, ow: int,
           out: np.ndarray) -> None:
    """The adjoint of im2col: add cols (N, C*kh*kw, oh*ow), C-contiguous, into out (N, C, Hp, Wp),
    float32/float64, which starts at zero."""
    n, c, hp, wp = out.shape
    _col2im_kernel(_FLOAT_TYPE[out.dtype])(_address(cols), _address(out), n * c, hp, wp, kh, kw, dh, dw, sh, sw,
                                            oh, ow)
