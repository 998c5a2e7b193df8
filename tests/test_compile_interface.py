"""torch.compile's interface on jitorch.compile: `mode`, `options`, `backend`, `fullgraph`,
`dynamic`, `disable`; `jitorch.compile(model)` as PyTorch's OptimizedModule and `Module.compile()`
in place; `jitorch.compiler.reset()` and `is_compiling()`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jitorch as jt
from jitorch import nn
from jitorch.backends.cpu import CPUBackend
from jitorch.nn.modules.module import OptimizedModule


def make_mlp(lib):
    lib.manual_seed(0)
    return lib.nn.Sequential(lib.nn.Linear(4, 8), lib.nn.ReLU(), lib.nn.Linear(8, 3))


def x_batch():
    return jt.tensor(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# compiled modules


def test_a_compiled_module_is_pytorchs_optimized_module():
    """A Module wrapping the original as `_orig_mod`: its parameters (shared), PyTorch's state_dict
    keys, checkpoints moving both ways, attributes read through, train/eval passed down."""
    model = make_mlp(jt)
    compiled = jt.compile(model)
    assert isinstance(compiled, nn.Module) and isinstance(compiled, OptimizedModule)
    assert compiled._orig_mod is model
    linear = jt.compile(nn.Linear(4, 3))
    assert linear.in_features == 4 and linear.weight is linear._orig_mod.weight  # (read through)
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in model.parameters()]
    theirs = torch.compile(make_mlp(torch))  # (lazy: nothing is compiled until it is called)
    assert list(compiled.state_dict()) == list(theirs.state_dict())
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    x = x_batch()
    np.testing.assert_allclose(compiled(x).detach().numpy(), model(x).detach().numpy(), rtol=1e-6, atol=1e-6)
    # a plain checkpoint loads into the compiled model with the prefix added, and back
    other = make_mlp(jt)
    with jt.no_grad():
        for p in other.parameters():
            p.mul_(2.0)
    compiled.load_state_dict({f"_orig_mod.{k}": v for k, v in other.state_dict().items()})
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), other[0].weight.detach().numpy())
    plain = make_mlp(jt)
    plain.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in compiled.state_dict().items()})
    np.testing.assert_array_equal(plain[2].bias.detach().numpy(), other[2].bias.detach().numpy())
    compiled.eval()
    assert not model.training and not model[0].training
    compiled.train()
    assert model.training


def test_an_optimizer_made_on_the_compiled_module_trains_the_original():
    model = make_mlp(jt)
    compiled = jt.compile(model)
    opt = jt.optim.SGD(compiled.parameters(), lr=0.1)
    before = model[0].weight.detach().numpy().copy()
    loss = compiled(x_batch()).square().mean()
    loss.backward()
    opt.step()
    assert not np.array_equal(model[0].weight.detach().numpy(), before)
    assert compiled._compiled.compiles == 1


def test_module_compile_compiles_in_place():
    """`model.compile()`: calls run the compiled forward; the module and its keys stay as they are."""
    model = make_mlp(jt)
    keys = list(model.state_dict())
    x = x_batch()
    expected = model(x).detach().numpy()
    assert model.compile(mode="max-autotune-no-cudagraphs") is None
    out = model(x)
    model(x)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    compiled = model.__dict__["_compiled_call"]
    assert compiled.compiles == 1 and compiled.hits == 1 and compiled.wide_autotuning
    assert list(model.state_dict()) == keys and compiled.name == "Sequential"


# ---------------------------------------------------------------------------------------------
# the arguments


@pytest.mark.parametrize("mode, graphs, wide", [(None, False, False), ("default", False, False),
                                                ("reduce-overhead", True, False), ("max-autotune", True, True),
                                                ("max-autotune-no-cudagraphs", False, True)])
def test_pytorchs_modes_compile_and_say_what_they_turn_on(mode, graphs, wide):
    f = jt.compile(lambda x: (x * 2 + 1).relu().sum(), mode=mode)
    x = x_batch()
    assert f(x).item() == pytest.approx((x * 2 + 1).relu().sum().item(), rel=1e-6)
    assert f.compiles == 1 and (f.graphs, f.wide_autotuning) == (graphs, wide)


def test_max_autotune_compiles_kernels_under_the_wide_search(monkeypatch):
    """The backend compiles a max-autotune program's kernels with `autotuning_wide()` on (the GPU
    backend then offers each kernel more launch configurations to time), and a default one's off."""
    seen = []
    compile_kernels = CPUBackend.compile_kernels

    def recording(self, descs):
        seen.append(jt.backends.autotuning_wide())
        return compile_kernels(self, descs)

    monkeypatch.setattr(CPUBackend, "compile_kernels", recording)
    x = x_batch()
    # (constants no other test uses: a graph compiled before in this process reuses its kernels)
    jt.compile(lambda x: (x * 2.0625 + 1).exp().sum(-1), mode="max-autotune")(x)
    jt.compile(lambda x: (x * 3.0625 + 1).exp().sum(-1))(x)
    assert seen == [True, False] and not jt.backends.autotuning_wide()


def test_options_are_what_the_modes_set_and_not_both():
    f = jt.compile(lambda x: x + 1, options={"triton.cudagraphs": True, "max_autotune": True})
    assert (f.graphs, f.wide_autotuning) == (True, True)
    assert jt.compile(lambda x: x + 1, options={"max_autotune": True}).graphs is False
    with pytest.raises(RuntimeError, match="Either mode or options can be specified"):
        jt.compile(lambda x: x, mode="max-autotune", options={"max_autotune": True})
    with pytest.raises(ValueError, match=r"unknown options \['shape_padding'\]; jitorch reads 'triton.cudagraphs'"):
        jt.compile(lambda x: x, options={"shape_padding": True})


def test_backends_jitorchs_pytorchs_default_and_eager():
    calls = []

    def f(x):
        calls.append(1)
        return x * 2

    x = x_batch()
    for backend in ("jitorch", "inductor"):
        g = jt.compile(lambda x: x * 2, backend=backend)
        g(x), g(x)
        assert g.compiles == 1 and g.mode == "default"
    eager = jt.compile(f, backend="eager")
    eager(x), eager(x)
    assert eager.mode == "eager" and len(calls) == 2  # the Python runs on every call
    with pytest.raises(ValueError, match=r"backend must be one of 'jitorch', 'inductor', 'eager', got 'aot_eager'"):
        jt.compile(f, backend="aot_eager")

    def my_backend(gm, example_inputs):  # (a torch.fx backend: nothing jitorch can call)
        return gm

    with pytest.raises(ValueError, match="got a callable \\(my_backend\\)"):
        jt.compile(f, backend=my_backend)


def test_fullgraph_dynamic_and_disable():
    f = lambda x: x.sin() * 2  # noqa: E731
    x = x_batch()
    for fullgraph in (True, False):
        assert jt.compile(f, fullgraph=fullgraph)(x).shape == (5, 4)
    with pytest.raises(TypeError, match="fullgraph must be True or False"):
        jt.compile(f, fullgraph="yes")
    for dynamic, compiles in ((False, 3), (None, 2), (True, 1)):  # (a program per shape; automatic; symbolic)
        g = jt.compile(f, dynamic=dynamic)
        for rows in (5, 2, 3):
            np.testing.assert_allclose(g(x[:rows]).numpy(), f(x[:rows]).numpy(), rtol=1e-6)
        assert g.compiles == compiles, dynamic
    assert jt.compile(f, disable=True) is f
    model = make_mlp(jt)
    assert jt.compile(model, disable=True) is model

    @jt.compile(mode="max-autotune-no-cudagraphs", fullgraph=True)
    def h(x):
        return x.cos()

    assert h.wide_autotuning and h(x).shape == (5, 4)


def test_reset_forgets_programs_and_is_compiling_says_when_tracing():
    def f(x):
        return x * 2 if jt.compiler.is_compiling() else x * 3

    g = jt.compile(f)
    x = jt.ones(3)
    assert g(x).tolist() == [2.0, 2.0, 2.0]  # traced: the branch taken while compiling
    assert f(x).tolist() == [3.0, 3.0, 3.0] and not jt.compiler.is_compiling()
    g(x)
    assert g.compiles == 1
    jt.compiler.reset()
    g(x)
    assert g.compiles == 2
