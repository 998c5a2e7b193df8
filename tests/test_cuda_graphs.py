"""`jitorch.compile(fn, mode="reduce-overhead")`: compiled programs captured into device graphs and
replayed (`jitorch.compiler.cudagraphs`, the cuda backend's `graphs.py` and `blas.py`).

On any machine: the mode is accepted and is "default" on the CPU; the capture logic runs on a
stand-in `cuda` backend over numpy whose graphs keep CUDA's rules (`TapeBackend`: a capture records
each kernel and copy with the arrays it was given and runs none of them, a launch re-runs the record
on those arrays, a value read on the host while capturing is baked in, a host read of device data
while capturing fails): a training step with AdamW, a scheduler changing the learning rate every
step and dropout replays and matches eager; outputs survive the next replay; a new batch shape, a
replaced parameter buffer and a changed matmul precision capture again; refused kernels and failed
captures run uncaptured and still match; the cuda backend's capture rules; the cuBLAS call plans of
`blas.py` against a column-major GEMM written in numpy.

Marked `gpu` (`python -m pytest -m gpu tests/test_cuda_graphs.py` on a machine with an NVIDIA GPU,
CuPy and nvmath-python): the same on the real backend (an MLP step under reduce-overhead against the
default mode and eager for 20 steps, recapture on a new batch shape, fallbacks, outputs kept), and
nvmath's matmul against cupy.matmul.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn.functional as F
from jitorch import backends, dispatch
from jitorch.backends import CaptureError, DeviceGraph
from jitorch.backends.cpu import CPUBackend
from jitorch.backends.cuda import blas
from jitorch.backends.cuda.graphs import node_refusal
from jitorch.compiler.cudagraphs import GraphedProgram
from jitorch.device import Device
from jitorch.ir.graph import Node
from tests.nn_helpers import training_step

# ---------------------------------------------------------------------------------------------
# a stand-in for the cuda backend whose graphs keep CUDA's rules


def _garbage_like(array: np.ndarray) -> np.ndarray:
    """What a buffer holds before a graph that writes it has run: all bits set (NaN for floats)."""
    out = np.empty(array.shape, array.dtype)
    out.reshape(-1).view(np.uint8).fill(0xFF)
    return out


class TapeGraph(DeviceGraph):
    def __init__(self, tape: list) -> None:
        self.tape = tape
        self.launches = 0

    def launch(self) -> None:
        self.launches += 1
        for entry in self.tape:
            entry()


class _TapedKernel:
    """A fused kernel whose runs a capture records (and a launch repeats into the same outputs)."""

    def __init__(self, backend: TapeBackend, kernel) -> None:
        self._backend, self._kernel = backend, kernel

    def __getattr__(self, name):
        return getattr(self._kernel, name)

    def run(self, inputs: list, outs: list | None = None) -> list:
        if self._backend.tape is None:
            return list(self._kernel.run(inputs, outs))
        # an output given over one of its inputs' buffers (a parameter updated in place) keeps its old
        # value while capturing, as on the GPU, where nothing runs then
        over = [o is not None and any(o is i for i in inputs) for o in outs] if outs is not None else []
        trial = None if outs is None else [None if a else o for o, a in zip(outs, over)]
        results = list(self._kernel.run(inputs, trial))
        targets = [outs[j] if over and over[j] else r for j, r in enumerate(results)]
        self._backend.tape.append(lambda: self._kernel.run(inputs, targets))
        for j, r in enumerate(targets):
            if not (over and over[j]):
                r[...] = _garbage_like(r)
        return targets


class TapeBackend(CPUBackend):
    """The `cuda` device type on numpy, with CPU kernels and device graphs that keep CUDA's rules."""

    device_type = "cuda"
    captures_graphs = True

    def __init__(self) -> None:
        self.tape: list | None = None
        self.graphs: list[TapeGraph] = []
        self.fail_on: str | None = None  # an op whose kernel fails while capturing
        self.kernels = {name: self._taped(name, k) for name, k in CPUBackend.kernels.items()}
        self.kernels_into = {name: self._taped_into(name, k) for name, k in CPUBackend.kernels_into.items()}

    def runs_natively(self, op) -> bool:
        return False  # (as the GPU's backend: the tape records kernels one by one)

    def _fail(self, name: str) -> None:
        if self.tape is not None and name == self.fail_on:
            raise RuntimeError(f"{name} is not allowed while capturing")

    def _taped(self, name: str, kernel):
        def run(*arrays, **params):
            self._fail(name)
            result = np.asarray(kernel(*arrays, **params))
            if self.tape is None or any(np.may_share_memory(result, a) for a in arrays if isinstance(a, np.ndarray)):
                return result  # (a view reads its input, at replay too)
            out = _garbage_like(result)
            self.tape.append(lambda: np.copyto(out, kernel(*arrays, **params)))
            return out

        return run

    def _taped_into(self, name: str, into):
        def run(buffer, *arrays, **params):
            self._fail(name)
            result = into(buffer, *arrays, **params)
            if self.tape is None:
                return result
            if result is buffer:
                self.tape.append(lambda: into(buffer, *arrays, **params))
                buffer[...] = _garbage_like(buffer)
                return buffer
            out = _garbage_like(result)
            self.tape.append(lambda: np.copyto(out, into(buffer, *arrays, **params)))
            return out

        return run

    def compile_kernels(self, descs):
        return [_TapedKernel(self, k) for k in super().compile_kernels(descs)]

    # buffers: copies are recorded while capturing, host reads of device data refused
    def empty(self, shape, dtype):
        return _garbage_like(np.empty(shape, dtype))

    def copy(self, array):
        if self.tape is None:
            return np.array(array, copy=True, order="C")
        out = _garbage_like(np.asarray(array))
        self.tape.append(lambda: np.copyto(out, array))
        return out

    def copy_into(self, dst, src) -> None:
        if self.tape is None:
            np.copyto(dst, src, casting="unsafe")
        else:
            self.tape.append(lambda: np.copyto(dst, src, casting="unsafe"))

    def add_into(self, dst, src) -> None:
        if self.tape is None:
            np.add(dst, src, out=dst)
        else:
            self.tape.append(lambda: np.add(dst, src, out=dst))

    def from_numpy(self, array):
        return np.array(array, copy=True)  # while capturing: a value baked in, as CuPy's fill kernel

    def to_numpy(self, array):
        if self.tape is not None:
            raise RuntimeError("a host read of device data while capturing")
        return np.array(array, copy=True)

    def capture(self, work):
        self.tape = []
        try:
            result = work()
        except Exception as err:
            raise CaptureError(f"{type(err).__name__}: {err}") from err
        finally:
            tape, self.tape = self.tape, None
        self.graphs.append(TapeGraph(tape))
        return self.graphs[-1], result

    def capture_refusal(self, node):
        return node_refusal(node)


@pytest.fixture
def tape(monkeypatch):
    backend = TapeBackend()
    monkeypatch.setitem(backends._BACKENDS, "cuda", backend)
    monkeypatch.setattr(Device, "_interned", dict(Device._interned))  # forget any earlier cuda device
    monkeypatch.setattr(dispatch, "_backends", {})
    return backend


def _graphed(compiled) -> list[GraphedProgram]:
    return [p.graphed for p in compiled.programs() if p.graphed is not None]


# ---------------------------------------------------------------------------------------------
# the mode, and the CPU


def test_a_bad_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs', "
                                         "'eager', 'check'.*'max-speed'"):
        jt.compile(lambda x: x, mode="max-speed")


def test_on_the_cpu_reduce_overhead_runs_as_default_and_matches_eager():
    jt.manual_seed(0)
    w = jt.randn(5, 3, requires_grad=True)

    def f(x):
        return ((x @ w).relu() * 2).sum(-1)

    x = jt.randn(4, 5)
    compiled = jt.compile(f, mode="reduce-overhead")
    for _ in range(3):
        np.testing.assert_allclose(compiled(x).detach().numpy(), f(x).detach().numpy(), rtol=1e-6)
    (graphed,) = _graphed(compiled)
    assert graphed.captured is None and graphed.runs == 3
    assert "CUDA graph: none; the program runs on the CPU, where mode='reduce-overhead' is mode='default'" in \
        compiled.explain(x)


# ---------------------------------------------------------------------------------------------
# a training step on the stand-in


def _mlp_training(device: str, mode: str | None, steps: int, lr_changes: bool = True, dropout: float = 0.1,
                  batch: int = 32):
    """Losses and final parameters of `steps` AdamW steps with a LambdaLR scheduler (a new learning
    rate every step when `lr_changes`) and dropout, eager (`mode` None) or compiled in `mode`."""
    jt.manual_seed(0)
    model = jt.nn.Sequential(jt.nn.Linear(6, 16), jt.nn.GELU(), jt.nn.Linear(16, 3)).to(device)
    opt = jt.optim.AdamW(model.parameters(), lr=0.05)
    schedule = jt.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.7 ** k if lr_changes else 1.0)
    rng = np.random.default_rng(0)
    x = jt.from_numpy(rng.standard_normal((batch, 6)).astype(np.float32)).to(device)
    y = jt.from_numpy(rng.integers(0, 3, batch)).to(device)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(F.dropout(model(x), dropout), y)
        loss.backward()
        opt.step()
        return loss

    run = jt.compile(step, mode=mode) if mode is not None else step
    losses = []
    for _ in range(steps):
        losses.append(run(x, y))
        schedule.step()
    return ([loss.to("cpu").item() for loss in losses], [p.to("cpu").detach().numpy() for p in model.parameters()],
            run)


def test_a_training_step_is_captured_and_replayed_and_matches_eager(tape):
    steps = 12
    losses, params, step = _mlp_training("cuda", "reduce-overhead", steps)
    eager_losses, eager_params, _ = _mlp_training("cpu", None, steps)
    default_losses, default_params, _ = _mlp_training("cuda", "default", steps)
    constant_losses, _, _ = _mlp_training("cpu", None, steps, lr_changes=False)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    np.testing.assert_allclose(losses, default_losses, rtol=1e-6)
    for a, b, c in zip(params, eager_params, default_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)
    # the rate the scheduler set reached every replay (a stale one would part from eager)
    assert abs(losses[-1] - constant_losses[-1]) > 1e-3
    graphed = [g for g in _graphed(step) if g.captured is not None]
    assert len(graphed) == 1 and graphed[0].refused is None
    assert len(tape.graphs) == 1 and tape.graphs[0].launches == graphed[0].replays + 1 >= steps - 4
    assert "CUDA graph: captured (1 capture," in step.explain(*_batch("cuda"))


def _batch(device: str, n: int = 32):
    rng = np.random.default_rng(0)
    return (jt.from_numpy(rng.standard_normal((n, 6)).astype(np.float32)).to(device),
            jt.from_numpy(rng.integers(0, 3, n)).to(device))


def test_outputs_and_gradients_keep_their_values_after_the_next_replay(tape):
    jt.manual_seed(0)
    model = jt.nn.Linear(6, 3).to("cuda")
    opt = jt.optim.SGD(model.parameters(), lr=0.1)

    @jt.compile(mode="reduce-overhead")
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss, loss * 2

    x, y = _batch("cuda")
    for _ in range(3):
        step(x, y)
    first, doubled = step(x, y)
    grad = model.weight.grad
    kept, kept_grad = first.item(), grad.to("cpu").numpy().copy()
    second, _ = step(x, y)
    assert tape.graphs and tape.graphs[0].launches >= 2
    assert first.item() == kept and doubled.item() == 2 * kept and second.item() < kept
    np.testing.assert_array_equal(grad.to("cpu").numpy(), kept_grad)
    assert model.weight.grad is not grad


def test_a_new_batch_shape_captures_its_own_graph(tape):
    jt.manual_seed(0)
    model = jt.nn.Linear(6, 3).to("cuda")
    opt = jt.optim.AdamW(model.parameters(), lr=0.01)

    step = training_step(model, opt)

    compiled = jt.compile(step, mode="reduce-overhead")
    for n in (32, 32, 32, 32, 16, 16, 16, 32):
        compiled(*_batch("cuda", n))
    captured = [g for g in _graphed(compiled) if g.captured is not None]
    assert len(captured) == 2 and len(tape.graphs) == 2
    assert sorted(g.replays for g in captured) == [1, 2]


def test_a_replaced_parameter_buffer_or_matmul_precision_captures_again(tape):
    jt.manual_seed(0)
    w = jt.randn(6, 3).to("cuda")

    @jt.compile(mode="reduce-overhead")
    def f(x):
        return (x @ w).tanh()

    x, _ = _batch("cuda")
    for _ in range(3):
        f(x)
    w.data = w * 3  # a new buffer: the graph read the old one
    np.testing.assert_allclose(f(x).to("cpu").numpy(), np.tanh(x.to("cpu").numpy() @ w.to("cpu").numpy()), rtol=1e-6)
    (graphed,) = _graphed(f)
    assert graphed.captures == 2 and len(tape.graphs) == 2
    saved = jt.get_float32_matmul_precision()
    try:
        jt.set_float32_matmul_precision("high")
        f(x)
    finally:
        jt.set_float32_matmul_precision(saved)
    assert graphed.captures == 3


def test_cpu_values_and_arguments_written_in_place_travel_as_data(tape):
    scale = jt.tensor(2.0)  # a CPU scalar the program lifts, changed in place between calls
    count = jt.tensor(0.0)  # a CPU tensor the program writes

    @jt.compile(mode="reduce-overhead")
    def f(x, offset):
        count.add_(1)
        x.mul_(scale)
        return x + offset

    x = jt.ones(3).to("cuda")
    for k in range(1, 6):
        scale.fill_(float(k))
        before = x.to("cpu").numpy().copy()
        out = f(x, jt.tensor(float(10 * k)))  # a CPU scalar argument
        np.testing.assert_allclose(x.to("cpu").numpy(), before * k)
        np.testing.assert_allclose(out.to("cpu").numpy(), before * k + 10 * k)
        assert count.item() == k
    (graphed,) = _graphed(f)
    assert graphed.captured is not None and graphed.replays == 3


def test_a_compiled_backward_reads_values_the_next_replay_does_not_overwrite(tape):
    jt.manual_seed(0)
    w = jt.randn(6, 3).to("cuda").requires_grad_()
    f = jt.compile(lambda x: (x @ w).tanh().square().sum(), mode="reduce-overhead")
    xs = [_batch("cuda", 8)[0] * k for k in (1, 2, 3, 4)]
    outs = [f(x) for x in xs]
    outs[2].backward()  # after the replay for xs[3]
    w_cpu = w.detach().to("cpu").requires_grad_()
    (xs[2].to("cpu") @ w_cpu).tanh().square().sum().backward()
    np.testing.assert_allclose(w.grad.to("cpu").numpy(), w_cpu.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert len(tape.graphs) == 1 and tape.graphs[0].launches == 3  # calls 2 (the capture), 3 and 4


def test_a_refused_kernel_runs_uncaptured_and_says_why(tape, monkeypatch, capsys):
    monkeypatch.setenv("JITORCH_CPU_FUSION", "0")  # dropout's draw stays an eager `random` kernel
    jt.set_logs("cudagraphs")
    try:
        losses, params, step = _mlp_training("cuda", "reduce-overhead", 6)
    finally:
        jt.set_logs("")
    eager_losses, eager_params, _ = _mlp_training("cpu", None, 6)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    for a, b in zip(params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not tape.graphs
    assert "CUDA graph: not captured: its plan runs `random` (its eager kernel reads the random seed" in \
        step.explain(*_batch("cuda"))
    logged = [line for line in capsys.readouterr().err.splitlines() if "[jitorch cudagraphs]" in line]
    assert logged and all("not captured: its plan runs `random`" in line for line in logged)
    assert len(logged) == len(_graphed(step))  # once per program


def test_a_failed_capture_runs_the_call_uncaptured_on_the_same_random_numbers(tape, capsys):
    tape.fail_on = "matmul"  # an op of the step that runs on an eager kernel
    jt.set_logs("cudagraphs")
    try:
        losses, params, step = _mlp_training("cuda", "reduce-overhead", 6)
    finally:
        jt.set_logs("")
    eager_losses, eager_params, _ = _mlp_training("cpu", None, 6)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)  # dropout drew each call's numbers once
    for a, b in zip(params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not tape.graphs
    refused = [g.refused for g in _graphed(step) if g.refused]
    assert refused and "capturing it failed" in refused[0] and "not allowed while capturing" in refused[0]
    assert "not captured: capturing it failed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the cuda backend's rules and cuBLAS plans (no GPU needed)


def test_the_cuda_backend_refuses_kernels_that_read_on_the_host_or_call_cupys_cublas(monkeypatch):
    def node(op: str) -> Node:
        return Node(op, (), {}, None, "step.py:3")

    assert "reads the random seed and counter on the host" in node_refusal(node("random"))
    assert "CuPy's einsum" in node_refusal(node("einsum"))
    assert node_refusal(node("add")) is None and node_refusal(node("cumsum")) is None
    assert node_refusal(node("matmul")) is None  # through nvmath while capturing
    monkeypatch.setattr(blas, "available", lambda: False)
    assert "pip install nvmath-python" in node_refusal(node("matmul"))


def _gemm_like_cublas(gemm: blas.Gemm, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """What cuBLAS computes from a plan: column-major C^T = op(B') op(A') on the memory from each
    factor's first element on, read with the plan's leading dims and batch strides."""

    def matrix(x: np.ndarray, operand: blas.Operand, rows: int, cols: int, index: int) -> np.ndarray:
        stored = (rows, cols) if operand.op == blas.OP_N else (cols, rows)  # column-major, as cuBLAS reads it
        offset, item = index * operand.batch_stride, x.itemsize
        start = np.lib.stride_tricks.as_strided(x, shape=(offset + 1,), strides=(item,))[offset:]
        view = np.lib.stride_tricks.as_strided(start, shape=stored, strides=(item, operand.ld * item))
        return view if operand.op == blas.OP_N else view.T

    c = out.reshape(-1)
    for i in range(gemm.count):
        product = matrix(b, gemm.right, gemm.n, gemm.k, i) @ matrix(a, gemm.left, gemm.k, gemm.m, i)  # C^T
        block = c[i * gemm.stride_c: i * gemm.stride_c + gemm.m * gemm.n]
        block.reshape(gemm.m, gemm.n)[...] = product.T


def _factor(shape: tuple[int, ...], layout: str, rng) -> np.ndarray:
    """A float64 factor of `shape` laid out as `layout`: "c" C order, "t" a transposed view,
    "pad" rows of a wider array, "bcast" a batch dim broadcast by stride 0, "neg" reversed rows."""
    if layout == "t":
        return rng.standard_normal(shape[:-2] + shape[-2:][::-1]).swapaxes(-1, -2)
    if layout == "pad":
        return rng.standard_normal(shape[:-1] + (shape[-1] + 3,))[..., : shape[-1]]
    if layout == "bcast":
        return np.broadcast_to(rng.standard_normal((1,) + shape[1:]), shape)
    if layout == "neg":
        return rng.standard_normal(shape)[..., ::-1, :]
    return rng.standard_normal(shape)


@pytest.mark.parametrize("a_shape, b_shape", [((5, 4), (4, 3)), ((2, 5, 4), (4, 3)), ((2, 5, 4), (2, 4, 3)),
                                              ((3, 1, 5, 4), (2, 4, 3)), ((1, 4), (4, 1)), ((2, 1, 4), (2, 4, 6))])
@pytest.mark.parametrize("a_layout", ["c", "t", "pad", "bcast", "neg"])
@pytest.mark.parametrize("b_layout", ["c", "t", "pad"])
def test_the_cublas_plan_computes_the_product(a_shape, b_shape, a_layout, b_layout):
    rng = np.random.default_rng(0)
    if a_layout == "bcast" and len(a_shape) < 3:
        a_layout = "c"
    a, b = _factor(a_shape, a_layout, rng), _factor(b_shape, b_layout, rng)
    size = a.itemsize
    gemm, out_shape, copy_a, copy_b = blas.gemm_plan(a.shape, blas._elements(a.strides, size), b.shape,
                                                     blas._elements(b.strides, size))
    # read in place but for reversed rows, and batches (3, 1) against (2,): no one stride steps through 3 x 2
    one_stride = a_shape[:2] != (3, 1)
    assert (copy_a is None) == ((a_layout != "neg" or a_shape[-2] == 1) and (one_stride or a_layout == "bcast"))
    assert (copy_b is None) == one_stride
    if copy_a is not None:
        a = np.ascontiguousarray(np.broadcast_to(a, copy_a))
    if copy_b is not None:
        b = np.ascontiguousarray(np.broadcast_to(b, copy_b))
    out = np.full(out_shape, np.nan)
    _gemm_like_cublas(gemm, a, b, out)
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-12)
    if len(b_shape) == 2 and a_layout == "c" and len(a_shape) > 2:
        assert gemm.count == 1 and gemm.m == math.prod(a_shape[:-1])  # one GEMM over the stacked rows


def test_the_cublas_plan_of_an_empty_product_is_no_call():
    gemm, out_shape, _, _ = blas.gemm_plan((3, 0), (0, 1), (0, 4), (4, 1))
    assert gemm is None and out_shape == (3, 4)


# ---------------------------------------------------------------------------------------------
# on the GPU

needs_cuda = pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU with CuPy")


@pytest.mark.gpu
@needs_cuda
def test_gpu_an_mlp_step_under_reduce_overhead_matches_default_and_eager():
    steps = 20
    losses, params, step = _mlp_training("cuda", "reduce-overhead", steps, dropout=0.0)
    default_losses, default_params, _ = _mlp_training("cuda", "default", steps, dropout=0.0)
    eager_losses, eager_params, _ = _mlp_training("cuda", None, steps, dropout=0.0)
    # (Triton's exp and rsqrt are approximate, and products may take other cuBLAS algorithms)
    np.testing.assert_allclose(losses, default_losses, rtol=1e-4)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4)
    for a, b, c in zip(params, default_params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(a, c, rtol=1e-3, atol=1e-4)
    constant_losses, _, _ = _mlp_training("cuda", "reduce-overhead", steps, lr_changes=False, dropout=0.0)
    assert abs(losses[-1] - constant_losses[-1]) > 1e-3  # the scheduler's rates reached the replays
    captured = [g for g in _graphed(step) if g.captured is not None]
    assert len(captured) == 1 and captured[0].replays >= steps - 4, [g.describe() for g in _graphed(step)]
    assert "CUDA graph: captured" in step.explain(*_batch("cuda"))


@pytest.mark.gpu
@needs_cuda
def test_gpu_dropout_under_reduce_overhead_draws_each_calls_numbers():
    losses, params, step = _mlp_training("cuda", "reduce-overhead", 10)
    default_losses, default_params, _ = _mlp_training("cuda", "default", 10)
    np.testing.assert_allclose(losses, default_losses, rtol=1e-4)
    for a, b in zip(params, default_params):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert any(g.captured is not None for g in _graphed(step)), [g.describe() for g in _graphed(step)]


@pytest.mark.gpu
@needs_cuda
def test_gpu_a_new_batch_shape_captures_again_and_outputs_survive_replays():
    jt.manual_seed(0)
    model = jt.nn.Sequential(jt.nn.Linear(6, 32), jt.nn.ReLU(), jt.nn.Linear(32, 3)).to("cuda")
    opt = jt.optim.AdamW(model.parameters(), lr=0.01)

    step = training_step(model, opt)

    compiled = jt.compile(step, mode="reduce-overhead")
    kept = []
    for n in (32, 32, 32, 32, 32, 16, 16, 16, 16):
        loss = compiled(*_batch("cuda", n))
        kept.append((loss, loss.item()))
    for loss, value in kept:  # each loss still reads its own step's value
        assert loss.item() == value
    captured = [g for g in _graphed(compiled) if g.captured is not None]
    assert len(captured) == 2, [g.describe() for g in _graphed(compiled)]


@pytest.mark.gpu
@needs_cuda
def test_gpu_uncapturable_programs_fall_back_and_match():
    jt.manual_seed(0)
    a, b = jt.randn(8, 8).to("cuda"), jt.randn(8, 8).to("cuda")
    with_einsum = jt.compile(lambda x: jt.einsum("ij,jk->ik", x, b).relu() + 1, mode="reduce-overhead")
    for _ in range(4):
        np.testing.assert_allclose(with_einsum(a).to("cpu").numpy(),
                                   np.maximum(a.to("cpu").numpy() @ b.to("cpu").numpy(), 0) + 1, rtol=1e-5)
    assert "not captured: its plan runs `einsum`" in with_einsum.explain(a)

    def with_sync(x):  # a host read: the trace fails, and fallback="eager" runs it eagerly
        return x * (x.sum().item() > 0)

    synced = jt.compile(with_sync, mode="reduce-overhead", fallback="eager")
    with pytest.warns(UserWarning, match="falls back to eager"):
        out = synced(a)
    for _ in range(3):
        out = synced(a)
    np.testing.assert_allclose(out.to("cpu").numpy(), with_sync(a).to("cpu").numpy())

    def data_dependent(x):
        return x[x > 0].sum()

    selected = jt.compile(data_dependent, mode="reduce-overhead", fallback="eager")
    with pytest.warns(UserWarning, match="falls back to eager"):
        selected(a)
    np.testing.assert_allclose(selected(a).item(), data_dependent(a).item(), rtol=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_gpu_a_failing_capture_leaves_the_stream_usable():
    import cupy

    from jitorch.backends.cuda import graphs

    x = cupy.arange(4, dtype=cupy.float32)
    with pytest.raises(CaptureError, match="stream|capture|synchron"):
        graphs.record(lambda: int(x.sum()))  # a host read while capturing
    assert float((x * 2).sum()) == 12.0
    graph, y = graphs.record(lambda: x * 3)
    graph.launch()
    np.testing.assert_array_equal(cupy.asnumpy(y), [0, 3, 6, 9])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float32-tf32", "float16", "bfloat16", "float64"])
def test_gpu_nvmath_matmul_matches_cupy(dtype):
    import cupy

    from jitorch.backends.cuda import kernels

    tf32 = dtype.endswith("tf32")
    np_dtype = jt.bfloat16.np if dtype == "bfloat16" else np.dtype(dtype.removesuffix("-tf32"))
    tolerance = {"float64": 1e-12, "float32": 1e-5, "float32-tf32": 5e-3, "float16": 5e-3, "bfloat16": 2e-2}[dtype]
    rng = np.random.default_rng(0)

    def make(shape, transposed):  # on the GPU, C order or a transposed view of it
        if transposed:
            return cupy.asarray(rng.standard_normal(shape[:-2] + shape[-2:][::-1]).astype(np_dtype)).swapaxes(-1, -2)
        return cupy.asarray(rng.standard_normal(shape).astype(np_dtype))

    cases = [((64, 48), (48, 32), False, False), ((3, 64, 48), (48, 32), False, False),
             ((3, 64, 48), (3, 48, 32), False, False), ((2, 1, 64, 48), (3, 48, 32), False, False),
             ((64, 48), (48, 32), True, False), ((64, 48), (48, 32), False, True),
             ((3, 64, 48), (3, 48, 32), True, True), ((48,), (48, 32), False, False), ((64, 48), (48,), False, False)]
    saved = jt.get_float32_matmul_precision()
    jt.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        for a_shape, b_shape, t_a, t_b in cases:
            a, b = make(a_shape, t_a), make(b_shape, t_b)
            got = blas.matmul(a, b, tf32)
            reference = kernels.KERNELS["matmul"](a, b)  # the backend's eager product: cupy.matmul
            assert got.dtype == np_dtype and got.shape == reference.shape, (a_shape, b_shape)
            exact = cupy.asnumpy(cupy.matmul(a.astype(np.float64), b.astype(np.float64)))
            got, reference = cupy.asnumpy(got).astype(np.float64), cupy.asnumpy(reference).astype(np.float64)
            np.testing.assert_allclose(got, reference, rtol=tolerance, atol=tolerance * 7)
            np.testing.assert_allclose(got, exact, rtol=tolerance, atol=tolerance * 7)
    finally:
        jt.set_float32_matmul_precision(saved)


@pytest.mark.gpu
@needs_cuda
def test_gpu_nvmath_matmul_records_into_a_graph_and_replays():
    import cupy

    from jitorch.backends.cuda import graphs

    a = cupy.asarray(np.random.default_rng(0).standard_normal((3, 16, 8)), dtype=np.float32)
    b = cupy.asarray(np.random.default_rng(1).standard_normal((8, 4)), dtype=np.float32)
    graph, out = graphs.record(lambda: blas.matmul(a, b, False) + 1)
    for _ in range(3):
        a *= 2
        graph.launch()
        np.testing.assert_allclose(cupy.asnumpy(out), cupy.asnumpy(cupy.matmul(a, b) + 1), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_gpu_a_cnn_step_under_reduce_overhead_matches_default_mode():
    """A small CNN (convolutions through im2col and cuBLAS, max pooling, Adam) trained under
    reduce-overhead: the replays equal default-mode steps (bench/train.py times such a step)."""

    def train(mode: str, steps: int = 8):
        jt.manual_seed(0)
        model = jt.nn.Sequential(jt.nn.Conv2d(1, 8, 3, padding=1), jt.nn.ReLU(), jt.nn.MaxPool2d(2),
                                 jt.nn.Conv2d(8, 16, 3, padding=1), jt.nn.ReLU(), jt.nn.Flatten(),
                                 jt.nn.Linear(16 * 4 * 4, 10)).to("cuda")
        opt = jt.optim.Adam(model.parameters(), lr=1e-2)
        rng = np.random.default_rng(0)
        batches = [(jt.tensor(rng.standard_normal((16, 1, 8, 8)).astype(np.float32)).to("cuda"),
                    jt.tensor(rng.integers(0, 10, 16)).to("cuda")) for _ in range(steps)]

        step = training_step(model, opt)

        compiled = jt.compile(step, mode=mode)
        losses = [compiled(x, y).item() for x, y in batches]
        return losses, [p.detach().cpu().numpy() for p in model.parameters()], compiled

    losses, params, step = train("reduce-overhead")
    default_losses, default_params, _ = train("default")
    np.testing.assert_allclose(losses, default_losses, rtol=1e-4)
    for a, b in zip(params, default_params):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert any(g.captured is not None for g in _graphed(step)), [g.describe() for g in _graphed(step)]
