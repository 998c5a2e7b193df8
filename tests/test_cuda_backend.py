"""The CUDA backend (CuPy) and what it shares with the CPU.

On any machine: the CPU backend runs the shared kernels of `jitorch.backends.array_kernels` over
numpy except where it overrides them, and each override agrees with the shared kernel it replaces
(the code the GPU runs, checked here on numpy); `import jitorch` imports no CuPy; a missing CuPy,
driver or GPU is a reason in words; the float32 matmul precision setting.

Marked `gpu` (run with `python -m pytest -m gpu` on a machine with an NVIDIA GPU and CuPy): every
primitive's cuda kernel against its CPU kernel on the same random inputs, random draws equal to
the CPU's for a seed, composite ops, autograd and training steps on cuda against the CPU, and the
precision setting taking effect (TF32 visibly less precise than "highest").
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn.functional as F
from jitorch import backends, philox
from jitorch import dtypes as dt
from jitorch.backends import array_kernels
from jitorch.backends.cpu import kernels as cpu_kernels
from jitorch.errors import BackendError
from jitorch.primitives import PRIMS
from tests.nn_helpers import training_step

# ---------------------------------------------------------------------------------------------
# on any machine


def test_the_cpu_backend_runs_the_shared_kernels_but_for_its_helper_loops():
    assert set(cpu_kernels.KERNELS) == set(PRIMS)
    assert set(cpu_kernels.OVERRIDES) == {"erf", "where", "relu", "relu_backward", "sum", "amax", "index_put", "unfold",
                                          "fold"}
    assert set(cpu_kernels.SHARED) == set(PRIMS) - {"erf"}  # numpy has no erf: each backend brings one
    for name, kernel in cpu_kernels.KERNELS.items():
        assert kernel is cpu_kernels.OVERRIDES.get(name, cpu_kernels.SHARED.get(name)), name
    assert backends.backend_for("cpu").kernels is cpu_kernels.KERNELS


def _override_cases(rng):
    """Inputs that take each CPU override's helper loop (sizes above its thresholds) and its fallback."""
    big = rng.standard_normal((64, 512)).astype(np.float32)
    small = rng.standard_normal((3, 5)).astype(np.float32)
    rows = rng.integers(0, 50, 300)
    image = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    conv = {"kernel": (3, 3), "dilation": (1, 2), "padding": (1, 2), "stride": (2, 1)}
    cols = array_kernels.make_kernels(np)["unfold"](image, **conv)
    return [
        ("where", (big > 0, big, np.float32(2) * big), {}),
        ("where", (big > 0, big, np.zeros((), np.float32)), {}),
        ("where", (small > 0, small, small.T[:1].T), {}),
        ("relu", (big,), {}),
        ("relu", (small,), {}),
        ("relu_backward", (big, np.maximum(big, 0)), {}),
        ("relu_backward", (small, np.maximum(small, 0)), {}),
        ("sum", (big,), {"dims": (1,), "keepdim": True}),
        ("sum", (big,), {"dims": (0,), "keepdim": False}),
        ("sum", (big.astype(np.float16),), {"dims": (1,), "keepdim": False}),
        ("amax", (big,), {"dims": (1,), "keepdim": False}),
        ("amax", (small > 0,), {"dims": (0,), "keepdim": True}),
        ("index_put", (np.zeros((50, 16), np.float32), rng.standard_normal((300, 16)).astype(np.float32), rows),
         {"key": (("tensor", 0),), "accumulate": True}),
        ("index_put", (np.zeros((50, 16), np.float32), np.float32(1.5), rows[:10]),
         {"key": (("tensor", 0),), "accumulate": False}),
        ("unfold", (image,), conv),
        ("unfold", (image[:1, :1, :5, :5],), conv),
        ("fold", (cols,), {"output_size": (20, 20), **conv}),
        ("fold", (cols.astype(np.float16),), {"output_size": (20, 20), **conv}),
    ]


def test_each_cpu_override_agrees_with_the_shared_kernel_it_replaces():
    shared = array_kernels.make_kernels(np)
    for name, inputs, params in _override_cases(np.random.default_rng(0)):
        ours, theirs = cpu_kernels.KERNELS[name](*inputs, **params), shared[name](*inputs, **params)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, name
        np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(theirs, np.float64), rtol=1e-4,
                                   atol=1e-4, err_msg=name)  # sums through BLAS add in another order


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_and_using_jitorch_on_the_cpu_imports_no_cupy():
    out = _run("import sys, jitorch as jt\n"
               "jt.backends.cuda.matmul.allow_tf32 = True\n"
               "x = jt.randn(4, 3, requires_grad=True); (x @ x.T).relu().sum().backward()\n"
               "print(jt.backends.get_float32_matmul_precision(), 'cupy' in sys.modules)")
    assert out == "high False"


@pytest.fixture
def fresh_registry(monkeypatch):
    """The lazy registry as at import, with no cuda backend loaded yet."""
    monkeypatch.setattr(backends, "_BACKENDS", {k: v for k, v in backends._BACKENDS.items() if k != "cuda"})
    monkeypatch.setattr(backends, "_LAZY", {})
    monkeypatch.setattr(backends, "_UNAVAILABLE", {})
    for module in ("jitorch.backends.cuda.backend", "jitorch.backends.cuda.kernels",
                   "jitorch.backends.cuda.gpu_check"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    backends.register_lazy("cuda", "jitorch.backends.cuda.backend")
    return monkeypatch


def test_without_cupy_the_reason_says_how_to_install_it(fresh_registry):
    fresh_registry.setitem(sys.modules, "cupy", None)  # `import cupy` fails as if it were not installed
    assert not backends.has_backend("cuda")
    assert backends.unavailable_reason("cuda") == "CuPy is not installed: pip install 'jitorch[cuda]'"
    with pytest.raises(BackendError, match=r"no backend for device type 'cuda'.*jitorch\[cuda\]"):
        backends.backend_for("cuda")


def test_a_lazy_backend_is_imported_on_first_use_and_its_failure_kept(fresh_registry, tmp_path):
    (tmp_path / "broken_backend.py").write_text("raise RuntimeError('no accelerator here')\n")
    (tmp_path / "silent_backend.py").write_text("x = 1\n")
    fresh_registry.syspath_prepend(str(tmp_path))
    backends.register_lazy("xpu", "broken_backend")
    backends.register_lazy("npu", "silent_backend")
    assert backends.unavailable_reason("xpu") == "no accelerator here"
    assert not backends.has_backend("xpu")
    assert backends.unavailable_reason("npu") == "silent_backend registered no backend for 'npu'"
    assert backends.unavailable_reason("tpu") == "this jitorch has no backend for device type 'tpu'"
    assert backends.unavailable_reason("cpu") is None and backends.has_backend("meta")


def test_the_float32_matmul_precision_setting():
    assert backends.get_float32_matmul_precision() == "highest"
    assert jt.backends.cuda.matmul.allow_tf32 is False
    try:
        jt.backends.cuda.matmul.allow_tf32 = True
        assert backends.get_float32_matmul_precision() == "high"
        backends.set_float32_matmul_precision("medium")
        assert jt.backends.cuda.matmul.allow_tf32 is True
        with pytest.raises(ValueError, match="'highest', 'high', 'medium'"):
            backends.set_float32_matmul_precision("low")
        with pytest.raises(AttributeError):
            jt.backends.cuda.matmul.allow_fp16 = True  # a misspelt setting is not silently kept
    finally:
        backends.set_float32_matmul_precision("highest")
    assert jt.backends.cuda.matmul.allow_tf32 is False


def test_philox_answers_in_the_namespace_of_its_offsets():
    assert philox.array_namespace(np.arange(3), 0) is np
    assert type(philox.uniform(1, np.arange(3))) is np.ndarray


# ---------------------------------------------------------------------------------------------
# on a GPU


@pytest.fixture
def cuda():
    """The CUDA backend; the test is skipped, saying why, where there is none."""
    if not backends.has_backend("cuda"):
        pytest.skip(f"no cuda backend: {backends.unavailable_reason('cuda')}")
    return backends.backend_for("cuda")


@dataclass
class Case:
    """A primitive run on inputs made by `make(rng)` with `params`; float outputs compared to rtol/atol."""

    prim: str
    make: object
    params: dict = field(default_factory=dict)
    rtol: float = 1e-6
    atol: float = 1e-6
    label: str = ""
    up_to_sign: bool = False  # a factorization whose vectors cuSOLVER and LAPACK may sign differently

    @property
    def id(self) -> str:
        return f"{self.prim}-{self.label}" if self.label else self.prim


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def f64(rng, *shape):
    return rng.standard_normal(shape)


def spd(rng, n: int) -> np.ndarray:
    """A symmetric positive-definite float64 matrix with distinct eigenvalues."""
    a = rng.standard_normal((n, n))
    return a @ a.T + np.diag(np.arange(1, n + 1) * 2.0)


def ints(rng, low, high, *shape):
    return rng.integers(low, high, shape).astype(np.int64)


def bools(rng, *shape):
    return rng.random(shape) < 0.5


def bf16(x):
    return x.astype(dt.bfloat16.np)


def with_specials(x):
    x = x.copy()
    x.flat[::7], x.flat[3::11], x.flat[5::13] = np.nan, np.inf, -np.inf
    return x


MATH = {"rtol": 1e-5, "atol": 1e-6}  # CUDA's float32 libm is within a few ulps of numpy's
SUMS = {"rtol": 1e-5, "atol": 1e-5}  # another order of additions
ROUNDED = {"rtol": 1e-5, "atol": 1e-5}  # CuPy's own formulas (x - floor(x / y) * y): an ulp of x apart
CONV = {"kernel": (3, 3), "dilation": (1, 2), "padding": (1, 2), "stride": (2, 1)}

CASES = [
    *[Case(p, lambda r: (f32(r, 4, 300, scale=3),)) for p in
      ("neg", "abs", "sign", "floor", "ceil", "round", "trunc", "relu")],
    *[Case(p, lambda r: (f32(r, 4, 300, scale=3),), **MATH) for p in
      ("exp", "expm1", "sin", "cos", "tanh", "sigmoid", "erf")],
    Case("erf", lambda r: (f32(r, 4, 300).astype(np.float64),), rtol=1e-12, atol=1e-14, label="float64"),
    Case("erf", lambda r: (f32(r, 4, 300).astype(np.float16),), rtol=1e-3, atol=1e-3, label="float16"),
    *[Case(p, lambda r: (np.abs(f32(r, 4, 300, scale=3)) + 0.1,), **MATH) for p in
      ("log", "log1p", "sqrt", "rsqrt", "reciprocal")],
    *[Case(p, lambda r: (with_specials(f32(r, 4, 300)),)) for p in ("isnan", "isinf")],
    Case("logical_not", lambda r: (bools(r, 4, 300),)),
    Case("relu_backward", lambda r: (f32(r, 4, 300), np.maximum(f32(r, 4, 300), 0))),
    Case("cast", lambda r: (f32(r, 4, 300, scale=50),), {"dtype": dt.int32}, label="to_int32"),
    Case("cast", lambda r: (f32(r, 4, 300),), {"dtype": dt.float16}, label="to_float16"),
    Case("cast", lambda r: (f32(r, 4, 300),), {"dtype": dt.bfloat16}, label="to_bfloat16"),
    Case("cast", lambda r: (f32(r, 4, 300),), {"dtype": dt.float64}, label="to_float64"),
    Case("cast", lambda r: (f32(r, 4, 300).round(),), {"dtype": dt.bool_}, label="to_bool"),
    Case("cast", lambda r: (ints(r, -1000, 1000, 4, 300),), {"dtype": dt.float32}, label="int64_to_float32"),
    *[Case(p, lambda r: (f32(r, 4, 300), f32(r, 300))) for p in ("add", "sub", "mul", "maximum", "minimum")],
    Case("div", lambda r: (f32(r, 4, 300), f32(r, 300) + 3), rtol=1e-6),
    Case("pow", lambda r: (np.abs(f32(r, 4, 300)) + 0.1, f32(r, 300)), **MATH),
    *[Case(p, lambda r: (f32(r, 4, 300, scale=10), np.abs(f32(r, 300)) + 0.5), **ROUNDED) for p in
      ("remainder", "floor_divide")],
    *[Case(p, lambda r: (ints(r, -20, 20, 4, 300), np.array([-7, -3, -1, 1, 2, 5] * 50)), label="int64") for p in
      ("remainder", "floor_divide")],
    *[Case(p, lambda r: (f32(r, 4, 300).round(), f32(r, 300).round())) for p in
      ("eq", "ne", "lt", "le", "gt", "ge")],
    *[Case(p, lambda r: (bools(r, 4, 300), bools(r, 300))) for p in ("logical_and", "logical_or", "logical_xor")],
    *[Case(p, lambda r: (ints(r, -99, 99, 4, 300), ints(r, -99, 99, 300))) for p in
      ("bitwise_and", "bitwise_or", "bitwise_xor")],
    Case("bitwise_not", lambda r: (ints(r, -99, 99, 4, 300),)),
    Case("bitwise_not", lambda r: (bools(r, 4, 300),), label="bool"),
    Case("where", lambda r: (bools(r, 4, 300), f32(r, 4, 300), f32(r, 300))),
    Case("where", lambda r: (bools(r, 4, 300), f32(r, 4, 300), np.zeros((), np.float32)), label="scalar"),
    Case("sum", lambda r: (f32(r, 6, 7, 50),), {"dims": (0,), "keepdim": False}, **SUMS),
    Case("sum", lambda r: (f32(r, 6, 7, 50),), {"dims": (1, 2), "keepdim": True}, **SUMS, label="trailing"),
    Case("sum", lambda r: (f32(r, 6, 7, 50),), {"dims": (0, 1, 2), "keepdim": False}, **SUMS, label="all"),
    Case("sum", lambda r: (f32(r, 6, 7, 50).astype(np.float16),), {"dims": (2,), "keepdim": False},
         rtol=1e-3, atol=1e-3, label="float16"),
    Case("sum", lambda r: (ints(r, -9, 9, 6, 7, 50),), {"dims": (2,), "keepdim": False}, label="int64"),
    Case("sum", lambda r: (bools(r, 6, 7, 50),), {"dims": (0, 2), "keepdim": False}, label="bool"),
    Case("prod", lambda r: (f32(r, 6, 7, 50) * 0.1 + 1,), {"dims": (2,), "keepdim": False}, **SUMS),
    *[Case(p, lambda r: (f32(r, 6, 7, 50),), {"dims": (2,), "keepdim": False}) for p in ("amax", "amin")],
    *[Case(p, lambda r: (f32(r, 6, 7, 50),), {"dims": (0, 1), "keepdim": True}, label="leading") for p in
      ("amax", "amin")],
    *[Case(p, lambda r: (bools(r, 6, 7, 50),), {"dims": (2,), "keepdim": False}, label="bool") for p in
      ("amax", "amin")],
    *[Case(p, lambda r: (f32(r, 6, 7, 50),), {"dim": None, "keepdim": False}) for p in ("argmax", "argmin")],
    *[Case(p, lambda r: (f32(r, 6, 7, 50),), {"dim": 1, "keepdim": True}, label="dim") for p in
      ("argmax", "argmin")],
    Case("cumsum", lambda r: (f32(r, 6, 300),), {"dim": 1}, **SUMS),
    Case("cumsum", lambda r: (ints(r, -9, 9, 6, 300),), {"dim": 0}, label="int64"),
    Case("cumsum", lambda r: (np.array(2.5, np.float32),), {"dim": 0}, label="0d"),
    Case("reshape", lambda r: (f32(r, 6, 7, 50),), {"shape": (42, 50)}),
    Case("permute", lambda r: (f32(r, 6, 7, 50),), {"dims": (2, 0, 1)}),
    Case("expand", lambda r: (f32(r, 1, 7, 1),), {"shape": (6, 7, 50)}),
    Case("flip", lambda r: (f32(r, 6, 7, 50),), {"dims": (0, 2)}),
    Case("copy", lambda r: (f32(r, 6, 7, 50).transpose(2, 0, 1),)),
    Case("pad", lambda r: (f32(r, 6, 7, 50),), {"pads": ((1, 2), (0, 0), (3, 0)), "value": 1.5}),
    Case("getitem", lambda r: (f32(r, 6, 7, 50),), {"key": (("slice", 1, None, 2), 3)}, label="basic"),
    Case("getitem", lambda r: (f32(r, 6, 7, 50), np.array([0, -1, 2, 2, 5])), {"key": (("tensor", 0),)},
         label="indices"),
    Case("getitem", lambda r: (f32(r, 6, 7, 50), bools(r, 6, 7)), {"key": (("tensor", 0),)}, label="mask"),
    Case("index_put", lambda r: (f32(r, 50, 16), f32(r, 300, 16), ints(r, 0, 50, 300)),
         {"key": (("tensor", 0),), "accumulate": True}, **SUMS, label="accumulate"),
    Case("index_put", lambda r: (f32(r, 50, 16).astype(np.float64), f32(r, 30, 16).astype(np.float64),
                                 ints(r, -50, 50, 30)),
         {"key": (("tensor", 0),), "accumulate": True}, rtol=1e-12, atol=1e-12, label="accumulate_float64"),
    Case("index_put", lambda r: (f32(r, 50, 16), f32(r, 16), r.permutation(50)[:10]),
         {"key": (("tensor", 0),), "accumulate": False}, label="assign"),
    Case("index_put", lambda r: (f32(r, 6, 7), np.float32(0.5), bools(r, 6, 7)),
         {"key": (("tensor", 0),), "accumulate": False}, label="mask"),
    Case("cat", lambda r: (f32(r, 6, 7), f32(r, 6, 3), f32(r, 6, 1)), {"dim": 1}),
    Case("matmul", lambda r: (f32(r, 64, 32), f32(r, 32, 48)), **SUMS),
    Case("matmul", lambda r: (f32(r, 3, 64, 32), f32(r, 3, 32, 48)), **SUMS, label="batched"),
    Case("matmul", lambda r: (f32(r, 3, 64, 32), f32(r, 32, 48)), **SUMS, label="broadcast"),
    Case("matmul", lambda r: (f32(r, 32), f32(r, 2, 32, 48)), **SUMS, label="vector"),
    Case("matmul", lambda r: (f32(r, 64, 32).astype(np.float64), f32(r, 32, 48).astype(np.float64)),
         rtol=1e-12, atol=1e-12, label="float64"),
    Case("matmul", lambda r: (f32(r, 64, 32).astype(np.float16), f32(r, 32, 48).astype(np.float16)),
         rtol=1e-3, atol=1e-2, label="float16"),
    Case("matmul", lambda r: (ints(r, -9, 9, 16, 32), ints(r, -9, 9, 32, 8)), label="int64"),
    Case("einsum", lambda r: (f32(r, 3, 8, 16), f32(r, 3, 16, 4)), {"equation": "bij,bjk->bik"}, **SUMS),
    Case("einsum", lambda r: (f32(r, 8, 16), f32(r, 16, 4), f32(r, 4, 5)), {"equation": "ij,jk,kl->il"}, **SUMS,
         label="three"),
    Case("gather", lambda r: (f32(r, 6, 50), ints(r, 0, 50, 6, 20)), {"dim": 1}),
    Case("scatter_add", lambda r: (np.zeros((10, 5), np.float32), ints(r, 0, 10, 30, 5), f32(r, 30, 5)),
         {"dim": 0}, **SUMS),
    Case("scatter_add", lambda r: (f32(r, 4, 10).astype(np.float64), ints(r, 0, 10, 4, 30),
                                   f32(r, 4, 40).astype(np.float64)), {"dim": 1}, rtol=1e-12, atol=1e-12,
         label="float64"),
    Case("scatter_add", lambda r: (ints(r, -9, 9, 10, 5), ints(r, 0, 10, 30, 5), ints(r, -9, 9, 30, 5)),
         {"dim": 0}, label="int64"),
    Case("scatter_add", lambda r: (np.zeros((10, 5), np.float16), ints(r, 0, 10, 30, 5),
                                   f32(r, 30, 5).astype(np.float16)),
         {"dim": 0}, rtol=1e-3, atol=1e-2, label="float16"),
    Case("index_put", lambda r: (ints(r, -9, 9, 50, 4), ints(r, -9, 9, 300, 4), ints(r, 0, 50, 300)),
         {"key": (("tensor", 0),), "accumulate": True}, label="accumulate_int64"),
    Case("scatter", lambda r: (f32(r, 4, 10), np.argsort(r.random((4, 6)), axis=1), f32(r, 4, 6)), {"dim": 1}),
    Case("argsort", lambda r: (f32(r, 6, 50, scale=2).round(),), {"dim": 1, "descending": False}),
    Case("argsort", lambda r: (f32(r, 6, 50, scale=2).round(),), {"dim": 0, "descending": True}, label="descending"),
    Case("argsort", lambda r: (bools(r, 6, 50),), {"dim": 1, "descending": False}, label="bool"),
    Case("unfold", lambda r: (f32(r, 2, 3, 9, 9),), CONV),
    Case("unfold", lambda r: (f32(r, 2, 8, 20, 20),), CONV, label="large"),
    Case("fold", lambda r: (f32(r, 2, 27, 5 * 9),), {"output_size": (9, 9), **CONV}, **SUMS),  # 5x9 windows
    # flash attention (Triton) against the CPU's materialized scores; tests/test_attention_triton.py has more
    Case("attention", lambda r: (f32(r, 2, 3, 70, 32), f32(r, 2, 3, 90, 32), f32(r, 2, 3, 90, 32)),
         {"is_causal": True, "scale": 0.2}, rtol=1e-4, atol=1e-5),
    Case("attention_backward", lambda r: (f32(r, 2, 3, 70, 32), f32(r, 2, 3, 90, 32), f32(r, 2, 3, 90, 32),
                                          f32(r, 2, 3, 70, 32), f32(r, 2, 3, 70, 32)),
         {"is_causal": False, "scale": 0.2}, rtol=1e-4, atol=1e-4),
    # CuPy computes most bfloat16 ufuncs in float32: the backend rounds their results to bfloat16
    *[Case(p, lambda r: (bf16(np.abs(f32(r, 4, 300)) + 0.5), bf16(f32(r, 300))), rtol=1e-2, atol=1e-2,
           label="bfloat16") for p in ("add", "mul", "maximum", "pow", "div")],
    *[Case(p, lambda r: (bf16(f32(r, 4, 300, scale=3)),), rtol=1e-2, atol=1e-2, label="bfloat16") for p in
      ("round", "relu", "exp", "tanh", "erf", "neg")],
    Case("where", lambda r: (bools(r, 4, 300), bf16(f32(r, 4, 300)), bf16(f32(r, 300))), label="bfloat16"),
    Case("relu_backward", lambda r: (bf16(f32(r, 4, 300)), bf16(np.maximum(f32(r, 4, 300), 0))),
         label="bfloat16"),
    Case("sum", lambda r: (bf16(f32(r, 6, 7, 50)),), {"dims": (2,), "keepdim": False}, rtol=1e-2, atol=1e-2,
         label="bfloat16"),
    Case("argmax", lambda r: (bf16(f32(r, 6, 7, 50)),), {"dim": 2, "keepdim": False}, label="bfloat16"),
    Case("matmul", lambda r: (bf16(f32(r, 64, 32)), bf16(f32(r, 32, 48))), rtol=1e-2, atol=5e-2, label="bfloat16"),
    # adds at repeated indices and scans: the CPU adds in bfloat16 one by one, the GPU in float32
    Case("cumsum", lambda r: (bf16(f32(r, 6, 8)),), {"dim": 1}, rtol=2e-2, atol=5e-2, label="bfloat16"),
    Case("cumsum", lambda r: (f32(r, 6, 8).astype(np.float16),), {"dim": 1}, rtol=1e-2, atol=1e-2, label="float16"),
    Case("index_put", lambda r: (bf16(f32(r, 50, 4)), bf16(f32(r, 60, 4)), ints(r, 0, 50, 60)),
         {"key": (("tensor", 0),), "accumulate": True}, rtol=2e-2, atol=5e-2, label="accumulate_bfloat16"),
    Case("index_put", lambda r: (bools(r, 10, 4), bools(r, 30, 4), ints(r, 0, 10, 30)),
         {"key": (("tensor", 0),), "accumulate": True}, label="accumulate_bool"),
    Case("scatter_add", lambda r: (bf16(f32(r, 10, 5)), ints(r, 0, 10, 20, 5), bf16(f32(r, 20, 5))), {"dim": 0},
         rtol=2e-2, atol=5e-2, label="bfloat16"),
    *[Case("random", lambda r: (np.array(5, np.int64), np.array(1000, np.int64)),
           {"shape": (4, 300), "dtype": dt.float32, "dist": dist, "offset": 7}, **MATH, label=dist)
      for dist in ("uniform", "normal")],
    # linear algebra through cuSOLVER (CuPy's linalg), in float64: well-conditioned inputs
    Case("inv", lambda r: (f64(r, 2, 4, 4) + 4 * np.eye(4),), rtol=1e-10, atol=1e-10),
    Case("det", lambda r: (f64(r, 2, 4, 4),), rtol=1e-10, atol=1e-10),
    Case("slogdet", lambda r: (f64(r, 2, 4, 4),), rtol=1e-10, atol=1e-10),
    Case("solve", lambda r: (f64(r, 2, 4, 4) + 4 * np.eye(4), f64(r, 2, 4, 3)), rtol=1e-10, atol=1e-10),
    Case("cholesky", lambda r: (spd(r, 4),), {"upper": False}, rtol=1e-10, atol=1e-10),
    Case("qr", lambda r: (f64(r, 2, 5, 3),), {"mode": "reduced"}, rtol=1e-10, atol=1e-10, up_to_sign=True),
    Case("eigh", lambda r: (spd(r, 4),), {"UPLO": "L"}, rtol=1e-10, atol=1e-10, up_to_sign=True),
    Case("svd", lambda r: (f64(r, 5, 3),), {"full_matrices": False}, rtol=1e-10, atol=1e-10, up_to_sign=True),
    Case("svdvals", lambda r: (f64(r, 2, 5, 3),), rtol=1e-10, atol=1e-10),
]


def test_the_gpu_cases_cover_every_primitive():
    assert {case.prim for case in CASES} == set(PRIMS)


def _host(array) -> np.ndarray:
    import cupy

    return cupy.asnumpy(array) if isinstance(array, cupy.ndarray) else np.asarray(array)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_cuda_kernel_matches_its_cpu_kernel(cuda, case):
    import cupy

    inputs = case.make(np.random.default_rng(0))
    expected = np.asarray(cpu_kernels.KERNELS[case.prim](*inputs, **case.params))
    got = cuda.kernels[case.prim](*[cupy.asarray(x) for x in inputs], **case.params)
    assert isinstance(got, cupy.ndarray)
    got = _host(got)
    assert got.shape == expected.shape and got.dtype == expected.dtype, (got.shape, got.dtype, expected.dtype)
    if case.up_to_sign:  # (packed factors: each vector's sign is the solver's choice)
        got, expected = np.abs(got), np.abs(expected)
    if expected.dtype.kind in "biu":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=case.rtol,
                                   atol=case.atol)


@pytest.mark.gpu
def test_cuda_kernels_take_cpu_scalars(cuda):
    import cupy

    x = cupy.arange(4, dtype=np.float32)
    lr = np.array(0.5, np.float32)  # a CPU scalar, as an optimizer's hyperparameter
    np.testing.assert_array_equal(_host(cuda.kernels["mul"](x, lr)), np.arange(4, dtype=np.float32) * 0.5)
    np.testing.assert_array_equal(_host(cuda.kernels["where"](x > 1, x, np.zeros((), np.float32))), [0, 0, 2, 3])


@pytest.mark.gpu
def test_cuda_buffers(cuda):
    import cupy

    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    buf = cuda.from_numpy(host)
    assert isinstance(buf, cupy.ndarray) and cuda.owns_buffer(buf)
    view = cuda.kernels["permute"](buf, dims=(1, 0))
    assert cuda.is_view_of(view, buf) and not cuda.owns_buffer(view)
    assert not cuda.is_view_of(cuda.copy(view), buf)
    np.testing.assert_array_equal(cuda.to_numpy(view), host.T)
    dst = cuda.empty((3, 4), np.dtype(np.int32))
    cuda.copy_into(dst, buf * 1.75)  # unsafe casting, as numpy's copyto
    np.testing.assert_array_equal(cuda.to_numpy(dst), (host * 1.75).astype(np.int32))
    cuda.copy_into(dst, np.ones((3, 4), np.float32))  # from the host
    cuda.add_into(buf, np.array(1, np.float32))
    np.testing.assert_array_equal(cuda.to_numpy(buf), host + 1)
    halves = cuda.from_numpy(bf16(host))
    cuda.add_into(halves, halves)
    np.testing.assert_array_equal(cuda.to_numpy(halves), bf16(host * 2))
    assert isinstance(cuda.as_buffer(np.float32(3)), cupy.ndarray)


@pytest.mark.gpu
def test_host_data_reaches_the_gpu_queued_and_fills_are_made_there(cuda):
    """from_numpy queues its copy (the host array may change at once); full fills on the device,
    with every value, dtype and signed zero a host array would have had."""
    import cupy

    host = np.arange(1 << 20, dtype=np.float32)
    buf = cuda.from_numpy(host)
    host[:] = -1  # (after the call returns: the copy was staged already)
    np.testing.assert_array_equal(cuda.to_numpy(buf), np.arange(1 << 20, dtype=np.float32))
    np.testing.assert_array_equal(cuda.to_numpy(cuda.from_numpy(host[::2])), host[::2])
    for value, dtype in [(0, np.float32), (-0.0, np.float32), (np.nan, np.float32), (2.5, jt.bfloat16.np),
                         (0, jt.bfloat16.np), (-3, np.int64), (True, np.bool_), (7, np.uint8), (1e300, np.float64)]:
        got = cuda.full((3, 5), value, np.dtype(dtype))
        expected = np.full((3, 5), value, dtype=dtype)
        assert isinstance(got, cupy.ndarray) and got.dtype == expected.dtype
        got = cuda.to_numpy(got)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(np.signbit(got.astype(np.float64)), np.signbit(expected.astype(np.float64)))
    x = jt.randn(4, 6, device="cuda", dtype=jt.bfloat16)
    for made in (x.new_zeros(2, 3), x.new_full((2, 3), -1.5), jt.zeros(2, 3, device="cuda"),
                 jt.full((2, 3), 4.0, device="cuda", dtype=jt.float16), jt.ones(2, 3, device="cuda")):
        assert made.device.type == "cuda" and tuple(made.shape) == (2, 3)
    assert x.new_full((2, 3), -1.5).dtype == jt.bfloat16
    np.testing.assert_array_equal(x.new_full((2, 3), -1.5).float().cpu().numpy(), np.full((2, 3), -1.5, np.float32))
    np.testing.assert_array_equal(jt.full((2, 3), 4.0, device="cuda", dtype=jt.float16).cpu().numpy(),
                                  np.full((2, 3), 4, np.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3, -1])
def test_random_draws_on_the_gpu_are_the_cpus(cuda, seed):
    import cupy

    offsets = np.concatenate([np.arange(100_000), np.array([2**31 - 1, 2**32, 2**40 + 5, 2**63 - 1])])
    on_gpu = cupy.asarray(offsets)
    np.testing.assert_array_equal(_host(philox.randint(seed, on_gpu)), philox.randint(seed, offsets))
    np.testing.assert_array_equal(_host(philox.uniform(seed, on_gpu)), philox.uniform(seed, offsets))
    # normals: CUDA's float32 log and cos against numpy's, a few ulps of |x| <= 5.7
    np.testing.assert_allclose(_host(philox.normal(seed, on_gpu)), philox.normal(seed, offsets), rtol=0, atol=4e-6)
    np.testing.assert_array_equal(_host(philox.uniform(seed, on_gpu, np.float64)), philox.uniform(seed, offsets,
                                                                                                    np.float64))


def _on(device, *arrays, grad=True):
    return [jt.tensor(a).to(device).requires_grad_(grad and a.dtype.kind == "f") for a in arrays]


def _composite(x, w, b, target, image, kernel):
    h = F.layer_norm(x @ w + b, (w.shape[1],))
    loss = F.cross_entropy(F.gelu(h), target) + F.softmax(h, -1).square().mean() + F.log_softmax(h, -1).std()
    conv = F.conv2d(image, kernel, padding=1, stride=2)
    return loss + F.max_pool2d(conv.relu(), 2).sum() * 1e-2 + F.dropout(h, 0.5).abs().mean()


@pytest.mark.gpu
def test_composite_ops_and_their_gradients_on_cuda_match_the_cpu(cuda):
    rng = np.random.default_rng(3)
    arrays = (f32(rng, 32, 24), f32(rng, 24, 10, scale=0.3), f32(rng, 10), rng.integers(0, 10, 32),
              f32(rng, 2, 3, 12, 12), f32(rng, 5, 3, 3, 3, scale=0.3))
    results = {}
    for device in ("cpu", "cuda"):
        jt.manual_seed(0)  # the same dropout mask on both
        tensors = _on(device, *arrays)
        loss = _composite(*tensors)
        loss.backward()
        assert loss.device.type == device and tensors[0].grad.device.type == device
        results[device] = [loss.item()] + [t.grad.to("cpu").numpy() for t in tensors if t.grad is not None]
    for got, expected in zip(results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _train(device, compiled):
    jt.manual_seed(0)
    model = jt.nn.Sequential(jt.nn.Linear(12, 64), jt.nn.GELU(), jt.nn.Dropout(0.1), jt.nn.Linear(64, 5))
    model.to(device)
    opt = jt.optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    x, y = jt.tensor(f32(rng, 64, 12)).to(device), jt.tensor(rng.integers(0, 5, 64)).to(device)

    step = training_step(model, opt)

    step = jt.compile(step) if compiled else step
    losses = [step(x, y).item() for _ in range(6)]
    return losses, [p.detach().to("cpu").numpy() for p in model.parameters()]


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_training_run_on_cuda_matches_the_cpu(cuda, compiled):
    cpu_losses, cpu_params = _train("cpu", compiled)
    losses, params = _train("cuda", compiled)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-4)
    for got, expected in zip(params, cpu_params):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def _matmul_error(cuda, a, b) -> float:
    import cupy

    exact = a.astype(np.float64) @ b.astype(np.float64)
    got = _host(cuda.kernels["matmul"](cupy.asarray(a), cupy.asarray(b)))
    return float(np.abs(got - exact).max() / np.abs(exact).max())


@pytest.mark.gpu
@pytest.mark.parametrize("shapes", [((1024, 2048), (2048, 1024)), ((4, 256, 2048), (4, 2048, 256))],
                         ids=["2d", "batched"])
def test_tf32_is_visibly_less_precise_than_highest(cuda, shapes):
    rng = np.random.default_rng(0)
    a, b = f32(rng, *shapes[0]), f32(rng, *shapes[1])
    try:
        highest = _matmul_error(cuda, a, b)
        jt.backends.cuda.matmul.allow_tf32 = True
        tf32 = _matmul_error(cuda, a, b)
        backends.set_float32_matmul_precision("highest")
        again = _matmul_error(cuda, a, b)
    finally:
        backends.set_float32_matmul_precision("highest")
    assert highest < 1e-5 and again < 1e-5  # float32: about 1e-6 of the largest entry
    assert tf32 > 30 * highest and tf32 < 1e-2  # TF32's 10-bit mantissa: about 1e-4


@pytest.mark.gpu
def test_out_of_range_indices_on_cuda_raise_at_the_next_wait(cuda):
    """A class target or a gather index out of range: no wait for the device at the op (the check
    is a kernel whose flag is read later); the IndexError, naming the value, comes at the next
    `.item()` or `jitorch.cuda.synchronize()`, as PyTorch's device-side asserts do. Valid indices
    in a loop that never waits keep fewer than MAX_PENDING checks alive; after an error, work goes on."""
    from jitorch.backends.cuda import checks

    x = jt.randn(8, 5, device="cuda")
    good = jt.tensor([0, 1, 2, 3, 4, 0, 1, 2], device="cuda")
    F.cross_entropy(x, good).item()  # (the first call traces and compiles the composite)
    bad_target = jt.tensor([0, 1, 7, 2, 3, 4, 0, 1], device="cuda")
    loss = F.cross_entropy(x, bad_target)  # (queued, and its check)
    assert len(checks.pending) == 1
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        loss.item()
    assert checks.pending == []
    ignored = jt.tensor([0, 1, -100, 2, 3, 4, 0, 1], device="cuda")
    assert np.isfinite(F.cross_entropy(x, ignored).item())  # (ignore_index is no error)
    picked = x.gather(1, jt.tensor([[5]] * 8, device="cuda"))
    with pytest.raises(IndexError, match="gather\\(\\): index 5 is out of bounds for dimension 1 with size 5"):
        jt.cuda.synchronize()
    del picked
    for _ in range(3 * checks.MAX_PENDING):
        F.cross_entropy(x, good)
        assert len(checks.pending) < checks.MAX_PENDING
    assert F.cross_entropy(x, good).item() > 0


@pytest.mark.gpu
def test_compiled_products_write_into_the_memory_plan_and_views_of_planned_buffers_are_kept(cuda):
    """Products that only the program reads go into the plan's buffers (cuBLAS writes them there),
    and a view of a planned buffer is made once: the same values as eagerly, run after run."""
    import cupy

    from jitorch.runtime.executor import PrimStep

    rng = np.random.default_rng(0)
    b, c = (jt.tensor(rng.standard_normal(s).astype(np.float32), device="cuda") for s in [(64, 48), (64, 32)])
    cases = {  # (the transpose of a product moves to its factors: (a b)^T c is b^T a^T c)
        "products": lambda a: ((a @ b).t() @ c).relu(),
        "view": lambda a: ((a @ b) * 2).reshape(32, 96).t() @ c[:32],
    }
    steps = {}
    for name, fn in cases.items():
        f = jt.compile(fn)
        for _ in range(3):
            a = jt.tensor(rng.standard_normal((64, 64)).astype(np.float32), device="cuda")
            np.testing.assert_allclose(f(a).cpu().numpy(), fn(a).cpu().numpy(), rtol=1e-5, atol=1e-4, err_msg=name)
        (program,) = [p for entries in f.cache.values() for p in entries]
        steps[name] = [s for s in program.plan.steps if type(s) is PrimStep]
    products = [s for s in steps["products"] if s.node.op == "matmul"]
    assert len(products) == 2 and all(s.into is not None for s in products)
    kept = [s.memo[0] for s in steps["view"] if s.memo is not None]  # the reshape, and its transpose
    assert [made.shape for _, made in kept] == [(32, 96), (96, 32)]
    assert all(isinstance(made, cupy.ndarray) and cupy.shares_memory(made, source) for source, made in kept)
