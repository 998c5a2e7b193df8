"""In-place ops on views under autograd, against PyTorch on the same float64 inputs: the base's
history becomes "old base with the view's region replaced" (PyTorch's CopySlices), every view of the
storage sees the new history, version errors and refusals come where PyTorch raises them, and a
compiled function that writes through views matches the eager one."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import jitorch as jt
import jitorch.nn.functional as F

TOL = 1e-12


def _inputs(shapes: dict[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) for name, shape in shapes.items()}


def _run(lib, fn: Callable, arrays: dict[str, np.ndarray], grad: tuple[str, ...]):
    """fn(lib, **tensors) -> a tensor; returns (its values, the gradient of each of `grad` of
    sum(out * weights)), with fixed weights so every element's gradient counts."""
    tensors = {k: lib.tensor(v, requires_grad=k in grad) for k, v in arrays.items()}
    out = fn(lib, **tensors)
    weights = np.linspace(-1.5, 2.0, out.numel()).reshape(tuple(out.shape))
    (out * lib.tensor(weights)).sum().backward()
    grads = {k: tensors[k].grad.numpy().copy() for k in grad}
    return out.detach().numpy().copy(), grads


def _same_as_torch(fn: Callable, shapes: dict[str, tuple], grad: tuple[str, ...] = ("x",), seed: int = 0) -> None:
    arrays = _inputs(shapes, seed)
    want, want_grads = _run(torch, fn, arrays, grad)
    got, got_grads = _run(jt, fn, arrays, grad)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    for k in grad:
        np.testing.assert_allclose(got_grads[k], want_grads[k], rtol=TOL, atol=TOL, err_msg=f"grad of {k}")


def _slices(lib, x):
    y = x * 2
    y[1:3, ::2].mul_(3)
    return y * y


def _select_then_relu(lib, x):
    y = x * 2
    y[:, 1].mul_(3)
    y[0].relu_()
    return y.sin()


def _narrow(lib, x):
    y = x + 1
    y.narrow(1, 1, 3).exp_()
    return y * x


def _flat_view(lib, x, w):
    y = x.clone()
    y.view(-1)[2:5].add_(w)
    return y * y


def _reshape_view(lib, x, w):
    y = x * 1.5
    y.reshape(20)[::3].mul_(w)
    return y.tanh()


def _transpose_copy(lib, x, z):
    y = x * 1.0
    y.transpose(0, 1)[1].copy_(z)
    return y * x


def _permute_3d(lib, x):
    y = x * 2
    y.permute(2, 0, 1)[1, :, 1:].sigmoid_()
    return y * y


def _diagonal(lib, x, w):
    y = x * 3
    y.diagonal().mul_(w)
    y.diagonal(1).zero_()
    return y.cos()


def _chained(lib, x):
    y = x * 1.0
    y[1:][:, 2:].t()[0].sin_()
    y.unsqueeze(0)[0, 2].squeeze().div_(4)
    return y * y


def _overlapping(lib, x):
    y = x * 2
    a = y[0:3]
    b = y[2:4]
    a.mul_(x[0:3])
    b.add_(a[2:3].exp())  # b and a share row 2: b reads a's new values and history
    return lib.cat([a.exp(), b.sin(), y], 0)


def _other_operand(lib, x, w):
    y = x * 1.0
    y[0].mul_(w)
    y[1].addcmul_(w, w)
    y[2:].add_(y[0])
    return y


def _base_written_while_views_live(lib, x, w):
    y = x * 1.0
    row = y[0]
    col = y[:, 1]
    y.mul_(w)  # the base itself: row and col see its new history
    col.add_(1)
    return lib.cat([row * row, col.exp(), y.reshape(-1)], 0)


def _row_loop(lib, x, w):
    y = x * 1.0
    rows = [y[i] for i in range(y.shape[0])]  # every row made before any write
    for i, r in enumerate(rows):
        r.mul_(w * (i + 1))
    return y.pow(2)


def _setitem_through_view(lib, x, w):
    y = x * 1.0
    y[1][1:4] = w[:3]
    y[:, 0][y[:, 0] > 0] = 0.5
    return y * x


def _view_of_plain_tensor(lib, x, w):
    y = lib.zeros(4, 5, dtype=lib.float64)
    v = y[1:3]  # made before y needs grad: it takes y's history when next used
    y.add_(w)
    return lib.cat([v.sin() * x[1:3], y], 0)




@pytest.mark.parametrize("fn", [_slices, _select_then_relu, _narrow, _chained, _overlapping])
def test_write_through_view_matches_torch(fn):
    _same_as_torch(fn, {"x": (4, 5)})


def test_permuted_3d_view():
    _same_as_torch(_permute_3d, {"x": (3, 4, 5)})


@pytest.mark.parametrize("fn, shapes", [
    (_flat_view, {"x": (4, 5), "w": (3,)}),
    (_reshape_view, {"x": (4, 5), "w": (7,)}),
    (_transpose_copy, {"x": (4, 5), "z": (4,)}),
    (_diagonal, {"x": (5, 5), "w": (5,)}),
    (_other_operand, {"x": (4, 5), "w": (5,)}),
    (_base_written_while_views_live, {"x": (4, 5), "w": (5,)}),
    (_row_loop, {"x": (4, 5), "w": (5,)}),
    (_setitem_through_view, {"x": (4, 5), "w": (5,)}),
    (_view_of_plain_tensor, {"x": (4, 5), "w": (4, 5)}),
])
def test_operand_that_requires_grad(fn, shapes):
    _same_as_torch(fn, shapes, grad=tuple(shapes))


def test_base_and_views_see_the_new_history():
    x = jt.tensor(np.arange(20.0).reshape(4, 5), requires_grad=True)
    y = x * 2
    other = y[2]  # made before the write, used after it
    old_fn = y.grad_fn
    view = y[:, 1]
    view.mul_(3)
    assert y.grad_fn is not old_fn and y.grad_fn.name() == "CopySlicesBackward0"
    assert view.grad_fn is not None and view._version == y._version == 1
    assert other.tolist() == [20.0, 66.0, 24.0, 26.0, 28.0]
    other.sum().backward()
    assert x.grad[2].tolist() == [2.0, 6.0, 2.0, 2.0, 2.0]
    assert x.grad[0].tolist() == [0.0] * 5


def test_plain_view_picks_up_history_of_its_base():
    y = jt.zeros(4, dtype=jt.float64)
    v = y[1:3]
    w = jt.tensor([1.0, 2.0, 3.0, 4.0], dtype=jt.float64, requires_grad=True)
    y.add_(w)
    assert not v.is_leaf and v.requires_grad  # as torch's: v took y's new history
    (v * v).sum().backward()
    assert w.grad.tolist() == [0.0, 4.0, 6.0, 0.0]


def test_double_backward_through_a_view_write():
    arrays = _inputs({"x": (3, 4)})

    def second(lib):
        x = lib.tensor(arrays["x"], requires_grad=True)
        y = x * 1.0
        y[0].mul_(x[1])
        y[2:].sin_()
        (g,) = lib.autograd.grad((y ** 3).sum(), [x], create_graph=True)
        (g * g).sum().backward()
        return g.detach().numpy(), x.grad.numpy()

    (g_t, gg_t), (g_j, gg_j) = second(torch), second(jt)
    np.testing.assert_allclose(g_j, g_t, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(gg_j, gg_t, rtol=TOL, atol=TOL)


def test_conv_result_takes_inplace_relu():
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in [(2, 3, 8, 8), (4, 3, 3, 3), (3, 2, 5), (4, 2, 3)]]

    def run(lib, fn):
        x, w, x1, w1 = [lib.tensor(a, requires_grad=True) for a in arrays]
        h = fn.conv2d(x, w, None, padding=1)
        h1 = fn.conv1d(x1, w1)
        if lib is jt:  # (what this test is about: bias-free results that are views of a product)
            assert h._base is not None and h1._base is not None
        out = fn.relu(h, inplace=True)
        out1 = fn.relu(h1, inplace=True)
        assert out is h and out1 is h1
        ((out * out).sum() + out1.sum() * 3).backward()
        return [t.detach().numpy() for t in (out, out1, x.grad, w.grad, x1.grad, w1.grad)]

    for got, want in zip(run(jt, F), run(torch, TF)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_compiled_write_through_views_matches_eager():
    arrays = _inputs({"x": (4, 5), "w": (5,), "s": (4, 5)}, seed=3)

    def make_step(lib, x, w):
        def step(s):  # x and w are read by the function like parameters; backward() inside
            y = x * s
            y[:, 1].mul_(3)
            y.transpose(0, 1)[2].add_(w[:4])
            y.view(-1)[3:7].mul_(w[1:5])
            y[0].relu_()
            loss = (y * y).sum()
            loss.backward()
            return y.detach(), loss.detach()
        return step

    def run(lib, compiled: bool):
        x, w = (lib.tensor(arrays[k], requires_grad=True) for k in ("x", "w"))
        step = make_step(lib, x, w)
        y, loss = (jt.compile(step) if compiled else step)(lib.tensor(arrays["s"]))
        return y.numpy(), loss.numpy(), x.grad.numpy(), w.grad.numpy()

    eager, compiled, want = run(jt, False), run(jt, True), run(torch, False)
    for got_c, got_e, expected in zip(compiled, eager, want):
        np.testing.assert_allclose(got_e, expected, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(got_c, expected, rtol=TOL, atol=TOL)


def test_compiled_forward_backward_outside():
    arrays = _inputs({"x": (4, 5)}, seed=4)

    def fwd(x):
        y = x * 2 + 1
        y[1:3].mul_(x[0])
        y[:, -1].sigmoid_()
        return y

    grads = []
    for f in (fwd, jt.compile(fwd)):
        x = jt.tensor(arrays["x"], requires_grad=True)
        y = f(x)
        (y * y).sum().backward()
        grads.append((y.detach().numpy(), x.grad.numpy()))
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=TOL, atol=TOL)


# --- errors where PyTorch raises ------------------------------------------------------------------


def _raises_in_both(fn: Callable, match: str) -> None:
    arrays = _inputs({"x": (4, 5)})
    for lib in (torch, jt):
        x = lib.tensor(arrays["x"], requires_grad=True)
        with pytest.raises(RuntimeError, match=match if lib is jt else None):
            fn(lib, x)


def test_leaf_view_is_refused():
    _raises_in_both(lambda lib, x: x[0].mul_(2), "view .* of a leaf tensor that requires grad")
    _raises_in_both(lambda lib, x: x.t()[1:].relu_(), "view .* of a leaf tensor that requires grad")
    x = jt.tensor(np.ones((2, 3)), requires_grad=True)
    with jt.no_grad():
        x[0].mul_(2)  # as an optimizer would: allowed, and not recorded
    assert x.tolist() == [[2.0] * 3, [1.0] * 3] and x.grad_fn is None


def test_expanded_view_is_refused():
    _raises_in_both(lambda lib, x: (x * 2)[0:1].expand(3, 5).mul_(2), "expanded view")


def test_views_of_multi_output_functions_are_refused():
    _raises_in_both(lambda lib, x: (x * 2).unbind(0)[1].mul_(2), "unbind")
    _raises_in_both(lambda lib, x: (x * 2).split([2, 3], dim=1)[0].relu_(), "split")
    _raises_in_both(lambda lib, x: (x * 2).chunk(2)[1][0].zero_(), "split")


def test_view_made_under_no_grad_is_refused():
    def fn(lib, x):
        with lib.no_grad():
            v = (x * 2)[0]
        v.mul_(x[1])

    _raises_in_both(fn, "created in no_grad mode")


@pytest.mark.parametrize("write", [
    lambda y: y[0].mul_(2),
    lambda y: y[:, 1:3].add_(1),
    lambda y: y.view(-1)[0:2].zero_(),
])
def test_saved_output_modified_through_view(write):
    arrays = _inputs({"x": (4, 5)})
    for lib in (torch, jt):
        x = lib.tensor(arrays["x"], requires_grad=True)
        y = x.sigmoid()  # its backward reads its output
        write(y)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_saved_view_modified_through_base():
    for lib in (torch, jt):
        x = lib.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
        y = x * 1.0
        z = y[0]
        p = z.sin()  # saves the view z
        y.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            p.sum().backward()


def test_no_version_error_where_torch_has_none():
    # the view's old values are not saved by the in-place op's gradient (add): torch computes
    _same_as_torch(lambda lib, x: _add_then_read(x), {"x": (4, 5)})


def _add_then_read(x):
    y = x * x
    y[1].add_(3)
    y[2].add_(y[1])
    return y


# --- a node saves only what the gradients it computes read ------------------------------------


@pytest.mark.parametrize("fn", [
    lambda lib, x: _write_after(x * 1.0, lambda y: y.add_(y * 3)),
    lambda lib, x: _write_after(x * 1.0, lambda y: y.mul_(y / 2)),
    lambda lib, x: _write_after(x * 1.0, lambda y: y.add_(y % 3)),
    lambda lib, x: _write_after(x * 1.0, lambda y: y[1].sub_(y[0] * 2)),
    lambda lib, x: _write_after(x * 2, lambda y: y.add_(lib.tensor(np.ones((4, 4))) @ y)),
])
def test_input_not_read_by_needed_gradients_may_change(fn):
    _same_as_torch(fn, {"x": (4, 5)})


def _write_after(y, write):
    write(y)
    return y


def test_input_read_by_needed_gradient_still_checked():
    arrays = _inputs({"x": (4, 5), "w": (4, 5)})
    for lib in (torch, jt):
        x, w = (lib.tensor(arrays[k], requires_grad=True) for k in ("x", "w"))
        y = x * 1.0
        z = y * w  # w's gradient reads y
        y.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            z.sum().backward()


def test_retained_grad_follows_inplace_writes():
    arrays = _inputs({"x": (3, 4)})
    found = []
    for lib in (torch, jt):
        x = lib.tensor(arrays["x"], requires_grad=True)
        y = x * 2
        y.retain_grad()
        y[0].mul_(3)
        z = x * 1.0
        z.retain_grad()
        z.exp_()
        ((y * y).sum() + z.sum()).backward()
        found.append((y.grad.numpy().copy(), z.grad.numpy().copy()))
    for got, want in zip(found[1], found[0]):
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


def test_view_of_a_leaf_after_a_write_through_its_detached_alias():
    arrays = _inputs({"x": (3, 4), "w": (4,)})
    found = []
    for lib in (torch, jt):
        x, w = (lib.tensor(arrays[k], requires_grad=True) for k in ("x", "w"))
        v = x[1]
        d = x.detach()
        d[0].mul_(w)  # d is no differentiable view: its history is its own, x's stays a leaf's
        ((v * v).sum() + (d * d).sum()).backward()
        found.append((x.grad.numpy().copy(), w.grad.numpy().copy()))
    for got, want in zip(found[1], found[0]):
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
