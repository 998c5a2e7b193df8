"""Vectorizable scalar math functions as LLVM IR text (LLVM 22 syntax, as parsed by llvmlite 0.50).

The LLVM in llvmlite's wheels has no vector math library, so the loop vectorizer turns `llvm.exp.f32`
into one libm call per element. The helpers here use only arithmetic, `fcmp`/`select`, bit casts,
integer ops and intrinsics with vector instructions (fma, fabs, copysign), and no branches: inlined
into a loop, they vectorize like any other arithmetic (AVX2 or AVX-512, f32 and f64).

Each helper is `define internal <T> @jt_<op>_<f32|f64>(<T> %x)` with inline function attributes
(`alwaysinline nounwind willreturn memory(none)`), so the text brings no attribute groups, and no
intrinsic declarations either (LLVM 22 declares intrinsics on first use), that could clash with those
of the module it is pasted into. The "float" and "double" texts define disjoint names, so one module
may hold both, each once. The module must not also `declare` a helper (a declaration followed by
this definition is a redefinition error): a call may precede the definition without one.

Accuracy, max error in ulps of the exact result (f32: every float checked; f64: millions of points
against long double, erf against mpmath): exp 0.95 / 0.85, log 0.84 / 0.81, tanh 1.37 / 1.39,
sigmoid 0.85 / 0.79, erf 1.13 / 1.09 (f32 / f64). Special values are numpy's: exp overflows to
inf and underflows to 0, log(0) = -inf, log(x < 0) = NaN, tanh(+-inf) = +-1, tanh(-0) = -0, and NaN
in gives NaN out. Subnormal results and inputs are not flushed: exp's subnormal results are within
one subnormal spacing, and log scales subnormal inputs up before taking the exponent apart. That
holds while the caller leaves flush-to-zero off (MCJIT code and numpy do).

Polynomial coefficients are Chebyshev fits (mpmath `chebyfit`, 50-60 digits) of the functions named
beside them, on the reduced ranges used below; the quoted fit error is that of the exact-coefficient
polynomial.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

FUNCTIONS = ("exp", "log", "tanh", "sigmoid", "erf")

_SUFFIX = {"float": "f32", "double": "f64"}

# exp(r) = 1 + r + r^2 * G(r), G(r) = (exp(r) - 1 - r) / r^2 on |r| <= 1.01 * ln2 / 2 (the 1% margin
# covers k = rint(x * log2(e)) landing one off the nearest integer to x / ln2 through rounding)
_EXP_G = {
    # degree 4, fit error 6.8e-8 (times r^2 <= 0.12: 0.14 ulp of the result)
    "float": (0.5, 0.16666573381900845, 0.04166655011030512, 0.008363773874405574, 0.0013926926614021907),
    # degree 10, fit error 1.6e-18
    "double": (0.5, 0.1666666666666667, 0.04166666666666667, 0.008333333333325544, 0.0013888888888883327,
               0.00019841269876864356, 2.4801587327007187e-05, 2.755725283351691e-06, 2.75572718102198e-07,
               2.5106274733573296e-08, 2.0915442297780116e-09),
}

# log(1 + f) = 2 atanh(s) = 2 s + s * z * Q(z), s = f / (2 + f), z = s^2 <= 1.001 * ((sqrt2-1)/(sqrt2+1))^2
_LOG_Q = {
    # degree 3, fit error 1.2e-9
    "float": (0.6666666655404201, 0.4000012221181065, 0.28550778633191964, 0.23331614471843498),
    # degree 7, fit error 2.1e-18
    "double": (0.6666666666666666, 0.40000000000000885, 0.28571428570799784, 0.22222222392581045,
               0.18181795547521137, 0.15386244737621665, 0.13268638369266825, 0.13088034850927555),
}

# tanh(x) = x + x^3 * P(x^2) for |x| < _TANH_SMALL, P(z) = (tanh(sqrt z) - sqrt z) / sqrt(z)^3 on z <= 0.625^2
_TANH_SMALL = 0.625
_TANH_P = {
    # degree 5, fit error 1.6e-9
    "float": (-0.3333333317214036, 0.1333330355691574, -0.053959259577204544, 0.02176891865102821,
              -0.008343945515839153, 0.002292744816178142),
    # degree 11, fit error 3.9e-18
    "double": (-0.3333333333333333, 0.13333333333333042, -0.05396825396789699, 0.021869488519008305,
               -0.008863235103240878, 0.0035921217511549622, -0.0014557754120478055, 0.0005896606577757043,
               -0.0002375906496055562, 9.257116129556769e-05, -3.12011014257974e-05, 6.485163482793113e-06),
}

# ln 2 as a head (ln 2 rounded to the type) and a tail: with k * head inside an fma the product is
# exact, so x - k * ln2 keeps the tail's extra bits
_LN2_HI = {"float": 0.6931471824645996, "double": 0.6931471805599453}
_LN2_LO = {"float": -1.904654299957768e-09, "double": 2.3190468138462996e-17}
_LOG2E = 1.4426950408889634

# erf(x) = x + x * S(x^2 - 0.78125) for |x| < _ERF_SMALL, S(w) = erf(sqrt z) / sqrt z - 1 for z = w + 0.78125
# on z <= _ERF_SMALL^2; centred so that Horner's rounding errors are not amplified by z > 1
_ERF_SMALL = 1.25
_ERF_S_CENTRE = 0.78125
_ERF_S = {
    # degree 7, fit error 9.7e-10
    "float": (-0.10768729945101567, -0.2404499672868298, 0.06551693505043794, -0.014779658146437901,
              0.0027765693276988824, -0.000443763055498068, 6.25272071541396e-05, -7.616689263883488e-06),
    # degree 13, fit error 8.8e-19
    "double": (-0.10768729855162729, -0.24044996737534727, 0.06551688790452763, -0.014779653506227725,
               0.0027769551956614395, -0.0004438010391347205, 6.151799483936617e-05, -7.517308517907177e-06,
               8.206175694484375e-07, -8.09071856680868e-08, 7.269928347577534e-09, -5.99998122190854e-10,
               4.6240510629428744e-11, -3.275693198242207e-12),
}
# beyond: erf(x) = 1 - exp(-x^2) * R(1/x - centre), R(v) = erfc(x) exp(x^2) for 1/x - centre = v, on
# _ERF_SMALL <= x <= the point past which erf rounds to 1 (x is clamped there)
_ERF_LARGE = {"float": 4.0, "double": 6.0}
_ERF_R_CENTRE = {"float": 0.525, "double": 0.48333333333333334}
_ERF_R = {
    # degree 7, fit error 1.6e-8 (times exp(-x^2): at most 1.3e-9 in erf)
    "float": (0.26595975883688344, 0.41795615674295006, -0.18358926111083984, 0.02878654030322106,
              0.05449363052304901, -0.078756523960562, 0.05484364384081386, -0.008604112583682712),
    # degree 20, fit error 4.5e-17 (times exp(-x^2): at most 7.5e-19 in erf)
    "double": (0.24822427604712266, 0.4333879122725223, -0.18655828793540136, 0.0182934043983104,
               0.07214118186495797, -0.09383920106779683, 0.06377757421981846, -0.0050233547043678555,
               -0.05643606264026909, 0.09605596150105965, -0.09579158089284114, 0.04898409228756755,
               0.03599772593221205, -0.13422620724148032, 0.20783754373009675, -0.22159494738435268,
               0.14678646216874597, 0.0895759294052834, -0.5124756154510707, 0.7422936845088108,
               -0.3905751875074647),
}
# Per-type layout of the IEEE format: integer type, mantissa bits, exponent bias.
_INT = {"float": "i32", "double": "i64"}
_MANT = {"float": 23, "double": 52}
_BIAS = {"float": 127, "double": 1023}

# exp's input is clamped to [lo, hi] before the reduction: hi is past the overflow threshold (so the
# result still overflows to inf) and lo past the point where the result rounds to 0 (below it exp
# returns 0 by a select), while k = x / ln2 stays small enough for 2^k to be built as two normal
# powers of two.
_EXP_CLAMP = {"float": (-104.0, 89.0), "double": (-746.0, 710.0)}
# below the smallest normal number log scales its input by 2^scale to read a normal exponent
_LOG_DENORMAL = {"float": (2.0**-126, 23), "double": (2.0**-1022, 54)}
# bit pattern of sqrt(1/2): subtracting it before shifting out the exponent puts m in [sqrt(1/2), sqrt(2))
_SQRT_HALF_BITS = {"float": 0x3F3504F3, "double": 0x3FE6A09E667F3BCD}


def function_name(op: str, dtype: str) -> str:
    """The LLVM name of helper `op` for `dtype` ("float" or "double"), e.g. "jt_exp_f32"."""
    if op not in FUNCTIONS:
        raise ValueError(f"no LLVM math helper for {op!r}; have {FUNCTIONS}")
    return f"jt_{op}_{_suffix(dtype)}"


def math_functions(dtype: str, scalef: bool = False) -> str:
    """IR text defining the math helpers for dtype "float" (f32) or "double" (f64).

    Paste it once into a module (both dtypes' texts may go into the same module) and call the
    helpers by `function_name(op, dtype)`; they are `alwaysinline`, so after optimization they leave
    no calls behind.

    `scalef` (for a target with AVX-512F): exp scales its polynomial by 2^k with `llvm.ldexp`, one
    vscalef per vector, instead of building 2^k as two powers of two from bit patterns and
    multiplying by both (seven vector instructions): exp is most of a softmax's or a
    cross-entropy's arithmetic. Results are the same but for subnormal ones, which round once
    instead of twice. Without AVX-512 `llvm.ldexp` is a libm call per element: leave it off.
    """
    _suffix(dtype)
    return "\n".join(_define(op, dtype, body, scalef) for op, body in _BODIES.items())


def _suffix(dtype: str) -> str:
    if dtype not in _SUFFIX:
        raise ValueError(f"LLVM math helpers exist for 'float' and 'double', not {dtype!r}")
    return _SUFFIX[dtype]


def _const(value: float, dtype: str) -> str:
    """A floating-point literal: LLVM spells both types as the hex bits of a double, and a float's
    literal must be exactly representable as a float."""
    if math.isnan(value):
        return "0x7FF8000000000000"
    if dtype == "float" and not math.isinf(value):
        value = struct.unpack("<f", struct.pack("<f", value))[0]
    return f"0x{_int_bits(value, 'double') & (2**64 - 1):016X}"


def _int_bits(value: float, dtype: str) -> int:
    """The bit pattern of `value` in `dtype`, as a signed integer."""
    fmt = "<f<i" if dtype == "float" else "<d<q"
    return struct.unpack(fmt[2:], struct.pack(fmt[:2], value))[0]


class _Body:
    """Builds the instructions of one helper; operands are SSA names or literals, as strings.
    `scalef`: scale by powers of two with `llvm.ldexp` (see `math_functions`)."""

    def __init__(self, dtype: str, scalef: bool = False) -> None:
        self.t = dtype
        self.scalef = scalef
        self.i = _INT[dtype]
        self.sfx = _SUFFIX[dtype]
        self.lines: list[str] = []

    def emit(self, instruction: str) -> str:
        name = f"%v{len(self.lines)}"
        self.lines.append(f"  {name} = {instruction}")
        return name

    def c(self, value: float) -> str:
        return _const(value, self.t)

    def binop(self, op: str, a: str, b: str) -> str:
        return self.emit(f"{op} {self.t} {a}, {b}")

    def add(self, a: str, b: str) -> str:
        return self.binop("fadd", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.binop("fsub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.binop("fmul", a, b)

    def div(self, a: str, b: str) -> str:
        return self.binop("fdiv", a, b)

    def neg(self, a: str) -> str:
        return self.emit(f"fneg {self.t} {a}")

    def intrinsic(self, name: str, *args: str) -> str:
        params = ", ".join(f"{self.t} {a}" for a in args)
        return self.emit(f"call {self.t} @llvm.{name}.{self.sfx}({params})")

    def fma(self, a: str, b: str, c: str) -> str:
        return self.intrinsic("fma", a, b, c)

    def fcmp(self, pred: str, a: str, b: str) -> str:
        return self.emit(f"fcmp {pred} {self.t} {a}, {b}")

    def select(self, cond: str, a: str, b: str, ty: str | None = None) -> str:
        ty = ty or self.t
        return self.emit(f"select i1 {cond}, {ty} {a}, {ty} {b}")

    def ibinop(self, op: str, a: str, b: str | int, ty: str | None = None) -> str:
        return self.emit(f"{op} {ty or self.i} {a}, {b}")

    def to_int_bits(self, a: str) -> str:
        return self.emit(f"bitcast {self.t} {a} to {self.i}")

    def from_int_bits(self, a: str) -> str:
        return self.emit(f"bitcast {self.i} {a} to {self.t}")

    def ldexp(self, x: str, k: str) -> str:
        """x * 2^k for an integral float k, rounded once (`llvm.ldexp`: AVX-512's vscalef)."""
        ki = self.emit(f"fptosi {self.t} {k} to i32")
        return self.emit(f"call {self.t} @llvm.ldexp.{self.sfx}.i32({self.t} {x}, i32 {ki})")

    def horner(self, x: str, coeffs: tuple[float, ...]) -> str:
        acc = self.c(coeffs[-1])
        for coef in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.c(coef))
        return acc

    def nan_through(self, x: str, y: str) -> str:
        """y, or x itself where x is NaN (numpy returns the input NaN)."""
        return self.select(self.fcmp("uno", x, x), x, y)


def _exp_reduce(b: _Body, x: str) -> tuple[str, str, Callable[[str], str], str]:
    """exp(x) = exp(r) * 2^k with r = r_hi - k * ln2_lo: returns k (integral, as a float), r_hi
    (exact), a function that scales by 2^k (`_scale_by`), and `under`, true where exp(x) rounds to 0
    (the caller selects 0 there). A NaN x gives NaNs."""
    lo, hi = _EXP_CLAMP[b.t]
    # compares false for NaN keep NaN, which then flows through arithmetic and bit patterns alone
    xc = b.select(b.fcmp("ogt", x, b.c(hi)), b.c(hi), x)
    # Below `lo` the result is 0, but computing it as a product that rounds through the subnormal
    # range costs a microcode assist per element on Intel (5x slower for a causal mask's -inf
    # half of a softmax). Those lanes compute exp(0) instead and the caller selects 0.
    under = b.fcmp("olt", x, b.c(lo))
    xc = b.select(under, b.c(0.0), xc)
    # adding 1.5 * 2^mantissa_bits rounds x / ln2 to an integer k and leaves k in the low bits of the
    # sum: no rint and no float -> int conversion (packed double -> i64 needs AVX-512)
    magic = 1.5 * 2.0 ** _MANT[b.t]
    kf = b.fma(xc, b.c(_LOG2E), b.c(magic))
    k = b.sub(kf, b.c(magic))
    # x - k * ln2_hi is exact (the fma keeps the product exact and the difference fits the type)
    r_hi = b.fma(k, b.c(-_LN2_HI[b.t]), xc)
    return k, r_hi, _scale_by(b, k, kf, magic), under


def _scale_by(b: _Body, k: str, kf: str, magic: float) -> Callable[[str], str]:
    """A function y -> y * 2^k, rounded once where the product is normal."""
    if b.scalef:
        return lambda y: b.ldexp(y, k)
    # 2^k as two factors keeps each a normal number from the subnormal end (k = -150 for f32) to
    # past overflow (k = 128); only the last product rounds into the subnormal range, so subnormal
    # results are not flushed (within 0.9 of their spacing, like normal ones).
    # u = k + 2 * bias >= 0 splits with a logical shift (a packed arithmetic one on i64 needs AVX-512)
    # into biased exponents e1 = floor(k/2) + bias, e2 = ceil(k/2) + bias.
    u = b.ibinop("sub", b.to_int_bits(kf), _int_bits(magic, b.t) - 2 * _BIAS[b.t])
    e1 = b.ibinop("lshr", u, 1)
    e2 = b.ibinop("sub", u, e1)
    s1 = b.from_int_bits(b.ibinop("shl", e1, _MANT[b.t]))
    s2 = b.from_int_bits(b.ibinop("shl", e2, _MANT[b.t]))
    return lambda y: b.mul(b.mul(y, s1), s2)


def _exp(b: _Body, x: str) -> str:
    k, r_hi, scale, under = _exp_reduce(b, x)
    r = b.fma(k, b.c(-_LN2_LO[b.t]), r_hi)
    g = b.horner(r, _EXP_G[b.t])
    p = b.fma(b.fma(g, r, b.c(1.0)), r, b.c(1.0))  # 1 + r + r^2 G(r)
    return b.select(under, b.c(0.0), scale(p))


def _exp_pair(b: _Body, x: str) -> tuple[str, str]:
    """exp(x) for x <= 0 as a rounded value e and its rounding error e_err: e + e_err, unrounded,
    is within about 0.1 ulp of exp(x) where e is normal (plain exp: within 0.9 ulp)."""
    k, r_hi, scale, under = _exp_reduce(b, x)
    r_lo = b.mul(k, b.c(-_LN2_LO[b.t]))
    r = b.add(r_hi, r_lo)
    g = b.horner(r, _EXP_G[b.t])
    # 1 + r + r^2 G(r) summed so that only the small terms round: p_hi = 1 + r_hi with its rounding
    # error recovered exactly (Fast2Sum, |r_hi| < 1), the tail of ln 2 kept in the small terms
    p_hi = b.add(b.c(1.0), r_hi)
    p_lo = b.add(b.add(b.sub(b.c(1.0), p_hi), r_hi), b.fma(b.mul(r, r), g, r_lo))
    p = b.add(p_hi, p_lo)
    p_err = b.add(b.sub(p_hi, p), p_lo)  # Fast2Sum: |p_lo| < |p_hi|
    zero = b.c(0.0)
    return b.select(under, zero, scale(p)), b.select(under, zero, scale(p_err))


def _divide_pairs(b: _Body, n: str, n_lo: str, d: str, d_lo: str, inverse_d: str) -> str:
    """(n + n_lo) / (d + d_lo) rounded about once: the quotient n / d corrected by the exact
    remainder of the division (an fma) and the low parts; `inverse_d` need only be close to 1 / d."""
    q = b.div(n, d)
    remainder = b.add(b.fma(b.neg(q), d, n), n_lo)
    remainder = b.fma(b.neg(q), d_lo, remainder)
    return b.fma(remainder, inverse_d, q)


def _log(b: _Body, x: str) -> str:
    smallest_normal, scale = _LOG_DENORMAL[b.t]
    subnormal = b.fcmp("olt", x, b.c(smallest_normal))
    xs = b.select(subnormal, b.mul(x, b.c(2.0**scale)), x)
    e_adjust = b.select(subnormal, str(-scale), "0", "i32")
    bits = b.to_int_bits(xs)
    shifted = b.ibinop("sub", bits, _SQRT_HALF_BITS[b.t])
    e = b.ibinop("ashr", shifted, _MANT[b.t])
    m = b.from_int_bits(b.ibinop("sub", bits, b.ibinop("shl", e, _MANT[b.t])))
    if b.i != "i32":  # i32 -> double converts packed on AVX2, i64 -> double does not
        e = b.emit(f"trunc {b.i} {e} to i32")
    ef = b.emit(f"sitofp i32 {b.ibinop('add', e, e_adjust, 'i32')} to {b.t}")
    # f = m - 1 is exact; log(1 + f) = f - f^2/2 + s * (f^2/2 + R(z)) keeps f, the largest term,
    # unrounded and puts the rounding errors into the small corrections
    f = b.sub(m, b.c(1.0))
    s = b.div(f, b.add(f, b.c(2.0)))
    z = b.mul(s, s)
    big_r = b.mul(z, b.horner(z, _LOG_Q[b.t]))
    hfsq = b.mul(b.mul(f, f), b.c(0.5))
    low = b.fma(s, b.add(hfsq, big_r), b.mul(ef, b.c(_LN2_LO[b.t])))
    t = b.sub(f, b.sub(hfsq, low))
    y = b.fma(ef, b.c(_LN2_HI[b.t]), t)
    y = b.select(b.fcmp("oeq", x, b.c(math.inf)), b.c(math.inf), y)
    y = b.select(b.fcmp("oeq", x, b.c(0.0)), b.c(-math.inf), y)
    y = b.select(b.fcmp("olt", x, b.c(0.0)), b.c(math.nan), y)
    return b.nan_through(x, y)


def _tanh(b: _Body, x: str) -> str:
    # everything on |x|, the sign copied back at the end: that also gives tanh(-0) = -0
    a = b.intrinsic("fabs", x)
    z = b.mul(a, a)
    small = b.fma(b.mul(a, z), b.horner(z, _TANH_P[b.t]), a)
    # 1 - 2 / (exp(2a) + 1) here: 2 / (...) <= 0.46 is below the result, so its errors shrink in the
    # subtraction (1.4 ulp at worst, next to the threshold). Carrying exp's rounding error through as in
    # sigmoid would give 0.75 ulp for 1.7x the time. exp overflowing to inf gives exactly 1.
    e = _exp(b, b.add(a, a))
    large = b.sub(b.c(1.0), b.div(b.c(2.0), b.add(e, b.c(1.0))))
    y = b.select(b.fcmp("olt", a, b.c(_TANH_SMALL)), small, large)
    return b.nan_through(x, b.intrinsic("copysign", y, x))


def _sigmoid(b: _Body, x: str) -> str:
    # e = exp(-|x|) <= 1 never overflows: 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0. The result
    # inherits e's relative error in full for x < 0, so e comes with its rounding error, and 1 + e
    # with its own (Fast2Sum, e <= 1)
    e, e_err = _exp_pair(b, b.neg(b.intrinsic("fabs", x)))
    d = b.add(b.c(1.0), e)
    d_lo = b.add(b.add(b.sub(b.c(1.0), d), e), e_err)
    nonnegative = b.fcmp("oge", x, b.c(0.0))
    n = b.select(nonnegative, b.c(1.0), e)
    n_lo = b.select(nonnegative, b.c(0.0), e_err)
    q_approx = b.div(n, d)  # the same division as in _divide_pairs: LLVM keeps one
    inverse_d = b.select(nonnegative, q_approx, b.sub(b.c(1.0), q_approx))
    return b.nan_through(x, _divide_pairs(b, n, n_lo, d, d_lo, inverse_d))


def _erf(b: _Body, x: str) -> str:
    # on |x| with the sign copied back: erf is odd, and erf(-0) = -0
    a = b.intrinsic("fabs", x)
    # x + x * S(x^2 - centre) as one fma: x itself, the largest term, is not rounded
    small = b.fma(a, b.horner(b.sub(b.mul(a, a), b.c(_ERF_S_CENTRE)), _ERF_S[b.t]), a)
    # the exp(-x^2) form needs erfc only to a few ulps of itself: erfc <= 0.08 where it is used.
    # x is clamped to where erf rounds to 1 (NaN too: it is put back at the end)
    top = b.c(_ERF_LARGE[b.t])
    ac = b.select(b.fcmp("olt", a, top), a, top)
    v = b.sub(b.div(b.c(1.0), ac), b.c(_ERF_R_CENTRE[b.t]))
    e = _exp(b, b.neg(b.mul(ac, ac)))
    large = b.sub(b.c(1.0), b.mul(e, b.horner(v, _ERF_R[b.t])))
    y = b.select(b.fcmp("olt", a, b.c(_ERF_SMALL)), small, large)
    return b.nan_through(x, b.intrinsic("copysign", y, x))


_BODIES = {"exp": _exp, "log": _log, "tanh": _tanh, "sigmoid": _sigmoid, "erf": _erf}


def _define(op: str, dtype: str, build, scalef: bool = False) -> str:
    b = _Body(dtype, scalef)
    result = build(b, "%x")
    name = function_name(op, dtype)
    return "\n".join([
        f"define internal {dtype} @{name}({dtype} %x) alwaysinline nounwind willreturn memory(none) {{",
        *b.lines,
        f"  ret {dtype} {result}",
        "}",
        "",
    ])
