"""CUDA graphs for the cuda backend: recording a compiled program's device work once and replaying
it (`jitorch.compile(fn, mode="reduce-overhead")`; the program side is `jitorch.compiler.cudagraphs`).

`record(work)` runs `work()` with CuPy's current stream a side stream of its own (one per device
and thread) in capture mode, so the kernels `work` queues are recorded into a `cupy.cuda.Graph`
instead of run, and every CuPy allocation `work` makes comes from a memory pool private to that
graph (`cupy.cuda.using_allocator(pool.malloc)`): each replay writes those same buffers, so the pool
lives as long as the graph and nothing else allocates from it. The capture mode is CuPy's default,
relaxed (`cudaStreamCaptureModeRelaxed`): the pool may grow with cudaMalloc while capturing.

What a capture must not contain, read from CuPy's source and docs (`Stream.begin_capture`: "during
the stream capture, synchronous device-host transfers are not allowed", CuPy raising on them):
- a host read of a device value (`int(array)`, `.get()`): it synchronizes the capturing stream,
  which CUDA refuses; the side stream is a blocking one, so a synchronous copy on the legacy
  default stream is refused too (an implicit dependency on a capturing stream), not run outside
  the graph with the capture-time value;
- a host array turned into a device one inside the capture: CuPy fills a 0-d array with the value
  as a kernel argument and copies others from a pinned staging buffer that it frees afterwards,
  so a replay would repeat the capture-time value or read freed memory. A captured program's
  inputs are therefore all device buffers, refreshed before each replay (`compiler.cudagraphs`);
- CuPy's own cuBLAS calls (matmul, einsum, tensordot): CuPy raises NotImplementedError "calling
  cuBLAS API during stream capture is currently unsupported". The backend's matmul goes through
  nvmath-python's cuBLAS bindings while capturing (`blas.py`), which record into the graph.

`node_refusal(node)` names the eager kernels known to break those rules before anything is
tried; anything else that fails while capturing raises, and `record` ends the capture, drops what
it recorded and raises `CaptureError` with the reason (the stream is usable again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .. import CaptureError, DeviceGraph
from . import blas

cupy = None  # imported by the first capture: the rules here are read on machines without a GPU

# eager kernels a captured graph must not run, and why
REFUSED = {
    "random": "its eager kernel reads the random seed and counter on the host (a fused kernel reads them on the "
              "device); a replay would draw the captured call's numbers again",
    "einsum": "its eager kernel is CuPy's einsum, whose cuBLAS calls CuPy refuses during stream capture",
}


def node_refusal(node) -> str | None:
    """Why the eager kernel of IR node `node` must not run inside a CUDA graph (None where it may)."""
    why = REFUSED.get(node.op)
    if why is None and node.op == "matmul" and not blas.available():
        why = ("while capturing, products run on cuBLAS through nvmath-python (CuPy refuses cuBLAS calls then), "
               "which is not installed: pip install nvmath-python")
    return None if why is None else f"`{node.op}` ({why})"


class CUDAGraph(DeviceGraph):
    """A captured `cupy.cuda.Graph` and the memory pool its buffers came from."""

    __slots__ = ("graph", "pool")

    def __init__(self, graph, pool) -> None:
        self.graph, self.pool = graph, pool

    def launch(self) -> None:
        """Queue one replay on CuPy's current stream (after the work already queued there)."""
        self.graph.launch(cupy.cuda.get_current_stream())


_state = threading.local()  # .streams: device -> this thread's capture stream; .capturing: a flag


def capturing() -> bool:
    """Whether this thread is inside `record` (the backend's matmul then goes through nvmath)."""
    return getattr(_state, "capturing", False)


def _capture_stream():
    streams = getattr(_state, "streams", None)
    if streams is None:
        streams = _state.streams = {}
    device = cupy.cuda.runtime.getDevice()
    stream = streams.get(device)
    if stream is None:
        # blocking (non_blocking=False): a stray synchronous copy on the legacy default stream
        # during the capture then fails the capture instead of running outside the graph
        stream = streams[device] = cupy.cuda.Stream(non_blocking=False)
    return stream


def record(work: Callable[[], object]) -> tuple[CUDAGraph, object]:
    """Record the device work `work()` queues into a CUDA graph (see the module docstring)."""
    global cupy
    if cupy is None:
        import cupy
    if blas.available():
        blas.prepare()  # the cuBLAS handle and workspace are made outside the graph, and outlive it
    stream = _capture_stream()
    pool = cupy.cuda.MemoryPool()
    with cupy.cuda.using_allocator(pool.malloc), stream:
        stream.begin_capture(cupy.cuda.runtime.streamCaptureModeRelaxed)
        _state.capturing = True
        try:
            result = work()
        except BaseException as err:
            _state.capturing = False
            _discard(stream)
            if isinstance(err, Exception):
                raise CaptureError(f"{type(err).__name__}: {err}") from err
            raise
        _state.capturing = False
        try:
            graph = stream.end_capture()
        except Exception as err:
            _discard(stream)
            raise CaptureError(f"ending the capture failed ({type(err).__name__}: {err})") from err
    return CUDAGraph(graph, pool), result


def _discard(stream) -> None:
    """End a failed capture, dropping what it recorded, so the stream works again."""
    try:
        if stream.is_capturing():
            stream.end_capture()  # an invalidated capture ends with an error: nothing to keep either way
    except Exception:  # noqa: BLE001 - the capture's own error is the one to report
        pass
