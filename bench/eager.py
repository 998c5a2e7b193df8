"""Eager overhead: jitorch against numpy and PyTorch eager on the CPU, or against PyTorch eager on one
GPU, side by side in one process.

    python bench/eager.py                  # prints a table and writes bench/results/eager_cpu.md
    python bench/eager.py --device cuda    # the GPU table: writes bench/results/eager_cuda.md
    python bench/eager.py --quick          # fewer and shorter loops: prints only, writes nothing

Cases: one small op (a 16-element add, a 64x64 matmul), a 512x512 bfloat16 matmul, and
forward+backward of a 3-layer MLP
(batch 256, 784 -> 512 -> 512 -> 10, cross-entropy). Each figure is the median of several repeats of
a timed loop (host clock; everything here is synchronous CPU work). The targets jitorch aims for:
the time of one small op within 2x of PyTorch eager's, and an MLP step within 1.3x of it. The
bfloat16 product has no target: it shows what the path half types take (float32 BLAS between two
conversions) costs against PyTorch's own bfloat16 kernels.

On the GPU (`--device cuda`) the same small ops and MLP, and a 4096x4096x4096 matmul in float32 at
matmul precision "highest" (full float32) and "high" (TF32 allowed) and in bfloat16, with TFLOP/s.
GPU work is queued, so each timed loop starts and ends with a device synchronize. A case that
fails (jitorch's GPU backend is young) reads "failed" with its error instead of stopping the run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import ml_dtypes
import numpy as np
import threadpoolctl
import torch
from common import (
    cpu_model,
    describe_failure,
    gpu_name,
    gpu_versions,
    median_time,
    publish,
    results_path,
    set_matmul_precision,
    synchronize,
)

import jitorch as jt


def small_op_cases() -> dict[str, dict[str, Callable]]:
    rng = np.random.default_rng(0)
    a16, b16 = rng.standard_normal(16, dtype=np.float32), rng.standard_normal(16, dtype=np.float32)
    a64, b64 = rng.standard_normal((64, 64), dtype=np.float32), rng.standard_normal((64, 64), dtype=np.float32)
    ja, jb, jA, jB = (jt.tensor(v) for v in (a16, b16, a64, b64))
    ta, tb, tA, tB = (torch.tensor(v) for v in (a16, b16, a64, b64))
    # bfloat16 products: jitorch multiplies half types in float32 (BLAS) and rounds once; numpy the same
    # by hand; PyTorch its own bfloat16 kernel
    a512, b512 = (rng.standard_normal((512, 512), dtype=np.float32).astype(ml_dtypes.bfloat16) for _ in range(2))
    jH, jK = jt.tensor(a512), jt.tensor(b512)
    tH, tK = (torch.tensor(v.astype(np.float32)).to(torch.bfloat16) for v in (a512, b512))

    def numpy_bf16():
        return (a512.astype(np.float32) @ b512.astype(np.float32)).astype(ml_dtypes.bfloat16)

    return {
        "add, 16 elements": {"jitorch": lambda: ja + jb, "numpy": lambda: a16 + b16, "torch": lambda: ta + tb},
        "matmul, 64x64": {"jitorch": lambda: jA @ jB, "numpy": lambda: a64 @ b64, "torch": lambda: tA @ tB},
        "matmul, 512x512 bfloat16": {"jitorch": lambda: jH @ jK, "numpy": numpy_bf16, "torch": lambda: tH @ tK},
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


# ---------------------------------------------------------------------------------------------
# the GPU


@dataclass(frozen=True)
class GpuCase:
    """One GPU case: `make(lib)` builds its tensors on the GPU and returns the call to time."""

    name: str
    make: Callable[[object], Callable[[], object]]
    number: int  # calls per timed loop (a tenth with --quick)
    precision: str | None = None  # the float32 matmul precision it runs at, where that matters
    flops: float | None = None  # per call, for TFLOP/s
    returns_loss: bool = False  # the call returns a loss, reported to compare the frameworks


def on_gpu(lib, *arrays: np.ndarray, dtype: str | None = None) -> list:
    """`arrays` as `lib` tensors on the GPU (cast there to `dtype`, a dtype's name, if given)."""
    tensors = [lib.from_numpy(a).to("cuda") for a in arrays]
    return tensors if dtype is None else [t.to(getattr(lib, dtype)) for t in tensors]


def gpu_cases(size: int = 4096) -> list[GpuCase]:
    """The GPU table's cases; `size` is the big matmul's (size x size) @ (size x size)."""
    rng = np.random.default_rng(0)
    a16, b16 = rng.standard_normal(16, dtype=np.float32), rng.standard_normal(16, dtype=np.float32)
    a64, b64 = rng.standard_normal((64, 64), dtype=np.float32), rng.standard_normal((64, 64), dtype=np.float32)
    big = [rng.standard_normal((size, size), dtype=np.float32) for _ in range(2)]
    x = np.random.default_rng(1).standard_normal((256, 784), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, 256)
    weights = _mlp_weights()

    def binary(a, b, op, dtype=None):
        def make(lib):
            ta, tb = on_gpu(lib, a, b, dtype=dtype)
            return lambda: op(ta, tb)
        return make

    def mlp(lib):
        params = [t.requires_grad_() for t in on_gpu(lib, *weights)]
        return mlp_step(lib, params, *on_gpu(lib, x, y))

    add, matmul = (lambda a, b: a + b), (lambda a, b: a @ b)
    flops = 2.0 * size**3
    big_name = f"matmul {size}x{size}x{size}"
    return [
        GpuCase("add, 16 elements", binary(a16, b16, add), 20000),
        GpuCase("matmul, 64x64", binary(a64, b64, matmul), 5000, "highest"),
        GpuCase("MLP fwd+bwd, batch 256, 784-512-512-10", mlp, 200, "highest", returns_loss=True),
        GpuCase(f"{big_name}, float32", binary(*big, matmul), 20, "highest", flops),
        GpuCase(f"{big_name}, float32", binary(*big, matmul), 100, "high", flops),
        GpuCase(f"{big_name}, bfloat16", binary(*big, matmul, dtype="bfloat16"), 200, None, flops),
    ]


def time_gpu_case(case: GpuCase, quick: bool) -> dict[str, tuple[float | None, str | None, float | None]]:
    """For jitorch and PyTorch: (seconds per call, None, the loss where the case returns one), or
    (None, the error, None) where it fails the case. The two alternate, one timed loop each per
    repeat, so that a change in the host's speed during the run falls on both."""
    number, repeats = (max(1, case.number // 10), 3) if quick else (case.number, 7)
    libs = {"jitorch": jt, "torch": torch}
    fns, errors, times = {}, {}, {who: [] for who in libs}
    for who, lib in libs.items():
        try:
            fns[who] = case.make(lib)
        except Exception as err:
            errors[who] = describe_failure(err)
    for _ in range(repeats):
        for who, fn in list(fns.items()):
            try:
                times[who].append(median_time(fn, number, 1, sync=lambda lib=libs[who]: synchronize("cuda", lib)))
            except Exception as err:
                errors[who] = describe_failure(err)
                del fns[who]
    found = {}
    for who, fn in fns.items():
        loss = float(fn().item()) if case.returns_loss else None
        found[who] = (statistics.median(times[who]), None, loss)
    return found | {who: (None, err, None) for who, err in errors.items()}


def add_layers(number: int, repeats: int) -> list[tuple[str, float]]:
    """Where the host time of a 16-element float32 add on the GPU goes: the same add timed at each
    layer of jitorch's path (the Triton launch, the backend's kernel with its output's allocation,
    `dispatch`, the Tensor operator), beside CuPy's and PyTorch's. (what, seconds per call)."""
    import cupy

    from jitorch.backends import backend_for
    from jitorch.backends.cuda.eager_pointwise import _flat_kernel
    from jitorch.dispatch import dispatch
    from jitorch.primitives import PRIMS

    rng = np.random.default_rng(0)
    a16, b16 = rng.standard_normal(16, dtype=np.float32), rng.standard_normal(16, dtype=np.float32)
    ja, jb = on_gpu(jt, a16, b16)
    ta, tb = on_gpu(torch, a16, b16)
    ca, cb = ja._data, jb._data
    kernel_of_add = backend_for("cuda").kernels["add"]
    flat = _flat_kernel("add", {}, [ca, cb], ("full", "full"))
    layers: list[tuple[str, Callable[[], object]]] = [
        ("CuPy: cupy.empty(16) (the caching pool)", lambda: cupy.empty((16,), np.float32)),
        ("CuPy: a + b (its ufunc)", lambda: ca + cb),
    ]
    if flat is not None:
        flat.run([ca.data.ptr, cb.data.ptr], (16,), (16,), True)
        ((launch, block),) = flat._sized.values()
        out = cupy.empty((16,), np.float32)
        arguments = flat.arguments.pick([ca.data.ptr, cb.data.ptr, out.data.ptr, 16, block])
        stream = cupy.cuda.get_current_stream().ptr
        layers += [("jitorch: the flat Triton kernel's prepared launch alone", lambda: launch(stream, arguments)),
                   ("jitorch: the flat Triton kernel's run (allocate, launch)",
                    lambda: flat.run([ca.data.ptr, cb.data.ptr], (16,), (16,), True))]
    layers += [
        ("jitorch: the backend's add kernel", lambda: kernel_of_add(ca, cb)),
        ("jitorch: dispatch(add)", lambda: dispatch(PRIMS["add"], (ja, jb), {})),
        ("jitorch: a + b (Tensors)", lambda: ja + jb),
        ("PyTorch: torch.empty(16, device='cuda')", lambda: torch.empty(16, device="cuda")),
        ("PyTorch: a + b", lambda: ta + tb),
    ]
    return [(name, median_time(fn, number, repeats, sync=lambda: synchronize("cuda", jt)))
            for name, fn in layers]


def profile_gpu_calls() -> None:
    """Print the functions jitorch spends its host time in, on the GPU: a loop of 16-element adds,
    then one of MLP forward+backward steps (the table's cases)."""
    import cProfile
    import pstats

    cases = {case.name: case for case in gpu_cases(size=64)}
    set_matmul_precision("highest")
    for name, number in (("add, 16 elements", 20000), ("MLP fwd+bwd, batch 256, 784-512-512-10", 200)):
        fn = cases[name].make(jt)
        fn()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(number):
            fn()
        synchronize("cuda", jt)
        profiler.disable()
        print(f"== where jitorch's host time goes: {name}, {number} calls")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def run_gpu(out: str | None, quick: bool) -> None:
    """The GPU table: every case in jitorch and in PyTorch, one after the other, on one GPU."""
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no GPU here (a CUDA build of torch and a GPU are needed)")
    path = results_path("eager_cuda", partial=quick, out=out)
    rows, failures, losses, jitorch_has_precision = [], [], [], True
    for case in gpu_cases():
        if case.precision is not None:
            jitorch_has_precision &= set_matmul_precision(case.precision)
        timed = time_gpu_case(case, quick)
        (t_jt, err_jt, loss_jt), (t_torch, err_torch, loss_torch) = timed["jitorch"], timed["torch"]
        failures += [f"- {who}, {case.name}: {err}" for who, err in (("jitorch", err_jt), ("PyTorch", err_torch))
                     if err is not None]
        if case.returns_loss:
            jt_loss, torch_loss = ("failed" if v is None else f"{v:.6f}" for v in (loss_jt, loss_torch))
            losses.append(f"{case.name}: loss {jt_loss} in jitorch, {torch_loss} in PyTorch (the same weights "
                          "and batch).")
        rows.append((case, t_jt, t_torch))
        times = (("jitorch", t_jt), ("PyTorch", t_torch))
        print(f"{case.name} ({case.precision or '-'}): "
              + ", ".join(f"{who} {'failed' if t is None else f'{t * 1e6:.2f} µs'}" for who, t in times), flush=True)
    set_matmul_precision("highest")

    def us(t: float | None) -> str:
        return "failed" if t is None else f"{t * 1e6:.2f}"

    def tflops(case: GpuCase, t: float | None) -> str:
        return "-" if case.flops is None or t is None else f"{case.flops / t / 1e12:.0f}"

    command = "python bench/eager.py --device cuda" + (" --quick" if quick else "")
    lines = [
        f"# Eager overhead and matmuls on the GPU ({date.today()})",
        "",
        f"GPU: {gpu_name()}; host: {cpu_model()}. Python {platform.python_version()}, numpy {np.__version__}, "
        f"{gpu_versions()}, jitorch {jt.__version__}. Command: `{command}`.",
        f"Median of {3 if quick else 7} timed loops each, jitorch's and PyTorch's alternating, each loop starting "
        "and ending with a device synchronize (`jitorch.cuda.synchronize()`, `torch.cuda.synchronize()`); "
        "microseconds per call.",
        "Precision: the float32 matmul precision, set with `torch.set_float32_matmul_precision` and "
        + ("`jitorch.set_float32_matmul_precision`." if jitorch_has_precision else
           "(jitorch has no `set_float32_matmul_precision`: its matmuls ran at its default)."),
        "",
        "| case | precision | jitorch µs | torch eager µs | jitorch / torch | jitorch TFLOP/s | torch TFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, t_jt, t_torch in rows:
        ratio = "-" if t_jt is None or t_torch is None else f"{t_jt / t_torch:.2f}x"
        lines.append(f"| {case.name} | {case.precision or '-'} | {us(t_jt)} | {us(t_torch)} | {ratio} | "
                     f"{tflops(case, t_jt)} | {tflops(case, t_torch)} |")
    lines += ["", *losses]
    layers = add_layers(*((2000, 3) if quick else (20000, 7)))
    lines += ["", "Where a 16-element add's host time goes: the same add at each layer of jitorch's path, beside "
              "CuPy's and PyTorch's (timed as above; each row includes the rows of its layer below it).", "",
              "| what | µs per call |", "|---|---|"]
    lines += [f"| {what} | {t * 1e6:.2f} |" for what, t in layers]
    if failures:
        lines += ["", "Failed (the error each raised):", "", *failures]
    publish("\n".join(lines) + "\n", path)
    profile_gpu_calls()


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to run (default cpu; cuda writes bench/results/eager_cuda.md)")
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the calls per loop and 3 repeats: prints only, the recorded results are kept")
    parser.add_argument("--out", default=None,
                        help="the file to write (default: bench/results/eager_cpu.md or eager_cuda.md)")
    args = parser.parse_args()
    if args.device == "cuda":
        run_gpu(args.out, args.quick)
    else:
        run_cpu(args.out, args.quick)


def run_cpu(out: str | None, quick: bool) -> None:
    """The CPU table: jitorch, numpy and PyTorch eager."""
    scale, repeats = (10, 3) if quick else (1, None)

    def timed(fn: Callable[[], object], number: int, default_repeats: int = 7) -> float:
        return median_time(fn, max(1, number // scale), repeats or default_repeats)

    blas_threads = max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
    torch.set_num_threads(blas_threads)
    rows = []
    for name, impls in small_op_cases().items():
        big = "512" in name  # (the bfloat16 product: no overhead target, a measure of the path half types take)
        t = {k: timed(f, 50 if big else 20000 if "add" in name else 5000) for k, f in impls.items()}
        rows.append((name, t["jitorch"], t["numpy"], t["torch"], None if big else 2.0))
    t = {k: timed(f, 20, 9) for k, f in mlp_cases().items()}
    rows.append(("MLP fwd+bwd, batch 256, 784-512-512-10", t["jitorch"], t["numpy"], t["torch"], 1.3))
    gemm = {k: timed(f, 20, 9) for k, f in gemm_cases().items()}
    reductions = [(name, *(timed(impls[k], 200) for k in ("jitorch", "numpy", "torch")))
                  for name, impls in reduction_cases().items()]

    cpu = cpu_model()
    lines = [
        f"# Eager overhead on the CPU ({date.today()})",
        "",
        f"Machine: {cpu}; BLAS and torch threads: {blas_threads}. numpy {np.__version__}, "
        f"torch {torch.__version__}, jitorch {jt.__version__}. "
        f"Command: `python bench/eager.py{' --quick' if quick else ''}`.",
        "Median of repeated timed loops, microseconds per call.",
        "",
        "| case | jitorch µs | numpy µs | torch eager µs | jitorch / torch | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, j, n, tt, target in rows:
        ratio = j / tt
        nstr = f"{n * 1e6:.2f}" if n is not None else "-"
        goal = "-" if target is None else f"<= {target}x ({'met' if ratio <= target else 'missed'})"
        lines.append(f"| {name} | {j * 1e6:.2f} | {nstr} | {tt * 1e6:.2f} | {ratio:.2f}x | {goal} |")
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
    publish("\n".join(lines) + "\n", results_path("eager_cpu", partial=quick, out=out))


if __name__ == "__main__":
    main()
