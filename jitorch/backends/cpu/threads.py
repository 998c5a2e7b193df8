"""The worker threads that run bands of a fused CPU kernel side by side.

A band is a call of a compiled kernel, `void kernel(i64* shape, i64* strides, ptr* data)`, on some
of its rows. The caller runs the first band itself and hands the others to persistent workers
through a slot of shared memory each: the kernel's address and its three arguments, and a state
word the two sides change with atomic operations (`_POOL_IR`). A worker that has just run a band
spins on its slot for a while (`SPIN_SECONDS`, in native code: no GIL held), so the next kernel of a
step, microseconds later, starts on it at once; past that it sleeps on a semaphore, and the next
band wakes it. Through Python queues alone a hand-off cost about 40 microseconds on the 2-core
machines (a thread's wake-up each time), which a kernel of a few MB did not win back; spinning, a
few. A spinning worker keeps a core busy only while kernels keep coming; then the core is free
again, for BLAS's own threads among others.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

# Below this many bytes moved (every full-size operand read or written once), handing a band to
# another thread costs more than it saves; counted in bytes, not elements, since a kernel reading
# and writing several arrays (an optimizer's update: four in, three out) moves that much more per element.
MIN_BYTES = 2 << 20
SPIN_SECONDS = 100e-6  # how long a worker waits for the next band before it sleeps

_count = os.cpu_count() or 1

# a slot's state word
_IDLE, _READY, _DONE, _EXIT, _ASLEEP = 0, 1, 2, 3, 4
_SLOT_WORDS = 8  # the state, the kernel, its three arguments; a cache line each, so that slots share none

# serve(slot, ticks): run each band posted to the slot, until `ticks` of the cycle counter pass with
# none, then mark the slot asleep and return _ASLEEP (or _EXIT when told to stop). post(slot, kernel,
# shape, strides, data): hand a band over, returning the state it found (_ASLEEP: the worker needs
# waking). wait(slot): spin until the band is done, then mark the slot idle.
_POOL_IR = """
declare void @llvm.x86.sse2.pause()
declare i64 @llvm.readcyclecounter()

define i64 @ticks() {
  %t = call i64 @llvm.readcyclecounter()
  ret i64 %t
}

define i64 @serve(ptr %slot, i64 %ticks) {
entry:
  %start = call i64 @llvm.readcyclecounter()
  br label %look
look:
  %since = phi i64 [%start, %entry], [%since, %spin], [%now, %ran], [%now.t, %timeout]
  %state = load atomic i64, ptr %slot acquire, align 8
  switch i64 %state, label %spin [i64 1, label %run
                                  i64 3, label %leave]
run:
  %pf = getelementptr i64, ptr %slot, i64 1
  %pa = getelementptr i64, ptr %slot, i64 2
  %pb = getelementptr i64, ptr %slot, i64 3
  %pc = getelementptr i64, ptr %slot, i64 4
  %f = load ptr, ptr %pf, align 8
  %a = load ptr, ptr %pa, align 8
  %b = load ptr, ptr %pb, align 8
  %c = load ptr, ptr %pc, align 8
  call void %f(ptr %a, ptr %b, ptr %c)
  store atomic i64 2, ptr %slot release, align 8
  br label %ran
ran:
  %now = call i64 @llvm.readcyclecounter()
  br label %look
spin:
  call void @llvm.x86.sse2.pause()
  %t = call i64 @llvm.readcyclecounter()
  %waited = sub i64 %t, %since
  %more = icmp ult i64 %waited, %ticks
  br i1 %more, label %look, label %timeout
timeout:
  %now.t = call i64 @llvm.readcyclecounter()
  %swap = cmpxchg ptr %slot, i64 0, i64 4 acq_rel acquire, align 8
  %asleep = extractvalue { i64, i1 } %swap, 1
  br i1 %asleep, label %sleep, label %look
sleep:
  ret i64 4
leave:
  ret i64 3
}

define i64 @post(ptr %slot, ptr %f, ptr %a, ptr %b, ptr %c) {
  %pf = getelementptr i64, ptr %slot, i64 1
  %pa = getelementptr i64, ptr %slot, i64 2
  %pb = getelementptr i64, ptr %slot, i64 3
  %pc = getelementptr i64, ptr %slot, i64 4
  store ptr %f, ptr %pf, align 8
  store ptr %a, ptr %pa, align 8
  store ptr %b, ptr %pb, align 8
  store ptr %c, ptr %pc, align 8
  %old = atomicrmw xchg ptr %slot, i64 1 acq_rel, align 8
  ret i64 %old
}

define void @wait(ptr %slot) {
entry:
  br label %look
look:
  %state = load atomic i64, ptr %slot acquire, align 8
  %done = icmp eq i64 %state, 2
  br i1 %done, label %out, label %spin
spin:
  call void @llvm.x86.sse2.pause()
  br label %look
out:
  store atomic i64 0, ptr %slot release, align 8
  ret void
}
"""

class _Pool(NamedTuple):
    serve: Callable
    post: Callable
    wait: Callable
    ticks: Callable  # the cycle counter
    engine: object  # (keeps the machine code alive)


_native: _Pool | None = None


def _pool() -> _Pool:
    """The pool's native functions, compiled on first use."""
    global _native
    if _native is None:
        import llvmlite.binding as llvm

        from . import jit

        module = llvm.parse_assembly(_POOL_IR)
        module.triple = jit._machine().triple
        engine = llvm.create_mcjit_compiler(module, jit._machine())
        engine.finalize_object()
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        address = engine.get_function_address
        _native = _Pool(ctypes.CFUNCTYPE(i64, p, i64)(address("serve")),
                        ctypes.CFUNCTYPE(i64, p, p, p, p, p)(address("post")),
                        ctypes.CFUNCTYPE(None, p)(address("wait")), ctypes.CFUNCTYPE(i64)(address("ticks")), engine)
    return _native


@functools.cache
def _spin_ticks() -> int:
    """The cycle counter's ticks in SPIN_SECONDS (its rate measured once, over 2 ms)."""
    ticks = _pool().ticks
    t0, c0 = time.perf_counter(), ticks()
    while time.perf_counter() - t0 < 2e-3:
        pass
    return max(1, int((ticks() - c0) / (time.perf_counter() - t0) * SPIN_SECONDS))


def worth_splitting(elements: int, bytes_per_element: int) -> bool:
    """Whether a kernel over `elements` that moves `bytes_per_element` for each runs on several threads."""
    return _count > 1 and elements * bytes_per_element >= MIN_BYTES


class _Worker:
    def __init__(self, ticks: int) -> None:
        self.slot = (ctypes.c_int64 * _SLOT_WORDS)()
        self.address = ctypes.addressof(self.slot)
        self.wake = threading.Semaphore(0)
        self.ticks = ticks
        threading.Thread(target=self._loop, name="jitorch-cpu-worker", daemon=True).start()

    def _loop(self) -> None:
        serve = _pool().serve
        while serve(self.address, self.ticks) != _EXIT:
            self.wake.acquire()  # asleep: the next band (or the stop) wakes it


_workers: list[_Worker] = []


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


def run_bands(kernel, bands: list[tuple]) -> None:
    """Call `kernel` (a ctypes function of three pointers) on each band's (shape, strides, data) ctypes
    arrays at once: the first on this thread, the others on workers; return when all are done. A
    caller that finds the workers busy (another Python thread is running a kernel) runs its bands
    itself, one after another."""
    if not _busy.acquire(blocking=False):
        for band in bands:
            kernel(*band)
        return
    try:
        post, wait = _pool().post, _pool().wait
        while len(_workers) < len(bands) - 1:
            _workers.append(_Worker(_spin_ticks()))
        function = ctypes.cast(kernel, ctypes.c_void_p).value
        for worker, band in zip(_workers, bands[1:]):
            if post(worker.address, function, *(ctypes.addressof(a) for a in band)) == _ASLEEP:
                worker.wake.release()
        try:
            kernel(*bands[0])
        finally:
            for worker, _ in zip(_workers, bands[1:]):
                wait(worker.address)
    finally:
        _busy.release()


def _after_fork() -> None:
    global _busy
    _workers.clear()  # a forked child has none of the parent's threads
    _busy = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
