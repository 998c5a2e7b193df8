"""CuPy, once it is known to reach a GPU: `from .gpu_check import cupy` raises an ImportError that says
what is missing (CuPy itself, a CUDA driver, a GPU) and what to do, which `jitorch.backends` keeps
as the reason the cuda device is unavailable."""

from __future__ import annotations

try:
    import cupy
except ModuleNotFoundError as err:
    raise ImportError("CuPy is not installed: pip install 'jitorch[cuda]'") from err
except ImportError as err:  # a broken or mismatched CuPy (e.g. its CUDA libraries are missing)
    raise ImportError(f"CuPy is installed but cannot be imported ({err}); reinstall it with "
                      "pip install 'jitorch[cuda]'") from err


def _check() -> None:
    runtime = cupy.cuda.runtime
    if runtime.driverGetVersion() == 0:  # what CUDA reports where libcuda is missing
        raise ImportError("no NVIDIA driver is installed on this machine (the cuda device needs an NVIDIA GPU "
                          "and its driver)")
    try:
        gpus = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as err:  # a driver older than CuPy's CUDA, no device, ...
        raise ImportError(f"CuPy cannot reach a GPU: {err} (driver for CUDA {_version(runtime.driverGetVersion())}, "
                          f"CuPy built for CUDA {_version(runtime.runtimeGetVersion())})") from err
    if gpus == 0:
        raise ImportError("CUDA sees no GPU on this machine")


def _version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


_check()

__all__ = ["cupy"]
