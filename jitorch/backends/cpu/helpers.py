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
from ...primitives import conv_out_size
from ..array_kernels import as_rows
from . import jit

# ---------------------------------------------------------------------------------------------
# loops as LLVM IR


class _Loop(NamedTuple):
    """`for name in range(bound)`: the counter is the i64 `%name`, `bound` an i64 operand; `before`
    and `after` are straight-line IR run in each iteration before and after the loops inside it;
    `vectorize=False` keeps LLVM's loop vectorizer off this loop (it may still vectorize the loops
    inside it), for outer loops whose vectorization would turn contiguous inner rows into gathers;
    `unroll=False` keeps LLVM from unrolling it (code size and compile time, where the trip count is
    a constant)."""

    name: str
    bound: str
    before: str = ""
    after: str = ""
    vectorize: bool = True
    unroll: bool = True


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
            f"  br label %{name}.head" + (f", !llvm.loop !{depth + 2}" if _hinted(loops[depth]) else ""),
        ]
    lines += [f"{loops[0].name}.exit:", "  ret void"]
    return "\n".join(line for line in lines if line)


def _hinted(loop: _Loop) -> bool:
    return not (loop.vectorize and loop.unroll)


def _loop_metadata(loops: list[_Loop]) -> str:
    """The metadata that `_loop_nest`'s loops with hints name: a distinct loop id each (!depth+2)
    holding !0 (vectorization off) and/or !1 (unrolling off)."""
    lines = []
    for depth, loop in enumerate(loops):
        if _hinted(loop):
            hints = ([", !0"] if not loop.vectorize else []) + ([", !1"] if not loop.unroll else [])
            lines.append(f"!{depth + 2} = distinct !{{!{depth + 2}{''.join(hints)}}}\n")
    if not lines:
        return ""
    return ('!0 = !{!"llvm.loop.vectorize.enable", i1 false}\n!1 = !{!"llvm.loop.unroll.disable"}\n'
            + "".join(lines))


def _compile(params: str, loops: list[_Loop], body: str, argtypes: tuple, setup: str = "",
             extra: str = "", attributes: str = "") -> Callable:
    """Compile a function of `params` that runs `setup` (e.g. allocas) and then the loop nest,
    callable from Python with ints (pointers and sizes); `extra` holds more definitions the IR
    calls, such as math helpers; `attributes` are the function's (LLVM's syntax)."""
    head = f'define void @"kernel"({params}) {attributes + " " if attributes else ""}{{'
    text = f"{head}\nentry:\n{setup.strip(chr(10))}\n{_loop_nest(loops, body)}\n}}\n{extra}{_loop_metadata(loops)}"
    digest = jit.digest_of(text)
    return ctypes.CFUNCTYPE(None, *argtypes)(jit.compile_texts({digest: text})[digest])


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_FLOAT_TYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# unsigned views of each element size: kernels that only move data serve every dtype through them
UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def address(array: np.ndarray) -> int:
    """Where `array`'s first element is. Through the buffer protocol where numpy exports one (a
    writable C-contiguous array), which is several times cheaper than building the array
    interface's dict (a kernel launch reads a dozen addresses); else from that dict."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError, BufferError):  # read-only, strided or empty
        return array.__array_interface__["data"][0]



# ---------------------------------------------------------------------------------------------
# erf


@functools.cache
def _erf_kernel(t: str) -> Callable:

    return _compile("ptr noalias %x, ptr noalias %out, i64 %n", [_Loop("i", "%n")], f"""
  %px = getelementptr inbounds {t}, ptr %x, i64 %i
  %v = load {t}, ptr %px
  %e = call {t} @{llvm_math.function_name("erf", t)}({t} %v)
  %po = getelementptr inbounds {t}, ptr %out, i64 %i
  store {t} %e, ptr %po""", (_PTR, _PTR, _I64), extra=llvm_math.math_functions(t, jit.has_avx512f()))


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise error function (float16/bfloat16 are computed in float32)."""
    if x.dtype not in _FLOAT_TYPE:
        return erf(x.astype(np.float32)).astype(x.dtype)
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, x.dtype)
    _erf_kernel(_FLOAT_TYPE[x.dtype])(address(x), address(out), x.size)
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
    _row_max_kernel(_FLOAT_TYPE[x.dtype])(address(rows), address(out), *rows.shape)
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
    _add_rows_kernel(_FLOAT_TYPE[out.dtype])(address(out), address(flat), address(values), flat.size,
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
        kernel, args = _select_kernel(bits, ""), (address(a), address(b))
    elif a is not None and y.size == 1:
        kernel, args = _select_kernel(bits, "b"), (address(a), int(y.reshape(()).view(u)))
    elif b is not None and x.size == 1:
        kernel, args = _select_kernel(bits, "a"), (int(x.reshape(()).view(u)), address(b))
    else:
        return np.where(cond, x, y)
    out = np.empty(shape, dtype=x.dtype)
    kernel(address(c), *args, address(out), out.size)
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
        _relu_kernel(_FLOAT_TYPE[x.dtype])(address(x), address(result), x.size)
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
        _relu_grad_kernel(_FLOAT_TYPE[g.dtype])(address(g), address(out), address(result), g.size)
        return result
    return where(out <= 0, np.zeros((), g.dtype), g)


# ---------------------------------------------------------------------------------------------
# im2col / col2im for convolution, one loop each per window geometry and image size (compiled in
# as constants: a CNN has a few of them, and LLVM then unrolls the kernel taps and copies each row
# of windows with vectors of its exact length). Padding is never materialized: for each kernel tap
# the loops run over the windows whose tap lies on the image only, and im2col zeroes a tap's columns
# first where some windows reach into the padding. The columns may have any strides but a
# contiguous last axis, so that a convolution can keep them as one (C*kh*kw, N*L) matrix
# (`kernels._unfold`), with no copy before or after its GEMM. They run on one thread: they move
# memory, and a second thread did not make them faster on the 2-core machines.


class Window(NamedTuple):
    """The geometry of unfold/fold's sliding windows over an image of `size`, as (height, width) pairs."""

    size: tuple[int, int]
    kernel: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int]
    stride: tuple[int, int]

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple(conv_out_size(*args) for args in zip(self.size, self.kernel, self.stride, self.padding,
                                                          self.dilation))


_WINDOW_PARAMS = "i64 %images, i64 %channels, i64 %sn, i64 %sk"
_WINDOW_ARGTYPES = (_PTR, _PTR) + (_I64,) * 4


def _tap_span(axis: str, tap: str, size: int, k_step: int, pad: int, stride: int, out: int) -> str:
    """IR for the windows (`%{axis}.lo` and `%{axis}.span` of them) whose tap `%{tap}` lies on an
    image axis of `size`: those from ceil((pad - tap*k_step) / stride) when that is positive, to
    the last one with position*stride + tap*k_step - pad <= size - 1; and `%{axis}.at`, the image
    position of the first one."""
    a = axis
    return f"""
  %{a}.tap = mul nsw i64 %{tap}, {k_step}
  %{a}.left = sub nsw i64 {pad}, %{a}.tap
  %{a}.left.some = icmp sgt i64 %{a}.left, 0
  %{a}.left.up = add nsw i64 %{a}.left, {stride - 1}
  %{a}.left.windows = sdiv i64 %{a}.left.up, {stride}
  %{a}.lo = select i1 %{a}.left.some, i64 %{a}.left.windows, i64 0
  %{a}.right = sub nsw i64 {size - 1 + pad}, %{a}.tap
  %{a}.right.some = icmp sge i64 %{a}.right, 0
  %{a}.right.div = sdiv i64 %{a}.right, {stride}
  %{a}.right.end = add nsw i64 %{a}.right.div, 1
  %{a}.right.past = icmp sgt i64 %{a}.right.end, {out}
  %{a}.right.min = select i1 %{a}.right.past, i64 {out}, i64 %{a}.right.end
  %{a}.hi = select i1 %{a}.right.some, i64 %{a}.right.min, i64 0
  %{a}.span.raw = sub nsw i64 %{a}.hi, %{a}.lo
  %{a}.span.some = icmp sgt i64 %{a}.span.raw, 0
  %{a}.span = select i1 %{a}.span.some, i64 %{a}.span.raw, i64 0
  %{a}.lo.at = mul nsw i64 %{a}.lo, {stride}
  %{a}.lo.tap = add nsw i64 %{a}.lo.at, %{a}.tap
  %{a}.at = sub nsw i64 %{a}.lo.tap, {pad}"""


def _window_loops(g: Window, images_inside_taps: bool, tap_before: str = "", plane_before: str = "") -> list[_Loop]:
    """Loops over channel c, kernel tap (i, j) and image n, in the order c, i, j, n with
    `images_inside_taps`, else c, n, i, j; then over the windows (y, x) whose tap lies on the image.
    In the body, window (y, x) is column `%col` (of row (c, i, j) of image n) and its tap's pixel
    `%pixel` of the image (N, C, H, W), C-contiguous. `tap_before` runs before each image's windows
    of a tap, with `%col.k` the first of its columns; `plane_before` before the taps of an image
    plane (`%plane`: its first pixel) when they are inside the images.

    With the images inside the taps, each row of columns of a (C*kh*kw, N, L) layout is one
    sequential stream, and the planes of channel c stay in the cache across its taps when they fit
    there; else each plane stays in the L1 cache across its taps, while a channel's kh*kw rows of
    columns are read or written as kh*kw streams."""
    (h, w), (kh, kw), (dh, dw), (ph, pw), (sh, sw) = g.size, g.kernel, g.dilation, g.padding, g.stride
    oh, ow = g.out_size
    image = _Loop("n", "%images", before=f"""
  %nc.n = mul nsw i64 %n, %channels
  %nc = add nsw i64 %nc.n, %c
  %plane = mul nsw i64 %nc, {h * w}
  %col.n = mul nsw i64 %n, %sn
{"" if images_inside_taps else plane_before}""", vectorize=False, unroll=False)
    taps = [
        _Loop("i", str(kh), before=f"""
  %k.i.kw = mul nsw i64 %i, {kw}
  %k.i = add nsw i64 %k.c, %k.i.kw
{_tap_span("y", "i", h, dh, ph, sh, oh)}""", vectorize=False),
        _Loop("j", str(kw), before=f"""
  %k = add nsw i64 %k.i, %j
  %k.col = mul nsw i64 %k, %sk
{_tap_span("x", "j", w, dw, pw, sw, ow)}""", vectorize=False),
    ]
    outer = taps + [image] if images_inside_taps else [image] + taps
    inner = outer[-1]
    outer[-1] = inner._replace(before=f"""{inner.before}
  %col.k = add nsw i64 %col.n, %k.col
{tap_before}""")
    return [
        _Loop("c", "%channels", before=f"  %k.c = mul nsw i64 %c, {kh * kw}", vectorize=False, unroll=False),
        *outer,
        _Loop("yy", "%y.span", before=f"""
  %y = add nsw i64 %yy, %y.lo
  %y.sh = mul nsw i64 %yy, {sh}
  %iy = add nsw i64 %y.sh, %y.at
  %pixel.row = mul nsw i64 %iy, {w}
  %pixel.y = add nsw i64 %plane, %pixel.row
  %pixel.x = add nsw i64 %pixel.y, %x.at
  %col.y = mul nsw i64 %y, {ow}
  %col.yk = add nsw i64 %col.k, %col.y
  %col.x = add nsw i64 %col.yk, %x.lo""", vectorize=False, unroll=False),
        _Loop("xx", "%x.span", before=f"""
  %xx.sw = mul nsw i64 %xx, {sw}
  %pixel = add nsw i64 %pixel.x, %xx.sw
  %col = add nsw i64 %col.x, %xx"""),
    ]


# a channel's planes across the batch up to this size stay in the L2 cache while its taps go over
# them (the images then go inside the taps, see `_window_loops`)
_PLANES_IN_CACHE_BYTES = 1 << 18


def _images_inside_taps(n: int, g: Window, itemsize: int) -> bool:
    return n * g.size[0] * g.size[1] * itemsize <= _PLANES_IN_CACHE_BYTES


_MEMSET = "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)\n"
# a row of windows is a few dozen elements: LLVM would make each row's copy a call of libc's memcpy,
# which costs more than the copy; without builtins it vectorizes the loop instead
_NO_MEMCPY = '"no-builtins"'


@functools.cache
def _im2col_kernel(bits: int, g: Window, images_inside_taps: bool) -> Callable:
    t, size = f"i{bits}", bits // 8
    oh, ow = g.out_size
    # a tap some of whose windows reach into the padding gets zeros first, then its windows on the image
    zero_tap = f"""
  %tap.ptr = getelementptr inbounds {t}, ptr %cols, i64 %col.k
  call void @llvm.memset.p0.i64(ptr %tap.ptr, i8 0, i64 {oh * ow * size}, i1 false)""" if any(g.padding) else ""
    return _compile(f"ptr noalias %image, ptr noalias %cols, {_WINDOW_PARAMS}",
                    _window_loops(g, images_inside_taps, zero_tap), f"""
  %pfrom = getelementptr inbounds {t}, ptr %image, i64 %pixel
  %v = load {t}, ptr %pfrom
  %pto = getelementptr inbounds {t}, ptr %cols, i64 %col
  store {t} %v, ptr %pto""", _WINDOW_ARGTYPES, extra=_MEMSET, attributes=_NO_MEMCPY)


@functools.cache
def _col2im_kernel(t: str, g: Window, images_inside_taps: bool) -> Callable:
    # with the taps inside the images, each image plane is zeroed right before its taps add into it
    plane_bytes = g.size[0] * g.size[1] * (4 if t == "float" else 8)
    zero_plane = "" if images_inside_taps else f"""
  %plane.ptr = getelementptr inbounds {t}, ptr %image, i64 %plane
  call void @llvm.memset.p0.i64(ptr %plane.ptr, i8 0, i64 {plane_bytes}, i1 false)"""
    return _compile(f"ptr noalias %cols, ptr noalias %image, {_WINDOW_PARAMS}",
                    _window_loops(g, images_inside_taps, plane_before=zero_plane), f"""
  %pfrom = getelementptr inbounds {t}, ptr %cols, i64 %col
  %v = load {t}, ptr %pfrom
  %pto = getelementptr inbounds {t}, ptr %image, i64 %pixel
  %o = load {t}, ptr %pto
  %sum = fadd {t} %o, %v
  store {t} %sum, ptr %pto""", _WINDOW_ARGTYPES, extra=_MEMSET, attributes=_NO_MEMCPY)


def _column_strides(cols: np.ndarray) -> tuple[int, int]:
    item = cols.itemsize
    if cols.ndim != 3 or cols.shape[2] > 1 and cols.strides[2] != item or any(s % item for s in cols.strides[:2]):
        raise ValueError(f"columns of shape {cols.shape} need a contiguous last axis (strides {cols.strides})")
    return cols.strides[0] // item, cols.strides[1] // item


def im2col(x: np.ndarray, kernel: tuple[int, int], dilation: tuple[int, int], padding: tuple[int, int],
           stride: tuple[int, int], out: np.ndarray) -> None:
    """x (N, C, H, W), C-contiguous and unpadded -> out (N, C*kh*kw, oh*ow), unfold's values, where
    `out` may have any strides but a contiguous last axis; for unsigned-integer views of the data
    (one kernel per element size)."""
    n, c, h, w = x.shape
    sn, sk = _column_strides(out)
    g = Window((h, w), tuple(kernel), tuple(dilation), tuple(padding), tuple(stride))
    kernel = _im2col_kernel(8 * x.itemsize, g, _images_inside_taps(n, g, x.itemsize))
    kernel(address(x), address(out), n, c, sn, sk)


def col2im(cols: np.ndarray, kernel: tuple[int, int], dilation: tuple[int, int], padding: tuple[int, int],
           stride: tuple[int, int], out: np.ndarray) -> None:
    """The adjoint of im2col: out (N, C, H, W), float32/float64 and C-contiguous, set to the sum
    of the columns cols (N, C*kh*kw, oh*ow) of the windows that cover each pixel; `cols` may have
    any strides but a contiguous last axis."""
    n, c, h, w = out.shape
    sn, sk = _column_strides(cols)
    g = Window((h, w), tuple(kernel), tuple(dilation), tuple(padding), tuple(stride))
    images_inside_taps = _images_inside_taps(n, g, out.itemsize)
    if images_inside_taps:
        out.fill(0)  # (the batch's planes of a channel are few and small: a pass over them in the cache)
    kernel = _col2im_kernel(_FLOAT_TYPE[out.dtype], g, images_inside_taps)
    kernel(address(cols), address(out), n, c, sn, sk)
