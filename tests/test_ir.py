"""The IR: printer, structural hash, verifier, and each pass on small hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch import dtypes
from jitorch.ir.graph import Const, Graph, IRError
from jitorch.ir.joint import split_joint
from jitorch.ir.passes import cse, dce, fold_constants, optimize, simplify
from jitorch.runtime.executor import Plan

F32 = dtypes.float32


def const(g: Graph, value, dtype=np.float32):
    arr = np.asarray(value, dtype=dtype)
    return g.add_node("const", (), {"value": Const(arr)}, arr.shape, dtypes.from_numpy_dtype(arr.dtype))


def run(g: Graph, *inputs):
    return Plan(g).run([np.asarray(x, dtype=np.float32) for x in inputs])


def test_printer_one_line_per_node_with_types_and_source():
    g = Graph("f")
    x = g.add_input((2, 3), F32, "arg", "x")
    y = g.add_node("exp", (x,), {}, (2, 3), F32, "model.py:12 (forward)")
    g.add_output(y, "out")
    text = g.format()
    assert "%0:f32[2,3]" in text and "arg x" in text
    assert "%1:f32[2,3] = exp %0" in text and "# model.py:12 (forward)" in text
    assert text.count("\n") == 4


def test_structural_hash_ignores_value_numbering_but_not_ops():
    def build(op, offset):
        g = Graph()
        g._next_id = offset
        x = g.add_input((4,), F32, "arg", "x")
        g.add_output(g.add_node(op, (x,), {}, (4,), F32), "out")
        return g

    assert build("exp", 0).key() == build("exp", 100).key()
    assert build("exp", 0).key() != build("log", 0).key()


def test_verifier_accepts_a_traced_graph():
    f = jt.compile(lambda x, w: (x @ w).relu().softmax(-1).sum())
    f(jt.ones(2, 3), jt.ones(3, 4))
    program = next(iter(f.cache.values()))[0]
    program.graph.verify()


def test_verifier_catches_use_before_definition():
    g = Graph()
    x = g.add_input((2,), F32, "arg", "x")
    y = g.add_node("exp", (x,), {}, (2,), F32)
    z = g.add_node("log", (y,), {}, (2,), F32)
    g.nodes.reverse()
    g.add_output(z, "out")
    with pytest.raises(IRError, match="used before it is defined"):
        g.verify()


def test_verifier_catches_a_wrong_shape_and_an_unknown_op():
    g = Graph()
    x = g.add_input((2, 3), F32, "arg", "x")
    g.add_output(g.add_node("sum", (x,), {"dims": (1,), "keepdim": False}, (3,), F32), "out")
    with pytest.raises(IRError, match="the rule gives float32\\[2\\]"):
        g.verify()
    g2 = Graph()
    x2 = g2.add_input((2,), F32, "arg", "x")
    g2.add_output(g2.add_node("frobnicate", (x2,), {}, (2,), F32), "out")
    with pytest.raises(IRError, match="unknown op"):
        g2.verify()


def test_dce_drops_only_unused_nodes():
    g = Graph()
    x = g.add_input((2,), F32, "arg", "x")
    g.add_node("exp", (x,), {}, (2,), F32)  # dead
    used = g.add_node("log", (x,), {}, (2,), F32)
    g.add_output(used, "out")
    assert dce(g)
    assert [n.op for n in g.nodes] == ["log"]
    assert not dce(g)


def test_cse_merges_identical_nodes():
    g = Graph()
    x = g.add_input((2,), F32, "arg", "x")
    a = g.add_node("exp", (x,), {}, (2,), F32)
    b = g.add_node("exp", (x,), {}, (2,), F32)
    g.add_output(g.add_node("add", (a, b), {}, (2,), F32), "out")
    assert cse(g)
    assert [n.op for n in g.nodes] == ["exp", "add"]
    assert g.nodes[1].inputs == (a, a)
    np.testing.assert_allclose(run(g, [0.0, 1.0])[0], 2 * np.exp([0.0, 1.0]), rtol=1e-6)


def test_constant_folding_evaluates_constant_subgraphs():
    g = Graph()
    x = g.add_input((2,), F32, "arg", "x")
    c = g.add_node("mul", (const(g, 2.0), const(g, 3.0)), {}, (), F32)
    g.add_output(g.add_node("add", (x, c), {}, (2,), F32), "out")
    assert fold_constants(g)
    assert g.nodes[2].op == "const" and float(g.nodes[2].params["value"].array) == 6.0
    dce(g)
    np.testing.assert_allclose(run(g, [1.0, 2.0])[0], [7.0, 8.0])


@pytest.mark.parametrize("op, unit, left", [("mul", 1.0, False), ("mul", 1.0, True), ("add", 0.0, False),
                                            ("add", 0.0, True), ("sub", 0.0, False), ("div", 1.0, False)])
def test_simplify_removes_identity_arithmetic(op, unit, left):
    g = Graph()
    x = g.add_input((3,), F32, "arg", "x")
    c = const(g, unit)
    g.add_output(g.add_node(op, (c, x) if left else (x, c), {}, (3,), F32), "out")
    simplify(g)
    assert g.outputs[0] is x


def test_simplify_keeps_a_broadcasting_identity():
    g = Graph()
    x = g.add_input((1,), F32, "arg", "x")
    ones = const(g, np.ones(3))
    g.add_output(g.add_node("mul", (x, ones), {}, (3,), F32), "out")
    simplify(g)
    assert g.outputs[0] is not x  # x*ones broadcasts: not a no-op


def test_simplify_composes_double_transpose_and_reshapes():
    g = Graph()
    x = g.add_input((2, 3, 4), F32, "arg", "x")
    p1 = g.add_node("permute", (x,), {"dims": (1, 0, 2)}, (3, 2, 4), F32)
    p2 = g.add_node("permute", (p1,), {"dims": (1, 0, 2)}, (2, 3, 4), F32)
    r1 = g.add_node("reshape", (p2,), {"shape": (6, 4)}, (6, 4), F32)
    r2 = g.add_node("reshape", (r1,), {"shape": (24,)}, (24,), F32)
    g.add_output(r2, "out")
    optimize(g, debug=True)
    assert [n.op for n in g.nodes] == ["reshape"]
    assert g.nodes[0].inputs[0] is x
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(run(g, data)[0], data.reshape(-1))


def test_simplify_removes_double_negation_and_same_dtype_cast():
    g = Graph()
    x = g.add_input((2,), F32, "arg", "x")
    n1 = g.add_node("neg", (x,), {}, (2,), F32)
    n2 = g.add_node("neg", (n1,), {}, (2,), F32)
    c = g.add_node("cast", (n2,), {"dtype": F32}, (2,), F32)
    g.add_output(c, "out")
    optimize(g, debug=True)
    assert g.nodes == [] and g.outputs[0] is x


def test_optimize_shrinks_a_traced_step_and_keeps_its_result():
    def f(x):
        return ((x * 1 + 0).exp() + (x * 1 + 0).exp()).sum()

    cf = jt.compile(f)
    x = jt.tensor([0.5, -1.0, 2.0])
    np.testing.assert_allclose(cf(x).item(), f(x).item(), rtol=1e-6)
    graph = next(iter(cf.cache.values()))[0].graph
    # (the sum keeps its dim, then drops it by a view: a row kernel's form)
    assert [n.op for n in graph.nodes if n.op != "const"] == ["exp", "add", "sum", "reshape"]


def test_a_transposed_product_becomes_the_product_of_transposes():
    # (a @ b)^T -> b^T @ a^T: no transposed view of the result is left for a consumer to copy
    g = Graph()
    a = g.add_input((5, 2, 3), F32, "arg", "a")
    b = g.add_input((3, 4), F32, "arg", "b")
    ab = g.add_node("matmul", (a, b), {}, (5, 2, 4), F32)
    t = g.add_node("permute", (ab,), {"dims": (0, 2, 1)}, (5, 4, 2), F32)
    g.add_output(g.add_node("exp", (t,), {}, (5, 4, 2), F32), "out")
    optimize(g, debug=True)
    matmul = next(n for n in g.nodes if n.op == "matmul")
    assert matmul.out.shape == (5, 4, 2) and [v.node.op for v in matmul.inputs] == ["permute", "permute"]
    x, y = np.random.default_rng(0).standard_normal((5, 2, 3)), np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_allclose(run(g, x, y)[0], np.exp(np.swapaxes(x @ y, 1, 2)), rtol=1e-5)


def test_a_linear_weight_gradient_comes_out_in_the_weight_layout():
    lin = jt.nn.Linear(6, 3)
    x = jt.randn(8, 6)

    def step(x):
        lin.zero_grad()
        lin(x).square().sum().backward()

    compiled = jt.compile(step)
    compiled(x)
    graph = next(iter(compiled.cache.values()))[0].graph
    producers = {n.out.id: n for n in graph.nodes}
    grad = graph.outputs[graph.output_labels.index(next(lbl for lbl in graph.output_labels if "weight" in lbl))]
    assert producers[grad.id].op == "matmul"  # not a permute of one
    assert lin.weight.grad.numpy().flags.c_contiguous
    compiled_grad = lin.weight.grad.numpy().copy()
    step(x)
    np.testing.assert_allclose(compiled_grad, lin.weight.grad.numpy(), rtol=1e-5, atol=1e-6)


def _slice_into_zeros(g: Graph, v, dim: int, start: int, size: tuple[int, ...]):
    key = tuple(("slice", start, start + v.shape[d], 1) if d == dim else ("slice", 0, size[d], 1)
                for d in range(dim + 1))
    return g.add_node("index_put", (const(g, np.zeros(size, np.float32)), v), {"key": key, "accumulate": True},
                      size, F32)


@pytest.mark.parametrize("dim", [0, 1])
def test_a_sum_of_slices_written_into_zeros_becomes_one_cat(dim):
    size = (6, 4) if dim == 0 else (4, 6)
    part = (2, 4) if dim == 0 else (4, 2)
    g = Graph()
    pieces = [g.add_input(part, F32, "arg", f"p{k}") for k in range(3)]
    scattered = [_slice_into_zeros(g, p, dim, 2 * k, size) for k, p in zip((2, 0, 1), pieces)]
    total = g.add_node("add", (scattered[0], scattered[1]), {}, size, F32)
    g.add_output(g.add_node("add", (total, scattered[2]), {}, size, F32), "out")
    optimize(g, debug=True)
    assert [n.op for n in g.nodes if n.op != "const"] == ["cat"]
    xs = [np.random.default_rng(k).standard_normal(part) for k in range(3)]
    np.testing.assert_allclose(run(g, *xs)[0], np.concatenate([xs[1], xs[2], xs[0]], axis=dim), rtol=1e-6)


def test_slices_that_overlap_or_leave_a_gap_stay_scatters():
    g = Graph()
    a, b = g.add_input((2, 4), F32, "arg", "a"), g.add_input((2, 4), F32, "arg", "b")
    out = g.add_node("add", (_slice_into_zeros(g, a, 0, 0, (6, 4)), _slice_into_zeros(g, b, 0, 3, (6, 4))), {},
                     (6, 4), F32)
    g.add_output(out, "out")
    optimize(g, debug=True)
    assert "cat" not in {n.op for n in g.nodes}
    x, y = np.ones((2, 4)), 2 * np.ones((2, 4))
    expected = np.zeros((6, 4))
    expected[0:2] += x
    expected[3:5] += y
    np.testing.assert_allclose(run(g, x, y)[0], expected)


def test_attention_weight_gradients_through_split_are_one_cat_and_match_eager():
    """nn.MultiheadAttention's self-attention, compiled, projects with one product by the whole
    in_proj_weight and chunks it (last-dim slices, whose keys leave the other dims open); the
    chunks' gradients are concatenated, not scattered into zeros and added."""
    jt.manual_seed(0)
    mha = jt.nn.MultiheadAttention(8, 2, batch_first=True)
    x = jt.randn(2, 5, 8)

    def step(x):
        mha.zero_grad()
        mha(x, x, x, need_weights=False)[0].square().sum().backward()

    compiled = jt.compile(step)
    compiled(x)
    graph = next(iter(compiled.cache.values()))[0].graph
    assert "index_put" not in {n.op for n in graph.nodes} and "cat" in {n.op for n in graph.nodes}
    wide = [n for n in graph.nodes if n.op == "matmul" and n.out.shape[-1] == 24]  # (.., 3 * 8): q, k, v at once
    assert len(wide) == 1
    grads = [p.grad.numpy().copy() for p in mha.parameters()]
    step(x)
    for got, p in zip(grads, mha.parameters()):
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_a_joint_graph_splits_into_forward_and_backward():
    # y = exp(x) * 2; its backward dx = (dy * 2) * exp(x), built as jitorch.compile traces it
    g = Graph("f")
    x = g.add_input((3,), F32, "arg", "x")
    dy = g.add_input((3,), F32, "cotangent", "d(out)")
    two = const(g, 2.0)
    e = g.add_node("exp", (x,), {}, (3,), F32)
    y = g.add_node("mul", (e, two), {}, (3,), F32)
    dx = g.add_node("mul", (g.add_node("mul", (dy, two), {}, (3,), F32), e), {}, (3,), F32)
    g.add_output(y, "out")
    g.add_output(dx, "dx")
    fwd, bwd, n_saved = split_joint(g, 1)
    # the forward holds what no cotangent reaches; exp(x) is saved, the constant is repeated
    assert [n.op for n in fwd.nodes] == ["const", "exp", "mul"] and [i.kind for i in fwd.inputs] == ["arg"]
    assert n_saved == 1 and fwd.outputs == [y, e] and fwd.output_labels == ["out", "saved"]
    assert [i.kind for i in bwd.inputs] == ["saved", "cotangent"] and bwd.inputs[0].value is e
    assert [n.op for n in bwd.nodes] == ["const", "mul", "mul"] and bwd.outputs == [dx]
    xs, dys = np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    out, saved = run(fwd, xs)
    np.testing.assert_allclose(out, np.exp(xs) * 2, rtol=1e-6)
    np.testing.assert_allclose(run(bwd, saved, dys)[0], dys * 2 * np.exp(xs), rtol=1e-6)



@pytest.mark.parametrize("dtype", [jt.float32, jt.float64], ids=["float32", "float64"])
def test_small_integer_powers_are_products_in_compiled_graphs(dtype):
    """x**2, x**3, x**4 (and their gradients' x**1) become multiplications, as PyTorch's pow kernel
    computes them; values (infinities, NaN, signed zeros too) and gradients match torch."""
    values = np.array([-3.5, -1.0, -0.0, 0.0, 0.25, 2.0, 7.5, np.inf, -np.inf, np.nan], dtype=dtype.np)

    def f(x):
        return x ** 2 + x.pow(3.0) - x.pow(4)

    x = jt.tensor(values, requires_grad=True)
    compiled = jt.compile(lambda x: f(x).sum().backward())
    compiled(x)
    graph = next(iter(compiled.cache.values()))[0].graph
    assert "pow" not in {n.op for n in graph.nodes}
    got = x.grad.numpy()
    reference = torch.tensor(values, requires_grad=True)
    f(reference).sum().backward()
    rtol = 1e-6 if dtype is jt.float32 else 1e-14
    np.testing.assert_allclose(got, reference.grad.numpy(), rtol=rtol)
    out, expected = jt.compile(f)(jt.tensor(values)).numpy(), f(torch.tensor(values)).numpy()
    np.testing.assert_allclose(out, expected, rtol=rtol)
    assert list(np.signbit(out)) == list(np.signbit(expected))
