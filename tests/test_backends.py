"""The backend seam: a new backend is one object that registers itself for a device type, and eager
ops, autograd, the optimizers and jitorch.compile run on it with no other change.

The stand-in here serves the `cuda` device type with numpy buffers (copies on every transfer, so
nothing is shared with the CPU by accident), the CPU's kernels and its LLVM code generator; it
counts what it was asked to do, so each test can tell the work went through it."""

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn.functional as F
from jitorch import backends, dispatch
from jitorch.backends.cpu import CPUBackend
from jitorch.device import Device
from jitorch.errors import BackendError


class StandIn(CPUBackend):
    device_type = "cuda"

    def __init__(self) -> None:
        self.calls = {"kernel": 0, "compile": 0, "to_numpy": 0, "from_numpy": 0}
        self.kernels = {name: self._counting(kernel) for name, kernel in CPUBackend.kernels.items()}

    def _counting(self, kernel):
        def run(*arrays, **params):
            self.calls["kernel"] += 1
            return kernel(*arrays, **params)

        return run

    def from_numpy(self, array):
        self.calls["from_numpy"] += 1
        return np.array(array, copy=True)

    def to_numpy(self, array):
        self.calls["to_numpy"] += 1
        return array

    def compile_kernels(self, descs):
        self.calls["compile"] += len(descs)
        return super().compile_kernels(descs)


@pytest.fixture
def stand_in(monkeypatch):
    backend = StandIn()
    monkeypatch.setitem(backends._BACKENDS, "cuda", backend)
    monkeypatch.setattr(Device, "_interned", dict(Device._interned))  # forget any earlier cuda device
    monkeypatch.setattr(dispatch, "_backends", {})  # and the backend dispatch found for it
    return backend


@pytest.mark.skipif(jt.cuda.is_available(), reason="this machine has a CUDA backend")
def test_without_a_backend_the_device_is_refused():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        jt.randn(3, device="cuda")


def test_eager_ops_and_autograd_run_on_the_registered_backend(stand_in):
    x_cpu = jt.randn(8, 5)
    w_cpu = jt.randn(5, 3, requires_grad=True)
    x, w = x_cpu.to("cuda"), w_cpu.detach().to("cuda").requires_grad_()
    assert x.device.type == "cuda" and stand_in.calls["from_numpy"] == 2
    loss = (x @ w).relu().softmax(-1).square().sum()
    loss.backward()
    assert loss.device.type == "cuda" and w.grad.device.type == "cuda"
    assert stand_in.calls["kernel"] > 5
    (x_cpu @ w_cpu).relu().softmax(-1).square().sum().backward()
    np.testing.assert_allclose(w.grad.to("cpu").numpy(), w_cpu.grad.numpy(), rtol=1e-6)


def test_devices_do_not_mix(stand_in):
    with pytest.raises(RuntimeError, match="same device"):
        jt.ones(2).to("cuda") + jt.ones(2)


def test_a_missing_kernel_names_the_op_and_the_device(stand_in):
    del stand_in.kernels["exp"]
    with pytest.raises(BackendError, match=r"`exp` has no kernel on device cuda"):
        jt.ones(2).to("cuda").exp()


def test_a_compiled_training_step_runs_on_the_registered_backend(stand_in):
    def run(device):
        jt.manual_seed(0)
        model = jt.nn.Sequential(jt.nn.Linear(6, 16), jt.nn.GELU(), jt.nn.Linear(16, 3))
        model.to(device)
        opt = jt.optim.AdamW(model.parameters(), lr=0.05)
        x, y = jt.randn(32, 6).to(device), jt.tensor(np.arange(32) % 3).to(device)

        @jt.compile
        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(F.dropout(model(x), 0.1), y)
            loss.backward()
            opt.step()
            return loss

        losses = [step(x, y).item() for _ in range(5)]
        return losses, [p.to("cpu").detach().numpy() for p in model.parameters()], step

    cpu_losses, cpu_params, _ = run("cpu")
    losses, params, step = run("cuda")
    assert stand_in.calls["compile"] > 0
    lifted = [i.ref for entries in step.cache.values() for prog in entries for i in prog.graph.inputs
              if i.kind == "lifted"]
    assert lifted and all(t.device.type == "cuda" for t in lifted if t.ndim)  # CPU scalars: hyperparameters
    assert all(prog.backend is stand_in for entries in step.cache.values() for prog in entries)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-6)
    for a, b in zip(params, cpu_params):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
