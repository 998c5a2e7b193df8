"""What every benchmark here shares: the timing loop and the machine's name."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], number: int, repeats: int = 7) -> float:
    """Median over `repeats` of the mean seconds per call across `number` calls (after one warm call).

    Everything timed here is synchronous CPU work, so a host clock around the loop is exact."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
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
