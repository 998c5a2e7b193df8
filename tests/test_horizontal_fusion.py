"""Horizontal fusion: kernels of one structure over different sizes run as one launch (an
optimizer's update of every parameter), on backends that group kernels (the GPU's).

On any machine: which kernels `jitorch.ir.fusion.group_horizontally` gathers (an optimizer's updates
do; a chain, or a kernel whose output is read before the next one of its structure, does not); the
cuda launcher's table and copies on the numpy stand-in for CuPy; and, in Triton's interpreter (a
process of its own, as tests/test_ops_triton.py), compiled SGD, Adam and AdamW steps on the `cuda`
device type served by tests/triton_interpreter_backend.py equal eager steps on the CPU, with every
update in one launch, whose kernel also compiles for sm_90 with 16-byte loads.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import types

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn as nn
from jitorch.backends.cuda import launch
from jitorch.codegen import triton as renderer
from jitorch.ir.fusion import Kernel, KernelGroup, describe, group_horizontally, partition
from tests.nn_helpers import training_step
from tests.test_triton_driver import FAKE_CUPY, StubFunction, host, stub_launching

_IN_INTERPRETER = "JITORCH_HORIZONTAL_INTERPRETER_RUN"


def traced_graph(fn, *args):
    compiled = jt.compile(fn)
    compiled(*args)
    (program,) = [p for entries in compiled.cache.values() for p in entries]
    return program.graph


def grouped_order(graph):
    order = partition(graph, lambda n: n.op != "const" and renderer.fusible(n), lambda k: True)
    descs = {id(k): describe(k) for k in order if isinstance(k, Kernel)}
    return group_horizontally(order, descs)


def mlp_step(optimizer: str):
    jt.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4))
    make = {"sgd": lambda p: jt.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
            "adam": lambda p: jt.optim.Adam(p, lr=1e-2),
            "adamw": lambda p: jt.optim.AdamW(p, lr=1e-2, weight_decay=0.1)}
    return model, training_step(model, make[optimizer](model.parameters()))


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    return jt.tensor(rng.standard_normal((32, 8)).astype(np.float32)), jt.tensor(rng.integers(0, 4, 32))


# ---------------------------------------------------------------------------------------------
# which kernels group


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_an_optimizers_update_of_every_parameter_is_one_group(optimizer):
    model, step = mlp_step(optimizer)
    step(*batch())  # (the optimizer's state exists from the first step on: trace a later one)
    graph = traced_graph(step, *batch(1))
    order = grouped_order(graph)
    groups = [k for k in order if isinstance(k, KernelGroup)]
    params = {id(p) for p in model.parameters()}
    updated = [i.value.id for i in graph.inputs if i.kind == "lifted" and id(i.ref) in params]
    # the group that writes the parameters' new values covers all six of them
    (update,) = [g for g in groups if len(g.members) == len(updated)]
    assert len(update.members) == 6 and len({k.shape for k in update.members}) == 6
    position = {id(item): i for i, item in enumerate(order)}
    for group in groups:
        made = {v.id for v in group.outputs}
        assert not made & {v.id for v in group.inputs}  # no member reads another
        assert len({describe(k).key for k in group.members}) == 1
        for item in order[: position[id(group)]]:  # nothing before the group reads what it makes
            assert not made & {v.id for v in item.inputs}


def test_a_chain_of_one_structure_and_an_early_reader_keep_kernels_apart():
    x, b = jt.randn(64), jt.randn(32)
    chain = grouped_order(traced_graph(lambda x: ((x * 2 + 1).exp() * 2 + 1).exp().sum(), x))
    assert not any(isinstance(k, KernelGroup) for k in chain)

    def read_early(x, b):
        u = (x * 2 + 1).exp()
        s = u.sum()  # reads u before b's kernel of the same structure: u's can't move past it
        v = (b * 2 + 1).exp()
        return s, v

    assert not any(isinstance(k, KernelGroup) for k in grouped_order(traced_graph(read_early, x, b)))

    def independent(x, b):
        return (x * 2 + 1).exp(), (b * 2 + 1).exp(), x @ x  # (a product: no kernel of its own)

    (group,) = [k for k in grouped_order(traced_graph(independent, x, b)) if isinstance(k, KernelGroup)]
    assert [k.shape for k in group.members] == [(64,), (32,)] and group.name().endswith("_2_tensors")


def test_the_cpu_backend_runs_kernels_one_by_one():
    model, step = mlp_step("adam")
    compiled = jt.compile(step)
    for _ in range(3):
        compiled(*batch())
    programs = [p for entries in compiled.cache.values() for p in entries]
    assert programs and all(p.plan.kernels for p in programs)
    assert not any(isinstance(k.kernel, KernelGroup) for p in programs for k in p.plan.kernels)


def test_on_the_cpu_each_parameters_update_stays_in_one_kernel():
    """Same-shaped parameters' updates share kernels (they read one learning rate), but a kernel past
    half its size takes no new chain, so none is cut in two (a moment written by one kernel and
    read back by the next, a pass over memory more)."""
    params = [jt.randn(50, 20, requires_grad=True) for _ in range(20)]
    for p in params:
        p.grad = jt.randn(50, 20)
    opt = jt.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    step = jt.compile(opt.step)
    for _ in range(3):
        step()
    (program,) = [p for entries in step.cache.values() for p in entries][-1:]
    kernels = [k.kernel for k in program.plan.kernels if k.kernel.shape == (50, 20) or k.kernel.shape == (1000,)]
    assert len(kernels) > 1
    for k in kernels:
        made = {v.id for v in k.outputs}
        assert not any(made & {v.id for v in other.inputs} for other in kernels if other is not k), k.name()
    assert sum(len(k.outputs) for k in kernels) == 3 * len(params)  # each parameter and its two moments


# ---------------------------------------------------------------------------------------------
# the cuda launcher, on the numpy stand-in for CuPy


class PinnedStandIn(bytearray):
    """Host memory with an address, as `cupy.cuda.alloc_pinned_memory` returns."""

    @property
    def ptr(self) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(self))


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """The numpy stand-in for CuPy, with pinned memory and the runtime's copy (which records each
    table it copies, and the stream)."""
    function, launches, tables = StubFunction(), [], []

    def memcpy_async(dst, src, size, kind, stream):
        assert kind == 1 and stream == 0x5EED
        ctypes.memmove(dst, src, size)
        tables.append(np.frombuffer(ctypes.string_at(dst, size), np.int64))

    stream = types.SimpleNamespace(ptr=0x5EED, record=lambda: types.SimpleNamespace(done=True))
    fake = types.SimpleNamespace(**vars(FAKE_CUPY))
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0, memcpyAsync=memcpy_async, memcpyHostToDevice=1),
        get_current_stream=lambda: stream, alloc_pinned_memory=lambda n: PinnedStandIn(n))
    stub_launching(monkeypatch, fake, function, launches)
    monkeypatch.setenv("JITORCH_CACHE_DIR", str(tmp_path))
    return function, launches, tables


def two_member_group():
    x, b = jt.randn(40), jt.randn(24)
    order = grouped_order(traced_graph(lambda x, b: ((x * 2 + 1).exp(), (b * 2 + 1).exp()), x, b))
    (group,) = [k for k in order if isinstance(k, KernelGroup)]
    return group


def operands(values) -> list:
    """Arrays of the stand-in for these IR values, each filled with its position."""
    return [host(np.full(v.shape, k, v.dtype.np)) for k, v in enumerate(values)]


def test_the_launch_table_holds_each_operands_address_the_sizes_and_first_programs(stand_in):
    function, launches, tables = stand_in
    group = two_member_group()
    kernel = launch.GroupedTritonKernel(group, renderer.render_group(group))
    assert len(kernel.configs) == 1 and kernel.configs[0].constexprs == {"BLOCK": 64}
    ins = operands(group.inputs)
    outs = kernel.run(ins)
    (_, grid, _, args), table = launches[-1], tables[-1]
    n_in = len(group.members[0].inputs)  # x, 2, 1
    addresses = [a.data.ptr for a in ins]
    expected = [addresses[m * n_in + k] for k in range(n_in) for m in range(2)]
    expected += [o.data.ptr for o in outs] + [40, 24] + [0, 1, 2]
    assert n_in == 3 and table.tolist() == expected and grid == (2, 1, 1) and args[1:] == (64,)
    assert [o.shape for o in outs] == [(40,), (24,)]


def test_an_operand_at_an_odd_address_goes_through_a_copy(stand_in):
    _, launches, tables = stand_in
    group = two_member_group()
    kernel = launch.GroupedTritonKernel(group, renderer.render_group(group))
    raw = np.zeros(50 * 4, np.uint8)
    at = 16 - raw.__array_interface__["data"][0] % 16 + 4  # 4 bytes past a 16-byte boundary
    odd_in = raw[at:at + 40 * 4].view(np.float32).view(launch.cupy.ndarray)
    odd_out = host(np.zeros(41, np.float32))[1:]
    ins = operands(group.inputs)
    ins[0] = odd_in
    outs = kernel.run(ins, [odd_out, None])
    table = tables[-1].tolist()
    assert odd_in.data.ptr % 16 and odd_out.data.ptr % 16
    assert odd_in.data.ptr not in table and odd_out.data.ptr not in table
    assert all(a % 16 == 0 for a in table[:8])
    assert outs[0] is odd_out  # the result lands in the given array after the launch


# ---------------------------------------------------------------------------------------------
# in Triton's interpreter (a process of its own), and compiled for sm_90

if os.environ.get(_IN_INTERPRETER):
    from tests.triton_interpreter_backend import InterpretedGroup, serving_cuda_reporting

    @pytest.fixture(scope="module")
    def interpreted_cuda():
        with serving_cuda_reporting(os.environ[_IN_INTERPRETER], lambda backend: [
                s for s in backend.sources.values() if isinstance(s[0], renderer.GroupSource)]) as backend:
            yield backend

    @pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
    def test_interpreted_grouped_updates_equal_eager_cpu_steps(optimizer, interpreted_cuda):
        cpu_model, cpu_step = mlp_step(optimizer)
        gpu_model, gpu_step = mlp_step(optimizer)
        gpu_model.to("cuda")
        compiled = jt.compile(gpu_step)
        for seed in range(4):
            x, y = batch(seed)
            expected = cpu_step(x, y).item()
            launches = interpreted_cuda.launches
            got = compiled(x.to("cuda"), y.to("cuda")).item()
            assert interpreted_cuda.launches > launches
            np.testing.assert_allclose(got, expected, rtol=1e-5)
        for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
            np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6)
        programs = [p for entries in compiled.cache.values() for p in entries]
        groups = [k for p in programs for k in p.plan.kernels if isinstance(k, InterpretedGroup)]
        assert any(len(g.kernel.members) == 6 for g in groups)  # the parameters' update: one launch


def test_grouped_updates_in_the_interpreter_and_for_sm90(tmp_path):
    """The interpreted steps above, in a process with TRITON_INTERPRET=1; then the group kernels
    they ran, compiled for sm_90: each loads 16 bytes at a time."""
    pytest.importorskip("triton")
    from tests.triton_interpreter_backend import compile_for_sm90, run_interpreted_tests

    report = tmp_path / "groups.pkl"
    assert "3 passed" in run_interpreted_tests(__file__, "test_interpreted_grouped_updates", _IN_INTERPRETER,
                                               str(report))
    with open(report, "rb") as f:
        pairs = pickle.load(f)
    assert any(len(source.sizes) == 6 for source, _ in pairs)
    for (source, _), ptx in zip(pairs, compile_for_sm90(pairs)):
        assert f".entry {source.name}(" in ptx, source.text
        if min(source.sizes) > 1 and all(n % 4 == 0 for n in source.sizes):  # (float32: 16 bytes are 4)
            assert "ld.global.v4" in ptx, source.text


# ---------------------------------------------------------------------------------------------
# on an NVIDIA GPU


@pytest.mark.gpu
@pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU and CuPy")
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_grouped_updates_on_cuda_equal_eager_cpu_steps(optimizer, mode):
    """Compiled steps on cuda (their update of the six parameters one grouped launch; under
    reduce-overhead replayed from a CUDA graph, whose table copy reads kept pinned memory) against
    eager steps on the CPU."""
    cpu_model, cpu_step = mlp_step(optimizer)
    gpu_model, gpu_step = mlp_step(optimizer)
    gpu_model.to("cuda")
    compiled = jt.compile(gpu_step, mode=mode)
    for seed in range(6):
        x, y = batch(seed)
        expected = cpu_step(x, y).item()
        got = compiled(x.to("cuda"), y.to("cuda")).item()
        np.testing.assert_allclose(got, expected, rtol=1e-4)
    for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
        np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().numpy(), rtol=1e-4, atol=1e-5)
    programs = [p for entries in compiled.cache.values() for p in entries]
    groups = [k for p in programs for k in p.plan.kernels if isinstance(k, launch.GroupedTritonKernel)]
    assert any(len(g.kernel.members) == 6 for g in groups)
    if mode == "reduce-overhead":
        assert any(p.graphed is not None and p.graphed.replays >= 2 for p in programs)



def test_while_capturing_the_table_is_copied_from_pinned_memory_the_kernel_keeps(stand_in, monkeypatch):
    """A CUDA graph replays the table's copy: its source is pinned memory that lives as long as the
    kernel, and a table made while capturing is never handed to a later launch."""
    _, launches, tables = stand_in
    group = two_member_group()
    kernel = launch.GroupedTritonKernel(group, renderer.render_group(group))
    ins = operands(group.inputs)
    monkeypatch.setattr(launch.graphs, "capturing", lambda: True)
    outs = kernel.run(ins)
    kernel.run(ins, outs)
    assert len(tables) == 2 and not kernel._tables  # each capture copies its own
    pinned = kernel._pinned
    assert len(pinned) == 2 and np.frombuffer(pinned[0], np.int64).tolist() == tables[0].tolist()
    assert tables[0].tolist()[-5:] == [40, 24, 0, 1, 2]


def test_a_table_of_the_same_addresses_is_copied_once(stand_in):
    _, launches, tables = stand_in
    group = two_member_group()
    kernel = launch.GroupedTritonKernel(group, renderer.render_group(group))
    ins = operands(group.inputs)
    outs = kernel.run(ins)
    for _ in range(3):
        kernel.run(ins, outs)
    assert len(tables) == 1 and len(launches) == 4  # the same addresses: the same table on the device
    assert launches[0][3] == launches[3][3]
    for _ in range(launch._TABLES_KEPT + 1):  # new addresses each time: a table each, the oldest dropped
        kernel.run(operands(group.inputs))
    assert len(kernel._tables) == launch._TABLES_KEPT
