"""How the CPU backend gets memory: numpy buffers from the C heap, kept in the process once freed;
compiled programs' large buffers from slabs kept here (`empty`, below).

Every eager op returns a fresh numpy buffer, and a training step frees and re-allocates the same
few activation-sized buffers (hundreds of KB to tens of MB) over and over. glibc serves blocks that
large from mmap and gives them back to the kernel on free (or trims the heap top), so each new
buffer is fresh pages, and the first write to each 4 KB page is a page fault: a GEMM writing a
4 MB output spends more time faulting than multiplying. PyTorch avoids this with its allocator;
`tune_malloc()` asks glibc to behave like a caching allocator: serve blocks up to 32 MB from the
heap and keep freed memory there. The cost is the usual one of a caching allocator: the process
keeps its peak heap size. It changes a process-wide setting, so a library must not do it on its
own: it is opt-in, by calling it or with `JITORCH_MALLOC_TUNING=1` (read at import). Compiled
programs need it less: their fused kernels write into buffers planned once per program
(`jitorch.runtime.executor`). `python bench/train.py --malloc-tuning` measures eager and compiled training
with it (`bench/results/train_cpu_malloc_tuning.md`, beside `train_cpu.md` without).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading

import numpy as np

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # a C int: give the heap top back only past 2 GB of free memory

malloc_tuned = False


def tune_malloc_if_requested() -> bool:
    """`tune_malloc()` when the environment asks for it (`JITORCH_MALLOC_TUNING=1`)."""
    return tune_malloc() if os.environ.get("JITORCH_MALLOC_TUNING", "0") == "1" else malloc_tuned


def tune_malloc() -> bool:
    """Apply the heap settings above; returns whether they took effect (glibc on Linux only)."""
    global malloc_tuned
    if malloc_tuned or not sys.platform.startswith("linux"):
        return malloc_tuned
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # both, or the dynamic mmap threshold (glibc's own remedy) is switched off for nothing
    malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return malloc_tuned


# ---------------------------------------------------------------------------------------------
# large buffers: kept for reuse once freed
#
# From 32 MB on glibc always maps fresh pages (its mmap threshold goes no higher), so every large
# output a compiled call returns faults in page by page as its kernel writes it, a fault per 4 KB:
# for a memory-bound kernel that is a cost of the order of the pass itself (`python bench/fusion.py`
# measures such cases). Compiled programs' buffers of that size come from here instead: a slab whose
# pages were faulted in once, handed out as a numpy array whose base is a lease; when the last array
# over it goes, the lease gives the slab back. PyTorch's CPU allocator has no such cache.

LARGE_BYTES = _MMAP_THRESHOLD_MAX  # smaller blocks glibc keeps on its heap and reuses by itself
_SLAB_STEP = 2 * 1024 * 1024  # slab sizes are rounded up to this, so near sizes share slabs
KEEP_BYTES = 1024 * 1024 * 1024  # at most this much freed slab memory is kept
_ALIGN = 64  # bytes: a cache line
_free: dict[int, list[np.ndarray]] = {}  # slab bytes -> free slabs
_kept = [0]  # bytes in `_free`
_lock = threading.RLock()  # (re-entered when a collection inside the lock frees a lease)
_PLAIN = frozenset(np.dtype(t).str for t in (np.bool_, np.int8, np.uint8, np.int16, np.int32, np.int64,
                                             np.float16, np.float32, np.float64, np.complex64, np.complex128))


class Lease:
    """A slab on loan to the one array made over it (its base, so that the array owns its memory
    as far as `CPUBackend.owns_buffer` is concerned; views of it have it as their base); returns
    the slab to `_free` when that array and every view of it are gone."""

    __slots__ = ("slab", "__array_interface__")

    def __init__(self, slab: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.slab = slab
        address = slab.ctypes.data
        address += -address % _ALIGN  # (a vector load never straddles two cache lines)
        self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "version": 3, "data": (address, False)}

    def __del__(self) -> None:
        slab = self.slab
        try:
            with _lock:
                if _kept[0] + slab.nbytes <= KEEP_BYTES:
                    _free.setdefault(slab.nbytes, []).append(slab)
                    _kept[0] += slab.nbytes
        except Exception:  # (at interpreter exit this module may be gone already: nothing to keep)
            pass


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """np.empty(shape, dtype), from a kept slab when it is large (see above)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < LARGE_BYTES or dtype.str not in _PLAIN:  # (a type the interface can't name: ml_dtypes')
        return np.empty(shape, dtype)
    size = -(-nbytes // _SLAB_STEP) * _SLAB_STEP
    with _lock:
        found = _free.get(size + _ALIGN)
        slab = found.pop() if found else None
        if slab is not None:
            _kept[0] -= slab.nbytes
    if slab is None:
        slab = np.empty(size + _ALIGN, np.uint8)
    return np.asarray(Lease(slab, tuple(shape), dtype))


def forget_kept() -> None:
    """Let go of every kept slab (tests; a process that wants its memory back)."""
    with _lock:
        _free.clear()
        _kept[0] = 0
