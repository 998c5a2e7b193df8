"""jitorch.linalg's pinv, matrix_rank, matrix_power, cond, solve_triangular, cross, diagonal, vecdot,
multi_dot, matmul and vander against torch.linalg in float64: values and gradients (to ~1e-8),
float32 values, the errors, and a compiled function equal to eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt
from tests.test_linalg import _compare, _invertible, _random, _spd

RNG = np.random.default_rng(17)


def _rank_deficient(rng, m: int, n: int, rank: int) -> np.ndarray:
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))


def _case(name, arrays, jt_fn, torch_fn):
    return pytest.param(arrays, jt_fn, torch_fn, id=name)


CASES = [
    _case("pinv_tall", [_random(RNG, 2, 5, 3)], jt.linalg.pinv, torch.linalg.pinv),
    _case("pinv_wide", [_random(RNG, 3, 6)], jt.linalg.pinv, torch.linalg.pinv),
    _case("pinv_rtol", [_random(RNG, 4, 4)], lambda a: jt.linalg.pinv(a, rtol=0.2),
          lambda a: torch.linalg.pinv(a, rtol=0.2)),
    _case("pinv_atol_rtol", [_random(RNG, 2, 4, 3)], lambda a: jt.linalg.pinv(a, atol=0.5, rtol=0.1),
          lambda a: torch.linalg.pinv(a, atol=0.5, rtol=0.1)),
    _case("pinv_rank_deficient", [_rank_deficient(RNG, 5, 4, 2)], jt.linalg.pinv, torch.linalg.pinv),
    _case("pinv_rcond", [_random(RNG, 4, 3)], lambda a: jt.linalg.pinv(a, 0.3), lambda a: torch.linalg.pinv(a, 0.3)),
    _case("matrix_rank", [np.stack([_rank_deficient(RNG, 4, 5, 2), np.zeros((4, 5)), np.eye(4, 5)])],
          jt.linalg.matrix_rank, torch.linalg.matrix_rank),
    _case("matrix_rank_tols", [np.stack([_rank_deficient(RNG, 4, 5, 3), np.eye(4, 5)])],
          lambda a: jt.linalg.matrix_rank(a, atol=1.0, rtol=0.1), lambda a: torch.linalg.matrix_rank(a, atol=1.0,
                                                                                                     rtol=0.1)),
    _case("matrix_rank_tol", [_rank_deficient(RNG, 5, 5, 4)], lambda a: jt.linalg.matrix_rank(a, 1e-3),
          lambda a: torch.linalg.matrix_rank(a, 1e-3)),
    _case("matrix_rank_hermitian", [_spd(RNG, 4, 4) - 6 * np.eye(4)],
          lambda a: jt.linalg.matrix_rank(a, hermitian=True), lambda a: torch.linalg.matrix_rank(a, hermitian=True)),
    *[_case(f"matrix_power{n}", [_random(RNG, 2, 3, 3) + 2 * np.eye(3)], lambda a, n=n: jt.linalg.matrix_power(a, n),
            lambda a, n=n: torch.linalg.matrix_power(a, n)) for n in (0, 1, 2, 5, 6, -1, -3)],
    _case("matrix_power_top_level", [_random(RNG, 3, 3)], lambda a: jt.matrix_power(a, 3),
          lambda a: torch.matrix_power(a, 3)),
    _case("cond", [_invertible(RNG, 2, 3, 3)], jt.linalg.cond, torch.linalg.cond),
    _case("cond_-2", [_random(RNG, 4, 3)], lambda a: jt.linalg.cond(a, -2), lambda a: torch.linalg.cond(a, -2)),
    _case("cross", [_random(RNG, 1, 4, 3), _random(RNG, 2, 1, 3)], jt.linalg.cross, torch.linalg.cross),
    _case("cross_dim0", [_random(RNG, 3, 2), _random(RNG, 3, 2)], lambda a, b: jt.linalg.cross(a, b, dim=0),
          lambda a, b: torch.linalg.cross(a, b, dim=0)),
    _case("diagonal", [_random(RNG, 2, 4, 3)], lambda a: jt.linalg.diagonal(a, offset=1),
          lambda a: torch.linalg.diagonal(a, offset=1)),
    _case("diagonal_dims", [_random(RNG, 2, 4, 3)], lambda a: jt.linalg.diagonal(a, offset=-1, dim1=0, dim2=1),
          lambda a: torch.linalg.diagonal(a, offset=-1, dim1=0, dim2=1)),
    _case("vecdot", [_random(RNG, 2, 4, 3), _random(RNG, 4, 3)], lambda a, b: jt.linalg.vecdot(a, b, dim=1),
          lambda a, b: torch.linalg.vecdot(a, b, dim=1)),
    _case("matmul", [_random(RNG, 2, 4, 3), _random(RNG, 3)], jt.linalg.matmul, torch.linalg.matmul),
    _case("multi_dot_vectors", [_random(RNG, 5), _random(RNG, 5, 2), _random(RNG, 2, 7), _random(RNG, 7)],
          lambda *m: jt.linalg.multi_dot(m), lambda *m: torch.linalg.multi_dot(m)),
    _case("multi_dot_chain", [_random(RNG, 3, 5), _random(RNG, 5, 20), _random(RNG, 20, 2), _random(RNG, 2, 9)],
          lambda *m: jt.linalg.multi_dot(m), lambda *m: torch.linalg.multi_dot(m)),
    _case("vander", [_random(RNG, 2, 4)], jt.linalg.vander, torch.linalg.vander),
    _case("vander_N", [_random(RNG, 4)], lambda x: jt.linalg.vander(x, N=6), lambda x: torch.linalg.vander(x, N=6)),
    *[_case(f"solve_triangular_{upper}_{left}_{unit}",
            [_random(RNG, 2, 3, 3) + 3 * np.eye(3), _random(RNG, 3, 4) if left else _random(RNG, 4, 3)],
            lambda a, b, kw={"upper": upper, "left": left, "unitriangular": unit}: jt.linalg.solve_triangular(
                a, b, **kw),
            lambda a, b, kw={"upper": upper, "left": left, "unitriangular": unit}: torch.linalg.solve_triangular(
                a, b, **kw))
      for upper in (True, False) for left in (True, False) for unit in (True, False)],
]


@pytest.mark.parametrize("arrays, jt_fn, torch_fn", CASES)
def test_matches_pytorch(arrays, jt_fn, torch_fn):
    _compare(jt_fn, torch_fn, arrays)


def test_pinv_of_a_rank_deficient_matrix_and_its_identities():
    A = _rank_deficient(RNG, 5, 4, 2)
    P = jt.linalg.pinv(jt.tensor(A))
    np.testing.assert_allclose(P.numpy(), torch.linalg.pinv(torch.tensor(A)).numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(A @ P.numpy() @ A, A, atol=1e-10)  # (Moore-Penrose: A P A = A)
    assert jt.linalg.matrix_rank(jt.tensor(A)).item() == 2
    assert tuple(jt.linalg.pinv(jt.zeros(2, 0, 3, dtype=jt.float64)).shape) == (2, 3, 0)


def test_pinv_hermitian_reads_the_lower_triangle():
    S = _spd(RNG, 2, 4, 4) - 5 * np.eye(4)  # symmetric, indefinite
    lower_only = np.tril(S) + np.triu(RNG.standard_normal((4, 4)), 1)  # garbage above the diagonal
    _compare(lambda a: jt.linalg.pinv(a, hermitian=True), lambda a: torch.linalg.pinv(a, hermitian=True), [lower_only])
    np.testing.assert_allclose(jt.linalg.pinv(jt.tensor(lower_only), hermitian=True).numpy(), np.linalg.pinv(S),
                               rtol=1e-8, atol=1e-10)


def test_float32():
    A = _random(RNG, 2, 5, 3).astype(np.float32)
    for jt_fn, torch_fn in ((jt.linalg.pinv, torch.linalg.pinv),
                            (lambda a: jt.linalg.matrix_power(a[:, :3], 3),
                             lambda a: torch.linalg.matrix_power(a[:, :3], 3))):
        out, expected = jt_fn(jt.tensor(A)), torch_fn(torch.tensor(A))
        assert out.dtype is jt.float32
        np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, error, message", [
    (lambda m, t: m.linalg.matrix_power(t(np.ones((2, 3))), 2), RuntimeError,
     "linalg.matrix_power: A must be batches of square matrices, but they are 2 by 3 matrices"),
    (lambda m, t: m.linalg.pinv(t(np.ones(3))), RuntimeError, "dimensions"),
    (lambda m, t: m.linalg.cross(t(np.ones((2, 2))), t(np.ones((2, 2)))), RuntimeError,
     "linalg.cross: inputs dimension -1 must have length 3. Got 2 and 2"),
    (lambda m, t: m.linalg.cross(t(np.ones((4, 3))), t(np.ones((2, 1, 3)))), RuntimeError,
     "linalg.cross: inputs must have the same number of dimensions"),
    (lambda m, t: m.linalg.multi_dot([t(np.ones(2))]), RuntimeError,
     "multi_dot(): expected at least 2 tensors but got 1"),
    (lambda m, t: m.linalg.multi_dot([t(np.ones((2, 3))), t(np.ones((2, 3)))]), RuntimeError,
     "multi_dot(): tensors 0 and 1 with shapes"),
    (lambda m, t: m.linalg.multi_dot([t(np.ones((2, 3))), t(np.ones((2, 3, 3)))]), RuntimeError,
     "multi_dot(): the last tensor must be 1D or 2D but got 3D"),
    (lambda m, t: m.linalg.vander(t(np.ones(3)), N=1), RuntimeError, "N must be greater than 1."),
    (lambda m, t: m.linalg.matrix_rank(t(np.ones((2, 3), dtype=np.int64))), TypeError, None),
])
def test_errors_match_pytorch(call, error, message):
    for module, make in ((torch, torch.tensor), (jt, jt.tensor)):
        with pytest.raises(Exception) as caught:
            call(module, make)
        if module is jt:  # (jitorch's ShapeError is a RuntimeError, as PyTorch's)
            assert isinstance(caught.value, error), (type(caught.value), error)
        if message is not None:
            assert message in str(caught.value), (module.__name__, str(caught.value))


def test_matrix_power_zero_is_the_identity_with_a_zero_gradient():
    A = jt.tensor(_random(RNG, 2, 3, 3), requires_grad=True)
    out = jt.linalg.matrix_power(A, 0)
    np.testing.assert_array_equal(out.detach().numpy(), np.broadcast_to(np.eye(3), (2, 3, 3)))
    out.sum().backward()
    np.testing.assert_array_equal(A.grad.numpy(), np.zeros((2, 3, 3)))


def test_a_compiled_function_equals_eager():
    A, B = _random(RNG, 2, 4, 3), _random(RNG, 2, 3, 3) + 3 * np.eye(3)

    def f(A, B):
        return (jt.linalg.pinv(A).sum() + jt.linalg.matrix_power(B, -2).sum() + jt.linalg.matrix_power(B, 3).sum()
                + jt.linalg.solve_triangular(B, A.mT, upper=True).sum() + jt.linalg.cond(B).sum()
                + jt.linalg.multi_dot([A[0], B[0], B[1]]).sum() + jt.linalg.vander(A[0, 0]).sum()
                + jt.linalg.matrix_rank(A).sum())

    results = []
    for fn in (f, jt.compile(f)):
        a, b = jt.tensor(A, requires_grad=True), jt.tensor(B, requires_grad=True)
        out = fn(a, b)
        out.backward()
        results.append((out.item(), a.grad.numpy(), b.grad.numpy()))
    for eager, compiled in zip(*results):
        np.testing.assert_allclose(compiled, eager, rtol=1e-10, atol=1e-12)
