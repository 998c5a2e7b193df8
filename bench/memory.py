"""Peak memory of a training step: jitorch eager and compiled, each with and without activation
checkpointing (`jitorch.utils.checkpoint` around every transformer layer), on the CPU.

    python bench/memory.py            # writes bench/results/memory_cpu.md
    python bench/memory.py --quick    # the char_lm step alone: prints only, writes nothing

Workloads: a training step of `examples/char_lm.py`'s transformer (its sizes: 2 layers, d_model 128,
batch 32 x 64 characters, AdamW) and of a GPT-style model from the same `build_model` scaled down to
run on a CPU (4 layers, d_model 256, 8 heads, batch 8 x 256 characters). Each runner builds its
model, optimizer and step in a fresh process (so no runner's caches or freed memory count for
another), takes three warm-up steps (a compiled step traces and compiles on its first calls), then
measures one step: the peak of the memory Python's allocator tracer (`tracemalloc`, which numpy
reports its buffers to) sees above what was held once the model, optimizer and batch were made.
That counts the step's activations, gradients and optimizer state, and for a compiled step the
memory plan's buffers it keeps between calls and the program itself. Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples"))

from common import cpu_model, publish, results_path  # noqa: E402 - bench/ is on the path

WORKLOADS = {
    "char_lm": {},
    "gpt_small": {"d_model": 256, "n_head": 8, "n_layer": 4, "block_size": 256, "batch_size": 8},
}
RUNNERS = {  # label -> (compiled, checkpointed)
    "eager": (False, False),
    "eager, checkpointed": (False, True),
    "compiled": (True, False),
    "compiled, checkpointed": (True, True),
}


def measure(workload: str, compiled: bool, checkpointed: bool) -> float:
    """Bytes of the step's peak above the model, optimizer and batch (run in a process of its own)."""
    import tracemalloc

    import char_lm

    import jitorch
    from jitorch.utils.checkpoint import checkpoint

    tracemalloc.start()
    config = char_lm.Config(vocab_size=len(char_lm.CharCorpus().chars), **WORKLOADS[workload])
    rng = np.random.default_rng(0)
    corpus = char_lm.CharCorpus()
    batches = [corpus.batch("train", config.batch_size, config.block_size, rng) for _ in range(4)]
    jitorch.manual_seed(0)
    model = char_lm.build_model(config, jitorch, "cpu")
    if checkpointed:
        for layer in model.layers:
            layer.forward = _checkpointed(layer.forward, checkpoint)
    optimizer, scheduler = char_lm.make_optimizer(model, config, total_steps=100, lib=jitorch)
    step = char_lm.make_train_step(model, optimizer, scheduler, jitorch, compiled)
    base = tracemalloc.get_traced_memory()[0]
    for inputs, targets in batches[:3]:
        step(inputs, targets)
    tracemalloc.reset_peak()
    step(*batches[3])
    return tracemalloc.get_traced_memory()[1] - base


def _checkpointed(forward, checkpoint):
    """A layer's forward whose intermediate values are recomputed in the backward."""

    def run(x, *args, **kwargs):
        return checkpoint(forward, x, *args, use_reentrant=False, **kwargs)

    return run


def measure_in_subprocess(workload: str, label: str) -> float:
    compiled, checkpointed = RUNNERS[label]
    code = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); import memory, json; "
            f"print(json.dumps(memory.measure({workload!r}, {compiled}, {checkpointed})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode:
        raise RuntimeError(f"{workload}, {label}: {done.stderr.strip().splitlines()[-1]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the char_lm step alone: prints only, writes nothing")
    parser.add_argument("--out", default=None, help="the file to write (default: bench/results/memory_cpu.md)")
    args = parser.parse_args()
    import jitorch

    workloads = ["char_lm"] if args.quick else list(WORKLOADS)
    rows = []
    for workload in workloads:
        peaks = {label: measure_in_subprocess(workload, label) for label in RUNNERS}
        print(workload, {k: f"{v / 2**20:.1f} MiB" for k, v in peaks.items()}, flush=True)
        rows.append((workload, peaks))
    command = "python bench/memory.py" + (" --quick" if args.quick else "")
    lines = [
        f"# Peak memory of a training step on the CPU ({date.today()})",
        "",
        f"Machine: {cpu_model()}. Python {platform.python_version()}, numpy {np.__version__}, "
        f"jitorch {jitorch.__version__}. Command: `{command}`.",
        "",
        "MiB above the model, optimizer and batch at the step's peak (tracemalloc, one step after three "
        "warm-up steps, each runner in a fresh process); in brackets, over jitorch eager's.",
        "",
        "| workload | " + " | ".join(RUNNERS) + " |",
        "|---|" + "---:|" * len(RUNNERS),
    ]
    for workload, peaks in rows:
        eager = peaks["eager"]
        sizes = ", ".join(f"{k} {v}" for k, v in WORKLOADS[workload].items()) or "char_lm's own sizes"
        lines.append(f"| {workload} ({sizes}) | "
                     + " | ".join(f"{peaks[label] / 2**20:.1f} ({peaks[label] / eager:.2f}x)" for label in RUNNERS)
                     + " |")
    publish("\n".join(lines) + "\n", results_path("memory_cpu", args.quick, args.out))


if __name__ == "__main__":
    main()
