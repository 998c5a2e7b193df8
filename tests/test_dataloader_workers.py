"""DataLoader with num_workers > 0: the same batches as in-process loading, PyTorch's worker semantics
(order, seeding, worker_init_fn, get_worker_info, sharded IterableDatasets, errors), and no processes
left behind. Datasets are tiny: each test starts real worker processes."""

import multiprocessing
import os
import random
import time

import numpy as np
import pytest
import torch
import torch.utils.data as tdata

import jitorch
from jitorch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, get_worker_info


def _values(batch):
    """A batch as plain Python values, to compare loaders (and PyTorch's loader) exactly."""
    if isinstance(batch, (jitorch.Tensor, torch.Tensor)):
        return batch.tolist()
    if isinstance(batch, dict):
        return {k: _values(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [_values(v) for v in batch]
    return batch


def _epoch(loader):
    return [_values(batch) for batch in loader]


class Squares(Dataset):
    """Samples of mixed kinds (tensor, numpy array, int, str) so collation runs in the worker."""

    def __len__(self):
        return 11

    def __getitem__(self, i):
        return {"x": jitorch.tensor([i, i * i]), "a": np.full(2, i / 2), "i": i, "name": f"s{i}"}


class Shards(IterableDataset):
    """0..n-1, each worker taking every num_workers-th sample (PyTorch's sharding recipe)."""

    def __init__(self, n=13):
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        return iter(range(self.n) if info is None else range(info.id, self.n, info.num_workers))

    def __len__(self):
        return self.n


class Boom(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 5:
            raise ValueError(f"sample {i} is corrupt")
        return i


class WhoAmI(Dataset):
    """Each sample says which worker loaded it, with that worker's seed and first random draws."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        info = get_worker_info()
        return [info.id, info.num_workers, info.seed, random.random(), float(jitorch.rand(1).item()),
                float(np.random.rand()), os.getpid()]


@pytest.fixture(autouse=True)
def _no_leftover_workers():
    yield
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("workers", [1, 3])
def test_map_style_batches_match_in_process_loading(workers):
    seeded = dict(batch_size=3, shuffle=True)
    expected = _epoch(DataLoader(Squares(), generator=jitorch.Generator().manual_seed(4), **seeded))
    got = _epoch(DataLoader(Squares(), num_workers=workers, generator=jitorch.Generator().manual_seed(4), **seeded))
    assert got == expected


def test_tensor_dataset_and_unbatched_samples_match_in_process_loading():
    ds = TensorDataset(jitorch.arange(14, dtype=jitorch.float32).reshape(7, 2), jitorch.arange(7))
    for kwargs in (dict(batch_size=2, drop_last=True), dict(batch_size=None)):
        assert _epoch(DataLoader(ds, num_workers=2, **kwargs)) == _epoch(DataLoader(ds, **kwargs))
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert isinstance(batch[0], jitorch.Tensor) and batch[0].dtype == jitorch.float32
    assert batch[0].device.type == "cpu"


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # PyTorch's advice on a 2-core machine
@pytest.mark.parametrize("workers,batch_size", [(2, 2), (3, 4), (2, None)])
def test_sharded_iterable_dataset_order_matches_pytorch(workers, batch_size):
    ours = _epoch(DataLoader(Shards(), batch_size=batch_size, num_workers=workers))
    theirs = _epoch(tdata.DataLoader(_TorchShards(), batch_size=batch_size, num_workers=workers))
    assert ours == theirs
    flat = [v for batch in ours for v in (batch if isinstance(batch, list) else [batch])]
    assert sorted(flat) == list(range(13))


class _TorchShards(tdata.IterableDataset):
    def __iter__(self):
        info = tdata.get_worker_info()
        return iter(range(info.id, 13, info.num_workers))


def test_worker_info_seeds_and_worker_init_fn():
    assert get_worker_info() is None
    started = multiprocessing.Queue()
    loader = DataLoader(WhoAmI(), batch_size=None, num_workers=2, worker_init_fn=started.put,
                        generator=jitorch.Generator().manual_seed(1))
    samples = _epoch(loader)
    assert sorted(started.get(timeout=10) for _ in range(2)) == [0, 1]
    assert [s[0] for s in samples] == [0, 1, 0, 1, 0, 1]  # round robin, in order
    assert {s[1] for s in samples} == {2}
    (seed0, *draws0, pid0), (seed1, *draws1, pid1) = (samples[0][2:], samples[1][2:])
    assert seed1 == seed0 + 1 and pid0 != pid1 != os.getpid()
    random.seed(seed0)
    jitorch.manual_seed(seed0)
    assert draws0[:2] == [random.random(), float(jitorch.rand(1).item())]
    assert all(a != b for a, b in zip(draws0, draws1))  # workers do not draw alike, numpy included
    again = _epoch(DataLoader(WhoAmI(), batch_size=None, num_workers=2, generator=jitorch.Generator().manual_seed(1)))
    assert [s[:6] for s in again] == [s[:6] for s in samples]  # a seeded loader repeats exactly


def test_error_in_worker_is_raised_in_main_process_with_its_message():
    with pytest.raises(ValueError, match=r"(?s)worker process \d.*sample 5 is corrupt"):
        _epoch(DataLoader(Boom(), batch_size=2, num_workers=2))


def test_persistent_workers_serve_every_epoch():
    loader = DataLoader(WhoAmI(), batch_size=None, num_workers=2, persistent_workers=True)
    first, second = _epoch(loader), _epoch(loader)
    assert {s[-1] for s in first} == {s[-1] for s in second}  # the same worker processes
    stream = DataLoader(Shards(), batch_size=3, num_workers=2, persistent_workers=True)
    next(iter(stream))  # an epoch abandoned after one batch must not leak into the next
    assert _epoch(stream) == _epoch(DataLoader(Shards(), batch_size=3, num_workers=2))
    del loader, stream


def test_workers_stop_when_the_iterator_is_dropped():
    it = iter(DataLoader(Squares(), batch_size=2, num_workers=2))
    next(it)
    assert len(multiprocessing.active_children()) == 2
    del it


def test_dead_worker_raises_instead_of_hanging():
    class Exits(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            os._exit(3)

    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        _epoch(DataLoader(Exits(), num_workers=1))


def test_worker_options_are_checked_as_in_pytorch():
    with pytest.raises(ValueError, match="num_workers > 0"):
        DataLoader(Squares(), persistent_workers=True)
    with pytest.raises(ValueError, match="prefetch_factor"):
        DataLoader(Squares(), prefetch_factor=2)
    with pytest.raises(ValueError, match="non-negative"):
        DataLoader(Squares(), num_workers=-1)


def test_error_in_worker_init_fn_is_raised_in_main_process():
    def fail(worker_id):
        raise KeyError(f"no config for worker {worker_id}")

    with pytest.raises(KeyError, match="no config for worker"):
        _epoch(DataLoader(Squares(), num_workers=1, worker_init_fn=fail))


def test_timeout_raises_when_a_batch_is_late():
    class Slow(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            time.sleep(0.4)
            return i

    with pytest.raises(RuntimeError, match="timed out after 0.2 seconds"):
        _epoch(DataLoader(Slow(), num_workers=1, timeout=0.2))


def test_spawned_workers_get_a_dataset_of_tensors():
    ds = TensorDataset(jitorch.arange(10).reshape(5, 2), jitorch.rand(5, requires_grad=True))
    loader = DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context="spawn")
    assert _epoch(loader) == _epoch(DataLoader(ds, batch_size=2))


def test_batch_that_cannot_leave_the_worker_raises_in_main_process():
    class Handles(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return lambda: i

    with pytest.raises(Exception, match="(?s)worker process 0.*pickle"):
        _epoch(DataLoader(Handles(), batch_size=None, num_workers=1))


def test_workers_load_in_parallel():
    class Sleepy(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            time.sleep(0.15)  # I/O-like: waiting, not computing, so two shared cores are enough
            return i

    start = time.monotonic()
    assert _epoch(DataLoader(Sleepy(), batch_size=None, num_workers=4)) == list(range(8))
    assert time.monotonic() - start < 0.9  # one process would take 8 * 0.15 = 1.2 s


def test_a_tensor_not_on_the_cpu_is_refused_with_advice():
    class OnMeta(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return jitorch.empty(2, device="meta")

    with pytest.raises(RuntimeError, match="make CPU tensors in the dataset"):
        _epoch(DataLoader(OnMeta(), batch_size=None, num_workers=1))
