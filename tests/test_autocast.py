"""`jitorch.autocast`: PyTorch's op policy per device type, checked against `torch.autocast` on the
same inputs (output dtypes equal, values within the low precision's tolerance of each output's
scale, gradients too); regions nest, turn off, decorate; float64 and other devices are left alone;
backward runs outside autocast; compiled equals eager, and the autocast state is a guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt
import jitorch.nn.functional as F
from tests.nn_helpers import training_step

TORCH_DTYPE = {"bfloat16": torch.bfloat16, "float16": torch.float16}
EPS = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}


def rng_arrays(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


# (name, fn(lib, functional, *tensors), shapes): each runs under autocast in jitorch and in PyTorch
CASES = [
    ("matmul", lambda lib, F_, a, b: a @ b, [(8, 16), (16, 12)]),
    ("bmm", lambda lib, F_, a, b: lib.bmm(a, b), [(3, 8, 16), (3, 16, 4)]),
    ("linear", lambda lib, F_, x, w, b: F_.linear(x, w, b), [(8, 16), (12, 16), (12,)]),
    ("conv2d", lambda lib, F_, x, w: F_.conv2d(x, w, padding=1), [(2, 3, 8, 8), (4, 3, 3, 3)]),
    ("sdpa", lambda lib, F_, q, k, v: F_.scaled_dot_product_attention(q, k, v, is_causal=True),
     [(2, 2, 8, 16)] * 3),
    ("cross_entropy_of_a_product", lambda lib, F_, x, w: F_.cross_entropy(x @ w, lib.arange(8, device=x.device) % 5),
     [(8, 16), (16, 5)]),
    ("mse_loss", lambda lib, F_, a, b: F_.mse_loss(a @ b, a @ b * 0.5), [(8, 16), (16, 12)]),
    ("softmax_of_a_product", lambda lib, F_, a, b: F_.softmax(a @ b, -1), [(8, 16), (16, 12)]),
    ("layer_norm_of_a_product", lambda lib, F_, a, b: F_.layer_norm(a @ b, (12,)), [(8, 16), (16, 12)]),
    ("sum_exp_of_a_product", lambda lib, F_, a, b: ((a @ b * 0.1).exp().sum(), (a @ b).sum(-1)),
     [(8, 16), (16, 12)]),
    ("float32_elementwise", lambda lib, F_, a, b: (a * b + 1).tanh(), [(8, 16), (8, 16)]),
    ("mixed_add", lambda lib, F_, a, b, c: a @ b + c, [(8, 16), (16, 12), (12,)]),
    ("bce_with_logits", lambda lib, F_, a, b: F_.binary_cross_entropy_with_logits(a @ b, (a @ b).sigmoid()),
     [(8, 16), (16, 12)]),
]


def run_both(fn, shapes, device_type="cpu", dtype="bfloat16", backward=True):
    arrays = rng_arrays(*shapes)
    ours_in = [jt.tensor(a, requires_grad=backward) for a in arrays]
    theirs_in = [torch.tensor(a, requires_grad=backward) for a in arrays]
    with jt.autocast(device_type, dtype=getattr(jt, dtype)):
        ours = fn(jt, F, *ours_in)
    with torch.autocast(device_type, dtype=TORCH_DTYPE[dtype]):
        theirs = fn(torch, torch.nn.functional, *theirs_in)
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    if backward:  # (random weights: a softmax's or a norm's plain sum has a gradient of 0, blurred by rounding)
        weights = [np.random.default_rng(9).standard_normal(tuple(o.shape)).astype(np.float32) for o in ours]
        sum((o.float() * jt.tensor(w)).sum() for o, w in zip(ours, weights)).backward()
        sum((t.float() * torch.tensor(w)).sum() for t, w in zip(theirs, weights)).backward()
    return ours_in, theirs_in, ours, theirs


def assert_close_in(dtype_name: str, ours: np.ndarray, theirs: np.ndarray, what: str, ulps: float = 8) -> None:
    """Within `ulps` steps of the low precision, relative to each value and the output's scale."""
    eps = EPS[dtype_name]
    scale = np.abs(theirs).max() if theirs.size else 0.0
    np.testing.assert_allclose(ours, theirs, rtol=ulps * eps, atol=ulps * eps * scale, err_msg=what)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name, fn, shapes", CASES, ids=[c[0] for c in CASES])
def test_outputs_and_gradients_match_torch_autocast_on_the_cpu(name, fn, shapes, dtype):
    ours_in, theirs_in, ours, theirs = run_both(fn, shapes, dtype=dtype)
    for k, (o, t) in enumerate(zip(ours, theirs)):
        assert o.dtype.name == str(t.dtype).removeprefix("torch."), f"{name} output {k}: {o.dtype} vs {t.dtype}"
        assert_close_in(dtype, o.float().detach().numpy().astype(np.float64),
                        t.float().detach().numpy().astype(np.float64), f"{name} output {k}", ulps=16)
    for k, (a, b) in enumerate(zip(ours_in, theirs_in)):
        assert a.grad.dtype == jt.float32 and b.grad.dtype == torch.float32  # parameters keep their dtype
        assert_close_in(dtype, a.grad.numpy().astype(np.float64), b.grad.numpy().astype(np.float64),
                        f"{name} grad {k}", ulps=32)


def test_regions_nest_turn_off_and_decorate():
    assert not jt.is_autocast_enabled("cpu") and jt.get_autocast_dtype("cpu") == jt.bfloat16
    assert jt.get_autocast_dtype("cuda") == jt.float16
    a, b = jt.randn(4, 4), jt.randn(4, 4)
    with jt.autocast("cpu"):
        assert jt.is_autocast_enabled("cpu") and not jt.is_autocast_enabled("cuda")
        assert (a @ b).dtype == jt.bfloat16
        with jt.autocast("cpu", dtype=jt.float16):
            assert (a @ b).dtype == jt.float16 and jt.get_autocast_dtype("cpu") == jt.float16
            with jt.autocast("cpu", enabled=False):
                assert (a @ b).dtype == jt.float32 and not jt.is_autocast_enabled("cpu")
            assert (a @ b).dtype == jt.float16
        assert (a @ b).dtype == jt.bfloat16
    assert (a @ b).dtype == jt.float32

    @jt.autocast("cpu")
    def product(x, y):
        return x @ y

    assert product(a, b).dtype == jt.bfloat16 and (a @ b).dtype == jt.float32
    with jt.amp.autocast("cpu"):  # (the same class)
        assert (a @ b).dtype == jt.bfloat16


def test_what_autocast_leaves_alone():
    a64, b64 = jt.randn(4, 4, dtype=jt.float64), jt.randn(4, 4, dtype=jt.float64)
    with jt.autocast("cpu"):
        assert (a64 @ b64).dtype == jt.float64  # float64 is never cast
        with jt.autocast("cuda"):  # another device type's region: CPU tensors keep the CPU's policy
            assert (jt.randn(2, 2) @ jt.randn(2, 2)).dtype == jt.bfloat16
    with jt.autocast("cuda"):
        assert (jt.randn(2, 2) @ jt.randn(2, 2)).dtype == jt.float32
    with pytest.warns(UserWarning, match="float32 is not supported.*Disabling autocast"):
        region = jt.autocast("cpu", dtype=jt.float32)
    with region:
        assert (jt.randn(2, 2) @ jt.randn(2, 2)).dtype == jt.float32
    with pytest.raises(RuntimeError, match="device_type must be 'cuda' or 'cpu', got 'tpu'"):
        jt.autocast("tpu")


def test_backward_inside_a_region_keeps_each_gradients_dtype():
    x = jt.randn(8, 16, requires_grad=True)
    w = jt.randn(16, 4).to(jt.bfloat16).requires_grad_()
    with jt.autocast("cpu"):
        loss = F.cross_entropy(x @ w, jt.arange(8) % 4)
        loss.backward()  # (inside the region: its ops must not cast the gradients)
    assert x.grad.dtype == jt.float32 and w.grad.dtype == jt.bfloat16


def test_compiled_equals_eager_and_the_autocast_state_is_a_guard():
    model = jt.nn.Sequential(jt.nn.Linear(16, 32), jt.nn.GELU(), jt.nn.Linear(32, 5))
    x, y = jt.randn(8, 16), jt.arange(8) % 5

    def loss_of(x, y):
        with jt.autocast("cpu"):
            return F.cross_entropy(model(x), y)

    compiled = jt.compile(loss_of)
    eager = loss_of(x, y)
    got = compiled(x, y)
    assert got.dtype == eager.dtype == jt.float32
    np.testing.assert_allclose(got.item(), eager.item(), rtol=1e-2)

    def logits(x):
        return model(x)

    f = jt.compile(logits)
    assert f(x).dtype == jt.float32
    with jt.autocast("cpu"):
        assert f(x).dtype == jt.bfloat16  # traced again: the state changed
        with jt.autocast("cpu", enabled=False):
            assert f(x).dtype == jt.float32
    assert any("autocast: off -> cpu bfloat16" in r for r in f.recompile_reasons), f.recompile_reasons


# ---------------------------------------------------------------------------------------------
# on an NVIDIA GPU: the CUDA policy against PyTorch's


@pytest.mark.gpu
@pytest.mark.skipif(not (jt.cuda.is_available() and torch.cuda.is_available()), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name, fn, shapes", CASES, ids=[c[0] for c in CASES])
def test_outputs_match_torch_autocast_on_cuda(name, fn, shapes, dtype):
    arrays = rng_arrays(*shapes)
    with jt.autocast("cuda", dtype=getattr(jt, dtype)):
        ours = fn(jt, F, *[jt.tensor(a, device="cuda") for a in arrays])
    with torch.autocast("cuda", dtype=TORCH_DTYPE[dtype]):
        theirs = fn(torch, torch.nn.functional, *[torch.tensor(a, device="cuda") for a in arrays])
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    for k, (o, t) in enumerate(zip(ours, theirs)):
        assert o.dtype.name == str(t.dtype).removeprefix("torch."), f"{name} output {k}: {o.dtype} vs {t.dtype}"
        assert_close_in(dtype, o.float().cpu().numpy().astype(np.float64),
                        t.float().cpu().numpy().astype(np.float64), f"{name} output {k}", ulps=16)


@pytest.mark.parametrize("convert", ["bfloat16", "half"])
def test_a_model_kept_in_low_precision_trains_as_torchs(convert):
    """`model.bfloat16()` / `.half()`: parameters, gradients and AdamW's moments in that dtype, as
    PyTorch keeps them; eager and compiled steps against PyTorch's."""
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.3 for s in [(16, 8), (16,), (4, 16), (4,)]]
    x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 4, 32)
    losses = {}
    for name, lib in (("jitorch", jt), ("torch", torch)):
        for compiled in ((False, True) if lib is jt else (False,)):
            model = lib.nn.Sequential(lib.nn.Linear(8, 16), lib.nn.ReLU(), lib.nn.Linear(16, 4))
            with lib.no_grad():
                for p, a in zip(model.parameters(), arrays):
                    p.copy_(lib.tensor(a))
            model = getattr(model, convert)()
            opt = lib.optim.AdamW(model.parameters(), lr=1e-2)
            dtype = next(model.parameters()).dtype

            step = training_step(model, opt, lib)
            run = jt.compile(step) if compiled else step
            losses[name, compiled] = [float(run(lib.tensor(x).to(dtype), lib.tensor(y)).float()) for _ in range(5)]
            assert all(str(p.dtype).endswith(("bfloat16", "float16")) for p in model.parameters())
            moments = [v for s in opt.state.values() for k, v in s.items() if k == "exp_avg"]
            assert moments and all(m.dtype == dtype for m in moments)
    eps = 2.0**-7 if convert == "bfloat16" else 2.0**-10
    for key in (("jitorch", False), ("jitorch", True)):
        np.testing.assert_allclose(losses[key], losses["torch", False], rtol=16 * eps, err_msg=str(key))


_ON_CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not (jt.cuda.is_available() and torch.cuda.is_available()), reason="needs an NVIDIA GPU")])


@pytest.mark.parametrize("device", ["cpu", _ON_CUDA])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_op_harness_under_autocast_gives_torchs_dtypes_and_values(dtype, device):
    """Every float32 case of the op harness (tests/op_cases.py) that PyTorch runs under its
    autocast for the device: the same output dtypes, and values within 8 steps of the low
    precision of each output's scale."""
    from tests.harness import dtype_name, flatten_outputs, make_arrays, to_jitorch, to_numpy, to_torch
    from tests.op_cases import CASES as OP_CASES

    compared, mismatches = 0, []  # (all of them gathered: one GPU run names every case that differs)
    for case in OP_CASES:
        if any(getattr(s, "dtype", "float32") != "float32" for s in case.inputs):
            continue
        arrays = make_arrays(case, 0)
        try:
            with torch.autocast(device, dtype=TORCH_DTYPE[dtype]):
                theirs = flatten_outputs(case.fn(torch, *[to_torch(a, s.dtype, False, device)
                                                          for a, s in zip(arrays, case.inputs)]))
        except (RuntimeError, TypeError, NotImplementedError):
            continue  # (PyTorch's autocast refuses it)
        with jt.autocast(device, dtype=getattr(jt, dtype)):
            ours = flatten_outputs(case.fn(jt, *[to_jitorch(a, False, device) for a in arrays]))
        compared += 1
        for k, (o, t) in enumerate(zip(ours, theirs)):
            if dtype_name(o) != dtype_name(t):
                mismatches.append(f"{case.name} output {k}: {o.dtype} vs torch {t.dtype}")
                continue
            a, b = to_numpy(o).astype(np.float64), to_numpy(t).astype(np.float64)
            if a.dtype.kind == "f" and b.size:
                scale = np.abs(b[np.isfinite(b)]).max(initial=0.0)
                tol = 8 * EPS[dtype]
                try:
                    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, equal_nan=True)
                except AssertionError as error:
                    mismatches.append(f"{case.name} output {k}: {str(error).strip().splitlines()[-1]}")
    assert not mismatches, "\n".join(mismatches)
    assert compared > 300
