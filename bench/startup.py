"""Start-up cost on the CPU: `import`, then the first and the second call of a workload, each in a
fresh Python process, for jitorch and for PyTorch eager (its own processes) as a peer.

    python bench/startup.py            # prints a table and writes bench/results/startup_cpu.md
    python bench/startup.py --quick    # fewer processes; prints only, the recorded results are kept

Workloads (forward + backward, eager, float32):
- conv2d: one `conv2d` of an 8x3x32x32 batch with 16 3x3 filters (padding 1, bias), summed;
- small CNN: conv(3->16) relu conv(16->32, stride 2) relu flatten linear(8192->10) cross_entropy
  on the same batch, with `nn` modules (the same code for both libraries).

Each figure is the median over several fresh processes. "first call" includes everything a process
pays once (lazy imports, kernel compiles or cache loads); "second call" is the steady state. The
jitorch rows marked "empty caches" point Numba's and jitorch's kernel caches at new empty
directories, so their first call compiles every kernel it uses: what a first run after install
pays. The other rows find the caches that earlier processes filled. Every process runs with one
thread (OMP_NUM_THREADS and the BLAS thread counts set to 1): start-up is serial work, and on a
small shared machine idle worker threads only add noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

NOTES_MARKER = "<!-- notes: hand-written below this line; bench/startup.py keeps it when it rewrites the page -->"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
WORKLOADS = {"conv2d": "conv2d fwd+bwd, 8x3x32x32, 16 3x3 filters", "cnn": "small CNN step fwd+bwd, 8x3x32x32"}


def child(lib_name: str, workload: str) -> None:
    """Runs in the fresh process: times the import and two calls, prints one JSON line."""
    t0 = time.perf_counter()
    if lib_name == "torch":
        import torch as lib
    else:
        import jitorch as lib
    t1 = time.perf_counter()
    lib.manual_seed(0)
    x = lib.randn(8, 3, 32, 32, requires_grad=True)
    if workload == "conv2d":
        weight = lib.randn(16, 3, 3, 3, requires_grad=True)
        bias = lib.randn(16, requires_grad=True)

        def step():
            x.grad = weight.grad = bias.grad = None
            lib.nn.functional.conv2d(x, weight, bias, padding=1).sum().backward()
    else:
        nn = lib.nn
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 16 * 16, 10),
        )
        labels = lib.randint(0, 10, (8,))

        def step():
            model.zero_grad()
            lib.nn.functional.cross_entropy(model(x), labels).backward()

    t2 = time.perf_counter()
    step()
    t3 = time.perf_counter()
    step()
    t4 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "first": t3 - t2, "second": t4 - t3, "numba_loaded": "numba" in sys.modules}))


def run_child(lib_name: str, workload: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", lib_name, workload], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(lib_name: str, workload: str, processes: int, empty_caches: bool) -> dict:
    """Median of each figure over `processes` fresh processes (each with new empty caches if asked)."""
    runs = []
    for _ in range(processes):
        env = dict(os.environ, **{name: "1" for name in THREAD_VARIABLES})
        with tempfile.TemporaryDirectory() as cache:
            if empty_caches:
                env["NUMBA_CACHE_DIR"] = os.path.join(cache, "numba")
                env["JITORCH_CACHE_DIR"] = os.path.join(cache, "jitorch")
            runs.append(run_child(lib_name, workload, env))
    medians = {k: statistics.median(r[k] for r in runs) for k in ("import", "first", "second")}
    medians["numba_loaded"] = any(r["numba_loaded"] for r in runs)
    return medians


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for name in ("numpy", "numba", "llvmlite", "torch", "jitorch"):
        try:
            module = __import__(name)
            found.append(f"{name} {module.__version__}")
        except ImportError:
            found.append(f"{name} missing")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per row (median)")
    parser.add_argument("--quick", action="store_true", help="2 processes per row; print only, keep the results file")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "startup_cpu.md"))
    parser.add_argument("--child", nargs=2, metavar=("LIB", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    processes = 2 if args.quick else args.processes

    load_before = os.getloadavg()[0]
    for workload in WORKLOADS:  # fill the kernel caches that the rows without "empty caches" find
        run_child("jitorch", workload, dict(os.environ))
    rows = []
    for workload, title in WORKLOADS.items():
        for label, lib_name, empty in (("jitorch", "jitorch", False), ("jitorch, empty caches", "jitorch", True),
                                       ("PyTorch eager", "torch", False)):
            m = measure(lib_name, workload, processes, empty)
            rows.append((title, label, m))
            print(f"{title} | {label}: import {m['import'] * 1e3:.0f} ms, first {m['first'] * 1e3:.1f} ms, "
                  f"second {m['second'] * 1e3:.1f} ms", flush=True)

    lines = [
        "# Start-up cost on the CPU: import, first and second call in a fresh process",
        "",
        f"- date: {date.today()}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs",
        f"- versions: {versions()}",
        f"- command: `python bench/startup.py{'' if processes == 5 else f' --processes {processes}'}`",
        f"- median of {processes} fresh processes per row, one thread each; 1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes share the CPUs)",
        f"- PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')}: when set, Python "
        "writes no .pyc files, so each import compiles the Python sources of jitorch (and of anything "
        "else without .pyc files) again",
        "",
        "| workload | library | import ms | first call ms | second call ms | Numba loaded |",
        "|---|---|---:|---:|---:|---|",
    ]
    for title, label, m in rows:
        lines.append(f"| {title} | {label} | {m['import'] * 1e3:.0f} | {m['first'] * 1e3:.1f} | "
                     f"{m['second'] * 1e3:.1f} | {'yes' if m['numba_loaded'] else 'no'} |")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.quick:
        print(f"a quick run: printed only, {args.out} is kept")
        return
    out = Path(args.out)
    notes = kept_notes(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + ("\n" + notes if notes else ""))
    print(f"written to {out}")


def kept_notes(path: Path) -> str:
    """The hand-written part of an existing results page (from NOTES_MARKER on), kept across reruns."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    return text[text.index(NOTES_MARKER):] if NOTES_MARKER in text else ""


if __name__ == "__main__":
    main()
