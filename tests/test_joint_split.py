"""The forward/backward split of a compiled function's joint graph (`jitorch/ir/joint.py`): what the
backward reads is saved or recomputed by cheap ops, whichever saves the fewest bytes (a minimum cut),
with gradients equal to eager autograd's."""

from __future__ import annotations

import math

import numpy as np

import jitorch as jt
import jitorch.nn.functional as F
from jitorch import nn


def split_program(fn, *args):
    """The program `jt.compile(fn)` makes for a call whose outputs are differentiated eagerly."""
    compiled = jt.compile(fn)
    compiled(*args)
    function = compiled.__dict__.get("_compiled", compiled)  # (a Module's compiled forward)
    (program,) = [p for entries in function.cache.values() for p in entries]
    assert program.backward is not None
    return program


def saved_values(program):
    n = program.backward.n_saved
    lifted = {i.value.id for i in program.graph.inputs if i.kind == "lifted"}
    return [v for v in program.graph.outputs[len(program.graph.outputs) - n:] if v.id not in lifted]


def nbytes(v) -> int:
    return math.prod(v.shape) * v.dtype.np.itemsize


def test_a_gelu_mlp_saves_its_input_and_pre_activation_alone():
    """Eagerly, GELU's backward keeps its erf and products; split by the minimum cut the backward
    recomputes them from the pre-activation (and the constants), and the parameters cost nothing."""
    jt.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 8))
    x = jt.randn(32, 16, requires_grad=True)
    program = split_program(model, x)
    saved = saved_values(program)
    assert sorted(v.shape for v in saved) == [(32, 16), (32, 64)]  # x and x @ W1.T (the bias add recomputed)
    ops = [n.op for n in program.graph.nodes]
    assert "erf" in ops and "exp" not in ops  # the forward computes no backward-only value any more
    backward_ops = [n.op for n in program.backward.plan.graph.nodes]
    assert "erf" in backward_ops and "exp" in backward_ops


def test_gradients_equal_eager_autograds_for_shapes_of_every_kind():
    jt.manual_seed(1)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=True)
    x = jt.randn(2, 5, 16, requires_grad=True)

    def run(fn):
        layer.zero_grad()
        x.grad = None
        out = fn(x)
        (out.square().sum() + F.softmax(out, -1).max()).backward()
        return [p.grad.numpy().copy() for p in layer.parameters()] + [x.grad.numpy().copy()]

    eager, compiled = run(layer), run(jt.compile(layer))
    for e, c in zip(eager, compiled):
        np.testing.assert_allclose(c, e, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(e).max()))


def test_random_values_are_saved_never_drawn_again():
    """A dropout mask the backward needs is saved: recomputing it would draw other numbers."""
    jt.manual_seed(2)
    x = jt.randn(64, 32, requires_grad=True)
    program = split_program(lambda x: F.dropout(x.exp(), 0.5, training=True).sin(), x)
    backward_ops = [n.op for n in program.backward.plan.graph.nodes]
    assert "random" not in backward_ops
    assert any(n.op == "random" for n in program.graph.nodes)
    jt.manual_seed(3)
    y = jt.compile(lambda x: F.dropout(x.exp(), 0.5, training=True).sin())(x)
    y.sum().backward()
    got = x.grad.numpy().copy()
    x.grad = None
    jt.manual_seed(3)
    F.dropout(x.exp(), 0.5, training=True).sin().sum().backward()
    expected = x.grad.numpy()  # (fused kernels' exp and sin are jitorch's own, within a few float32 ulps)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_the_cut_saves_fewer_bytes_than_every_value_the_backward_reads():
    """A chain of pointwise ops on a large tensor made from a small one by a broadcast: the backward
    reads large intermediates, the cut saves the small inputs and recomputes the rest."""
    a = jt.randn(256, 1, requires_grad=True)
    b = jt.randn(1, 256, requires_grad=True)
    program = split_program(lambda a, b: ((a + b).sin() * (a - b).cos()).tanh(), a, b)
    saved = saved_values(program)
    assert sum(map(nbytes, saved)) <= 2 * 256 * 4  # (a and b: every large value is recomputed)
    out = jt.compile(lambda a, b: ((a + b).sin() * (a - b).cos()).tanh())(a, b)
    out.sum().backward()
    got = a.grad.numpy().copy(), b.grad.numpy().copy()
    a.grad = b.grad = None
    ((a + b).sin() * (a - b).cos()).tanh().sum().backward()
    np.testing.assert_allclose(got[0], a.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], b.grad.numpy(), rtol=1e-5, atol=1e-5)
