"""Eager composites as cached compiled functions (`jitorch.compiler.composites`) and the optimizers'
compiled update by default, where the backend says `fuses_eager_composites` (the GPU's does).

The CPU backend does not, so on the CPU these tests turn the switch on for its backend and check the
fused eager path against the plain one: values and gradients (within float32 rounding of fused and
unfused kernels), double backward, error messages, caching. Tests marked `gpu` check on an NVIDIA
GPU that the fused path is the one taken and that it matches PyTorch (`python -m pytest -m gpu
tests/test_eager_fusion.py -s` prints eager step times with and without it)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import torch

import jitorch as jt
import jitorch.nn.functional as F
from jitorch.backends import backend_for
from jitorch.compiler import composites
from jitorch.optim import SGD, Adam, AdamW, RMSprop

RTOL, ATOL = 1e-5, 1e-6  # fused and unfused float32 kernels round differently (exp, log, sums)


@contextlib.contextmanager
def fusing(on: bool = True, device: str = "cpu"):
    """The eager-composite switch of `device`'s backend, set for a block."""
    backend = backend_for(device)
    saved = backend.__dict__.get("fuses_eager_composites")
    backend.fuses_eager_composites = on
    try:
        yield
    finally:
        if saved is None:
            del backend.fuses_eager_composites  # back to the class's answer
        else:
            backend.fuses_eager_composites = saved


@pytest.fixture(autouse=True)
def _fresh_cache():
    composites.forget()
    yield
    composites.forget()


def _compiled_names() -> list[str]:
    return sorted(cf.name for cf in composites.compiled_functions().values())


# ---------------------------------------------------------------------------------------------
# the ops: (name, function of jitorch tensors, input shapes, which inputs require grad)

def _targets(n: int, classes: int, seed: int = 3, ignore: int | None = None) -> jt.Tensor:
    t = np.random.default_rng(seed).integers(0, classes, size=n)
    if ignore is not None:
        t[::3] = ignore
    return jt.tensor(t)


OP_CASES = {
    "softmax_last": (lambda x: F.softmax(x, -1), [(6, 9)]),
    "softmax_dim0": (lambda x: F.softmax(x, 0), [(6, 9)]),
    "softmax_3d_dim1": (lambda x: F.softmax(x, dim=1), [(2, 5, 4)]),
    "softmax_method_float64": (lambda x: x.softmax(-1, dtype=jt.float64), [(4, 7)]),
    "jt_softmax": (lambda x: jt.softmax(x * 3, 1), [(4, 7)]),
    "log_softmax_last": (lambda x: F.log_softmax(x, -1), [(6, 9)]),
    "log_softmax_dim0": (lambda x: x.log_softmax(0), [(6, 9)]),
    "layer_norm_affine": (lambda x, w, b: F.layer_norm(x, (9,), w, b), [(6, 9), (9,), (9,)]),
    "layer_norm_plain": (lambda x: F.layer_norm(x, 9, eps=1e-3), [(2, 6, 9)]),
    "layer_norm_2d_shape": (lambda x, w, b: F.layer_norm(x, (3, 4), w, b), [(5, 3, 4), (3, 4), (3, 4)]),
    "layer_norm_module": (lambda x: jt.nn.LayerNorm(9)(x), [(6, 9)]),
    "rms_norm_weight": (lambda x, w: F.rms_norm(x, (9,), w, 1e-6), [(6, 9), (9,)]),
    "rms_norm_default_eps": (lambda x: F.rms_norm(x, (9,)), [(6, 9)]),
    "gelu": (lambda x: F.gelu(x), [(6, 9)]),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), [(6, 9)]),
    "cross_entropy_mean": (lambda x: F.cross_entropy(x, _targets(12, 7)), [(12, 7)]),
    "cross_entropy_sum": (lambda x: F.cross_entropy(x, _targets(12, 7), reduction="sum"), [(12, 7)]),
    "cross_entropy_none": (lambda x: F.cross_entropy(x, _targets(12, 7), reduction="none"), [(12, 7)]),
    "cross_entropy_ignore_index": (lambda x: F.cross_entropy(x, _targets(12, 7, ignore=-100)), [(12, 7)]),
    "cross_entropy_smoothing": (lambda x: F.cross_entropy(x, _targets(12, 7), label_smoothing=0.1), [(12, 7)]),
    "cross_entropy_weight": (lambda x, w: F.cross_entropy(x, _targets(12, 7, ignore=2), w, ignore_index=2,
                                                          label_smoothing=0.2), [(12, 7), (7,)]),
    "cross_entropy_probabilities": (lambda x, p: F.cross_entropy(x, p.softmax(-1).detach(), label_smoothing=0.1),
                                    [(12, 7), (12, 7)]),
    "cross_entropy_unbatched": (lambda x: F.cross_entropy(x, jt.tensor(3)), [(7,)]),
    "cross_entropy_spatial": (lambda x: F.cross_entropy(x, jt.tensor(np.random.default_rng(1).integers(
        0, 5, (3, 4)))), [(3, 5, 4)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [(6, 9), (5, 9), (5,)]),
    "linear_3d_no_bias": (lambda x, w: F.linear(x, w), [(2, 6, 9), (5, 9)]),
    "linear_1d_input": (lambda x, w, b: F.linear(x, w, b), [(9,), (5, 9), (5,)]),
    "linear_module": (lambda x: (jt.manual_seed(0), jt.nn.Linear(9, 4))[1](x), [(3, 6, 9)]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding=1), [(2, 3, 6, 8), (4, 3, 3, 3), (4,)]),
    "conv2d_strided_grouped_no_bias": (lambda x, w: F.conv2d(x, w, stride=2, groups=2, dilation=(1, 2)),
                                       [(2, 4, 7, 9), (6, 2, 3, 2)]),
    "conv2d_same_unbatched": (lambda x, w: F.conv2d(x, w, padding="same"), [(3, 6, 8), (2, 3, 2, 3)]),
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1), [(2, 3, 10), (5, 3, 3), (5,)]),
    "conv2d_module": (lambda x: (jt.manual_seed(0), jt.nn.Conv2d(3, 4, 3))[1](x), [(2, 3, 6, 8)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), [(2, 3, 6, 8)]),
    "max_pool2d_padded_overlapping": (lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), [(2, 3, 7, 9)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2), [(2, 3, 6, 8)]),
    "avg_pool2d_padded_excluded": (lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [(3, 7, 9)]),
}


def _inputs(shapes, seed: int = 0, device: str = "cpu", lib=jt):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if lib is torch:
        return [torch.tensor(a, device=device, requires_grad=True) for a in arrays]
    return [jt.tensor(a, device=device, requires_grad=True) for a in arrays]


def _run(fn, shapes, create_graph: bool = False):
    """Values, gradients (and with `create_graph`, gradients of a function of the gradients)."""
    inputs = _inputs(shapes)
    out = fn(*inputs)
    cot = jt.tensor(np.random.default_rng(9).standard_normal(out.shape).astype(np.float32))
    grads = jt.autograd.grad([out], inputs, [cot], create_graph=create_graph, allow_unused=True)
    results = [out.detach().numpy()] + [None if g is None else g.detach().numpy() for g in grads]
    if create_graph:
        second = sum((g * g).sum() for g in grads if g is not None and g.requires_grad)
        results += [None if g is None else g.numpy()
                    for g in jt.autograd.grad([second], inputs, allow_unused=True)]
    return out, results


def _assert_same(plain: list, fused: list, what: str) -> None:
    assert len(plain) == len(fused)
    for i, (a, b) in enumerate(zip(plain, fused)):
        assert (a is None) == (b is None), f"{what}: result {i}"
        if a is not None:
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=f"{what}: result {i}")


@pytest.mark.parametrize("name", OP_CASES)
def test_the_fused_eager_path_equals_the_plain_one(name):
    fn, shapes = OP_CASES[name]
    _, plain = _run(fn, shapes)
    assert composites.compiled_functions() == {}  # the CPU runs the plain composite by default
    with fusing():
        out, fused = _run(fn, shapes)
    _assert_same(plain, fused, name)
    assert composites.compiled_functions(), f"{name} did not take the compiled path"
    assert out.grad_fn.prim.name == "compiled_backward"  # the backward of the trace, not op by op


@pytest.mark.parametrize("name", ["softmax_last", "log_softmax_dim0", "layer_norm_affine", "rms_norm_weight",
                                  "gelu", "cross_entropy_weight", "cross_entropy_probabilities"])
def test_double_backward_through_the_fused_path_equals_the_plain_one(name):
    fn, shapes = OP_CASES[name]
    _, plain = _run(fn, shapes, create_graph=True)
    with fusing():
        _, fused = _run(fn, shapes, create_graph=True)
    _assert_same(plain, fused, name)


def test_repeated_calls_replay_one_program_and_other_arguments_get_their_own():
    x = jt.randn(4, 6, requires_grad=True)
    with fusing():
        for _ in range(5):
            F.softmax(x, -1).sum().backward()
        F.softmax(x, 1)  # the same dim said differently: the same compiled function
        F.softmax(x, 0)
        F.layer_norm(x, (6,))
        F.layer_norm(x, (6,), eps=1e-3)
        F.softmax(jt.randn(3, 6), -1)  # a new shape (and no grad): a new program of the same function
    compiled = {cf.name: cf for cf in composites.compiled_functions().values()}
    assert sorted(compiled) == [
        "layer_norm(input, weight=None, bias=None, dims=(1,), eps=0.001)",
        "layer_norm(input, weight=None, bias=None, dims=(1,), eps=1e-05)",
        "softmax(input, dim=0, dtype=None)", "softmax(input, dim=1, dtype=None)"]
    softmax = compiled["softmax(input, dim=1, dtype=None)"]
    assert (softmax.calls, softmax.compiles, softmax.hits) == (7, 2, 5)
    assert "shape (4, 6) -> (3, 6)" in softmax.recompile_reasons[-1]


def test_no_grad_and_weights_alone_requiring_grad():
    x = jt.randn(5, 8)
    w, b = jt.ones(8, requires_grad=True), jt.zeros(8, requires_grad=True)
    with fusing():
        with jt.no_grad():
            y = F.layer_norm(x, (8,), w, b)
        assert not y.requires_grad
        out = F.layer_norm(x, (8,), w, b)
        (out * x).sum().backward()
    w2, b2 = jt.ones(8, requires_grad=True), jt.zeros(8, requires_grad=True)
    (F.layer_norm(x, (8,), w2, b2) * x).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), w2.grad.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(b.grad.numpy(), b2.grad.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(y.numpy(), out.detach().numpy(), rtol=RTOL, atol=ATOL)


def test_nothing_changes_under_a_tracer_or_with_the_compiler_disabled():
    x = jt.randn(4, 6)
    with fusing():
        step = jt.compile(lambda x: F.layer_norm(F.softmax(x, -1), (6,)))
        got = step(x)
        assert composites.compiled_functions() == {}  # inlined into the user's trace, as the composites
        with jt.compiler.disable():
            eager = F.layer_norm(F.softmax(x, -1), (6,))
    np.testing.assert_allclose(got.numpy(), eager.numpy(), rtol=RTOL, atol=ATOL)
    assert all(cf.compiles == 0 for cf in composites.compiled_functions().values())


def test_past_the_program_limit_new_shapes_run_op_by_op(monkeypatch):
    monkeypatch.setattr(composites, "MAX_PROGRAMS", 2)
    xs = [jt.randn(n, 5) for n in (2, 3, 4, 5)]
    with fusing():
        got = [F.softmax(x, -1).numpy() for x in xs + xs[:1]]
    (softmax,) = composites.compiled_functions().values()
    assert softmax.compiles == 2 and softmax.hits == 1  # the first shape again: still its program
    for x, g in zip(xs + xs[:1], got):
        np.testing.assert_allclose(g, F.softmax(x, -1).numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("op", ["linear", "conv2d"])
def test_products_under_autocast_cast_inside_their_program_as_the_plain_path_does(op):
    # the composite traces autocast's casts under the caller's autocast state, which its guards check:
    # the same dtypes and values as op by op, and a program of its own outside the region
    fn, shapes = {"linear": (F.linear, [(2, 6, 9), (5, 9), (5,)]),
                  "conv2d": (F.conv2d, [(2, 3, 6, 8), (4, 3, 3, 3), (4,)])}[op]

    def run(fused: bool, autocast: bool):
        x, w, b = _inputs(shapes)
        with fusing(fused), jt.autocast("cpu", dtype=jt.bfloat16, enabled=autocast):
            out = fn(x, w, b)
        out.float().sum().backward()
        return [out.dtype, w.grad.dtype] + [t.detach().float().numpy() for t in (out, x.grad, w.grad, b.grad)]

    for autocast in (True, False):
        plain, fused = run(False, autocast), run(True, autocast)
        assert fused[:2] == plain[:2] == ([jt.bfloat16, jt.float32] if autocast else [jt.float32, jt.float32])
        tol = dict(rtol=1e-2, atol=1e-2) if autocast else dict(rtol=RTOL, atol=ATOL)  # bfloat16: 8 bits
        for i, (a, b) in enumerate(zip(plain[2:], fused[2:])):
            np.testing.assert_allclose(b, a, err_msg=f"autocast={autocast}: result {i}", **tol)
    (compiled,) = composites.compiled_functions().values()
    assert compiled.compiles == 2  # one program in the region, one outside


ERROR_CASES = {
    "softmax_dim": lambda x: F.softmax(x, 2),
    "log_softmax_dim": lambda x: x.log_softmax(-3),
    "softmax_bool": lambda x: F.softmax(x > 0, -1),
    "softmax_empty": lambda x: F.softmax(jt.randn(0, 3), -1),
    "layer_norm_shape": lambda x: F.layer_norm(x, (4,)),
    "layer_norm_weight": lambda x: F.layer_norm(x, (5,), jt.ones(4)),
    "layer_norm_bias": lambda x: F.layer_norm(x, (5,), jt.ones(5), jt.ones(3)),
    "layer_norm_int": lambda x: F.layer_norm(x.long(), (5,)),
    "rms_norm_weight": lambda x: F.rms_norm(x, (5,), jt.ones(3)),
    "gelu_approximate": lambda x: F.gelu(x, approximate="bad"),
    "linear_in_features": lambda x: F.linear(x, jt.ones(3, 4)),
    "linear_bias": lambda x: F.linear(x, jt.ones(3, 5), jt.ones(4)),
    "conv2d_too_small": lambda x: F.conv2d(x.reshape(1, 1, 4, 5), jt.ones(2, 1, 5, 5)),
    "conv2d_channels": lambda x: F.conv2d(x.reshape(1, 1, 4, 5), jt.ones(2, 3, 2, 2)),
    "conv2d_same_strided": lambda x: F.conv2d(x.reshape(1, 1, 4, 5), jt.ones(2, 1, 2, 2), stride=2, padding="same"),
    "conv1d_padding_string": lambda x: F.conv1d(x.reshape(1, 4, 5), jt.ones(2, 4, 2), padding="full"),
    "cross_entropy_out_of_bounds": lambda x: F.cross_entropy(x, jt.tensor([0, 1, 5, 2])),
    "cross_entropy_negative": lambda x: F.cross_entropy(x, jt.tensor([0, 1, -1, 2])),
    "cross_entropy_batch": lambda x: F.cross_entropy(x, jt.tensor([0, 1, 2])),
    "cross_entropy_float_target": lambda x: F.cross_entropy(x, jt.tensor([0.0, 1, 2, 3])),
    "cross_entropy_reduction": lambda x: F.cross_entropy(x, jt.tensor([0, 1, 2, 3]), reduction="avg"),
    "cross_entropy_weight": lambda x: F.cross_entropy(x, jt.tensor([0, 1, 2, 3]), weight=jt.ones(3)),
    "cross_entropy_unbatched_target": lambda x: F.cross_entropy(x[0], jt.tensor([1, 2])),
    "cross_entropy_spatial_target": lambda x: F.cross_entropy(jt.randn(2, 5, 3), jt.zeros(2, 4, dtype=jt.int64)),
}


@pytest.mark.parametrize("name", ERROR_CASES)
def test_errors_are_the_plain_paths(name):
    x = jt.randn(4, 5, requires_grad=True)
    raised = []
    for on in (False, True):
        with fusing(on), pytest.raises(Exception) as info:
            ERROR_CASES[name](x)
        raised.append((type(info.value), str(info.value)))
    assert raised[1] == raised[0]
    assert "compiled" not in raised[1][1]


# ---------------------------------------------------------------------------------------------
# transformer layers: one compiled function each, kept by the layer

LAYERS = {
    "encoder_post_norm_gelu": dict(kind="encoder", activation="gelu", norm_first=False, dropout=0.0),
    "encoder_pre_norm_dropout": dict(kind="encoder", activation="relu", norm_first=True, dropout=0.3),
    "encoder_key_padding_eval": dict(kind="encoder", activation="relu", norm_first=True, dropout=0.3, pad=True,
                                     train=False),
    "decoder_pre_norm_dropout": dict(kind="decoder", activation="relu", norm_first=True, dropout=0.2),
    "decoder_post_norm_padding": dict(kind="decoder", activation="gelu", norm_first=False, dropout=0.0, pad=True),
}


def _layer(kind: str, activation="relu", norm_first=True, dropout=0.0, **_):
    jt.manual_seed(0)
    cls = jt.nn.TransformerEncoderLayer if kind == "encoder" else jt.nn.TransformerDecoderLayer
    return cls(16, 2, 32, dropout=dropout, activation=activation, batch_first=True, norm_first=norm_first)


def _layer_steps(layer, case: dict, steps: int = 2, amp: bool = False) -> list[np.ndarray]:
    """Outputs of `steps` calls and the input's and parameters' accumulated gradients; the random
    generator seeded once, so dropout draws its masks in turn."""
    layer.train(case.get("train", True))
    rng = np.random.default_rng(1)
    x = jt.tensor(rng.standard_normal((2, 5, 16)).astype(np.float32), requires_grad=True)
    memory = jt.tensor(rng.standard_normal((2, 7, 16)).astype(np.float32))
    mask = jt.nn.Transformer.generate_square_subsequent_mask(5)
    padding = jt.tensor(np.array([[False] * 7, [False] * 4 + [True] * 3])) if case.get("pad") else None
    jt.manual_seed(5)
    outs = []
    for _ in range(steps):
        with jt.autocast("cpu", dtype=jt.bfloat16, enabled=amp):
            if case["kind"] == "encoder":
                y = layer(x, src_mask=mask, is_causal=True, src_key_padding_mask=None if padding is None
                          else padding[:, :5])
            else:
                y = layer(x, memory, tgt_mask=mask, tgt_is_causal=True, memory_key_padding_mask=padding)
        cot = jt.tensor(rng.standard_normal(tuple(y.shape)).astype(np.float32))
        (y.float() * cot).sum().backward()
        outs.append(y.detach().float().numpy())
    return outs + [x.grad.numpy()] + [p.grad.numpy() for p in layer.parameters()]


def _assert_same_scaled(plain: list, fused: list, what: str) -> None:
    """As `_assert_same`, the absolute tolerance scaled by each result's size: a layer's gradients
    sum many float32 products, in another order fused."""
    for i, (a, b) in enumerate(zip(plain, fused)):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=10 * RTOL * float(np.abs(a).max()), err_msg=f"{what}: {i}")


def _fused_programs(layer) -> int:
    cache = layer.__dict__.get("_fused_forward")
    return 0 if cache is None else sum(cf.compiles for cf in cache.compiled.values())


@pytest.mark.parametrize("name", LAYERS)
def test_a_transformer_layer_runs_as_one_compiled_function_equal_to_its_plain_forward(name):
    case = LAYERS[name]
    plain = _layer_steps(_layer(**case), case)
    with fusing():
        layer = _layer(**case)
        fused = _layer_steps(layer, case)
    _assert_same_scaled(plain, fused, name)
    assert _fused_programs(layer) == 1  # traced once, replayed on the second call
    assert composites.compiled_functions() == {}  # the layer keeps it, not the global table


def test_a_fused_layer_under_autocast_gives_the_plain_dtypes_and_values():
    case = LAYERS["encoder_pre_norm_dropout"]
    plain = _layer_steps(_layer(**case), case, amp=True)
    with fusing():
        fused = _layer_steps(_layer(**case), case, amp=True)
    for i, (a, b) in enumerate(zip(plain, fused)):  # bfloat16 products: 8 bits, scaled by each result
        np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2 * float(np.abs(a).max()), err_msg=f"result {i}")


def test_hooks_subclasses_custom_activations_and_compiled_modules_take_the_plain_forward():
    case = LAYERS["encoder_pre_norm_dropout"]
    calls = []

    class Mine(jt.nn.TransformerEncoderLayer):
        pass

    def with_hook():
        layer = _layer(**case)
        layer.linear1.register_forward_hook(lambda module, args, out: calls.append(1))
        return layer

    def custom_activation():
        layer = _layer(**case)
        layer.activation = lambda x: F.relu(x) * 2
        return layer

    def subclass():
        jt.manual_seed(0)
        return Mine(16, 2, 32, dropout=0.3, batch_first=True, norm_first=True)

    def compiled_part():
        layer = _layer(**case)
        layer.self_attn.compile()
        return layer

    for make in (with_hook, custom_activation, subclass, compiled_part):
        plain = _layer_steps(make(), case)
        with fusing():
            layer = make()
            fused = _layer_steps(layer, case)
        _assert_same_scaled(plain, fused, make.__name__)
        assert _fused_programs(layer) == 0, make.__name__
    assert len(calls) == 4  # the hook ran on every call, fused switch or not


def test_with_the_compiler_disabled_a_layer_runs_op_by_op():
    case = LAYERS["encoder_pre_norm_dropout"]
    with fusing():
        layer = _layer(**case)
        x = jt.randn(2, 5, 16, requires_grad=True)
        with jt.compiler.disable():  # (the debugging switch: pdb and print inside the layer's forward)
            assert layer(x).grad_fn.prim.name != "compiled_backward"
        assert _fused_programs(layer) == 0
        assert layer(x).grad_fn.prim.name == "compiled_backward"


def test_a_fused_layer_is_copied_without_its_programs_and_freed_with_its_model():
    import copy
    import gc
    import weakref

    case = LAYERS["encoder_pre_norm_dropout"]
    with fusing():
        layer = _layer(**case)
        _layer_steps(layer, case)
        stack = jt.nn.TransformerEncoder(layer, num_layers=2)  # deep copies of the layer
        assert [_fused_programs(copied) for copied in stack.layers] == [0, 0]
        x = jt.randn(2, 5, 16, requires_grad=True)
        stack(x).sum().backward()
        assert [_fused_programs(copied) for copied in stack.layers] == [1, 1]
        clone = copy.deepcopy(layer)
        assert _fused_programs(clone) == 0 and _fused_programs(layer) == 1
        jt.compiler.reset()
        assert _fused_programs(layer) == 0
        _layer_steps(layer, case)
    gone = weakref.ref(layer)
    del layer, stack, clone
    gc.collect()
    assert gone() is None  # its compiled function kept it only in a cycle


# ---------------------------------------------------------------------------------------------
# optimizers: the compiled update by default where the backend fuses eager composites

SHAPES = [(4, 3), (5,), ()]
OPTIMIZERS = {
    "SGD": (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    "Adam": (Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    "AdamW": (AdamW, dict(lr=0.01, betas=(0.8, 0.95))),
    "RMSprop": (RMSprop, dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.05)),
}


def _params(seed: int = 0, device: str = "cpu") -> list[jt.Tensor]:
    rng = np.random.default_rng(seed)
    return [jt.tensor(rng.standard_normal(s).astype(np.float32), device=device, requires_grad=True) for s in SHAPES]


def _train(opt_cls, kwargs: dict, steps: int = 8, device: str = "cpu", skip_grad=None, save_at=None):
    """`steps` steps on fixed gradients with a scheduler changing the lr every step; `skip_grad(i)`
    names a parameter left without a gradient at step i; at step `save_at` the optimizer's state is
    saved and loaded into a fresh optimizer over copies of the parameters, which goes on."""
    params = _params(device=device)
    opt = opt_cls(params, **kwargs)
    scheduler = jt.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step)
    rng = np.random.default_rng(1)
    for i in range(steps):
        if i == save_at:
            saved = opt.state_dict()
            params = [p.detach().clone().requires_grad_() for p in params]
            opt = opt_cls(params, **kwargs)
            opt.load_state_dict(saved)
            scheduler = jt.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9**step, last_epoch=i - 1)
        opt.zero_grad(set_to_none=i % 2 == 0)
        for k, p in enumerate(params):
            g = jt.tensor(rng.standard_normal(p.shape).astype(np.float32), device=device)
            if skip_grad is None or skip_grad(i) != k:
                p.grad = g
            elif p.grad is not None:
                p.grad = None
        opt.step()
        scheduler.step()
    return [p.detach().cpu().numpy() for p in params], opt


def _assert_params_equal(got, want) -> None:
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_default_update_is_compiled_where_the_backend_fuses_and_equals_the_loop(name):
    opt_cls, kwargs = OPTIMIZERS[name]
    loop, loop_opt = _train(opt_cls, kwargs)
    assert loop_opt._fused_update is None  # the CPU's default is the for-loop, as PyTorch's
    with fusing():
        fused, opt = _train(opt_cls, kwargs)
        explicit_loop, explicit_opt = _train(opt_cls, dict(kwargs, foreach=False))
    _assert_params_equal(fused, loop)
    _assert_params_equal(explicit_loop, loop)
    assert explicit_opt._fused_update is None
    compiled = opt._fused_update
    # traced on the first call and once more with the state it made; the lr changing every step is data
    assert compiled is not None and compiled.compiles == 2 and compiled.hits == 6, compiled.recompile_reasons
    assert not any("lr" in reason for reason in compiled.recompile_reasons)


def test_the_implementation_flags_pick_as_pytorchs_do():
    def compiles(**flags) -> bool:
        p = jt.zeros(3, requires_grad=True)
        p.grad = jt.ones(3)
        opt = Adam([p], lr=0.1, **flags)
        opt.step()
        return opt._fused_update is not None

    assert [compiles(), compiles(foreach=True), compiles(fused=True)] == [False, False, True]
    with fusing():
        assert [compiles(), compiles(foreach=True), compiles(foreach=False), compiles(fused=False),
                compiles(fused=True)] == [True, True, False, False, True]


@pytest.mark.parametrize("name", ["SGD", "AdamW", "RMSprop"])
def test_params_without_grads_and_a_reloaded_state_dict_follow_the_loop(name):
    opt_cls, kwargs = OPTIMIZERS[name]
    skip = lambda i: i % 3  # noqa: E731 - no gradient for one parameter (a different one) at each step
    loop, _ = _train(opt_cls, kwargs, steps=9, skip_grad=skip, save_at=5)
    with fusing():
        fused, opt = _train(opt_cls, kwargs, steps=9, skip_grad=skip, save_at=5)
    _assert_params_equal(fused, loop)
    assert opt._fused_update is not None and opt._fused_update.hits >= 1


def test_closures_and_param_groups_added_later():
    def run():
        a, b = jt.ones(3, requires_grad=True), jt.ones(2, requires_grad=True)
        opt = AdamW([a], lr=0.1)
        losses = []
        for i in range(5):
            if i == 2:
                opt.add_param_group({"params": [b], "lr": 0.05})

            def closure():
                opt.zero_grad()
                loss = (a * a).sum() + (b * b * b).sum()
                loss.backward()
                return loss

            losses.append(opt.step(closure).item())
        return a.detach().numpy(), b.detach().numpy(), losses, opt

    *loop, _ = run()
    with fusing():
        *fused, opt = run()
    for x, y in zip(fused, loop):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert opt._fused_update is not None
    assert any("groups" in reason for reason in opt._fused_update.recompile_reasons)


# ---------------------------------------------------------------------------------------------
# on the GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not (jt.cuda.is_available() and torch.cuda.is_available()),
                                reason="needs an NVIDIA GPU with CuPy (jitorch) and CUDA PyTorch")


def _on_cuda(fn_args, shapes, lib):
    """The case's function in `lib` on the GPU: (output, gradients of every input)."""
    inputs = _inputs(shapes, device="cuda", lib=lib)
    out = fn_args(lib, *inputs)
    cot = np.random.default_rng(9).standard_normal(tuple(out.shape)).astype(np.float32)
    if lib is torch:
        grads = torch.autograd.grad([out], inputs, [torch.tensor(cot, device="cuda")], allow_unused=True)
        return [out.detach().cpu().numpy()] + [None if g is None else g.cpu().numpy() for g in grads]
    grads = jt.autograd.grad([out], inputs, [jt.tensor(cot, device="cuda")], allow_unused=True)
    return [out.detach().cpu().numpy()] + [None if g is None else g.cpu().numpy() for g in grads]


def _cuda_targets(lib, n, classes, ignore=None):
    t = _targets(n, classes, ignore=ignore).numpy()
    return torch.tensor(t, device="cuda") if lib is torch else jt.tensor(t, device="cuda")


# the same calls in both libraries (`lib` is jitorch or torch), on the GPU
CUDA_CASES = {
    "softmax": (lambda lib, x: lib.nn.functional.softmax(x, -1), [(64, 103)]),
    "softmax_attention": (lambda lib, x: (x * 0.125).softmax(-1), [(4, 4, 64, 64)]),
    "log_softmax": (lambda lib, x: lib.nn.functional.log_softmax(x, 1), [(64, 103)]),
    "layer_norm": (lambda lib, x, w, b: lib.nn.functional.layer_norm(x, (128,), w, b), [(32, 64, 128), (128,), (128,)]),
    "rms_norm": (lambda lib, x, w: lib.nn.functional.rms_norm(x, (128,), w, 1e-6), [(64, 128), (128,)]),
    "gelu": (lambda lib, x: lib.nn.functional.gelu(x), [(64, 512)]),
    "gelu_tanh": (lambda lib, x: lib.nn.functional.gelu(x, approximate="tanh"), [(64, 512)]),
    "cross_entropy": (lambda lib, x: lib.nn.functional.cross_entropy(x, _cuda_targets(lib, 2048, 103)),
                      [(2048, 103)]),
    "cross_entropy_ignore_smoothing": (lambda lib, x: lib.nn.functional.cross_entropy(
        x, _cuda_targets(lib, 256, 103, ignore=-100), label_smoothing=0.1), [(256, 103)]),
}


@gpu
@needs_cuda
@pytest.mark.parametrize("name", CUDA_CASES)
def test_on_cuda_eager_row_ops_run_fused_triton_kernels_and_match_torch(name):
    from jitorch.backends.cuda.launch import TritonKernel

    fn, shapes = CUDA_CASES[name]
    got = _on_cuda(fn, shapes, jt)
    want = _on_cuda(fn, shapes, torch)
    programs = [p for cf in composites.compiled_functions().values() for entries in cf.cache.values()
                for p in entries]
    assert programs, f"{name}: the eager call on cuda did not take the compiled path"
    assert all(p.backend.device_type == "cuda" for p in programs)
    kernels = [k for p in programs for k in p.plan.kernels + (p.backward.plan.kernels if p.backward else [])]
    assert kernels and all(isinstance(k, TritonKernel) for k in kernels), name
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None), f"{name}: result {i}"
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"{name}: result {i}")
    print(f"{name}: {len(programs)} program(s), kernels {', '.join(k.name for k in kernels)}")


@gpu
@needs_cuda
@pytest.mark.parametrize("amp", [None, "bfloat16"])
def test_on_cuda_linear_is_one_compiled_call_and_matches_torch(amp):
    # a transformer's projection: (batch, length, features) input, bias; under autocast the casts are
    # in the program too, and its outputs and gradients have PyTorch's dtypes
    def run(lib):
        x, w, b = _inputs([(4, 64, 256), (384, 256), (384,)], device="cuda", lib=lib)
        with lib.autocast("cuda", dtype=getattr(lib, amp or "float32"), enabled=amp is not None):
            out = lib.nn.functional.linear(x, w, b)
        cot = np.random.default_rng(9).standard_normal(tuple(out.shape)).astype(np.float32)
        (out.float() * lib.tensor(cot, device="cuda")).sum().backward()
        return [str(t.dtype).split(".")[-1] for t in (out, x.grad, w.grad, b.grad)], [
            t.detach().float().cpu().numpy() for t in (out, x.grad, w.grad, b.grad)]

    got_dtypes, got = run(jt)
    want_dtypes, want = run(torch)
    assert got_dtypes == want_dtypes
    programs = [p for cf in composites.compiled_functions().values() for entries in cf.cache.values() for p in entries]
    assert [p.backend.device_type for p in programs] == ["cuda"], "F.linear did not run as one compiled call"
    for name, g, w in zip(("output", "input grad", "weight grad", "bias grad"), got, want):
        scale = float(np.abs(w).max())
        rtol = 2e-2 if amp else 1e-4  # bfloat16 outputs: 8 bits; float32: sums of 256 or 256 products
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=f"{name} (autocast {amp})")


@gpu
@needs_cuda
@pytest.mark.parametrize("amp", [None, "bfloat16"])
def test_on_cuda_a_transformer_layer_is_one_compiled_call_and_matches_torch(amp, device="cuda"):
    # char_lm's layer (pre-norm, causal, batch first), two steps, gradients accumulated
    def run(lib):
        layer = lib.nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True, norm_first=True)
        state = torch_state if lib is torch else {k: jt.tensor(v.numpy()) for k, v in torch_state.items()}
        layer.load_state_dict(state)
        layer = layer.to(device)
        rng = np.random.default_rng(1)
        x = lib.tensor(rng.standard_normal((4, 64, 128)).astype(np.float32), device="cuda", requires_grad=True)
        mask = lib.nn.Transformer.generate_square_subsequent_mask(64, device="cuda")
        outs = []
        for _ in range(2):
            with lib.autocast("cuda", dtype=getattr(lib, amp or "float32"), enabled=amp is not None):
                y = layer(x, src_mask=mask, is_causal=True)
            cot = lib.tensor(rng.standard_normal(tuple(y.shape)).astype(np.float32), device="cuda")
            (y.float() * cot).sum().backward()
            outs.append(y.detach().float().cpu().numpy())
        return layer, outs + [x.grad.cpu().numpy()] + [p.grad.cpu().numpy() for p in layer.parameters()]

    torch_state = {k: v.detach().clone() for k, v in
                   torch.nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True,
                                                    norm_first=True).state_dict().items()}
    layer, got = run(jt)
    _, want = run(torch)
    assert _fused_programs(layer) == 1, "the layer did not run as one compiled function"
    for i, (g, w) in enumerate(zip(got, want)):
        if amp is None:
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()), err_msg=f"result {i}")
        else:  # bfloat16 rounds pre-activations near 0 to either side of ReLU's kink in either library:
            # a few elements of a weight gradient differ wholly, so the whole result's error is bounded
            error = float(np.linalg.norm(g - w) / np.linalg.norm(w))
            assert error < 3e-2, f"result {i}: relative error {error:.3g}"


@gpu
@needs_cuda
def test_on_cuda_adamw_with_the_default_flags_is_the_compiled_update_and_equals_the_loop():
    kwargs = dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01)
    default, opt = _train(AdamW, kwargs, device="cuda")
    loop, loop_opt = _train(AdamW, dict(kwargs, foreach=False), device="cuda")
    assert opt._fused_update is not None and loop_opt._fused_update is None
    programs = [p for entries in opt._fused_update.cache.values() for p in entries]
    assert programs and all(p.backend.device_type == "cuda" and p.plan.kernels for p in programs)
    assert opt._fused_update.compiles == 2, opt._fused_update.recompile_reasons  # lr changes are data
    # step counts where PyTorch keeps them: on the GPU for the compiled (fused) update, so that it never
    # waits to copy them back; on the CPU for the loop
    assert {s["step"].device.type for s in opt.state.values()} == {"cuda"}
    assert {s["step"].device.type for s in loop_opt.state.values()} == {"cpu"}
    for a, b in zip(default, loop):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and both agree with PyTorch's own AdamW on the GPU (its default there: foreach)
    params = [torch.tensor(q.detach().numpy(), device="cuda", requires_grad=True) for q in _params()]
    torch_opt = torch.optim.AdamW(params, **kwargs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch_opt, lambda step: 0.9**step)
    rng = np.random.default_rng(1)
    for i in range(8):
        torch_opt.zero_grad(set_to_none=i % 2 == 0)
        for p in params:
            p.grad = torch.tensor(rng.standard_normal(p.shape).astype(np.float32), device="cuda")
        torch_opt.step()
        scheduler.step()
    for a, p in zip(default, params):
        np.testing.assert_allclose(a, p.detach().cpu().numpy(), rtol=1e-4, atol=1e-5)


@gpu
@needs_cuda
def test_on_cuda_an_eager_char_lm_step_matches_the_unfused_one_and_is_timed():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import char_lm

    config = char_lm.Config()
    rng = np.random.default_rng(0)
    batches = [char_lm.CharCorpus().batch("train", config.batch_size, config.block_size, rng) for _ in range(8)]

    def train(fused: bool):
        with fusing(fused, "cuda"):
            jt.manual_seed(0)
            model = char_lm.build_model(config, device="cuda")
            optimizer, scheduler = char_lm.make_optimizer(model, config, total_steps=100)
            step = char_lm.make_train_step(model, optimizer, scheduler)
            losses, times = [], []
            for inputs, targets in batches:
                start = time.perf_counter()
                losses.append(step(inputs, targets))  # (.item(): waits for the GPU)
                times.append(time.perf_counter() - start)
            return losses, [p.detach().cpu().numpy() for p in model.parameters()], times

    fused_losses, fused_params, fused_times = train(True)
    plain_losses, plain_params, plain_times = train(False)
    np.testing.assert_allclose(fused_losses, plain_losses, rtol=1e-4)
    for a, b in zip(fused_params, plain_params):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    print(f"eager char_lm step on cuda (median of the last 5): fused composites "
          f"{np.median(fused_times[3:]) * 1e3:.1f} ms, op by op {np.median(plain_times[3:]) * 1e3:.1f} ms")


@gpu
@needs_cuda
def test_on_cuda_a_compiled_training_step_keeps_adams_step_counts_on_the_gpu():
    """Inside a traced step the counts are made on the parameters' device too, so the compiled step's
    write-backs stay on the GPU; and the step still matches the eager loop."""
    results = []
    for compiled in (True, False):
        jt.manual_seed(0)
        model = jt.nn.Linear(8, 3).to("cuda")
        opt = AdamW(model.parameters(), lr=0.01, foreach=None if compiled else False)
        x = jt.randn(16, 8, device="cuda")

        def step(model=model, opt=opt, x=x):
            opt.zero_grad()
            loss = (model(x) ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        run = jt.compile(step) if compiled else step
        losses = [run().item() for _ in range(4)]
        devices = {s["step"].device.type for s in opt.state.values()}
        assert devices == ({"cuda"} if compiled else {"cpu"})
        results.append((losses, model.weight.detach().cpu().numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
