"""Dynamic shapes: `jitorch.compile(dynamic=None | True | False)`, `jitorch.mark_dynamic`, and the
symbolic sizes underneath (`jitorch.symbolic`). Every compiled result is compared with the same
function run eagerly on the same inputs (and the same starting weights)."""

from __future__ import annotations

import copy
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn.functional as F
from jitorch import nn
from jitorch.symbolic import Expr, ShapeEnv, SymInt, concrete

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import char_lm  # noqa: E402

from tests.harness import run_case  # noqa: E402
from tests.op_cases import CASES  # noqa: E402
from tests.test_ops_compiled import DATA_DEPENDENT_SHAPES  # noqa: E402

_IN_INTERPRETER = "JITORCH_DYNAMIC_INTERPRETER_RUN"  # (set in the Triton interpreter's process below)


def close(a, b, rtol=1e-5, atol=1e-6) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# the symbolic sizes


def test_size_arithmetic_stays_symbolic_and_decisions_become_guards():
    env = ShapeEnv()
    with env:
        b = env.size(32, 0, 0, "x.size(0)")
        t = env.size(64, 0, 1, "x.size(1)")
        assert repr(env.size(32, 1, 0, "y.size(0)")) == "s0"  # an equal size shares the symbol
        one = env.size(1, 0, 2, "x.size(2)")
        assert one == 1 and type(one) is int  # 0 and 1 are not symbols
        n = b * t * 128
        assert isinstance(n, SymInt) and n.hint == 32 * 64 * 128 and repr(n) == "128*s0*s1"
        assert repr(n // (b * t)) == "128" and type(n // (b * t)) is int  # an exact quotient
        assert repr(t // 4) == "(s1//4)" and (t // 4).hint == 16
        assert repr((t * 4) // 4) == "s1" and (t * 4) % 4 == 0
        assert env.guards == []  # (arithmetic decides nothing)
        assert t > b  # a decision: recorded
        assert t != 1 and b > 0  # always true of sizes (2 and up): not recorded
        assert float(b) == 32.0  # a specialization
    shown = [g.show(env.label) for g in env.guards]
    assert shown == ["x.size(1) > x.size(0)", "x.size(0) == 32"]
    assert env.bind([(32, 64, 1), (32,)]) == ({"s0": 32, "s1": 64}, None)
    _, why = env.bind([(32, 16, 1), (32,)])
    assert "x.size(1) > x.size(0)" in why and "x.size(1)=16" in why
    _, why = env.bind([(32, 64, 1), (30,)])
    assert "x.size(0) == y.size(0) no longer holds (32 != 30)" in why


def test_expressions_evaluate_and_params_specialize():
    s0, s1 = Expr.symbol("s0"), Expr.symbol("s1")
    e = (s0 * s1 + Expr.constant(3)).floordiv(2)
    assert e.evaluate({"s0": 5, "s1": 7}) == (5 * 7 + 3) // 2
    assert (s0 - s0).is_constant() and (s0 * Expr.constant(6)).mod(3).constant_value() == 0
    x = SymInt(10, s0)
    assert concrete((x, 3, slice(None, x * 2, None), ("slice", x, None, 1)), {"s0": 4}) == (
        4, 3, slice(None, 8, None), ("slice", 4, None, 1))


# ---------------------------------------------------------------------------------------------
# compiled functions over changing sizes


def make_mlp(seed: int = 0):
    jt.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def mlp_step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def test_an_mlp_with_a_ragged_last_batch_compiles_twice_then_never_again():
    eager_model = make_mlp()
    model = copy.deepcopy(eager_model)
    eager = mlp_step(eager_model, jt.optim.SGD(eager_model.parameters(), lr=0.1))
    compiled = jt.compile(mlp_step(model, jt.optim.SGD(model.parameters(), lr=0.1)))
    rng = np.random.default_rng(0)
    for epoch in range(3):
        for n in (32, 32, 32, 20):  # 116 samples in batches of 32: the last one ragged
            x, y = rng.standard_normal((n, 8), dtype=np.float32), rng.integers(0, 4, n)
            close(compiled(jt.tensor(x), jt.tensor(y)).item(), eager(jt.tensor(x), jt.tensor(y)).item())
        assert compiled.compiles == 2, epoch  # the batch of 32, then the ragged one with a symbolic batch
    for p, q in zip(model.parameters(), eager_model.parameters()):
        close(p.detach().numpy(), q.detach().numpy())
    assert "batch" not in str(compiled.recompile_reasons) and len(compiled.recompile_reasons) == 1


def char_lm_steps(device: str = "cpu", **sizes) -> tuple:
    """(config, models, steps): the same char-transformer AdamW step eager on the CPU and compiled
    on `device`, from the same weights; `models` = (the eager one, the compiled one)."""
    config = char_lm.Config(**sizes)
    jt.manual_seed(0)
    eager_model = char_lm.build_model(config)
    model = copy.deepcopy(eager_model).to(device)

    def step_of(m):
        opt = jt.optim.AdamW(m.parameters(), lr=1e-3)

        def step(inputs, targets):
            opt.zero_grad()
            loss = char_lm.lm_loss(m, inputs, targets)
            loss.backward()
            opt.step()
            return loss

        return step

    return config, (eager_model, model), (step_of(eager_model), jt.compile(step_of(model)))


def test_a_char_transformer_step_over_twenty_lengths_compiles_at_most_twice():
    config, (eager_model, model), (eager, compiled) = char_lm_steps(n_layer=1, batch_size=4, d_model=32, n_head=2)
    rng = np.random.default_rng(1)
    lengths = rng.permutation(np.arange(5, config.block_size + 1))[:20]
    for length in lengths:
        codes = rng.integers(0, config.vocab_size, (config.batch_size, length + 1))
        x, y = jt.tensor(codes[:, :-1]), jt.tensor(codes[:, 1:])
        close(compiled(x, y).item(), eager(x, y).item(), rtol=1e-4)
    assert compiled.compiles <= 2, compiled.recompile_reasons
    for (name, p), q in zip(model.named_parameters(), eager_model.parameters()):
        got, expected = p.detach().numpy(), q.detach().numpy()
        if name.endswith("in_proj_bias"):
            # the key bias's gradient is zero but for rounding (softmax ignores a score added to
            # a whole row), and AdamW turns that noise into steps of up to lr in either direction:
            # a step's worth of lr, 1e-3, per step at most
            e = config.d_model
            close(got[e:2 * e], expected[e:2 * e], atol=len(lengths) * 1e-3)
            got, expected = np.delete(got, np.s_[e:2 * e]), np.delete(expected, np.s_[e:2 * e])
        close(got, expected, rtol=1e-3, atol=2e-4)  # (AdamW amplifies ulps)
    text = compiled.explain(x, y)
    assert "s0 = inputs.size(1) = targets.size(1)" in text and "i64[4,s0]" in text


def test_a_large_activation_split_and_differentiated_stays_symbolic():
    """The gradient of an activation read through `split` (a fused q/k/v projection's) is a cat of
    the pieces' gradients in the symbolic trace too: there its zeros are a scalar's expand (too
    large to fold into a constant), which `slices_as_cat` reads as zeros as well."""
    w = jt.nn.Parameter(jt.randn(64, 1024) * 0.1)

    def step(x):
        w.grad = None
        a, b = (x @ w).split(512, dim=-1)
        (a * b).sum().backward()
        return w.grad

    compiled = jt.compile(step)
    for length in (40, 48, 56, 33):
        x = jt.randn(2, length, 64)
        close(compiled(x).numpy(), step(x).numpy(), rtol=1e-4, atol=1e-4)
    assert compiled.compiles == 2 and compiled._static_only is None, compiled.recompile_reasons


def test_a_broken_equality_between_dims_recompiles_with_its_reason(capsys):
    f = jt.compile(lambda a, b: a.sin().sum() + b.cos().sum(), dynamic=True)
    a, b = jt.randn(8), jt.randn(8)
    close(f(a, b).item(), (a.sin().sum() + b.cos().sum()).item())
    a, b = jt.randn(12), jt.randn(12)
    f(a, b)
    assert f.compiles == 1  # equal dims share a symbol, and stay equal
    jt.set_logs(recompiles=True)
    try:
        a, b = jt.randn(12), jt.randn(5)
        close(f(a, b).item(), (a.sin().sum() + b.cos().sum()).item())
    finally:
        jt.set_logs(recompiles=False)
    assert f.compiles == 2
    assert "a.size(0) == b.size(0) no longer holds (12 != 5)" in f.recompile_reasons[-1]
    assert "a.size(0) == b.size(0) no longer holds" in capsys.readouterr().err


def test_a_size_used_as_a_number_is_read_at_run_time():
    """`x.sum(1) / x.shape[1]` (a mean) divides by a "size" input of the graph: every size runs it."""
    f = jt.compile(lambda x: x.sum(1) / x.shape[1] + x.mean(), dynamic=True)
    for rows, cols in ((3, 4), (5, 4), (3, 6)):
        x = jt.randn(rows, cols)
        close(f(x).numpy(), x.numpy().mean(1) + x.numpy().mean())
    assert f.compiles == 1


def test_a_size_made_a_python_float_is_guarded():
    """`x.shape[1] ** 0.5` makes the size a constant of the trace: a guard, and another size retraces."""
    f = jt.compile(lambda x: x / x.shape[1] ** 0.5, dynamic=True)
    for rows, cols in ((3, 4), (5, 4), (3, 6)):
        x = jt.randn(rows, cols)
        close(f(x).numpy(), x.numpy() / cols ** 0.5)
    assert f.compiles == 2 and "the trace assumed x.size(1) == 4" in f.recompile_reasons[-1]


def test_mark_dynamic_makes_one_dim_symbolic_from_the_first_call():
    f = jt.compile(lambda x, w: (x @ w).relu())
    w = jt.randn(6, 3)
    for n in (7, 9, 30):
        x = jt.randn(n, 6)
        jt.mark_dynamic(x, 0)
        close(f(x, w).numpy(), (x @ w).relu().numpy())
    assert f.compiles == 1
    with pytest.raises(IndexError, match="dim 2 is out of range for a tensor of shape"):
        jt.mark_dynamic(x, 2)


def test_sizes_zero_and_one_get_programs_of_their_own():
    f = jt.compile(lambda x: x * 2 + x.mean(0), dynamic=True)
    for n in (4, 6, 1, 8):
        x = jt.randn(n, 3)
        close(f(x).numpy(), (x * 2 + x.mean(0)).numpy())
    assert f.compiles == 2


def test_random_draws_of_a_symbolic_size_match_eager():
    def f(x):
        return F.dropout(x, 0.5, training=True) + jt.rand(x.shape[0], 1)

    compiled = jt.compile(f, dynamic=True)
    for n in (6, 10, 3):
        x = jt.randn(n, 5)
        jt.manual_seed(3)
        expected = f(x).numpy()
        jt.manual_seed(3)
        close(compiled(x).numpy(), expected)
    assert compiled.compiles == 1


def test_arange_zeros_and_slices_of_symbolic_sizes():
    table = jt.randn(40, 3)

    def f(x):
        n = x.shape[0]
        positions = jt.arange(n)
        out = x + table[positions] + table[:n] + jt.ones(n, 3) * 2
        return out.reshape(n * 3)[1:-1], jt.zeros(n).sum()

    compiled = jt.compile(f, dynamic=True)
    for n in (5, 17, 33):
        x = jt.randn(n, 3)
        got, want = compiled(x), f(x)
        close(got[0].numpy(), want[0].numpy())
        assert got[0].shape == (3 * n - 2,) and got[1].item() == 0
    assert compiled.compiles == 1


def test_a_size_the_symbols_cannot_see_falls_back_to_a_program_per_size():
    """A size turned into a number through its text escapes the SymInt: the symbolic trace is
    checked against a concrete one, found to differ, and dropped."""
    def f(x):
        n = int("%d" % x.shape[0])  # noqa: UP031 - (the point: a use the SymInt can't see)
        return x * n

    compiled = jt.compile(f)
    for n in (4, 6, 9):
        x = jt.randn(n)
        close(compiled(x).numpy(), x.numpy() * n)
    assert "the trace depends on a size in a way its symbols do not follow" in " ".join(compiled.recompile_reasons)


def test_dynamic_false_keeps_a_program_per_shape():
    f = jt.compile(lambda x: x.exp(), dynamic=False)
    for n in (3, 4, 5):
        f(jt.randn(n))
    assert f.compiles == 3


def test_triton_kernels_of_two_sizes_compile_as_one_source():
    """The GPU's kernels take their sizes at run time: what Triton compiles of a kernel lowered for
    another size (or repeated in another layer) is the same code, so it compiles once."""
    pytest.importorskip("triton")
    from jitorch.backends.cuda.launch import compiled_form
    from jitorch.codegen import triton as renderer
    from jitorch.ir.fusion import describe

    def rendered(rows: int) -> list:
        f = jt.compile(lambda x, b: (F.softmax(x * 2 + b, -1) + x).relu(), dynamic=False)
        f(jt.randn(rows, 96), jt.randn(96))
        (program,) = f.programs()
        return [renderer.render(describe(k.kernel)) for k in program.plan.kernels]

    for a, b in zip(rendered(64), rendered(48), strict=True):
        assert a.text != b.text and "64x96" in a.name  # (the text a person reads names its sizes)
        code, name = compiled_form(a.text, a.name)
        assert (code, name) == compiled_form(b.text, b.name) and "#" not in code and f"def {name}(" in code


# ---------------------------------------------------------------------------------------------
# on the GPU's code path: Triton's interpreter here, an NVIDIA GPU where there is one


SMALL = {"n_layer": 1, "batch_size": 2, "d_model": 32, "n_head": 2}
LENGTHS = (8, 12, 16, 21)


def run_lengths(device: str) -> object:
    config, _, (eager, compiled) = char_lm_steps(device, **SMALL)
    rng = np.random.default_rng(2)
    for length in LENGTHS:
        codes = rng.integers(0, config.vocab_size, (config.batch_size, length + 1))
        x, y = jt.tensor(codes[:, :-1]), jt.tensor(codes[:, 1:])
        close(compiled(x.to(device), y.to(device)).item(), eager(x, y).item(), rtol=1e-4)
    assert compiled.compiles <= 2, compiled.recompile_reasons
    return compiled


if os.environ.get(_IN_INTERPRETER):
    from tests.triton_interpreter_backend import serving_cuda_reporting

    def test_interpreted_char_lm_over_lengths():
        from jitorch.backends.cuda.launch import compiled_form
        from jitorch.compiler.dynamic import SymbolicProgram

        found = {}
        with serving_cuda_reporting(os.environ[_IN_INTERPRETER], lambda backend: found):
            compiled = run_lengths("cuda")
            (entry,) = [e for entries in compiled.cache.values() for e in entries if isinstance(e, SymbolicProgram)]
            for sizes, program in entry.programs.items():  # what Triton compiles of each length's kernels
                plans = [program.plan] + ([program.backward.plan] if program.backward else [])
                found[sizes] = {compiled_form(k.rendered.text, k.rendered.name) for plan in plans for k in plan.kernels}


def test_a_symbolic_program_on_the_gpu_code_path_shares_its_kernels_across_lengths(tmp_path):
    """The step above on `cuda` served by Triton's interpreter (a process of its own): every length
    matches eager CPU steps, and the Triton code compiled for the four lengths is the code of one."""
    pytest.importorskip("triton")
    pytest.importorskip("torch")
    from tests.triton_interpreter_backend import run_interpreted_tests

    report = tmp_path / "sources.pkl"
    assert "1 passed" in run_interpreted_tests(__file__, "test_interpreted_char_lm_over_lengths", _IN_INTERPRETER,
                                               str(report))
    with open(report, "rb") as f:
        codes = pickle.load(f)  # sizes -> the Triton code of that length's kernels
    assert len(codes) >= len(LENGTHS) - 1  # (the first length's call made the optimizer state: its own trace)
    first, *others = codes.values()
    assert len(first) > 10 and all(other == first for other in others)


@pytest.mark.gpu
@pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU and CuPy")
def test_a_char_lm_step_over_lengths_on_cuda():
    compiled = run_lengths("cuda")
    assert len(compiled.programs()) >= len(LENGTHS) - 1


def test_a_compiled_module_differentiated_from_eager_code_over_batch_sizes():
    """The forward compiled, its backward run by eager autograd (the joint split over symbols)."""
    model = make_mlp(1)
    eager = copy.deepcopy(model)
    compiled = jt.compile(model)
    for n in (16, 9, 23):
        x = jt.randn(n, 8)
        for m, net in ((model, compiled), (eager, eager)):
            m.zero_grad()
            (net(x) ** 2).mean().backward()
        for p, q in zip(model.parameters(), eager.parameters()):
            close(p.grad.numpy(), q.grad.numpy())
    assert compiled._compiled.compiles == 2  # the first batch size, then a symbolic one


def test_a_symbolic_trace_is_checked_only_against_a_call_that_differed_in_sizes():
    """A concrete program traced under another grad mode is no reference for a symbolic trace (its
    graph differs for that reason): the check waits for a call of the symbolic trace's own kind."""
    w = jt.randn(3, requires_grad=True)
    f = jt.compile(lambda x: (x * w).sum(-1))
    f(jt.randn(4, 3)).sum().backward()
    with jt.no_grad():
        for n in (6, 8):
            x = jt.randn(n, 3)
            jt.mark_dynamic(x, 0)
            close(f(x).numpy(), (x * w).sum(-1).numpy())
    assert f.compiles == 2 and not any("do not follow" in r for r in f.recompile_reasons)


# ---------------------------------------------------------------------------------------------
# the op harness traced with every argument dim symbolic


_SAMPLED_CASES = [c for c in CASES if c.name not in DATA_DEPENDENT_SHAPES][::5]


@pytest.mark.parametrize("case", _SAMPLED_CASES, ids=lambda c: c.name)
def test_op_matches_torch_traced_with_symbolic_sizes(case):
    """Every fifth op case compiled with dynamic=True (the slow test takes them all): values and
    gradients match PyTorch, and its trace over symbols is used, not dropped for a program per size."""
    made = []

    def compiled(fn):
        made.append(jt.compile(fn, dynamic=True))
        return made[-1]

    run_case(case, transform=compiled)
    assert all(c._static_only is None for c in made), [c._static_only for c in made]


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.name not in DATA_DEPENDENT_SHAPES], ids=lambda c: c.name)
def test_every_op_case_traced_with_symbolic_sizes(case):
    test_op_matches_torch_traced_with_symbolic_sizes(case)
