"""Op-by-op comparison with PyTorch (the op table in tests/op_cases.py), plus the eager behaviours
that are not a single function of random inputs: creation, storage sharing, in-place versions,
interop and repr."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt
from tests.harness import run_case
from tests.op_cases import CASES, CASES_BY_NAME, OpCase, X


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_op_matches_torch(case):
    run_case(case)


def test_harness_runs_the_transform_and_catches_wrong_values_and_grads():
    calls = []

    def counting(fn):
        calls.append(fn)
        return fn

    run_case(CASES_BY_NAME["exp_float32"], transform=counting)
    assert len(calls) == 1
    off_by_ulps = lambda fn: lambda *xs: fn(*xs) * 1.001  # noqa: E731
    with pytest.raises(AssertionError, match="output 0"):
        run_case(CASES_BY_NAME["exp_float32"], transform=off_by_ulps)
    wrong_grad = lambda fn: lambda *xs: fn(*xs).detach() + xs[0] * 0  # right values, zero grads  # noqa: E731
    with pytest.raises(AssertionError, match="grad of input 0"):
        run_case(CASES_BY_NAME["exp_float32"], transform=wrong_grad)
    wrong_dtype = lambda fn: lambda *xs: fn(*xs).double()  # noqa: E731
    with pytest.raises(AssertionError, match="dtype"):
        run_case(CASES_BY_NAME["exp_float32"], transform=wrong_dtype)


def _scale_grad(factor: float):
    """A transform with the same values and `factor` times the gradient (computed in float32, so a
    float16 value rounds back to itself)."""

    def transform(fn):
        def wrapped(*xs):
            y = fn(*xs)
            wide = y.float()
            return (wide * factor - (wide * (factor - 1)).detach()).to(y.dtype)

        return wrapped

    return transform


def test_harness_tolerances_follow_the_dtype_and_the_output_scale():
    run_case(CASES_BY_NAME["sum_dim_float16"], transform=_scale_grad(1.0))
    # float16 gradients 2% off: they passed while float16 shared bfloat16's tolerance (20%)
    with pytest.raises(AssertionError, match="grad of input 0"):
        run_case(CASES_BY_NAME["sum_dim_float16"], transform=_scale_grad(1.02))
    with pytest.raises(AssertionError, match="grad of input 0"):
        run_case(CASES_BY_NAME["sum_dim_bfloat16"], transform=_scale_grad(1.1))
    # an error of 5e-7 on an output of scale 1e-3 is 5e-4 of it: an absolute float32 atol let it pass
    tiny = OpCase("tiny_values", lambda lib, x: x * 1e-3, (X(3, 4),))
    run_case(tiny)
    with pytest.raises(AssertionError, match="output 0"):
        run_case(tiny, transform=lambda fn: lambda x: fn(x) + 5e-7)


# ---------------------------------------------------------------------------------------------
# creation


def _same(got, want, exact: bool = True) -> None:
    """A jitorch tensor equals a torch tensor: shape, dtype name and values."""
    assert tuple(got.shape) == tuple(want.shape)
    assert str(got.dtype).split(".")[-1] == str(want.dtype).split(".")[-1], (got.dtype, want.dtype)
    g = np.asarray(got.detach().float().numpy() if got.dtype == jt.bfloat16 else got.detach().numpy())
    w = (want.float() if want.dtype == torch.bfloat16 else want).detach().numpy()
    if exact:
        np.testing.assert_array_equal(g, w)
    else:
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "data",
    [
        1.5,
        3,
        True,
        [1, 2, 3],
        [[1.0, 2.0], [3.0, 4.5]],
        [True, False],
        [[1, 2.5]],
        [],
        [[]],
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.ones(3, dtype=np.float64),
        np.float32(2.5),
        np.int64(7),
    ],
)
def test_tensor_from_data_matches_torch(data):
    _same(jt.tensor(data), torch.tensor(data))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int32", "int64", "bool"])
def test_creation_with_dtype(dtype):
    jd, td = getattr(jt, dtype), getattr(torch, dtype)
    _same(jt.tensor([[0, 1], [2, 3]], dtype=jd), torch.tensor([[0, 1], [2, 3]], dtype=td))
    _same(jt.zeros(2, 3, dtype=jd), torch.zeros(2, 3, dtype=td))
    _same(jt.ones((2, 3), dtype=jd), torch.ones((2, 3), dtype=td))
    _same(jt.full((2,), 1, dtype=jd), torch.full((2,), 1, dtype=td))
    _same(jt.eye(3, 2, dtype=jd), torch.eye(3, 2, dtype=td))
    e = jt.empty(4, 0, 2, dtype=jd)
    assert e.shape == (4, 0, 2) and e.dtype is jd
    x = jt.ones(2, 3, dtype=jd)
    for jfn, tfn in [(jt.zeros_like, torch.zeros_like), (jt.ones_like, torch.ones_like)]:
        _same(jfn(x), tfn(torch.ones(2, 3, dtype=td)))
    _same(jt.full_like(x, 1), torch.full_like(torch.ones(2, 3, dtype=td), 1))
    assert jt.empty_like(x).shape == (2, 3) and jt.empty_like(x).dtype is jd


@pytest.mark.parametrize("value", [2, 2.5, True])
def test_full_dtype_follows_value(value):
    _same(jt.full((2, 2), value), torch.full((2, 2), value))


def test_like_functions_override_dtype():
    x = jt.ones(2, 3, dtype=jt.int64)
    assert jt.zeros_like(x, dtype=jt.float16).dtype is jt.float16
    assert jt.rand_like(jt.ones(2, dtype=jt.float64)).dtype is jt.float64
    assert jt.randn_like(jt.ones(3, 2)).shape == (3, 2)
    r = jt.randint_like(x, 3, 7)
    assert r.dtype is jt.int64 and r.shape == (2, 3) and int(r.min()) >= 3 and int(r.max()) < 7


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((5,), {}),
        ((2, 9), {}),
        ((1, 4, 0.5), {}),
        ((0.0, 1.0, 0.1), {}),
        ((10, 0, -3), {}),
        ((5,), {"dtype": "float64"}),
        ((-2.5, 2.5), {}),
        ((3,), {"dtype": "int32"}),
        ((0, 1, 0.25), {"dtype": "float16"}),
    ],
)
def test_arange_matches_torch(args, kwargs):
    jk = {k: getattr(jt, v) for k, v in kwargs.items()}
    tk = {k: getattr(torch, v) for k, v in kwargs.items()}
    _same(jt.arange(*args, **jk), torch.arange(*args, **tk))


@pytest.mark.parametrize("args", [(0, 1, 5), (-1, 1, 1), (2, -2, 7), (0, 10, 0), (1.5, 2.5, 4)])
def test_linspace_matches_torch(args):
    _same(jt.linspace(*args), torch.linspace(*args), exact=False)
    _same(jt.linspace(*args, dtype=jt.float64), torch.linspace(*args, dtype=torch.float64), exact=False)


def test_as_tensor_and_from_numpy_share_memory():
    a = np.zeros(4, dtype=np.float32)
    t = jt.from_numpy(a)
    a[1] = 5
    t[2] = 7
    assert t.tolist() == [0.0, 5.0, 7.0, 0.0] and a[2] == 7
    s = jt.as_tensor(a)
    a[0] = -1
    assert s[0].item() == -1
    copied = jt.as_tensor(a, dtype=jt.float64)
    a[3] = 9
    assert copied[3].item() == 0 and copied.dtype is jt.float64
    fresh = jt.tensor(a)
    a[0] = 100
    assert fresh[0].item() == -1  # tensor() always copies
    assert jt.as_tensor([1, 2]).dtype is jt.int64
    existing = jt.ones(2)
    assert jt.as_tensor(existing) is existing


def test_random_shapes_ranges_and_dtypes():
    r = jt.rand(3, 4)
    assert r.shape == (3, 4) and r.dtype is jt.float32
    assert 0 <= float(r.min()) and float(r.max()) < 1
    n = jt.randn((1000,), dtype=jt.float64)
    assert n.dtype is jt.float64 and abs(float(n.mean())) < 0.2 and 0.8 < float(n.std()) < 1.2
    i = jt.randint(3, 9, (5, 6))
    assert i.dtype is jt.int64 and i.shape == (5, 6) and int(i.min()) >= 3 and int(i.max()) <= 8
    i2 = jt.randint(4, (100,))
    assert set(i2.tolist()) <= {0, 1, 2, 3} and len(set(i2.tolist())) == 4
    p = jt.randperm(10)
    assert p.dtype is jt.int64 and sorted(p.tolist()) == list(range(10))
    assert jt.rand(2, 0).shape == (2, 0)
    assert jt.randn(2, 3, requires_grad=True).requires_grad


def test_manual_seed_reproducible():
    def draw():
        return [
            jt.rand(3).tolist(),
            jt.randn(2, 2).tolist(),
            jt.randint(0, 100, (4,)).tolist(),
            jt.randperm(6).tolist(),
        ]

    jt.manual_seed(123)
    first = draw()
    jt.manual_seed(123)
    assert draw() == first
    jt.manual_seed(124)
    assert draw() != first
    g = jt.Generator().manual_seed(5)
    a = jt.rand(4, generator=g).tolist()
    g.manual_seed(5)
    assert jt.rand(4, generator=g).tolist() == a


# ---------------------------------------------------------------------------------------------
# views share storage: a write through the view shows in the base, and the other way round

_VIEW_FNS = {
    "view": lambda x: x.view(6, 4),
    "reshape": lambda x: x.reshape(2, 12),
    "permute": lambda x: x.permute(2, 0, 1),
    "transpose": lambda x: x.transpose(0, 1),
    "mT": lambda x: x.mT,
    "T": lambda x: x[1].T,
    "squeeze": lambda x: x.unsqueeze(0).squeeze(0),
    "unsqueeze": lambda x: x.unsqueeze(1),
    "expand_read": lambda x: x[:, :1].expand(2, 3, 4),
    "flatten": lambda x: x.flatten(),
    "unflatten": lambda x: x.unflatten(2, (2, 2)),
    "narrow": lambda x: x.narrow(1, 1, 2),
    "contiguous": lambda x: x.contiguous(),
    "slice": lambda x: x[:, 1:, ::2],
    "int_index": lambda x: x[1],
    "ellipsis_none": lambda x: x[..., None, 2],
    "detach": lambda x: x.detach(),
    "split": lambda x: x.split(1, dim=1)[1],
    "chunk": lambda x: x.chunk(2, dim=2)[1],
    "select": lambda x: x.select(2, 3),
    "unbind": lambda x: x.unbind(0)[1],
    "view_as": lambda x: x.view_as(jt.zeros(4, 6)),
}


@pytest.mark.parametrize("name", sorted(_VIEW_FNS))
def test_views_share_storage(name):
    fn = _VIEW_FNS[name]
    base = jt.arange(24, dtype=jt.float32).reshape(2, 3, 4)
    tbase = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    v = fn(base)
    tv = fn(tbase) if name != "view_as" else tbase.view(4, 6)
    _same(v, tv)
    base.add_(100)  # a write into the base shows in the view
    tbase.add_(100)
    _same(v, tv)
    if name != "expand_read":
        v.mul_(-1)  # and a write into the view shows in the base
        tv.mul_(-1)
        _same(base, tbase)


def test_view_of_noncontiguous_fails_but_reshape_copies():
    x = jt.arange(6).reshape(2, 3).t()
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        x.view(6)
    r = x.reshape(6)
    x[0, 0] = 50
    assert r[0].item() == 0  # a copy, as in PyTorch when the strides don't allow a view
    assert not x.is_contiguous() and x.contiguous().is_contiguous()
    assert x.stride() == torch.arange(6).reshape(2, 3).t().stride()


def test_integer_index_and_mask_copy():
    x = jt.arange(5)
    y = x[jt.tensor([0, 1])]
    m = x[x > 2]
    x[0] = 10
    x[4] = 10
    assert y.tolist() == [0, 1] and m.tolist() == [3, 4]


# ---------------------------------------------------------------------------------------------
# __setitem__ (the autograd form is in the op table: setitem_*)


@pytest.mark.parametrize(
    "key_fn,value",
    [
        (lambda lib: 1, 5.0),
        (lambda lib: (slice(None), 2), -1.0),
        (lambda lib: (Ellipsis, 0), 3),
        (lambda lib: (lib.tensor([0, 2]),), 7.0),
        (lambda lib: (lib.tensor([True, False, True]), 1), 2.5),
        (lambda lib: (slice(0, 2), slice(1, None)), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        (lambda lib: (lib.tensor([[0, 1], [2, 2]]), lib.tensor([[3, 0], [1, 1]])), 9.0),
        (lambda lib: (None, 1), 4.0),
    ],
)
def test_setitem_matches_torch(key_fn, value):
    x = jt.arange(12, dtype=jt.float32).reshape(3, 4)
    tx = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    x[key_fn(jt)] = jt.tensor(value) if isinstance(value, list) else value
    tx[key_fn(torch)] = torch.tensor(value) if isinstance(value, list) else value
    _same(x, tx)


def test_setitem_tensor_value_converts_dtype_and_bumps_version():
    x = jt.zeros(3, dtype=jt.int64)
    v0 = x._version
    x[1] = jt.tensor(2.7)
    assert x.tolist() == [0, 2, 0] and x.dtype is jt.int64 and x._version == v0 + 1


def test_setitem_with_autograd_grads_flow_to_value_and_base():
    a = jt.randn(3, 4, requires_grad=True)
    w = jt.randn(4, requires_grad=True)
    ta, tw = (
        torch.tensor(a.detach().numpy(), requires_grad=True),
        torch.tensor(w.detach().numpy(), requires_grad=True),
    )
    x = a * 1
    x[0] = w
    tx = ta * 1
    tx[0] = tw
    assert x.grad_fn is not None and not x.is_leaf
    (x * x).sum().backward()
    (tx * tx).sum().backward()
    _same(a.grad, ta.grad, exact=False)
    _same(w.grad, tw.grad, exact=False)
    assert a.grad[0].abs().sum().item() == 0  # the overwritten row gets no gradient


# ---------------------------------------------------------------------------------------------
# in-place ops and version counters


@pytest.mark.parametrize(
    "method,args",
    [
        ("add_", (1.0,)),
        ("sub_", (1.0,)),
        ("mul_", (2.0,)),
        ("div_", (2.0,)),
        ("zero_", ()),
        ("fill_", (3.0,)),
        ("clamp_", (0.2, 0.5)),
        ("pow_", (2,)),
        ("exp_", ()),
        ("neg_", ()),
        ("copy_", (np.ones(4, np.float32),)),
        ("masked_fill_", ("mask", 0.0)),
        ("abs_", ()),
        ("sqrt_", ()),
        ("tanh_", ()),
        ("floor_", ()),
    ],
)
def test_inplace_returns_self_bumps_version_and_matches_torch(method, args):
    x = jt.rand(3, 4)
    tx = torch.tensor(x.numpy())
    jargs = [jt.tensor(a) if isinstance(a, np.ndarray) else (x > 0.5) if a == "mask" else a for a in args]
    targs = [torch.tensor(a) if isinstance(a, np.ndarray) else (tx > 0.5) if a == "mask" else a for a in args]
    view = x[1]
    before = x._version
    out = getattr(x, method)(*jargs)
    getattr(tx, method)(*targs)
    assert out is x
    assert x._version == before + 1 and view._version == x._version  # views share the counter
    _same(x, tx, exact=False)


def test_inplace_on_view_writes_base_and_shares_version():
    x = jt.zeros(3, 4)
    row = x[1]
    row.add_(2)
    x[:, 0].fill_(-1)
    assert x.tolist() == torch.tensor([[-1.0, 0, 0, 0], [-1, 2, 2, 2], [-1, 0, 0, 0]]).tolist()
    assert x._version == row._version == 2


def test_inplace_int_tensor_rejects_float_result():
    x = jt.ones(3, dtype=jt.int64)
    with pytest.raises(RuntimeError, match="can't be cast"):
        x.mul_(1.5)
    x.add_(2)
    assert x.tolist() == [3, 3, 3] and x.dtype is jt.int64


def test_inplace_on_nonleaf_keeps_correct_gradients():
    a = jt.tensor([0.5, 1.0, 2.0], requires_grad=True)
    ta = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    for t in (a, ta):
        x = t * 2
        x.mul_(x.detach() + 1).sin_().add_(t)
        x.sum().backward()
    _same(a.grad, ta.grad, exact=False)


# ---------------------------------------------------------------------------------------------
# interop: numpy, Python values, DLPack


def test_numpy_shares_memory_and_array_protocol():
    x = jt.arange(4, dtype=jt.float32)
    a = x.numpy()
    a[0] = 10
    assert x[0].item() == 10
    assert np.asarray(x).dtype == np.float32 and np.array(x, dtype=np.float64).dtype == np.float64
    assert np.add(x, 1).tolist() == [11.0, 2.0, 3.0, 4.0]
    y = jt.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="detach"):
        y.numpy()
    assert y.detach().numpy().tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int32", "int64", "bool"])
def test_item_and_tolist_match_torch(dtype):
    vals = [[0, 1, 2], [3, 1, 0]]
    x, tx = jt.tensor(vals, dtype=getattr(jt, dtype)), torch.tensor(vals, dtype=getattr(torch, dtype))
    assert x.tolist() == tx.tolist()
    assert type(x.tolist()[0][0]) is type(tx.tolist()[0][0])
    assert x[1, 0].item() == tx[1, 0].item() and type(x[1, 0].item()) is type(tx[1, 0].item())
    assert (
        jt.tensor(2.5, dtype=getattr(jt, dtype)).tolist()
        == torch.tensor(2.5, dtype=getattr(torch, dtype)).tolist()
    )


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int32", "int64", "bool"])
def test_dlpack_round_trip_with_torch(dtype):
    tx = (torch.arange(6).reshape(2, 3) % 3).to(getattr(torch, dtype))
    x = jt.from_dlpack(tx)
    _same(x, tx)
    tx[0, 0] = 1  # shares memory
    assert x[0, 0].item() == 1
    back = torch.from_dlpack(x)
    _same(x, back)
    x[1, 2] = 0
    assert back[1, 2].item() == 0
    assert x.__dlpack_device__() == tx.__dlpack_device__()
    n = jt.from_dlpack(np.arange(3))
    assert n.tolist() == [0, 1, 2] and n.dtype is jt.int64


def test_dlpack_of_noncontiguous_view():
    x = jt.arange(12, dtype=jt.float32).reshape(3, 4).t()[1:]
    tx = torch.from_dlpack(x)
    _same(x, tx)
    assert tx.stride() == x.stride()


# ---------------------------------------------------------------------------------------------
# repr like PyTorch's


def _torch_repr(t) -> str:
    return repr(t).replace("torch.", "jitorch.")


@pytest.mark.parametrize(
    "make",
    [
        lambda lib: lib.tensor([1.0, -2.5, 3.25]),
        lambda lib: lib.tensor([[0.1234, -1.0], [2.0, 3.0]]),
        lambda lib: lib.tensor([1.0, 2.0, 3.0]),
        lambda lib: lib.tensor(3.5),
        lambda lib: lib.tensor([1, 2, -3]),
        lambda lib: lib.tensor([True, False]),
        lambda lib: lib.tensor([1.5, 2.0], dtype=lib.float64),
        lambda lib: lib.tensor([1.5, 2.0], dtype=lib.float16),
        lambda lib: lib.tensor([1, 2], dtype=lib.int32),
        lambda lib: lib.zeros(0),
        lambda lib: lib.zeros(2, 0),
        lambda lib: lib.zeros(0, dtype=lib.int64),
        lambda lib: lib.ones(2, 3, requires_grad=True),
        lambda lib: lib.ones(2, requires_grad=True) * 2,
        lambda lib: lib.tensor([1e-5, 1.0]),
        lambda lib: lib.tensor([1e10, 1.0]),
        lambda lib: lib.tensor([float("nan"), float("inf"), -1.5]),
        lambda lib: lib.arange(12.0).reshape(2, 2, 3),
        lambda lib: lib.tensor([[-0.5, 0.25], [10.0, -100.5]]),
        lambda lib: lib.ones(3, requires_grad=True).sum(),
    ],
)
def test_repr_matches_torch(make):
    assert repr(make(jt)) == _torch_repr(make(torch))


def test_predicates_and_small_helpers_match_torch():
    a = np.array([[1.0, np.nan, 3.0], [0.0, 5.0, -1.0]], dtype=np.float32)
    j, t = jt.tensor(a), torch.tensor(a)
    assert jt.allclose(j, j + 1e-9, equal_nan=True) == torch.allclose(t, t + 1e-9, equal_nan=True)
    assert jt.allclose(j, j) == torch.allclose(t, t)  # NaN is not close to itself without equal_nan
    assert jt.equal(j[:, 0], jt.tensor([1.0, 0.0])) and not jt.equal(j[:, 0], jt.tensor([1.0]))
    assert jt.is_tensor(j) and not jt.is_tensor(a) and jt.numel(j) == 6
    np.testing.assert_array_equal(jt.argwhere(j > 0).numpy(), torch.argwhere(t > 0).numpy())
    with jt.inference_mode():
        assert not (jt.ones(2, requires_grad=True) * 2).requires_grad


def test_relu_keeps_nan_and_passes_its_gradient_like_torch():
    data = np.array([-1.0, 0.0, 2.0, np.nan], dtype=np.float32)
    j = jt.tensor(data, requires_grad=True)
    t = torch.tensor(data, requires_grad=True)
    jy, ty = j.relu(), t.relu()
    jy.sum().backward()
    ty.sum().backward()
    np.testing.assert_array_equal(jy.detach().numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(j.grad.numpy(), t.grad.numpy())
