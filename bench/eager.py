"""Eager overhead on the CPU: jitorch against numpy and PyTorch eager, side by side in one process.

    python bench/eager.py            # prints a table and writes bench/results/eager_cpu.md

Cases: one small op (a 16-element add, a 64x64 matmul), and forward+backward of a 3-layer MLP
(batch 256, 784 -> 512 -> 512 -> 10, cross-entropy). Each figure is the median of several repeats of
a timed loop (host clock; everything here is synchronous CPU work). The targets jitorch aims for:
the time of one small op within 2x of PyTorch eager's, and an MLP step within 1.3x of it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date

import numpy as np
import threadpoolctl
import torch
from common import cpu_model, median_time, publish, results_path

import jitorch as jt


def small_op_cases() -> dict[str, dict[str, Callable]]:
    rng = np.random.default_rng(0)
    a16, b16 = rng.standard_normal(16, dtype=np.float32), rng.standard_normal(16, dtype=np.float32)
    a64, b64 = rng.standard_normal((64, 64), dtype=np.float32), rng.standard_normal((64, 64), dtype=np.float32)
    ja, jb, jA, jB = (jt.tensor(v) for v in (a16, b16, a64, b64))
    ta, tb, tA, tB = (torch.tensor(v) for v in (a16, b16, a64, b64))
    return {
        "add, 16 elements": {"jitorch": lambda: ja + jb, "numpy": lambda: a16 + b16, "torch": lambda: ta + tb},
        "matmul, 64x64": {"jitorch": lambda: jA @ jB, "numpy": lambda: a64 @ b64, "torch": lambda: tA @ tB},
    }


def _mlp_weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [784, 512, 512, 10]
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / np.sqrt(fan_in)
        weights.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32))
        weights.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
    return weights


def mlp_step(lib, params: list, x, y) -> Callable[[], object]:
    """Forward + backward of the MLP in `lib` (jitorch or torch: the same code serves both)."""

    def step():
        for p in params:
            p.grad = None
        h = x
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i + 2 < len(params):
                h = h.relu()
        logp = h.log_softmax(-1)
        loss = -logp.gather(1, y.unsqueeze(1)).mean()
        loss.backward()
        return loss

    return step


def numpy_mlp_step(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> Callable[[], object]:
    """The same forward + backward written by hand in numpy: what eager numpy alone achieves."""
    rows = np.arange(len(y))

    def step():
        acts, masks, h = [x], [], x
        for i in range(0, len(weights), 2):
            h = h @ weights[i] + weights[i + 1]
            if i + 2 < len(weights):
                masks.append(h > 0)
                h = np.where(masks[-1], h, 0)
                acts.append(h)
        shifted = h - h.max(1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        g = np.exp(logp)
        g[rows, y] -= 1
        g /= len(y)
        for i in range(len(weights) - 2, -1, -2):
            grad_w, grad_b = acts[i // 2].T @ g, g.sum(0)  # noqa: F841 - computed as backward would
            if i:
                g = np.where(masks[i // 2 - 1], g @ weights[i].T, 0)
        return -logp[rows, y].mean()

    return step


def gemms_only(lib, weights: list, x, grad_out) -> Callable[[], object]:
    """Only the step's matrix products (3 forward, 5 backward: the first layer needs no input grad)."""
    w1, w2, w3 = weights[0], weights[2], weights[4]
    h1, h2 = x @ w1, (x @ w1) @ w2

    def products():
        x @ w1, h1 @ w2, h2 @ w3
        g3 = grad_out
        h2.T @ g3
        g2 = g3 @ w3.T
        h1.T @ g2
        g1 = g2 @ w2.T
        return x.T @ g1

    return products


def mlp_cases() -> dict[str, Callable]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 784), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    weights = _mlp_weights()
    jparams = [jt.tensor(w, requires_grad=True) for w in weights]
    tparams = [torch.tensor(w, requires_grad=True) for w in weights]
    jstep = mlp_step(jt, jparams, jt.tensor(x), jt.tensor(y))
    tstep = mlp_step(torch, tparams, torch.tensor(x), torch.tensor(y))
    nstep = numpy_mlp_step(weights, x, y)
    # same math: the losses agree before we time anything
    assert abs(float(jstep().item()) - float(tstep().item())) < 1e-4
    assert abs(float(nstep()) - float(tstep().item())) < 1e-4
    return {"jitorch": jstep, "numpy": nstep, "torch": tstep}


def gemm_cases() -> dict[str, Callable]:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 784), dtype=np.float32)
    g = rng.standard_normal((256, 10), dtype=np.float32)
    weights = _mlp_weights()
    return {"numpy": gemms_only(np, weights, x, g),
            "torch": gemms_only(torch, [torch.tensor(w) for w in weights], torch.tensor(x), torch.tensor(g))}


def reduction_cases() -> dict[str, dict[str, Callable]]:
    """The row reductions of a transformer step: a bias gradient (sum over the 2048 tokens) and
    softmax's max and sum over the 64 keys of each attention row."""
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((2048, 128), dtype=np.float32)
    scores = rng.standard_normal((32, 4, 64, 64), dtype=np.float32)
    jtok, jsc, ttok, tsc = jt.tensor(tokens), jt.tensor(scores), torch.tensor(tokens), torch.tensor(scores)
    return {
        "sum over dim 0, 2048x128": {"jitorch": lambda: jtok.sum(0), "numpy": lambda: tokens.sum(0),
                                     "torch": lambda: ttok.sum(0)},
        "sum over last dim, 32x4x64x64": {"jitorch": lambda: jsc.sum(-1, keepdim=True),
                                          "numpy": lambda: scores.sum(-1, keepdims=True),
                                          "torch": lambda: tsc.sum(-1, keepdim=True)},
        "amax over last dim, 32x4x64x64": {"jitorch": lambda: jsc.amax(-1, keepdim=True),
                                           "numpy": lambda: scores.max(-1, keepdims=True),
                                           "torch": lambda: tsc.amax(-1, keepdim=True)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="the file to write (default: bench/results/eager_cpu.md)")
    args = parser.parse_args()

    blas_threads = max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
    torch.set_num_threads(blas_threads)
    rows = []
    for name, impls in small_op_cases().items():
        t = {k: median_time(f, 20000 if "add" in name else 5000) for k, f in impls.items()}
        rows.append((name, t["jitorch"], t["numpy"], t["torch"], 2.0))
    t = {k: median_time(f, 20, repeats=9) for k, f in mlp_cases().items()}
    rows.append(("MLP fwd+bwd, batch 256, 784-512-512-10", t["jitorch"], t["numpy"], t["torch"], 1.3))
    gemm = {k: median_time(f, 20, repeats=9) for k, f in gemm_cases().items()}
    reductions = [(name, *(median_time(impls[k], 200) for k in ("jitorch", "numpy", "torch")))
                  for name, impls in reduction_cases().items()]

    cpu = cpu_model()
    lines = [
        f"# Eager overhead on the CPU ({date.today()})",
        "",
        f"Machine: {cpu}; BLAS and torch threads: {blas_threads}. numpy {np.__version__}, "
        f"torch {torch.__version__}, jitorch {jt.__version__}. Command: `python bench/eager.py`.",
        "Median of repeated timed loops, microseconds per call.",
        "",
        "| case | jitorch µs | numpy µs | torch eager µs | jitorch / torch | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, j, n, tt, target in rows:
        ratio = j / tt
        verdict = "met" if ratio <= target else "missed"
        nstr = f"{n * 1e6:.2f}" if n is not None else "-"
        lines.append(f"| {name} | {j * 1e6:.2f} | {nstr} | {tt * 1e6:.2f} | {ratio:.2f}x | <= {target}x ({verdict}) |")
    lines += [
        "",
        "The MLP row's numpy column is the same step written by hand in numpy. Its 8 matrix products",
        f"alone take {gemm['numpy'] * 1e6:.0f} µs in numpy (OpenBLAS) and {gemm['torch'] * 1e6:.0f} µs in "
        f"PyTorch ({gemm['numpy'] / gemm['torch']:.2f}x): the floor that jitorch's eager step shares with numpy.",
        "",
        "Reductions of a training step (no target; jitorch sums leading or trailing dims through BLAS and",
        "takes the max of each row with a Numba kernel):",
        "",
        "| case | jitorch µs | numpy µs | torch eager µs | jitorch / torch |",
        "|---|---|---|---|---|",
    ]
    for name, j, n, tt in reductions:
        lines.append(f"| {name} | {j * 1e6:.2f} | {n * 1e6:.2f} | {tt * 1e6:.2f} | {j / tt:.2f}x |")
    publish("\n".join(lines) + "\n", results_path("eager_cpu", partial=False, out=args.out))


if __name__ == "__main__":
    main()
