"""Train a small causal transformer on Python's own documentation, one character at a time.

    python examples/char_lm.py              # 51 s measured on a 2-core AMD EPYC shared with other work
    python examples/char_lm.py --steps 20   # a smoke run (also: JITORCH_EXAMPLE_STEPS=20)
    python examples/char_lm.py --eager      # each training step op by op, for debugging (slower)
    python examples/char_lm.py --device cuda  # on the GPU (the default where jitorch.cuda.is_available())

Each training step (forward, backward, AdamW update) runs as one `jitorch.compile`d program with
fused CPU kernels; evaluation and sampling run eagerly. The model, its causal mask and every batch
live on `--device`. `--eager` trains the same model op by op, to the same losses: the mode to step
through with pdb or print from.

The text is `pydoc_data.topics` from the standard library (about 465K characters of English about
Python), so nothing is downloaded. The last 10% is held out. The script prints the train and
held-out loss as they fall, samples some text from the trained model, and draws the loss curve to a
PNG when matplotlib is installed.

`build_model` and `train_step` take the framework as an argument (`lib`, jitorch by default):
`bench/train.py` runs the very same code with `lib=torch` to compare speed.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import numpy as np
from example_utils import add_budget_args, add_device_arg, model_device, progress, say

import jitorch
import jitorch.nn
import jitorch.optim
from jitorch.backends.cpu.memory import tune_malloc

DEFAULT_STEPS = 400
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class Config:
    """The model's and the run's sizes."""

    vocab_size: int = 103
    block_size: int = 64  # characters of context
    d_model: int = 128
    n_head: int = 4
    n_layer: int = 2
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    eval_every: int = 50
    eval_batches: int = 4


# ---------------------------------------------------------------------------------------------
# data


class CharCorpus:
    """The text as int64 character codes, split into a training and a held-out part."""

    def __init__(self) -> None:
        from pydoc_data.topics import topics  # ships with CPython: nothing to download

        text = "".join(topics[key] for key in sorted(topics))
        self.chars = sorted(set(text))
        self._index = {c: i for i, c in enumerate(self.chars)}
        codes = self.encode(text)
        split = int(len(codes) * (1 - HELD_OUT_FRACTION))
        self.splits = {"train": codes[:split], "val": codes[split:]}

    def encode(self, text: str) -> np.ndarray:
        """Characters to codes (characters outside the vocabulary are an error)."""
        return np.array([self._index[c] for c in text], dtype=np.int64)

    def decode(self, codes) -> str:
        return "".join(self.chars[int(i)] for i in codes)

    def batch(self, split: str, batch_size: int, block_size: int, rng: np.random.Generator):
        """`batch_size` random windows as numpy (inputs, targets), targets shifted by one character."""
        data = self.splits[split]
        starts = rng.integers(0, len(data) - block_size - 1, size=batch_size)
        windows = data[starts[:, None] + np.arange(block_size + 1)]
        return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------------------------------------
# model


def causal_mask(size: int, lib=jitorch):
    """An additive attention mask: 0 where a position may look (itself and earlier), -inf after."""
    return lib.triu(lib.full((size, size), float("-inf")), diagonal=1)


def build_model(config: Config, lib=jitorch, device="cpu"):
    """A GPT-style character model on `device`: token + position embeddings, pre-norm encoder layers
    with a causal mask, a final LayerNorm and a linear head to next-character logits."""
    nn = lib.nn

    class CharTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
            self.position_embedding = nn.Embedding(config.block_size, config.d_model)
            # ReLU (PyTorch's default) rather than GELU, whose erf composite costs extra full-size passes.
            self.layers = nn.ModuleList([
                nn.TransformerEncoderLayer(config.d_model, config.n_head, dim_feedforward=4 * config.d_model,
                                           dropout=0.0, activation="relu", batch_first=True, norm_first=True)
                for _ in range(config.n_layer)
            ])
            self.norm = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, config.vocab_size)
            # a buffer, so it moves with the model; not persistent: a constant, not state to save
            self.register_buffer("mask", causal_mask(config.block_size, lib), persistent=False)

        def forward(self, codes):
            length = codes.shape[1]
            positions = lib.arange(length, device=codes.device)
            x = self.token_embedding(codes) + self.position_embedding(positions)
            mask = self.mask[:length, :length]
            for layer in self.layers:
                x = layer(x, src_mask=mask, is_causal=True)
            return self.head(self.norm(x))

    return CharTransformer().to(device)


def make_optimizer(model, config: Config, total_steps: int, lib=jitorch):
    """AdamW with a linear warm-up and a cosine decay to a tenth of the peak learning rate."""
    optimizer = lib.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.99),
                                weight_decay=0.01)
    warmup = min(config.warmup_steps, max(1, total_steps // 10))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))

    return optimizer, lib.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def lm_loss(model, inputs, targets, lib=jitorch):
    """Mean cross-entropy of the next-character predictions over every position of the batch."""
    logits = model(inputs)
    return lib.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def make_train_step(model, optimizer, scheduler, lib=jitorch, compiled: bool = False, mode: str = "default",
                    amp: str | None = None):
    """A function doing one optimizer step on numpy (inputs, targets), copied to the model's device,
    and returning the batch loss. With `compiled=True`, the forward pass, backward pass and AdamW
    update run as one `lib.compile`d program (in `mode`); the scheduler's new learning rate reaches
    it as data. `amp` ("bf16" or "fp16") runs the forward pass under `lib.autocast` in that dtype
    (the parameters stay float32); "fp16" also scales the loss with a `lib.amp.GradScaler`."""
    device = model_device(model)
    device_type = str(device).split(":")[0]
    dtype = getattr(lib, AMP_DTYPES[amp]) if amp else None
    scaler = lib.amp.GradScaler(device_type) if amp == "fp16" else None

    def update(inputs, targets):
        optimizer.zero_grad()
        if dtype is None:
            loss = lm_loss(model, inputs, targets, lib)
        else:
            with lib.autocast(device_type, dtype=dtype):
                loss = lm_loss(model, inputs, targets, lib)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss

    update = lib.compile(update, mode=mode) if compiled else update

    def step(inputs, targets) -> float:
        loss = update(lib.from_numpy(inputs).to(device), lib.from_numpy(targets).to(device))
        scheduler.step()
        return loss.item()

    return step


def train_step(model, optimizer, scheduler, inputs, targets, lib=jitorch) -> float:
    """One eager optimizer step on numpy (inputs, targets); returns the batch loss."""
    return make_train_step(model, optimizer, scheduler, lib)(inputs, targets)


# ---------------------------------------------------------------------------------------------
# evaluation and sampling


def fixed_batches(corpus: CharCorpus, config: Config, seed: int) -> dict[str, list]:
    """The same few batches of each split at every evaluation, so the curves are comparable."""
    rng = np.random.default_rng(seed + 1)
    return {split: [corpus.batch(split, config.batch_size, config.block_size, rng)
                    for _ in range(config.eval_batches)] for split in ("train", "val")}


def evaluate(model, batches: dict[str, list]) -> dict[str, float]:
    """Mean loss on each split's fixed batches, in eval mode and without autograd."""
    device = model_device(model)
    model.eval()
    with jitorch.no_grad():
        losses = {split: float(np.mean([lm_loss(model, jitorch.from_numpy(x).to(device),
                                                jitorch.from_numpy(y).to(device)).item()
                                        for x, y in pairs])) for split, pairs in batches.items()}
    model.train()
    return losses


def sample(model, corpus: CharCorpus, prompt: str, length: int, temperature: float = 0.8) -> str:
    """Continue `prompt` by `length` characters, drawing each from softmax(logits / temperature)."""
    device = model_device(model)
    model.eval()
    codes = jitorch.from_numpy(corpus.encode(prompt)[None, :]).to(device)
    with jitorch.no_grad():
        for _ in range(length):
            logits = model(codes[:, -model.config.block_size:])[:, -1, :]
            probs = jitorch.softmax(logits / temperature, dim=-1)
            drawn = jitorch.multinomial(probs, num_samples=1).to(device)  # drawn on the host
            codes = jitorch.cat([codes, drawn], dim=1)
    model.train()
    return corpus.decode(codes[0].tolist())


def save_loss_plot(history: list[tuple[int, float, float]], path: str) -> bool:
    """Draw train and held-out loss against step; returns False (quietly) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps, train, val = zip(*history)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, train, label="train")
    ax.plot(steps, val, label="held-out")
    ax.set(xlabel="step", ylabel="cross-entropy (nats / character)", title="char_lm on pydoc_data.topics")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------


def train(config: Config, corpus: CharCorpus, steps: int, seed: int, compiled: bool = False,
          device: str = "cpu", amp: str | None = None):
    """Train on `device` for `steps` steps (under autocast in `amp`'s dtype, see `make_train_step`),
    evaluating every `config.eval_every`; returns (model, loss history). The initial weights are
    drawn on the host, so they are the same on every device."""
    jitorch.manual_seed(seed)
    model = build_model(config, device=device)
    optimizer, scheduler = make_optimizer(model, config, steps)
    rng = np.random.default_rng(seed)
    eval_set = fixed_batches(corpus, config, seed)
    train_step_ = make_train_step(model, optimizer, scheduler, compiled=compiled, amp=amp)
    history = []

    def record(step: int) -> None:
        losses = evaluate(model, eval_set)
        history.append((step, losses["train"], losses["val"]))
        say(f"step {step:4d} | train loss {losses['train']:.4f} | held-out loss {losses['val']:.4f} "
            f"| {time.perf_counter() - start:5.1f} s")

    start = time.perf_counter()
    record(0)
    bar = progress(range(1, steps + 1), total=steps, desc="char_lm")
    for step in bar:
        inputs, targets = corpus.batch("train", config.batch_size, config.block_size, rng)
        loss = train_step_(inputs, targets)
        bar.set_postfix_str(f"loss {loss:.3f}")
        if step % config.eval_every == 0 or step == steps:
            record(step)
    bar.close()
    return model, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(parser, DEFAULT_STEPS, "training steps")
    parser.add_argument("--plot", default=os.path.join("runs", "char_lm_loss.png"),
                        help="where to write the loss curve PNG")
    parser.add_argument("--sample-length", type=int, default=300, help="characters to generate at the end")
    parser.add_argument("--eager", action="store_true",
                        help="run each training step op by op instead of as one jitorch.compile'd program "
                             "(for debugging; slower)")
    add_device_arg(parser, jitorch)
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None,
                        help="mixed precision: the forward pass under jitorch.autocast in bfloat16 or float16 "
                             "(float16 with a GradScaler); parameters stay float32")
    args = parser.parse_args()
    if args.eager:  # op by op, every op allocates a fresh buffer: keep freed ones in this process
        tune_malloc()

    start = time.perf_counter()
    corpus = CharCorpus()
    config = Config(vocab_size=len(corpus.chars))
    say(f"corpus: {len(corpus.splits['train']):,} training and {len(corpus.splits['val']):,} held-out "
        f"characters, vocabulary {config.vocab_size}")
    say(f"device: {args.device}" + (f" | mixed precision: {AMP_DTYPES[args.amp]}" if args.amp else ""))
    model, history = train(config, corpus, args.steps, args.seed, compiled=not args.eager, device=args.device,
                           amp=args.amp)
    n_params = sum(p.numel() for p in model.parameters())
    train_seconds = time.perf_counter() - start
    text = sample(model, corpus, prompt="The ", length=args.sample_length)
    plotted = save_loss_plot(history, args.plot) if len(history) > 1 else False

    _, first_train, first_val = history[0]
    _, final_train, final_val = history[-1]
    say("== char_lm report ==")
    say(f"model: {config.n_layer} layers, d_model {config.d_model}, {config.n_head} heads, "
        f"context {config.block_size}, {n_params:,} parameters")
    say(f"steps: {args.steps} ({'eager' if args.eager else 'compiled'}) | training time {train_seconds:.1f} s "
        f"({1000 * train_seconds / max(1, args.steps):.0f} ms/step)")
    say(f"initial loss: train {first_train:.4f} | held-out {first_val:.4f}")
    say(f"final loss: train {final_train:.4f} | held-out {final_val:.4f}")
    say(f"loss curve: {args.plot if plotted else 'skipped (matplotlib is not installed)'}")
    say(f"sample (temperature 0.8):\n{text}")
    say(f"total time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
