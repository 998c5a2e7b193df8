"""The `DataLoader`, shaped like `torch.utils.data.dataloader`: batches of a dataset, in sampler order.

With `num_workers=0` batches are loaded in the calling process. With `num_workers > 0`, worker
processes (the platform's default start method: fork on Linux) fetch and collate batches ahead of
the loop, and the batches come back in the same order as with `num_workers=0`.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.context import BaseContext
from typing import Any

from ...random import Generator, rng
from . import _worker
from ._worker import Carried, StreamEnd, WorkerFailure, get_worker_info
from .collate import default_collate, default_convert
from .dataset import Dataset, IterableDataset, rows_source, tensor_rows
from .sampler import BatchSampler, RandomSampler, SequentialSampler

__all__ = ["DataLoader", "default_collate", "default_convert", "get_worker_info"]


class _BatchFetcher:
    """Turns indices (or a stream) into batches; the same code runs in the main process and in workers."""

    def __init__(self, dataset: Dataset, collate_fn: Callable[[Any], Any], batch_size: int | None,
                 drop_last: bool) -> None:
        self.dataset, self.collate_fn = dataset, collate_fn
        self.batch_size, self.drop_last = batch_size, drop_last
        self.iterable = isinstance(dataset, IterableDataset)

    def fetch(self, index: int | list[int]) -> Any:
        """The batch at `index`: a list of indices from a batch sampler, or one index when unbatched."""
        if not isinstance(index, list):
            return self.collate_fn(self.dataset[index])
        rows = tensor_rows(self.dataset, index) if self.collate_fn is default_collate else None
        if rows is not None:
            # default_collate would stack the rows one sample at a time; one gather per tensor
            # gives the same batch (a list of tensors, as default_collate makes of tuples)
            return [t[rows] for t in rows_source(self.dataset)]
        return self.collate_fn([self.dataset[i] for i in index])

    def stream(self) -> Iterator[Any]:
        """The batches of an IterableDataset, in its order."""
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


class DataLoader:
    """Iterate over `dataset` in batches.

    Args:
        batch_size: samples per batch; None yields single samples (numpy arrays made tensors).
        shuffle: a new random order every epoch, drawn from `generator` (or the global one).
        sampler / batch_sampler: custom index order / custom batches instead of shuffle/batch_size.
        collate_fn: merges a list of samples into a batch (default: `default_collate`).
        drop_last: drop a last batch smaller than `batch_size`.
        num_workers: worker processes that load batches ahead (0: load in this process). Each worker
            is seeded with `base_seed + worker_id` (`random` and jitorch; numpy distinctly per worker),
            runs `worker_init_fn(worker_id)`, and sees `get_worker_info()`; an IterableDataset is
            copied into every worker and shards itself through `get_worker_info()`, as in PyTorch.
        prefetch_factor: batches each worker loads ahead (default 2 with workers).
        persistent_workers: keep the workers alive from one epoch to the next.
        timeout: seconds to wait for a batch from the workers before raising (0: no limit).
        multiprocessing_context: how workers start ("fork", "spawn", "forkserver" or a context);
            default: the platform's default start method.
        pin_memory: accepted for PyTorch compatibility; batches are plain CPU tensors.
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1, shuffle: bool = False,
                 sampler: Iterable[int] | None = None, batch_sampler: Iterable[list[int]] | None = None,
                 num_workers: int = 0, collate_fn: Callable[[list], Any] | None = None,
                 pin_memory: bool = False, drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None,
                 multiprocessing_context: str | BaseContext | None = None, generator: Generator | None = None,
                 *, prefetch_factor: int | None = None, persistent_workers: bool = False) -> None:
        _check_worker_options(num_workers, timeout, prefetch_factor, persistent_workers)
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.timeout, self.worker_init_fn = timeout, worker_init_fn
        self.prefetch_factor = 2 if prefetch_factor is None and num_workers > 0 else prefetch_factor
        self.persistent_workers = persistent_workers
        self.multiprocessing_context = multiprocessing_context
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
        self._fetcher = _BatchFetcher(dataset, collate_fn, self.batch_size, self.drop_last)
        self._persistent_pool: _WorkerPool | None = None

    def __iter__(self) -> Iterator[Any]:
        # drawn every epoch, with or without workers (as PyTorch does), so that a seeded shuffle
        # gives the same order whatever num_workers is
        base_seed = int(rng(self.generator).integers(0, 2**63))
        if self.num_workers == 0:
            return self._fetcher.stream() if self._iterable else map(self._fetcher.fetch, self._index_order())
        if not self.persistent_workers:
            return _MultiprocessIterator(self, _WorkerPool(self, base_seed), owns_pool=True)
        if self._persistent_pool is None or self._persistent_pool.closed:
            self._persistent_pool = _WorkerPool(self, base_seed)
        return _MultiprocessIterator(self, self._persistent_pool, owns_pool=False)

    def _index_order(self) -> Iterable[int | list[int]]:
        """What to fetch, batch by batch: index lists from the batch sampler, or single indices."""
        return self.batch_sampler if self.batch_sampler is not None else self.sampler

    def __len__(self) -> int:
        if self._iterable:
            n = len(self.dataset)  # a TypeError here, as in PyTorch, when the stream has no length
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return len(self.batch_sampler) if self.batch_sampler is not None else len(self.sampler)


def _check_worker_options(num_workers: int, timeout: float, prefetch_factor: int | None,
                          persistent_workers: bool) -> None:
    """PyTorch's checks, with its messages."""
    if num_workers < 0:
        raise ValueError("num_workers option should be non-negative; use num_workers=0 to disable multiprocessing.")
    if timeout < 0:
        raise ValueError("timeout option should be non-negative")
    if num_workers == 0 and prefetch_factor is not None:
        raise ValueError("prefetch_factor option could only be specified in multiprocessing. let num_workers > 0 "
                         "to enable multiprocessing, otherwise set prefetch_factor to None.")
    if prefetch_factor is not None and prefetch_factor < 0:
        raise ValueError("prefetch_factor option should be non-negative")
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers option needs num_workers > 0")


class _WorkerPool:
    """The worker processes of one loader, their task queues and the shared result queue."""

    def __init__(self, loader: DataLoader, base_seed: int) -> None:
        self.closed = True  # until the workers start: nothing to shut down
        self.num_workers = loader.num_workers
        self.timeout = loader.timeout
        self.epoch = 0
        context = loader.multiprocessing_context
        if not isinstance(context, BaseContext):
            context = multiprocessing.get_context(context)
        self.result_queue = context.Queue()
        self.index_queues = [context.Queue() for _ in range(self.num_workers)]
        self.done = context.Event()  # tells busy workers to drop the tasks still queued
        fetcher = Carried(loader._fetcher)
        self.processes = [
            context.Process(
                target=_worker.worker_loop, daemon=True,
                args=(fetcher, self.index_queues[i], self.result_queue, self.done, i, self.num_workers, base_seed + i,
                      loader.worker_init_fn, os.getpid()))
            for i in range(self.num_workers)]
        for process in self.processes:
            process.start()
        self.closed = False

    def send(self, worker_id: int, task: tuple) -> None:
        self.index_queues[worker_id].put(task)

    def receive(self) -> tuple:
        """The next `(epoch, index, result)` from any worker; raises if the workers died or `timeout` passed."""
        deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
        while True:
            wait = _worker.LIVENESS_INTERVAL if deadline is None else min(_worker.LIVENESS_INTERVAL,
                                                                           deadline - time.monotonic())
            try:
                return self.result_queue.get(timeout=max(wait, 0.0))
            except queue.Empty:
                self._check_alive()
                if deadline is not None and time.monotonic() >= deadline:
                    raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds waiting for a batch; "
                                       "raise `timeout` or make the dataset faster to load") from None

    def _check_alive(self) -> None:
        dead = [p for p in self.processes if not p.is_alive()]
        if dead:
            pids = ", ".join(f"{p.pid} (exit code {p.exitcode})" for p in dead)
            self.shutdown()
            raise RuntimeError(f"DataLoader worker (pid(s) {pids}) exited unexpectedly; a worker killed by the "
                               "system (out of memory?) or by os._exit cannot report why")

    def shutdown(self) -> None:
        """Stop the workers and release their queues; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        self.done.set()
        for index_queue, process in zip(self.index_queues, self.processes):
            if process.is_alive():
                index_queue.put(None)
        for process in self.processes:
            process.join(timeout=5 * _worker.LIVENESS_INTERVAL)
            if process.is_alive():
                process.terminate()
                process.join()
        for q in [*self.index_queues, self.result_queue]:
            q.cancel_join_thread()
            q.close()

    def __del__(self) -> None:
        self.shutdown()


class _MultiprocessIterator:
    """One epoch over a worker pool: keeps `prefetch_factor` batches per worker in flight and hands
    the batches back in task order, whichever worker finishes first."""

    def __init__(self, loader: DataLoader, pool: _WorkerPool, owns_pool: bool) -> None:
        self._pool, self._owns_pool = pool, owns_pool
        pool.epoch += 1
        self._epoch = pool.epoch
        self._iterable = loader._iterable
        self._indices = iter(loader._index_order()) if not self._iterable else None
        self._active = [True] * pool.num_workers
        self._next_worker = 0
        self._task_worker: dict[int, int] = {}  # task index -> the worker it went to
        self._arrived: dict[int, Any] = {}  # results that came back ahead of their turn
        self._sent = self._returned = 0
        for _ in range(max(1, loader.prefetch_factor * pool.num_workers)):
            self._send_next_task()

    def __iter__(self) -> _MultiprocessIterator:
        return self

    def _send_next_task(self) -> None:
        if not any(self._active):
            return
        indices = None
        if self._indices is not None:
            indices = next(self._indices, StopIteration)
            if indices is StopIteration:
                return
        while not self._active[self._next_worker]:
            self._next_worker = (self._next_worker + 1) % len(self._active)
        self._pool.send(self._next_worker, (self._epoch, self._sent, indices))
        self._task_worker[self._sent] = self._next_worker
        self._next_worker = (self._next_worker + 1) % len(self._active)
        self._sent += 1

    def __next__(self) -> Any:
        while True:
            self._skip_tasks_of_ended_streams()
            if self._returned == self._sent:
                self._finish()
                raise StopIteration
            if self._returned in self._arrived:
                return self._hand_back(self._arrived.pop(self._returned))
            epoch, index, result = self._pool.receive()
            if epoch != self._epoch:
                continue  # left over from an epoch the loop broke out of (persistent workers)
            if isinstance(result, StreamEnd):
                self._active[result.worker_id] = False
                del self._task_worker[index]
                self._send_next_task()
                continue
            self._arrived[index] = result

    def _skip_tasks_of_ended_streams(self) -> None:
        """Tasks sent to a worker whose stream ended get no answer: move past them."""
        while self._returned < self._sent and self._returned not in self._arrived:
            worker = self._task_worker.get(self._returned)
            if worker is not None and self._active[worker]:
                return
            self._task_worker.pop(self._returned, None)
            self._returned += 1

    def _hand_back(self, result: Any) -> Any:
        del self._task_worker[self._returned]
        self._returned += 1
        if isinstance(result, WorkerFailure):
            self._finish()
            result.reraise()
        self._send_next_task()
        return result.unpack()

    def _finish(self) -> None:
        if self._owns_pool:
            self._pool.shutdown()

    def __del__(self) -> None:
        self._finish()
