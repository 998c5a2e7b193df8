"""Classify scikit-learn's bundled 8x8 handwritten digits with an MLP and a small CNN.

    python examples/digits.py               # 57 s measured on a 2-core AMD EPYC shared with other work
    python examples/digits.py --steps 20    # a smoke run (also: JITORCH_EXAMPLE_STEPS=20)
    python examples/digits.py --eager       # training steps op by op, for debugging (slower)
    python examples/digits.py --device cuda # on the GPU (the default where jitorch.cuda.is_available())

Each training step runs as one `jitorch.compile`d program (fused CPU kernels); `--eager` runs the
same steps op by op. The data stays on the host; the models live on `--device` and each batch is
copied there.

It trains both models on 80% of the 1,797 images, reports held-out accuracy, then saves the CNN and
its optimizer with `jitorch.save`, reloads them into fresh objects and checks that the reloaded model
predicts exactly what the original does, before and after one more (resumed) training step.

The model builders and the training step take the framework as an argument (`lib`, jitorch by
default): `bench/train.py` runs the very same code with `lib=torch` to compare speed.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from example_utils import add_budget_args, add_device_arg, model_device, progress, say

import jitorch
import jitorch.nn
import jitorch.optim
import jitorch.utils.data
from jitorch.backends.cpu.memory import tune_malloc

BATCH_SIZE = 64
EPOCHS = 30
LEARNING_RATE = 2e-3
HELD_OUT_FRACTION = 0.2


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images as float32 (N, 1, 8, 8) scaled to [0, 1], and their int64 labels."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing to download

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    return images, digits.target.astype(np.int64)


def make_datasets(lib=jitorch, seed: int = 0):
    """Split the digits into (train, held-out) datasets with `random_split` and a seeded generator."""
    images, labels = load_digits_arrays()
    data = lib.utils.data
    full = data.TensorDataset(lib.from_numpy(images), lib.from_numpy(labels))
    n_test = round(len(full) * HELD_OUT_FRACTION)
    return data.random_split(full, [len(full) - n_test, n_test], generator=lib.Generator().manual_seed(seed))


def build_mlp(lib=jitorch, device="cpu"):
    """A two-hidden-layer perceptron on the flattened 64 pixels, on `device`."""
    nn = lib.nn
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, 10),
    ).to(device)


def build_cnn(lib=jitorch, device="cpu"):
    """Two 3x3 convolutions (the second with stride 2: 8x8 -> 4x4) and a two-layer classifier head,
    on `device`."""
    nn = lib.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
        nn.Linear(128, 10),
    ).to(device)


def make_optimizer(model, lib=jitorch):
    """Adam; the same settings for both models."""
    return lib.optim.Adam(model.parameters(), lr=LEARNING_RATE)


def make_train_step(model, optimizer, lib=jitorch, compiled: bool = False, mode: str = "default"):
    """A function doing one optimizer step on one batch (copied to the model's device) and returning
    the batch loss; with `compiled=True` the step runs as one `lib.compile`d program, in `mode`."""
    device = model_device(model)

    def update(images, labels):
        optimizer.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    update = lib.compile(update, mode=mode) if compiled else update
    return lambda images, labels: update(images.to(device), labels.to(device)).item()


def train_step(model, optimizer, images, labels, lib=jitorch) -> float:
    """One eager optimizer step on one batch; returns the batch loss."""
    return make_train_step(model, optimizer, lib)(images, labels)


def make_loader(dataset, lib=jitorch, shuffle: bool = True, seed: int = 0):
    """Mini-batches of BATCH_SIZE, reshuffled every epoch by a seeded generator."""
    generator = lib.Generator().manual_seed(seed) if shuffle else None
    return lib.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=shuffle, generator=generator)


def predict_logits(model, dataset, lib=jitorch) -> np.ndarray:
    """The model's logits for every item of `dataset` (on the host), in eval mode and without autograd."""
    device = model_device(model)
    model.eval()
    outputs = []
    with lib.no_grad():
        for images, _ in lib.utils.data.DataLoader(dataset, batch_size=512):
            outputs.append(model(images.to(device)).to("cpu").numpy())
    model.train()
    return np.concatenate(outputs)


def accuracy(model, dataset, lib=jitorch) -> float:
    """The fraction of `dataset` that `model` classifies correctly."""
    labels = np.array([int(dataset[i][1]) for i in range(len(dataset))])
    return float((predict_logits(model, dataset, lib).argmax(axis=1) == labels).mean())


def fit(name: str, model, train_set, test_set, max_steps: int | None, seed: int, compiled: bool = True):
    """Train for EPOCHS epochs (or `max_steps` steps if fewer); returns (optimizer, report dict)."""
    optimizer = make_optimizer(model)
    step = make_train_step(model, optimizer, compiled=compiled)
    loader = make_loader(train_set, seed=seed)
    total = EPOCHS * len(loader) if max_steps is None else min(max_steps, EPOCHS * len(loader))
    bar = progress(range(total), total=total, desc=name)
    steps, losses = iter(bar), []
    start = time.perf_counter()
    for epoch in range(1, math.ceil(total / len(loader)) + 1):
        epoch_losses = []
        for (images, labels), _ in zip(loader, steps):  # zip stops at the step budget too
            epoch_losses.append(step(images, labels))
            bar.set_postfix_str(f"loss {epoch_losses[-1]:.3f}")
        losses.append(float(np.mean(epoch_losses)))
        if epoch % 5 == 0 or epoch == 1:
            say(f"{name} epoch {epoch:2d} | train loss {losses[-1]:.4f}")
    bar.close()
    seconds = time.perf_counter() - start
    report = {"steps": total, "seconds": seconds, "final_loss": losses[-1],
              "accuracy": accuracy(model, test_set)}
    say(f"{name}: {total} steps in {seconds:.1f} s | final train loss {report['final_loss']:.4f} "
        f"| held-out accuracy {report['accuracy']:.4f}")
    return optimizer, report


def check_checkpoint_round_trip(model, optimizer, train_set, test_set, path: str) -> None:
    """Save model + optimizer, reload into fresh objects on the model's device, assert identical
    predictions and resumption."""
    device = model_device(model)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    jitorch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    checkpoint = jitorch.load(path)  # load_state_dict copies each tensor to where the fresh objects keep it
    fresh_model = build_cnn(device=device)
    fresh_model.load_state_dict(checkpoint["model"])
    fresh_optimizer = make_optimizer(fresh_model)
    fresh_optimizer.load_state_dict(checkpoint["optimizer"])

    before = predict_logits(model, test_set)
    reloaded = predict_logits(fresh_model, test_set)
    assert np.array_equal(before, reloaded), "the reloaded model predicts differently"

    # One more step on the same batch with both copies: equal only if the Adam moments came back too.
    images, labels = next(iter(make_loader(train_set, shuffle=False)))
    train_step(model, optimizer, images, labels)
    train_step(fresh_model, fresh_optimizer, images, labels)
    after = predict_logits(model, test_set)
    assert np.array_equal(after, predict_logits(fresh_model, test_set)), "resumed training diverged"
    assert not np.array_equal(before, after), "the resumed step did not change the model"


def export_for_serving(model, dataset, path: str) -> None:
    """Export `model` (eval mode, a dynamic batch) to `path` and check the saved program against it."""
    images = jitorch.stack([dataset[i][0] for i in range(4)]).to(model_device(model))
    program = jitorch.export.export(model, (images,), dynamic_shapes=({0: jitorch.export.Dim("batch")},))
    jitorch.export.save(program, path)
    loaded = jitorch.export.load(path, device=images.device)
    model.eval()
    with jitorch.no_grad():
        assert np.allclose(loaded(images).cpu().numpy(), model(images).cpu().numpy(), rtol=1e-4, atol=1e-5)
    say(f"exported the CNN to {path} (inputs {', '.join(map(str, loaded.input_specs))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_args(parser, None, f"training steps per model (default: {EPOCHS} epochs)")
    parser.add_argument("--eager", action="store_true",
                        help="run each training step op by op instead of as one jitorch.compile'd program "
                             "(for debugging; slower)")
    parser.add_argument("--checkpoint", default=os.path.join("runs", "digits_cnn.ckpt"),
                        help="where to write the CNN checkpoint")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="also export the trained CNN for serving (jitorch.export, any batch size) to DIR; "
                             "serve it with: python -m jitorch.serve DIR")
    add_device_arg(parser, jitorch)
    args = parser.parse_args()
    if args.eager:  # op by op, every op allocates a fresh buffer: keep freed ones in this process
        tune_malloc()

    start = time.perf_counter()
    jitorch.manual_seed(args.seed)
    train_set, test_set = make_datasets(seed=args.seed)
    say(f"digits: {len(train_set)} training images, {len(test_set)} held out")
    say(f"device: {args.device}")
    compiled = not args.eager
    _, mlp_report = fit("mlp", build_mlp(device=args.device), train_set, test_set, args.steps, args.seed, compiled)
    cnn = build_cnn(device=args.device)
    cnn_optimizer, cnn_report = fit("cnn", cnn, train_set, test_set, args.steps, args.seed, compiled)
    check_checkpoint_round_trip(cnn, cnn_optimizer, train_set, test_set, args.checkpoint)
    if args.export:
        export_for_serving(cnn, test_set, args.export)

    say("== digits report ==")
    for name, report in (("mlp", mlp_report), ("cnn", cnn_report)):
        say(f"{name}: held-out accuracy {report['accuracy']:.4f} | final train loss "
            f"{report['final_loss']:.4f} | {report['steps']} steps ({'compiled' if compiled else 'eager'}), "
            f"{report['seconds']:.1f} s")
    say(f"checkpoint round trip: ok ({args.checkpoint}, {os.path.getsize(args.checkpoint) / 1024:.0f} KiB)")
    say(f"total time: {time.perf_counter() - start:.1f} s")
    assert all(math.isfinite(r["final_loss"]) for r in (mlp_report, cnn_report))


if __name__ == "__main__":
    main()
