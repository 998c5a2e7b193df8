"""Training speed of the examples' models and of GPT-style and MNIST steps: jitorch (eager, and compiled)
beside PyTorch (eager, and torch.compile) on the CPU or on one GPU, in one run.

    python bench/train.py                 # writes bench/results/train_cpu.md (about 13 minutes on 2 cores)
    python bench/train.py --repeats 1     # a quick look: prints only, the recorded results are kept
    python bench/train.py --workloads gpt8,mnist   # a subset: prints only
    python bench/train.py --profile       # also prints where jitorch's time goes (cProfile)
    python bench/train.py --prims         # also prints jitorch's kernel time per primitive (on the
                                          # GPU: every runner's device time per kernel)
    python bench/train.py --device cuda   # on the GPU: writes bench/results/train_cuda.md
    python bench/train.py --device cuda --precisions highest   # one precision: train_cuda_highest.md
    python bench/train.py --device cuda --amp bf16   # char_lm and GPT-sized steps under autocast

Workloads (run with `lib=jitorch` and with `lib=torch`, so the models, batch sizes, optimizers and data
are the same):

- one training epoch of `examples/digits.py`'s CNN (DataLoader, batch 64, Adam);
- 50 training steps of `examples/char_lm.py`'s transformer (batch 32 x 64 characters, AdamW);
- on the CPU, 10 steps each of models written once here for both frameworks (`gpt`, `mnist_cnn`): a
  nanoGPT-style GPT (scaled_dot_product_attention, tied head), a minGPT-style GPT (attention written
  out with masked_fill + softmax), pytorch/examples' MNIST CNN (Adadelta), and GPT-style
  transformers of 8 and 32 layers (d_model 64, 4 heads, T=32, batch 8, AdamW);
- on the GPU only, 20 steps of char_lm instead of 50, and 10 steps of a GPT-sized model from
  char_lm's `build_model` (6 layers, d_model 768, 12 heads, 1,024 characters of context, batch 8,
  AdamW), each at float32 matmul precision "highest" (full float32) and "high" (TF32 allowed).

On the CPU every runner (jitorch eager, jitorch compiled, PyTorch eager, torch.compile) of a workload
runs in its own process: a framework's thread pool left spinning slows whatever runs next in the same
process. PyTorch gets as many threads as numpy's BLAS uses (jitorch's matmuls run there), read with
threadpoolctl; `--threads N` sets both to N. Runs of the runners alternate, so background load hits all
alike, and each figure is the median over the repeats; the first call (building the model and the
warm-up steps, tracing and compiling included, with empty kernel caches) is recorded too. The load
average is recorded: on a 2-core machine with other work running, a multi-threaded BLAS or OpenMP call
can wait a scheduler time slice (several ms) for its second thread, so `--threads 1` gives steadier
numbers there.
On the GPU (`--device cuda`), the models and batches live on the GPU, the clock is read only after a
device synchronize, and a runner that fails (jitorch's GPU backend is young) reads "failed" with its
error below the table instead of stopping the run (on the CPU too).
This is a benchmark, not a test: nothing here asserts a time. A partial run (fewer repeats, char_lm
or GPT steps than the defaults, or a subset of the workloads) never replaces the recorded results: it
prints its table and writes nothing, or writes to `--out` outside bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime
import functools
import gc
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
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
# the CPU's four runners of every workload, each in its own process: label -> (framework, compiled)
RUNNERS = {"jitorch eager": (jitorch, False), "jitorch compiled": (jitorch, True), "PyTorch eager": (torch, False),
           "torch.compile": (torch, True)}
CPU_STEPS = 10  # training steps per timed run of the GPT-style and MNIST workloads
SETTLE_S = 0.2  # the pause before each timed run: the last runner's idle threads stop spinning first
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


# ---------------------------------------------------------------------------------------------
# models written once for both frameworks (the CPU's GPT-style, minGPT, nanoGPT and MNIST steps)


def gpt(lib, vocab: int, n_layer: int, n_head: int, d_model: int, block_size: int, style: str = "nanogpt"):
    """A GPT (pre-LayerNorm blocks of causal self-attention and a 4x MLP, learned positions) in `lib`.

    `style` "nanogpt": attention through `scaled_dot_product_attention(is_causal=True)`, `nn.GELU`,
    the head's weight tied to the token embedding, as nanoGPT's model.py; "mingpt": attention written
    out (q @ k^T, `masked_fill` with a causal mask buffer, softmax, dropout), GELU's tanh form written
    out and an untied head, as minGPT's model.py. Every dropout is p=0, the configs' setting."""
    nn, F = lib.nn, lib.nn.functional
    head_dim = d_model // n_head

    class NewGELU(nn.Module):  # minGPT's: the tanh approximation as arithmetic, not a library call
        def forward(self, x):
            return 0.5 * x * (1.0 + lib.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * lib.pow(x, 3.0))))

    class CausalSelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(d_model, 3 * d_model)
            self.c_proj = nn.Linear(d_model, d_model)
            self.attn_dropout, self.resid_dropout = nn.Dropout(0.0), nn.Dropout(0.0)
            if style == "mingpt":
                mask = lib.tril(lib.ones(block_size, block_size)).view(1, 1, block_size, block_size)
                self.register_buffer("bias", mask)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(d_model, dim=2)
            q, k, v = (t.view(B, T, n_head, head_dim).transpose(1, 2) for t in (q, k, v))
            if style == "nanogpt":
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))
                att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
                y = self.attn_dropout(F.softmax(att, dim=-1)) @ v
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d_model), CausalSelfAttention(), nn.LayerNorm(d_model)
            gelu = nn.GELU() if style == "nanogpt" else NewGELU()
            self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), gelu, nn.Linear(4 * d_model, d_model),
                                     nn.Dropout(0.0))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, d_model), nn.Embedding(block_size, d_model)
            self.drop = nn.Dropout(0.0)
            self.h = nn.ModuleList([Block() for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab, bias=False)
            if style == "nanogpt":
                self.wte.weight = self.lm_head.weight  # weight tying

        def forward(self, idx, targets):
            positions = lib.arange(idx.shape[1], device=idx.device)
            x = self.drop(self.wte(idx) + self.wpe(positions))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    return GPT()


def gpt_optimizer(lib, model, lr: float, weight_decay: float = 0.1):
    """AdamW as nanoGPT and minGPT configure it: weight decay on the matrices only, betas (0.9, 0.95)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return lib.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def mnist_cnn(lib):
    """pytorch/examples' MNIST network (conv 3x3 32 -> ReLU -> conv 3x3 64 -> ReLU -> max-pool 2 ->
    dropout -> flatten -> Linear 9216-128 -> ReLU -> dropout -> Linear 128-10 -> log-softmax), its
    dropouts at p=0; its loss is `nll_loss` of the output."""
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = nn.Dropout(0.0), nn.Dropout(0.0)
            self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

        def forward(self, x, targets):
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
            x = self.dropout2(F.relu(self.fc1(lib.flatten(self.dropout1(x), 1))))
            return F.nll_loss(F.log_softmax(self.fc2(x), dim=1), targets)

    return Net()


def model_steps(lib, compiled: bool, model, optimizer, batches: list[tuple[np.ndarray, np.ndarray]],
                clip: float | None = None) -> Callable[[], None]:
    """Training steps of `model` (whose forward takes inputs and targets and returns the loss) over
    `batches`, numpy pairs copied into `lib` tensors once here; each step zeroes the gradients, runs
    forward and backward, clips the gradients' norm to `clip` (nanoGPT's and minGPT's trainers do), and
    steps `optimizer`; `compiled`: the whole step under `lib.compile`. One run ends with `loss.item()`."""
    tensors = [(lib.from_numpy(np.ascontiguousarray(x)), lib.from_numpy(np.ascontiguousarray(y))) for x, y in batches]

    def update(inputs, targets):
        optimizer.zero_grad(set_to_none=True)
        loss = model(inputs, targets)
        loss.backward()
        if clip is not None:
            lib.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return loss

    update = lib.compile(update) if compiled else update

    def run() -> None:
        for inputs, targets in tensors:
            loss = update(inputs, targets)
        loss.item()

    for inputs, targets in tensors[:3]:  # warm-up: a compiled step traces on its first two calls
        update(inputs, targets)
    return run


# name -> (GPT sizes, style, learning rate, gradient clip) of the GPT-style CPU workloads
GPT_CPU = {
    "nanogpt": (dict(n_layer=4, n_head=4, d_model=128, block_size=64, batch=8), "nanogpt", 6e-4, 1.0),
    "mingpt": (dict(n_layer=4, n_head=4, d_model=128, block_size=64, batch=8), "mingpt", 5e-4, 1.0),
    "gpt8": (dict(n_layer=8, n_head=4, d_model=64, block_size=32, batch=8), "nanogpt", 1e-3, None),
    "gpt32": (dict(n_layer=32, n_head=4, d_model=64, block_size=32, batch=8), "nanogpt", 1e-3, None),
}


def gpt_steps(lib, compiled: bool, key: str, steps: int) -> Callable[[], None]:
    """`steps` training steps of GPT_CPU[key] on char_lm's text (the same batches for both frameworks)."""
    sizes, style, lr, clip = GPT_CPU[key]
    rng = np.random.default_rng(0)
    batches = [corpus().batch("train", sizes["batch"], sizes["block_size"], rng) for _ in range(steps)]
    lib.manual_seed(0)
    model = gpt(lib, len(corpus().chars), sizes["n_layer"], sizes["n_head"], sizes["d_model"], sizes["block_size"],
                style)
    return model_steps(lib, compiled, model, gpt_optimizer(lib, model, lr), batches, clip)


def mnist_steps(lib, compiled: bool, steps: int, batch: int = 64) -> Callable[[], None]:
    """`steps` Adadelta steps (lr 1.0, as pytorch/examples' MNIST trains) of `mnist_cnn` on random
    28x28 images and labels (the same for both frameworks)."""
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch))
               for _ in range(steps)]
    lib.manual_seed(0)
    model = mnist_cnn(lib)
    return model_steps(lib, compiled, model, lib.optim.Adadelta(model.parameters(), lr=1.0), batches)


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
# the CPU: every runner of a workload in its own process, the runs alternating


def cpu_workloads(lm_steps: int) -> dict[str, tuple[str, Callable, int]]:
    """short name -> (the table's name, make(lib, compiled) -> a runner on the CPU, training steps
    or epochs per run) of every CPU workload."""
    steps_per_epoch = len(digits.make_loader(digits.make_datasets(jitorch)[0]))
    vocab = len(corpus().chars)

    def gpt_name(title: str, key: str) -> str:
        sizes, _, _, clip = GPT_CPU[key]
        return (f"{title}: one step ({sizes['n_layer']} layers, d_model {sizes['d_model']}, {sizes['n_head']} heads, "
                f"batch {sizes['batch']} x {sizes['block_size']}, vocabulary {vocab}"
                + (f", gradient clip {clip:g}" if clip else "") + ")")

    workloads = {
        "digits": (f"digits CNN: one epoch ({steps_per_epoch} steps of batch {digits.BATCH_SIZE})", digits_epoch, 1),
        "char_lm": (f"char_lm transformer: one step (batch {char_lm.Config.batch_size} x {char_lm.Config.block_size} "
                    f"characters)",
                    lambda lib, compiled: char_lm_steps(lib, lm_steps, compiled, constant_rate=True), lm_steps),
        "nanogpt": (gpt_name("nanoGPT-style GPT (SDPA, tied head, AdamW)", "nanogpt"),
                    lambda lib, compiled: gpt_steps(lib, compiled, "nanogpt", CPU_STEPS), CPU_STEPS),
        "mingpt": (gpt_name("minGPT-style GPT (masked_fill + softmax attention, AdamW)", "mingpt"),
                   lambda lib, compiled: gpt_steps(lib, compiled, "mingpt", CPU_STEPS), CPU_STEPS),
        "mnist": ("MNIST CNN: one step (2 conv 3x3, max-pool, 2 Linear, batch 64 x 28x28, Adadelta)",
                  lambda lib, compiled: mnist_steps(lib, compiled, CPU_STEPS), CPU_STEPS),
    }
    for key in ("gpt8", "gpt32"):
        workloads[key] = (gpt_name("GPT-style transformer (AdamW)", key),
                          lambda lib, compiled, key=key: gpt_steps(lib, compiled, key, CPU_STEPS), CPU_STEPS)
    return workloads


CPU_WORKLOADS = ("digits", "char_lm", "nanogpt", "mingpt", "mnist", "gpt8", "gpt32")


def worker(label: str, key: str, threads: int, lm_steps: int, profile: bool, prims: bool) -> None:
    """The worker process of one runner on one workload: build it and reply its first-call seconds,
    then time one run for each "run" line read from stdin, replying one JSON line each."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever else prints (the libraries, --profile) goes to stderr, not into the replies

    def reply(**fields) -> None:
        replies.write(json.dumps(fields) + "\n")
        replies.flush()

    lib, compiled = RUNNERS[label]
    set_threads(threads)
    name, make, _ = cpu_workloads(lm_steps)[key]
    try:
        start = time.perf_counter()
        run = make(lib, compiled)
        reply(first_s=time.perf_counter() - start)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            start = time.perf_counter()
            run()
            reply(s=time.perf_counter() - start)
    except Exception as err:
        reply(error=describe_failure(err))
        return
    if label == "jitorch eager" and profile:
        profile_jitorch(run, name, top=30)
    if label == "jitorch eager" and prims:
        primitive_times(run, name)


class Worker:
    """A runner's worker process (`worker`), asked for one timed run at a time."""

    def __init__(self, label: str, key: str, threads: int, lm_steps: int, cache_dir: str, flags: list[str]) -> None:
        # empty kernel caches of its own: the first call is a first run's, as a user meets it
        env = dict(os.environ, JITORCH_CACHE_DIR=os.path.join(cache_dir, "jitorch"),
                   TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", label, "--workloads", key,
               "--threads", str(threads), "--lm-steps", str(lm_steps), *flags]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, command: str | None = None) -> dict:
        """Send `command` (None: only read), and return the worker's reply."""
        try:
            if command is not None:
                self.proc.stdin.write(command + "\n")
                self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        return json.loads(line) if line else {"error": f"the worker process exited (status {self.proc.wait()})"}

    def close(self) -> None:
        """Let the worker finish (its --profile output, if asked) and exit."""
        self.proc.stdin.close()
        self.proc.wait()


def measure_workload(key: str, threads: int, repeats: int, lm_steps: int,
                     flags: list[str]) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """One workload's runners, each in its own process, built one after another, then timed over
    `repeats` rounds, each round starting one runner further along. Returns ({label: median seconds
    per run}, {label: first-call seconds}, {label: error} for the runners that failed)."""
    cache_root = tempfile.mkdtemp(prefix="jitorch-train-bench-")
    workers, first, failures = {}, {}, {}
    try:
        for k, label in enumerate(RUNNERS):
            workers[label] = Worker(label, key, threads, lm_steps, os.path.join(cache_root, str(k)), flags)
            answer = workers[label].ask()
            if "error" in answer:
                failures[label] = answer["error"]
                workers.pop(label).close()
            else:
                first[label] = answer["first_s"]
        times = {label: [] for label in workers}
        labels = list(workers)
        for r in range(repeats):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                if label in failures:
                    continue
                time.sleep(SETTLE_S)
                answer = workers[label].ask("run")
                if "error" in answer:
                    failures[label] = answer["error"]
                else:
                    times[label].append(answer["s"])
    finally:
        for w in workers.values():
            w.close()
        shutil.rmtree(cache_root, ignore_errors=True)
    medians = {label: statistics.median(t) for label, t in times.items() if t and label not in failures}
    return medians, {label: s for label, s in first.items() if label in medians}, failures


def ratio(a: float | None, b: float | None) -> str:
    """a / b as a table cell, or "-" where either runner failed."""
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def section(rows: list[tuple[str, dict[str, float], dict[str, float], dict[str, str]]], threads: int, repeats: int,
            lm_steps: int, load: tuple[float, float]) -> str:
    """One results section: the step times and first-call times at one thread count, then how they
    were measured. `rows`: (workload, {runner: ms per unit}, {runner: first-call s}, {runner: error})."""
    labels = list(RUNNERS)
    lines = [
        f"## {threads} thread{'s' if threads > 1 else ''}",
        "",
        "Milliseconds per training step (per epoch for digits), median over the repeats:",
        "",
        "| workload | " + " | ".join(f"{label} ms" for label in labels) + " | jitorch compiled / torch.compile | "
        "jitorch compiled / PyTorch eager | jitorch eager / PyTorch eager |",
        "|---|" + "---:|" * (len(labels) + 3),
    ]
    for name, ms, _, _ in rows:
        cells = [f"{ms[label]:.1f}" if label in ms else "failed" for label in labels]
        lines.append(f"| {name} | {' | '.join(cells)} | {ratio(ms.get('jitorch compiled'), ms.get('torch.compile'))} "
                     f"| {ratio(ms.get('jitorch compiled'), ms.get('PyTorch eager'))} "
                     f"| {ratio(ms.get('jitorch eager'), ms.get('PyTorch eager'))} |")
    lines += ["", "First call, seconds: building the model and optimizer and the warm-up (3 steps; one epoch for "
              "digits), which for a compiled runner includes tracing and compiling, with empty kernel caches:", "",
              "| workload | " + " | ".join(f"{label} s" for label in labels) + " |", "|---|" + "---:|" * len(labels)]
    for name, _, first, _ in rows:
        lines.append(f"| {name} | " + " | ".join(f"{first[label]:.1f}" if label in first else "failed"
                                                 for label in labels) + " |")
    failed = [f"- {label}, {name}: {error}" for name, _, _, errors in rows for label, error in errors.items()]
    if failed:
        lines += ["", "Failed (the error each raised):", "", *failed]
    lines += [
        "",
        f"- threads: numpy's BLAS {threads}, jitorch's fused kernels and PyTorch `set_num_threads({threads})` "
        "(which torch.compile's C++ kernels use too) to match",
        f"- each runner in its own process (a framework's thread pool left spinning would slow whatever runs next "
        f"in the same process), built one after another, then {repeats} timed runs each, the runners alternating "
        f"(each round starts one further along) with a {SETTLE_S:g} s pause before each run; each figure is the "
        f"median; char_lm over {lm_steps} steps a run, the GPT-style and MNIST workloads over {CPU_STEPS}",
        "- \"compiled\" is the whole training step (forward, backward and optimizer update) under `jitorch.compile` "
        "or `torch.compile` (default mode), as `examples/digits.py` and `examples/char_lm.py` train by default; "
        "\"eager\" is their `--eager` mode; the learning rate is constant (char_lm's scheduler is left out): "
        "torch.compile specializes on Python floats and would recompile a step whose rate changes every call",
        "- the GPT-style and MNIST models are written once in bench/train.py for both frameworks (`gpt`, "
        "`mnist_cnn`), after nanoGPT's and minGPT's model.py and pytorch/examples' MNIST, every dropout at p=0; "
        "they train on char_lm's text (the GPTs) or random images (MNIST), the same batches for every runner, "
        "and a run ends with `loss.item()`",
        "- first call: in the runner's process, after its imports, each process with empty on-disk kernel caches "
        "of its own (`JITORCH_CACHE_DIR`, `TORCHINDUCTOR_CACHE_DIR`)",
        f"- 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after (other processes share the CPUs)",
        "",
    ]
    return "\n".join(lines)


def header(thread_counts: list[int | None]) -> str:
    """The page's title, target, machine and versions."""
    counts = [str(t) for t in thread_counts if t is not None]
    flags = f"--threads {' '.join(counts)}" if counts else ""
    flags += " --malloc-tuning" if memory.malloc_tuned else ""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "# Training speed on the CPU: jitorch (eager and compiled) vs PyTorch (eager and torch.compile)",
        "",
        f"Target: jitorch no slower than {TARGET_RATIO}x PyTorch eager, and jitorch's compiled step as fast as "
        "torch.compile's. digits and char_lm are the examples' own model, optimizer and batch code, run with "
        "`lib=jitorch` and with `lib=torch`; the GPT-style and MNIST steps are written once in bench/train.py for "
        "both.",
        "",
        f"- date: {now}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs",
        f"- versions: Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"jitorch {jitorch.__version__}",
        f"- command: `python bench/train.py{' ' + flags.strip() if flags else ''}`",
        f"- jitorch's opt-in glibc heap settings (backends.cpu.memory): {'on' if memory.malloc_tuned else 'off'}",
        "",
    ])


def measure(threads: int | None, repeats: int, lm_steps: int, only: list[str], flags: list[str]) -> str:
    """Time the workloads in `only` with every runner at one thread count; returns its results section."""
    threads = threads if threads is not None else blas_threads()
    load_before = os.getloadavg()[0]
    workloads = cpu_workloads(lm_steps)
    rows = []
    for key in only:
        name, _, units = workloads[key]
        seconds, first, failures = measure_workload(key, threads, repeats, lm_steps, flags)
        ms = {label: 1000 * s / units for label, s in seconds.items()}
        rows.append((name, ms, first, failures))
        print(f"[{threads} threads] {name}: " + ", ".join(
            f"{label} {ms[label]:.1f} ms (first call {first[label]:.1f} s)" if label in ms
            else f"{label} failed ({failures.get(label, '')})" for label in RUNNERS), flush=True)
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
                        help=f"a comma-separated subset (a partial run): on the CPU of {','.join(CPU_WORKLOADS)}; on "
                             "cuda of mlp,small_mlp,digits,char_lm,gpt")
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
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one runner's process (`worker`)
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
    if args.malloc_tuning and not memory.tune_malloc():
        raise SystemExit("--malloc-tuning: the heap settings need glibc (Linux)")
    if args.worker:
        worker(args.worker, args.workloads, args.threads[0], args.lm_steps, args.profile, args.prims)
        return
    only = args.workloads.split(",") if args.workloads else list(CPU_WORKLOADS)
    unknown = [key for key in only if key not in CPU_WORKLOADS]
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(unknown)}; choose from {', '.join(CPU_WORKLOADS)}")
    name = "train_cpu_malloc_tuning" if args.malloc_tuning else "train_cpu"
    partial = args.repeats < REPEATS or args.lm_steps < LM_STEPS or set(only) != set(CPU_WORKLOADS)
    out = results_path(name, partial, args.out)
    # the workers are started with the same options (their heap settings, profiles)
    flags = (["--malloc-tuning"] if args.malloc_tuning else []) + (["--profile"] if args.profile else []) + (
        ["--prims"] if args.prims else [])
    sections = [measure(t, args.repeats, args.lm_steps, only, flags) for t in args.threads]
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
