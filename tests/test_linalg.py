"""jitorch.linalg against torch.linalg in float64: values and gradients (to ~1e-8), batched and
not, the errors, and compiled functions equal to eager ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch.primitives import PRIMS, PrimKind

RTOL = ATOL = 1e-8


def _random(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape)


def _spd(rng, *shape) -> np.ndarray:
    """Symmetric positive-definite matrices (well conditioned)."""
    a = rng.standard_normal(shape)
    return a @ np.swapaxes(a, -1, -2) + shape[-1] * np.eye(shape[-1])


def _invertible(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape) + 3 * np.eye(shape[-1])


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, tuple) else (out,)


def _compare(fn_jt, fn_torch, arrays: list[np.ndarray], seed: int = 0) -> None:
    """Outputs equal, and the gradients of a random weighted sum of the float outputs equal."""
    xs = [jt.tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    outs_jt, outs_torch = _as_tuple(fn_jt(*xs)), _as_tuple(fn_torch(*ts))
    assert len(outs_jt) == len(outs_torch)
    rng = np.random.default_rng(seed)
    loss_jt = loss_torch = 0
    for oj, ot in zip(outs_jt, outs_torch):
        assert tuple(oj.shape) == tuple(ot.shape)
        np.testing.assert_allclose(oj.detach().numpy(), ot.detach().numpy(), rtol=RTOL, atol=ATOL)
        if ot.dtype.is_floating_point and ot.numel():
            w = rng.standard_normal(tuple(ot.shape))
            loss_jt = loss_jt + (oj * jt.tensor(w)).sum()
            loss_torch = loss_torch + (ot * torch.tensor(w)).sum()
    if isinstance(loss_torch, int):
        return
    grads_torch = torch.autograd.grad(loss_torch, ts, allow_unused=True)
    if not loss_jt.requires_grad:  # piecewise constant (a count): PyTorch's gradient is zero
        assert all(g is None or not g.any() for g in grads_torch)
        return
    for gj, gt in zip(jt.autograd.grad(loss_jt, xs), grads_torch):
        np.testing.assert_allclose(gj.numpy(), gt.numpy(), rtol=RTOL, atol=ATOL)


def _gauge_invariant(U, S, Vh):
    """Functions of the SVD that do not depend on the signs LAPACK picks for singular vectors."""
    return U * U, S, Vh * Vh, (U * S.unsqueeze(-2)) @ Vh


def _solution_differentiable(solution, residuals, rank, singular_values):
    """lstsq's outputs with only the solution differentiable, as in PyTorch (jitorch's residuals and
    singular values have gradients too)."""
    return solution, residuals.detach(), rank, singular_values.detach()


def _case(name, make, jt_fn, torch_fn):
    return pytest.param(make, jt_fn, torch_fn, id=name)


_rng = np.random.default_rng(7)
CASES = [
    *[_case(f"inv{s}", lambda r, s=s: [_invertible(r, *s)], jt.linalg.inv, torch.linalg.inv)
      for s in [(4, 4), (2, 3, 3)]],
    *[_case(f"det{s}", lambda r, s=s: [_random(r, *s)], jt.linalg.det, torch.linalg.det)
      for s in [(3, 3), (2, 2, 4, 4)]],
    *[_case(f"slogdet{s}", lambda r, s=s: [_random(r, *s)], lambda a: tuple(jt.linalg.slogdet(a)),
            lambda a: tuple(torch.linalg.slogdet(a))) for s in [(3, 3), (2, 4, 4)]],
    _case("solve", lambda r: [_invertible(r, 4, 4), _random(r, 4, 2)], jt.linalg.solve, torch.linalg.solve),
    _case("solve_batched", lambda r: [_invertible(r, 2, 3, 3), _random(r, 2, 3, 5)], jt.linalg.solve,
          torch.linalg.solve),
    _case("solve_broadcast", lambda r: [_invertible(r, 2, 1, 3, 3), _random(r, 4, 3, 2)], jt.linalg.solve,
          torch.linalg.solve),
    _case("solve_vector", lambda r: [_invertible(r, 2, 3, 3), _random(r, 2, 3)], jt.linalg.solve, torch.linalg.solve),
    _case("solve_right", lambda r: [_invertible(r, 3, 3), _random(r, 2, 3)],
          lambda a, b: jt.linalg.solve(a, b, left=False), lambda a, b: torch.linalg.solve(a, b, left=False)),
    *[_case(f"cholesky_upper={u}", lambda r: [_spd(r, 2, 4, 4)], lambda a, u=u: jt.linalg.cholesky(a, upper=u),
            lambda a, u=u: torch.linalg.cholesky(a, upper=u)) for u in (False, True)],
    *[_case(f"qr{s}", lambda r, s=s: [_random(r, *s)], lambda a: tuple(jt.linalg.qr(a)),
            lambda a: tuple(torch.linalg.qr(a))) for s in [(5, 3), (3, 3), (2, 3, 5)]],
    _case("qr_complete_wide", lambda r: [_random(r, 3, 4)], lambda a: tuple(jt.linalg.qr(a, "complete")),
          lambda a: tuple(torch.linalg.qr(a, "complete"))),
    _case("eigh", lambda r: [_spd(r, 2, 4, 4)], lambda a: tuple(jt.linalg.eigh(a)),
          lambda a: tuple(torch.linalg.eigh(a))),
    _case("eigh_upper", lambda r: [_spd(r, 3, 3)], lambda a: tuple(jt.linalg.eigh(a, "U")),
          lambda a: tuple(torch.linalg.eigh(a, "U"))),
    *[_case(f"svd{s}", lambda r, s=s: [_random(r, *s)],
            lambda a: _gauge_invariant(*jt.linalg.svd(a, full_matrices=False)),
            lambda a: _gauge_invariant(*torch.linalg.svd(a, full_matrices=False)))
      for s in [(5, 3), (4, 4), (2, 3, 5)]],
    _case("svd_full_matrices", lambda r: [_random(r, 2, 5, 3)],
          lambda a: (lambda U, S, Vh: (S, (U[..., :3] * S.unsqueeze(-2)) @ Vh))(*jt.linalg.svd(a)),
          lambda a: (lambda U, S, Vh: (S, (U[..., :3] * S.unsqueeze(-2)) @ Vh))(*torch.linalg.svd(a))),
    *[_case(f"svdvals{s}", lambda r, s=s: [_random(r, *s)], jt.linalg.svdvals, torch.linalg.svdvals)
      for s in [(5, 3), (2, 3, 5)]],
    _case("lstsq_tall", lambda r: [_random(r, 2, 6, 3), _random(r, 2, 6, 2)], lambda a, b: jt.linalg.lstsq(a, b)[:3],
          lambda a, b: torch.linalg.lstsq(a, b)[:3]),
    _case("lstsq_gelsd", lambda r: [_random(r, 6, 3), _random(r, 6, 2)],
          lambda a, b: _solution_differentiable(*jt.linalg.lstsq(a, b, driver="gelsd")),
          lambda a, b: _solution_differentiable(*torch.linalg.lstsq(a, b, driver="gelsd"))),
    _case("lstsq_wide", lambda r: [_random(r, 3, 5), _random(r, 3, 2)], lambda a, b: jt.linalg.lstsq(a, b).solution,
          lambda a, b: torch.linalg.lstsq(a, b, driver="gelsd").solution),
    *[_case(f"vector_norm_{o}", lambda r: [_random(r, 3, 4)], lambda a, o=o: jt.linalg.vector_norm(a, o, dim=-1),
            lambda a, o=o: torch.linalg.vector_norm(a, o, dim=-1)) for o in (2, 1, 0, 3.5, -1.5, math.inf, -math.inf)],
    _case("vector_norm_all_keepdim", lambda r: [_random(r, 3, 4)], lambda a: jt.linalg.vector_norm(a, keepdim=True),
          lambda a: torch.linalg.vector_norm(a, keepdim=True)),
    *[_case(f"matrix_norm_{o}", lambda r: [_random(r, 2, 4, 3)], lambda a, o=o: jt.linalg.matrix_norm(a, o),
            lambda a, o=o: torch.linalg.matrix_norm(a, o)) for o in ("fro", "nuc", 1, -1, 2, -2, math.inf, -math.inf)],
    *[_case(f"matrix_norm_{o}_dims", lambda r: [_random(r, 3, 2, 4)],
            lambda a, o=o: jt.linalg.matrix_norm(a, o, dim=(2, 0), keepdim=True),
            lambda a, o=o: torch.linalg.matrix_norm(a, o, dim=(2, 0), keepdim=True)) for o in ("nuc", 1, -math.inf)],
    _case("norm_flat", lambda r: [_random(r, 2, 3, 4)], jt.linalg.norm, torch.linalg.norm),
    _case("norm_matrix", lambda r: [_random(r, 3, 4)], lambda a: jt.linalg.norm(a, 2),
          lambda a: torch.linalg.norm(a, 2)),
    _case("norm_dim", lambda r: [_random(r, 3, 4)], lambda a: jt.linalg.norm(a, 3, dim=1),
          lambda a: torch.linalg.norm(a, 3, dim=1)),
]


@pytest.mark.parametrize("make, jt_fn, torch_fn", CASES)
def test_values_and_gradients_match_pytorch(make, jt_fn, torch_fn):
    _compare(jt_fn, torch_fn, make(np.random.default_rng(0)))


def test_norm_gradient_at_zero_is_zero_as_in_pytorch():
    x = jt.zeros(3, dtype=jt.float64, requires_grad=True)
    jt.linalg.vector_norm(x).backward()
    assert x.grad.numpy().tolist() == [0.0, 0.0, 0.0]


def test_the_factorizations_are_kept_out_of_fused_kernels():
    for name in ("inv", "det", "slogdet", "solve", "cholesky", "qr", "eigh", "svd", "svdvals"):
        assert PRIMS[name].kind is PrimKind.MATMUL, name


def test_a_compiled_function_of_inv_solve_and_det_equals_eager():
    rng = np.random.default_rng(3)
    A, B = jt.tensor(_invertible(rng, 2, 3, 3)), jt.tensor(_random(rng, 2, 3, 2))

    def f(A, B):
        return (jt.linalg.inv(A) @ B + jt.linalg.solve(A, B) * jt.linalg.det(A)[:, None, None]).exp().sum()

    compiled = jt.compile(f)
    eager_A = A.clone().requires_grad_(True)
    compiled_A = A.clone().requires_grad_(True)
    eager, traced = f(eager_A, B), compiled(compiled_A, B)
    np.testing.assert_allclose(traced.item(), eager.item(), rtol=1e-12)
    eager.backward()
    traced.backward()
    np.testing.assert_allclose(compiled_A.grad.numpy(), eager_A.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_a_compiled_function_of_the_factorizations_equals_eager():
    rng = np.random.default_rng(8)
    spd, tall = _spd(rng, 2, 4, 4), _random(rng, 2, 5, 3)

    def f(S, B):
        eigenvalues, eigenvectors = jt.linalg.eigh(S)
        Q, R = jt.linalg.qr(B)
        return (eigenvalues.sum() + (eigenvectors ** 2 * 3).sum() + (Q ** 2 * 2).sum() + R.sum()
                + jt.linalg.slogdet(S).logabsdet.sum() + jt.linalg.cholesky(S).sum()
                + jt.linalg.matrix_norm(B, "nuc").sum())

    results = []
    for fn in (f, jt.compile(f)):
        S, B = jt.tensor(spd, requires_grad=True), jt.tensor(tall, requires_grad=True)
        out = fn(S, B)
        out.backward()
        results.append((out.item(), S.grad.numpy(), B.grad.numpy()))
    for eager, compiled in zip(*results):
        np.testing.assert_allclose(compiled, eager, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("a", [np.array([[1.0, 2.0], [2.0, 4.0]]), np.array([[1.0, 2, 3], [2, 4, 6], [0, 1, 5]])],
                         ids=["rank1", "rank2"])
def test_the_det_gradient_of_a_singular_matrix_is_its_cofactor_matrix(a):
    """As PyTorch's in grad mode (its first-order path gives zeros there)."""
    x, t = jt.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    (gx,) = jt.autograd.grad(jt.linalg.det(x), x)
    (gt,) = torch.autograd.grad(torch.linalg.det(t), t, create_graph=True)
    np.testing.assert_allclose(gx.numpy(), gt.detach().numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["inv", "det"])
def test_double_backward(name):
    a = _invertible(np.random.default_rng(4), 3, 3)
    x, t = jt.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    (gx,) = jt.autograd.grad(getattr(jt.linalg, name)(x).sum(), x, create_graph=True)
    (gt,) = torch.autograd.grad(getattr(torch.linalg, name)(t).sum(), t, create_graph=True)
    (ggx,), (ggt,) = jt.autograd.grad((gx ** 2).sum(), x), torch.autograd.grad((gt ** 2).sum(), t)
    np.testing.assert_allclose(ggx.numpy(), ggt.numpy(), rtol=RTOL, atol=ATOL)


def test_complete_qr_of_a_tall_matrix_has_no_gradient_as_in_pytorch():
    x = jt.tensor(_random(np.random.default_rng(6), 5, 3), requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"\(5, 3\) is not differentiable when mode='complete'"):
        jt.linalg.qr(x, "complete").Q.sum().backward()


def test_float32_stays_float32():
    a = jt.tensor(_invertible(np.random.default_rng(5), 3, 3), dtype=jt.float32)
    assert jt.linalg.inv(a).dtype is jt.float32
    assert jt.linalg.eigh(a @ a.mT).eigenvalues.dtype is jt.float32


# ---------------------------------------------------------------------------------------------
# errors


def test_a_singular_matrix_names_the_batch_element():
    a = np.stack([np.eye(3), np.ones((3, 3))])
    with pytest.raises(jt.linalg.LinAlgError, match=r"\(2, 3, 3\) float64.*\(Batch element 1\).*singular"):
        jt.linalg.inv(jt.tensor(a))
    with pytest.raises(RuntimeError, match="singular"):  # a RuntimeError, as PyTorch's
        jt.linalg.solve(jt.tensor(np.ones((2, 2))), jt.tensor(np.ones((2, 1))))


def test_a_matrix_that_is_not_positive_definite_names_the_minor():
    with pytest.raises(jt.linalg.LinAlgError, match="leading minor of order 2 is not positive-definite"):
        jt.linalg.cholesky(jt.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=jt.float64))


@pytest.mark.parametrize("call, message", [
    (lambda: jt.linalg.inv(jt.ones(3, 4)), r"square matrices, but they are 3 by 4 matrices \(shape \(3, 4\)\)"),
    (lambda: jt.linalg.det(jt.ones(3)), r"at least 2 dimensions; got shape \(3,\)"),
    (lambda: jt.linalg.solve(jt.ones(3, 3), jt.ones(4, 2)), r"Incompatible shapes .* \(\(3, 3\) and \(4, 2\)\)"),
    (lambda: jt.linalg.qr(jt.ones(3, 3), mode="thin"), "unrecognized mode 'thin'"),
    (lambda: jt.linalg.matrix_norm(jt.ones(3, 3), 3), "Order 3 not supported"),
    (lambda: jt.linalg.norm(jt.ones(2, 3, 4), 2), r"must be 1D or 2D. Got 3D \(shape \(2, 3, 4\)\)"),
])
def test_shape_errors_name_the_shapes(call, message):
    with pytest.raises((RuntimeError, ValueError), match=message):
        call()


def test_integer_input_is_a_type_error_naming_the_dtype():
    with pytest.raises(TypeError, match=r"linalg.inv: Expected a floating point tensor as input. Got int64"):
        jt.linalg.inv(jt.ones(3, 3, dtype=jt.int64))
