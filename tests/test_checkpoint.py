"""Activation checkpointing (`jitorch.utils.checkpoint`): gradients equal to the plain run's and to
PyTorch's checkpoint, the region's intermediate values freed after the forward, dropout's mask
drawn again alike, checkpoint_sequential, and a compiled step that checkpoints equal to its eager run."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
import torch.utils.checkpoint

import jitorch as jt
from jitorch.utils.checkpoint import checkpoint, checkpoint_sequential


def block(lib, p: float = 0.0):
    """Linear-GELU-Dropout-Linear with jitorch's initial weights for seed 0, in `lib`."""
    jt.manual_seed(0)
    ours = jt.nn.Sequential(jt.nn.Linear(6, 16), jt.nn.GELU(), jt.nn.Dropout(p), jt.nn.Linear(16, 6))
    if lib is jt:
        return ours
    theirs = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Dropout(p), torch.nn.Linear(16, 6))
    with torch.no_grad():
        for t, o in zip(theirs.parameters(), ours.parameters()):
            t.copy_(torch.from_numpy(o.detach().numpy()))
    return theirs


def run(lib, use_checkpoint: bool, p: float = 0.0, seed: int = 1):
    """Two residual blocks on a batch, each checkpointed or not; the loss and every gradient."""
    first, second = block(lib, p), block(lib, p)
    x = lib.tensor(np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32), requires_grad=True)
    lib.manual_seed(seed)
    h = x
    for b in (first, second):
        if use_checkpoint:
            ckpt = checkpoint if lib is jt else torch.utils.checkpoint.checkpoint
            h = h + ckpt(b, h, use_reentrant=False)
        else:
            h = h + b(h)
    loss = h.square().mean()
    loss.backward()
    grads = [x.grad] + [q.grad for b in (first, second) for q in b.parameters()]
    return loss.item(), [g.detach().numpy().copy() for g in grads]


def test_gradients_equal_the_plain_run_and_pytorchs_checkpoint():
    loss, grads = run(jt, True)
    plain_loss, plain = run(jt, False)
    torch_loss, theirs = run(torch, True)
    assert loss == plain_loss
    for g, q, t in zip(grads, plain, theirs):
        np.testing.assert_array_equal(g, q)  # (the same ops on the same values)
        np.testing.assert_allclose(g, t, rtol=1e-5, atol=1e-6 * np.abs(t).max())
    assert loss == pytest.approx(torch_loss, rel=1e-6)


def test_a_dropout_inside_draws_the_same_mask_when_recomputed():
    loss, grads = run(jt, True, p=0.5)
    plain_loss, plain = run(jt, False, p=0.5)
    assert loss == plain_loss
    for g, q in zip(grads, plain):
        np.testing.assert_array_equal(g, q)


def test_the_regions_intermediate_values_are_freed_after_the_forward():
    """What the region makes inside is held by nothing once it returns (without checkpointing the
    autograd graph keeps it for the backward)."""
    w = jt.randn(8, 8, requires_grad=True)
    inner = []

    def f(x):
        h = (x @ w).tanh()
        inner.append(weakref.ref(h))
        return (h @ w).sin()

    x = jt.randn(4, 8)
    kept = f(x)
    gc.collect()
    assert inner[0]() is not None  # the plain graph holds it
    out = checkpoint(f, x, use_reentrant=False)
    gc.collect()
    assert inner[1]() is None  # checkpointed: gone
    out.sum().backward()
    expected = jt.autograd.grad(kept.sum(), [w])[0]
    np.testing.assert_allclose(w.grad.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


def test_several_outputs_and_inputs_that_need_no_grad():
    w = jt.randn(3, 3, requires_grad=True)
    x = jt.randn(2, 3)  # (no grad: PyTorch's non-reentrant checkpoint takes it too)

    def f(x):
        h = x @ w
        return h.exp(), h.cos()

    a, b = checkpoint(f, x, use_reentrant=False)
    (a.sum() + 2 * b.sum()).backward()
    got = w.grad.numpy().copy()
    w.grad = None
    a, b = f(x)
    (a.sum() + 2 * b.sum()).backward()
    np.testing.assert_allclose(got, w.grad.numpy(), rtol=1e-6)
    with jt.no_grad():
        assert checkpoint(f, x)[0].grad_fn is None


def test_an_input_changed_in_place_after_the_forward_is_an_error():
    w = jt.randn(3, 3, requires_grad=True)
    h = w * 1.0
    out = checkpoint(lambda h: (h @ h).sum(), h, use_reentrant=False)
    with jt.no_grad():
        h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_checkpoint_sequential_equals_the_plain_model():
    jt.manual_seed(0)
    model = jt.nn.Sequential(*[jt.nn.Linear(6, 6) if i % 2 == 0 else jt.nn.Tanh() for i in range(8)])
    x = jt.randn(4, 6, requires_grad=True)
    checkpoint_sequential(model, 3, x, use_reentrant=False).sum().backward()
    got = [p.grad.numpy().copy() for p in model.parameters()] + [x.grad.numpy().copy()]
    model.zero_grad()
    x.grad = None
    model(x).sum().backward()
    for g, p in zip(got, [p.grad.numpy() for p in model.parameters()] + [x.grad.numpy()]):
        np.testing.assert_allclose(g, p, rtol=1e-6, atol=1e-7)


def sgd_step(blocks: list, use_checkpoint: bool):
    """An SGD step on the mean square of residual `blocks` applied in turn, each checkpointed or not."""
    opt = jt.optim.SGD([p for b in blocks for p in b.parameters()], lr=0.1)

    def step(x):
        opt.zero_grad()
        h = x
        for b in blocks:
            h = h + (checkpoint(b, h, use_reentrant=False) if use_checkpoint else b(h))
        loss = h.square().mean()
        loss.backward()
        opt.step()
        return loss

    return step


def test_a_compiled_training_step_that_checkpoints_equals_its_eager_run():
    x = jt.tensor(np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32))
    eager_blocks, blocks = [block(jt), block(jt)], [block(jt), block(jt)]
    eager, compiled = sgd_step(eager_blocks, True), jt.compile(sgd_step(blocks, True))
    for _ in range(3):
        np.testing.assert_allclose(compiled(x).item(), eager(x).item(), rtol=1e-5)
    for b, e in zip(blocks, eager_blocks):
        for p, q in zip(b.parameters(), e.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_compiled_the_recompute_is_a_region_of_its_own_and_dropout_draws_alike():
    """Traced, the recompute's nodes carry a region number, so no pass merges them with the forward's
    (the program computes the block's ops twice: forward, and again in the backward); a dropout in
    the region draws the same mask again, so the compiled step equals the eager, plain one."""
    x = jt.tensor(np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32))
    eager_model, model = block(jt, p=0.5), block(jt, p=0.5)
    eager, compiled = sgd_step([eager_model], False), jt.compile(sgd_step([model], True))
    for seed in range(3):
        jt.manual_seed(10 + seed)
        expected = eager(x).item()
        jt.manual_seed(10 + seed)
        assert compiled(x).item() == pytest.approx(expected, rel=1e-5)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
    (program,) = [p for entries in compiled.cache.values() for p in entries]
    ops = [(n.op, n.region is not None) for n in program.graph.nodes]
    assert ops.count(("random", False)) == 1 and ops.count(("random", True)) == 1
    assert ops.count(("erf", True)) == ops.count(("erf", False)) >= 1  # GELU's, in both
