"""The op harness on the GPU: every case of tests/op_cases.py run by jitorch's cuda backend and by
PyTorch on the same GPU, forward and backward, eager and compiled. Marked `gpu`: it runs on a
machine with an NVIDIA GPU, CuPy and a CUDA build of PyTorch (`python -m pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch

import jitorch
from tests.harness import run_case
from tests.op_cases import CASES
from tests.test_ops_compiled import DATA_DEPENDENT_SHAPES

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not (jitorch.cuda.is_available() and torch.cuda.is_available()),
                                reason="needs an NVIDIA GPU with CuPy (jitorch) and CUDA PyTorch")


@pytest.fixture(autouse=True)
def _exact_float32_on_both_sides():
    # PyTorch's convolutions default to TF32 on the GPU; jitorch's default ("highest") does not
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@needs_cuda
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_op_matches_torch_on_cuda(case):
    run_case(case, device="cuda")


@needs_cuda
@pytest.mark.parametrize("case", [c for c in CASES if c.name not in DATA_DEPENDENT_SHAPES][::5], ids=lambda c: c.name)
def test_compiled_op_matches_torch_on_cuda(case):
    run_case(case, transform=jitorch.compile, device="cuda")
