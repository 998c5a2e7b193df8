"""Training speed of the examples' models: jitorch (compiled, as the examples train, and eager) beside
PyTorch eager on the CPU, in one run.

    python bench/train.py                 # writes bench/results/train_cpu.md
    python bench/train.py --repeats 1     # a quick look: prints only, the recorded results are kept
    python bench/train.py --profile       # also prints where jitorch's time goes (cProfile)
    python bench/train.py --prims         # also prints jitorch's kernel time per primitive

Workloads (the examples' own code, run with `lib=jitorch` and with `lib=torch`, so the models, batch
sizes, optimizers and data are the same):

- one training epoch of `examples/digits.py`'s CNN (DataLoader, batch 64, Adam);
- 50 training steps of `examples/char_lm.py`'s transformer (batch 32 x 64 characters, AdamW).

PyTorch gets as many threads as numpy's BLAS uses (jitorch's matmuls run there), read with
threadpoolctl; `--threads N` sets both to N. Runs of the two frameworks alternate, so background load
hits both alike, and each figure is the median over the repeats. The load average is recorded: on a
2-core machine with other work running, a multi-threaded BLAS or OpenMP call can wait a scheduler
time slice (several ms) for its second thread, so `--threads 1` gives steadier numbers there.
This is a benchmark, not a test: nothing here asserts a time. A partial run (fewer repeats or
char_lm steps than the defaults) never replaces the recorded results: it prints its table and writes
nothing, or writes to `--out` outside bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples"))

import char_lm  # noqa: E402 - needs the path above
import digits  # noqa: E402
import torch  # noqa: E402
from common import cpu_model, publish, results_path  # noqa: E402 - bench/ is on the path when this script runs

import jitorch  # noqa: E402
from jitorch.backends.cpu import memory  # noqa: E402

LIBS = {"jitorch": jitorch, "PyTorch": torch}
TARGET_RATIO = 1.5
REPEATS = 5  # the defaults of a full run; fewer make a partial one
LM_STEPS = 50
NOTES_MARKER = "<!-- notes: hand-written below this line; bench/train.py keeps it when it rewrites the page -->"


def blas_threads() -> int:
    """How many threads numpy's BLAS runs matmuls on (jitorch's CPU matmuls go through numpy)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.cpu_count() or 1
    counts = [pool["num_threads"] for pool in threadpool_info()
              if pool["user_api"] == "blas" and "numpy" in pool["filepath"]]
    return counts[0] if counts else os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Give PyTorch as many threads as numpy's BLAS (after limiting BLAS to `threads`, if given)."""
    if threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
    threads = blas_threads()
    torch.set_num_threads(threads)
    jitorch.set_num_threads(threads)
    return threads


# ---------------------------------------------------------------------------------------------
# workloads: each returns a function that runs the timed unit once (after its own warm-up)


def digits_epoch(lib, compiled: bool = False) -> Callable[[], None]:
    """One epoch over the digits training split with the CNN, as `examples/digits.py` trains it."""
    lib.manual_seed(0)
    train_set, _ = digits.make_datasets(lib)
    model = digits.build_cnn(lib)
    optimizer = digits.make_optimizer(model, lib)
    loader = digits.make_loader(train_set, lib)
    train_step = digits.make_train_step(model, optimizer, lib, compiled)

    def epoch() -> None:
        for images, labels in loader:
            train_step(images, labels)

    epoch()  # warm-up: first-call costs, optimizer state, a compiled step's traces (the short last batch too)
    return epoch


def char_lm_steps(lib, steps: int, compiled: bool = False) -> Callable[[], None]:
    """`steps` training steps of the char_lm transformer on pre-drawn batches (the same for both)."""
    corpus = char_lm.CharCorpus()
    config = char_lm.Config(vocab_size=len(corpus.chars))
    rng = np.random.default_rng(0)
    batches = [corpus.batch("train", config.batch_size, config.block_size, rng) for _ in range(steps)]
    lib.manual_seed(0)
    model = char_lm.build_model(config, lib)
    optimizer, scheduler = char_lm.make_optimizer(model, config, total_steps=10 * steps, lib=lib)
    train_step = char_lm.make_train_step(model, optimizer, scheduler, lib, compiled)

    def run() -> None:
        for inputs, targets in batches:
            train_step(inputs, targets)

    for inputs, targets in batches[:3]:  # warm-up (a compiled step traces on its first two calls)
        train_step(inputs, targets)
    return run


def time_alternating(makers: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each framework's runner, alternating frameworks within each repeat."""
    times = {name: [] for name in makers}
    for _ in range(repeats):
        for name, run in makers.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def primitive_times(run: Callable[[], None], title: str, top: int = 14) -> None:
    """Print the time spent inside each primitive's kernel during one jitorch run, most first, and
    what is left over for Python (dispatch, autograd, op wrappers)."""
    from jitorch.primitives import PRIMS

    spent: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    originals = {name: prim.impl for name, prim in PRIMS.items()}

    def timed(name, impl):
        def kernel(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return impl(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
                calls[name] += 1
        return kernel

    for name, prim in PRIMS.items():
        prim.impl = timed(name, prim.impl)
    try:
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
    finally:
        for name, prim in PRIMS.items():
            prim.impl = originals[name]
    print(f"\n--- jitorch kernel time per primitive, {title}: {total * 1e3:.1f} ms in all, "
          f"{sum(spent.values()) * 1e3:.1f} ms in kernels, {sum(calls.values())} calls ---")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{name:14s} {calls[name]:6d} calls {seconds * 1e3:8.2f} ms")


def profile_jitorch(run: Callable[[], None], title: str, top: int) -> None:
    """Print the functions where one jitorch run spends its own time, most first."""
    profiler = cProfile.Profile()
    profiler.runcall(run)
    print(f"\n--- cProfile, jitorch, {title} (sorted by own time) ---")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


# ---------------------------------------------------------------------------------------------


def section(rows: list[tuple[str, float, float, float]], threads: int, repeats: int, lm_steps: int,
            load: tuple[float, float]) -> str:
    """One results section: the table at one thread count, then how it was measured."""
    lines = [
        f"## {threads} thread{'s' if threads > 1 else ''}",
        "",
        "| workload | jitorch eager ms | jitorch compiled ms | PyTorch eager ms | eager / PyTorch | "
        "compiled / PyTorch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ours, compiled, theirs in rows:
        lines.append(f"| {name} | {ours:.1f} | {compiled:.1f} | {theirs:.1f} | {ours / theirs:.2f}x | "
                     f"{compiled / theirs:.2f}x |")
    lines += [
        "",
        f"- threads: numpy's BLAS {threads}, jitorch's fused kernels and PyTorch `set_num_threads({threads})` "
        "to match",
        f"- median of {repeats} repeats, the three runners alternating; char_lm over {lm_steps} steps; "
        "\"compiled\" is the same training step under `jitorch.compile` (forward, backward and optimizer "
        "update as one program), as `examples/digits.py` and `examples/char_lm.py` train by default; "
        "\"eager\" is their `--eager` mode",
        f"- 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after (other processes share the CPUs)",
        "",
    ]
    return "\n".join(lines)


def header(thread_counts: list[int | None]) -> str:
    """The page's title, target, machine and versions."""
    counts = [str(t) for t in thread_counts if t is not None]
    flags = f"--threads {' '.join(counts)}" if counts else ""
    flags += " --malloc-tuning" if memory.malloc_tuned else ""
    return "\n".join([
        "# Training speed on the CPU: jitorch (eager and compiled) vs PyTorch eager",
        "",
        f"Target: jitorch no slower than {TARGET_RATIO}x PyTorch eager. The workloads are the examples' own",
        "model, optimizer and batch code, run with `lib=jitorch` (eager, and compiled) and with `lib=torch`.",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs",
        f"- versions: Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"jitorch {jitorch.__version__}",
        f"- command: `python bench/train.py{' ' + flags.strip() if flags else ''}`",
        f"- jitorch's opt-in glibc heap settings (backends.cpu.memory): {'on' if memory.malloc_tuned else 'off'}",
        "",
    ])


def measure(threads: int | None, repeats: int, lm_steps: int, profile: bool, prims: bool) -> str:
    """Time every workload in both frameworks at one thread count; returns its results section."""
    threads = set_threads(threads)
    load_before = os.getloadavg()[0]
    steps_per_epoch = len(digits.make_loader(digits.make_datasets(jitorch)[0]))
    workloads = {
        f"digits CNN: one epoch ({steps_per_epoch} steps of batch {digits.BATCH_SIZE})":
            (digits_epoch, 1),
        f"char_lm transformer: one step (batch {char_lm.Config.batch_size} x {char_lm.Config.block_size} "
        f"characters)": (lambda lib, compiled=False: char_lm_steps(lib, lm_steps, compiled), lm_steps),
    }
    rows = []
    for name, (make, units) in workloads.items():
        runners = {"jitorch": make(jitorch), "jitorch compiled": make(jitorch, compiled=True), "PyTorch": make(torch)}
        times = time_alternating(runners, repeats)
        ours, compiled, theirs = (1000 * statistics.median(times[label]) / units for label in runners)
        rows.append((name, ours, compiled, theirs))
        print(f"[{threads} threads] {name}: jitorch {ours:.1f} ms, compiled {compiled:.1f} ms, PyTorch "
              f"{theirs:.1f} ms, ratios {ours / theirs:.2f} / {compiled / theirs:.2f}", flush=True)
        if profile:
            profile_jitorch(runners["jitorch"], name, top=30)
        if prims:
            primitive_times(runners["jitorch"], name)
    return section(rows, threads, repeats, lm_steps, (load_before, os.getloadavg()[0]))


def kept_notes(path: str | os.PathLike) -> str:
    """The hand-written part of an existing results page (from NOTES_MARKER on), kept across reruns."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    return text[text.index(NOTES_MARKER):] if NOTES_MARKER in text else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="*", default=[None],
                        help="thread counts to measure at (default: what numpy's BLAS uses)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"timed runs per workload (default {REPEATS}; fewer: a partial run, printed only)")
    parser.add_argument("--lm-steps", type=int, default=LM_STEPS,
                        help=f"char_lm steps per timed run (default {LM_STEPS}; fewer: a partial run, printed only)")
    parser.add_argument("--out", default=None,
                        help="the file to write (default: bench/results/train_cpu.md; nothing for a partial run)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of jitorch's runs")
    parser.add_argument("--prims", action="store_true", help="print jitorch's kernel time per primitive")
    parser.add_argument("--malloc-tuning", action="store_true",
                        help="turn on jitorch's opt-in heap settings first (jitorch.backends.cpu.memory; writes "
                             "bench/results/train_cpu_malloc_tuning.md)")
    args = parser.parse_args()
    name = "train_cpu_malloc_tuning" if args.malloc_tuning else "train_cpu"
    out = results_path(name, args.repeats < REPEATS or args.lm_steps < LM_STEPS, args.out)
    if args.malloc_tuning and not memory.tune_malloc():
        raise SystemExit("--malloc-tuning: the heap settings need glibc (Linux)")

    sections = [measure(t, args.repeats, args.lm_steps, args.profile, args.prims) for t in args.threads]
    page = header(args.threads) + "\n" + "\n".join(sections)
    notes = kept_notes(out) if out is not None else ""
    publish(page + ("\n" + notes if notes else ""), out)


if __name__ == "__main__":
    main()
