"""The worker threads that run bands of a fused CPU kernel side by side.

A compiled kernel is called through ctypes, which releases the GIL for the call, so plain Python
threads run its bands in parallel. The workers are persistent (a thread start costs more than a
small kernel) and wait on a queue, without spinning: between kernels the cores stay free for
BLAS's own threads.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

# Below this many bytes moved (every full-size operand read or written once), handing a band to
# another thread costs more than it saves. Fused kernels are mostly memory-bound: on the 2-core
# development machine a second thread did not speed up the char_lm step's 1-4 MB kernels
# (`python bench/compile.py --kernel-threads 1` against the default), so only larger ones are
# split; counted in bytes, not elements, since a kernel reading and writing several arrays (an
# optimizer's update: four in, three out) moves that much more per element.
MIN_BYTES = 4 << 20


def worth_splitting(elements: int, bytes_per_element: int) -> bool:
    """Whether a kernel over `elements` that moves `bytes_per_element` for each runs on several threads."""
    return _count > 1 and elements * bytes_per_element >= MIN_BYTES

_count = os.cpu_count() or 1
_workers: list[_Worker] = []


class _Worker:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="jitorch-cpu-worker", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job()
                self.done.put(None)
            except BaseException as err:  # handed back to the caller, which raises it
                self.done.put(err)


def count() -> int:
    """How many threads a fused CPU kernel may use."""
    return _count


def set_num_threads(threads: int) -> None:
    """Use `threads` threads for jitorch's fused CPU kernels (numpy's BLAS keeps its own setting)."""
    global _count
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {threads!r}")
    _count = threads


_busy = threading.Lock()  # the workers serve one caller at a time


def run_all(calls: list[Callable[[], object]]) -> None:
    """Run the calls at once: the first on this thread, the others on workers; wait for all. A
    caller that finds the workers busy (another Python thread is running a kernel) runs its calls
    itself, one after another."""
    if not _busy.acquire(blocking=False):
        for call in calls:
            call()
        return
    try:
        _run_on_workers(calls)
    finally:
        _busy.release()


def _run_on_workers(calls: list[Callable[[], object]]) -> None:
    while len(_workers) < len(calls) - 1:
        _workers.append(_Worker())
    for worker, call in zip(_workers, calls[1:]):
        worker.jobs.put(call)
    error = None
    try:
        calls[0]()
    finally:
        for worker, _ in zip(_workers, calls[1:]):
            result = worker.done.get()
            error = error or result
    if error is not None:
        raise error


def _after_fork() -> None:
    global _busy
    _workers.clear()  # a forked child has none of the parent's threads
    _busy = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
