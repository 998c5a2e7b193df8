"""DataLoader worker processes, shaped like `torch.utils.data._utils.worker`.

Each worker owns a copy of the dataset and fetches the batches the main process asks for. Batches
(`PackedBatch`) and, under spawn, the dataset (`Carried`) cross the process boundary with their
tensors as numpy arrays (jitorch tensors refuse plain pickling), tensors again on the other side.
"""

from __future__ import annotations

import io
import os
import pickle
import queue
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...creation import as_tensor
from ...random import manual_seed
from ...tensor import Tensor

__all__ = ["WorkerInfo", "get_worker_info"]

# How often a waiting process wakes up to check that the other side is still alive (seconds).
LIVENESS_INTERVAL = 1.0


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker knows about itself: `id`, `num_workers`, `seed` and its copy of `dataset`."""

    id: int
    num_workers: int
    seed: int
    dataset: Any


_worker_info: WorkerInfo | None = None


def get_worker_info() -> WorkerInfo | None:
    """This worker's `WorkerInfo` inside a DataLoader worker, None in the main process.

    An IterableDataset uses it to shard its stream, as in PyTorch:

        info = get_worker_info()
        start = 0 if info is None else info.id
        step = 1 if info is None else info.num_workers
        return iter(self.samples[start::step])
    """
    return _worker_info


class _TensorsAsArrays(pickle.Pickler):
    """Pickles jitorch tensors, wherever they sit in an object, as their numpy values."""

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, Tensor):
            return NotImplemented
        if obj.device.type != "cpu":
            raise RuntimeError(f"a tensor on {obj.device} (shape {tuple(obj.shape)}) cannot cross to or from a "
                               "DataLoader worker; make CPU tensors in the dataset and move the batch to the "
                               "device in the training loop")
        return _tensor_from_array, (np.array(obj.detach().numpy()), obj.requires_grad)


def _tensor_from_array(array: np.ndarray, requires_grad: bool) -> Tensor:
    return as_tensor(array).requires_grad_(requires_grad)


def pack(value: Any) -> bytes:
    """`value` pickled, its tensors as numpy arrays (jitorch tensors refuse plain pickling)."""
    buffer = io.BytesIO()
    _TensorsAsArrays(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


class Carried:
    """An object (the dataset and collate_fn) handed to a worker at its start. Under fork nothing
    is pickled and `value` is the object itself; under spawn it is packed and unpacked on arrival."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple:
        return _arrive, (pack(self.value),)


def _arrive(data: bytes) -> Carried:
    return Carried(pickle.loads(data))


@dataclass
class PackedBatch:
    """A batch from a worker, packed in the worker so that a batch that cannot cross raises there."""

    data: bytes

    def unpack(self) -> Any:
        return pickle.loads(self.data)


@dataclass
class WorkerFailure:
    """An exception raised in a worker, carried to the main process to be raised there."""

    worker_id: int
    exc_type: type
    text: str

    def reraise(self) -> None:
        message = (f"Caught {self.exc_type.__name__} in DataLoader worker process {self.worker_id}.\n"
                   f"Original {self.text}")
        try:
            error = self.exc_type(message)
        except Exception:  # an exception type whose constructor takes other arguments
            error = RuntimeError(message)
        raise error


@dataclass
class StreamEnd:
    """A worker's IterableDataset stream has no more batches."""

    worker_id: int


def _seed_worker(seed: int, worker_id: int) -> None:
    """Seed `random`, jitorch and numpy's global state as PyTorch does: `base_seed + worker_id` for
    the first two, and a distinct numpy state per worker so that workers do not draw alike."""
    random.seed(seed)
    manual_seed(seed)
    np.random.seed(np.random.SeedSequence([worker_id, seed]).generate_state(4))


def _failure(worker_id: int, error: Exception) -> WorkerFailure:
    exc_type = type(error)
    try:
        pickle.dumps(exc_type)
    except Exception:  # a locally defined exception class cannot cross the process boundary
        exc_type = RuntimeError
    return WorkerFailure(worker_id, exc_type, traceback.format_exc())


def _run_worker_init(worker_init_fn: Callable[[int], None] | None, worker_id: int) -> WorkerFailure | None:
    """Run `worker_init_fn`; its error is the answer to every task (as PyTorch re-raises it)."""
    if worker_init_fn is None:
        return None
    try:
        worker_init_fn(worker_id)
    except Exception as error:
        return _failure(worker_id, error)
    return None


def _next_task(index_queue, done, parent_pid: int) -> tuple | None:
    """The next task, or None when the worker should stop (told so, or the main process died)."""
    while True:
        try:
            task = index_queue.get(timeout=LIVENESS_INTERVAL)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return None
            continue
        return None if done.is_set() else task


def worker_loop(carried_fetcher: Carried, index_queue, result_queue, done, worker_id: int, num_workers: int,
                seed: int, worker_init_fn: Callable[[int], None] | None, parent_pid: int) -> None:
    """Serve tasks `(epoch, index, indices)` until a None task, the `done` event or the parent's death.

    A map-style task carries the indices to fetch; an IterableDataset task asks for this worker's
    next batch, from a fresh stream whenever the epoch changes (persistent workers)."""
    global _worker_info
    fetcher = carried_fetcher.value
    _seed_worker(seed, worker_id)
    _worker_info = WorkerInfo(worker_id, num_workers, seed, fetcher.dataset)
    init_error = _run_worker_init(worker_init_fn, worker_id)
    stream, stream_epoch, ended = None, None, False
    while (task := _next_task(index_queue, done, parent_pid)) is not None:
        epoch, index, indices = task
        if fetcher.iterable and epoch != stream_epoch:
            stream, stream_epoch, ended = fetcher.stream(), epoch, False
        if ended:
            continue
        try:
            if init_error is not None:
                result = init_error
            else:
                result = PackedBatch(pack(next(stream) if fetcher.iterable else fetcher.fetch(indices)))
        except StopIteration:
            result, ended = StreamEnd(worker_id), True
        except Exception as error:
            result = _failure(worker_id, error)
        result_queue.put((epoch, index, result))
