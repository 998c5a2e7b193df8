"""The Triton renderer (`jitorch.codegen.triton`): every kernel that the fusion plan makes of a traced
function is rendered, run in Triton's CPU interpreter on the arrays the program computes, and compared
with the eager kernels' values of the same nodes; each is also compiled ahead of time for sm_90, so a
kernel that would not compile on the GPU fails here, on a machine without one.

Triton runs in worker processes of its own (`_Worker`): the interpreter is chosen when a function is
decorated, and Triton's own jitted helpers (`tl.rand`) are decorated when `triton.language` is first
imported, so an interpreter process must have TRITON_INTERPRET=1 before it imports Triton; the
ahead-of-time compiler needs the opposite. The interpreter takes torch CPU tensors (a test-only
dependency), and costs about 1.7 ms per program: the cases are small, the blocks large.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

import jitorch as jt  # noqa: E402
import jitorch.nn.functional as F  # noqa: E402
from jitorch.codegen import triton as triton_codegen  # noqa: E402
from jitorch.ir.fusion import Kernel, describe, partition  # noqa: E402
from jitorch.ir.graph import format_node  # noqa: E402

# ---------------------------------------------------------------------------------------------
# the worker: one Triton process, answering pickled requests on stdin/stdout

_WORKER = r'''
import pickle, sys
import numpy as np
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

requests, answers = sys.stdin.buffer, sys.stdout.buffer
sys.stdout = sys.stderr  # nothing else may write to the answer pipe
defined = {}


def kernel_of(source):
    if source.text not in defined:
        defined[source.text] = source.define()
    return defined[source.text]


def launch(source, loop_shape, inputs, outputs, config, pad, device):
    """Inputs viewed in the loop shape as the CPU launcher views them (innermost stride 1, or 0
    where broadcast), each with its strides; with `pad`, rows of inputs live in wider rows of memory
    (a slice's layout), so that the kernel must use the strides it is given."""
    tensors, strides = [], []
    for array, view_shape, bcast in inputs:
        view = array.reshape(view_shape)
        tensor = to_torch(torch, view).to(device)
        if tensor.ndim and not bcast[-1] and tensor.stride(-1) != 1:
            tensor = tensor.contiguous()
        if pad and tensor.ndim >= 2:
            wide = torch.zeros(tensor.shape[:-1] + (tensor.shape[-1] + 3,), dtype=tensor.dtype, device=device)
            wide[..., : tensor.shape[-1]] = tensor
            tensor = wide[..., : tensor.shape[-1]]
        strides.append(tuple(0 if b else s for s, b in zip(tensor.stride(), bcast)))
        tensors.append(tensor)
    outs = [torch.empty(shape, dtype=torch.int8 if np.dtype(dt) == np.bool_ else getattr(torch, np.dtype(dt).name),
                        device=device) for shape, dt in outputs]
    args = source.runtime_args(loop_shape, strides)
    grid = source.launch_grid(loop_shape, config)
    kernel_of(source)[grid](*tensors, *outs, *args, **config.constexprs, **config.options())
    results = []
    for out, (shape, dt) in zip(outs, outputs):
        if out.dtype == torch.bfloat16:  # (numpy has no bfloat16 of its own: ml_dtypes' is read from the bits)
            results.append(out.cpu().view(torch.int16).numpy().view(dt))
            continue
        host = out.cpu().numpy()
        results.append(host.view(np.bool_) if np.dtype(dt) == np.bool_ else host)
    return results


def to_torch(torch, array):
    """A numpy array as a torch tensor sharing its memory (bool as int8; ml_dtypes' bfloat16 by its bits)."""
    if array.dtype == np.bool_:
        return torch.from_numpy(array.view(np.int8))
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def compile_for_sm90(source, config):
    compiled = triton.compile(ASTSource(kernel_of(source), source.signature(), constexprs=config.constexprs),
                              target=GPUTarget("cuda", 90, 32), options=config.options())
    return compiled.asm["ptx"]


while True:
    try:
        request = pickle.load(requests)
    except EOFError:
        break
    kind, args = request
    try:
        answer = ("ok", launch(*args) if kind == "launch" else compile_for_sm90(*args))
    except Exception as err:
        import traceback
        answer = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    pickle.dump(answer, answers)
    answers.flush()
'''


class _Worker:
    """A Python process running `_WORKER`, with the interpreter on or off."""

    def __init__(self, interpret: bool) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        if interpret:
            env["TRITON_INTERPRET"] = "1"
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "0")
        self.process = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)

    def ask(self, kind: str, *args):
        pickle.dump((kind, args), self.process.stdin)
        self.process.stdin.flush()
        status, answer = pickle.load(self.process.stdout)
        if status != "ok":
            raise AssertionError(answer)
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def interpreter():
    worker = _Worker(interpret=True)
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def compiler():
    worker = _Worker(interpret=False)
    yield worker
    worker.close()


# ---------------------------------------------------------------------------------------------
# cases: a traced function, its kernels, and the value of every node


@dataclass
class Traced:
    """A program's graph, the value of each of its values on one call (graph inputs as the call read
    them, everything else from the eager kernels), and its kernels as the Triton renderer sees them."""

    graph: object
    values: dict
    kernels: list[Kernel]
    eager_outputs: dict = field(default_factory=dict)  # graph output id -> the eager function's value


def trace(fn, *args, compare_eager: bool = False) -> Traced:
    compiled = jt.compile(fn)
    for _ in range(3):  # traced and compiled for the CPU (a first optimizer step traces again: it makes state)
        compiled(*args)
        programs = [p for entries in compiled.cache.values() for p in entries]
        if programs:
            break
    (program,) = programs
    captured = {}
    plan_run = program.plan.run

    def capture(inputs, record=None, kernels=None):
        captured["inputs"] = [np.array(a, copy=True) for a in inputs]
        return plan_run(inputs, record, kernels)

    program.plan.run = capture
    state = jt.random.get_rng_state()
    compiled(*args)
    del program.plan.run
    graph = program.graph
    values = {inp.value.id: a for inp, a in zip(graph.inputs, captured["inputs"])}
    values.update({n.out.id: n.params["value"].array for n in graph.nodes if n.op == "const"})
    record: dict = {}
    program.plan.run([a.copy() for a in captured["inputs"]], record, kernels={})  # the eager kernels
    values.update(record)
    eager_outputs = {}
    if compare_eager:  # the function itself, eagerly, from the same random state
        jt.random.set_rng_state(state)
        outs = fn(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        for slot, out in zip(program.info.user_out, outs):
            eager_outputs[graph.outputs[slot].id] = out.numpy()
    order = partition(graph, lambda n: n.op != "const" and triton_codegen.fusible(n), lambda kernel: True,
                      column_sums=True)  # (as the cuda backend fuses)
    kernels = [k for k in order if isinstance(k, Kernel)]
    return Traced(graph, values, kernels, eager_outputs)


def assert_close(ours: np.ndarray, theirs: np.ndarray, ulps: int, what: str, eps: float | None = None,
                 signed_zeros: bool = False) -> None:
    """Equal for integers and bools; floats within `ulps` rounding steps (of their dtype, or `eps`)
    relative to each value and to the largest finite magnitude (row sums are added in another order),
    NaN and inf in place, and with `signed_zeros` zeros of the same sign."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, what
    if theirs.dtype.name == "bfloat16":  # (ml_dtypes' type: numpy calls its kind "V")
        eps = 2.0**-7 if eps is None else eps  # (bfloat16's machine epsilon)
        ours, theirs = ours.astype(np.float32), theirs.astype(np.float32)
    if theirs.dtype.kind != "f":
        np.testing.assert_array_equal(ours, theirs, err_msg=what)
        return
    eps = np.finfo(theirs.dtype).eps if eps is None else eps
    finite = np.abs(theirs[np.isfinite(theirs)])
    scale = finite.max() if finite.size else 0.0
    np.testing.assert_allclose(ours, theirs, rtol=ulps * eps, atol=ulps * eps * scale, err_msg=what)
    if signed_zeros:
        zeros = theirs == 0
        np.testing.assert_array_equal(np.signbit(ours[zeros]), np.signbit(theirs[zeros]), err_msg=what + ": zero signs")


def x_with_specials(n: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    """Random values with NaN, infinities, signed zeros, halves and very large and small values."""
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1.0, -1.0, 3.0, -3.0, 1e-30,
                -1e-30, 1e30, -1e30, 0.49999997, 20.0, -20.0, 100.0, -100.0, 0.625, -0.625, 1.25]
    x = np.random.default_rng(seed).normal(0, 3, n).astype(dtype)
    x[: len(specials)] = specials
    return x


def _adamw_step():
    w = jt.randn(8, 16, requires_grad=True)
    b = jt.randn(16, requires_grad=True)
    x = jt.randn(4, 8)
    opt = jt.optim.AdamW([w, b], lr=1e-2, weight_decay=0.1)

    def step(x):
        opt.zero_grad()
        ((x @ w + b).tanh() * 0.5).sum().backward()
        opt.step()

    return step, (x,)


def _cross_entropy_step():
    logits = jt.randn(12, 10, requires_grad=True)
    y = jt.randint(0, 10, (12,))

    def step(y):
        logits.grad = None
        loss = F.cross_entropy(logits * 2, y)
        loss.backward()
        return loss

    return step, (y,)


def _layer_norm_step():
    x = jt.randn(6, 40, requires_grad=True)
    w, b = jt.randn(40, requires_grad=True), jt.randn(40, requires_grad=True)
    t = jt.randn(6, 40)

    def step(t):
        for p in (x, w, b):
            p.grad = None
        (F.layer_norm(x, (40,), w, b) * t).sum().backward()

    return step, (t,)


def _specials_2d(rows: int, cols: int) -> jt.Tensor:
    x = np.random.default_rng(1).normal(0, 2, (rows, cols)).astype(np.float32)
    x[0] = -np.abs(x[0]) - 1  # all below 0 (and all above 0 for amin): a block's padding must not count
    x[6] = np.abs(x[6]) + 1
    x[1, 3] = np.nan  # a NaN in a row
    x[2, 5] = np.inf  # +inf
    x[3, :] = -np.inf  # a row of -inf
    x[4, ::3] = -np.inf  # some -inf
    x[5, 0], x[5, 1] = np.inf, -np.inf  # both
    return jt.tensor(x)


def _float_ops(x, y):
    return (x.exp(), x.log(), x.sqrt(), x.rsqrt(), x.reciprocal(), x.tanh(), x.sigmoid(), x.erf(), x.floor(),
            x.ceil(), x.trunc(), x.round(), x.relu(), x.abs(), -x, x.isnan(), x.isinf(), jt.maximum(x, y),
            jt.minimum(x, y), x.pow(y), x.abs().pow(y), x / y, x < y, x != y, x.logical_not(), jt.where(x, x, y),
            x.to(jt.int32), x.to(jt.int64), x.bool(), jt.relu(x) * 0 + x)


def _int_ops(a, b, c, m, flag, t):
    """Integer and bool ops; `flag` (bool) and `t` (float32) are 0-d: scalars in the kernel, whose
    truth values meet blocks of bools."""
    return (((a * b - a).abs() > 3).logical_xor(m), jt.where(m, a, -a), jt.maximum(a, b), jt.minimum(a, b),
            a.to(jt.int64) + c, a.to(jt.float32) * 0.5, m.to(jt.int32) + a, m.to(jt.float64), (a > b) < m,
            m.logical_or(a > 0).logical_and(b.bool()), c.logical_not(), (c * 3).to(jt.int32),
            m.logical_and(flag), m.logical_or(t > 0), m.logical_xor(t > 0), m.logical_xor(t < 0),
            (a > 0).logical_and(t), jt.where(t > 0, a, b), flag.logical_xor(m), (t < 0).logical_or(m))


def _small_int_ops(u, v, i8, i16, f):
    """uint8, int8 and int16: arithmetic that wraps, unsigned comparisons and extremes (200 > 100 as
    uint8, not as int8), and conversions among them and to and from floats (`f` in int8's range; what
    a conversion gives is compared after it has wrapped, which a store alone would hide)."""
    return (u + v, u - v, u * v, -u, u.abs(), jt.maximum(u, v), jt.minimum(u, v), u < v, u >= v,
            jt.minimum(i8, -i8), i8.abs(), i8 * i8, i8 > 0, u.to(jt.int8), i8.to(jt.uint8), u.to(jt.int16) * i16,
            i16 - 30000, i8.to(jt.float32) * 0.5, u.to(jt.float64), u.to(jt.float16), (f.to(jt.int8) * 3 > 0),
            f.to(jt.int16) * 300 > 0, (f.abs().to(jt.uint8) + 200).to(jt.float32), jt.where(u > v, u, v), u + i8,
            (u < i8).logical_and(i16 != 0), u.bool())


def _random_rows(x):
    return (x + jt.rand(4, 64) * 0.1).softmax(-1) + jt.randn(4, 1)


def _specials_pair(dtype) -> tuple[jt.Tensor, jt.Tensor]:
    return jt.tensor(x_with_specials(300, dtype)), jt.tensor(x_with_specials(300, dtype, seed=1)[::-1].copy())


@dataclass
class Case:
    name: str
    make: object  # () -> (fn, args)
    ulps: int = 8
    compare_eager: bool = False  # also against the function run eagerly from the same random state
    eps: float | None = None  # the rounding step that `ulps` counts, where not the dtype's
    signed_zeros: bool = False  # elementwise results: -0.0 where the eager kernels give -0.0


CASES = [
    Case("pointwise_broadcasts", lambda: (
        lambda x, b, s: ((x * 2 + b).relu() - x.exp()).sigmoid() * (x > 0) + s,
        (jt.randn(8, 16), jt.randn(16), jt.randn(8, 1)))),
    Case("three_loop_dims", lambda: (
        lambda x, y, z: (x * y + z).tanh() - z, (jt.randn(4, 3, 5), jt.randn(4, 1, 5), jt.randn(3, 1)))),
    Case("transposed_input", lambda: (lambda x, b: (x.t() + b) * 3, (jt.randn(16, 8), jt.randn(16)))),
    Case("float32_math", lambda: (_float_ops, _specials_pair(np.float32)), signed_zeros=True),
    Case("float64_math", lambda: (_float_ops, _specials_pair(np.float64)), signed_zeros=True),
    Case("ints_and_bools", lambda: (_int_ops, (
        jt.randint(-9, 9, (6, 7), dtype=jt.int32), jt.randint(-9, 9, (6, 7), dtype=jt.int32),
        jt.randint(-9, 9, (7,), dtype=jt.int64), jt.rand(6, 7) > 0.5, jt.tensor(True), jt.tensor(0.5)))),
    Case("small_ints", lambda: (_small_int_ops, (
        jt.randint(0, 256, (6, 7), dtype=jt.uint8), jt.randint(0, 256, (7,), dtype=jt.uint8),
        jt.randint(-128, 128, (6, 7), dtype=jt.int8), jt.randint(-2**15, 2**15, (6, 7), dtype=jt.int16),
        jt.rand(6, 7) * 250 - 125))),
    Case("scalars", lambda: (
        lambda s, t: ((s * 2 + t).exp(), (s > t).to(jt.float32) - s), (jt.tensor(0.3), jt.tensor(-1.5)))),
    Case("softmax", lambda: (lambda x: (x * 2 + 1).softmax(-1), (jt.randn(32, 64),))),
    Case("log_softmax", lambda: (lambda x: F.log_softmax(x, -1), (jt.randn(16, 50),))),
    Case("layer_norm", lambda: (
        lambda x, w, b: F.layer_norm(x, (64,), w, b), (jt.randn(8, 64), jt.randn(64), jt.randn(64)))),
    Case("rms_norm", lambda: (lambda x, w: F.rms_norm(x, (48,), w), (jt.randn(2, 5, 48), jt.randn(48)))),
    Case("cross_entropy_forward_backward", _cross_entropy_step),
    Case("layer_norm_backward", _layer_norm_step),
    Case("adamw", _adamw_step),
    Case("nan_and_inf_rows", lambda: (
        lambda x: (x.softmax(-1), F.log_softmax(x, -1), x.amax(-1, keepdim=True) + x.amin(-1, keepdim=True)),
        (_specials_2d(7, 33),))),
    Case("long_rows", lambda: (lambda x: (x - x.mean(-1, keepdim=True)).softmax(-1), (jt.randn(2, 9000),))),
    Case("dropout", lambda: (lambda x: F.dropout(x * 2, 0.3), (jt.randn(6, 50),)), compare_eager=True),
    Case("normal_noise", lambda: (
        lambda x: x + jt.randn(6, 50, dtype=jt.float64), (jt.randn(6, 50, dtype=jt.float64),)), compare_eager=True,
         eps=float(np.finfo(np.float32).eps)),  # normals are drawn in float32, with the device's log and cos
    Case("random_in_rows", lambda: (_random_rows, (jt.randn(4, 64),)), compare_eager=True),
    # sums over the leading dims (bias gradients) in the kernel that computes what they sum: rows
    # and columns that are not multiples of the tiles, a full-shape output beside the sum, a 3-d
    # loop whose two leading dims are summed (keepdim) with a broadcast input, float64
    Case("bias_gradient", lambda: (
        lambda g, h: ((g * (h > 0)), (g * (h > 0)).sum(0)), (jt.randn(37, 50), jt.randn(37, 50))), ulps=64),
    Case("column_sums_3d", lambda: (
        lambda x, b: ((x * 2 + b).tanh().sum((0, 1), keepdim=True), (x * b).sum((0, 1))),
        (jt.randn(5, 7, 24), jt.randn(24))), ulps=64),
    Case("column_sums_float64", lambda: (
        lambda x, y: (x * y - 1).sum(0), (jt.randn(70, 33, dtype=jt.float64), jt.randn(70, 33, dtype=jt.float64))),
         ulps=64),
    Case("mlp_training_step", lambda: _mlp_step()),
    # float16 and bfloat16: loaded into float32, every node rounded back, as the eager kernels do
    Case("float16_chain", lambda: (
        lambda x, b: ((x * 2 + b).relu() - x.exp()).sigmoid() + (x * x + 1).rsqrt(),
        (jt.randn(8, 96).to(jt.float16), jt.randn(96).to(jt.float16))), ulps=2),
    Case("bfloat16_chain_and_rows", lambda: (
        lambda x, b: ((x * 2 + b).tanh() * x, F.softmax(x * 2, -1), (x - b).to(jt.float32) * 3),
        (jt.randn(8, 96).to(jt.bfloat16), jt.randn(96).to(jt.bfloat16))), ulps=2),
]


def _mlp_step():
    model = jt.nn.Sequential(jt.nn.Linear(20, 48), jt.nn.GELU(), jt.nn.Linear(48, 6))
    opt = jt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step, (jt.randn(70, 20), jt.randint(0, 6, (70,)))


@functools.cache
def traced_case(name: str) -> Traced:
    case = next(c for c in [*CASES, *TUNED_CASES] if c.name == name)
    jt.manual_seed(0)
    fn, args = case.make()
    return trace(fn, *args, compare_eager=case.compare_eager)


def _triton_version() -> tuple[int, int]:
    major, minor = importlib.metadata.version("triton").split(".")[:2]
    return int(major), int(minor)


def _forms(source: triton_codegen.TritonSource, loop_shape: tuple[int, ...], interpreted: bool = False
           ) -> list[triton_codegen.Config]:
    """The default configuration and, for row kernels, the other form: rows in registers, or looped
    over blocks of 16 columns (so that short rows loop too). Triton 3.6's interpreter cannot run a
    loop to a runtime bound with numpy >= 2.3 (it takes int() of a 1-element array): there the
    looped form is left to the compiler and the GPU."""
    configs = source.configs(loop_shape)
    default = configs[0]
    if source.rows:
        if default.constexprs["ROW_IN_REGISTERS"]:
            looped = triton_codegen.Config({"ROWS": default.constexprs["ROWS"], "BLOCK": 16, "ROW_IN_REGISTERS": False})
            configs = [default, looped]
        else:
            block = 1 << (loop_shape[-1] - 1).bit_length()
            configs = [default, triton_codegen.Config({"ROWS": 1, "BLOCK": block, "ROW_IN_REGISTERS": True}, 16)]
        if interpreted and _triton_version() < (3, 7):
            configs = [c for c in configs if c.constexprs["ROW_IN_REGISTERS"]]
    return configs


def _run_kernels(case: Case, worker: _Worker, device: str, ulps: int, configs=None) -> None:
    """Each kernel of the case, in each form (or in the configurations `configs(source, loop_shape)`
    names), against the eager kernels' values of its outputs."""
    traced = traced_case(case.name)
    assert traced.kernels
    for kernel in traced.kernels:
        desc = describe(kernel)
        source = triton_codegen.render(desc)
        inputs = [(traced.values[v.id], desc.view_shape(v), desc.broadcast[k]) for k, v in enumerate(kernel.inputs)]
        outputs = [(v.shape, v.dtype.np) for v in kernel.outputs]
        forms = (configs(source, desc.loop_shape) if configs else
                 _forms(source, desc.loop_shape, interpreted=device == "interpreter"))
        for config in forms:
            results = worker.ask("launch", source, desc.loop_shape, inputs, outputs, config, True,
                                 "cpu" if device == "interpreter" else device)
            for v, ours in zip(kernel.outputs, results):
                what = f"`{format_node(v.node)}` of {source.name} with {config}"
                assert_close(ours, np.asarray(traced.values[v.id]), ulps, what, case.eps, case.signed_zeros)
                if v.id in traced.eager_outputs:
                    assert_close(ours, traced.eager_outputs[v.id], ulps, what + " against eager jitorch", case.eps)


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kernels_in_the_interpreter(case, interpreter):
    _run_kernels(case, interpreter, "interpreter", case.ulps)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kernels_compile_for_sm90(case, compiler):
    traced = traced_case(case.name)
    for kernel in traced.kernels:
        desc = describe(kernel)
        source = triton_codegen.render(desc)
        for config in _forms(source, desc.loop_shape):
            ptx = compiler.ask("compile", source, config)
            assert f".entry {source.name}(" in ptx and ".target sm_90" in ptx


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kernels_on_the_gpu(case, compiler):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    # tl.exp and tl.log are the GPU's approximate instructions: float32 results within tens of ulps
    _run_kernels(case, compiler, "cuda", max(case.ulps, 64))


# ---------------------------------------------------------------------------------------------
# the configurations the cuda launcher times (`TritonSource.configs`)

# kernels of 1 MiB (float32): large enough that the renderer offers configurations to time, small
# enough for the interpreter (about 1.7 ms per program)
TUNED_CASES = [
    Case("pointwise_1mib", lambda: (lambda x, b: (x * 2 + b).sigmoid(), (jt.randn(512, 512), jt.randn(512)))),
    Case("softmax_short_rows_1mib", lambda: (lambda x: (x * 2 + 1).softmax(-1), (jt.randn(4096, 64),))),
    Case("bias_gradient_1mib", lambda: (lambda g, h: (g * (h > 0)).sum(0), (jt.randn(1000, 300), jt.randn(1000, 300))),
         ulps=256),
]


def _other_constants(source: triton_codegen.TritonSource, loop_shape: tuple[int, ...]) -> list[triton_codegen.Config]:
    """One configuration offered per set of constants other than the default's (the interpreter
    runs no warps: configurations that differ only in theirs compute alike there)."""
    configs = source.configs(loop_shape, wide=True)  # (the wide search's: every kind the default offers, and more)
    distinct = {repr(configs[0].constexprs): None}
    for config in configs[1:]:
        distinct.setdefault(repr(config.constexprs), config)
    return [c for c in distinct.values() if c is not None]


@pytest.mark.parametrize("case", TUNED_CASES, ids=lambda c: c.name)
def test_the_other_configurations_compute_the_same_in_the_interpreter(case, interpreter):
    desc = describe(traced_case(case.name).kernels[0])
    assert _other_constants(triton_codegen.render(desc), desc.loop_shape)
    _run_kernels(case, interpreter, "interpreter", case.ulps, configs=_other_constants)


@pytest.mark.gpu
@pytest.mark.parametrize("case", TUNED_CASES, ids=lambda c: c.name)
def test_every_configuration_on_the_gpu(case, compiler):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    _run_kernels(case, compiler, "cuda", max(case.ulps, 64), configs=lambda source, shape: source.configs(shape))


def test_every_offered_configuration_compiles_for_sm90(compiler):
    """Each configuration a pointwise kernel and two row kernels are offered over shapes of every
    kind (small, pointwise up to and beyond 16 MiB, long and short rows in registers, looped rows):
    the kernel text does not depend on the loop shape, only the constants and warps do."""
    shapes = {
        "pointwise_broadcasts": [(8, 16), (512, 512), (8192, 8192)],
        "softmax": [(8192, 8192), (4096, 64), (64, 100_000)],
        "layer_norm": [(8192, 768), (1024, 2048)],
        "bias_gradient": [(37, 50), (4096, 4096), (8192, 768)],
    }
    compiled = 0
    for name, loop_shapes in shapes.items():
        source = triton_codegen.render(describe(traced_case(name).kernels[0]))
        distinct = {}
        for loop_shape in loop_shapes:
            for config in source.configs(loop_shape):
                distinct.setdefault(repr(config), config)
        for config in source.configs(loop_shapes[-1], wide=True):  # (mode="max-autotune")
            distinct.setdefault(repr(config), config)
        for config in distinct.values():
            ptx = compiler.ask("compile", source, config)
            assert f".entry {source.name}(" in ptx and ".target sm_90" in ptx, (name, config)
            # the threads asked for: `.reqntid n` (Triton 3.9) or `.maxntid n, 1, 1` (3.6)
            assert re.search(rf"\.(req|max)ntid {32 * config.num_warps}\b", ptx), (name, config)
            compiled += 1
    assert compiled >= 20


def test_sums_over_leading_dims_join_the_kernel_that_computes_what_they_sum():
    (kernel,) = traced_case("bias_gradient").kernels
    assert kernel.columns == 1 and [v.shape for v in kernel.outputs] == [(37, 50), (50,)]
    (kernel,) = traced_case("column_sums_3d").kernels
    assert kernel.columns == 2 and describe(kernel).loop_shape == (35, 24)  # the two summed dims as one
    assert any(k.columns for k in traced_case("mlp_training_step").kernels)  # the first layer's bias gradient
    # what reads a sum waits for the kernel that makes it: the centred values are another kernel's
    traced = trace(lambda x: (x * 2 - (x * 2).sum(0)).exp(), jt.randn(9, 12))
    (summing,) = [k for k in traced.kernels if k.columns]
    assert {n.op for n in summing.nodes} == {"mul", "sum"}


def test_every_fused_node_of_the_cases_is_one_the_llvm_renderer_fuses():
    """The same node set as the CPU's, but for float64 pow (exp(y log x) in float64 would be off by
    about |y log x| ulps): the GPU fuses what the CPU fuses."""
    from jitorch.codegen import llvm

    seen = set()
    for case in CASES:
        for node in traced_case(case.name).graph.nodes:
            if node.op == "const":
                continue
            expected = llvm.fusible(node) and not (node.op == "pow" and node.out.dtype.name == "float64")
            assert triton_codegen.fusible(node) == expected, format_node(node)
            seen.add(node.op)
    assert {"pow", "random", "sum", "amax", "amin", "where", "cast", "erf", "tanh", "round"} <= seen


def test_a_rendered_kernel_reads_like_a_person_wrote_it():
    traced = traced_case("layer_norm")
    (kernel,) = traced.kernels
    desc = describe(kernel)
    source = triton_codegen.render(desc)
    text = source.text
    assert source.name == desc.name and text.startswith(f"@triton.jit\ndef {desc.name}(")
    for node in kernel.nodes:  # every node under its IR line, with the user's source line
        assert f"# {format_node(node)}".rstrip() in text
    assert "test_triton_codegen.py" in text and "libdevice" not in text
    # arguments: input pointers, output pointers, sizes and strides, the row length, then constants
    names = [p.name for p in source.params]
    kinds = [p.kind for p in source.params]
    assert kinds == sorted(kinds, key=["input", "output", "n_rows", "size", "stride", "row_len"].index)
    assert names[: len(kernel.inputs)] == [f"v{v.id}_ptr" for v in kernel.inputs]
    assert source.constexprs == ("ROWS", "BLOCK", "ROW_IN_REGISTERS")
    assert list(source.signature()) == names + list(source.constexprs)
    assert source.signature()["n_rows"] == "i64" and source.signature()[names[0]] == "*fp32"


def test_sizes_strides_and_grids():
    traced = traced_case("pointwise_broadcasts")
    (kernel,) = traced.kernels
    desc = describe(kernel)
    source = triton_codegen.render(desc)
    assert desc.loop_shape == (8, 16) and source.constexprs == ("BLOCK",)
    strides = [(19 if not b[0] else 0, 0 if b[1] else 1) for b in desc.broadcast]
    args = source.runtime_args(desc.loop_shape, strides)
    scalars = [p for p in source.params if p.kind not in ("input", "output")]
    assert [p.name for p in scalars][:2] == ["n_elements", "size1"] and args[:2] == [128, 16]
    assert all(a == 19 for p, a in zip(scalars, args) if p.kind == "stride")  # only the strides it needs
    config = source.configs((4096, 1024))[0]
    assert config.constexprs == {"BLOCK": 1024} and source.launch_grid((4096, 1024), config) == (4096,)
    assert source.launch_grid((0, 16), config) == (1,)  # an empty kernel is still a valid launch
    # row kernels: rows in registers up to 32 KiB per row, several short rows per program
    rows = triton_codegen.render(describe(traced_case("softmax").kernels[0]))
    short = rows.configs((32, 64))[0]
    assert short.constexprs == {"ROWS": 32, "BLOCK": 64, "ROW_IN_REGISTERS": True}
    assert rows.launch_grid((32, 64), short) == (1,)
    wide = rows.configs((8192, 8192))[0]
    assert wide.constexprs == {"ROWS": 1, "BLOCK": 8192, "ROW_IN_REGISTERS": True} and wide.num_warps == 16
    assert rows.launch_grid((8192, 8192), wide) == (8192,)
    long = rows.configs((4, 100_000))[0]
    assert long.constexprs["ROW_IN_REGISTERS"] is False and long.constexprs["ROWS"] == 1
    assert long.options() == {"num_warps": long.num_warps, "enable_fp_fusion": False}
