"""Bad input gives an error that says what is wrong, with the shapes, dtypes or op involved."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import jitorch as jt


def test_shapes_that_do_not_broadcast_show_both_shapes():
    with pytest.raises(RuntimeError) as info:  # PyTorch's type
        jt.ones(2, 3) + jt.ones(4, 3)
    msg = str(info.value)
    assert "(2, 3)" in msg and "(4, 3)" in msg and "broadcast" in msg


def test_broadcast_error_names_the_op():
    with pytest.raises(RuntimeError, match=r"^mul: shapes \(5,\) and \(2, 3\)"):
        jt.ones(5) * jt.ones(2, 3)
    with pytest.raises(RuntimeError, match="cannot be broadcast"):
        jt.broadcast_tensors(jt.ones(2), jt.ones(3))


def test_inplace_broadcast_to_wrong_shape():
    with pytest.raises(RuntimeError, match=re.escape("(3,)")):
        jt.ones(3).add_(jt.ones(2, 3))


def test_matmul_inner_size_mismatch():
    with pytest.raises(RuntimeError) as info:
        jt.ones(2, 3) @ jt.ones(4, 5)
    msg = str(info.value)
    assert "2x3" in msg and "4x5" in msg and "3 != 4" in msg
    with pytest.raises(RuntimeError, match="3 != 2"):
        jt.matmul(jt.ones(3), jt.ones(2))
    with pytest.raises(RuntimeError, match="at least 1D"):
        jt.matmul(jt.tensor(1.0), jt.ones(2))


@pytest.mark.parametrize(
    "fn,expect",
    [
        (lambda x: x[3], "index 3 is out of bounds for dimension 0 with size 3"),
        (lambda x: x[0, -5], "index -5 is out of bounds for dimension 1 with size 4"),
        (lambda x: x[jt.tensor([0, 7])], "7"),
        (
            lambda x: x.gather(1, jt.tensor([[4], [0], [0]])),
            "index 4 is out of bounds for dimension 1 with size 4",
        ),
        (lambda x: x.index_select(0, jt.tensor([5])), "index 5 is out of bounds"),
        (lambda x: x[0, 0, 0], "too many indices for tensor of dimension 2"),
        (lambda x: x.sum(2), "Dimension out of range"),
    ],
)
def test_index_out_of_range(fn, expect):
    x = jt.ones(3, 4)
    with pytest.raises(IndexError) as info:
        fn(x)
    assert expect in str(info.value)


def test_setitem_index_out_of_range():
    with pytest.raises(IndexError, match="out of bounds"):
        jt.zeros(3)[3] = 1.0


def test_mixing_devices():
    with pytest.raises(RuntimeError) as info:
        jt.ones(3) + jt.ones(3, device="meta")
    msg = str(info.value)
    assert "same device" in msg and "cpu" in msg and "meta" in msg


def test_meta_tensors_propagate_shapes_without_data():
    m = jt.ones(2, 3, device="meta")
    out = (m @ jt.ones(3, 4, device="meta")).sum(0)
    assert out.shape == (4,) and out.device == jt.device("meta")
    with pytest.raises(RuntimeError, match="meta"):
        out.tolist()


def test_backward_on_nonscalar_without_gradient():
    x = jt.ones(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError) as info:
        (x * 2).backward()
    msg = str(info.value)
    assert "scalar outputs" in msg and "(2, 3)" in msg


def test_backward_gradient_of_wrong_shape():
    x = jt.ones(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match=re.escape("(3,)")):
        (x * 2).backward(jt.ones(3))


def test_backward_on_tensor_without_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        jt.ones(2).sum().backward()


def test_item_on_more_than_one_element():
    with pytest.raises(RuntimeError) as info:
        jt.ones(2, 2).item()
    msg = str(info.value)
    assert "4 elements" in msg and "(2, 2)" in msg
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(jt.ones(2))


@pytest.mark.parametrize(
    "modify,op",
    [
        (lambda a, b: a.mul_(2), "mul"),
        (lambda a, b: b.add_(1), "mul"),
    ],
)
def test_saved_input_modified_in_place_names_the_op(modify, op):
    w = jt.ones(3, requires_grad=True)
    a = w * 1.5
    b = w + 1
    y = a * b
    modify(a, b)
    with pytest.raises(RuntimeError) as info:
        y.sum().backward()
    msg = str(info.value)
    assert "modified by an inplace operation" in msg and f"`{op}`" in msg and "version" in msg


def test_saved_output_modified_in_place_names_the_op():
    w = jt.ones(3, requires_grad=True)
    y = w.exp()
    y.add_(1)
    with pytest.raises(RuntimeError, match="output of `exp`"):
        y.sum().backward()


def test_saved_tensor_modified_through_a_view():
    w = jt.ones(2, 3, requires_grad=True)
    a = w * 1
    y = a.sin()
    with jt.no_grad():
        a[0].zero_()
    with pytest.raises(RuntimeError, match="`sin`"):
        y.sum().backward()


def test_inplace_on_leaf_that_requires_grad():
    x = jt.ones(3, requires_grad=True)
    for op in (lambda: x.add_(1), lambda: x.mul_(2), lambda: x.zero_(), lambda: x.__setitem__(0, 5.0)):
        with pytest.raises(RuntimeError, match="leaf tensor that requires grad.*in-place"):
            op()
    with jt.no_grad():
        x.add_(1)  # allowed, as optimizers do
    assert x.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("spec", ["float31", "torch.complex64", "uint16", "string"])
def test_unknown_dtype_string(spec):
    with pytest.raises(TypeError) as info:
        jt.zeros(2, dtype=spec)
    msg = str(info.value)
    assert repr(spec) in msg and "float32" in msg


def test_unsupported_numpy_dtype():
    with pytest.raises(TypeError, match="uint16"):
        jt.from_numpy(np.zeros(2, dtype=np.uint16))


def test_view_and_reshape_with_wrong_size():
    with pytest.raises(RuntimeError, match=re.escape("shape '[4, 4]' is invalid for input of size 12")):
        jt.ones(3, 4).view(4, 4)
    with pytest.raises(RuntimeError, match="only one dimension can be inferred"):
        jt.ones(3, 4).reshape(-1, -1)


def test_cat_and_stack_mismatch():
    with pytest.raises(RuntimeError, match=re.escape("Sizes of tensors must match except in dimension 0")):
        jt.cat([jt.ones(2, 3), jt.ones(2, 4)])
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        jt.stack([jt.ones(2), jt.ones(3)])


def test_expand_incompatible():
    with pytest.raises(RuntimeError, match="must match the existing size"):
        jt.ones(3, 2).expand(3, 4)


def test_bitwise_ops_on_floats():
    with pytest.raises(RuntimeError, match="bitwise_and is only defined for integer and bool tensors"):
        jt.ones(2) & jt.ones(2)
    with pytest.raises(RuntimeError, match="bitwise_not"):
        ~jt.ones(2)


def test_bool_subtraction_and_negation():
    with pytest.raises((RuntimeError, TypeError)):
        -jt.tensor([True])


# --- loss targets: class indices must be integers -------------------------------------------------


@pytest.mark.parametrize("loss", ["cross_entropy", "nll_loss"])
def test_float_class_indices_name_the_dtype_and_shapes(loss):
    """Float class indices of shape [N] for an [N, C] input: PyTorch's "expected target dtype to be
    Long", with the dtype and shapes given (not a complaint about probability targets' shape)."""
    expect = "expected target dtype to be Long"
    with pytest.raises(RuntimeError, match=expect):
        getattr(torch.nn.functional, loss)(torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(RuntimeError) as info:
        getattr(jt.nn.functional, loss)(jt.randn(4, 3), jt.tensor([0.0, 1.0, 2.0, 0.0]))
    msg = str(info.value)
    assert msg.startswith(f"{loss}: {expect}") and "float32 target of shape [4]" in msg
    assert "input of shape [4, 3]" in msg and "target.long()" in msg
    assert ("probabilities" in msg) == (loss == "cross_entropy")


@pytest.mark.parametrize("input_shape, target", [
    ((4, 3), lambda: jt.rand(4, 5)),  # neither indices nor the input's shape
    ((2, 3, 5), lambda: jt.rand(2, 5)),  # spatial class indices given as floats
    ((3,), lambda: jt.tensor(1.0)),  # unbatched
    ((4, 3), lambda: jt.tensor([True, False, True, True])),
])
def test_cross_entropy_targets_that_are_not_indices_or_probabilities(input_shape, target):
    t = target()
    with pytest.raises(RuntimeError, match=r"^cross_entropy: expected target dtype to be Long") as info:
        jt.nn.functional.cross_entropy(jt.randn(*input_shape), t)
    msg = str(info.value)
    assert f"{t.dtype.name} target of shape {list(t.shape)}" in msg and f"input of shape {list(input_shape)}" in msg
    index_shape = list(input_shape[:1] + input_shape[2:]) if len(input_shape) > 1 else []
    assert f"class indices (shape {index_shape})" in msg
    if t.dtype.is_floating_point:
        assert "class probabilities and must have the input's shape" in msg


def test_cross_entropy_still_takes_probabilities_and_int_indices():
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    probs = np.random.default_rng(1).dirichlet(np.ones(3), 4).astype(np.float32)
    for target in (probs, np.array([0, 2, 1, 0])):
        ours = jt.nn.functional.cross_entropy(jt.tensor(x), jt.tensor(target)).item()
        theirs = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(target)).item()
        assert ours == pytest.approx(theirs, rel=1e-5)


# --- tensors from nested sequences -----------------------------------------------------------------


@pytest.mark.parametrize("data", [
    [[1, 2, 3], [4, 5]],
    [[1, 2], [3, 4, 5]],
    [[[1, 2], [3, 4]], [[5, 6], [7]]],
    [[[1, 2]], [[3, 4], [5, 6]]],
    [[1.0, 2.0], (3.0,)],
])
def test_ragged_nested_lists_name_the_dim_like_pytorch(data):
    with pytest.raises(ValueError) as theirs:
        torch.tensor(data)
    for dtype in (None, jt.float64):
        with pytest.raises(ValueError) as ours:
            jt.tensor(data, dtype=dtype)
        assert str(ours.value) == str(theirs.value)


def test_numbers_and_sequences_mixed_at_one_dim():
    with pytest.raises(ValueError, match=re.escape("expected sequence of length 1 at dim 1 (got int)")):
        jt.tensor([[1], 2])
    with pytest.raises(ValueError, match=re.escape("expected a number at dim 1 (got a sequence of length 1)")):
        jt.tensor([1, [2]])
    with pytest.raises(ValueError, match=re.escape("expected sequence of length 0 at dim 1 (got 1)")):
        jt.tensor([[], [1]])
