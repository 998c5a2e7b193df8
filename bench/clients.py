"""Public PyTorch training scripts ("clients") run with PyTorch and through `python -m jitorch.as_torch`.

    python bench/clients.py /tmp/clients            # writes bench/results/clients.md

The client code is NOT in this repository: it is public code (pytorch/examples, karpathy/minGPT, ...) fetched
separately into one folder per client under the given directory, with only its data-reading lines replaced by
small synthetic data of a fixed seed (each such line is marked `# CHANGED` in the copy). CLIENTS below says,
for each client, its folder, entry script, arguments and how its loss lines look; a client whose folder is
missing is reported as "not present".

For each present client the runner
  1. runs the script unmodified with PyTorch and with jitorch (eager), recording whether it ran and, if not,
     the last line of its error;
  2. runs both again with the same initial weights: a small wrapper (written to a temporary folder) wraps
     `torch.optim.Optimizer.__init__`, saves the parameters the first optimizer receives under PyTorch and
     copies them, in the same order, into the jitorch run; the loss curves of these two runs are compared.
     Dropout masks, DataLoader shuffling and other random draws still differ between the libraries (their RNG
     streams differ), so only clients without those give curves that should agree to rounding;
  3. where the client has a compile flag, runs it compiled under both (torch.compile and jitorch's compile).
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

# argv: mode (plain | dump | load), weights file, comma-separated shims, script, script args
WRAPPER = '''\
import os, runpy, sys
import numpy as np
import torch
mode, path, shims, script, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
SHIMS = {shims!r}
for name in filter(None, shims.split(",")):
    exec(SHIMS[name])
original_init = torch.optim.Optimizer.__init__
done = []
def hooked_init(self, params, *a, **k):
    params = list(params)
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    if not done and mode != "plain":
        done.append(True)
        if mode == "dump":
            np.savez(path, *[p.detach().cpu().numpy() for p in flat])
        else:
            saved = np.load(path)
            with torch.no_grad():
                for i, p in enumerate(flat):
                    p.copy_(torch.from_numpy(saved["arr_%d" % i]).to(p.dtype))
    original_init(self, params, *a, **k)
torch.optim.Optimizer.__init__ = hooked_init
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
    error = "" if proc.returncode == 0 else (lines[-1] if lines else f"exit status {proc.returncode}")
    return Run(proc.returncode == 0, losses, statistics.median(gaps) if gaps else None, error)


def version(module: str) -> str:
    out = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__version__)"],
                         capture_output=True, text=True, cwd="/")
    return out.stdout.strip() or "?"


def ms(run_: Run | None) -> str:
    if run_ is None:
        return "n/a"
    if not run_.ok:
        return "failed"
    return f"{run_.step_s * 1e3:.2f}" if run_.step_s is not None else "?"


def max_diff(a: list[float], b: list[float]) -> str:
    n = min(len(a), len(b))
    if n == 0:
        return "n/a"
    diff = max(abs(x - y) for x, y in zip(a[:n], b[:n]))
    rel = max(abs(x - y) / max(abs(x), 1e-30) for x, y in zip(a[:n], b[:n]))
    return f"{diff:.3g} abs / {rel:.3g} rel over {n} losses"


def check(client: Client, root: Path, wrapper: Path, weights: Path) -> dict[str, str]:
    folder = root / (client.folder or client.name)
    if not (folder / client.script).is_file():
        return {"status": "not present"}
    py, jit = [sys.executable], [sys.executable, "-m", "jitorch.as_torch"]

    def wrapped(prefix: list[str], mode: str, shims: tuple[str, ...], extra: tuple[str, ...] = ()) -> list[str]:
        return [*prefix, str(wrapper), mode, str(weights), ",".join(shims), client.script, *client.args, *extra]

    torch_eager = run([*py, client.script, *client.args], folder, client.loss)
    jit_eager = run([*jit, client.script, *client.args], folder, client.loss)
    shims: tuple[str, ...] = ()
    if not jit_eager.ok and client.shims:
        shims = client.shims
        jit_eager = run(wrapped(jit, "plain", shims), folder, client.loss)
    same_t = run(wrapped(py, "dump", ()), folder, client.loss)
    same_j = run(wrapped(jit, "load", shims), folder, client.loss) if same_t.ok else None
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
    else:
        status = f"PyTorch failed: `{torch_eager.error}`"
    if shims:
        unshimmed = run([*jit, client.script, *client.args], folder, client.loss)
        status += f" (unmodified error: `{unshimmed.error}`)"
    same = max_diff(same_t.losses, same_j.losses) if same_j is not None and same_j.ok else "n/a"
    return {"status": status, "diff_rng": max_diff(torch_eager.losses, jit_eager.losses), "diff_same": same,
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
        wrapper, weights = Path(tmp) / "same_init.py", Path(tmp) / "weights.npz"
        wrapper.write_text(WRAPPER.format(shims=SHIMS))
        for client in CLIENTS:
            if args.only and client.name not in args.only:
                continue
            print(f"{client.name} ...", flush=True)
            rows.append((client, check(client, root, wrapper, weights)))
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
        "(dropout masks and DataLoader shuffles still differ). Step times: median ms between consecutive logged "
        f"losses after the first {WARMUP}, one logged loss per step (LBFGS: per closure call).", "",
        "| client | source | arguments | status | max loss diff, default init | max loss diff, same init "
        "| jitorch eager ms | jitorch compiled ms | PyTorch eager ms | torch.compile ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for client, r in rows:
        args = " ".join(client.args)
        if r["status"] == "not present":
            lines.append(f"| {client.name} | {client.source} | `{args}` | not present | | | | | | |")
            continue
        lines.append(f"| {client.name} | {client.source} | `{args}` | {r['status']} | {r['diff_rng']} "
                     f"| {r['diff_same']} | {r['jit_eager']} | {r['jit_comp']} | {r['torch_eager']} "
                     f"| {r['torch_comp']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
