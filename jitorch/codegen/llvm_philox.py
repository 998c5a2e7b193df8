"""Philox random numbers as LLVM IR: `jitorch.philox`'s definition (Triton's `tl.randint`,
`tl.rand`, `tl.randn`), emitted for one element through an llvmlite IRBuilder.

A kernel calls `uniform(builder, seed, offset)` or `normal(...)` with an i64 seed and the element's
i64 offset, both llvmlite values, and gets the element's float32 value; the integers are the same
bits as numpy's and Triton's, and so are the uniforms; normals differ only by the rounding of log
and cos (within 2 ulps of the correctly rounded float32 value; the cosine here is correctly rounded).

The code is straight-line integer and float arithmetic, with no branches and no calls but the
caller's log, so that LLVM's loop vectorizer packs it: each Philox round is two 32x32 -> 64-bit multiplies (`zext` and
`mul i64`, which x86 packs as pmuludq), whose halves are mulhi and mullo. The normal's cosine is the
helper below (float64 arithmetic, rounded once to float32); its log and sqrt come from the caller's
`call`, so the code generator can give it jitorch's vectorizable log (`llvm_math`).

Example, in a kernel body:
    >>> u = llvm_philox.uniform(builder, seed, offset)          # float, in [0, 1)
    >>> n = llvm_philox.normal(builder, seed, offset, call=emitter.call)
"""

from __future__ import annotations

import math
from collections.abc import Callable

from llvmlite import ir

from .. import philox

I1, I32, I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()

# how a kernel computes a float32 math function: call(name, x) -> value, for name "log" and "sqrt"
MathCall = Callable[[str, ir.Value], ir.Value]

# cos(x) on x in [0, 2 pi]: x = k pi/2 + r with |r| <= pi/4, pi/2 as a head and a tail (each
# k * part exact inside an fma); sin(r) = r + r z S(z), cos(r) = 1 - z/2 + z^2 C(z), z = r^2, with
# Cephes' double-precision coefficients (relative error below 2.3e-16 on |r| <= pi/4)
_PIO2_HI = 1.5707963267948966
_PIO2_LO = 6.123233995736766e-17
_SIN = (-1.66666666666666307295e-1, 8.33333333332211858878e-3, -1.98412698295895385996e-4,
        2.75573136213857245213e-6, -2.50507477628578072866e-8, 1.58962301576546568060e-10)
_COS = (4.16666666666665929218e-2, -1.38888888888730564116e-3, 2.48015872888517045348e-5,
        -2.75573141792967388112e-7, 2.08757008419747316778e-9, -1.13585365213876817300e-11)


def randint4x(builder: ir.IRBuilder, seed: ir.Value, offset: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
    """The four i32 Philox words for one element: key (seed's low word, its high word), counter
    (offset's low word, its high word, 0, 0), 10 rounds. `seed` and `offset` are i64 values."""
    k0, k1 = _halves(builder, seed)
    c0, c1 = _halves(builder, offset)
    c2 = c3 = ir.Constant(I32, 0)
    for _ in range(philox.N_ROUNDS):
        hi_b, lo_b = _mul_wide(builder, philox.PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_wide(builder, philox.PHILOX_ROUND_A, c0)
        c0 = builder.xor(builder.xor(hi_b, c1), k0)
        c2 = builder.xor(builder.xor(hi_a, c3), k1)
        c1, c3 = lo_b, lo_a
        k0 = builder.add(k0, ir.Constant(I32, philox.PHILOX_KEY_A))
        k1 = builder.add(k1, ir.Constant(I32, philox.PHILOX_KEY_B))
    return c0, c1, c2, c3


def randint(builder: ir.IRBuilder, seed: ir.Value, offset: ir.Value) -> ir.Value:
    """The element's i32 random word (the first of `randint4x`): `jitorch.philox.randint`."""
    return randint4x(builder, seed, offset)[0]


def uint_to_uniform_float(builder: ir.IRBuilder, word: ir.Value) -> ir.Value:
    """An i32 word to a float in [0, 1), as `jitorch.philox.uint_to_uniform_float`."""
    folded = builder.xor(word, builder.ashr(word, ir.Constant(I32, 31)))  # ~word where negative
    return builder.fmul(builder.sitofp(folded, F32), ir.Constant(F32, float(philox.UNIFORM_SCALE)))


def uniform(builder: ir.IRBuilder, seed: ir.Value, offset: ir.Value) -> ir.Value:
    """The element's float in [0, 1): `jitorch.philox.uniform`, bit for bit. A float64 kernel
    extends it (`fpext`), as the numpy version casts."""
    return uint_to_uniform_float(builder, randint(builder, seed, offset))


def normal(builder: ir.IRBuilder, seed: ir.Value, offset: ir.Value, call: MathCall | None = None) -> ir.Value:
    """The element's standard normal float: `jitorch.philox.normal` (Box-Muller's cosine branch on
    the uniforms of the first two words). `call` as in `pair_uniform_to_normal`."""
    words = randint4x(builder, seed, offset)
    return pair_uniform_to_normal(builder, uint_to_uniform_float(builder, words[0]),
                                  uint_to_uniform_float(builder, words[1]), call)


def pair_uniform_to_normal(builder: ir.IRBuilder, u1: ir.Value, u2: ir.Value, call: MathCall | None = None) -> ir.Value:
    """`sqrt(-2 log(max(u1, 1e-7))) * cos(2 pi u2)` on floats, as `jitorch.philox.pair_uniform_to_normal`.

    `call(name, x)` computes the float32 "log" and "sqrt"; the code generator passes its
    `_Emitter.call`, whose log is jitorch's vectorizable one. Without it, LLVM's intrinsics:
    `llvm.sqrt.f32` is one instruction, but `llvm.log.f32` becomes a scalar libm call per element
    (the loop still vectorizes around it). The cosine is `cos_float`.
    """
    call = call or _intrinsic_call(builder)
    floor = ir.Constant(F32, float(philox.NORMAL_U1_MIN))
    u1 = builder.select(builder.fcmp_ordered("<", u1, floor), floor, u1)
    radius = call("sqrt", builder.fmul(ir.Constant(F32, -2.0), call("log", u1)))
    angle = builder.fmul(ir.Constant(F32, float(philox.TWO_PI)), u2)
    return builder.fmul(radius, cos_float(builder, angle))


def cos_float(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """cos of a float x in [0, 2 pi], computed in float64 and rounded once: the correctly rounded
    float32 cosine but for ties closer than about 1e-15 relative. Branch-free and call-free
    (fma, rint, select), so it vectorizes."""
    xd = builder.fpext(x, F64)
    k = _intrinsic(builder, "rint", builder.fmul(xd, _f64(2 / math.pi)))
    r = _intrinsic(builder, "fma", k, _f64(-_PIO2_HI), xd)
    r = _intrinsic(builder, "fma", k, _f64(-_PIO2_LO), r)
    z = builder.fmul(r, r)
    sin_r = _intrinsic(builder, "fma", builder.fmul(r, z), _horner(builder, z, _SIN), r)
    cos_r = _intrinsic(builder, "fma", builder.fmul(z, z), _horner(builder, z, _COS),
                       _intrinsic(builder, "fma", z, _f64(-0.5), _f64(1.0)))
    # quadrant q = k mod 4: cos x is cos r, -sin r, -cos r, sin r
    q = builder.and_(builder.fptosi(k, I32), ir.Constant(I32, 3))
    odd = builder.trunc(q, I1)
    negative = builder.trunc(builder.lshr(builder.add(q, ir.Constant(I32, 1)), ir.Constant(I32, 1)), I1)
    value = builder.select(odd, sin_r, cos_r)
    value = builder.select(negative, builder.fneg(value), value)
    return builder.fptrunc(value, F32)


def _halves(builder: ir.IRBuilder, value: ir.Value) -> tuple[ir.Value, ir.Value]:
    """An i64's low and high 32-bit words."""
    return builder.trunc(value, I32), builder.trunc(builder.lshr(value, ir.Constant(I64, 32)), I32)


def _mul_wide(builder: ir.IRBuilder, constant: int, word: ir.Value) -> tuple[ir.Value, ir.Value]:
    """mulhi and mullo of constant * word (32-bit unsigned), from one 64-bit product."""
    product = builder.mul(builder.zext(word, I64), ir.Constant(I64, constant))
    return _halves(builder, product)[::-1]


def _horner(builder: ir.IRBuilder, z: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
    """coeffs[0] + coeffs[1] z + ... in float64, by fma."""
    acc = _f64(coeffs[-1])
    for coef in reversed(coeffs[:-1]):
        acc = _intrinsic(builder, "fma", acc, z, _f64(coef))
    return acc


def _f64(value: float) -> ir.Constant:
    return ir.Constant(F64, value)


def _intrinsic(builder: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    """A call of LLVM's intrinsic `llvm.<name>.<f32|f64>`, declared in the builder's module once."""
    ty = args[0].type
    fname = f"llvm.{name}.{'f32' if ty == F32 else 'f64'}"
    fn = builder.module.globals.get(fname)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ty, [ty] * len(args)), fname)
    return builder.call(fn, args)


def _intrinsic_call(builder: ir.IRBuilder) -> MathCall:
    return lambda name, x: _intrinsic(builder, name, x)
