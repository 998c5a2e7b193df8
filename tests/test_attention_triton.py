"""Fused (flash) attention: the `attention` and `attention_backward` primitives, their Triton kernels
(`jitorch.codegen.triton_attention`) and when `F.scaled_dot_product_attention` uses them.

On any machine:
- the CPU's kernels of both primitives (scores materialized) against PyTorch's attention and its
  gradients, in float64 and float32; double backward (create_graph=True) through the primitive;
- `F.scaled_dot_product_attention` and `nn.MultiheadAttention` stay the composite on the CPU;
- the Triton kernels in Triton's CPU interpreter, through the cuda backend's own host code (strided,
  broadcast and copied inputs, packed gradients), against PyTorch in float64, at the blocks the GPU
  uses and at 16 x 16 blocks (which take every loop of the kernels: unmasked blocks, the causal
  diagonal, query and key tails), float32 and float16. And, on a stand-in `cuda` backend that runs
  them there, `F.scaled_dot_product_attention` eager and compiled, `nn.TransformerEncoderLayer` with
  a causal `src_mask` and `is_causal=True`, and a compiled char_lm training step: the fused path is
  taken where it should be, and matches the composite. These run in a process of their own started
  with TRITON_INTERPRET=1 (the interpreter is chosen when Triton is imported);
- every kernel variant compiles for sm_90 (a sample here, all of them in the `slow` test).

Marked `gpu` (an NVIDIA GPU with CuPy and a CUDA build of PyTorch): eager and compiled attention on
cuda against PyTorch on the GPU, forward and backward, causal or not, float32 at "highest" and
"high", float16 and bfloat16; the char_lm step on cuda through the fused path; timings of a GPT-sized
attention beside PyTorch's (printed with -s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import jitorch as jt
import jitorch.nn.functional as F
from jitorch.backends.cpu import kernels as cpu_kernels
from jitorch.dispatch import dispatch
from jitorch.primitives import PRIMS, attention_gradients

_IN_INTERPRETER = "JITORCH_ATTENTION_INTERPRETER"  # "sample" or "all" in the interpreter's process
_REPO = Path(__file__).resolve().parent.parent
_DOUBLE = np.float64


def _inputs(rng, b, h, l, s, e, ev, dtype=np.float32):
    q, k, v = (rng.standard_normal(shape).astype(dtype) for shape in ((b, h, l, e), (b, h, s, e), (b, h, s, ev)))
    grad_out = rng.standard_normal((b, h, l, ev)).astype(dtype)
    return q, k, v, grad_out


def _torch_reference(q, k, v, grad_out, is_causal, scale):
    """PyTorch's attention and its input gradients, in float64."""
    qt, kt, vt = (torch.tensor(np.asarray(x, _DOUBLE), requires_grad=True) for x in (q, k, v))
    out = TF.scaled_dot_product_attention(qt, kt, vt, is_causal=is_causal, scale=scale)
    out.backward(torch.tensor(np.asarray(grad_out, _DOUBLE)))
    return out.detach().numpy(), qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy()


def _assert_close(got, expected, tol, what):
    """Within `tol` of the expected output's largest magnitude (attention averages: its error scales
    with the values, not with each element)."""
    got = np.asarray(got, _DOUBLE)
    scale = max(np.abs(expected).max(), 1e-30)
    err = np.abs(got - expected).max() / scale
    assert err <= tol, f"{what}: largest error {err:.3g} of the largest magnitude {scale:.3g} (allowed {tol:.3g})"


def _unpack(packed, q, k, v):
    return attention_gradients(np.asarray(packed), q.shape, k.shape, v.shape)


def _rejoins_as_view(g: np.ndarray) -> bool:
    """Whether gradient g (B, H, length, E) goes back to a (B, length, H * E) projection's layout
    (a permute, a reshape) as a view of its memory, as `attention_gradients` lays them out."""
    b, h, length, e = g.shape
    return np.shares_memory(g.swapaxes(1, 2).reshape(b, length, h * e), g)


def test_self_attention_gradients_are_one_projection_gradient():
    """q, k and v of one shape: dq, dk and dv lie side by side as (B, length, 3, H, E), so their
    concatenation along a fused projection's last dim is the packed buffer itself."""
    b, h, length, e = 2, 3, 5, 4
    packed = np.arange(3 * b * h * length * e, dtype=np.float32)
    grads = attention_gradients(packed, (b, h, length, e), (b, h, length, e), (b, h, length, e))
    joined = np.concatenate([g.swapaxes(1, 2).reshape(b, length, h * e) for g in grads], axis=-1)
    np.testing.assert_array_equal(joined.ravel(), packed)
    sizes = (b * h * length * e, b * h * 7 * 2, b * h * 7 * 2)  # (cross-attention: one after another)
    dq, dk, dv = attention_gradients(packed[:sum(sizes)], (b, h, length, e), (b, h, 7, 2), (b, h, 7, 2))
    np.testing.assert_array_equal(dk.swapaxes(1, 2).ravel(), packed[sizes[0]:sizes[0] + sizes[1]])
    assert dq.shape == (b, h, length, e) and dv.shape == (b, h, 7, 2)


SHAPES = [  # (B, H, L, S, E, Ev)
    (2, 2, 37, 37, 16, 16),
    (2, 2, 37, 37, 64, 64),
    (1, 2, 37, 53, 48, 32),
    (1, 2, 53, 37, 32, 48),
]


# ---------------------------------------------------------------------------------------------
# the CPU's kernels of the primitives


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES[::2] + SHAPES[3:], ids=str)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)], ids=["float64", "float32"])
def test_the_cpu_kernels_of_the_primitives_match_torch(shape, is_causal, dtype, tol):
    b, h, l, s, e, ev = shape
    q, k, v, grad_out = _inputs(np.random.default_rng(0), b, h, l, s, e, ev, dtype)
    scale = 0.3
    out, dq, dk, dv = _torch_reference(q, k, v, grad_out, is_causal, scale)
    params = {"is_causal": is_causal, "scale": scale}
    got = cpu_kernels.KERNELS["attention"](q, k, v, **params)
    assert got.dtype == dtype and got.shape == out.shape
    _assert_close(got, out, tol, "out")
    packed = cpu_kernels.KERNELS["attention_backward"](q, k, v, got, grad_out, **params)
    assert packed.dtype == dtype and packed.shape == (q.size + k.size + v.size,)
    for name, g, expected in zip(("dq", "dk", "dv"), _unpack(packed, q, k, v), (dq, dk, dv)):
        _assert_close(g, expected, tol, name)
        assert _rejoins_as_view(g)  # (the layout every backend packs)


def test_the_primitives_autograd_and_double_backward_match_torch():
    q, k, v, grad_out = _inputs(np.random.default_rng(1), 1, 2, 5, 7, 4, 3, np.float64)
    qj, kj, vj = (jt.tensor(x, requires_grad=True) for x in (q, k, v))
    out = dispatch(PRIMS["attention"], (qj, kj, vj), {"is_causal": True, "scale": 0.5})
    # a gradient that is itself differentiable: the vjp's ops, not the backward primitive
    grads = jt.autograd.grad(out, (qj, kj, vj), grad_outputs=jt.tensor(grad_out), create_graph=True)
    (sum((g * g).sum() for g in grads)).backward()

    qt, kt, vt = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    out_t = TF.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=0.5)
    grads_t = torch.autograd.grad(out_t, (qt, kt, vt), grad_outputs=torch.tensor(grad_out), create_graph=True)
    (sum((g * g).sum() for g in grads_t)).backward()
    np.testing.assert_allclose(out.detach().numpy(), out_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    for g, gt in zip(grads, grads_t):
        np.testing.assert_allclose(g.detach().numpy(), gt.detach().numpy(), rtol=1e-10, atol=1e-12)
    for x, xt in zip((qj, kj, vj), (qt, kt, vt)):
        np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-11)


def test_the_primitives_shape_rules_name_the_shapes_and_dtypes_they_refuse():
    def rule(*shapes, dtypes=(np.float32,) * 3, name="attention"):
        arrays = [np.zeros(shape, dtype) for shape, dtype in zip(shapes, dtypes + (np.float32,) * 2)]
        return PRIMS[name].infer(*arrays, is_causal=False, scale=1.0)

    assert rule((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 6)) == ((1, 2, 3, 6), np.float32)
    assert rule((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 6), (1, 2, 3, 6), (1, 2, 3, 6),
                name="attention_backward") == ((24 + 40 + 60,), np.float32)
    with pytest.raises(ValueError, match=r"same embedding size.*\(1, 2, 3, 4\).*\(1, 2, 5, 8\)"):
        rule((1, 2, 3, 4), (1, 2, 5, 8), (1, 2, 5, 4))
    with pytest.raises(ValueError, match="share their"):
        rule((1, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4))
    with pytest.raises(ValueError, match="must be 4-D"):
        rule((2, 3, 4), (2, 5, 4), (2, 5, 4))
    with pytest.raises(TypeError, match="one floating dtype"):
        rule((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4), dtypes=(np.float32, np.float64, np.float32))
    with pytest.raises(ValueError, match="output shape"):
        rule((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 6), (1, 2, 3, 4), (1, 2, 3, 6), name="attention_backward")


def count_attention_calls(monkeypatch, kernels: dict) -> dict[str, int]:
    """Make a backend's attention kernels (`kernels`, its table) count their calls; the counts."""
    ran = {"attention": 0, "attention_backward": 0}
    for name in ran:
        kernel = kernels[name]

        def counting(*arrays, _name=name, _kernel=kernel, **params):
            ran[_name] += 1
            return _kernel(*arrays, **params)

        monkeypatch.setitem(kernels, name, counting)
    return ran


@pytest.fixture
def counted_cpu_attention(monkeypatch):
    """The CPU's attention kernels, counting their calls."""
    return count_attention_calls(monkeypatch, cpu_kernels.KERNELS)


def test_on_the_cpu_attention_stays_the_composite(counted_cpu_attention):
    q = jt.randn(2, 3, 8, 16, requires_grad=True)
    F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    layer = jt.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    mask = jt.triu(jt.full((8, 8), float("-inf")), diagonal=1)

    @jt.compile
    def step(x):
        loss = layer(x, src_mask=mask, is_causal=True).sum() + F.scaled_dot_product_attention(x, x, x).sum()
        loss.backward()
        return loss

    step(jt.randn(2, 8, 16))
    assert counted_cpu_attention == {"attention": 0, "attention_backward": 0}


# ---------------------------------------------------------------------------------------------
# the Triton kernels in the interpreter, in a process of their own


@pytest.mark.skipif(bool(os.environ.get(_IN_INTERPRETER)), reason="(this is the interpreter's process)")
def test_the_kernels_in_the_triton_interpreter():
    _run_in_the_interpreter("sample")


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get(_IN_INTERPRETER)), reason="(this is the interpreter's process)")
def test_the_kernels_in_the_triton_interpreter_all_cases():
    _run_in_the_interpreter("all")


def _run_in_the_interpreter(which: str) -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", _IN_INTERPRETER: which, "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-m", "", "-k", "interpreted",
                           "-p", "no:cacheprovider"], capture_output=True, text=True, env=env, cwd=_REPO,
                          check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
    assert " passed" in done.stdout and " failed" not in done.stdout, done.stdout[-3000:]


if os.environ.get(_IN_INTERPRETER):
    from jitorch import backends
    from jitorch import dispatch as dispatch_module
    from jitorch.codegen import triton_attention as plan
    from jitorch.device import Device
    from tests import attention_interpreter as interpreted

    _ALL = os.environ[_IN_INTERPRETER] == "all"
    _SMALL_BLOCKS = plan.BlockConfig(16, 16, 1, 1)

    @pytest.fixture(params=["gpu_blocks", "16x16_blocks"] if _ALL else ["16x16_blocks"])
    def blocks(request, monkeypatch):
        """The blocks the GPU runs with, or 16 x 16 ones, which make a 37-long attention take every
        loop of the kernels (the tests through jitorch below run the GPU's blocks)."""
        if request.param == "16x16_blocks":
            monkeypatch.setattr(plan, "block_config", lambda *args: _SMALL_BLOCKS)
        return request.param

    _CASES = [(shape, causal) for shape in SHAPES for causal in (False, True)]

    @pytest.mark.parametrize("shape,is_causal", _CASES if _ALL else _CASES[::3], ids=str)
    def test_interpreted_kernels_match_torch(shape, is_causal, blocks):
        b, h, l, s, e, ev = shape
        q, k, v, grad_out = _inputs(np.random.default_rng(2), b, h, l, s, e, ev)
        scale = 1 / np.sqrt(e)
        out, dq, dk, dv = _torch_reference(q, k, v, grad_out, is_causal, scale)
        got = interpreted.attention(q, k, v, is_causal=is_causal, scale=scale)
        _assert_close(got, out, 2e-6, "out")
        packed = interpreted.attention_backward(q, k, v, got, grad_out, is_causal=is_causal, scale=scale)
        for name, g, expected in zip(("dq", "dk", "dv"), _unpack(packed, q, k, v), (dq, dk, dv)):
            _assert_close(g, expected, 5e-6, name)
        # heads inside: back in the projections' (B, length, H * E) layout by a view, not a copy
        assert got.swapaxes(1, 2).flags.c_contiguous
        assert all(_rejoins_as_view(g) for g in _unpack(packed, q, k, v))

    def test_interpreted_kernels_read_strided_broadcast_and_copied_inputs(blocks):
        """q in a (B, L, H, E) layout viewed as (B, H, L, E) (as MultiheadAttention's heads), k
        broadcast over the batch (stride 0), v with a strided head dim (copied first)."""
        rng = np.random.default_rng(3)
        q = rng.standard_normal((2, 29, 3, 32)).astype(np.float32).transpose(0, 2, 1, 3)
        k = np.broadcast_to(rng.standard_normal((1, 3, 41, 32)).astype(np.float32), (2, 3, 41, 32))
        v = rng.standard_normal((2, 3, 41, 48)).astype(np.float32)[..., ::2]
        grad_out = rng.standard_normal((2, 29, 3, 24)).astype(np.float32).transpose(0, 2, 1, 3)
        out, dq, dk, dv = _torch_reference(q, k, v, grad_out, True, 0.2)
        got = interpreted.attention(q, k, v, is_causal=True, scale=0.2)
        _assert_close(got, out, 2e-6, "out")
        packed = interpreted.attention_backward(q, k, v, got, grad_out, is_causal=True, scale=0.2)
        for name, g, expected in zip(("dq", "dk", "dv"), _unpack(packed, q, k, v), (dq, dk, dv)):
            _assert_close(g, expected, 5e-6, name)

    @pytest.mark.parametrize("is_causal", [False, True] if _ALL else [True])
    def test_interpreted_kernels_in_float16(is_causal):
        q, k, v, grad_out = _inputs(np.random.default_rng(4), 1, 2, 45, 70, 64, 64, np.float16)
        out, dq, dk, dv = _torch_reference(q, k, v, grad_out, is_causal, 0.125)
        got = interpreted.attention(q, k, v, is_causal=is_causal, scale=0.125)
        assert got.dtype == np.float16
        _assert_close(got, out, 4e-3, "out")
        packed = interpreted.attention_backward(q, k, v, got, grad_out, is_causal=is_causal, scale=0.125)
        for name, g, expected in zip(("dq", "dk", "dv"), _unpack(packed, q, k, v), (dq, dk, dv)):
            _assert_close(g, expected, 1e-2, name)

    # --- jitorch on a `cuda` device whose attention is the interpreted kernels -----------------

    @pytest.fixture
    def interpreted_cuda(monkeypatch):
        backend = interpreted.InterpretedAttentionBackend()
        monkeypatch.setitem(backends._BACKENDS, "cuda", backend)
        monkeypatch.setattr(Device, "_interned", dict(Device._interned))  # forget any earlier cuda device
        monkeypatch.setattr(dispatch_module, "_backends", {})  # and the backend dispatch found for it
        return backend

    def _sdpa_and_grads(lib, functional, device, q, k, v, grad_out, compiled=False, **kwargs):
        xs = [lib.tensor(x, device=device, requires_grad=True) for x in (q, k, v)]

        def attend(a, b, c):
            return functional.scaled_dot_product_attention(a, b, c, **kwargs)

        out = (jt.compile(attend) if compiled else attend)(*xs)  # (compiled: its backward is compiled too)
        out.backward(lib.tensor(grad_out, device=device))
        return [t.detach().cpu().numpy().astype(_DOUBLE) for t in (out, *(x.grad for x in xs))]

    _SDPA = [(False, True), (True, False)] + ([(False, False), (True, True)] if _ALL else [])

    @pytest.mark.parametrize("compiled,is_causal", _SDPA, ids=str)
    def test_interpreted_sdpa_takes_the_fused_path_on_cuda(interpreted_cuda, is_causal, compiled):
        # 3-D inputs (batch, length, embedding) and a key and value broadcast over the batch
        rng = np.random.default_rng(5)
        q, k, v = rng.standard_normal((3, 21, 16)), rng.standard_normal((1, 30, 16)), rng.standard_normal((1, 30, 8))
        q, k, v = (x.astype(np.float32) for x in (q, k, v))
        grad_out = rng.standard_normal((3, 21, 8)).astype(np.float32)
        got = _sdpa_and_grads(jt, F, "cuda", q, k, v, grad_out, compiled, is_causal=is_causal)
        expected = _sdpa_and_grads(torch, TF, "cpu", *(x.astype(_DOUBLE) for x in (q, k, v, grad_out)),
                                   is_causal=is_causal)
        assert interpreted_cuda.ran == {"attention": 1, "attention_backward": 1}
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
            _assert_close(a, b, 5e-6, name)

    def test_interpreted_sdpa_with_a_mask_or_dropout_stays_the_composite(interpreted_cuda):
        q = jt.randn(2, 2, 9, 16, device="cuda")
        F.scaled_dot_product_attention(q, q, q, attn_mask=jt.ones(9, 9, dtype=jt.bool, device="cuda"))
        F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
        F.scaled_dot_product_attention(q.double(), q.double(), q.double())
        assert interpreted_cuda.ran == {"attention": 0, "attention_backward": 0}
        F.scaled_dot_product_attention(q, q, q)
        assert interpreted_cuda.ran["attention"] == 1

    def test_interpreted_encoder_layer_takes_the_causal_hint(interpreted_cuda):
        """`src_mask` with `is_causal=True`, as examples/char_lm.py passes them, is the fused causal
        attention; with a key padding mask merged in, or when the weights are asked for, the mask is
        applied as given. Outputs and gradients match PyTorch's layer with the same weights."""
        torch.manual_seed(0)
        t_layer = torch.nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0, batch_first=True,
                                                   norm_first=True)
        layer = jt.nn.TransformerEncoderLayer(32, 2, dim_feedforward=64, dropout=0.0, batch_first=True,
                                              norm_first=True)
        layer.load_state_dict({name: jt.tensor(p.detach().numpy()) for name, p in t_layer.state_dict().items()})
        layer.to("cuda")
        x = np.random.default_rng(6).standard_normal((2, 13, 32)).astype(np.float32)
        mask = np.triu(np.full((13, 13), -np.inf, np.float32), 1)

        xj = jt.tensor(x, device="cuda", requires_grad=True)
        out = layer(xj, src_mask=jt.tensor(mask, device="cuda"), is_causal=True)
        out.sum().backward()
        assert interpreted_cuda.ran == {"attention": 1, "attention_backward": 1}
        xt = torch.tensor(x, requires_grad=True)
        out_t = t_layer(xt, src_mask=torch.tensor(mask), is_causal=True)
        out_t.sum().backward()
        _assert_close(out.detach().cpu().numpy(), out_t.detach().numpy().astype(_DOUBLE), 1e-5, "out")
        _assert_close(xj.grad.cpu().numpy(), xt.grad.numpy().astype(_DOUBLE), 1e-5, "dx")

        padding = jt.tensor(np.arange(13)[None, :] >= np.array([[13], [9]]), device="cuda")
        layer(xj, src_mask=jt.tensor(mask, device="cuda"), src_key_padding_mask=padding, is_causal=True)
        layer.self_attn(xj, xj, xj, attn_mask=jt.tensor(mask, device="cuda"), is_causal=True, need_weights=True)
        assert interpreted_cuda.ran["attention"] == 1

    def test_interpreted_char_lm_compiled_step_takes_the_fused_path(interpreted_cuda):
        sys.path.insert(0, str(_REPO / "examples"))
        import char_lm

        config = char_lm.Config(vocab_size=20, block_size=16, d_model=32, n_head=2, n_layer=1, batch_size=2)
        rng = np.random.default_rng(7)
        batches = [(rng.integers(0, 20, (2, 16)), rng.integers(0, 20, (2, 16))) for _ in range(2)]
        losses = {}
        for device in ("cpu", "cuda"):
            jt.manual_seed(0)
            model = char_lm.build_model(config, device=device)
            optimizer, scheduler = char_lm.make_optimizer(model, config, total_steps=10)
            step = char_lm.make_train_step(model, optimizer, scheduler, compiled=True)
            losses[device] = [step(inputs, targets) for inputs, targets in batches]
        assert interpreted_cuda.ran == {"attention": 2, "attention_backward": 2}  # one layer, two steps
        np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# ahead-of-time compilation for sm_90


def _compiles_for_sm90(found):
    from tests.attention_interpreter import compile_for_sm90

    results = compile_for_sm90(found)
    assert len(results) == len(found)
    for result in results:  # sm_90: 227 KiB of shared memory per program at most
        assert result["shared"] <= 227 * 1024, result


@pytest.mark.skipif(bool(os.environ.get(_IN_INTERPRETER)), reason="(the interpreter's process)")
def test_the_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    from tests.attention_interpreter import variants

    _compiles_for_sm90(variants(((64, 64),), (("bfloat16", "high"),), (True,)))


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get(_IN_INTERPRETER)), reason="(the interpreter's process)")
def test_every_kernel_variant_compiles_for_sm90():
    pytest.importorskip("triton")
    from tests.attention_interpreter import variants

    head_dims = ((16, 16), (32, 32), (48, 48), (64, 64), (96, 96), (128, 128), (64, 32), (32, 128))
    precisions = (("float32", "highest"), ("float32", "high"), ("float16", "high"), ("bfloat16", "high"))
    _compiles_for_sm90(variants(head_dims, precisions))


# ---------------------------------------------------------------------------------------------
# on an NVIDIA GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not (jt.cuda.is_available() and torch.cuda.is_available()),
                                reason="needs an NVIDIA GPU with CuPy (jitorch) and CUDA PyTorch")


@pytest.fixture
def counted_cuda_attention(monkeypatch):
    """The cuda backend's attention kernels, counting their calls; float32 matmul precision restored."""
    from jitorch.backends.cuda import kernels as cuda_kernels

    ran = count_attention_calls(monkeypatch, cuda_kernels.KERNELS)
    saved = jt.backends.get_float32_matmul_precision()
    yield ran
    jt.backends.set_float32_matmul_precision(saved)


_GPU_DTYPES = {  # name: (jitorch dtype, float32 matmul precision, tolerance of the largest magnitude)
    "float32_highest": (jt.float32, "highest", 2e-5),
    "float32_high": (jt.float32, "high", 5e-3),
    "float16": (jt.float16, "high", 5e-3),
    "bfloat16": (jt.bfloat16, "high", 4e-2),
}


@gpu
@needs_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("precision", list(_GPU_DTYPES))
@pytest.mark.parametrize("shape", [(2, 3, 200, 200, 64, 64), (1, 4, 77, 130, 96, 48), (2, 2, 300, 100, 128, 128)],
                         ids=str)
def test_sdpa_on_cuda_matches_torch(counted_cuda_attention, shape, precision, is_causal, compiled):
    b, h, l, s, e, ev = shape
    dtype, matmul_precision, tol = _GPU_DTYPES[precision]
    jt.backends.set_float32_matmul_precision(matmul_precision)
    q, k, v, grad_out = _inputs(np.random.default_rng(8), b, h, l, s, e, ev)
    xs = [jt.tensor(x, device="cuda").to(dtype).requires_grad_() for x in (q, k, v)]
    g = jt.tensor(grad_out, device="cuda").to(dtype)

    def attend(a, b_, c):
        return F.scaled_dot_product_attention(a, b_, c, is_causal=is_causal)

    out = (jt.compile(attend) if compiled else attend)(*xs)  # (compiled: its backward is compiled too)
    out.backward(g)
    assert counted_cuda_attention == {"attention": 1, "attention_backward": 1}
    # PyTorch on the same GPU in float64, from the same (rounded) inputs
    rounded = [x.detach().cpu().double().numpy() for x in xs]
    ts = [torch.tensor(x, device="cuda", requires_grad=True) for x in rounded]
    out_t = TF.scaled_dot_product_attention(*ts, is_causal=is_causal)
    out_t.backward(torch.tensor(g.cpu().double().numpy(), device="cuda"))
    got = [out, *(x.grad for x in xs)]
    assert out.dtype is dtype and all(g.dtype is dtype for g in got)
    for name, a, t in zip(("out", "dq", "dk", "dv"), got, (out_t, *(x.grad for x in ts))):
        _assert_close(a.detach().cpu().double().numpy(), t.detach().cpu().numpy(), tol, name)


@gpu
@needs_cuda
def test_char_lm_step_on_cuda_takes_the_fused_path(counted_cuda_attention):
    sys.path.insert(0, str(_REPO / "examples"))
    import char_lm

    config = char_lm.Config()
    rng = np.random.default_rng(9)
    corpus = char_lm.CharCorpus()
    batches = [corpus.batch("train", config.batch_size, config.block_size, rng) for _ in range(4)]
    losses = {}
    for device in ("cpu", "cuda"):
        jt.manual_seed(0)
        model = char_lm.build_model(config, device=device)
        optimizer, scheduler = char_lm.make_optimizer(model, config, total_steps=100)
        step = char_lm.make_train_step(model, optimizer, scheduler, compiled=True)
        losses[device] = [step(inputs, targets) for inputs, targets in batches]
    assert counted_cuda_attention["attention"] == config.n_layer * len(batches)
    assert counted_cuda_attention["attention_backward"] == config.n_layer * len(batches)
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-4)


@gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["float32_highest", "float32_high", "bfloat16"])
def test_gpt_sized_attention_time_beside_torch(counted_cuda_attention, precision):
    """Batch 8, 12 heads, T = 1024, head dim 64, causal: forward and backward, medians of
    `triton.testing.do_bench` (printed with -s), with the values checked against PyTorch's."""
    import triton.testing

    dtype, matmul_precision, tol = _GPU_DTYPES[precision]
    jt.backends.set_float32_matmul_precision(matmul_precision)
    torch_dtype = {jt.float32: torch.float32, jt.bfloat16: torch.bfloat16}[dtype]
    q, k, v, grad_out = _inputs(np.random.default_rng(10), 8, 12, 1024, 1024, 64, 64)
    xs = [jt.tensor(x, device="cuda").to(dtype).requires_grad_() for x in (q, k, v)]
    g = jt.tensor(grad_out, device="cuda").to(dtype)
    ts = [torch.tensor(x, device="cuda", dtype=torch_dtype, requires_grad=True) for x in (q, k, v)]
    gt = torch.tensor(grad_out, device="cuda", dtype=torch_dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = matmul_precision != "highest"
    try:
        def ours():
            F.scaled_dot_product_attention(*xs, is_causal=True).backward(g)

        def theirs():
            TF.scaled_dot_product_attention(*ts, is_causal=True).backward(gt)

        ours()
        theirs()
        _assert_close(xs[0].grad.cpu().double().numpy(), ts[0].grad.cpu().double().numpy(), 5 * tol, "dq")
        times = {name: triton.testing.do_bench(fn) for name, fn in (("jitorch", ours), ("torch", theirs))}
        start = time.perf_counter()
        F.scaled_dot_product_attention(*xs, is_causal=True)
        launch_us = (time.perf_counter() - start) * 1e6
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    print(f"\nattention 8x12x1024x64 causal, {precision}, forward + backward: jitorch {times['jitorch']:.3f} ms, "
          f"PyTorch {times['torch']:.3f} ms; one eager forward call {launch_us:.0f} us of host time")
