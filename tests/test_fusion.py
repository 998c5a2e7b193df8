"""Fusion and the CPU backend: how many kernels a graph becomes (a tested fact, not a hope), what
they compute on every broadcast layout and dtype, and the disk cache of compiled kernels."""

import ctypes
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import jitorch as jt
import jitorch.nn.functional as F
from jitorch.backends import backend_for
from jitorch.backends.cpu import jit
from tests.nn_helpers import training_step


def assert_close_at_scale(ours: np.ndarray, theirs: np.ndarray, ulps: int = 32) -> None:
    """Equal within `ulps` rounding steps of the dtype, relative to each value and to the output's
    own largest finite magnitude (sums are reassociated: exact only to the scale of what they add)."""
    eps = np.finfo(theirs.dtype).eps
    finite = np.abs(theirs[np.isfinite(theirs)])
    scale = finite.max() if finite.size else 0.0
    np.testing.assert_allclose(ours, theirs, rtol=ulps * eps, atol=ulps * eps * scale)


def plan_of(compiled):
    programs = [p for entries in compiled.cache.values() for p in entries]
    assert len(programs) == 1
    return programs[0].plan


def kernels_of(fn, *args):
    compiled = jt.compile(fn)
    compiled(*args)
    return plan_of(compiled).kernels


def test_a_pointwise_chain_is_one_kernel():
    (kernel,) = kernels_of(lambda x, b: ((x * 2 + b).relu() - x.exp()).sigmoid() * (x > 0),
                           jt.randn(8, 16), jt.randn(16))
    ops = {n.op for n in kernel.kernel.nodes}
    assert {"mul", "add", "relu", "exp", "sub", "sigmoid", "gt"} <= ops
    # the name says what the kernel computes: its ops, then its shape
    words = kernel.name.split("_")
    assert words[0] == "fused" and words[-1] == "8x16" and set(words[1:-1]) <= ops


def test_only_values_read_outside_are_written():
    x = jt.randn(4, 5)
    (kernel,) = kernels_of(lambda x: ((x + 1) * 3).tanh(), x)
    assert len(kernel.kernel.outputs) == 1  # x + 1 and (x + 1) * 3 stay in registers


def test_a_matmul_splits_chains():
    w = jt.randn(16, 16)
    x = jt.randn(8, 16)
    compiled = jt.compile(lambda x: ((x * 2 + 1) @ w).relu().sum(-1) + 1)
    out = compiled(x)
    kernels = [{n.op for n in k.kernel.nodes} for k in plan_of(compiled).kernels]
    # the matmul is BLAS's: no kernel holds it, so the chain before it is a kernel of its own (what
    # follows it, relu, sum and +1, may or may not be fused, and +1 of the row sums may be a kernel
    # of its own, which costs nothing inside a native run)
    assert not any("matmul" in ops for ops in kernels) and {"mul", "add"} in kernels and len(kernels) <= 3
    expected = (np.maximum((x.numpy() * 2 + 1) @ w.numpy(), 0)).sum(-1) + 1
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name, fn", [
    ("softmax", lambda x, w, b: x.softmax(-1)),
    ("log_softmax", lambda x, w, b: F.log_softmax(x, -1)),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (64,), w, b)),
    ("rms_norm", lambda x, w, b: F.rms_norm(x, (64,), w)),
    ("residual + layer_norm", lambda x, w, b: F.layer_norm(x + b, (64,), w, b)),
])
def test_row_reductions_and_their_pointwise_neighbours_are_one_kernel(name, fn):
    x, w, b = jt.randn(32, 64), jt.randn(64), jt.randn(64)
    (kernel,) = kernels_of(fn, x, w, b)
    ops = [n.op for n in kernel.kernel.nodes]
    assert kernel.kernel.rows and {"sum", "amax"} & set(ops)
    assert [v.shape for v in kernel.kernel.outputs] == [(32, 64)]  # the row statistics stay inside


def test_cross_entropy_and_its_gradient_use_row_kernels():
    logits = jt.randn(48, 10, requires_grad=True)  # read by the step like a parameter
    y = jt.randint(0, 10, (48,))

    def step(y):
        logits.grad = None
        loss = F.cross_entropy(logits * 2, y)
        loss.backward()
        return loss

    compiled = jt.compile(step)
    compiled(y)
    rows = [{n.op for n in k.kernel.nodes} for k in plan_of(compiled).kernels
            if k.kernel.rows and k.kernel.shape == (48, 10)]
    # over the logits, one row kernel for log_softmax, one for its backward (g - softmax * sum(g));
    # the mean over the batch is a row kernel of its own (over one row of 48)
    assert len(rows) == 2 and {"amax", "exp", "log"} <= rows[0] and "sum" in rows[1]
    expected = step(y).item()
    grad = logits.grad.numpy()
    np.testing.assert_allclose(compiled(y).item(), expected, rtol=1e-6)
    np.testing.assert_allclose(logits.grad.numpy(), grad, rtol=1e-5, atol=1e-7)
    reference = torch.tensor(logits.detach().numpy(), requires_grad=True)
    torch.nn.functional.cross_entropy(reference * 2, torch.tensor(y.numpy())).backward()
    np.testing.assert_allclose(grad, reference.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_cross_entropy_forward_reads_the_logits_in_one_row_kernel():
    """The log-softmax, the mask of each row's target and the picked log-probability's sum are one
    row kernel that writes only a row's worth: the logits never go back to memory in any form."""
    logits, y = jt.randn(48, 10), jt.randint(0, 10, (48,))
    compiled = jt.compile(lambda x, y: F.cross_entropy(x * 2, y))
    loss = compiled(logits, y)
    full = [k.kernel for k in plan_of(compiled).kernels if k.kernel.shape == (48, 10)]
    assert len(full) == 1 and full[0].rows
    assert {"amax", "exp", "log", "eq", "where", "sum"} <= {n.op for n in full[0].nodes}
    assert all(v.shape[-1] == 1 for v in full[0].outputs)  # row values only
    reference = torch.nn.functional.cross_entropy(torch.tensor(logits.numpy()) * 2, torch.tensor(y.numpy()))
    np.testing.assert_allclose(loss.item(), reference.item(), rtol=1e-6)


def test_cross_entropy_picks_the_target_logit_without_a_pass_over_the_row():
    """The sum over a row of where(target == class index, log-probability, 0) is the one element at
    the target: the row kernel evaluates it there (two passes over the row: the max, the exp sum),
    with PyTorch's loss, also for targets set to ignore_index."""
    from jitorch.codegen import llvm

    logits = jt.randn(64, 300)
    y = jt.randint(0, 300, (64,))
    y[::7] = -100
    compiled = jt.compile(lambda x, y: F.cross_entropy(x, y))
    loss = compiled(logits, y)
    (row,) = [k for k in plan_of(compiled).kernels if k.kernel.rows and k.kernel.shape == (64, 300)]
    text = llvm.render(row)
    passes = re.findall(r"^row\.pass(?:\.\d+)?:", text, re.MULTILINE)
    assert len(passes) == 2, text  # (the max; the exp sum) and no third pass
    reference = torch.nn.functional.cross_entropy(torch.tensor(logits.numpy()), torch.tensor(y.numpy()))
    np.testing.assert_allclose(loss.item(), reference.item(), rtol=1e-6)


def test_a_picked_element_is_the_masked_sums_value_bit_for_bit():
    """At every index, inside the row or not, the pick gives what the masked sum gives eagerly and in
    numpy, signed zeros included (a sum starts at +0.0: a picked -0.0 sums to +0.0)."""
    n = 8
    positions = jt.tensor(np.arange(n).reshape(1, n))
    values = jt.tensor(np.array([[1.5, -0.0, 2.0, -3.0, 0.0, 7.0, -0.0, 1.0]] * 6, np.float32))
    index = jt.tensor(np.array([[0], [1], [4], [7], [-1], [8]]))  # the last two lie outside the row

    def picked(v, t):
        return jt.where(t == positions, v, 0.0).sum(1, keepdim=True)

    def negated(v, t):
        return (-jt.where(t == positions, v, 0.0)).sum(1, keepdim=True)

    v, t, p = values.numpy(), index.numpy(), positions.numpy()
    references = {picked: np.where(t == p, v, 0.0).sum(1, keepdims=True),  # (numpy's sums start at +0.0)
                  negated: (-np.where(t == p, v, 0.0)).sum(1, keepdims=True)}
    for fn, reference in references.items():
        got, want = jt.compile(fn)(values, index).numpy(), fn(values, index).numpy()
        assert got.tobytes() == want.tobytes() == reference.astype(np.float32).tobytes(), (fn.__name__, got, want)
    zeros = references[negated][references[negated] == 0]
    assert zeros.size == 4 and not np.signbit(zeros).any()  # (-0.0 picked, or a row of -0.0s: +0.0 all the same)


def test_a_kernel_built_for_positions_is_not_reused_for_other_constants():
    """The pick is code for a constant holding 0, 1, ..., n - 1: a kernel of the same ops comparing
    with other constant integers (the positions reversed, here compiled after the first) gets code
    of its own and the masked sum's values."""
    n = 16
    x, t = jt.randn(4, n), jt.tensor(np.array([[0], [3], [5], [15]]))

    def masked_sum(positions):
        return lambda x, t: jt.where(t == positions, x, 0.0).sum(-1, keepdim=True)

    for positions in (jt.arange(n)[None, :], jt.arange(n).flip(0)[None, :], jt.full((1, n), 3)):
        fn = masked_sum(positions)
        # (the constant 3 matches a whole row: a sum of 16 terms, in another order than eagerly's)
        np.testing.assert_allclose(jt.compile(fn)(x, t).numpy(), fn(x, t).numpy(), rtol=1e-6, atol=1e-6)


def test_a_row_of_negative_zeros_sums_to_positive_zero_as_eagerly():
    """A row kernel's sum starts at +0.0, as numpy's, PyTorch's and jitorch's eager sums do: a row
    of -0.0s sums to +0.0 compiled too."""
    x = jt.tensor(np.full((4, 300), -0.0, np.float32))
    fn = lambda x: (x * 2).sum(1, keepdim=True)  # noqa: E731
    got, want = jt.compile(fn)(x).numpy(), fn(x).numpy()
    assert got.tobytes() == want.tobytes() and not np.signbit(got).any()
    assert not torch.signbit(torch.tensor(x.numpy()).mul(2).sum(1)).any()


def test_cross_entropys_forward_and_gradient_are_one_row_kernel():
    """Cross-entropy's forward and backward share one row kernel (the backward's per-row scale, made
    from the targets alone, runs before it): a pass for the row's max, one for its sum of exp, one
    that writes the gradient; the target's terms of both sums are picked, not passes of their own.
    The gradient equals PyTorch's."""
    from jitorch.codegen import llvm

    logits, y = jt.randn(64, 300).requires_grad_(), jt.randint(0, 300, (64,))
    y[::5] = -100

    def step(x, y):
        loss = F.cross_entropy(x, y)
        loss.backward()
        return loss

    compiled = jt.compile(step)
    compiled(logits, y)
    logits.grad = None
    compiled(logits, y)
    program = compiled.programs()[0]
    plans = [program.plan] + ([program.backward.plan] if program.backward is not None else [])
    kernels = [k for plan in plans for k in plan.kernels if k.kernel.rows and k.kernel.shape == (64, 300)
               and any(v.shape == (64, 300) for v in k.kernel.outputs)]
    assert len(kernels) == 1 and any(v.shape == (64, 1) for v in kernels[0].kernel.outputs)  # (the loss rows)
    assert len(re.findall(r"^row\.pass(?:\.\d+)?:", llvm.render(kernels[0]), re.MULTILINE)) == 3
    x = torch.tensor(logits.detach().numpy(), requires_grad=True)
    torch.nn.functional.cross_entropy(x, torch.tensor(y.numpy())).backward()
    np.testing.assert_allclose(logits.grad.numpy(), x.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cols", [2, 255, 256, 257, 700, 1030])
def test_a_second_pass_over_the_row_prefetches_the_next_row_and_changes_no_value(cols):
    """A row kernel's second pass runs in blocks, each prefetching its part of the next row (rows
    whose length is not a multiple of the block too); a kernel of one pass prefetches nothing;
    softmax, log_softmax and cross-entropy with its gradient stay PyTorch's."""
    from jitorch.codegen import llvm

    rng = np.random.default_rng(cols)
    x = rng.standard_normal((5, cols)).astype(np.float32) * 4
    y = rng.integers(0, cols, 5)
    logits = jt.tensor(x).requires_grad_()

    def step(x, y):
        loss = F.cross_entropy(x, y)
        loss.backward()
        return loss, F.softmax(x.detach() * 2, -1), F.log_softmax(x.detach() + 1, -1)

    compiled = jt.compile(step)
    loss, soft, log_soft = compiled(logits, jt.tensor(y))
    texts = [llvm.render(k) for p in compiled.programs() for plan in (p.plan, p.backward and p.backward.plan)
             if plan is not None for k in plan.kernels if k.kernel.rows and k.kernel.shape == (5, cols)]
    passes = [len(re.findall(r"^row\.pass(?:\.\d+)?:", text, re.MULTILINE)) for text in texts]
    assert max(passes) >= 2  # (one loop over the row has no second pass to prefetch in)
    assert all(("llvm.prefetch" in text) == (n >= 2) for text, n in zip(texts, passes))
    t = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(t, torch.tensor(y))
    expected.backward()
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-5)
    np.testing.assert_allclose(logits.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(soft.numpy(), torch.softmax(torch.tensor(x) * 2, -1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(log_soft.numpy(), torch.log_softmax(torch.tensor(x) + 1, -1).numpy(), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("cols", [2, 15, 16, 17, 64, 100, 1000])
def test_row_max_and_min_keep_nan_inf_and_the_sign_of_nothing_else_at_every_position(cols):
    """amax/amin reduce with LLVM's maxnum/minnum and track NaN beside them: a NaN anywhere in the
    row (first, last, inside a vector or in the remainder) gives NaN; infinities and rows of -inf
    are numpy's."""
    rng = np.random.default_rng(cols)
    rows = []
    for pos in sorted({0, cols // 2, cols - 1}):
        row = rng.standard_normal(cols).astype(np.float32)
        row[pos] = np.nan
        rows.append(row)
    rows += [np.full(cols, -np.inf, np.float32), np.full(cols, np.inf, np.float32),
             rng.standard_normal(cols).astype(np.float32)]
    rows[-1][cols - 1] = np.inf
    x = np.stack(rows)
    out_max, out_min = jt.compile(lambda t: ((t + 0).amax(-1), (t * 1).amin(-1)))(jt.tensor(x))
    np.testing.assert_array_equal(out_max.numpy(), x.max(-1))
    np.testing.assert_array_equal(out_min.numpy(), x.min(-1))


def _softmax_and_weighted_sum(x):
    s = x.softmax(-1)
    return s, (s * x).sum(-1)


@pytest.mark.parametrize("name, fn", [("softmax", lambda x: (x * 2 + 1).softmax(-1)),
                                      ("softmax_and_weighted_sum", _softmax_and_weighted_sum)])
def test_a_row_kernel_evaluates_each_exp_once(name, fn):
    """softmax's exp(x - max) is summed in one pass over the row and divided in the next: the first
    keeps it in the output's buffer for the later passes (which read it there before they write),
    instead of computing it again; the values stay PyTorch's."""
    from jitorch.codegen import llvm

    x = jt.randn(16, 300)
    compiled = jt.compile(fn)
    out = compiled(x)
    rows = [k for k in plan_of(compiled).kernels if k.kernel.rows]
    assert rows
    for k in rows:
        text = llvm.render(k)
        calls = text.count('call float @"jt_exp_f32"')
        assert calls == sum(n.op == "exp" for n in k.kernel.nodes), text
    reference = fn(torch.tensor(x.numpy()))
    for got, want in zip(out if isinstance(out, tuple) else (out,), reference if isinstance(reference, tuple)
                         else (reference,), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_a_sum_over_the_last_dim_joins_its_producers_row_kernel():
    """x.exp().sum(-1), (softmax(x) * x).sum(-1) and (x * x).mean(-1) (keepdim left False) reduce
    in a row kernel with their producers, the sum kept as a view of its [rows, 1] result: no
    full-size intermediate is written (the mean's division by the row length comes after, per row)."""
    x = jt.randn(16, 300)
    for fn in (lambda x: x.exp().sum(-1), lambda x: (x.softmax(-1) * x).sum(-1), lambda x: (x * x).mean(-1)):
        compiled = jt.compile(fn)
        out = compiled(x)
        assert out.shape == (16,)
        row, *others = plan_of(compiled).kernels
        assert row.kernel.rows and [v.shape for v in row.kernel.outputs] == [(16, 1)]
        assert all(math.prod(v.shape) <= 16 for k in others for v in k.kernel.inputs + k.kernel.outputs)
        np.testing.assert_allclose(out.numpy(), fn(torch.tensor(x.numpy())).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cpu, features", [("haswell", "+avx,+avx2,+fma"),
                                          ("skylake-avx512", "+avx,+avx2,+fma,+avx512f,+avx512bw,+avx512vl")])
@pytest.mark.parametrize("name, fn", [("softmax", lambda x: (x * 2 + 1).softmax(-1)),
                                      ("gelu", lambda x: F.gelu(x + 1)),
                                      ("layer_norm", lambda x: F.layer_norm(x, (512,))),
                                      ("cross_entropy_backward", lambda x: F.cross_entropy(x, jt.zeros(8).long()))])
def test_kernels_vectorize_for_avx2_and_avx512_machines(cpu, features, name, fn):
    """Each kernel's loops compile to packed float32 instructions for an AVX2 machine and an
    AVX-512 one (a machine runs the code compiled for its own features: both kinds must vectorize)."""
    import re

    import llvmlite.binding as llvm

    from jitorch.codegen import llvm as codegen

    x = jt.randn(8, 512, requires_grad=name.endswith("backward"))
    compiled = jt.compile(lambda: fn(x).backward() if name.endswith("backward") else fn(x))
    compiled()
    jit._machine()  # (initializes LLVM's native target)
    machine = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=3)
    for desc in plan_of(compiled).kernels:
        module = llvm.parse_assembly(codegen.render(desc))
        jit._optimize(module, machine)  # (the pipeline kernels compile with, for that machine)
        packed = re.findall(r"\tv\w+ps\s[^\n]*%[yz]mm", machine.emit_assembly(module))
        assert len(packed) >= 8, (desc.kernel.name(), len(packed))


def test_a_backward_kernel_recomputes_the_forwards_full_size_values_instead_of_reading_them():
    """Cross-entropy forward + backward: the forward's exp(x - max) and target mask are recomputed
    by the backward kernel from the logits (which it reads anyway), so the forward writes only row
    values, and the gradient is still PyTorch's."""
    logits = jt.randn(48, 10, requires_grad=True)
    y = jt.randint(0, 10, (48,))

    def step(y):
        logits.grad = None
        loss = F.cross_entropy(logits * 2, y)
        loss.backward()
        return loss

    compiled = jt.compile(step)
    compiled(y)
    full = [k.kernel for k in plan_of(compiled).kernels if k.kernel.shape == (48, 10)]
    assert len(full) == 2
    forward, backward = full
    assert all(v.shape == (48, 1) for v in forward.outputs)  # nothing of the full size goes to memory
    assert {"exp", "eq"} <= {n.op for n in backward.nodes}  # recomputed there
    assert sum(v.shape == (48, 10) for v in backward.inputs) == 1  # the logits, and nothing else full-size
    loss = compiled(y)
    reference = torch.tensor(logits.detach().numpy(), requires_grad=True)
    expected = torch.nn.functional.cross_entropy(reference * 2, torch.tensor(y.numpy()))
    expected.backward()
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-6)
    np.testing.assert_allclose(logits.grad.numpy(), reference.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_a_value_is_not_recomputed_where_that_reads_more_than_it_saves():
    """v = a * b * c of three full-size inputs, written by one kernel for another that must start
    later (after a full reduction): recomputing it there would read three tensors to save one write
    and one read."""
    a, b, c = (jt.randn(32, 16) for _ in range(3))

    def f(a, b, c):
        v = a * b * c
        m = a.sum(0)  # made after v's kernel starts: what reads it can't join that kernel
        return (v * m).exp()

    compiled = jt.compile(f)
    out = compiled(a, b, c)
    first, second = (k.kernel for k in plan_of(compiled).kernels)
    (v,) = first.outputs
    assert v.shape == (32, 16) and v.id in {u.id for u in second.inputs}  # written once, read back
    np.testing.assert_allclose(out.numpy(), f(a, b, c).numpy(), rtol=1e-6)


ROW_CASES = {
    "plain": lambda rng, dt: rng.standard_normal((6, 5, 33)).astype(dt),
    "one row": lambda rng, dt: rng.standard_normal((1000,)).astype(dt),
    "long rows": lambda rng, dt: rng.standard_normal((3, 4099)).astype(dt) * 30,
    "nan, inf and -inf rows": lambda rng, dt: np.array(
        [[np.nan, 1, 2, 3], [-np.inf] * 4, [np.inf, 1, 2, np.inf], [-np.inf, 0, 1, -np.inf], [-0.0] * 4], dt),
    "transposed": lambda rng, dt: rng.standard_normal((17, 9)).astype(dt).T,
}


@pytest.mark.parametrize("case", ROW_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_kernels_match_pytorch(case, dtype):
    a = ROW_CASES[case](np.random.default_rng(1), dtype)
    bias = np.linspace(-1, 1, a.shape[-1]).astype(dtype)

    def fn(lib, x, bias):
        m = x.amax(-1, keepdim=True)
        lo = x.amin(-1, keepdim=True)
        centred = x - x.sum(-1, keepdim=True) / x.shape[-1]
        var = (centred * centred).sum(-1, keepdim=True)
        return (lib.softmax(x + bias, -1), lib.log_softmax(x * 0.5, -1), centred * (var + 1e-5).rsqrt(),
                m - lo, x.sum(-1, keepdim=True))

    compiled = jt.compile(lambda x, bias: fn(jt, x, bias))
    ours = compiled(jt.tensor(a), jt.tensor(bias))
    assert any(k.kernel.rows for k in plan_of(compiled).kernels)
    theirs = fn(torch, torch.tensor(a), torch.tensor(bias))
    for o, t in zip(ours, theirs):
        assert_close_at_scale(o.numpy(), t.numpy())


@pytest.mark.parametrize("shape", [(2, 3, 5), (0, 5), (3, 0, 5)])
def test_row_kernels_read_row_shaped_inputs_and_handle_empty_batches(shape):
    x, m = jt.randn(*shape), jt.randn(*shape[:-1], 1)  # m: a row statistic made outside the kernel
    compiled = jt.compile(lambda x, m: ((x - m).exp().sum(-1, keepdim=True) * 2,
                                        (x - m) / (x - m).sum(-1, keepdim=True)))
    total, ratio = compiled(x, m)
    assert [k.kernel.rows for k in plan_of(compiled).kernels] == [True]
    xn, mn = x.numpy(), m.numpy()
    np.testing.assert_allclose(total.numpy(), np.exp(xn - mn).sum(-1, keepdims=True) * 2, rtol=1e-5)
    np.testing.assert_allclose(ratio.numpy(), (xn - mn) / (xn - mn).sum(-1, keepdims=True), rtol=1e-4)


def test_row_kernels_split_by_rows_across_threads():
    x = jt.randn(1024, 640)  # above the size that splits across threads
    fn = jt.compile(lambda x: (x.softmax(-1), x.amax(-1, keepdim=True)))
    jt.set_num_threads(1)
    try:
        one = [t.numpy() for t in fn(x)]
    finally:
        jt.set_num_threads(2)
    two = [t.numpy() for t in fn(x)]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(two[0], torch.softmax(torch.tensor(x.numpy()), -1).numpy(), rtol=1e-5, atol=1e-7)


def test_reductions_that_are_not_over_the_last_dim_stay_numpy():
    x = jt.randn(8, 16)
    kernels = kernels_of(lambda x: (x.exp().sum(0, keepdim=True) * 2, x.exp().sum(-2) * 3), x)
    assert not any(k.kernel.rows for k in kernels)


def test_a_vector_total_is_a_row_kernel_and_a_view():
    x = jt.randn(16)
    f = jt.compile(lambda x: (x.exp() * 3).sum())
    np.testing.assert_allclose(f(x).numpy(), (x.exp() * 3).sum().numpy(), rtol=1e-5)
    steps = plan_of(f).steps
    assert sum(getattr(s, "node", None) is None for s in steps) == 1  # one kernel: the sum joins its producer
    assert "sum" not in [s.node.op for s in steps if getattr(s, "node", None) is not None]


def test_chains_reading_one_input_share_a_kernel_unrelated_ones_share_a_function():
    a, b = jt.randn(10, 3), jt.randn(10, 3)
    (kernel,) = kernels_of(lambda a: ((a * 2).exp(), (a - 1).abs()), a)
    assert len(kernel.kernel.outputs) == 2
    assert [v.shape for v in kernel.kernel.inputs].count((10, 3)) == 1  # a is read once (plus two constants)
    first, second = kernels_of(lambda a, b: ((a * 2).exp(), (b * 3).exp()), a, b)  # two parameters' updates
    assert ctypes.cast(first.fn, ctypes.c_void_p).value == ctypes.cast(second.fn, ctypes.c_void_p).value


LAYOUTS = {
    "same shape": lambda g: (g((6, 7, 9)), g((6, 7, 9))),
    "bias": lambda g: (g((6, 7, 9)), g((9,))),
    "row statistic": lambda g: (g((6, 7, 9)), g((6, 7, 1))),
    "middle broadcast": lambda g: (g((6, 7, 9)), g((6, 1, 9))),
    "scalar": lambda g: (g((6, 7, 9)), g(())),
    "broadcast first": lambda g: (g((7, 1)), g((6, 7, 9))),
    "transposed input": lambda g: (np.swapaxes(g((9, 7, 6)), 0, 2), g((6, 7, 9))),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_broadcast_layouts_match_pytorch(layout, dtype):
    rng = np.random.default_rng(0)

    def gen(shape):
        return rng.standard_normal(shape).astype(dtype)

    a, b = LAYOUTS[layout](gen)

    def fn(lib, x, y):
        return lib.maximum(x * y - y / 3, x).exp() + lib.where(x > y, x, y).tanh()

    ours = jt.compile(lambda x, y: fn(jt, x, y))(jt.tensor(a), jt.tensor(b)).numpy()
    theirs = fn(torch, torch.tensor(a), torch.tensor(b)).numpy()
    assert_close_at_scale(ours, theirs)


def test_nan_inf_and_integer_and_bool_semantics():
    x = np.array([np.nan, -np.inf, -1.5, -0.0, 0.0, 2.5, np.inf], np.float32)
    i = np.array([-3, -1, 0, 1, 2, 3, 4], np.int64)
    m = np.array([True, False, True, False, True, True, False])

    def fn(lib, x, i, m):
        return (lib.maximum(x, x * 0 + 1), lib.minimum(x, x * 0), x.relu(), x != x, x.isinf(),
                (i * 3 - 1).abs(), lib.maximum(i, i * 0), (i > 0) & m, lib.logical_not(x),
                x.to(lib.int64) if False else (i.to(lib.float32) / 2).floor(), lib.where(m, x, 0.5 * x))

    ours = jt.compile(lambda x, i, m: fn(jt, x, i, m))(jt.tensor(x), jt.tensor(i), jt.tensor(m))
    theirs = fn(torch, torch.tensor(x), torch.tensor(i), torch.tensor(m))
    for a, b in zip(ours, theirs):
        assert a.dtype.name == str(b.dtype).replace("torch.", "")
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_training_step_uses_fused_kernels_and_matches_eager():
    def run(compiled: bool):
        jt.manual_seed(0)
        model = jt.nn.Sequential(jt.nn.Linear(12, 32), jt.nn.LayerNorm(32), jt.nn.GELU(), jt.nn.Linear(32, 3))
        opt = jt.optim.AdamW(model.parameters(), lr=1e-2)
        x, y = jt.randn(16, 12), jt.randint(0, 3, (16,))

        step = training_step(model, opt)

        fn = jt.compile(step) if compiled else step
        return [fn(x, y).item() for _ in range(5)], fn

    eager, _ = run(False)
    losses, compiled = run(True)
    steady = [p for entries in compiled.cache.values() for p in entries if not p.one_shot]
    assert steady and len(steady[0].plan.kernels) >= 5
    np.testing.assert_allclose(losses, eager, rtol=1e-5)
    assert losses[-1] < losses[0]


def test_identical_kernels_are_compiled_once(monkeypatch):
    monkeypatch.setenv("JITORCH_NATIVE_RUNS", "0")  # (else a program may compile its native run's walker too)
    before = len(jit._addresses)
    kernels_of(lambda x: (x * 1.5).exp() - x, jt.randn(3, 4))
    after_first = len(jit._addresses)
    kernels_of(lambda x: (x * 1.5).exp() - x, jt.randn(50, 7))  # other sizes: the same function
    assert after_first == before + 1 and len(jit._addresses) == after_first


CACHE_SCRIPT = """
import numpy as np, jitorch as jt
f = jt.compile(lambda x: (x * 3 + 1).sigmoid() - x)
x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
out = f(jt.tensor(x)).numpy()
np.testing.assert_allclose(out, 1 / (1 + np.exp(-(x * 3 + 1))) - x, rtol=1e-6, atol=1e-6)
print("ok")
"""


def test_disk_cache_is_reused_and_a_corrupt_entry_is_recompiled(tmp_path):
    # (native runs off: the one kernel is the cache's one entry, without the runs' walker beside it)
    env = dict(os.environ, JITORCH_CACHE_DIR=str(tmp_path), JITORCH_NATIVE_RUNS="0")

    def run():
        proc = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], env=env, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
        return sorted(tmp_path.rglob("*.o"))

    (entry,) = run()
    stamp = entry.stat().st_mtime_ns
    assert run() == [entry] and entry.stat().st_mtime_ns == stamp  # loaded, not rewritten
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # truncated
    run()
    assert entry.stat().st_size > 0 and entry.stat().st_mtime_ns != stamp  # recompiled and rewritten


HELPERS_SCRIPT = """
import numpy as np, jitorch as jt
from jitorch.backends.cpu import jit
jit.HELPER_MIN_LINES = int(__import__("sys").argv[1])  # (these kernels are small: helpers for a test's sake)
ops = [np.exp, np.tanh, np.sqrt, lambda v: 1 / (1 + np.exp(-v)), np.negative, np.log, np.floor]
def f(x, w):
    h = x
    for name in ("exp", "tanh", "sqrt", "sigmoid", "neg", "log", "floor"):  # a matmul between: seven kernels
        h = getattr((h @ w).abs() * 0.5 + 0.1, name)()
    return h
x, w = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), np.eye(8, dtype=np.float32) * 0.9
expected = x
for op in ops:
    expected = op(np.abs(expected @ w) * 0.5 + 0.1)
np.testing.assert_allclose(jt.compile(f)(jt.tensor(x), jt.tensor(w)).numpy(), expected, rtol=1e-5, atol=1e-6)
print("ok")
"""


def test_a_first_runs_kernels_compile_in_helper_processes_too(tmp_path):
    """Seven new kernels of enough IR on a machine of two or more CPUs: a helper compiles a share into
    the disk cache and this process loads them; the next process compiles nothing. Too little IR for
    a helper's start to pay: no helper."""
    env = dict(os.environ, JITORCH_CACHE_DIR=str(tmp_path / "a"), JITORCH_LOGS="perf")
    run = lambda lines: subprocess.run([sys.executable, "-c", HELPERS_SCRIPT, str(lines)], env=env,
                                       capture_output=True, text=True)
    first = run(50)
    assert first.returncode == 0 and first.stdout.strip() == "ok", first.stderr
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus > 1:
        assert "7 new kernels: " in first.stderr and "helper process" in first.stderr
    assert len(list(tmp_path.rglob("*.o"))) == 8  # the seven kernels and the native run that calls them in turn
    again = run(50)
    assert again.returncode == 0 and "helper" not in again.stderr
    env["JITORCH_CACHE_DIR"] = str(tmp_path / "b")
    alone = run(100_000)
    assert alone.returncode == 0 and alone.stdout.strip() == "ok" and "helper" not in alone.stderr, alone.stderr


def test_fusion_can_be_switched_off():
    env = dict(os.environ, JITORCH_CPU_FUSION="0")
    script = ("import jitorch as jt\nf = jt.compile(lambda x: (x * 2).exp())\nf(jt.randn(3))\n"
              "print(len([p for e in f.cache.values() for p in e][0].plan.kernels))")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_kernels_split_into_bands_across_threads(threads):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((301, 257)).astype(np.float32)  # above the threading threshold, odd sizes
    col, row = rng.standard_normal(257).astype(np.float32), rng.standard_normal((301, 1)).astype(np.float32)
    previous = jt.get_num_threads()
    jt.set_num_threads(threads)
    try:
        ours = jt.compile(lambda x, c, r: ((x - r) * c).exp() + x.relu())(jt.tensor(x), jt.tensor(col), jt.tensor(row))
    finally:
        jt.set_num_threads(previous)
    expected = np.exp((x - row) * col) + np.maximum(x, 0)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)


def test_set_num_threads_rejects_nonsense():
    with pytest.raises(ValueError, match="positive"):
        jt.set_num_threads(0)


def test_a_codegen_failure_falls_back_to_eager_kernels_with_a_warning(monkeypatch):
    from jitorch.errors import FusionWarning

    def broken(kernels):
        raise RuntimeError("LLVM said no")

    # (on the class: undoing a patch of the instance would leave the method as an instance attribute)
    monkeypatch.setattr(type(backend_for("cpu")), "compile_kernels", lambda self, kernels: broken(kernels))
    f = jt.compile(lambda x: (x * 2 + 1).exp())
    x = jt.randn(4, 5)
    with pytest.warns(FusionWarning, match="LLVM said no"):
        out = f(x)
    np.testing.assert_allclose(out.numpy(), np.exp(x.numpy() * 2 + 1), rtol=1e-6)
    assert plan_of(f).kernels == []


def test_compiled_calls_from_several_python_threads():
    import threading

    rng = np.random.default_rng(9)
    inputs = [rng.standard_normal((600, 1000)).astype(np.float32) for _ in range(4)]  # threaded kernels
    results, errors = [None] * 4, []

    def work(i):
        try:
            f = jt.compile(lambda x: ((x * (i + 1)).tanh() + x).exp())  # a new program: compiles in the thread
            for _ in range(3):
                results[i] = f(jt.tensor(inputs[i])).numpy()
        except Exception as err:  # reported below: a thread's exception would vanish otherwise
            errors.append(err)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    for i, x in enumerate(inputs):
        np.testing.assert_allclose(results[i], np.exp(np.tanh(x * (i + 1)) + x), rtol=2e-6)


def test_an_adamw_update_is_one_kernel_per_parameter_shape():
    # decay, both moments and the parameter update: chains that meet (the update reads the moments
    # and the decayed weight) merge into one kernel, and same-shaped weights share it (horizontal)
    def training_step():
        jt.manual_seed(0)
        model = jt.nn.Sequential(jt.nn.Linear(8, 8), jt.nn.Tanh(), jt.nn.Linear(8, 8))
        opt = jt.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

        def step(x):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            return loss

        return step

    x = jt.randn(4, 8)
    compiled = jt.compile(training_step())
    losses = [compiled(x).item() for _ in range(3)]
    steady = [p for entries in compiled.cache.values() for p in entries if not p.one_shot][0]
    for shape in ((8, 8), (8,)):
        (update,) = [k for k in steady.plan.kernels if k.kernel.shape == shape]
        assert len(update.kernel.outputs) == 6  # each of the two parameters, and both its moments
    eager = training_step()
    np.testing.assert_allclose(losses, [eager(x).item() for _ in range(3)], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# float16 and bfloat16: storage types, computed in float32 and rounded after every node


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint16)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_chains_are_one_kernel_equal_to_eager_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    x = jt.tensor(rng.standard_normal((64, 96)).astype(np.float32) * 4).to(dtype)
    b = jt.tensor(rng.standard_normal(96).astype(np.float32)).to(dtype)

    def fn(x, b):
        return ((x * 2 + b).relu() - x.exp()).sigmoid() * (x > 0) + (x * x + 1).rsqrt()

    (kernel,) = kernels_of(fn, x, b)
    assert {v.dtype.name for v in kernel.kernel.outputs} == {dtype}
    got = jt.compile(fn)(x, b).numpy()
    np.testing.assert_array_equal(_bits(got), _bits(fn(x, b).numpy()))


def test_rounding_to_bfloat16_and_float16_in_a_kernel_is_numpys():
    """Ties to even, NaN and infinities, overflow to infinity, the smallest normals and subnormals:
    float32 values cast to each half type inside a fused kernel (between two exact multiplies, so
    that the cast is one of its nodes), bit for bit as ml_dtypes and numpy round them eagerly."""
    ties = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80C000, 0x7F7FFFFF, 0x00008000, 0x00018000],
                    np.uint32).view(np.float32)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 65504.0, 65520.0, 1e-8, 6.1e-5, 3e38],
                        np.float32)
    x = jt.tensor(np.concatenate([ties, specials, np.random.default_rng(1).standard_normal(200).astype(np.float32)]))
    for dtype in ("bfloat16", "float16"):
        def fn(x, dtype=dtype):
            return (x * 0.5).to(dtype) * 2

        got, eager = jt.compile(fn)(x).numpy(), fn(x).numpy()
        assert len(kernels_of(fn, x)) == 1
        np.testing.assert_array_equal(_bits(got), _bits(eager), err_msg=dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_row_kernels_match_eager(dtype):
    """Rows reduced in float32 and rounded once (the sums add in another order than numpy's)."""
    x = jt.tensor(np.random.default_rng(2).standard_normal((32, 300)).astype(np.float32)).to(dtype)
    w = jt.tensor(np.random.default_rng(3).standard_normal(300).astype(np.float32)).to(dtype)

    def fn(x, w):
        return F.softmax(x * 2, -1), F.layer_norm(x, (300,), w), F.log_softmax(x, -1)

    compiled = jt.compile(fn)
    assert any(k.kernel.rows for k in kernels_of(fn, x, w))
    eps = float(jt.finfo(getattr(jt, dtype)).eps)
    for got, eager in zip(compiled(x, w), fn(x, w)):
        ours, theirs = got.float().numpy(), eager.float().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=2 * eps, atol=2 * eps * np.abs(theirs).max())


def test_an_optimizers_scalar_chains_share_kernels_on_the_cpu():
    """AdamW's bias corrections are a chain of scalar ops per parameter (each reads its own step
    count): on the CPU, which does not group kernels into one launch, unrelated scalar chains
    share a kernel (up to its node bound) instead of one launch per parameter; updates match eager."""
    sizes = [3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41]
    params = [jt.nn.Parameter(jt.randn(n)) for n in sizes]
    twins = [jt.nn.Parameter(p.detach().clone()) for p in params]

    def step_of(ps):
        opt = jt.optim.AdamW(ps, lr=1e-2)

        def step():
            opt.zero_grad()
            sum((p * p).sum() for p in ps).backward()
            opt.step()

        return step

    compiled, eager = jt.compile(step_of(params)), step_of(twins)
    for _ in range(3):
        compiled()
        eager()
    scalar_kernels = [k for k in plan_of(compiled).kernels if k.kernel.shape == ()]
    assert 0 < len(scalar_kernels) < len(sizes) // 2
    for p, q in zip(params, twins):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
