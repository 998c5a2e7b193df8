"""jitorch.compile on the CPU: trace + lowering time, and the per-call overhead of a cache hit,
side by side with eager jitorch, PyTorch eager and torch.compile in one process.

    python bench/compile.py                      # prints a table, writes bench/results/compile_cpu.md
    python bench/compile.py --kernel-threads 1   # ... writes bench/results/compile_cpu_1thread.md
    python bench/compile.py --quick              # fewer repeats, no torch.compile; prints only

A compiled program runs its pointwise work and its reductions over the last dim as fused LLVM
kernels and everything else (matmuls, other reductions, index ops) on the eager CPU kernels,
without per-op Python or autograd bookkeeping.
The targets jitorch aims for: tracing and lowering a training step in under 0.3 s, and a cache hit
costing under 30 µs of Python on top of its kernels' own time.

A quick run never replaces the recorded results: it prints its table and writes nothing (or writes
to `--out` outside bench/results/). PyTorch is a peer, not a requirement: without it, and for
torch.compile in a quick run, the table says "skipped".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

import jitorch as jt

try:
    import torch
except ImportError:  # torch (the `test` extra) is only a peer here
    torch = None

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import char_lm  # noqa: E402 - the example's model, built for either library
from common import cell, cpu_model, median_time, publish, results_path  # noqa: E402

# the columns of the steady-state table; PyTorch's may be skipped
CONTENDERS = ["jitorch eager", "jitorch compiled", "torch eager", "torch.compile"]


# ---------------------------------------------------------------------------------------------
# training steps, written once for both libraries


def mlp_step_factory(lib, seed: int = 0):
    lib.manual_seed(seed)
    model = lib.nn.Sequential(lib.nn.Linear(784, 256), lib.nn.ReLU(), lib.nn.Linear(256, 10))
    opt = lib.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    x = lib.tensor(rng.standard_normal((64, 784)).astype(np.float32))
    y = lib.tensor(rng.integers(0, 10, 64))

    def step(x, y):
        opt.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step, (x, y)


def char_lm_step_factory(lib, seed: int = 0):
    config = char_lm.Config()
    lib.manual_seed(seed)
    model = char_lm.build_model(config, lib)
    opt = lib.optim.AdamW(model.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, config.vocab_size, (config.batch_size, config.block_size + 1))
    x, y = lib.tensor(codes[:, :-1]), lib.tensor(codes[:, 1:])

    def step(x, y):
        opt.zero_grad()
        loss = char_lm.lm_loss(model, x, y, lib)
        loss.backward()
        opt.step()
        return loss

    return step, (x, y)


def tiny_factory(lib, seed: int = 0):
    x = lib.tensor(np.arange(4, dtype=np.float32) - 1.5)

    def f(x):
        return ((x * 2 + 1).relu() * x).sum()

    return f, (x,)


# ---------------------------------------------------------------------------------------------
# measurements


def jitorch_trace_seconds(factory, dynamic: bool | None = None) -> float:
    """Trace + lowering (fusion and LLVM compilation of the kernels) of both traces of a training
    step: the first call's, which also creates the optimizer's state, and the steady-state one.
    `main` points the kernel disk cache at an empty folder, so this is a first run's cost.
    `dynamic`: jitorch.compile's (True: every argument dim symbolic from the first trace)."""
    step, args = factory(jt)
    compiled = jt.compile(step, dynamic=dynamic)
    compiled(*args)
    compiled(*args)
    return sum(compiled.trace_seconds)


WARM_SCRIPT = """
import sys
sys.path[:0] = {paths!r}
import compile as bench
print(bench.jitorch_trace_seconds(bench.{factory}, {dynamic!r}))
"""


def jitorch_trace_seconds_warm(factory, dynamic: bool | None = None, cache_dir: str | None = None) -> float:
    """The same in a new process whose kernel disk cache already holds the step's kernels (what a
    second run of a training script sees): tracing, fusion, and loading machine code. With
    `cache_dir`, that process's kernel cache (an empty folder: a first run's cost in a process of
    its own)."""
    here = Path(__file__).resolve().parent
    script = WARM_SCRIPT.format(paths=[str(here), str(here.parent / "examples")], factory=factory.__name__,
                                dynamic=dynamic)
    env = dict(os.environ, **({"JITORCH_CACHE_DIR": cache_dir} if cache_dir else {}))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.split()[-1])


def torch_compile_first_call(factory) -> float:
    """A cold first call: inductor's on-disk caches off, as for a user's first run."""
    torch._dynamo.reset()
    torch._inductor.config.force_disable_caches = True
    step, args = factory(torch)
    compiled = torch.compile(step)
    t0 = time.perf_counter()
    compiled(*args)
    elapsed = time.perf_counter() - t0
    torch._inductor.config.force_disable_caches = False
    return elapsed


def step_times(factory, number: int, repeats: int, contenders: list[str]) -> dict[str, float | None]:
    """Median seconds per call of each of `contenders` that runs; None for one that is skipped."""
    out = dict.fromkeys(CONTENDERS)
    step, args = factory(jt)
    out["jitorch eager"] = median_time(lambda: step(*args), number, repeats)
    step, args = factory(jt)
    compiled = jt.compile(step)
    for _ in range(3):
        compiled(*args)
    out["jitorch compiled"] = median_time(lambda: compiled(*args), number, repeats)
    if "torch eager" in contenders:
        step, args = factory(torch)
        out["torch eager"] = median_time(lambda: step(*args), number, repeats)
    if "torch.compile" in contenders:
        torch._dynamo.reset()
        step, args = factory(torch)
        tc = torch.compile(step)
        for _ in range(3):
            tc(*args)
        out["torch.compile"] = median_time(lambda: tc(*args), number, repeats)
    return out


def hit_overhead(number: int, repeats: int) -> tuple[float, float]:
    """(whole compiled call, the executor alone) for the tiny function, in seconds."""
    f, args = tiny_factory(jt)
    compiled = jt.compile(f)
    compiled(*args)
    program = next(iter(compiled.cache.values()))[0]
    inputs = program.inputs(list(args))
    whole = median_time(lambda: compiled(*args), number, repeats)
    plan = median_time(lambda: program.plan.run(inputs), number, repeats)
    return whole, plan


def skipped_contenders(quick: bool) -> dict[str, str]:
    """The PyTorch contenders that do not run, each with the reason."""
    if torch is None:
        return {"torch eager": "torch is not installed", "torch.compile": "torch is not installed"}
    return {"torch.compile": "--quick"} if quick else {}


def results_name(kernel_threads: int | None) -> str:
    """The results file's name: one per fused-kernel thread setting."""
    if not kernel_threads:
        return "compile_cpu"
    return f"compile_cpu_{kernel_threads}thread{'s' if kernel_threads > 1 else ''}"


NEW_LENGTHS = (48, 32, 40, 56, 17)  # sequence lengths after the first (char_lm's block size, 64)


def new_length_seconds(lib, dynamic: bool | None = None) -> list[float] | None:
    """Wall seconds of a compiled char-LM step's first call at each of `NEW_LENGTHS`, after it was
    compiled and run at the model's block size: what a new sequence length costs. By default both
    libraries recompile once, with the changed dim made symbolic (automatic dynamic shapes), then
    serve further lengths: torch.compile as it is, jitorch by lowering its symbolic trace for the
    length (no trace; kernels from its caches). `dynamic=False`: a trace per length."""
    if lib is None:
        return None
    if lib is torch:
        torch._dynamo.reset()
    step, (x, y) = char_lm_step_factory(lib)
    compiled = lib.compile(step, dynamic=dynamic)
    compiled(x, y)
    compiled(x, y)
    seconds = []
    for length in NEW_LENGTHS:
        xs, ys = lib.tensor(x.numpy()[:, :length].copy()), lib.tensor(y.numpy()[:, :length].copy())
        t0 = time.perf_counter()
        compiled(xs, ys)
        seconds.append(time.perf_counter() - t0)
    return seconds


def _against(seconds: float, target: float) -> str:
    return f"{'met' if seconds < target else 'missed'} {target} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and no torch.compile; prints only (the recorded results are kept)")
    parser.add_argument("--out", default=None,
                        help="the file to write (default: bench/results/compile_cpu[_Nthreads].md; "
                             "nothing for a quick run)")
    parser.add_argument("--kernel-threads", type=int, default=None,
                        help="threads for jitorch's fused CPU kernels (default: all cores)")
    args = parser.parse_args()
    out = results_path(results_name(args.kernel_threads), args.quick, args.out)
    os.environ["JITORCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="jitorch-bench-cache-")  # cold kernel cache
    if args.kernel_threads:
        jt.set_num_threads(args.kernel_threads)
    repeats = 3 if args.quick else 7
    skipped = skipped_contenders(args.quick)
    contenders = [c for c in CONTENDERS if c not in skipped]
    if torch is not None:
        torch.set_num_threads(2)

    factories = {"MLP step (784-256-10, batch 64, AdamW)": mlp_step_factory,
                 "char-LM step (examples/char_lm.py model, AdamW)": char_lm_step_factory}
    peer = f"torch threads 2. torch {torch.__version__}" if torch is not None else "torch not installed"
    lines = [f"# jitorch.compile on the CPU ({date.today()})", "",
             f"Machine: {cpu_model()}; {peer}, numpy {np.__version__}. "
             f"Command: `python bench/compile.py{' --quick' if args.quick else ''}"
             f"{f' --kernel-threads {args.kernel_threads}' if args.kernel_threads else ''}`; jitorch's fused "
             f"kernels on {jt.get_num_threads()} thread(s)."
             + "".join(f" Skipped: {name} ({why})." for name, why in skipped.items()), "",
             "## Trace + lowering (targets: a training step under 0.3 s; the char-LM step's first run under "
             "1 s, and under 0.3 s once the kernel cache holds its kernels)", "",
             "Both traces of the step (the first call's, which creates the optimizer state, and the "
             "steady-state one): with an empty kernel disk cache (LLVM compiles every kernel: a first run), "
             "and in a new process once the cache holds them (a later run).", "",
             "| step | jitorch, empty kernel cache s | jitorch, warm kernel cache s | torch.compile first call s "
             "(cold caches) |", "|---|---|---|---|"]
    for name, factory in factories.items():
        trace_s = jitorch_trace_seconds(factory)
        warm_s = jitorch_trace_seconds_warm(factory)
        tc_s = torch_compile_first_call(factory) if "torch.compile" in contenders else None
        cold = _against(trace_s, 0.3) + ("; " + _against(trace_s, 1.0) if factory is char_lm_step_factory else "")
        warm = _against(warm_s, 0.3)
        lines.append(f"| {name} | {trace_s:.3f} ({cold}) | {warm_s:.3f} ({warm}) | {cell(tc_s, '.1f')} |")
    # dynamic shapes from the first trace: every argument dim symbolic (targets: under 1 s cold, 0.3 s
    # warm), cold in a process of its own with an empty kernel cache, then warm in another
    empty = tempfile.mkdtemp(prefix="jitorch-bench-cache-")
    trace_s = jitorch_trace_seconds_warm(char_lm_step_factory, True, empty)
    warm_s = jitorch_trace_seconds_warm(char_lm_step_factory, True, empty)
    lines.append(f"| char-LM step, `dynamic=True` (batch and length symbolic) | {trace_s:.3f} "
                 f"({_against(trace_s, 0.3)}; {_against(trace_s, 1.0)}) | {warm_s:.3f} ({_against(warm_s, 0.3)}) | - |")

    lengths = ", ".join(map(str, NEW_LENGTHS))
    lines += ["", f"## A new sequence length: the char-LM step's first call at lengths {lengths} after 64", "",
              "Seconds per first call at each new length, in this process (kernel caches as the runs above "
              "left them). By default both recompile once, with the changed dim symbolic (automatic dynamic "
              "shapes), and then serve other lengths: torch.compile runs its program as it is; jitorch lowers "
              "its symbolic trace for each new length (no trace). With `dynamic=False` jitorch traces and "
              "lowers each new length.", "",
              "| contender | " + " | ".join(f"length {n} s" for n in NEW_LENGTHS) + " |",
              "|---" * (len(NEW_LENGTHS) + 1) + "|"]
    for who, lib, dynamic in (("jitorch compiled", jt, None), ("jitorch compiled, dynamic=False", jt, False),
                              ("torch.compile", torch if "torch.compile" in contenders else None, None)):
        found = new_length_seconds(lib, dynamic)
        lines.append(f"| {who} | " + " | ".join(cell(v, ".2f") for v in (found or [None] * len(NEW_LENGTHS)))
                     + " |")

    lines += ["", "## Steady-state time per call, ms (median)", ""]
    lines += ["| case | " + " | ".join(CONTENDERS) + " | compiled / jitorch eager |",
              "|---" * (len(CONTENDERS) + 2) + "|"]
    cases = dict(factories)
    cases["tiny: ((x*2+1).relu()*x).sum(), 4 elements"] = tiny_factory
    for name, factory in cases.items():
        tiny = factory is tiny_factory
        t = step_times(factory, 2000 if tiny else 5, repeats, contenders)
        unit = 1e6 if tiny else 1e3
        cells = " | ".join(cell(t[c], ".1f", scale=unit) for c in CONTENDERS)
        ratio = t["jitorch compiled"] / t["jitorch eager"]
        lines.append(f"| {name}{' (µs)' if tiny else ''} | {cells} | {ratio:.2f}x |")

    whole, plan = hit_overhead(5000, repeats)
    overhead = (whole - plan) * 1e6
    lines += ["", "## Cache-hit overhead (target: under 30 µs plus the kernels' own time)", "",
              "| tiny function | µs |", "|---|---|",
              f"| whole compiled call | {whole * 1e6:.1f} |",
              f"| the executor (the kernels and their loop) | {plan * 1e6:.1f} |",
              f"| guards, input gathering, outputs: the overhead | {overhead:.1f} "
              f"({'met' if overhead < 30 else 'missed'}) |"]
    publish("\n".join(lines) + "\n", out)


if __name__ == "__main__":
    main()
