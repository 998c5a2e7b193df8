"""What kernel fusion buys: memory-bound cases (softmax, norms, GELU, cross-entropy, an AdamW step) in
plain numpy, PyTorch eager, torch.compile, jitorch eager and jitorch compiled, as time, GB/s and a share
of the copy bandwidth measured in the same run.

    python bench/fusion.py                     # the CPU: writes bench/results/fusion-cpu.md (+ .png)
    python bench/fusion.py --device cuda       # one GPU: writes bench/results/fusion-cuda.md (+ .png)
    python bench/fusion.py --quick             # smaller sizes, fewer repeats, no torch.compile; prints only
    python bench/fusion.py --cases softmax,rms_norm   # a subset; prints only

GB/s counts the fewest bytes a case must move: every input read once and every output written once
(`case_bytes`); a kernel that reads its input twice still gets credit for one read. The copy
bandwidth is a large copy's bytes read + written (np.copyto on the CPU; torch's copy_ and CuPy's copy
on the GPU, the faster of the two), so "% copy" says how close a contender comes to the memory's
ceiling. On the CPU a copy's destination is read into the cache before it is written, so a copy moves
about 3 bytes for each 2 counted, while an in-place update (AdamW) moves only the bytes counted: it
can pass 100%.

Timing: each contender runs in its own process (on 2 cores a framework's spinning thread pool steals a
core from whatever runs next in the same process), the contenders alternate across rounds, each
round reports a median per case, and the table keeps each contender's best round. On the GPU the
host clock is read after a device synchronize at both ends of each timed loop. Compile time is the first
three calls' wall time less three steady calls (a compiled step may trace again once its optimizer
state exists), with empty on-disk kernel caches (a user's first run).
Kernels counts jitorch's compiled kernels in the steady-state program (`plan.kernels`).

A quick or partial run (--quick, --cases, --rounds or --repeats below the defaults) never replaces the recorded
results: it prints its table and writes nothing. A contender that did not run reads "skipped".
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 - bench/ is on the path above
    cell,
    cpu_model,
    describe_failure,
    gpu_name,
    gpu_versions,
    median_time,
    publish,
    results_path,
)

CONTENDERS = ["numpy", "PyTorch eager", "torch.compile", "jitorch eager", "jitorch compiled"]
COMPILED = {"torch.compile", "jitorch compiled"}
COPIES = {"cpu": ["np.copyto"], "cuda": ["torch copy_", "cupy copy"]}
ADAM_TENSORS = 20
EPS = 1e-5  # layer_norm's


@dataclass(frozen=True)
class Sizes:
    rows: int
    cols: int
    adam_params: int  # in ADAM_TENSORS tensors of equal size


SIZES = {("cpu", False): Sizes(4096, 4096, 10_000_000), ("cpu", True): Sizes(512, 1024, 1_000_000),
         ("cuda", False): Sizes(8192, 8192, 100_000_000), ("cuda", True): Sizes(2048, 2048, 10_000_000)}

CASES = {
    "softmax": "softmax(x*2+1, -1)",
    "layer_norm": "layer_norm(x, w, b)",
    "rms_norm": "rms_norm(x, w)",
    "gelu": "gelu(x+b)",
    "cross_entropy": "cross_entropy(x, y) forward",
    "cross_entropy_fwd_bwd": "cross_entropy(x, y) forward + backward",
    "adamw": f"AdamW step, {ADAM_TENSORS} tensors",
    "adamw_traffic": f"AdamW's traffic alone: p, m, v += g, {ADAM_TENSORS} tensors",
}


def case_bytes(case: str, s: Sizes) -> int:
    """The fewest bytes `case` must move: inputs read once + outputs written once (float32 data,
    int64 targets, a float32 scalar loss)."""
    x, row, targets = 4 * s.rows * s.cols, 4 * s.cols, 8 * s.rows
    return {
        "softmax": 2 * x,                        # x in, y out
        "layer_norm": 2 * x + 2 * row,           # x, w, b in; y out
        "rms_norm": 2 * x + row,                 # x, w in; y out
        "gelu": 2 * x + row,                     # x, b in; y out
        "cross_entropy": x + targets + 4,        # x, y in; the loss out
        "cross_entropy_fwd_bwd": 2 * x + targets + 4,  # x, y in; the loss and x's gradient out
        "adamw": 7 * 4 * s.adam_params,          # param, grad, both moments in; param, both moments out
        "adamw_traffic": 7 * 4 * s.adam_params,  # the same reads and in-place writes, one add each
    }[case]


def adam_shape(s: Sizes) -> tuple[int, int]:
    """Each AdamW parameter's shape: ADAM_TENSORS of them hold `adam_params` numbers."""
    per = s.adam_params // ADAM_TENSORS
    cols = 1000 if per % 1000 == 0 else 1
    return per // cols, cols


def copy_shape(s: Sizes) -> tuple[int, int]:
    """The copy that measures the memory's bandwidth: x's size, and never under 64 MB (out of cache)."""
    return max(s.rows, 4096), max(s.cols, 4096)


def make_data(s: Sizes, adam: bool = True, seed: int = 0) -> dict[str, object]:
    """The inputs every contender starts from, as numpy arrays (the same in every process); AdamW's
    parameters and gradients only when `adam` (100M of each take seconds to draw)."""
    rng = np.random.default_rng(seed)
    data = {"x": rng.standard_normal((s.rows, s.cols), dtype=np.float32),
            "w": 1 + 0.1 * rng.standard_normal(s.cols, dtype=np.float32),
            "b": 0.1 * rng.standard_normal(s.cols, dtype=np.float32),
            "y": rng.integers(0, s.cols, s.rows)}
    if adam:
        shape = adam_shape(s)
        data["params"] = [rng.standard_normal(shape, dtype=np.float32) for _ in range(ADAM_TENSORS)]
        data["grads"] = [rng.standard_normal(shape, dtype=np.float32) for _ in range(ADAM_TENSORS)]
    return data


# ---------------------------------------------------------------------------------------------
# the cases in plain numpy


def np_erf(z: np.ndarray) -> np.ndarray:
    """erf to float32 accuracy (Abramowitz & Stegun 7.1.26, error under 1.5e-7): numpy has none."""
    a = np.abs(z)
    t = 1 / (1 + np.float32(0.3275911) * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(z) * (1 - poly.astype(np.float32) * np.exp(-a * a))


def np_log_softmax_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    shifted = x - x.max(-1, keepdims=True)
    return shifted, np.log(np.exp(shifted).sum(-1, keepdims=True))


def numpy_case(case: str, d: dict):
    """`case` as plain numpy: a function of no arguments that runs it once."""
    x, w, b, y = d["x"], d["w"], d["b"], d["y"]
    rows = np.arange(x.shape[0])
    if case == "softmax":
        def run():
            z = x * 2 + 1
            e = np.exp(z - z.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)
    elif case == "layer_norm":
        def run():
            centered = x - x.mean(-1, keepdims=True)
            var = (centered * centered).mean(-1, keepdims=True)
            return centered / np.sqrt(var + EPS) * w + b
    elif case == "rms_norm":
        eps = np.finfo(np.float32).eps
        def run():
            return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
    elif case == "gelu":
        def run():
            z = x + b
            return 0.5 * z * (1 + np_erf(z * np.float32(1 / math.sqrt(2))))
    elif case == "cross_entropy":
        def run():
            shifted, lse = np_log_softmax_parts(x)
            return (lse[:, 0] - shifted[rows, y]).mean()
    elif case == "cross_entropy_fwd_bwd":
        def run():
            shifted, lse = np_log_softmax_parts(x)
            loss = (lse[:, 0] - shifted[rows, y]).mean()
            grad = np.exp(shifted - lse)
            grad[rows, y] -= 1
            grad /= x.shape[0]
            return loss, grad
    elif case == "adamw":
        params = [p.copy() for p in d["params"]]
        state = {"step": 0, "m": [np.zeros_like(p) for p in params], "v": [np.zeros_like(p) for p in params]}
        lr, (beta1, beta2), eps, decay = 1e-3, (0.9, 0.999), 1e-8, 1e-2

        def run():
            state["step"] += 1
            step_size = lr / (1 - beta1 ** state["step"])
            bias2_sqrt = math.sqrt(1 - beta2 ** state["step"])
            for p, g, m, v in zip(params, d["grads"], state["m"], state["v"]):
                p *= 1 - lr * decay
                m += (1 - beta1) * (g - m)
                v *= beta2
                v += (1 - beta2) * g * g
                p -= step_size * m / (np.sqrt(v) / bias2_sqrt + eps)

        run.params = params  # for a test to read the updated parameters
    elif case == "adamw_traffic":
        tensors = [(p.copy(), g, np.zeros_like(p), np.zeros_like(p)) for p, g in zip(d["params"], d["grads"])]

        def run():
            for p, g, m, v in tensors:
                p += g
                m += g
                v += g
    else:
        raise ValueError(case)
    return run


# ---------------------------------------------------------------------------------------------
# the cases written once for jitorch and PyTorch


def framework_case(case: str, lib, d: dict, device: str, compiler=None):
    """`case` in `lib` (jitorch or torch) on `device`: (a function of no arguments that runs it once,
    the compiled object or None). `compiler` (jitorch.compile or torch.compile) compiles the case's
    function; None runs it eagerly."""
    F = lib.nn.functional
    compile_fn = compiler or (lambda fn: fn)
    to = lambda a: lib.tensor(a).to(device)
    x, w, b, y = to(d["x"]), to(d["w"]), to(d["b"]), to(d["y"])
    cols = x.shape[-1]
    if case == "adamw":
        params = [lib.nn.Parameter(to(p)) for p in d["params"]]
        for p, g in zip(params, d["grads"]):
            p.grad = to(g)
        opt = lib.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)

        def adam_step():
            opt.step()

        compiled = compile_fn(adam_step)
        return compiled, compiled if compiler else None
    if case == "adamw_traffic":  # (AdamW's memory traffic with the least arithmetic: what the memory allows)
        tensors = [(to(p), to(g), lib.zeros_like(to(p)), lib.zeros_like(to(p)))
                   for p, g in zip(d["params"], d["grads"])]

        def traffic_step():
            for p, g, m, v in tensors:
                p.add_(g)
                m.add_(g)
                v.add_(g)

        compiled = compile_fn(traffic_step)
        return compiled, compiled if compiler else None
    if case == "cross_entropy_fwd_bwd":
        x.requires_grad_(True)

        def fwd_bwd(y):
            x.grad = None
            loss = F.cross_entropy(x, y)
            loss.backward()
            return loss

        compiled = compile_fn(fwd_bwd)
        return (lambda: compiled(y)), compiled if compiler else None
    fn, args = {
        "softmax": (lambda x: F.softmax(x * 2 + 1, dim=-1), (x,)),
        "layer_norm": (lambda x, w, b: F.layer_norm(x, (cols,), w, b, eps=EPS), (x, w, b)),
        "rms_norm": (lambda x, w: F.rms_norm(x, (cols,), w), (x, w)),
        "gelu": (lambda x, b: F.gelu(x + b), (x, b)),
        "cross_entropy": (lambda x, y: F.cross_entropy(x, y), (x, y)),
    }[case]
    compiled = compile_fn(fn)
    return (lambda: compiled(*args)), compiled if compiler else None


def kernel_count(compiled) -> int:
    """Kernels in a jitorch-compiled function's steady-state program (the last traced)."""
    programs = [p for entries in compiled.cache.values() for p in entries if not p.one_shot]
    return len(programs[-1].plan.kernels)


# ---------------------------------------------------------------------------------------------
# one contender in its own process


def worker(contender: str, device: str, cases: list[str], s: Sizes, repeats: int, target_s: float) -> dict:
    """Time `contender` on each of `cases`: {case: {"s": median seconds, "first_s", "kernels"}} or
    {case: {"error": ...}}; a copy contender gives {"copy": {"s": ..., "bytes": ...}}."""
    sync = lambda: None
    lib = None
    if contender.startswith("jitorch"):
        from common import synchronize

        import jitorch as lib

        sync = lambda: synchronize(device, lib)
    elif contender in ("PyTorch eager", "torch.compile", "torch copy_"):
        import torch as lib
        from common import synchronize

        lib.set_num_threads(os.cpu_count() or 1)
        sync = lambda: synchronize(device, lib)
    elif contender == "cupy copy":
        import cupy

        sync = cupy.cuda.runtime.deviceSynchronize

    def timed(run) -> float:
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        first = time.perf_counter() - t0
        number = max(1, min(1000, int(target_s / max(first, 1e-6))))
        return median_time(run, number, repeats, sync=sync)

    if contender in ("np.copyto", "torch copy_", "cupy copy"):
        src = np.random.default_rng(0).standard_normal(copy_shape(s), dtype=np.float32)
        if contender == "np.copyto":
            dst = np.empty_like(src)
            run = lambda: np.copyto(dst, src)
        elif contender == "torch copy_":
            src_t = lib.from_numpy(src).to(device)
            dst_t = lib.empty_like(src_t)
            run = lambda: dst_t.copy_(src_t)
        else:
            src_c = cupy.asarray(src)
            dst_c = cupy.empty_like(src_c)
            run = lambda: cupy.copyto(dst_c, src_c)
        return {"copy": {"s": timed(run), "bytes": 2 * src.nbytes}}

    d = make_data(s, adam=any(c.startswith("adamw") for c in cases))
    out = {}
    for case in cases:
        run = compiled = None
        try:
            if contender == "numpy":
                run, compiled = numpy_case(case, d), None
            else:
                run, compiled = framework_case(case, lib, d, device, lib.compile if contender in COMPILED else None)
            sync()
            t0 = time.perf_counter()
            for _ in range(3):  # a compiled step may trace again once its optimizer state exists
                run()
            sync()
            first = time.perf_counter() - t0
            steady = timed(run)
            result = {"s": steady}
            if compiled is not None:
                result["first_s"] = max(first - 3 * steady, 0.0)
        except Exception as err:  # one failing case must not lose the others' figures
            result = {"error": describe_failure(err)}
        if contender == "jitorch compiled" and "s" in result:
            try:
                result["kernels"] = kernel_count(compiled)
            except Exception as err:  # the time stands without it
                result["kernels"] = f"unknown ({describe_failure(err)})"
        out[case] = result
        run = compiled = None  # free this case's data before the next
    return out


def run_worker(contender: str, args, cache_dir: str) -> dict:
    """One contender's round in a new process, with the kernel caches pointed at `cache_dir` (empty on
    the first round: the first-call times are a first run's)."""
    env = dict(os.environ, JITORCH_CACHE_DIR=os.path.join(cache_dir, "jitorch"),
               TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"),
               TRITON_CACHE_DIR=os.path.join(cache_dir, "triton"))
    cmd = [sys.executable, __file__, "--worker", contender, "--device", args.device, "--cases", ",".join(args.cases),
           "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        key = ["copy"] if contender in COPIES[args.device] else args.cases
        return {case: {"error": f"{contender}: {error}"} for case in key}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the driver


def skipped_contenders(device: str, quick: bool) -> dict[str, str]:
    """The contenders that do not run, each with the reason."""
    skipped = {}
    if device != "cpu":
        skipped["numpy"] = "CPU only"
    for name in ("torch",):
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            skipped["PyTorch eager"] = skipped["torch.compile"] = "torch is not installed"
    if quick:
        skipped.setdefault("torch.compile", "--quick")
    return skipped


def versions(device: str) -> str:
    parts = []
    for name in ("jitorch", "numpy", "llvmlite", "torch", "triton", "cupy-cuda13x"):
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name == "jitorch":  # run from a checkout on the path (the GPU machine), not installed
                import jitorch

                checkout = os.path.dirname(os.path.dirname(jitorch.__file__))
                parts.append(f"jitorch {jitorch.__version__} (from {checkout})")
            elif name in ("numpy", "torch") or device == "cuda":
                parts.append(f"{name} not installed")
    return ", ".join(parts)


def machine(device: str) -> str:
    if device == "cpu":
        return f"{cpu_model()}, {os.cpu_count()} cores"
    return f"{gpu_name()} ({gpu_versions()}); host {cpu_model()}"  # imports torch: only the workers time


def collect(args, contenders: list[str]) -> tuple[dict, float, dict]:
    """Run the rounds: contenders alternate (each round starts one further along the list), copies
    in between. Returns ({(case, contender): best result}, copy bytes/s, {copy name: bytes/s})."""
    runners = contenders + COPIES[args.device]
    best: dict[tuple[str, str], dict] = {}
    copies: dict[str, float] = {}
    cache_dir = tempfile.mkdtemp(prefix="jitorch-fusion-bench-")
    for r in range(args.rounds):
        order = runners[r % len(runners):] + runners[:r % len(runners)]
        for contender in order:
            print(f"round {r + 1}/{args.rounds}: {contender}", file=sys.stderr, flush=True)
            for case, result in run_worker(contender, args, cache_dir).items():
                if case == "copy":
                    if "s" in result:
                        copies[contender] = max(copies.get(contender, 0.0), result["bytes"] / result["s"])
                    continue
                old = best.get((case, contender))
                if old is None or ("s" in result and result["s"] < old.get("s", math.inf)):
                    if old is not None and "first_s" in old:  # the first round's first call: cold caches
                        result["first_s"] = old["first_s"]
                    best[(case, contender)] = result
    return best, max(copies.values(), default=math.nan), copies


def report(args, best: dict, copy_bps: float, copies: dict, skipped: dict, sizes: Sizes) -> tuple[str, dict]:
    """The results page, and each (case, contender)'s share of copy bandwidth (None: did not run)."""
    cmd = "python bench/fusion.py" + "".join(f" {a}" for a in sys.argv[1:])
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    copy_text = ", ".join(f"{name} {bps / 1e9:.1f} GB/s" for name, bps in copies.items()) or "did not run"
    write_allocate = ("A copy's destination is read into the cache before it is written (write-allocate), so "
                      "memory moves about 3 bytes for the 2 counted; an in-place update (AdamW's) writes back lines "
                      "it has already read and moves only what is counted, so it can pass 100%.")
    lines = [f"# Kernel fusion on the {'CPU' if args.device == 'cpu' else 'GPU'} ({now})", "",
             f"Machine: {machine(args.device)}. Versions: {versions(args.device)}.", "",
             f"Command: `{cmd}`. Sizes: x is {sizes.rows}x{sizes.cols} float32 (w, b: {sizes.cols}; y: "
             f"{sizes.rows} int64 targets); AdamW over {sizes.adam_params:,} float32 parameters in "
             f"{ADAM_TENSORS} tensors of {adam_shape(sizes)[0]}x{adam_shape(sizes)[1]} (lr 1e-3, weight "
             f"decay 1e-2; each framework's default implementation). {args.rounds} round(s), each contender "
             f"in its own process, alternating; each figure is the best round's median.", "",
             "Bytes rule: GB/s counts the fewest bytes a case must move, every input read once and every "
             "output written once (x's gradient counts as an output of forward+backward; AdamW reads the "
             "parameter, its gradient and both moments, and writes the parameter and both moments). "
             "\"AdamW's traffic alone\" moves the same bytes with one add per value written (p, m, v += g in "
             "place): how fast each contender moves AdamW's bytes at all, a ceiling for its AdamW step. "
             f"Copy bandwidth (bytes read + written, a {'x'.join(map(str, copy_shape(sizes)))} float32 copy): "
             f"{copy_text}; "
             "\"% copy\" is a contender's GB/s over the best of these."
             + (f" {write_allocate}" if args.device == "cpu" else ""), "",
             "numpy: the same math in plain numpy (GELU's erf as a float32-accurate polynomial: numpy has "
             "no erf). Compile s: the first three calls' wall time less three steady calls (a step may trace "
             "again once its optimizer state exists), in the first round, with empty kernel caches.",
             ""]
    lines += [f"Skipped: {name} ({why})." for name, why in skipped.items()]
    lines += ["", "## Share of copy bandwidth, %", "", "| case | MB moved | " + " | ".join(CONTENDERS) + " |",
              "|---" * (len(CONTENDERS) + 2) + "|"]
    share = {}
    for case in args.cases:
        nbytes = case_bytes(case, sizes)
        row = []
        for c in CONTENDERS:
            r = best.get((case, c), {})
            share[case, c] = nbytes / r["s"] / copy_bps if "s" in r else None
            row.append("skipped" if c in skipped else "failed" if "s" not in r else cell(share[case, c], ".0f", 100))
        lines.append(f"| {CASES[case]} | {nbytes / 1e6:.1f} | " + " | ".join(row) + " |")
    lines += ["", "## Every figure", "",
              "| case | contender | ms (median) | GB/s | % copy | kernels | compile s |", "|---" * 7 + "|"]
    errors = []
    for case in args.cases:
        nbytes = case_bytes(case, sizes)
        for c in CONTENDERS:
            r = best.get((case, c), {})
            if c in skipped or "s" not in r:
                status = "skipped" if c in skipped else "failed"
                if "error" in r:
                    errors.append(f"- {CASES[case]}, {c}: {r['error']}")
                lines.append(f"| {CASES[case]} | {c} | {status} | | | | |")
                continue
            kernels = str(r["kernels"]) if "kernels" in r else ""
            first = cell(r.get("first_s"), ".2f") if c in COMPILED else ""
            lines.append(f"| {CASES[case]} | {c} | {r['s'] * 1e3:.2f} | {nbytes / r['s'] / 1e9:.1f} | "
                         f"{cell(share[case, c], '.0f', 100)} | {kernels} | {first} |")
    if errors:
        lines += ["", "Failures:", ""] + errors
    return "\n".join(lines) + "\n", share


def bar_chart(share: dict, cases: list[str], skipped: dict, path: Path, title: str) -> None:
    """Each case's share of copy bandwidth per contender, as grouped bars."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install jitorch[examples]): no chart written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in CONTENDERS if c not in skipped]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(shown)
    for i, c in enumerate(shown):
        values = [100 * (share.get((case, c)) or 0.0) for case in cases]
        ax.bar([k + (i - (len(shown) - 1) / 2) * width for k in range(len(cases))], values, width, label=c)
    ax.set_xticks(range(len(cases)), [CASES[c].replace(" forward + backward", "\nfwd+bwd") for c in cases],
                  fontsize=8)
    ax.set_ylabel("% of copy bandwidth")
    ax.set_title(title)
    ax.axhline(100, color="gray", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, fewer repeats, no torch.compile; prints only")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of {', '.join(CASES)}; a subset prints only")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over all contenders (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed loops per case in each round")
    parser.add_argument("--out", default=None,
                        help="the page to write (default bench/results/fusion-<device>.md; nothing for a partial run)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    sizes = SIZES[args.device, args.quick]
    target_s = 0.02 if args.quick else 0.1
    if args.worker:
        args.repeats = args.repeats or (3 if args.quick else 5)
        print(json.dumps(worker(args.worker, args.device, args.cases, sizes, args.repeats, target_s)))
        return

    default_rounds = 1 if args.quick else 3
    default_repeats = 3 if args.quick else 5
    partial = (args.quick or set(args.cases) != set(CASES) or (args.rounds or default_rounds) < default_rounds
               or (args.repeats or default_repeats) < default_repeats)
    args.rounds = args.rounds or default_rounds
    args.repeats = args.repeats or default_repeats
    out = results_path(f"fusion-{args.device}", partial, args.out)
    skipped = skipped_contenders(args.device, args.quick)
    contenders = [c for c in CONTENDERS if c not in skipped]
    best, copy_bps, copies = collect(args, contenders)
    text, share = report(args, best, copy_bps, copies, skipped, sizes)
    publish(text, out)
    if out is not None:
        bar_chart(share, args.cases, skipped, out.with_suffix(".png"),
                  f"Share of copy bandwidth ({machine(args.device)})")


if __name__ == "__main__":
    main()
