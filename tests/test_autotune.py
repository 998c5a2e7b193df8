"""Autotuning of generated Triton kernels (`jitorch/codegen/triton.py: TritonSource.configs`, the
candidates; `jitorch/backends/cuda/launch.py: TritonKernel`, the choice, kept in memory and on disk).

On any machine: the configurations the renderer offers per kernel kind and size, and, on the numpy
stand-in for CuPy of tests/test_triton_driver.py (compiles and launches recorded, a timer that
answers from a table), that the first launch times every candidate on the call's own arguments and
keeps the fastest; that the choice is written to disk and read back by a new kernel without timing;
that a damaged or foreign record is ignored and written again; that nothing is timed while a CUDA
graph is captured, with JITORCH_AUTOTUNE=0, or for small kernels; what JITORCH_LOGS=perf reports.
Every configuration compiles for sm_90 and runs in Triton's interpreter: tests/test_triton_codegen.py.

Marked `gpu`: compiled softmax and layer_norm on cuda tune once, record their choices, and a fresh
compile in the same cache reuses them without timing, with results equal to eager.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import types

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn.functional as F
from jitorch import logs
from jitorch.backends.cuda import launch, triton_driver
from jitorch.codegen import triton as renderer
from jitorch.ir.fusion import describe
from tests.test_triton_driver import (
    FAKE_CUPY,
    FAKE_GPU,
    StubFunction,
    host,
    mul_add_desc,
    run_python,
    stub_launching,
)

H200 = {"name": b"NVIDIA H200", "major": 9, "minor": 0}


def desc_of(fn, *args):
    """The one kernel the CPU's fusion makes of `fn(*args)`, described."""
    compiled = jt.compile(fn)
    compiled(*args)
    (program,) = [p for entries in compiled.cache.values() for p in entries]
    (kernel,) = program.plan.kernels
    return describe(kernel.kernel)


def pairs(source, loop_shape) -> list[tuple]:
    """(constexpr values but ROW_IN_REGISTERS, num_warps) of each configuration offered."""
    return [(*(v for k, v in c.constexprs.items() if k != "ROW_IN_REGISTERS"), c.num_warps)
            for c in source.configs(loop_shape)]


# ---------------------------------------------------------------------------------------------
# the candidates


def test_the_configurations_offered_per_kernel_kind_and_size():
    pointwise = renderer.render(desc_of(lambda x, b: x * 2 + b, jt.randn(8, 16), jt.randn(16)))
    softmax = renderer.render(desc_of(lambda x: F.softmax(x, -1), jt.randn(4, 64)))
    assert not pointwise.rows and softmax.rows and pointwise.itemsize == softmax.itemsize == 4
    # pointwise: the default alone under 1 MiB; from there 1024/4 first, then other blocks and warps
    assert pairs(pointwise, (8, 16)) == [(128, 1)]
    assert pairs(pointwise, (511, 512)) == [(1024, 4)]  # just under 1 MiB of float32
    assert pairs(pointwise, (512, 512)) == [(1024, 4), (1024, 8), (2048, 8), (512, 4)]
    assert pairs(pointwise, (8192, 8192)) == [(1024, 4), (1024, 8), (2048, 8), (4096, 16)]
    # rows in registers (ROWS, BLOCK, warps): the default first; other warp counts; twice the rows
    assert pairs(softmax, (32, 64)) == [(32, 64, 8)]  # 8 KiB: nothing to tune
    assert pairs(softmax, (8192, 8192)) == [(1, 8192, 16), (1, 8192, 4), (1, 8192, 8)]
    assert pairs(softmax, (8192, 768)) == [(2, 1024, 8), (2, 1024, 4), (2, 1024, 16), (4, 1024, 16)]
    assert pairs(softmax, (4096, 64)) == [(32, 64, 8), (32, 64, 4), (32, 64, 16), (64, 64, 16)]
    assert pairs(softmax, (1024, 2048)) == [(1, 2048, 8), (1, 2048, 4), (1, 2048, 16), (2, 2048, 16)]
    # rows longer than 8192 float32 loop over blocks of columns
    assert pairs(softmax, (64, 100_000)) == [(1, 2048, 8), (1, 4096, 16), (1, 4096, 8), (1, 1024, 4)]
    assert pairs(softmax, (2, 100_000)) == [(1, 2048, 8)]
    for shape in [(8, 16), (512, 512), (8192, 8192), (1 << 24,), (3, 1000, 999)]:
        for source in (pointwise, softmax):
            configs = source.configs(shape)
            assert 1 <= len(configs) <= 4 and len({repr(c) for c in configs}) == len(configs), (shape, configs)
            in_registers = {c.constexprs.get("ROW_IN_REGISTERS") for c in configs}
            assert len(in_registers) == 1  # one form per shape: what is timed is blocks and warps


def test_a_wide_search_offers_more_at_every_size_with_the_default_first():
    """`wide_autotuning()` (mode="max-autotune"): small kernels get candidates too, every kind
    more of them, each list starting with the default search's first."""
    pointwise = renderer.render(desc_of(lambda x, b: x * 2 + b, jt.randn(8, 16), jt.randn(16)))
    softmax = renderer.render(desc_of(lambda x: F.softmax(x, -1), jt.randn(4, 64)))
    for source in (pointwise, softmax):
        for shape in [(8, 16), (512, 512), (8192, 8192), (2, 100_000)]:
            default, wide = source.configs(shape), source.configs(shape, wide=True)
            assert wide[0] == default[0] and len(wide) > len(default) >= 1, (shape, wide)
            assert len({repr(c) for c in wide}) == len(wide)
    assert len(pointwise.configs((8, 16), wide=True)) >= 8


def test_a_wide_search_times_even_a_fast_default_and_is_recorded_apart(gpu, big_add):
    """Under mode="max-autotune" a kernel's default that runs in microseconds is still timed against
    the others, and the choice is recorded under its own key (a default search's choice does not
    stand in for it)."""
    gpu.ms.update({(1024, 4): 0.004, (2048, 8): 0.001})
    with jt.backends.wide_autotuning():
        kernel = launch.TritonKernel(big_add, renderer.render(big_add))
    kernel.run(add_inputs())
    assert len(gpu.timed) == len(kernel.configs) > 4
    assert kernel.config.constexprs == {"BLOCK": 2048} and kernel.config.num_warps == 8
    (name,) = gpu.choice_files()
    assert gpu.record(name)["key"]["search"] == "wide"


def test_the_default_is_what_the_kernel_ran_before_tuning():
    """The first configuration is the one kernels ran in before they were timed (eager pointwise
    kernels, the interpreter stand-in and graphs captured before a choice still take it)."""
    pointwise = renderer.render(desc_of(lambda x, b: x * 2 + b, jt.randn(8, 16), jt.randn(16)))
    softmax = renderer.render(desc_of(lambda x: F.softmax(x, -1), jt.randn(4, 64)))
    assert pairs(pointwise, (100,))[0] == (128, 1) and pairs(pointwise, (1 << 20,))[0] == (1024, 4)
    assert pairs(softmax, (8192, 8192))[0] == (1, 8192, 16) and pairs(softmax, (4, 100_000))[0] == (1, 2048, 8)


# ---------------------------------------------------------------------------------------------
# choosing, on a numpy stand-in for CuPy


class StandIn(types.SimpleNamespace):
    """What the tests below see of a stand-in GPU: compiles (`function.warmups`), launches
    (`launches`: compiled, grid, stream, args), the configurations timed (`timed`: (BLOCK,
    num_warps) in order), the times the timer answers (`ms`), and where choices are written."""

    def choice_files(self) -> list[str]:
        return sorted(f for f in os.listdir(self.cache) if f.startswith("autotune_")) if self.cache.exists() else []

    def record(self, name: str) -> dict:
        return json.loads((self.cache / name).read_text())


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    function = StubFunction()
    launches, timed = [], []
    props = dict(H200)
    fake = types.SimpleNamespace(**vars(FAKE_CUPY))
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceProperties=lambda device: dict(props)),
        get_current_stream=FAKE_CUPY.cuda.get_current_stream, Device=lambda device: contextlib.nullcontext())
    stub_launching(monkeypatch, fake, function, launches)
    monkeypatch.setenv("JITORCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("JITORCH_AUTOTUNE", raising=False)
    monkeypatch.setattr(launch, "_choices", {})
    monkeypatch.setattr(launch, "_gpus", {})
    ms = {}

    def timer(launch_once, warmup=2, repeat=5):
        """Launch once, and answer the time of the configuration just launched."""
        launch_once()
        args, grid, options = function.warmups[launches[-1][0] - 1]  # what that launch was compiled for
        config = (args[-1], options["num_warps"])
        timed.append(config)
        return ms.get(config, 1.0)

    monkeypatch.setattr(launch, "time_launches", timer)
    return StandIn(function=function, launches=launches, timed=timed, ms=ms, props=props,
                   cache=tmp_path / "triton")


@pytest.fixture(scope="module")
def big_add():
    """x (512, 512) * 2 + b (512,): 1 MiB of float32, four configurations."""
    return desc_of(lambda x, b: x * 2 + b, jt.randn(512, 512), jt.randn(512))


def add_inputs():
    return [host(np.ones((512, 512), np.float32)), host(np.float32(2)), host(np.arange(512, dtype=np.float32))]


ALL_FOUR = [(1024, 4), (1024, 8), (2048, 8), (512, 4)]


def test_the_first_launch_times_each_configuration_and_keeps_the_fastest(gpu, big_add):
    gpu.ms.update({(1024, 4): 0.30, (1024, 8): 0.29, (2048, 8): 0.25, (512, 4): 0.31})
    kernel = launch.TritonKernel(big_add, renderer.render(big_add))
    kernel.prepare()  # the default only: the others compile when timed
    assert [(w[0][-1], w[2]["num_warps"]) for w in gpu.function.warmups] == [(1024, 4)]
    assert not kernel._launches and gpu.timed == []
    inputs = add_inputs()
    (out,) = kernel.run(inputs)
    assert gpu.timed == ALL_FOUR
    assert kernel.config.constexprs == {"BLOCK": 2048} and kernel.config.num_warps == 8 and kernel.grid == (128, 1, 1)
    # every timed launch ran on the call's own inputs and output, and so does the launch after them
    pointers = tuple(a.data.ptr for a in [*inputs, out])
    assert all(args[:4] == pointers for _, _, _, args in gpu.launches)
    compiled, grid, _, args = gpu.launches[-1]
    assert grid == (128, 1, 1) and args[-1] == 2048 and gpu.function.warmups[compiled - 1][2]["num_warps"] == 8
    # later launches take the choice: nothing timed or compiled again
    compiles = len(gpu.function.warmups)
    kernel.run(inputs)
    kernel.run(inputs, [None])
    assert len(gpu.timed) == 4 and len(gpu.function.warmups) == compiles
    assert [a[-1] for _, _, _, a in gpu.launches[-2:]] == [2048, 2048]


def test_a_kernel_whose_default_runs_in_microseconds_keeps_it_without_compiling_the_others(gpu, big_add):
    gpu.ms.update({(1024, 4): 0.004, (2048, 8): 0.001})  # the default: 4 us, under TUNE_MIN_MS
    kernel = launch.TritonKernel(big_add, renderer.render(big_add))
    kernel.run(add_inputs())
    assert gpu.timed == [(1024, 4)] and len(gpu.function.warmups) == 1  # nothing else compiled
    assert kernel.config.constexprs == {"BLOCK": 1024}
    (name,) = gpu.choice_files()  # and remembered: a later process times nothing
    assert gpu.record(name)["config"] == {"constexprs": {"BLOCK": 1024}, "num_warps": 4}


def test_the_choice_is_written_to_disk_and_a_new_kernel_reads_it(gpu, big_add):
    gpu.ms.update({(512, 4): 0.2})
    source = renderer.render(big_add)
    launch.TritonKernel(big_add, source).run(add_inputs())
    (name,) = gpu.choice_files()
    record = gpu.record(name)
    code, _ = launch.compiled_form(source.text, source.name)
    assert record["key"] == {"source": launch.source_digest(launch.module_text(code)), "loop_shape": [512, 512],
                             "gpu": "NVIDIA H200", "capability": "9.0", "triton": triton_driver.triton.__version__,
                             "search": "default"}
    assert record["config"] == {"constexprs": {"BLOCK": 512}, "num_warps": 4}
    assert [(t["constexprs"]["BLOCK"], t["num_warps"]) for t in record["tried"]] == ALL_FOUR
    assert [t["ms"] for t in record["tried"]] == [1.0, 1.0, 1.0, 0.2] and record["kernel"] == "fused_mul_add_512x512"
    assert not [f for f in os.listdir(gpu.cache) if f.endswith(".tmp")]  # written atomically

    # in this process: remembered; in a later one (nothing in memory): read from the file
    for forget in (False, True):
        if forget:
            launch._choices.clear()
        timed, warmups = len(gpu.timed), len(gpu.function.warmups)
        kernel = launch.TritonKernel(big_add, source)
        kernel.prepare()  # compiles the choice, not the default
        assert [w[0][-1] for w in gpu.function.warmups[warmups:]] == [512]
        assert kernel.config.constexprs == {"BLOCK": 512} and list(kernel._launches) == [(0, True, None)]
        kernel.run(add_inputs())
        assert len(gpu.timed) == timed and gpu.launches[-1][3][-1] == 512
    assert gpu.choice_files() == [name]


DAMAGE = {
    "empty": b"",
    "cut short": b'{"kernel": "fused_mul_add_512x512", "key": {"sou',
    "not text": b"\xff\xfe\x00garbage",
    "a list": b"[1, 2]",
    "no config": b'{"key": {}}',
}


@pytest.mark.parametrize("damage", [*DAMAGE, "another key", "a configuration not offered"])
def test_a_damaged_or_foreign_record_is_ignored_and_written_again(gpu, big_add, damage):
    gpu.ms.update({(1024, 8): 0.1})
    source = renderer.render(big_add)
    launch.TritonKernel(big_add, source).run(add_inputs())
    (name,) = gpu.choice_files()
    path = gpu.cache / name
    good = gpu.record(name)
    if damage == "another key":
        path.write_text(json.dumps({**good, "key": {**good["key"], "gpu": "NVIDIA H100"}}))
    elif damage == "a configuration not offered":
        path.write_text(json.dumps({**good, "config": {"constexprs": {"BLOCK": 64}, "num_warps": 2}}))
    else:
        path.write_bytes(DAMAGE[damage])
    launch._choices.clear()
    kernel = launch.TritonKernel(big_add, source)
    kernel.run(add_inputs())
    assert gpu.timed == ALL_FOUR * 2  # timed again
    assert gpu.record(name) == good and kernel.config.num_warps == 8


def test_the_choice_is_per_gpu_and_triton_version(gpu, big_add, monkeypatch):
    source = renderer.render(big_add)
    launch.TritonKernel(big_add, source).run(add_inputs())
    gpu.props["name"] = b"NVIDIA H100 80GB HBM3"
    launch._gpus.clear()
    launch.TritonKernel(big_add, source).run(add_inputs())
    monkeypatch.setattr(triton_driver.triton, "__version__", "0.0.1")
    launch.TritonKernel(big_add, source).run(add_inputs())
    assert gpu.timed == ALL_FOUR * 3 and len(gpu.choice_files()) == 3
    assert {gpu.record(f)["key"]["gpu"] for f in gpu.choice_files()} == {"NVIDIA H200", "NVIDIA H100 80GB HBM3"}


def test_nothing_is_timed_while_a_graph_is_captured(gpu, big_add, monkeypatch):
    gpu.ms.update({(2048, 8): 0.1})
    kernel = launch.TritonKernel(big_add, renderer.render(big_add))
    monkeypatch.setattr(launch.graphs, "capturing", lambda: True)
    kernel.run(add_inputs())
    kernel.run(add_inputs())
    assert gpu.timed == [] and gpu.choice_files() == [] and not kernel._chosen and not kernel._launches
    assert [a[-1] for _, _, _, a in gpu.launches] == [1024, 1024]  # the default, recorded into the graph
    monkeypatch.setattr(launch.graphs, "capturing", lambda: False)
    kernel.run(add_inputs())  # the first launch outside a capture chooses
    assert gpu.timed == ALL_FOUR and gpu.launches[-1][3][-1] == 2048 and len(gpu.choice_files()) == 1


def test_a_choice_made_before_is_taken_while_capturing(gpu, big_add, monkeypatch):
    gpu.ms.update({(2048, 8): 0.1})
    source = renderer.render(big_add)
    launch.TritonKernel(big_add, source).run(add_inputs())
    launch._choices.clear()
    monkeypatch.setattr(launch.graphs, "capturing", lambda: True)
    kernel = launch.TritonKernel(big_add, source)
    kernel.run(add_inputs())  # (reading a file records nothing into the graph)
    assert len(gpu.timed) == 4 and gpu.launches[-1][3][-1] == 2048 and kernel._chosen == {0: 2}


def test_autotune_off_runs_the_default_untimed(gpu, big_add, monkeypatch):
    monkeypatch.setenv("JITORCH_AUTOTUNE", "0")
    gpu.ms.update({(2048, 8): 0.1})
    kernel = launch.TritonKernel(big_add, renderer.render(big_add))
    kernel.prepare()
    kernel.run(add_inputs())
    assert gpu.timed == [] and gpu.choice_files() == [] and kernel._chosen == {0: 0}
    assert [a[-1] for _, _, _, a in gpu.launches] == [1024] and len(gpu.function.warmups) == 1


def test_small_kernels_are_not_timed(gpu):
    desc = mul_add_desc()  # 8 x 16
    kernel = launch.TritonKernel(desc, renderer.render(desc))
    assert len(kernel.configs) == 1
    kernel.run([host(np.ones((8, 16), np.float32)), host(np.float32(2)), host(np.arange(16, dtype=np.float32))])
    assert gpu.timed == [] and gpu.choice_files() == [] and kernel._chosen == {0: 0}


# ---------------------------------------------------------------------------------------------
# a program's kernels compile side by side


def compiled_where(function: StubFunction) -> list[tuple]:
    """Make `function` note the thread of each compile; returns the notes: (thread name, BLOCK,
    num_warps)."""
    notes, warmup = [], function.warmup

    def noting(*args, grid, **options):
        notes.append((threading.current_thread().name, args[-1], options["num_warps"]))
        return warmup(*args, grid=grid, **options)

    function.warmup = noting
    return notes


def test_a_programs_kernels_compile_side_by_side_each_configuration_once(gpu, big_add, monkeypatch):
    """Every configuration a first launch will time compiles in the pool, once however many
    kernels share it (a kernel repeated in each layer); each kernel's prepare then takes its own
    from Triton's caches, and the first launch times all four without waiting on a compile."""
    monkeypatch.setenv("JITORCH_COMPILE_THREADS", "3")
    notes = compiled_where(gpu.function)
    built = []  # the threads that built a compiled kernel's launcher
    monkeypatch.setattr(triton_driver, "build_launcher", lambda compiled: built.append(threading.current_thread().name))
    source = renderer.render(big_add)
    small = mul_add_desc()
    kernels = [launch.TritonKernel(big_add, source) for _ in range(3)]
    kernels.append(launch.TritonKernel(small, renderer.render(small)))
    launch.prepare_kernels(kernels)
    pooled = [(block, warps) for thread, block, warps in notes if thread.startswith("jitorch-compile")]
    assert sorted(pooled) == sorted([*ALL_FOUR, (128, 1)])  # each once: the three big kernels share theirs
    assert [(block, warps) for thread, block, warps in notes if thread == "MainThread"] == [(1024, 4)] * 3 + [(128, 1)]
    assert len(built) == len(pooled) and all(t.startswith("jitorch-compile") for t in built)  # (Triton 3.6's C builds)
    kernels[0].run(add_inputs())
    assert gpu.timed == ALL_FOUR


def test_a_chosen_configuration_is_the_only_one_compiled(gpu, big_add, monkeypatch):
    monkeypatch.setenv("JITORCH_COMPILE_THREADS", "2")
    gpu.ms.update({(2048, 8): 0.25})
    source = renderer.render(big_add)
    launch.TritonKernel(big_add, source).run(add_inputs())  # times the four and records (2048, 8)
    notes = compiled_where(gpu.function)
    launch.prepare_kernels([launch.TritonKernel(big_add, source), launch.TritonKernel(big_add, source)])
    assert {(block, warps) for _, block, warps in notes} == {(2048, 8)}


def test_a_configuration_that_does_not_compile_in_the_pool(gpu, big_add, monkeypatch, capsys):
    """The default failing to compile fails the program's build (it then runs eagerly); another
    failing is logged and left out of the timing."""
    monkeypatch.setenv("JITORCH_COMPILE_THREADS", "2")
    logs.set_logs(perf=True)
    warmup, refused = gpu.function.warmup, []

    def refusing(*args, grid, **options):
        if (args[-1], options["num_warps"]) in refused:
            raise RuntimeError("out of resources: shared memory")
        return warmup(*args, grid=grid, **options)

    gpu.function.warmup = refusing
    source = renderer.render(big_add)
    refused.append((2048, 8))
    kernel = launch.TritonKernel(big_add, source)
    launch.prepare_kernels([kernel])
    assert "BLOCK=2048 num_warps=8 does not compile (RuntimeError: out of resources" in capsys.readouterr().err
    kernel.run(add_inputs())
    assert gpu.timed == [(1024, 4), (1024, 8), (512, 4)]
    refused.append((1024, 4))
    try:
        with pytest.raises(RuntimeError, match="out of resources"):
            launch.prepare_kernels([launch.TritonKernel(big_add, source)])
    finally:
        logs.set_logs(perf=False)


def test_perf_logs_report_compiles_and_tuning(gpu, big_add, capsys):
    gpu.ms.update({(1024, 4): 0.5, (1024, 8): 0.4, (2048, 8): 0.3, (512, 4): 0.6})
    logs.set_logs(perf=True)
    try:
        kernel = launch.TritonKernel(big_add, renderer.render(big_add))
        kernel.prepare()
        kernel.run(add_inputs())
        launch._choices.clear()
        launch.TritonKernel(big_add, renderer.render(big_add)).prepare()
    finally:
        logs.set_logs(perf=False)
    err = capsys.readouterr().err
    assert "[jitorch perf] fused_mul_add_512x512: compiled in" in err
    tuned = next(line for line in err.splitlines() if "tuned in" in line)
    assert "compiling" in tuned and "fastest BLOCK=2048 num_warps=8" in tuned
    for block, warps, ms in [(1024, 4, 0.5), (1024, 8, 0.4), (2048, 8, 0.3), (512, 4, 0.6)]:
        assert f"BLOCK={block} num_warps={warps} {ms * 1e3:.1f} us" in tuned
    assert "BLOCK=2048 num_warps=8, chosen before" in err


def test_the_timers_hold_kernel_compiles_for_sm90_without_torch(tmp_path):
    """`time_launches` queues a kernel spinning on the GPU's clock before the timed launches; it is
    compiled through jitorch's driver as `time_launches` compiles it, for an H200, torch blocked."""
    out = run_python("""
    import sys
    import cupy
    from jitorch.backends.cuda import launch, triton_driver

    made = []
    triton_driver.launch_function = lambda compiled, grid: made.append((compiled, grid))
    launch.cupy = cupy
    launch._hold()
    ((compiled, grid),) = made
    print(compiled.metadata.target.arch, compiled.metadata.num_warps, grid, "%globaltimer" in compiled.asm["ptx"])
    print("torch" in sys.modules)
    """, tmp_path, prelude=FAKE_GPU)
    assert out.split("\n")[-3:] == ["90 1 (1, 1, 1) True", "False", ""]


# ---------------------------------------------------------------------------------------------
# on the GPU

needs_gpu = pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU and CuPy")


@pytest.mark.gpu
@needs_gpu
def test_compiled_softmax_and_layer_norm_tune_once_and_reuse_the_choice(tmp_path, monkeypatch):
    """Compiled on cuda over 2048 x 1024 float32 (8 MiB: four configurations each): the first call
    times its kernels and records their choices; a fresh compile, with nothing in memory, reads
    them and times nothing; results equal eager (and numpy). Prints each record."""
    from jitorch.backends.cuda.launch import TritonKernel

    monkeypatch.setenv("JITORCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("JITORCH_AUTOTUNE", raising=False)
    monkeypatch.setattr(launch, "_choices", {})
    monkeypatch.setattr(launch, "TUNE_MIN_MS", 0.0)  # (these kernels run a few microseconds: tune them anyway)
    timed = []
    time_launches = launch.time_launches

    def counting(launch_once, *args, **kwargs):
        ms = time_launches(launch_once, *args, **kwargs)
        timed.append(ms)
        return ms

    monkeypatch.setattr(launch, "time_launches", counting)
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((2048, 1024)).astype(np.float32)
    x = jt.tensor(x_host).to("cuda")
    shifted = np.exp(x_host * 2 + 1 - (x_host * 2 + 1).max(-1, keepdims=True))
    mean, var = x_host.mean(-1, keepdims=True), x_host.var(-1, keepdims=True)
    functions = {
        "softmax": (lambda x: F.softmax(x * 2 + 1, -1), shifted / shifted.sum(-1, keepdims=True)),
        "layer_norm": (lambda x: F.layer_norm(x, (1024,)), (x_host - mean) / np.sqrt(var + 1e-5)),
    }
    for name, (fn, expected) in functions.items():
        with jt.compiler.disable():  # (eager softmax and layer_norm on cuda are cached compiled functions too)
            eager = fn(x).to("cpu").numpy()
        before = len(timed)
        first = jt.compile(fn)
        got = first(x).to("cpu").numpy()
        (program,) = [p for entries in first.cache.values() for p in entries]
        kernels = [k for k in program.plan.kernels if isinstance(k, TritonKernel)]
        tuned = [k for k in kernels if len(k.configs) > 1]
        assert tuned and len(timed) - before == sum(len(k.configs) for k in tuned), name
        for k in tuned:
            path, key = k._record(launch.cupy.cuda.runtime.getDevice())
            record = json.loads(open(path).read())
            assert record["key"] == key and record["config"] == launch._as_json(k.config), name
            assert all(t["ms"] > 0 and math.isfinite(t["ms"]) for t in record["tried"])
            print(f"{name}: {k.name}: {json.dumps(record['tried'])} -> {record['config']}")
        np.testing.assert_allclose(got, eager, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)

        launch._choices.clear()  # as a later process: only the files remember
        before = len(timed)
        again = jt.compile(lambda x, fn=fn: fn(x))
        np.testing.assert_allclose(again(x).to("cpu").numpy(), got, rtol=0, atol=0, err_msg=name)
        assert len(timed) == before, f"{name}: timed again"
        (program,) = [p for entries in again.cache.values() for p in entries]
        fresh = {k.name: k.config for k in program.plan.kernels if isinstance(k, TritonKernel)}
        assert all(fresh[k.name] == k.config for k in tuned), name


def test_an_output_written_over_an_input_is_timed_on_a_spare_array(gpu, big_add):
    """A compiled program may give a kernel an input's buffer for its output (an update in place):
    the timed launches, repeated, must not apply it again and again, so they write elsewhere; the
    call's own launch then writes it once."""
    gpu.ms.update({(2048, 8): 0.25})
    kernel = launch.TritonKernel(big_add, renderer.render(big_add))
    inputs = add_inputs()
    (out,) = kernel.run(inputs, [inputs[0]])  # x's buffer for the output
    assert out is inputs[0] and gpu.timed == ALL_FOUR
    timed, last = gpu.launches[:-1], gpu.launches[-1]
    assert all(args[3] != inputs[0].data.ptr and args[:3] == tuple(a.data.ptr for a in inputs)
               for _, _, _, args in timed)
    assert last[3][3] == inputs[0].data.ptr and last[3][-1] == 2048  # the real launch, in the fastest configuration


@pytest.mark.gpu
@needs_gpu
def test_a_tuned_compiled_update_in_place_equals_the_eager_loop(tmp_path, monkeypatch):
    """An AdamW step over a 1024 x 1024 parameter (4 MiB: its update kernel is tuned on the first
    call, and writes the parameter in place): three compiled steps equal three eager ones."""
    monkeypatch.setenv("JITORCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("JITORCH_AUTOTUNE", raising=False)
    monkeypatch.setattr(launch, "_choices", {})
    monkeypatch.setattr(launch, "TUNE_MIN_MS", 0.0)  # (a 4 MiB update runs a few microseconds: tune it anyway)
    results = []
    for compiled in (True, False):
        rng = np.random.default_rng(0)
        p = jt.nn.Parameter(jt.tensor(rng.standard_normal((1024, 1024)).astype(np.float32)).to("cuda"))
        opt = jt.optim.AdamW([p], lr=1e-2, foreach=None if compiled else False)  # (the default compiles on cuda)
        for _ in range(3):
            p.grad = jt.tensor(rng.standard_normal((1024, 1024)).astype(np.float32)).to("cuda")
            opt.step()
        assert (opt._fused_update is not None) == compiled
        results.append(p.detach().cpu().numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
