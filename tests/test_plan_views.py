"""A compiled program's `cat` of pieces lying side by side in one buffer is a view of it (the plan's
`cat_or_view`), never where the pieces only happen to be neighbours, nor for a value the caller
gets; eagerly `cat` always copies, as PyTorch's."""

import numpy as np
import pytest

import jitorch as jt
from jitorch.backends import backend_for
from jitorch.backends.array_kernels import cat_or_view
from jitorch.backends.cpu import _allocation

cat = backend_for("cpu").plan_kernels["cat"]


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_pieces_of_one_buffer_cut_along_the_dim_come_back_as_a_view(dim):
    buffer = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5).transpose(1, 0, 2)  # strided, too
    size = buffer.shape[dim]
    cuts = [0, 1, size // 2, size]
    pieces = [np.take(buffer, np.arange(a, b), axis=dim) for a, b in zip(cuts, cuts[1:])]  # copies
    views = [buffer[(slice(None),) * (dim % 3) + (slice(a, b),)] for a, b in zip(cuts, cuts[1:])]
    joined = cat(*views, dim=dim)
    assert np.shares_memory(joined, buffer)
    np.testing.assert_array_equal(joined, np.concatenate(pieces, axis=dim))
    np.testing.assert_array_equal(joined, buffer)


def test_pieces_out_of_order_or_of_other_buffers_or_strides_are_copied():
    buffer = np.arange(24.0).reshape(4, 6)
    other = np.arange(24.0).reshape(4, 6)
    cases = [
        (buffer[:, 3:], buffer[:, :3]),  # out of order
        (buffer[:, :3], other[:, 3:]),  # two allocations
        (buffer[:2], buffer[2:, ::-1]),  # other strides
        (buffer[:, :2], buffer[:, 3:]),  # a gap
    ]
    for pieces in cases:
        dim = 1 if pieces[0].shape[0] == 4 else 0
        joined = cat(*pieces, dim=dim)
        assert not any(np.shares_memory(joined, p) for p in pieces)
        np.testing.assert_array_equal(joined, np.concatenate(pieces, axis=dim))


def test_neighbouring_allocations_are_not_one():
    """Two arrays whose memory happens to be adjacent (carved from one block, as a pool hands them
    out) stay two: a view over both would outlive whichever is freed first."""
    block = np.zeros(16)
    a, b = block[:8].copy(), block[8:].copy()
    fake_address = {id(a): 0, id(b): 64}  # as if b began where a ends
    joined = cat_or_view(np, lambda x: fake_address[id(x)], _allocation, a, b, dim=0)
    assert not np.shares_memory(joined, a) and not np.shares_memory(joined, b)


def test_a_compiled_cat_of_slices_matches_eager_and_returned_values_are_copies():
    x = jt.randn(3, 8)

    def f(x):
        y = x * 2
        joined = jt.cat([y[:, :3], y[:, 3:5], y[:, 5:]], dim=1)
        kept = jt.cat([y[:2], y[2:]], dim=0)  # returned: the caller's own memory
        return (joined + 1).sum(dim=0), kept

    compiled = jt.compile(f)
    got, kept = compiled(x)
    expected, expected_kept = f(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(kept.numpy(), expected_kept.numpy(), rtol=1e-6)
    program = compiled.programs()[0]
    kernels = {step.node.out.id: step.kernel for step in program.plan.steps if getattr(step, "node", None) is not None
               and step.node.op == "cat"}
    outputs = {v.id for v in program.graph.outputs}
    assert any(kernel is cat for vid, kernel in kernels.items() if vid not in outputs)
    assert all(kernel is not cat for vid, kernel in kernels.items() if vid in outputs)


def test_eager_cat_copies():
    y = jt.arange(12.0).reshape(3, 4)
    joined = jt.cat([y[:, :2], y[:, 2:]], dim=1)
    joined.add_(1)
    np.testing.assert_array_equal(y.numpy(), np.arange(12.0).reshape(3, 4))


def test_a_parameter_update_is_not_written_over_a_cat_view_still_to_be_read():
    """A plan writes a parameter's update into its buffer only when nothing reads the old value (or
    a view of it) later; a cat of the parameter's slices may be such a view."""
    w = jt.nn.Parameter(jt.arange(8.0))

    def step():
        joined = jt.cat([w[:3], w[3:]])  # a view of w's buffer in the plan
        with jt.no_grad():
            w.mul_(2.0).add_(1.0)  # (a fused kernel: one that could write over w's buffer)
        return (joined * 3.0).sum()

    compiled = jt.compile(step)
    assert compiled().item() == 3 * np.arange(8.0).sum()
    np.testing.assert_array_equal(w.detach().numpy(), np.arange(8.0) * 2 + 1)
    assert compiled().item() == 3 * (np.arange(8.0) * 2 + 1).sum()


def test_views_of_planned_buffers_are_made_once_and_again_when_the_buffer_changes(monkeypatch):
    """A view step of a buffer that stays put between runs (the memory plan's) hands out the view it
    made on the first run; a run on other buffers (a reserved arena, as a CUDA graph's) makes its
    own, and the step stops remembering, so no finished run's buffer is kept alive."""
    from jitorch.runtime.executor import _MOVED, PrimStep

    monkeypatch.setenv("JITORCH_NATIVE_RUNS", "0")  # the steps one by one, through the executor
    w = jt.randn(5, 3)

    @jt.compile
    def f(x):
        return (x * 2 + 1).t() @ w  # the fused kernel's output (planned), viewed, read by a product

    xs = [jt.randn(5, 5) for _ in range(3)]
    for x in xs:
        np.testing.assert_allclose(f(x).numpy(), ((x * 2 + 1).t() @ w).numpy(), rtol=1e-6, atol=1e-6)
    (program,) = [p for entries in f.cache.values() for p in entries]
    plan = program.plan
    (view,) = [s for s in plan.steps if type(s) is PrimStep and s.memo is not None]
    assert view.node.op == "permute"
    source, made = view.memo[0]
    assert np.shares_memory(made, source) and made.shape == (5, 5)
    inputs = [xs[0]._data, w._data]
    np.testing.assert_allclose(plan.run(inputs)[0], f(xs[0]).numpy(), rtol=1e-6, atol=1e-6)
    assert view.memo[0][1] is made  # the same view object: not made again
    reserved = plan.reserve_arena()
    np.testing.assert_allclose(plan.run(inputs, arena=reserved)[0], f(xs[0]).numpy(), rtol=1e-6, atol=1e-6)
    assert view.memo[0] == (_MOVED, None)
    for x in xs:  # and every later run makes its view
        np.testing.assert_allclose(f(x).numpy(), ((x * 2 + 1).t() @ w).numpy(), rtol=1e-6, atol=1e-6)


def test_a_buffer_a_graph_output_is_summed_from_stays_in_the_arena():
    """A fused kernel's output that only a reduction reads, whose result the program returns (a
    parameter's gradient summed from an activation's), lives in the program's arena: a sum makes a
    new array, never a view of what it sums, so the buffer is free again after it (not a fresh
    array, first-touched page by page, on every call)."""
    from jitorch.runtime.executor import KernelStep

    f = jt.compile(lambda x: ((x * 2).exp() - x).sum((0, 2)))
    x = jt.randn(8, 16, 32)
    for _ in range(2):
        out = f(x)
    np.testing.assert_allclose(out.numpy(), (np.exp(x.numpy() * 2) - x.numpy()).sum((0, 2)), rtol=1e-5)
    (program,) = f.programs()
    steps = [s for s in program.plan.steps if isinstance(s, KernelStep)]
    assert steps and all(b is not None for s in steps for b in s.arena)
