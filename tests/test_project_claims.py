"""What the project says about itself holds: its dependencies, its devices, the test markers the README
names, the benchmarks' help and the results they record, and the examples' full training runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jitorch as jt

ROOT = Path(__file__).resolve().parents[1]


def _source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _bench_common():
    """bench/common.py, loaded by path (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# dependencies and devices


def test_every_required_dependency_is_imported_by_jitorch():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    required = tomllib.loads(_source(ROOT / "pyproject.toml"))["project"]["dependencies"]
    code = "\n".join(_source(p) for p in (ROOT / "jitorch").rglob("*.py"))
    for requirement in required:
        module = re.match(r"[A-Za-z0-9_.-]+", requirement).group().replace("-", "_")
        assert re.search(rf"^\s*(import|from) {module}\b", code, re.MULTILINE), (
            f"{requirement} is required by pyproject.toml but jitorch never imports {module}; "
            "move it to an optional extra")


@pytest.mark.skipif(jt.cuda.is_available(), reason="this machine has a CUDA backend")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_is_refused_saying_jitorch_runs_on_the_cpu_only(device):
    with pytest.raises(RuntimeError) as info:
        jt.randn(3, device=device)
    message = str(info.value)
    assert f"device '{device}' is not available" in message
    assert "no CUDA device" in message and "device='cpu'" in message
    assert "Triton" not in message  # no CUDA path exists to point to


# ---------------------------------------------------------------------------------------------
# the README's test markers


def test_each_marker_the_readme_selects_tests_with_marks_some_test():
    selected = set(re.findall(r"(?<!python )-m (\w+)", _source(ROOT / "README.md")))
    assert selected, "the README names no marker: update this test"
    tests = "\n".join(_source(p) for p in (ROOT / "tests").glob("test_*.py"))
    for marker in selected:
        assert f"pytest.mark.{marker}" in tests, f"README says `-m {marker}` selects tests, but none is marked"


# ---------------------------------------------------------------------------------------------
# benchmarks


def test_bench_and_example_texts_cite_no_issue_numbers():
    for path in [*(ROOT / "bench").glob("*.py"), *(ROOT / "examples").glob("*.py")]:
        text = _source(path)
        found = re.findall(r"#\d+\b|\bissues? #?\d+", text, re.IGNORECASE)
        assert not found, f"{path.name} cites {found}: a user cannot look those up; say what is meant"


def test_a_skipped_contender_reads_skipped():
    common = _bench_common()
    assert common.cell(None, ".1f") == "skipped"
    assert common.cell(0.0123, ".1f", scale=1e3) == "12.3"


def test_only_a_full_run_writes_recorded_results(tmp_path):
    common = _bench_common()
    assert common.results_path("compile_cpu", partial=False) == common.RESULTS_DIR / "compile_cpu.md"
    assert common.results_path("compile_cpu", partial=True) is None  # printed only
    elsewhere = tmp_path / "quick.md"
    assert common.results_path("compile_cpu", partial=True, out=str(elsewhere)) == elsewhere
    with pytest.raises(SystemExit, match="does not replace the recorded results"):
        common.results_path("compile_cpu", partial=True, out=str(common.RESULTS_DIR / "compile_cpu.md"))


@pytest.mark.slow  # 12 s to 40 s on 2 shared cores; the two tests above check its decisions
def test_quick_compile_bench_keeps_the_recorded_results():
    pytest.importorskip("torch")
    recorded = {p: p.read_bytes() for p in (ROOT / "bench" / "results").glob("*.md")}
    assert recorded, "no recorded results to protect"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compile.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {p: p.read_bytes() for p in recorded} == recorded
    assert sorted((ROOT / "bench" / "results").glob("*.md")) == sorted(recorded)
    assert "printed only" in proc.stdout
    assert "| skipped |" in proc.stdout and "nan" not in proc.stdout  # torch.compile does not run in --quick


# ---------------------------------------------------------------------------------------------
# the examples with their default budgets (slow: measured on a 2-core AMD EPYC shared with other
# work, digits 57 s to 60 s, char_lm 51 s, and 309 s at a load average of 5)


def _run_example_fully(script: str, cwd: Path) -> str:
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("JITORCH_EXAMPLE_STEPS", None)  # the default budget
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.slow
def test_digits_example_classifies_held_out_digits(tmp_path):
    pytest.importorskip("sklearn")
    out = _run_example_fully("digits.py", tmp_path)
    accuracies = {m: float(a) for m, a in re.findall(r"^(mlp|cnn): held-out accuracy (\S+) \|", out, re.MULTILINE)}
    assert set(accuracies) == {"mlp", "cnn"}, out
    assert all(a > 0.95 for a in accuracies.values()), out  # measured: mlp 0.986, cnn 0.992
    assert "checkpoint round trip: ok" in out


@pytest.mark.slow
def test_char_lm_example_learns_the_text(tmp_path):
    out = _run_example_fully("char_lm.py", tmp_path)
    initial = re.search(r"^initial loss: train \S+ \| held-out (\S+)$", out, re.MULTILINE)
    final = re.search(r"^final loss: train \S+ \| held-out (\S+)$", out, re.MULTILINE)
    assert initial and final, out
    # ln(103) = 4.63 nats for a uniform guess; measured: 4.84 at the start, 1.70 after 400 steps
    assert float(final.group(1)) < 2.0 < float(initial.group(1)), out
