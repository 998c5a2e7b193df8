"""The examples run end to end on a tiny step budget, and their final reports make sense.

Each example runs as a subprocess, as a user would start it, so a broken import, a crash at the end
(checkpoint, sampling, plotting) or a NaN loss fails here. Each takes a few seconds. They run on the
CPU (`--device cpu`, or the default where jitorch has no GPU); the GPU runs are bench/'s.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import jitorch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 120  # generous: a loaded CI machine; the runs themselves take seconds


def _example_utils():
    """examples/example_utils.py, loaded by path (examples/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("example_utils", EXAMPLES / "example_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(script: str, *args: str, cwd: Path, steps_env: str | None = None) -> str:
    """Run `examples/<script>` with `args`; assert it exited cleanly and return its stdout."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("JITORCH_EXAMPLE_STEPS", None)
    if steps_env is not None:
        env["JITORCH_EXAMPLE_STEPS"] = steps_env
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def report_floats(pattern: str, text: str) -> list[float]:
    """The numbers captured by `pattern` on the one report line it matches."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return [float(g) for g in match.groups()]


def test_digits_trains_and_round_trips_a_checkpoint(tmp_path):
    pytest.importorskip("sklearn")
    checkpoint = tmp_path / "cnn.ckpt"
    out = run_example("digits.py", "--steps", "12", "--checkpoint", str(checkpoint), "--device", "cpu",
                      cwd=tmp_path)

    assert re.search(r"^device: cpu$", out, re.MULTILINE), out
    assert "checkpoint round trip: ok" in out
    assert checkpoint.stat().st_size > 0
    for model in ("mlp", "cnn"):
        acc, loss = report_floats(rf"^{model}: held-out accuracy (\S+) \| final train loss (\S+) \| 12 steps "
                                  r"\(compiled\)", out)
        assert 0.0 <= acc <= 1.0
        assert math.isfinite(loss) and loss < math.log(10)  # below chance after 12 steps


def test_char_lm_loss_falls_and_it_samples(tmp_path):
    plot = tmp_path / "loss.png"
    out = run_example("char_lm.py", "--plot", str(plot), "--sample-length", "30", cwd=tmp_path,
                      steps_env="8")  # the budget through the environment, as CI sets it

    default = _example_utils().default_device(jitorch)  # "cpu" where jitorch has no GPU
    assert re.search(rf"^device: {default}$", out, re.MULTILINE), out
    assert re.search(r"^steps: 8 \(compiled\) \|", out, re.MULTILINE), out
    first_train, first_val = report_floats(r"^initial loss: train (\S+) \| held-out (\S+)$", out)
    final_train, final_val = report_floats(r"^final loss: train (\S+) \| held-out (\S+)$", out)
    assert all(math.isfinite(v) for v in (first_train, first_val, final_train, final_val))
    assert final_train < first_train and final_val < first_val
    sample = out.split("sample (temperature 0.8):\n", 1)[1]
    assert sample.startswith("The ") and len(sample) >= 30
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "skipped" in out
    else:
        assert plot.stat().st_size > 0


def test_char_lm_compiled_matches_its_eager_run(tmp_path):
    # the same seed and batches: a compiled step must train the model as the eager one does
    eager = run_example("char_lm.py", "--steps", "6", "--sample-length", "5", "--eager", "--device", "cpu",
                        "--plot", str(tmp_path / "a.png"), cwd=tmp_path)
    compiled = run_example("char_lm.py", "--steps", "6", "--sample-length", "5", "--device", "cpu",
                           "--plot", str(tmp_path / "b.png"), cwd=tmp_path)
    assert re.search(r"^steps: 6 \(eager\) \|", eager, re.MULTILINE), eager
    assert all(re.search(r"^device: cpu$", out, re.MULTILINE) for out in (eager, compiled))
    pattern = r"^final loss: train (\S+) \| held-out (\S+)$"
    np.testing.assert_allclose(report_floats(pattern, compiled), report_floats(pattern, eager), rtol=1e-3)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_char_lm_trains_under_autocast_compiled_as_eagerly(tmp_path, amp):
    runs = {}
    for how in ("--eager", None):
        args = ["--steps", "8", "--sample-length", "5", "--device", "cpu", "--amp", amp,
                "--plot", str(tmp_path / f"{how}.png")] + ([how] if how else [])
        runs[how] = out = run_example("char_lm.py", *args, cwd=tmp_path)
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[amp]
        assert re.search(rf"^device: cpu \| mixed precision: {dtype}$", out, re.MULTILINE), out
        first, _ = report_floats(r"^initial loss: train (\S+) \| held-out (\S+)$", out)
        final, _ = report_floats(r"^final loss: train (\S+) \| held-out (\S+)$", out)
        assert math.isfinite(final) and final < first
    pattern = r"^final loss: train (\S+) \| held-out (\S+)$"
    # (16-bit products: the compiled and eager runs round differently, a few steps of it add up)
    np.testing.assert_allclose(report_floats(pattern, runs[None]), report_floats(pattern, runs["--eager"]), rtol=3e-2)


def test_the_device_defaults_to_cuda_only_where_the_framework_has_a_gpu(monkeypatch):
    utils = _example_utils()

    def framework(name: str, gpu: bool | None) -> types.ModuleType:
        """A stand-in for jitorch or torch: `gpu` None has no `.cuda` module at all (a jitorch
        without one), else its `cuda.is_available()` says `gpu`."""
        lib = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, lib)
        if gpu is not None:
            cuda = types.ModuleType(f"{name}.cuda")
            cuda.is_available = lambda: gpu
            monkeypatch.setitem(sys.modules, f"{name}.cuda", cuda)
        return lib

    assert utils.default_device(framework("lib_without_cuda", None)) == "cpu"
    assert utils.default_device(framework("lib_without_a_gpu", False)) == "cpu"
    assert utils.default_device(framework("lib_with_a_gpu", True)) == "cuda"
