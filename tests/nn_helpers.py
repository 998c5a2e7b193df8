"""Shared helpers (no tests) for the jitorch.nn tests: run the same computation in jitorch and in
PyTorch (the test oracle) on the same data, and compare outputs and gradients."""

from __future__ import annotations

import numpy as np
import torch

import jitorch as jt

RTOL, ATOL = 1e-4, 1e-5


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x.detach().numpy())


def pair(array: np.ndarray, requires_grad: bool | None = None):
    """(jitorch tensor, torch tensor) holding copies of `array`; float ones require grad by default."""
    if requires_grad is None:
        requires_grad = array.dtype.kind == "f"
    j = jt.tensor(array.copy(), requires_grad=requires_grad)
    t = torch.tensor(array.copy(), requires_grad=requires_grad)
    return j, t


def assert_close(j, t, rtol: float = RTOL, atol: float = ATOL, what: str = "output") -> None:
    a, b = to_numpy(j), to_numpy(t)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != torch {b.shape}"
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)


class nograd:  # noqa: N801 - reads like a function at the call site
    """Marks an input array of `check` that must not require grad (a class weight, a mask)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def _inputs(a):
    if isinstance(a, nograd):
        return pair(a.array, requires_grad=False)
    if isinstance(a, np.ndarray):
        return pair(a)
    return a, a


def check(
    jt_fn,
    torch_fn,
    *arrays,
    rtol: float = RTOL,
    atol: float = ATOL,
    grad_rtol: float | None = None,
    grad_atol: float | None = None,
    seed: int = 0,
):
    """Compare jt_fn(*jt_inputs) with torch_fn(*torch_inputs), forward and backward.

    Float arrays become inputs that require grad (unless wrapped in `nograd`); the backward pass
    uses the same random upstream
    gradient on both sides and compares every input's gradient. Returns (jt_out, torch_out).
    """
    pairs = [_inputs(a) for a in arrays]
    jout = jt_fn(*[p[0] for p in pairs])
    tout = torch_fn(*[p[1] for p in pairs])
    assert_close(jout, tout, rtol, atol)
    backward_both(jout, tout, seed)
    for i, (j, t) in enumerate(pairs):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            assert j.grad is not None, f"input {i}: jitorch gave no gradient"
            assert_close(j.grad, t.grad, grad_rtol or rtol * 10, grad_atol or atol * 10, f"grad of input {i}")
    return jout, tout


def backward_both(jout, tout, seed: int = 0) -> None:
    """Backpropagate the same random upstream gradient through a jitorch and a torch output."""
    if not tout.requires_grad:
        return
    g = np.random.default_rng(seed).standard_normal(tuple(tout.shape)).astype(np.float32)
    (jout * jt.tensor(g)).sum().backward()
    (tout * torch.tensor(g)).sum().backward()


def copy_module(jt_module, torch_module) -> None:
    """Load torch_module's parameters and buffers into jt_module (through numpy)."""
    jt_module.load_state_dict({k: v.detach().numpy().copy() for k, v in torch_module.state_dict().items()})


def assert_param_grads_close(jt_module, torch_module, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    tparams = dict(torch_module.named_parameters())
    jparams = dict(jt_module.named_parameters())
    assert set(tparams) == set(jparams), f"parameter names differ: {sorted(jparams)} vs {sorted(tparams)}"
    for name, tp in tparams.items():
        jp = jparams[name]
        if tp.grad is None:
            assert jp.grad is None or not np.any(jp.grad.numpy()), f"{name}: torch has no grad"
            continue
        assert jp.grad is not None, f"{name}: jitorch has no grad"
        assert_close(jp.grad, tp.grad, rtol, atol, f"grad of {name}")


def training_step(model, optimizer, lib=jt):
    """`step(x, y)`: one cross-entropy training step of `model` (zero grads, forward, backward,
    `optimizer.step()`), returning the loss; in `lib` (jitorch, to compile or run eagerly, or torch)."""

    def step(x, y):
        optimizer.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def compiled_matches_eager(fn, rng: np.random.Generator) -> None:
    """`fn` of a 120-element float32 tensor, eagerly and under jitorch.compile: the same values and
    the same gradient of a weighted sum of its output."""
    x_np = rng.standard_normal(120).astype(np.float32)
    results = []
    for run in (fn, jt.compile(fn)):
        x = jt.tensor(x_np, requires_grad=True)
        out = run(x)
        (out * jt.tensor(np.linspace(-1, 1, out.numel(), dtype=np.float32).reshape(out.shape))).sum().backward()
        results.append((out.detach().numpy(), x.grad.numpy()))
    for eager, compiled in zip(*results):
        np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


def raises_like_torch(call, functional, torch_functional, x: np.ndarray) -> None:
    """`call(functional, x)` raises what `call(torch_functional, x)` raises: the same type, the
    message's first words."""
    import pytest

    with pytest.raises(Exception) as expected:
        call(torch_functional, torch.tensor(x))
    with pytest.raises(type(expected.value)) as got:
        call(functional, jt.tensor(x))
    first_words = str(expected.value).split("(")[0][:40]
    assert str(got.value).startswith(first_words), (str(got.value), str(expected.value))


TOL64 = {"rtol": 1e-10, "atol": 1e-10}  # float64 values and gradients, against PyTorch's


def check64(jt_fn, torch_fn, *arrays):
    """`check` at float64's tolerances."""
    return check(jt_fn, torch_fn, *arrays, grad_rtol=1e-10, grad_atol=1e-10, **TOL64)
