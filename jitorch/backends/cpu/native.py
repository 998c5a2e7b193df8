"""Native runs on the CPU: several steps of a compiled program as one generated function.

`jitorch.runtime.native_runs` hands over a run of steps whose operands' layouts are fixed when the
program is built (a root buffer, a byte offset, strides); this module renders them as one LLVM
function `run(roots, statics)` that calls, in turn,
- the fused kernels (their machine code, by address, with the shape, strides and pointer arguments
  that `launch.CompiledKernel.run` would build on every call, built once here),
- BLAS's `?gemm` for products (a loop over the batch, each matrix's transpose flag and leading
  dimension from its strides) and `?gemv` with a vector of ones for sums over leading or trailing
  dims, from the OpenBLAS library that numpy itself loaded, so products run on the same code and
  threads as numpy's.
`roots` holds the buffers' addresses (filled per call), `statics` the functions' and the ones
vectors' (fixed): the IR names no address, so its machine code is cached on disk like a kernel's.
Kernels large enough to be split across the backend's threads stay Python steps.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import math
import os

import numpy as np

from .. import NativeOp, Operand
from . import jit, threads
from .helpers import BLAS_SUM_MIN_ELEMENTS, _ones_vector, address

_LLVM_TYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enum values


# ---------------------------------------------------------------------------------------------
# BLAS: numpy's own OpenBLAS, found by its file next to numpy (wheels bundle it)


@functools.cache
def blas() -> dict | None:
    """{"int": "i64" | "i32", "sgemm": address, ...} of the CBLAS library numpy uses, or None."""
    root = os.path.dirname(os.path.dirname(np.__file__))
    for path in sorted(glob.glob(os.path.join(root, "numpy.libs", "*openblas*"))
                       + glob.glob(os.path.join(os.path.dirname(np.__file__), ".dylibs", "*openblas*"))):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix, width in (("scipy_cblas_", "64_", "i64"), ("cblas_", "64_", "i64"),
                                      ("scipy_cblas_", "", "i32"), ("cblas_", "", "i32")):
            try:
                found = {name: ctypes.cast(getattr(library, prefix + name + suffix), ctypes.c_void_p).value
                         for name in ("sgemm", "dgemm", "sgemv", "dgemv")}
            except AttributeError:
                continue
            return {"int": width, **found}
    return None


# ---------------------------------------------------------------------------------------------
# what runs natively


def _as_strided(operand: Operand) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(np.zeros(1, operand.dtype), operand.shape, operand.strides)


def kernel_strides(op: NativeOp) -> list[int] | None:
    """The strides argument (in elements) of a fused kernel's call on `op`'s operands, as the
    launcher would make it, or None where the launcher would copy an input first."""
    kernel = op.kernel
    ndim = kernel.ndim
    strides: list[int] = []
    for operand, view_shape, bcast in zip(op.ins, kernel.in_views, kernel.broadcast):
        try:
            view = np.reshape(_as_strided(operand), view_shape, copy=False)
        except (ValueError, TypeError):
            return None
        item = operand.dtype.itemsize
        if any(s % item for s in view.strides) or (ndim and not bcast[-1] and view.strides[-1] != item):
            return None
        strides += [0 if bcast[d] else view.strides[d] // item for d in range(ndim)]
    return strides + list(kernel.out_strides)


def _threaded(kernel) -> bool:
    rows = kernel.loop_shape[0] if kernel.ndim else 1
    return kernel.size >= threads.MIN_ELEMENTS and kernel.split_rows and min(threads.count(), rows) >= 2


def _matrix(operand: Operand, rows: int, cols: int) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a matrix operand's last two dims for a row-major
    BLAS call, or None where neither dim has unit stride."""
    item = operand.dtype.itemsize
    sr, sc = operand.strides[-2], operand.strides[-1]
    if sr % item or sc % item:
        return None
    sr, sc = sr // item, sc // item
    if (sc == 1 or cols == 1) and (rows == 1 or sr >= max(1, cols)):
        return _NO_TRANS, sr if rows > 1 else max(1, cols)
    if (sr == 1 or rows == 1) and (cols == 1 or sc >= max(1, rows)):
        return _TRANS, sc if cols > 1 else max(1, rows)
    return None


def _sum_rows(op: NativeOp) -> tuple[int, int, bool] | None:
    """(rows, cols, trailing) of a sum over the leading (or trailing) dims of a C-contiguous input
    viewed as a matrix, or None."""
    x = op.ins[0]
    dims = tuple(sorted(d % len(x.shape) for d in op.params["dims"])) if x.shape else ()
    if not dims or not x.c_contiguous or math.prod(x.shape) < BLAS_SUM_MIN_ELEMENTS:
        return None  # (smaller sums are numpy's, pairwise, in eager runs: the same here)
    if dims == tuple(range(len(dims))):
        k, trailing = len(dims), False
    elif dims == tuple(range(len(x.shape) - len(dims), len(x.shape))):
        k, trailing = len(x.shape) - len(dims), True
    else:
        return None
    rows, cols = math.prod(x.shape[:k]), math.prod(x.shape[k:])
    return (rows, cols, trailing) if rows and cols else None


def enabled() -> bool:
    """Whether compiled programs run their steps in native runs (JITORCH_NATIVE_RUNS=0: one by one)."""
    return os.environ.get("JITORCH_NATIVE_RUNS", "1") != "0"


def runs_natively(op: NativeOp) -> bool:
    if not enabled():
        return False
    if op.kind == "kernel":
        return not _threaded(op.kernel) and kernel_strides(op) is not None
    dtype = op.outs[0].dtype
    if blas() is None or dtype not in _LLVM_TYPE or any(o.dtype != dtype for o in op.ins):
        return False
    if op.kind == "sum":
        return _sum_rows(op) is not None
    if op.kind != "matmul":
        return False
    a, b = op.ins
    if len(a.shape) < 2 or len(b.shape) < 2 or not op.outs[0].c_contiguous:
        return False
    m, k = a.shape[-2:]
    n = b.shape[-1]
    return min(m, n, k) >= 1 and _matrix(a, m, k) is not None and _matrix(b, k, n) is not None


# ---------------------------------------------------------------------------------------------
# the generated function


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.globals: list[str] = []
        self.statics: list[int] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"%{stem}{self.count}"

    def static(self, address: int) -> str:
        """An SSA name holding the function or buffer at `address` (loaded from the statics table)."""
        index = len(self.statics)
        self.statics.append(address)
        slot, value = self.name("sp"), self.name("s")
        self.lines += [f"  {slot} = getelementptr ptr, ptr %statics, i64 {index}",
                       f"  {value} = load ptr, ptr {slot}"]
        return value

    def constant_array(self, values: list[int]) -> str:
        name = f"@c{len(self.globals)}"
        body = ", ".join(f"i64 {v}" for v in values) or ""
        self.globals.append(f"{name} = private unnamed_addr constant [{max(len(values), 1)} x i64] "
                            f"[{body or 'i64 0'}]")
        return name

    def pointer(self, root: int, offset) -> str:
        """The address `offset` bytes (an int or an SSA i64) past root `root`'s first element."""
        if offset == 0:
            return f"%root{root}"
        name = self.name("p")
        self.lines.append(f"  {name} = getelementptr i8, ptr %root{root}, i64 {offset}")
        return name


def _kernel_call(w: _Writer, op: NativeOp) -> None:
    kernel = op.kernel
    fn = w.static(ctypes.cast(kernel.fn, ctypes.c_void_p).value)
    shape = w.constant_array([*kernel.loop_shape, 0])  # (the last: the first element's index, 0)
    strides = w.constant_array(kernel_strides(op))
    operands = op.ins + op.outs
    args = w.name("args")
    w.lines.append(f"  {args} = alloca [{len(operands)} x ptr]")
    for j, operand in enumerate(operands):
        slot = w.name("a")
        w.lines += [f"  {slot} = getelementptr [{len(operands)} x ptr], ptr {args}, i64 0, i64 {j}",
                    f"  store ptr {w.pointer(operand.root, operand.offset)}, ptr {slot}"]
    w.lines.append(f"  call void {fn}(ptr {shape}, ptr {strides}, ptr {args})")


def _batch_offset(w: _Writer, index: str, batch: tuple[int, ...], strides: tuple[int, ...], base: int) -> str:
    """The SSA i64 `base` + the byte offset of flat batch index `index` (row-major over `batch`)."""
    total, inner = str(base), 1
    for size, stride in zip(reversed(batch), reversed(strides)):
        if size > 1 and stride:
            q, r, term, acc = (w.name(s) for s in ("q", "r", "t", "o"))
            w.lines += [f"  {q} = udiv i64 {index}, {inner}", f"  {r} = urem i64 {q}, {size}",
                        f"  {term} = mul i64 {r}, {stride}", f"  {acc} = add i64 {total}, {term}"]
            total = acc
        inner *= size
    return total


def _matmul_call(w: _Writer, op: NativeOp, library: dict) -> None:
    a, b = op.ins
    out = op.outs[0]
    t = _LLVM_TYPE[out.dtype]
    width = library["int"]
    m, k = a.shape[-2:]
    n = b.shape[-1]
    (ta, lda), (tb, ldb) = _matrix(a, m, k), _matrix(b, k, n)
    batch = out.shape[:-2]
    count = math.prod(batch)
    item = out.dtype.itemsize

    def aligned(operand: Operand) -> tuple[int, ...]:  # its batch strides against out's batch dims
        dims = list(zip(operand.shape[:-2], operand.strides[:-2]))
        dims = [(1, 0)] * (len(batch) - len(dims)) + dims
        return tuple(0 if size == 1 else stride for size, stride in dims)

    gemm = w.static(library["sgemm" if t == "float" else "dgemm"])
    one, zero = ("1.0", "0.0")
    label = w.name("mm")[1:]
    if count > 1:
        w.lines += [f"  br label %{label}_pre", f"{label}_pre:", f"  br label %{label}_loop", f"{label}_loop:",
                    f"  %{label}_i = phi i64 [0, %{label}_pre], [%{label}_next, %{label}_loop]"]
        index = f"%{label}_i"
        pa = w.pointer(a.root, _batch_offset(w, index, batch, aligned(a), a.offset))
        pb = w.pointer(b.root, _batch_offset(w, index, batch, aligned(b), b.offset))
        pc = w.pointer(out.root, _batch_offset(w, index, batch, tuple(m * n * item * math.prod(batch[d + 1:])
                                                                         for d in range(len(batch))), out.offset))
    else:
        pa, pb, pc = w.pointer(a.root, a.offset), w.pointer(b.root, b.offset), w.pointer(out.root, out.offset)
    w.lines.append(f"  call void {gemm}(i32 {_ROW_MAJOR}, i32 {ta}, i32 {tb}, {width} {m}, {width} {n}, {width} {k}, "
                   f"{t} {one}, ptr {pa}, {width} {lda}, ptr {pb}, {width} {ldb}, {t} {zero}, ptr {pc}, {width} {n})")
    if count > 1:
        w.lines += [f"  %{label}_next = add i64 %{label}_i, 1", f"  %{label}_done = icmp eq i64 %{label}_next, {count}",
                    f"  br i1 %{label}_done, label %{label}_exit, label %{label}_loop", f"{label}_exit:"]


def _sum_call(w: _Writer, op: NativeOp, library: dict) -> None:
    x, out = op.ins[0], op.outs[0]
    t = _LLVM_TYPE[out.dtype]
    width = library["int"]
    rows, cols, trailing = _sum_rows(op)
    ones = _ones_vector(out.dtype, cols if trailing else rows)
    gemv = w.static(library["sgemv" if t == "float" else "dgemv"])
    vector = w.static(address(ones))
    w.lines.append(f"  call void {gemv}(i32 {_ROW_MAJOR}, i32 {_NO_TRANS if trailing else _TRANS}, {width} {rows}, "
                   f"{width} {cols}, {t} 1.0, ptr {w.pointer(x.root, x.offset)}, {width} {cols}, ptr {vector}, "
                   f"{width} 1, {t} 0.0, ptr {w.pointer(out.root, out.offset)}, {width} 1)")


def render(ops: list[NativeOp], n_roots: int) -> tuple[str, list[int]]:
    """The LLVM IR text of a function running `ops`, and the addresses its statics table holds."""
    w = _Writer()
    library = blas()
    w.lines += [f"  %root{r} = load ptr, ptr {_root_slot(r)}" for r in range(n_roots)]
    w.lines[:0] = [f"  %rp{r} = getelementptr ptr, ptr %roots, i64 {r}" for r in range(n_roots)]
    for op in ops:
        if op.kind == "kernel":
            _kernel_call(w, op)
        elif op.kind == "matmul":
            _matmul_call(w, op, library)
        else:
            _sum_call(w, op, library)
    text = ("define void @\"kernel\"(ptr noalias %roots, ptr noalias %statics) {\nentry:\n"
            + "\n".join(w.lines) + "\n  ret void\n}\n" + "\n".join(w.globals) + "\n")
    return text, w.statics


def _root_slot(r: int) -> str:
    return f"%rp{r}"


_RUN_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class CompiledRun:
    """The machine code of a run, called with its root buffers: `run(buffers)`."""

    def __init__(self, address: int, text: str, statics: list[int], n_roots: int) -> None:
        self.fn = _RUN_TYPE(address)
        self.statics = (ctypes.c_void_p * max(len(statics), 1))(*statics)
        self.table_type = ctypes.c_void_p * max(n_roots, 1)
        self.source = text

    def __call__(self, buffers: list) -> None:
        self.fn(self.table_type(*[address(b) for b in buffers]), self.statics)


def compile_runs(runs: list[tuple[list[NativeOp], int]]) -> list[CompiledRun]:
    """All of a program's runs in one go (one lock and one finalization of the engine; without
    LLVM's IR passes, which calls in a row do not need)."""
    rendered = [render(ops, n_roots) for ops, n_roots in runs]
    digests = [jit.digest_of(text) for text, _ in rendered]
    addresses = jit.compile_texts(dict(zip(digests, (text for text, _ in rendered))), optimize=False)
    return [CompiledRun(addresses[digest], text, statics, n_roots)
            for digest, (text, statics), (_, n_roots) in zip(digests, rendered, runs)]
