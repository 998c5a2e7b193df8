"""How the CPU backend gets memory: numpy buffers from the C heap, kept in the process once freed.

Every eager op returns a fresh numpy buffer, and a training step frees and re-allocates the same
few activation-sized buffers (hundreds of KB to tens of MB) over and over. glibc serves blocks that
large from mmap and gives them back to the kernel on free (or trims the heap top), so each new
buffer is fresh pages, and the first write to each 4 KB page is a page fault: a GEMM writing a
4 MB output spends more time faulting than multiplying. PyTorch avoids this with its allocator;
jitorch asks glibc to behave like a caching allocator: serve blocks up to 32 MB from the heap and
keep freed memory there. The cost is the usual one of a caching allocator: the process keeps its
peak heap size. `JITORCH_MALLOC_TUNING=0` (read at import) leaves glibc's defaults alone; running
`bench/train.py` with and without it measures the difference.
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


def tune_malloc() -> bool:
    """Apply the heap settings above; returns whether they took effect (glibc on Linux only)."""
    global malloc_tuned
    if malloc_tuned or os.environ.get("JITORCH_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
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
