"""Eager elementwise ops on the GPU as one-node Triton kernels (`jitorch/backends/cuda/eager_pointwise.py`).

Without a GPU: the choice between a flat Triton kernel and CuPy's kernel, and the argument list a
launch passes, on a numpy stand-in for CuPy whose compile and launch steps are recorded instead of
run (the kernels themselves are the Triton renderer's, run in Triton's interpreter by
tests/test_triton_codegen.py). On a GPU (marked `gpu`): results equal to CuPy's, bit for bit, and
the Triton path is the one taken.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import types

import numpy as np
import pytest

pytest.importorskip("triton")

import jitorch as jt  # noqa: E402
from tests.test_triton_driver import FAKE_CUPY, HostArray, host  # noqa: E402 - its numpy stand-in for CuPy


@pytest.fixture
def module(monkeypatch):
    """eager_pointwise imported over the stand-in (its gpu_check would refuse a machine without a GPU),
    with compiling and launching recorded: `module.launches` lists (key, stream, args)."""
    monkeypatch.setitem(sys.modules, "jitorch.backends.cuda.gpu_check", types.SimpleNamespace(cupy=FAKE_CUPY))
    monkeypatch.delitem(sys.modules, "jitorch.backends.cuda.eager_pointwise", raising=False)
    module = importlib.import_module("jitorch.backends.cuda.eager_pointwise")
    monkeypatch.setattr(module, "device_array", lambda a, dtype=None: host(np.asarray(a, dtype)))
    module.launches = []

    def prepare(self, key, runtime, config):
        launch = self._launches[key] = lambda stream, args: module.launches.append((key, stream, args))
        return launch

    monkeypatch.setattr(module.FlatKernel, "_prepare", prepare)
    yield module
    sys.modules.pop("jitorch.backends.cuda.eager_pointwise", None)


def _fallback(*arrays, **params):
    return "cupy"


def test_same_shaped_contiguous_operands_launch_the_flat_kernel_with_the_length_at_run_time(module):
    add = module.eager_pointwise("add", _fallback)
    x, y = host(np.ones((4, 8), np.float32)), host(np.arange(32, dtype=np.float32).reshape(4, 8))
    out = add(x, y)
    assert isinstance(out, HostArray) and out.shape == (4, 8) and out.dtype == np.float32
    (key, stream, args), = module.launches
    assert stream == 0x5EED
    # inputs, output, the length, then BLOCK (the renderer's first configuration for 32 elements)
    assert args == (x.data.ptr, y.data.ptr, out.data.ptr, 32, 32)
    # (device, aligned, per int argument: a multiple of 16, 1, 2**31 or more; BLOCK, the grid)
    assert key[1:] == (x.data.ptr % 16 == y.data.ptr % 16 == out.data.ptr % 16 == 0, (True, False, False), 32, 1)
    add(host(np.ones(3000, np.float32)), host(np.ones(3000, np.float32)))
    assert module.launches[-1][2][3:] == (3000, 1024) and module.launches[-1][0][-1] == 3  # a grid of 3 programs
    assert len(module._kernels) == 1  # one kernel for every length


def test_a_cpu_scalar_joins_as_a_device_scalar_and_0d_operands_keep_the_kernel(module):
    mul = module.eager_pointwise("mul", _fallback)
    x = host(np.ones(16, np.float32))
    out = mul(x, np.array(2.0, np.float32))
    assert isinstance(out, HostArray)
    assert module.launches[-1][2][3] == 16
    mul(x, host(np.float32(3)))  # a 0-d device operand: the same kernel (0-d in that slot)
    assert len(module._kernels) == 1


@pytest.mark.parametrize("shapes, expected", [
    ([(6, 8), (8,)], ((6, 8), (6, 8), ["full", "row"])),  # a bias
    ([(2, 3, 8), (3, 8)], ((2, 3, 8), (2, 24), ["full", "row"])),
    ([(2, 3, 8), (2, 3, 1)], ((2, 3, 8), (6, 8), ["full", "column"])),  # a row's statistic
    ([(4, 1, 5), (5,)], ((4, 1, 5), (4, 5), ["full", "row"])),  # (size-1 dims are in no one's way)
    ([(3, 4), (1, 1)], ((3, 4), (12,), ["full", "scalar"])),
    ([(4, 1), (4, 6)], ((4, 6), (4, 6), ["column", "full"])),
    ([(5,), (4, 5)], ((4, 5), (4, 5), ["row", "full"])),
    ([(2, 3, 8), (2, 1, 8)], None),  # broadcast along a middle dim: no one split
    ([(2, 3, 8), (3, 8), (2, 1, 1)], ((2, 3, 8), (2, 24), ["full", "row", "column"])),
    ([(2, 3, 8), (8,), (2, 3, 1)], ((2, 3, 8), (6, 8), ["full", "row", "column"])),  # one split serves both
    ([(2, 3, 8), (3, 8), (2, 3, 1)], None),  # a row from dim 1, a column up to dim 2
    ([(4, 1), (1, 6)], ((4, 6), (4, 6), ["column", "row"])),  # an outer product
    ([(3, 4), (5,)], None),  # not broadcastable
])
def test_broadcast_layouts(module, shapes, expected):
    found = module.broadcast_layout(tuple(shapes))
    assert (found if found is None else (found[0], found[1], list(found[2]))) == expected


def test_a_bias_and_a_rows_statistic_launch_the_row_and_column_kernels(module):
    """(R, C) kernels take the sizes and a full operand's row stride at run time: one kernel per
    layout serves every size."""
    add, sub = module.eager_pointwise("add", _fallback), module.eager_pointwise("sub", _fallback)
    x, b = host(np.ones((4, 8), np.float32)), host(np.arange(8, dtype=np.float32))
    out = add(x, b)
    assert isinstance(out, HostArray) and out.shape == (4, 8)
    # x, b, out, then n_elements, size1 (columns), x's row stride and BLOCK
    assert module.launches[-1][2] == (x.data.ptr, b.data.ptr, out.data.ptr, 32, 8, 8, 32)
    add(host(np.ones((3, 2, 16), np.float32)), host(np.ones(16, np.float32)))
    assert module.launches[-1][2][3:6] == (96, 16, 16)
    out = sub(x, host(np.ones((4, 1), np.float32)))
    assert out.shape == (4, 8) and module.launches[-1][2][3] == 32
    assert len(module._kernels) == 2  # add (full, row) and sub (full, column)


_IN_INTERPRETER = "JITORCH_EAGER_POINTWISE_INTERPRETER_RUN"
_LAYOUT_CASES = [("add", [(6, 8), (8,)]), ("sub", [(6, 8), (6, 1)]), ("mul", [(2, 3, 8), (3, 8)]),
                 ("div", [(2, 3, 8), (2, 3, 1)]), ("where", [(4, 1, 5), (4, 1, 5), (5,)]),
                 ("maximum", [(3, 4), (1, 1)]), ("add", [(5,), (4, 5)]), ("lt", [(4, 1), (1, 6)]),
                 ("where", [(2, 3, 8), (8,), (2, 3, 1)])]

_HALF_CASES = [("add", [(6, 8), (8,)], "bfloat16"), ("mul", [(40,), (40,)], "float16"),
               ("div", [(2, 3, 8), (2, 3, 1)], "bfloat16"), ("sub", [(4, 5), ()], "float16"),
               ("cast", [(33,)], "bfloat16"), ("maximum", [(3, 4), (1, 1)], "bfloat16")]


def _rounded(array: np.ndarray, dtype: str) -> np.ndarray:
    return array.astype(jt.bfloat16.np if dtype == "bfloat16" else np.float16)


if os.environ.get(_IN_INTERPRETER):
    @pytest.mark.parametrize("op, shapes", _LAYOUT_CASES)
    def test_interpreted_layouts_equal_numpy(module, op, shapes):
        """Each layout's kernel, run in Triton's interpreter with the sizes and strides a launch
        passes (`FlatKernel.sizing`), equals numpy's broadcast op."""
        import torch

        rng = np.random.default_rng(0)
        arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        if op == "where":
            arrays[0] = arrays[0] > 0
        shape, loop, layouts = module.broadcast_layout(tuple(a.shape for a in arrays))
        out_dtype = np.bool_ if op == "lt" else np.float32
        kernel = module.FlatKernel(op, {}, tuple(a.dtype for a in arrays), tuple(layouts), np.dtype(out_dtype))
        runtime, config, programs = kernel.sizing(loop)
        out = np.empty(shape, out_dtype)
        tensors = [torch.from_numpy(a.view(np.int8) if a.dtype == np.bool_ else a) for a in (*arrays, out)]
        kernel.function[(programs,)](*kernel.arguments.pick([*tensors, *runtime, config.constexprs["BLOCK"]]))
        names = {"sub": "subtract", "mul": "multiply", "div": "divide", "lt": "less"}
        expected = getattr(np, names.get(op, op))(*arrays)
        np.testing.assert_array_equal(out, expected)
        with open(os.environ[_IN_INTERPRETER], "ab") as f:
            pickle.dump((kernel.source, config), f)


    @pytest.mark.parametrize("op, shapes, dtype", _HALF_CASES)
    def test_interpreted_half_types_round_a_float32_result_once(module, op, shapes, dtype):
        """Half-type kernels in the interpreter: the float32 result of the float32 values, rounded
        once to the type (PyTorch's eager half arithmetic); a cast to bfloat16 rounds to nearest even."""
        import torch

        rng = np.random.default_rng(1)
        values = [np.asarray(rng.standard_normal(s) * 3, np.float32) for s in shapes]
        arrays = [v if op == "cast" else np.asarray(_rounded(v, dtype)) for v in values]
        params = {"dtype": getattr(jt, dtype)} if op == "cast" else {}
        out_dtype = _rounded(np.zeros(1), dtype).dtype
        shape, loop, layouts = (arrays[0].shape, (arrays[0].size,), ("full",)) if len(arrays) == 1 else \
            module.broadcast_layout(tuple(a.shape for a in arrays))
        kernel = module.FlatKernel(op, params, tuple(a.dtype for a in arrays), tuple(layouts), out_dtype)
        runtime, config, programs = kernel.sizing(loop)
        out = np.empty(shape, out_dtype)

        def as_torch(a):
            if a.dtype == jt.bfloat16.np:
                return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
            return torch.from_numpy(a)

        tensors = [as_torch(a) for a in (*arrays, out)]
        kernel.function[(programs,)](*kernel.arguments.pick([*tensors, *runtime, config.constexprs["BLOCK"]]))
        wide = [a.astype(np.float32) for a in arrays]
        names = {"sub": "subtract", "mul": "multiply", "div": "divide"}
        exact = wide[0] if op == "cast" else getattr(np, names.get(op, op))(*wide)
        np.testing.assert_array_equal(out.astype(np.float32), _rounded(exact, dtype).astype(np.float32))
        with open(os.environ[_IN_INTERPRETER], "ab") as f:
            pickle.dump((kernel.source, config), f)


def test_layouts_in_the_interpreter_and_for_sm90(tmp_path):
    """The interpreted layouts above, in a process with TRITON_INTERPRET=1; then their kernels,
    compiled for sm_90."""
    from tests.triton_interpreter_backend import compile_for_sm90, run_interpreted_tests

    report = tmp_path / "layouts.pkl"
    out = run_interpreted_tests(__file__, "test_interpreted_", _IN_INTERPRETER, str(report))
    assert f"{len(_LAYOUT_CASES) + len(_HALF_CASES)} passed" in out
    pairs = []
    with open(report, "rb") as f:
        while True:
            try:
                pairs.append(pickle.load(f))
            except EOFError:
                break
    assert len(pairs) == len(_LAYOUT_CASES) + len(_HALF_CASES)
    for (source, _), ptx in zip(pairs, compile_for_sm90(pairs)):
        assert f".entry {source.name}(" in ptx, source.text


def test_half_types_launch_the_flat_kernel_and_compute_in_float32(module):
    bf16 = jt.bfloat16.np
    add = module.eager_pointwise("add", _fallback)
    out = add(host(np.ones(8, bf16)), host(np.ones(8, bf16)))
    assert isinstance(out, HostArray) and out.dtype == bf16 and len(module.launches) == 1
    cast = module.eager_pointwise("cast", _fallback)
    assert cast(host(np.ones(8, np.float32)), dtype=jt.float16).dtype == np.float16
    kernel = next(k for key, k in module._kernels.items() if key[0] == "add")
    assert "bfloat16" in kernel.source.text and ".to(tl.float32)" in kernel.source.text


def test_operands_transposed_alike_launch_the_flat_kernel_and_keep_their_layout(module):
    """A transposed matrix (a weight's gradient, cast to the parameter's dtype) and a permuted
    tensor are dense in another dim order: the flat kernel runs over their memory and the result
    is laid out as they are, as PyTorch's elementwise results are."""
    cast = module.eager_pointwise("cast", _fallback)
    weight_grad = host(np.arange(12, dtype=np.float32).reshape(3, 4)).T
    out = cast(weight_grad, dtype=jt.float16)
    assert out.shape == (4, 3) and out.strides == (2, 8)  # (4, 3) over (3, 4) memory, as its input
    assert module.launches[-1][2][2] == 12  # one flat loop over the 12 elements
    add = module.eager_pointwise("add", _fallback)
    x = host(np.ones((2, 3, 5), np.float32)).transpose(2, 0, 1)
    out = add(x, x)
    assert out.shape == (5, 2, 3) and out.strides == x.strides and not out.flags.c_contiguous
    assert add(x, host(np.ones((5, 2, 3), np.float32))) == "cupy"  # two layouts: CuPy's


@pytest.mark.parametrize("case", ["broadcast", "strided", "empty", "int_div", "float_to_int", "not_exact",
                                  "python_scalar"])
def test_what_the_flat_kernel_does_not_take_goes_to_cupy(module, case):
    f32 = np.float32
    ops = {
        "broadcast": ("add", (host(np.ones((2, 4, 8), f32)), host(np.ones((2, 1, 8), f32))), {}),
        "strided": ("add", (host(np.ones((4, 8), f32))[:, ::2], host(np.ones((4, 4), f32))), {}),
        "empty": ("add", (host(np.ones((0, 3), f32)), host(np.ones((0, 3), f32))), {}),
        "int_div": ("div", (host(np.ones(8, np.int64)), host(np.ones(8, np.int64))), {}),
        "float_to_int": ("cast", (host(np.ones(8, f32)),), {"dtype": jt.int32}),
        "not_exact": ("exp", (host(np.ones(8, f32)),), {}),
        "python_scalar": ("add", (host(np.ones(8, f32)), 2.0), {}),
    }
    op, arrays, params = ops[case]
    assert module.eager_pointwise(op, _fallback)(*arrays, **params) == "cupy"
    assert not module.launches


# ---------------------------------------------------------------------------------------------
# on the GPU

needs_cuda = pytest.mark.skipif(not jt.cuda.is_available(), reason="needs an NVIDIA GPU with CuPy")

_GPU_CASES = [
    ("add", np.float32, 2), ("sub", np.float64, 2), ("mul", np.int64, 2), ("div", np.float32, 2),
    ("maximum", np.float32, 2), ("minimum", np.float64, 2), ("lt", np.float32, 2), ("eq", np.int32, 2),
    ("neg", np.float32, 1), ("abs", np.int64, 1), ("sqrt", np.float32, 1), ("reciprocal", np.float64, 1),
    ("relu", np.float32, 1),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("op, dtype, arity", _GPU_CASES)
@pytest.mark.parametrize("n", [1, 17, 4096, 100_003])
def test_gpu_flat_kernels_equal_cupys_bit_for_bit(op, dtype, arity, n):
    import cupy

    from jitorch.backends import backend_for
    from jitorch.backends.cuda import eager_pointwise, kernels

    backend_for("cuda")
    rng = np.random.default_rng(n)
    values = [rng.standard_normal(n) * 10 for _ in range(arity)]
    if n > 4:
        values[0][:4] = [np.nan, -0.0, np.inf, -np.inf] if np.dtype(dtype).kind == "f" else values[0][:4]
    arrays = [cupy.asarray(v.astype(dtype)) for v in values]
    fallback = kernels.SHARED[op]
    expected = cupy.asnumpy(fallback(*arrays))
    before = len(eager_pointwise._kernels)
    got = eager_pointwise.eager_pointwise(op, lambda *a, **k: pytest.fail("went to CuPy"))(*arrays)
    assert len(eager_pointwise._kernels) >= before
    got = cupy.asnumpy(got)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # exactly (NaN where CuPy has NaN; payloads may differ)
    if expected.dtype.kind == "f":  # and the same signed zeros
        numbers = ~np.isnan(expected)
        np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(expected[numbers]))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("op, shapes, dtype", _HALF_CASES)
def test_gpu_half_types_round_a_float32_result_once(op, shapes, dtype):
    """On the GPU, through the flat kernels: the float32 result rounded once to the half type, as
    PyTorch's eager half arithmetic (and its casts) on the same GPU."""
    import cupy
    import torch

    from jitorch.backends import backend_for
    from jitorch.backends.cuda import eager_pointwise

    backend_for("cuda")
    rng = np.random.default_rng(2)
    values = [np.asarray(rng.standard_normal(s) * 3, np.float32) for s in shapes]
    arrays = [v if op == "cast" else np.asarray(_rounded(v, dtype)) for v in values]
    params = {"dtype": getattr(jt, dtype)} if op == "cast" else {}
    got = eager_pointwise.eager_pointwise(op, lambda *a, **k: pytest.fail("went to CuPy"))(
        *[cupy.asarray(a) for a in arrays], **params)
    tdtype = getattr(torch, dtype)
    theirs = [torch.from_numpy(v).cuda() if op == "cast" else torch.from_numpy(v).cuda().to(tdtype) for v in values]
    names = {"sub": "sub", "mul": "mul", "div": "div", "add": "add", "maximum": "maximum"}
    expected = theirs[0].to(tdtype) if op == "cast" else getattr(torch, names[op])(*theirs)
    np.testing.assert_array_equal(cupy.asnumpy(got).astype(np.float32), expected.float().cpu().numpy())


@pytest.mark.gpu
@needs_cuda
def test_gpu_eager_ops_on_cuda_tensors_take_the_flat_kernels():
    from jitorch.backends.cuda import eager_pointwise

    x, y = jt.randn(1000, device="cuda"), jt.randn(1000, device="cuda")
    z = (x + y) * 2 - x / y
    a, b = x.cpu().numpy(), y.cpu().numpy()
    np.testing.assert_array_equal(z.cpu().numpy(), (a + b) * np.float32(2) - a / b)  # IEEE, as numpy
    ops = {key[0] for key, kernel in eager_pointwise._kernels.items() if kernel is not None}
    assert {"add", "mul", "sub", "div"} <= ops


@pytest.mark.gpu
@needs_cuda
def test_gpu_transposed_casts_and_adds_equal_cupys_and_keep_the_layout():
    import cupy

    from jitorch.backends import backend_for
    from jitorch.backends.cuda import eager_pointwise, kernels

    backend_for("cuda")
    rng = np.random.default_rng(2)
    grad = cupy.asarray(rng.standard_normal((768, 3072)).astype(jt.bfloat16.np)).T
    wide = cupy.asarray(rng.standard_normal((768, 3072)).astype(np.float32)).T
    for op, arrays, params in (("cast", (grad,), {"dtype": jt.float32}), ("add", (wide, wide), {})):
        got = eager_pointwise.eager_pointwise(op, lambda *a, **k: pytest.fail("went to CuPy"))(*arrays, **params)
        expected = kernels.SHARED[op](*arrays, **params)
        assert got.shape == expected.shape and got.strides[0] < got.strides[1]  # transposed, as its input
        np.testing.assert_array_equal(cupy.asnumpy(got), cupy.asnumpy(expected))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("op, shapes", _LAYOUT_CASES + [
    ("add", [(512, 768), (768,)]), ("sub", [(2, 4, 100, 100), (100, 100)]),
    ("div", [(2, 4, 100, 100), (2, 4, 100, 1)])])
def test_gpu_broadcast_layouts_equal_cupys_bit_for_bit(op, shapes):
    """Rows and columns (a bias, a row's statistic, an outer product) on the GPU: CuPy's results,
    exactly, through the flat kernels."""
    import cupy

    from jitorch.backends import backend_for
    from jitorch.backends.cuda import eager_pointwise, kernels

    backend_for("cuda")
    rng = np.random.default_rng(1)
    arrays = [cupy.asarray(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    if op == "where":
        arrays[0] = arrays[0] > 0
    expected = cupy.asnumpy(kernels.SHARED[op](*arrays))
    got = eager_pointwise.eager_pointwise(op, lambda *a, **k: pytest.fail("went to CuPy"))(*arrays)
    np.testing.assert_array_equal(cupy.asnumpy(got), expected)
