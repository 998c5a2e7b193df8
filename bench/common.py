"""What every benchmark here shares: the timing loop, the machine's name, table cells, and where results go."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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


def cell(value: float | None, spec: str, scale: float = 1.0) -> str:
    """A table cell: `value * scale` formatted with `spec`, or "skipped" for a contender that did not
    run (`value` None: not installed, or left out by the options)."""
    return "skipped" if value is None else format(value * scale, spec)


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
