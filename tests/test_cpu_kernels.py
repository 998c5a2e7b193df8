"""The CPU kernels that replace numpy above a size threshold (sums through BLAS; the LLVM loops of
`jitorch.backends.cpu.helpers`: row max, `where`, relu backward, rows added at indices, erf, im2col and col2im): the op
cases use small tensors, so these run them at sizes that take the fast paths and compare with PyTorch.
And their start-up: no Numba, and a later process takes the compiled loops from the disk cache."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch.backends.cpu.helpers import BLAS_SUM_MIN_ELEMENTS

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


# --- the LLVM helper loops at sizes that take them ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [1, 3, 7, 8, 9, 16, 31, 64, 67])
def test_row_max_finds_nan_anywhere_in_a_row(dtype, cols):
    """The row kernel's running max ignores NaN (to vectorize); a NaN in any column, inside the
    vector part or the tail, must still make the row's max NaN, as in PyTorch."""
    rows = max(4096 // cols + 1, cols + 2)
    x = np.random.default_rng(cols).standard_normal((rows, cols)).astype(dtype)
    for c in range(cols):
        x[c, c] = np.nan
    x[cols, :] = np.inf
    x[cols + 1, :] = -np.inf
    ours, theirs = jt.tensor(x).amax(-1).numpy(), torch.tensor(x).amax(-1).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(ours[:cols]).all() and not np.isnan(ours[cols:]).any()


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64, np.int32, np.bool_])
def test_where_at_kernel_sizes_for_every_element_size(dtype):
    rng = np.random.default_rng(9)
    cond = rng.random(SHAPE) > 0.5
    x, y = (rng.standard_normal(SHAPE) * 5).astype(dtype), (rng.standard_normal(SHAPE) * 5).astype(dtype)
    for a, b in ((x, y), (x, y[0, 0, :1].reshape(())), (x[0, 0, :1].reshape(()), y)):
        ours = jt.where(jt.tensor(cond), jt.tensor(a), jt.tensor(b)).numpy()
        np.testing.assert_array_equal(ours, torch.where(torch.tensor(cond), torch.tensor(a), torch.tensor(b)).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_and_exact_gelu_like_pytorch(dtype):
    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30]]).astype(dtype)
    ours, theirs = jt.tensor(x).erf().numpy(), torch.tensor(x).erf().numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    ulps = np.abs(ours - theirs)[~np.isnan(ours)] / np.spacing(np.abs(theirs[~np.isnan(ours)]).astype(dtype))
    assert ulps.max() <= 2
    assert np.signbit(ours[x == 0]).tolist() == np.signbit(x[x == 0]).tolist()
    finite = x[np.isfinite(x)]
    np.testing.assert_allclose(jt.nn.functional.gelu(jt.tensor(finite)).numpy(),
                               torch.nn.functional.gelu(torch.tensor(finite)).numpy(),
                               rtol=1e-6 if dtype == np.float32 else 1e-14,
                               atol=1e-6 if dtype == np.float32 else 1e-15)  # 1 + erf(x) cancels for x << 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", [
    ((8, 3, 32, 32), (3, 3), 1, 1, 1),
    ((4, 16, 15, 13), (3, 5), 2, (1, 2), 1),
    ((2, 8, 20, 20), (3, 3), (1, 2), 0, 2),
    ((64, 1, 8, 8), (3, 3), 1, 1, 1),
])
def test_conv2d_at_kernel_sizes_forward_and_backward(dtype, shape, kernel, stride, padding, dilation):
    """im2col (the unfold of the forward) and col2im (its adjoint, the input's gradient) as loops."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((6, shape[1]) + kernel).astype(dtype)
    g = None
    outs, grads = [], []
    for lib, make in ((jt, jt.tensor), (torch, torch.tensor)):
        xt, wt = make(x), make(w)
        xt.requires_grad_(True)
        wt.requires_grad_(True)
        out = lib.nn.functional.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation)
        if g is None:
            g = rng.standard_normal(tuple(out.shape)).astype(dtype)
        out.backward(make(g))
        outs.append(out.detach().numpy())
        grads.append((xt.grad.numpy(), wt.grad.numpy()))
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(outs[0], outs[1], rtol=rtol, atol=rtol)
    for ours, theirs in zip(grads[0], grads[1]):
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("dtype", [jt.float16, jt.bfloat16, jt.int32])
def test_unfold_of_other_element_sizes_at_kernel_size(dtype):
    x = np.random.default_rng(11).integers(-50, 50, (4, 8, 16, 16))
    ours = jt.nn.functional.unfold(jt.tensor(x).to(dtype), 3, padding=1, stride=2).to(jt.float64).numpy()
    theirs = torch.nn.functional.unfold(torch.tensor(x, dtype=torch.float64), 3, padding=1, stride=2).numpy()
    np.testing.assert_array_equal(ours, theirs)


# --- start-up: no Numba, and kernels from the disk cache in later processes -----------------------


STARTUP_SCRIPT = """
import sys
import jitorch as jt

jt.manual_seed(0)
x = jt.randn(8, 3, 32, 32, requires_grad=True)
conv = jt.nn.Conv2d(3, 16, 3, padding=1)
loss = jt.nn.functional.cross_entropy(conv(x).relu().reshape(32, 4096), jt.randint(0, 4096, (32,)))
emb = jt.nn.Embedding(100, 64)
loss = loss + jt.nn.functional.gelu(emb(jt.randint(0, 100, (16, 64)))).mean()
loss.backward()
print("numba" in sys.modules, loss.item(), x.grad.abs().sum().item(), emb.weight.grad.abs().sum().item())
"""


def _startup_run(cache_dir) -> tuple[bool, tuple[float, ...]]:
    """Run a small CNN and embedding step in a fresh process: whether it imported Numba, and its
    loss and gradient sums."""
    env = dict(os.environ, JITORCH_CACHE_DIR=str(cache_dir))
    env.pop("JITORCH_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    numba, *figures = proc.stdout.split()
    return numba == "True", tuple(float(f) for f in figures)


def _cached(cache_dir) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in cache_dir.rglob("*.o")}


def test_a_fresh_process_loads_the_helper_kernels_from_disk_without_numba(tmp_path):
    """The first process compiles the helper loops that a CNN and an embedding step use (im2col,
    col2im, relu backward, row max, select, rows added at indices, erf) and caches them; the second
    compiles none (nothing is written again). Neither imports Numba."""
    numba, figures = _startup_run(tmp_path)
    cached = _cached(tmp_path)
    assert not numba and len(cached) >= 7
    assert _startup_run(tmp_path) == (False, figures)
    assert _cached(tmp_path) == cached


def test_an_unusable_cache_directory_only_costs_compiling_again(tmp_path):
    _, figures = _startup_run(tmp_path / "ok")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert _startup_run(blocker / "cache") == (False, figures)  # can't be created: nothing cached, no error
    for entry in _cached(tmp_path / "ok"):
        entry.write_bytes(entry.read_bytes()[:100])  # damaged entries are compiled and written again
    assert _startup_run(tmp_path / "ok") == (False, figures)
    assert all(size > 100 for size, _ in _cached(tmp_path / "ok").values())


@pytest.mark.parametrize("n", [4, 5000], ids=["shared-kernel", "helper-loop"])
def test_relu_keeps_negative_zero_and_nan_as_pytorch_eager_and_compiled(n):
    values = np.array([-0.0, -1.0, 2.0, np.nan, 0.0], dtype=np.float32).repeat(n)
    want = torch.relu(torch.from_numpy(values)).numpy()
    for got in (jt.tensor(values).relu(), jt.compile(lambda x: x.relu())(jt.tensor(values))):
        np.testing.assert_array_equal(np.signbit(got.numpy()), np.signbit(want))
        np.testing.assert_array_equal(got.numpy(), want)
