"""Native runs on the CPU: several steps of a compiled program as one call.

`jitorch.runtime.native_runs` hands over a run of steps whose operands' layouts are fixed when the
program is built (a root buffer, a byte offset, strides). Each becomes a row of int64 fields in the
run's table (`_Program`), and one fixed LLVM function (`_walker_ir`, compiled once per process and
cached on disk like a kernel) walks a table, calling in turn
- the fused kernels (their machine code, by address, with the shape, strides and pointer arguments
  that `launch.CompiledKernel.run` would build on every call, built once here),
- BLAS's `?gemm` for products (a loop over the batch, each matrix's transpose flag and leading
  dimension from its strides) and `?gemv` with a vector of ones for sums over leading or trailing
  dims, from the OpenBLAS library that numpy itself loaded, so products run on the same code and
  threads as numpy's,
- block copies of strided values into contiguous buffers (a reshape numpy would copy).
A call passes the table and the root buffers' addresses; no code is generated per program.
Kernels large enough to be split across the backend's threads stay Python steps.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import math
import os
from collections.abc import Callable

import numpy as np

from ...ir.layouts import view_layout
from .. import NativeOp, Operand
from . import jit, threads
from .helpers import BLAS_SUM_MIN_ELEMENTS, _ones_vector, address

_BLAS_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})  # (sgemm, dgemm; sgemv, dgemv)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enum values


# ---------------------------------------------------------------------------------------------
# BLAS: numpy's own OpenBLAS, found by its file next to numpy (wheels bundle it)


@functools.cache
def _openblas() -> list[ctypes.CDLL]:
    """The OpenBLAS libraries numpy's wheel bundles (loaded already: numpy uses them)."""
    root = os.path.dirname(os.path.dirname(np.__file__))
    found = []
    for path in sorted(glob.glob(os.path.join(root, "numpy.libs", "*openblas*"))
                       + glob.glob(os.path.join(os.path.dirname(np.__file__), ".dylibs", "*openblas*"))):
        try:
            found.append(ctypes.CDLL(path))
        except OSError:
            continue
    return found


def set_blas_threads(threads: int) -> bool:
    """Have numpy's OpenBLAS use `threads` threads (what OPENBLAS_NUM_THREADS sets at start-up);
    False where its library is not found. Its threads busy-wait a while after each product: where
    many requests run at once (a server), one thread per product leaves the cores to the others."""
    for library in _openblas():
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            setter = getattr(library, name, None)
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                setter(threads)
                return True
    return False


@functools.cache
def blas() -> dict | None:
    """{"int": "i64" | "i32", "sgemm": address, ...} of the CBLAS library numpy uses, or None."""
    for library in _openblas():
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


def kernel_strides(op: NativeOp) -> list[int] | None:
    """The strides argument (in elements) of a fused kernel's call on `op`'s operands, as the
    launcher would make it, or None where the launcher would copy an input first."""
    kernel = op.kernel
    ndim = kernel.ndim
    strides: list[int] = []
    for operand, view_shape, bcast in zip(op.ins, kernel.in_views, kernel.broadcast):
        # (the launcher views each input in the kernel's loop shape)
        found = view_layout(operand.shape, operand.strides, operand.dtype, "reshape", (("shape", view_shape),))
        if found is None:
            return None
        view, item = found[2], operand.dtype.itemsize
        if any(s % item for s in view) or (ndim and not bcast[-1] and view[-1] != item):
            return None
        strides += [0 if bcast[d] else view[d] // item for d in range(ndim)]
    return strides + list(kernel.out_strides)


def _threaded(kernel) -> bool:
    rows = kernel.loop_shape[0] if kernel.ndim else 1
    return kernel.split_rows and min(threads.count(), rows) >= 2 and threads.worth_splitting(
        kernel.size, kernel.bytes_per_element)


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


def _copy_rows(src: Operand) -> tuple[int, list[tuple[int, int]]] | None:
    """(bytes of the source's innermost contiguous block, the (size, byte stride) of each dim
    around it, outermost first) for a copy in row-major order, or None where that block is too
    short for copying it whole to beat numpy's strided copy."""
    inner, k = src.dtype.itemsize, len(src.shape)
    while k and (src.shape[k - 1] == 1 or src.strides[k - 1] == inner):
        inner *= src.shape[k - 1]
        k -= 1
    if inner < MIN_COPY_BYTES:
        return None
    return inner, [(n, st) for n, st in zip(src.shape[:k], src.strides[:k]) if n != 1]


def runs_natively(op: NativeOp) -> bool:
    if not enabled():
        return False
    if op.kind == "kernel":
        return (len(op.ins) + len(op.outs) <= MAX_ARGS and not _threaded(op.kernel)
                and kernel_strides(op) is not None)
    if op.kind == "copy":
        (src,), (dst,) = op.ins, op.outs
        return (src.dtype == dst.dtype and dst.c_contiguous and math.prod(src.shape) == math.prod(dst.shape) > 0
                and _copy_rows(src) is not None)
    dtype = op.outs[0].dtype
    if blas() is None or dtype not in _BLAS_DTYPES or any(o.dtype != dtype for o in op.ins):
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
# the program: each op as a row of int64 fields that one fixed function walks

KERNEL, GEMM_F32, GEMM_F64, GEMV_F32, GEMV_F64, COPY = 1, 2, 3, 4, 5, 6  # opcodes (0 ends a program)
MAX_ARGS = 256  # pointers a kernel call may take (the walker's argument array)
MIN_COPY_BYTES = 64  # a strided copy whose contiguous blocks are shorter stays numpy's


class _Program:
    """A run's ops encoded for the walker, with the arrays its fields point to kept alive."""

    def __init__(self) -> None:
        self.fields: list[int] = []
        self.kept: list[np.ndarray] = []

    def array(self, values: list[int]) -> int:
        """The address of a new int64 array holding `values` (kept as long as the program)."""
        array = np.array(values or [0], dtype=np.int64)
        self.kept.append(array)
        return address(array)

    def kernel(self, op: NativeOp) -> None:
        kernel, operands = op.kernel, op.ins + op.outs
        self.fields += [KERNEL, ctypes.cast(kernel.fn, ctypes.c_void_p).value,
                        self.array([*kernel.loop_shape, 0]),  # (the last: the first element's index, 0)
                        self.array(kernel_strides(op)), len(operands)]
        for operand in operands:
            self.fields += [operand.root, operand.offset]

    def matmul(self, op: NativeOp, library: dict) -> None:
        a, b = op.ins
        out = op.outs[0]
        m, k = a.shape[-2:]
        n = b.shape[-1]
        (ta, lda), (tb, ldb) = _matrix(a, m, k), _matrix(b, k, n)
        batch = out.shape[:-2]
        double = out.dtype == np.float64
        self.fields += [GEMM_F64 if double else GEMM_F32, library["dgemm" if double else "sgemm"],
                        ta, tb, m, n, k, lda, ldb, n, a.root, b.root, out.root, math.prod(batch)]
        # each matrix's byte offset in its root, batch index by batch index (row-major), a, b, out
        index = np.indices(batch, dtype=np.int64).reshape(len(batch), -1).T if batch else np.zeros((1, 0), np.int64)
        offsets = [o.offset + index @ np.array(_batch_strides(o, batch), dtype=np.int64) for o in (a, b, out)]
        self.fields += np.stack(offsets, axis=1).ravel().tolist()

    def copy(self, op: NativeOp) -> None:
        """A strided value into a C-contiguous buffer, block by contiguous block (a reshape numpy
        would copy): [COPY, count, block bytes, src root, src offset, dst root, dst offset, dims,
        (size, src stride) per dim around the block]."""
        (src,), (dst,) = op.ins, op.outs
        inner, dims = _copy_rows(src)
        self.fields += [COPY, math.prod(n for n, _ in dims), inner, src.root, src.offset, dst.root, dst.offset,
                        len(dims)]
        for size, stride in dims:
            self.fields += [size, stride]

    def sum(self, op: NativeOp, library: dict) -> None:
        x, out = op.ins[0], op.outs[0]
        rows, cols, trailing = _sum_rows(op)
        double = out.dtype == np.float64
        ones = _ones_vector(out.dtype, cols if trailing else rows)
        self.fields += [GEMV_F64 if double else GEMV_F32, library["dgemv" if double else "sgemv"],
                        _NO_TRANS if trailing else _TRANS, rows, cols, cols, x.root, x.offset, address(ones),
                        out.root, out.offset]


def _batch_strides(operand: Operand, batch: tuple[int, ...]) -> tuple[int, ...]:
    """An operand's byte strides along the result's batch dims (0 where it is broadcast)."""
    dims = list(zip(operand.shape[:-2], operand.strides[:-2]))
    dims = [(1, 0)] * (len(batch) - len(dims)) + dims
    return tuple(0 if size == 1 else stride for size, stride in dims)


def _walker_ir(width: str) -> str:
    """The LLVM IR of `walk(roots, program)`: runs a program's ops in turn (`_Program` says each
    row's fields); `width`: BLAS's integer type (i64 for an ILP64 build)."""

    def field(name: str, k, kind: str = "i64") -> list[str]:
        lines = [f"  %{name}.ix = add i64 %pc, {k}", f"  %{name}.p = getelementptr i64, ptr %program, i64 %{name}.ix",
                 f"  %{name}.v = load i64, ptr %{name}.p"]
        if kind == "ptr":
            lines.append(f"  %{name} = inttoptr i64 %{name}.v to ptr")
        elif kind == "i32":
            lines.append(f"  %{name} = trunc i64 %{name}.v to i32")
        elif kind == "i32w" and width == "i32":
            lines.append(f"  %{name} = trunc i64 %{name}.v to i32")
        else:
            lines.append(f"  %{name} = add i64 %{name}.v, 0")
        return lines

    def root(name: str, root_field: str, offset: str) -> list[str]:
        return [f"  %{name}.rp = getelementptr ptr, ptr %roots, i64 {root_field}",
                f"  %{name}.r = load ptr, ptr %{name}.rp",
                f"  %{name} = getelementptr i8, ptr %{name}.r, i64 {offset}"]

    w = width
    lines = ['define void @"kernel"(ptr noalias %roots, ptr noalias %program) {', "entry:",
             f"  %args = alloca [{MAX_ARGS} x ptr]", "  br label %dispatch", "dispatch:",
             "  %pc = phi i64 [0, %entry], [%pc.k, %kcall], [%pc.g32, %g32.end], [%pc.g64, %g64.end], "
             "[%pc.v32, %gemv32], [%pc.v64, %gemv64], [%pc.c, %cend]",
             "  %op.p = getelementptr i64, ptr %program, i64 %pc", "  %op = load i64, ptr %op.p",
             f"  switch i64 %op, label %exit [ i64 {KERNEL}, label %kernel i64 {GEMM_F32}, label %gemm32 "
             f"i64 {GEMM_F64}, label %gemm64 i64 {GEMV_F32}, label %gemv32 i64 {GEMV_F64}, label %gemv64 "
             f"i64 {COPY}, label %copy ]",
             "exit:", "  ret void", "kernel:"]
    lines += field("kfn", 1, "ptr") + field("kshape", 2, "ptr") + field("kstrides", 3, "ptr") + field("kn", 4)
    lines += ["  br label %kargs", "kargs:", "  %j = phi i64 [0, %kernel], [%j.next, %kbody]",
              "  %j.more = icmp ult i64 %j, %kn", "  br i1 %j.more, label %kbody, label %kcall", "kbody:",
              "  %j.two = mul i64 %j, 2", "  %j.at = add i64 %j.two, 5"]
    lines += field("kroot", "%j.at") + ["  %j.at1 = add i64 %j.at, 1"] + field("koff", "%j.at1")
    lines += root("karg", "%kroot", "%koff")
    lines += [f"  %kslot = getelementptr [{MAX_ARGS} x ptr], ptr %args, i64 0, i64 %j", "  store ptr %karg, ptr %kslot",
              "  %j.next = add i64 %j, 1", "  br label %kargs", "kcall:",
              "  call void %kfn(ptr %kshape, ptr %kstrides, ptr %args)",
              "  %kn.two = mul i64 %kn, 2", "  %kn.fields = add i64 %kn.two, 5", "  %pc.k = add i64 %pc, %kn.fields",
              "  br label %dispatch"]
    for bits, t in (("32", "float"), ("64", "double")):
        g = f"g{bits}"
        lines.append(f"gemm{bits}:")
        lines += field(f"{g}.fn", 1, "ptr") + field(f"{g}.ta", 2, "i32") + field(f"{g}.tb", 3, "i32")
        for k, name in enumerate(("m", "n", "k", "lda", "ldb", "ldc"), start=4):
            lines += field(f"{g}.{name}", k, "i32w")
        lines += field(f"{g}.ra", 10) + field(f"{g}.rb", 11) + field(f"{g}.rc", 12) + field(f"{g}.nb", 13)
        lines += [f"  br label %{g}.loop", f"{g}.loop:",
                  f"  %{g}.b = phi i64 [0, %gemm{bits}], [%{g}.b.next, %{g}.body]",
                  f"  %{g}.more = icmp ult i64 %{g}.b, %{g}.nb", f"  br i1 %{g}.more, label %{g}.body, label %{g}.end",
                  f"{g}.body:", f"  %{g}.b3 = mul i64 %{g}.b, 3", f"  %{g}.at = add i64 %{g}.b3, 14",
                  f"  %{g}.at1 = add i64 %{g}.at, 1", f"  %{g}.at2 = add i64 %{g}.at, 2"]
        lines += field(f"{g}.oa", f"%{g}.at") + field(f"{g}.ob", f"%{g}.at1") + field(f"{g}.oc", f"%{g}.at2")
        lines += root(f"{g}.pa", f"%{g}.ra", f"%{g}.oa") + root(f"{g}.pb", f"%{g}.rb", f"%{g}.ob")
        lines += root(f"{g}.pc", f"%{g}.rc", f"%{g}.oc")
        lines += [f"  call void %{g}.fn(i32 {_ROW_MAJOR}, i32 %{g}.ta, i32 %{g}.tb, {w} %{g}.m, {w} %{g}.n, "
                  f"{w} %{g}.k, "
                  f"{t} 1.0, ptr %{g}.pa, {w} %{g}.lda, ptr %{g}.pb, {w} %{g}.ldb, {t} 0.0, ptr %{g}.pc, {w} %{g}.ldc)",
                  f"  %{g}.b.next = add i64 %{g}.b, 1", f"  br label %{g}.loop", f"{g}.end:",
                  f"  %{g}.nb3 = mul i64 %{g}.nb, 3", f"  %{g}.fields = add i64 %{g}.nb3, 14",
                  f"  %pc.{g} = add i64 %pc, %{g}.fields", "  br label %dispatch"]
        v = f"v{bits}"
        lines.append(f"gemv{bits}:")
        lines += field(f"{v}.fn", 1, "ptr") + field(f"{v}.trans", 2, "i32")
        lines += field(f"{v}.m", 3, "i32w") + field(f"{v}.n", 4, "i32w") + field(f"{v}.lda", 5, "i32w")
        lines += field(f"{v}.rx", 6) + field(f"{v}.ox", 7) + field(f"{v}.ones", 8, "ptr")
        lines += field(f"{v}.ry", 9) + field(f"{v}.oy", 10)
        lines += root(f"{v}.px", f"%{v}.rx", f"%{v}.ox") + root(f"{v}.py", f"%{v}.ry", f"%{v}.oy")
        lines += [f"  call void %{v}.fn(i32 {_ROW_MAJOR}, i32 %{v}.trans, {w} %{v}.m, {w} %{v}.n, {t} 1.0, "
                  f"ptr %{v}.px, {w} %{v}.lda, ptr %{v}.ones, {w} 1, {t} 0.0, ptr %{v}.py, {w} 1)",
                  f"  %pc.{v} = add i64 %pc, 11", "  br label %dispatch"]
    # copy: for each block i (row-major over the dims around it), its source offset from i's digits
    lines.append("copy:")
    lines += field("c.count", 1) + field("c.inner", 2) + field("c.rs", 3) + field("c.os", 4)
    lines += field("c.rd", 5) + field("c.od", 6) + field("c.dims", 7)
    lines += root("c.src", "%c.rs", "%c.os") + root("c.dst", "%c.rd", "%c.od")
    lines += ["  %c.dims2 = mul i64 %c.dims, 2", "  %c.last = add i64 %c.dims2, 6",  # (the last dim's size field)
              "  br label %cloop", "cloop:", "  %ci = phi i64 [0, %copy], [%ci.next, %cdone]",
              "  %ci.more = icmp ult i64 %ci, %c.count", "  br i1 %ci.more, label %cdims, label %cend",
              "cdims:", "  %cd = phi i64 [0, %cloop], [%cd.next, %cdim]",
              "  %crem = phi i64 [%ci, %cloop], [%crem.next, %cdim]",
              "  %coff = phi i64 [0, %cloop], [%coff.next, %cdim]",
              "  %cd.more = icmp ult i64 %cd, %c.dims", "  br i1 %cd.more, label %cdim, label %cdone", "cdim:",
              "  %cd.two = mul i64 %cd, 2", "  %cd.at = sub i64 %c.last, %cd.two"]  # (innermost dim first)
    lines += field("c.size", "%cd.at") + ["  %cd.at1 = add i64 %cd.at, 1"] + field("c.stride", "%cd.at1")
    lines += ["  %cdigit = urem i64 %crem, %c.size", "  %crem.next = udiv i64 %crem, %c.size",
              "  %cterm = mul i64 %cdigit, %c.stride", "  %coff.next = add i64 %coff, %cterm",
              "  %cd.next = add i64 %cd, 1", "  br label %cdims", "cdone:",
              "  %cfrom = getelementptr i8, ptr %c.src, i64 %coff", "  %cto.off = mul i64 %ci, %c.inner",
              "  %cto = getelementptr i8, ptr %c.dst, i64 %cto.off",
              "  call void @llvm.memcpy.p0.p0.i64(ptr %cto, ptr %cfrom, i64 %c.inner, i1 false)",
              "  %ci.next = add i64 %ci, 1", "  br label %cloop", "cend:",
              "  %c.fields = add i64 %c.dims2, 8", "  %pc.c = add i64 %pc, %c.fields", "  br label %dispatch"]
    lines.append("}")
    lines.append("declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)")
    return "\n".join(lines) + "\n"


_WALK_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


@functools.cache
def _walker() -> Callable:
    """The walker's machine code (compiled once per process; its IR names no address, so the disk
    cache keeps it like a kernel's)."""
    library = blas()
    text = _walker_ir(library["int"] if library else "i64")
    digest = jit.digest_of(text)
    return _WALK_TYPE(jit.compile_texts({digest: text})[digest])


class CompiledRun:
    """A run's program, called with its root buffers: `run(buffers)`."""

    def __init__(self, ops: list[NativeOp], n_roots: int, fixed: tuple = ()) -> None:
        program, library = _Program(), blas()
        for op in ops:
            if op.kind == "kernel":
                program.kernel(op)
            elif op.kind == "matmul":
                program.matmul(op, library)
            elif op.kind == "copy":
                program.copy(op)
            else:
                program.sum(op, library)
        self.fields = np.array(program.fields + [0], dtype=np.int64)
        self.kept = program.kept
        self.program = address(self.fields)
        self.table_type = ctypes.c_void_p * max(n_roots, 1)
        self.fixed, self.fixed_addresses = fixed, tuple(address(b) for b in fixed)  # (the last roots)
        self.walk = _walker()
        self.ops = ops

    @property
    def source(self) -> str:
        """What it runs, one line per op (logs, tests)."""
        return "\n".join(map(_describe, self.ops))

    def __call__(self, buffers: list) -> None:
        self.walk(self.table_type(*[address(b) for b in buffers], *self.fixed_addresses), self.program)


def _describe(op: NativeOp) -> str:
    if op.kind == "kernel":
        return f"{op.kernel.name}: {len(op.ins)} inputs, {len(op.outs)} outputs"
    if op.kind == "copy":
        inner, dims = _copy_rows(op.ins[0])
        return f"copy {op.ins[0].dtype} {op.ins[0].shape} strided {op.ins[0].strides}: {inner}-byte blocks"
    if op.kind == "sum":
        rows, cols, trailing = _sum_rows(op)
        flag = "N" if trailing else "T"
        return f"gemv {op.outs[0].dtype} {flag} {rows}x{cols} with ones: sum over dims {op.params['dims']}"
    a, b = op.ins
    m, k = a.shape[-2:]
    flags = "".join("N" if _matrix(o, r, c)[0] == _NO_TRANS else "T" for o, r, c in ((a, m, k), (b, k, b.shape[-1])))
    return f"gemm {op.outs[0].dtype} {flags} {m}x{b.shape[-1]}x{k}, {math.prod(op.outs[0].shape[:-2])} in a batch"


def compile_runs(runs: list[tuple[list[NativeOp], int, tuple]]) -> list[CompiledRun]:
    """A program per run, for the one walker: no code is generated per program."""
    return [CompiledRun(ops, n_roots, fixed) for ops, n_roots, fixed in runs]
