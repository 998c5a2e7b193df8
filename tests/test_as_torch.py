"""jitorch.as_torch: unmodified PyTorch scripts run on jitorch (`import torch` gives jitorch), the
module paths such scripts import, and the samplers and datasets of `torch.utils.data` they use."""

import collections
import importlib
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.utils.data as tdata

import jitorch
from jitorch.as_torch import torch_is_jitorch
from jitorch.utils.data import (
    ConcatDataset,
    DataLoader,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

TRAIN_SCRIPT = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.sampler import RandomSampler
from torch.nn.modules.linear import Linear

torch.manual_seed(0)
x = torch.randn(32, 4)
y = x.sum(dim=1, keepdim=True)
data = TensorDataset(x, y)
loader = DataLoader(data, batch_size=8, sampler=RandomSampler(data, generator=torch.Generator().manual_seed(0)))
model = nn.Sequential(Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step, (xb, yb) in zip(range(3), loader):
    loss = F.mse_loss(model(xb), yb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.6f}")
print("tensor class from", torch.tensor(1.0).__class__.__module__)
print("modules", torch.__name__, nn.__name__, F.__name__)
"""


def _write(path, source: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def _python(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def _losses(stdout: str) -> list[float]:
    return [float(line.split()[-1]) for line in stdout.splitlines() if line.startswith("step ")]


# ---------------------------------------------------------------------------------------------
# the runner


def test_an_unmodified_pytorch_script_trains_on_jitorch(tmp_path):
    script = _write(tmp_path / "train.py", TRAIN_SCRIPT)
    ours = _python("-m", "jitorch.as_torch", script, cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    losses = _losses(ours.stdout)
    assert len(losses) == 3 and all(math.isfinite(loss) and loss >= 0 for loss in losses)
    assert "tensor class from jitorch.tensor" in ours.stdout
    assert "modules jitorch jitorch.nn jitorch.nn.functional" in ours.stdout
    theirs = _python(script, cwd=tmp_path)  # the same file is a real PyTorch script
    assert theirs.returncode == 0, theirs.stderr
    assert len(_losses(theirs.stdout)) == 3 and "tensor class from torch" in theirs.stdout


FACTS_SCRIPT = """
import json
import sys

import helper  # next to the script: its folder comes first on sys.path
import torch
import torch.utils.data.sampler
import jitorch

print(json.dumps({
    "argv": sys.argv, "name": __name__, "path0": sys.path[0], "helper": helper.VALUE,
    "same_torch": torch is jitorch, "same_sampler": torch.utils.data.sampler is jitorch.utils.data.sampler,
    "registered": sys.modules["torch.utils.data.sampler"] is sys.modules["jitorch.utils.data.sampler"],
    "jitorch_spec": jitorch.__spec__.name,
}))
"""


def test_the_script_sees_argv_name_and_path_as_under_python(tmp_path):
    folder = tmp_path / "scripts"
    _write(folder / "facts.py", FACTS_SCRIPT)
    _write(folder / "helper.py", "VALUE = 42\n")
    run = _python("-m", "jitorch.as_torch", "scripts/facts.py", "--lr", "0.1", "x", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout)
    assert facts["argv"] == ["scripts/facts.py", "--lr", "0.1", "x"] and facts["name"] == "__main__"
    assert facts["path0"] == str(folder) and facts["helper"] == 42
    assert facts["same_torch"] and facts["same_sampler"] and facts["registered"]
    assert facts["jitorch_spec"] == "jitorch"  # the alias does not rename the jitorch module


def test_a_module_runs_with_dash_m(tmp_path):
    _write(tmp_path / "pkg" / "__init__.py", "")
    _write(tmp_path / "pkg" / "main.py", FACTS_SCRIPT)
    _write(tmp_path / "helper.py", "VALUE = 7\n")  # `python -m` puts the working folder first
    run = _python("-m", "jitorch.as_torch", "-m", "pkg.main", "--epochs", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout)
    assert facts["argv"] == [str(tmp_path / "pkg" / "main.py"), "--epochs", "2"] and facts["name"] == "__main__"
    assert facts["helper"] == 7 and facts["same_torch"]


def test_without_a_script_the_runner_prints_its_usage(tmp_path):
    run = _python("-m", "jitorch.as_torch", cwd=tmp_path)
    assert run.returncode == 2 and "usage: python -m jitorch.as_torch script.py" in run.stderr


# ---------------------------------------------------------------------------------------------
# the import hook


def test_a_torch_module_jitorch_lacks_fails_naming_the_importing_line():
    with torch_is_jitorch(), pytest.raises(ModuleNotFoundError) as info:
        line = sys._getframe().f_lineno + 1
        importlib.import_module("torch.foo_bar")
    message = str(info.value)
    assert message.startswith(f"jitorch has no module torch.foo_bar (imported by {__file__}:{line})")
    assert "run the script with PyTorch itself" in message
    assert info.value.name == "torch.foo_bar"


def test_a_missing_submodule_lists_what_its_package_has():
    with torch_is_jitorch(), pytest.raises(ModuleNotFoundError) as info:
        importlib.import_module("torch.nn.no_such_module")
    assert "The modules under torch.nn are: " in str(info.value) and "functional" in str(info.value)


def _torch_entries() -> dict:
    return {name: module for name, module in sys.modules.items() if name == "torch" or name.startswith("torch.")}


def test_the_context_manager_aliases_and_then_leaves_sys_modules_as_it_was():
    before, meta_path = _torch_entries(), list(sys.meta_path)
    with torch_is_jitorch():
        assert importlib.import_module("torch") is jitorch
        assert importlib.import_module("torch.nn.functional") is jitorch.nn.functional
        importlib.import_module("torch.utils.data")
        assert sys.modules["torch.utils.data"] is jitorch.utils.data
        assert jitorch.__name__ == "jitorch" and jitorch.nn.__spec__.name == "jitorch.nn"
    after = _torch_entries()
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert sys.meta_path == meta_path
    assert importlib.import_module("torch") is torch


def test_the_context_manager_cleans_up_after_an_error():
    before = _torch_entries()
    with pytest.raises(RuntimeError, match="boom"), torch_is_jitorch():
        importlib.import_module("torch.optim.lr_scheduler")
        raise RuntimeError("boom")
    assert _torch_entries() == before and sys.modules["torch"] is torch


# module paths PyTorch code imports classes from; each pair is checked against real torch first
MODULE_PATHS = [
    ("torch.nn.modules.sparse", "Embedding"), ("torch.nn.modules.dropout", "Dropout"),
    ("torch.nn.modules.flatten", "Flatten"), ("torch.nn.modules.flatten", "Unflatten"),
    ("torch.nn.modules.linear", "Linear"), ("torch.nn.modules.conv", "Conv2d"),
    ("torch.nn.modules.activation", "ReLU"), ("torch.nn.modules.loss", "CrossEntropyLoss"),
    ("torch.nn.modules.pooling", "MaxPool2d"), ("torch.nn.modules.normalization", "LayerNorm"),
    ("torch.nn.modules.container", "Sequential"), ("torch.nn.modules.module", "Module"),
    ("torch.nn.modules.transformer", "TransformerEncoderLayer"), ("torch.nn.parameter", "Parameter"),
    ("torch.optim.optimizer", "Optimizer"), ("torch.optim.lr_scheduler", "StepLR"),
    ("torch.utils.data.dataloader", "DataLoader"), ("torch.utils.data.dataloader", "default_collate"),
    ("torch.utils.data.dataset", "TensorDataset"), ("torch.utils.data.dataset", "ConcatDataset"),
    ("torch.utils.data.dataset", "Subset"), ("torch.utils.data.sampler", "RandomSampler"),
    ("torch.utils.data.sampler", "SubsetRandomSampler"), ("torch.utils.data.sampler", "WeightedRandomSampler"),
    ("torch.utils.data.sampler", "BatchSampler"),
]


@pytest.mark.parametrize("path, name", MODULE_PATHS)
def test_module_paths_pytorch_code_imports_exist(path, name):
    assert hasattr(importlib.import_module(path), name)  # the path is real PyTorch's
    with torch_is_jitorch():
        ours = getattr(importlib.import_module(path), name)
    assert ours.__module__.startswith("jitorch.")


def test_the_layer_modules_re_export_one_class():
    from jitorch.nn.modules import dropout, flatten, sparse

    assert sparse.Embedding is jitorch.nn.Embedding and dropout.Dropout is jitorch.nn.Dropout
    assert flatten.Flatten is jitorch.nn.Flatten and flatten.Unflatten is jitorch.nn.Unflatten


# ---------------------------------------------------------------------------------------------
# samplers and datasets, against PyTorch's


def _seeded(seed: int) -> jitorch.Generator:
    return jitorch.Generator().manual_seed(seed)


def _same_error(ours, theirs):
    with pytest.raises(Exception) as mine:
        ours()
    with pytest.raises(Exception) as reference:
        theirs()
    assert type(mine.value) is type(reference.value) and str(mine.value) == str(reference.value)


@pytest.mark.parametrize("n, replacement, num_samples", [
    (10, False, None), (10, False, 4), (5, False, 12), (10, True, None), (10, True, 3), (4, True, 50),
])
def test_random_sampler_draws_like_pytorch(n, replacement, num_samples):
    ours = list(RandomSampler(range(n), replacement, num_samples, _seeded(0)))
    theirs = list(tdata.RandomSampler(range(n), replacement, num_samples, torch.Generator().manual_seed(0)))
    assert len(ours) == len(theirs) == len(RandomSampler(range(n), replacement, num_samples))
    assert all(0 <= i < n for i in ours)
    if not replacement:  # whole permutations, the last one cut short: the same counts per index
        assert sorted(collections.Counter(ours).values()) == sorted(collections.Counter(theirs).values())
        assert len(ours) < n or sorted(ours[:n]) == list(range(n))


def test_random_sampler_is_reproducible_and_reshuffles_each_pass():
    sampler = RandomSampler(range(20), generator=_seeded(3))
    first, second = list(sampler), list(sampler)
    assert first != second and list(RandomSampler(range(20), generator=_seeded(3))) == first


@pytest.mark.parametrize("kwargs", [
    {"num_samples": 0}, {"num_samples": -1}, {"num_samples": 2.5}, {"num_samples": "3"},
    {"replacement": "yes"}, {"replacement": 1},
])
def test_random_sampler_refuses_what_pytorch_refuses(kwargs):
    _same_error(lambda: RandomSampler(range(5), **kwargs), lambda: tdata.RandomSampler(range(5), **kwargs))


def test_random_sampler_refuses_an_empty_dataset_like_pytorch():
    _same_error(lambda: RandomSampler([]), lambda: tdata.RandomSampler([]))


def test_a_loader_over_a_sampler_with_replacement_yields_num_samples():
    data = TensorDataset(jitorch.arange(6))
    loader = DataLoader(data, batch_size=4, sampler=RandomSampler(data, True, 10, _seeded(1)))
    sizes = [len(batch) for (batch,) in loader]
    assert sizes == [4, 4, 2] and len(loader) == 3


def test_subset_random_sampler_permutes_its_indices():
    indices = [3, 9, 4, 7]
    ours = list(SubsetRandomSampler(indices, _seeded(0)))
    assert sorted(ours) == sorted(tdata.SubsetRandomSampler(indices)) and len(SubsetRandomSampler(indices)) == 4


@pytest.mark.parametrize("replacement", [True, False])
def test_weighted_random_sampler_draws_only_weighted_indices(replacement):
    weights = [0.0, 1.0, 3.0, 0.0, 2.0]
    ours = list(WeightedRandomSampler(weights, 3, replacement, _seeded(0)))
    theirs = list(tdata.WeightedRandomSampler(weights, 3, replacement))
    assert len(ours) == len(theirs) == 3 and set(ours) <= {1, 2, 4}
    if not replacement:
        assert sorted(ours) == [1, 2, 4]


@pytest.mark.parametrize("args", [
    ([1.0, 2.0], 0), ([1.0, 2.0], True), ([1.0, 2.0], 3.0), ([1.0, 2.0], 2, 1), ([[1.0, 2.0]], 2),
])
def test_weighted_random_sampler_refuses_what_pytorch_refuses(args):
    _same_error(lambda: WeightedRandomSampler(*args), lambda: tdata.WeightedRandomSampler(*args))


def test_concat_dataset_indexes_like_pytorch():
    parts = [list(range(3)), list(range(10, 12)), list(range(20, 24))]
    ours, theirs = ConcatDataset(parts), tdata.ConcatDataset(parts)
    assert len(ours) == len(theirs) == 9 and ours.cumulative_sizes == theirs.cumulative_sizes
    assert [ours[i] for i in range(-9, 9)] == [theirs[i] for i in range(-9, 9)]
    _same_error(lambda: ours[-10], lambda: theirs[-10])
    _same_error(lambda: ConcatDataset([]), lambda: tdata.ConcatDataset([]))


def test_adding_datasets_concatenates_them():
    a, b = TensorDataset(jitorch.arange(2)), TensorDataset(jitorch.arange(5, 8))
    both = a + b
    assert isinstance(both, ConcatDataset) and [both[i][0].item() for i in range(len(both))] == [0, 1, 5, 6, 7]


def test_the_loader_accepts_pytorch_worker_options_and_loads_in_process():
    data = TensorDataset(jitorch.arange(5))
    loader = DataLoader(data, batch_size=2, num_workers=2, timeout=5, worker_init_fn=print, prefetch_factor=2,
                        persistent_workers=True)
    assert [batch.tolist() for (batch,) in loader] == [[0, 1], [2, 3], [4]]
