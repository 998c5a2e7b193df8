"""What every benchmark here shares: the timing loop, the machine's name, table cells, where results go,
and on the GPU: waiting for the device, its name, and the float32 matmul precision of both frameworks."""

from __future__ import annotations

import importlib
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class ConstantRate:
    """A stand-in for char_lm's scheduler: the learning rate stays as the optimizer was made.
    torch.compile specializes on Python floats, so a rate changing every step would recompile its step
    every call; jitorch reads the rate as data either way."""

    def step(self) -> None:
        pass


def median_time(fn: Callable[[], object], number: int, repeats: int = 7,
                sync: Callable[[], None] | None = None) -> float:
    """Median over `repeats` of the mean seconds per call across `number` calls (after one warm call).

    CPU work is synchronous, so a host clock around the loop is exact. GPU work is queued: pass
    `sync` (e.g. `lambda: synchronize("cuda")`), called before the clock starts and before it is read,
    so each loop counts exactly the work its calls queued."""
    fn()
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def cpu_model() -> str:
    """`lscpu`'s model name, or the platform's processor string where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown"


def cell(value: float | None, spec: str, scale: float = 1.0) -> str:
    """A table cell: `value * scale` formatted with `spec`, or "skipped" for a contender that did not
    run (`value` None: not installed, or left out by the options)."""
    return "skipped" if value is None else format(value * scale, spec)


def describe_failure(err: BaseException) -> str:
    """An error in one line for a results page: its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."


def results_path(name: str, partial: bool, out: str | None = None) -> Path | None:
    """Where a run writes its table. A full run writes the recorded results, `bench/results/<name>.md`
    (or `out`). A quick or partial run must never replace recorded results: it prints only, or writes
    to `out` when that lies outside `bench/results/`."""
    if out is None:
        return None if partial else RESULTS_DIR / f"{name}.md"
    path = Path(out)
    if partial and path.resolve().parent == RESULTS_DIR:
        raise SystemExit(f"--out {out}: a quick or partial run does not replace the recorded results in "
                         f"{RESULTS_DIR}; leave --out out (print only) or name a file elsewhere")
    return path


def publish(text: str, path: Path | None) -> None:
    """Print a results page and write it to `path`; say where it went, or that nothing was written."""
    print(text)
    if path is None:
        print(f"a quick or partial run: printed only, the recorded results in {RESULTS_DIR} are kept")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"written to {path}")


# ---------------------------------------------------------------------------------------------
# the GPU (torch and jitorch are imported here only when a GPU run asks, so CPU-only benches need neither)


def jitorch_cuda():
    """`jitorch.cuda`, or None in a jitorch without it (one that runs on the CPU only)."""
    try:
        return importlib.import_module("jitorch.cuda")
    except ImportError:
        return None


def synchronize(device: str, lib=None) -> None:
    """Wait until the GPU has finished the work that `lib` (jitorch or torch; None: both) queued on it;
    nothing to wait for on the CPU. Without `jitorch.cuda.synchronize`, jitorch's work is waited for
    through CuPy (jitorch's GPU arrays are CuPy's), for the whole device."""
    if not str(device).startswith("cuda"):
        return
    name = None if lib is None else lib.__name__
    if name in (None, "jitorch"):
        jt_cuda = jitorch_cuda()
        if jt_cuda is not None and hasattr(jt_cuda, "synchronize"):
            jt_cuda.synchronize()
        else:
            import cupy

            cupy.cuda.runtime.deviceSynchronize()
    if name in (None, "torch"):
        import torch

        torch.cuda.synchronize()


def gpu_name() -> str:
    """The GPU's name, from jitorch where it can say, else from PyTorch."""
    jt_cuda = jitorch_cuda()
    if jt_cuda is not None and hasattr(jt_cuda, "get_device_name") and jt_cuda.is_available():
        return jt_cuda.get_device_name()
    import torch

    return torch.cuda.get_device_name(0)


def gpu_versions() -> str:
    """The GPU software a result depends on: PyTorch and its CUDA, CuPy and the CUDA runtime it loads,
    the driver's CUDA version."""
    import torch

    parts = [f"torch {torch.__version__} (CUDA {torch.version.cuda})"]
    try:
        import cupy

        runtime, driver = cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()
        parts.append(f"CuPy {cupy.__version__} (CUDA runtime {runtime // 1000}.{runtime % 1000 // 10})")
        parts.append(f"driver CUDA {driver // 1000}.{driver % 1000 // 10}")
    except ImportError:
        parts.append("CuPy not installed")
    return ", ".join(parts)


def set_matmul_precision(precision: str) -> bool:
    """Set the float32 matmul precision ("highest": full float32; "high": TF32 allowed) in PyTorch and
    in jitorch (`jitorch.set_float32_matmul_precision`, or where the backends keep it). Returns whether
    jitorch has the setting; without it jitorch runs at its default. PyTorch's cuDNN convolutions keep
    their own default (TF32 allowed) either way."""
    import torch

    import jitorch
    import jitorch.backends

    torch.set_float32_matmul_precision(precision)
    name = "set_float32_matmul_precision"
    setter = getattr(jitorch, name, None) or getattr(jitorch.backends, name, None)
    if setter is None:
        return False
    setter(precision)
    return True
