"""`jitorch.set_printoptions` / `get_printoptions` against PyTorch's repr under the same options."""

import re

import numpy as np
import pytest
import torch

import jitorch

ARRAYS = {
    "floats": np.array([[0.123456, -2.5, 3.0], [10.75, 0.001, -7.25]], dtype=np.float32),
    "integral_floats": np.array([1.0, -20.0, 300.0], dtype=np.float32),
    "wide_range": np.array([1e-5, 1.0, 12345.678], dtype=np.float32),
    "nonfinite": np.array([np.inf, -1.5, np.nan, 2.25], dtype=np.float32),
    "long_vector": np.arange(40, dtype=np.float32) / 7,
    "big_matrix": np.arange(1200, dtype=np.int64).reshape(30, 40),
    "cube": (np.arange(2 * 8 * 9, dtype=np.float32).reshape(2, 8, 9) - 50) / 3,
    "float64_scalar": np.array(-66.1702573),
    "float64_matrix": np.linspace(-3, 3, 12).reshape(3, 4),
    "bools": np.arange(9).reshape(3, 3) % 2 == 0,
}

SETTINGS = [
    {},
    {"precision": 2},
    {"precision": 6, "linewidth": 40},
    {"threshold": 5},
    {"threshold": 5, "edgeitems": 1},
    {"threshold": 5, "edgeitems": 0},
    {"linewidth": 24},
    {"profile": "short"},
    {"profile": "full"},
    {"sci_mode": True},
    {"sci_mode": False},
    {"profile": "short", "precision": 3, "sci_mode": True},
]


@pytest.fixture(autouse=True)
def _restore_defaults():
    yield
    jitorch.set_printoptions(profile="default")
    torch.set_printoptions(profile="default")


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "none")
@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_repr_matches_pytorch(options, name):
    jitorch.set_printoptions(**options)
    torch.set_printoptions(**options)
    array = ARRAYS[name]
    assert _unwrapped_dtype(repr(jitorch.tensor(array))) == _unwrapped_dtype(repr(torch.tensor(array)))


def _unwrapped_dtype(text):
    """The repr with its dtype suffix on the values' line: "jitorch.float64" is two characters longer
    than "torch.float64", so near `linewidth` the two libraries rightly wrap it differently."""
    return re.sub(r",\n *dtype=", ", dtype=", text.replace("jitorch.", "torch."))


@pytest.mark.parametrize("linewidth", [20, 27, 28, 80])
def test_suffix_wraps_at_linewidth_like_pytorch(linewidth):
    jitorch.set_printoptions(linewidth=linewidth)
    torch.set_printoptions(linewidth=linewidth)
    array = np.array([[1.5, -2.25], [3.0, 4.0]], dtype=np.float32)
    ours = jitorch.tensor(array, requires_grad=True)
    theirs = torch.tensor(array, requires_grad=True)
    assert repr(ours) == repr(theirs)


def test_get_printoptions_round_trips_like_pytorch():
    for options in SETTINGS:
        jitorch.set_printoptions(**options)
        torch.set_printoptions(**options)
        assert jitorch.get_printoptions() == torch._tensor_str.get_printoptions()
        jitorch.set_printoptions(**jitorch.get_printoptions())
        assert jitorch.get_printoptions() == torch._tensor_str.get_printoptions()


def test_unknown_profile_says_which_exist():
    with pytest.raises(ValueError, match="'default', 'full', 'short'"):
        jitorch.set_printoptions(profile="long")
