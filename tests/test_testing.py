"""jitorch.testing.assert_close passes and fails where torch.testing.assert_close does, with the
same message (PyTorch's type names read jitorch's)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch.testing import assert_close


def _outcome(check, lib):
    """None if `check(lib)` passes, else (exception type name, message)."""
    try:
        check(lib)
    except (AssertionError, ValueError, TypeError) as err:
        message = re.sub(r"(?<!ji)torch\.", "jitorch.", str(err))
        return type(err).__name__, message.replace("jitorch.tensor.Tensor", "jitorch.Tensor")
    return None


def _run(lib, actual, expected, **kwargs):
    close = assert_close if lib is jt else torch.testing.assert_close
    return close(actual(lib), expected(lib), **kwargs)


def _pair(actual, expected, **kwargs):
    return lambda lib: _run(lib, actual, expected, **kwargs)


CASES = {
    "equal": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: t.tensor([1.0, 2.0])),
    "within_float32_tolerance": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: t.tensor([1.0, 2.0 + 2e-6])),
    "beyond_float32_tolerance": _pair(lambda t: t.tensor([1.0, 2.0, 3.0]), lambda t: t.tensor([1.0, 2.5, 3.0])),
    "float64_matrix": _pair(lambda t: t.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=t.float64),
                            lambda t: t.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=t.float64)),
    "float64_default_tolerance": _pair(lambda t: t.tensor([1.0], dtype=t.float64),
                                       lambda t: t.tensor([1.0 + 1e-6], dtype=t.float64)),
    "float16": _pair(lambda t: t.tensor([1.0, 2.0], dtype=t.float16),
                     lambda t: t.tensor([1.0, 2.001], dtype=t.float16)),
    "integers_exact": _pair(lambda t: t.tensor([1, 2, 3]), lambda t: t.tensor([1, 2, 4])),
    "bools": _pair(lambda t: t.tensor([True]), lambda t: t.tensor([False])),
    "zero_expected": _pair(lambda t: t.tensor([0.0, 1.0]), lambda t: t.tensor([1.0, 1.0])),
    "shape": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: t.tensor([1.0, 2.0, 3.0])),
    "dtype": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: t.tensor([1.0, 2.0], dtype=t.float64)),
    "dtype_unchecked": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: t.tensor([1.0, 2.0], dtype=t.float64),
                             check_dtype=False),
    "rtol_without_atol": _pair(lambda t: t.tensor([1.0]), lambda t: t.tensor([1.0]), rtol=1e-3),
    "explicit_tolerances": _pair(lambda t: t.tensor([1.0]), lambda t: t.tensor([1.1]), rtol=0.0, atol=0.2),
    "explicit_equality": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: t.tensor([1.0, 2.5]), rtol=0, atol=0),
    "nan_unequal": _pair(lambda t: t.tensor([math.nan]), lambda t: t.tensor([math.nan])),
    "nan_equal": _pair(lambda t: t.tensor([math.nan]), lambda t: t.tensor([math.nan]), equal_nan=True),
    "inf": _pair(lambda t: t.tensor([1.0, math.inf]), lambda t: t.tensor([1.0, math.inf])),
    "zero_dim": _pair(lambda t: t.tensor(1.0), lambda t: t.tensor(2.0)),
    "python_floats": _pair(lambda t: 1.0, lambda t: 1.5),
    "python_ints": _pair(lambda t: 1, lambda t: 2),
    "int_and_float": _pair(lambda t: 1, lambda t: 1.0),
    "sequence": _pair(lambda t: [t.tensor([1.0]), t.tensor([2.0, 3.0])],
                      lambda t: [t.tensor([1.0]), t.tensor([2.0, 4.0])]),
    "mapping": _pair(lambda t: {"a": t.tensor([1.0])}, lambda t: {"a": t.tensor([2.0])}),
    "message_string": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: t.tensor([1.0, 3.0]), msg="custom"),
    "message_callable": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: t.tensor([1.0, 3.0]), msg=lambda m: "X" + m),
    "tensor_and_list": _pair(lambda t: t.tensor([1.0, 2.0]), lambda t: [1.0, 2.0]),
    "tensor_and_float": _pair(lambda t: t.tensor(1.0), lambda t: 1.0),
    "numpy_arrays": _pair(lambda t: np.array([1.0]), lambda t: np.array([2.0])),
    "message_replaces_attribute_mismatch": _pair(lambda t: t.tensor([1.0]), lambda t: t.tensor([1.0, 2.0]),
                                                 msg="custom"),
    "attribute_mismatch_in_a_sequence": _pair(lambda t: [t.tensor([1.0])], lambda t: [t.tensor([1.0, 2.0])]),
    "sequence_lengths": _pair(lambda t: [1.0, 2.0], lambda t: [1.0, 2.0, 3.0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_assert_close_answers_as_pytorch(name):
    check = CASES[name]
    assert _outcome(check, jt) == _outcome(check, torch)


def test_the_message_counts_mismatches_and_names_the_greatest_differences():
    with pytest.raises(AssertionError) as caught:
        assert_close(jt.tensor([[1.0, 2.0], [3.0, 4.0]]), jt.tensor([[1.0, 2.5], [3.0, 9.0]]))
    message = str(caught.value)
    assert message.startswith("Tensor-likes are not close!")
    assert "Mismatched elements: 2 / 4 (50.0%)" in message
    assert "Greatest absolute difference: 5.0 at index (1, 1) (up to 1e-05 allowed)" in message
    assert "Greatest relative difference: 0.5555555820465088 at index (1, 1) (up to 1.3e-06 allowed)" in message
