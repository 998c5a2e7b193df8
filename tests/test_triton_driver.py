"""jitorch's Triton driver and launcher for the CUDA backend (`jitorch/backends/cuda/triton_driver.py`,
`launch.py`).

On any machine: input strides in a kernel's loop shape, the kernel's argument list in the order of
the renderer's parameters, the kernel sources on disk (content-addressed, written atomically, a
damaged one written again), a launch's argument list on a numpy stand-in for CuPy, the launcher's
argument order against the installed Triton's own `CudaLauncher.__call__`, and, in a process where
torch cannot be imported, the driver made and kernels compiled through it for an H100/H200 (sm_90):
a hand-written one, and those jitorch's Triton renderer writes for a few functions.

Marked `gpu` (python -m pytest -m gpu, on a machine with an NVIDIA GPU and CuPy): a hand-written
kernel launched through the driver on CuPy arrays with torch blocked, on CuPy's current stream;
the launch cost of `kernel[grid]` against the prepared path (printed, not asserted); and, where
jitorch has a Triton renderer, compiled functions on cuda running fused Triton kernels that match
eager.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass

import numpy as np
import pytest

import jitorch as jt
from jitorch.backends.cuda import launch, triton_driver
from jitorch.codegen import triton as renderer
from jitorch.codegen.triton import Config, Param
from jitorch.ir.fusion import describe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a meta-path finder that refuses torch: what the driver must work under
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def run_python(code: str, tmp_path, prelude: str = "", timeout: int = 300) -> str:
    """Run `prelude` then `code` in a fresh interpreter with torch blocked and jitorch's cache in
    `tmp_path`; its output."""
    env = dict(os.environ, JITORCH_CACHE_DIR=str(tmp_path), PYTHONPATH=REPO, TRITON_CACHE_DIR=str(tmp_path / "tc"))
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH + prelude + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass
class Source:
    """What the renderer gives the launcher (`jitorch.codegen.triton.TritonSource`), for a pointwise
    kernel of one BLOCK constant; `blocks` are the configurations offered (the renderer offers one
    for a kernel this small: more are timed on the first launch, tests/test_autotune.py)."""

    name: str
    text: str
    params: list
    constexprs: tuple = ("BLOCK",)
    blocks: tuple = (128,)

    def configs(self, loop_shape, wide=False):
        return [Config({"BLOCK": block}, 4) for block in self.blocks]

    def launch_grid(self, loop_shape, config):
        return (max(1, -(-int(np.prod(loop_shape)) // config.constexprs["BLOCK"])),)

    def runtime_args(self, loop_shape, input_strides):
        values = []
        for p in self.params:
            if p.kind == "n_elements":
                values.append(int(np.prod(loop_shape)))
            elif p.kind == "size":
                values.append(loop_shape[p.dim])
            elif p.kind == "stride":
                values.append(input_strides[p.operand][p.dim])
        return values


# x (8, 16) * 2 + b (16,): a kernel over a 2-d loop, written as the renderer writes one (no imports,
# strides only where an input is full along an outer loop dim; the innermost stride is 1)
ADD_SOURCE = """
@triton.jit
def fused_mul_add(x_ptr, two_ptr, b_ptr, out_ptr, n_elements, size1, x_stride0, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < n_elements
    i1 = index % size1
    i0 = index // size1
    x = tl.load(x_ptr + i0 * x_stride0 + i1, mask=mask)
    two = tl.load(two_ptr)
    b = tl.load(b_ptr + i1, mask=mask)
    tl.store(out_ptr + index, x * two + b, mask=mask)
"""
ADD_PARAMS = [Param("x_ptr", "input", "*fp32", 0), Param("two_ptr", "input", "*fp32", 1),
              Param("b_ptr", "input", "*fp32", 2), Param("out_ptr", "output", "*fp32", 0),
              Param("n_elements", "n_elements", "i64"), Param("size1", "size", "i64", dim=1),
              Param("x_stride0", "stride", "i64", 0, 0)]


def add_source() -> Source:
    return Source("fused_mul_add", ADD_SOURCE, ADD_PARAMS)


def mul_add_desc():
    """The one kernel of (x * 2 + b) over x (8, 16) and b (16,), as the CPU's fusion describes it."""
    compiled = jt.compile(lambda x, b: x * 2 + b)
    compiled(jt.randn(8, 16), jt.randn(16))
    (program,) = [p for entries in compiled.cache.values() for p in entries]
    (kernel,) = program.plan.kernels
    desc = describe(kernel.kernel)
    assert [v.shape for v in desc.kernel.inputs] == [(8, 16), (), (16,)]  # x, the constant 2, b
    assert desc.loop_shape == (8, 16) and desc.broadcast == [(False, False), (True, True), (True, False)]
    return desc


# ---------------------------------------------------------------------------------------------
# strides in the loop shape


def test_contiguous_strides_are_numpys():
    for shape in [(), (5,), (2, 3, 4), (1, 7), (3, 1, 2)]:
        assert launch.contiguous_strides(shape, 4) == np.empty(shape, np.float32).strides


@pytest.mark.parametrize("make, view_shape", [
    (lambda a: a, (6, 20)),  # contiguous (2, 3, 4, 5) viewed as (6, 20)
    (lambda a: a[:, :, :, ::2], (6, 4, 3)),  # a strided innermost dim: merges nothing
    (lambda a: a[:, 1:], (4, 20)),  # a slice of the middle dims
    (lambda a: a.transpose(1, 0, 2, 3), (6, 20)),  # (3, 2, 4, 5): the outer two don't merge
])
def test_view_strides_agree_with_numpy_reshape(make, view_shape):
    a = make(np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5))
    groups = {(6, 20): ((0, 1), (2, 3)), (6, 4, 3): ((0, 1), (2,), (3,)), (4, 20): ((0, 1), (2, 3))}[view_shape]
    found = launch.view_strides(a.shape, a.strides, a.itemsize, groups, 4)
    viewed = a.reshape(view_shape)
    if np.shares_memory(viewed, a):  # numpy could view it: the same strides
        assert found == [s // a.itemsize for s in viewed.strides]
    else:  # numpy had to copy: so must the launcher
        assert found is None


def test_view_strides_of_broadcast_and_padded_inputs():
    b = np.zeros(16, np.float32)  # a bias of a (8, 16) kernel: broadcast along loop dim 0
    assert launch.view_strides(b.shape, b.strides, 4, ((0,), (1,)), 2) == [0, 1]
    row = np.zeros((8, 1), np.float64)  # a row statistic of a row kernel
    assert launch.view_strides(row.shape, row.strides, 8, ((0,), (1,)), 2) == [1, 0]
    scalar = np.zeros((), np.float32)
    assert launch.view_strides((), (), 4, ((0, 1),), 2) == [0] and scalar.ndim == 0
    flipped = np.zeros((4, 5), np.float32)[::-1]  # negative strides are strides
    assert launch.view_strides(flipped.shape, flipped.strides, 4, ((0,), (1,)), 2) == [-5, 1]
    odd = np.zeros(9, np.uint8)[1:].view(np.float32)  # (aligned to 1 byte only: strides still whole)
    assert launch.view_strides(odd.shape, odd.strides, 4, ((0,),), 1) == [1]


# ---------------------------------------------------------------------------------------------
# the argument list


def test_arguments_follow_the_parameters_in_the_functions_order():
    params = [Param("b", "input", "*fp32", 1), Param("out", "output", "*fp32", 0), Param("a", "input", "*i8", 0),
              Param("n", "n_elements", "i64"), Param("a_stride0", "stride", "i64", 0, 0)]
    args = launch.Arguments(params, n_in=2, n_out=1, n_constexprs=2)
    #                    a    b    out  n   stride  BLOCK ROWS
    assert args.pick([100, 101, 200, 64, 16, 256, 4]) == (101, 200, 100, 64, 16, 256, 4)
    assert launch.Arguments([Param("out", "output", "*fp32", 0)], 0, 1, 0).pick([7]) == (7,)


# ---------------------------------------------------------------------------------------------
# kernel sources on disk


KERNEL_TEXT = '''
@triton.jit
def copy_kernel(in0, out0, numel, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out0 + i, tl.load(in0 + i, mask=i < numel), mask=i < numel)
'''


def test_a_kernel_source_is_a_file_named_by_its_text_and_tritons_version(tmp_path, monkeypatch):
    monkeypatch.setenv("JITORCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(launch, "_functions", {})
    fn = launch.load_kernel_function(KERNEL_TEXT, "copy_kernel")
    assert fn.arg_names == ["in0", "out0", "numel", "BLOCK"]
    text = launch._HEADER + KERNEL_TEXT  # (the imports the text lacked)
    path = tmp_path / "triton" / f"kernel_{launch.source_digest(text)}.py"
    assert path.read_text() == text and os.listdir(tmp_path / "triton") == [path.name]
    assert inspect.getsourcefile(fn.fn) == str(path)
    assert launch.load_kernel_function(KERNEL_TEXT, "copy_kernel") is fn  # loaded once per process
    monkeypatch.setattr(triton_driver.triton, "__version__", "0.0.1")
    assert launch.source_digest(text) != path.stem.removeprefix("kernel_")  # another Triton: another file


def test_a_damaged_source_file_is_written_again(tmp_path, monkeypatch):
    monkeypatch.setenv("JITORCH_CACHE_DIR", str(tmp_path))
    text = launch._HEADER + KERNEL_TEXT
    path = tmp_path / "triton" / f"kernel_{launch.source_digest(text)}.py"
    for damage in [text[: len(text) // 2].encode(), b"\xff\xfe garbage \x00", b""]:
        monkeypatch.setattr(launch, "_functions", {})
        sys.modules.pop(f"jitorch_triton_{launch.source_digest(text)}", None)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(damage)
        fn = launch.load_kernel_function(KERNEL_TEXT, "copy_kernel")
        assert path.read_text() == text and fn.arg_names[0] == "in0"


def test_source_files_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "a" / "kernel_x.py"
    assert launch.write_atomically(str(path), "one = 1\n") and path.read_text() == "one = 1\n"
    assert launch.write_atomically(str(path), "two = 2\n") and path.read_text() == "two = 2\n"

    def fail(src, dst):  # the rename fails (a full disk, a read-only folder): the old file stays whole
        raise OSError("no space left on device")

    monkeypatch.setattr(launch.os, "replace", fail)
    assert not launch.write_atomically(str(path), "three = 3\n")
    assert path.read_text() == "two = 2\n" and os.listdir(path.parent) == [path.name]  # no temporary left


def test_an_unwritable_cache_falls_back_to_the_temporary_directory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("JITORCH_CACHE_DIR", str(blocker))  # a file where the folder should be
    monkeypatch.setattr(launch.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(launch, "_functions", {})
    fn = launch.load_kernel_function(KERNEL_TEXT + "\n# fallback\n", "copy_kernel")
    assert inspect.getsourcefile(fn.fn).startswith(str(tmp_path / "tmp"))


# ---------------------------------------------------------------------------------------------
# a launch's argument list, on a numpy stand-in for CuPy


class HostArray(np.ndarray):
    """A numpy array that tells its address as a CuPy array does (`.data.ptr`)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    @property
    def _c_contiguous(self):  # (CuPy's own flag)
        return self.flags.c_contiguous


def host(a) -> HostArray:
    return np.asarray(a).view(HostArray)


FAKE_CUPY = types.SimpleNamespace(
    ndarray=HostArray,
    empty=lambda shape, dtype: np.empty(shape, dtype).view(HostArray),
    asarray=lambda a, dtype=None: host(np.asarray(a, dtype)),
    ascontiguousarray=lambda a: np.ascontiguousarray(a).view(HostArray),
    cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0),
                               get_current_stream=lambda: types.SimpleNamespace(ptr=0x5EED)),
)


class StubFunction:
    """A `@triton.jit` function's stand-in: `warmup` records what it compiled for."""

    def __init__(self):
        self.warmups = []

    def warmup(self, *args, grid, **options):
        self.warmups.append((args, grid, options))
        return len(self.warmups)  # "the compiled kernel"


def stub_launching(monkeypatch, cupy, function: StubFunction, launches: list) -> None:
    """The launcher on a stand-in for CuPy (`cupy`): every kernel function is `function` (which
    records its compiles), and each launch appends (compiled, grid, stream, args) to `launches`."""
    monkeypatch.setattr(launch, "cupy", cupy)
    monkeypatch.setattr(launch, "device_array", lambda a, dtype=None: FAKE_CUPY.asarray(a, dtype))
    monkeypatch.setattr(launch, "load_kernel_function", lambda text, name: function)
    monkeypatch.setattr(triton_driver, "activate", lambda: None)
    monkeypatch.setattr(triton_driver, "scratch_bytes", lambda compiled, grid: 0)
    monkeypatch.setattr(triton_driver, "build_launcher", lambda compiled: None)
    monkeypatch.setattr(triton_driver, "launch_function", lambda compiled, grid: (
        lambda stream, args, scratch=None: launches.append((compiled, grid, stream, args))))


@pytest.fixture
def stub_kernel(monkeypatch):
    """A TritonKernel for x * 2 + b on the numpy stand-in, recording its compiles and launches."""
    function = StubFunction()
    launches = []
    stub_launching(monkeypatch, FAKE_CUPY, function, launches)
    kernel = launch.TritonKernel(mul_add_desc(), add_source())
    return kernel, function, launches


def test_a_launch_passes_addresses_then_the_renderers_arguments(stub_kernel):
    kernel, function, launches = stub_kernel
    assert kernel.grid == (1, 1, 1) and kernel.name == "fused_mul_add_8x16"  # (its config: BLOCK 128)
    x, two, b = host(np.ones((8, 16), np.float32)), host(np.float32(2)), host(np.arange(16, dtype=np.float32))
    (out,) = kernel.run([x, two, b])
    assert out.shape == (8, 16) and out.dtype == np.float32
    (compiled, grid, stream, args), = launches
    assert stream == 0x5EED and grid == (1, 1, 1)
    address = [a.data.ptr for a in (x, two, b, out)]
    #                     n_elements size1 x_stride0 BLOCK
    assert args == (*address, 128, 16, 16, 128)
    # compiled once, for these arguments, with stand-in addresses of the same alignment and the
    # renderer's pointer types
    ((warm, warm_grid, options),) = function.warmups
    assert warm_grid == (1, 1, 1) and options == {"num_warps": 4, "enable_fp_fusion": False}
    aligned = all(p % 16 == 0 for p in address)
    assert [(p.data_ptr() % 16 == 0, p.dtype) for p in warm[:4]] == [(aligned, "fp32")] * 4
    assert warm[4:] == args[4:]
    # outputs the caller gives are written, None ones made
    given = host(np.empty((8, 16), np.float32))
    assert kernel.run([x, two, b], [given])[0] is given and kernel.run([x, two, b], [None])[0] is not given
    assert launches[1][3][3] == given.data.ptr and len(function.warmups) == 1


def test_strided_and_misaligned_inputs_get_variants_of_their_own(stub_kernel, monkeypatch):
    kernel, function, launches = stub_kernel
    base = host(np.zeros((16, 33), np.float32))
    x, two, b = base[::2, 1:17], host(np.float32(2)), host(np.arange(16, dtype=np.float32))
    kernel.run([x, two, b])
    assert launches[-1][3][0] == x.data.ptr and launches[-1][3][4:] == (128, 16, 66, 128)  # rows 66 floats apart
    assert len(function.warmups) == 1
    kernel.run([x.T.copy().T, two, b])  # a column-major x: its innermost stride is 8, so it is copied first
    assert launches[-1][3][4:] == (128, 16, 16, 128) and len(function.warmups) == 2
    odd = host(np.zeros(8 * 16 + 1, np.float32))[1:].reshape(8, 16)  # contiguous, 4 bytes off alignment
    kernel.run([odd, two, b])
    assert launches[-1][3][0] == odd.data.ptr and len(function.warmups) == 3
    assert function.warmups[-1][0][0].data_ptr() % 16 != 0  # compiled for any alignment
    copied = []  # host arrays and a Python scalar: copied over, in the kernel's dtypes
    monkeypatch.setattr(FAKE_CUPY, "asarray", lambda a, dtype=None: copied.append(dtype) or host(np.asarray(a, dtype)))
    kernel.run([np.ones((8, 16), np.float32), 2.0, b])
    assert launches[-1][3][4:] == (128, 16, 16, 128) and copied == [np.float32, np.float32]
    compiles = len(function.warmups)
    kernel.run([odd, two, b])  # a variant made before: no compile
    assert len(function.warmups) == compiles == len(kernel._launches)


# ---------------------------------------------------------------------------------------------
# the launcher's argument order, against the installed Triton's own


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


def _normalized(call):
    return tuple(a.data_ptr() if hasattr(a, "data_ptr") else a for a in call)


@pytest.mark.parametrize("scratch", [0, 64])
def test_the_prepared_launch_passes_what_tritons_launcher_would(monkeypatch, scratch):
    from triton.backends.nvidia import driver as nvidia
    from triton.runtime import _allocation

    new_layout = "kernel_signature" in inspect.getsource(nvidia.CudaLauncher.__init__)  # 3.8 and 3.9
    assert new_layout == (triton_driver.TRITON_VERSION >= (3, 8))
    launcher = object.__new__(nvidia.CudaLauncher)  # without compiling its C launcher (needs libcuda)
    launcher.launch = Recorder()
    launcher.num_ctas = 1
    launcher.global_scratch_size, launcher.global_scratch_align = scratch, 128
    launcher.profile_scratch_size, launcher.profile_scratch_align = 0, 1
    launcher.launch_cooperative_grid, launcher.launch_pdl = False, True
    if new_layout:
        launcher.gsan_enabled, launcher.arg_annotations, launcher.kernel_signature = False, ["annotations"], b"sig"
    compiled = types.SimpleNamespace(run=launcher, function=0xF00, packed_metadata=(4, 1, 1024))
    grid, stream, args = (3, 2, 1), 0x5EED, (triton_driver.Pointer(0x1000, np.float32), 0x2000, 7, 1, 128)
    scratch_ptr = 0xABC00 if scratch else None
    monkeypatch.setattr(_allocation, "_allocator", _allocation.ContextVar("_allocator", default=(
        lambda size, align, stream: triton_driver.Pointer(scratch_ptr, np.uint8))))
    monkeypatch.setattr(triton_driver.triton.runtime.driver, "_active", types.SimpleNamespace())
    launcher(*grid, stream, compiled.function, compiled.packed_metadata, None, None, None, *args)  # Triton's way
    triton_driver.launch_function(compiled, grid)(stream, args, scratch_ptr)  # ours
    theirs, ours = launcher.launch.calls
    assert _normalized(ours) == _normalized(theirs)
    assert triton_driver.scratch_bytes(compiled, grid) == scratch * 6


# ---------------------------------------------------------------------------------------------
# the driver, in a process that cannot import torch

FAKE_GPU = """
import types
import cupy
from triton.backends.nvidia import driver as nvidia

class FakeUtils:  # Triton's C helpers need libcuda: only what compiling asks of them
    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "sm_clock_rate": 1980000,
                "mem_clock_rate": 2619000, "mem_bus_width": 6144}

class FakeDevice:  # an H200
    compute_capability = "90"
    def __init__(self, index=None):
        pass

nvidia.CudaUtils = FakeUtils
cupy.cuda.runtime.getDevice = lambda: 0
cupy.cuda.Device = FakeDevice
cupy.cuda.get_current_stream = lambda *a: types.SimpleNamespace(ptr=0x5EED)
"""


def test_the_driver_is_made_and_compiles_a_kernel_without_torch(tmp_path):
    out = run_python("""
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from jitorch.backends.cuda import launch, triton_driver
    from tests.test_triton_driver import add_source, mul_add_desc

    driver = triton_driver.activate()
    assert triton.runtime.driver.active is driver and triton_driver.activate() is driver
    assert driver.get_current_target() == GPUTarget("cuda", 90, 32)
    assert driver.get_device_capability(0) == (9, 0) and driver.get_current_stream(0) == 0x5EED
    assert driver.is_active() and driver.get_device_interface().Event is not None
    try:
        driver.get_active_torch_device()
        raise AssertionError("a torch device")
    except RuntimeError:
        pass

    made = []  # the compiled kernels (loading one needs a GPU: stop there)
    triton_driver.launch_function = lambda compiled, grid: made.append(compiled)
    triton_driver.scratch_bytes = lambda compiled, grid: 0
    kernel = launch.TritonKernel(mul_add_desc(), add_source())
    kernel.prepare()
    (binary,) = made
    print(sorted(binary.src.signature.items()))
    print([line for line in binary.asm["ttir"].splitlines() if "tt.func public" in line][0])
    print(binary.metadata.target, "cubin" in binary.asm, list(kernel._launches))
    print("torch" in sys.modules)
    """, tmp_path, prelude=FAKE_GPU)
    signature, func, target, torch_loaded = out.strip().split("\n")[-4:]
    # sizes and strides are arguments of the compiled kernel, typed by their values
    assert eval(signature) == sorted({"x_ptr": "*fp32", "two_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": "*fp32",
                                      "n_elements": "i32", "size1": "i32", "x_stride0": "i32",
                                      "BLOCK": "constexpr"}.items())
    assert func.count("tt.divisibility = 16") == 7  # the four addresses, and 128, 16, 16
    assert "arch=90" in target and "True [(0, True, None)]" in target
    assert torch_loaded == "False"


def _has_renderer() -> bool:
    import importlib.util

    return importlib.util.find_spec("jitorch.codegen.triton") is not None


@pytest.mark.skipif(not _has_renderer(), reason="this jitorch has no Triton renderer")
def test_rendered_kernels_compile_through_the_driver_without_torch(tmp_path):
    """Every kernel of a few functions, rendered and compiled for sm_90 the way the cuda backend does
    (`TritonKernel.prepare`), in a process that cannot import torch."""
    out = run_python("""
    import sys
    import jitorch as jt
    import jitorch.nn.functional as F
    from jitorch.backends.cuda import launch, triton_driver
    from jitorch.codegen import triton as renderer
    from jitorch.ir.fusion import describe

    made = []
    triton_driver.launch_function = lambda compiled, grid: made.append(compiled)
    triton_driver.scratch_bytes = lambda compiled, grid: 0
    x, b, mask = jt.randn(64, 96), jt.randn(96), jt.randn(64, 96) > 0
    functions = [
        lambda x, b, m: ((x * 2 + b).relu() - x.exp()).sigmoid() * m,
        lambda x, b, m: F.softmax(x * 2 + 1, -1),
        lambda x, b, m: F.layer_norm(x + b, (96,)),
        lambda x, b, m: jt.where(m, x, b * 2) > 0,
        lambda x, b, m: F.log_softmax(x, -1).sum(-1, keepdim=True) + b,
    ]
    for fn in functions:
        compiled = jt.compile(fn)
        compiled(x, b, mask)
        (program,) = [p for entries in compiled.cache.values() for p in entries]
        for k in program.plan.kernels:
            desc = describe(k.kernel)
            launch.TritonKernel(desc, renderer.render(desc)).prepare()
    print(len(made), all(m.metadata.target.arch == 90 for m in made), "torch" in sys.modules)
    """, tmp_path, prelude=FAKE_GPU)
    count, sm90, torch_loaded = out.split()[-3:]
    assert int(count) >= 5 and sm90 == "True" and torch_loaded == "False"


# ---------------------------------------------------------------------------------------------
# on the GPU

gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU and CuPy")

AXPY_SOURCE = """
@triton.jit
def axpy(x_ptr, y_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = index < n_elements
    tl.store(out_ptr + index, tl.load(x_ptr + index, mask=mask) * 2 + tl.load(y_ptr + index, mask=mask), mask=mask)
"""


@gpu
@needs_gpu
def test_a_kernel_runs_on_cupy_arrays_on_cupys_current_stream_without_torch(tmp_path):
    """Through Triton's own `kernel[grid]` and through the prepared launch, on CuPy arrays, with
    torch unimportable; each launch goes to CuPy's current stream (captured into a CUDA graph on a
    stream of our own, it runs only when the graph does). Prints what a launch costs the host."""
    out = run_python(f"""
    import sys, time
    import cupy, numpy as np, triton, triton.testing
    from jitorch.backends.cuda import launch, triton_driver
    from jitorch.backends.cuda.triton_driver import pointer
    from tests.test_triton_driver import add_source, mul_add_desc

    driver = triton_driver.activate()
    fn = launch.load_kernel_function({AXPY_SOURCE!r}, "axpy")
    n = 1000
    x, y = cupy.arange(n, dtype=cupy.float32), cupy.linspace(-1, 1, n, dtype=cupy.float32)
    out = cupy.zeros(n, cupy.float32)
    expected = cupy.asnumpy(x) * 2 + cupy.asnumpy(y)
    grid = (triton.cdiv(n, 256), 1, 1)
    fn[grid](pointer(x), pointer(y), pointer(out), n, BLOCK=256)  # Triton's launch, through jitorch's driver
    np.testing.assert_allclose(cupy.asnumpy(out), expected)
    compiled = fn.warmup(pointer(x), pointer(y), pointer(out), n, 256, grid=grid)
    run = triton_driver.launch_function(compiled, grid)
    args = (x.data.ptr, y.data.ptr, out.data.ptr, n, 256)
    out.fill(0)
    run(cupy.cuda.get_current_stream().ptr, args)
    np.testing.assert_allclose(cupy.asnumpy(out), expected)

    stream = cupy.cuda.Stream(non_blocking=True)
    for launch_it in (lambda: fn[grid](pointer(x), pointer(y), pointer(out), n, BLOCK=256),
                      lambda: run(driver.get_current_stream(), args)):
        out.fill(0)
        cupy.cuda.Device().synchronize()
        with stream:
            stream.begin_capture()
            launch_it()
            graph = stream.end_capture()
        cupy.cuda.Device().synchronize()
        assert not out.any(), "the kernel ran outside the captured stream"
        graph.launch(stream)
        stream.synchronize()
        np.testing.assert_allclose(cupy.asnumpy(out), expected)

    # jitorch's fused kernel of x * 2 + b through TritonKernel, on contiguous CuPy arrays
    kernel = launch.TritonKernel(mul_add_desc(), add_source())
    kernel.prepare()
    a, two, b = cupy.ones((8, 16), cupy.float32), cupy.asarray(np.float32(2)), cupy.arange(16, dtype=cupy.float32)
    given = [cupy.empty((8, 16), cupy.float32)]
    np.testing.assert_allclose(cupy.asnumpy(kernel.run([a, two, b], given)[0]), np.tile(2 + np.arange(16), (8, 1)))

    def host_us(f, count=3000):
        f()
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        for _ in range(count):
            f()
        elapsed = time.perf_counter() - start
        cupy.cuda.Device().synchronize()
        return elapsed / count * 1e6

    px, py, po = pointer(x), pointer(y), pointer(out)
    stream_of = cupy.cuda.get_current_stream
    for name, f in [
        ("kernel[grid](...)", lambda: fn[grid](px, py, po, n, BLOCK=256)),
        ("CompiledKernel.run (Triton's launcher)", lambda: compiled.run(*grid, stream_of().ptr, compiled.function,
                                                   compiled.packed_metadata, None, None, None, *args)),
        ("prepared launch", lambda: run(stream_of().ptr, args)),
        ("TritonKernel.run, outputs given", lambda: kernel.run([a, two, b], given)),
        ("TritonKernel.run, new outputs", lambda: kernel.run([a, two, b])),
        ("CuPy x * 2 + y (two kernels)", lambda: x * 2 + y),
        ("CuPy x + y", lambda: x + y),
    ]:
        print(f"launch cost: {{name}}: {{host_us(f):.2f}} us")
    assert triton.testing.do_bench(lambda: run(stream_of().ptr, args), warmup=5, rep=20) > 0  # Triton's benchmarker
    print("torch" in sys.modules)
    """, tmp_path)
    print(out)
    assert out.strip().split("\n")[-1] == "False"


@gpu
@needs_gpu
def test_a_triton_kernel_reads_inputs_of_any_layout():
    """The hand-written x * 2 + b through TritonKernel on CuPy arrays: contiguous, strided (read
    in place), column-major (copied), misaligned (a variant compiled for any alignment), a CPU
    scalar, outputs given; each against numpy."""
    import cupy

    kernel = launch.TritonKernel(mul_add_desc(), add_source())
    kernel.prepare()
    rng = np.random.default_rng(0)
    x_host, b_host = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    expected = x_host * 2 + b_host
    b = cupy.asarray(b_host)
    wide = cupy.zeros((16, 40), cupy.float32)
    wide[::2, 3:19] = cupy.asarray(x_host)
    flat = cupy.zeros(8 * 16 + 1, cupy.float32)
    flat[1:] = cupy.asarray(x_host).ravel()
    layouts = {
        "contiguous": cupy.asarray(x_host),
        "strided": wide[::2, 3:19],
        "column-major": cupy.asfortranarray(cupy.asarray(x_host)),
        "misaligned": flat[1:].reshape(8, 16),
    }
    for name, x in layouts.items():
        for two in (cupy.asarray(np.float32(2)), np.float32(2)):
            (out,) = kernel.run([x, two, b])
            np.testing.assert_allclose(cupy.asnumpy(out), expected, rtol=1e-6, err_msg=name)
    given = cupy.empty((8, 16), cupy.float32)
    assert kernel.run([layouts["contiguous"], cupy.asarray(np.float32(2)), b], [given])[0] is given
    np.testing.assert_allclose(cupy.asnumpy(given), expected, rtol=1e-6)
    assert {key[1] for key in kernel._launches} == {True, False}  # aligned and any-alignment variants


@gpu
@needs_gpu
@pytest.mark.skipif(not _has_renderer(), reason="this jitorch has no Triton renderer")
def test_compiled_functions_on_cuda_run_fused_triton_kernels_that_match_eager():
    import jitorch.nn.functional as F
    from jitorch.backends.cuda.launch import TritonKernel

    rng = np.random.default_rng(1)
    x = jt.tensor(rng.standard_normal((64, 96)).astype(np.float32)).to("cuda")
    b = jt.tensor(rng.standard_normal(96).astype(np.float32)).to("cuda")
    functions = {
        "pointwise": lambda x, b: ((x * 2 + b).relu() - x.exp()).sigmoid() * (x > 0),
        "softmax": lambda x, b: F.softmax(x * 2 + 1, -1),
        "layer_norm": lambda x, b: F.layer_norm(x + b, (96,)),
        "gelu": lambda x, b: F.gelu(x + b),
        "where": lambda x, b: jt.where(x > b, x, b * 2),
    }
    for name, fn in functions.items():
        compiled = jt.compile(fn)
        got = compiled(x, b).to("cpu").numpy()
        (program,) = [p for entries in compiled.cache.values() for p in entries]
        kernels = program.plan.kernels
        assert kernels and all(isinstance(k, TritonKernel) for k in kernels), name
        np.testing.assert_allclose(got, fn(x, b).to("cpu").numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        print(f"{name}: {len(kernels)} Triton kernel(s): {', '.join(k.name for k in kernels)}")


def test_the_same_kernel_in_two_layers_compiles_as_one_source():
    """Kernels are rendered with their IR values' numbers (`v351`) and cite their source lines;
    what Triton compiles renumbers the one and drops the other, so each layer's copy of a kernel is
    one source for Triton's caches (and one compile in the pool)."""
    from jitorch.ir.fusion import describe

    jt.manual_seed(0)
    block = [jt.nn.Linear(16, 16), jt.nn.LayerNorm(16), jt.nn.ReLU()]
    model = jt.nn.Sequential(*block, *[jt.nn.Linear(16, 16), jt.nn.LayerNorm(16), jt.nn.ReLU()])
    f = jt.compile(lambda x: model(x).sum())
    f(jt.randn(8, 16))
    (program,) = f.programs()
    first, second = [renderer.render(describe(k.kernel)) for k in program.plan.kernels]
    assert first.name == second.name and first.text != second.text
    code, name = launch.compiled_form(first.text, first.name)
    assert (code, name) == launch.compiled_form(second.text, second.name)
    assert name == first.name.rsplit("_", 1)[0] and "v0_ptr" in code and "#" not in code
    compile(code, "kernel", "exec")  # (still Python)


def test_configurations_compile_in_other_processes_into_tritons_disk_cache(tmp_path):
    """A large batch of configurations compiles in processes that touch no GPU (`compile_worker`:
    Triton's front end there runs beside the others, not under this process's lock); what they
    compile is in Triton's disk cache, so this process's own compile of the same configuration
    compiles nothing new; a configuration that does not compile comes back as its error's text."""
    out = run_python("""
    import os, time
    from jitorch.backends.cuda import compile_worker, launch, triton_driver
    from tests.test_triton_driver import ADD_SOURCE

    text, name = launch.compiled_form(ADD_SOURCE, "fused_mul_add")
    args = (triton_driver.Pointer(16, "fp32"),) * 4 + (4096, 64, 64)
    jobs = [launch.CompileJob(text, name, args + (block,), (4096 // block, 1, 1), {"num_warps": 4},
                              f"fused_mul_add: BLOCK={block}", True) for block in (128, 256)]
    broken = launch.CompileJob(text, name, args + (100,), (41, 1, 1), {"num_warps": 4}, "BLOCK=100", True)
    outcomes = compile_worker.compile_in_processes(jobs + [broken], 2, (9, 0))
    assert outcomes[:2] == [None, None] and "power of 2" in outcomes[2].lower(), outcomes
    cache = os.environ["TRITON_CACHE_DIR"]
    entries = set(os.listdir(cache))
    assert entries

    triton_driver.activate_compile_only((9, 0))  # (this process: a compile for sm_90 with no GPU either)
    assert all(job() is None for job in jobs)
    assert set(os.listdir(cache)) == entries  # found, not compiled again
    dead = compile_worker._pool.workers[0].process
    dead.kill()
    dead.wait()
    assert compile_worker.compile_in_processes(jobs, 2, (9, 0)) == [None, None]  # (a new pool)
    assert compile_worker._pool.workers[0].process is not dead
    compile_worker.shutdown()
    print("ok", len(entries))
    """, tmp_path, timeout=600)
    assert out.startswith("ok")
