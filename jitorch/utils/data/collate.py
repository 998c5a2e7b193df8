"""Collation, shaped like `torch.utils.data.default_collate`: merging a list of samples into a batch."""

from __future__ import annotations

import collections.abc as cabc
from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import dtypes as _dt
from ...creation import as_tensor, tensor
from ...ops import stack
from ...tensor import Tensor

__all__ = ["default_collate", "default_convert"]

# numpy integer types jitorch has no dtype for are widened without loss.
_WIDEN = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}


def _array_to_tensor(array: np.ndarray) -> Tensor:
    widened = _WIDEN.get(array.dtype)
    if widened is not None:
        array = array.astype(widened)
    _dt.from_numpy_dtype(array.dtype)  # a clear error for strings, objects, complex, ...
    return as_tensor(array)


def _is_numeric_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf"


def default_collate(batch: Sequence[Any]) -> Any:
    """Merge a list of samples into a batch, recursively, like PyTorch's `default_collate`.

    Tensors and numpy arrays are stacked on a new first dimension; Python floats become a float64
    tensor, ints int64, bools bool; strings stay a list; dicts, tuples and lists are collated field
    by field (a tuple of fields comes back as a list, as in PyTorch; a namedtuple keeps its type).
    """
    elem = batch[0]
    if isinstance(elem, Tensor):
        return _stack_tensors(batch)
    if _is_numeric_array(elem):
        return _stack_tensors([_array_to_tensor(a) for a in batch])
    if isinstance(elem, (np.number, np.bool_)):
        return _array_to_tensor(np.array(batch))
    if isinstance(elem, bool):
        return tensor(batch, dtype=_dt.bool_)
    if isinstance(elem, int):
        return tensor(batch, dtype=_dt.int64)
    if isinstance(elem, float):
        return tensor(batch, dtype=_dt.float64)
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, cabc.Mapping):
        return _rebuild_mapping(elem, {key: default_collate([d[key] for d in batch]) for key in elem})
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(default_collate(list(field)) for field in zip(*batch)))
    if isinstance(elem, cabc.Sequence):
        if any(len(sample) != len(elem) for sample in batch):
            raise RuntimeError("each element in list of batch should be of equal size, got lengths "
                               f"{[len(sample) for sample in batch]}")
        return [default_collate(list(field)) for field in zip(*batch)]
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
                    f"found {type(elem).__name__}")


def _stack_tensors(batch: Sequence[Tensor]) -> Tensor:
    shapes = {tuple(t.shape) for t in batch}
    if len(shapes) != 1:
        raise RuntimeError(f"default_collate: stack expects each tensor to be equal size, but got shapes "
                           f"{sorted(shapes)}; pad the samples or pass a collate_fn")
    return stack(list(batch))


def _rebuild_mapping(like: cabc.Mapping, values: dict) -> cabc.Mapping:
    """The collated dict, as the samples' own mapping type when that type can be built from a dict."""
    if type(like) is dict:
        return values
    try:
        return type(like)(values)
    except TypeError:
        return values


def default_convert(sample: Any) -> Any:
    """Turn numpy arrays in a sample into tensors without batching (the `batch_size=None` path)."""
    if _is_numeric_array(sample):
        return _array_to_tensor(sample)
    if isinstance(sample, cabc.Mapping):
        return _rebuild_mapping(sample, {k: default_convert(v) for k, v in sample.items()})
    if isinstance(sample, tuple) and hasattr(sample, "_fields"):
        return type(sample)(*(default_convert(v) for v in sample))
    if isinstance(sample, (list, tuple)):
        return type(sample)(default_convert(v) for v in sample)
    return sample
