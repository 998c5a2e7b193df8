"""Names common PyTorch code uses that came last: logspace, Tensor.matrix_power, dropout3d and
nn.Dropout3d, each against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt
import jitorch.nn.functional as F


@pytest.mark.parametrize("args, kwargs", [((0, 2, 5), {}), ((0, 3, 4), {"base": 2.0}), ((-1, 1, 7), {}),
                                          ((0, 3, 4), {"dtype": "int64"}), ((1, 0, 3), {"dtype": "float64"})])
def test_logspace_matches_pytorch(args, kwargs):
    theirs = torch.logspace(*args, **{k: getattr(torch, v) if k == "dtype" else v for k, v in kwargs.items()})
    ours = jt.logspace(*args, **{k: getattr(jt, v) if k == "dtype" else v for k, v in kwargs.items()})
    assert ours.dtype.name == str(theirs.dtype).removeprefix("torch.")
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 3, -2])
def test_tensor_matrix_power_matches_pytorch(n):
    a = np.random.default_rng(0).standard_normal((2, 3, 3)) + 3 * np.eye(3)
    np.testing.assert_allclose(jt.tensor(a).matrix_power(n).numpy(), torch.tensor(a).matrix_power(n).numpy(),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (3, 4, 5, 6)])
def test_dropout3d_zeroes_whole_channels_and_scales_the_rest(shape):
    jt.manual_seed(0)
    x = jt.ones(*shape, requires_grad=True)
    y = F.dropout3d(x, 0.5)
    channels = y.detach().numpy().reshape(*shape[: len(shape) - 3], -1)
    per_channel = {tuple(np.unique(c)) for c in channels.reshape(-1, channels.shape[-1])}
    assert per_channel <= {(0.0,), (2.0,)} and len(per_channel) == 2  # whole channels kept (x2) or dropped
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y.detach().numpy())  # the mask, scaled
    module = jt.nn.Dropout3d(0.5).eval()
    np.testing.assert_array_equal(module(x).detach().numpy(), x.detach().numpy())
    assert repr(module) == repr(torch.nn.Dropout3d(0.5))


def test_dropout3d_warns_as_pytorch_for_other_ranks_and_takes_dim_0_as_channels():
    jt.manual_seed(1)
    with pytest.warns(UserWarning, match="dropout3d: Received a 3-D input"):
        y = F.dropout3d(jt.ones(8, 3, 4), 0.5).numpy()
    assert all(len(np.unique(y[c])) == 1 for c in range(8)) and len(np.unique(y)) == 2
    from jitorch.nn.modules.dropout import Dropout3d  # (the module path PyTorch code imports from)

    assert Dropout3d is jt.nn.Dropout3d
