"""Public PyTorch training scripts ("clients") run with PyTorch and through `python -m jitorch.as_torch`.

    python bench/clients.py /tmp/clients            # writes bench/results/clients.md

The client code is NOT in this repository: it is public code (pytorch/examples, karpathy/minGPT, ...) fetched
separately into one folder per client under the given directory, with only its data-reading lines replaced by
small synthetic data of a fixed seed (each such line is marked `# CHANGED` in the copy). CLIENTS below says,
for each client, its folder, entry script, arguments and how its loss lines look; a client whose folder is
missing is reported as "not present".

For each present client the runner
  1. runs the script unmodified with PyTorch and with jitorch (eager), recording whether it ran and, if not,
     the first sentence of the exception it ended with;
  2. runs both again with the same initial weights: a small wrapper (WRAPPER, written to a temporary folder)
     wraps `torch.optim.Optimizer.__init__`, saves the parameters each optimizer receives under PyTorch and
     copies them, in the same order, into the jitorch run (a model that no optimizer holds, trained by hand, is
     taken at its first call, by parameter name); the loss curves of these two runs are compared. Dropout
     masks, DataLoader shuffling and other random draws still differ between the libraries (their RNG streams
     differ), so only clients without those give curves that should agree to rounding;
  3. runs both once more through the same wrapper with the same initial weights, in float64 and with the same
     random draws: every random function a script can reach (torch.rand/randn/randint/randperm, in-place
     fills, bernoulli, multinomial, dropout in all its forms, DataLoader shuffling) is replaced, in both
     libraries, by a stand-in drawing from numpy, and the wrapper records each loss at full precision (the
     value backward() starts from); with a compile flag, jitorch also runs compiled against PyTorch eager.
     The client code is never edited; float32 that a script asks for by name is made float64 as well;
  4. where the client has a compile flag, runs it compiled under both (torch.compile and jitorch's compile).
Step time is the median time between consecutive loss lines on stdout (the first `WARMUP` lines are skipped),
so it is a time per logged step: run clients with a log interval of one step. A client that fails under
jitorch only for a missing module may list diagnostic `shims` (stand-ins the wrapper installs); results got
with a shim are marked so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "clients.md"
WARMUP = 3
TIMEOUT_S = 600
NOTES = "## Notes"
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Client:
    name: str  # the client's name, and its folder under the clients directory unless `folder` says another
    source: str  # where the code came from
    script: str  # entry script, relative to the folder
    args: tuple[str, ...]
    loss: str  # regex whose group 1 is one training loss, one match per logged step
    compile_flag: str | None = None  # argument that turns compilation on, where the script has one
    shims: tuple[str, ...] = field(default_factory=tuple)  # diagnostic stand-ins for jitorch (see SHIMS)
    folder: str | None = None


CLIENTS = (
    Client("mnist", "pytorch/examples mnist/main.py @ f15fac72", "main.py",
           ("--epochs", "1", "--log-interval", "1"), r"\tLoss: ([-0-9.eE+]+)"),
    Client("mnist_current", "pytorch/examples mnist/main.py @ 09654b86 (Adadelta, StepLR, --no-mps)", "main.py",
           ("--epochs", "1", "--log-interval", "1"), r"\tLoss: ([-0-9.eE+]+)"),
    Client("mnist_current --no-mps", "the same, with its own --no-mps flag", "main.py",
           ("--epochs", "1", "--log-interval", "1", "--no-mps"), r"\tLoss: ([-0-9.eE+]+)", folder="mnist_current"),
    Client("vae", "pytorch/examples vae/main.py @ 0a8329cf", "main.py",
           ("--epochs", "1", "--log-interval", "1"), r"\tLoss: ([-0-9.eE+]+)"),
    Client("time_sequence_prediction", "pytorch/examples time_sequence_prediction/train.py @ 04b1f3ce",
           "train.py", ("--steps", "2", "--device", "cpu"), r"^loss: ([-0-9.eE+]+)"),
    Client("mingpt", "karpathy/minGPT mingpt/model.py @ 08c08d8d + our train_tiny.py loop", "train_tiny.py",
           ("--steps", "30", "--dtype", "float64"), r"loss ([-0-9.eE+]+)", "--compile"),
    Client("nanogpt", "karpathy/nanoGPT train.py @ e2221318, model.py @ 04a1d697 (stored version with an SVD option, "
           "off by default), configurator.py @ 085bba52", "train.py",
           ("--dataset=synthetic", "--device=cpu", "--compile=False", "--max_iters=20", "--log_interval=1",
            "--eval_interval=1000", "--eval_iters=2", "--batch_size=4", "--block_size=32", "--n_layer=2", "--n_head=2",
            "--n_embd=64", "--dropout=0.0", "--dtype=float32", "--gradient_accumulation_steps=1", "--wandb_log=False",
            "--always_save_checkpoint=False", "--warmup_iters=5", "--lr_decay_iters=20"),
           r"iter \d+: loss ([-0-9.eE+]+)", "--compile=True"),
    Client("word_language_model", "pytorch/examples word_language_model main.py @ cd01f930, model.py @ 001d4932, "
           "data.py @ 1b1a9740", "main.py",
           ("--epochs", "1", "--log-interval", "1", "--emsize", "32", "--nhid", "32", "--bptt", "16", "--model",
            "LSTM"), r"\| loss\s+([-0-9.eE+]+)"),
    Client("word_language_model --model GRU", "the same", "main.py",
           ("--epochs", "1", "--log-interval", "1", "--emsize", "32", "--nhid", "32", "--bptt", "16", "--model",
            "GRU"), r"\| loss\s+([-0-9.eE+]+)", folder="word_language_model"),
    Client("word_language_model --model Transformer", "the same", "main.py",
           ("--epochs", "1", "--log-interval", "1", "--emsize", "32", "--nhid", "32", "--bptt", "16", "--model",
            "Transformer"), r"\| loss\s+([-0-9.eE+]+)", folder="word_language_model"),
    Client("dcgan", "pytorch/examples dcgan/main.py @ 13caa078 (torchvision lines replaced)", "main.py",
           ("--dataset", "fake", "--niter", "1", "--ngf", "8", "--ndf", "8", "--imageSize", "64", "--batchSize", "8",
            "--workers", "0", "--manualSeed", "1", "--outf", "out"), r"Loss_D: ([-0-9.eE+]+)"),
)

# Diagnostic stand-ins the wrapper can install before the script runs (jitorch side only), for a client
# that fails on a missing module, to see what else it would meet: name -> Python run after `import torch`.
# (Empty while every present client runs without one.)
SHIMS: dict[str, str] = {}

# argv: mode (plain | dump | load), weights file prefix, comma-separated shims, loss record file (empty: no
# float64 and no stand-ins), script, script args. SHIMS is prepended when the wrapper is written.
WRAPPER = '''\
import math, os, runpy, sys
import numpy as np
import torch
mode, path, shims, record, script, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
for name in filter(None, shims.split(",")):
    exec(SHIMS[name])
F = torch.nn.functional

# --- same initial weights: every optimizer's parameters, in order (the order modules register them, the same
# in both libraries); a model trained without an optimizer is taken at its first call, by parameter name
events, seen = [], set()
def exchange(named):
    event_path = "%s.%d.npz" % (path, len(events))
    events.append(event_path)
    if mode == "dump":
        np.savez(event_path, **{n: p.detach().cpu().numpy() for n, p in named})
    else:
        saved = np.load(event_path)
        with torch.no_grad():
            for n, p in named:
                p.copy_(torch.from_numpy(saved[n]).to(p.dtype))
    seen.update(id(p) for _, p in named)
original_init = torch.optim.Optimizer.__init__
def hooked_init(self, params, *a, **k):
    params = list(params)
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    if mode != "plain":
        exchange([("arr_%d" % i, p) for i, p in enumerate(flat)])
    original_init(self, params, *a, **k)
torch.optim.Optimizer.__init__ = hooked_init
original_call = torch.nn.Module.__call__
def first_call(self, *a, **k):
    named = list(self.named_parameters())
    if named:
        torch.nn.Module.__call__ = original_call
        if mode != "plain" and not all(id(p) in seen for _, p in named):
            exchange(named)
    return original_call(self, *a, **k)
torch.nn.Module.__call__ = first_call

if record:
    # --- float64 everywhere: new floating tensors, and the floating data a script wraps in a TensorDataset
    torch.set_default_dtype(torch.float64)
    dataset_init = torch.utils.data.TensorDataset.__init__
    def float64_dataset(self, *tensors):
        dataset_init(self, *(t.to(torch.float64) if t.is_floating_point() else t for t in tensors))
    torch.utils.data.TensorDataset.__init__ = float64_dataset
    # float32 asked for by name (dtype=torch.float, .float(), .to(torch.float32)) is float64 too: a float32
    # table the script builds would otherwise differ by the libraries' float32 rounding (sin, cos and exp are
    # not correctly rounded alike), which training then amplifies
    def widened(value):
        return torch.float64 if value is torch.float32 else value
    def widening(function):
        def call(*a, **k):
            return function(*map(widened, a), **{key: widened(v) for key, v in k.items()})
        return call
    for name in ("arange", "zeros", "ones", "empty", "full", "tensor", "as_tensor", "linspace", "logspace", "eye",
                 "zeros_like", "ones_like", "empty_like", "full_like"):
        if hasattr(torch, name):  # (jitorch has no logspace)
            setattr(torch, name, widening(getattr(torch, name)))
    torch.Tensor.to = widening(torch.Tensor.to)
    torch.Tensor.float = lambda self, *a, **k: self.to(torch.float64)

    # --- the same random draws: each draw of a kind is numbered, and draw n of kind K comes from numpy seeded
    # with (K, n), so a draw the other library makes in addition (say while initializing weights, which are
    # copied anyway) shifts no other kind's stream
    KINDS = ("rand", "randn", "randint", "randperm", "uniform", "normal", "bernoulli", "multinomial", "dropout",
             "shuffle", "random")
    counts = dict.fromkeys(KINDS, 0)
    def numpy_rng(kind):
        counts[kind] += 1
        return np.random.default_rng([KINDS.index(kind), counts[kind]])
    def shape_of(size):
        return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
    def tensor(array, dtype=None, device=None, requires_grad=False, like=None):
        if dtype is None:
            integral = np.asarray(array).dtype.kind in "iu"
            dtype = like.dtype if like is not None else torch.int64 if integral else torch.get_default_dtype()
        device = device if like is None else like.device
        out = torch.from_numpy(np.array(array, order="C")).to(dtype=dtype, device=device)
        return out.requires_grad_() if requires_grad else out
    def fill(x, array):
        with torch.no_grad():
            x.copy_(tensor(array, like=x))
        return x
    def numpy_of(x):
        return x.detach().cpu().to(torch.float64).numpy()
    def rand(*size, generator=None, out=None, dtype=None, layout=None, device=None, requires_grad=False, **k):
        return tensor(numpy_rng("rand").random(shape_of(size)), dtype, device, requires_grad)
    def randn(*size, generator=None, out=None, dtype=None, layout=None, device=None, requires_grad=False, **k):
        return tensor(numpy_rng("randn").standard_normal(shape_of(size)), dtype, device, requires_grad)
    def randint(*a, size=None, generator=None, out=None, dtype=None, layout=None, device=None, **k):
        a += () if size is None else (size,)
        low, high, size = (0, *a) if len(a) == 2 else a
        return tensor(numpy_rng("randint").integers(low, high, tuple(size)), dtype or torch.int64, device)
    def randperm(n, generator=None, out=None, dtype=None, layout=None, device=None, requires_grad=False, **k):
        return tensor(numpy_rng("randperm").permutation(n), dtype or torch.int64, device)
    def rand_like(x, dtype=None, **k):
        return tensor(numpy_rng("rand").random(tuple(x.shape)), dtype or x.dtype, x.device)
    def randn_like(x, dtype=None, **k):
        return tensor(numpy_rng("randn").standard_normal(tuple(x.shape)), dtype or x.dtype, x.device)
    def uniform_(x, a=0.0, b=1.0, generator=None):
        return fill(x, numpy_rng("uniform").uniform(a, b, tuple(x.shape)))
    def normal_(x, mean=0.0, std=1.0, generator=None):
        return fill(x, numpy_rng("normal").normal(mean, std, tuple(x.shape)))
    def random_(x, *a, generator=None):
        return fill(x, numpy_rng("random").integers(*(a or (0, 2 ** 31)), size=tuple(x.shape)))
    def bernoulli_(x, p=0.5, generator=None):
        p = numpy_of(p) if isinstance(p, torch.Tensor) else p
        return fill(x, numpy_rng("bernoulli").random(tuple(x.shape)) < p)
    def bernoulli(x, p=None, generator=None, out=None):
        return tensor(numpy_rng("bernoulli").random(tuple(x.shape)) < (numpy_of(x) if p is None else p), like=x)
    def multinomial(probs, num_samples, replacement=False, generator=None, out=None):
        rng, rows = numpy_rng("multinomial"), numpy_of(probs).reshape(-1, probs.shape[-1])
        picks = [rng.choice(len(r), num_samples, replace=replacement, p=r / r.sum()) for r in rows]
        return tensor(np.array(picks).reshape(*probs.shape[:-1], num_samples), torch.int64, probs.device)
    def keep_mask(x, p, shape):
        # 1/(1-p) where kept, 0 where dropped: multiplying by it is dropout in both libraries
        return tensor((numpy_rng("dropout").random(shape) >= p) / (1.0 - p), like=x)
    def masked(x, p, training, inplace, shape):
        if not training or p == 0.0:
            return x
        mask = keep_mask(x, p, shape)
        return x.mul_(mask) if inplace else x * mask
    def dropout(x, p=0.5, training=True, inplace=False):
        return masked(x, p, training, inplace, tuple(x.shape))
    def feature_dropout(x, p=0.5, training=True, inplace=False):
        return masked(x, p, training, inplace, tuple(x.shape[:2]) + (1,) * (x.ndim - 2))
    for module, names in ((torch, ("rand", "randn", "randint", "randperm", "rand_like", "randn_like", "bernoulli",
                                   "multinomial")),
                          (torch.Tensor, ("uniform_", "normal_", "random_", "bernoulli_", "bernoulli", "multinomial"))):
        for name in names:
            setattr(module, name, locals()[name])
    F.dropout = dropout
    dropout_forward = torch.nn.Dropout.forward
    torch.nn.Dropout.forward = lambda self, x: dropout(x, self.p, self.training, self.inplace)
    for name in ("AlphaDropout", "FeatureAlphaDropout"):  # jitorch's inherit Dropout.forward: keep theirs
        if hasattr(torch.nn, name) and "forward" not in vars(getattr(torch.nn, name)):
            getattr(torch.nn, name).forward = dropout_forward
    for name in ("1d", "2d", "3d"):  # (jitorch has no 3d forms)
        if hasattr(F, "dropout" + name):
            setattr(F, "dropout" + name, feature_dropout)
            getattr(torch.nn, "Dropout" + name).forward = lambda self, x: feature_dropout(x, self.p, self.training,
                                                                                          self.inplace)

    # attention with dropout: softmax(q k^T * scale + mask) v, the weights dropped by the stand-in
    def attention(original):
        def wrapped(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
            if dropout_p == 0.0:
                return original(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
            if attn_mask is None and is_causal:
                attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
            if attn_mask is not None and attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            elif attn_mask is not None:
                scores = scores + attn_mask
            return dropout(scores.softmax(-1), dropout_p) @ v
        return wrapped
    # jitorch's MultiheadAttention calls its private `_attention`; PyTorch's calls F.scaled_dot_product_attention
    attention_name = "_attention" if hasattr(F, "_attention") else "scaled_dot_product_attention"
    setattr(F, attention_name, attention(getattr(F, attention_name)))

    # recurrent layers drop between layers inside PyTorch's C++ kernel: run them one layer at a time (each a
    # 1-layer module of the same library, sharing the parameters) with the stand-in between layers
    single_layers = {}
    def layers_of(rnn):
        if id(rnn) not in single_layers:
            saved_counts = dict(counts)  # building the 1-layer modules draws initial weights: not counted
            directions = 2 if rnn.bidirectional else 1
            layers = []
            for layer in range(rnn.num_layers):
                width = rnn.input_size if layer == 0 else rnn.hidden_size * directions
                one = type(rnn)(width, rnn.hidden_size, 1, bias=rnn.bias, batch_first=rnn.batch_first,
                                bidirectional=rnn.bidirectional)
                for suffix in ("", "_reverse"):
                    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        if hasattr(rnn, "%s_l%d%s" % (kind, layer, suffix)):
                            setattr(one, "%s_l0%s" % (kind, suffix), getattr(rnn, "%s_l%d%s" % (kind, layer, suffix)))
                layers.append(one)
            counts.update(saved_counts)
            single_layers[id(rnn)] = layers
        return single_layers[id(rnn)]
    rnn_forwards = {cls: cls.forward for cls in (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN)}
    def layer_by_layer(self, input, hx=None):
        if not (self.training and self.dropout and self.num_layers > 1):
            return next(f for cls, f in rnn_forwards.items() if isinstance(self, cls))(self, input, hx)
        directions = 2 if self.bidirectional else 1
        lstm = isinstance(self, torch.nn.LSTM)
        x, finals = input, []
        for layer, one in enumerate(layers_of(self)):
            part = slice(layer * directions, (layer + 1) * directions)
            state = None if hx is None else (hx[0][part], hx[1][part]) if lstm else hx[part]
            x, final = one(dropout(x, self.dropout) if layer else x, state)
            finals.append(final)
        if lstm:
            return x, (torch.cat([h for h, _ in finals]), torch.cat([c for _, c in finals]))
        return x, torch.cat(finals)
    torch.nn.LSTM.forward = torch.nn.GRU.forward = torch.nn.RNN.forward = layer_by_layer

    # DataLoader shuffling: a numpy permutation per epoch
    class NumpyShuffle:
        def __init__(self, n):
            self.n = n
        def __iter__(self):
            return iter(numpy_rng("shuffle").permutation(self.n).tolist())
        def __len__(self):
            return self.n
    loader_init = torch.utils.data.DataLoader.__init__
    def unshuffled(self, dataset, *a, **k):
        k.update(zip(("batch_size", "shuffle"), a[:2]))
        if k.pop("shuffle", False):
            k["sampler"] = NumpyShuffle(len(dataset))
        loader_init(self, dataset, *a[2:], **k)
    torch.utils.data.DataLoader.__init__ = unshuffled

    # --- the loss curve at full precision: the value of every tensor backward() starts from, and of the scalars
    # a compiled function returns (a compiled training step runs backward inside, where Python runs only while
    # tracing); nothing is recorded while compiling
    losses = open(record, "w")
    def note(value):
        losses.write(repr(value) + "\\n")
        losses.flush()
    original_backward = torch.Tensor.backward
    def recorded_backward(self, *a, **k):
        if not torch.compiler.is_compiling():
            note(self.detach().item())
        return original_backward(self, *a, **k)
    torch.Tensor.backward = recorded_backward
    original_compile = torch.compile
    def recorded_compile(model=None, **k):
        if model is None:
            return lambda fn: recorded_compile(fn, **k)
        compiled = original_compile(model, **k)
        if isinstance(model, torch.nn.Module):
            return compiled
        def step(*a, **kw):
            out = compiled(*a, **kw)
            for value in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point():
                    note(value.detach().item())
            return out
        return step
    torch.compile = recorded_compile

sys.argv = [script, *args]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
'''


@dataclass
class Run:
    ok: bool
    losses: list[float]
    step_s: float | None
    error: str


def run(cmd: list[str], cwd: Path, loss_re: str) -> Run:
    """Runs `cmd`, stamping each stdout line as it arrives; returns the losses and the median step time."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    pattern = re.compile(loss_re)
    losses, stamps = [], []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        deadline = time.monotonic() + TIMEOUT_S
        for line in proc.stdout:
            match = pattern.search(line)
            if match:
                losses.append(float(match.group(1)))
                stamps.append(time.perf_counter())
            if time.monotonic() > deadline:
                proc.kill()
                break
        proc.wait()
        err.seek(0)
        lines = [x for x in err.read().splitlines() if x.strip()]
    gaps = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1:])]
    # the exception's own line (a long message may continue below it), without terminal colour codes, to the
    # end of its first sentence so that the table cell stays readable
    raised = [x for x in lines if EXCEPTION.match(x)]
    last = ANSI.sub("", (raised or lines or [f"exit status {proc.returncode}"])[-1])
    error = "" if proc.returncode == 0 else last.split(". ")[0].rstrip(". ") + "."
    return Run(proc.returncode == 0, losses, statistics.median(gaps) if gaps else None, error)


def version(module: str) -> str:
    out = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__version__)"],
                         capture_output=True, text=True, cwd="/")
    return out.stdout.strip() or "?"


def ms(run_: Run | None) -> str:
    if run_ is None:
        return "n/a"
    if run_.step_s is None:
        return "?" if run_.ok else "failed"
    return f"{run_.step_s * 1e3:.2f}" + ("" if run_.ok else " (then failed)")


def max_diff(a: list[float], b: list[float]) -> str:
    n = min(len(a), len(b))
    if n == 0:
        return "n/a"
    diff = max(abs(x - y) for x, y in zip(a[:n], b[:n]))
    rel = max(abs(x - y) / max(abs(x), 1e-30) for x, y in zip(a[:n], b[:n]))
    counts = "" if len(a) == len(b) else f" (PyTorch {len(a)}, jitorch {len(b)})"
    return f"{diff:.3g} abs / {rel:.3g} rel over {n} losses{counts}"


def recorded(path: Path) -> list[float]:
    return [float(x) for x in path.read_text().split()] if path.is_file() else []


def compared(reference: Run, reference_losses: list[float], other: Run | None, other_losses: list[float]) -> str:
    """max_diff of two loss curves, saying so where a run stopped with an error after the losses it gave."""
    if other is None:
        return "n/a"
    failed = [name for name, r in (("PyTorch", reference), ("jitorch", other)) if not r.ok]
    text = max_diff(reference_losses, other_losses)
    return text + (f"; {' and '.join(failed)} then failed" if failed and text != "n/a" else "")


def check(client: Client, root: Path, wrapper: Path, tmp: Path) -> dict[str, str]:
    folder = root / (client.folder or client.name)
    if not (folder / client.script).is_file():
        return {"status": "not present"}
    py, jit = [sys.executable], [sys.executable, "-m", "jitorch.as_torch"]
    weights = tmp / "weights"
    for stale in tmp.glob("weights.*.npz"):  # another client's, which a run with more optimizers would read
        stale.unlink()

    def wrapped(prefix: list[str], mode: str, shims: tuple[str, ...], extra: tuple[str, ...] = (),
                record: Path | None = None) -> list[str]:
        return [*prefix, str(wrapper), mode, str(weights), ",".join(shims), str(record or ""), client.script,
                *client.args, *extra]

    torch_eager = run([*py, client.script, *client.args], folder, client.loss)
    jit_eager = run([*jit, client.script, *client.args], folder, client.loss)
    shims: tuple[str, ...] = ()
    if not jit_eager.ok and client.shims:
        shims = client.shims
        jit_eager = run(wrapped(jit, "plain", shims), folder, client.loss)
    same_t = run(wrapped(py, "dump", ()), folder, client.loss)
    same_j = run(wrapped(jit, "load", shims), folder, client.loss) if same_t.losses else None
    # float64, the same initial weights and the same random draws; losses read from the wrapper's record
    record_t, record_j, record_jc = tmp / "draws_torch.txt", tmp / "draws_jit.txt", tmp / "draws_jit_compiled.txt"
    for path in (record_t, record_j, record_jc):
        path.unlink(missing_ok=True)
    draws_t = run(wrapped(py, "dump", (), record=record_t), folder, client.loss)
    draws_j = draws_jc = None
    if recorded(record_t):
        draws_j = run(wrapped(jit, "load", shims, record=record_j), folder, client.loss)
        if client.compile_flag:
            draws_jc = run(wrapped(jit, "load", shims, (client.compile_flag,), record=record_jc), folder, client.loss)
    torch_comp = jit_comp = None
    if client.compile_flag:
        torch_comp = run([*py, client.script, *client.args, client.compile_flag], folder, client.loss)
        jit_comp = run(wrapped(jit, "plain", shims, (client.compile_flag,)), folder, client.loss)
    if torch_eager.ok and jit_eager.ok and not shims:
        status = "ran unmodified under both"
    elif torch_eager.ok and jit_eager.ok:
        status = f"jitorch failed unmodified; ran with diagnostic shim {', '.join(shims)}"
    elif torch_eager.ok:
        status = f"jitorch failed: `{jit_eager.error}`"
    elif jit_eager.ok:
        status = f"PyTorch failed: `{torch_eager.error}`"
    else:
        trained = "both trained, then " if torch_eager.losses and jit_eager.losses else ""
        status = f"{trained}PyTorch failed: `{torch_eager.error}`; jitorch failed: `{jit_eager.error}`"
    if shims:
        unshimmed = run([*jit, client.script, *client.args], folder, client.loss)
        status += f" (unmodified error: `{unshimmed.error}`)"
    t_losses = recorded(record_t)
    return {"status": status, "diff_rng": max_diff(torch_eager.losses, jit_eager.losses),
            "diff_same": compared(same_t, same_t.losses, same_j, same_j.losses if same_j else []),
            "draws_eager": compared(draws_t, t_losses, draws_j, recorded(record_j)),
            "draws_comp": compared(draws_t, t_losses, draws_jc, recorded(record_jc)),
            "jit_eager": ms(jit_eager), "jit_comp": ms(jit_comp), "torch_eager": ms(torch_eager),
            "torch_comp": ms(torch_comp)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clients_dir", type=Path, help="folder holding one folder per client")
    parser.add_argument("--only", nargs="*", help="names of the clients to run (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    root = args.clients_dir.resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp) / "client_wrapper.py"
        wrapper.write_text(f"SHIMS = {SHIMS!r}\n{WRAPPER}")
        for client in CLIENTS:
            if args.only and client.name not in args.only:
                continue
            print(f"{client.name} ...", flush=True)
            rows.append((client, check(client, root, wrapper, Path(tmp))))
    write(rows, args.out, root)


def write(rows: list[tuple[Client, dict[str, str]]], out: Path, root: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Public PyTorch scripts through jitorch.as_torch", "",
        f"Date: {now}. Machine: {platform.machine()} {platform.processor() or ''}, CPU, {os.cpu_count()} cores. "
        f"Python {platform.python_version()}, torch {version('torch')}, jitorch {version('jitorch')}. "
        f"Load average when written: {os.getloadavg()[0]:.2f} (other work on a shared machine makes times noisy).",
        "",
        f"Command: `python bench/clients.py {root}` (client code fetched separately, not committed; "
        "see this file's generator, bench/clients.py).", "",
        "Loss difference *default init*: each library's own random initialization (different RNG streams), so "
        "it measures nothing but that. *Same init*: the jitorch run starts from PyTorch's initial parameters "
        "(dropout masks and DataLoader shuffles still differ). These two compare the losses the script prints, "
        "so at the digits it prints. *Float64, same draws*: both libraries run in float64 (default dtype, "
        "floating data in a TensorDataset cast, and float32 asked for by name in factories, .to and .float() "
        "made float64), from the same initial parameters (every optimizer's, or a model's "
        "at its first call where no optimizer has them), with every random draw (torch.rand/randn/randint/"
        "randperm and their _like forms, Tensor.uniform_/normal_/random_/bernoulli_, torch.bernoulli/multinomial, "
        "dropout masks of F.dropout/dropout1d/2d, nn.Dropout*, attention dropout and recurrent layers' "
        "inter-layer dropout, DataLoader shuffling) taken from the same numpy stand-ins in both; the losses are "
        "recorded at full precision as the value of each tensor backward() starts from (and of each scalar a "
        "compiled training step returns). Compiled: jitorch with the script's compile flag, against PyTorch "
        "eager; a stand-in called inside a jitorch-compiled function runs only while tracing, so its draw is "
        "replayed unchanged (these clients' compiled parts draw nothing: their dropout is 0). The goal is at most "
        "1e-10 everywhere. Step times: median ms between consecutive logged "
        f"losses after the first {WARMUP}, one logged loss per step (LBFGS: per closure call).", "",
        "| client | source | arguments | status | max loss diff, default init | max loss diff, same init "
        "| max loss diff, float64 same draws, eager | max loss diff, float64 same draws, jitorch compiled "
        "| jitorch eager ms | jitorch compiled ms | PyTorch eager ms | torch.compile ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for client, r in rows:
        args = " ".join(client.args)
        if r["status"] == "not present":
            lines.append(f"| {client.name} | {client.source} | `{args}` | not present | | | | | | | | |")
            continue
        cells = [r[key] for key in ("status", "diff_rng", "diff_same", "draws_eager", "draws_comp", "jit_eager",
                                     "jit_comp", "torch_eager", "torch_comp")]
        row = " | ".join(cell.replace("|", "/") for cell in cells)  # a "|" in an error message would split the cell
        lines.append(f"| {client.name} | {client.source} | `{args}` | {row} |")
    # a hand-written notes section after the table is kept
    notes = out.read_text().partition(NOTES)[2] if out.is_file() else ""
    if notes:
        lines += ["", NOTES + notes.rstrip("\n")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
