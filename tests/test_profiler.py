"""`jitorch.profiler.profile`: every eager kernel and every step of a compiled program, by name, with
its host and device time; the table, the Chrome trace, and that profiling leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn as nn
from jitorch.backends import backend_for
from jitorch.runtime import executor
from jitorch.runtime.executor import KernelStep, PrimStep
from tests.nn_helpers import training_step


def mlp_step():
    jt.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, training_step(model, jt.optim.Adam(model.parameters(), lr=1e-2))


def test_eager_kernels_are_recorded_by_primitive():
    x, w = jt.randn(32, 8), jt.randn(8, 16)
    with jt.profiler.profile() as prof:
        y = (x @ w).relu()
        (x @ w).sum()
    rows = {r.key: r for r in prof.key_averages()}
    assert rows["matmul"].count == 2 and rows["relu"].count == 1 and rows["sum"].count == 1
    assert all(r.device_type == "cpu" and r.cpu_time_total > 0 and r.device_time_total > 0 for r in rows.values())
    events = prof.events()
    assert [e.name for e in events[:2]] == ["matmul", "relu"] and events[0].start_us <= events[1].start_us
    np.testing.assert_array_equal(y.numpy(), np.maximum(x.numpy() @ w.numpy(), 0))


def test_a_compiled_step_is_recorded_step_by_step_each_kernel_once():
    _, step = mlp_step()
    compiled = jt.compile(step)
    x, y = jt.randn(32, 8), jt.randint(0, 4, (32,))
    for _ in range(3):
        compiled(x, y)
    (program,) = [p for entries in compiled.cache.values() for p in entries if not p.one_shot]
    with jt.profiler.profile() as prof:
        compiled(x, y)
    names = [e.name for e in prof.events()]
    expected = [s.node.op if isinstance(s, PrimStep) else s.kernel.name for s in program.plan.steps]
    assert names == expected  # a step's kernel (a matmul) is not counted again by its own wrapper
    assert any(isinstance(s, KernelStep) for s in program.plan.steps) and "matmul" in names


def test_profiling_leaves_the_kernels_as_they_were():
    kernels = backend_for("cpu").kernels
    before = dict(kernels)
    x = jt.randn(4, 4)
    f = jt.compile(lambda x: (x @ x).relu() + 1)
    with jt.profiler.profile() as prof:
        f(x)  # traced and planned inside the profile: its unfused steps hold the profile's wrappers
        f(x)
    recorded = len(prof.events())
    assert executor.step_observer is None and all(kernels[k] is before[k] for k in before)
    f(x)
    (x @ x).relu()
    assert len(prof.events()) == recorded  # nothing recorded after the block


def test_the_table_and_its_errors():
    with jt.profiler.profile() as prof:
        with pytest.raises(RuntimeError, match="after the `with` block"):
            prof.events()
        jt.randn(64, 64).exp().sum()
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=2)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["name", "device", "calls"] and len(lines) == 2 + 2 + 1
    assert "kernel names" in lines[-1]
    with pytest.raises(ValueError, match="sort_by='flops'"):
        prof.key_averages().table(sort_by="flops")
    with jt.profiler.profile(), pytest.raises(RuntimeError, match="already recording"):
        with jt.profiler.profile():
            pass


def test_the_chrome_trace(tmp_path):
    with jt.profiler.profile(activities=[jt.profiler.ProfilerActivity.CPU]) as prof:
        jt.randn(8, 8).tanh()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())["traceEvents"]
    assert {e["name"] for e in trace} >= {"tanh"} and all(e["ph"] == "X" and e["dur"] >= 0 for e in trace)


@pytest.mark.gpu
@pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU and CuPy")
def test_on_cuda_device_times_come_from_events():
    model, step = mlp_step()
    model.to("cuda")
    compiled = jt.compile(step)
    x, y = jt.randn(4096, 8, device="cuda"), jt.randint(0, 4, (4096,), device="cuda")
    for _ in range(3):
        compiled(x, y)
    jt.cuda.synchronize()
    with jt.profiler.profile() as prof:
        compiled(x, y)
        (x @ x.T).sum()
    rows = prof.key_averages()
    assert all(r.device_type == "cuda" and r.device_time_total > 0 for r in rows)
    assert any(r.key.startswith("fused_") for r in rows) and any(r.key == "matmul" for r in rows)
    print(rows.table(row_limit=12))
