"""The vectorizable LLVM math helpers: compiled into loops with llvmlite, compared with numpy in ulps
over the whole range, on numpy's special values, and checked to vectorize."""

from __future__ import annotations

import ctypes
import math
import re

import numpy as np
import pytest

llvm = pytest.importorskip("llvmlite.binding")

from jitorch.codegen.llvm_math import FUNCTIONS, function_name, math_functions  # noqa: E402

DTYPES = {"float": np.float32, "double": np.float64}
# max error in ulps of the exact result
TOLERANCE = {"float": 2.0, "double": 4.0}
# erf's reference is slow (libm through Python, numpy has no erf): fewer points
N_SAMPLES_ERF = 200_000
# numpy's float64 reference is far more precise than float32; for float64 the x87 long double
# (64-bit mantissa on x86) is the reference where the platform has it
REFERENCE = {"float": np.float64, "double": np.longdouble}
N_SAMPLES = 1_000_000
VECTOR_INTRINSICS = {"llvm.fma", "llvm.fmuladd", "llvm.rint", "llvm.roundeven", "llvm.floor", "llvm.fabs",
                     "llvm.copysign", "llvm.sqrt", "llvm.minnum", "llvm.maxnum"}


def _apply_kernel(op: str, dtype: str) -> str:
    name = function_name(op, dtype)
    return f"""
define void @apply_{name[3:]}(ptr noalias %x, ptr noalias %y, i64 %n) {{
entry:
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %done, label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %next, %loop ]
  %px = getelementptr inbounds {dtype}, ptr %x, i64 %i
  %v = load {dtype}, ptr %px
  %r = call {dtype} @{name}({dtype} %v)
  %py = getelementptr inbounds {dtype}, ptr %y, i64 %i
  store {dtype} %r, ptr %py
  %next = add nuw nsw i64 %i, 1
  %more = icmp slt i64 %next, %n
  br i1 %more, label %loop, label %done
done:
  ret void
}}
"""


class Compiled:
    def __init__(self, scalef: bool) -> None:
        self.scalef = scalef
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        tm = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3, jit=True)
        text = "".join(math_functions(dtype, scalef) for dtype in DTYPES)
        text += "".join(_apply_kernel(op, dtype) for op in FUNCTIONS for dtype in DTYPES)
        mod = llvm.parse_assembly(text)
        mod.triple = tm.triple
        mod.data_layout = str(tm.target_data)
        mod.verify()
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pto.loop_vectorization = True
        pto.slp_vectorization = True
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(mod, pb)
        self.optimized_ir = str(mod)
        self.assembly = tm.emit_assembly(mod)
        self.engine = llvm.create_mcjit_compiler(mod, tm)
        self.engine.finalize_object()
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
        self.kernels = {
            (op, dtype): proto(self.engine.get_function_address("apply_" + function_name(op, dtype)[3:]))
            for op in FUNCTIONS for dtype in DTYPES
        }

    def __call__(self, op: str, dtype: str, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, DTYPES[dtype])
        y = np.full_like(x, 12345.0)  # a value no helper returns for these tests' inputs
        self.kernels[op, dtype](x.ctypes.data, y.ctypes.data, x.size)
        return y


# scalef: exp scales by llvm.ldexp (vscalef), for hosts with AVX-512F; the host runs what it compiles
@pytest.fixture(scope="module", params=[False, True], ids=["bit-patterns", "scalef"])
def compiled(request) -> Compiled:
    if request.param and not llvm.get_host_cpu_features().get("avx512f", False):
        pytest.skip("the scalef form of exp needs an AVX-512F host to run")
    return Compiled(request.param)


_libm_erf = np.frompyfunc(math.erf, 1, 1)


def _reference(op: str, x: np.ndarray, dtype: str) -> np.ndarray:
    xr = x.astype(REFERENCE[dtype])
    with np.errstate(all="ignore"):
        if op == "sigmoid":
            return 1 / (1 + np.exp(-xr))
        if op == "erf":  # numpy has none: libm's (within 1 ulp in float64), so a looser check for float64
            return _libm_erf(x.astype(np.float64)).astype(REFERENCE[dtype])
        return getattr(np, op)(xr)


def _ulp_error(y: np.ndarray, ref: np.ndarray, dtype: str) -> np.ndarray:
    """|y - ref| in units of the target type's ulp at ref (ref unrounded, in a wider type);
    non-finite results must match the rounded reference exactly (0 or inf ulps)."""
    info = np.finfo(DTYPES[dtype])
    emin, digits = int(np.log2(info.smallest_normal)), info.nmant + 1
    with np.errstate(all="ignore"):
        rounded = ref.astype(DTYPES[dtype])
        _, e = np.frexp(np.abs(ref))
        exponent = np.where(ref == 0, emin, np.maximum(e - 1, emin))
        ulp = np.ldexp(np.ones_like(ref), exponent - digits + 1)
        err = np.abs(y.astype(ref.dtype) - ref) / ulp
    special = ~np.isfinite(rounded) | ~np.isfinite(y)
    same = (y == rounded) | (np.isnan(y) & np.isnan(rounded))
    return np.where(special, np.where(same, 0.0, np.inf), err)


def _neighbours(values, dtype: str, count: int) -> np.ndarray:
    """`count` consecutive representable numbers centred on each value."""
    np_type = DTYPES[dtype]
    int_type = np.int32 if np_type is np.float32 else np.int64
    out = []
    for v in values:
        bits = np.array([abs(v)], np_type).view(int_type)[0]
        steps = np.arange(-(count // 2), count // 2, dtype=int_type) + bits
        out.append(np.copysign(steps[steps >= 0].view(np_type), v))
    with np.errstate(invalid="ignore"):  # past the largest number: inf, then NaN bit patterns
        return np.concatenate(out)


# per op: a window of ordinary inputs, and points around which results change regime
def _edges(op: str, dtype: str) -> tuple[tuple[float, float], list[float]]:
    info = np.finfo(DTYPES[dtype])
    big, tiny, sub = float(info.max), float(info.smallest_normal), float(info.smallest_subnormal)
    if op == "exp":
        return (-760.0, 720.0) if dtype == "double" else (-110.0, 95.0), [
            np.log(big), np.log(tiny), np.log(sub), np.log(sub) - np.log(2), -np.log(2) / 2, np.log(2) / 2, 0.0, 1e-8]
    if op == "log":
        return (0.0, 4.0), [1.0, np.sqrt(0.5), np.sqrt(2), 2.0, 0.5, tiny, sub * 1000, big]
    if op == "tanh":
        return (-20.0, 20.0), [0.625, -0.625, 0.0, 1e-4, 9.0, 19.0, 0.55, 1.0]
    if op == "erf":
        return (-7.0, 7.0), [1.25, -1.25, 0.0, 1e-4, 3.92, 4.0, 5.86, 6.0]
    return (-760.0, 50.0) if dtype == "double" else (-110.0, 30.0), [
        0.0, np.log(big), -np.log(tiny), -np.log(sub), 1e-4, -1e-4, 2.0, -30.0]


def _samples(op: str, dtype: str, n: int = N_SAMPLES) -> np.ndarray:
    rng = np.random.default_rng(20240611)
    np_type = DTYPES[dtype]
    int_type = np.uint32 if np_type is np.float32 else np.uint64
    info = np.finfo(np_type)
    # any bit pattern: the whole range, weighted by exponent
    any_bits = rng.integers(0, np.iinfo(int_type).max, n // 4, dtype=int_type, endpoint=True).view(np_type)
    # log-spaced magnitudes from subnormal to the largest, both signs
    lo, hi = np.log2(float(info.smallest_subnormal)), np.log2(float(info.max))
    magnitudes = np.exp2(rng.uniform(lo, hi, n // 4)) * rng.choice([-1.0, 1.0], n // 4)
    window, edges = _edges(op, dtype)
    uniform = rng.uniform(*window, n // 4)
    near_zero = np.exp2(rng.uniform(lo, 2.0, n // 8)) * rng.choice([-1.0, 1.0], n // 8)
    dense = _neighbours(edges, dtype, n // 8 // len(edges))
    with np.errstate(all="ignore"):
        x = np.concatenate([a.astype(np_type) for a in (any_bits, magnitudes, uniform, near_zero, dense)])
    return x[np.isfinite(x)]


def _max_error(compiled: Compiled, op: str, dtype: str, x: np.ndarray) -> tuple[float, float]:
    err = _ulp_error(compiled(op, dtype, x), _reference(op, x, dtype), dtype)
    worst = int(np.argmax(err))
    return float(err[worst]), float(x[worst])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", FUNCTIONS)
def test_accuracy_over_the_range(compiled, op, dtype):
    x = _samples(op, dtype, N_SAMPLES_ERF if op == "erf" else N_SAMPLES)
    err, where = _max_error(compiled, op, dtype, x)
    assert err <= TOLERANCE[dtype], f"{op} {dtype}: {err:.2f} ulp at x={where!r}"


_INF, _NAN = float("inf"), float("nan")
SPECIAL = {
    "exp": [(_INF, _INF), (-_INF, 0.0), (_NAN, _NAN), (0.0, 1.0), (-0.0, 1.0), ("max", _INF), ("-max", 0.0),
            (1000.0, _INF), (-1000.0, 0.0), ("sub", 1.0)],
    "log": [(0.0, -_INF), (-0.0, -_INF), (-1.0, _NAN), (-_INF, _NAN), ("-sub", _NAN), (_INF, _INF), (_NAN, _NAN),
            (1.0, 0.0)],
    "tanh": [(_INF, 1.0), (-_INF, -1.0), (_NAN, _NAN), (0.0, 0.0), (-0.0, -0.0), ("max", 1.0), ("-max", -1.0),
             (100.0, 1.0), ("sub", "sub"), ("-sub", "-sub")],
    "erf": [(_INF, 1.0), (-_INF, -1.0), (_NAN, _NAN), (0.0, 0.0), (-0.0, -0.0), ("max", 1.0), ("-max", -1.0),
            (10.0, 1.0), (-10.0, -1.0), ("sub", "sub"), ("-sub", "-sub")],
    "sigmoid": [(_INF, 1.0), (-_INF, 0.0), (_NAN, _NAN), (0.0, 0.5), (-0.0, 0.5), ("max", 1.0), ("-max", 0.0),
                (-1000.0, 0.0), (1000.0, 1.0)],
}


def _special_value(v, dtype: str) -> float:
    if isinstance(v, str):
        info = np.finfo(DTYPES[dtype])
        magnitude = float(info.max if v.lstrip("-") == "max" else info.smallest_subnormal)
        return -magnitude if v.startswith("-") else magnitude
    return v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", FUNCTIONS)
def test_special_values(compiled, op, dtype):
    x = np.array([_special_value(a, dtype) for a, _ in SPECIAL[op]], DTYPES[dtype])
    expected = np.array([_special_value(b, dtype) for _, b in SPECIAL[op]], DTYPES[dtype])
    # the table agrees with numpy (float64 for sigmoid, which numpy lacks)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(_reference(op, x, dtype).astype(DTYPES[dtype]), expected)
    y = compiled(op, dtype, x)
    np.testing.assert_array_equal(y, expected)
    assert (np.signbit(y) == np.signbit(expected))[~np.isnan(expected)].all(), (y, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_of_subnormals(compiled, dtype):
    info = np.finfo(DTYPES[dtype])
    x = np.geomspace(float(info.smallest_subnormal), float(info.smallest_normal), 10_001).astype(DTYPES[dtype])
    err, where = _max_error(compiled, "log", dtype, x)
    assert err <= TOLERANCE[dtype], f"log {dtype}: {err:.2f} ulp at x={where!r}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_subnormal_results_are_not_flushed(compiled, dtype):
    info = np.finfo(DTYPES[dtype])
    sub = float(info.smallest_subnormal)
    x = np.linspace(np.log(sub) - 1, np.log(float(info.smallest_normal)), 20_001).astype(DTYPES[dtype])
    y = compiled("exp", dtype, x)
    assert (y[x > np.log(sub)] > 0).all()
    # within one subnormal spacing of the exact value
    ref = _reference("exp", x, dtype)
    assert (np.abs(y.astype(ref.dtype) - ref) <= sub).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_is_accurate_near_zero(compiled, dtype):
    # the 1 - 2 / (exp(2x) + 1) form alone would be off by many ulps here
    x = np.geomspace(1e-30, 0.7, 20_001).astype(DTYPES[dtype])
    x = np.concatenate([x, -x])
    err, where = _max_error(compiled, "tanh", dtype, x)
    assert err <= 1.5, f"tanh {dtype}: {err:.2f} ulp at x={where!r}"


def _function_ir(ir_text: str, name: str) -> str:
    match = re.search(r"^define [^\n]*@" + name + r"\(.*?^}", ir_text, re.M | re.S)
    assert match, f"{name} not in the optimized module"
    return match.group(0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", FUNCTIONS)
def test_loops_vectorize(compiled, op, dtype):
    body = _function_ir(compiled.optimized_ir, "apply_" + function_name(op, dtype)[3:])
    widths = [int(w) for w in re.findall(r"<(\d+) x " + dtype + ">", body)]
    assert widths and max(widths) >= 2, f"apply_{op} {dtype} did not vectorize"
    # the helper was inlined, and the only calls left are intrinsics with vector instructions (llvm.exp
    # would vectorize in the IR, then become a libm call per element)
    calls = {re.sub(r"(\.v?\d*[fi](32|64))+$", "", c) for c in re.findall(r"call [^@]*@([\w.]+)", body)}
    # (llvm.ldexp is one vscalef instruction with AVX-512, which the scalef form is for)
    assert calls <= VECTOR_INTRINSICS | ({"llvm.ldexp"} if compiled.scalef else set()), calls


def test_exp_f32_loop_uses_wide_float_vectors(compiled):
    body = _function_ir(compiled.optimized_ir, "apply_exp_f32")
    assert re.search(r"<(4|8|16) x float>", body), "apply_exp_f32 did not vectorize"


def test_scalef_exp_scales_with_one_instruction(compiled):
    """With AVX-512 the scalef form's ldexp becomes vscalef instructions, not libm calls."""
    if not compiled.scalef:
        pytest.skip("the bit-pattern form builds 2^k from integer ops")
    assert "vscalefps" in compiled.assembly and "vscalefpd" in compiled.assembly
    assert "ldexp" not in compiled.assembly


def test_names_and_errors():
    assert function_name("exp", "float") == "jt_exp_f32"
    assert function_name("sigmoid", "double") == "jt_sigmoid_f64"
    for op in FUNCTIONS:
        assert f"define internal float @{function_name(op, 'float')}(" in math_functions("float")
        assert f"@{function_name(op, 'float')}(" not in math_functions("double")
    with pytest.raises(ValueError):
        function_name("cosh", "float")
    with pytest.raises(ValueError):
        math_functions("half")
