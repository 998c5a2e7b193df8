"""The last PyTorch nn APIs jitorch lacked, against PyTorch: interpolate's 'nearest-exact', 5-d 'area'
and more bicubic/trilinear cases; conv_transpose3d and ConvTranspose3d; 5-d grid_sample; max pools
with return_indices and max_unpool1d/2d/3d. Forward values and input/weight gradients in float64
(tolerance 1e-10) and float32, PyTorch's errors, and each feature compiled equal to eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF

import jitorch as jt
import jitorch.nn as nn
import jitorch.nn.functional as F
from tests.nn_helpers import TOL64, assert_close, backward_both, check, check64, compiled_matches_eager, nograd, pair
from tests.nn_helpers import raises_like_torch as raises_like_torch_on
from tests.test_nn_more import run_modules

RNG = np.random.default_rng(23)


def randn(*shape, dtype=np.float64) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def check32(jt_fn, torch_fn, *arrays):
    return check(jt_fn, torch_fn, *[a.astype(np.float32) for a in arrays], rtol=1e-5, atol=1e-5,
                 grad_rtol=1e-4, grad_atol=1e-4)


def raises_like_torch(call) -> None:
    """`call(F, x)` raises what `call(TF, x)` raises: the same type, the message's first words."""
    raises_like_torch_on(call, F, TF, np.zeros((1, 2, 5, 5)))


# ---------------------------------------------------------------------------------------------
# interpolate


INTERPOLATE = [
    ("bicubic_up_corners", (2, 3, 5, 7), {"size": (11, 4), "mode": "bicubic", "align_corners": True}),
    ("bicubic_scale_down", (1, 2, 9, 8), {"scale_factor": 0.45, "mode": "bicubic"}),
    ("bicubic_scale_down_corners", (1, 2, 9, 8), {"scale_factor": 0.45, "mode": "bicubic", "align_corners": True}),
    ("bicubic_one_pixel", (1, 2, 1, 3), {"size": (4, 5), "mode": "bicubic"}),  # all taps clamp to one row
    ("trilinear_corners", (1, 2, 3, 4, 5), {"size": (5, 2, 7), "mode": "trilinear", "align_corners": True}),
    ("trilinear_scales", (2, 1, 3, 4, 5), {"scale_factor": (1.5, 0.7, 2), "mode": "trilinear"}),
    ("nearest_exact_1d", (2, 3, 7), {"scale_factor": 1.7, "mode": "nearest-exact"}),
    ("nearest_exact_down", (2, 3, 7, 9), {"size": (3, 4), "mode": "nearest-exact"}),
    ("nearest_exact_3d", (1, 2, 3, 4, 5), {"size": (7, 2, 11), "mode": "nearest-exact"}),
    ("area_3d", (1, 2, 7, 6, 5), {"size": (3, 4, 5), "mode": "area"}),
    ("area_3d_scale", (2, 1, 6, 7, 8), {"scale_factor": 0.5, "mode": "area"}),
]


@pytest.mark.parametrize("name,shape,kwargs", INTERPOLATE, ids=[a[0] for a in INTERPOLATE])
def test_interpolate_float64(name, shape, kwargs):
    check64(lambda t: F.interpolate(t, **kwargs), lambda t: TF.interpolate(t, **kwargs), randn(*shape))


@pytest.mark.parametrize("kwargs", [
    {"scale_factor": 2.3, "mode": "bicubic", "align_corners": False},
    {"size": (4, 3, 9), "mode": "trilinear"},
    {"scale_factor": 1.5, "mode": "nearest-exact"},
])
def test_interpolate_float32(kwargs):
    shape = (1, 2, 3, 5, 4) if kwargs["mode"] == "trilinear" else (2, 3, 6, 5)
    check32(lambda t: F.interpolate(t, **kwargs), lambda t: TF.interpolate(t, **kwargs), randn(*shape))


def test_nearest_exact_differs_from_nearest():
    """The two nearest modes pick different pixels when downsampling by 2: the test would not see a
    'nearest-exact' that ran 'nearest'."""
    x = jt.arange(8.0).reshape(1, 1, 8)
    assert F.interpolate(x, size=4, mode="nearest").tolist() == [[[0.0, 2.0, 4.0, 6.0]]]
    assert F.interpolate(x, size=4, mode="nearest-exact").tolist() == [[[1.0, 3.0, 5.0, 7.0]]]


def test_upsample_modules_new_modes():
    for make, shape in ((lambda m: m.Upsample(scale_factor=1.5, mode="nearest-exact"), (2, 3, 4, 5)),
                        (lambda m: m.Upsample(size=(6, 3), mode="bicubic", align_corners=True), (2, 3, 4, 5)),
                        (lambda m: m.Upsample(scale_factor=(1, 2, 0.5), mode="trilinear"), (1, 2, 3, 4, 6)),
                        (lambda m: m.Upsample(size=2, mode="area"), (1, 2, 3, 4, 6))):
        run_modules(make(nn), make(tnn), randn(*shape))
        assert repr(make(nn)) == repr(make(tnn))


@pytest.mark.parametrize("call", [
    lambda m, x: m.interpolate(x, size=3, mode="nearest-exact", align_corners=False),
    lambda m, x: m.interpolate(x[None], size=3, mode="bicubic"),
    lambda m, x: m.interpolate(x, size=3, mode="trilinear"),
    lambda m, x: m.interpolate(x, size=3, mode="cubic"),
    lambda m, x: m.interpolate(x[0, 0], size=3, mode="nearest-exact"),
], ids=["exact_corners", "bicubic_5d", "trilinear_4d", "bad_mode", "exact_2d"])
def test_interpolate_errors_match_torch(call):
    raises_like_torch(call)


# ---------------------------------------------------------------------------------------------
# conv_transpose3d


TRANSPOSE3D_CASES = [
    {},
    {"stride": 2, "padding": 1, "output_padding": 1},
    {"stride": (2, 1, 3), "padding": (2, 0, 1), "output_padding": (1, 0, 2), "dilation": (2, 1, 1), "groups": 2},
    {"output_padding": 1, "dilation": 2},  # output_padding < dilation, past the full result in every dim
]


@pytest.mark.parametrize("kwargs", TRANSPOSE3D_CASES)
def test_conv_transpose3d(kwargs):
    groups = kwargs.get("groups", 1)
    x, w, b = randn(2, 4, 3, 4, 5), randn(4, 3, 3, 2, 3), randn(3 * groups)
    check64(lambda x, w, b: F.conv_transpose3d(x, w, b, **kwargs),
            lambda x, w, b: TF.conv_transpose3d(x, w, b, **kwargs), x, w, b)


def test_conv_transpose3d_unbatched_no_bias_and_float32():
    x, w = randn(4, 3, 2, 5), randn(4, 2, 2, 3, 2)
    check64(lambda x, w: F.conv_transpose3d(x, w, stride=(1, 2, 2)),
            lambda x, w: TF.conv_transpose3d(x, w, stride=(1, 2, 2)), x, w)
    check32(lambda x, w: F.conv_transpose3d(x, w, padding=1, groups=2),
            lambda x, w: TF.conv_transpose3d(x, w, padding=1, groups=2), randn(2, 4, 3, 4, 5), w)


@pytest.mark.parametrize("kwargs", [
    {"stride": 2, "padding": 1, "output_padding": 1, "bias": False},
    {"stride": (2, 1, 1), "groups": 2, "dilation": (1, 2, 1)},
])
def test_conv_transpose3d_module(kwargs):
    torch_module, jt_module = tnn.ConvTranspose3d(4, 6, 3, **kwargs).double(), nn.ConvTranspose3d(4, 6, 3, **kwargs)
    jt_module = jt_module.double()
    assert tuple(jt_module.weight.shape) == tuple(torch_module.weight.shape)
    assert repr(jt_module) == repr(torch_module)
    run_modules(jt_module, torch_module, randn(2, 4, 3, 4, 5))


def test_conv_transpose3d_output_size():
    torch_module = tnn.ConvTranspose3d(3, 2, 3, stride=2, padding=1).double()
    jt_module = nn.ConvTranspose3d(3, 2, 3, stride=2, padding=1).double()
    x = randn(1, 3, 2, 4, 5)
    run_modules(jt_module, torch_module, x)  # (copies the weights)
    for size in ((4, 8, 10), (3, 7, 9), [1, 2, 4, 7, 9]):
        out = jt_module(jt.tensor(x), output_size=size)
        assert_close(out, torch_module(torch.tensor(x), output_size=size), **TOL64)
    with pytest.raises(ValueError, match="output_size must have 3 or 5 elements"):
        jt_module(jt.tensor(x), output_size=(9, 9))


def test_conv_transpose3d_errors():
    w = jt.ones(4, 2, 3, 3, 3)
    with pytest.raises(RuntimeError, match=r"expected input\[1, 5, 4, 4, 4\] to have 4 channels, but got 5"):
        F.conv_transpose3d(jt.ones(1, 5, 4, 4, 4), w)
    with pytest.raises(RuntimeError, match="output padding must be smaller than either stride or dilation"):
        F.conv_transpose3d(jt.ones(1, 4, 4, 4, 4), w, stride=(2, 2, 1), output_padding=(0, 0, 1))
    with pytest.raises(RuntimeError, match=r"Calculated output size per channel: \[-1, 2, 2\]"):
        F.conv_transpose3d(jt.ones(1, 4, 1, 2, 2), w, padding=(2, 1, 1))
    with pytest.raises(RuntimeError, match=r"Expected 4D \(unbatched\) or 5D \(batched\) input to conv_transpose3d"):
        F.conv_transpose3d(jt.ones(4, 4, 4), w)
    with pytest.raises(RuntimeError, match="expected a 5D weight"):
        F.conv_transpose3d(jt.ones(1, 4, 4, 4, 4), jt.ones(4, 2, 3, 3))


def test_conv_transpose3d_autocasts_as_pytorch():
    x, w = randn(1, 2, 3, 3, 3, dtype=np.float32), randn(2, 2, 2, 2, 2, dtype=np.float32)
    with jt.autocast("cpu"):
        ours = F.conv_transpose3d(jt.tensor(x), jt.tensor(w))
    with torch.autocast("cpu"):
        theirs = TF.conv_transpose3d(torch.tensor(x), torch.tensor(w))
    assert ours.dtype is jt.bfloat16 and theirs.dtype is torch.bfloat16


# ---------------------------------------------------------------------------------------------
# 5-d grid_sample


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_5d(padding_mode, align_corners):
    x, grid = randn(2, 3, 4, 5, 6), RNG.uniform(-1.3, 1.3, (2, 3, 4, 2, 3))
    check64(lambda x, g: F.grid_sample(x, g, "bilinear", padding_mode, align_corners),
            lambda x, g: TF.grid_sample(x, g, "bilinear", padding_mode, align_corners), x, grid)
    check64(lambda x, g: F.grid_sample(x, g, "nearest", padding_mode, align_corners),
            lambda x, g: TF.grid_sample(x, g, "nearest", padding_mode, align_corners), x, nograd(grid))


def test_grid_sample_5d_float32_and_spatial_transformer():
    theta = randn(2, 3, 4) * 0.5 + np.eye(3, 4)
    check32(lambda x, g: F.grid_sample(x, g, align_corners=False),
            lambda x, g: TF.grid_sample(x, g, align_corners=False), randn(2, 3, 4, 5, 6),
            RNG.uniform(-1.1, 1.1, (2, 2, 3, 4, 3)))
    check64(lambda t, x: F.grid_sample(x, F.affine_grid(t, (2, 3, 3, 4, 5), True), padding_mode="border",
                                       align_corners=True),
            lambda t, x: TF.grid_sample(x, TF.affine_grid(t, (2, 3, 3, 4, 5), True), padding_mode="border",
                                        align_corners=True), theta, randn(2, 3, 4, 5, 6))


@pytest.mark.parametrize("input_shape,grid_shape,message", [
    ((1, 1, 2, 2, 2), (1, 1, 1, 1, 2), "expected grid to have size 3 in last dimension"),
    ((1, 1, 2, 2), (1, 1, 1, 1, 2), "expected 4D (or 5D )?input and grid with same number of dimensions"),
    ((2, 1, 2, 2, 2), (1, 1, 1, 1, 2), "expected grid and input to have same batch size"),
    ((1, 2, 2), (1, 1, 1), r"expected \dD (or 5D )?input and grid with same number of dimensions"),
])
def test_grid_sample_errors_match_torch(input_shape, grid_shape, message):
    with pytest.raises(RuntimeError, match=message):
        TF.grid_sample(torch.ones(input_shape), torch.zeros(grid_shape), align_corners=False)
    with pytest.raises(RuntimeError, match=message) as got:
        F.grid_sample(jt.ones(*input_shape), jt.zeros(*grid_shape), align_corners=False)
    assert str(list(grid_shape)) in str(got.value)


# ---------------------------------------------------------------------------------------------
# max pooling with return_indices, max unpooling


def _with_ties(shape) -> np.ndarray:
    """Random values with runs of zeros (as after a ReLU), so that windows tie for their maximum."""
    x = randn(*shape)
    return np.where(x < 0.3, 0.0, x)


def check_indices(jt_fn, torch_fn, x: np.ndarray, rtol=1e-10, atol=1e-10):
    """Values, indices (exactly, int64) and the input's gradient of a pool called with return_indices."""
    j, t = pair(x)
    (jout, jidx), (tout, tidx) = jt_fn(j), torch_fn(t)
    assert jidx.dtype is jt.int64
    np.testing.assert_array_equal(jidx.numpy(), tidx.numpy())
    assert_close(jout, tout, rtol, atol)
    backward_both(jout, tout)
    assert_close(j.grad, t.grad, rtol, atol, "grad of input")


POOL_INDICES = [
    ("max_pool1d", (2, 3, 9), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("max_pool1d", (3, 10), {"kernel_size": 2, "dilation": 2, "ceil_mode": True}),
    ("max_pool2d", (2, 3, 6, 8), {"kernel_size": 2}),  # tiling windows
    ("max_pool2d", (3, 7, 8), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("max_pool2d", (2, 3, 7, 8), {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0), "dilation": (2, 1),
                                  "ceil_mode": True}),
    ("max_pool3d", (2, 3, 4, 6, 6), {"kernel_size": 2}),
    ("max_pool3d", (3, 5, 6, 7), {"kernel_size": (3, 2, 2), "stride": (2, 1, 2), "padding": (1, 1, 0),
                                  "ceil_mode": True}),
    ("max_pool3d", (2, 2, 5, 6, 7), {"kernel_size": 2, "stride": 1, "padding": 1, "dilation": (2, 1, 1)}),
    ("adaptive_max_pool1d", (2, 3, 7), {"output_size": 3}),
    ("adaptive_max_pool2d", (2, 3, 7, 9), {"output_size": (3, 4)}),
    ("adaptive_max_pool2d", (3, 7, 9), {"output_size": (5, None)}),
    ("adaptive_max_pool3d", (2, 3, 5, 6, 7), {"output_size": (2, None, 3)}),
    ("adaptive_max_pool3d", (3, 4, 7, 9), {"output_size": 3}),
]


@pytest.mark.parametrize("name,shape,kwargs", POOL_INDICES, ids=[f"{c[0]}-{i}" for i, c in enumerate(POOL_INDICES)])
def test_max_pool_return_indices(name, shape, kwargs):
    check_indices(lambda x: getattr(F, name)(x, return_indices=True, **kwargs),
                  lambda x: getattr(TF, name)(x, return_indices=True, **kwargs), _with_ties(shape))


def test_max_pool_return_indices_float32_and_modules():
    x = _with_ties((2, 3, 7, 8)).astype(np.float32)
    check_indices(lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True),
                  lambda x: TF.max_pool2d(x, 3, 2, 1, return_indices=True), x, 1e-6, 1e-6)
    for jt_module, torch_module, shape in (
        (nn.MaxPool2d(3, 2, 1, return_indices=True), tnn.MaxPool2d(3, 2, 1, return_indices=True), (2, 3, 7, 8)),
        (nn.MaxPool1d(2, return_indices=True), tnn.MaxPool1d(2, return_indices=True), (2, 3, 7)),
        (nn.MaxPool3d(2, return_indices=True), tnn.MaxPool3d(2, return_indices=True), (1, 2, 4, 4, 5)),
        (nn.AdaptiveMaxPool2d(3, return_indices=True), tnn.AdaptiveMaxPool2d(3, return_indices=True), (2, 3, 7, 8)),
        (nn.AdaptiveMaxPool1d(4, return_indices=True), tnn.AdaptiveMaxPool1d(4, return_indices=True), (2, 3, 7)),
        (nn.AdaptiveMaxPool3d((2, 3, 2), return_indices=True), tnn.AdaptiveMaxPool3d((2, 3, 2), return_indices=True),
         (1, 2, 5, 4, 3)),
    ):
        check_indices(jt_module, torch_module, _with_ties(shape))
        assert repr(jt_module) == repr(torch_module)


def test_adaptive_max_pool3d_values_and_errors():
    check64(lambda x: F.adaptive_max_pool3d(x, (3, 2, 4)), lambda x: TF.adaptive_max_pool3d(x, (3, 2, 4)),
            _with_ties((2, 3, 5, 6, 7)))
    run_modules(nn.AdaptiveMaxPool3d(2), tnn.AdaptiveMaxPool3d(2), randn(1, 2, 5, 4, 3))
    with pytest.raises(RuntimeError, match=r"Expected 4D or 5D tensor, but got:? \[5, 6\]"):
        F.adaptive_max_pool3d(jt.ones(5, 6), 2)
    with pytest.raises(RuntimeError, match=r"Expected 4D or 5D tensor, but got:? \[5, 6\]"):
        TF.adaptive_max_pool3d(torch.ones(5, 6), 2)


UNPOOL = [
    (1, (2, 3, 9), {"kernel_size": 3, "stride": 2, "padding": 1}, None),
    (1, (3, 8), {"kernel_size": 2}, (9,)),
    (2, (2, 3, 7, 8), {"kernel_size": 3, "stride": 2, "padding": 1}, (7, 8)),
    (2, (3, 6, 8), {"kernel_size": 2}, None),
    (3, (2, 2, 5, 6, 7), {"kernel_size": 2, "stride": 2}, (2, 2, 5, 6, 7)),
    (3, (2, 4, 4, 5), {"kernel_size": (2, 1, 2), "stride": (1, 2, 2)}, (4, 4, 5)),
]


@pytest.mark.parametrize("nd,shape,kwargs,output_size", UNPOOL)
def test_max_unpool(nd, shape, kwargs, output_size):
    pooled, indices = getattr(TF, f"max_pool{nd}d")(torch.tensor(randn(*shape)), return_indices=True, **kwargs)
    kw = {"kernel_size": kwargs["kernel_size"], "stride": kwargs.get("stride"), "padding": kwargs.get("padding", 0)}
    check64(lambda x: getattr(F, f"max_unpool{nd}d")(x, jt.tensor(indices.numpy()), output_size=output_size, **kw),
            lambda x: getattr(TF, f"max_unpool{nd}d")(x, indices, output_size=output_size, **kw), pooled.numpy())


def test_max_unpool_modules_round_trip():
    x = randn(2, 3, 6, 8)
    for jt_pool, jt_unpool, torch_pool, torch_unpool in (
        (nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2), tnn.MaxPool2d(2, return_indices=True),
         tnn.MaxUnpool2d(2)),
        (nn.MaxPool2d(3, 2, 1, return_indices=True), nn.MaxUnpool2d(3, 2, 1), tnn.MaxPool2d(3, 2, 1,
                                                                                          return_indices=True),
         tnn.MaxUnpool2d(3, 2, 1)),
    ):
        assert repr(jt_unpool) == repr(torch_unpool)
        check64(lambda x, pool=jt_pool, unpool=jt_unpool: unpool(*pool(x), output_size=x.shape),
                lambda x, pool=torch_pool, unpool=torch_unpool: unpool(*pool(x), output_size=x.shape), x)
    assert repr(nn.MaxUnpool1d(2)) == repr(tnn.MaxUnpool1d(2))
    assert repr(nn.MaxUnpool3d((1, 2, 2), padding=1)) == repr(tnn.MaxUnpool3d((1, 2, 2), padding=1))


def test_max_unpool_errors():
    values, indices = jt.ones(1, 1, 2, 2), jt.tensor([[[[0, 1], [2, 3]]]])
    with pytest.raises(RuntimeError, match=r"Found an invalid max index: 16 \(output volumes are of size 4x4"):
        F.max_unpool2d(values, jt.tensor([[[[0, 1], [2, 16]]]]), 2)
    with pytest.raises(RuntimeError, match="Found an invalid max index: -1"):
        F.max_unpool2d(values, jt.tensor([[[[0, 1], [2, -1]]]]), 2)
    with pytest.raises(ValueError, match="output_size should be a sequence containing 2 or 4 elements"):
        F.max_unpool2d(values, indices, 2, output_size=(4,))
    with pytest.raises(ValueError, match=r'invalid output_size "\[6, 4\]" \(dim 0 must be between 2 and 6\)'):
        F.max_unpool2d(values, indices, 2, output_size=(6, 4))
    with pytest.raises(RuntimeError, match="Expected shape of indices to be same as that of the input tensor"):
        F.max_unpool2d(values, indices[..., :1], 2)
    with pytest.raises(RuntimeError, match="elements in indices should be type int64 but got: int32"):
        F.max_unpool2d(values, indices.to(jt.int32), 2)
    with pytest.raises(RuntimeError, match=r"Expected 2D or 3D \(batch mode\) tensor for input"):
        F.max_unpool1d(jt.ones(4), jt.tensor([0, 1, 2, 3]), 2)


# ---------------------------------------------------------------------------------------------
# compiled forward + backward equal to eager


COMPILED = [  # each reads a 120-element x
    ("bicubic", lambda x: F.interpolate(x.reshape(2, 3, 4, 5), scale_factor=1.5, mode="bicubic", align_corners=True)),
    ("nearest_exact_area_3d", lambda x: F.interpolate(x.reshape(1, 2, 3, 4, 5), size=(2, 5, 3), mode="nearest-exact")
     + F.interpolate(x.reshape(1, 2, 3, 4, 5), size=(2, 5, 3), mode="area")),
    ("conv_transpose3d", lambda x: F.conv_transpose3d(x[:60].reshape(1, 4, 3, 1, 5), x[60:108].reshape(4, 2, 2, 3, 1),
                                                      x[108:110], stride=(2, 1, 2), padding=(1, 0, 0),
                                                      output_padding=(1, 0, 1))),
    ("grid_sample_5d", lambda x: F.grid_sample(x.reshape(2, 3, 4, 5, 1).expand(2, 3, 4, 5, 2),
                                               x[:48].reshape(2, 2, 2, 2, 3).tanh() * 1.2, padding_mode="reflection",
                                               align_corners=False)),
    ("max_pool3d_unpool", lambda x: F.max_unpool3d(*F.max_pool3d(x.reshape(2, 3, 4, 5, 1), (2, 2, 1), (2, 1, 1),
                                                                 return_indices=True), (2, 2, 1), (2, 1, 1),
                                                   output_size=(4, 5, 1))),
    ("adaptive_max_pool3d", lambda x: F.adaptive_max_pool3d(x.reshape(2, 3, 4, 5, 1), (3, 2, 1))),
]


@pytest.mark.parametrize("name,fn", COMPILED, ids=[c[0] for c in COMPILED])
def test_compiled_matches_eager(name, fn):
    compiled_matches_eager(fn, RNG)


def test_compiled_pool_indices_match_eager_and_torch():
    x_np = _with_ties((2, 3, 7, 8)).astype(np.float32)

    def pool(x):
        out, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        a_out, a_indices = F.adaptive_max_pool2d(x, (3, 2), return_indices=True)
        return out, indices, a_out, a_indices

    eager, compiled = pool(jt.tensor(x_np)), jt.compile(pool)(jt.tensor(x_np))
    expected = (*TF.max_pool2d(torch.tensor(x_np), 3, 2, 1, return_indices=True),
                *TF.adaptive_max_pool2d(torch.tensor(x_np), (3, 2), return_indices=True))
    for e, c, t in zip(eager, compiled, expected):
        np.testing.assert_array_equal(c.numpy(), e.numpy())
        np.testing.assert_array_equal(c.numpy(), t.numpy())
