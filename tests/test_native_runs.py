"""Native runs on the CPU: a compiled program's fused kernels, products and sums called in turn by one
generated function, with the views between them folded into offsets and strides. Each case checks
that runs were made and compares against the same program run step by step, against eager jitorch
and against PyTorch."""

import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch.backends.cpu import native
from jitorch.runtime.native_runs import NativeRun

pytestmark = pytest.mark.skipif(native.blas() is None, reason="numpy's CBLAS library was not found")


def plan_of(compiled):
    (program,) = [p for entries in compiled.cache.values() for p in entries]
    return program.plan


def runs_of(compiled) -> list[NativeRun]:
    return [s for s in plan_of(compiled).run_steps if type(s) is NativeRun]


def attention_block(x, w_qkv, w_out, heads: int):
    """Self-attention written with reshapes, permutes and batched products (transposed operands)."""
    b, t, e = x.shape
    qkv = (x.reshape(b * t, e) @ w_qkv).reshape(b, t, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = (q @ k.transpose(-1, -2)) * (e // heads) ** -0.5
    out = scores.softmax(-1) @ v
    return (out.permute(0, 2, 1, 3).reshape(b * t, e) @ w_out).reshape(b, t, e) + x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_attention_block_forward_and_backward_runs_natively_as_eager_and_torch(dtype):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(dtype) * 0.3 for s in [(4, 16, 32), (32, 96), (32, 32)]]

    def step(x, w_qkv, w_out):
        loss = attention_block(x, w_qkv, w_out, heads=4).square().mean()
        loss.backward()
        return loss

    def run(lib, compiled: bool):
        tensors = [lib.tensor(a, requires_grad=True) for a in arrays]
        fn = jt.compile(step) if compiled else step
        loss = fn(*tensors)
        return fn, loss.item(), [t.grad.numpy() for t in tensors]

    compiled, loss, grads = run(jt, True)
    assert runs_of(compiled) and sum(len(r.names) for r in runs_of(compiled)) >= 8
    kinds = {name for r in runs_of(compiled) for name in r.names}
    assert "matmul" in kinds and any(name.startswith("fused") for name in kinds)
    _, eager_loss, eager_grads = run(jt, False)
    _, torch_loss, torch_grads = run(torch, False)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, eager_loss, rtol=rtol)
    np.testing.assert_allclose(loss, torch_loss, rtol=10 * rtol)
    for g, e, t in zip(grads, eager_grads, torch_grads):
        scale = np.abs(t).max()
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale)
        np.testing.assert_allclose(g, t, rtol=10 * rtol, atol=10 * rtol * scale)


def test_products_broadcast_over_batches_and_bias_gradients_sum_by_blas():
    """A 3-d input times a 2-d weight broadcast over the batch, a 4-d product whose second operand
    is broadcast over one batch dim, and a bias gradient over 16384 rows (a sum of leading dims)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 2048, 16)).astype(np.float32)
    w = rng.standard_normal((16, 24)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    p = rng.standard_normal((3, 1, 5, 7)).astype(np.float32)
    q = rng.standard_normal((3, 4, 7, 2)).astype(np.float32)

    def f(x, w, b, p, q):
        y = (x @ w + b).relu()
        y.sum().backward()
        return (p @ q).exp(), y * 2

    def run(lib, compiled: bool):
        tensors = [lib.tensor(a, requires_grad=i in (1, 2)) for i, a in enumerate((x, w, b, p, q))]
        fn = jt.compile(f) if compiled else f
        outs = fn(*tensors)
        return fn, [o.detach().numpy() for o in outs] + [tensors[1].grad.numpy(), tensors[2].grad.numpy()]

    compiled, got = run(jt, True)
    assert {"matmul", "sum"} <= {name for r in runs_of(compiled) for name in r.names}
    _, eager = run(jt, False)
    _, expected = run(torch, False)
    for g, e, t in zip(got, eager, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(t).max())
        np.testing.assert_allclose(g, t, rtol=1e-4, atol=1e-4 * np.abs(t).max())


def _count_native_calls(monkeypatch) -> list[bool]:
    calls: list[bool] = []
    run = NativeRun.run

    def counted(self, *args):
        done = run(self, *args)
        calls.append(done)
        return done

    monkeypatch.setattr(NativeRun, "run", counted)
    return calls


def test_a_strided_input_is_read_from_a_copy(monkeypatch):
    """A run assumes C-contiguous inputs; a transposed or sliced array passed in (a batch cut from
    a larger array) is copied first and the run still runs natively."""
    calls = _count_native_calls(monkeypatch)
    rng = np.random.default_rng(2)

    def f(x, w):
        return ((x @ w).tanh() @ w.T).sigmoid() * 3

    compiled = jt.compile(f)
    w = jt.tensor(rng.standard_normal((6, 6)).astype(np.float32))
    base = rng.standard_normal((6, 10)).astype(np.float32)
    tall = rng.standard_normal((20, 6)).astype(np.float32)
    for x in (jt.tensor(base).T, jt.tensor(tall)[::2], jt.tensor(base.T.copy())):  # all (10, 6)
        np.testing.assert_allclose(compiled(x, w).numpy(), f(x, w).numpy(), rtol=1e-6, atol=1e-6)
    assert calls == [True, True, True]


def test_a_strided_input_written_in_place_runs_the_steps_one_by_one(monkeypatch):
    """An update written straight into its input's buffer cannot go to a copy: with a strided
    parameter the run's steps run in Python (and the parameter is updated all the same)."""
    calls = _count_native_calls(monkeypatch)
    rng = np.random.default_rng(3)

    def f(p, x):
        with jt.no_grad():
            p.mul_(0.9).add_((x @ x).tanh())
        return (p * 2).exp()

    compiled = jt.compile(f)
    for strided in (True, False):
        base = rng.standard_normal((6, 6)).astype(np.float32)
        p, p_eager = jt.tensor(base).T if strided else jt.tensor(base.T.copy()), jt.tensor(base.T.copy())
        x = jt.tensor(rng.standard_normal((6, 6)).astype(np.float32))
        np.testing.assert_allclose(compiled(p, x).numpy(), f(p_eager, x).numpy(), rtol=1e-6)
        np.testing.assert_allclose(p.numpy(), p_eager.numpy(), rtol=1e-6)
    assert calls == [False, True]


def test_native_runs_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("JITORCH_NATIVE_RUNS", "0")
    compiled = jt.compile(lambda x, w: ((x @ w).tanh() @ w).exp())
    x = jt.randn(4, 4)
    np.testing.assert_allclose(compiled(x, x).numpy(), ((x @ x).tanh() @ x).exp().numpy(), rtol=1e-6)
    assert not runs_of(compiled)


def test_the_generated_function_reads_like_the_steps_it_runs():
    compiled = jt.compile(lambda x, w: (((x @ w).tanh() * 2) @ w.T).exp() + 1)
    compiled(jt.randn(4, 8), jt.randn(8, 8))
    (run,) = runs_of(compiled)
    lines = run.fn.source.splitlines()
    assert len(lines) == len(run.names) == 4  # two products, two kernels, in order
    assert lines[0].startswith("gemm float32 NN 4x8x8") and lines[2].startswith("gemm float32 NT 4x8x8"), lines
    assert lines[1].startswith("fused_tanh_mul") and lines[3].startswith("fused_exp_add"), lines


def test_a_kernel_reading_a_permuted_or_sliced_value_reads_it_in_place():
    """Attention's heads: q = (x @ w) viewed (B, T, H, E) and permuted to (B, H, T, E), then scaled.
    The scaling kernel keeps the dims the permute took apart (its loop is not one flat run over
    memory the view does not have), so the launcher needs no copy and the native run takes it."""
    from jitorch.ir.fusion import describe

    def f(x, w):
        q = (x @ w).reshape(2, 8, 4, 6).permute(0, 2, 1, 3) * 0.5
        k = (x @ w)[:, 6:18] * 2.0  # a slice of the last dim: rows of 12 in rows of 24
        return (q @ q.transpose(-1, -2)).exp(), k.tanh()

    x, w = jt.randn(16, 24), jt.randn(24, 24)
    compiled = jt.compile(f)
    got = compiled(x, w)
    for g, e in zip(got, f(x, w)):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)
    loops = {describe(k.kernel).loop_shape for k in plan_of(compiled).kernels}
    assert (2, 4, 8, 6) in loops and (16, 12) in loops, loops  # not (384,) nor (192,)
    ran = [name for run in runs_of(compiled) for name in run.names]
    assert sum(name.startswith("fused_mul") for name in ran) == 2, ran


def test_calls_from_several_threads_at_once_each_get_their_own_buffers():
    """Each call of a plan takes its own set of planned buffers and its own table of roots."""
    import threading

    def f(x, w):
        h = ((x @ w).tanh() * 2 + 1) @ w.T
        return (h.softmax(-1) * 3).sum(0)

    compiled = jt.compile(f)
    w = jt.randn(32, 32)
    xs = [jt.randn(64, 32) for _ in range(4)]
    compiled(xs[0], w)
    expected = [f(x, w).numpy() for x in xs]
    results: dict[int, list] = {k: [] for k in range(4)}

    def work(k: int) -> None:
        for _ in range(50):
            results[k].append(compiled(xs[k], w).numpy())

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs_of(compiled)
    for k in range(4):
        for got in results[k]:
            np.testing.assert_allclose(got, expected[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_reshape_numpy_copies_runs_as_a_block_copy(dtype):
    """minGPT's attention output: (B, H, T, E) permuted to (B, T, H, E) and reshaped to (B, T, C), a
    reshape numpy must copy, runs in the native run as a copy of contiguous blocks."""

    def f(x, w):
        b, t, c = x.shape
        y = (x @ w).reshape(b, t, 4, c // 4).permute(0, 2, 1, 3).exp()  # (B, H, T, E), as attention's
        return (y.permute(0, 2, 1, 3).reshape(b, t, c) @ w).tanh()

    rng = np.random.default_rng(4)
    x = jt.tensor(rng.standard_normal((3, 5, 64)).astype(dtype) * 0.1)
    w = jt.tensor(rng.standard_normal((64, 64)).astype(dtype) * 0.1)
    compiled = jt.compile(f)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(compiled(x, w).numpy(), f(x, w).numpy(), rtol=rtol, atol=rtol)
    torch_x, torch_w = torch.tensor(x.numpy()), torch.tensor(w.numpy())
    np.testing.assert_allclose(compiled(x, w).numpy(), f(torch_x, torch_w).numpy(), rtol=10 * rtol, atol=rtol)
    listing = "\n".join(run.fn.source for run in runs_of(compiled))
    assert "copy " in listing and "blocks" in listing, listing


def test_a_convolutions_im2col_columns_are_read_in_place_in_the_layout_they_are_written(monkeypatch):
    """im2col writes its columns as (C*kh*kw, N, L) and hands out the (N, C*kh*kw, L) view of them
    (`Backend.into_strides` says so): a native run reads that root in place, no copy of it and no
    run sent back to its steps, forward and backward, with the values of eager and PyTorch."""
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(8, 3, 10, 10), (6, 3, 3, 3), (6,)])

    def loss(lib, x, w, b):
        return (lib.nn.functional.conv2d(x, w, b).relu() ** 2).sum()

    def grads(lib, compiled_fn=None):
        tensors = [(torch.tensor if lib is torch else jt.tensor)(a, requires_grad=True) for a in (x, w, b)]
        out = (compiled_fn or (lambda *t: loss(lib, *t)))(*tensors)
        out.backward()
        return [float(out.detach())] + [t.grad.numpy() for t in tensors]

    fallbacks, strided = [], []
    original = NativeRun.run

    def watched(self, env, arena, empty, copy):
        strided.extend(spec[3] for spec in self.reads if spec[3] is not None)
        done = original(self, env, arena, empty, copy)
        if not done:
            fallbacks.append(self.names)
        return done

    monkeypatch.setattr(NativeRun, "run", watched)
    f = jt.compile(lambda x, w, b: loss(jt, x, w, b))
    for _ in range(2):
        got = grads(jt, f)
    assert strided and not fallbacks
    for g, e, t in zip(got, grads(jt), grads(torch)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())
        np.testing.assert_allclose(g, t, rtol=1e-4, atol=1e-4 * np.abs(t).max())


def test_numpys_blas_threads_can_be_set_at_run_time():
    """`set_blas_threads` reaches the OpenBLAS numpy bundles (what OPENBLAS_NUM_THREADS sets at
    start-up): its own getter reads the count back."""
    import ctypes

    from jitorch.backends.cpu.native import _openblas, set_blas_threads

    getters = [getattr(lib, name) for lib in _openblas() for name in
               ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                "openblas_get_num_threads") if hasattr(lib, name)]
    if not getters:
        pytest.skip("numpy's BLAS is not a bundled OpenBLAS here")
    get = getters[0]
    get.restype = ctypes.c_int
    before = get()
    try:
        for n in (1, 2):
            assert set_blas_threads(n) and get() == n
    finally:
        set_blas_threads(before)
