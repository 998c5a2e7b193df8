"""`jitorch.amp.GradScaler` against `torch.amp.GradScaler` on the CPU: the same steps skipped (an
overflow), the same scale after each backoff and growth, the same parameters; float16 under
autocast; a compiled training step that skips steps on the device, traced once; its errors and
state dicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt

SHAPES = [(6, 4), (6,), (3, 6), (3,)]


def models(seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.5 for s in SHAPES]
    ours = jt.nn.Sequential(jt.nn.Linear(4, 6), jt.nn.Tanh(), jt.nn.Linear(6, 3))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    with jt.no_grad(), torch.no_grad():
        for p, q, a in zip(ours.parameters(), theirs.parameters(), arrays):
            p.copy_(jt.tensor(a))
            q.copy_(torch.tensor(a))
    return ours, theirs


def batches(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(n)]


def train(lib, model, scaler, steps, amp_dtype=None, compiled=False):
    """Each step's loss (unscaled) and the scale after it."""
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)

    def step(x, y):
        opt.zero_grad()
        if amp_dtype is None:
            loss = lib.nn.functional.cross_entropy(model(x), y)
        else:
            with lib.autocast("cpu", dtype=amp_dtype):
                loss = lib.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss * 64).backward()  # (64: so that float32 overflows below its largest scale)
        scaler.step(opt)
        scaler.update()
        return loss

    run = jt.compile(step) if compiled else step
    history = []
    for x, y in steps:
        loss = run(lib.tensor(x), lib.tensor(y))
        history.append((float(loss.detach().float()), scaler.get_scale()))
    return history, run


def assert_same_run(ours, theirs, model, torch_model, rtol=1e-5):
    assert [s for _, s in ours] == [s for _, s in theirs]  # the same skips, backoffs and growth
    np.testing.assert_allclose([v for v, _ in ours], [v for v, _ in theirs], rtol=rtol)
    for p, q in zip(model.parameters(), torch_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=rtol, atol=rtol)


def scalers(**kwargs):
    return jt.amp.GradScaler("cpu", **kwargs), torch.amp.GradScaler("cpu", **kwargs)


def test_overflowing_steps_are_skipped_and_the_scale_backs_off_then_grows_as_torchs():
    """64 times the loss at a scale of 2**127 overflows float32 (inf, NaN gradients): those steps
    are skipped and the scale halves until it fits; then it doubles every third good step."""
    model, torch_model = models()
    ours_scaler, theirs_scaler = scalers(init_scale=2.0**127, growth_interval=3)
    steps = batches(12)
    ours, _ = train(jt, model, ours_scaler, steps)
    theirs, _ = train(torch, torch_model, theirs_scaler, steps)
    scales = [s for _, s in theirs]
    assert scales[0] < 2.0**127 and any(b > a for a, b in zip(scales, scales[1:]))  # backoff, then growth
    assert_same_run(ours, theirs, model, torch_model)


def test_float16_under_autocast_as_torchs():
    model, torch_model = models(3)
    ours_scaler, theirs_scaler = scalers(init_scale=2.0**20, growth_interval=2)
    steps = batches(6, seed=4)
    ours, _ = train(jt, model, ours_scaler, steps, amp_dtype=jt.float16)
    theirs, _ = train(torch, torch_model, theirs_scaler, steps, amp_dtype=torch.float16)
    assert_same_run(ours, theirs, model, torch_model, rtol=2e-3)


def test_a_compiled_step_skips_on_the_device_and_traces_once():
    model, torch_model = models(5)
    ours_scaler, theirs_scaler = scalers(init_scale=2.0**127, growth_interval=2)
    steps = batches(8, seed=6)
    ours, run = train(jt, model, ours_scaler, steps, compiled=True)
    theirs, _ = train(torch, torch_model, theirs_scaler, steps)
    assert_same_run(ours, theirs, model, torch_model)
    programs = [p for entries in run.cache.values() for p in entries if not p.one_shot]
    assert len(programs) == 1, run.recompile_reasons  # skipped or not: one program


def test_errors_state_dicts_and_a_disabled_scaler():
    model, _ = models()
    opt = jt.optim.SGD(model.parameters(), lr=0.1)
    scaler = jt.amp.GradScaler("cpu", init_scale=8.0)
    with pytest.raises(RuntimeError, match="before scale"):
        scaler.unscale_(opt)
    scaler.scale(model(jt.randn(2, 4)).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called on this optimizer since the last update"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, lambda: None)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called since the last update"):
        scaler.step(opt)
    scaler.update()
    state = scaler.state_dict()
    assert state == {"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                     "_growth_tracker": 1}
    other = jt.amp.GradScaler("cpu")
    other.load_state_dict(state)
    assert other.get_scale() == 8.0 and other.state_dict() == state
    with pytest.raises(ValueError, match="growth factor must be > 1.0"):
        jt.amp.GradScaler("cpu", growth_factor=1.0)
    off = jt.amp.GradScaler("cpu", enabled=False)
    loss = model(jt.randn(2, 4)).sum()
    assert off.scale(loss) is loss and off.get_scale() == 1.0 and off.state_dict() == {} and not off.is_enabled()


@pytest.mark.skipif(jt.cuda.is_available(), reason="(a machine without a GPU)")
def test_a_cuda_scaler_without_a_gpu_warns_and_disables_itself():
    with pytest.warns(UserWarning, match="CUDA is not available.  Disabling"):
        scaler = jt.amp.GradScaler("cuda")
    assert not scaler.is_enabled()


@pytest.mark.gpu
@pytest.mark.skipif(not (jt.cuda.is_available() and torch.cuda.is_available()), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_on_cuda_float16_steps_skip_as_torchs(compiled):
    """Under float16 autocast on cuda with a scale that overflows at first: the same skipped steps
    and scales as PyTorch's GradScaler on the same GPU, eager or compiled (traced once)."""
    model, torch_model = models(8)
    model.to("cuda")
    torch_model.to("cuda")
    ours_scaler, theirs_scaler = jt.amp.GradScaler("cuda", init_scale=2.0**24, growth_interval=2), \
        torch.amp.GradScaler("cuda", init_scale=2.0**24, growth_interval=2)
    opt = jt.optim.Adam(model.parameters(), lr=1e-2)
    torch_opt = torch.optim.Adam(torch_model.parameters(), lr=1e-2)

    def step(lib, model, opt, scaler, x, y):
        opt.zero_grad()
        with lib.autocast("cuda", dtype=lib.float16):
            loss = lib.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss * 64).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    ours_step = jt.compile(lambda x, y: step(jt, model, opt, ours_scaler, x, y)) if compiled else \
        (lambda x, y: step(jt, model, opt, ours_scaler, x, y))
    ours, theirs = [], []
    for x, y in batches(8, seed=9):
        ours_step(jt.tensor(x).to("cuda"), jt.tensor(y).to("cuda"))
        ours.append(ours_scaler.get_scale())
        step(torch, torch_model, torch_opt, theirs_scaler, torch.tensor(x, device="cuda"),
             torch.tensor(y, device="cuda"))
        theirs.append(theirs_scaler.get_scale())
    assert ours == theirs and min(theirs) < 2.0**24
    for p, q in zip(model.parameters(), torch_model.parameters()):
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().cpu().numpy(), rtol=1e-2, atol=1e-3)


def test_where_each_op_is_a_launch_unscaling_is_one_compiled_program(monkeypatch):
    """On the GPU (a backend that fuses eager composites) `unscale_` runs as a compiled program:
    here, with the CPU made to say so, it unscales and checks as the op-by-op loop does."""
    from jitorch.amp import grad_scaler

    results = {}
    for compiled in (False, True):
        monkeypatch.setattr(grad_scaler, "fuses_composites", lambda *tensors, c=compiled: c)
        model, _ = models(11)
        scaler = jt.amp.GradScaler("cpu", init_scale=2.0**127)
        opt = jt.optim.SGD(model.parameters(), lr=0.1)
        history = []
        for x, y in batches(4, seed=12):
            opt.zero_grad()
            scaler.scale(jt.nn.functional.cross_entropy(model(jt.tensor(x)), jt.tensor(y)) * 64).backward()
            scaler.step(opt)
            scaler.update()
            history.append(scaler.get_scale())
        assert (scaler._unscale_compiled is not None) == compiled
        results[compiled] = history, [p.detach().numpy().copy() for p in model.parameters()]
    assert results[False][0] == results[True][0] and results[False][0][0] < 2.0**127
    for a, b in zip(results[False][1], results[True][1]):
        np.testing.assert_array_equal(a, b)
