"""Adadelta, Adagrad, Adamax, NAdam, RAdam, LBFGS and the remaining LR schedulers against PyTorch:
float64, the same start and gradients, parameters equal to 1e-12; learning-rate sequences equal."""

import numpy as np
import pytest
import torch

import jitorch
from jitorch.optim import LBFGS, SGD, Adadelta, Adagrad, Adam, Adamax, NAdam, RAdam, lr_scheduler

STEPS = 8
SHAPES = [(4, 3), (5,), ()]


@pytest.fixture(autouse=True)
def float64_default():
    """Both libraries' 0-d state (`step`, NAdam's `mu_product`) in float64, as PyTorch keeps it
    under a float64 default: otherwise PyTorch rounds `mu_product` to float32 every step."""
    torch_dtype, jt_dtype = torch.get_default_dtype(), jitorch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    jitorch.set_default_dtype(jitorch.float64)
    yield
    torch.set_default_dtype(torch_dtype)
    jitorch.set_default_dtype(jt_dtype)


def _start(seed: int = 0, steps: int = STEPS):
    rng = np.random.default_rng(seed)
    inits = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(steps)]
    return inits, grads


def _feed(params, grads, make):
    for p, g in zip(params, grads):
        p.grad = make(g.copy())


def _assert_close(jt_params, pt_params, tol=1e-12):
    for a, b in zip(jt_params, pt_params):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=tol, atol=tol)


OPTIMIZER_CASES = [
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1)),
    ("Adadelta", dict(lr=0.5, maximize=True)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, eps=1e-3, maximize=True)),
    ("Adamax", dict()),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1)),
    ("Adamax", dict(lr=0.01, maximize=True)),
    ("NAdam", dict()),
    ("NAdam", dict(lr=0.01, momentum_decay=0.01, weight_decay=0.1)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict()),
    # rho_t (about the step count) passes 5 at step 7: both of RAdam's branches run within STEPS
    ("RAdam", dict(lr=0.01, betas=(0.9, 0.8), weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, betas=(0.9, 0.8), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
]
CASE_IDS = [f"{name}-{kwargs}" for name, kwargs in OPTIMIZER_CASES]


def _run_both(name, kwargs, steps=STEPS):
    inits, grads = _start(steps=steps)
    jt_params = [jitorch.tensor(a, requires_grad=True) for a in inits]
    pt_params = [torch.tensor(a, requires_grad=True) for a in inits]
    jt_opt = getattr(jitorch.optim, name)(jt_params, **kwargs)
    pt_opt = getattr(torch.optim, name)(pt_params, foreach=False, **kwargs)
    for step_grads in grads:
        _feed(jt_params, step_grads, jitorch.tensor)
        _feed(pt_params, step_grads, torch.tensor)
        jt_opt.step()
        pt_opt.step()
    return jt_params, pt_params, jt_opt, pt_opt


@pytest.mark.parametrize("name, kwargs", OPTIMIZER_CASES, ids=CASE_IDS)
def test_optimizer_matches_pytorch(name, kwargs):
    jt_params, pt_params, jt_opt, pt_opt = _run_both(name, kwargs)
    _assert_close(jt_params, pt_params)
    inits, _ = _start()
    assert not np.allclose(jt_params[0].detach().numpy(), inits[0])  # guards against a vacuous pass
    jt_sd, pt_sd = jt_opt.state_dict(), pt_opt.state_dict()
    assert sorted(jt_sd["param_groups"][0]) == sorted(pt_sd["param_groups"][0])
    for i in range(len(SHAPES)):
        assert sorted(jt_sd["state"][i]) == sorted(pt_sd["state"][i])
        for key, value in pt_sd["state"][i].items():
            np.testing.assert_allclose(jt_sd["state"][i][key].numpy(), value.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["Adadelta", "Adagrad", "Adamax", "NAdam", "RAdam"])
def test_float32_parameters_stay_float32_and_match_pytorch(name):
    inits, grads = _start()
    jt_params = [jitorch.tensor(a, dtype=jitorch.float32, requires_grad=True) for a in inits]
    pt_params = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in inits]
    jt_opt = getattr(jitorch.optim, name)(jt_params, weight_decay=0.1)
    pt_opt = getattr(torch.optim, name)(pt_params, foreach=False, weight_decay=0.1)
    for step_grads in grads:
        _feed(jt_params, [g.astype(np.float32) for g in step_grads], jitorch.tensor)
        _feed(pt_params, [g.astype(np.float32) for g in step_grads], torch.tensor)
        jt_opt.step()
        pt_opt.step()
    assert all(p.dtype == jitorch.float32 for p in jt_params)
    assert all(v.dtype == jitorch.float32 for v in jt_opt.state[jt_params[0]].values() if v.ndim > 0)
    for a, b in zip(jt_params, pt_params):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kwargs", OPTIMIZER_CASES[1::3], ids=CASE_IDS[1::3])
def test_optimizer_loads_pytorchs_state_dict_and_continues_identically(name, kwargs):
    jt_params, pt_params, jt_opt, pt_opt = _run_both(name, kwargs, steps=3)
    pt_sd = pt_opt.state_dict()
    as_jitorch = {
        "state": {i: {k: jitorch.tensor(v.numpy()) for k, v in s.items()} for i, s in pt_sd["state"].items()},
        "param_groups": [dict(g) for g in pt_sd["param_groups"]],
    }
    resumed = getattr(jitorch.optim, name)(jt_params, **{**kwargs, "lr": 123.0})
    resumed.load_state_dict(as_jitorch)
    assert resumed.param_groups[0].hyper("lr").item() == pt_opt.param_groups[0]["lr"]
    _, grads = _start(seed=1)
    for step_grads in grads:
        _feed(jt_params, step_grads, jitorch.tensor)
        _feed(pt_params, step_grads, torch.tensor)
        resumed.step()
        pt_opt.step()
    _assert_close(jt_params, pt_params)


@pytest.mark.parametrize("name, kwargs", OPTIMIZER_CASES[1::3], ids=CASE_IDS[1::3])
def test_state_dict_round_trip_continues_identically(name, kwargs):
    reference, _, ref_opt, _ = _run_both(name, kwargs, steps=3)
    resumed, _, first, _ = _run_both(name, kwargs, steps=3)
    second = getattr(jitorch.optim, name)(resumed, **{**kwargs, "lr": 123.0})
    second.load_state_dict(first.state_dict())
    _, grads = _start(seed=1)
    for step_grads in grads:
        for params, opt in ((reference, ref_opt), (resumed, second)):
            _feed(params, step_grads, jitorch.tensor)
            opt.step()
    for a, b in zip(reference, resumed):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def _training_run(make_opt, mode: str | None, steps: int = STEPS):
    jitorch.manual_seed(0)
    model = jitorch.nn.Sequential(jitorch.nn.Linear(4, 5), jitorch.nn.Tanh(), jitorch.nn.Linear(5, 2))
    opt = make_opt(model.parameters())
    x, y = jitorch.randn(6, 4), jitorch.randn(6, 2)

    def step():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    fn = jitorch.compile(step, mode=mode) if mode else step
    losses = [fn().item() for _ in range(steps)]
    if mode == "default":  # traced on the first calls (before and after the state exists), then replayed
        assert fn.hits >= steps - 2
    return losses, [p.detach().numpy() for p in model.parameters()], opt


@pytest.mark.parametrize("name, kwargs", OPTIMIZER_CASES[1::3] + OPTIMIZER_CASES[2::3][-1:],
                         ids=CASE_IDS[1::3] + CASE_IDS[2::3][-1:])
def test_compiled_training_step_equals_eager(name, kwargs):
    def make(params):
        return getattr(jitorch.optim, name)(params, **kwargs)

    eager_losses, eager_params, eager_opt = _training_run(make, mode=None)
    losses, params, opt = _training_run(make, mode="default")
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-12)
    for a, b in zip(params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for p, q in zip(opt.param_groups[0]["params"], eager_opt.param_groups[0]["params"]):
        for key, value in eager_opt.state[q].items():
            np.testing.assert_allclose(opt.state[p][key].numpy(), value.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["NAdam", "RAdam"])
def test_check_mode_finds_compiled_and_eager_steps_equal(name):
    """mode="check" runs both every call and names the first IR node that differs."""
    _training_run(lambda params: getattr(jitorch.optim, name)(params, weight_decay=0.1), mode="check")


@pytest.mark.parametrize("name", ["NAdam", "RAdam", "Adamax"])
def test_fused_update_matches_pytorch(name):
    kwargs = dict(lr=0.01, weight_decay=0.1)
    inits, grads = _start()
    jt_params = [jitorch.tensor(a, requires_grad=True) for a in inits]
    pt_params = [torch.tensor(a, requires_grad=True) for a in inits]
    # these optimizers take no `fused` argument: ask for the compiled update as the defaults would on a GPU
    jt_opt = getattr(jitorch.optim, name)(jt_params, **kwargs)
    jt_opt.defaults["fused"] = True
    pt_opt = getattr(torch.optim, name)(pt_params, foreach=False, **kwargs)
    for step_grads in grads:
        _feed(jt_params, step_grads, jitorch.tensor)
        _feed(pt_params, step_grads, torch.tensor)
        jt_opt.step()
        pt_opt.step()
    _assert_close(jt_params, pt_params)
    assert jt_opt._fused_update is not None and jt_opt._fused_update.hits >= STEPS - 3


def test_adagrad_state_exists_from_construction_as_pytorchs():
    p = jitorch.zeros(3, requires_grad=True)
    opt = Adagrad([p], initial_accumulator_value=0.5)
    assert opt.state[p]["step"].item() == 0 and opt.state[p]["sum"].tolist() == [0.5] * 3


@pytest.mark.parametrize("cls, kwargs, match", [
    (Adadelta, dict(rho=1.5), "Invalid rho value: 1.5"),
    (Adadelta, dict(lr=-1.0), "Invalid learning rate"),
    (Adagrad, dict(lr_decay=-0.1), "Invalid lr_decay value"),
    (Adagrad, dict(initial_accumulator_value=-1.0), "Invalid initial_accumulator_value value"),
    (Adamax, dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1"),
    (NAdam, dict(momentum_decay=-1.0), "Invalid momentum_decay value"),
    (RAdam, dict(eps=-1.0), "Invalid epsilon value"),
    (RAdam, dict(weight_decay=-1.0), "Invalid weight_decay value"),
])
def test_bad_hyperparameters_raise_pytorchs_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([jitorch.zeros(2, requires_grad=True)], **kwargs)
    torch_cls = getattr(torch.optim, cls.__name__)
    with pytest.raises(ValueError, match=match):
        torch_cls([torch.zeros(2, requires_grad=True)], **kwargs)


# --- LBFGS ---------------------------------------------------------------------------------------

def _least_squares(lib, line_search_fn, **kwargs):
    rng = np.random.default_rng(3)
    a, b, w0 = rng.standard_normal((12, 5)), rng.standard_normal(12), rng.standard_normal(5)
    w = lib.tensor(w0, requires_grad=True)
    bias = lib.tensor(0.3, requires_grad=True)
    A, B = lib.tensor(a), lib.tensor(b)
    opt = lib.optim.LBFGS([w, bias], line_search_fn=line_search_fn, **kwargs)

    def closure():
        opt.zero_grad()
        loss = ((A @ w + bias - B) ** 2).sum() + 0.1 * (w ** 4).sum()  # not quadratic: a line search matters
        loss.backward()
        return loss

    iterates = []
    for _ in range(3):
        loss = opt.step(closure)
        iterates.append((float(loss.detach()), w.detach().numpy().copy(), float(bias.detach())))
    return iterates, opt


@pytest.mark.parametrize("line_search_fn, kwargs", [
    (None, dict(lr=0.1, max_iter=5)),
    (None, dict(lr=0.05, max_iter=7, history_size=3)),
    ("strong_wolfe", dict()),
    ("strong_wolfe", dict(max_iter=4, history_size=2)),
])
def test_lbfgs_iterates_match_pytorch(line_search_fn, kwargs):
    ours, opt = _least_squares(jitorch, line_search_fn, **kwargs)
    theirs, pt_opt = _least_squares(torch, line_search_fn, **kwargs)
    for (loss, w, bias), (pt_loss, pt_w, pt_bias) in zip(ours, theirs):
        assert loss == pytest.approx(pt_loss, rel=1e-10)
        np.testing.assert_allclose(w, pt_w, rtol=1e-10, atol=1e-12)
        assert bias == pytest.approx(pt_bias, rel=1e-10, abs=1e-12)
    state, pt_state = opt.state_dict()["state"][0], pt_opt.state_dict()["state"][0]
    assert sorted(state) == sorted(pt_state)
    assert state["func_evals"] == pt_state["func_evals"] and state["n_iter"] == pt_state["n_iter"]
    assert len(state["old_dirs"]) == len(pt_state["old_dirs"])


def test_lbfgs_state_dict_round_trip_continues_identically():
    def problem():
        w = jitorch.tensor([1.5, -0.5, 2.0], requires_grad=True)
        opt = LBFGS([w], lr=0.5, max_iter=3, history_size=2, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = ((w - jitorch.tensor([0.1, 0.2, 0.3])) ** 4).sum() + (w ** 2).sum()
            loss.backward()
            return loss

        return w, opt, closure

    (w, opt, closure), (w2, opt2, closure2) = problem(), problem()
    opt.step(closure)
    with jitorch.no_grad():
        w2.copy_(w)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[w2]["n_iter"] == opt.state[w]["n_iter"] > 1
    assert opt2.state[w2]["old_dirs"][0] is not opt.state[w]["old_dirs"][0]
    for _ in range(2):
        opt.step(closure)
        opt2.step(closure2)
    np.testing.assert_array_equal(w.detach().numpy(), w2.detach().numpy())


def test_lbfgs_refuses_parameter_groups_and_tracing():
    a, b = jitorch.zeros(2, requires_grad=True), jitorch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="per-parameter options"):
        LBFGS([{"params": [a]}, {"params": [b]}])
    opt = LBFGS([a])

    def closure():
        opt.zero_grad()
        loss = ((a - 1.0) ** 2).sum()
        loss.backward()
        return loss

    with pytest.raises(jitorch.TraceError, match="LBFGS.step called inside jitorch.compile"):
        jitorch.compile(lambda: opt.step(closure))()


# --- schedulers ----------------------------------------------------------------------------------

SCHED_STEPS = 30


class _Halving:
    """A callable object: its state is saved in a state dict (a plain function's is not)."""

    def __init__(self, every):
        self.every = every

    def __call__(self, epoch):
        return 0.5 if epoch % self.every == 0 else 1.0


SCHEDULERS = [
    ("ExponentialLR", dict(gamma=0.9)),
    ("PolynomialLR", dict(total_iters=12, power=2.0)),
    ("CosineAnnealingWarmRestarts", dict(T_0=4, T_mult=2, eta_min=0.001)),
    ("CosineAnnealingWarmRestarts", dict(T_0=5)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=4, step_size_down=3)),
    ("CyclicLR", dict(base_lr=[0.01, 0.02], max_lr=0.1, step_size_up=3, mode="triangular2",
                      base_momentum=0.7, max_momentum=0.95)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=5, mode="exp_range", gamma=0.95)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=5, scale_fn=_Halving(2), cycle_momentum=False)),
    ("ConstantLR", dict(factor=0.25, total_iters=6)),
    ("MultiplicativeLR", dict(lr_lambda=_Halving(7))),
]
SCHED_IDS = [f"{name}{i}" for i, (name, _) in enumerate(SCHEDULERS)]
SCHED_OPTIMIZERS = [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01))]


def _make(lib, opt_name, opt_kwargs, make_schedulers):
    params = [lib.zeros(3, requires_grad=True), lib.zeros(2, requires_grad=True)]
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": opt_kwargs["lr"] * 2}]
    opt = getattr(lib.optim, opt_name)(groups, **opt_kwargs)
    return opt, make_schedulers(lib.optim.lr_scheduler, opt)


def _lr_trace(opt, sched, metrics=None):
    trace = []
    for i in range(SCHED_STEPS):
        opt.step()
        sched.step() if metrics is None else sched.step(metrics[i])
        trace.append((list(sched.get_last_lr()), [dict(g) for g in opt.param_groups]))
    return trace


def _state_keys(scheduler) -> list[str]:
    # (PyTorch's `_get_lr_called_within_step` guards a warning jitorch's schedulers do not give)
    return sorted(k for k in scheduler.state_dict() if k != "_get_lr_called_within_step")


def _assert_same_trace(ours, theirs, keys=("lr", "momentum", "betas")):
    rates = set()
    for (lrs, groups), (pt_lrs, pt_groups) in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(lrs, pt_lrs, rtol=1e-12, atol=0)
        for group, pt_group in zip(groups, pt_groups):
            for key in keys:
                if key in pt_group:
                    np.testing.assert_allclose(group[key], pt_group[key], rtol=1e-12)
        rates.add(round(lrs[0], 12))
    assert len(rates) >= 2, "the schedule never changed the rate; the comparison would be vacuous"


@pytest.mark.parametrize("opt_name, opt_kwargs", SCHED_OPTIMIZERS, ids=[o[0] for o in SCHED_OPTIMIZERS])
@pytest.mark.parametrize("sched_name, sched_kwargs", SCHEDULERS, ids=SCHED_IDS)
def test_scheduler_matches_pytorch(opt_name, opt_kwargs, sched_name, sched_kwargs):
    def schedulers(module, opt):
        return getattr(module, sched_name)(opt, **sched_kwargs)

    traces = [_lr_trace(*_make(lib, opt_name, opt_kwargs, schedulers)) for lib in (jitorch, torch)]
    _assert_same_trace(*traces)
    (_, ours), (_, theirs) = (_make(lib, opt_name, opt_kwargs, schedulers) for lib in (jitorch, torch))
    assert _state_keys(ours) == _state_keys(theirs)


def _composites(module, opt):
    return {
        "sequential": module.SequentialLR(opt, [module.LinearLR(opt, start_factor=0.1, total_iters=4),
                                                module.ExponentialLR(opt, gamma=0.9),
                                                module.CosineAnnealingLR(opt, T_max=6)], milestones=[5, 12]),
        "chained": module.ChainedScheduler([module.ConstantLR(opt, factor=0.5, total_iters=3),
                                            module.ExponentialLR(opt, gamma=0.95),
                                            module.PolynomialLR(opt, total_iters=20)]),
    }


@pytest.mark.parametrize("kind", ["sequential", "chained"])
def test_composite_schedulers_match_pytorch(kind):
    def schedulers(module, opt):
        return _composites(module, opt)[kind]

    traces = [_lr_trace(*_make(lib, "SGD", dict(lr=0.1), schedulers)) for lib in (jitorch, torch)]
    _assert_same_trace(*traces)


PLATEAU_METRICS = [1.0, 0.9, 0.9, 0.9, 0.95, 0.9, 0.89999, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7,
                   0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6]


@pytest.mark.parametrize("kwargs, sign", [
    (dict(factor=0.5, patience=2, cooldown=2, min_lr=[0.004, 0.001]), 1),
    (dict(mode="max", factor=0.3, patience=1, threshold=0.05, threshold_mode="abs", min_lr=0.002), -1),
    (dict(factor=0.5, patience=0, eps=0.02), 1),
])
def test_reduce_lr_on_plateau_matches_pytorch(kwargs, sign):
    def schedulers(module, opt):
        return module.ReduceLROnPlateau(opt, **kwargs)

    metrics = [sign * m for m in PLATEAU_METRICS]
    traces = [_lr_trace(*_make(lib, "SGD", dict(lr=0.1), schedulers), metrics=metrics) for lib in (jitorch, torch)]
    _assert_same_trace(*traces)
    (_, ours), (_, theirs) = (_make(lib, "SGD", dict(lr=0.1), schedulers) for lib in (jitorch, torch))
    assert _state_keys(ours) == _state_keys(theirs)


def _round_trip(make_schedulers, metrics=None):
    opt, sched = _make(jitorch, "Adam", dict(lr=0.01), make_schedulers)
    opt2, sched2 = _make(jitorch, "Adam", dict(lr=0.01), make_schedulers)
    for i in range(11):
        opt.step()
        sched.step() if metrics is None else sched.step(metrics[i])
    saved = sched.state_dict()
    assert "optimizer" not in saved
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(saved)
    for i in range(11, SCHED_STEPS):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step() if metrics is None else s.step(metrics[i])
        assert sched2.get_last_lr() == sched.get_last_lr()
        assert [g.hyper("lr").item() for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("sched_name, sched_kwargs", SCHEDULERS, ids=SCHED_IDS)
def test_scheduler_state_dict_round_trip(sched_name, sched_kwargs):
    _round_trip(lambda module, opt: getattr(module, sched_name)(opt, **sched_kwargs))


@pytest.mark.parametrize("kind", ["sequential", "chained", "plateau"])
def test_composite_and_plateau_state_dict_round_trip(kind):
    if kind == "plateau":
        _round_trip(lambda module, opt: module.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1),
                    metrics=PLATEAU_METRICS)
    else:
        _round_trip(lambda module, opt: _composites(module, opt)[kind])


@pytest.mark.filterwarnings("ignore::UserWarning")  # the deprecation, and PyTorch's call-order warning
@pytest.mark.parametrize("sched_name, sched_kwargs", [SCHEDULERS[i] for i in (0, 1, 2, 8)],
                         ids=[SCHED_IDS[i] for i in (0, 1, 2, 8)])
def test_stepping_to_an_epoch_matches_pytorch(sched_name, sched_kwargs):
    """The deprecated `step(epoch)`: the closed forms, and CosineAnnealingWarmRestarts' fractional epochs."""
    lrs = []
    for lib in (jitorch, torch):
        opt = lib.optim.SGD([lib.zeros(2, requires_grad=True)], lr=0.1)
        sched = getattr(lib.optim.lr_scheduler, sched_name)(opt, **sched_kwargs)
        for epoch in (3, 7.5 if sched_name == "CosineAnnealingWarmRestarts" else 7, 2, 20):
            sched.step(epoch)
            lrs.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs[:4], lrs[4:], rtol=1e-12)


@pytest.mark.parametrize("kind", ["ExponentialLR", "CyclicLR", "CosineAnnealingWarmRestarts", "sequential", "plateau"])
def test_scheduler_loads_pytorchs_state_dict_and_continues_identically(kind):
    def schedulers(module, opt):
        if kind in ("sequential", "chained"):
            return _composites(module, opt)[kind]
        if kind == "plateau":
            return module.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1)
        return getattr(module, kind)(opt, **dict(SCHEDULERS)[kind])  # (the last case of that name)

    metrics = PLATEAU_METRICS if kind == "plateau" else None
    pt_opt, pt_sched = _make(torch, "SGD", dict(lr=0.1, momentum=0.9), schedulers)
    for i in range(11):
        pt_opt.step()
        pt_sched.step() if metrics is None else pt_sched.step(metrics[i])
    opt, sched = _make(jitorch, "SGD", dict(lr=0.1, momentum=0.9), schedulers)
    for group, pt_group in zip(opt.param_groups, pt_opt.param_groups):
        group.update({k: v for k, v in pt_group.items() if k != "params"})
    sched.load_state_dict(pt_sched.state_dict())
    for i in range(11, SCHED_STEPS):
        for o, s in ((opt, sched), (pt_opt, pt_sched)):
            o.step()
            s.step() if metrics is None else s.step(metrics[i])
        np.testing.assert_allclose(sched.get_last_lr(), pt_sched.get_last_lr(), rtol=1e-12)
        assert opt.param_groups[0].hyper("momentum").item() == pytest.approx(pt_opt.param_groups[0]["momentum"])


def test_cyclic_lr_saves_a_callable_objects_state_and_not_a_functions():
    opt = SGD([jitorch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    sched = lr_scheduler.CyclicLR(opt, 0.01, 0.1, step_size_up=2, scale_fn=_Halving(3))
    saved = sched.state_dict()
    assert saved["_scale_fn_custom"] == {"every": 3}
    sched._scale_fn_custom.every = 9
    sched.load_state_dict(saved)
    assert sched._scale_fn_custom.every == 3
    plain = lr_scheduler.CyclicLR(opt, 0.01, 0.1, scale_fn=lambda x: 1.0)
    assert plain.state_dict()["_scale_fn_custom"] is None


def test_scheduler_errors_follow_pytorch():
    opt = Adam([jitorch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="Expected positive integer T_0"):
        lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=0)
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        lr_scheduler.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="mode is invalid"):
        lr_scheduler.CyclicLR(opt, 0.01, 0.1, mode="sawtooth")
    with pytest.raises(ValueError, match="does not support `ReduceLROnPlateau`"):
        lr_scheduler.ChainedScheduler([lr_scheduler.ReduceLROnPlateau(opt)])
    with pytest.raises(ValueError, match="one more than the number of milestone"):
        lr_scheduler.SequentialLR(opt, [lr_scheduler.ExponentialLR(opt, 0.9)], milestones=[3])
    with pytest.raises(ValueError, match="momentum or beta1"):
        lr_scheduler.CyclicLR(Adagrad([jitorch.zeros(1, requires_grad=True)]), 0.01, 0.1)
