"""The op-by-op harness again, with every case's function wrapped in `jitorch.compile`: forward
values and gradients (through the compiled backward graph) must match PyTorch as in eager mode."""

from __future__ import annotations

import pytest

import jitorch as jt
from tests.harness import run_case
from tests.op_cases import CASES, CASES_BY_NAME

# Output shapes that depend on the data (x[mask], masked_select) cannot be traced: these cases run
# eagerly in tests/test_ops.py, and compiled they must refuse, saying why.
DATA_DEPENDENT_SHAPES = {"index_bool_mask", "index_bool_mask_int32", "masked_select"} | {
    c.name for c in CASES if "data_dependent_shape" in c.tags}


@pytest.mark.parametrize("case", [c for c in CASES if c.name not in DATA_DEPENDENT_SHAPES], ids=lambda c: c.name)
def test_op_matches_torch_compiled(case):
    run_case(case, transform=jt.compile)


@pytest.mark.parametrize("name", sorted(DATA_DEPENDENT_SHAPES))
def test_data_dependent_output_shapes_refuse_to_trace(name):
    with pytest.raises(jt.TraceError, match=r"output shape depends on the data\) needs a concrete value"):
        run_case(CASES_BY_NAME[name], transform=jt.compile)
