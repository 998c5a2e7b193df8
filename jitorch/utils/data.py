"""Datasets and the `DataLoader`, shaped like `torch.utils.data`.

    ds = TensorDataset(x, y)
    train, val = random_split(ds, [0.9, 0.1], generator=jitorch.Generator().manual_seed(0))
    for xb, yb in DataLoader(train, batch_size=64, shuffle=True, drop_last=True):
        ...

Loading runs in the calling process: `num_workers` is accepted for PyTorch compatibility but no
worker processes are started, so a loop reads the same samples in the same order either way.
Shuffling draws from the loader's `generator` (or the global one, reseeded by `jitorch.manual_seed`),
so a seeded run repeats exactly.
"""

from __future__ import annotations

import collections.abc as cabc
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..creation import as_tensor, from_numpy, tensor
from ..ops import stack
from ..random import Generator, rng
from ..tensor import Tensor

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "Subset", "random_split", "Sampler",
           "SequentialSampler", "RandomSampler", "BatchSampler", "DataLoader", "default_collate",
           "default_convert"]


# ---------------------------------------------------------------------------------------------
# datasets


class Dataset:
    """A map-style dataset: implement `__getitem__(index)` and `__len__`."""

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")


class IterableDataset(Dataset):
    """A stream of samples: implement `__iter__`. The loader batches it in order (no shuffling)."""

    def __iter__(self) -> Iterator:
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__")


class TensorDataset(Dataset):
    """Samples are rows of tensors that share their first dimension: `ds[i] == (x[i], y[i])`."""

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        sizes = [t.shape[0] if t.ndim else None for t in tensors]
        if None in sizes or len(set(sizes)) != 1:
            raise ValueError(f"Size mismatch between tensors: TensorDataset needs the same first "
                             f"dimension in all of them, got shapes {[tuple(t.shape) for t in tensors]}")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


def rows_source(dataset) -> tuple[Tensor, ...]:
    """The tensors behind a TensorDataset, or behind a Subset of one."""
    return (dataset.dataset if isinstance(dataset, Subset) else dataset).tensors


def _tensor_rows(dataset, batch: list[int]):
    """The row indices of `batch` in the TensorDataset behind `dataset` (as an int64 tensor), or None
    when the samples are not plain rows of tensors."""
    if isinstance(dataset, Subset) and type(dataset.dataset) is TensorDataset:
        indices = [dataset.indices[i] for i in batch]
    elif type(dataset) is TensorDataset:
        indices = batch
    else:
        return None
    return from_numpy(np.asarray(indices, dtype=np.int64))


class Subset(Dataset):
    """The samples of `dataset` at `indices`, in that order."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, index):
        if isinstance(index, list):
            return [self.dataset[self.indices[i]] for i in index]
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)


def random_split(dataset: Dataset, lengths: Sequence[int | float],
                 generator: Generator | None = None) -> list[Subset]:
    """Split `dataset` into non-overlapping random subsets of the given lengths or fractions.

    Fractions are turned into lengths as PyTorch does (floor each, then hand out the remainder one
    by one from the first subset on). Example: `random_split(ds, [0.8, 0.2], generator=g)`.
    """
    n = len(dataset)
    lengths = _split_lengths(n, lengths)
    if sum(lengths) != n:
        raise ValueError(f"Sum of input lengths ({sum(lengths)}) does not equal the length of the input "
                         f"dataset ({n})")
    order = rng(generator).permutation(n).tolist()
    subsets, start = [], 0
    for length in lengths:
        subsets.append(Subset(dataset, order[start:start + length]))
        start += length
    return subsets


def _split_lengths(n: int, lengths: Sequence[int | float]) -> list[int]:
    if not (math.isclose(sum(lengths), 1) and sum(lengths) <= 1):
        return [int(length) for length in lengths]
    for i, frac in enumerate(lengths):
        if not 0 <= frac <= 1:
            raise ValueError(f"Fraction at index {i} is not between 0 and 1 ({frac})")
    counts = [int(math.floor(n * frac)) for frac in lengths]
    for i in range(n - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# samplers


class Sampler:
    """An iterable over dataset indices (or, for a batch sampler, lists of indices)."""

    def __iter__(self) -> Iterator:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class SequentialSampler(Sampler):
    """Indices 0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source: Dataset) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(Sampler):
    """A fresh random permutation of the indices on every pass, drawn from `generator`."""

    def __init__(self, data_source: Dataset, generator: Generator | None = None) -> None:
        self.data_source = data_source
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        return iter(rng(self.generator).permutation(len(self.data_source)).tolist())

    def __len__(self) -> int:
        return len(self.data_source)


class BatchSampler(Sampler):
    """Group the indices of `sampler` into lists of `batch_size` (the last one shorter unless dropped)."""

    def __init__(self, sampler: Iterable[int], batch_size: int, drop_last: bool) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(
                f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


# ---------------------------------------------------------------------------------------------
# collation

# numpy integer types jitorch has no dtype for are widened without loss.
_WIDEN = {np.dtype(np.int8): np.int32, np.dtype(np.uint8): np.int32, np.dtype(np.int16): np.int32,
          np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}


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


# ---------------------------------------------------------------------------------------------
# the loader


class DataLoader:
    """Iterate over `dataset` in batches.

    Args:
        batch_size: samples per batch; None yields single samples (numpy arrays made tensors).
        shuffle: a new random order every epoch, drawn from `generator` (or the global one).
        sampler / batch_sampler: custom index order / custom batches instead of shuffle/batch_size.
        collate_fn: merges a list of samples into a batch (default: `default_collate`).
        drop_last: drop a last batch smaller than `batch_size`.
        num_workers: accepted for PyTorch compatibility; samples are always loaded in this process.
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1, shuffle: bool = False,
                 sampler: Iterable[int] | None = None, batch_sampler: Iterable[list[int]] | None = None,
                 num_workers: int = 0, collate_fn: Callable[[list], Any] | None = None,
                 pin_memory: bool = False, drop_last: bool = False,
                 generator: Generator | None = None) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.generator = generator
        self._iterable = isinstance(dataset, IterableDataset)
        if self._iterable and (shuffle or sampler is not None or batch_sampler is not None):
            raise ValueError("DataLoader with an IterableDataset takes no shuffle, sampler or batch_sampler")
        if batch_sampler is not None and (batch_size != 1 or shuffle or sampler is not None or drop_last):
            raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, "
                             "and drop_last")
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if sampler is None and not self._iterable:
            sampler = RandomSampler(dataset, generator) if shuffle else SequentialSampler(dataset)
        if batch_sampler is None and batch_size is not None and not self._iterable:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        if batch_sampler is not None:
            self.batch_size, self.drop_last = None, False  # the batch sampler decides
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        if collate_fn is None:
            batching = batch_size is not None or batch_sampler is not None
            collate_fn = default_collate if batching else default_convert
        self.collate_fn = collate_fn

    def __iter__(self) -> Iterator[Any]:
        if self._iterable:
            return self._iter_stream()
        if self.batch_sampler is not None:
            return (self._fetch(batch) for batch in self.batch_sampler)
        return (self.collate_fn(self.dataset[i]) for i in self.sampler)

    def _fetch(self, batch: list[int]):
        rows = _tensor_rows(self.dataset, batch) if self.collate_fn is default_collate else None
        if rows is not None:
            # default_collate would stack the rows one sample at a time; one gather per tensor
            # gives the same batch (a list of tensors, as default_collate makes of tuples)
            return [t[rows] for t in rows_source(self.dataset)]
        return self.collate_fn([self.dataset[i] for i in batch])

    def _iter_stream(self) -> Iterator[Any]:
        if self.batch_size is None:
            yield from (self.collate_fn(sample) for sample in self.dataset)
            return
        batch: list = []
        for sample in self.dataset:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate_fn(batch)
                batch = []
        if batch and not self.drop_last:
            yield self.collate_fn(batch)

    def __len__(self) -> int:
        if self._iterable:
            n = len(self.dataset)  # a TypeError here, as in PyTorch, when the stream has no length
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return len(self.batch_sampler) if self.batch_sampler is not None else len(self.sampler)
