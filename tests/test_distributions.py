"""jitorch.distributions against torch.distributions: densities, entropies and moments in float64
to 1e-12, sample shapes and statistics, reparameterized gradients, KL and argument validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributions as TD

import jitorch as jt
import jitorch.distributions as D

TOL = 1e-12
LOC = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]])
SCALE = np.array([[1.0, 0.3, 2.5], [0.7, 1.5, 4.0]])
PROBS = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])


def _both(name: str, *arrays, **kwargs):
    """The same distribution from jitorch and from PyTorch, parameters given as float64 tensors."""
    ours = getattr(D, name)(*[jt.tensor(a) for a in arrays], **{k: jt.tensor(v) for k, v in kwargs.items()})
    theirs = getattr(TD, name)(*[torch.tensor(a) for a in arrays], **{k: torch.tensor(v) for k, v in kwargs.items()})
    return ours, theirs


def _close(ours: jt.Tensor, theirs: torch.Tensor) -> None:
    assert tuple(ours.shape) == tuple(theirs.shape)
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=TOL, atol=TOL)


CONTINUOUS = [
    pytest.param("Normal", (LOC, SCALE), {}, np.array([[0.1, 0.2, -3.0], [1.0, 2.0, 3.0]]), id="Normal"),
    pytest.param("Uniform", (LOC, LOC + SCALE), {}, LOC + 0.5 * SCALE, id="Uniform"),
    pytest.param("Bernoulli", (), {"probs": PROBS}, np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), id="Bernoulli-probs"),
    pytest.param("Bernoulli", (), {"logits": LOC}, np.array([1.0, 0.0, 1.0]), id="Bernoulli-logits"),
    pytest.param("Categorical", (), {"probs": PROBS * 3}, np.array([[0, 2], [1, 1], [2, 0]]), id="Categorical-probs"),
    pytest.param("Categorical", (), {"logits": LOC}, np.array([0, 2]), id="Categorical-logits"),
]


@pytest.mark.parametrize("name, args, kwargs, value", CONTINUOUS)
def test_log_prob_entropy_and_moments_match_pytorch(name, args, kwargs, value):
    ours, theirs = _both(name, *args, **kwargs)
    assert tuple(ours.batch_shape) == tuple(theirs.batch_shape)
    assert tuple(ours.event_shape) == tuple(theirs.event_shape)
    _close(ours.log_prob(jt.tensor(value)), theirs.log_prob(torch.tensor(value)))
    _close(ours.entropy(), theirs.entropy())
    for moment in ("mean", "variance", "stddev"):
        _close(getattr(ours, moment), getattr(theirs, moment))


@pytest.mark.parametrize("name", ["Normal", "Uniform"])
def test_cdf_matches_pytorch(name):
    ours, theirs = _both(name, LOC, LOC + SCALE if name == "Uniform" else SCALE)
    value = LOC + 0.3 * SCALE
    _close(ours.cdf(jt.tensor(value)), theirs.cdf(torch.tensor(value)))


@pytest.mark.parametrize("make", [
    lambda: D.Normal(jt.tensor(LOC), jt.tensor(SCALE)),
    lambda: D.Uniform(jt.tensor(LOC), jt.tensor(LOC + SCALE)),
    lambda: D.Bernoulli(jt.tensor(PROBS)),
    lambda: D.Categorical(jt.tensor(PROBS)),
], ids=["Normal", "Uniform", "Bernoulli", "Categorical"])
@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 3)])
def test_sample_shapes(make, sample_shape):
    dist = make()
    expected = tuple(sample_shape) + tuple(dist.batch_shape) + tuple(dist.event_shape)
    assert tuple(dist.sample(sample_shape).shape) == expected
    if dist.has_rsample:
        assert tuple(dist.rsample(sample_shape).shape) == expected


def test_scalar_parameters_give_an_empty_batch_shape():
    assert tuple(D.Normal(0.0, 1.0).sample().shape) == ()
    assert tuple(D.Uniform(0.0, 2.0).sample((4,)).shape) == (4,)


def test_samples_repeat_under_manual_seed():
    dist = D.Normal(jt.tensor(LOC), jt.tensor(SCALE))
    jt.manual_seed(11)
    first = dist.sample((3,)).numpy()
    jt.manual_seed(11)
    np.testing.assert_array_equal(dist.sample((3,)).numpy(), first)


def test_normal_rsample_gradients_flow_to_loc_and_scale():
    loc = jt.tensor(LOC, requires_grad=True)
    scale = jt.tensor(SCALE, requires_grad=True)
    jt.manual_seed(0)
    x = D.Normal(loc, scale).rsample((4,))
    x.sum().backward()
    eps = (x.detach() - loc.detach()) / scale.detach()
    np.testing.assert_allclose(loc.grad.numpy(), np.full(LOC.shape, 4.0))
    np.testing.assert_allclose(scale.grad.numpy(), eps.sum(0).numpy(), rtol=1e-12)


def test_uniform_rsample_gradients_flow_to_both_bounds():
    low = jt.tensor(LOC, requires_grad=True)
    high = jt.tensor(LOC + SCALE, requires_grad=True)
    x = D.Uniform(low, high).rsample((3,))
    x.sum().backward()
    u = ((x.detach() - low.detach()) / (high.detach() - low.detach())).sum(0).numpy()
    np.testing.assert_allclose(high.grad.numpy(), u, rtol=1e-12)
    np.testing.assert_allclose(low.grad.numpy(), 3 - u, rtol=1e-12)


def test_sample_has_no_gradient_and_discrete_ones_have_no_rsample():
    loc = jt.tensor(LOC, requires_grad=True)
    assert not D.Normal(loc, jt.tensor(SCALE)).sample().requires_grad
    with pytest.raises(NotImplementedError, match="rsample"):
        D.Categorical(jt.tensor(PROBS)).rsample()


N = 200_000


def test_continuous_sample_moments():
    jt.manual_seed(1)
    normal = D.Normal(jt.tensor(LOC), jt.tensor(SCALE)).sample((N,)).numpy()
    # the sample mean is within 5 standard errors; the sample variance within 5% (loose, never flaky)
    assert np.all(np.abs(normal.mean(0) - LOC) < 5 * SCALE / np.sqrt(N))
    np.testing.assert_allclose(normal.var(0), SCALE ** 2, rtol=0.05)
    uniform = D.Uniform(jt.tensor(LOC), jt.tensor(LOC + SCALE)).sample((N,)).numpy()
    assert np.all((uniform >= LOC) & (uniform < LOC + SCALE))
    assert np.all(np.abs(uniform.mean(0) - (LOC + SCALE / 2)) < 5 * SCALE / np.sqrt(12 * N))


def test_discrete_sample_frequencies():
    jt.manual_seed(2)
    bern = D.Bernoulli(jt.tensor(PROBS)).sample((N,)).numpy()
    assert set(np.unique(bern)) <= {0.0, 1.0}
    assert np.all(np.abs(bern.mean(0) - PROBS) < 5 * np.sqrt(PROBS * (1 - PROBS) / N))
    cat = D.Categorical(jt.tensor(PROBS)).sample((N,))
    assert cat.dtype is jt.int64
    counts = np.stack([(cat.numpy() == k).mean(0) for k in range(3)], -1)
    assert np.all(np.abs(counts - PROBS) < 5 * np.sqrt(PROBS * (1 - PROBS) / N))


@pytest.mark.parametrize("name, p, q", [
    ("Normal", (LOC, SCALE), (SCALE, SCALE + 1)),
    ("Categorical", {"probs": PROBS}, {"logits": LOC}),
])
def test_kl_divergence_matches_pytorch(name, p, q):
    def make(params):
        return _both(name, **params) if isinstance(params, dict) else _both(name, *params)

    (ours_p, theirs_p), (ours_q, theirs_q) = make(p), make(q)
    _close(D.kl_divergence(ours_p, ours_q), TD.kl_divergence(theirs_p, theirs_q))


def test_kl_divergence_of_an_unregistered_pair_says_how_to_add_one():
    with pytest.raises(NotImplementedError, match="for p of type Normal and q of type Uniform.*register_kl"):
        D.kl_divergence(D.Normal(0.0, 1.0), D.Uniform(0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# validation, with PyTorch's messages


@pytest.mark.parametrize("make, message", [
    (lambda lib: lib.Normal(jt_or_torch(lib).zeros(2), -jt_or_torch(lib).ones(2)),
     "Expected parameter scale (Tensor of shape (2,)) of distribution Normal(loc: {S}([2]), scale: {S}([2])) to "
     "satisfy the constraint GreaterThan(lower_bound=0.0), but found invalid values:"),
    (lambda lib: lib.Uniform(1.0, 0.0),
     "Expected parameter low (Tensor of shape ()) of distribution Uniform(low: 1.0, high: 0.0) to satisfy the "
     "constraint LessThan(upper_bound=0.0), but found invalid values:"),
    (lambda lib: lib.Bernoulli(probs=jt_or_torch(lib).tensor([0.5, 1.5])),
     "Expected parameter probs (Tensor of shape (2,)) of distribution Bernoulli(probs: {S}([2])) to satisfy the "
     "constraint Interval(lower_bound=0.0, upper_bound=1.0), but found invalid values:"),
    (lambda lib: lib.Bernoulli(), "Either `probs` or `logits` must be specified, but not both."),
    (lambda lib: lib.Normal(jt_or_torch(lib).zeros(2), jt_or_torch(lib).ones(2)).log_prob(jt_or_torch(lib).zeros(3)),
     "Value is not broadcastable with batch_shape+event_shape: {S}([3]) vs {S}([2])."),
    (lambda lib: lib.Categorical(jt_or_torch(lib).tensor([0.5, 0.5])).log_prob(jt_or_torch(lib).tensor(2)),
     "Expected value argument (Tensor of shape ()) to be within the support (IntegerInterval(lower_bound=0, "
     "upper_bound=1)) of the distribution Categorical(probs: {S}([2])), but found invalid values:"),
    (lambda lib: lib.Uniform(0.0, 1.0).log_prob(jt_or_torch(lib).tensor(2.0)),
     "Expected value argument (Tensor of shape ()) to be within the support (Interval(lower_bound=0.0, "
     "upper_bound=1.0)) of the distribution Uniform(low: 0.0, high: 1.0), but found invalid values:"),
])
def test_validation_errors_read_as_pytorchs(make, message, monkeypatch):
    # (PyTorch's default can be switched off by other code in this process, e.g. torch.compile's)
    monkeypatch.setattr(TD.Distribution, "_validate_args", True)
    for lib, size in ((D, "jitorch.Size"), (TD, "torch.Size")):
        with pytest.raises(ValueError) as caught:
            make(lib)
        assert message.format(S=size) in str(caught.value), lib


def jt_or_torch(lib):
    return jt if lib is D else torch


def test_validate_args_false_skips_the_checks():
    dist = D.Normal(jt.zeros(2), -jt.ones(2), validate_args=False)
    assert tuple(dist.log_prob(jt.zeros(2)).shape) == (2,)
    D.Distribution.set_default_validate_args(False)
    try:
        D.Uniform(1.0, 0.0)
    finally:
        D.Distribution.set_default_validate_args(True)
    with pytest.raises(ValueError):
        D.Uniform(1.0, 0.0)


def test_a_compiled_function_draws_and_scores_as_eager_code():
    def f(loc, scale):
        dist = D.Normal(loc, scale, validate_args=False)
        x = dist.rsample((3,))
        return x, dist.log_prob(x)

    loc, scale = jt.tensor(LOC), jt.tensor(SCALE)
    jt.manual_seed(5)
    eager = f(loc, scale)
    jt.manual_seed(5)
    compiled = jt.compile(f)(loc, scale)
    for e, c in zip(eager, compiled):  # (a fused kernel draws its float64 normals in float32)
        np.testing.assert_allclose(c.numpy(), e.numpy(), rtol=1e-6, atol=1e-6)


def test_validation_inside_a_compiled_function_says_to_turn_it_off():
    with pytest.raises(jt.TraceError, match="Pass validate_args=False"):
        jt.compile(lambda loc: D.Normal(loc, 1.0).sample())(jt.zeros(2))
