"""Training speed of the examples' models: jitorch (compiled, as the examples train, and eager) beside
PyTorch eager on the CPU or on one GPU, in one run.

    python bench/train.py                 # writes bench/results/train_cpu.md
    python bench/train.py --repeats 1     # a quick look: prints only, the recorded results are kept
    python bench/train.py --profile       # also prints where jitorch's time goes (cProfile)
    python bench/train.py --prims         # also prints jitorch's kernel time per primitive (on the
                                          # GPU: every runner's device time per kernel)
    python bench/train.py --device cuda   # on the GPU: writes bench/results/train_cuda.md
    python bench/train.py --device cuda --precisions highest   # one precision: train_cuda_highest.md
    python bench/train.py --device cuda --amp bf16   # char_lm and GPT-sized steps under autocast

Workloads (the examples' own code, run with `lib=jitorch` and with `lib=torch`, so the models, batch
sizes, optimizers and data are the same):

- one training epoch of `examples/digits.py`'s CNN (DataLoader, batch 64, Adam);
- 50 training steps of `examples/char_lm.py`'s transformer (batch 32 x 64 characters, AdamW);
- on the GPU only, 20 steps of char_lm instead of 50, and 10 steps of a GPT-sized model from
  char_lm's `build_model` (6 layers, d_model 768, 12 heads, 1,024 characters of context, batch 8,
  AdamW), each at float32 matmul precision "highest" (full float32) and "high" (TF32 allowed).

PyTorch gets as many threads as numpy's BLAS uses (jitorch's matmuls run there), read with
threadpoolctl; `--threads N` sets both to N. Runs of the two frameworks alternate, so background load
hits both alike, and each figure is the median over the repeats. The load average is recorded: on a
2-core machine with other work running, a multi-threaded BLAS or OpenMP call can wait a scheduler
time slice (several ms) for its second thread, so `--threads 1` gives steadier numbers there.
On the GPU (`--device cuda`), the models and batches live on the GPU, the clock is read only after a
device synchronize, and a runner that fails (jitorch's GPU backend is young) reads "failed" with its
error below the table instead of stopping the run.
This is a benchmark, not a test: nothing here asserts a time. A partial run (fewer repeats, char_lm
or GPT steps than the defaults) never replaces the recorded results: it prints its table and writes
nothing, or writes to `--out` outside bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime
import functools
import gc
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
from common import (  # noqa: E402 - bench/ is on the path when this script runs
    ConstantRate,
    cpu_model,
    describe_failure,
    gpu_name,
    gpu_versions,
    publish,
    results_path,
    set_matmul_precision,
    synchronize,
)

import jitorch  # noqa: E402
from jitorch.backends import backend_for  # noqa: E402
from jitorch.backends.cpu import memory  # noqa: E402

LIBS = {"jitorch": jitorch, "PyTorch": torch}
TARGET_RATIO = 1.5
REPEATS = 5  # the defaults of a full run; fewer make a partial one
LM_STEPS = 50
# the GPU run: fewer char_lm steps (each is launch-bound and short), and a GPT-sized step
LM_STEPS_CUDA = 20
GPT_STEPS = 10
GPT_SIZES = {"d_model": 768, "n_head": 12, "n_layer": 6, "block_size": 1024, "batch_size": 8}
PRECISIONS = ("highest", "high")
# the three runners of every workload: label -> (framework, compiled)
RUNNERS = {"jitorch": (jitorch, False), "jitorch compiled": (jitorch, True), "PyTorch": (torch, False)}
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


def digits_epoch(lib, compiled: bool | str | None = False, device: str = "cpu") -> Callable[[], None]:
    """One epoch over the digits training split with the CNN on `device`, as `examples/digits.py`
    trains it; `compiled` is True or a compile mode for a compiled step."""
    lib.manual_seed(0)
    train_set, _ = digits.make_datasets(lib)
    model = digits.build_cnn(lib, device)
    optimizer = digits.make_optimizer(model, lib)
    loader = digits.make_loader(train_set, lib)
    mode = compiled if isinstance(compiled, str) else "default"
    train_step = digits.make_train_step(model, optimizer, lib, bool(compiled), mode)

    def epoch() -> None:
        for images, labels in loader:
            train_step(images, labels)

    epoch()  # warm-up: first-call costs, optimizer state, a compiled step's traces (the short last batch too)
    return epoch


@functools.cache
def corpus() -> char_lm.CharCorpus:
    """char_lm's text, read and encoded once per run."""
    return char_lm.CharCorpus()


def char_lm_steps(lib, steps: int, compiled: bool = False, device: str = "cpu",
                  sizes: dict[str, int] | None = None, mode: str = "default",
                  constant_rate: bool = False, amp: str | None = None) -> Callable[[], None]:
    """`steps` training steps of the char_lm transformer on `device` on pre-drawn batches (the same
    for both frameworks); `sizes` overrides fields of `char_lm.Config` (a GPT-sized model); `mode`:
    the compile mode of a compiled step; `constant_rate`: leave the scheduler out (`ConstantRate`);
    `amp`: the example's mixed precision ("bf16", "fp16": its forward pass under autocast)."""
    config = char_lm.Config(vocab_size=len(corpus().chars), **(sizes or {}))
    rng = np.random.default_rng(0)
    batches = [corpus().batch("train", config.batch_size, config.block_size, rng) for _ in range(steps)]
    lib.manual_seed(0)
    model = char_lm.build_model(config, lib, device)
    optimizer, scheduler = char_lm.make_optimizer(model, config, total_steps=10 * steps, lib=lib)
    scheduler = ConstantRate() if constant_rate else scheduler
    train_step = char_lm.make_train_step(model, optimizer, scheduler, lib, compiled, mode, amp)

    def run() -> None:
        for inputs, targets in batches:
            train_step(inputs, targets)

    for inputs, targets in batches[:3]:  # warm-up (a compiled step traces on its first two calls)
        train_step(inputs, targets)
    return run


def time_alternating(makers: dict[str, Callable[[], None]], repeats: int,
                     sync: Callable[[str], None] | None = None,
                     failures: dict[str, str] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each framework's runner, alternating frameworks within each repeat.

    `sync(name)` (on the GPU) waits for runner `name`'s queued work before the clock starts and
    before it is read. With a `failures` dict, a runner that raises is recorded there and dropped
    (no times) instead of stopping the others."""
    times = {name: [] for name in makers}
    live = dict(makers)
    for _ in range(repeats):
        for name, run in list(live.items()):
            try:
                if sync is not None:
                    sync(name)
                start = time.perf_counter()
                run()
                if sync is not None:
                    sync(name)
            except Exception as err:
                if failures is None:
                    raise
                failures[name], times[name] = describe_failure(err), []
                del live[name]
                continue
            times[name].append(time.perf_counter() - start)
    return {name: t for name, t in times.items() if t}


def primitive_times(run: Callable[[], None], title: str, device: str = "cpu", top: int = 14) -> None:
    """Print the time spent inside each primitive's eager kernel (of `device`'s backend) during one
    jitorch run, most first, and what is left over for Python (dispatch, autograd, op wrappers). On the
    GPU a kernel returns once it is queued, so there this is launch time, not GPU time."""
    kernels = backend_for(device).kernels
    spent: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    originals = dict(kernels)

    def timed(name, impl):
        def kernel(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return impl(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
                calls[name] += 1
        return kernel

    for name, impl in originals.items():
        kernels[name] = timed(name, impl)
    try:
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
    finally:
        kernels.update(originals)
    print(f"\n--- jitorch kernel time per primitive, {title}: {total * 1e3:.1f} ms in all, "
          f"{sum(spent.values()) * 1e3:.1f} ms in kernels, {sum(calls.values())} calls ---")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{name:14s} {calls[name]:6d} calls {seconds * 1e3:8.2f} ms")


def device_time_tables(runners: dict[str, Callable[[], None]], title: str, top: int = 15) -> None:
    """Print where each runner's GPU time goes: its kernels by device time over one run, from
    `jitorch.profiler` (jitorch's runners: eager kernels by primitive, compiled steps by kernel) and
    `torch.profiler` (PyTorch's), each after a device synchronize."""
    for label, run in runners.items():
        if CUDA_RUNNERS[label][0] is jitorch:
            jitorch.cuda.synchronize()
            with jitorch.profiler.profile() as prof:
                run()
            table = prof.key_averages().table(sort_by="device_time_total", row_limit=top)
        else:
            torch.cuda.synchronize()
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities) as prof:
                run()
                torch.cuda.synchronize()
            averages = prof.key_averages()
            try:
                table = averages.table(sort_by="device_time_total", row_limit=top)
            except (AttributeError, KeyError, ValueError):  # (older PyTorch: the CUDA name)
                table = averages.table(sort_by="cuda_time_total", row_limit=top)
        print(f"\n--- device time per kernel, {label}, {title} ---\n{table}", flush=True)


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


# ---------------------------------------------------------------------------------------------
# the GPU

# label -> (framework, compile mode or None for eager)
CUDA_RUNNERS = {
    "jitorch eager": (jitorch, None),
    "jitorch compiled": (jitorch, "default"),
    "jitorch reduce-overhead": (jitorch, "reduce-overhead"),
    "PyTorch eager": (torch, None),
    "torch.compile": (torch, "default"),
    "torch.compile reduce-overhead": (torch, "reduce-overhead"),
}
MLP_STEPS, SMALL_MLP_STEPS = 20, 100


def gpu_char_lm_steps(lib, steps: int, mode: str | None, sizes: dict[str, int] | None = None,
                      device: str = "cuda", amp: str | None = None) -> Callable[[], None]:
    """`char_lm_steps` on the GPU at a constant learning rate, eager (`mode` None) or compiled in `mode`."""
    return char_lm_steps(lib, steps, mode is not None, device, sizes, mode or "default", constant_rate=True, amp=amp)


def mlp(nn, widths: tuple[int, ...], layer_norm: bool):
    """Linear layers between `widths` with a ReLU after each but the last; with `layer_norm`, the last
    hidden width is layer-normed (instead of a ReLU) before the last Linear."""
    layers = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if k == len(widths) - 3:
            layers.append(nn.LayerNorm(b) if layer_norm else nn.ReLU())
        elif k < len(widths) - 3:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_steps(lib, steps: int, mode: str | None, widths: tuple[int, ...], batch: int,
              layer_norm: bool, device: str = "cuda") -> Callable[[], None]:
    """`steps` AdamW steps of `mlp(widths, layer_norm)` on one fixed batch of random data on the GPU,
    with cross-entropy over the last width's classes. No `.item()` per step: the steps queue back to
    back, as in a training loop that logs now and then."""
    lib.manual_seed(0)
    model = mlp(lib.nn, widths, layer_norm).to(device)
    optimizer = lib.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = lib.from_numpy(rng.standard_normal((batch, widths[0]), dtype=np.float32)).to(device)
    y = lib.from_numpy(rng.integers(0, widths[-1], batch)).to(device)

    def step(inputs, labels):
        optimizer.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        return loss

    step = lib.compile(step, mode=mode) if mode is not None else step

    def run() -> None:
        for _ in range(steps):
            step(x, y)

    for _ in range(3):  # warm-up: traces, optimizer state, a reduce-overhead capture
        step(x, y)
    return run


AMP_WORKLOADS = ("char_lm", "gpt")  # the workloads that train under autocast with `--amp`


def cuda_workloads(lm_steps: int, gpt_steps: int, only: set[str] | None = None,
                   amp: str | None = None) -> dict[str, tuple[Callable, int]]:
    """name -> (make(lib, mode) -> a runner on the GPU, training steps per run), for the workloads whose
    short name (digits, char_lm, mlp, small_mlp, gpt) is in `only` (all when None); with `amp`, the
    char_lm-based ones (`AMP_WORKLOADS`) in that mixed precision."""
    gpt = GPT_SIZES
    found = {
        "mlp": ("MLP: one step (1024-4096 ReLU -1024 LayerNorm -10, batch 4096, AdamW)",
                (lambda lib, mode: mlp_steps(lib, MLP_STEPS, mode, (1024, 4096, 1024, 10), 4096, True), MLP_STEPS)),
        "small_mlp": ("small MLP: one step (784-256 ReLU -10, batch 64, AdamW)",
                      (lambda lib, mode: mlp_steps(lib, SMALL_MLP_STEPS, mode, (784, 256, 10), 64, False),
                       SMALL_MLP_STEPS)),
        "digits": (f"digits CNN: one epoch ({len(digits.make_loader(digits.make_datasets(jitorch)[0]))} steps of "
                   f"batch {digits.BATCH_SIZE})", (lambda lib, mode: digits_epoch(lib, mode, "cuda"), 1)),
        "char_lm": (f"char_lm transformer: one step (batch {char_lm.Config.batch_size} x "
                    f"{char_lm.Config.block_size} characters)",
                    (lambda lib, mode: gpu_char_lm_steps(lib, lm_steps, mode, amp=amp), lm_steps)),
        "gpt": (f"GPT-sized char_lm: one step ({gpt['n_layer']} layers, d_model {gpt['d_model']}, {gpt['n_head']} "
                f"heads, batch {gpt['batch_size']} x {gpt['block_size']} characters, vocabulary "
                f"{len(corpus().chars)})",
                (lambda lib, mode: gpu_char_lm_steps(lib, gpt_steps, mode, gpt, amp=amp), gpt_steps)),
    }
    return {name: entry for key, (name, entry) in found.items()
            if (only is None or key in only) and (amp is None or key in AMP_WORKLOADS)}


def first_call_seconds(make: Callable, lib, mode: str | None) -> tuple[Callable[[], None], float]:
    """A runner and the wall time its making took: building the model and the warm-up steps, which
    include tracing and compiling for a compiled runner."""
    synchronize("cuda", lib)
    start = time.perf_counter()
    run = make(lib, mode)
    synchronize("cuda", lib)
    return run, time.perf_counter() - start


def measure_cuda(precision: str, repeats: int, lm_steps: int, gpt_steps: int, profile: bool,
                 prims: bool, only: set[str] | None, amp: str | None = None) -> tuple[str, bool]:
    """Time every GPU workload with every runner at one float32 matmul precision (and `amp`'s mixed
    precision); returns its results section and whether jitorch has the precision setting."""
    jitorch_has_precision = set_matmul_precision(precision)
    labels = list(CUDA_RUNNERS)
    lines = [
        f"## float32 matmul precision \"{precision}\""
        + (f", mixed precision {char_lm.AMP_DTYPES[amp]} (autocast{' and GradScaler' if amp == 'fp16' else ''})"
           if amp else ""),
        "",
        "Milliseconds per training step; in brackets, each jitorch runner's time over PyTorch eager's.",
        "",
        "| workload | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    build_lines = ["", "Seconds to build each compiled runner (the model, 3 warm-up steps that trace and compile):", "",
                   "| workload | " + " | ".join(label for label in labels if CUDA_RUNNERS[label][1]) + " |",
                   "|---|" + "---:|" * sum(1 for label in labels if CUDA_RUNNERS[label][1])]
    failed_lines = []
    for name, (make, units) in cuda_workloads(lm_steps, gpt_steps, only, amp).items():
        runners, failures, built = {}, {}, {}
        for label, (lib, mode) in CUDA_RUNNERS.items():
            try:
                runners[label], built[label] = first_call_seconds(make, lib, mode)
                # (as it happens: a run stopped by a time limit still says how far it got)
                print(f"[cuda, {precision}] {name}: {label} built in {built[label]:.1f} s", flush=True)
            except Exception as err:
                failures[label] = describe_failure(err)
        times = time_alternating(runners, repeats, lambda label: synchronize("cuda", CUDA_RUNNERS[label][0]),
                                 failures)
        ms = {label: 1000 * statistics.median(t) / units for label, t in times.items()}
        theirs = ms.get("PyTorch eager")
        cells = []
        for label in labels:
            text = f"{ms[label]:.2f}" if label in ms else "failed"
            if label in ms and theirs and CUDA_RUNNERS[label][0] is jitorch:
                text += f" ({ms[label] / theirs:.2f}x)"
            cells.append(text)
        lines.append(f"| {name} | {' | '.join(cells)} |")
        build_lines.append(f"| {name} | " + " | ".join(f"{built[label]:.1f}" if label in built and label in ms
                                                       else "-" for label in labels if CUDA_RUNNERS[label][1]) + " |")
        failed_lines += [f"- {label}, {name}: {error}" for label, error in failures.items()]
        print(f"[cuda, {precision}] {name}: " + ", ".join(f"{label} {cell}" for label, cell in zip(labels, cells)),
              flush=True)
        for label, error in failures.items():
            print(f"  {label} failed: {error}", flush=True)
        if profile:
            for label in ("jitorch eager", "jitorch compiled"):
                if label in runners and label in ms:
                    profile_jitorch(runners[label], f"{label}, {name}", top=30)
        if prims:
            device_time_tables({label: run for label, run in runners.items()  # (a graph's replay is one launch)
                                if label in ms and "reduce-overhead" not in label}, name)
        del runners
        gc.collect()  # the models and their optimizer state leave the GPU before the next workload
        torch.cuda.empty_cache()
    lines += build_lines
    if failed_lines:
        lines += ["", "Failed (the error each raised):", "", *failed_lines]
    return "\n".join(lines) + "\n", jitorch_has_precision


def cuda_page(sections: list[str], jitorch_has_precision: bool, repeats: int, lm_steps: int,
              gpt_steps: int, command: str) -> str:
    """The GPU results page: what was run where, the sections, then how it was measured."""
    return "\n".join([
        "# Training speed on the GPU: jitorch (eager, compiled, CUDA graphs) vs PyTorch (eager, torch.compile)",
        "",
        "The char_lm and digits workloads are the examples' own model, optimizer and batch code, run on one GPU",
        "with `lib=jitorch` and with `lib=torch`; the MLPs are written once in bench/train.py for both.",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- GPU: {gpu_name()}; host: {cpu_model()}, {os.cpu_count()} logical CPUs",
        f"- versions: Python {platform.python_version()}, numpy {np.__version__}, {gpu_versions()}, "
        f"jitorch {jitorch.__version__}",
        f"- command: `{command}`",
        "- matmul precision: `torch.set_float32_matmul_precision` and "
        + ("`jitorch.set_float32_matmul_precision`" if jitorch_has_precision else
           "(jitorch has no `set_float32_matmul_precision`: its matmuls ran at its default in both sections)")
        + "; PyTorch's cuDNN convolutions (the digits CNN) keep their default, TF32 allowed",
        "",
        *sections,
        "How it was measured:",
        "",
        f"- median of {repeats} repeats, the runners alternating; char_lm over {lm_steps} steps, the GPT-sized "
        f"model over {gpt_steps}, the MLP over {MLP_STEPS} and the small MLP over {SMALL_MLP_STEPS} steps per run, "
        "after 3 warm-up steps (a compiled step traces on its first two calls; reduce-overhead captures after "
        "them); the digits epoch after one warm-up epoch",
        "- char_lm and digits draw their data on the host and copy each batch to the GPU inside the step, and end "
        "each step with `loss.item()`, as the examples do; the MLPs train on one batch already on the GPU and "
        "never wait for it inside a run; the clock starts and stops after a device synchronize "
        "(`jitorch.cuda.synchronize()`, `torch.cuda.synchronize()`)",
        "- the learning rate is constant (char_lm's scheduler is left out): torch.compile specializes on Python "
        "floats and would recompile a step whose rate changes every call",
        "- \"compiled\" is `lib.compile` of the whole step (forward, backward and optimizer update), in the mode "
        "named; reduce-overhead is PyTorch's name for replaying the step as a CUDA graph",
        "- build seconds: making the runner (the model, 3 warm-up steps), in this process, with the on-disk "
        "kernel caches as they were (a workload's first precision section finds them colder than its second)",
        "",
    ])


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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to train (default cpu; cuda writes bench/results/train_cuda.md)")
    parser.add_argument("--threads", type=int, nargs="*", default=[None],
                        help="CPU only: thread counts to measure at (default: what numpy's BLAS uses)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"timed runs per workload (default {REPEATS}; fewer: a partial run, printed only)")
    parser.add_argument("--lm-steps", type=int, default=None,
                        help=f"char_lm steps per timed run (default {LM_STEPS} on the CPU, {LM_STEPS_CUDA} on cuda; "
                             "fewer: a partial run, printed only)")
    parser.add_argument("--gpt-steps", type=int, default=GPT_STEPS,
                        help=f"cuda only: GPT-sized steps per timed run (default {GPT_STEPS}; fewer: a partial run, "
                             "printed only)")
    parser.add_argument("--workloads", default=None,
                        help="cuda only: a comma-separated subset of mlp,small_mlp,digits,char_lm,gpt (a partial run)")
    parser.add_argument("--amp", choices=sorted(char_lm.AMP_DTYPES), default=None,
                        help="cuda: the char_lm and GPT-sized steps under autocast in bfloat16 or float16 (with a "
                             "GradScaler), every runner alike; writes train_cuda_<precisions>_amp_<amp>.md")
    parser.add_argument("--precisions", default=None,
                        help="cuda only: a comma-separated subset of highest,high (one alone writes "
                             "train_cuda_<precision>.md)")
    parser.add_argument("--out", default=None,
                        help="the file to write (default: bench/results/train_cpu.md or train_cuda.md; nothing for "
                             "a partial run)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of jitorch's runs")
    parser.add_argument("--prims", action="store_true",
                        help="print jitorch's kernel time per primitive (on cuda: each runner's device time by kernel)")
    parser.add_argument("--malloc-tuning", action="store_true",
                        help="CPU only: turn on jitorch's opt-in heap settings first (jitorch.backends.cpu.memory; "
                             "writes bench/results/train_cpu_malloc_tuning.md)")
    args = parser.parse_args()
    if args.amp and args.device != "cuda":
        parser.error("--amp: mixed precision is measured on the GPU (--device cuda)")
    if args.device == "cuda":
        main_cuda(args, parser)
        return
    if args.lm_steps is None:
        args.lm_steps = LM_STEPS
    name = "train_cpu_malloc_tuning" if args.malloc_tuning else "train_cpu"
    out = results_path(name, args.repeats < REPEATS or args.lm_steps < LM_STEPS, args.out)
    if args.malloc_tuning and not memory.tune_malloc():
        raise SystemExit("--malloc-tuning: the heap settings need glibc (Linux)")

    sections = [measure(t, args.repeats, args.lm_steps, args.profile, args.prims) for t in args.threads]
    page = header(args.threads) + "\n" + "\n".join(sections)
    notes = kept_notes(out) if out is not None else ""
    publish(page + ("\n" + notes if notes else ""), out)


def main_cuda(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """`--device cuda`: the precisions and workloads asked for (all by default), one page."""
    if args.threads != [None] or args.malloc_tuning:
        parser.error("--threads and --malloc-tuning are for the CPU; leave them out with --device cuda")
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no GPU here (a CUDA build of torch and a GPU are needed)")
    lm_steps = LM_STEPS_CUDA if args.lm_steps is None else args.lm_steps
    only = set(args.workloads.split(",")) if args.workloads else None
    precisions = args.precisions.split(",") if args.precisions else list(PRECISIONS)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"--precisions: unknown {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    if args.amp and only is not None and only - set(AMP_WORKLOADS):
        parser.error(f"--amp: only {', '.join(AMP_WORKLOADS)} train in mixed precision here")
    partial = args.repeats < REPEATS or lm_steps < LM_STEPS_CUDA or args.gpt_steps < GPT_STEPS or only is not None
    # one precision is a whole run of its own (a GPU machine's call may not fit both): its own page
    name = "train_cuda" if sorted(precisions) == sorted(PRECISIONS) else "train_cuda_" + "_".join(precisions)
    name += f"_amp_{args.amp}" if args.amp else ""
    out = results_path(name, partial, args.out)
    measured = [measure_cuda(p, args.repeats, lm_steps, args.gpt_steps, args.profile, args.prims, only, args.amp)
                for p in precisions]
    set_matmul_precision("highest")
    command = "python bench/train.py --device cuda" + (f" --workloads {args.workloads}" if only else "") + (
        f" --precisions {args.precisions}" if args.precisions else "") + (f" --amp {args.amp}" if args.amp else "")
    page = cuda_page([text for text, _ in measured], all(has for _, has in measured), args.repeats, lm_steps,
                     args.gpt_steps, command)
    notes = kept_notes(out) if out is not None else ""
    publish(page + ("\n" + notes if notes else ""), out)


if __name__ == "__main__":
    main()
