"""The CPU kernels that replace numpy above a size threshold (sums through BLAS, Numba's row max,
`where` and relu backward): the op cases use small tensors, so these run them at sizes that take the fast
paths and compare with PyTorch."""

import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch.cpu_helpers import BLAS_SUM_MIN_ELEMENTS

SHAPE = (16, 8, 256)  # 32768 elements: above every threshold here
assert np.prod(SHAPE) >= BLAS_SUM_MIN_ELEMENTS


def both(array: np.ndarray):
    return jt.tensor(array), torch.tensor(array)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dims", [(0,), (0, 1), (2,), (1, 2), (0, 1, 2), (1,), (0, 2)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_over_leading_trailing_and_middle_dims(dtype, dims, keepdim):
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(dtype)
    j, t = both(x)
    ours, theirs = j.sum(dims, keepdim=keepdim), t.sum(dims, keepdim=keepdim)
    assert ours.shape == tuple(theirs.shape) and ours.dtype == jt.tensor(x).dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=rtol, atol=rtol * 100)


def test_sum_propagates_nan_and_inf_like_pytorch():
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    x[3, 2, 7], x[5, 0, 1], x[5, 0, 2] = np.nan, np.inf, -np.inf
    j, t = both(x)
    for dims in [(0,), (2,), (0, 1)]:
        np.testing.assert_array_equal(np.isnan(j.sum(dims).numpy()), np.isnan(t.sum(dims).numpy()))
        np.testing.assert_array_equal(np.isinf(j.sum(dims).numpy()), np.isinf(t.sum(dims).numpy()))


def test_sum_of_a_transposed_view_and_its_gradient():
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    j, t = jt.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    (j.transpose(0, 2).sum(0) * 2).sum().backward()
    (t.transpose(0, 2).sum(0) * 2).sum().backward()
    np.testing.assert_allclose(j.transpose(0, 2).sum(0).detach().numpy(),
                               t.transpose(0, 2).sum(0).detach().numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(j.grad.numpy(), t.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, dims", [(SHAPE, (2,)), (SHAPE, (1, 2)), ((64, 8, 67), (2,)), ((4096, 3), (1,)),
                                         (SHAPE, (0,)), (SHAPE, (1,))])
@pytest.mark.parametrize("keepdim", [False, True])
def test_amax_over_trailing_and_other_dims(dtype, shape, dims, keepdim):
    x = np.random.default_rng(6).standard_normal(shape).astype(dtype)
    x.reshape(-1)[::97] = x.reshape(-1)[0]  # ties: the gradient splits between them, as in PyTorch
    j, t = jt.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ours, theirs = j.amax(dims, keepdim=keepdim), t.amax(dims, keepdim=keepdim)
    np.testing.assert_array_equal(ours.detach().numpy(), theirs.detach().numpy())
    ours.sum().backward()
    theirs.sum().backward()
    np.testing.assert_allclose(j.grad.numpy(), t.grad.numpy(), rtol=1e-6)


def test_amax_rows_with_nan_and_inf_like_pytorch():
    x = np.random.default_rng(7).standard_normal((512, 67)).astype(np.float32)
    x[3, 0], x[4, 66], x[5, 9], x[6, :] = np.nan, np.nan, np.inf, -np.inf
    ours, theirs = jt.tensor(x).amax(-1).numpy(), torch.tensor(x).amax(-1).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(ours[3]) and np.isnan(ours[4]) and ours[5] == np.inf and ours[6] == -np.inf


@pytest.mark.parametrize("layout", ["full", "scalar_true", "scalar_false", "broadcast"])
def test_where_at_kernel_sizes(layout):
    rng = np.random.default_rng(3)
    cond = rng.random(SHAPE) > 0.5
    x, y = rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal(SHAPE).astype(np.float32)
    if layout == "scalar_true":
        x = np.float32(2.5) * np.ones((), np.float32)
    elif layout == "scalar_false":
        y = np.zeros((), np.float32)
    elif layout == "broadcast":
        y = y[:1]
    ours = jt.where(jt.tensor(cond), jt.tensor(x), jt.tensor(y)).numpy()
    np.testing.assert_array_equal(ours, torch.where(torch.tensor(cond), torch.tensor(x), torch.tensor(y)).numpy())


def test_relu_backward_at_kernel_size_passes_nan_like_pytorch():
    x = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    x[0, 0, :4] = [np.nan, 0.0, -0.0, 1.0]
    j, t = jt.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    g = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    j.relu().backward(jt.tensor(g))
    t.relu().backward(torch.tensor(g))
    np.testing.assert_array_equal(j.grad.numpy(), t.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_gradient_adds_repeated_rows_like_pytorch(dtype):
    rng = np.random.default_rng(8)
    weight = rng.standard_normal((13, 5)).astype(dtype)
    index = rng.integers(-13, 13, (40, 7))  # repeats and negative indices, above the kernel's threshold
    j, t = jt.tensor(weight, requires_grad=True), torch.tensor(weight, requires_grad=True)
    g = rng.standard_normal((40, 7, 5)).astype(dtype)
    j[jt.tensor(index)].backward(jt.tensor(g))
    t[torch.tensor(index)].backward(torch.tensor(g))
    np.testing.assert_allclose(j.grad.numpy(), t.grad.numpy(), rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_index_put_accumulate_out_of_range_still_raises():
    x = jt.zeros(4, 3)
    with pytest.raises(IndexError):
        x.index_put_((jt.tensor(np.arange(70) % 5),), jt.ones(70, 3), accumulate=True)
