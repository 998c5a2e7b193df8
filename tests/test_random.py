"""Counter-based random numbers: eager code and compiled programs (fused LLVM kernels or the eager
kernels) draw the same numbers for the same seed, and leave the generator in the same state."""

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn as nn
import jitorch.nn.functional as F
from tests.nn_helpers import training_step


def _eager_and_compiled(fn, *args, calls: int = 2):
    jt.manual_seed(7)
    eager = [fn(*args).numpy().copy() for _ in range(calls)]
    eager_state = jt.get_rng_state()
    compiled = jt.compile(fn)
    jt.manual_seed(7)
    got = [compiled(*args).numpy().copy() for _ in range(calls)]
    return eager, got, eager_state, jt.get_rng_state(), compiled


def dropout_only(x):
    return F.dropout(x, 0.5)


def noisy_softmax(x):
    h = F.dropout(x, 0.25) + 0.1 * jt.randn(*x.shape)
    return h.softmax(-1) + jt.rand(x.shape[0], 1)


def draws_of_each_kind(x):
    return jt.rand(*x.shape) + jt.randn(*x.shape, dtype=jt.float64).float() + jt.bernoulli(x.sigmoid()) \
        + jt.randint(0, 7, tuple(x.shape)).float()


@pytest.mark.parametrize("fuse", ["1", "0"], ids=["fused", "unfused"])
@pytest.mark.parametrize("fn, shape", [(dropout_only, (16, 40)), (dropout_only, (1024, 600)),
                                       (noisy_softmax, (33, 70)), (draws_of_each_kind, (5, 9))],
                         ids=["dropout", "dropout-threads", "row-kernel", "kinds"])
def test_compiled_draws_are_the_eager_draws(fn, shape, fuse, monkeypatch):
    monkeypatch.setenv("JITORCH_CPU_FUSION", fuse)
    x = jt.randn(*shape, generator=jt.Generator().manual_seed(3))
    eager, got, eager_state, state, compiled = _eager_and_compiled(fn, x)
    for a, b in zip(eager, got):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(eager[0], eager[1])  # each call draws anew
    assert state == eager_state
    plans = [p.plan for entries in compiled.cache.values() for p in entries]
    fused_random = any(n.op == "random" for plan in plans for k in plan.kernels for n in k.kernel.nodes)
    assert fused_random == (fuse == "1")


def test_dropout_masks_are_identical_eager_and_compiled():
    x = jt.ones(256, 128)
    eager, got, *_ = _eager_and_compiled(dropout_only, x, calls=3)
    for a, b in zip(eager, got):
        np.testing.assert_array_equal(a == 0, b == 0)
        assert 0.45 < (a == 0).mean() < 0.55


def test_a_training_step_with_dropout_in_check_mode_matches_eager():
    def run(mode):
        jt.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
        opt = jt.optim.Adam(model.parameters(), lr=0.01)
        x, y = jt.randn(16, 8), jt.tensor(np.arange(16) % 3)

        step = training_step(model, opt)

        step = jt.compile(step, mode=mode) if mode != "python" else step
        return [step(x, y).item() for _ in range(6)], [p.detach().numpy().copy() for p in model.parameters()]

    eager_losses, eager_params = run("python")
    for mode in ("default", "check"):
        losses, params = run(mode)
        np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
        for a, b in zip(params, eager_params):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_generator_is_a_seed_and_a_counter():
    g = jt.Generator().manual_seed(11)
    a = jt.rand(3, generator=g)
    assert g.get_state() == {"seed": 11, "offset": 3}
    b = jt.rand(3, generator=g)
    g.set_state({"seed": 11, "offset": 0})
    np.testing.assert_array_equal(jt.rand(6, generator=g).numpy(), np.concatenate([a.numpy(), b.numpy()]))
