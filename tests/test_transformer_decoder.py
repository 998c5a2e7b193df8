"""nn.TransformerDecoderLayer, nn.TransformerDecoder and nn.Transformer against PyTorch from the same
weights, in float64 (outputs and the gradients of every input and parameter to ~1e-10), their
state_dict keys and input validation, and a compiled training step of a tiny Transformer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as tnn

import jitorch as jt
import jitorch.nn as nn
from tests.nn_helpers import assert_close, assert_param_grads_close, backward_both, copy_module, pair

RNG = np.random.default_rng(7)
TOL = {"rtol": 1e-10, "atol": 1e-10}
F64 = {"jt": {"dtype": jt.float64}, "torch": {"dtype": torch.float64}}
# torch's encoder says its fast path is off (it is: inputs require grad); nothing of jitorch's
pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


def causal_bool(n: int) -> np.ndarray:
    """True above the diagonal: position i may not attend to j > i."""
    return np.triu(np.ones((n, n), dtype=bool), 1)


def padding(lengths: list[int], n: int) -> np.ndarray:
    """(batch, n) key padding mask: True past each sequence's length."""
    return np.arange(n)[None, :] >= np.array(lengths)[:, None]


def masks(**arrays: np.ndarray) -> tuple[dict, dict]:
    """The same masks as jitorch and torch keyword arguments."""
    return {k: jt.tensor(v) for k, v in arrays.items()}, {k: torch.tensor(v) for k, v in arrays.items()}


def assert_same_outputs_and_grads(jm, tm, arrays: list[np.ndarray], jkw: dict, tkw: dict) -> None:
    """Run jm and tm (same weights) on the same float64 inputs and masks; compare the output, the
    inputs' gradients and every parameter's gradient."""
    copy_module(jm, tm)
    pairs = [pair(a) for a in arrays]
    jout = jm(*[j for j, _ in pairs], **jkw)
    tout = tm(*[t for _, t in pairs], **tkw)
    assert jout.dtype is jt.float64
    assert_close(jout, tout, **TOL)
    backward_both(jout, tout)
    for i, (j, t) in enumerate(pairs):
        assert_close(j.grad, t.grad, what=f"grad of input {i}", **TOL)
    assert_param_grads_close(jm, tm, **TOL)


def decoder_layers(**kw) -> tuple[nn.TransformerDecoderLayer, tnn.TransformerDecoderLayer]:
    kw = {"dim_feedforward": 16, "dropout": 0.0, **kw}
    return (
        nn.TransformerDecoderLayer(8, 2, **kw, **F64["jt"]),
        tnn.TransformerDecoderLayer(8, 2, **kw, **F64["torch"]),
    )


@pytest.mark.parametrize(
    "norm_first,batch_first,activation",
    [(False, False, "relu"), (True, True, "gelu"), (True, False, "relu"), (False, True, "gelu")],
)
def test_decoder_layer_matches_torch(norm_first, batch_first, activation):
    jm, tm = decoder_layers(norm_first=norm_first, batch_first=batch_first, activation=activation)
    assert list(jm.state_dict()) == list(tm.state_dict())
    n, t, s = 3, 5, 4
    tgt, memory = (randn(n, t, 8), randn(n, s, 8)) if batch_first else (randn(t, n, 8), randn(s, n, 8))
    jkw, tkw = masks(
        tgt_mask=causal_bool(t),
        tgt_key_padding_mask=padding([5, 3, 4], t),
        memory_key_padding_mask=padding([4, 4, 2], s),
    )
    assert_same_outputs_and_grads(jm, tm, [tgt, memory], {**jkw, "tgt_is_causal": True}, {**tkw, "tgt_is_causal": True})


def test_decoder_layer_callable_activation_and_float_memory_mask_unbatched():
    jm, tm = decoder_layers(activation=jt.tanh)
    tm.activation = torch.tanh
    memory_mask = np.where(RNG.random((5, 4)) > 0.7, -np.inf, randn(5, 4))
    memory_mask[:, 0] = 0.0  # every query keeps a key, or its softmax row is NaN
    jkw, tkw = masks(tgt_mask=np.triu(np.full((5, 5), -np.inf), 1), memory_mask=memory_mask)
    assert_same_outputs_and_grads(jm, tm, [randn(5, 8), randn(4, 8)], jkw, tkw)


def test_decoder_stack_with_final_norm():
    layer_kw = {"dim_feedforward": 12, "dropout": 0.0, "batch_first": True}
    jm = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(6, 3, **layer_kw, **F64["jt"]), 2, norm=nn.LayerNorm(6, **F64["jt"])
    )
    tm = tnn.TransformerDecoder(
        tnn.TransformerDecoderLayer(6, 3, **layer_kw, **F64["torch"]), 2, norm=tnn.LayerNorm(6, **F64["torch"])
    )
    assert list(jm.state_dict()) == list(tm.state_dict())
    # the deep copies own separate parameters
    assert jm.layers[0].multihead_attn.in_proj_weight is not jm.layers[1].multihead_attn.in_proj_weight
    mask = jt.nn.Transformer.generate_square_subsequent_mask(4, dtype=jt.float64)
    jkw, tkw = masks(memory_key_padding_mask=padding([3, 5], 5))
    jkw["tgt_mask"], tkw["tgt_mask"] = mask, torch.tensor(mask.numpy())
    assert_same_outputs_and_grads(jm, tm, [randn(2, 4, 6), randn(2, 5, 6)], jkw, tkw)


def transformers(**kw) -> tuple[nn.Transformer, tnn.Transformer]:
    kw = {"d_model": 8, "nhead": 2, "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 16, **kw}
    return nn.Transformer(**kw, **F64["jt"]), tnn.Transformer(**kw, **F64["torch"])


@pytest.mark.parametrize("batch_first,norm_first", [(True, False), (False, True)])
def test_transformer_end_to_end(batch_first, norm_first):
    jm, tm = transformers(batch_first=batch_first, norm_first=norm_first, dropout=0.3)
    jm.eval()  # dropout off
    tm.eval()
    assert list(jm.state_dict()) == list(tm.state_dict())
    assert {k: tuple(v.shape) for k, v in jm.state_dict().items()} == {
        k: tuple(v.shape) for k, v in tm.state_dict().items()
    }
    n, s, t = 2, 6, 4
    src, tgt = (randn(n, s, 8), randn(n, t, 8)) if batch_first else (randn(s, n, 8), randn(t, n, 8))
    src_pad = padding([6, 4], s)
    jkw, tkw = masks(
        tgt_mask=causal_bool(t),
        src_key_padding_mask=src_pad,
        memory_key_padding_mask=src_pad,
        tgt_key_padding_mask=padding([4, 3], t),
    )
    assert_same_outputs_and_grads(jm, tm, [src, tgt], jkw, tkw)


def test_transformer_unbatched_and_repr():
    jm, tm = transformers(num_encoder_layers=1, num_decoder_layers=1, dropout=0.0)
    assert repr(jm) == repr(tm).replace("torch.", "jitorch.")
    jkw, tkw = masks(tgt_mask=np.triu(np.full((3, 3), -np.inf), 1))
    assert_same_outputs_and_grads(jm, tm, [randn(5, 8), randn(3, 8)], jkw, tkw)


def test_transformer_initializes_matrices_xavier_uniform():
    jm, _ = transformers(d_model=32, dim_feedforward=64, num_encoder_layers=1, num_decoder_layers=1)
    w = jm.decoder.layers[0].linear1.weight.detach().numpy()
    bound = np.sqrt(6.0 / (32 + 64))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    norm = jm.encoder.norm
    assert not np.any(norm.bias.detach().numpy()) and np.all(norm.weight.detach().numpy() == 1)


def test_transformer_custom_encoder_and_decoder_are_used_and_initialized():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 1)
    decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16), 3)
    linear1 = encoder.layers[0].linear1
    weight, bias = linear1.weight.detach().numpy().copy(), linear1.bias.detach().numpy().copy()
    model = nn.Transformer(8, 2, custom_encoder=encoder, custom_decoder=decoder)
    assert model.encoder is encoder and model.decoder is decoder and len(model.decoder.layers) == 3
    assert "encoder.norm.weight" not in model.state_dict()
    # as PyTorch, Transformer re-initializes every matrix of a custom encoder too, and keeps the vectors
    assert not np.array_equal(linear1.weight.detach().numpy(), weight)
    np.testing.assert_array_equal(linear1.bias.detach().numpy(), bias)
    assert model(jt.randn(5, 2, 8), jt.randn(4, 2, 8)).shape == (4, 2, 8)


@pytest.mark.parametrize("sz", [1, 5])
def test_generate_square_subsequent_mask(sz):
    ours = nn.Transformer.generate_square_subsequent_mask(sz)
    theirs = tnn.Transformer.generate_square_subsequent_mask(sz)
    assert ours.dtype is jt.float32
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert nn.Transformer.generate_square_subsequent_mask(sz, dtype=jt.float64).dtype is jt.float64


@pytest.mark.parametrize(
    "src_shape,tgt_shape,message",
    [
        ((6, 2, 8), (4, 3, 8), "the batch number of src and tgt must be equal"),
        ((6, 2, 8), (4, 2, 6), "the feature number of src and tgt must be equal to d_model"),
        ((6, 2, 6), (4, 2, 6), "the feature number of src and tgt must be equal to d_model"),
    ],
)
def test_transformer_input_errors_match_torch(src_shape, tgt_shape, message):
    jm, tm = transformers(num_encoder_layers=1, num_decoder_layers=1)
    with pytest.raises(RuntimeError, match=message):
        tm(torch.zeros(src_shape, dtype=torch.float64), torch.zeros(tgt_shape, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=message) as err:
        jm(jt.zeros(src_shape, dtype=jt.float64), jt.zeros(tgt_shape, dtype=jt.float64))
    assert str(src_shape) in str(err.value) and str(tgt_shape) in str(err.value)


def test_decoder_layer_memory_batch_mismatch_names_shapes():
    jm, tm = decoder_layers()
    with pytest.raises(RuntimeError):
        tm(torch.zeros(5, 3, 8, dtype=torch.float64), torch.zeros(4, 2, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"key \(4, 2, 8\).*query \(5, 3, 8\)"):
        jm(jt.zeros(5, 3, 8, dtype=jt.float64), jt.zeros(4, 2, 8, dtype=jt.float64))


def test_unknown_activation_is_an_error():
    with pytest.raises(RuntimeError, match="activation should be relu/gelu, not tanh"):
        nn.TransformerDecoderLayer(8, 2, activation="tanh")


def _train_tiny_transformer(compiled: bool, steps: int = 2):
    """Losses and final weights of `steps` SGD steps of a tiny Transformer, eager or compiled."""
    jt.manual_seed(0)
    model = nn.Transformer(8, 2, 1, 1, dim_feedforward=16, dropout=0.0, batch_first=True)
    opt = jt.optim.SGD(model.parameters(), lr=0.1)
    g = np.random.default_rng(0)
    src, tgt, target = (jt.tensor(g.standard_normal(s).astype(np.float32)) for s in [(2, 5, 8), (2, 4, 8), (2, 4, 8)])
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(4)

    def train_step(src, tgt, target):
        opt.zero_grad()
        loss = ((model(src, tgt, tgt_mask=tgt_mask, tgt_is_causal=True) - target) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    step = jt.compile(train_step) if compiled else train_step
    losses = [step(src, tgt, target).item() for _ in range(steps)]
    return losses, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, step


def test_compiled_training_step_matches_eager():
    eager_losses, eager_state, _ = _train_tiny_transformer(compiled=False)
    losses, state, step = _train_tiny_transformer(compiled=True)
    assert (step.compiles, step.hits) == (1, 1)  # the second step replays the compiled program
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5, atol=1e-6)
    assert eager_losses[1] < eager_losses[0]
    for name, ref in eager_state.items():
        np.testing.assert_allclose(state[name], ref, rtol=1e-4, atol=1e-5, err_msg=name)
