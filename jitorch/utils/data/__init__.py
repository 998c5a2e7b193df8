"""Datasets, samplers and the `DataLoader`, shaped like `torch.utils.data` (and laid out like it:
`dataset`, `sampler`, `dataloader`, so `from torch.utils.data.sampler import ...` has a counterpart).

    ds = TensorDataset(x, y)
    train, val = random_split(ds, [0.9, 0.1], generator=jitorch.Generator().manual_seed(0))
    for xb, yb in DataLoader(train, batch_size=64, shuffle=True, drop_last=True):
        ...

`num_workers > 0` loads batches in worker processes; they come back in the same order as with
`num_workers=0`, and `get_worker_info()` tells a dataset which worker it runs in.
Shuffling draws from the loader's `generator` (or the global one, reseeded by `jitorch.manual_seed`),
so a seeded run repeats exactly.
"""

from ._worker import WorkerInfo, get_worker_info
from .collate import default_collate, default_convert
from .dataloader import DataLoader
from .dataset import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset, random_split
from .dataset import rows_source as rows_source  # not PyTorch API; importable here as before the split
from .sampler import (
    BatchSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "ConcatDataset", "Subset", "random_split", "Sampler",
           "SequentialSampler", "RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler", "BatchSampler",
           "DataLoader", "default_collate", "default_convert", "get_worker_info", "WorkerInfo"]
