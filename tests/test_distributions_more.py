"""jitorch.distributions' expand, cdf/icdf, mode, enumerate_support and MultivariateNormal against
torch.distributions: values and gradients in float64 to 1e-12, batch/event shapes, PyTorch's errors,
and a compiled function equal to eager."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as TD

import jitorch as jt
import jitorch.distributions as D

TOL = 1e-12
RNG = np.random.default_rng(5)
LOC = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]])
SCALE = np.array([[1.0, 0.3, 2.5], [0.7, 1.5, 4.0]])
PROBS = np.array([[0.2, 0.5, 0.5], [0.1, 0.9, 0.8]])  # (0.5: Bernoulli's mode is NaN there)


def _close(ours: jt.Tensor, theirs: torch.Tensor, tol: float = TOL) -> None:
    assert tuple(ours.shape) == tuple(theirs.shape), (tuple(ours.shape), tuple(theirs.shape))
    assert ours.dtype.name == str(theirs.dtype).removeprefix("torch."), (ours.dtype, theirs.dtype)
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=tol, atol=tol)


def _spd(*batch: int, k: int = 3) -> np.ndarray:
    a = RNG.standard_normal((*batch, k, k))
    return a @ np.swapaxes(a, -1, -2) + np.eye(k)


MAKERS = {  # name -> (parameters, a value in the support of the batch (2, 3))
    "Normal": (lambda lib, t: lib.Normal(t(LOC), t(SCALE)), LOC + 0.3),
    "Uniform": (lambda lib, t: lib.Uniform(t(LOC), t(LOC + SCALE)), LOC + 0.2 * SCALE),
    "Bernoulli": (lambda lib, t: lib.Bernoulli(probs=t(PROBS)), (PROBS > 0.3).astype(float)),
    "Bernoulli-logits": (lambda lib, t: lib.Bernoulli(logits=t(LOC)), (LOC > 0).astype(float)),
    "Categorical": (lambda lib, t: lib.Categorical(t(PROBS)), np.array([0, 2])),
    "MultivariateNormal": (lambda lib, t: lib.MultivariateNormal(t(LOC), scale_tril=t(np.linalg.cholesky(_SPD))),
                           LOC - 0.1),
}
_SPD = _spd(2)


def _both(name: str):
    make, value = MAKERS[name]
    return make(D, jt.tensor), make(TD, torch.tensor), value


@pytest.mark.parametrize("name", MAKERS)
def test_expand(name):
    ours, theirs, value = _both(name)
    shape = (4, *ours.batch_shape)
    big, big_t = ours.expand(shape), theirs.expand(shape)
    assert type(big) is type(ours)
    assert tuple(big.batch_shape) == tuple(big_t.batch_shape) == shape
    assert tuple(big.event_shape) == tuple(big_t.event_shape)
    assert tuple(ours.batch_shape) == tuple(theirs.batch_shape)  # (the original is untouched)
    assert tuple(big.sample((2,)).shape) == tuple(big_t.sample((2,)).shape)
    _close(big.log_prob(jt.tensor(value)), big_t.log_prob(torch.tensor(value)))
    _close(big.entropy(), big_t.entropy())
    _close(big.mean, big_t.mean)


def test_expand_broadcasts_a_size_one_dim_and_keeps_gradients():
    loc = jt.tensor(LOC[:1], requires_grad=True)
    loc_t = torch.tensor(LOC[:1], requires_grad=True)
    big, big_t = D.Normal(loc, 2.0).expand((5, 2, 3)), TD.Normal(loc_t, 2.0).expand((5, 2, 3))
    value = RNG.standard_normal((5, 2, 3))
    big.log_prob(jt.tensor(value)).sum().backward()
    big_t.log_prob(torch.tensor(value)).sum().backward()
    _close(loc.grad, loc_t.grad)
    assert tuple(D.Normal(0.0, 1.0).expand((3,)).sample().shape) == (3,)
    with pytest.raises(RuntimeError):
        D.Normal(jt.tensor(LOC), 1.0).expand((4, 3))
    with pytest.raises(RuntimeError):
        TD.Normal(torch.tensor(LOC), 1.0).expand((4, 3))


@pytest.mark.parametrize("name", ["Normal", "Uniform"])
def test_cdf_and_icdf(name):
    params = (LOC, SCALE) if name == "Normal" else (LOC, LOC + SCALE)
    ours_params = [jt.tensor(p, requires_grad=True) for p in params]
    theirs_params = [torch.tensor(p, requires_grad=True) for p in params]
    ours, theirs = getattr(D, name)(*ours_params), getattr(TD, name)(*theirs_params)
    q = np.array([[0.01, 0.3, 0.5], [0.7, 0.99, 0.25]])
    ours_x, theirs_x = ours.icdf(jt.tensor(q)), theirs.icdf(torch.tensor(q))
    _close(ours_x, theirs_x)
    _close(ours.cdf(ours_x.detach()), theirs.cdf(theirs_x.detach()))
    np.testing.assert_allclose(ours.cdf(ours_x.detach()).detach().numpy(), q, rtol=1e-10)
    (ours_x * 2).sum().backward()
    (theirs_x * 2).sum().backward()
    for p, t in zip(ours_params, theirs_params):
        _close(p.grad, t.grad)


@pytest.mark.parametrize("name", MAKERS)
def test_mode_variance_stddev(name):
    ours, theirs, _ = _both(name)
    for prop in ("mode", "mean", "variance", "stddev"):
        _close(getattr(ours, prop), getattr(theirs, prop))  # (NaN where PyTorch has NaN)
    if name.startswith("Bernoulli") or name == "Uniform":
        assert np.isnan(ours.mode.numpy()).any() == np.isnan(theirs.mode.numpy()).any()


@pytest.mark.parametrize("name", ["Bernoulli", "Categorical"])
def test_enumerate_support_and_perplexity(name):
    ours, theirs, _ = _both(name)
    assert ours.has_enumerate_support and theirs.has_enumerate_support
    for expand in (True, False):
        _close(ours.enumerate_support(expand), theirs.enumerate_support(expand))
    _close(ours.perplexity(), theirs.perplexity())
    assert tuple(ours.param_shape) == tuple(theirs.param_shape)


def test_unimplemented_methods_say_which_distribution():
    with pytest.raises(NotImplementedError, match="Categorical does not implement cdf"):
        D.Categorical(jt.tensor(PROBS)).cdf(jt.tensor([0, 1]))
    with pytest.raises(NotImplementedError, match="Bernoulli does not implement icdf"):
        D.Bernoulli(jt.tensor(PROBS)).icdf(jt.tensor(0.5))
    with pytest.raises(NotImplementedError, match="Normal does not implement enumerate_support"):
        D.Normal(0.0, 1.0).enumerate_support()


# ---------------------------------------------------------------------------------------------
# MultivariateNormal


MVN_CASES = [  # (loc shape, matrix batch shape)
    ((3,), ()),
    ((2, 3), ()),
    ((4, 1, 3), (2,)),  # batch dims broadcast between loc and the matrix
]


@pytest.mark.parametrize("param", ["covariance_matrix", "precision_matrix", "scale_tril"])
@pytest.mark.parametrize("loc_shape,matrix_batch", MVN_CASES)
def test_multivariate_normal_matches_pytorch(param, loc_shape, matrix_batch):
    cov = _spd(*matrix_batch)
    matrix = {"covariance_matrix": cov, "precision_matrix": np.linalg.inv(cov),
              "scale_tril": np.linalg.cholesky(cov)}[param]
    loc, m = jt.tensor(RNG.standard_normal(loc_shape), requires_grad=True), jt.tensor(matrix, requires_grad=True)
    loc_t, m_t = torch.tensor(loc.detach().numpy(), requires_grad=True), torch.tensor(matrix, requires_grad=True)
    ours, theirs = D.MultivariateNormal(loc, **{param: m}), TD.MultivariateNormal(loc_t, **{param: m_t})
    assert tuple(ours.batch_shape) == tuple(theirs.batch_shape)
    assert tuple(ours.event_shape) == tuple(theirs.event_shape) == (3,)
    assert repr(ours).replace("jitorch", "torch") == repr(theirs)
    value = RNG.standard_normal((5, *theirs.batch_shape, 3))
    log_p, log_p_t = ours.log_prob(jt.tensor(value)), theirs.log_prob(torch.tensor(value))
    _close(log_p, log_p_t, 1e-10)
    _close(ours.entropy(), theirs.entropy(), 1e-10)
    for prop in ("mean", "mode", "variance", "stddev", "covariance_matrix", "precision_matrix", "scale_tril"):
        _close(getattr(ours, prop), getattr(theirs, prop), 1e-10)
    (log_p.sum() + 2 * ours.entropy().sum()).backward()
    (log_p_t.sum() + 2 * theirs.entropy().sum()).backward()
    _close(loc.grad, loc_t.grad, 1e-10)
    _close(m.grad, m_t.grad, 1e-10)


def test_multivariate_normal_rsample_is_loc_plus_scale_tril_times_normals():
    cov = _spd(2)
    loc = jt.tensor(LOC, requires_grad=True)
    dist = D.MultivariateNormal(loc, covariance_matrix=jt.tensor(cov))
    jt.manual_seed(3)
    x = dist.rsample((4,))
    jt.manual_seed(3)
    eps = jt.randn(4, 2, 3, dtype=jt.float64).numpy()
    assert tuple(x.shape) == (4, 2, 3)
    expected = LOC + np.einsum("bij,sbj->sbi", np.linalg.cholesky(cov), eps)
    np.testing.assert_allclose(x.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    x.sum().backward()
    np.testing.assert_allclose(loc.grad.numpy(), np.full(LOC.shape, 4.0))
    assert not dist.sample().requires_grad


def test_multivariate_normal_sample_moments():
    cov = _spd()
    jt.manual_seed(4)
    samples = D.MultivariateNormal(jt.tensor(LOC[0]), jt.tensor(cov)).sample((100_000,)).numpy()
    np.testing.assert_allclose(np.cov(samples.T), cov, rtol=0.05, atol=0.05 * np.abs(cov).max())
    assert np.all(np.abs(samples.mean(0) - LOC[0]) < 5 * np.sqrt(np.diag(cov) / 100_000))


def test_kl_multivariate_normal():
    p_cov, q_cov = _spd(2), _spd()
    ours = D.kl_divergence(D.MultivariateNormal(jt.tensor(LOC), jt.tensor(p_cov)),
                           D.MultivariateNormal(jt.tensor(LOC[0] + 1), scale_tril=jt.tensor(np.linalg.cholesky(q_cov))))
    theirs = TD.kl_divergence(TD.MultivariateNormal(torch.tensor(LOC), torch.tensor(p_cov)),
                              TD.MultivariateNormal(torch.tensor(LOC[0] + 1),
                                                    scale_tril=torch.tensor(np.linalg.cholesky(q_cov))))
    _close(ours, theirs, 1e-10)


@pytest.mark.parametrize("call, error, message", [
    (lambda lib, t: lib.MultivariateNormal(t(np.zeros(3))), ValueError,
     "Exactly one of covariance_matrix or precision_matrix or scale_tril may be specified."),
    (lambda lib, t: lib.MultivariateNormal(t(np.zeros(3)), t(np.eye(3)), scale_tril=t(np.eye(3))), ValueError,
     "Exactly one of covariance_matrix or precision_matrix or scale_tril may be specified."),
    (lambda lib, t: lib.MultivariateNormal(t(np.float64(0.0)), t(np.eye(3))), ValueError,
     "loc must be at least one-dimensional"),
    (lambda lib, t: lib.MultivariateNormal(t(np.zeros(3)), t(np.ones(3))), ValueError,
     "covariance_matrix must be at least two-dimensional"),
    (lambda lib, t: lib.MultivariateNormal(t(np.zeros(3)), t(-np.eye(3))), ValueError,
     "to satisfy the constraint PositiveDefinite()"),
    (lambda lib, t: lib.MultivariateNormal(t(np.zeros(2)), scale_tril=t(np.ones((2, 2)))), ValueError,
     "to satisfy the constraint LowerCholesky()"),
])
def test_multivariate_normal_errors_read_as_pytorchs(call, error, message, monkeypatch):
    monkeypatch.setattr(TD.Distribution, "_validate_args", True)
    for lib, t in ((D, jt.tensor), (TD, torch.tensor)):
        with pytest.raises(error) as caught:
            call(lib, t)
        assert message in str(caught.value), (lib, str(caught.value))


def test_multivariate_normal_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"covariance_matrix of shape \(2, 2\) does not match loc of shape \(3,\)"):
        D.MultivariateNormal(jt.zeros(3), jt.eye(2))


def test_compiled_matches_eager():
    cov = _spd(2)

    def f(loc, scale_tril, q):
        mvn = D.MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)
        normal = D.Normal(loc, 1.5, validate_args=False).expand((4, 2, 3))
        total = mvn.log_prob(loc * 0.5).sum() + mvn.entropy().sum() + normal.icdf(q).sum()
        return total + D.Uniform(loc, loc + 1, validate_args=False).icdf(q).sum() + normal.log_prob(q).sum()

    q = RNG.uniform(0.05, 0.95, (4, 2, 3))
    results = []
    for run in (f, jt.compile(f)):
        loc = jt.tensor(LOC, requires_grad=True)
        scale_tril = jt.tensor(np.linalg.cholesky(cov), requires_grad=True)
        out = run(loc, scale_tril, jt.tensor(q))
        out.backward()
        results.append((out.detach().numpy(), loc.grad.numpy(), scale_tril.grad.numpy()))
    for eager, compiled in zip(*results):
        np.testing.assert_allclose(compiled, eager, rtol=1e-10, atol=1e-10)
    assert math.isfinite(float(results[0][0]))
