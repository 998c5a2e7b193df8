"""Datasets, shaped like `torch.utils.data.dataset`: map-style and iterable datasets, tensors as a
dataset, subsets, concatenation and `random_split`."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from ...creation import from_numpy
from ...random import Generator, rng
from ...tensor import Tensor

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "ConcatDataset", "Subset", "random_split"]

T_co = TypeVar("T_co", covariant=True)


class Dataset(Generic[T_co]):
    """A map-style dataset: implement `__getitem__(index)` and `__len__`.

    Generic like PyTorch's, so scripts can write `class Pairs(Dataset[tuple[Tensor, Tensor]])`;
    `a + b` concatenates two datasets.
    """

    def __getitem__(self, index: int) -> T_co:
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def __add__(self, other: Dataset[T_co]) -> ConcatDataset[T_co]:
        return ConcatDataset([self, other])


class IterableDataset(Dataset[T_co]):
    """A stream of samples: implement `__iter__`. The loader batches it in order (no shuffling)."""

    def __iter__(self) -> Iterator[T_co]:
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__")


class TensorDataset(Dataset[tuple[Tensor, ...]]):
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


class ConcatDataset(Dataset[T_co]):
    """The samples of several map-style datasets one after another: `ConcatDataset([a, b])[len(a)] == b[0]`."""

    def __init__(self, datasets: Iterable[Dataset]) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise AssertionError("datasets should not be an empty iterable")
        if any(isinstance(d, IterableDataset) for d in self.datasets):
            raise AssertionError("ConcatDataset does not support IterableDataset; "
                                 "chain the streams in an IterableDataset of your own instead")
        self.cumulative_sizes = np.cumsum([len(d) for d in self.datasets]).tolist()

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            if -index > len(self):
                raise ValueError("absolute value of index should not exceed dataset length")
            index += len(self)
        which = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][index - start]


class Subset(Dataset[T_co]):
    """The samples of `dataset` at `indices`, in that order."""

    def __init__(self, dataset: Dataset[T_co], indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, index):
        if isinstance(index, list):
            return [self.dataset[self.indices[i]] for i in index]
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)


def rows_source(dataset) -> tuple[Tensor, ...]:
    """The tensors behind a TensorDataset, or behind a Subset of one."""
    return (dataset.dataset if isinstance(dataset, Subset) else dataset).tensors


def tensor_rows(dataset, batch: list[int]) -> Tensor | None:
    """The row indices of `batch` in the TensorDataset behind `dataset` (as an int64 tensor), or None
    when the samples are not plain rows of tensors (the loader then gathers whole rows at once)."""
    if isinstance(dataset, Subset) and type(dataset.dataset) is TensorDataset:
        indices = [dataset.indices[i] for i in batch]
    elif type(dataset) is TensorDataset:
        indices = batch
    else:
        return None
    return from_numpy(np.asarray(indices, dtype=np.int64))


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
