"""bench/fusion.py's pieces: the bytes each case must move, its numpy cases against jitorch, the kernel
count of the compiled softmax, and that a quick run prints a table and keeps the recorded results."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jitorch as jt

ROOT = Path(__file__).resolve().parents[1]


def _bench_fusion():
    """bench/fusion.py, loaded by path (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_fusion", ROOT / "bench" / "fusion.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fusion = _bench_fusion()
SMALL = fusion.Sizes(rows=6, cols=10, adam_params=200)


def test_each_case_counts_its_inputs_read_once_and_outputs_written_once():
    s = fusion.Sizes(rows=4, cols=8, adam_params=100)
    x = 4 * 4 * 8  # bytes of x, and of any output shaped like it
    expected = {"softmax": 2 * x, "layer_norm": 2 * x + 2 * 32, "rms_norm": 2 * x + 32, "gelu": 2 * x + 32,
                "cross_entropy": x + 4 * 8 + 4, "cross_entropy_fwd_bwd": 2 * x + 4 * 8 + 4,
                "adamw": 7 * 4 * 100, "adamw_traffic": 7 * 4 * 100}
    assert {case: fusion.case_bytes(case, s) for case in fusion.CASES} == expected
    # the recorded sizes: 4096² float32 on the CPU, 8192² on the GPU; 10M and 100M AdamW parameters
    assert fusion.case_bytes("softmax", fusion.SIZES["cpu", False]) == 2 * 4 * 4096 * 4096
    assert fusion.case_bytes("softmax", fusion.SIZES["cuda", False]) == 2 * 4 * 8192 * 8192
    assert fusion.case_bytes("adamw", fusion.SIZES["cuda", False]) == 7 * 4 * 100_000_000
    assert fusion.adam_shape(fusion.SIZES["cpu", False]) == (500, 1000)


@pytest.mark.parametrize("case", ["softmax", "layer_norm", "rms_norm", "gelu", "cross_entropy"])
def test_the_numpy_cases_compute_what_jitorch_computes(case):
    data = fusion.make_data(SMALL)
    ours, _ = fusion.framework_case(case, jt, data, "cpu")
    np.testing.assert_allclose(fusion.numpy_case(case, data)(), ours().numpy(), rtol=2e-5, atol=2e-6)


def test_the_numpy_adamw_steps_match_jitorchs_adamw():
    data = fusion.make_data(SMALL)
    ours = fusion.numpy_case("adamw", data)
    params = [jt.nn.Parameter(jt.tensor(p)) for p in data["params"]]
    for p, g in zip(params, data["grads"]):
        p.grad = jt.tensor(g)
    opt = jt.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    for _ in range(2):
        ours()
        opt.step()
    for mine, theirs in zip(ours.params, params):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_the_compiled_softmax_case_is_one_kernel():
    data = fusion.make_data(SMALL)
    run, compiled = fusion.framework_case("softmax", jt, data, "cpu", jt.compile)
    run()
    assert fusion.kernel_count(compiled) == 1


def _snapshot(folder: Path) -> dict[Path, tuple[int, str]]:
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}


def test_a_quick_run_of_one_case_prints_a_table_and_keeps_the_recorded_results():
    results = ROOT / "bench" / "results"
    before = _snapshot(results)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fusion.py"), "--quick", "--cases", "softmax"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _snapshot(results) == before
    assert "printed only" in proc.stdout and "written to" not in proc.stdout
    row = [line for line in proc.stdout.splitlines() if line.startswith("| softmax(x*2+1, -1) | jitorch compiled |")]
    assert len(row) == 1 and row[0].split("|")[6].strip() == "1", proc.stdout  # its kernel count
    assert "| torch.compile | skipped |" in proc.stdout  # not in a quick run
    assert "| layer_norm" not in proc.stdout  # the other cases did not run
