"""The "more ops" section of jitorch/ops.py where the op harness can't reach: in-place random fills
(moments, and determinism under manual_seed), unique's variants, errors beside PyTorch's, and the
views that share storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt

# ---------------------------------------------------------------------------------------------
# in-place random fills


def _fill(method: str, *args, dtype=jt.float32, n: int = 200_000) -> np.ndarray:
    x = jt.empty(n, dtype=dtype)
    assert getattr(x, method)(*args) is x
    return x.numpy()


@pytest.mark.parametrize("method, args, mean, var", [
    ("bernoulli_", (0.3,), 0.3, 0.3 * 0.7),
    ("exponential_", (2.0,), 0.5, 0.25),
    ("random_", (3, 9), 5.5, (6 ** 2 - 1) / 12),
    ("uniform_", (-1.0, 3.0), 1.0, 16 / 12),
    ("normal_", (2.0, 0.5), 2.0, 0.25),
])
def test_random_fill_moments(method, args, mean, var):
    values = _fill(method, *args)
    sd = np.sqrt(var / values.size)
    assert abs(values.mean() - mean) < 6 * sd
    assert abs(values.var() - var) < 0.02 * var + 1e-3


def test_random_fill_ranges_and_dtypes():
    assert set(np.unique(_fill("bernoulli_", 0.5, dtype=jt.int64, n=1000))) == {0, 1}
    ints = _fill("random_", 3, 9, dtype=jt.int32, n=5000)
    assert ints.dtype == np.int32 and set(np.unique(ints)) == set(range(3, 9))
    assert set(np.unique(_fill("random_", 4, dtype=jt.int64, n=1000))) == {0, 1, 2, 3}
    assert _fill("random_", dtype=jt.bool, n=1000).dtype == np.bool_
    assert (_fill("exponential_", 1.0) >= 0).all()
    probs = jt.tensor([0.0, 1.0] * 50)
    assert (jt.empty(100).bernoulli_(probs).numpy() == probs.numpy()).all()


@pytest.mark.parametrize("method, args", [
    ("bernoulli_", (0.5,)), ("exponential_", (1.5,)), ("random_", (0, 100)), ("uniform_", ()), ("normal_", ()),
])
def test_random_fill_repeats_under_manual_seed(method, args):
    jt.manual_seed(7)
    first = _fill(method, *args, n=64)
    again = _fill(method, *args, n=64)
    jt.manual_seed(7)
    assert (_fill(method, *args, n=64) == first).all()
    assert not (again == first).all()


def test_random_fill_draws_from_a_given_generator():
    g = jt.Generator().manual_seed(3)
    a = jt.empty(16).exponential_(generator=g)
    g.manual_seed(3)
    assert (jt.empty(16).exponential_(generator=g).numpy() == a.numpy()).all()


@pytest.mark.parametrize("call, message", [
    (lambda lib: lib.empty(3).bernoulli_(1.5), "bernoulli_ expects p to be in"),
    (lambda lib: lib.empty(3).exponential_(-1.0), "exponential_ expects lambda > 0.0"),
    (lambda lib: lib.empty(3).random_(5, 2), "random_ expects 'from' to be less than 'to'"),
])
def test_random_fill_errors_match_torch(call, message):
    for lib in (torch, jt):
        with pytest.raises(RuntimeError, match=message):
            call(lib)


def test_random_fill_refuses_a_leaf_that_requires_grad():
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        jt.empty(3, requires_grad=True).exponential_()


# ---------------------------------------------------------------------------------------------
# unique


@pytest.mark.parametrize("kwargs", [
    {}, {"return_inverse": True}, {"return_counts": True}, {"return_inverse": True, "return_counts": True},
    {"dim": 0, "return_inverse": True, "return_counts": True}, {"dim": 1, "return_counts": True},
])
def test_unique_variants_match_torch(kwargs):
    data = np.random.default_rng(0).integers(0, 3, (6, 4))
    got, want = jt.unique(jt.tensor(data), **kwargs), torch.unique(torch.tensor(data), **kwargs)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
        assert g.dtype.name == str(w.dtype).split(".")[-1]


def test_unique_of_floats_and_the_method():
    x = jt.tensor([2.5, -1.0, 2.5, 0.0])
    np.testing.assert_array_equal(x.unique().numpy(), [-1.0, 0.0, 2.5])
    assert x.unique().dtype is jt.float32


def test_unique_refuses_to_trace():
    with pytest.raises(jt.TraceError, match=r"unique\(\) \(its output shape depends on the data\)"):
        jt.compile(lambda x: jt.unique(x))(jt.tensor([1, 2, 2]))


# ---------------------------------------------------------------------------------------------
# views


def test_diagonal_of_a_contiguous_matrix_is_a_view():
    x = jt.arange(12.0).reshape(3, 4)
    d = x.diagonal(1)
    x[0, 1] = 100.0
    assert d.tolist() == [100.0, 6.0, 11.0]
    batched = jt.zeros(2, 3, 3)
    jt.diagonal(batched, 0, -2, -1).fill_(1.0)  # writes through, as torch's view does
    np.testing.assert_array_equal(batched.numpy(), np.broadcast_to(np.eye(3), (2, 3, 3)))


def test_diagonal_of_non_adjacent_dims_is_a_copy_with_torchs_values():
    data = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(jt.diagonal(jt.tensor(data), 1, 0, 2).numpy(),
                                  torch.diagonal(torch.tensor(data), 1, 0, 2).numpy())


def test_meshgrid_grids_are_views_of_their_inputs():
    a, b = jt.arange(3.0), jt.arange(4.0)
    gx, gy = jt.meshgrid(a, b, indexing="ij")
    a[0] = 7.0
    assert gx[0].tolist() == [7.0] * 4 and gy.shape == (3, 4)


# ---------------------------------------------------------------------------------------------
# errors, beside PyTorch's


@pytest.mark.parametrize("call, message", [
    (lambda lib: lib.bincount(lib.tensor([[1, 2]])), "bincount only supports 1-d non-negative integral inputs"),
    (lambda lib: lib.bincount(lib.tensor([-1, 2])), "bincount only supports 1-d non-negative integral inputs"),
    (lambda lib: lib.bincount(lib.tensor([1, 2]), lib.tensor([1.0])), "weights should be 1-d and have the same"),
    (lambda lib: lib.repeat_interleave(lib.ones(3), lib.tensor([1, 2])), "repeats must have the same size as input"),
    (lambda lib: lib.repeat_interleave(lib.ones(2), lib.tensor([1, -2])), "repeats can not be negative"),
    (lambda lib: lib.searchsorted(lib.ones(3), lib.ones(2), side="middle"), "side can only be 'left' or 'right'"),
    (lambda lib: lib.tensordot(lib.ones(2, 3), lib.ones(4, 2), dims=([1], [0])), "contracted dimensions need to match"),
    (lambda lib: lib.cdist(lib.ones(2, 3), lib.ones(2, 4)), "X1 and X2 must have the same number of columns"),
    (lambda lib: lib.cdist(lib.ones(2, 3, dtype=lib.int64), lib.ones(2, 3)), "cdist only supports floating-point"),
    (lambda lib: lib.diagonal(lib.ones(2, 3), 0, 1, 1), "diagonal dimensions cannot be identical"),
    (lambda lib: lib.rot90(lib.ones(2, 3), 1, (0, 0)), "expected rotation dims to be different"),
    (lambda lib: lib.rot90(lib.ones(3), 1, (0, 1)), "expected total dims >= 2"),
    (lambda lib: lib.cross(lib.ones(4, 2), lib.ones(4, 2), dim=0), "must have length 3"),
    (lambda lib: lib.ones(3).scatter_reduce(0, lib.tensor([0]), lib.ones(1), "median"),
     "reduce argument must be either sum, prod, mean, amax or amin"),
    (lambda lib: lib.ones(3).index_fill(0, lib.tensor([0]), lib.ones(2)), "only supports a 0-dimensional value"),
    (lambda lib: lib.ones(3).masked_scatter(lib.ones(3, dtype=lib.int64), lib.ones(3)), "only supports boolean"),
    (lambda lib: lib.ones(3).index_add(0, lib.tensor([0]), lib.ones(1, dtype=lib.float64)),
     "must have the same scalar type"),
    (lambda lib: lib.ones(3).scatter_reduce(0, lib.tensor([0]), lib.ones(1, dtype=lib.float64), "sum"),
     "Expected self.dtype to be equal to src.dtype"),
])
def test_errors_match_torch(call, message):
    for lib in (torch, jt):
        with pytest.raises(RuntimeError, match=message):
            call(lib)


def test_masked_scatter_needs_enough_source_elements():
    with pytest.raises(RuntimeError, match=r"at least 3 elements .* but it has 2 \(shape \(2,\)\)"):
        jt.zeros(3).masked_scatter(jt.ones(3, dtype=jt.bool), jt.ones(2))


def test_index_add_names_the_mismatched_sizes():
    with pytest.raises(RuntimeError, match=r"Number of indices \(2\) should be equal to source.size\(dim\) \(3\)"):
        jt.zeros(4, 3).index_add(0, jt.tensor([0, 1]), jt.ones(3, 3))


# ---------------------------------------------------------------------------------------------
# details the harness's random inputs don't reach


def test_cdist_gradient_at_zero_distance_is_zero_like_torch():
    data = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    x, y = jt.tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    jt.cdist(x, x).sum().backward()
    torch.cdist(y, y).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), atol=1e-5)


def test_erfinv_edges_match_torch():
    values = [-1.0, -0.999999, 0.0, 0.999999, 1.0, 1.5, -2.0]
    np.testing.assert_allclose(jt.erfinv(jt.tensor(values, dtype=jt.float64)).numpy(),
                               torch.erfinv(torch.tensor(values, dtype=torch.float64)).numpy(), rtol=1e-12)
    assert jt.erfinv(jt.tensor([0, 1])).dtype is jt.float32


def test_baddbmm_with_beta_zero_ignores_nan_input():
    out = jt.baddbmm(jt.full((1, 2, 2), float("nan")), jt.ones(1, 2, 3), jt.ones(1, 3, 2), beta=0)
    assert out.tolist() == [[[3.0, 3.0], [3.0, 3.0]]]


def test_in_place_forms_match_torch():
    data = np.arange(1.0, 7.0).reshape(2, 3)
    for lib in (jt, torch):
        x = lib.tensor(data)
        ones = lib.ones(2, 2, dtype=lib.float64)
        x.cumprod_(1).index_fill_(0, lib.tensor([1]), -1.0).index_add_(1, lib.tensor([0, 0]), ones)
        if lib is jt:
            got = x.numpy()
        else:
            np.testing.assert_array_equal(got, x.numpy())
