"""Where a run's time goes, kernel by kernel: `jitorch.profiler.profile`, shaped like `torch.profiler`.

    with jitorch.profiler.profile() as prof:
        step(x, y)
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=10))
    prof.export_chrome_trace("step.json")  # chrome://tracing or https://ui.perfetto.dev

Recorded: every eager primitive's kernel (named after the primitive: `matmul`, `attention`) and
every step of a compiled program (a fused kernel by its name, `fused_add_relu_64x256`, an unfused
node by its primitive), each with the host time its call took and the time it took on its device.
On the CPU the two are the same: a kernel runs as it is called. On the GPU a call returns once its
work is queued; the device time comes from a pair of CUDA events around it on the current stream,
read when the profile ends (the only wait it adds), so the host runs ahead as it does unprofiled.
Marking costs a few microseconds per kernel: profile a step, not a benchmark.

Nothing is recorded while a function is being traced (its first calls under `jitorch.compile`);
profile a call that runs a compiled program.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import backends
from .runtime import executor


class ProfilerActivity(enum.Enum):
    """What `profile(activities=...)` takes, as in PyTorch; jitorch records both either way."""

    CPU = "cpu"
    CUDA = "cuda"


@dataclass
class KernelEvent:
    """One kernel call: `name`, the device type it ran on, when it started on the host and on its
    device (µs since the profile began, by each one's clock), its host time and its device time (µs)."""

    name: str
    device_type: str
    start_us: float
    device_start_us: float
    cpu_time: float
    device_time: float


@dataclass
class KernelAverage:
    """The calls of one kernel name on one device type, summed (µs), as PyTorch's key_averages rows."""

    key: str
    device_type: str
    count: int = 0
    cpu_time_total: float = 0.0
    device_time_total: float = 0.0

    @property
    def cuda_time_total(self) -> float:  # PyTorch's older name
        return self.device_time_total if self.device_type == "cuda" else 0.0


class KernelAverages(list):
    """`profile.key_averages()`: a list of `KernelAverage`, with `table()`."""

    def table(self, sort_by: str = "device_time_total", row_limit: int = 100) -> str:
        """The rows, most `sort_by` first (`device_time_total`, `cuda_time_total`, `cpu_time_total`,
        `count`), at most `row_limit` of them, with each one's share of the total device time."""
        key = {"self_cuda_time_total": "cuda_time_total", "self_cpu_time_total": "cpu_time_total",
               "self_device_time_total": "device_time_total"}.get(sort_by, sort_by)
        if key not in ("device_time_total", "cuda_time_total", "cpu_time_total", "count"):
            raise ValueError(f"sort_by={sort_by!r}: choose device_time_total, cuda_time_total, cpu_time_total or "
                             "count")
        rows = sorted(self, key=lambda r: -getattr(r, key))[:row_limit]
        total = sum(r.device_time_total for r in self) or 1.0
        width = max([len("name"), *(len(r.key) for r in rows)])
        lines = [f"{'name':<{width}}  device  calls  host total (us)  device total (us)  device %",
                 "-" * (width + 68)]
        lines += [f"{r.key:<{width}}  {r.device_type:<6}  {r.count:5d}  {r.cpu_time_total:15.1f}  "
                  f"{r.device_time_total:17.1f}  {100 * r.device_time_total / total:7.1f}%" for r in rows]
        lines.append(f"{len(self)} kernel names, {sum(r.count for r in self)} calls: "
                     f"{sum(r.cpu_time_total for r in self):.1f} us of host time in kernel calls, "
                     f"{sum(r.device_time_total for r in self):.1f} us on the devices")
        return "\n".join(lines)


class profile:  # noqa: N801 - PyTorch's name
    """Record every kernel jitorch runs inside the `with` block (see the module docstring).
    `activities`, `record_shapes`, `profile_memory` and `with_stack` are taken for PyTorch's sake and
    change nothing."""

    def __init__(self, activities=None, record_shapes: bool = False, profile_memory: bool = False,
                 with_stack: bool = False) -> None:
        self._pending: list[tuple] = []  # (name, backend, host start, host seconds, device marks)
        self._events: list[KernelEvent] | None = None
        self._wrapped: list[tuple[dict, dict]] = []
        self._bases: dict[int, object] = {}  # id(backend) -> its device's mark at the start
        self._began = 0.0
        self._depth = 0  # kernel calls open: a kernel a compiled step calls is not counted again

    # --- recording ------------------------------------------------------------------------------
    def __enter__(self) -> profile:
        if executor.step_observer is not None:
            raise RuntimeError("jitorch.profiler.profile: another profile is already recording")
        self._began = time.perf_counter()
        for backend in backends._BACKENDS.values():  # (a backend first used inside the block is not seen)
            self._bases[id(backend)] = backend.time_mark()
            originals = dict(backend.kernels)
            backend.kernels.update({name: self._timed(name, backend, kernel) for name, kernel in originals.items()})
            self._wrapped.append((backend.kernels, originals))
        executor.step_observer = self
        return self

    def __exit__(self, *exc) -> None:
        executor.step_observer = None
        self._depth = 0
        for kernels, originals in self._wrapped:
            kernels.update(originals)
        self._wrapped.clear()
        for backend in {id(b): b for _, b, *_ in self._pending}.values():
            backend.finish_work()
        self._events = [KernelEvent(name, backend.device_type, (start - self._began) * 1e6,
                                    backend.elapsed_ms(self._bases[id(backend)], marks[0]) * 1e3, seconds * 1e6,
                                    backend.elapsed_ms(*marks) * 1e3)
                        for name, backend, start, seconds, marks in self._pending]
        self._pending.clear()

    def _timed(self, name: str, backend, kernel: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self._depth or executor.step_observer is not self:  # (inside a step, or after the profile)
                return kernel(*args, **kwargs)
            began = self.begin(backend)
            try:
                return kernel(*args, **kwargs)
            finally:
                self.end(began, name)

        return timed

    def begin(self, backend) -> tuple:
        """Marks before a kernel call on `backend` (what the executor calls around each step)."""
        self._depth += 1
        return backend, time.perf_counter(), backend.time_mark()

    def end(self, began: tuple, name: str) -> None:
        self._depth -= 1
        backend, start, mark = began
        seconds = time.perf_counter() - start
        self._pending.append((name, backend, start, seconds, (mark, backend.time_mark())))

    # --- reading --------------------------------------------------------------------------------
    def events(self) -> list[KernelEvent]:
        """Every kernel call recorded, in order (after the `with` block)."""
        if self._events is None:
            raise RuntimeError("jitorch.profiler.profile: read the results after the `with` block ends")
        return self._events

    def key_averages(self) -> KernelAverages:
        """The calls summed per kernel name and device type, in order of first call."""
        rows: dict[tuple[str, str], KernelAverage] = {}
        for e in self.events():
            row = rows.get((e.name, e.device_type))
            if row is None:
                row = rows[e.name, e.device_type] = KernelAverage(e.name, e.device_type)
            row.count += 1
            row.cpu_time_total += e.cpu_time
            row.device_time_total += e.device_time
        return KernelAverages(rows.values())

    def export_chrome_trace(self, path: str) -> None:
        """Write the calls as a Chrome trace (chrome://tracing, Perfetto): a row of host calls, and
        a row per device type of when each ran there (each clock from the profile's start)."""
        trace = []
        for e in self.events():
            trace.append({"name": e.name, "ph": "X", "ts": e.start_us, "dur": e.cpu_time, "pid": 0, "tid": "host",
                          "args": {"device": e.device_type, "device_us": e.device_time}})
            if e.device_type != "cpu":  # (a CPU kernel's device time is its host time)
                trace.append({"name": e.name, "ph": "X", "ts": e.device_start_us, "dur": e.device_time, "pid": 0,
                              "tid": e.device_type})
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"traceEvents": trace, "displayTimeUnit": "ms"}, f)
