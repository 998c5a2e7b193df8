"""A matrix product and the pointwise kernel that alone reads it as one kernel on the GPU
(`jitorch.ir.fusion.MatmulEpilogue`, `jitorch.codegen.triton.render_matmul`,
`jitorch.backends.cuda.matmul_epilogue`).

On any machine: which products are taken in (2-d float32, read by one pointwise kernel of their
shape and nothing else); the template in Triton's interpreter against numpy, on transposed and
broadcast operands, both precisions; compiled training steps on the interpreter's `cuda` stand-in
against the CPU (a process of its own); every configuration compiled for sm_90; and, on the numpy
stand-in for CuPy, the launcher's choice between cuBLAS with the epilogue and the template (timed
once, kept on disk, never timed while capturing, left alone at another matmul precision).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import types

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn as nn
from jitorch.backends.cuda import launch
from jitorch.codegen import triton as renderer
from jitorch.ir.fusion import Kernel, MatmulEpilogue, absorb_matmul_epilogues, describe, partition
from tests.nn_helpers import training_step
from tests.test_triton_driver import FAKE_CUPY, StubFunction, host, stub_launching

_IN_INTERPRETER = "JITORCH_MATMUL_EPILOGUE_INTERPRETER_RUN"


def absorbed(fn, *args, values: dict | None = None) -> list:
    """The plan order of `fn(*args)` with products taken in; `values`, where given, gets each graph
    input's and constant's array by value id."""
    compiled = jt.compile(fn)
    compiled(*args)
    (program,) = [p for entries in compiled.cache.values() for p in entries]
    graph = program.graph
    if values is not None:
        values.update({inp.value.id: a.numpy() for inp, a in zip(graph.inputs, args)})
        values.update({n.out.id: n.params["value"].array for n in graph.nodes if n.op == "const"})
    order = partition(graph, lambda n: n.op != "const" and renderer.fusible(n), lambda k: True)
    descs = {id(k): describe(k) for k in order if isinstance(k, Kernel)}
    return absorb_matmul_epilogues(graph, order, descs)


def epilogues(order) -> list[MatmulEpilogue]:
    return [k for k in order if isinstance(k, MatmulEpilogue)]


def test_a_product_read_only_by_its_pointwise_kernel_is_taken_in():
    x, w, b = jt.randn(32, 16), jt.randn(16, 24), jt.randn(24)
    (item,) = epilogues(absorbed(lambda x, w, b: (x @ w + b).relu(), x, w, b))
    assert item.name() == "matmul_add_relu_32x24" and [v.shape for v in item.inputs[:2]] == [(32, 16), (16, 24)]
    assert item.product.id not in {v.id for v in item.inputs}  # never read from memory
    # a batch of rows times a matrix (a Linear layer on (batch, time, features)): rows flattened
    x3, r3 = jt.randn(3, 32, 16), jt.randn(3, 32, 24)
    (item,) = epilogues(absorbed(lambda x, w, b, r: (x @ w + b).relu() + r, x3, w, b, r3))
    assert item.rows_and_columns == (96, 24) and item.reshape is None
    # F.linear on them: one 2-d product, reshaped back to (batch, time, features), then the epilogue
    weight = jt.randn(24, 16)
    (item,) = epilogues(absorbed(lambda x, w, b: jt.nn.functional.gelu(jt.nn.functional.linear(x, w, b)),
                                 x3, weight, b))
    assert item.reshape is not None and item.product.shape == (3, 32, 24) and item.rows_and_columns == (96, 24)
    # the product is read elsewhere too, returned, a batch of matrices on both sides, an epilogue
    # input broadcast along some leading dims only, or float64: it stays a node
    assert not epilogues(absorbed(lambda x, w, b: ((x @ w + b).relu(), (x @ w).sum()), x, w, b))
    assert not epilogues(absorbed(lambda x, w, b: (x @ w, (x @ w + b).relu()), x, w, b))
    assert not epilogues(absorbed(lambda x, w: (x @ w).relu(), x3, jt.randn(3, 16, 24)))
    assert not epilogues(absorbed(lambda x, w, r: (x @ w) + r, x3, w, jt.randn(3, 1, 24)))
    x64, w64 = jt.randn(8, 4, dtype=jt.float64), jt.randn(4, 5, dtype=jt.float64)
    assert not epilogues(absorbed(lambda x, w: (x @ w).relu(), x64, w64))


# ---------------------------------------------------------------------------------------------
# the template in the interpreter (a process of its own), and compiled for sm_90

if os.environ.get(_IN_INTERPRETER):
    import torch

    from tests.triton_interpreter_backend import InterpretedMatmul, serving_cuda_reporting

    def run_template(item, precision, arrays, config=None):
        source = renderer.render_matmul(item, precision)
        config = config or source.configs(item.rows_and_columns)[0]
        outs = [np.empty(v.shape, v.dtype.np) for v in item.outputs]
        views = [a.reshape((1,) * (2 - a.ndim) + a.shape) for a in arrays]
        strides = [tuple(0 if n == 1 else s // a.itemsize for n, s in zip(v.shape, v.strides))
                   for a, v in zip(arrays, views)]
        m, n = item.rows_and_columns
        args = source.matmul_args(m, n, arrays[0].shape[1], strides)
        tensors = [torch.from_numpy(np.ascontiguousarray(a) if min(a.strides, default=0) < 0 else a) for a in arrays]
        source.define()[source.launch_grid((m, n), config)](*tensors, *(torch.from_numpy(o) for o in outs), *args,
                                                             **config.constexprs, **config.options())
        return outs

    @pytest.mark.parametrize("precision", ["highest", "high"])
    @pytest.mark.parametrize("layout", ["plain", "transposed_weight", "column_bias"])
    def test_interpreted_template_matches_numpy(precision, layout):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((70, 48)).astype(np.float32)
        w = rng.standard_normal((40, 48)).astype(np.float32)  # as nn.Linear keeps it: (out, in)
        b = rng.standard_normal((70, 1) if layout == "column_bias" else (40,)).astype(np.float32)
        r = rng.standard_normal((70, 40)).astype(np.float32)
        weight = w.T if layout == "transposed_weight" else np.ascontiguousarray(w.T)
        values = {}
        (item,) = epilogues(absorbed(lambda x, w, b, r: ((x @ w + b).relu() * 2 + r).exp(), *map(jt.tensor, (
            x, np.ascontiguousarray(weight), b, r)), values=values))
        arrays = [values[v.id] for v in item.inputs]
        arrays[1] = weight  # (the layout under test: a transposed view where asked)
        (out,) = run_template(item, precision, arrays)
        expected = np.exp(np.maximum(x.astype(np.float64) @ weight + b, 0) * 2 + r)
        rtol = 1e-5 if precision == "highest" else 5e-3  # TF32 keeps 10 bits of each factor
        np.testing.assert_allclose(out, expected, rtol=rtol, atol=rtol * np.abs(expected).max())

    def test_interpreted_template_on_a_batch_of_rows():
        """(2, 35, 48) @ (48, 40) + a bias + a per-row value + a residual: the rows flattened."""
        rng = np.random.default_rng(6)
        x, w, b, s, r = (rng.standard_normal(sh).astype(np.float32)
                         for sh in ((2, 35, 48), (48, 40), (40,), (2, 35, 1), (2, 35, 40)))
        values = {}
        (item,) = epilogues(absorbed(lambda x, w, b, s, r: (x @ w + b) * s + r, *map(jt.tensor, (x, w, b, s, r)),
                                     values=values))
        arrays = [values[v.id] for v in item.inputs]
        arrays = [a.reshape(-1, a.shape[-1]) if a.ndim > 2 else a for a in arrays]
        (out,) = run_template(item, "highest", arrays)
        expected = (x.astype(np.float64) @ w + b) * s + r
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    def test_interpreted_float16_template_matches_numpy():
        """float16 factors multiplied with float32 accumulation, the product rounded to float16 and
        the epilogue on it, each value rounded as the eager kernels round them."""
        rng = np.random.default_rng(5)
        x, w, b = (rng.standard_normal(s).astype(np.float16) for s in ((70, 48), (48, 40), (40,)))
        values = {}
        (item,) = epilogues(absorbed(lambda x, w, b: (x @ w + b).relu(), *map(jt.tensor, (x, w, b)), values=values))
        assert item.product.dtype == jt.float16
        (out,) = run_template(item, "highest", [values[v.id] for v in item.inputs])
        product = (x.astype(np.float32) @ w.astype(np.float32)).astype(np.float16)
        expected = np.maximum(product + b, 0).astype(np.float32)
        np.testing.assert_allclose(out.astype(np.float32), expected, rtol=2**-10, atol=2**-10 * np.abs(expected).max())

    @pytest.fixture(scope="module")
    def interpreted_cuda():
        with serving_cuda_reporting(os.environ[_IN_INTERPRETER], lambda backend: [
                s for s in backend.sources.values() if isinstance(s[0], renderer.MatmulSource)]) as backend:
            yield backend

    def test_interpreted_training_steps_equal_eager_cpu_steps(interpreted_cuda):
        def make(device):
            jt.manual_seed(0)
            model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5))
            model.to(device)
            return model, training_step(model, jt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))

        cpu_model, cpu_step = make("cpu")
        gpu_model, gpu_step = make("cuda")
        compiled = jt.compile(gpu_step)
        rng = np.random.default_rng(1)
        for _ in range(4):
            x, y = jt.tensor(rng.standard_normal((24, 12)).astype(np.float32)), jt.tensor(rng.integers(0, 5, 24))
            np.testing.assert_allclose(compiled(x.to("cuda"), y.to("cuda")).item(), cpu_step(x, y).item(), rtol=1e-5)
        for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
            np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().numpy(), rtol=1e-4, atol=1e-5)
        kernels = [k for entries in compiled.cache.values() for p in entries for k in p.plan.kernels]
        assert len([k for k in kernels if isinstance(k, InterpretedMatmul)]) >= 2  # the hidden layers' forward

    def test_interpreted_sequence_steps_equal_eager_cpu_steps(interpreted_cuda):
        """Linear layers on (batch, time, features), as a transformer's: their products flattened."""
        def make(device):
            jt.manual_seed(1)
            model = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 5)).to(device)
            opt = jt.optim.AdamW(model.parameters(), lr=1e-2)

            def step(x, y):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x).reshape(-1, 5), y.reshape(-1))
                loss.backward()
                opt.step()
                return loss

            return model, step

        cpu_model, cpu_step = make("cpu")
        gpu_model, gpu_step = make("cuda")
        compiled = jt.compile(gpu_step)
        rng = np.random.default_rng(2)
        for _ in range(3):
            x, y = jt.tensor(rng.standard_normal((4, 6, 12)).astype(np.float32)), jt.tensor(rng.integers(0, 5, (4, 6)))
            np.testing.assert_allclose(compiled(x.to("cuda"), y.to("cuda")).item(), cpu_step(x, y).item(), rtol=1e-5)
        for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
            np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().numpy(), rtol=1e-4, atol=1e-5)
        kernels = [k for entries in compiled.cache.values() for p in entries for k in p.plan.kernels]
        assert any(isinstance(k, InterpretedMatmul) and len(k.kernel.product.shape) == 3 for k in kernels)


def test_the_template_in_the_interpreter_and_for_sm90(tmp_path):
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    from tests.triton_interpreter_backend import compile_for_sm90, run_interpreted_tests

    report = tmp_path / "matmuls.pkl"
    assert "10 passed" in run_interpreted_tests(__file__, "interpreted", _IN_INTERPRETER, str(report))
    with open(report, "rb") as f:
        pairs = pickle.load(f)
    assert pairs
    source = pairs[0][0]
    every = [(s, c) for s in (source, renderer.MatmulSource(**{**vars(source), "precision": "tf32"}))
             for c in s.configs((4096, 4096))]
    x, w = jt.randn(64, 32).to(jt.bfloat16), jt.randn(32, 16).to(jt.bfloat16)
    (half,) = epilogues(absorbed(lambda x, w: (x @ w).relu() * 2, x, w))
    half_source = renderer.render_matmul(half, "highest")
    every += [(half_source, c) for c in half_source.configs((4096, 4096))]
    assert len(every) == 12
    for (s, _), ptx in zip(every, compile_for_sm90(every)):
        assert f".entry {s.name}(" in ptx and ".target sm_90" in ptx


# ---------------------------------------------------------------------------------------------
# the launcher's choice, on the numpy stand-in for CuPy


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    from jitorch.backends.cuda import matmul_epilogue

    function, timed, products = StubFunction(), [], []
    launches = []
    fake = types.SimpleNamespace(**vars(FAKE_CUPY))
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceProperties=lambda d: {
            "name": b"NVIDIA H200", "major": 9, "minor": 0}),
        get_current_stream=FAKE_CUPY.cuda.get_current_stream)
    stub_launching(monkeypatch, fake, function, launches)
    monkeypatch.setattr(launch, "_gpus", {})
    monkeypatch.setenv("JITORCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("JITORCH_AUTOTUNE", raising=False)
    ms = {}

    def timer(launch_once, warmup=2, repeat=5):
        before = len(launches)
        launch_once()
        which = "cublas" if products and products[-1] == len(launches) - 1 else launches[-1][3][-5]
        timed.append(which if len(launches) > before else "?")
        return ms.get(which, 1.0)

    monkeypatch.setattr(matmul_epilogue, "time_launches", timer)
    monkeypatch.setattr(launch, "time_launches", lambda launch_once, warmup=2, repeat=5: launch_once() or 1.0)

    def matmul(a, b):
        products.append(len(launches))
        return host(np.asarray(a) @ np.asarray(b))

    return types.SimpleNamespace(function=function, timed=timed, ms=ms, matmul=matmul, launches=launches,
                                 cache=tmp_path / "triton", module=matmul_epilogue)


def big_item():
    x, w, b = jt.randn(512, 64), jt.randn(64, 512), jt.randn(512)
    (item,) = epilogues(absorbed(lambda x, w, b: (x @ w + b).relu(), x, w, b))
    return item


def make_kernel(stand_in, item, precision="high"):
    module = stand_in.module
    epilogue = launch.TritonKernel(item.desc, renderer.render(item.desc))
    return module.MatmulEpilogueKernel(item, renderer.render_matmul(item, precision), epilogue, stand_in.matmul,
                                       precision)


def operands(item):
    return [host(np.ones(v.shape, np.float32)) for v in item.inputs]


def test_the_first_launch_times_cublas_and_each_tile_and_keeps_the_fastest(stand_in, monkeypatch):
    monkeypatch.setattr(stand_in.module, "get_float32_matmul_precision", lambda: "high")
    item = big_item()
    kernel = make_kernel(stand_in, item)
    assert len(kernel.configs) == 4
    stand_in.ms.update({"cublas": 0.5, 64: 0.3})  # (BLOCK_M, the fifth constant from the end, names a tile)
    kernel.run(operands(item))
    assert stand_in.timed[0] == "cublas" and len(stand_in.timed) == 5
    chosen = kernel._choice[0]
    assert chosen is not None and kernel.configs[chosen].constexprs["BLOCK_M"] == 64
    (record,) = [json.loads(p.read_text()) for p in stand_in.cache.glob("matmul_*.json")]
    assert record["key"]["mnk"] == [512, 512, 64] and record["key"]["precision"] == "tf32"
    assert record["config"]["constexprs"]["BLOCK_M"] == 64 and len(record["tried"]) == 5
    # a new kernel (a later process) reads the choice and times nothing
    again = make_kernel(stand_in, item)
    again.run(operands(item))
    assert len(stand_in.timed) == 5 and again._choice[0] == chosen


def test_the_templates_compile_in_the_pool_for_a_transposed_weight(stand_in, monkeypatch):
    """F.linear multiplies by `weight.t()`, a transposed view: the pool compiles each configuration
    for that layout, so the first launch, timing them all, compiles none of them again."""
    monkeypatch.setattr(stand_in.module, "get_float32_matmul_precision", lambda: "high")
    x, w, b = jt.randn(512, 64), jt.randn(512, 64), jt.randn(512)
    (item,) = epilogues(absorbed(lambda x, w, b: (x @ w.t() + b).relu(), x, w, b))
    kernel = make_kernel(stand_in, item)
    strides = kernel._likely_strides()
    assert strides[:2] == [(64, 1), (1, 64)]
    monkeypatch.setattr(launch.cupy.cuda, "Device", lambda device: contextlib.nullcontext(), raising=False)
    monkeypatch.setenv("JITORCH_COMPILE_THREADS", "2")
    launch.prepare_kernels([kernel])
    pooled = len(stand_in.function.warmups)
    data = [np.ones((512, 64), np.float32), np.ones((512, 64), np.float32).T, np.ones(512, np.float32)]
    kernel.run([host(a) for a in data])
    in_pool = {repr(args) for args, _, _ in stand_in.function.warmups[:pooled]}
    at_launch = [repr(args) for args, _, _ in stand_in.function.warmups[pooled:] if len(args) > 8]  # (templates)
    assert len(stand_in.timed) == 1 + len(kernel.configs) and len(at_launch) == len(kernel.configs)
    assert all(args in in_pool for args in at_launch)  # the same specializations: Triton's caches answer


def test_cublas_when_it_is_faster_untimed_with_autotune_off_and_while_capturing(stand_in, monkeypatch):
    monkeypatch.setattr(stand_in.module, "get_float32_matmul_precision", lambda: "high")
    item = big_item()
    stand_in.ms.update({"cublas": 0.1})
    kernel = make_kernel(stand_in, item)
    kernel.run(operands(item))
    assert kernel._choice[0] is None
    record = json.loads(next(stand_in.cache.glob("matmul_*.json")).read_text())
    assert record["config"] == stand_in.module.CUBLAS
    monkeypatch.setenv("JITORCH_AUTOTUNE", "0")
    off = make_kernel(stand_in, item)
    off.run(operands(item))
    assert off._choice[0] is None and len(stand_in.timed) == 5
    monkeypatch.delenv("JITORCH_AUTOTUNE")
    for path in stand_in.cache.glob("matmul_*.json"):
        path.unlink()
    monkeypatch.setattr(launch.graphs, "capturing", lambda: True)
    capturing = make_kernel(stand_in, item)
    products = len(stand_in.launches)
    capturing.run(operands(item))
    assert capturing._choice == {} and len(stand_in.timed) == 5 and len(stand_in.launches) == products + 1


def test_at_another_matmul_precision_cublas_and_the_epilogue_run(stand_in, monkeypatch):
    monkeypatch.setattr(stand_in.module, "get_float32_matmul_precision", lambda: "highest")
    item = big_item()
    kernel = make_kernel(stand_in, item, precision="high")
    (out,) = kernel.run(operands(item))
    assert stand_in.timed == [] and kernel._choice == {} and out.shape == (512, 512)


# ---------------------------------------------------------------------------------------------
# on an NVIDIA GPU


@pytest.mark.gpu
@pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU and CuPy")
@pytest.mark.parametrize("precision", ["highest", "high"])
def test_on_cuda_the_chosen_kernel_equals_numpy(precision, tmp_path, monkeypatch):
    """A 1024 x 512 @ 512 x 1024 product with bias, GELU and a residual add, compiled on cuda: at
    "high" the first call chooses between the template and cuBLAS (printed), at "highest" the
    product stays cuBLAS's; the first and a later call's results equal numpy's in float64."""
    from jitorch.backends.cuda.matmul_epilogue import MatmulEpilogueKernel

    monkeypatch.setenv("JITORCH_CACHE_DIR", str(tmp_path))
    jt.backends.set_float32_matmul_precision(precision)
    try:
        rng = np.random.default_rng(3)
        x, w, b, r = (rng.standard_normal(s).astype(np.float32) for s in ((1024, 512), (512, 1024), (1024,),
                                                                           (1024, 1024)))
        f = jt.compile(lambda x, w, b, r: nn.functional.gelu(x @ w + b) + r)
        args = [jt.tensor(a).to("cuda") for a in (x, w, b, r)]
        first, second = f(*args).cpu().numpy(), f(*args).cpu().numpy()
        kernels = [k for entries in f.cache.values() for p in entries for k in p.plan.kernels]
        templates = [k for k in kernels if isinstance(k, MatmulEpilogueKernel)]
        records = [json.loads(p.read_text()) for p in (tmp_path / "triton").glob("matmul_*.json")]
        if precision == "highest":  # (cuBLAS's IEEE float32 GEMM: the template is not compiled)
            assert templates == [] and records == []
        else:
            (record,) = records
            assert len(templates) == 1
            print(precision, record["config"], [round(t["ms"], 4) for t in record["tried"]])
    finally:
        jt.backends.set_float32_matmul_precision("highest")
    z = x.astype(np.float64) @ w + b
    expected = 0.5 * z * (1 + np.vectorize(__import__("math").erf)(z / np.sqrt(2))) + r
    rtol = 1e-4 if precision == "highest" else 1e-2
    for got in (first, second):
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
