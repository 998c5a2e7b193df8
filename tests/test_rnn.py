"""Recurrent layers (RNN, LSTM, GRU, cells) and packed sequences against PyTorch with the same weights:
outputs, final states and the gradients of inputs, initial states and every parameter, eager and compiled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.utils.rnn as trnn

import jitorch as jt
import jitorch.nn as nn
import jitorch.nn.utils.rnn as jrnn
from tests.nn_helpers import copy_module

SEQ, BATCH, IN, HIDDEN = 4, 3, 5, 6
TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-5, atol=1e-5)}
LAYERS = {
    "rnn_tanh": lambda lib, **kw: lib.RNN(IN, HIDDEN, nonlinearity="tanh", **kw),
    "rnn_relu": lambda lib, **kw: lib.RNN(IN, HIDDEN, nonlinearity="relu", **kw),
    "lstm": lambda lib, **kw: lib.LSTM(IN, HIDDEN, **kw),
    "gru": lambda lib, **kw: lib.GRU(IN, HIDDEN, **kw),
}


def _models(kind: str, dtype=np.float64, **kwargs):
    """(jitorch layer, torch layer) of `kind` with torch's random weights copied into jitorch."""
    torch.manual_seed(0)
    torch_model = LAYERS[kind](tnn, **kwargs) if kind in LAYERS else getattr(tnn, kind)(IN, HIDDEN, **kwargs)
    jt_model = LAYERS[kind](nn, **kwargs) if kind in LAYERS else getattr(nn, kind)(IN, HIDDEN, **kwargs)
    if dtype is np.float64:
        torch_model, jt_model = torch_model.double(), jt_model.double()
    copy_module(jt_model, torch_model)
    return jt_model, torch_model


def _pair(array: np.ndarray):
    return jt.tensor(array.copy(), requires_grad=True), torch.tensor(array.copy(), requires_grad=True)


def _flat(result) -> list:
    """Every tensor of an RNN result: output, h_n (and c_n) — or a cell's state."""
    if isinstance(result, (tuple, list)):
        return [t for part in result for t in _flat(part)]
    return [result.data if isinstance(result, (jrnn.PackedSequence, trnn.PackedSequence)) else result]


def _assert_close(a, b, tol: dict, what: str) -> None:
    a = a.detach().numpy() if hasattr(a, "detach") else a.numpy()
    np.testing.assert_allclose(a, b.detach().numpy(), err_msg=what, **tol)


def _compare(jt_fn, torch_fn, arrays: list[np.ndarray], jt_model, torch_model, dtype=np.float64) -> None:
    """Run both on the same inputs; compare every output, then the grads of inputs and parameters
    under the same random upstream gradient on every output."""
    tol = TOLERANCE[dtype]
    pairs = [_pair(a.astype(dtype)) for a in arrays]
    jouts, touts = _flat(jt_fn(*[p[0] for p in pairs])), _flat(torch_fn(*[p[1] for p in pairs]))
    assert len(jouts) == len(touts)
    rng = np.random.default_rng(1)
    jloss, tloss = 0, 0
    for i, (j, t) in enumerate(zip(jouts, touts)):
        assert tuple(j.shape) == tuple(t.shape), f"output {i}: {tuple(j.shape)} vs torch {tuple(t.shape)}"
        _assert_close(j, t, tol, f"output {i}")
        g = rng.standard_normal(tuple(t.shape)).astype(dtype)
        jloss, tloss = jloss + (j * jt.tensor(g)).sum(), tloss + (t * torch.tensor(g)).sum()
    jloss.backward()
    tloss.backward()
    for i, (j, t) in enumerate(pairs):
        _assert_close(j.grad, t.grad, tol, f"grad of input {i}")
    jparams = dict(jt_model.named_parameters())
    for name, p in torch_model.named_parameters():
        _assert_close(jparams[name].grad, p.grad, tol, f"grad of {name}")


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
def test_layer_matches_pytorch_float64(kind, num_layers, bidirectional, batch_first, with_h0):
    jm, tm = _models(kind, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SEQ, IN) if batch_first else (SEQ, BATCH, IN))
    states = num_layers * (2 if bidirectional else 1)
    if not with_h0:
        _compare(jm, tm, [x], jm, tm)
    elif kind == "lstm":
        h0, c0 = rng.standard_normal((2, states, BATCH, HIDDEN))
        _compare(lambda x, h, c: jm(x, (h, c)), lambda x, h, c: tm(x, (h, c)), [x, h0, c0], jm, tm)
    else:
        _compare(jm, tm, [x, rng.standard_normal((states, BATCH, HIDDEN))], jm, tm)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_matches_pytorch_float32(kind, bidirectional):
    jm, tm = _models(kind, np.float32, num_layers=2, bidirectional=bidirectional, bias=kind != "gru")
    x = np.random.default_rng(0).standard_normal((SEQ, BATCH, IN))
    _compare(jm, tm, [x], jm, tm, np.float32)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_lstm_with_projection(bidirectional):
    jm, tm = _models("lstm", num_layers=2, bidirectional=bidirectional, proj_size=3)
    rng = np.random.default_rng(0)
    d = 2 if bidirectional else 1
    arrays = [rng.standard_normal((SEQ, BATCH, IN)), rng.standard_normal((2 * d, BATCH, 3)),
              rng.standard_normal((2 * d, BATCH, HIDDEN))]
    _compare(lambda x, h, c: jm(x, (h, c)), lambda x, h, c: tm(x, (h, c)), arrays, jm, tm)
    assert list(dict(jm.named_parameters())) == list(dict(tm.named_parameters()))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_unbatched_input(kind):
    jm, tm = _models(kind, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(0)
    x, h0 = rng.standard_normal((SEQ, IN)), rng.standard_normal((4, HIDDEN))
    if kind == "lstm":
        _compare(lambda x, h: jm(x, (h, h * 2)), lambda x, h: tm(x, (h, h * 2)), [x, h0], jm, tm)
    else:
        _compare(jm, tm, [x, h0], jm, tm)


@pytest.mark.parametrize("cell", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_cell_matches_pytorch(cell, batched):
    jm, tm = _models(cell)
    rng = np.random.default_rng(0)
    lead = (BATCH,) if batched else ()
    x, h = rng.standard_normal((*lead, IN)), rng.standard_normal((*lead, HIDDEN))
    if cell == "LSTMCell":
        _compare(lambda x, h, c: jm(x, (h, c)), lambda x, h, c: tm(x, (h, c)), [x, h, h + 1], jm, tm)
    else:
        _compare(jm, tm, [x, h], jm, tm)


def test_relu_cell_and_cell_without_state():
    jm, tm = _models("RNNCell", nonlinearity="relu", bias=False)
    _compare(jm, tm, [np.random.default_rng(0).standard_normal((BATCH, IN))], jm, tm)


def test_dropout_between_layers_only_in_training():
    jm, tm = _models("lstm", num_layers=2, dropout=0.5)
    x = np.random.default_rng(0).standard_normal((SEQ, BATCH, IN))
    jm.eval()
    tm.eval()
    _compare(jm, tm, [x], jm, tm)
    jm.train()
    jt.manual_seed(0)
    out, (h, c) = jm(jt.tensor(x))
    assert tuple(out.shape) == (SEQ, BATCH, HIDDEN) and tuple(h.shape) == tuple(c.shape) == (2, BATCH, HIDDEN)
    assert not np.allclose(out.detach().numpy(), tm(torch.tensor(x))[0].detach().numpy())


def test_constructor_and_state_dict_match_pytorch():
    jm, tm = _models("gru", num_layers=2, bidirectional=True, bias=False)
    assert list(jm.state_dict()) == list(tm.state_dict())
    assert all(tuple(p.shape) == tuple(q.shape) for p, q in zip(jm.parameters(), tm.parameters()))
    assert repr(jm) == repr(tm)
    jm.flatten_parameters()
    bound = 1 / np.sqrt(HIDDEN)
    weights = np.concatenate([p.detach().numpy().ravel() for p in nn.LSTM(IN, HIDDEN, 2).parameters()])
    assert np.all(np.abs(weights) <= bound) and weights.std() > bound / 3
    with pytest.raises(ValueError, match="proj_size"):
        nn.RNNBase("GRU", IN, HIDDEN, proj_size=2)
    with pytest.raises(ValueError, match="dropout"):
        nn.LSTM(IN, HIDDEN, dropout=1.5)


def test_errors_name_the_shapes():
    lstm = nn.LSTM(IN, HIDDEN, num_layers=2)
    with pytest.raises(RuntimeError, match=r"Expected 5, got 4"):
        lstm(jt.zeros(SEQ, BATCH, 4))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(2, 3, 6\), got \(1, 3, 6\)"):
        lstm(jt.zeros(SEQ, BATCH, IN), (jt.zeros(1, BATCH, HIDDEN), jt.zeros(2, BATCH, HIDDEN)))
    with pytest.raises(RuntimeError, match="hx should also be 3-D"):
        nn.GRU(IN, HIDDEN)(jt.zeros(SEQ, BATCH, IN), jt.zeros(BATCH, HIDDEN))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        nn.RNN(IN, HIDDEN)(jt.zeros(1, SEQ, BATCH, IN))
    with pytest.raises(RuntimeError, match="inconsistent input_size: got 4 expected 5"):
        nn.GRUCell(IN, HIDDEN)(jt.zeros(BATCH, 4))
    with pytest.raises(RuntimeError, match=r"expected hx as a tuple \(h_0, c_0\), got 1"):
        lstm(jt.zeros(SEQ, BATCH, IN), jt.zeros(2, BATCH, HIDDEN))
    with pytest.raises(RuntimeError, match=r"expected hidden1 of shape \(3, 6\)"):
        nn.LSTMCell(IN, HIDDEN)(jt.zeros(BATCH, IN), (jt.zeros(BATCH, HIDDEN), jt.zeros(2, HIDDEN)))


LENGTHS = [2, 4, 1]  # unsorted, distinct: torch's sort order is then unambiguous


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_pack_pad_round_trip(batch_first):
    x = np.random.default_rng(0).standard_normal((BATCH, SEQ, IN) if batch_first else (SEQ, BATCH, IN))
    packed = jrnn.pack_padded_sequence(jt.tensor(x), LENGTHS, batch_first=batch_first, enforce_sorted=False)
    tpacked = trnn.pack_padded_sequence(torch.tensor(x), torch.tensor(LENGTHS), batch_first, enforce_sorted=False)
    for name in packed._fields:
        np.testing.assert_array_equal(getattr(packed, name).numpy(), getattr(tpacked, name).numpy(), err_msg=name)
    padded, lengths = jrnn.pad_packed_sequence(packed, batch_first, padding_value=-1.0, total_length=SEQ + 1)
    tpadded, tlengths = trnn.pad_packed_sequence(tpacked, batch_first, padding_value=-1.0, total_length=SEQ + 1)
    np.testing.assert_array_equal(padded.numpy(), tpadded.numpy())
    np.testing.assert_array_equal(lengths.numpy(), tlengths.numpy())
    with pytest.raises(RuntimeError, match="enforce_sorted"):
        jrnn.pack_padded_sequence(jt.tensor(x), LENGTHS, batch_first=batch_first)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_pad_sequence(batch_first, padding_side):
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((n, 2)) for n in LENGTHS]
    out = jrnn.pad_sequence([jt.tensor(s) for s in seqs], batch_first, 7.0, padding_side)
    expected = trnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first, 7.0, padding_side)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())


def test_pack_and_unpack_sequence():
    seqs = [np.random.default_rng(i).standard_normal((n, 2)) for i, n in enumerate(LENGTHS)]
    packed = jrnn.pack_sequence([jt.tensor(s) for s in seqs], enforce_sorted=False)
    tpacked = trnn.pack_sequence([torch.tensor(s) for s in seqs], enforce_sorted=False)
    np.testing.assert_array_equal(packed.data.numpy(), tpacked.data.numpy())
    for got, expected in zip(jrnn.unpack_sequence(packed), seqs):
        np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_packed_sequence_through_a_layer(kind, bidirectional):
    """Each sequence's final state is taken at its own last step; outputs come back packed."""
    jm, tm = _models(kind, num_layers=2, bidirectional=bidirectional, batch_first=True)
    rng = np.random.default_rng(0)
    states = 2 * (2 if bidirectional else 1)
    x, h0 = rng.standard_normal((BATCH, SEQ, IN)), rng.standard_normal((states, BATCH, HIDDEN))

    def run(lib, model):
        def fn(x, h0):
            packed = lib.pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
            out, state = model(packed, (h0, h0 * 0.5) if kind == "lstm" else h0)
            assert type(out).__name__ == "PackedSequence"
            return lib.pad_packed_sequence(out, batch_first=True)[0], state
        return fn

    _compare(run(jrnn, jm), run(trnn, tm), [x, h0], jm, tm)


VOCAB = 11


def _language_model_losses(compiled: bool, tokens: jt.Tensor, steps: int = 3):
    """Train embedding -> LSTM -> linear with SGD for `steps` steps; (losses, parameters after, lstm)."""
    jt.manual_seed(0)
    embed, lstm, head = nn.Embedding(VOCAB, 8), nn.LSTM(8, HIDDEN, batch_first=True), nn.Linear(HIDDEN, VOCAB)
    params = [*embed.parameters(), *lstm.parameters(), *head.parameters()]
    opt = jt.optim.SGD(params, lr=0.5)

    def step(x, y):
        opt.zero_grad()
        out, _ = lstm(embed(x))
        loss = nn.functional.cross_entropy(head(out).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    step = jt.compile(step) if compiled else step
    losses = [step(tokens[:, :-1], tokens[:, 1:]).item() for _ in range(steps)]
    return losses, [p.detach().numpy().copy() for p in params], lstm


def test_compiled_lstm_language_model_step_matches_eager():
    tokens = jt.tensor(np.random.default_rng(0).integers(0, VOCAB, (BATCH, SEQ + 1)))
    eager_losses, eager_params, _ = _language_model_losses(False, tokens)
    compiled_losses, compiled_params, lstm = _language_model_losses(True, tokens)
    assert eager_losses[-1] < eager_losses[0]
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5)
    for a, b in zip(compiled_params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert list(lstm.state_dict()) == list(tnn.LSTM(8, HIDDEN, batch_first=True).state_dict())


def test_packed_sequences_under_compile_take_their_lengths_as_python_ints():
    """Packing reads the lengths as numbers: compiled, lengths given as a list are part of the call's
    guards (a program per set of lengths) and match eager; as a tensor they raise a TraceError naming
    the line, as any concrete value read while tracing does."""
    from jitorch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    jt.manual_seed(0)
    lstm = jt.nn.LSTM(4, 5, batch_first=True)

    def f(x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, _) = lstm(packed)
        return pad_packed_sequence(out, batch_first=True)[0].sum() + h.sum()

    x = jt.randn(3, 6, 4)
    np.testing.assert_allclose(jt.compile(f)(x, [6, 2, 4]).item(), f(x, [6, 2, 4]).item(), rtol=1e-6)
    with pytest.raises(jt.TraceError, match="needs a concrete value"):
        jt.compile(f)(x, jt.tensor([6, 2, 4]))
