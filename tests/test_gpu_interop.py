"""DLPack on the GPU: jitorch's cuda tensors and CuPy, PyTorch and JAX arrays share memory both ways,
without a copy. Marked `gpu`: it runs on a machine with an NVIDIA GPU (`python -m pytest -m gpu`)."""

from __future__ import annotations

import numpy as np
import pytest

import jitorch as jt

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU with CuPy")


def _pointer(t: jt.Tensor) -> int:
    return t._data.data.ptr  # the CuPy array under a cuda tensor


@needs_cuda
def test_cupy_round_trip_shares_memory():
    cupy = pytest.importorskip("cupy")
    a = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    t = jt.from_dlpack(a)
    assert t.device.type == "cuda" and _pointer(t) == a.data.ptr
    b = cupy.from_dlpack(t)
    assert b.data.ptr == a.data.ptr
    t.add_(1)
    np.testing.assert_array_equal(cupy.asnumpy(a), np.arange(12, dtype=np.float32).reshape(3, 4) + 1)


@needs_cuda
def test_torch_round_trip_shares_memory():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA PyTorch")
    x = torch.randn(5, 6, device="cuda")
    t = jt.from_dlpack(x)
    assert t.device.type == "cuda" and _pointer(t) == x.data_ptr()
    y = torch.from_dlpack(t)
    assert y.data_ptr() == x.data_ptr() and y.device.type == "cuda"
    np.testing.assert_array_equal(t.cpu().numpy(), x.cpu().numpy())


@needs_cuda
def test_jax_round_trip():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("needs JAX with a GPU")
    t = jt.randn(4, 3, device="cuda")
    a = jnp.from_dlpack(t)
    np.testing.assert_allclose(np.asarray(a), t.cpu().numpy())
    back = jt.from_dlpack(a)
    assert back.device.type == "cuda"
    np.testing.assert_allclose(back.cpu().numpy(), t.cpu().numpy())


@needs_cuda
def test_a_cuda_tensor_refuses_numpy_as_pytorch_does():
    t = jt.ones(2, device="cuda")
    with pytest.raises(TypeError, match="cuda"):
        t.numpy()
    assert t.cpu().numpy().tolist() == [1.0, 1.0]
    assert t.sum().item() == 2.0
