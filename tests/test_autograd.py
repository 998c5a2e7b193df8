"""The autograd engine against PyTorch: flags, backward options, autograd.grad and double backward,
grad modes, hooks, retained grads, broadcasting, deep graphs and freed graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt


def _pair(values, requires_grad: bool = True, dtype: str = "float32"):
    """The same values as a jitorch and a torch tensor."""
    arr = np.asarray(values, dtype=dtype)
    return (jt.tensor(arr, requires_grad=requires_grad), torch.tensor(arr, requires_grad=requires_grad))


def _close(got, want, tol: float = 1e-5) -> None:
    assert got is not None and want is not None
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=tol, atol=tol)


def test_flags_of_leaves_and_results():
    x = jt.tensor([1.0, 2.0], requires_grad=True)
    c = jt.tensor([3.0, 4.0])
    y = x * c
    assert x.requires_grad and x.is_leaf and x.grad_fn is None and x.grad is None
    assert not c.requires_grad and c.is_leaf
    assert y.requires_grad and not y.is_leaf and y.grad_fn.name() == "MulBackward0"
    assert (c * 2).grad_fn is None and not (c * 2).requires_grad
    s = y.sum()
    assert s.grad_fn.name() == "SumBackward0"
    assert any(fn is y.grad_fn for fn, _ in s.grad_fn.next_functions)
    with pytest.raises(RuntimeError, match="floating point"):
        jt.tensor([1, 2]).requires_grad_()


def test_backward_accumulates_into_grad():
    x, tx = _pair([1.0, -2.0, 3.0])
    for _ in range(2):
        (x * x).sum().backward()
        (tx * tx).sum().backward()
    _close(x.grad, tx.grad)
    assert x.grad.tolist() == [4.0, -8.0, 12.0]


def test_backward_with_gradient_argument():
    x, tx = _pair([[1.0, 2.0], [3.0, 4.0]])
    g = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    (x.exp() * 3).backward(gradient=jt.tensor(g))
    (tx.exp() * 3).backward(gradient=torch.tensor(g))
    _close(x.grad, tx.grad)


def test_retain_graph_allows_second_backward():
    x, tx = _pair([0.5, 1.5])
    y, ty = (x.sin() * x).sum(), (tx.sin() * tx).sum()
    y.backward(retain_graph=True)
    y.backward()
    ty.backward(retain_graph=True)
    ty.backward()
    _close(x.grad, tx.grad)


def test_second_backward_without_retain_graph_errors_clearly():
    x = jt.tensor([0.5, 1.5], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        y.backward()


@pytest.mark.parametrize(
    "name,fn",
    [
        ("exp", lambda x: x.exp()),
        ("log", lambda x: x.log()),
        ("sin", lambda x: x.sin()),
        ("cos", lambda x: x.cos()),
        ("tanh", lambda x: x.tanh()),
        ("sigmoid", lambda x: x.sigmoid()),
        ("sqrt", lambda x: x.sqrt()),
        ("rsqrt", lambda x: x.rsqrt()),
        ("reciprocal", lambda x: x.reciprocal()),
        ("pow_const", lambda x: x**3),
        ("pow_tensor", lambda x: x**x),
        ("rpow", lambda x: 2.0**x),
        ("mul_self", lambda x: x * x * x),
        ("div", lambda x: 1.5 / (x + 1)),
        ("log1p", lambda x: x.log1p()),
        ("expm1", lambda x: x.expm1()),
        ("erf", lambda x: x.erf()),
        ("abs", lambda x: (x - 1.1).abs() * x),
        ("softmax", lambda x: x.softmax(0)),
        ("logsumexp", lambda x: x.logsumexp(0) * x),
    ],
)
def test_double_backward_matches_torch(name, fn):
    x, tx = _pair([0.3, 0.7, 1.2, 2.0], dtype="float64")
    (gx,) = jt.autograd.grad(fn(x).sum(), x, create_graph=True)
    (tgx,) = torch.autograd.grad(fn(tx).sum(), tx, create_graph=True)
    _close(gx, tgx, 1e-10)
    assert gx.requires_grad
    v = np.array([1.0, -0.5, 2.0, 0.25])
    (ggx,) = jt.autograd.grad(gx, x, grad_outputs=jt.tensor(v))
    (tggx,) = torch.autograd.grad(tgx, tx, grad_outputs=torch.tensor(v))
    _close(ggx, tggx, 1e-10)


def test_autograd_grad_several_inputs_and_outputs_leaves_grad_untouched():
    a, ta = _pair([1.0, 2.0])
    b, tb = _pair([[0.5], [-1.0]])
    outs = [a * b, (a + b).sum()]
    touts = [ta * tb, (ta + tb).sum()]
    go = [jt.ones(2, 2), None]
    grads = jt.autograd.grad(outs, [a, b], grad_outputs=[go[0], jt.tensor(2.0)])
    tgrads = torch.autograd.grad(touts, [ta, tb], grad_outputs=[torch.ones(2, 2), torch.tensor(2.0)])
    for g, tg in zip(grads, tgrads):
        _close(g, tg)
    assert a.grad is None and b.grad is None
    c = jt.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="allow_unused"):
        jt.autograd.grad((a * 2).sum(), [a, c])
    assert jt.autograd.grad((a * 2).sum(), [a, c], allow_unused=True)[1] is None


def test_hessian_vector_product_via_create_graph():
    x, tx = _pair([0.5, -1.0, 2.0], dtype="float64")
    w, tw = _pair([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [1.5, 0.5, -0.5]], requires_grad=False, dtype="float64")
    f = lambda lib, x, w: ((w @ x).tanh() ** 2).sum()  # noqa: E731
    (g,) = jt.autograd.grad(f(jt, x, w), x, create_graph=True)
    (tg,) = torch.autograd.grad(f(torch, tx, tw), tx, create_graph=True)
    v = [1.0, 2.0, -1.0]
    (g * jt.tensor(v, dtype=jt.float64)).sum().backward()
    (tg * torch.tensor(v, dtype=torch.float64)).sum().backward()
    _close(x.grad, tx.grad, 1e-10)


def test_no_grad_enable_grad_and_set_grad_enabled():
    x = jt.ones(2, requires_grad=True)
    with jt.no_grad():
        y = x * 2
        assert not jt.is_grad_enabled()
        with jt.enable_grad():
            z = x * 2
            assert jt.is_grad_enabled()
    assert jt.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad

    @jt.no_grad()
    def f(t):
        return t * 3

    assert not f(x).requires_grad
    with jt.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert (x * 2).requires_grad


def test_detach_and_requires_grad_():
    x = jt.tensor([1.0, 2.0], requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and d.grad_fn is None
    d[0] = 5.0  # shares storage
    assert x[0].item() == 5.0
    y = (x * 2).detach().requires_grad_()
    assert y.is_leaf and y.requires_grad
    (y * y).sum().backward()
    assert y.grad.tolist() == [20.0, 8.0] and x.grad is None
    with pytest.raises(RuntimeError, match="leaf"):
        (x * 2).requires_grad_(False)


def test_hooks_on_leaf_and_nonleaf():
    x, tx = _pair([1.0, 2.0, 3.0])
    seen, tseen = [], []
    for lib_x, store in ((x, seen), (tx, tseen)):
        lib_x.register_hook(lambda g, store=store: store.append(g.detach().numpy().copy()) or g * 2)
        y = lib_x * lib_x
        y.register_hook(lambda g, store=store: store.append(g.detach().numpy().copy()))
        z = y * 3
        handle = z.register_hook(lambda g: g + 100)
        handle.remove()
        z.sum().backward()
    _close(x.grad, tx.grad)
    assert len(seen) == len(tseen) == 2
    for a, b in zip(seen, tseen):
        np.testing.assert_allclose(a, b)


def test_retain_grad_on_nonleaf():
    x, tx = _pair([1.0, -2.0])
    for t in (x, tx):
        y = t * 3
        y.retain_grad()
        z = (y * y).sum()
        z.backward()
        t.y = y
    _close(x.y.grad, tx.y.grad)
    assert (x * 2).grad is None


@pytest.mark.parametrize(
    "shape_a,shape_b",
    [((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((3,), ()), ((1, 3, 1), (2, 1, 5))],
)
def test_broadcast_input_gradients_reduce_to_input_shape(shape_a, shape_b):
    rng = np.random.default_rng(0)
    a, ta = _pair(rng.standard_normal(shape_a))
    b, tb = _pair(rng.standard_normal(shape_b))
    ((a * b + b) ** 2).sum().backward()
    ((ta * tb + tb) ** 2).sum().backward()
    assert a.grad.shape == shape_a and b.grad.shape == shape_b
    _close(a.grad, ta.grad)
    _close(b.grad, tb.grad)


def test_deep_chain_backward_has_no_recursion_limit():
    x = jt.tensor([1.0], dtype=jt.float64, requires_grad=True)
    y = x
    n = 100_000
    for _ in range(n):
        y = y * 1.0001
    y.backward(jt.ones(1, dtype=jt.float64))
    np.testing.assert_allclose(x.grad.item(), 1.0001**n, rtol=1e-9)


def test_grad_of_shared_subexpression_sums_paths():
    x, tx = _pair([0.5, 1.5])
    for t in (x, tx):
        h = t.exp()
        (h * h + h.sin() + h).sum().backward()
    _close(x.grad, tx.grad)


def test_backward_inputs_argument_limits_accumulation():
    a, ta = _pair([1.0, 2.0])
    b, tb = _pair([3.0, 4.0])
    (a * b).sum().backward(inputs=[a])
    (ta * tb).sum().backward(inputs=[ta])
    _close(a.grad, ta.grad)
    assert b.grad is None and tb.grad is None


def test_grad_fn_of_inplace_result_and_versions():
    a = jt.ones(3, requires_grad=True)
    x = a * 2
    v0 = x._version
    x.add_(1)
    assert x._version == v0 + 1 and x.grad_fn.name() == "AddBackward0"
    x.sum().backward()
    assert a.grad.tolist() == [2.0, 2.0, 2.0]


def test_integer_ops_do_not_require_grad():
    x = jt.tensor([1.5, 2.5], requires_grad=True)
    assert not x.argmax().requires_grad and not (x > 2).requires_grad
    assert x.max(0).values.requires_grad and not x.max(0).indices.requires_grad


def test_backward_computes_no_gradient_for_inputs_that_need_none():
    """A product with a constant or with data that needs no gradient: backward multiplies once per
    node (the gradient that flows back), and reduces nothing to a constant's shape."""
    x = jt.ones(4, requires_grad=True)
    data = jt.full((4,), 2.0)
    y = x
    for _ in range(10):
        y = (y * 1.5) * data - 0.25
    loss = y.sum()
    with jt.profiler.profile() as prof:
        loss.backward()
    counts = {r.key: r.count for r in prof.key_averages()}
    assert counts.get("mul", 0) == 20 and "sum" not in counts and counts.get("neg", 0) == 0
    np.testing.assert_allclose(x.grad.numpy(), np.full(4, 3.0**10), rtol=1e-5)


@pytest.mark.parametrize("write", [
    lambda y: y.copy_(y + 3),
    lambda y: y.add_(y.exp()),
    lambda y: y.mul_(y.sigmoid()),
])
def test_an_in_place_write_of_a_value_computed_from_the_tensor_keeps_its_history(write):
    """`y.add_(f(y))`: f's graph read y before the write; the write gives y a new grad_fn, which must
    not become f's producer (the gradient then stopped at y, silently)."""
    grads = []
    for lib in (jt, torch):
        x = lib.tensor([0.5, -1.0, 2.0], dtype=lib.float64, requires_grad=True)
        y = x * 2
        write(y)
        y.sum().backward()
        grads.append(np.asarray(x.grad.tolist()))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)


def _slices(lib, x):
    q, k, v = x.split(3, dim=-1)  # three slices of the last dim: one concatenation
    first, *_, last = x.unbind(0)  # indices of dim 0, two of four used: zeros fill the gaps
    return ((q * 2 + k.exp() - v).sum() + first.sin().sum() + (last ** 2).sum()
            + x[:, 1:3, ::2].sum() + x[..., 0].sum())  # a strided slice and an Ellipsis: added into zeros


def test_gradients_of_slices_are_put_together_once_and_match_torch(monkeypatch):
    """Gradients that reach a tensor through several of its slices are put together when they are
    all in: one concatenation where the slices cut one dim without overlapping (split, chunk,
    unbind), else one buffer of zeros they are added into, not a zero-padded full-size tensor each."""
    from jitorch import dispatch as dispatch_module

    a = np.random.default_rng(0).standard_normal((4, 5, 9)).astype(np.float32)
    x = jt.tensor(a, requires_grad=True)
    loss = _slices(jt, x)
    calls = []
    run = dispatch_module.dispatch

    def counted(prim, inputs, params):
        calls.append(prim.name)
        return run(prim, inputs, params)

    for module in ("jitorch.ops", "jitorch.gradients", "jitorch.tensor", "jitorch.creation"):
        monkeypatch.setattr(f"{module}.dispatch", counted, raising=False)
    loss.backward()
    expected = torch.tensor(a, requires_grad=True)
    _slices(torch, expected).backward()
    np.testing.assert_allclose(x.grad.numpy(), expected.grad.numpy(), rtol=1e-6, atol=1e-6)
    # each group: a split of the last dim (one cat), unbind's two used pieces (one cat), and the
    # two slices no cut can join (into one buffer of zeros): at most two zero-padded tensors
    assert calls.count("cat") <= 2 and calls.count("index_put") == 2, calls


def test_gradients_of_slices_differentiate_again_as_torchs():
    a = np.random.default_rng(1).standard_normal((4, 5, 9))
    grads = []
    for lib in (jt, torch):
        x = lib.tensor(a, requires_grad=True)
        (g,) = lib.autograd.grad(_slices(lib, x), x, create_graph=True)
        (g * g.cos()).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)
