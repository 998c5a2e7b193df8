"""The CPU's convolution and pooling paths against PyTorch, forward and backward, eager and compiled:
the im2col / col2im loops of `jitorch.backends.cpu.helpers` (padding handled in the loop, columns
laid out as (C*kh*kw, N, L) so that a convolution's GEMM reads them with no copy), and max and
average pooling by passes over the window taps (`F._taps_max`)."""

import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch.backends.cpu import kernels

# (input shape, kernel, dilation, padding, stride): square and not, padded, dilated, strided, a
# kernel as large as the padded image, windows that skip pixels, and batches whose planes of one
# channel do not fit the cache (the loops then go image by image)
GEOMETRIES = [
    ((8, 3, 32, 32), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((4, 16, 15, 13), (3, 5), (1, 1), (1, 2), (2, 2)),
    ((2, 8, 20, 20), (3, 3), (2, 2), (0, 0), (1, 2)),
    ((3, 2, 7, 9), (2, 4), (2, 1), (3, 2), (3, 1)),
    ((2, 3, 5, 5), (5, 5), (1, 1), (0, 0), (1, 1)),
    ((2, 3, 4, 4), (3, 3), (1, 1), (1, 1), (4, 3)),
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1)),
    ((600, 2, 24, 24), (2, 2), (1, 1), (0, 0), (2, 2)),
    ((300, 3, 20, 17), (3, 2), (1, 2), (1, 1), (2, 1)),
]


def _columns_layout(cols: np.ndarray) -> np.ndarray:
    """The same values as a (N, K, L) view of (K, N, L) memory, as a convolution's input-gradient
    GEMM gives them to fold."""
    return np.ascontiguousarray(cols.transpose(1, 0, 2)).transpose(1, 0, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, dilation, padding, stride", GEOMETRIES)
def test_unfold_and_fold_kernels_match_pytorch(dtype, shape, kernel, dilation, padding, stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    geometry = dict(kernel_size=kernel, dilation=dilation, padding=padding, stride=stride)
    ours = kernels.KERNELS["unfold"](x, kernel, dilation, padding, stride)
    theirs = torch.nn.functional.unfold(torch.tensor(x), **geometry).numpy()
    np.testing.assert_array_equal(ours, theirs)
    # a convolution's GEMM reads the columns as one (K, N*L) matrix: no copy
    assert ours.transpose(1, 0, 2).flags.c_contiguous

    g = rng.standard_normal(theirs.shape).astype(dtype)
    expected = torch.nn.functional.fold(torch.tensor(g), shape[2:], **geometry).numpy()
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for cols in (g, _columns_layout(g)):
        folded = kernels.KERNELS["fold"](cols, shape[2:], kernel, dilation, padding, stride)
        np.testing.assert_allclose(folded, expected, rtol=tol, atol=tol)
        garbage = np.full(shape, np.nan, dtype)  # a planned buffer holds old values: fold sets every pixel
        into = kernels.KERNELS_INTO["fold"](garbage, cols, shape[2:], kernel, dilation, padding, stride)
        np.testing.assert_allclose(into, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.int8, np.int64])
def test_unfold_moves_any_element_size(dtype):
    x = np.random.default_rng(1).integers(-50, 50, (4, 8, 16, 16)).astype(dtype)
    ours = kernels.KERNELS["unfold"](x, (3, 3), (1, 1), (1, 1), (2, 2))
    theirs = torch.nn.functional.unfold(torch.tensor(x.astype(np.float64)), 3, padding=1, stride=2).numpy()
    np.testing.assert_array_equal(ours.astype(np.float64), theirs)


CONVS = [  # (input shape, weight shape, options)
    ((4, 3, 12, 12), (8, 3, 3, 3), dict(padding=1)),
    ((3, 4, 11, 9), (6, 2, 3, 2), dict(stride=2, padding=(1, 0), groups=2)),
    ((2, 3, 10, 10), (5, 3, 3, 3), dict(dilation=2, stride=(1, 2))),
    ((2, 4, 9, 8), (4, 4, 2, 3), dict(padding="same")),
    ((2, 6, 7, 7), (6, 1, 3, 3), dict(padding=1, groups=6)),
    ((3, 2, 6, 6), (4, 2, 1, 1), dict()),
]


def _conv_step(options: dict, compiled: bool):
    def step(x, w, b, g):
        out = jt.nn.functional.conv2d(x, w, b, **options)
        (out * g).sum().backward()
        return out
    return jt.compile(step) if compiled else step


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, options", CONVS)
def test_conv2d_forward_and_backward_eager_and_compiled_match_pytorch(dtype, x_shape, w_shape, options):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    expected = torch.nn.functional.conv2d(*tensors, **options)
    g = rng.standard_normal(tuple(expected.shape)).astype(dtype)
    (expected * torch.tensor(g)).sum().backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    found = []
    for compiled in (False, True):
        ours = [jt.tensor(a, requires_grad=True) for a in (x, w, b)]
        out = _conv_step(options, compiled)(*ours, jt.tensor(g))
        np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=tol, atol=tol)
        for mine, theirs in zip(ours, tensors):
            np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=tol, atol=tol * 10)
        found.append([out.detach().numpy()] + [t.grad.numpy() for t in ours])
    for eager, compiled in zip(*found):
        np.testing.assert_allclose(compiled, eager, rtol=tol, atol=tol)


POOLS = [  # (input shape, options): windows that tile the input, overlap, skip, are padded, ragged
    ((4, 3, 8, 8), dict(kernel_size=2)),
    ((2, 5, 9, 6), dict(kernel_size=(3, 2))),
    ((3, 6, 6), dict(kernel_size=3)),
    ((2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 2, 10, 7), dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1))),
    ((2, 2, 7, 7), dict(kernel_size=2, ceil_mode=True)),
    ((1, 2, 12, 12), dict(kernel_size=5, stride=1)),
]


def _pool_input(shape, dtype) -> np.ndarray:
    """Random values with many ties (ReLU's zeros; the gradient goes to a window's first maximum)
    and a NaN (the maximum of its windows)."""
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal(shape), 0).astype(dtype)
    x.reshape(-1)[5] = np.nan
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, options", POOLS)
@pytest.mark.parametrize("compiled", [False, True])
def test_max_pool2d_forward_backward_and_indices_match_pytorch(dtype, shape, options, compiled):
    x = _pool_input(shape, dtype)
    xt = torch.tensor(x, requires_grad=True)
    out, indices = torch.nn.functional.max_pool2d(xt, return_indices=True, **options)
    g = np.random.default_rng(5).standard_normal(tuple(out.shape)).astype(dtype)
    out.backward(torch.tensor(g))

    def pool(x, g):
        mine, where = jt.nn.functional.max_pool2d(x, return_indices=True, **options)
        (mine * g).sum().backward()
        return mine, where

    xj = jt.tensor(x, requires_grad=True)
    mine, where = (jt.compile(pool) if compiled else pool)(xj, jt.tensor(g))
    np.testing.assert_array_equal(mine.detach().numpy(), out.detach().numpy())
    np.testing.assert_array_equal(where.numpy(), indices.numpy())
    # (where windows overlap, a pixel's gradients add up in another order than PyTorch's)
    tol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(xj.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)


def test_max_pool2d_of_integers_and_of_large_windows():
    x = np.random.default_rng(6).integers(-9, 9, (2, 3, 8, 8)).astype(np.int32)
    ours = jt.nn.functional.max_pool2d(jt.tensor(x), 2).numpy()
    np.testing.assert_array_equal(ours, torch.nn.functional.max_pool2d(torch.tensor(x, dtype=torch.float64), 2))
    y = _pool_input((2, 2, 12, 12), np.float32)  # 25 taps: by reductions over the windows
    yt, yj = torch.tensor(y, requires_grad=True), jt.tensor(y, requires_grad=True)
    torch.nn.functional.max_pool2d(yt, 5, stride=1).sum().backward()
    jt.nn.functional.max_pool2d(yj, 5, stride=1).sum().backward()
    np.testing.assert_array_equal(yj.grad.numpy(), yt.grad.numpy())


def _mnist_like(lib):
    """conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> max-pool 2 -> Linear, as bench/train.py's MNIST CNN."""
    nn, F = lib.nn, lib.nn.functional
    lib.manual_seed(0)
    layers = nn.ModuleList([nn.Conv2d(1, 8, 3), nn.Conv2d(8, 16, 3), nn.Linear(16 * 6 * 6, 10)])

    def loss(x, y):
        h = F.max_pool2d(F.relu(layers[1](F.relu(layers[0](x)))), 2)
        return F.cross_entropy(layers[2](lib.flatten(h, 1)), y)
    return layers, loss


def test_a_small_cnn_step_compiled_matches_eager_and_pytorch():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((16, 1, 16, 16)).astype(np.float32), rng.integers(0, 10, 16)
    torch_layers, torch_loss = _mnist_like(torch)
    grads = {}
    for compiled in (False, True):
        layers, loss = _mnist_like(jt)
        for mine, theirs in zip(layers.parameters(), torch_layers.parameters()):
            mine.data = jt.tensor(theirs.detach().numpy())

        def step(x, y, loss=loss):
            value = loss(x, y)
            value.backward()
            return value
        value = (jt.compile(step) if compiled else step)(jt.tensor(x), jt.tensor(y))
        grads[compiled] = [p.grad.numpy() for p in layers.parameters()]
    expected = torch_loss(torch.tensor(x), torch.tensor(y))
    expected.backward()
    np.testing.assert_allclose(value.item(), expected.item(), rtol=1e-5)
    for eager, compiled, theirs in zip(grads[False], grads[True], torch_layers.parameters()):
        np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(eager, theirs.grad.numpy(), rtol=1e-4, atol=1e-5)


AVG_POOLS = [
    ((4, 3, 8, 8), dict(kernel_size=2)),
    ((2, 5, 9, 6), dict(kernel_size=(3, 2))),
    ((3, 6, 6), dict(kernel_size=3, divisor_override=4)),
    ((2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((2, 2, 7, 7), dict(kernel_size=2, ceil_mode=True)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, options", AVG_POOLS)
@pytest.mark.parametrize("compiled", [False, True])
def test_avg_pool2d_forward_and_backward_match_pytorch(dtype, shape, options, compiled):
    x = np.random.default_rng(8).standard_normal(shape).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    out = torch.nn.functional.avg_pool2d(xt, **options)
    g = np.random.default_rng(9).standard_normal(tuple(out.shape)).astype(dtype)
    out.backward(torch.tensor(g))

    def pool(x, g):
        mine = jt.nn.functional.avg_pool2d(x, **options)
        (mine * g).sum().backward()
        return mine

    xj = jt.tensor(x, requires_grad=True)
    mine = (jt.compile(pool) if compiled else pool)(xj, jt.tensor(g))
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(mine.detach().numpy(), out.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(xj.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)
