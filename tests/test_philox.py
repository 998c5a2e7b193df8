"""Philox random numbers: numpy (jitorch.philox) against Triton's own tl.randint/tl.rand/tl.randn in
Triton's CPU interpreter (and on a GPU, marked), the LLVM emitter (jitorch.codegen.llvm_philox)
against numpy, and the statistics of the draws."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from llvmlite import ir

from jitorch import philox
from jitorch.codegen import llvm_math, llvm_philox

SEEDS = [0, 1, 123456789, 2**31 - 1, 2**32 - 1, 2**32, 2**33 + 7, 0xDEADBEEFCAFEF00D, 2**63 + 5, -1]
OFFSETS = np.concatenate([
    np.arange(1000),
    np.arange(2**31 - 5, 2**31 + 6),  # past int32
    np.arange(2**32 - 3, 2**32 + 4),  # where the high word (counter c1) starts
    [2**40 + 17, 2**62 + 3, 2**63 - 1],
]).astype(np.int64)


def _max_ulps(actual: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """The largest difference of two float32 arrays in units in the last place of the larger, and where."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    spacing = np.spacing(np.maximum(np.abs(actual), np.abs(expected)))
    err = np.abs(actual.astype(np.float64) - expected.astype(np.float64)) / spacing
    worst = int(np.argmax(err))
    return float(err[worst]), worst


def assert_ulps(actual: np.ndarray, expected: np.ndarray, ulps: float) -> None:
    """float32 arrays equal within `ulps` units in the last place of the larger of the two."""
    err, worst = _max_ulps(actual, expected)
    assert err <= ulps, f"{err:.1f} ulps at {worst}: {actual[worst]!r} vs {expected[worst]!r}"


def rounded_normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Box-Muller as the definition reads, each float32 operation correctly rounded (log and cos
    taken in float64 and rounded once): what every backend's float32 functions approximate."""
    u1 = np.maximum(u1, philox.NORMAL_U1_MIN)
    log = np.log(u1.astype(np.float64)).astype(np.float32)
    cos = np.cos((philox.TWO_PI * u2).astype(np.float64)).astype(np.float32)
    return np.sqrt(np.float32(-2) * log) * cos


def rounded_normals(seed: int, offsets: np.ndarray) -> np.ndarray:
    words = philox.randint4x(seed, offsets)
    return rounded_normal(philox.uint_to_uniform_float(words[0]), philox.uint_to_uniform_float(words[1]))


# ---------------------------------------------------------------------------------------------
# the definition


def test_known_answers_of_random123():
    """Philox4x32-10's known-answer vectors from Random123 (kat_vectors), key = (seed low, seed high)."""
    cases = [
        (0, (0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        (2**64 - 1, (0xFFFFFFFF,) * 4, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (0x299F31D0A4093822, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for seed, counters, expected in cases:
        assert [int(w) for w in philox.philox4x32(seed, *counters)] == list(expected)


def test_offsets_map_to_counters_and_keep_their_shape():
    offsets = OFFSETS[-30:].reshape(5, 6)
    words = philox.randint4x(7, offsets)
    bits = offsets.view(np.uint64)
    expected = philox.philox4x32(7, (bits & 0xFFFFFFFF).astype(np.uint32), (bits >> 32).astype(np.uint32))
    for got, want in zip(words, expected):
        assert got.shape == (5, 6) and got.dtype == np.uint32
        np.testing.assert_array_equal(got, want)
    # the chunked loop gives each element the number it gets alone
    many = np.arange(3 * philox._CHUNK + 11)
    np.testing.assert_array_equal(philox.randint(7, many)[[0, philox._CHUNK, -1]],
                                  [philox.randint(7, i) for i in (0, philox._CHUNK, many[-1])])
    # a seed is taken modulo 2**64
    np.testing.assert_array_equal(philox.randint(-1, offsets), philox.randint(2**64 - 1, offsets))


def test_uniform_edges_and_float64():
    words = np.array([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE], np.uint32)
    u = philox.uint_to_uniform_float(words)
    assert u.dtype == np.float32
    assert u[0] == 0 and u[4] == 0 and u[1] == philox.UNIFORM_SCALE and u[5] == philox.UNIFORM_SCALE
    assert u[2] == u[3] == np.float32(1 - 2**-24)  # the largest, below 1
    np.testing.assert_array_equal(philox.uniform(3, OFFSETS, np.float64), philox.uniform(3, OFFSETS).astype(np.float64))
    np.testing.assert_array_equal(philox.normal(3, OFFSETS, np.float64), philox.normal(3, OFFSETS).astype(np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        philox.uniform(3, OFFSETS, np.float16)
    with pytest.raises(TypeError, match="integers"):
        philox.uniform(3, OFFSETS.astype(np.float64))


# ---------------------------------------------------------------------------------------------
# numpy against Triton's definition, run by Triton's interpreter (and on a GPU)

# Run in a process of its own: TRITON_INTERPRET must be set before `import triton`, since Triton's own
# tl.randint/tl.rand/tl.randn are decorated when triton.language is imported, and another test may
# have imported triton already. The interpreter takes torch tensors (it refuses numpy arrays).
_TRITON_DRAWS = """
import json, sys
import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def random_kernel(seed, offsets_ptr, ints_ptr, uniforms_ptr, normals_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    offsets = tl.load(offsets_ptr + i, mask=mask)
    tl.store(ints_ptr + i, tl.randint(seed, offsets), mask=mask)
    tl.store(uniforms_ptr + i, tl.rand(seed, offsets), mask=mask)
    tl.store(normals_ptr + i, tl.randn(seed, offsets), mask=mask)


seeds, device, offsets_file, out_file = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
offsets = torch.from_numpy(np.load(offsets_file)).to(device)
n, block = offsets.numel(), 256
draws = {"triton_version": np.array(triton.__version__)}
for k, seed in enumerate(seeds):
    ints = torch.empty(n, dtype=torch.int32, device=device)
    uniforms = torch.empty(n, dtype=torch.float32, device=device)
    normals = torch.empty(n, dtype=torch.float32, device=device)
    random_kernel[(triton.cdiv(n, block),)](seed, offsets, ints, uniforms, normals, n, BLOCK=block)
    draws[f"ints{k}"] = ints.cpu().numpy().view(np.uint32)
    draws[f"uniforms{k}"] = uniforms.cpu().numpy()
    draws[f"normals{k}"] = normals.cpu().numpy()
np.savez(out_file, **draws)
"""


def _triton_draws(folder, device: str, offsets: np.ndarray) -> dict:
    """seed -> (tl.randint, tl.rand, tl.randn) of `offsets`, for every seed in SEEDS, computed by
    Triton on `device` ("cpu": the interpreter)."""
    script, offsets_file, out_file = folder / "triton_draws.py", folder / "offsets.npy", folder / "draws.npz"
    script.write_text(_TRITON_DRAWS)
    np.save(offsets_file, offsets)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    subprocess.run([sys.executable, str(script), json.dumps(SEEDS), device, str(offsets_file), str(out_file)],
                   env=env, check=True, timeout=600)
    with np.load(out_file) as f:
        return {seed: (f[f"ints{k}"], f[f"uniforms{k}"], f[f"normals{k}"]) for k, seed in enumerate(SEEDS)}


def _needs(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}")


def test_numpy_matches_triton_interpreter(tmp_path):
    _needs("triton", "torch")
    for seed, (ints, uniforms, normals) in _triton_draws(tmp_path, "cpu", OFFSETS).items():
        np.testing.assert_array_equal(philox.randint(seed, OFFSETS), ints, err_msg=f"seed {seed}")
        # an int -> float conversion and a product: exact
        np.testing.assert_array_equal(philox.uniform(seed, OFFSETS), uniforms, err_msg=f"seed {seed}")
        assert_ulps(philox.normal(seed, OFFSETS), normals, 2)


@pytest.mark.gpu
def test_numpy_matches_triton_on_gpu(tmp_path):
    _needs("triton", "torch")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    offsets = np.concatenate([OFFSETS, np.arange(10**6, 2 * 10**6)])
    for seed, (ints, uniforms, normals) in _triton_draws(tmp_path, "cuda", offsets).items():
        np.testing.assert_array_equal(philox.randint(seed, offsets), ints, err_msg=f"seed {seed}")
        np.testing.assert_array_equal(philox.uniform(seed, offsets), uniforms, err_msg=f"seed {seed}")
        # CUDA's float32 log and cos: 4 ulps at most from correctly rounded (H200, Triton 3.6, 10 seeds x 1M)
        assert_ulps(normals, rounded_normals(seed, offsets), 6)


# ---------------------------------------------------------------------------------------------
# the LLVM emitter against numpy

I64, I32, F32 = ir.IntType(64), ir.IntType(32), ir.FloatType()
PTR = ir.PointerType()


def _llvm_math_call(builder: ir.IRBuilder):
    """What the code generator's `_Emitter.call` does: log from llvm_math (defined below in the
    module's text), other functions as LLVM intrinsics."""
    def call(name: str, x: ir.Value) -> ir.Value:
        fname = llvm_math.function_name(name, "float") if name in llvm_math.FUNCTIONS else f"llvm.{name}.f32"
        fn = builder.module.globals.get(fname) or ir.Function(builder.module, ir.FunctionType(F32, [F32]), fname)
        return builder.call(fn, [x])
    return call


def _loop(module: ir.Module, name: str, args: list[ir.Type], body) -> None:
    """void name(i64 n, args...): for i in 0..n-1, body(builder, i, args)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, *args]), name)
    n, *rest = fn.args
    entry, loop, done = fn.append_basic_block("entry"), fn.append_basic_block("loop"), fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", n, ir.Constant(I64, 0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(ir.Constant(I64, 0), entry)
    body(b, i, rest)
    following = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(following, loop)
    b.cbranch(b.icmp_signed("<", following, n), loop, done)
    b.position_at_end(done)
    b.ret_void()


def _store(b: ir.IRBuilder, ptr, index, value) -> None:
    b.store(value, b.gep(ptr, [index], inbounds=True, source_etype=value.type))


def _draw_body(jitorch_log: bool):
    """fill(n, seed, offsets*, words* (4 per element), uniforms*, normals*)."""
    def body(b, i, args):
        seed, offsets, words, uniforms, normals = args
        offset = b.load(b.gep(offsets, [i], inbounds=True, source_etype=I64), typ=I64)
        for j, word in enumerate(llvm_philox.randint4x(b, seed, offset)):
            _store(b, words, b.add(b.mul(i, ir.Constant(I64, 4)), ir.Constant(I64, j)), word)
        _store(b, uniforms, i, llvm_philox.uniform(b, seed, offset))
        _store(b, normals, i, llvm_philox.normal(b, seed, offset, _llvm_math_call(b) if jitorch_log else None))
    return body


def _box_muller_body(b, i, args):
    """box_muller(n, u1*, u2*, out*): pair_uniform_to_normal elementwise."""
    u1_ptr, u2_ptr, out = args
    u1, u2 = (b.load(b.gep(p, [i], inbounds=True, source_etype=F32), typ=F32) for p in (u1_ptr, u2_ptr))
    _store(b, out, i, llvm_philox.pair_uniform_to_normal(b, u1, u2))


def _cos_body(b, i, args):
    """cos(n, x*, out*): cos_float elementwise."""
    x_ptr, out = args
    _store(b, out, i, llvm_philox.cos_float(b, b.load(b.gep(x_ptr, [i], inbounds=True, source_etype=F32), typ=F32)))


@pytest.fixture(scope="module")
def llvm_kernels():
    """The test functions, optimized at O3 with the vectorizers (as jitorch's CPU backend does) and
    compiled by MCJIT for this CPU: name -> (ctypes function, optimized IR text of the module)."""
    import llvmlite.binding as llvm

    module = ir.Module(name="philox_test")
    draw_args = [I64, PTR, PTR, PTR, PTR]
    _loop(module, "draw_intrinsic_log", draw_args, _draw_body(jitorch_log=False))
    _loop(module, "draw_jitorch_log", draw_args, _draw_body(jitorch_log=True))
    _loop(module, "box_muller", [PTR, PTR, PTR], _box_muller_body)
    _loop(module, "cos", [PTR, PTR], _cos_body)
    # jitorch's math helpers replace their declarations, as the code generator's `_with_math` does
    lines = [line for line in str(module).splitlines() if not (line.startswith("declare") and '@"jt_' in line)]
    text = "\n".join(lines) + "\n" + llvm_math.math_functions("float")

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3, jit=True)
    compiled = llvm.parse_assembly(text)
    compiled.triple, compiled.data_layout = machine.triple, str(machine.target_data)
    compiled.verify()
    tuning = llvm.create_pipeline_tuning_options(speed_level=3)
    tuning.loop_vectorization = tuning.slp_vectorization = True
    passes = llvm.create_pass_builder(machine, tuning)
    passes.getModulePassManager().run(compiled, passes)
    engine = llvm.create_mcjit_compiler(compiled, machine)
    engine.finalize_object()
    p = ctypes.c_void_p
    kinds = {"draw_intrinsic_log": [ctypes.c_int64, ctypes.c_uint64, p, p, p, p],
             "draw_jitorch_log": [ctypes.c_int64, ctypes.c_uint64, p, p, p, p],
             "box_muller": [ctypes.c_int64, p, p, p], "cos": [ctypes.c_int64, p, p]}
    fns = {name: ctypes.CFUNCTYPE(None, *types)(engine.get_function_address(name)) for name, types in kinds.items()}
    yield fns, str(compiled)
    del engine


def _draw_llvm(fn, seed: int, offsets: np.ndarray):
    offsets = np.ascontiguousarray(offsets, np.int64)
    n = len(offsets)
    words, uniforms, normals = np.empty((n, 4), np.uint32), np.empty(n, np.float32), np.empty(n, np.float32)
    fn(n, seed % 2**64, offsets.ctypes.data, words.ctypes.data, uniforms.ctypes.data, normals.ctypes.data)
    return words, uniforms, normals


@pytest.mark.parametrize("log", ["draw_intrinsic_log", "draw_jitorch_log"])
def test_llvm_matches_numpy(llvm_kernels, log):
    fns, _ = llvm_kernels
    offsets = np.concatenate([OFFSETS, np.arange(10**6, 10**6 + 200_000)])
    for seed in SEEDS:
        words, uniforms, normals = _draw_llvm(fns[log], seed, offsets)
        np.testing.assert_array_equal(words, np.stack(philox.randint4x(seed, offsets), axis=1))
        np.testing.assert_array_equal(uniforms, philox.uniform(seed, offsets))
        # llvm_math's log (0.84 ulp) or libm's, and a correctly rounded cos
        assert_ulps(normals, rounded_normals(seed, offsets), 2)


def test_numpy_normals_are_within_a_few_ulps():
    """numpy's float32 log is up to 3.5 ulps off and its cos 1.4 (numpy 2.4, x86-64), so eager
    normals are up to 5 ulps from the correctly rounded ones; Triton's interpreter computes the same."""
    offsets = np.arange(10**6)
    for seed in SEEDS[:3]:
        assert_ulps(philox.normal(seed, offsets), rounded_normals(seed, offsets), 6)


def test_llvm_cos_is_correctly_rounded(llvm_kernels):
    """Across [0, 2 pi], near its zeros too, against float64's cos rounded to float32."""
    fns, _ = llvm_kernels
    u2 = np.concatenate([np.linspace(0, 1, 200_001, dtype=np.float32),
                         philox.uniform(5, np.arange(200_000)),
                         np.float32(0.25) + np.arange(-2000, 2000, dtype=np.float32) * np.float32(2**-25),
                         np.float32(0.75) + np.arange(-2000, 2000, dtype=np.float32) * np.float32(2**-24)])
    angles = np.concatenate([philox.TWO_PI * u2, np.float32(np.pi / 2) + np.arange(-50, 50, dtype=np.float32) * 1e-7,
                             np.float32(3 * np.pi / 2) + np.arange(-50, 50, dtype=np.float32) * 2e-7])
    out = np.empty_like(angles)
    fns["cos"](len(angles), angles.ctypes.data, out.ctypes.data)
    np.testing.assert_array_equal(out, np.cos(angles.astype(np.float64)).astype(np.float32))


def test_llvm_vectorizes(llvm_kernels):
    """The draws are straight-line arithmetic: LLVM packs the loop (64-bit multiplies of
    zero-extended words, the float64 cosine), and with llvm_math's log no libm call is left."""
    _, text = llvm_kernels
    body = re.split(r'define void @"?draw_jitorch_log"?\(', text)[1].split("\ndefine ")[0]
    assert re.search(r"mul (nuw )?(nsw )?<\d+ x i64>", body) and re.search(r"<\d+ x double>", body)
    assert "@llvm.log" not in body and "@log" not in body


# ---------------------------------------------------------------------------------------------
# statistics and edge values


def test_statistics_of_a_million_draws():
    n = 10**6
    u = philox.uniform(2024, np.arange(n))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * np.sqrt((1 / 80 - 1 / 144) / n)
    z = philox.normal(2024, np.arange(n))
    assert np.isfinite(z).all() and np.abs(z).max() <= 5.68
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    # neighbouring offsets and neighbouring seeds are uncorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(u, philox.uniform(2025, np.arange(n)))[0, 1]) < 5 / np.sqrt(n)


def test_normal_is_finite_where_u1_is_zero(llvm_kernels):
    fns, _ = llvm_kernels
    tiny = [0.0, philox.UNIFORM_SCALE, 1e-8, 1e-7, 2e-7, 0.5, np.float32(1 - 2**-24)]
    u1 = np.array([a for a in tiny for _ in range(4)], np.float32)
    u2 = np.tile(np.array([0.0, 0.25, 0.5, np.float32(1 - 2**-24)], np.float32), len(tiny))
    numpy_normals = philox.pair_uniform_to_normal(u1, u2)
    llvm_normals = np.empty_like(u1)
    fns["box_muller"](len(u1), u1.ctypes.data, u2.ctypes.data, llvm_normals.ctypes.data)
    assert np.isfinite(numpy_normals).all() and np.abs(numpy_normals).max() <= 5.68
    assert_ulps(numpy_normals, rounded_normal(u1, u2), 6)
    assert_ulps(llvm_normals, rounded_normal(u1, u2), 2)
    assert numpy_normals[0] == np.sqrt(np.float32(-2) * np.log(np.float32(1e-7)))  # u1 = 0 is floored at 1e-7
