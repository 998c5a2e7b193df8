"""LR schedulers against PyTorch: the same rates every step, and the same parameters after 20 steps."""

import numpy as np
import pytest
import torch

import jitorch
from jitorch.optim import SGD, Adam, lr_scheduler

STEPS = 20


def _halve_every_5(epoch):
    return 0.5 ** (epoch // 5)


SCHEDULERS = [
    ("StepLR", dict(step_size=4, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[3, 7, 7, 15], gamma=0.3)),
    ("CosineAnnealingLR", dict(T_max=8, eta_min=0.001)),
    ("LambdaLR", dict(lr_lambda=_halve_every_5)),
    ("LinearLR", dict(start_factor=0.25, end_factor=0.9, total_iters=6)),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=STEPS)),
    ("OneCycleLR", dict(max_lr=[0.1, 0.2], total_steps=STEPS, anneal_strategy="linear", three_phase=True)),
    ("OneCycleLR", dict(max_lr=0.1, epochs=4, steps_per_epoch=5, cycle_momentum=False, pct_start=0.5)),
]
OPTIMIZERS = [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01))]


def _setup(opt_name, opt_kwargs, sched_name, sched_kwargs):
    rng = np.random.default_rng(0)
    inits = [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    grads = [[rng.standard_normal(a.shape).astype(np.float32) for a in inits] for _ in range(STEPS)]
    sides = []
    for lib, make in ((jitorch, jitorch.tensor), (torch, torch.tensor)):
        params = [make(a.copy(), requires_grad=True) for a in inits]
        groups = [{"params": params[:1]}, {"params": params[1:], "lr": opt_kwargs["lr"] * 2}]
        extra = {} if lib is jitorch else {"foreach": False}
        opt = getattr(lib.optim, opt_name)(groups, **opt_kwargs, **extra)
        sched = getattr(lib.optim.lr_scheduler, sched_name)(opt, **sched_kwargs)
        sides.append((params, opt, sched, make))
    return sides, grads


@pytest.mark.parametrize("opt_name, opt_kwargs", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("sched_name, sched_kwargs", SCHEDULERS,
                         ids=[f"{s[0]}{i}" for i, s in enumerate(SCHEDULERS)])
def test_scheduler_matches_pytorch(opt_name, opt_kwargs, sched_name, sched_kwargs):
    sides, grads = _setup(opt_name, opt_kwargs, sched_name, sched_kwargs)
    seen_lrs = set()
    for step in range(STEPS):
        for params, opt, sched, make in sides:
            for p, g in zip(params, grads[step]):
                p.grad = make(g)
            opt.step()
            sched.step()
        (_, jt_opt, jt_sched, _), (_, pt_opt, pt_sched, _) = sides
        np.testing.assert_allclose(jt_sched.get_last_lr(), pt_sched.get_last_lr(), rtol=1e-12)
        for jt_group, pt_group in zip(jt_opt.param_groups, pt_opt.param_groups):
            assert jt_group.hyper("lr").item() == pytest.approx(pt_group["lr"], rel=1e-12)
            if "betas" in pt_group:
                assert jt_group.hyper("betas")[0].item() == pytest.approx(pt_group["betas"][0], rel=1e-12)
            else:
                assert jt_group.hyper("momentum").item() == pytest.approx(pt_group["momentum"], rel=1e-12)
        seen_lrs.add(round(jt_sched.get_last_lr()[0], 12))
    assert len(seen_lrs) > 2, "the schedule never changed the rate; the comparison would be vacuous"
    (jt_params, *_), (pt_params, *_) = sides
    for a, b in zip(jt_params, pt_params):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_chained_schedulers_match_pytorch():
    lrs = []
    for lib in (jitorch, torch):
        opt = lib.optim.SGD([lib.zeros(2, requires_grad=True)], lr=1.0)
        warmup = lib.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4)
        decay = lib.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        trace = []
        for _ in range(12):
            opt.step()
            warmup.step()
            decay.step()
            trace.append(opt.param_groups[0]["lr"])
        lrs.append(trace)
    np.testing.assert_allclose(lrs[0], lrs[1], rtol=1e-12)


@pytest.mark.parametrize("sched_name, sched_kwargs", SCHEDULERS[:5], ids=[s[0] for s in SCHEDULERS[:5]])
def test_resuming_with_last_epoch_matches_pytorch(sched_name, sched_kwargs):
    traces = []
    for lib in (jitorch, torch):
        opt = lib.optim.SGD([{"params": [lib.zeros(2, requires_grad=True)], "initial_lr": 0.1}], lr=0.037)
        sched = getattr(lib.optim.lr_scheduler, sched_name)(opt, last_epoch=5, **sched_kwargs)
        trace = [opt.param_groups[0]["lr"]]
        for _ in range(6):
            opt.step()
            sched.step()
            trace.append(opt.param_groups[0]["lr"])
        traces.append(trace)
    np.testing.assert_allclose(traces[0], traces[1], rtol=1e-12)


@pytest.mark.parametrize("sched_name, sched_kwargs", SCHEDULERS[:6], ids=[s[0] for s in SCHEDULERS[:6]])
def test_scheduler_state_dict_round_trip(sched_name, sched_kwargs):
    def make():
        p = jitorch.zeros(2, requires_grad=True)
        opt = Adam([p], lr=0.01)
        return opt, getattr(lr_scheduler, sched_name)(opt, **sched_kwargs)

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    assert "optimizer" not in saved_sched and saved_sched["last_epoch"] == 7
    opt2, sched2 = make()
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    for _ in range(5):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert sched2.get_last_lr() == sched.get_last_lr()
        assert opt2.param_groups[0].hyper("lr").item() == opt.param_groups[0]["lr"]


def test_multistep_state_survives_save_and_load(tmp_path):
    opt = SGD([jitorch.zeros(2, requires_grad=True)], lr=1.0)
    sched = lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.5)
    jitorch.save(sched.state_dict(), tmp_path / "sched.safetensors")
    opt2 = SGD([jitorch.zeros(2, requires_grad=True)], lr=1.0)
    sched2 = lr_scheduler.MultiStepLR(opt2, milestones=[9], gamma=0.5)
    sched2.load_state_dict(jitorch.load(tmp_path / "sched.safetensors"))
    with pytest.warns(UserWarning, match="deprecated"):
        sched2.step(5)  # closed form, which needs the milestones to be a Counter again
    assert sched2.get_last_lr() == [0.25]


def test_lambda_lr_saves_callable_object_state():
    class Warmup:
        def __init__(self, steps):
            self.steps = steps

        def __call__(self, epoch):
            return min(1.0, (epoch + 1) / self.steps)

    opt = SGD([jitorch.zeros(1, requires_grad=True)], lr=1.0)
    sched = lr_scheduler.LambdaLR(opt, [Warmup(10)])
    saved = sched.state_dict()
    assert saved["lr_lambdas"] == [{"steps": 10}]
    sched.lr_lambdas[0].steps = 3
    sched.load_state_dict(saved)
    assert sched.lr_lambdas[0].steps == 10
    assert lr_scheduler.LambdaLR(opt, _halve_every_5).state_dict()["lr_lambdas"] == [None]


def test_onecycle_rejects_stepping_past_the_end():
    opt = SGD([jitorch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=3)
    sched.step()
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match="total steps"):
        sched.step()


def test_scheduler_requires_an_optimizer_and_initial_lr_when_resuming():
    with pytest.raises(TypeError, match="not an Optimizer"):
        lr_scheduler.StepLR(object(), step_size=1)
    opt = SGD([jitorch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(opt, step_size=1, last_epoch=3)
