"""Checks on indices that run on the GPU and raise at the next wait for it.

An op whose indices must be in range (a class target, a gather) would have to wait for the GPU to
read them on the host: every such op would stall the queue (about 0.3 ms per step of a small
model, measured with `python bench/train.py --device cuda --profile`). PyTorch checks them in its
kernels instead (device-side asserts) and the error surfaces at the next synchronization. Here one
reduction kernel per check writes whether any index is out of range to a device flag; the flags wait
in `pending` and are read at the next wait for the device that hands values to the user (`.item()`,
`.cpu()`, `.tolist()`, printing: `Backend.finish_checks` after the copy; `jitorch.cuda.synchronize()`),
which raises the first failed check's error, with the offending value read from its indices then.
(Internal copies to the host, as a trace makes of its constants, raise nothing.) Every `MAX_PENDING`
checks the flags are read at once, so a loop that never waits keeps no more than that many alive.

While a CUDA graph is captured nothing is checked: the kernel would only be recorded, its flag
never written (compiled programs, the only ones captured, check their inputs when traced).
"""

from __future__ import annotations

from collections.abc import Callable

from .gpu_check import cupy
from .graphs import capturing

MAX_PENDING = 64
pending: list[tuple[object, object, int, int, int | None, Callable[[int | None], Exception]]] = []

_out_of_range = cupy.ReductionKernel(
    "T x, int64 lo, int64 hi, int64 skip, bool skipping", "bool bad",
    "(x < lo || x >= hi) && !(skipping && x == skip)", "a || b", "bad = a", "false", "jitorch_out_of_range")


def check_indices(index, lo: int, hi: int, error: Callable[[int | None], Exception],
                  skip: int | None = None) -> None:
    """Queue the check that every element of `index` but `skip` is in [lo, hi); `error(value)`
    is raised at the next wait if one is not."""
    if index.size == 0 or capturing():
        return
    flag = _out_of_range(index, lo, hi, 0 if skip is None else skip, skip is not None)
    pending.append((flag, index, lo, hi, skip, error))
    if len(pending) >= MAX_PENDING:
        finish()


def finish() -> None:
    """Read every pending flag (one copy) and raise the first failed check's error."""
    checks = pending[:]
    pending.clear()
    flags = cupy.asnumpy(cupy.stack([flag for flag, *_ in checks]))
    for failed, (_, index, lo, hi, skip, error) in zip(flags, checks):
        if failed:
            values = cupy.asnumpy(index).ravel()
            out = (values < lo) | (values >= hi)
            if skip is not None:
                out &= values != skip
            raise error(int(values[out][0]) if out.any() else None)  # (None: written over since)
