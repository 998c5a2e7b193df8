"""Random programs of pointwise ops, broadcasts and row reductions: compiled (fused kernels, row
kernels among them) against eager, forward and gradients. Each seed is one program."""

import random

import numpy as np
import pytest

import jitorch as jt

UNARY = ("exp_of_tanh", "tanh", "relu", "neg", "abs", "sigmoid")
BINARY = ("add", "sub", "mul", "maximum")
REDUCTIONS = ("sum", "amax", "amin", "mean")
SHAPES = ((3, 7), (2, 3, 17), (5, 1, 9), (4, 33))


def random_program(seed: int):
    """f(x, y, b) -> (its last value, its last value of x's shape); y is a row statistic's shape and
    b a bias over the last dim. Each step reads an earlier value chosen by the seed."""
    r = random.Random(seed)
    steps = [(r.choice(("unary", "binary", "reduce", "broadcast")), r.choice(UNARY), r.choice(BINARY),
              r.choice(REDUCTIONS), r.randrange(10**6)) for _ in range(r.randint(2, 9))]

    def unary(a, name):
        return a.tanh().exp() if name == "exp_of_tanh" else getattr(a, name)()

    def f(x, y, b):
        values = [x]
        for kind, un, bin_, red, pick in steps:
            a = values[pick % len(values)]
            if kind == "unary":
                v = unary(a, un)
            elif kind == "binary":
                other = values[(pick // 7) % len(values)]
                if other.numel() > a.numel():
                    a, other = other, a
                v = jt.maximum(a, other) if bin_ == "maximum" else getattr(a, bin_)(other)
            elif kind == "reduce":
                v = getattr(a, red)(-1, keepdim=True) if a.shape[-1] > 1 else a * 2
            else:
                v = a - b if a.shape[-1] == b.shape[-1] else a + y
            values.append(v)
        return values[-1], [v for v in values if v.shape == x.shape][-1] * 1.5

    return f, SHAPES[seed % len(SHAPES)]


@pytest.mark.parametrize("seed", range(40))
def test_random_programs_compile_to_what_eager_computes(seed):
    f, shape = random_program(seed)
    jt.manual_seed(seed)
    x, y, b, w = jt.randn(*shape), jt.randn(*shape[:-1], 1), jt.randn(shape[-1]), jt.randn(*shape)
    for ours, eager in zip(jt.compile(f)(x, y, b), f(x, y, b)):
        np.testing.assert_allclose(ours.numpy(), eager.numpy(), rtol=2e-5, atol=2e-5)

    p = x.clone().requires_grad_()  # read by the step like a parameter

    def step(y, b):
        p.grad = None
        first, second = f(p, y, b)
        ((first * first).sum() + (second * w).sum()).backward()
        return p.grad

    expected = step(y, b).numpy().copy()
    compiled = jt.compile(step)
    for _ in range(2):  # the tracing call, then a replay
        np.testing.assert_allclose(compiled(y, b).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_the_random_programs_exercise_row_kernels():
    used = 0
    for seed in range(40):
        f, shape = random_program(seed)
        compiled = jt.compile(f)
        compiled(jt.randn(*shape), jt.randn(*shape[:-1], 1), jt.randn(shape[-1]))
        used += any(k.kernel.rows for entries in compiled.cache.values() for p in entries for k in p.plan.kernels)
    assert used >= 10
