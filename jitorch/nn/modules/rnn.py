"""Recurrent layers: RNN, LSTM, GRU and their single-step cells, with PyTorch's parameter layout.

Everything is a composition of existing ops (linear, sigmoid, tanh, cat, split, ...), so autograd
and `jitorch.compile` need no recurrent primitive. One time loop (`_scan`) serves every layer,
direction and input form: each cell contributes only its step function (`_STEPS`).

A sequence travels between layers as PyTorch's packed layout: `rows` of shape (N, features), the
steps one after another, and `batch_sizes[t]` rows at step t (sorted longest sequence first). A
padded (T, B, features) input is the special case N = T*B with every batch size B, so padded and
packed inputs share one code path.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from ... import creation, ops
from ...tensor import Tensor
from .. import functional as F
from .. import init
from ..parameter import Parameter
from ..utils.rnn import PackedSequence
from .linear import _empty
from .module import Module

State = tuple[Tensor, ...]  # (h,) for RNN and GRU, (h, c) for LSTM


class _CellWeights(NamedTuple):
    """One layer and direction's parameters (w_hr only for an LSTM with proj_size)."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None = None


def _rnn_step(gates_x: Tensor, state: State, w: _CellWeights, activation: Callable[[Tensor], Tensor]) -> State:
    """h' = activation(x W_ih^T + b_ih + h W_hh^T + b_hh)."""
    return (activation(gates_x + F.linear(state[0], w.w_hh, w.b_hh)),)


def _lstm_step(gates_x: Tensor, state: State, w: _CellWeights) -> State:
    """PyTorch's LSTM step, gates in the order i, f, g, o; h projected by w_hr when proj_size > 0."""
    h, c = state
    i, f, g, o = ops.chunk(gates_x + F.linear(h, w.w_hh, w.b_hh), 4, 1)
    c = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
    h = F.sigmoid(o) * F.tanh(c)
    if w.w_hr is not None:
        h = F.linear(h, w.w_hr)
    return h, c


def _gru_step(gates_x: Tensor, state: State, w: _CellWeights) -> State:
    """PyTorch's GRU step, gates in the order r, z, n; the reset gate scales W_hn h + b_hn (not h)."""
    (h,) = state
    x_r, x_z, x_n = ops.chunk(gates_x, 3, 1)
    h_r, h_z, h_n = ops.chunk(F.linear(h, w.w_hh, w.b_hh), 3, 1)
    r = F.sigmoid(x_r + h_r)
    z = F.sigmoid(x_z + h_z)
    n = F.tanh(x_n + r * h_n)
    return (n + z * (h - n),)


_STEPS: dict[str, Callable[[Tensor, State, _CellWeights], State]] = {
    "RNN_TANH": partial(_rnn_step, activation=F.tanh),
    "RNN_RELU": partial(_rnn_step, activation=F.relu),
    "LSTM": _lstm_step,
    "GRU": _gru_step,
}
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _rows(state: State, start: int, stop: int) -> State:
    return tuple(s[start:stop] for s in state)


def _scan(
    step: Callable[[Tensor, State, _CellWeights], State],
    gates_x: list[Tensor],
    batch_sizes: list[int],
    initial: State,
    weights: _CellWeights,
    reverse: bool,
) -> tuple[list[Tensor], State]:
    """Run `step` over time; returns each step's output and the final state of every sequence.

    Sequences are sorted longest first, so going forward the batch only shrinks: the rows that stop
    are set aside as those sequences' final states. Going backward it only grows: a sequence joins
    at its own last step, starting from its initial state.
    """
    times = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    first = batch_sizes[times[0]]
    state = initial if first == initial[0].shape[0] else _rows(initial, 0, first)
    finished: list[State] = []
    outputs: list[Tensor] = [None] * len(batch_sizes)  # type: ignore[list-item]
    for t in times:
        active, n = batch_sizes[t], state[0].shape[0]
        if active < n:
            finished.append(_rows(state, active, n))
            state = _rows(state, 0, active)
        elif active > n:
            state = tuple(ops.cat([s, s0[n:active]]) for s, s0 in zip(state, initial))
        state = step(gates_x[t], state, weights)
        outputs[t] = state[0]
    if finished:  # the earliest to stop hold the last rows
        state = tuple(ops.cat(parts) for parts in zip(state, *reversed(finished)))
    return outputs, state


class RNNBase(Module):
    """The shared machinery of RNN, LSTM and GRU; `mode` is "RNN_TANH", "RNN_RELU", "LSTM" or "GRU".

    Parameters are registered in PyTorch's order and names (`weight_ih_l{k}`, `weight_hh_l{k}`,
    `bias_ih_l{k}`, `bias_hh_l{k}`, `weight_hr_l{k}`, with a `_reverse` suffix for the backward
    direction), so a converted PyTorch state_dict loads as is.
    """

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if mode not in _STEPS:
            raise ValueError(f"Unrecognized RNN mode: {mode}; expected one of {sorted(_STEPS)}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=2,
            )
        if not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        if not isinstance(num_layers, int) or num_layers <= 0:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size ({proj_size}) has to be smaller than hidden_size ({hidden_size})")
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, proj_size
        num_directions = 2 if bidirectional else 1
        real_hidden = proj_size or hidden_size
        gate_size = _GATES[mode] * hidden_size
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * num_directions
            for direction in range(num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (gate_size, layer_input), "weight_hh": (gate_size, real_hidden)}
                if bias:
                    shapes.update(bias_ih=(gate_size,), bias_hh=(gate_size,))
                if proj_size:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                for name, shape in shapes.items():
                    setattr(self, name + suffix, Parameter(_empty(*shape, dtype=dtype, device=device)))
                self._all_weights.append([name + suffix for name in shapes])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialization: every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """A no-op: PyTorch compacts weights for cuDNN here; jitorch keeps no flat copy to refresh."""

    def _cell_weights(self, index: int) -> _CellWeights:
        names = self._all_weights[index]
        get = {name.rsplit("_l", 1)[0]: getattr(self, name) for name in names}
        return _CellWeights(get["weight_ih"], get["weight_hh"], get.get("bias_ih"), get.get("bias_hh"),
                            get.get("weight_hr"))

    def _state_sizes(self) -> tuple[int, ...]:
        """The feature size of each state tensor: (h,) or, for LSTM, (h, c)."""
        real_hidden = self.proj_size or self.hidden_size
        return (real_hidden, self.hidden_size) if self.mode == "LSTM" else (real_hidden,)

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor | tuple[Tensor, Tensor]]:
        """(output, h_n), or for LSTM (output, (h_n, c_n)); `input` may be a PackedSequence."""
        packed = isinstance(input, PackedSequence)
        rows, batch_sizes, unbatched = self._as_rows(input)
        batch = batch_sizes[0]
        state = self._initial_state(hx, batch, rows, unbatched)
        if packed and input.sorted_indices is not None:
            state = tuple(s.index_select(1, input.sorted_indices) for s in state)
        rows, final = self._run_layers(rows, batch_sizes, state)
        if packed:
            output = PackedSequence(rows, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            if input.unsorted_indices is not None:
                final = tuple(s.index_select(1, input.unsorted_indices) for s in final)
        else:
            output = rows.reshape(len(batch_sizes), batch, rows.shape[-1])
            if unbatched:
                output, final = output.squeeze(1), tuple(s.squeeze(1) for s in final)
            elif self.batch_first:
                output = output.transpose(0, 1)
        return output, (final if self.mode == "LSTM" else final[0])

    def _as_rows(self, input: Tensor | PackedSequence) -> tuple[Tensor, list[int], bool]:
        """(rows, batch_sizes, unbatched): any accepted input in the packed layout, after checks."""
        packed = isinstance(input, PackedSequence)
        given = input.data if packed else input
        if given.ndim not in ((2,) if packed else (2, 3)):
            raise ValueError(
                f"{type(self).__name__}: Expected input to be {'2D' if packed else '2D or 3D'}, got {given.ndim}D "
                f"instead (shape {tuple(given.shape)}); use (seq, batch, features) or (seq, features)"
            )
        if given.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {given.shape[-1]} "
                f"(input shape {tuple(given.shape)})"
            )
        if packed:
            return given, [int(b) for b in input.batch_sizes.tolist()], False
        unbatched = given.ndim == 2
        seq = given.unsqueeze(1) if unbatched else given.transpose(0, 1) if self.batch_first else given
        steps, batch = seq.shape[0], seq.shape[1]
        return seq.reshape(steps * batch, seq.shape[2]), [batch] * steps, unbatched

    def _initial_state(self, hx, batch: int, like: Tensor, unbatched: bool) -> State:
        """The initial state as 3-D tensors, zeros when `hx` is None, after checking its shapes."""
        layers = self.num_layers * (2 if self.bidirectional else 1)
        sizes = self._state_sizes()
        if hx is None:
            return tuple(creation.zeros(layers, batch, size, dtype=like.dtype, device=like.device) for size in sizes)
        given = (hx,) if isinstance(hx, Tensor) else tuple(hx)
        if len(given) != len(sizes):
            expected = "a tuple (h_0, c_0)" if self.mode == "LSTM" else "one tensor h_0"
            raise RuntimeError(f"{type(self).__name__}: expected hx as {expected}, got {len(given)} tensors")
        want = 2 if unbatched else 3
        state = []
        for i, (h, size) in enumerate(zip(given, sizes)):
            if h.ndim != want:
                raise RuntimeError(
                    f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} input, hx should also be {want}-D "
                    f"but got {h.ndim}-D tensor (shape {tuple(h.shape)})"
                )
            if h.dtype != like.dtype:
                raise RuntimeError(f"input must have the type {like.dtype}, got type {h.dtype} for hx; "
                                   "convert the initial state with .to(input.dtype)")
            h = h.unsqueeze(1) if unbatched else h
            if tuple(h.shape) != (layers, batch, size):
                what = f"hidden[{i}]" if self.mode == "LSTM" else "hidden"
                raise RuntimeError(
                    f"Expected {what} size {(layers, batch, size)}, got {tuple(h.shape)}: pass a state of shape "
                    "(num_layers * num_directions, batch, hidden) matching the input's batch size"
                )
            state.append(h)
        return tuple(state)

    def _run_layers(self, rows: Tensor, batch_sizes: list[int], initial: State) -> tuple[Tensor, State]:
        """All layers and directions; dropout between layers in training. Returns (rows, final states)."""
        step = _STEPS[self.mode]
        directions = 2 if self.bidirectional else 1
        finals: list[State] = []
        for layer in range(self.num_layers):
            if layer and self.dropout:
                rows = F.dropout(rows, self.dropout, self.training)
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                weights = self._cell_weights(index)
                gates_x = ops.split(F.linear(rows, weights.w_ih, weights.b_ih), batch_sizes)
                steps, final = _scan(step, list(gates_x), batch_sizes, tuple(s[index] for s in initial), weights,
                                     reverse=bool(direction))
                outputs.append(ops.cat(steps))
                finals.append(final)
            rows = outputs[0] if directions == 1 else ops.cat(outputs, dim=1)
        return rows, tuple(ops.stack(parts) for parts in zip(*finals))

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            text += f", proj_size={self.proj_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0, "bidirectional": False}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text


class RNN(RNNBase):
    """Elman RNN, h_t = nonlinearity(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), nonlinearity "tanh" or "relu"."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(f"RNN_{nonlinearity.upper()}", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device=device, dtype=dtype)


class LSTM(RNNBase):
    """Long short-term memory (gates i, f, g, o); with `proj_size > 0` h is projected to proj_size."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)


class GRU(RNNBase):
    """Gated recurrent unit (gates r, z, n), PyTorch's formulation."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)


class RNNCellBase(Module):
    """One time step of a recurrent layer: parameters weight_ih, weight_hh, bias_ih, bias_hh."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.mode, self.input_size, self.hidden_size, self.bias = mode, input_size, hidden_size, bias
        gate_size = _GATES[mode] * hidden_size
        self.weight_ih = Parameter(_empty(gate_size, input_size, dtype=dtype, device=device))
        self.weight_hh = Parameter(_empty(gate_size, hidden_size, dtype=dtype, device=device))
        if bias:
            self.bias_ih = Parameter(_empty(gate_size, dtype=dtype, device=device))
            self.bias_hh = Parameter(_empty(gate_size, dtype=dtype, device=device))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    reset_parameters = RNNBase.reset_parameters

    def _step(self, input: Tensor, hx: State | None) -> State:
        """Check shapes, run the step on a batch (adding a batch dim to a 1-D input), return the state."""
        name = type(self).__name__
        if input.ndim not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.ndim}D instead "
                             f"(shape {tuple(input.shape)})")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size} "
                               f"(input shape {tuple(input.shape)})")
        unbatched = input.ndim == 1
        x = input.unsqueeze(0) if unbatched else input
        n_states = 2 if self.mode == "LSTM" else 1
        if hx is None:
            hx = tuple(creation.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
                       for _ in range(n_states))
        else:
            hx = tuple(h.unsqueeze(0) if unbatched else h for h in hx)
        for i, h in enumerate(hx):
            if tuple(h.shape) != (x.shape[0], self.hidden_size):
                raise RuntimeError(f"{name}: expected hidden{i} of shape {(x.shape[0], self.hidden_size)} "
                                   f"for input of shape {tuple(input.shape)}, got {tuple(h.shape)}")
        weights = _CellWeights(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        state = _STEPS[self.mode](F.linear(x, self.weight_ih, self.bias_ih), hx, weights)
        return tuple(s.squeeze(0) for s in state) if unbatched else state

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            text += f", nonlinearity={self.nonlinearity}"
        return text


class RNNCell(RNNCellBase):
    """One step of an Elman RNN: h' = nonlinearity(x W_ih^T + b_ih + h W_hh^T + b_hh)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(f"RNN_{nonlinearity.upper()}", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._step(input, None if hx is None else (hx,))[0]


class LSTMCell(RNNCellBase):
    """One LSTM step; returns (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        return self._step(input, hx)


class GRUCell(RNNCellBase):
    """One GRU step; returns h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._step(input, None if hx is None else (hx,))[0]
