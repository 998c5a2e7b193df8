"""Transposed and 3-d convolutions, 3-d pooling, EmbeddingBag, affine_grid/grid_sample and CTC loss
against PyTorch: forward values and gradients in float64 (tolerance 1e-10), modules with PyTorch's
parameters copied in (state_dict keys, parameter gradients), PyTorch's errors for bad arguments, and a
compiled DCGAN-style generator step equal to eager."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as TF

import jitorch as jt
import jitorch.nn as nn
import jitorch.nn.functional as F
from tests.nn_helpers import TOL64, assert_close, check64, compiled_matches_eager, nograd
from tests.test_nn_more import run_modules

RNG = np.random.default_rng(11)


def randn(*shape, dtype=np.float64) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# transposed convolution


TRANSPOSE_CASES = [
    {},
    {"stride": 2, "padding": 1, "output_padding": 1},
    {"stride": 2, "padding": 2, "output_padding": 1, "dilation": 2, "groups": 2},
    {"output_padding": 1, "dilation": 2},  # output_padding < dilation, past the full result
    {"stride": (3, 2), "padding": (1, 0), "output_padding": (2, 1)},
]


@pytest.mark.parametrize("kwargs", TRANSPOSE_CASES)
def test_conv_transpose2d(kwargs):
    groups = kwargs.get("groups", 1)
    x, w, b = randn(2, 4, 5, 6), randn(4, 3, 3, 2), randn(3 * groups)
    check64(lambda x, w, b: F.conv_transpose2d(x, w, b, **kwargs),
            lambda x, w, b: TF.conv_transpose2d(x, w, b, **kwargs), x, w, b)


@pytest.mark.parametrize("kwargs", TRANSPOSE_CASES[:4])
def test_conv_transpose1d_unbatched_and_batched(kwargs):
    w = randn(4, 3, 3)
    for x in (randn(4, 7), randn(2, 4, 7)):
        check64(lambda x, w: F.conv_transpose1d(x, w, **kwargs), lambda x, w: TF.conv_transpose1d(x, w, **kwargs), x, w)


@pytest.mark.parametrize("dims,kwargs", [
    (2, {"stride": 2, "padding": 1, "output_padding": 1, "bias": False}),
    (2, {"stride": (2, 1), "groups": 2, "dilation": (1, 2)}),
    (1, {"stride": 3, "padding": 2, "output_padding": 2}),
])
def test_conv_transpose_modules(dims, kwargs):
    jt_cls, torch_cls = (nn.ConvTranspose1d, tnn.ConvTranspose1d) if dims == 1 else (nn.ConvTranspose2d,
                                                                                      tnn.ConvTranspose2d)
    torch_module = torch_cls(4, 6, 3, **kwargs).double()
    jt_module = jt_cls(4, 6, 3, **kwargs).double()
    assert tuple(jt_module.weight.shape) == tuple(torch_module.weight.shape)
    assert repr(jt_module) == repr(torch_module)
    run_modules(jt_module, torch_module, randn(2, 4, *(5,) * dims))


def test_conv_transpose_output_size():
    torch_module = tnn.ConvTranspose2d(3, 2, 3, stride=2, padding=1).double()
    jt_module = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1).double()
    x = randn(1, 3, 4, 5)
    for size in ((8, 10), (7, 9), [1, 2, 8, 9]):
        run_modules(jt_module, torch_module, x)  # (copies the weights)
        out = jt_module(jt.tensor(x), output_size=size)
        assert_close(out, torch_module(torch.tensor(x), output_size=size), **TOL64)
    with pytest.raises(ValueError, match=r"requested an output size of \[9, 9\], but valid sizes range from "
                                         r"\[7, 9\] to \[8, 10\]"):
        jt_module(jt.tensor(x), output_size=(9, 9))
    with pytest.raises(ValueError, match="output_size must have 2 or 4 elements"):
        jt_module(jt.tensor(x), output_size=(9,))


def test_conv_transpose_errors():
    x, w = jt.ones(1, 5, 4, 4), jt.ones(4, 2, 3, 3)
    with pytest.raises(RuntimeError, match=r"expected input\[1, 5, 4, 4\] to have 4 channels, but got 5"):
        F.conv_transpose2d(x, w)
    with pytest.raises(RuntimeError, match="output padding must be smaller than either stride or dilation"):
        F.conv_transpose2d(jt.ones(1, 4, 4, 4), w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported for ConvTranspose2d'):
        nn.ConvTranspose2d(4, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        nn.ConvTranspose1d(3, 2, 3, groups=2)


# ---------------------------------------------------------------------------------------------
# 3-d convolution and pooling


@pytest.mark.parametrize("kwargs", [
    {},
    {"stride": 2, "padding": 1},
    {"stride": (1, 2, 1), "padding": (2, 1, 0), "dilation": (2, 1, 2), "groups": 2},
    {"padding": "same"},
])
def test_conv3d(kwargs):
    groups = kwargs.get("groups", 1)
    x, w, b = randn(2, 4, 6, 5, 7), randn(6, 4 // groups, 3, 2, 3), randn(6)
    with warnings.catch_warnings():
        # ('same' padding with an even kernel warns once per process in PyTorch: whether this test sees it
        # depends on what ran before, so it is not asserted)
        warnings.simplefilter("ignore", UserWarning)
        check64(lambda x, w, b: F.conv3d(x, w, b, **kwargs), lambda x, w, b: TF.conv3d(x, w, b, **kwargs), x, w, b)


def test_conv3d_module_unbatched_and_padding_mode():
    for kwargs in ({"stride": 2, "padding": 1}, {"padding": 1, "padding_mode": "circular", "bias": False}):
        torch_module, jt_module = tnn.Conv3d(2, 4, 3, **kwargs).double(), nn.Conv3d(2, 4, 3, **kwargs).double()
        run_modules(jt_module, torch_module, randn(2, 4, 5, 6))
        run_modules(jt_module, torch_module, randn(1, 2, 4, 5, 6))
        assert repr(jt_module) == repr(torch_module)
    with pytest.raises(RuntimeError, match=r"Expected 4D \(unbatched\) or 5D \(batched\) input to conv3d"):
        F.conv3d(jt.ones(2, 3, 4), jt.ones(1, 2, 1, 1, 1))


POOL3D_CASES = [
    {"kernel_size": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": (2, 3, 2), "stride": (1, 2, 2), "padding": (1, 1, 0), "ceil_mode": True},
]


@pytest.mark.parametrize("kwargs", POOL3D_CASES + [{"kernel_size": 3, "stride": 2, "dilation": (2, 1, 1)}])
def test_max_pool3d(kwargs):
    check64(lambda x: F.max_pool3d(x, **kwargs), lambda x: TF.max_pool3d(x, **kwargs), randn(2, 3, 7, 6, 5))
    check64(lambda x: F.max_pool3d(x, **kwargs), lambda x: TF.max_pool3d(x, **kwargs), randn(3, 7, 6, 5))


def test_max_pool3d_ties_send_the_gradient_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 2, 2))
    check64(lambda x: F.max_pool3d(x, 2), lambda x: TF.max_pool3d(x, 2), x)


@pytest.mark.parametrize("kwargs", POOL3D_CASES)
@pytest.mark.parametrize("extra", [{}, {"count_include_pad": False}, {"divisor_override": 3}])
def test_avg_pool3d(kwargs, extra):
    check64(lambda x: F.avg_pool3d(x, **kwargs, **extra), lambda x: TF.avg_pool3d(x, **kwargs, **extra),
            randn(2, 3, 7, 6, 5))


@pytest.mark.parametrize("size", [2, (3, None, 2), (7, 6, 5), (4, 4, 3)])
def test_adaptive_avg_pool3d(size):
    check64(lambda x: F.adaptive_avg_pool3d(x, size), lambda x: TF.adaptive_avg_pool3d(x, size), randn(2, 3, 7, 6, 5))


def test_pool3d_modules_and_errors():
    x = randn(2, 3, 6, 5, 4)
    for jt_module, torch_module in (
        (nn.MaxPool3d(3, 2, 1), tnn.MaxPool3d(3, 2, 1)),
        (nn.AvgPool3d(2, ceil_mode=True, count_include_pad=False), tnn.AvgPool3d(2, ceil_mode=True,
                                                                                 count_include_pad=False)),
        (nn.AdaptiveAvgPool3d((2, 3, 1)), tnn.AdaptiveAvgPool3d((2, 3, 1))),
    ):
        run_modules(jt_module, torch_module, x)
        assert repr(jt_module) == repr(torch_module)
    with pytest.raises(RuntimeError, match="pad should be at most half of effective kernel size"):
        F.max_pool3d(jt.ones(1, 1, 4, 4, 4), 2, padding=2)
    with pytest.raises(RuntimeError, match=r"Expected 4D or 5D \(batch mode\) tensor for input"):
        F.avg_pool3d(jt.ones(4, 4, 4), 2)


# ---------------------------------------------------------------------------------------------
# EmbeddingBag


INDICES = np.array([1, 2, 4, 5, 4, 3, 2, 9, 0, 0])


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_bag(mode, padding_idx):
    weight = randn(10, 3)
    bags = [
        (INDICES, np.array([0, 2, 2, 5]), False),  # (with an empty bag)
        (INDICES, np.array([0, 2, 2, 5, 10]), True),
        (INDICES.reshape(2, 5), None, False),
    ]
    for indices, offsets, include_last in bags:
        def call(lib, w, indices=indices, offsets=offsets, include_last=include_last):
            off = None if offsets is None else lib.tensor(offsets)
            return lib.nn.functional.embedding_bag(lib.tensor(indices), w, off, mode=mode, padding_idx=padding_idx,
                                                   include_last_offset=include_last)
        check64(lambda w: call(jt, w), lambda w: call(torch, w), weight)


def test_embedding_bag_per_sample_weights_and_module():
    weight, psw, offsets = randn(10, 3), randn(10), np.array([0, 3, 7])
    check64(lambda w, p: F.embedding_bag(jt.tensor(INDICES), w, jt.tensor(offsets), mode="sum", per_sample_weights=p),
            lambda w, p: TF.embedding_bag(torch.tensor(INDICES), w, torch.tensor(offsets), mode="sum",
                                          per_sample_weights=p), weight, psw)
    torch_bag = tnn.EmbeddingBag(10, 3, mode="max", padding_idx=0).double()
    jt_bag = nn.EmbeddingBag(10, 3, mode="max", padding_idx=0).double()
    assert np.all(jt_bag.weight.detach().numpy()[0] == 0)
    run_modules(jt_bag, torch_bag, nograd(INDICES), nograd(offsets))
    assert repr(jt_bag) == repr(torch_bag)


def test_embedding_bag_errors():
    w = jt.ones(10, 3)
    with pytest.raises(ValueError, match="if input is 2D, then offsets has to be None"):
        F.embedding_bag(jt.tensor(INDICES.reshape(2, 5)), w, jt.tensor([0, 1]))
    with pytest.raises(NotImplementedError, match="per_sample_weights is only supported for mode='sum'"):
        F.embedding_bag(jt.tensor(INDICES), w, jt.tensor([0]), per_sample_weights=jt.ones(10))
    with pytest.raises(ValueError, match=r"must have the same shape as the input \(\[10\]\)"):
        F.embedding_bag(jt.tensor(INDICES), w, jt.tensor([0]), mode="sum", per_sample_weights=jt.ones(9))
    with pytest.raises(RuntimeError, match="offsets\\[0\\] has to be 0"):
        F.embedding_bag(jt.tensor(INDICES), w, jt.tensor([1, 3]))


# ---------------------------------------------------------------------------------------------
# affine_grid, grid_sample


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample(padding_mode, align_corners):
    x, grid = randn(2, 3, 5, 6), RNG.uniform(-1.3, 1.3, (2, 4, 7, 2))
    check64(lambda x, g: F.grid_sample(x, g, "bilinear", padding_mode, align_corners),
            lambda x, g: TF.grid_sample(x, g, "bilinear", padding_mode, align_corners), x, grid)
    check64(lambda x, g: F.grid_sample(x, g, "nearest", padding_mode, align_corners),
            lambda x, g: TF.grid_sample(x, g, "nearest", padding_mode, align_corners), x, nograd(grid))


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_and_spatial_transformer(align_corners):
    theta = randn(2, 2, 3)
    check64(lambda t: F.affine_grid(t, (2, 3, 4, 5), align_corners),
            lambda t: TF.affine_grid(t, (2, 3, 4, 5), align_corners), theta)
    check64(lambda t: F.affine_grid(t, (2, 3, 4, 2, 5), align_corners),
            lambda t: TF.affine_grid(t, (2, 3, 4, 2, 5), align_corners), randn(2, 3, 4))
    check64(lambda t, x: F.grid_sample(x, F.affine_grid(t, (2, 3, 4, 5), align_corners), align_corners=align_corners),
            lambda t, x: TF.grid_sample(x, TF.affine_grid(t, (2, 3, 4, 5), align_corners),
                                        align_corners=align_corners), theta, randn(2, 3, 5, 6))


def test_grid_errors_and_warning():
    with pytest.raises(ValueError, match=r"Expected a batch of 2D affine matrices of shape Nx2x3 for size"):
        F.affine_grid(jt.ones(1, 3, 3), (1, 1, 2, 2), False)
    with pytest.raises(ValueError, match="Expected theta to have floating point type"):
        F.affine_grid(jt.ones(1, 2, 3, dtype=jt.int64), (1, 1, 2, 2), False)
    with pytest.raises(ValueError, match="expected padding_mode to be 'zeros', 'border', or 'reflection'"):
        F.grid_sample(jt.ones(1, 1, 2, 2), jt.ones(1, 1, 1, 2), padding_mode="wrap", align_corners=False)
    with pytest.warns(UserWarning, match="align_corners=False since 1.3.0"):
        F.grid_sample(jt.ones(1, 1, 2, 2), jt.zeros(1, 1, 1, 2))


# ---------------------------------------------------------------------------------------------
# CTC loss


TARGETS, TARGET_LENGTHS, INPUT_LENGTHS = np.array([[1, 2, 2, 3], [4, 1, 0, 0], [3, 3, 3, 0]]), [4, 2, 3], [12, 9, 7]


def _ctc(lib, logits, targets, input_lengths=INPUT_LENGTHS, target_lengths=TARGET_LENGTHS, **kwargs):
    """CTC of log_softmax(logits): PyTorch's gradient with respect to log_probs assumes they come from
    a log_softmax (it folds that op's backward in), so gradients are compared through one."""
    return lib.nn.functional.ctc_loss(logits.log_softmax(-1), lib.tensor(targets), lib.tensor(input_lengths),
                                      lib.tensor(target_lengths), **kwargs)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("blank", [0, 4])
def test_ctc_loss(reduction, blank):
    targets = np.where(TARGETS == blank, 2, TARGETS)
    check64(lambda x: _ctc(jt, x, targets, blank=blank, reduction=reduction),
            lambda x: _ctc(torch, x, targets, blank=blank, reduction=reduction), randn(12, 3, 5))


def test_ctc_loss_concatenated_unbatched_and_empty_targets():
    logits = randn(12, 3, 5)
    flat = np.concatenate([TARGETS[i, :n] for i, n in enumerate(TARGET_LENGTHS)])
    check64(lambda x: _ctc(jt, x, flat), lambda x: _ctc(torch, x, flat), logits)
    check64(lambda x: _ctc(jt, x, np.array([1, 2]), [7], [2]), lambda x: _ctc(torch, x, np.array([1, 2]), [7], [2]),
            logits[:, 0])
    check64(lambda x: _ctc(jt, x, TARGETS, target_lengths=[0, 2, 1]),
            lambda x: _ctc(torch, x, TARGETS, target_lengths=[0, 2, 1]), logits)


def test_ctc_loss_impossible_alignment():
    """An input of 3 frames cannot hold a 4-label target with a repeat: inf, or 0 (and no gradient)
    with zero_infinity."""
    logits, lengths = randn(12, 3, 5), [3, 9, 7]
    check64(lambda x: _ctc(jt, x, TARGETS, lengths, zero_infinity=True, reduction="none"),
            lambda x: _ctc(torch, x, TARGETS, lengths, zero_infinity=True, reduction="none"), logits)
    loss = _ctc(jt, jt.tensor(logits), TARGETS, lengths, reduction="none")
    assert_close(loss, _ctc(torch, torch.tensor(logits), TARGETS, lengths, reduction="none"), **TOL64)
    assert np.isinf(loss.numpy()[0])


def test_ctc_module_and_errors():
    logits = randn(12, 3, 5)
    targets = np.where(TARGETS == 1, 0, TARGETS)  # (blank is 1 here)
    loss = nn.CTCLoss(blank=1, zero_infinity=True)(jt.tensor(logits).log_softmax(2), jt.tensor(targets),
                                                     INPUT_LENGTHS, TARGET_LENGTHS)
    expected = tnn.CTCLoss(blank=1, zero_infinity=True)(torch.tensor(logits).log_softmax(2), torch.tensor(targets),
                                                        INPUT_LENGTHS, TARGET_LENGTHS)
    assert_close(loss, expected, **TOL64)
    with pytest.raises(RuntimeError, match="Expected input_lengths to have value at most 12, but got value 13"):
        _ctc(jt, jt.tensor(logits), TARGETS, [13, 2, 2])
    with pytest.raises(RuntimeError, match="Expected tensor to have size at least 4 at dimension 1"):
        _ctc(jt, jt.tensor(logits), TARGETS[:, :3])


# ---------------------------------------------------------------------------------------------
# compiled forward + backward equal to eager


def _dcgan_generator() -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(8, 6, 4, 1, 0, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 3, 4, 2, 1, bias=False),
        nn.Tanh(),
    )


def test_compiled_dcgan_generator_step_matches_eager():
    z = RNG.standard_normal((2, 8, 1, 1)).astype(np.float32)
    target = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    results = []
    for compile_it in (False, True):
        jt.manual_seed(0)
        generator = _dcgan_generator()

        def step(z, target, generator=generator):
            loss = F.mse_loss(generator(z), target)
            loss.backward()
            return loss

        run = jt.compile(step) if compile_it else step
        loss = run(jt.tensor(z), jt.tensor(target))
        results.append([loss.detach().numpy()] + [p.grad.numpy() for p in generator.parameters()])
    for eager, compiled in zip(*results):
        np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-6)


COMPILED = [  # each reads a 120-element x
    ("conv3d", lambda x: F.conv3d(x[:60].reshape(1, 2, 2, 3, 5), x[60:].reshape(6, 2, 1, 1, 5)[:3, ..., :2], stride=2)),
    ("max_pool3d", lambda x: F.max_pool3d(x.reshape(2, 3, 2, 2, 5), (2, 2, 3), 1, (1, 0, 1))),
    ("avg_pool3d", lambda x: F.avg_pool3d(x.reshape(2, 3, 2, 2, 5), 2, ceil_mode=True, count_include_pad=False)),
    ("conv_transpose1d",
     lambda x: F.conv_transpose1d(x[:60].reshape(2, 6, 5), x[60:].reshape(6, 2, 5), stride=2, padding=1)),
    ("grid_sample", lambda x: F.grid_sample(x.reshape(2, 3, 4, 5), x[:60].reshape(2, 3, 5, 2).tanh() * 1.2,
                                            padding_mode="reflection", align_corners=False)),
    ("embedding_bag", lambda x: F.embedding_bag(jt.tensor(INDICES), x[:60].reshape(12, 5), jt.tensor([0, 3, 3, 6]),
                                                mode="max", padding_idx=4)),
    ("ctc_loss",
     lambda x: F.ctc_loss(x[:60].reshape(6, 2, 5).log_softmax(2), jt.tensor([[1, 1], [2, 3]]), [6, 4], [2, 1])),
]


@pytest.mark.parametrize("name,fn", COMPILED, ids=[c[0] for c in COMPILED])
def test_compiled_matches_eager(name, fn):
    compiled_matches_eager(fn, RNG)
