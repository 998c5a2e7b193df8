"""Differential testing: random small programs give the same values and gradients compiled and eager.

Each program is a short random sequence of ops over a pool of tensors (elementwise, broadcasting,
reductions, movement, matmul, in-place updates, indexing), ending in a scalar loss. It runs eagerly
and under `jitorch.compile`, twice (the second call replays the cache), and both the loss and the
gradients of the inputs must agree.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jitorch as jt

SHAPE = (3, 4)


def _unary(name):
    return lambda pool, i, j: getattr(pool[i], name)()


OPS = {
    "add": lambda pool, i, j: pool[i] + pool[j],
    "mul": lambda pool, i, j: pool[i] * pool[j],
    "sub_scalar": lambda pool, i, j: pool[i] - 0.5,
    "div": lambda pool, i, j: pool[i] / (pool[j].abs() + 1),
    "tanh": _unary("tanh"),
    "sigmoid": _unary("sigmoid"),
    "relu": _unary("relu"),
    "exp_small": lambda pool, i, j: (pool[i] * 0.1).exp(),
    "softmax": lambda pool, i, j: pool[i].softmax(-1),
    "row_sum": lambda pool, i, j: pool[i].sum(-1, keepdim=True) + pool[j],
    "col_mean": lambda pool, i, j: pool[i] - pool[i].mean(0),
    "transpose_matmul": lambda pool, i, j: pool[i] @ pool[j].T @ pool[i] * 0.1,
    "where": lambda pool, i, j: jt.where(pool[i] > pool[j], pool[i], pool[j] * 2),
    "clamp": lambda pool, i, j: pool[i].clamp(-0.5, 0.5),
    "flip_cat": lambda pool, i, j: jt.cat([pool[i][:, :2], pool[j][:, 2:].flip(1)], 1),
    "reshape": lambda pool, i, j: pool[i].reshape(4, 3).T + pool[j],
    "index_put": lambda pool, i, j: _index_put(pool[i], pool[j]),
    "max_dim": lambda pool, i, j: pool[i].max(1, keepdim=True).values * pool[j],
    "gather": lambda pool, i, j: pool[i].gather(1, jt.tensor([[0, 3, 1, 1]] * 3)),
    "take_rows": lambda pool, i, j: pool[i][jt.tensor([2, 0, 2])] + pool[j],
    "cumsum": lambda pool, i, j: pool[i].cumsum(1),
    "var": lambda pool, i, j: pool[i].var(1, keepdim=True) + pool[j],
    "logsumexp": lambda pool, i, j: pool[i].logsumexp(0) * pool[j],
    # (off zero: a row of layer_norm's output sums to exactly zero, so a cumsum's last element is a
    # rounding error whose sign compiled and eager kernels may disagree on, as may a mask compared with 0)
    "layer_norm": lambda pool, i, j: jt.nn.functional.layer_norm(pool[i], (4,)) + 0.05,
    "masked_fill": lambda pool, i, j: pool[i].masked_fill(pool[j] > 0.25, 1.5),
    "pad_slice": lambda pool, i, j: jt.nn.functional.pad(pool[i], (1, 1))[:, 1:-1],
    "einsum": lambda pool, i, j: jt.einsum("ij,kj->ik", pool[i], pool[j]) @ pool[i] * 0.1,
    "stack_split": lambda pool, i, j: sum(jt.stack([pool[i], pool[j]]).split(1, 0)).squeeze(0),
    "inplace": lambda pool, i, j: _inplace(pool[i], pool[j]),
}


def _index_put(a, b):
    out = a * 1
    out[1] = b[0] * 3
    return out


def _inplace(a, b):
    out = a.clone()
    out.mul_(2).add_(b)
    return out


def _program(steps):
    def run(x, y):
        pool = [x, y]
        for name, i, j in steps:
            pool.append(OPS[name](pool, i % len(pool), j % len(pool)))
        return sum((t * (k + 1)).sum() for k, t in enumerate(pool[2:])) if len(pool) > 2 else (x + y).sum()

    return run


def _inputs(seed):
    rng = np.random.default_rng(seed)
    return [jt.tensor(rng.standard_normal(SHAPE).astype(np.float64), requires_grad=True) for _ in range(2)]


def _loss_and_grads(fn, seed):
    x, y = _inputs(seed)
    loss = fn(x, y)
    loss.backward()
    return (loss.item(),) + tuple(None if t.grad is None else t.grad.numpy() for t in (x, y))


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.integers(0, 9), st.integers(0, 9)),
                      min_size=1, max_size=6),
       seed=st.integers(0, 1000))
def test_random_programs_agree_compiled_and_eager(steps, seed):
    fn = _program(steps)
    compiled = jt.compile(fn)
    want = _loss_and_grads(fn, seed)
    for _ in range(2):  # the trace, then a replay from the cache
        got = _loss_and_grads(compiled, seed)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-10, atol=1e-10)
        for g, w in zip(got[1:], want[1:]):
            assert (g is None) == (w is None)  # an unused input gets no gradient either way
            if w is not None:
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
    assert compiled.compiles == 1
