"""Fused attention on one GPU: jitorch's Triton flash-attention kernels beside PyTorch's
`scaled_dot_product_attention` (its cuDNN or flash kernels), forward and forward + backward, causal,
at the shapes of bench/train.py's transformers, in one process.

    python bench/attention.py                # writes bench/results/attention_cuda.md
    python bench/attention.py --configs      # also times the block configurations each kernel
                                             # could take (how the table in triton_attention.py
                                             # was chosen): printed, never recorded

The operands are laid out as a model makes them: (B, length, H, E) projections viewed as
(B, H, length, E). jitorch's side calls the cuda backend's `attention` / `attention_backward`
kernels on CuPy arrays (what a compiled program runs); PyTorch's is `F.scaled_dot_product_attention`
forward, and its autograd backward. Each figure is the median of 7 timed loops of 20 calls, each
loop starting and ending with a device synchronize of both libraries.
"""

from __future__ import annotations

import argparse
import math
import platform
from collections.abc import Callable
from datetime import date

import numpy as np
from common import gpu_name, gpu_versions, median_time, publish, results_path, synchronize

import jitorch

# (label, batch, heads, length, head dim, dtype, float32 matmul precision)
CASES = [
    ("GPT-sized (bench/train.py gpt)", 8, 12, 1024, 64, "bfloat16", "high"),
    ("GPT-sized, float16", 8, 12, 1024, 64, "float16", "high"),
    ("GPT-sized, float32 (TF32)", 8, 12, 1024, 64, "float32", "high"),
    ("char_lm (examples/char_lm.py)", 32, 4, 64, 32, "float32", "highest"),
]
# block configurations tried by --configs, per kernel group: (BLOCK_M, BLOCK_N, warps, stages)
CANDIDATES = {
    "rows": [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3), (128, 64, 8, 4)],
    "dkdv": [(64, 64, 8, 2), (32, 128, 4, 3), (32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 3),
             (16, 128, 4, 3)],
    "dq": [(128, 64, 8, 2), (128, 32, 4, 3), (128, 32, 8, 3), (64, 64, 4, 3), (128, 64, 4, 3), (64, 32, 4, 3)],
}


def operands(batch: int, heads: int, length: int, head_dim: int, dtype: str, seed: int = 0) -> list[np.ndarray]:
    """q, k, v and an output gradient as host arrays in the projections' (B, length, H, E) layout."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, length, heads, head_dim), dtype=np.float32) for _ in range(4)]


def jitorch_runs(arrays: list[np.ndarray], dtype: str) -> dict[str, Callable[[], object]]:
    from jitorch.backends import backend_for
    from jitorch.backends.cuda import attention as kernels

    upload, np_dtype = backend_for("cuda").from_numpy, getattr(jitorch, dtype).np
    q, k, v, g = (upload(a.astype(np_dtype)).transpose(0, 2, 1, 3) for a in arrays)
    scale = 1 / math.sqrt(q.shape[-1])
    out = kernels.attention(q, k, v, is_causal=True, scale=scale)

    def forward():
        return kernels.attention(q, k, v, is_causal=True, scale=scale)

    def both():
        o = kernels.attention(q, k, v, is_causal=True, scale=scale)
        return kernels.attention_backward(q, k, v, o, g, is_causal=True, scale=scale)

    def backward():
        return kernels.attention_backward(q, k, v, out, g, is_causal=True, scale=scale)

    return {"forward": forward, "forward + backward": both, "backward": backward}


def torch_runs(arrays: list[np.ndarray], dtype: str) -> dict[str, Callable[[], object]]:
    import torch
    import torch.nn.functional as F

    q, k, v, g = (torch.from_numpy(a).to("cuda", getattr(torch, dtype)).transpose(1, 2) for a in arrays)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))

    def forward():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def both():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.autograd.grad(out, (q, k, v), g)

    return {"forward": forward, "forward + backward": both}


def time_case(case: tuple) -> dict[str, dict[str, float]]:
    """Milliseconds per call of each run, per library."""
    _, batch, heads, length, head_dim, dtype, precision = case
    import torch

    torch.set_float32_matmul_precision(precision)
    jitorch.set_float32_matmul_precision(precision)
    arrays = operands(batch, heads, length, head_dim, dtype)
    found = {}
    for name, make in (("jitorch", jitorch_runs), ("PyTorch", torch_runs)):
        runs = make(arrays, dtype)
        found[name] = {run: 1e3 * median_time(fn, 20, sync=lambda: synchronize("cuda")) for run, fn in runs.items()}
    return found


def flops(case: tuple, run: str) -> float:
    """Tensor-core FLOPs of causal attention (half the scores): 2 products forward, 5 backward."""
    _, batch, heads, length, head_dim, _, _ = case
    one = 2 * batch * heads * length * length * head_dim / 2
    return one * {"forward": 2, "backward": 5, "forward + backward": 7}[run]


def page(rows: list[tuple[tuple, dict]], command: str) -> str:
    lines = [
        "# Fused attention on the GPU: jitorch's Triton kernels vs PyTorch's scaled_dot_product_attention",
        "",
        f"- date: {date.today().isoformat()}",
        f"- GPU: {gpu_name()}; Python {platform.python_version()}, numpy {np.__version__}, {gpu_versions()}, "
        f"jitorch {jitorch.__version__}",
        f"- command: `{command}`",
        "- causal; operands laid out as a model makes them, (B, length, H, E) viewed as (B, H, length, E); "
        "jitorch: the cuda backend's attention kernels on CuPy arrays; PyTorch: F.scaled_dot_product_attention "
        "and its autograd backward",
        "- milliseconds per call: median of 7 loops of 20 calls, each loop between two device synchronizes; "
        "TFLOP/s count the causal half of the scores' products (2 forward, 5 backward)",
        "",
        "| case (B, H, length, E, dtype) | run | jitorch ms | PyTorch ms | jitorch / PyTorch | jitorch TFLOP/s "
        "| PyTorch TFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, found in rows:
        label, batch, heads, length, head_dim, dtype, precision = case
        shown = f"{dtype}, {precision}" if dtype == "float32" else dtype
        name = f"{label}: ({batch}, {heads}, {length}, {head_dim}, {shown})"
        for run in ("forward", "forward + backward"):
            ours, theirs = found["jitorch"][run], found["PyTorch"][run]
            lines.append(f"| {name} | {run} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f}x | "
                         f"{flops(case, run) / ours / 1e9:.0f} | {flops(case, run) / theirs / 1e9:.0f} |")
    return "\n".join(lines) + "\n"


def time_configs(case: tuple) -> None:
    """Each candidate block configuration of each kernel group, timed in the run it changes (the
    forward for "rows" (the row statistics of the backward take them too), the backward for the
    others), the others at their defaults: printed."""
    from jitorch.codegen import triton_attention as plan

    _, batch, heads, length, head_dim, dtype, precision = case
    jitorch.set_float32_matmul_precision(precision)
    kind = "half" if dtype != "float32" else plan.dot_precision(dtype, precision)
    key = (kind, 64 if plan.block_dim(head_dim) <= 64 else 128)
    runs = jitorch_runs(operands(batch, heads, length, head_dim, dtype), dtype)
    defaults = dict(plan._BLOCKS[key])
    expected = {run: runs[run]().astype("float32") for run in ("forward", "backward")}
    print(f"\n{case[0]} ({dtype}, {precision}): configurations (BLOCK_M, BLOCK_N, warps, stages), ms per call, "
          "and the largest difference from the current configuration's result over its largest magnitude")
    for group, candidates in CANDIDATES.items():
        run = "forward" if group == "rows" else "backward"
        for candidate in candidates:
            plan._BLOCKS[key] = defaults | {group: candidate}
            try:
                got = runs[run]().astype("float32")
                differs = float(abs(got - expected[run]).max() / abs(expected[run]).max())
                ms = 1e3 * median_time(runs[run], 20, repeats=5, sync=lambda: synchronize("cuda"))
                text = f"{ms:.3f} (differs by {differs:.1e})"
            except Exception as err:  # a configuration that does not fit (shared memory, registers)
                text = f"failed ({type(err).__name__}: {str(err).splitlines()[0][:80]})"
            mark = " (current)" if candidate == defaults[group] else ""
            print(f"  {group:5s} {run:9s} {candidate}{mark}: {text}", flush=True)
    plan._BLOCKS[key] = defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", action="store_true", help="also time each kernel's candidate blocks (printed)")
    parser.add_argument("--cases", type=int, default=len(CASES), help="only the first N cases (a partial run)")
    parser.add_argument("--out", default=None, help="where to write the page (default bench/results/attention_cuda.md)")
    args = parser.parse_args()
    rows = []
    for case in CASES[:args.cases]:
        rows.append((case, time_case(case)))
        print(case[0], {lib: {run: round(ms, 3) for run, ms in found.items()} for lib, found in rows[-1][1].items()},
              flush=True)
    command = "python bench/attention.py" + (f" --cases {args.cases}" if args.cases < len(CASES) else "")
    publish(page(rows, command), results_path("attention_cuda", args.cases < len(CASES), args.out))
    if args.configs:
        for case in (CASES[0], CASES[2]):  # bfloat16 (float16 takes the same blocks) and TF32
            time_configs(case)


if __name__ == "__main__":
    main()
