"""jitorch.utils.data: datasets, batching, shuffling, collation and random_split."""

from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.utils.data as tdata

import jitorch
from jitorch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
    random_split,
)


def _dataset(n=10):
    x = jitorch.arange(n * 2, dtype=jitorch.float32).reshape(n, 2)
    y = jitorch.arange(n)
    return TensorDataset(x, y)


def _seeded(seed):
    return jitorch.Generator().manual_seed(seed)


def _order(loader):
    return [i for _, y in loader for i in y.tolist()]


def test_tensor_dataset():
    ds = _dataset(4)
    assert len(ds) == 4
    x, y = ds[2]
    assert x.tolist() == [4.0, 5.0] and y.item() == 2
    with pytest.raises(ValueError, match="Size mismatch"):
        TensorDataset(jitorch.zeros(3, 2), jitorch.zeros(4))


def test_batches_in_order_with_a_short_last_batch():
    loader = DataLoader(_dataset(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [tuple(x.shape) for x, _ in batches] == [(4, 2), (4, 2), (2, 2)]
    assert batches[0][1].dtype == jitorch.int64 and batches[0][1].tolist() == [0, 1, 2, 3]
    assert isinstance(batches[0], list)  # a tuple sample collates to a list, as in PyTorch
    assert _order(loader) == list(range(10))


def test_drop_last():
    loader = DataLoader(_dataset(10), batch_size=4, drop_last=True)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]
    assert len(DataLoader(_dataset(8), batch_size=4, drop_last=True)) == 2


def test_shuffle_is_a_permutation_reproducible_from_the_generator():
    ds = _dataset(50)
    first = _order(DataLoader(ds, batch_size=8, shuffle=True, generator=_seeded(1)))
    again = _order(DataLoader(ds, batch_size=8, shuffle=True, generator=_seeded(1)))
    other = _order(DataLoader(ds, batch_size=8, shuffle=True, generator=_seeded(2)))
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert first == again and first != other


def test_each_epoch_reshuffles_and_the_global_seed_repeats_runs():
    ds = _dataset(30)
    loader = DataLoader(ds, batch_size=5, shuffle=True)
    jitorch.manual_seed(123)
    run1 = [_order(loader) for _ in range(2)]
    jitorch.manual_seed(123)
    run2 = [_order(loader) for _ in range(2)]
    assert run1 == run2 and run1[0] != run1[1]


def test_collate_matches_pytorch_structure_and_dtypes():
    Point = namedtuple("Point", "x y")
    samples = [
        {"img": np.full((2, 2), i, dtype=np.float32), "label": i, "weight": 0.5 * i, "flag": i % 2 == 0,
         "name": f"s{i}", "pair": (np.int64(i), [i, i + 1]), "pt": Point(float(i), i)}
        for i in range(3)
    ]
    ours = default_collate(samples)
    theirs = tdata.default_collate(samples)

    def compare(a, b):
        if isinstance(b, torch.Tensor):
            assert isinstance(a, jitorch.Tensor) and tuple(a.shape) == tuple(b.shape)
            assert a.dtype.name == str(b.dtype).removeprefix("torch.")
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        elif isinstance(b, dict):
            assert type(a) is dict and a.keys() == b.keys()
            for k in b:
                compare(a[k], b[k])
        elif isinstance(b, (list, tuple)):
            assert type(a) is type(b) and len(a) == len(b)
            for u, v in zip(a, b):
                compare(u, v)
        else:
            assert a == b

    compare(ours, theirs)
    assert ours["img"].shape == (3, 2, 2) and ours["weight"].dtype == jitorch.float64
    assert ours["flag"].dtype == jitorch.bool and ours["name"] == ["s0", "s1", "s2"]


def test_collate_keeps_small_numpy_ints_widens_unsigned_ones_and_rejects_ragged_batches():
    batch = default_collate([np.array([1, 255], dtype=np.uint8), np.array([0, 7], dtype=np.uint8)])
    assert batch.dtype == jitorch.uint8 and batch.tolist() == [[1, 255], [0, 7]]  # images stay bytes, as in torch
    batch = default_collate([np.array([1, 65535], dtype=np.uint16)] * 2)  # (a dtype jitorch lacks: widened)
    assert batch.dtype == jitorch.int32 and batch.tolist() == [[1, 65535]] * 2
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([jitorch.zeros(2), jitorch.zeros(3)])
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [1]])
    with pytest.raises(TypeError, match="default_collate"):
        default_collate([object(), object()])


def test_custom_collate_fn_and_plain_dataset():
    class Squares(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return i * i

    loader = DataLoader(Squares(), batch_size=2, collate_fn=lambda batch: sum(batch))
    assert list(loader) == [1, 13, 16]
    assert [b.tolist() for b in DataLoader(Squares(), batch_size=2)] == [[0, 1], [4, 9], [16]]


def test_batch_size_none_yields_converted_samples():
    class Arrays(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"a": np.ones(3) * i}

    out = list(DataLoader(Arrays(), batch_size=None))
    assert isinstance(out[1]["a"], jitorch.Tensor) and out[1]["a"].tolist() == [1.0, 1.0, 1.0]


def test_custom_sampler_and_batch_sampler():
    ds = _dataset(6)
    rev = list(reversed(range(6)))
    assert _order(DataLoader(ds, batch_size=4, sampler=rev)) == rev
    batches = [[0, 5], [1, 2, 3]]
    assert [y.tolist() for _, y in DataLoader(ds, batch_sampler=batches)] == batches
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(ds, sampler=rev, shuffle=True)
    with pytest.raises(ValueError, match="positive integer"):
        BatchSampler(SequentialSampler(ds), 0, False)


def test_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(7))

    assert [b.tolist() for b in DataLoader(Stream(), batch_size=3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(list(DataLoader(Stream(), batch_size=3, drop_last=True))) == 2
    with pytest.raises(ValueError, match="IterableDataset"):
        DataLoader(Stream(), shuffle=True)


@pytest.mark.parametrize("n, lengths", [
    (10, [3, 7]), (10, [0.5, 0.5]), (11, [0.3, 0.3, 0.4]), (7, [0.1, 0.2, 0.7]), (5, [1.0]),
])
def test_random_split_sizes_match_pytorch_and_partition_the_data(n, lengths):
    ds = _dataset(n)
    parts = random_split(ds, lengths, generator=_seeded(0))
    torch_parts = tdata.random_split(range(n), lengths, generator=torch.Generator().manual_seed(0))
    expected = [len(p) for p in torch_parts]
    assert [len(p) for p in parts] == expected
    seen = sorted(i for p in parts for i in p.indices)
    assert seen == list(range(n))
    assert all(isinstance(p, Subset) for p in parts)


def test_random_split_is_reproducible_and_validated():
    ds = _dataset(20)
    a = [p.indices for p in random_split(ds, [15, 5], generator=_seeded(3))]
    b = [p.indices for p in random_split(ds, [15, 5], generator=_seeded(3))]
    c = [p.indices for p in random_split(ds, [15, 5], generator=_seeded(4))]
    assert a == b and a != c
    with pytest.raises(ValueError, match="Sum of input lengths"):
        random_split(ds, [5, 5])


def test_subset():
    sub = Subset(_dataset(10), [7, 2, 9])
    assert len(sub) == 3 and sub[1][1].item() == 2
    assert [y.tolist() for _, y in DataLoader(sub, batch_size=3)] == [[7, 2, 9]]
