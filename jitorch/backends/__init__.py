"""Backends: what each kind of device brings, behind one small interface.

A backend is one package that registers itself for a device type (`register`) and provides:
- buffers: the device's array type, with `empty`, `copy`, `copy_into`, `to_numpy` and
  `from_numpy` (host <-> device);
- eager kernels: `kernels[prim_name](*arrays, **params) -> array`, one per primitive it supports
  (an input may be a CPU scalar, a 0-d numpy array, as PyTorch lets CPU scalars join any device);
- capability answers for fusion: `can_fuse(node)` and `worth_a_kernel(kernel)`;
- `compile_kernels(descs)`: render each kernel description (`jitorch.ir.fusion.KernelDesc`, or a
  `KernelGroup` where the backend `groups_kernels`, a `MatmulEpilogue` where it
  `fuses_matmul_epilogues`) to source, compile it (with an on-disk cache) and return launchable
  kernels: `run(inputs, outs=None) -> outputs`.

Everything above this layer (dispatch, autograd, the tracer, the executor of compiled programs)
asks `backend_for(device)` and knows no backend by name; `jitorch/ir` knows none at all.

A backend whose import is costly or may fail (the GPU's needs CuPy, a driver and a GPU) registers
lazily: `register_lazy("cuda", "jitorch.backends.cuda.backend")` names the module, which
`has_backend` and `backend_for` import on first use. If that import fails, the device type has no
backend and `unavailable_reason(device_type)` says why. `import jitorch` imports no such module.

Settings that every backend reads live here too: `set_float32_matmul_precision`.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import BackendError


class Backend:
    """The parts a device's backend provides (see the module docstring); subclasses set them."""

    device_type: str = ""
    kernels: dict[str, Callable] = {}
    # optional: kernels that write into a buffer given first, `into(out, *arrays, **params) -> out`
    # (or their own result where they cannot), so a compiled program's memory plan can place them
    kernels_into: dict[str, Callable] = {}
    # optional: kernels a compiled program's plan runs instead of the eager ones for values it keeps
    # to itself (no graph output): they may return a view of their inputs where an eager kernel
    # must copy (`array_kernels.cat_or_view`)
    plan_kernels: dict[str, Callable] = {}
    buffer_type: type = np.ndarray  # what the eager kernels return (anything else goes through as_buffer)
    # Whether eager composites (softmax, layer_norm, cross_entropy, an optimizer's update, ...) on
    # this device run as cached compiled functions instead of op by op: worth it where each eager
    # kernel costs a launch (the GPU), not where a compiled call's bookkeeping costs more than the
    # few numpy calls it saves (the CPU). `jitorch.dispatch.fuses_composites` reads it.
    fuses_eager_composites: bool = False
    # Whether `compile_kernels` takes `jitorch.ir.fusion.KernelGroup`s too: kernels of one structure
    # over several sizes run as one launch (horizontal fusion), worth it where a launch costs more
    # than a few microseconds of host time (the GPU)
    groups_kernels: bool = False
    # Whether `compile_kernels` takes column kernels (`Kernel.columns`: sums over the leading dims,
    # a bias gradient, in the pass that computes what they sum)
    fuses_column_sums: bool = False
    # Whether `compile_kernels` takes `MatmulEpilogue`s: a 2-d float32 product and the pointwise
    # kernel that alone reads it, computed together
    fuses_matmul_epilogues: bool = False
    # Whether small side chains that feed a large node run first (`jitorch.ir.fusion.partition`), so
    # that cross-entropy's backward joins its forward's row kernel: one read of the logits, worth it
    # where a row stays in the core's cache between a kernel's passes over it (the CPU). On the GPU a
    # long row's later passes reread it from L2, and the joined kernel measured slower than two (the
    # H200: forward + backward at 36% of copy bandwidth against 44%)
    joins_side_chains: bool = False

    def kernel(self, name: str) -> Callable:
        """The eager kernel of primitive `name`, or an error naming the op and the device."""
        try:
            return self.kernels[name]
        except KeyError:
            raise BackendError(f"the {self.device_type} backend has no kernel for `{name}`") from None

    # --- buffers -----------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        raise NotImplementedError

    def copy(self, array):
        """A new buffer with the same values (C-contiguous)."""
        raise NotImplementedError

    def copy_into(self, dst, src) -> None:
        """Write `src` (same shape, any dtype: cast as numpy's 'unsafe' casting does) into `dst`."""
        raise NotImplementedError

    def add_into(self, dst, src) -> None:
        """dst += src, in place (gradient accumulation)."""
        raise NotImplementedError

    def owns_buffer(self, array) -> bool:
        """Whether `array` is a whole writable buffer of its own (not a view of another's)."""
        raise NotImplementedError

    def to_numpy(self, array) -> np.ndarray:
        raise NotImplementedError

    def as_buffer(self, value):
        """A kernel's result that is not a buffer (a numpy scalar) as one."""
        raise NotImplementedError

    def is_view_of(self, out, src) -> bool:
        """Whether a view primitive's result shares `src`'s memory (it may have had to copy)."""
        raise NotImplementedError

    def from_numpy(self, array: np.ndarray):
        raise NotImplementedError

    def full(self, shape: tuple[int, ...], value, dtype: np.dtype):
        """A new buffer of `shape` holding `value` (a device backend fills it where it lives)."""
        return self.from_numpy(np.full(shape, value, dtype=dtype))

    # --- checks on data ------------------------------------------------------------------
    def check_indices(self, index, lo: int, hi: int, error: Callable[[int | None], Exception],
                      skip: int | None = None) -> None:
        """Raise `error(value)` for the first element of `index` (an integer array) outside [lo, hi)
        that is not `skip` (the value None: it was written over before a later check read it).
        Here at once; a backend whose work is queued (the GPU) checks on the device and raises at
        its next wait for it (`finish_checks`), as PyTorch's device-side asserts surface, instead
        of stalling the queue on every indexed op."""
        host = self.to_numpy(index)
        values = host if skip is None else host[host != skip]
        bad = values[(values < lo) | (values >= hi)]
        if bad.size:
            raise error(int(bad.flat[0]))

    def finish_checks(self) -> None:
        """Raise the error of any check `check_indices` left for later that failed (after a wait
        for the device); nothing where checks run at once."""

    # --- compiled programs -------------------------------------------------------------
    def can_fuse(self, node) -> bool:
        """Whether a fused kernel of this backend can compute `node`."""
        return False

    def worth_a_kernel(self, kernel) -> bool:
        """Whether a kernel of a single node beats running that node's eager kernel."""
        return False

    def compile_kernels(self, descs: list) -> list:
        raise BackendError(f"the {self.device_type} backend compiles no fused kernels")

    def takes_matmul_epilogue(self, node) -> bool:
        """Whether a product (a `matmul` node) may take in its epilogue (`fuses_matmul_epilogues`)."""
        return self.fuses_matmul_epilogues

    def fuses_attention(self, dtype: np.dtype, head_dim: int, value_head_dim: int) -> bool:
        """Whether the `attention` primitive has a fused kernel here for queries and keys of `dtype`
        and these head dims: `F.scaled_dot_product_attention` then uses the primitive instead of
        its composite (every backend computes the primitive; this says it is worth it)."""
        return False

    # --- native runs (optional): several steps of a compiled program in one call ----------
    def into_strides(self, op: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...] | None:
        """The byte strides of the value that `kernels_into[op]` answers for a buffer of `shape`, where
        that is not C-contiguous yet the same for every call (so native runs read it in place); None
        for C-contiguous."""
        return None

    def runs_natively(self, op: NativeOp) -> bool:
        """Whether `compile_native_runs` can take `op` (a step of a compiled program over buffers whose
        layouts are known when the program is built)."""
        return False

    def compile_native_runs(self, runs: list[tuple[list[NativeOp], int, tuple]]) -> list[Callable]:
        """For each (ops, n_roots, fixed) in `runs`, one callable that runs `ops` in order:
        `run(buffers)`, where `buffers` and then `fixed` (buffers that stay where they are for as
        long as the run lives: a program's constants) are the `n_roots` root buffers that the
        operands' `root` numbers name."""
        raise BackendError(f"the {self.device_type} backend runs no native step sequences")

    # --- timing, for `jitorch.profiler` --------------------------------------------------
    def time_mark(self) -> object:
        """A mark of now in the device's own order of work: `elapsed_ms(a, b)` between two marks,
        read once the work before the later one has finished (`finish_work`). Here, where kernels
        run on the host as they are called: the host clock."""
        return time.perf_counter()

    def elapsed_ms(self, start: object, end: object) -> float:
        return (end - start) * 1e3

    def finish_work(self) -> None:
        """Wait for all work queued on the device (nothing to wait for where kernels run on the host)."""

    # --- device graphs (optional): `jitorch.compile(fn, mode="reduce-overhead")` ------------
    captures_graphs: bool = False  # whether `capture` records device work for replay

    def capture(self, work: Callable[[], object]) -> tuple[DeviceGraph, object]:
        """Record the device work that `work()` queues, without running it, into a graph that
        replays it: returns (the graph, what `work` returned). Memory that `work` allocates is the
        graph's for as long as the graph lives (each replay writes the same buffers). Raises
        `CaptureError` when the work cannot be recorded; the device is then usable as before."""
        raise CaptureError(f"the {self.device_type} backend captures no device graphs")

    def capture_refusal(self, node) -> str | None:
        """Why the eager kernel of `node` (an IR node) must not run inside a captured graph, in words
        (None where it may): a kernel that reads device values on the host, or that a replay would
        repeat with values baked in at capture. Fused kernels of a backend that captures graphs
        are capturable."""
        return None


@dataclass(frozen=True)
class Operand:
    """Where a native op finds a value: `offset` bytes past the first element of root buffer
    number `root`, laid out in `shape` with `strides` in bytes (numpy's convention)."""

    root: int
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype

    @property
    def c_contiguous(self) -> bool:
        step = self.dtype.itemsize
        for size, stride in zip(reversed(self.shape), reversed(self.strides)):
            if size != 1 and stride != step:
                return False
            step *= size
        return True


@dataclass(frozen=True)
class NativeOp:
    """A step of a compiled program as a native run sees it: `kind` "kernel" (a fused kernel the
    backend compiled, `kernel`), "matmul" (ins a, b; numpy's matmul broadcasting) or "sum"
    (`params`: the sum node's); outputs are whole C-contiguous root buffers."""

    kind: str
    ins: tuple[Operand, ...]
    outs: tuple[Operand, ...]
    kernel: object = None
    params: dict = field(default_factory=dict)


class DeviceGraph:
    """What `Backend.capture` returns: `launch()` queues one replay of the recorded work."""

    def launch(self) -> None:
        raise NotImplementedError


class CaptureError(BackendError):
    """Device work could not be captured into a graph (the reason is the message)."""


_BACKENDS: dict[str, Backend] = {}
_LAZY: dict[str, str] = {}  # device type -> the module that registers its backend when imported
_UNAVAILABLE: dict[str, str] = {}  # device type -> why its backend could not be loaded
_LOADING = threading.RLock()  # one thread imports a lazy backend; the others wait for its outcome


def register(backend: Backend) -> None:
    """Make `backend` serve every device of its type."""
    _BACKENDS[backend.device_type] = backend


def register_lazy(device_type: str, module: str) -> None:
    """Let `module` serve `device_type`: it is imported (and calls `register`) the first time
    anyone asks for that device type's backend, not before."""
    _LAZY[device_type] = module
    _UNAVAILABLE.pop(device_type, None)


def _load(device_type: str) -> Backend | None:
    """The backend of `device_type`, importing its module first if it registered lazily."""
    backend = _BACKENDS.get(device_type)
    if backend is None and device_type in _LAZY:
        with _LOADING:
            module = _LAZY.pop(device_type, None)
            if module is not None:
                try:
                    importlib.import_module(module)
                except Exception as err:  # no CuPy, no driver, no GPU: the backend is unavailable, not broken
                    _UNAVAILABLE[device_type] = str(err) or f"importing {module} failed ({type(err).__name__})"
                if device_type not in _BACKENDS and device_type not in _UNAVAILABLE:
                    _UNAVAILABLE[device_type] = f"{module} registered no backend for {device_type!r}"
        backend = _BACKENDS.get(device_type)
    return backend


def has_backend(device_type: str) -> bool:
    """Whether a backend serves `device_type` (loading a lazily registered one to find out)."""
    return _load(device_type) is not None


def unavailable_reason(device_type: str) -> str | None:
    """Why `device_type` has no backend, in words for an error message (None when it has one).

        >>> unavailable_reason("cuda")  # on a machine without CuPy
        "CuPy is not installed: pip install 'jitorch[cuda]'"
    """
    if _load(device_type) is not None:
        return None
    return _UNAVAILABLE.get(device_type, f"this jitorch has no backend for device type {device_type!r}")


def backend_for(device_type: str) -> Backend:
    """The backend of a device type ("cpu", "meta", "cuda", ...)."""
    backend = _load(device_type)
    if backend is None:
        known = ", ".join(sorted(_BACKENDS)) or "none"
        raise BackendError(f"no backend for device type {device_type!r} in this jitorch (backends: {known}): "
                           f"{unavailable_reason(device_type)}")
    return backend


register_lazy("cuda", "jitorch.backends.cuda.backend")


# ---------------------------------------------------------------------------------------------
# settings the backends read

FLOAT32_MATMUL_PRECISIONS = ("highest", "high", "medium")
_float32_matmul_precision = "highest"


def set_float32_matmul_precision(precision: str) -> None:
    """How float32 matrix products may trade precision for speed, as PyTorch's setting of that name.

    "highest" (the default): float32 products computed in float32. "high" and "medium": a GPU may
    use TF32 tensor cores, faster, with each input rounded to 10 mantissa bits (a relative error
    up to 2**-11 instead of 2**-24) and sums kept in float32. The CPU computes in float32 whatever
    the setting. `jitorch.backends.cuda.matmul.allow_tf32 = True` is "high".

        >>> set_float32_matmul_precision("high")
    """
    global _float32_matmul_precision
    if precision not in FLOAT32_MATMUL_PRECISIONS:
        raise ValueError(f"float32 matmul precision must be one of {', '.join(map(repr, FLOAT32_MATMUL_PRECISIONS))}"
                         f", got {precision!r}")
    _float32_matmul_precision = precision


def get_float32_matmul_precision() -> str:
    """The current float32 matmul precision: "highest", "high" or "medium"."""
    return _float32_matmul_precision


class _Search(threading.local):
    wide = False


_search = _Search()


@contextlib.contextmanager
def wide_autotuning(wide: bool = True) -> Iterator[None]:
    """Inside: kernels compiled for a backend that times launch configurations offer it a wider set
    (`jitorch.compile(mode="max-autotune")`: small kernels tuned too, more candidates each; a longer
    first call). Per thread."""
    saved, _search.wide = _search.wide, wide
    try:
        yield
    finally:
        _search.wide = saved


def autotuning_wide() -> bool:
    """Whether kernels compiled now offer the wider set of launch configurations."""
    return _search.wide


from . import cuda as cuda  # noqa: E402  (PyTorch's jitorch.backends.cuda.matmul.allow_tf32; imports no CuPy)
from . import cudnn as cudnn  # noqa: E402  (PyTorch's switches that scripts set; jitorch calls no cuDNN)
from . import mps as mps  # noqa: E402  (scripts ask torch.backends.mps.is_available() before picking a device)
