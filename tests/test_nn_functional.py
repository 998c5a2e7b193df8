"""jitorch.nn.functional against torch.nn.functional: forward and backward, float32 tolerances,
and the errors PyTorch raises on bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import jitorch as jt
import jitorch.nn.functional as F
from tests.nn_helpers import assert_close, check, nograd, pair

RNG = np.random.default_rng(0)


def randn(*shape, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def randint(high: int, *shape) -> np.ndarray:
    return RNG.integers(0, high, size=shape).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# activations


ACTIVATIONS = [
    ("relu", lambda m, x: m.relu(x)),
    ("gelu", lambda m, x: m.gelu(x)),
    ("gelu_tanh", lambda m, x: m.gelu(x, approximate="tanh")),
    ("silu", lambda m, x: m.silu(x)),
    ("mish", lambda m, x: m.mish(x)),
    ("tanh", lambda m, x: m.tanh(x)),
    ("sigmoid", lambda m, x: m.sigmoid(x)),
    ("logsigmoid", lambda m, x: m.logsigmoid(x)),
    ("softplus", lambda m, x: m.softplus(x)),
    ("softplus_beta", lambda m, x: m.softplus(x, beta=2.0, threshold=3.0)),
    ("leaky_relu", lambda m, x: m.leaky_relu(x, 0.2)),
    ("elu", lambda m, x: m.elu(x, alpha=0.7)),
    ("relu6", lambda m, x: m.relu6(x)),
    ("hardtanh", lambda m, x: m.hardtanh(x, -0.5, 0.5)),
    ("softmax", lambda m, x: m.softmax(x, dim=-1)),
    ("softmax0", lambda m, x: m.softmax(x, dim=0)),
    ("log_softmax", lambda m, x: m.log_softmax(x, dim=1)),
]


@pytest.mark.parametrize("name,fn", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation(name, fn):
    x = randn(4, 7, scale=3.0)
    check(lambda t: fn(F, t), lambda t: fn(TF, t), x)


def test_softplus_large_inputs_have_finite_gradient():
    x = np.array([-100.0, -1.0, 0.0, 30.0, 500.0], dtype=np.float32)
    check(F.softplus, TF.softplus, x)
    check(F.elu, TF.elu, x)


def test_inplace_relu_modifies_input():
    x = jt.tensor([-1.0, 2.0])
    out = F.relu(x, inplace=True)
    assert out is x and x.tolist() == [0.0, 2.0]


# ---------------------------------------------------------------------------------------------
# linear, dropout


@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3), (3,)])
def test_linear(shape):
    check(F.linear, TF.linear, randn(*shape), randn(6, 3), randn(6))
    check(F.linear, TF.linear, randn(*shape), randn(6, 3))


def test_linear_shape_error():
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        F.linear(jt.randn(2, 4), jt.randn(3, 5))


def test_bilinear():
    check(F.bilinear, TF.bilinear, randn(4, 3), randn(4, 5), randn(2, 3, 5), randn(2))


def test_dropout_statistics_and_gradient():
    jt.manual_seed(0)
    x = jt.ones(200, 200, requires_grad=True)
    y = F.dropout(x, p=0.3)
    kept = (y.detach() != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.01
    np.testing.assert_allclose(np.unique(y.detach().numpy()), [0.0, 1 / 0.7], rtol=1e-6)
    y.sum().backward()
    # gradient is the same mask and scale
    np.testing.assert_allclose(x.grad.numpy(), y.detach().numpy(), rtol=1e-6)


def test_dropout_eval_seed_and_edges():
    x = jt.randn(10, 10)
    assert F.dropout(x, 0.5, training=False) is x
    jt.manual_seed(3)
    a = F.dropout(x, 0.5).numpy()
    jt.manual_seed(3)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not F.dropout(x, 1.0).numpy().any()
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(x, 1.5)


# ---------------------------------------------------------------------------------------------
# normalization


def test_layer_norm():
    x = randn(3, 4, 6)
    check(
        lambda a, w, b: F.layer_norm(a, (6,), w, b),
        lambda a, w, b: TF.layer_norm(a, (6,), w, b),
        x,
        randn(6),
        randn(6),
    )
    check(
        lambda a, w, b: F.layer_norm(a, (4, 6), w, b, eps=1e-3),
        lambda a, w, b: TF.layer_norm(a, (4, 6), w, b, eps=1e-3),
        x,
        randn(4, 6),
        randn(4, 6),
    )
    check(lambda a: F.layer_norm(a, [6]), lambda a: TF.layer_norm(a, [6]), x)


def test_layer_norm_shape_error():
    with pytest.raises(RuntimeError, match="normalized_shape"):
        F.layer_norm(jt.randn(3, 5), (4,))


def test_rms_norm():
    x = randn(3, 8)
    check(lambda a, w: F.rms_norm(a, (8,), w), lambda a, w: TF.rms_norm(a, (8,), w), x, randn(8))
    check(lambda a: F.rms_norm(a, (8,), eps=1e-3), lambda a: TF.rms_norm(a, (8,), eps=1e-3), x)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 4, 4)])
def test_batch_norm_training_updates_running_stats(shape):
    x = randn(*shape)
    rm, rv = pair(randn(3, scale=0.1), requires_grad=False)
    rv_j, rv_t = pair(np.abs(randn(3)) + 0.5, requires_grad=False)
    check(
        lambda a, w, b: F.batch_norm(a, rm, rv_j, w, b, training=True, momentum=0.2),
        lambda a, w, b: TF.batch_norm(a, rv, rv_t, w, b, training=True, momentum=0.2),
        x,
        randn(3),
        randn(3),
    )
    assert_close(rm, rv, what="running_mean")
    assert_close(rv_j, rv_t, what="running_var")


def test_batch_norm_eval_uses_running_stats():
    x = randn(4, 3, 2, 2)
    rm, rv = randn(3), np.abs(randn(3)) + 0.5
    check(
        lambda a, w, b: F.batch_norm(a, jt.tensor(rm), jt.tensor(rv), w, b, training=False),
        lambda a, w, b: TF.batch_norm(a, torch.tensor(rm), torch.tensor(rv), w, b, training=False),
        x,
        randn(3),
        randn(3),
    )


def test_batch_norm_needs_more_than_one_value():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(jt.randn(1, 3), None, None, training=True)


def test_group_norm():
    x = randn(2, 6, 3, 3)
    check(
        lambda a, w, b: F.group_norm(a, 3, w, b),
        lambda a, w, b: TF.group_norm(a, 3, w, b),
        x,
        randn(6),
        randn(6),
    )
    check(lambda a: F.group_norm(a, 2), lambda a: TF.group_norm(a, 2), randn(4, 4, 5))
    with pytest.raises(RuntimeError, match="divisible by num_groups"):
        F.group_norm(jt.randn(2, 6, 3), 4)


def test_normalize():
    x = randn(4, 5)
    x[1] = 0.0  # a zero row must not give nan gradients
    check(F.normalize, TF.normalize, x)
    check(lambda a: F.normalize(a, p=1.0, dim=0), lambda a: TF.normalize(a, p=1.0, dim=0), randn(4, 5))


# ---------------------------------------------------------------------------------------------
# embedding, one_hot, pad


def test_embedding_and_padding_idx():
    idx = randint(10, 4, 5)
    idx[0, :3] = 2
    w = randn(10, 3)
    check(lambda i, wt: F.embedding(i, wt), lambda i, wt: TF.embedding(i, wt), idx, w)
    check(
        lambda i, wt: F.embedding(i, wt, padding_idx=2),
        lambda i, wt: TF.embedding(i, wt, padding_idx=2),
        idx,
        w,
    )


def test_embedding_index_out_of_range():
    with pytest.raises(IndexError, match="out of range"):
        F.embedding(jt.tensor([0, 10]), jt.randn(10, 3))


def test_one_hot():
    t = jt.tensor([[0, 2], [1, 3]])
    out = F.one_hot(t, 5)
    np.testing.assert_array_equal(out.numpy(), TF.one_hot(torch.tensor([[0, 2], [1, 3]]), 5).numpy())
    assert out.dtype == jt.int64
    assert F.one_hot(jt.tensor([0, 3])).shape == (2, 4)
    with pytest.raises(RuntimeError, match="smaller than num_classes"):
        F.one_hot(jt.tensor([0, 5]), 3)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_modes(mode):
    x = randn(2, 3, 5, 6)
    check(lambda a: F.pad(a, (1, 2, 2, 1), mode=mode), lambda a: TF.pad(a, (1, 2, 2, 1), mode=mode), x)


def test_pad_constant_value_and_crop():
    check(lambda a: F.pad(a, (1, -1), value=3.0), lambda a: TF.pad(a, (1, -1), value=3.0), randn(3, 4))


# ---------------------------------------------------------------------------------------------
# losses


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_indices(reduction):
    check(
        lambda x, t: F.cross_entropy(x, t, reduction=reduction),
        lambda x, t: TF.cross_entropy(x, t, reduction=reduction),
        randn(6, 5),
        randint(5, 6),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"label_smoothing": 0.1}, {"ignore_index": 3}, {"ignore_index": 3, "label_smoothing": 0.2}],
    ids=str,
)
def test_cross_entropy_options(kwargs, reduction):
    x, t = randn(8, 5), randint(5, 8)
    # ignored positions: the default ignore_index, or class 3 when that is the one ignored
    t[[1, 4]] = kwargs.get("ignore_index", -100)
    w = np.abs(randn(5)) + 0.1

    def ours(a, b, *ww):
        return F.cross_entropy(a, b, *ww, reduction=reduction, **kwargs)

    def theirs(a, b, *ww):
        return TF.cross_entropy(a, b, *ww, reduction=reduction, **kwargs)

    check(ours, theirs, x, t, nograd(w))
    check(ours, theirs, x, t)


def test_cross_entropy_extra_dims_and_unbatched():
    check(F.cross_entropy, TF.cross_entropy, randn(2, 4, 3, 5), randint(4, 2, 3, 5))
    check(
        lambda a, b: F.cross_entropy(a, b, label_smoothing=0.2),
        lambda a, b: TF.cross_entropy(a, b, label_smoothing=0.2),
        randn(2, 4, 3),
        randint(4, 2, 3),
    )
    check(F.cross_entropy, TF.cross_entropy, randn(5), np.array(2, dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs", [{}, {"label_smoothing": 0.3}, {"reduction": "sum"}, {"reduction": "none"}], ids=str
)
def test_cross_entropy_probability_targets(kwargs):
    probs = np.abs(randn(6, 4))
    probs /= probs.sum(1, keepdims=True)
    check(
        lambda a, b: F.cross_entropy(a, b, **kwargs),
        lambda a, b: TF.cross_entropy(a, b, **kwargs),
        randn(6, 4),
        probs,
    )
    check(
        lambda a, b, w: F.cross_entropy(a, b, weight=w, **kwargs),
        lambda a, b, w: TF.cross_entropy(a, b, weight=w, **kwargs),
        randn(6, 4),
        probs,
        nograd(np.abs(randn(4))),
    )


def test_cross_entropy_target_out_of_range():
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        F.cross_entropy(jt.randn(3, 5), jt.tensor([0, 1, 7]))
    with pytest.raises(IndexError, match="Target -1 is out of bounds"):
        F.nll_loss(jt.randn(3, 5), jt.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="batch_size"):
        F.cross_entropy(jt.randn(3, 5), jt.tensor([0, 1]))


def test_nll_loss():
    x, t = randn(6, 4), randint(4, 6)
    check(
        lambda a, b: F.nll_loss(F.log_softmax(a, 1), b),
        lambda a, b: TF.nll_loss(TF.log_softmax(a, 1), b),
        x,
        t,
    )
    check(
        lambda a, b, w: F.nll_loss(a, b, w, reduction="sum"),
        lambda a, b, w: TF.nll_loss(a, b, w, reduction="sum"),
        x,
        t,
        nograd(np.abs(randn(4))),
    )


REGRESSION_LOSSES = [
    ("mse", F.mse_loss, TF.mse_loss, {}),
    ("l1", F.l1_loss, TF.l1_loss, {}),
    ("smooth_l1", F.smooth_l1_loss, TF.smooth_l1_loss, {}),
    ("smooth_l1_beta", F.smooth_l1_loss, TF.smooth_l1_loss, {"beta": 0.5}),
    ("huber", F.huber_loss, TF.huber_loss, {"delta": 0.7}),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", REGRESSION_LOSSES, ids=[c[0] for c in REGRESSION_LOSSES])
def test_regression_losses(case, reduction):
    _, ours, theirs, kw = case
    check(
        lambda a, b: ours(a, b, reduction=reduction, **kw),
        lambda a, b: theirs(a, b, reduction=reduction, **kw),
        randn(4, 5),
        randn(4, 5),
    )


def test_binary_cross_entropy():
    p = (RNG.random((4, 3)) * 0.98 + 0.01).astype(np.float32)
    t = RNG.random((4, 3)).astype(np.float32)
    check(F.binary_cross_entropy, TF.binary_cross_entropy, p, t)
    check(
        lambda a, b, w: F.binary_cross_entropy(a, b, w, reduction="sum"),
        lambda a, b, w: TF.binary_cross_entropy(a, b, w, reduction="sum"),
        p,
        t,
        nograd(randn(4, 3)),
    )
    with pytest.raises(ValueError, match="target size"):
        F.binary_cross_entropy(jt.rand(3), jt.rand(4))
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(jt.tensor([1.5]), jt.tensor([1.0]))


def test_binary_cross_entropy_with_logits():
    x = randn(4, 3, scale=5.0)
    t = RNG.random((4, 3)).astype(np.float32)
    check(F.binary_cross_entropy_with_logits, TF.binary_cross_entropy_with_logits, x, t)
    check(
        lambda a, b, pw: F.binary_cross_entropy_with_logits(a, b, pos_weight=pw, reduction="none"),
        lambda a, b, pw: TF.binary_cross_entropy_with_logits(a, b, pos_weight=pw, reduction="none"),
        x,
        t,
        nograd(np.abs(randn(3))),
    )
    check(
        lambda a, b, w: F.binary_cross_entropy_with_logits(a, b, weight=w),
        lambda a, b, w: TF.binary_cross_entropy_with_logits(a, b, weight=w),
        x,
        t,
        nograd(randn(3)),
    )


# ---------------------------------------------------------------------------------------------
# convolution and pooling


CONV2D_CASES = [
    dict(),
    dict(stride=2, padding=1),
    dict(padding=(2, 1), dilation=(2, 1)),
    dict(padding="same"),
    dict(padding="same", dilation=2),
    dict(padding="valid", stride=(1, 2)),
]


@pytest.mark.parametrize("kwargs", CONV2D_CASES, ids=str)
def test_conv2d(kwargs):
    check(
        lambda x, w, b: F.conv2d(x, w, b, **kwargs),
        lambda x, w, b: TF.conv2d(x, w, b, **kwargs),
        randn(2, 3, 7, 6),
        randn(4, 3, 3, 3),
        randn(4),
        rtol=1e-4,
        atol=1e-4,
    )


def test_conv2d_even_kernel_same_groups_unbatched_1x1():
    check(
        lambda x, w: F.conv2d(x, w, padding="same"),
        lambda x, w: TF.conv2d(x, w, padding="same"),
        randn(1, 2, 5, 5),
        randn(3, 2, 2, 4),
        atol=1e-4,
    )
    check(
        lambda x, w, b: F.conv2d(x, w, b, groups=2, padding=1),
        lambda x, w, b: TF.conv2d(x, w, b, groups=2, padding=1),
        randn(2, 4, 5, 5),
        randn(6, 2, 3, 3),
        randn(6),
        atol=1e-4,
    )
    check(
        lambda x, w: F.conv2d(x, w, stride=2),
        lambda x, w: TF.conv2d(x, w, stride=2),
        randn(3, 5, 5),
        randn(2, 3, 3, 3),
        atol=1e-4,
    )
    check(F.conv2d, TF.conv2d, randn(2, 3, 4, 4), randn(5, 3, 1, 1), atol=1e-4)


def test_conv2d_errors():
    with pytest.raises(RuntimeError, match=r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d"):
        F.conv2d(jt.randn(2, 3), jt.randn(4, 3, 3, 3))
    with pytest.raises(RuntimeError, match=r"expected input\[2, 4, 8, 8\] to have 3 channels, but got 4"):
        F.conv2d(jt.randn(2, 4, 8, 8), jt.randn(8, 3, 3, 3))
    with pytest.raises(RuntimeError, match="not supported for strided"):
        F.conv2d(jt.randn(1, 3, 4, 4), jt.randn(2, 3, 3, 3), stride=2, padding="same")
    with pytest.raises(RuntimeError, match="too small"):
        F.conv2d(jt.randn(1, 3, 2, 2), jt.randn(2, 3, 3, 3))


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(stride=2, padding=1), dict(padding="same", dilation=2), dict(groups=3, padding=2)],
    ids=str,
)
def test_conv1d(kwargs):
    w = randn(6, 1, 3) if kwargs.get("groups") else randn(6, 3, 3)
    check(
        lambda x, ww, b: F.conv1d(x, ww, b, **kwargs),
        lambda x, ww, b: TF.conv1d(x, ww, b, **kwargs),
        randn(2, 3, 9),
        w,
        randn(6),
        atol=1e-4,
    )
    with pytest.raises(RuntimeError, match="Expected 2D"):
        F.conv1d(jt.randn(2, 3, 4, 5), jt.randn(6, 3, 3))


POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=1),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
]


@pytest.mark.parametrize("kwargs", POOL_CASES, ids=str)
def test_max_pool2d(kwargs):
    check(lambda x: F.max_pool2d(x, **kwargs), lambda x: TF.max_pool2d(x, **kwargs), randn(2, 3, 7, 6))


def test_max_pool2d_dilation_unbatched_and_errors():
    check(
        lambda x: F.max_pool2d(x, 2, 1, dilation=2),
        lambda x: TF.max_pool2d(x, 2, 1, dilation=2),
        randn(3, 6, 6),
    )
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        F.max_pool2d(jt.randn(1, 1, 4, 4), 2, padding=2)


@pytest.mark.parametrize(
    "kwargs",
    POOL_CASES
    + [
        dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
        dict(kernel_size=3, padding=1, stride=2, ceil_mode=True, count_include_pad=False),
        dict(kernel_size=2, stride=1, divisor_override=3),
    ],
    ids=str,
)
def test_avg_pool2d(kwargs):
    check(lambda x: F.avg_pool2d(x, **kwargs), lambda x: TF.avg_pool2d(x, **kwargs), randn(2, 3, 7, 6))


@pytest.mark.parametrize("size", [1, (2, 3), (3, 4), (5, None)], ids=str)
def test_adaptive_avg_pool2d(size):
    check(
        lambda x: F.adaptive_avg_pool2d(x, size), lambda x: TF.adaptive_avg_pool2d(x, size), randn(2, 3, 7, 6)
    )


@pytest.mark.parametrize(
    "kwargs", [dict(scale_factor=2), dict(size=(5, 9)), dict(scale_factor=0.5), dict(size=(3, 4))], ids=str
)
def test_interpolate_nearest(kwargs):
    check(lambda x: F.interpolate(x, **kwargs), lambda x: TF.interpolate(x, **kwargs), randn(2, 3, 6, 7))


def test_interpolate_1d():
    check(
        lambda x: F.interpolate(x, scale_factor=3),
        lambda x: TF.interpolate(x, scale_factor=3),
        randn(2, 3, 4),
    )


# ---------------------------------------------------------------------------------------------
# attention


def test_sdpa_plain_and_scale():
    q, k, v = randn(2, 3, 5, 4), randn(2, 3, 6, 4), randn(2, 3, 6, 8)
    check(F.scaled_dot_product_attention, TF.scaled_dot_product_attention, q, k, v)
    check(
        lambda a, b, c: F.scaled_dot_product_attention(a, b, c, scale=0.3),
        lambda a, b, c: TF.scaled_dot_product_attention(a, b, c, scale=0.3),
        q,
        k,
        v,
    )


def test_sdpa_masks():
    q, k, v = randn(2, 5, 4), randn(2, 5, 4), randn(2, 5, 3)
    check(
        lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True),
        lambda a, b, c: TF.scaled_dot_product_attention(a, b, c, is_causal=True),
        q,
        k,
        v,
    )
    bool_mask = RNG.random((5, 5)) > 0.4
    bool_mask[:, 0] = True  # no fully masked row
    check(
        lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=jt.tensor(bool_mask)),
        lambda a, b, c: TF.scaled_dot_product_attention(a, b, c, attn_mask=torch.tensor(bool_mask)),
        q,
        k,
        v,
    )
    float_mask = randn(2, 5, 5)
    check(
        lambda a, b, c, m: F.scaled_dot_product_attention(a, b, c, attn_mask=m),
        lambda a, b, c, m: TF.scaled_dot_product_attention(a, b, c, attn_mask=m),
        q,
        k,
        v,
        float_mask,
    )
    with pytest.raises(RuntimeError, match="should not be set when is_causal"):
        F.scaled_dot_product_attention(
            jt.tensor(q), jt.tensor(k), jt.tensor(v), attn_mask=jt.tensor(bool_mask), is_causal=True
        )


def test_sdpa_dropout_is_seeded():
    q = jt.randn(2, 4, 3)
    jt.manual_seed(5)
    a = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5).numpy()
    jt.manual_seed(5)
    b = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, F.scaled_dot_product_attention(q, q, q).numpy())
