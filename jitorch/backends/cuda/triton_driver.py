"""jitorch's Triton driver: Triton kernels on CuPy memory and CuPy's current stream, without torch.

Triton's stock CUDA driver asks torch for the current device, stream and compute capability (in
Triton 3.6 its constructor imports torch; in 3.9 it does when torch is loaded, and without torch it
launches on the default stream). `CupyCudaDriver` is that driver with CuPy's answers instead;
`activate()` installs it (`triton.runtime.driver.set_active`) the first time a cuda program
compiles a Triton kernel, and from then on every Triton kernel in the process takes its device and
stream from CuPy: a launch inside `with jitorch.cuda.stream(s):` goes to `s`.

A pointer argument is any object with `data_ptr()` and a `dtype` (`Pointer`). Triton names a
pointer's element type from the last word of `str(dtype)`: "torch.float32", numpy's "float32" (what
a CuPy array has) and Triton's own "fp32" are all fp32, in 3.6 and 3.9 alike.

`launch_function(compiled, grid)` launches a compiled kernel (what `JITFunction.warmup` returns)
with the least Python in between: the launcher's C entry point with its argument list prepared
once, in the order of the installed Triton version (see `launch_function`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import triton
from triton.backends.nvidia import driver as nvidia

TRITON_VERSION = tuple(int(part) for part in triton.__version__.split(".")[:2])


class Pointer:
    """A device address as Triton takes a tensor argument: `data_ptr()` and an element `dtype` (a
    numpy dtype or a Triton type name: "fp32", "i8")."""

    __slots__ = ("ptr", "dtype")

    def __init__(self, ptr: int, dtype) -> None:
        self.ptr = ptr
        self.dtype = dtype

    def data_ptr(self) -> int:
        return self.ptr

    def __repr__(self) -> str:
        return f"Pointer({self.ptr:#x}, {self.dtype})"


def pointer(array) -> Pointer:
    """A CuPy array as a Triton pointer argument (the address of its first element)."""
    return Pointer(array.data.ptr, array.dtype)


class CupyCudaDriver(nvidia.CudaDriver):
    """Triton's CUDA driver with the current device, stream and compute capability from CuPy.

    The stock constructor is skipped: `GPUDriver.__init__` imports torch. What it would set
    (`utils`, `launcher_cls`, the device and stream functions) is set here or defined as methods."""

    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        self.utils = nvidia.CudaUtils()  # compiles (once, cached on disk) Triton's C helpers against libcuda
        self.launcher_cls = nvidia.CudaLauncher

    @classmethod
    def is_active(cls) -> bool:
        return True  # made only where CuPy reaches a GPU; the stock test asks torch

    def get_current_device(self) -> int:
        return self.cupy.cuda.runtime.getDevice()

    def set_current_device(self, device: int) -> None:
        self.cupy.cuda.runtime.setDevice(device)

    def get_current_stream(self, device: int | None = None) -> int:
        """The raw handle of CuPy's current stream on `device` (the current device by default)."""
        return self.cupy.cuda.get_current_stream(-1 if device is None else device).ptr

    def get_device_capability(self, device: int | None = None) -> tuple[int, int]:
        """(major, minor): (9, 0) on an H100 or H200."""
        cuda = self.cupy.cuda
        digits = cuda.Device(cuda.runtime.getDevice() if device is None else device).compute_capability
        return int(digits[:-1]), int(digits[-1])

    def get_active_torch_device(self):
        raise RuntimeError("jitorch's Triton driver runs on CuPy and has no torch device")

    def get_device_interface(self) -> _CupyDeviceInterface:
        """What Triton's benchmarker (`triton.testing.do_bench`) asks of `torch.cuda`."""
        return _CupyDeviceInterface(self.cupy)

    def get_empty_cache_for_benchmark(self):
        return self.cupy.empty(256 * 1024 * 1024 // 4, dtype=self.cupy.int32)  # larger than any L2

    def clear_cache(self, cache) -> None:
        cache.fill(0)


class _CupyDeviceInterface:
    """`synchronize()` and `Event(enable_timing=True)` (`record()`, `elapsed_time(end)`) over CuPy."""

    def __init__(self, cupy) -> None:
        self.cupy = cupy

    def synchronize(self) -> None:
        self.cupy.cuda.Device().synchronize()

    def Event(self, enable_timing: bool = False) -> _CupyEvent:  # noqa: N802 - torch.cuda's name
        return _CupyEvent(self.cupy, enable_timing)


class _CupyEvent:
    def __init__(self, cupy, enable_timing: bool) -> None:
        self.cupy = cupy
        self.native = cupy.cuda.Event(disable_timing=not enable_timing)

    def record(self, stream=None) -> None:
        self.native.record(stream)

    def elapsed_time(self, end: _CupyEvent) -> float:
        """Milliseconds from this event to `end`."""
        end.native.synchronize()
        return self.cupy.cuda.get_elapsed_time(self.native, end.native)


class CompileOnlyDriver(nvidia.CudaDriver):
    """A driver for processes that only compile (into Triton's disk caches) for a GPU of compute
    capability `capability`, without touching a GPU: device 0, the null stream, no CuPy and no
    libcuda helpers (compiling needs neither; loading and launching do)."""

    def __init__(self, capability: tuple[int, int]) -> None:
        self.capability = capability
        self.utils = None
        self.launcher_cls = nvidia.CudaLauncher

    @classmethod
    def is_active(cls) -> bool:
        return True

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_device_capability(self, device: int | None = None) -> tuple[int, int]:
        return self.capability

    def get_active_torch_device(self):
        raise RuntimeError("jitorch's compile-only Triton driver has no torch device")


_driver: nvidia.CudaDriver | None = None
_lock = threading.Lock()


def activate_compile_only(capability: tuple[int, int]) -> None:
    """In a process that only compiles: from now on `activate()` installs a `CompileOnlyDriver`."""
    global _driver
    _driver = CompileOnlyDriver(capability)
    triton.runtime.driver.set_active(_driver)


def activate() -> nvidia.CudaDriver:
    """Make jitorch's driver Triton's active one (made once per process, on first use)."""
    global _driver
    if _driver is None:
        with _lock:
            if _driver is None:
                _driver = CupyCudaDriver()
    # set every time: cheap, and takes the driver back from anyone who installed another since
    # (reading `driver.active` before any is set would make the stock one, which may import torch)
    triton.runtime.driver.set_active(_driver)
    return _driver


# ---------------------------------------------------------------------------------------------
# launching


def compile_launch(function, args: list, grid: tuple[int, int, int], **options) -> tuple[Callable, int]:
    """Compile `@triton.jit` `function` for the current device and `args` (pointers as `Pointer`s
    whose addresses carry only the divisibility Triton specializes on; Triton's caches answer a
    repeat), and prepare its launch over `grid`: (`launch_function`'s launch, `scratch_bytes`)."""
    activate()
    compiled = function.warmup(*args, grid=grid, **options)
    return launch_function(compiled, grid), scratch_bytes(compiled, grid)


def compile_only(function, args: list, grid: tuple[int, int, int], **options) -> None:
    """Compile as `compile_launch` does, into Triton's caches, and build the kernel's launcher,
    without loading the binary on the device or preparing a launch (safe to call from several
    threads at once, each with the device current)."""
    activate()
    build_launcher(function.warmup(*args, grid=grid, **options))


def build_launcher(compiled) -> None:
    """Build, into Triton's disk cache, the launcher `compiled`'s first launch will load. Triton
    3.6 compiles a C launcher for each kernel signature (a C compiler run of about 0.3 s on the GPU
    machine; fifty of them in a transformer's training step); built beside the kernel's compile,
    in the compile threads, the first launch only loads it. Later versions have one generic
    launcher: nothing to build."""
    if TRITON_VERSION < (3, 8):
        _driver.launcher_cls(compiled.src, compiled.metadata)


def launch_function(compiled, grid: tuple[int, int, int]) -> Callable[[int, tuple, object], None]:
    """`launch(stream, args, scratch=None)`: run `compiled` (a CompiledKernel, loaded on the current
    device) over `grid` on `stream`. `args` are the kernel function's arguments in order, constexprs
    included (the launcher skips them), pointers as ints or `Pointer`s. `scratch` is a device
    buffer (anything with `data_ptr()`, kept alive by the caller until the call returns) of
    `scratch_bytes(compiled, grid)` bytes, for kernels that need one (None where 0 bytes).

    Triton launches through `CudaLauncher.__call__(gridX, gridY, gridZ, stream, function,
    kernel_metadata, launch_metadata, enter_hook, exit_hook, *args)` in both 3.6 and 3.9, which
    allocates the kernel's scratch buffers in Python and calls the C `launch` with a list that
    differs between them:

    - 3.6: `launch(gridX, gridY, gridZ, stream, function, cooperative, pdl, global_scratch,
      profile_scratch, kernel_metadata, launch_metadata, enter_hook, exit_hook, *args)`, a
      launcher compiled for the kernel's signature;
    - 3.8 and 3.9: `launch(gridX, gridY, gridZ, stream, function, cooperative, pdl, kernel_metadata,
      launch_metadata, enter_hook, exit_hook, global_scratch, profile_scratch, arg_annotations,
      kernel_signature, args)`, one generic launcher that reads each argument by the signature.

    Those two are called directly (no launch hooks: profilers that install Triton's launch hooks
    don't see these launches). Any other version, or a launcher that needs its profiling scratch
    or runs Triton's sanitizer, goes through `__call__`, the same in every version.
    """
    launcher = compiled.run  # (loads the binary on the current device the first time)
    function, metadata = compiled.function, compiled.packed_metadata
    x, y, z = grid
    cooperative, pdl = launcher.launch_cooperative_grid, launcher.launch_pdl
    c_launch = launcher.launch
    if getattr(launcher, "gsan_enabled", False) or launcher.profile_scratch_size:
        def launch(stream: int, args: tuple, scratch=None) -> None:
            launcher(x, y, z, stream, function, metadata, None, None, None, *args)
    elif hasattr(launcher, "kernel_signature"):  # 3.8, 3.9
        annotations, signature = launcher.arg_annotations, launcher.kernel_signature

        def launch(stream: int, args: tuple, scratch=None) -> None:
            c_launch(x, y, z, stream, function, cooperative, pdl, metadata, None, None, None, scratch, None,
                     annotations, signature, args)
    elif TRITON_VERSION == (3, 6):
        def launch(stream: int, args: tuple, scratch=None) -> None:
            c_launch(x, y, z, stream, function, cooperative, pdl, scratch, None, metadata, None, None, None, *args)
    else:
        def launch(stream: int, args: tuple, scratch=None) -> None:
            launcher(x, y, z, stream, function, metadata, None, None, None, *args)
    return launch


def scratch_bytes(compiled, grid: tuple[int, int, int]) -> int:
    """The global scratch memory a launch of `compiled` over `grid` needs (0 for most kernels), as
    Triton's launcher sizes it: per program, times the grid and the CTAs per program."""
    launcher = compiled.run
    return launcher.global_scratch_size * grid[0] * grid[1] * grid[2] * launcher.num_ctas
