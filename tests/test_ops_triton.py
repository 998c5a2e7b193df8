"""The op harness's compiled cases with their fused kernels rendered to Triton: jitorch runs each case
on the `cuda` device type served by `tests/triton_interpreter_backend.py` (every kernel the Triton
renderer emits is executed in Triton's CPU interpreter), PyTorch on its CPU, and values and gradients
must agree as in tests/test_ops_compiled.py. Every kernel that ran is then compiled for sm_90.

The interpreter must be on before Triton is first imported, so the cases run in a pytest process of
their own, started by the tests below with TRITON_INTERPRET=1 (`_INTERPRETER_RUN` names the cases to
run there); the sm_90 compilation runs in another process, with the interpreter off, once per
distinct kernel (kernels that differ only in the source lines they cite compile alike). A case in
which nothing fuses (float16 and bfloat16 values, matmuls...) is skipped there.

Cost on a 2-core machine: all cases take about 13 s in the interpreter, and the sm_90 compilation of
their 713 distinct kernels about 45 s with Triton's cache cold; so the default suite runs every
`_SAMPLE`th case (about 30 s cold, 10 s warm) and the `slow` test all of them.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

import jitorch  # noqa: E402
from tests.harness import run_case  # noqa: E402
from tests.op_cases import CASES  # noqa: E402
from tests.test_ops_compiled import DATA_DEPENDENT_SHAPES  # noqa: E402
from tests.triton_interpreter_backend import compile_for_sm90, serving_cuda_reporting, without_comments  # noqa: E402

_INTERPRETER_RUN = "JITORCH_TRITON_INTERPRETER_RUN"  # "sample" or "all" in the interpreter's process
_REPORT = "JITORCH_TRITON_INTERPRETER_REPORT"  # where that process writes what ran
_SAMPLE = 4

COMPILED_CASES = [c for c in CASES if c.name not in DATA_DEPENDENT_SHAPES]


def on_the_interpreter(fn):
    """What `run_case` calls for a case: its inputs moved to `cuda` (differentiably: gradients come
    back to the CPU leaves), then `fn` compiled there; PyTorch runs the case on its CPU."""
    compiled = jitorch.compile(fn)

    @functools.wraps(fn)
    def run(*tensors):
        return compiled(*(t.to("cuda") for t in tensors))

    return run


# ---------------------------------------------------------------------------------------------
# in the interpreter's process

if os.environ.get(_INTERPRETER_RUN):

    @pytest.fixture(scope="module")
    def interpreter_backend():
        with serving_cuda_reporting(os.environ[_REPORT], lambda backend: {
                "launches": backend.launches, "programs": backend.programs,
                "sources": list(backend.sources.values())}) as backend:
            yield backend

    @pytest.mark.parametrize("case", COMPILED_CASES if os.environ[_INTERPRETER_RUN] == "all"
                             else COMPILED_CASES[::_SAMPLE], ids=lambda c: c.name)
    def test_op_matches_torch_in_the_triton_interpreter(case, interpreter_backend):
        launches = interpreter_backend.launches
        run_case(case, transform=on_the_interpreter)
        if interpreter_backend.launches == launches:
            pytest.skip("nothing in this case is fused for the GPU")  # float16, bfloat16, matmul, gather...


# ---------------------------------------------------------------------------------------------
# in the test suite's process


def _run_in_the_interpreter(which: str, tmp_path) -> dict:
    """Run the `which` cases in a pytest process with the interpreter on; what ran there."""
    report = tmp_path / "report.pkl"
    env = {**os.environ, "TRITON_INTERPRET": "1", _INTERPRETER_RUN: which, _REPORT: str(report)}
    done = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                           "-k", "test_op_matches_torch_in_the_triton_interpreter", "-rfEX", "--tb=short"],
                          capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                          check=False)
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]
    with open(report, "rb") as f:
        ran = pickle.load(f)
    ran["summary"] = done.stdout.strip().splitlines()[-1]
    return ran


def _check(which: str, tmp_path) -> None:
    """The `which` cases in the interpreter, then each distinct kernel that ran compiled for sm_90."""
    ran = _run_in_the_interpreter(which, tmp_path)
    assert ran["launches"] > 0 and ran["sources"], ran["summary"]
    distinct = {}
    for source, config in ran["sources"]:
        distinct.setdefault((without_comments(source.text), repr(config)), (source, config))
    pairs = list(distinct.values())
    for (source, _), ptx in zip(pairs, compile_for_sm90(pairs)):
        assert f".entry {source.name}(" in ptx and ".target sm_90" in ptx
    print(f"{ran['summary']}: {ran['launches']} Triton kernel launches ({ran['programs']} programs) in the "
          f"interpreter, {len(ran['sources'])} rendered kernels, {len(pairs)} distinct ones compiled for sm_90")


def test_sampled_op_cases_in_the_triton_interpreter(tmp_path):
    _check("sample", tmp_path)


@pytest.mark.slow
def test_every_op_case_in_the_triton_interpreter(tmp_path):
    _check("all", tmp_path)
