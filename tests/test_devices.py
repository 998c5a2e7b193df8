"""Devices as PyTorch users know them, tested on the CPU: `jitorch.cuda`, placing and moving tensors,
conversions, modules, optimizers and checkpoints across devices.

A stand-in backend serves the `cuda` device type with numpy buffers copied on every transfer (the idea
of tests/test_backends.py), and `jitorch.cuda`'s CuPy runtime runs over a fake `cupy` module: two
devices, a memory pool that counts bytes per device, streams and events on host time. PyTorch (CPU)
is the oracle for numbers, gradients and the error texts it can produce without a GPU; the texts only
a CUDA build produces are PyTorch's source texts."""

from __future__ import annotations

import collections
import importlib
import sys
import time
import weakref

import numpy as np
import pytest
import torch

import jitorch as jt
import jitorch.dispatch as dispatch_module
from jitorch import backends
from jitorch.backends.cpu import CPUBackend
from jitorch.device import Device

device_module = importlib.import_module("jitorch.device")  # `jitorch.device` itself is the Device class

# ---------------------------------------------------------------------------------------------
# a fake CuPy: what jitorch.cuda's runtime calls, on the host


class FakeMemory:
    """A pool allocation: counted in use while alive, then kept cached, as CuPy's pool does."""

    def __init__(self, pool: FakePool, size: int, device_id: int) -> None:
        self.pool, self.size, self.device_id = pool, size, device_id
        pool.used[device_id] += size

    def __del__(self) -> None:
        self.pool.used[self.device_id] -= self.size
        self.pool.cached[self.device_id] += self.size


class FakePool:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.used: collections.Counter = collections.Counter()
        self.cached: collections.Counter = collections.Counter()
        self.emptied: list[int] = []

    def malloc(self, size: int) -> FakeMemory:
        return FakeMemory(self, size, self.cuda.current)

    def used_bytes(self) -> int:
        return self.used[self.cuda.current]

    def total_bytes(self) -> int:
        return self.used[self.cuda.current] + self.cached[self.cuda.current]

    def free_all_blocks(self) -> None:
        self.emptied.append(self.cuda.current)
        self.cached[self.cuda.current] = 0


class FakeStream:
    cuda: FakeCuda  # set on the subclass each FakeCuda makes
    done = True

    def __init__(self, null: bool = False, non_blocking: bool = False, priority: int | None = None) -> None:
        self.non_blocking, self.priority = non_blocking, priority
        self.ptr = 0 if null else id(self)
        self.device_id = self.cuda.current
        self.waited: list = []
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1

    def wait_event(self, event) -> None:
        self.waited.append(event)

    def __enter__(self):
        self._previous, self.cuda.stream = self.cuda.stream, self
        return self

    def __exit__(self, *exc) -> None:
        self.cuda.stream = self._previous


class FakeEvent:
    done = True

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self.timing, self.blocking = not disable_timing, block
        self.time = self.stream = None

    def record(self, stream=None) -> None:
        self.stream, self.time = stream, time.perf_counter()

    def synchronize(self) -> None:
        pass


class FakeRuntimeAPI:
    def __init__(self, cuda: FakeCuda, count: int) -> None:
        self.cuda, self.count = cuda, count

    def getDeviceCount(self) -> int:  # noqa: N802 - CuPy's names
        return self.count

    def getDevice(self) -> int:  # noqa: N802
        return self.cuda.current

    def setDevice(self, index: int) -> None:  # noqa: N802
        if not 0 <= index < self.count:
            raise RuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        self.cuda.current = index

    def getDeviceProperties(self, index: int) -> dict:  # noqa: N802
        return {"name": f"Stand-in GPU {index}".encode()}


class FakeDeviceContext:
    def __init__(self, cuda: FakeCuda, index: int) -> None:
        self.cuda, self.index = cuda, index

    def __enter__(self):
        self._previous, self.cuda.current = self.cuda.current, self.index
        return self

    def __exit__(self, *exc) -> None:
        self.cuda.current = self._previous

    def synchronize(self) -> None:
        self.cuda.synchronized.append(self.index)


class FakeCuda:
    """`cupy.cuda`: the runtime API, devices, the allocator, streams and events."""

    def __init__(self, count: int) -> None:
        self.current = 0
        self.synchronized: list[int] = []
        self.runtime = FakeRuntimeAPI(self, count)
        self.pool = FakePool(self)
        self._allocator = self.pool.malloc
        self.Stream = type("Stream", (FakeStream,), {"cuda": self})
        self.Stream.null = self.stream = self.Stream(null=True)
        self.Event = FakeEvent

    def Device(self, index: int) -> FakeDeviceContext:  # noqa: N802
        return FakeDeviceContext(self, index)

    def get_allocator(self):
        return self._allocator

    def set_allocator(self, allocator) -> None:
        self._allocator = allocator

    def alloc(self, size: int):
        return self._allocator(size)

    def get_current_stream(self):
        return self.stream

    def get_elapsed_time(self, start: FakeEvent, end: FakeEvent) -> float:
        if not (start.timing and end.timing) or start.time is None or end.time is None:
            raise RuntimeError("cudaErrorInvalidResourceHandle")
        return (end.time - start.time) * 1000.0


class FakeCupy:
    def __init__(self, devices: int) -> None:
        self.cuda = FakeCuda(devices)

    def get_default_memory_pool(self) -> FakePool:
        return self.cuda.pool


# ---------------------------------------------------------------------------------------------
# the stand-in backend, and arrays of another library on a CUDA device


class StandIn(CPUBackend):
    """The `cuda` device type on numpy buffers: copied on every transfer both ways, each buffer made
    on the host side holding an allocation from the fake CuPy pool of the current device."""

    device_type = "cuda"

    def __init__(self, cupy: FakeCupy) -> None:
        self.cupy = cupy
        self.calls = collections.Counter()

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        self.calls["from_numpy"] += 1
        out = np.array(array, copy=True)
        weakref.finalize(out, _release, self.cupy.cuda.alloc(out.nbytes))
        return out

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        self.calls["to_numpy"] += 1
        return np.array(array, copy=True)

    def from_dlpack(self, ext) -> np.ndarray:
        self.calls["from_dlpack"] += 1
        return np.from_dlpack(_HostSide(ext))


def _release(memory) -> None:
    pass  # dropping the last reference returns the allocation to the pool


class DeviceArray:
    """Another library's array on CUDA device `index` (a CuPy array, a torch CUDA tensor), as DLPack sees it."""

    def __init__(self, array: np.ndarray, index: int = 0) -> None:
        self.array, self.index = array, index

    def __dlpack__(self, stream=None, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return (2, self.index)  # kDLCUDA


class _HostSide:
    def __init__(self, ext: DeviceArray) -> None:
        self.ext = ext

    def __dlpack__(self, **kwargs):
        return self.ext.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return (1, 0)


@pytest.fixture
def gpu(monkeypatch):
    """Two stand-in CUDA devices; everything they change is undone after the test."""
    cupy = FakeCupy(devices=2)
    backend = StandIn(cupy)
    monkeypatch.setitem(backends._BACKENDS, "cuda", backend)
    monkeypatch.setattr(Device, "_interned", dict(Device._interned))
    monkeypatch.setattr(device_module, "_current_index", {"cuda": 0})
    monkeypatch.setattr(dispatch_module, "_backends", {})
    monkeypatch.setattr(jt.cuda, "_active", _runtime_over(cupy, monkeypatch))
    return backend


def _runtime_over(cupy: FakeCupy, monkeypatch):
    """jitorch.cuda's CuPy runtime, started with the fake as `cupy` (only while it starts: other code
    that looks for a loaded CuPy must not find the fake)."""
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "cupy", cupy)
        return jt.cuda._CupyRuntime()


@pytest.fixture
def no_gpu(monkeypatch):
    """No CUDA backend at all (not even one that would load lazily)."""
    monkeypatch.delitem(backends._BACKENDS, "cuda", raising=False)
    for table in ("_LAZY",):
        if hasattr(backends, table):
            monkeypatch.delitem(getattr(backends, table), "cuda", raising=False)
    monkeypatch.setattr(Device, "_interned", dict(Device._interned))
    monkeypatch.setattr(jt.cuda, "_active", None)


CUDA0 = "cuda:0"


# ---------------------------------------------------------------------------------------------
# without a CUDA device


def test_without_cuda_the_device_is_a_name_and_tensors_are_refused(no_gpu):
    assert jt.cuda.is_available() is False
    assert repr(jt.device("cuda")) == repr(torch.device("cuda")) == "device(type='cuda')"
    with pytest.raises(RuntimeError) as info:
        jt.randn(2, device="cuda")
    message = str(info.value)
    assert "device 'cuda' is not available" in message and "no CUDA device" in message
    assert 'pip install -e ".[cuda]"' in message and "device='cpu'" in message
    reason = getattr(backends, "unavailable_reason", lambda kind: None)("cuda")
    assert reason is None or reason in message  # the backend's own reason, where it gives one
    for make in (lambda: jt.zeros(2, device="cuda:1"), lambda: jt.ones(2).to("cuda"), lambda: jt.ones(2).cuda(),
                 lambda: jt.nn.Linear(2, 2).cuda()):
        with pytest.raises(RuntimeError, match="is not available"):
            make()


def test_without_cuda_jitorch_cuda_answers_as_pytorch_does(no_gpu):
    # the calls PyTorch answers without CUDA answer the same (torch here is a CPU build)
    assert jt.cuda.device_count() == torch.cuda.device_count() == 0
    assert jt.cuda.memory_allocated() == torch.cuda.memory_allocated() == 0
    assert jt.cuda.max_memory_allocated() == torch.cuda.max_memory_allocated() == 0
    jt.cuda.empty_cache()
    jt.cuda.manual_seed(3)  # safe, and it seeds the one generator every device shares
    a = jt.randn(4)
    jt.manual_seed(3)
    np.testing.assert_array_equal(a.numpy(), jt.randn(4).numpy())
    # the others say why and what to do (PyTorch: "Torch not compiled with CUDA enabled")
    for call in (jt.cuda.current_device, jt.cuda.synchronize, jt.cuda.get_device_name, jt.cuda.Stream,
                 lambda: jt.cuda.Event(enable_timing=True), lambda: jt.cuda.set_device(0),
                 jt.cuda.reset_peak_memory_stats):
        with pytest.raises(RuntimeError, match=r'no CUDA device.*pip install -e "\.\[cuda\]"'):
            call()


def test_a_gpu_checkpoint_on_a_machine_without_cuda_gets_pytorchs_advice(gpu, tmp_path, monkeypatch):
    path = tmp_path / "gpu.st"
    jt.save({"w": jt.ones(2, device="cuda"), "n": 3}, path)
    monkeypatch.delitem(backends._BACKENDS, "cuda")
    if hasattr(backends, "_LAZY"):
        monkeypatch.delitem(backends._LAZY, "cuda", raising=False)
    with pytest.raises(RuntimeError) as info:
        jt.load(path)
    with pytest.raises(RuntimeError) as torch_info:
        torch.serialization.validate_cuda_device("cuda:0")
    assert str(info.value) == str(torch_info.value).replace("torch", "jitorch")
    out = jt.load(path, map_location="cpu")
    assert out["w"].device == jt.device("cpu") and out["w"].tolist() == [1.0, 1.0] and out["n"] == 3


# ---------------------------------------------------------------------------------------------
# device names


@pytest.mark.parametrize("spec", [("cpu",), ("cuda",), ("cuda:1",), ("cuda", 0), ("cuda", 3), ("meta",)])
def test_device_names_match_pytorch(spec):
    mine, theirs = jt.device(*spec), torch.device(*spec)
    assert (repr(mine), str(mine), mine.type, mine.index) == (repr(theirs), str(theirs), theirs.type, theirs.index)
    assert jt.device(*spec) is mine and jt.device(mine) is mine


def test_an_unindexed_cuda_device_is_not_cuda_0_as_in_pytorch():
    assert (jt.device("cuda") == jt.device("cuda:0")) == (torch.device("cuda") == torch.device("cuda:0")) is False
    assert jt.device("cuda", 0) == jt.device("cuda:0")


@pytest.mark.parametrize("spec", [("cuda:x",), ("gpu",), ("cuda:-1",), ("cuda:01",), ("cuda:0", 1), ("cuda", -1)])
def test_malformed_device_names_get_pytorchs_errors(spec):
    with pytest.raises(RuntimeError) as theirs:
        torch.device(*spec)
    with pytest.raises(RuntimeError) as mine:
        jt.device(*spec)
    if spec == ("gpu",):  # PyTorch lists its twenty device types; jitorch its three
        assert str(mine.value) == "Expected one of cpu, cuda, meta device type at start of device string: gpu"
    else:
        assert str(mine.value) == str(theirs.value)


# ---------------------------------------------------------------------------------------------
# jitorch.cuda on the stand-in devices


def test_devices_count_select_and_name(gpu):
    assert jt.cuda.is_available() and jt.cuda.device_count() == 2 and jt.cuda.current_device() == 0
    assert jt.zeros(2, device="cuda").device == jt.device(CUDA0)  # a tensor's cuda device has an index
    jt.cuda.set_device(1)
    assert jt.cuda.current_device() == 1 and jt.zeros(2, device="cuda").device == jt.device("cuda:1")
    with jt.cuda.device(0):
        assert jt.cuda.current_device() == 0 and jt.ones(1).cuda().device == jt.device(CUDA0)
    assert jt.cuda.current_device() == 1 and gpu.cupy.cuda.current == 1
    jt.cuda.set_device(jt.device("cuda:0"))
    assert jt.cuda.current_device() == 0
    jt.cuda.set_device(-1)  # a no-op, as in PyTorch
    assert jt.cuda.get_device_name() == "Stand-in GPU 0" and jt.cuda.get_device_name(1) == "Stand-in GPU 1"
    jt.cuda.synchronize()
    jt.cuda.synchronize("cuda:1")
    assert gpu.cupy.cuda.synchronized == [0, 1]
    with pytest.raises(ValueError, match="Expected a cuda device, but got: cpu"):
        jt.cuda.synchronize("cpu")
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        jt.cuda.set_device(2)
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        jt.zeros(2, device="cuda:5")


def test_a_tensor_lands_on_the_device_it_names(gpu):
    x = jt.arange(6.0, device="cuda:1")
    assert x.device == jt.device("cuda:1") and x.get_device() == 1 and x.is_cuda and not x.is_cpu
    assert gpu.cupy.cuda.pool.used[1] == x.numel() * 4 and gpu.cupy.cuda.pool.used[0] == 0
    assert gpu.cupy.cuda.current == 0  # the current device is back
    assert jt.ones(2).get_device() == torch.ones(2).get_device() == -1


def test_the_first_cuda_tensor_starts_the_runtime(gpu, monkeypatch):
    monkeypatch.setattr(jt.cuda, "_active", None)
    jt.ones(2).to("cuda")
    assert jt.cuda._active is None  # the stand-in holds numpy arrays: no CuPy runtime to start
    monkeypatch.setattr(StandIn, "buffer_type", type("ndarray", (), {"__module__": "cupy._core.core"}))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "cupy", gpu.cupy)
        jt.ones(2).to("cuda")
    assert isinstance(jt.cuda._active, jt.cuda._CupyRuntime)  # as PyTorch starts CUDA lazily


def test_memory_counters_follow_the_pool_and_keep_the_peak(gpu):
    jt.cuda.reset_peak_memory_stats()
    base = jt.cuda.memory_allocated()
    a = jt.zeros(1000, device="cuda")  # 4000 bytes
    b = jt.zeros(2000, device="cuda")  # 8000 bytes
    assert jt.cuda.memory_allocated() == base + 12000
    del b
    assert jt.cuda.memory_allocated() == base + 4000
    assert jt.cuda.max_memory_allocated() == base + 12000
    assert jt.cuda.memory_reserved() == base + 12000  # the freed block stays cached
    jt.cuda.empty_cache()
    assert jt.cuda.memory_reserved() == base + 4000 and gpu.cupy.cuda.pool.emptied == [0, 1]
    jt.cuda.reset_peak_memory_stats()
    assert jt.cuda.max_memory_allocated() == base + 4000
    c = jt.zeros(500, device="cuda:1")
    assert jt.cuda.memory_allocated(1) == jt.cuda.max_memory_allocated("cuda:1") == 2000
    assert jt.cuda.memory_allocated(0) == base + 4000
    del a, c


def test_events_time_work_and_streams_queue_it(gpu):
    start, end = jt.cuda.Event(enable_timing=True), jt.cuda.Event(enable_timing=True)
    start.record()
    time.sleep(0.01)
    end.record()
    end.synchronize()
    assert start.query() and 5.0 < start.elapsed_time(end) < 5000.0
    with pytest.raises(RuntimeError, match="enable_timing=True"):
        jt.cuda.Event().elapsed_time(end)
    s = jt.cuda.Stream()
    assert s.device == jt.device(CUDA0) and s._native.non_blocking and s != jt.cuda.current_stream()
    with jt.cuda.stream(s):
        assert jt.cuda.current_stream() == s
        e = jt.cuda.Event()
        e.record()
        assert e._native.stream is s._native
    assert jt.cuda.current_stream() == jt.cuda.default_stream()
    other = jt.cuda.Stream(device=1, priority=-1)
    assert other.device == jt.device("cuda:1") and other._native.device_id == 1 and other._native.priority == -1
    s.wait_stream(other)
    assert len(s._native.waited) == 1
    s.synchronize()
    assert s.query() and s._native.synchronized == 1


def test_cuda_manual_seed_seeds_the_generator_every_device_shares(gpu):
    jt.cuda.manual_seed(7)
    on_gpu = jt.randn(5, device="cuda")
    jt.cuda.manual_seed_all(7)
    np.testing.assert_array_equal(on_gpu.cpu().numpy(), jt.randn(5).numpy())
    jt.manual_seed(7)
    np.testing.assert_array_equal(jt.rand(3, device="cuda").cpu().numpy(),
                                  (jt.manual_seed(7), jt.rand(3))[1].numpy())


# ---------------------------------------------------------------------------------------------
# creating and moving tensors


def _same(t: jt.Tensor, expected, device: str = CUDA0) -> None:
    assert t.device == jt.device(device), t.device
    np.testing.assert_array_equal(t.cpu().numpy(), np.asarray(expected))


def test_creation_on_a_device_matches_pytorch_values(gpu):
    _same(jt.tensor([[1.0, 2.0]], device="cuda"), torch.tensor([[1.0, 2.0]]))
    _same(jt.zeros(2, 3, device="cuda"), torch.zeros(2, 3))
    _same(jt.ones(4, dtype=jt.float64, device=jt.device("cuda", 1)), torch.ones(4, dtype=torch.float64), "cuda:1")
    _same(jt.full((2,), 7, device="cuda"), torch.full((2,), 7))
    _same(jt.arange(1, 10, 2, device="cuda"), torch.arange(1, 10, 2))
    _same(jt.eye(3, device="cuda"), torch.eye(3))
    _same(jt.linspace(0, 1, 5, device="cuda"), torch.linspace(0, 1, 5))
    assert jt.empty(2, device="cuda").device == jt.device(CUDA0)
    x = jt.tensor([1.0, 2.0], device="cuda", requires_grad=True)
    assert x.is_leaf and x.requires_grad and x.device == jt.device(CUDA0)
    for make in (jt.randn, jt.rand):
        jt.manual_seed(1)
        expected = make(3, 2).numpy()
        jt.manual_seed(1)
        _same(make(3, 2, device="cuda"), expected)
    jt.manual_seed(2)
    expected = [jt.randint(0, 9, (5,)).numpy(), jt.randperm(6).numpy()]
    jt.manual_seed(2)
    _same(jt.randint(0, 9, (5,), device="cuda"), expected[0])
    _same(jt.randperm(6, device="cuda"), expected[1])


def test_like_and_new_keep_the_device(gpu):
    x = jt.ones(2, 3, device="cuda:1")
    for t in (jt.zeros_like(x), jt.ones_like(x), jt.full_like(x, 2.0), jt.empty_like(x), jt.rand_like(x),
              jt.randn_like(x), jt.randint_like(x, 5), x.new_zeros(4), x.new_ones(1, 2), x.new_full((2,), 3.0),
              x.new_tensor([1, 2]), jt.tensor(x), jt.as_tensor(x)):
        assert t.device == jt.device("cuda:1")
    assert jt.zeros_like(x, device="cpu").device == jt.device("cpu")
    assert jt.tensor(x, device="cpu").device == jt.device("cpu")
    assert jt.as_tensor(jt.ones(2), device="cuda").device == jt.device(CUDA0)
    assert jt.multinomial(jt.tensor([0.0, 1.0], device="cuda"), 2, replacement=True).tolist() == [1, 1]


def test_moves_as_pytorch_makes_them(gpu):
    x = jt.tensor([1.5, -2.0, 3.0])
    g = x.to("cuda")
    assert g.device == jt.device(CUDA0) and g.dtype == jt.float32
    assert g.to("cuda") is g and g.to(CUDA0) is g and g.cuda() is g  # as torch: no move, no copy
    assert x.to("cpu") is x and x.cpu() is x and torch.ones(1).cpu() is not None
    assert g.to(g) is g and g.to("cuda", copy=True) is not g
    h = g.to("cpu", jt.float64)
    assert h.device == jt.device("cpu") and h.dtype == jt.float64 and h.tolist() == [1.5, -2.0, 3.0]
    y = x.to(device="cuda:1", dtype=jt.float16)
    assert y.device == jt.device("cuda:1") and y.dtype == jt.float16
    assert x.to(y).device == jt.device("cuda:1") and x.to(y).dtype == jt.float16
    assert x.cuda(1).device == jt.device("cuda:1") and x.to(1).device == jt.device("cuda:1")
    assert y.to("cuda:0").device == jt.device(CUDA0)  # one GPU to another
    with pytest.raises(RuntimeError) as mine:
        x.cuda("cpu")
    with pytest.raises(RuntimeError) as theirs:
        torch.ones(1).cuda("cpu")
    assert str(mine.value) == str(theirs.value)
    g.mul_(2)  # a move is a copy: the source does not change
    assert x.tolist() == [1.5, -2.0, 3.0] and g.tolist() == [3.0, -4.0, 6.0]


def test_a_move_is_differentiable_back_to_the_source_device(gpu):
    data = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    w_data = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)
    x = jt.tensor(data, requires_grad=True)  # on the CPU
    w = jt.tensor(w_data, device="cuda", requires_grad=True)  # on the GPU
    moved = x.to("cuda")
    t = torch.tensor(data, requires_grad=True)
    assert moved.grad_fn.name() == t.to(torch.float64).grad_fn.name() == "ToCopyBackward0"
    assert not moved.is_leaf and moved.grad_fn.next_functions[0][0] is None
    loss = ((moved @ w).tanh().cpu() ** 2).sum()
    loss.backward()
    tw = torch.tensor(w_data, requires_grad=True)
    ((t @ tw).tanh() ** 2).sum().backward()
    assert x.grad.device == jt.device("cpu") and w.grad.device == jt.device(CUDA0)
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.grad.cpu().numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)
    # and twice: the gradient of a gradient goes through the move too
    x2 = jt.tensor([0.5, 1.0], requires_grad=True)
    (gx,) = jt.autograd.grad((x2.cuda() ** 3).sum(), [x2], create_graph=True)
    gx.sum().backward()
    assert gx.device == jt.device("cpu") and x2.grad.tolist() == pytest.approx([3.0, 6.0])
    with jt.no_grad():
        assert x.cuda().grad_fn is None and not x.cuda().requires_grad


def test_devices_do_not_mix_with_pytorchs_words_and_jitorchs_context(gpu):
    with pytest.raises(RuntimeError) as info:
        jt.ones(2, device="cuda") + jt.ones(2)
    assert str(info.value).startswith(
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! (in `add`")
    with pytest.raises(RuntimeError, match="two devices, cpu and cuda:1!"):
        jt.ones(2, 2) @ jt.ones(2, 2, device="cuda:1")
    assert (jt.ones(2, device="cuda") * jt.tensor(3.0)).device == jt.device(CUDA0)  # a CPU scalar joins


def test_a_compiled_function_refuses_a_move_inside_it(gpu):
    w = jt.ones(3)

    @jt.compile
    def f(x):
        return x * w.to("cuda")

    with pytest.raises(jt.TraceError, match="from cpu to cuda:0 inside jitorch.compile"):
        f(jt.ones(3, device="cuda"))


# ---------------------------------------------------------------------------------------------
# host conversions and DLPack


def test_host_conversions_of_a_cuda_tensor_match_pytorch(gpu):
    t = jt.tensor([[1.0, 2.0], [3.0, 4.0]], device="cuda")
    with pytest.raises(TypeError) as mine:
        t.numpy()
    with pytest.raises(TypeError) as theirs:
        torch.empty(2, device="meta").numpy()  # PyTorch's check and words, for the device it has here
    assert str(mine.value) == str(theirs.value).replace("meta", CUDA0)
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
        np.asarray(t)
    assert t.tolist() == [[1.0, 2.0], [3.0, 4.0]] and t.sum().item() == 10.0 and float(t[1, 1]) == 4.0
    assert bool(t[0, 0] == 1.0) and int(t[1, 0]) == 3
    np.testing.assert_array_equal(t.numpy(force=True), [[1.0, 2.0], [3.0, 4.0]])  # a copy, as torch's force
    np.testing.assert_array_equal(t.cpu().numpy(), [[1.0, 2.0], [3.0, 4.0]])


def test_dlpack_exports_the_device_buffer_without_a_copy(gpu):
    t = jt.arange(6.0, device="cuda").reshape(2, 3)
    copies = gpu.calls["to_numpy"]
    shared = np.from_dlpack(t)  # the stand-in's device buffers are host memory numpy can read
    assert gpu.calls["to_numpy"] == copies and np.shares_memory(shared, t._data)
    assert t.__dlpack_device__() == t._data.__dlpack_device__()


def test_from_dlpack_takes_an_array_on_a_cuda_device_without_a_copy(gpu):
    a = np.arange(4, dtype=np.float32)
    t = jt.from_dlpack(DeviceArray(a, index=1))
    assert t.device == jt.device("cuda:1") and np.shares_memory(t._data, a) and gpu.calls["from_dlpack"] == 1
    t.add_(1)
    assert a.tolist() == [1.0, 2.0, 3.0, 4.0]
    host = jt.from_dlpack(np.ones(2))  # the CPU path is unchanged
    assert host.device == jt.device("cpu")


# ---------------------------------------------------------------------------------------------
# modules and optimizers


def _torch_twin(model: jt.nn.Module) -> torch.nn.Module:
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for (_, p), (_, q) in zip(model.state_dict().items(), twin.state_dict().items()):
            q.copy_(torch.from_numpy(p.cpu().numpy()))
    return twin


def test_module_to_moves_parameters_in_place_and_an_earlier_optimizer_still_trains_it(gpu):
    jt.manual_seed(0)
    model = jt.nn.Sequential(jt.nn.Linear(4, 8), jt.nn.BatchNorm1d(8), jt.nn.ReLU(), jt.nn.Linear(8, 3))
    twin = _torch_twin(model)
    params = list(model.parameters())
    opt = jt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # made before the move
    t_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    jt.nn.functional.cross_entropy(model(jt.tensor(x)), jt.tensor(y)).backward()  # a .grad before the move
    assert model.cuda() is model
    assert [p for p in model.parameters()] == params and all(p is q for p, q in zip(model.parameters(), params))
    assert all(p.device == jt.device(CUDA0) and p.grad.device == jt.device(CUDA0) for p in params)
    assert all(b.device == jt.device(CUDA0) for b in model.buffers())
    opt.zero_grad()
    xs, ys = jt.tensor(x, device="cuda"), jt.tensor(y, device="cuda")
    for _ in range(3):
        opt.zero_grad()
        jt.nn.functional.cross_entropy(model(xs), ys).backward()
        opt.step()
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(torch.tensor(x)), torch.tensor(y)).backward()
        t_opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert p.device == jt.device(CUDA0)
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert all(s["momentum_buffer"].device == jt.device(CUDA0) for s in opt.state.values())
    assert model.cpu() is model and all(p.device == jt.device("cpu") for p in params)
    model.to(jt.float64)
    assert params[0].dtype == jt.float64 and model[1].num_batches_tracked.dtype == jt.int64
    model.to("cuda:1", jt.float32)
    assert params[0].device == jt.device("cuda:1") and params[0].dtype == jt.float32


def test_optimizer_state_lives_on_its_parameters_device(gpu):
    w = jt.nn.Parameter(jt.ones(3, device="cuda"))
    opt = jt.optim.Adam([w], lr=0.1)
    w.grad = jt.ones(3, device="cuda")
    opt.step()
    state = opt.state[w]
    assert state["exp_avg"].device == state["exp_avg_sq"].device == jt.device(CUDA0)
    assert state["step"].device == jt.device("cpu")  # as PyTorch keeps `step` (not capturable, not fused)
    saved = opt.state_dict()
    # into an optimizer over a CPU parameter, and back: PyTorch moves state to the parameter's device
    host = jt.nn.Parameter(jt.ones(3))
    cpu_opt = jt.optim.Adam([host], lr=0.1)
    cpu_opt.load_state_dict(saved)
    assert cpu_opt.state[host]["exp_avg"].device == jt.device("cpu")
    w2 = jt.nn.Parameter(jt.ones(3, dtype=jt.float64, device="cuda:1"))
    gpu_opt = jt.optim.Adam([w2], lr=0.1)
    gpu_opt.load_state_dict(cpu_opt.state_dict())
    moved = gpu_opt.state[w2]
    assert moved["exp_avg"].device == jt.device("cuda:1") and moved["exp_avg"].dtype == jt.float64
    assert moved["step"].device == jt.device("cpu") and moved["step"].item() == 1.0
    np.testing.assert_allclose(moved["exp_avg"].cpu().numpy(), state["exp_avg"].cpu().numpy())


def test_load_state_dict_copies_across_devices(gpu):
    model = jt.nn.Linear(3, 2).cuda()
    host = jt.nn.Linear(3, 2)
    model.load_state_dict(host.state_dict())
    assert model.weight.device == jt.device(CUDA0)
    np.testing.assert_array_equal(model.weight.detach().cpu().numpy(), host.weight.detach().numpy())
    target = jt.zeros(2, device="cuda")
    target.copy_(jt.tensor([1.0, 2.0]))
    assert target.device == jt.device(CUDA0) and target.tolist() == [1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_save_and_load_keep_each_tensors_device(gpu, tmp_path):
    path = tmp_path / "mixed.st"
    w = jt.arange(4.0, device="cuda:1")
    jt.save({"w": w, "again": w, "host": jt.ones(2), "array": np.arange(3), "device": w.device}, path)
    out = jt.load(path)  # where they were saved from, as torch.load
    assert out["w"].device == jt.device("cuda:1") and out["host"].device == jt.device("cpu")
    assert out["again"] is out["w"] and out["device"] == jt.device("cuda:1")
    assert isinstance(out["array"], np.ndarray) and out["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    for where in ("cpu", jt.device("cpu")):
        assert jt.load(path, map_location=where)["w"].device == jt.device("cpu")
    everywhere = jt.load(path, map_location="cuda")
    assert everywhere["w"].device == everywhere["host"].device == jt.device(CUDA0)
    assert isinstance(everywhere["array"], np.ndarray)  # numpy arrays stay numpy arrays
    remapped = jt.load(path, map_location={"cuda:1": "cuda:0"})  # PyTorch's dict: saved -> wanted
    assert remapped["w"].device == jt.device(CUDA0) and remapped["host"].device == jt.device("cpu")
    seen = []

    def mapper(t, location):
        seen.append((location, t.device))
        return None if location == "cpu" else t.to("cuda:0")

    mapped = jt.load(path, map_location=mapper)
    assert sorted(seen, key=str) == [("cpu", jt.device("cpu")), ("cuda:1", jt.device("cpu"))]
    assert mapped["w"].device == jt.device(CUDA0) and mapped["host"].device == jt.device("cpu")


def test_loading_onto_a_missing_gpu_gets_pytorchs_error(gpu, tmp_path, monkeypatch):
    path = tmp_path / "gpu1.st"
    jt.save(jt.ones(2, device="cuda:1"), path)
    monkeypatch.setattr(gpu.cupy.cuda.runtime, "count", 1)
    monkeypatch.setattr(jt.cuda._runtime(), "_count", None)  # the runtime keeps the count it read
    with pytest.raises(RuntimeError) as info:
        jt.load(path)
    assert str(info.value) == ("Attempting to deserialize object on CUDA device 1 but jitorch.cuda.device_count() "
                               "is 1. Please use jitorch.load with map_location to map your storages to an "
                               "existing device.")
    assert jt.load(path, map_location="cuda:0").device == jt.device(CUDA0)


def test_a_gpu_state_dict_round_trips_through_a_file(gpu, tmp_path):
    jt.manual_seed(0)
    model = jt.nn.Linear(4, 2).cuda()
    opt = jt.optim.AdamW(model.parameters(), lr=0.01)
    model(jt.randn(3, 4, device="cuda")).sum().backward()
    opt.step()
    jt.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.st")
    ckpt = jt.load(tmp_path / "ckpt.st")
    fresh = jt.nn.Linear(4, 2).cuda()
    fresh_opt = jt.optim.AdamW(fresh.parameters(), lr=0.01)
    fresh.load_state_dict(ckpt["model"])
    fresh_opt.load_state_dict(ckpt["opt"])
    for p, q in zip(model.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(p.detach().cpu().numpy(), q.detach().cpu().numpy())
        assert fresh_opt.state[q]["exp_avg"].device == jt.device(CUDA0)
