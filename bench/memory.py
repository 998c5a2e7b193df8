"""Peak memory of a training step: jitorch eager and compiled, each with and without activation
checkpointing (`jitorch.utils.checkpoint` around every transformer layer), on the CPU; on the GPU
beside PyTorch eager and torch.compile, with and without `torch.utils.checkpoint`.

    python bench/memory.py                  # writes bench/results/memory_cpu.md
    python bench/memory.py --quick          # the char_lm step alone: prints only, writes nothing
    python bench/memory.py --device cuda    # writes bench/results/memory_cuda.md

Workloads: a training step of `examples/char_lm.py`'s transformer (its sizes: 2 layers, d_model 128,
batch 32 x 64 characters, AdamW) and of a GPT-style model from the same `build_model` scaled down to
run on a CPU (4 layers, d_model 256, 8 heads, batch 8 x 256 characters). Each runner builds its
model, optimizer and step in a fresh process (so no runner's caches or freed memory count for
another), takes three warm-up steps (a compiled step traces and compiles on its first calls), then
measures one step: the peak of the memory Python's allocator tracer (`tracemalloc`, which numpy
reports its buffers to) sees above what was held once the model, optimizer and batch were made.
That counts the step's activations, gradients and optimizer state, and for a compiled step the
memory plan's buffers it keeps between calls and the program itself. On the GPU the figure is the
device's: `max_memory_allocated()` over the step less `memory_allocated()` once the model, optimizer
and batch were made, read the same way through `jitorch.cuda` and `torch.cuda`, for char_lm and the
GPT-sized step of `bench/train.py` (6 layers, d_model 768, T 1024, batch 8). Nothing here asserts a
figure.
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

from common import (  # noqa: E402 - bench/ is on the path
    ConstantRate,
    cpu_model,
    gpu_name,
    gpu_versions,
    publish,
    results_path,
)

WORKLOADS = {
    "char_lm": {},
    "gpt_small": {"d_model": 256, "n_head": 8, "n_layer": 4, "block_size": 256, "batch_size": 8},
    "gpt": {"d_model": 768, "n_head": 12, "n_layer": 6, "block_size": 1024, "batch_size": 8},
}
DEVICE_WORKLOADS = {"cpu": ("char_lm", "gpt_small"), "cuda": ("char_lm", "gpt")}
RUNNERS = {  # label -> (framework, compiled, checkpointed)
    "eager": ("jitorch", False, False),
    "eager, checkpointed": ("jitorch", False, True),
    "compiled": ("jitorch", True, False),
    "compiled, checkpointed": ("jitorch", True, True),
    "PyTorch eager": ("torch", False, False),
    "PyTorch eager, checkpointed": ("torch", False, True),
    "torch.compile": ("torch", True, False),
    "torch.compile, checkpointed": ("torch", True, True),
}
DEVICE_RUNNERS = {"cpu": [label for label, (lib, _, _) in RUNNERS.items() if lib == "jitorch"],
                  "cuda": list(RUNNERS)}


def measure(workload: str, label: str, device: str = "cpu") -> float:
    """Bytes of the step's peak above the model, optimizer and batch (run in a process of its own)."""
    import tracemalloc

    import char_lm

    framework, compiled, checkpointed = RUNNERS[label]
    if framework == "torch":
        import torch as lib
        from torch.utils.checkpoint import checkpoint
    else:
        import jitorch as lib
        from jitorch.utils.checkpoint import checkpoint
    if device == "cpu":
        tracemalloc.start()
    config = char_lm.Config(vocab_size=len(char_lm.CharCorpus().chars), **WORKLOADS[workload])
    rng = np.random.default_rng(0)
    corpus = char_lm.CharCorpus()
    batches = [corpus.batch("train", config.batch_size, config.block_size, rng) for _ in range(4)]
    lib.manual_seed(0)
    model = char_lm.build_model(config, lib, device)
    if checkpointed:
        for layer in model.layers:
            layer.forward = _checkpointed(layer.forward, checkpoint)
    optimizer, _ = char_lm.make_optimizer(model, config, total_steps=100, lib=lib)
    # (a constant learning rate: torch.compile would recompile a step whose Python float rate changes)
    step = char_lm.make_train_step(model, optimizer, ConstantRate(), lib, compiled)
    if device == "cpu":
        base = tracemalloc.get_traced_memory()[0]
    else:
        lib.cuda.synchronize()
        base = lib.cuda.memory_allocated()
    for inputs, targets in batches[:3]:
        step(inputs, targets)
    if device == "cpu":
        tracemalloc.reset_peak()
        step(*batches[3])
        return tracemalloc.get_traced_memory()[1] - base
    lib.cuda.synchronize()
    lib.cuda.reset_peak_memory_stats()
    step(*batches[3])
    lib.cuda.synchronize()
    return lib.cuda.max_memory_allocated() - base


def _checkpointed(forward, checkpoint):
    """A layer's forward whose intermediate values are recomputed in the backward."""

    def run(x, *args, **kwargs):
        return checkpoint(forward, x, *args, use_reentrant=False, **kwargs)

    return run


def measure_in_subprocess(workload: str, label: str, device: str) -> float | str:
    """The runner's figure, or its error (a line) where it failed."""
    code = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'bench')!r}); import memory, json; "
            f"print(json.dumps(memory.measure({workload!r}, {label!r}, {device!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="the char_lm step alone: prints only, writes nothing")
    parser.add_argument("--out", default=None, help="the file to write (default: bench/results/memory_<device>.md)")
    args = parser.parse_args()
    import jitorch

    labels = DEVICE_RUNNERS[args.device]
    workloads = ["char_lm"] if args.quick else list(DEVICE_WORKLOADS[args.device])
    rows, failures = [], []
    for workload in workloads:
        peaks = {}
        for label in labels:
            found = measure_in_subprocess(workload, label, args.device)
            if isinstance(found, str):
                failures.append(f"- {workload}, {label}: {found}")
            else:
                peaks[label] = found
            print(workload, label, found if isinstance(found, str) else f"{found / 2**20:.1f} MiB", flush=True)
        rows.append((workload, peaks))
    command = "python bench/memory.py" + (" --device cuda" if args.device == "cuda" else "") + (
        " --quick" if args.quick else "")
    where = ("tracemalloc, one step after three warm-up steps" if args.device == "cpu" else
             "max_memory_allocated over one step after three warm-up steps, less memory_allocated before them")
    lines = [
        f"# Peak memory of a training step on the {'CPU' if args.device == 'cpu' else 'GPU'} ({date.today()})",
        "",
        f"Machine: {cpu_model() if args.device == 'cpu' else gpu_name()}. Python {platform.python_version()}, "
        f"numpy {np.__version__}, jitorch {jitorch.__version__}"
        + ("" if args.device == "cpu" else f", {gpu_versions()}") + f". Command: `{command}`.",
        "",
        f"MiB above the model, optimizer and batch at the step's peak ({where}, each runner in a fresh "
        "process); in brackets, over jitorch eager's.",
        "",
        "| workload | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for workload, peaks in rows:
        eager = peaks.get("eager")
        sizes = ", ".join(f"{k} {v}" for k, v in WORKLOADS[workload].items()) or "char_lm's own sizes"
        cells = [("failed" if label not in peaks else f"{peaks[label] / 2**20:.1f}"
                  + (f" ({peaks[label] / eager:.2f}x)" if eager else "")) for label in labels]
        lines.append(f"| {workload} ({sizes}) | " + " | ".join(cells) + " |")
    if failures:
        lines += ["", "Failed (the last line of each error):", "", *failures]
    publish("\n".join(lines) + "\n", results_path(f"memory_{args.device}", args.quick, args.out))


if __name__ == "__main__":
    main()
