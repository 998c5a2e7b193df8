"""A whole training run against PyTorch's: the digits CNN of examples/digits.py with Adam, from the
same weights on the same batches, once in float64 and once in float32.

The two precisions are compared differently because rounding moves them differently. A ReLU whose
input lands within rounding of zero passes or drops its gradient depending on the last bit, and
Adam's normalised steps carry that flip into every later step: in float32 such a flip is a matter of
BLAS summation order (numpy's OpenBLAS and PyTorch's kernels sum in different orders, and OpenBLAS's
order changes with its thread count), so the float32 curves may part by a few percent. In float64
rounding sits 1e9 times lower and no flip happens, so the float64 run is compared tightly: it is the
test that a wrong gradient or a wrong optimizer update fails. The float32 run, what users train in,
is compared where rounding cannot move it (the first loss) and, after that, on averages of the curve
with a tolerance well above what rounding alone does to PyTorch's own run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import jitorch as jt

pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (the examples extra)")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import digits  # noqa: E402 - needs the path above

STEPS = 60
WINDOW = 10  # steps per averaged stretch of the float32 loss curve


def _batches():
    images, labels = digits.load_digits_arrays()
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        idx = rng.integers(0, len(images), digits.BATCH_SIZE)
        yield images[idx], labels[idx]


def _run(lib, state: dict, dtype: type, device: str = "cpu") -> tuple[np.ndarray, dict[str, float]]:
    """Train a CNN in `lib` on `device` from `state` with every parameter and input in `dtype` (a numpy
    float type); returns the per-step losses and the final parameter norms."""
    model = digits.build_cnn(lib)
    model.load_state_dict({k: lib.tensor(v) for k, v in state.items()})
    if dtype == np.float64:
        model.double()
    model.to(device)
    opt = digits.make_optimizer(model, lib)
    losses = [digits.train_step(model, opt, lib.tensor(x.astype(dtype), device=device),
                                lib.tensor(y, device=device), lib) for x, y in _batches()]
    norms = {k: float(np.linalg.norm(v.detach().to("cpu").numpy())) for k, v in model.state_dict().items()}
    return np.array(losses), norms


@pytest.fixture(scope="module")
def initial_state() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in digits.build_cnn(torch).state_dict().items()}


def test_cnn_adam_training_run_matches_torch_in_float64(initial_state):
    jt_losses, jt_norms = _run(jt, initial_state, np.float64)
    th_losses, th_norms = _run(torch, initial_state, np.float64)
    assert th_losses[-1] < th_losses[0] * 0.5  # the run really trains
    # measured on an AMD EPYC (AVX2), OpenBLAS on 1 or 2 threads: 2.4e-15 (losses), 3.4e-16 (norms)
    np.testing.assert_allclose(jt_losses, th_losses, rtol=1e-10)
    for name, norm in th_norms.items():
        assert jt_norms[name] == pytest.approx(norm, rel=1e-10), name


def test_cnn_adam_training_run_follows_torch_in_float32(initial_state):
    jt_losses, jt_norms = _run(jt, initial_state, np.float32)
    th_losses, th_norms = _run(torch, initial_state, np.float32)
    # the first loss is a forward pass from equal weights: no step has amplified anything yet
    assert jt_losses[0] == pytest.approx(th_losses[0], rel=1e-5)
    # After that, 10-step means of the curve and the final norms. Measured on an AMD EPYC (AVX2): with
    # OpenBLAS on 2 threads one ReLU flips at step 1 and the means part by 6.5e-3 (single steps by
    # 3.3e-2, norms by 2.8e-3); PyTorch started from weights moved by one ulp parts from its own run by
    # exactly as much in 3 of 8 tries. A wrong gradient or update moves them further.
    jt_means, th_means = (c.reshape(-1, WINDOW).mean(axis=1) for c in (jt_losses, th_losses))
    np.testing.assert_allclose(jt_means, th_means, rtol=3e-2)
    for name, norm in th_norms.items():
        assert jt_norms[name] == pytest.approx(norm, rel=2e-2), name


@pytest.mark.gpu
def test_cnn_adam_training_run_matches_torch_in_float64_on_cuda(initial_state):
    if not (jt.cuda.is_available() and torch.cuda.is_available()):
        pytest.skip("needs an NVIDIA GPU with CuPy (jitorch) and CUDA PyTorch")
    jt_losses, jt_norms = _run(jt, initial_state, np.float64, "cuda")
    th_losses, th_norms = _run(torch, initial_state, np.float64, "cuda")
    cpu_losses, _ = _run(jt, initial_state, np.float64)
    assert th_losses[-1] < th_losses[0] * 0.5
    # GPU reductions sum in other orders than the CPU's; in float64 that stays near 1e-15
    np.testing.assert_allclose(jt_losses, th_losses, rtol=1e-9)
    np.testing.assert_allclose(jt_losses, cpu_losses, rtol=1e-9)
    for name, norm in th_norms.items():
        assert jt_norms[name] == pytest.approx(norm, rel=1e-9), name
