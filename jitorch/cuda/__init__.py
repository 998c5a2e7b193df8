"""`jitorch.cuda`: PyTorch's `torch.cuda` API over jitorch's CUDA backend.

    import jitorch as jt
    device = "cuda" if jt.cuda.is_available() else "cpu"
    start, end = jt.cuda.Event(enable_timing=True), jt.cuda.Event(enable_timing=True)
    start.record(); y = model(x); end.record(); end.synchronize()
    print(start.elapsed_time(end), "ms,", jt.cuda.max_memory_allocated(), "bytes at the peak")

The device work goes through a runtime (`_CupyRuntime`: CuPy's runtime API, streams, events and memory
pool), started on first use. CuPy is imported only then, so `import jitorch` never needs it.

Where there is no CUDA device (no GPU, no driver, no CuPy) `is_available()` is False and never raises;
as in PyTorch, `device_count()` is 0, `manual_seed`/`manual_seed_all` are safe, `empty_cache()` does
nothing and the memory counters read 0; the other functions raise an error that says why and how to
install the CUDA extra. jitorch has one random generator for every device (counter-based Philox), so
`jitorch.cuda.manual_seed(s)` is `jitorch.manual_seed(s)`: CPU and GPU draw the same numbers for a seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .. import backends
from .. import random as _random
from ..device import Device, current_index, set_current_index, unavailable_error

__all__ = ["is_available", "device_count", "current_device", "set_device", "device", "synchronize",
           "manual_seed", "manual_seed_all", "Stream", "Event", "stream", "current_stream", "default_stream",
           "memory_allocated", "max_memory_allocated", "memory_reserved", "reset_peak_memory_stats",
           "empty_cache", "get_device_name"]


# ---------------------------------------------------------------------------------------------
# availability and devices


def is_available() -> bool:
    """Whether jitorch can use a CUDA device here (a GPU, its driver and CuPy). Never raises."""
    try:
        return backends.has_backend("cuda")
    except Exception:  # noqa: BLE001 - a broken CUDA install means "not available", as in PyTorch
        return False


def device_count() -> int:
    """The number of CUDA devices (0 where CUDA is not available, as in PyTorch)."""
    if not is_available():
        return 0
    return _runtime().device_count()


def current_device() -> int:
    """The index of the current CUDA device: where `device="cuda"` puts a tensor."""
    _runtime()
    return current_index("cuda")


def set_device(device: int | str | Device) -> None:
    """Make `device` the current CUDA device (a negative index does nothing, as in PyTorch)."""
    index = _index(device)
    if index >= 0:
        _select(_runtime(), index)


class device:
    """Context manager that makes `device` the current CUDA device inside it, as `torch.cuda.device`:

        with jitorch.cuda.device(1):
            x = jitorch.zeros(3, device="cuda")  # on cuda:1
    """

    def __init__(self, device: int | str | Device | None) -> None:
        self.index = -1 if device is None else _index(device)
        self.previous = -1

    def __enter__(self) -> None:
        if self.index < 0:
            return
        runtime = _runtime()
        self.previous = current_index("cuda")
        if self.index != self.previous:
            _select(runtime, self.index)

    def __exit__(self, *exc) -> None:
        if self.previous >= 0 and self.previous != self.index:
            _select(_runtime(), self.previous)


def get_device_name(device: int | str | Device | None = None) -> str:
    """The name of a CUDA device ("NVIDIA H100 80GB HBM3"); the current one by default."""
    runtime = _runtime()
    index = _checked(runtime, _index(device))
    return runtime.device_name(index)


def synchronize(device: int | str | Device | None = None) -> None:
    """Wait until all work queued on a CUDA device (the current one by default) has finished."""
    runtime = _runtime()
    runtime.synchronize(_checked(runtime, _index(device)))
    backends.backend_for("cuda").finish_checks()  # (index checks queued on the GPU raise now)


def placing(index: int):
    """A context in which a tensor's buffer is made on cuda:`index` (a move, `from_dlpack`): that
    device is current inside it. The first CUDA tensor starts the runtime, as in PyTorch, so the
    memory peak counts from there."""
    if _active is None and _holds_cupy_arrays():
        _runtime()
    if index == current_index("cuda"):
        return contextlib.nullcontext()
    return device(index)


# ---------------------------------------------------------------------------------------------
# random numbers


def manual_seed(seed: int) -> None:
    """Seed jitorch's random generator, which every device shares: the same as `jitorch.manual_seed`.
    Safe where CUDA is not available, as in PyTorch."""
    _random.manual_seed(int(seed))


def manual_seed_all(seed: int) -> None:
    """Seed the random generator of every device; jitorch has one for all of them (`manual_seed`)."""
    _random.manual_seed(int(seed))


# ---------------------------------------------------------------------------------------------
# streams and events


class Stream:
    """A CUDA stream: a queue of device work, as `torch.cuda.Stream(device=None, priority=0)`.
    Work queued inside `with jitorch.cuda.stream(s):` goes to `s`."""

    def __init__(self, device: int | str | Device | None = None, priority: int = 0, *, _native=None) -> None:
        runtime = _runtime()
        index = _checked(runtime, _index(device))
        self.device = Device("cuda", index)
        if _native is None:
            with placing(index):
                _native = runtime.new_stream(priority)
        self._native = _native

    def synchronize(self) -> None:
        """Wait until all work queued on this stream has finished."""
        self._native.synchronize()

    def query(self) -> bool:
        """Whether all work queued on this stream has finished."""
        return bool(self._native.done)

    def wait_event(self, event: Event) -> None:
        """Make work queued on this stream from now on wait for `event` (the host does not wait)."""
        self._native.wait_event(event._native)

    def wait_stream(self, stream: Stream) -> None:
        """Make work queued on this stream from now on wait for the work queued on `stream` so far."""
        self.wait_event(stream.record_event())

    def record_event(self, event: Event | None = None) -> Event:
        """Record `event` (a new one by default) on this stream; returns it."""
        event = Event() if event is None else event
        event.record(self)
        return event

    @property
    def cuda_stream(self) -> int:
        """The raw `cudaStream_t` handle, as an int."""
        return int(self._native.ptr)

    def __eq__(self, other) -> bool:
        return isinstance(other, Stream) and self.cuda_stream == other.cuda_stream and self.device is other.device

    def __hash__(self) -> int:
        return hash((self.cuda_stream, self.device))

    def __repr__(self) -> str:
        return f"<jitorch.cuda.Stream device={self.device} cuda_stream={self.cuda_stream:#x}>"


class Event:
    """A CUDA event, as `torch.cuda.Event(enable_timing=False, blocking=False, interprocess=False)`:
    a marker in a stream, to wait on or (with `enable_timing=True`) to time work between two of them."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self._native = _runtime().new_event(enable_timing, blocking, interprocess)
        self.enable_timing = enable_timing

    def record(self, stream: Stream | None = None) -> None:
        """Record this event on `stream` (the current stream by default)."""
        self._native.record((stream or current_stream())._native)

    def wait(self, stream: Stream | None = None) -> None:
        """Make work queued on `stream` (the current one by default) from now on wait for this event."""
        (stream or current_stream()).wait_event(self)

    def query(self) -> bool:
        """Whether the work recorded before this event has finished."""
        return bool(self._native.done)

    def synchronize(self) -> None:
        """Wait until the work recorded before this event has finished."""
        self._native.synchronize()

    def elapsed_time(self, end_event: Event) -> float:
        """Milliseconds between this event and `end_event` (both recorded, made with enable_timing=True)."""
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        return float(_runtime().elapsed_time(self._native, end_event._native))

    def __repr__(self) -> str:
        return f"<jitorch.cuda.Event enable_timing={self.enable_timing}>"


def current_stream(device: int | str | Device | None = None) -> Stream:
    """The stream that work on `device` (the current device by default) is queued on now."""
    runtime = _runtime()
    index = _checked(runtime, _index(device))
    with placing(index):
        return Stream(index, _native=runtime.current_stream())


def default_stream(device: int | str | Device | None = None) -> Stream:
    """The default (null) stream of `device`."""
    runtime = _runtime()
    index = _checked(runtime, _index(device))
    return Stream(index, _native=runtime.default_stream())


@contextlib.contextmanager
def stream(stream: Stream | None) -> Iterator[None]:
    """Queue the work inside the `with` block on `stream` (None: no change), as `torch.cuda.stream`."""
    if stream is None:
        yield
        return
    runtime = _runtime()
    with placing(stream.device.index), runtime.using_stream(stream._native):
        yield


# ---------------------------------------------------------------------------------------------
# memory


def _memory_stat(name: str, device) -> int:
    """One of the runtime's memory counters for `device` (0 where CUDA is not available, as in PyTorch)."""
    if not is_available():
        return 0
    runtime = _runtime()
    return getattr(runtime, name)(_checked(runtime, _index(device)))


def memory_allocated(device: int | str | Device | None = None) -> int:
    """Bytes of device memory that tensors hold now (0 where CUDA is not available, as in PyTorch)."""
    return _memory_stat("memory_allocated", device)


def max_memory_allocated(device: int | str | Device | None = None) -> int:
    """The most bytes tensors held at once since the start, or since `reset_peak_memory_stats()`."""
    return _memory_stat("max_memory_allocated", device)


def memory_reserved(device: int | str | Device | None = None) -> int:
    """Bytes of device memory the caching allocator holds: in use, or kept for reuse."""
    return _memory_stat("memory_reserved", device)


def reset_peak_memory_stats(device: int | str | Device | None = None) -> None:
    """Start `max_memory_allocated` again from what tensors hold now."""
    runtime = _runtime()
    runtime.reset_peak_memory_stats(_checked(runtime, _index(device)))


def empty_cache() -> None:
    """Give the device memory that the caching allocator keeps for reuse back to the driver (tensors
    keep theirs). Does nothing where CUDA is not available, as in PyTorch."""
    if is_available():
        _runtime().empty_cache()


# ---------------------------------------------------------------------------------------------
# the runtime


class _CupyRuntime:
    """The device work of `jitorch.cuda`, done with CuPy: its runtime API, streams, events and the
    memory pool that the CUDA backend's arrays come from (`memory_pool` of the backend if it names
    one, else CuPy's default pool).

    CuPy counts the bytes in use but keeps no peak, so the runtime wraps CuPy's allocator and reads the
    pool's count after each allocation (a peak can only happen then). A test's stand-in runtime
    provides the same methods."""

    def __init__(self) -> None:
        try:
            import cupy
        except ImportError as err:
            raise RuntimeError(f"jitorch.cuda needs CuPy, which failed to import ({err}). "
                               'Install the CUDA extra: pip install -e ".[cuda]"') from None
        self.cupy = cupy
        self.pool = getattr(backends.backend_for("cuda"), "memory_pool", None) or cupy.get_default_memory_pool()
        self.peak: dict[int, int] = {}
        self._count: int | None = None
        self._track_peak(cupy.cuda.get_allocator())

    def _track_peak(self, allocate) -> None:
        used, peak = self.pool.used_bytes, self.peak

        def malloc(size: int):
            memory = allocate(size)
            n = used()  # of the current device, where this allocation was made
            if n > peak.get(memory.device_id, 0):
                peak[memory.device_id] = n
            return memory

        self.cupy.cuda.set_allocator(malloc)

    def device_count(self) -> int:
        if self._count is None:
            self._count = self.cupy.cuda.runtime.getDeviceCount()
        return self._count

    def set_device(self, index: int) -> None:
        self.cupy.cuda.runtime.setDevice(index)

    def synchronize(self, index: int) -> None:
        self.cupy.cuda.Device(index).synchronize()

    def device_name(self, index: int) -> str:
        name = self.cupy.cuda.runtime.getDeviceProperties(index)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def memory_allocated(self, index: int) -> int:
        with self.cupy.cuda.Device(index):
            return self.pool.used_bytes()

    def memory_reserved(self, index: int) -> int:
        with self.cupy.cuda.Device(index):
            return self.pool.total_bytes()

    def max_memory_allocated(self, index: int) -> int:
        return max(self.peak.get(index, 0), self.memory_allocated(index))

    def reset_peak_memory_stats(self, index: int) -> None:
        self.peak[index] = self.memory_allocated(index)

    def empty_cache(self) -> None:
        for index in range(self.device_count()):
            with self.cupy.cuda.Device(index):
                self.pool.free_all_blocks()

    def new_stream(self, priority: int):
        # PyTorch's streams do not synchronize with the legacy default stream: neither do these
        if priority:
            return self.cupy.cuda.Stream(non_blocking=True, priority=priority)
        return self.cupy.cuda.Stream(non_blocking=True)

    def current_stream(self):
        return self.cupy.cuda.get_current_stream()

    def default_stream(self):
        return self.cupy.cuda.Stream.null

    def using_stream(self, native):
        return native  # a CuPy stream is a context manager that makes itself current

    def new_event(self, enable_timing: bool, blocking: bool, interprocess: bool):
        return self.cupy.cuda.Event(block=blocking, disable_timing=not enable_timing, interprocess=interprocess)

    def elapsed_time(self, start, end) -> float:
        return self.cupy.cuda.get_elapsed_time(start, end)


_active = None  # the runtime, once started


def _runtime():
    """The CUDA runtime, started on first use; where CUDA is not available, the error saying why."""
    global _active
    if not is_available():
        raise unavailable_error("cuda")
    if _active is None:
        _active = _CupyRuntime()
    return _active


def _holds_cupy_arrays() -> bool:
    """Whether the CUDA backend's buffers are CuPy arrays, which the CuPy runtime serves (a test's
    stand-in backend holds numpy arrays and brings a runtime of its own)."""
    buffer_type = getattr(backends.backend_for("cuda"), "buffer_type", None)
    return getattr(buffer_type, "__module__", "").startswith("cupy")


def _index(device: int | str | Device | None) -> int:
    """A CUDA device argument as an index: None is the current device, as in PyTorch."""
    if device is None:
        return current_index("cuda")
    if isinstance(device, int) and not isinstance(device, bool):
        return device
    dev = Device(device)
    if dev.type != "cuda":
        raise ValueError(f"Expected a cuda device, but got: {dev}")
    return current_index("cuda") if dev.index is None else dev.index


def _checked(runtime, index: int) -> int:
    """`index`, if this machine has that CUDA device; PyTorch's error if not."""
    count = runtime.device_count()
    if not 0 <= index < count:
        raise RuntimeError(f"CUDA error: invalid device ordinal (asked for cuda:{index}; this machine has "
                           f"{count} CUDA device{'s' if count != 1 else ''})")
    return index


def _select(runtime, index: int) -> None:
    runtime.set_device(_checked(runtime, index))
    set_current_index("cuda", index)


def __getattr__(name: str):
    """`jitorch.cuda.amp` on first use (PyTorch's `torch.cuda.amp`, read as an attribute by old code):
    imported lazily, since it builds on `jitorch.amp`, which needs this module first."""
    if name == "amp":
        import importlib

        return importlib.import_module(".amp", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
