"""Variable-length sequences for recurrent layers, PyTorch's `torch.nn.utils.rnn`.

A PackedSequence stores a batch of sequences without padding: `data` holds step 0 of every
sequence, then step 1 of those still running, and so on, sorted longest first; `batch_sizes[t]`
says how many rows step t has. RNN, LSTM and GRU accept one and stop each sequence at its own end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ... import creation, ops
from ... import dtypes as _dt
from ...tensor import Tensor

__all__ = [
    "PackedSequence",
    "pack_padded_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "pack_sequence",
    "unpack_sequence",
]


class _PackedSequenceFields(NamedTuple):
    data: Tensor
    batch_sizes: Tensor
    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None


class PackedSequence(_PackedSequenceFields):
    """(data, batch_sizes, sorted_indices, unsorted_indices); build one with `pack_padded_sequence`.

    `sorted_indices[i]` is the original batch position of the i-th longest sequence, and
    `unsorted_indices` its inverse (derived when only `sorted_indices` is given), as in PyTorch.
    """

    __slots__ = ()

    def __new__(
        cls,
        data: Tensor,
        batch_sizes: Tensor,
        sorted_indices: Tensor | None = None,
        unsorted_indices: Tensor | None = None,
    ) -> PackedSequence:
        if unsorted_indices is None and sorted_indices is not None:
            unsorted_indices = _as_index(np.argsort(sorted_indices.numpy()))
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)


def _as_index(values) -> Tensor:
    return creation.tensor(np.asarray(values, dtype=np.int64), dtype=_dt.int64)


def _lengths_array(lengths) -> np.ndarray:
    values = lengths.tolist() if isinstance(lengths, Tensor) else lengths
    return np.asarray(values, dtype=np.int64).reshape(-1)


def pack_padded_sequence(
    input: Tensor, lengths: Tensor | Sequence[int], batch_first: bool = False, enforce_sorted: bool = True
) -> PackedSequence:
    """Pack a padded (T, B, *) batch (or (B, T, *) with `batch_first`) whose sequence b has lengths[b] steps.

    With `enforce_sorted=False` the batch is sorted here (longest first) and the order recorded,
    so outputs and states come back in the caller's order.
    """
    lengths_np = _lengths_array(lengths)
    batch_dim = 0 if batch_first else 1
    if lengths_np.shape[0] != input.shape[batch_dim]:
        raise ValueError(
            f"Expected `len(lengths)` to be equal to batch_size, but got {lengths_np.shape[0]} "
            f"(batch_size={input.shape[batch_dim]}, input shape {tuple(input.shape)})"
        )
    if np.any(lengths_np <= 0):
        raise RuntimeError("Length of all samples has to be greater than 0, but found an element in 'lengths' "
                           f"that is <= 0: {lengths_np.tolist()}")
    sorted_indices = None
    if enforce_sorted:
        if np.any(np.diff(lengths_np) > 0):
            raise RuntimeError(
                f"`lengths` array must be sorted in decreasing order when `enforce_sorted` is True, got "
                f"{lengths_np.tolist()}. You can pass `enforce_sorted=False` to pack_padded_sequence and/or "
                "pack_sequence to sidestep this requirement."
            )
    else:
        order = np.argsort(-lengths_np, kind="stable")
        lengths_np = lengths_np[order]
        sorted_indices = _as_index(order)
        input = input.index_select(batch_dim, sorted_indices)
    steps = input.transpose(0, 1) if batch_first else input
    if lengths_np[0] > steps.shape[0]:
        raise RuntimeError(f"the longest length {lengths_np[0]} exceeds the {steps.shape[0]} steps of the "
                           f"input of shape {tuple(input.shape)}; check `lengths` and `batch_first`")
    batch_sizes = [int(np.sum(lengths_np > t)) for t in range(int(lengths_np[0]))]
    data = ops.cat([steps[t, :size] for t, size in enumerate(batch_sizes)])
    return PackedSequence(data, _as_index(batch_sizes), sorted_indices)


def _pad_rows(x: Tensor, total: int, value: float, side: str = "right") -> Tensor:
    """`x` extended along dim 0 to `total` rows of `value`, after it ("right") or before it ("left")."""
    missing = total - x.shape[0]
    if missing == 0:
        return x
    fill = creation.full((missing, *x.shape[1:]), value, dtype=x.dtype, device=x.device)
    return ops.cat([x, fill] if side == "right" else [fill, x])


def pad_packed_sequence(
    sequence: PackedSequence,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The inverse of `pack_padded_sequence`: (padded batch, lengths), in the original batch order.

    `total_length` pads to a fixed number of steps (e.g. to match the input of a DataParallel model).
    """
    batch_sizes = [int(b) for b in sequence.batch_sizes.tolist()]
    batch, steps = batch_sizes[0], len(batch_sizes)
    if total_length is not None and total_length < steps:
        raise ValueError(
            "Expected total_length to be at least the length of the longest sequence in input, but got "
            f"total_length={total_length} and max sequence length being {steps}"
        )
    rows = ops.split(sequence.data, batch_sizes)
    padded = ops.stack([_pad_rows(r, batch, padding_value) for r in rows])
    if total_length is not None and total_length > steps:
        padded = _pad_rows(padded, total_length, padding_value)
    # sequence b (in sorted order) runs for as many steps as have more than b rows
    lengths = np.sum(np.asarray(batch_sizes)[None, :] > np.arange(batch)[:, None], axis=1)
    if sequence.unsorted_indices is not None:
        padded = padded.index_select(1, sequence.unsorted_indices)
        lengths = lengths[sequence.unsorted_indices.numpy()]
    return (padded.transpose(0, 1) if batch_first else padded), _as_index(lengths)


def pad_sequence(
    sequences: Sequence[Tensor] | Tensor,
    batch_first: bool = False,
    padding_value: float = 0.0,
    padding_side: str = "right",
) -> Tensor:
    """Stack sequences of shapes (L_i, *) into (max L, B, *) (or (B, max L, *)), padding with `padding_value`."""
    if padding_side not in ("left", "right"):
        raise ValueError(f'Expected padding_side to be one of left or right, but got "{padding_side}".')
    sequences = list(sequences)
    if not sequences:
        raise RuntimeError("pad_sequence: received an empty list of sequences; pass at least one tensor")
    longest = max(s.shape[0] for s in sequences)
    padded = [_pad_rows(s, longest, padding_value, padding_side) for s in sequences]
    return ops.stack(padded, dim=0 if batch_first else 1)


def pack_sequence(sequences: Sequence[Tensor], enforce_sorted: bool = True) -> PackedSequence:
    """Pack a list of (L_i, *) tensors (longest first unless `enforce_sorted=False`)."""
    lengths = [s.shape[0] for s in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences: PackedSequence) -> list[Tensor]:
    """The list of (L_i, *) tensors a PackedSequence holds, in the original order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return [padded[i, :length] for i, length in enumerate(lengths.tolist())]
