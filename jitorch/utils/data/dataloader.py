"""The `DataLoader`, shaped like `torch.utils.data.dataloader`: batches of a dataset, in sampler order.

Loading runs in the calling process: `num_workers` is accepted for PyTorch compatibility but no
worker processes are started, so a loop reads the same samples in the same order either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ...random import Generator
from .collate import default_collate, default_convert
from .dataset import Dataset, IterableDataset, rows_source, tensor_rows
from .sampler import BatchSampler, RandomSampler, SequentialSampler

__all__ = ["DataLoader", "default_collate", "default_convert"]


class DataLoader:
    """Iterate over `dataset` in batches.

    Args:
        batch_size: samples per batch; None yields single samples (numpy arrays made tensors).
        shuffle: a new random order every epoch, drawn from `generator` (or the global one).
        sampler / batch_sampler: custom index order / custom batches instead of shuffle/batch_size.
        collate_fn: merges a list of samples into a batch (default: `default_collate`).
        drop_last: drop a last batch smaller than `batch_size`.
        num_workers, timeout, worker_init_fn, prefetch_factor, persistent_workers: accepted for PyTorch
            compatibility (so a script runs unchanged); samples are always loaded in this process.
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1, shuffle: bool = False,
                 sampler: Iterable[int] | None = None, batch_sampler: Iterable[list[int]] | None = None,
                 num_workers: int = 0, collate_fn: Callable[[list], Any] | None = None,
                 pin_memory: bool = False, drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None, generator: Generator | None = None,
                 *, prefetch_factor: int | None = None, persistent_workers: bool = False) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.timeout, self.worker_init_fn = timeout, worker_init_fn
        self.prefetch_factor, self.persistent_workers = prefetch_factor, persistent_workers
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
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
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
        rows = tensor_rows(self.dataset, batch) if self.collate_fn is default_collate else None
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
