"""jitorch.nn modules against torch.nn with the same weights (forward, input and parameter grads),
the Module API (state_dict, hooks, train/eval, repr, ...), init distributions and grad clipping."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as tnn

import jitorch as jt
import jitorch.nn as nn
from jitorch.nn import init
from tests.nn_helpers import assert_close, assert_param_grads_close, backward_both, copy_module, pair

RNG = np.random.default_rng(1)


def randn(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run_pair(
    jt_module,
    torch_module,
    *arrays,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    copy_weights: bool = True,
    grad_atol: float = 1e-4,
):
    """Copy torch's weights into jitorch, run both on the same inputs, compare outputs and all grads."""
    if copy_weights:
        copy_module(jt_module, torch_module)
    pairs = [pair(a) for a in arrays]
    jout = jt_module(*[p[0] for p in pairs])
    tout = torch_module(*[p[1] for p in pairs])
    if isinstance(tout, tuple):
        jout, tout = jout[0], tout[0]
    assert_close(jout, tout, rtol, atol)
    backward_both(jout, tout)
    for i, (j, t) in enumerate(pairs):
        if t.requires_grad:
            assert_close(j.grad, t.grad, rtol * 10, grad_atol, f"grad of input {i}")
    assert_param_grads_close(jt_module, torch_module, atol=grad_atol)
    return jout, tout


# ---------------------------------------------------------------------------------------------
# layers against PyTorch


LAYERS = [
    ("linear", lambda m: m.Linear(5, 3), (4, 5)),
    ("linear_nobias_3d", lambda m: m.Linear(5, 3, bias=False), (2, 4, 5)),
    ("bilinear", lambda m: m.Bilinear(3, 4, 2), (5, 3), (5, 4)),
    ("conv2d", lambda m: m.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 7, 7)),
    (
        "conv2d_groups_dilation",
        lambda m: m.Conv2d(4, 6, (3, 2), padding="same", dilation=2, groups=2),
        (2, 4, 6, 6),
    ),
    ("conv2d_reflect", lambda m: m.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (1, 2, 5, 5)),
    (
        "conv2d_circular_same",
        lambda m: m.Conv2d(2, 3, 4, padding="same", padding_mode="circular"),
        (1, 2, 5, 6),
    ),
    ("conv1d", lambda m: m.Conv1d(3, 5, 3, padding=1, bias=False), (2, 3, 8)),
    (
        "conv1d_replicate",
        lambda m: m.Conv1d(3, 2, 5, stride=2, padding=2, padding_mode="replicate"),
        (2, 3, 9),
    ),
    ("maxpool", lambda m: m.MaxPool2d(3, stride=2, padding=1), (2, 3, 7, 7)),
    ("avgpool", lambda m: m.AvgPool2d(2), (2, 3, 6, 6)),
    ("adaptive_avgpool", lambda m: m.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    ("layernorm", lambda m: m.LayerNorm(6), (3, 4, 6)),
    ("layernorm_2d_nobias", lambda m: m.LayerNorm((4, 6), bias=False), (3, 4, 6)),
    ("rmsnorm", lambda m: m.RMSNorm(6, eps=1e-6), (3, 6)),
    ("groupnorm", lambda m: m.GroupNorm(2, 4), (3, 4, 5)),
    ("flatten", lambda m: m.Flatten(), (2, 3, 4)),
    ("unflatten", lambda m: m.Unflatten(1, (3, 4)), (2, 12)),
    ("identity", lambda m: m.Identity(7, foo=1), (2, 3)),
    ("dropout_eval", lambda m: m.Dropout(0.5).eval(), (4, 4)),
    ("relu", lambda m: m.ReLU(), (4, 5)),
    ("gelu", lambda m: m.GELU(), (4, 5)),
    ("gelu_tanh", lambda m: m.GELU("tanh"), (4, 5)),
    ("silu", lambda m: m.SiLU(), (4, 5)),
    ("tanh", lambda m: m.Tanh(), (4, 5)),
    ("sigmoid", lambda m: m.Sigmoid(), (4, 5)),
    ("softplus", lambda m: m.Softplus(beta=2.0), (4, 5)),
    ("leaky_relu", lambda m: m.LeakyReLU(0.1), (4, 5)),
    ("elu", lambda m: m.ELU(0.5), (4, 5)),
    ("softmax", lambda m: m.Softmax(dim=1), (4, 5)),
    ("log_softmax", lambda m: m.LogSoftmax(dim=-1), (4, 5)),
    ("sequential", lambda m: m.Sequential(m.Linear(4, 8), m.ReLU(), m.Linear(8, 2)), (5, 4)),
]


@pytest.mark.parametrize("case", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_matches_torch(case):
    _, build, *shapes = case
    run_pair(build(nn), build(tnn), *[randn(*s) for s in shapes])


def test_layer_repr_matches_torch():
    def build(m):
        return m.Sequential(
            m.Conv2d(1, 4, 3, padding=1),
            m.Conv2d(4, 4, 3, padding="same", bias=False, groups=2, dilation=2),
            m.ReLU(),
            m.MaxPool2d(2),
            m.BatchNorm2d(4),
            m.Flatten(),
            m.Linear(64, 10),
            m.Dropout(0.1),
            m.LayerNorm(10),
            m.GELU(),
            m.Embedding(5, 3, padding_idx=0),
            m.GroupNorm(2, 4),
            m.AdaptiveAvgPool2d(1),
            m.Identity(),
            m.ModuleList([m.Tanh(), m.Sigmoid()]),
            m.LeakyReLU(0.2),
            m.Softmax(dim=1),
            m.Conv1d(2, 3, 3, stride=2),
            m.RMSNorm(3),
            m.MultiheadAttention(4, 2),
            m.Softplus(),
            m.ELU(),
            m.Hardtanh(),
            m.AvgPool2d(2),
            m.Bilinear(2, 3, 4),
            m.Unflatten(1, (2, 3)),
            m.ReLU(inplace=True),
            m.CrossEntropyLoss(),
            m.TransformerEncoderLayer(4, 2, 8),
            m.ModuleDict({"a": m.SiLU()}),
            m.BatchNorm1d(3, affine=False),
        )

    assert repr(build(nn)) == repr(build(tnn)).replace("torch.", "jitorch.")


@pytest.mark.parametrize(
    "cls_name,shape", [("BatchNorm1d", (6, 3)), ("BatchNorm1d", (4, 3, 5)), ("BatchNorm2d", (4, 3, 2, 3))]
)
def test_batchnorm_train_and_eval(cls_name, shape):
    jm, tm = getattr(nn, cls_name)(3, momentum=0.3), getattr(tnn, cls_name)(3, momentum=0.3)
    with torch.no_grad():
        tm.weight.uniform_(0.5, 1.5)
        tm.bias.uniform_(-1, 1)
    copy_module(jm, tm)
    for _ in range(2):
        run_pair(jm, tm, randn(*shape), copy_weights=False)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(jm, name), getattr(tm, name), what=name)
    jm.eval()
    tm.eval()
    run_pair(jm, tm, randn(*shape), copy_weights=False)
    assert int(jm.num_batches_tracked.item()) == 2


def test_batchnorm_cumulative_average_and_no_tracking():
    jm, tm = nn.BatchNorm1d(3, momentum=None), tnn.BatchNorm1d(3, momentum=None)
    for _ in range(3):
        run_pair(jm, tm, randn(5, 3))
    assert_close(jm.running_var, tm.running_var, what="running_var")
    jm, tm = (
        nn.BatchNorm2d(3, affine=False, track_running_stats=False),
        tnn.BatchNorm2d(3, affine=False, track_running_stats=False),
    )
    run_pair(jm.eval(), tm.eval(), randn(2, 3, 2, 2))
    assert jm.running_mean is None and list(jm.state_dict()) == []


def test_batchnorm_rank_error():
    with pytest.raises(ValueError, match="expected 4D input"):
        nn.BatchNorm2d(3)(jt.randn(2, 3, 4))


def test_embedding_padding_idx_gets_no_grad():
    jm, tm = nn.Embedding(6, 3, padding_idx=1), tnn.Embedding(6, 3, padding_idx=1)
    assert not jm.weight[1].detach().numpy().any()
    copy_module(jm, tm)
    idx = np.array([[0, 1, 2], [1, 5, 5]])
    jo, to = jm(jt.tensor(idx)), tm(torch.tensor(idx))
    assert_close(jo, to)
    backward_both(jo, to)
    assert_param_grads_close(jm, tm)
    assert not jm.weight.grad[1].numpy().any()


def test_losses_as_modules():
    x, t = randn(6, 4), RNG.integers(0, 4, 6)
    w = np.abs(randn(4))
    for jm, tm in [
        (nn.CrossEntropyLoss(), tnn.CrossEntropyLoss()),
        (
            nn.CrossEntropyLoss(weight=jt.tensor(w), label_smoothing=0.1, ignore_index=2),
            tnn.CrossEntropyLoss(weight=torch.tensor(w), label_smoothing=0.1, ignore_index=2),
        ),
        (nn.NLLLoss(reduction="sum"), tnn.NLLLoss(reduction="sum")),
    ]:
        xj, xt = pair(x)
        jo, to = jm(xj, jt.tensor(t)), tm(xt, torch.tensor(t))
        assert_close(jo, to)
        jo.backward()
        to.backward()
        assert_close(xj.grad, xt.grad)
    y = randn(6, 4)
    p = (RNG.random((6, 4)) * 0.9 + 0.05).astype(np.float32)
    pos = np.abs(randn(4))
    for jm, tm, a in [
        (nn.MSELoss(), tnn.MSELoss(), x),
        (nn.L1Loss(reduction="none"), tnn.L1Loss(reduction="none"), x),
        (nn.SmoothL1Loss(beta=0.5), tnn.SmoothL1Loss(beta=0.5), x),
        (nn.BCELoss(), tnn.BCELoss(), p),
        (
            nn.BCEWithLogitsLoss(pos_weight=jt.tensor(pos)),
            tnn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos)),
            x,
        ),
    ]:
        target = (
            RNG.random((6, 4)).astype(np.float32) if isinstance(jm, (nn.BCELoss, nn.BCEWithLogitsLoss)) else y
        )
        aj, at = pair(a)
        jo, to = jm(aj, jt.tensor(target)), tm(at, torch.tensor(target))
        assert_close(jo, to)
        backward_both(jo, to)
        assert_close(aj.grad, at.grad, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# attention and transformer


@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_self(batch_first):
    jm, tm = (
        nn.MultiheadAttention(8, 2, batch_first=batch_first),
        tnn.MultiheadAttention(8, 2, batch_first=batch_first),
    )
    copy_module(jm, tm)
    x = randn(3, 5, 8)
    xj, xt = pair(x)
    jo, jw = jm(xj, xj, xj)
    to, tw = tm(xt, xt, xt)
    assert_close(jo, to)
    assert_close(jw, tw)
    backward_both(jo, to)
    assert_close(xj.grad, xt.grad, atol=1e-4)
    assert_param_grads_close(jm, tm)


def test_multihead_attention_masks_cross_and_unaveraged():
    jm, tm = nn.MultiheadAttention(6, 3), tnn.MultiheadAttention(6, 3)
    copy_module(jm, tm)
    q, k, v = randn(4, 2, 6), randn(5, 2, 6), randn(5, 2, 6)
    attn_bool = RNG.random((4, 5)) > 0.6
    attn_bool[:, 0] = False
    pad = np.array([[False, False, False, True, True], [False, True, False, False, False]])
    attn_float = randn(2 * 3, 4, 5)
    for kwargs_j, kwargs_t in [
        ({"attn_mask": jt.tensor(attn_bool)}, {"attn_mask": torch.tensor(attn_bool)}),
        ({"key_padding_mask": jt.tensor(pad)}, {"key_padding_mask": torch.tensor(pad)}),
        (
            {
                "attn_mask": jt.tensor(attn_float),
                "key_padding_mask": jt.tensor(pad),
                "average_attn_weights": False,
            },
            {
                "attn_mask": torch.tensor(attn_float),
                "key_padding_mask": torch.tensor(pad),
                "average_attn_weights": False,
            },
        ),
    ]:
        (qj, qt), (kj, kt), (vj, vt) = pair(q), pair(k), pair(v)
        jo, jw = jm(qj, kj, vj, **kwargs_j)
        to, tw = tm(qt, kt, vt, **kwargs_t)
        assert_close(jo, to)
        assert_close(jw, tw)
        backward_both(jo, to)
        for a, b in [(qj, qt), (kj, kt), (vj, vt)]:
            assert_close(a.grad, b.grad, atol=1e-4)
    out, weights = jm(jt.tensor(q), jt.tensor(k), jt.tensor(v), need_weights=False)
    assert weights is None and out.shape == (4, 2, 6)


def test_multihead_attention_unbatched():
    jm, tm = nn.MultiheadAttention(4, 2), tnn.MultiheadAttention(4, 2)
    copy_module(jm, tm)
    x = randn(3, 4)
    jo, jw = jm(jt.tensor(x), jt.tensor(x), jt.tensor(x))
    to, tw = tm(torch.tensor(x), torch.tensor(x), torch.tensor(x))
    assert_close(jo, to)
    assert_close(jw, tw)


@pytest.mark.parametrize("norm_first,activation,batch_first", [(False, "relu", False), (True, "gelu", True)])
def test_transformer_encoder_layer(norm_first, activation, batch_first):
    kw = dict(
        dim_feedforward=16, dropout=0.0, activation=activation, batch_first=batch_first, norm_first=norm_first
    )
    jm, tm = nn.TransformerEncoderLayer(8, 2, **kw), tnn.TransformerEncoderLayer(8, 2, **kw)
    assert sorted(jm.state_dict()) == sorted(tm.state_dict())
    copy_module(jm, tm)
    causal = np.triu(np.full((5, 5), -np.inf, dtype=np.float32), 1)
    x = randn(3, 5, 8) if batch_first else randn(5, 3, 8)
    xj, xt = pair(x)
    jo = jm(xj, src_mask=jt.tensor(causal), is_causal=True)
    to = tm(xt, src_mask=torch.tensor(causal), is_causal=True)
    assert_close(jo, to, atol=1e-5)
    backward_both(jo, to)
    assert_close(xj.grad, xt.grad, atol=1e-4)
    assert_param_grads_close(jm, tm)


def test_transformer_encoder_stack_and_padding_mask():
    layer_kw = dict(dim_feedforward=12, dropout=0.0, batch_first=True)
    jm = nn.TransformerEncoder(nn.TransformerEncoderLayer(6, 3, **layer_kw), 2, norm=nn.LayerNorm(6))
    tm = tnn.TransformerEncoder(
        tnn.TransformerEncoderLayer(6, 3, **layer_kw), 2, norm=tnn.LayerNorm(6), enable_nested_tensor=False
    )
    assert list(jm.state_dict()) == list(tm.state_dict())
    # the deep copies own separate parameters
    assert jm.layers[0].linear1.weight is not jm.layers[1].linear1.weight
    copy_module(jm, tm)
    pad = np.array([[False] * 4, [False, False, True, True]])
    x = randn(2, 4, 6)
    xj, xt = pair(x)
    jo = jm(xj, src_key_padding_mask=jt.tensor(pad))
    to = tm(xt, src_key_padding_mask=torch.tensor(pad))
    assert_close(jo, to)
    backward_both(jo, to)
    assert_param_grads_close(jm, tm)


def test_transformer_dropout_trains_and_evals():
    jm = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.5)
    x = jt.randn(5, 2, 8)
    jm.eval()
    np.testing.assert_array_equal(jm(x).detach().numpy(), jm(x).detach().numpy())
    jm.train()
    assert not np.allclose(jm(x).detach().numpy(), jm(x).detach().numpy())


# ---------------------------------------------------------------------------------------------
# whole models: the examples' CNN and a small transformer language model


def _cnn(m):
    return m.Sequential(
        m.Conv2d(1, 8, kernel_size=3, padding=1),
        m.ReLU(),
        m.Conv2d(8, 16, kernel_size=3, stride=2, padding=1),
        m.ReLU(),
        m.MaxPool2d(2),
        m.Flatten(),
        m.Linear(16 * 2 * 2, 32),
        m.ReLU(),
        m.Linear(32, 10),
    )


def test_cnn_training_steps_match_torch():
    # In float64: in float32 a ReLU input within rounding of zero can fall on either side depending
    # on each library's summation order (BLAS threads, im2col), and its channel's gradients part
    # by far more than rounding; in float64 that takes inputs 1e9 times closer to zero.
    jm, tm = _cnn(nn), _cnn(tnn).double()
    copy_module(jm, tm)
    jm.double()
    for _ in range(3):
        x, y = randn(8, 1, 8, 8).astype(np.float64), RNG.integers(0, 10, 8)
        jl = nn.functional.cross_entropy(jm(jt.tensor(x)), jt.tensor(y))
        tl = tnn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
        assert_close(jl, tl, rtol=1e-10, atol=1e-12)
        jm.zero_grad()
        tm.zero_grad()
        jl.backward()
        tl.backward()
        assert_param_grads_close(jm, tm, rtol=1e-9, atol=1e-12)
        with jt.no_grad():
            for p in jm.parameters():
                p.sub_(0.1 * p.grad)
        with torch.no_grad():
            for p in tm.parameters():
                p -= 0.1 * p.grad


# ---------------------------------------------------------------------------------------------
# Module API


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(jt.ones(2))
        self.register_buffer("steps", jt.zeros(()))
        self.register_buffer("cache", jt.zeros(2), persistent=False)

    def forward(self, x):
        return self.head(self.body(x)) * self.scale


def test_module_registration_and_traversal():
    net = _Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale",
        "body.0.weight",
        "body.0.bias",
        "body.1.weight",
        "body.1.bias",
        "head.weight",
        "head.bias",
    ]
    assert [n for n, _ in net.named_buffers()] == [
        "steps",
        "cache",
        "body.1.running_mean",
        "body.1.running_var",
        "body.1.num_batches_tracked",
    ]
    assert list(net.state_dict()) == [
        "scale",
        "steps",
        "body.0.weight",
        "body.0.bias",
        "body.1.weight",
        "body.1.bias",
        "body.1.running_mean",
        "body.1.running_var",
        "body.1.num_batches_tracked",
        "head.weight",
        "head.bias",
    ]
    assert [n for n, _ in net.named_children()] == ["body", "head"]
    assert [n for n, _ in net.named_modules()] == ["", "body", "body.0", "body.1", "head"]
    assert len(list(net.children())) == 2 and len(list(net.modules())) == 5
    assert len(list(net.parameters())) == 7 and len(list(net.buffers())) == 5
    # a parameter shared by two modules is listed once
    shared = nn.Sequential(net.head, net.head)
    assert len(list(shared.parameters())) == 2
    # reassigning a name replaces the entry; None keeps a declared slot
    net.head = nn.Identity()
    assert "head.weight" not in dict(net.named_parameters())
    net.scale = None
    assert "scale" not in dict(net.named_parameters())
    with pytest.raises(TypeError, match="parameter 'scale'"):
        net.scale = jt.ones(2)
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = net.missing


def test_register_parameter_and_buffer_errors():
    m = nn.Module()
    m.register_parameter("w", nn.Parameter(jt.ones(2)))
    assert m.w.requires_grad and isinstance(m.w, nn.Parameter)
    with pytest.raises(TypeError, match="jitorch.nn.Parameter or None required"):
        m.register_parameter("v", jt.ones(2))
    with pytest.raises(KeyError, match="contain"):
        m.register_buffer("a.b", jt.ones(1))
    with pytest.raises(AttributeError, match="before Module.__init__"):

        class Broken(nn.Module):
            def __init__(self):
                self.w = nn.Parameter(jt.ones(1))

        Broken()


def test_state_dict_round_trip_and_strict_errors():
    a, b = _Net(), _Net()
    with jt.no_grad():
        a.body[0].weight.add_(1.0)
        a.steps.fill_(3)
    b.load_state_dict(a.state_dict())
    assert_close(b.body[0].weight, a.body[0].weight)
    assert b.steps.item() == 3.0
    assert b.body[0].weight is not a.body[0].weight
    sd = a.state_dict()
    sd.pop("head.bias")
    sd["extra"] = jt.ones(1)
    with pytest.raises(RuntimeError) as err:
        b.load_state_dict(sd)
    msg = str(err.value)
    assert "Error(s) in loading state_dict for _Net:" in msg
    assert 'Missing key(s) in state_dict: "head.bias".' in msg
    assert 'Unexpected key(s) in state_dict: "extra".' in msg
    result = b.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["head.bias"] and result.unexpected_keys == ["extra"]
    with pytest.raises(RuntimeError, match=r"size mismatch for head.weight: copying a param with shape"):
        b.load_state_dict({**a.state_dict(), "head.weight": jt.ones(3, 3)})


def test_load_state_dict_error_matches_torch_wording():
    with pytest.raises(RuntimeError) as theirs:
        tnn.Linear(2, 3).load_state_dict({"weight": torch.zeros(3, 2), "foo": torch.zeros(1)})
    with pytest.raises(RuntimeError) as ours:
        nn.Linear(2, 3).load_state_dict({"weight": jt.zeros(3, 2), "foo": jt.zeros(1)})
    assert str(ours.value) == str(theirs.value)


def test_state_dict_shares_storage_and_is_detached():
    lin = nn.Linear(2, 2)
    sd = lin.state_dict()
    assert not sd["weight"].requires_grad
    with jt.no_grad():
        lin.weight.fill_(2.0)
    assert sd["weight"].numpy()[0, 0] == 2.0


def test_train_eval_zero_grad_apply():
    net = _Net()
    assert net.training and net.body[1].training
    net.eval()
    assert not net.training and not net.body[1].training
    net.train()
    assert net.body[0].training
    net(jt.randn(4, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "BatchNorm1d", "Sequential", "Linear", "_Net"]


def test_forward_hooks():
    lin = nn.Linear(2, 2)
    calls = []
    pre = lin.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    post = lin.register_forward_hook(lambda m, args, out: calls.append(out.shape) or out + 1)
    out = lin(jt.randn(3, 2))
    assert calls == [(3, 2)]
    assert_close(out, (lin.bias + 1).expand(3, 2))
    pre.remove()
    post.remove()
    x = jt.randn(3, 2)
    assert_close(lin(x), x @ lin.weight.t() + lin.bias)
    assert calls == [(3, 2)]


def test_to_dtype_and_deepcopy():
    net = _Net().to(jt.float64)
    assert all(p.dtype == jt.float64 for p in net.parameters())
    assert net.body[1].num_batches_tracked.dtype == jt.int64
    assert isinstance(net.head.weight, nn.Parameter)
    clone = copy.deepcopy(net)
    assert isinstance(clone.head.weight, nn.Parameter) and clone.head.weight is not net.head.weight
    np.testing.assert_array_equal(clone.head.weight.detach().numpy(), net.head.weight.detach().numpy())


def test_parameter():
    t = jt.randn(2, 3)
    p = nn.Parameter(t)
    assert isinstance(p, jt.Tensor) and p.is_leaf and p.requires_grad
    assert np.shares_memory(p.detach().numpy(), t.numpy())
    assert repr(p).startswith("Parameter containing:\ntensor([[") and repr(p).endswith("requires_grad=True)")
    assert not nn.Parameter(t, requires_grad=False).requires_grad
    (p * 2).sum().backward()
    np.testing.assert_allclose(p.grad.numpy(), 2.0)
    assert type(p * 2) is jt.Tensor


def test_containers():
    seq = nn.Sequential(OrderedDict(fc=nn.Linear(2, 3), act=nn.ReLU()))
    assert isinstance(seq.fc, nn.Linear) and isinstance(seq[1], nn.ReLU) and len(seq) == 2
    assert isinstance(seq[-1], nn.ReLU) and len(seq[:1]) == 1
    seq.append(nn.Linear(3, 1))
    assert seq(jt.randn(4, 2)).shape == (4, 1)
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    ml.append(nn.Tanh())
    ml.insert(0, nn.Identity())
    assert len(ml) == 5 and isinstance(ml[0], nn.Identity) and len(list(ml.parameters())) == 6
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    md["b"] = nn.ReLU()
    assert list(md.keys()) == ["a", "b"] and "a" in md and len(list(md.parameters())) == 2
    with pytest.raises(IndexError):
        ml[7]


# ---------------------------------------------------------------------------------------------
# init


def test_calculate_gain_and_fans_match_torch():
    for name, param in [
        ("linear", None),
        ("relu", None),
        ("tanh", None),
        ("leaky_relu", 0.2),
        ("selu", None),
        ("leaky_relu", None),
        ("conv2d", None),
    ]:
        assert init.calculate_gain(name, param) == pytest.approx(tnn.init.calculate_gain(name, param))
    w = jt.empty(8, 3, 5, 5)
    assert init._calculate_fan_in_and_fan_out(w) == tnn.init._calculate_fan_in_and_fan_out(
        torch.empty(8, 3, 5, 5)
    )
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(jt.empty(3))


def _values(t) -> np.ndarray:
    return t.detach().numpy().ravel()


def test_init_distributions():
    w = jt.empty(400, 250)
    fan_in, fan_out = 250, 400
    v = _values(init.kaiming_uniform_(w, a=math.sqrt(5)))
    assert abs(v).max() <= 1 / math.sqrt(fan_in) and abs(v).max() > 0.95 / math.sqrt(fan_in)
    v = _values(init.kaiming_normal_(w, nonlinearity="relu"))
    assert v.std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)
    v = _values(init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"))
    assert v.std() == pytest.approx(math.sqrt(2 / fan_out), rel=0.03)
    bound = math.sqrt(6 / (fan_in + fan_out))
    v = _values(init.xavier_uniform_(w, gain=2.0))
    assert abs(v).max() <= 2 * bound and v.std() == pytest.approx(2 * bound / math.sqrt(3), rel=0.03)
    v = _values(init.xavier_normal_(w))
    assert v.std() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.03)
    v = _values(init.normal_(w, 3.0, 0.5))
    assert v.mean() == pytest.approx(3.0, abs=0.01) and v.std() == pytest.approx(0.5, rel=0.03)
    v = _values(init.uniform_(w, -2.0, 1.0))
    assert v.min() >= -2.0 and v.max() < 1.0 and v.mean() == pytest.approx(-0.5, abs=0.02)
    v = _values(init.trunc_normal_(w, 0.0, 1.0, -0.5, 1.5))
    assert v.min() >= -0.5 and v.max() <= 1.5 and v.min() < -0.49 and v.max() > 1.49
    # truncated N(0, 1) on [-0.5, 1.5]: mean (phi(-0.5) - phi(1.5)) / (Phi(1.5) - Phi(-0.5)) = 0.356
    assert v.mean() == pytest.approx(0.356, abs=0.02)
    assert (_values(init.zeros_(w)) == 0).all() and (_values(init.ones_(w)) == 1).all()
    assert (_values(init.constant_(w, 0.25)) == 0.25).all()
    assert_close(init.eye_(jt.empty(3, 4)), torch.eye(3, 4))


def test_default_layer_inits():
    jt.manual_seed(0)
    lin = nn.Linear(300, 200)
    bound = 1 / math.sqrt(300)
    for p in (lin.weight, lin.bias):
        v = _values(p)
        assert abs(v).max() <= bound and abs(v).max() > 0.9 * bound
    assert _values(lin.weight).std() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    conv = nn.Conv2d(16, 32, 3)
    assert abs(_values(conv.weight)).max() <= 1 / math.sqrt(16 * 9)
    emb = nn.Embedding(500, 64)
    assert _values(emb.weight).std() == pytest.approx(1.0, rel=0.03)
    mha = nn.MultiheadAttention(64, 4)
    assert not _values(mha.in_proj_bias).any() and not _values(mha.out_proj.bias).any()
    assert abs(_values(mha.in_proj_weight)).max() <= math.sqrt(6 / (64 + 192))
    ln, bn = nn.LayerNorm(4), nn.BatchNorm2d(4)
    assert (_values(ln.weight) == 1).all() and (_values(ln.bias) == 0).all()
    assert (_values(bn.weight) == 1).all() and (_values(bn.running_var) == 1).all()


def test_init_is_seed_reproducible():
    jt.manual_seed(42)
    a = _cnn(nn)
    jt.manual_seed(42)
    b = _cnn(nn)
    c = _cnn(nn)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        np.testing.assert_array_equal(_values(pa), _values(pb), err_msg=name)
        assert not np.array_equal(_values(pa), _values(pc)), name


# ---------------------------------------------------------------------------------------------
# utils


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    jm, tm = _cnn(nn), _cnn(tnn)
    copy_module(jm, tm)
    x, y = randn(4, 1, 8, 8), RNG.integers(0, 10, 4)
    nn.functional.cross_entropy(jm(jt.tensor(x)), jt.tensor(y)).backward()
    tnn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y)).backward()
    jn = nn.utils.clip_grad_norm_(jm.parameters(), max_norm, norm_type)
    tn = tnn.utils.clip_grad_norm_(tm.parameters(), max_norm, norm_type)
    assert_close(jn, tn, rtol=1e-4)
    assert_param_grads_close(jm, tm)


def test_clip_grad_value_and_vector_round_trip():
    p = nn.Parameter(jt.tensor([1.0, -2.0, 3.0]))
    p.grad = jt.tensor([0.5, -4.0, 9.0])
    nn.utils.clip_grad_value_([p], 1.0)
    assert p.grad.tolist() == [0.5, -1.0, 1.0]
    lin = nn.Linear(3, 2)
    vec = nn.utils.parameters_to_vector(lin.parameters())
    assert vec.shape == (8,)
    nn.utils.vector_to_parameters(vec * 0 + 1.0, lin.parameters())
    assert (_values(lin.weight) == 1).all() and (_values(lin.bias) == 1).all()
