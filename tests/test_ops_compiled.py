"""The op-by-op harness again, with every case's function wrapped in `jitorch.compile`: forward
values and gradients (through the compiled backward graph) must match PyTorch as in eager mode."""

from __future__ import annotations

import pytest

import jitorch as jt
from tests.harness import run_case
from tests.op_cases import CASES


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_op_matches_torch_compiled(case):
    try:
        run_case(case, transform=jt.compile)
    except jt.TraceError as err:
        # only ops whose output shape depends on the data may refuse to trace, and they must say so
        assert "depends on the data" in str(err), f"{case.name}: unexpected TraceError: {err}"
