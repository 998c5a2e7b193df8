"""jitorch.compile and state: writes through views, Python-level writes, check mode, tracing in threads.

Each compiled run is compared with the same function run eagerly from the same starting state.
"""

import inspect
import threading
import warnings

import numpy as np
import pytest
import torch

import jitorch as jt
import jitorch.nn as nn
import jitorch.nn.functional as F
from jitorch.compiler import CompileCheckError
from jitorch.ir.trace import TraceError
from jitorch.tensor import Tensor
from tests.nn_helpers import training_step


def _line_of(fn, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _state(tensors) -> list[np.ndarray]:
    return [np.array(t.detach().numpy(), copy=True) for t in tensors]


def _eager_and_compiled(fn, make_args, calls: int = 3):
    """Run fn eagerly and compiled on equal fresh arguments; return (eager, compiled) results and args."""
    runs = []
    for compiled in (False, True):
        args = make_args()
        f = jt.compile(fn) if compiled else fn
        outs = [f(*args) for _ in range(calls)]
        runs.append((outs, args))
    return runs


def _assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x.detach().numpy()), np.asarray(y.detach().numpy()),
                                   rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# in-place writes through views


def _matrix():
    return jt.tensor(np.arange(20, dtype=np.float32).reshape(4, 5))


def slice_write(x):
    x[1:3].mul_(2)
    return x.sum()


def transpose_row_write(x):
    x.t()[0].add_(1)
    return x * 1


def reshape_slice_write(x):
    v = x.reshape(20)
    v[3:7].zero_()
    return x + 0


def view_read_after_base_write(x):
    v = x[:, 1]
    x.add_(1)
    return v * 2


def overlapping_views(x):
    a = x[0]
    b = x[0:2]
    b.mul_(3)
    return a + 0


def write_into_intermediate(x):
    y = x * 2
    y.t()[1:].sub_(1)
    y[..., 0].fill_(-1)
    return y


def flip_and_element_write(x):
    x.flip(0)[0].add_(10)
    x[1, 2].add_(100)
    return x.sum(0)


def detach_write(x):
    y = x + 1
    y.detach().mul_(2)
    return y


@pytest.mark.parametrize("fn", [slice_write, transpose_row_write, reshape_slice_write, view_read_after_base_write,
                                overlapping_views, write_into_intermediate, flip_and_element_write, detach_write])
def test_writes_through_views_of_arguments_match_eager(fn):
    (eager_outs, eager_args), (compiled_outs, compiled_args) = _eager_and_compiled(fn, lambda: (_matrix(),))
    _assert_same(eager_outs, compiled_outs)
    _assert_same(eager_args, compiled_args)
    torch_x = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    torch_fn_out = None
    with torch.no_grad():
        for _ in range(3):
            torch_fn_out = fn(torch_x)
    np.testing.assert_allclose(eager_args[0].numpy(), torch_x.numpy(), rtol=1e-6)  # eager is PyTorch's
    np.testing.assert_allclose(np.asarray(eager_outs[-1].numpy()), torch_fn_out.numpy(), rtol=1e-6)


def test_writes_through_views_of_lifted_tensors_match_eager():
    def make():
        w = jt.tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
        buf = jt.zeros(6)

        def step(x):
            w[0].add_(x.sum())
            w.t()[1].mul_(2)
            buf.view(2, 3)[1].copy_(x[:3])
            return w.sum() + buf.sum()

        return step, w, buf

    step, w, buf = make()
    eager = [step(jt.ones(4)).item() for _ in range(3)]
    step, w2, buf2 = make()
    compiled = jt.compile(step)
    got = [compiled(jt.ones(4)).item() for _ in range(3)]
    assert got == pytest.approx(eager)
    _assert_same([w, buf], [w2, buf2])
    assert compiled.compiles == 1


def test_write_through_expanded_view_is_refused_as_eagerly():
    def f(x):
        x[:1].expand(3, 4).add_(1)
        return x

    with pytest.raises(RuntimeError, match="expanded view"):
        f(jt.zeros(3, 4))
    with pytest.raises(RuntimeError, match="expanded view"):
        jt.compile(f)(jt.zeros(3, 4))


def test_write_through_reshape_of_non_contiguous_tensor_is_refused():
    """Eagerly such a reshape may copy or not; the trace cannot tell, so it refuses to guess."""
    def f(x):
        v = x.t().reshape(20)
        v.add_(1)
        return v

    with pytest.raises(TraceError, match=r"\.contiguous\(\)") as info:
        jt.compile(f)(_matrix())
    assert f"test_compile_state.py:{_line_of(f, 'v.add_(1)')}" in str(info.value)


def test_write_into_view_made_before_the_call_is_refused():
    w = jt.zeros(3, 4)
    row = w[1]

    def f(x):
        row.add_(x)
        return w.sum()

    with pytest.raises(TraceError, match="made before"):
        jt.compile(f)(jt.ones(4))


def _clipping_step(model, opt, clip):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        clip(model.parameters())
        opt.step()
        return loss

    return step


@pytest.mark.parametrize("clip", [lambda ps: nn.utils.clip_grad_norm_(ps, 0.5),
                                  lambda ps: nn.utils.clip_grad_value_(ps, 0.01)], ids=["norm", "value"])
def test_gradient_clipping_inside_a_compiled_step_matches_eager(clip):
    x, y = jt.randn(32, 8, generator=jt.Generator().manual_seed(1)), jt.tensor(np.arange(32) % 3)
    results = []
    for compiled in (False, True):
        jt.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        opt = jt.optim.AdamW(model.parameters(), lr=0.05)
        step = _clipping_step(model, opt, clip)
        step = jt.compile(step) if compiled else step
        losses = [step(x, y).item() for _ in range(10)]
        results.append((losses, _state(model.parameters())))
    (eager_losses, eager_params), (compiled_losses, compiled_params) = results
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5)
    for a, b in zip(compiled_params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_eager_integer_index_is_a_view_as_in_pytorch():
    x = jt.zeros(3, 4)
    x[1, 2].add_(1)
    t = torch.zeros(3, 4)
    t[1, 2].add_(1)
    np.testing.assert_array_equal(x.numpy(), t.numpy())


# ---------------------------------------------------------------------------------------------
# Python-level writes


class StepCountingSGD(jt.optim.Optimizer):
    """A PyTorch-style custom optimizer: its step count is a Python int in its state dict."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    def step(self):
        with jt.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                    state["step"] += 1
                    p.sub_(p.grad * (group["lr"] / state["step"]))


COUNTER = {"calls": 0}


def _counting_steps(compiled: bool):
    """20 steps of a function that counts its calls in a global dict, with StepCountingSGD."""
    COUNTER["calls"] = 0
    jt.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = StepCountingSGD(model.parameters())
    x, y = jt.randn(8, 4), jt.randn(8, 2)

    def step(x, y):
        COUNTER["calls"] += 2
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    step = jt.compile(step) if compiled else step
    losses, counts = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            losses.append(step(x, y).item())
            counts.append(COUNTER["calls"])
    return losses, counts, opt.state[model.weight]["step"], _state(model.parameters()), caught


def test_python_state_written_by_a_compiled_step_matches_eager():
    eager_losses, eager_counts, eager_steps, eager_params, _ = _counting_steps(False)
    losses, counts, steps, params, caught = _counting_steps(True)
    assert counts == eager_counts == list(range(2, 41, 2))
    assert steps == eager_steps == 20
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    for a, b in zip(params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    messages = [str(w.message) for w in caught]
    assert any("writes Python state" in m and "opt.state[model.weight]['step']" in m and "COUNTER['calls']" in m
               for m in messages), messages


def test_module_attribute_written_in_forward_matches_eager():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.lin(x) * self.calls

    jt.manual_seed(0)
    model = Counting()
    compiled = jt.compile(model)
    x = jt.ones(2, 3)
    outs = [compiled(x) for _ in range(3)]
    assert model.calls == 3
    model.calls = 0
    _assert_same(outs, [model(x) for _ in range(3)])


def test_a_step_that_writes_no_python_state_is_traced_once():
    jt.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = jt.optim.Adam(model.parameters(), lr=0.01)

    @jt.compile
    def step(x):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    for _ in range(5):
        step(jt.ones(3, 4))
    assert step.compiles == 2  # the first call creates Adam's state; the second traces with it as input
    assert step.hits == 3


# ---------------------------------------------------------------------------------------------
# check mode


def _mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _batchnorm_model():
    return nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


OPTIMIZERS = {
    "adam": lambda ps: jt.optim.Adam(ps, lr=0.01),
    "adamw": lambda ps: jt.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "sgd_momentum": lambda ps: jt.optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd_nesterov": lambda ps: jt.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda ps: jt.optim.RMSprop(ps, lr=0.01),
}


def _twenty_steps(mode: str, make_model, make_opt, scheduler: bool = False):
    jt.manual_seed(0)
    model = make_model()
    opt = make_opt(model.parameters())
    sched = jt.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9) if scheduler else None
    gen = jt.Generator().manual_seed(1)
    x, y = jt.randn(32, 8, generator=gen), jt.tensor(np.arange(32) % 3)

    step = training_step(model, opt)

    step = jt.compile(step, mode=mode) if mode != "python" else step
    losses = []
    for _ in range(20):
        losses.append(step(x, y).item())
        if sched is not None:
            sched.step()
    buffers = [b for b in model.buffers() if b.dtype.is_floating_point]
    return losses, _state(list(model.parameters()) + buffers), opt


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_check_mode_leaves_state_as_eager_steps_do(name):
    eager_losses, eager_state, eager_opt = _twenty_steps("python", _mlp, OPTIMIZERS[name])
    losses, state, opt = _twenty_steps("check", _mlp, OPTIMIZERS[name])
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    for a, b in zip(state, eager_state):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for p, q in zip(opt.param_groups[0]["params"], eager_opt.param_groups[0]["params"]):
        for key, value in eager_opt.state[q].items():
            np.testing.assert_allclose(opt.state[p][key].numpy(), value.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["batchnorm", "scheduler"])
def test_check_mode_with_running_stats_and_a_scheduler(case):
    make_model = _batchnorm_model if case == "batchnorm" else _mlp
    with_scheduler = case == "scheduler"
    eager_losses, eager_state, _ = _twenty_steps("python", make_model, OPTIMIZERS["adam"], with_scheduler)
    losses, state, _ = _twenty_steps("check", make_model, OPTIMIZERS["adam"], with_scheduler)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    for a, b in zip(state, eager_state):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def exp_of_double(x):
    y = x * 2
    z = y.exp()
    return z.sum()


def test_check_mode_names_a_planted_wrong_kernel():
    checked = jt.compile(exp_of_double, mode="check")
    checked._planted_kernels = {"exp": lambda x: np.exp(x) * 1.01}
    with pytest.raises(CompileCheckError) as info:
        checked(jt.ones(4))
    message = str(info.value)
    assert "= exp" in message
    assert f"test_compile_state.py:{_line_of(exp_of_double, 'y.exp()')}" in message
    checked._planted_kernels = None
    assert checked(jt.ones(4)).item() == pytest.approx(4 * np.exp(2), rel=1e-6)


def test_check_mode_catches_a_wrong_kernel_in_an_optimizer_step_after_state_exists():
    jt.manual_seed(0)
    model = _mlp()
    opt = jt.optim.Adam(model.parameters(), lr=0.01)
    x, y = jt.randn(16, 8), jt.tensor(np.arange(16) % 3)

    step = training_step(model, opt)

    checked = jt.compile(step, mode="check")
    checked(x, y)
    checked(x, y)
    checked._planted_kernels = {"sqrt": lambda a: np.sqrt(a) + 1e-3}
    checked.cache.clear()  # the planted kernel applies to a program's reference steps
    with pytest.raises(CompileCheckError, match="exp_avg|state"):
        checked(x, y)


def test_explain_names_optimizer_state_by_owner():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = jt.optim.AdamW(model.parameters(), lr=3e-4)

    @jt.compile
    def step(x):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()

    for _ in range(3):
        step(jt.ones(2, 6))
    text = step.explain(jt.ones(2, 6))
    assert "lifted opt.state[model.0.weight].exp_avg:" in text
    assert "lifted opt.state[model.2.bias].step:" in text
    assert "tensor#" not in text


# ---------------------------------------------------------------------------------------------
# tracing state is per thread


def test_overlapping_traces_in_two_threads_leave_no_tracer_behind():
    make_before = Tensor.__dict__["_make"]
    a_inside, b_done = threading.Event(), threading.Event()
    errors = []

    def first(x):
        a_inside.set()
        b_done.wait(10)  # the other thread traces from start to end while this trace is open
        return jt.zeros(2) + x

    def second(x):
        return jt.ones(2) * x

    def run(fn, before=None, after=None):
        try:
            if before is not None:
                before.wait(10)
            jt.compile(fn)(jt.ones(2))
            made_eagerly = jt.zeros(2)
            if made_eagerly._born is not None:
                errors.append("a tensor made after the trace carries a trace mark")
        except Exception as err:  # reported below
            errors.append(repr(err))
        finally:
            if after is not None:
                after.set()

    threads = [threading.Thread(target=run, args=(first,)),
               threading.Thread(target=run, args=(second, a_inside, b_done))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert Tensor.__dict__["_make"] is make_before
    assert jt.zeros(3)._born is None


def test_eager_tensors_made_in_another_thread_during_a_trace_are_not_its_constants():
    inside, made = threading.Event(), threading.Event()
    other = []

    def f(x):
        inside.set()
        made.wait(10)
        return x + 1

    def eager_worker():
        inside.wait(10)
        other.append(jt.ones(2))
        made.set()

    worker = threading.Thread(target=eager_worker)
    worker.start()
    jt.compile(f)(jt.ones(2))
    worker.join(10)
    assert other[0]._born is None
