"""The less common nn activations, layers and losses against PyTorch: forward values and gradients
in float64 (tolerance 1e-10) and float32, state_dict keys, PyTorch's errors for bad arguments, the
random layers' structure (dropout masks, RReLU slopes, Gumbel noise), and compiled forward+backward
equal to eager."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF

import jitorch as jt
import jitorch.nn as nn
import jitorch.nn.functional as F
from tests.nn_helpers import assert_close, backward_both, check, copy_module, nograd, pair, raises_like_torch

# PyTorch's deprecation warnings for calls these tests make on purpose
pytestmark = [pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmin"),
              pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")]

RNG = np.random.default_rng(7)
TOL64 = {"rtol": 1e-10, "atol": 1e-10}


def randn(*shape, scale: float = 1.0, dtype=np.float64) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def signs(*shape) -> np.ndarray:
    return np.where(RNG.random(shape) < 0.5, -1.0, 1.0)


def check64(jt_fn, torch_fn, *arrays):
    """`check` at float64 tolerances: outputs and every input's gradient within 1e-10."""
    return check(jt_fn, torch_fn, *arrays, grad_rtol=1e-10, grad_atol=1e-10, **TOL64)


def run_modules(jt_module, torch_module, *arrays, rtol: float = 1e-10, atol: float = 1e-10):
    """Same weights (torch's, through numpy), same inputs: outputs, input and parameter grads agree."""
    copy_module(jt_module, torch_module)
    pairs = [pair(a.array, False) if isinstance(a, nograd) else pair(a) for a in arrays]
    jout = jt_module(*[p[0] for p in pairs])
    tout = torch_module(*[p[1] for p in pairs])
    assert_close(jout, tout, rtol, atol)
    backward_both(jout, tout)
    for i, (j, t) in enumerate(pairs):
        if t.requires_grad:
            assert_close(j.grad, t.grad, rtol, atol, f"grad of input {i}")
    tparams = dict(torch_module.named_parameters())
    jparams = dict(jt_module.named_parameters())
    assert sorted(jparams) == sorted(tparams)
    for name, tp in tparams.items():
        assert_close(jparams[name].grad, tp.grad, rtol, atol, f"grad of {name}")
    assert list(jt_module.state_dict()) == list(torch_module.state_dict())
    return jout, tout


# ---------------------------------------------------------------------------------------------
# activations


ACTIVATIONS = [
    ("selu", lambda m, x: m.selu(x)),
    # (an alpha exact in float32: PyTorch's celu backward rounds 1/alpha through float32)
    ("celu", lambda m, x: m.celu(x, alpha=0.75)),
    ("glu", lambda m, x: m.glu(x)),
    ("glu_dim0", lambda m, x: m.glu(x, dim=0)),
    ("hardswish", lambda m, x: m.hardswish(x)),
    ("hardshrink", lambda m, x: m.hardshrink(x, 0.7)),
    ("softshrink", lambda m, x: m.softshrink(x)),
    ("softsign", lambda m, x: m.softsign(x)),
    ("tanhshrink", lambda m, x: m.tanhshrink(x)),
    ("threshold", lambda m, x: m.threshold(x, 0.3, -2.0)),
    ("softmin", lambda m, x: m.softmin(x, dim=1)),
    ("softmin_default_dim", lambda m, x: m.softmin(x)),
    ("log_softmax", lambda m, x: m.log_softmax(x, dim=-1)),
    ("rrelu_eval", lambda m, x: m.rrelu(x, 0.1, 0.3)),
]


@pytest.mark.parametrize("name,fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_float64(name, fn):
    check64(lambda t: fn(F, t), lambda t: fn(TF, t), randn(4, 6, scale=3.0))


def test_hardsigmoid_float64():
    """PyTorch's hardsigmoid backward multiplies by 1/6 rounded to float32 (1.0f / 6.0f) whatever
    the dtype: jitorch's exact 1/6 agrees to float32's precision there, exactly in the forward."""
    check(F.hardsigmoid, TF.hardsigmoid, randn(4, 6, scale=3.0), grad_rtol=1e-7, grad_atol=1e-10, **TOL64)
    check(F.hardsigmoid, TF.hardsigmoid, randn(4, 6, scale=3.0, dtype=np.float32), rtol=1e-5, atol=1e-6)
    run_modules(nn.Hardsigmoid().double(), tnn.Hardsigmoid().double(), randn(3, 4), rtol=1e-7)


@pytest.mark.parametrize("name,fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_float32(name, fn):
    check(lambda t: fn(F, t), lambda t: fn(TF, t), randn(4, 6, scale=3.0, dtype=np.float32), rtol=1e-5, atol=1e-6)


ACTIVATION_MODULES = [
    ("SELU", lambda m: m.SELU()),
    ("CELU", lambda m: m.CELU(1.5)),
    ("GLU", lambda m: m.GLU(dim=1)),
    ("Hardswish", lambda m: m.Hardswish()),
    ("Hardshrink", lambda m: m.Hardshrink(0.4)),
    ("Softshrink", lambda m: m.Softshrink(0.4)),
    ("Softsign", lambda m: m.Softsign()),
    ("Tanhshrink", lambda m: m.Tanhshrink()),
    ("Threshold", lambda m: m.Threshold(0.1, 20.0)),
    ("Softmin", lambda m: m.Softmin(dim=-1)),
    ("LogSoftmax", lambda m: m.LogSoftmax(dim=1)),
    ("PReLU", lambda m: m.PReLU()),
    ("PReLU_channels", lambda m: m.PReLU(4, init=0.1)),
    ("RReLU_eval", lambda m: m.RReLU(0.2, 0.4).eval()),
]


@pytest.mark.parametrize("name,make", ACTIVATION_MODULES, ids=[a[0] for a in ACTIVATION_MODULES])
def test_activation_module(name, make):
    torch_module = make(tnn).double()
    if name.startswith("PReLU"):  # slopes that are not all equal
        with torch.no_grad():
            torch_module.weight.copy_(torch.linspace(-0.5, 0.7, torch_module.weight.numel()))
    run_modules(make(nn).double(), torch_module, randn(3, 4, 5, scale=3.0))
    assert repr(make(nn)) == repr(make(tnn))


def test_prelu_unbatched_and_errors():
    check64(F.prelu, TF.prelu, randn(5), randn(1))
    check64(F.prelu, TF.prelu, randn(2, 3, 4, 4), randn(3))
    with pytest.raises(RuntimeError, match="Found parameter numbers = 3 and channel size = 4"):
        F.prelu(jt.randn(2, 4), jt.randn(3))


def test_activation_errors():
    with pytest.raises(RuntimeError, match="Halving dimension must be even, but dimension 1 is size 5"):
        F.glu(jt.randn(2, 5))
    message = r"lambda must be in range \[0, 3.40282e\+38\] for input dtype .*found -1"
    for m, lib in ((F, jt), (TF, torch)):
        with pytest.raises(RuntimeError, match=message):
            m.softshrink(lib.zeros(3), -1.0)


def test_rrelu_training_draws_slopes_in_range():
    x = jt.tensor(randn(2000, scale=3.0), requires_grad=True)
    jt.manual_seed(0)
    out = F.rrelu(x, 0.1, 0.3, training=True)
    out.sum().backward()
    xs, ys, g = x.detach().numpy(), out.detach().numpy(), x.grad.numpy()
    np.testing.assert_array_equal(ys[xs > 0], xs[xs > 0])
    slopes = ys[xs < 0] / xs[xs < 0]
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3 and slopes.std() > 0.03
    np.testing.assert_allclose(g[xs < 0], slopes, rtol=1e-12)  # the gradient is the drawn slope
    jt.manual_seed(0)
    np.testing.assert_array_equal(F.rrelu(x, 0.1, 0.3, training=True).detach().numpy(), ys)
    module = nn.RReLU(0.1, 0.3)
    assert module.training and not np.allclose(module(x).detach().numpy(), F.rrelu(x, 0.1, 0.3).detach().numpy())


def test_gumbel_softmax_soft_and_hard():
    logits = randn(6, 5)
    jt.manual_seed(3)
    soft = F.gumbel_softmax(jt.tensor(logits), tau=0.5)
    jt.manual_seed(3)
    u = jt.rand(6, 5, dtype=jt.float64).numpy()
    expected = torch.softmax((torch.tensor(logits) - torch.log(-torch.log(torch.tensor(u)))) / 0.5, -1)
    assert_close(soft, expected, **TOL64)

    x = jt.tensor(logits, requires_grad=True)
    jt.manual_seed(3)
    hard = F.gumbel_softmax(x, tau=0.5, hard=True)
    assert set(np.unique(hard.detach().numpy())) <= {0.0, 1.0}
    np.testing.assert_array_equal(hard.detach().numpy().argmax(-1), expected.numpy().argmax(-1))
    np.testing.assert_allclose(hard.detach().numpy().sum(-1), 1.0)
    weights = randn(6, 5)
    (hard * jt.tensor(weights)).sum().backward()  # straight through: the soft sample's gradient
    t = torch.tensor(logits, requires_grad=True)
    ((torch.softmax((t - torch.log(-torch.log(torch.tensor(u)))) / 0.5, -1)) * torch.tensor(weights)).sum().backward()
    assert_close(x.grad, t.grad, **TOL64)
    jt.manual_seed(3)
    along_dim0 = F.gumbel_softmax(jt.tensor(logits), hard=True, dim=0).numpy()
    np.testing.assert_allclose(along_dim0.sum(0), 1.0)


# ---------------------------------------------------------------------------------------------
# padding, pixel shuffle, upsampling


PAD_MODULES = [
    ("ZeroPad1d", lambda m: m.ZeroPad1d((1, 2)), (2, 3, 5)),
    ("ZeroPad2d", lambda m: m.ZeroPad2d(2), (2, 3, 4, 5)),
    ("ConstantPad1d", lambda m: m.ConstantPad1d(2, 3.5), (2, 3, 5)),
    ("ConstantPad2d", lambda m: m.ConstantPad2d((1, 0, 2, 1), -1.0), (2, 3, 4, 5)),
    ("ConstantPad3d", lambda m: m.ConstantPad3d(1, 0.5), (1, 2, 3, 4, 5)),
    ("ReflectionPad1d", lambda m: m.ReflectionPad1d((3, 1)), (2, 3, 5)),
    ("ReflectionPad2d", lambda m: m.ReflectionPad2d((1, 2, 3, 0)), (2, 3, 4, 5)),
    ("ReplicationPad1d", lambda m: m.ReplicationPad1d(4), (2, 3, 5)),
    ("ReplicationPad2d", lambda m: m.ReplicationPad2d((0, 3, 2, 1)), (3, 4, 5)),
    ("CircularPad2d", lambda m: m.CircularPad2d(2), (1, 3, 4, 5)),
]


@pytest.mark.parametrize("name,make,shape", PAD_MODULES, ids=[a[0] for a in PAD_MODULES])
def test_padding_modules(name, make, shape):
    run_modules(make(nn), make(tnn), randn(*shape))
    assert repr(make(nn)) == repr(make(tnn))


def test_pixel_shuffle_round_trip_and_errors():
    x = randn(2, 3, 8, 2, 3)
    check64(lambda t: F.pixel_shuffle(t, 2), lambda t: TF.pixel_shuffle(t, 2), x)
    check64(lambda t: F.pixel_unshuffle(t, 2), lambda t: TF.pixel_unshuffle(t, 2), randn(3, 4, 6))
    run_modules(nn.PixelShuffle(3), tnn.PixelShuffle(3), randn(1, 18, 2, 2))
    assert repr(nn.PixelUnshuffle(2)) == repr(tnn.PixelUnshuffle(2))
    run_modules(nn.PixelUnshuffle(2), tnn.PixelUnshuffle(2), randn(1, 2, 4, 6))
    with pytest.raises(RuntimeError, match=r"input.size\(-3\)=5 is not divisible by 4"):
        F.pixel_shuffle(jt.randn(1, 5, 2, 2), 2)
    with pytest.raises(RuntimeError, match=r"input.size\(-2\)=3 is not divisible by 2"):
        F.pixel_unshuffle(jt.randn(1, 1, 3, 4), 2)


INTERPOLATE = [
    ("nearest_size", (2, 3, 5, 7), {"size": (8, 4)}),
    ("nearest_scale", (2, 3, 5, 7), {"scale_factor": 1.7}),
    ("nearest_1d", (2, 3, 5), {"scale_factor": 3}),
    ("linear", (2, 3, 6), {"size": 11, "mode": "linear"}),
    ("linear_corners", (2, 3, 6), {"size": 4, "mode": "linear", "align_corners": True}),
    ("bilinear_size", (2, 3, 5, 7), {"size": (8, 4), "mode": "bilinear"}),
    ("bilinear_scale", (2, 3, 5, 7), {"scale_factor": (2, 0.5), "mode": "bilinear"}),
    ("bilinear_corners", (2, 3, 5, 7), {"scale_factor": 1.7, "mode": "bilinear", "align_corners": True}),
    ("bilinear_recompute", (1, 2, 5, 7), {"scale_factor": 2.3, "mode": "bilinear", "recompute_scale_factor": True}),
    ("bicubic_size", (2, 3, 5, 7), {"size": (9, 3), "mode": "bicubic"}),
    ("bicubic_corners", (2, 3, 5, 7), {"scale_factor": 1.5, "mode": "bicubic", "align_corners": True}),
    ("bicubic_down", (1, 2, 9, 8), {"size": 4, "mode": "bicubic"}),
    ("trilinear", (1, 2, 3, 4, 5), {"scale_factor": 1.5, "mode": "trilinear"}),
    ("area_down", (2, 3, 7, 9), {"size": (3, 4), "mode": "area"}),
    ("area_1d", (2, 3, 7), {"scale_factor": 0.5, "mode": "area"}),
]


@pytest.mark.parametrize("name,shape,kwargs", INTERPOLATE, ids=[a[0] for a in INTERPOLATE])
def test_interpolate_float64(name, shape, kwargs):
    check64(lambda t: F.interpolate(t, **kwargs), lambda t: TF.interpolate(t, **kwargs), randn(*shape))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_interpolate_float32(mode):
    check(lambda t: F.interpolate(t, scale_factor=1.3, mode=mode),
          lambda t: TF.interpolate(t, scale_factor=1.3, mode=mode), randn(2, 3, 6, 5, dtype=np.float32),
          rtol=1e-5, atol=1e-5)


def test_upsample_modules():
    x = randn(2, 3, 4, 5)
    for make in (lambda m: m.Upsample(scale_factor=2), lambda m: m.Upsample(size=(7, 3), mode="bicubic"),
                 lambda m: m.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True),
                 lambda m: m.UpsamplingBilinear2d(scale_factor=2), lambda m: m.UpsamplingNearest2d(size=6),
                 lambda m: m.Upsample(scale_factor=(2, 1), mode="bilinear")):
        run_modules(make(nn), make(tnn), x)
        assert repr(make(nn)) == repr(make(tnn))


@pytest.mark.parametrize("call", [
    lambda m, x: m.interpolate(x, size=3, align_corners=True),
    lambda m, x: m.interpolate(x[0], size=3, mode="bilinear"),
    lambda m, x: m.interpolate(x, size=3, mode="linear"),
    lambda m, x: m.interpolate(x, size=(3,), mode="bilinear"),
    lambda m, x: m.interpolate(x),
    lambda m, x: m.interpolate(x, size=3, scale_factor=2),
    lambda m, x: m.interpolate(x[0, 0], size=3),
    lambda m, x: m.interpolate(x, scale_factor=(2, 2, 2)),
], ids=["corners_nearest", "bilinear_3d", "linear_4d", "size_len", "no_size", "both", "2d_input", "scale_len"])
def test_interpolate_errors_match_torch(call):
    raises_like_torch(call, F, TF, np.zeros((1, 2, 5, 5)))


# ---------------------------------------------------------------------------------------------
# normalization, dropout, pooling, containers


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track", [False, True])
@pytest.mark.parametrize("rank", [1, 2])
def test_instance_norm(rank, track, affine):
    shape = (3, 4, 6) if rank == 1 else (3, 4, 5, 3)
    make = {1: "InstanceNorm1d", 2: "InstanceNorm2d"}[rank]
    jm = getattr(nn, make)(4, affine=affine, track_running_stats=track, momentum=0.3).double()
    tm = getattr(tnn, make)(4, affine=affine, track_running_stats=track, momentum=0.3).double()
    if affine:
        with torch.no_grad():
            tm.weight.copy_(torch.linspace(0.5, 2.0, 4))
            tm.bias.copy_(torch.linspace(-1.0, 1.0, 4))
    x = randn(*shape, scale=2.0) + 0.5
    run_modules(jm, tm, x)
    for name, buf in tm.named_buffers():
        assert_close(dict(jm.named_buffers())[name], buf, **TOL64)
    jm.eval(), tm.eval()
    run_modules(jm, tm, x[0])  # unbatched, and (with tracked statistics) in eval the running ones
    assert repr(jm) == repr(tm)


def test_instance_norm_functional_and_errors():
    x, mean, var = randn(2, 3, 7), randn(3), np.abs(randn(3)) + 0.5
    check64(lambda t: F.instance_norm(t), lambda t: TF.instance_norm(t), x)
    jm, jv = jt.tensor(mean), jt.tensor(var)
    tmean, tvar = torch.tensor(mean), torch.tensor(var)
    out = F.instance_norm(jt.tensor(x), jm, jv, momentum=0.2)
    expected = TF.instance_norm(torch.tensor(x), tmean, tvar, momentum=0.2)
    assert_close(out, expected, **TOL64)
    assert_close(jm, tmean, **TOL64)
    assert_close(jv, tvar, **TOL64)
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training"):
        F.instance_norm(jt.randn(2, 3, 1))
    with pytest.raises(ValueError, match=r"expected input's size at dim=1 to match num_features \(4\), but got: 3"):
        nn.InstanceNorm1d(4, affine=True)(jt.randn(2, 3, 5))
    with pytest.warns(UserWarning, match="input's size at dim=1 does not match num_features"):
        nn.InstanceNorm1d(4)(jt.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        nn.InstanceNorm1d(4)(jt.randn(2, 4, 5, 5))


@pytest.mark.filterwarnings("ignore:dropout2d")
@pytest.mark.parametrize("name,shape,channel_dims", [
    ("dropout1d", (4, 6, 50), 2), ("dropout1d", (6, 50), 1), ("dropout2d", (4, 6, 5, 5), 2),
    ("dropout2d", (4, 6, 50), 2),  # PyTorch's reading of a 3-D input: (N, C, L), with a warning
])
def test_channel_dropout_zeroes_whole_channels(name, shape, channel_dims):
    x = jt.tensor(np.abs(randn(*shape)) + 0.1, requires_grad=True)
    jt.manual_seed(1)
    out = getattr(F, name)(x, p=0.4)
    out.sum().backward()
    ys, xs = out.detach().numpy(), x.detach().numpy()
    per_channel = ys.reshape(*shape[:channel_dims], -1)
    kept = (per_channel != 0).all(-1)
    assert ((per_channel == 0).all(-1) | kept).all()  # each channel all kept or all dropped
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(ys[ys != 0], xs[ys != 0] / 0.6, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), np.where(ys != 0, 1 / 0.6, 0.0), rtol=1e-12)
    assert getattr(F, name)(x, p=0.4, training=False) is x


@pytest.mark.filterwarnings("ignore:dropout2d")
def test_dropout_modules_and_errors():
    x = jt.randn(2, 3, 4)
    for make in (lambda m: m.Dropout1d(0.3), lambda m: m.Dropout2d(), lambda m: m.AlphaDropout(0.2)):
        module = make(nn)
        assert repr(module) == repr(make(tnn))
        assert module.eval()(x) is x
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        nn.Dropout2d(1.5)
    with pytest.raises(RuntimeError, match="dropout1d: Expected 2D or 3D input, but received a 4D input"):
        F.dropout1d(x.unsqueeze(0))
    with pytest.raises(RuntimeError, match="dropout1d: Expected 2D or 3D input, but received a 4D input"):
        TF.dropout1d(torch.zeros(2, 3, 4, 4))
    with pytest.warns(UserWarning, match="dropout2d: Received a 3D input"):
        F.dropout2d(x)


def test_alpha_dropout_keeps_selu_statistics():
    x = jt.tensor(randn(200000))
    jt.manual_seed(2)
    out = F.alpha_dropout(x, 0.2, training=True).numpy()
    alpha, p = 1.7580993408473766, 0.2
    a = 1 / math.sqrt((alpha**2 * p + 1) * (1 - p))
    dropped = np.isclose(out, -alpha * a * (1 - p))
    assert abs(dropped.mean() - p) < 0.01
    np.testing.assert_allclose(out[~dropped], a * x.numpy()[~dropped] + alpha * a * p, rtol=1e-12)
    assert abs(out.mean()) < 0.02 and abs(out.std() - 1) < 0.02
    assert F.alpha_dropout(x, 0.2) is x  # training defaults to False, as PyTorch's


POOLS = [
    ("max_pool1d", lambda m, x: m.max_pool1d(x, 3, 2, 1), (2, 3, 9)),
    ("max_pool1d_dilated_ceil", lambda m, x: m.max_pool1d(x, 2, 2, 0, 2, ceil_mode=True), (3, 10)),
    ("avg_pool1d", lambda m, x: m.avg_pool1d(x, 3, 2, 1, count_include_pad=False), (2, 3, 9)),
    ("avg_pool1d_ceil", lambda m, x: m.avg_pool1d(x, 2, ceil_mode=True), (2, 3, 7)),
    ("adaptive_avg_pool1d", lambda m, x: m.adaptive_avg_pool1d(x, 4), (2, 3, 7)),
    ("adaptive_max_pool1d", lambda m, x: m.adaptive_max_pool1d(x, 3), (2, 3, 7)),
    ("adaptive_max_pool2d", lambda m, x: m.adaptive_max_pool2d(x, (3, 4)), (2, 3, 7, 9)),
    ("adaptive_max_pool2d_even", lambda m, x: m.adaptive_max_pool2d(x, 2), (3, 4, 6)),
    ("adaptive_max_pool2d_none", lambda m, x: m.adaptive_max_pool2d(x, (None, 2)), (1, 2, 5, 5)),
    ("adaptive_max_pool2d_up", lambda m, x: m.adaptive_max_pool2d(x, 5), (1, 2, 3, 4)),
]


@pytest.mark.parametrize("name,fn,shape", POOLS, ids=[a[0] for a in POOLS])
def test_pool_float64(name, fn, shape):
    check64(lambda t: fn(F, t), lambda t: fn(TF, t), randn(*shape))


def test_adaptive_max_pool_ties_send_the_gradient_to_the_first_maximum():
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 1:3, 1:3] = 1.0  # a window with several maxima
    check64(lambda t: F.adaptive_max_pool2d(t, 3), lambda t: TF.adaptive_max_pool2d(t, 3), x)


def test_pool_modules():
    x = randn(2, 3, 9)
    for make in (lambda m: m.MaxPool1d(3, 2, 1), lambda m: m.AvgPool1d(2), lambda m: m.AvgPool1d((3,), 1, 1),
                 lambda m: m.AdaptiveAvgPool1d(4), lambda m: m.AdaptiveMaxPool1d(2)):
        run_modules(make(nn), make(tnn), x)
        assert repr(make(nn)) == repr(make(tnn))
    run_modules(nn.AdaptiveMaxPool2d((2, 3)), tnn.AdaptiveMaxPool2d((2, 3)), randn(2, 3, 5, 7))
    assert repr(nn.AdaptiveMaxPool2d((2, 3))) == repr(tnn.AdaptiveMaxPool2d((2, 3)))
    with pytest.raises(RuntimeError, match="Expected 2D or 3D"):
        F.max_pool1d(jt.randn(2, 3, 4, 5), 2)


def test_parameter_list_and_dict():
    jl = nn.ParameterList([nn.Parameter(jt.ones(2)), jt.zeros(3)])
    tl = tnn.ParameterList([tnn.Parameter(torch.ones(2)), torch.zeros(3)])
    assert list(jl.state_dict()) == list(tl.state_dict()) == ["0", "1"]
    assert isinstance(jl[1], nn.Parameter) and jl[1].requires_grad and len(jl) == 2
    jl.append(jt.ones(4))
    assert [tuple(p.shape) for p in jl.parameters()] == [(2,), (3,), (4,)]
    assert [tuple(p.shape) for p in jl[1:]] == [(3,), (4,)]
    jd = nn.ParameterDict({"a": jt.ones(2), "b": nn.Parameter(jt.zeros(1))})
    td = tnn.ParameterDict({"a": torch.ones(2), "b": tnn.Parameter(torch.zeros(1))})
    assert list(jd.state_dict()) == list(td.state_dict())
    assert "a" in jd and isinstance(jd["a"], nn.Parameter) and list(jd) == ["a", "b"]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.scales = nn.ParameterList([jt.ones(3), jt.ones(3)])
            self.shifts = nn.ParameterDict({"x": jt.zeros(3)})

        def forward(self, x):
            return x * self.scales[0] * self.scales[-1] + self.shifts["x"]

    model = Model()
    assert list(model.state_dict()) == ["scales.0", "scales.1", "shifts.x"]
    model(jt.randn(3)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(IndexError):
        jl[5]


# ---------------------------------------------------------------------------------------------
# losses and distances


def _loss_inputs():
    x1, x2 = randn(5, 4), randn(5, 4)
    return x1, x2, nograd(signs(5))


LOSSES = [
    # zero targets: a constant (PyTorch's gradient for them is nan, jitorch's the limit 0 * log 0 -> 0)
    ("kl_div_batchmean", lambda m, x, t: m.kl_div(x, t, reduction="batchmean"),
     lambda: (np.log(np.abs(randn(4, 5)) + 0.1), nograd(np.abs(randn(4, 5)) * (randn(4, 5) > 0)))),
    ("kl_div_mean", lambda m, x, t: m.kl_div(x, t), lambda: (randn(4, 5), np.abs(randn(4, 5)))),
    ("kl_div_none", lambda m, x, t: m.kl_div(x, t, reduction="none"), lambda: (randn(4, 5), np.abs(randn(4, 5)))),
    ("kl_div_log_target", lambda m, x, t: m.kl_div(x, t, reduction="sum", log_target=True),
     lambda: (randn(4, 5), randn(4, 5))),
    ("margin_ranking", lambda m, a, b, t: m.margin_ranking_loss(a, b, t, margin=0.3),
     lambda: (randn(6), randn(6), nograd(signs(6)))),
    ("cosine_embedding", lambda m, a, b, t: m.cosine_embedding_loss(a, b, t, margin=0.2), _loss_inputs),
    ("cosine_embedding_sum", lambda m, a, b, t: m.cosine_embedding_loss(a, b, t, reduction="sum"), _loss_inputs),
    ("cosine_embedding_unbatched", lambda m, a, b, t: m.cosine_embedding_loss(a, b, t, reduction="none"),
     lambda: (randn(4), randn(4), nograd(np.array(-1.0)))),
    ("triplet", lambda m, a, p, n: m.triplet_margin_loss(a, p, n), lambda: (randn(5, 4), randn(5, 4), randn(5, 4))),
    ("triplet_swap_p1", lambda m, a, p, n: m.triplet_margin_loss(a, p, n, margin=2.0, p=1, swap=True,
                                                                 reduction="none"),
     lambda: (randn(5, 4), randn(5, 4), randn(5, 4))),
    ("hinge_embedding", lambda m, x, t: m.hinge_embedding_loss(x, t, margin=0.5),
     lambda: (randn(4, 5), nograd(signs(4, 5)))),
    ("soft_margin", lambda m, x, t: m.soft_margin_loss(x, t), lambda: (randn(4, 5), nograd(signs(4, 5)))),
    ("multilabel_soft_margin", lambda m, x, t: m.multilabel_soft_margin_loss(x, t),
     lambda: (randn(4, 5), nograd((randn(4, 5) > 0).astype(np.float64)))),
    ("multilabel_soft_margin_weight", lambda m, x, t, w: m.multilabel_soft_margin_loss(x, t, w, reduction="none"),
     lambda: (randn(4, 5), nograd((randn(4, 5) > 0).astype(np.float64)), nograd(np.abs(randn(5))))),
    ("poisson_nll", lambda m, x, t: m.poisson_nll_loss(x, t), lambda: (randn(4, 5), np.abs(randn(4, 5)) * 3)),
    ("poisson_nll_full", lambda m, x, t: m.poisson_nll_loss(x, t, log_input=False, full=True, reduction="sum"),
     lambda: (np.abs(randn(4, 5)) + 0.1, nograd(np.round(np.abs(randn(4, 5)) * 3)))),
    ("gaussian_nll", lambda m, x, t, v: m.gaussian_nll_loss(x, t, v),
     lambda: (randn(4, 5), randn(4, 5), np.abs(randn(4, 5)) + 0.1)),
    ("gaussian_nll_homoscedastic_full", lambda m, x, t, v: m.gaussian_nll_loss(x, t, v, full=True, reduction="none"),
     lambda: (randn(4, 5), randn(4, 5), np.abs(randn(4)) + 0.1)),
    ("gaussian_nll_clamped", lambda m, x, t, v: m.gaussian_nll_loss(x, t, v, eps=0.5, reduction="sum"),
     lambda: (randn(4, 5), randn(4, 5), np.abs(randn(4, 1)))),
    ("cosine_similarity", lambda m, a, b: m.cosine_similarity(a, b), lambda: (randn(5, 4, 3), randn(1, 4, 3))),
    ("cosine_similarity_zero", lambda m, a, b: m.cosine_similarity(a, b, dim=-1),
     lambda: (np.zeros((2, 3)), randn(2, 3))),
    ("pairwise_distance", lambda m, a, b: m.pairwise_distance(a, b), lambda: (randn(5, 4), randn(5, 4))),
    ("pairwise_distance_p3_keepdim", lambda m, a, b: m.pairwise_distance(a, b, p=3, keepdim=True),
     lambda: (randn(5, 4), randn(4))),
    ("normalize", lambda m, x: m.normalize(x, dim=-1), lambda: (randn(3, 4),)),
]


@pytest.mark.parametrize("name,fn,inputs", LOSSES, ids=[a[0] for a in LOSSES])
def test_loss_float64(name, fn, inputs):
    check64(lambda *t: fn(F, *t), lambda *t: fn(TF, *t), *inputs())


@pytest.mark.parametrize("name,fn,inputs", LOSSES[::3], ids=[a[0] for a in LOSSES[::3]])
def test_loss_float32(name, fn, inputs):
    def as32(a):
        return nograd(a.array.astype(np.float32)) if isinstance(a, nograd) else a.astype(np.float32)

    check(lambda *t: fn(F, *t), lambda *t: fn(TF, *t), *[as32(a) for a in inputs()], rtol=1e-5, atol=1e-6)


LOSS_MODULES = [
    (lambda m: m.KLDivLoss(reduction="batchmean", log_target=True), (randn(3, 4), randn(3, 4))),
    (lambda m: m.CosineEmbeddingLoss(margin=0.1), (randn(5, 4), randn(5, 4), nograd(signs(5)))),
    (lambda m: m.MarginRankingLoss(0.5, reduction="sum"), (randn(6), randn(6), signs(6))),
    (lambda m: m.TripletMarginLoss(margin=0.5, p=1.5), (randn(5, 4), randn(5, 4), randn(5, 4))),
    (lambda m: m.HingeEmbeddingLoss(2.0), (randn(4, 5), nograd(signs(4, 5)))),
    (lambda m: m.SoftMarginLoss(reduction="none"), (randn(4, 5), nograd(signs(4, 5)))),
    (lambda m: m.MultiLabelSoftMarginLoss(), (randn(4, 5), (randn(4, 5) > 0).astype(np.float64))),
    (lambda m: m.PoissonNLLLoss(full=True), (randn(4, 5), nograd(np.round(np.abs(randn(4, 5)) * 3)))),
    (lambda m: m.GaussianNLLLoss(full=True), (randn(4, 5), randn(4, 5), np.abs(randn(4, 5)) + 0.1)),
    (lambda m: m.CosineSimilarity(dim=0), (randn(4, 5), randn(4, 5))),
    (lambda m: m.PairwiseDistance(p=1.0, keepdim=True), (randn(4, 5), randn(4, 5))),
]


@pytest.mark.parametrize("make,arrays", LOSS_MODULES, ids=[str(i) for i in range(len(LOSS_MODULES))])
def test_loss_modules(make, arrays):
    run_modules(make(nn), make(tnn), *arrays)
    assert repr(make(nn)) == repr(make(tnn))


def test_multilabel_soft_margin_module_weight_buffer():
    weight = np.abs(randn(5))
    jm = nn.MultiLabelSoftMarginLoss(weight=jt.tensor(weight))
    tm = tnn.MultiLabelSoftMarginLoss(weight=torch.tensor(weight))
    assert list(jm.state_dict()) == list(tm.state_dict()) == ["weight"]
    run_modules(jm, tm, randn(4, 5), (randn(4, 5) > 0).astype(np.float64))


def test_gaussian_nll_scalar_var():
    check64(lambda x, t: F.gaussian_nll_loss(x, t, 0.7), lambda x, t: TF.gaussian_nll_loss(x, t, 0.7),
            randn(3, 2), randn(3, 2))


@pytest.mark.parametrize("call,error", [
    (lambda m, z: m.gaussian_nll_loss(z(4, 5), z(4, 5), z(3)), "var is of incorrect size"),
    (lambda m, z: m.gaussian_nll_loss(z(4, 5), z(4, 5), z(4, 5) - 2), "var has negative entry"),
    (lambda m, z: m.gaussian_nll_loss(z(4, 5), z(4, 5), z(4, 5), reduction="avg"), "avg is not valid"),
    (lambda m, z: m.margin_ranking_loss(z(3), z(3), z(3, 1)), "margin_ranking_loss : All input tensors should"),
    (lambda m, z: m.triplet_margin_loss(z(3, 2), z(2), z(3, 2)),
     "The anchor, positive, and negative tensors are expected to have the same number of dimensions"),
    (lambda m, z: m.kl_div(z(2), z(2), reduction="avg"), "avg is not a valid value for reduction"),
    (lambda m, z: m.TripletMarginLoss(margin=0.0), "TripletMarginLoss: expected margin to be greater than 0"),
    (lambda m, z: m.triplet_margin_loss(z(2, 3), z(2, 3), z(2, 3), margin=0), "margin must be greater than 0, got 0"),
    (lambda m, z: m.cosine_embedding_loss(z(5, 4), z(5, 4), z(5, 1)), "0D or 1D target tensor expected"),
    (lambda m, z: m.cosine_embedding_loss(z(4), z(4), z(1)), r"1D target tensor expects 2D input tensors, but found "
                                                              r"inputs with sizes \[4\] and \[4\]"),
    (lambda m, z: m.poisson_nll_loss(z(2), z(2), reduction="x"), "x is not a valid value for reduction"),
    (lambda m, z: m.celu(z(2), alpha=0.0), "ZeroDivisionError: alpha cannot be 0 for CELU"),
])
def test_loss_errors_match_torch(call, error):
    with pytest.raises((ValueError, RuntimeError), match=error) as expected:
        call(TF if "Loss" not in error else tnn, lambda *s: torch.ones(*s, dtype=torch.float64))
    with pytest.raises(type(expected.value), match=error):
        call(F if "Loss" not in error else nn, lambda *s: jt.ones(*s, dtype=jt.float64))


# ---------------------------------------------------------------------------------------------
# compiled forward + backward equal to eager


COMPILED = [
    ("interpolate_bicubic", lambda x, w: (F.interpolate(x, scale_factor=1.5, mode="bicubic") * 2).sum(-1)),
    ("interpolate_bilinear_corners",
     lambda x, w: F.interpolate(x, size=(3, 7), mode="bilinear", align_corners=True).tanh()),
    ("instance_norm", lambda x, w: F.instance_norm(x, weight=w, bias=w * 0.5)),
    ("prelu", lambda x, w: F.prelu(x, w) * x),
    ("kl_div", lambda x, w: F.kl_div(x.log_softmax(1), (x * 2).softmax(1), reduction="batchmean")),
    ("triplet", lambda x, w: F.triplet_margin_loss(x[0], x[1], x[0].flip(-1), swap=True)),
    ("adaptive_max_pool2d", lambda x, w: F.adaptive_max_pool2d(x, (3, 2))),
]


@pytest.mark.parametrize("name,fn", COMPILED, ids=[c[0] for c in COMPILED])
def test_compiled_matches_eager(name, fn):
    x_np, w_np = randn(2, 3, 4, 5, dtype=np.float32), randn(3, dtype=np.float32)
    results = []
    for run in (fn, jt.compile(fn)):
        x, w = jt.tensor(x_np, requires_grad=True), jt.tensor(w_np, requires_grad=True)
        out = run(x, w)
        (out * jt.tensor(np.linspace(-1, 1, out.numel(), dtype=np.float32).reshape(out.shape))).sum().backward()
        results.append((out.detach().numpy(), x.grad.numpy(), None if w.grad is None else w.grad.numpy()))
    for eager, compiled in zip(*results):
        if eager is not None:
            np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


def test_compiled_random_layers_draw_fresh_noise():
    """Dropout2d, RReLU and Gumbel noise inside a compiled function: drawn anew each call, from
    jitorch's generator, with the eager structure (whole channels, slopes in range, one-hot rows)."""

    def fn(x):
        return F.dropout2d(x, 0.5), F.rrelu(x, 0.1, 0.3, training=True), F.gumbel_softmax(x, hard=True, dim=1)

    compiled = jt.compile(fn)
    x = jt.tensor(randn(4, 6, 3, 3, dtype=np.float32), requires_grad=True)
    first, again = compiled(x), compiled(x)
    assert not np.array_equal(first[0].detach().numpy(), again[0].detach().numpy())
    per_channel = first[0].detach().numpy().reshape(4, 6, -1)
    assert ((per_channel == 0).all(-1) | (per_channel != 0).all(-1)).all()
    xs, slopes = x.detach().numpy(), first[1].detach().numpy() / x.detach().numpy()
    assert ((slopes[xs < 0] >= 0.1 - 1e-6) & (slopes[xs < 0] <= 0.3 + 1e-6)).all()
    np.testing.assert_array_equal(first[2].detach().numpy().sum(1), 1.0)
    sum(o.sum() for o in first).backward()
    assert x.grad is not None and np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("name", ["selu", "celu", "hardswish", "hardsigmoid", "rrelu"])
def test_inplace_forms_write_their_input(name):
    x_np = randn(3, 4)
    x = jt.tensor(x_np) * 1.0
    out = getattr(F, name)(x, inplace=True)
    assert out is x
    assert_close(x, getattr(TF, name)(torch.tensor(x_np)), **TOL64)


@pytest.mark.parametrize("name,kwargs", [
    ("relu", {}), ("leaky_relu", {"negative_slope": 0.2}), ("elu", {}), ("selu", {}), ("celu", {"alpha": 0.75}),
    ("hardsigmoid", {}), ("hardswish", {}), ("threshold", {"threshold": 0.1, "value": -1.0}),
    ("rrelu", {"training": False}), ("hardtanh", {}),
])
def test_in_place_activations_keep_the_gradient_of_what_they_overwrite(name, kwargs):
    """`F.x(t, inplace=True)` on an intermediate (the output of a bias-free convolution, as DCGAN's
    LeakyReLU(inplace=True)): the same values and input gradients as PyTorch's."""
    rng = np.random.default_rng(3)
    x_np, w_np = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    grads = []
    for lib in (jt, torch):
        x = lib.tensor(x_np, requires_grad=True)
        y = getattr(lib.nn.functional, name)(lib.nn.functional.conv2d(x, lib.tensor(w_np)), inplace=True, **kwargs)
        (y * y).sum().backward()
        grads.append((np.asarray(y.detach().numpy()), np.asarray(x.grad.numpy())))
    rtol = 1e-7 if name == "hardsigmoid" else 1e-10  # (PyTorch's backward rounds its 1/6 to float32)
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=rtol, atol=1e-12)
