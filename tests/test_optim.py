"""Optimizers against PyTorch: same start, same gradients, 20 steps, same parameters (rtol 1e-5)."""

import numpy as np
import pytest
import torch

import jitorch
from jitorch.optim import SGD, Adam, AdamW, Optimizer, RMSprop

STEPS = 20
SHAPES = [(4, 3), (5,), ()]


def _start(seed: int = 0):
    rng = np.random.default_rng(seed)
    inits = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return inits, grads


def _pair(inits):
    jt_params = [jitorch.tensor(a, requires_grad=True) for a in inits]
    pt_params = [torch.tensor(a, requires_grad=True) for a in inits]
    return jt_params, pt_params


def _feed(params, grads, make):
    for p, g in zip(params, grads):
        p.grad = make(g.copy())


def _run_both(jt_cls, pt_cls, kwargs, steps=STEPS, on_step=None):
    inits, grads = _start()
    jt_params, pt_params = _pair(inits)
    jt_opt = jt_cls(jt_params, **kwargs)
    pt_opt = pt_cls(pt_params, foreach=False, **kwargs)
    for i in range(steps):
        _feed(jt_params, grads[i], jitorch.tensor)
        _feed(pt_params, grads[i], torch.tensor)
        jt_opt.step()
        pt_opt.step()
        if on_step is not None:
            on_step(i, jt_opt, pt_opt)
    return jt_params, pt_params, jt_opt, pt_opt


def _assert_params_close(jt_params, pt_params, rtol=1e-5, atol=1e-6):
    for a, b in zip(jt_params, pt_params):
        assert a.dtype == jitorch.float32
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, momentum=0.8, weight_decay=0.1, nesterov=True, maximize=True),
    dict(lr=0.05, maximize=True),
]
ADAM_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.95), eps=1e-3),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True),
    dict(lr=0.01, maximize=True),
]
RMSPROP_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, alpha=0.9, eps=1e-3),
    dict(lr=0.01, momentum=0.9),
    dict(lr=0.01, centered=True),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.05, maximize=True),
]


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_matches_pytorch(kwargs):
    jt_params, pt_params, _, _ = _run_both(SGD, torch.optim.SGD, kwargs)
    _assert_params_close(jt_params, pt_params)


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
def test_adam_matches_pytorch(kwargs):
    jt_params, pt_params, _, _ = _run_both(Adam, torch.optim.Adam, kwargs)
    _assert_params_close(jt_params, pt_params)


@pytest.mark.parametrize("kwargs", ADAM_CASES + [dict(lr=0.01, weight_decay=0.0)], ids=str)
def test_adamw_matches_pytorch(kwargs):
    jt_params, pt_params, _, _ = _run_both(AdamW, torch.optim.AdamW, kwargs)
    _assert_params_close(jt_params, pt_params)


@pytest.mark.parametrize("kwargs", RMSPROP_CASES, ids=str)
def test_rmsprop_matches_pytorch(kwargs):
    jt_params, pt_params, _, _ = _run_both(RMSprop, torch.optim.RMSprop, kwargs)
    _assert_params_close(jt_params, pt_params)


def test_params_actually_move():
    # Guards the comparisons above against a vacuous pass (neither side updating).
    inits, _ = _start()
    jt_params, _, _, _ = _run_both(Adam, torch.optim.Adam, dict(lr=0.01))
    assert not np.allclose(jt_params[0].detach().numpy(), inits[0])


def test_state_matches_pytorch_layout():
    _, _, jt_opt, pt_opt = _run_both(Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True), steps=3)
    jt_sd, pt_sd = jt_opt.state_dict(), pt_opt.state_dict()
    assert sorted(jt_sd["state"]) == sorted(pt_sd["state"]) == [0, 1, 2]
    for i in range(3):
        assert sorted(jt_sd["state"][i]) == sorted(pt_sd["state"][i])
        assert jt_sd["state"][i]["step"].item() == pt_sd["state"][i]["step"].item() == 3
        np.testing.assert_allclose(jt_sd["state"][i]["exp_avg_sq"].numpy(),
                                   pt_sd["state"][i]["exp_avg_sq"].numpy(), rtol=1e-5)
    assert jt_sd["param_groups"][0]["params"] == [0, 1, 2]
    assert jt_sd["param_groups"][0]["lr"] == 0.01


# --- hyperparameters as data ---------------------------------------------------------------------

def test_param_group_mirrors_hyperparameters_in_persistent_tensors():
    opt = Adam([jitorch.randn(3, requires_grad=True)], lr=0.01, betas=(0.9, 0.99))
    group = opt.param_groups[0]
    lr_t = group.hyper("lr")
    beta1_t, beta2_t = group.hyper("betas")
    assert lr_t.dtype == jitorch.float64 and lr_t.ndim == 0
    group["lr"] = 0.5
    group["lr"] *= 0.1
    group["betas"] = (0.7, 0.99)
    assert group.hyper("lr") is lr_t and group.hyper("betas")[0] is beta1_t
    assert lr_t.item() == pytest.approx(0.05) and beta1_t.item() == 0.7
    assert isinstance(group["lr"], float) and group["lr"] == pytest.approx(0.05)
    group.update(eps=1e-3)
    assert group.hyper("eps").item() == 1e-3
    with pytest.raises(KeyError, match="amsgrad"):
        group.hyper("amsgrad")


def test_step_reads_lr_tensor_not_python_float():
    # Writing only the tensor twin must change the update: step() reads data, not the dict's float.
    p = jitorch.zeros(2, requires_grad=True)
    opt = SGD([p], lr=1.0)
    opt.param_groups[0].hyper("lr").fill_(0.25)
    p.grad = jitorch.ones(2)
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), [-0.25, -0.25])


def test_hyperparameter_constants_are_computed_once_per_step():
    # `1 - beta1` and friends: once per step for the whole group, not once per parameter
    params = [jitorch.randn(3, requires_grad=True) for _ in range(4)]
    opt = Adam(params, lr=0.1)
    group = opt.param_groups[0]
    computed = []
    cached = group.per_step

    def counting(name, dtype, compute):
        return cached(name, dtype, lambda: (computed.append(name), compute())[1])

    group.per_step = counting
    for p in params:
        p.grad = jitorch.ones(3)
    opt.step()
    opt.step()
    assert sorted(computed) == sorted(["1 - beta1", "beta2", "1 - beta2", "log beta1", "log beta2", "eps"] * 2)


def test_changing_lr_mid_run_takes_effect():
    def halve_at_10(i, jt_opt, pt_opt):
        if i == 9:
            for opt in (jt_opt, pt_opt):
                opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] * 0.5
                opt.param_groups[0]["betas"] = (0.5, 0.99)

    kwargs = dict(lr=0.05)
    jt_params, pt_params, _, _ = _run_both(Adam, torch.optim.Adam, kwargs, on_step=halve_at_10)
    _assert_params_close(jt_params, pt_params)
    unchanged, _, _, _ = _run_both(Adam, torch.optim.Adam, kwargs)
    assert not np.allclose(unchanged[0].detach().numpy(), jt_params[0].detach().numpy())


def test_per_group_hyperparameters_and_add_param_group():
    inits, grads = _start()
    jt_params, pt_params = _pair(inits)
    jt_opt = SGD([{"params": jt_params[:2]}, {"params": jt_params[2:], "lr": 0.5}], lr=0.1, momentum=0.9)
    pt_opt = torch.optim.SGD([{"params": pt_params[:2]}], lr=0.1, momentum=0.9)
    pt_opt.add_param_group({"params": pt_params[2:], "lr": 0.5})
    assert jt_opt.param_groups[1]["momentum"] == 0.9
    for i in range(STEPS):
        _feed(jt_params, grads[i], jitorch.tensor)
        _feed(pt_params, grads[i], torch.tensor)
        jt_opt.step()
        pt_opt.step()
    _assert_params_close(jt_params, pt_params)


def test_param_in_two_groups_is_an_error():
    p = jitorch.randn(2, requires_grad=True)
    opt = SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": [p]})


def test_invalid_hyperparameters_raise():
    p = [jitorch.randn(2, requires_grad=True)]
    with pytest.raises(ValueError, match="learning rate"):
        SGD(p, lr=-1.0)
    with pytest.raises(ValueError, match="beta"):
        Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="list"):
        SGD(jitorch.randn(2, requires_grad=True), lr=0.1)


def test_zero_grad():
    p = jitorch.randn(3, requires_grad=True)
    opt = SGD([p], lr=0.1)
    p.grad = jitorch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and p.grad.tolist() == [0.0, 0.0, 0.0]
    opt.zero_grad()
    assert p.grad is None


def test_params_without_grad_are_skipped():
    a, b = jitorch.ones(2, requires_grad=True), jitorch.ones(2, requires_grad=True)
    opt = Adam([a, b], lr=0.1)
    a.grad = jitorch.ones(2)
    opt.step()
    assert b.tolist() == [1.0, 1.0] and b not in opt.state
    assert a.tolist() != [1.0, 1.0]


def test_closure_is_evaluated_with_grad_enabled():
    p = jitorch.tensor([2.0], requires_grad=True)
    opt = SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 4.0
    assert p.tolist() == pytest.approx([2.0 - 0.1 * 4.0])


def test_works_with_autograd_gradients():
    x = jitorch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = jitorch.zeros(2, requires_grad=True)
    opt = SGD([w], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        ((x @ w - 1.0) ** 2).sum().backward()
        opt.step()
    assert w.grad is not None and w.requires_grad and w.is_leaf
    assert not np.allclose(w.detach().numpy(), 0.0)


# --- state dicts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs", [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (Adam, dict(lr=0.01, amsgrad=True)),
    (AdamW, dict(lr=0.01)),
    (RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
], ids=lambda v: getattr(v, "__name__", ""))
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    inits, grads = _start()
    reference = [jitorch.tensor(a, requires_grad=True) for a in inits]
    ref_opt = cls(reference, **kwargs)
    resumed = [jitorch.tensor(a, requires_grad=True) for a in inits]
    first = cls(resumed, **kwargs)
    for i in range(10):
        for params, opt in ((reference, ref_opt), (resumed, first)):
            _feed(params, grads[i], jitorch.tensor)
            opt.step()
    ref_opt.param_groups[0]["lr"] = first.param_groups[0]["lr"] = 0.02
    saved = first.state_dict()
    # A fresh optimizer over the same parameters, with different hyperparameters to overwrite.
    second = cls(resumed, **{**kwargs, "lr": 123.0})
    second.load_state_dict(saved)
    assert second.param_groups[0]["lr"] == 0.02
    assert second.param_groups[0].hyper("lr").item() == 0.02
    assert second.state[resumed[0]] is not first.state[resumed[0]]
    for i in range(10, STEPS):
        for params, opt in ((reference, ref_opt), (resumed, second)):
            _feed(params, grads[i], jitorch.tensor)
            opt.step()
    for a, b in zip(reference, resumed):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_load_state_dict_keeps_tensor_identity():
    p = jitorch.randn(3, requires_grad=True)
    opt = Adam([p], lr=0.01)
    p.grad = jitorch.ones(3)
    opt.step()
    exp_avg, lr_t = opt.state[p]["exp_avg"], opt.param_groups[0].hyper("lr")
    saved = {"state": {0: {k: v.clone() * 2 for k, v in opt.state[p].items()}},
             "param_groups": [{**opt.state_dict()["param_groups"][0], "lr": 0.5}]}
    opt.load_state_dict(saved)
    assert opt.state[p]["exp_avg"] is exp_avg and opt.param_groups[0].hyper("lr") is lr_t
    assert lr_t.item() == 0.5
    np.testing.assert_allclose(exp_avg.numpy(), saved["state"][0]["exp_avg"].numpy())


def test_load_state_dict_checks_group_sizes():
    opt = SGD([jitorch.randn(2, requires_grad=True)], lr=0.1)
    other = SGD([jitorch.randn(2, requires_grad=True), jitorch.randn(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="parameter group"):
        opt.load_state_dict(other.state_dict())


def test_optimizer_base_is_exported():
    assert issubclass(SGD, Optimizer) and jitorch.optim.Adam is Adam


# ---------------------------------------------------------------------------------------------
# PyTorch's implementation switches: foreach, fused, decoupled_weight_decay


@pytest.mark.parametrize("jt_cls, pt_cls, kwargs", [
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    (AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
], ids=["SGD", "Adam", "AdamW", "Adam-decoupled"])
def test_fused_update_is_one_compiled_program_and_matches_pytorch(jt_cls, pt_cls, kwargs):
    def halve_lr(i, jt_opt, pt_opt):  # a changed learning rate is data, not a recompile
        if i == 9:
            jt_opt.param_groups[0]["lr"] *= 0.5
            pt_opt.param_groups[0]["lr"] *= 0.5

    jt_params, pt_params, jt_opt, _ = _run_both(lambda p, **kw: jt_cls(p, fused=True, **kw), pt_cls, kwargs,
                                                on_step=halve_lr)
    _assert_params_close(jt_params, pt_params)
    compiled = jt_opt._fused_update
    assert compiled is not None and compiled.hits >= STEPS - 3  # traced on the first calls, then replayed
    assert jt_opt.param_groups[0]["fused"] is True


def test_foreach_and_the_group_keys_follow_pytorch():
    jt_params, pt_params = _pair(_start()[0])
    for jt_cls, pt_cls in ((SGD, torch.optim.SGD), (Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW),
                           (RMSprop, torch.optim.RMSprop)):
        ours, theirs = jt_cls(jt_params, lr=0.1, foreach=True), pt_cls(pt_params, lr=0.1, foreach=True)
        assert sorted(ours.param_groups[0]) == sorted(theirs.param_groups[0])
        assert ours.param_groups[0]["foreach"] is True


def test_unsupported_implementation_switches_say_so():
    params = [jitorch.zeros(3, requires_grad=True)]
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
        Adam(params, fused=True, foreach=True)
    with pytest.raises(NotImplementedError, match="capturable=True"):
        AdamW(params, capturable=True)
    with pytest.raises(NotImplementedError, match="differentiable=True"):
        SGD(params, lr=0.1, differentiable=True)


def test_adamw_stays_decoupled_after_loading_a_state_dict_without_the_key():
    inits, grads = _start()
    jt_params, pt_params = _pair(inits)
    opt = AdamW(jt_params, lr=0.01, weight_decay=0.5)
    state = opt.state_dict()
    for group in state["param_groups"]:
        del group["decoupled_weight_decay"]  # a checkpoint written before the key existed
    opt.load_state_dict(state)
    pt_opt = torch.optim.AdamW(pt_params, lr=0.01, weight_decay=0.5, foreach=False)
    for i in range(3):
        _feed(jt_params, grads[i], jitorch.tensor)
        _feed(pt_params, grads[i], torch.tensor)
        opt.step()
        pt_opt.step()
    _assert_params_close(jt_params, pt_params)
