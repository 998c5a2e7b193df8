"""Bad input gives an error that says what is wrong, with the shapes, dtypes or op involved."""

from __future__ import annotations

import re

import pytest

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


@pytest.mark.parametrize("spec", ["float31", "torch.complex64", "uint8", "string"])
def test_unknown_dtype_string(spec):
    with pytest.raises(TypeError) as info:
        jt.zeros(2, dtype=spec)
    msg = str(info.value)
    assert repr(spec) in msg and "float32" in msg


def test_unsupported_numpy_dtype():
    import numpy as np

    with pytest.raises(TypeError, match="uint8"):
        jt.from_numpy(np.zeros(2, dtype=np.uint8))


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
