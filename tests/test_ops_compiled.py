"""The op-by-op harness again, with every case's function wrapped in `jitorch.compile`: forward
values and gradients (through the compiled backward graph) must match PyTorch as in eager mode.

The default run takes each op once in its main dtypes; the promotion matrix and the other dtypes
of every op run with `-m slow` (about three minutes on two cores)."""

from __future__ import annotations

import pytest

import jitorch as jt
from tests.harness import run_case
from tests.op_cases import CASES

_VARIANTS = ("float16", "bfloat16", "float64", "int32", "bool", "promote")


def _is_variant(case) -> bool:
    return any(v in case.name for v in _VARIANTS)


def _check(case) -> None:
    try:
        run_case(case, transform=jt.compile)
    except jt.TraceError as err:
        # only ops whose output shape depends on the data may refuse to trace, and they must say so
        assert "depends on the data" in str(err), f"{case.name}: unexpected TraceError: {err}"


@pytest.mark.parametrize("case", [c for c in CASES if not _is_variant(c)], ids=lambda c: c.name)
def test_op_matches_torch_compiled(case):
    _check(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if _is_variant(c)], ids=lambda c: c.name)
def test_op_variant_matches_torch_compiled(case):
    _check(case)
