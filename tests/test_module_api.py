"""The nn.Module API beyond forward, side by side with torch.nn: full backward (pre-)hooks, forward hooks
with kwargs/prepend, state-dict and load hooks, extra state, dtype conversions, lookups by dotted path,
and `jitorch.save` refusing a whole Module."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as tnn

import jitorch as jt
import jitorch.nn as nn
from tests.nn_helpers import assert_close, copy_module, pair

RNG = np.random.default_rng(7)
LIBS = {"jt": (jt, nn), "torch": (torch, tnn)}


def linear_pair(n_in: int = 3, n_out: int = 2):
    """A jitorch and a torch Linear with the same weights."""
    t = tnn.Linear(n_in, n_out)
    j = nn.Linear(n_in, n_out)
    copy_module(j, t)
    return j, t


def shapes(grads) -> list:
    return [None if g is None else tuple(g.shape) for g in grads]


def run_backward_hooks(module, x, hook_result=None) -> tuple[list, object]:
    """Register a backward pre-hook and hook recording their calls; backward a sum; return the log and x."""
    log = []

    def pre_hook(mod, grad_output):
        log.append(("pre", shapes(grad_output)))

    def hook(mod, grad_input, grad_output):
        log.append(("full", shapes(grad_input), shapes(grad_output)))
        return hook_result(grad_input) if hook_result else None

    module.register_full_backward_pre_hook(pre_hook)
    module.register_full_backward_hook(hook)
    module(x).sum().backward()
    return log, x


# --- full backward hooks ------------------------------------------------------------------------
def test_full_backward_hooks_order_shapes_and_modified_grad_input():
    j, t = linear_pair()
    jx, tx = pair(RNG.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    double = lambda grad_input: tuple(2 * g for g in grad_input)  # noqa: E731
    jlog, _ = run_backward_hooks(j, jx, double)
    tlog, _ = run_backward_hooks(t, tx, double)
    assert jlog == tlog == [("pre", [(4, 2)]), ("full", [(4, 3)], [(4, 2)])]
    assert_close(jx.grad, tx.grad, what="x.grad after the hook doubled grad_input")
    assert_close(j.weight.grad, t.weight.grad, what="weight.grad (the hook changes only grad_input)")


class Scale(tnn.Module):
    def forward(self, x, y, factor):
        return x * y * factor


class JtScale(nn.Module):
    def forward(self, x, y, factor):
        return x * y * factor


def test_full_backward_hook_grad_input_has_one_entry_per_argument():
    jx, tx = pair(RNG.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    jy, ty = pair(RNG.standard_normal((2, 3)).astype(np.float32), requires_grad=False)
    logs, grads_of_y = [], []
    for module, x, y in ((JtScale(), jx, jy), (Scale(), tx, ty)):
        log = []

        def hook(m, grad_input, grad_output, log=log):
            log.append((shapes(grad_input), shapes(grad_output)))
            grads_of_y.append(grad_input[1])
            return (grad_input[0] + 1, None, None)

        module.register_full_backward_hook(hook)
        module(x, y, 3.0).sum().backward()
        logs.append(log)
    # y needs no grad, but PyTorch still hands the hook its gradient
    assert logs[0] == logs[1] == [([(2, 3), (2, 3), None], [(2, 3)])]
    assert_close(grads_of_y[0], grads_of_y[1], what="grad_input[1]")
    assert_close(jx.grad, tx.grad)
    assert jy.grad is None and ty.grad is None


def test_full_backward_hook_sees_all_input_grads_at_once_and_they_reach_the_leaves():
    arrays = [RNG.standard_normal((2, 3)).astype(np.float32) for _ in range(2)]
    (jx, tx), (jy, ty) = (pair(a, requires_grad=True) for a in arrays)
    calls = []
    for module, x, y in ((JtScale(), jx, jy), (Scale(), tx, ty)):
        module.register_full_backward_hook(lambda m, gi, go: calls.append(shapes(gi)) or (gi[0] * 2, gi[1] * 3, None))
        (module(x, y, 3.0) * module(y, y, 1.0)).sum().backward()
    assert calls == [[(2, 3), (2, 3), None]] * 4
    assert_close(jx.grad, tx.grad, what="x.grad")
    assert_close(jy.grad, ty.grad, what="y.grad")


def test_full_backward_pre_hook_replaces_grad_output():
    j, t = linear_pair()
    jx, tx = pair(RNG.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    for module, x in ((j, jx), (t, tx)):
        module.register_full_backward_pre_hook(lambda m, grad_output: (grad_output[0] * 3,))
        module(x).sum().backward()
    assert_close(jx.grad, tx.grad)
    assert_close(j.weight.grad, t.weight.grad, what="weight.grad from the replaced grad_output")


def test_full_backward_hook_without_input_grad_fires_at_output_with_nones():
    j, t = linear_pair()
    jx, tx = pair(RNG.standard_normal((4, 3)).astype(np.float32), requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jlog, _ = run_backward_hooks(j, jx)
        tlog, _ = run_backward_hooks(t, tx)
    assert jlog == tlog == [("pre", [(4, 2)]), ("full", [None], [(4, 2)])]


def test_backward_hook_wrong_count_prepend_and_remove():
    j, t = linear_pair()
    jx, tx = pair(RNG.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    for module, x in ((j, jx), (t, tx)):
        handle = module.register_full_backward_hook(lambda m, gi, go: (gi[0], gi[0]))
        with pytest.raises(RuntimeError, match="invalid number of grad_input, got 2, but expected 1"):
            module(x).sum().backward()
        handle.remove()
    logs = []
    for module, x in ((j, jx), (t, tx)):
        log = []
        module.register_full_backward_hook(lambda m, gi, go, log=log: log.append("second"))
        module.register_full_backward_hook(lambda m, gi, go, log=log: log.append("first"), prepend=True)
        module(x).sum().backward()
        logs.append(log)
    assert logs[0] == logs[1] == ["first", "second"]


def test_full_backward_hook_under_compile_is_a_clear_error():
    j, _ = linear_pair()
    j.register_full_backward_hook(lambda m, gi, go: None)
    compiled = jt.compile(j)
    with pytest.raises(NotImplementedError, match="jitorch.compile can't trace"):
        compiled(jt.ones(4, 3, requires_grad=True))


def test_backward_hook_added_after_compiling_is_not_silently_skipped():
    j, _ = linear_pair()
    compiled = jt.compile(j)
    x = jt.ones(4, 3, requires_grad=True)
    compiled(x).sum().backward()
    j.register_full_backward_hook(lambda m, gi, go: None)
    with pytest.raises(NotImplementedError, match="jitorch.compile can't trace"):
        compiled(x).sum().backward()


# --- forward hooks ------------------------------------------------------------------------------
class KwScale(tnn.Module):
    def forward(self, x, scale=1.0):
        return x * scale


class JtKwScale(nn.Module):
    def forward(self, x, scale=1.0):
        return x * scale


def test_forward_hooks_with_kwargs_and_prepend():
    x = RNG.standard_normal((2, 2)).astype(np.float32)
    outs, logs = [], []
    for module, lib in ((JtKwScale(), jt), (KwScale(), torch)):
        log = []
        module.register_forward_pre_hook(lambda m, args, kwargs: (args, {"scale": 10.0}), with_kwargs=True)
        module.register_forward_pre_hook(lambda m, args, log=log: log.append("pre first"), prepend=True)
        module.register_forward_hook(
            lambda m, args, kwargs, out, log=log: log.append(("kw", kwargs["scale"], tuple(out.shape))),
            with_kwargs=True,
        )
        module.register_forward_hook(lambda m, args, out, log=log: log.append("post first"), prepend=True)
        outs.append(module(lib.tensor(x), scale=2.0))
        logs.append(log)
    assert logs[0] == logs[1] == ["pre first", "post first", ("kw", 10.0, (2, 2))]
    assert_close(outs[0], outs[1])


def test_with_kwargs_pre_hook_must_return_a_pair():
    for module, lib in ((JtKwScale(), jt), (KwScale(), torch)):
        module.register_forward_pre_hook(lambda m, args, kwargs: args, with_kwargs=True)
        with pytest.raises(RuntimeError, match="forward pre-hook must return None or a tuple of"):
            module(lib.ones(2), scale=2.0)


# --- state dicts -------------------------------------------------------------------------------
def with_extra_state(lib_nn):
    """A Linear subclass keeping a step counter as extra state."""

    class Counted(lib_nn.Linear):
        def __init__(self):
            super().__init__(2, 2)
            self.steps = 0

        def get_extra_state(self):
            return {"steps": self.steps}

        def set_extra_state(self, state):
            self.steps = state["steps"]

    return Counted


def extra_state_models():
    models = []
    for lib_nn in (nn, tnn):
        model = lib_nn.Sequential(with_extra_state(lib_nn)(), lib_nn.ReLU())
        model[0].steps = 5
        models.append(model)
    return models


def test_extra_state_keys_metadata_and_round_trip(tmp_path):
    jmodel, tmodel = extra_state_models()
    jstate, tstate = jmodel.state_dict(), tmodel.state_dict()
    assert list(jstate) == list(tstate) == ["0.weight", "0.bias", "0._extra_state"]
    assert jstate["0._extra_state"] == tstate["0._extra_state"] == {"steps": 5}
    assert dict(jstate._metadata) == dict(tstate._metadata)
    jt.save(jstate, tmp_path / "ckpt.st")
    fresh = nn.Sequential(with_extra_state(nn)(), nn.ReLU())
    fresh.load_state_dict(jt.load(tmp_path / "ckpt.st"))
    assert fresh[0].steps == 5


def test_missing_extra_state_is_a_missing_key():
    for model in extra_state_models():
        state = model.state_dict()
        del state["0._extra_state"]
        with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "0._extra_state"'):
            model.load_state_dict(state)


def test_state_dict_hooks_arguments_and_edits():
    logs, states = [], []
    for lib_nn in (nn, tnn):
        model = lib_nn.Sequential(lib_nn.Linear(2, 2))
        log = []
        model[0].register_state_dict_pre_hook(lambda m, prefix, keep_vars, log=log: log.append((prefix, keep_vars)))

        def post(m, state, prefix, local_metadata, log=log):
            log.append((prefix, dict(local_metadata)))
            state[prefix + "note"] = 1

        model[0].register_state_dict_post_hook(post)
        model._register_state_dict_hook(lambda m, state, prefix, meta: OrderedDict(renamed=state[prefix + "0.note"]))
        states.append(model.state_dict(keep_vars=True))
        logs.append(log)
    assert logs[0] == logs[1] == [("0.", True), ("0.", {"version": 1})]
    assert states[0] == states[1] == {"renamed": 1}


def test_public_state_dict_post_hook_must_return_none():
    for lib_nn in (nn, tnn):
        model = lib_nn.Linear(2, 2)
        model.register_state_dict_post_hook(lambda m, state, prefix, meta: {})
        with pytest.raises(RuntimeError, match="state_dict post-hook must return None"):
            model.state_dict()


def test_load_hooks_arguments_renames_and_cleared_keys():
    logs = []
    for lib_nn, lib in ((nn, jt), (tnn, torch)):
        model = lib_nn.Sequential(lib_nn.Linear(2, 2))
        log = []

        def rename(m, state, prefix, meta, strict, missing, unexpected, errors, log=log):
            log.append(("pre", prefix, sorted(state), strict, list(missing), list(unexpected), list(errors)))
            state[prefix + "weight"] = state.pop(prefix + "w")

        def clear(m, keys, log=log):
            log.append(("post", list(keys.missing_keys), list(keys.unexpected_keys)))
            keys.unexpected_keys.clear()

        model[0].register_load_state_dict_pre_hook(rename)
        model.register_load_state_dict_post_hook(clear)
        state = {"0.w": lib.full((2, 2), 3.0), "0.bias": lib.zeros(2), "extra": lib.zeros(1)}
        result = model.load_state_dict(state)
        assert result.missing_keys == result.unexpected_keys == []
        assert float(model[0].weight.detach().sum()) == 12.0
        logs.append(log)
    assert logs[0] == logs[1] == [
        ("pre", "0.", ["0.bias", "0.w"], True, [], ["extra"], []),
        ("post", [], ["extra"]),
    ]


# --- conversions and lookups --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["half", "bfloat16", "float", "double", "type"])
def test_dtype_conversions_of_parameters_and_buffers(method):
    """Integer buffers (num_batches_tracked) keep their dtype, except under `Module.type`."""
    found = []
    for lib_nn, lib in ((nn, jt), (tnn, torch)):
        model = lib_nn.Sequential(lib_nn.Linear(2, 2), lib_nn.BatchNorm1d(2)).double()
        args = (lib.float16,) if method == "type" else ()
        assert getattr(model, method)(*args) is model
        found.append({name: str(t.dtype).split(".")[-1] for name, t in model.state_dict().items()})
    assert found[0] == found[1]


def test_to_empty_keeps_shapes_and_dtypes():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double()
    weight = model[0].weight
    assert model.to_empty(device="cpu") is model
    assert model[0].weight is weight
    assert {n: (tuple(t.shape), t.dtype) for n, t in model.state_dict().items()} == {
        "0.weight": ((3, 2), jt.float64), "0.bias": ((3,), jt.float64),
        "1.weight": ((3,), jt.float64), "1.bias": ((3,), jt.float64),
        "1.running_mean": ((3,), jt.float64), "1.running_var": ((3,), jt.float64),
        "1.num_batches_tracked": ((), jt.int64),
    }


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("get_submodule", "0.nope"),
        ("get_submodule", "0.weight"),
        ("get_parameter", "1.running_mean"),
        ("get_parameter", "0.nope"),
        ("get_buffer", "0.weight"),
        ("get_buffer", "1.nope"),
    ],
)
def test_lookup_errors_match(method, target):
    messages = []
    for lib_nn in (nn, tnn):
        model = lib_nn.Sequential(lib_nn.Linear(2, 2), lib_nn.BatchNorm1d(2))
        with pytest.raises(AttributeError) as err:
            getattr(model, method)(target)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_lookups_find_the_same_names():
    found = []
    for lib_nn in (nn, tnn):
        shared = lib_nn.Linear(2, 2)
        model = lib_nn.Sequential(shared, lib_nn.BatchNorm1d(2), shared)
        model.register_module("extra", lib_nn.ReLU())
        found.append((
            [n for n, _ in model.named_modules(remove_duplicate=False, prefix="m")],
            [n for n, _ in model.named_modules()],
            tuple(model.get_parameter("0.weight").shape),
            tuple(model.get_buffer("1.running_var").shape),
            type(model.get_submodule("extra")).__name__,
        ))
    assert found[0] == found[1]


def test_requires_grad_and_zero_grad():
    results = []
    for lib_nn, lib in ((nn, jt), (tnn, torch)):
        model = lib_nn.Linear(2, 2)
        model(lib.ones(1, 2)).sum().backward()
        model.zero_grad(set_to_none=False)
        zeros = float(model.weight.grad.abs().sum())
        model.zero_grad()
        frozen = [p.requires_grad for p in model.requires_grad_(False).parameters()]
        results.append((zeros, model.weight.grad, frozen))
    assert results[0] == results[1] == (0.0, None, [False, False])


def test_save_of_a_whole_module_says_to_save_the_state_dict(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"saves no code.*jitorch.save\(model.state_dict\(\), path\)"):
        jt.save({"model": model}, tmp_path / "model.st")


def test_a_child_or_parameter_assigned_anew_keeps_its_place():
    """As PyTorch: `self.decoder = nn.Linear(...)` over an existing child (a subclass of
    nn.Transformer replacing its decoder) keeps the child's place, so parameters() and state_dict()
    list in PyTorch's order."""
    def model_of(lib):
        class Model(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = lib.nn.Linear(2, 2), lib.nn.Linear(2, 2)
                self.w, self.v = lib.nn.Parameter(lib.zeros(1)), lib.nn.Parameter(lib.zeros(1))
                self.a = lib.nn.Linear(2, 3)
                self.w = lib.nn.Parameter(lib.ones(1))

        return Model()

    for lib in (jt, torch):
        names = list(model_of(lib).state_dict())
        assert names == ["w", "v", "a.weight", "a.bias", "b.weight", "b.bias"], (lib.__name__, names)
