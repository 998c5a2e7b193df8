"""How the CPU backend gets memory: numpy buffers from the C heap, kept in the process once freed.

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
import os
import sys

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
