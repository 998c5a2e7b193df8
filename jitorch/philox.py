"""Counter-based random numbers (Philox 4x32-10), defined exactly as Triton's `tl.randint`,
`tl.rand` and `tl.randn` (triton/language/random.py), in numpy.

The same definition is emitted as LLVM IR by `jitorch.codegen.llvm_philox`, and Triton kernels
call `tl.rand`/`tl.randn` themselves, so a seed and an element offset give the same number eager,
compiled for the CPU and compiled for the GPU: the integers and uniforms bit for bit, the normals up
to the rounding of the log and cos that each backend brings. From the correctly rounded float32
result, normals are measured within 5 ulps here (numpy's float32 log and cos, which Triton's
interpreter uses too), 2 ulps in LLVM kernels and 4 ulps on an H200 (Triton 3.6).

The definition, for a 64-bit `seed` and an element `offset`:

- the key is the seed's two 32-bit halves, `k0 = seed & 0xFFFFFFFF`, `k1 = seed >> 32` (a negative
  seed is taken modulo 2**64, as Triton's cast to uint64 does);
- the counter is `(offset & 0xFFFFFFFF, offset >> 32, 0, 0)`: an int64 offset's high word goes to
  c1, as in Triton's `randint4x` for 64-bit offsets (Triton's int32 offsets, always below 2**31,
  have c1 = 0, the same numbers). So every offset below 2**63 has a counter of its own; a negative
  offset is its two's complement bit pattern;
- 10 Philox rounds give four 32-bit words; `randint` is the first;
- `uniform` turns the first word into a float32 in [0, 1): the word as int32, `~x` where negative
  (Triton 3.6 writes `-x - 1`, the same integer), converted to float32 and times 4.6566127342e-10
  (float32), so the largest is 1 - 2**-24;
- `normal` is Box-Muller on the uniforms of the first two words, keeping the cosine branch:
  `sqrt(-2 log(max(u1, 1e-7))) * cos(2 pi u2)`, all in float32; the 1e-7 floor bounds it by 5.68.

Floats are computed in float32, as Triton computes them; a float64 request gets those float32
values cast, so float64 draws are the same numbers as float32 ones on every backend (with float32's
24 bits of resolution).

The functions take numpy or CuPy arrays and answer in the same kind (`array_namespace`), so the CUDA
backend's eager draws are this very code run on the GPU: the same integers and uniforms bit for bit,
normals up to the rounding of CUDA's float32 log and cos.

Example:
    >>> from jitorch import philox
    >>> philox.uniform(seed=0, offsets=np.arange(3))
    array([0.7980929 , 0.05551759, 0.03889884], dtype=float32)
"""

from __future__ import annotations

import math
import sys

import numpy as np
from numpy.typing import DTypeLike

N_ROUNDS = 10
# the key's increments per round (the golden ratio and sqrt(3) - 1, as 32-bit fractions)
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
# the round multipliers
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
# the largest float32 such that (2**31 - 1) * scale, rounded, stays below 1
UNIFORM_SCALE = np.float32(4.6566127342e-10)
# Box-Muller's floor on u1 and its angle factor, as Triton rounds them to float32
NORMAL_U1_MIN = np.float32(1e-7)
TWO_PI = np.float32(6.283185307179586)

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
# elements per pass through the rounds: small enough that the eight working arrays stay in the L2
# cache (one pass over a million elements spills to memory and runs about 3x slower)
_CHUNK = 1 << 15
# on a GPU each pass is some 50 kernel launches: passes as large as memory comfortably allows
# (eight uint64 working arrays: 1 GiB for 2**24 elements)
_GPU_CHUNK = 1 << 24


def array_namespace(*arrays):
    """numpy, or cupy when any of `arrays` is a CuPy array. CuPy is never imported here: an array
    of it can exist only once something else has imported it."""
    cupy = sys.modules.get("cupy")
    return np if cupy is None else cupy.get_array_module(*arrays)


def philox4x32(seed: int, c0: np.ndarray | int, c1: np.ndarray | int = 0, c2: np.ndarray | int = 0,
               c3: np.ndarray | int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Philox 4x32 with 10 rounds of the counters (c0, c1, c2, c3), keyed by the 64-bit `seed`:
    four uint32 arrays of the counters' broadcast shape. Triton's `philox(seed, c0, c1, c2, c3)`.

    Counters are uint32 values (arrays or scalars, numpy or CuPy); a seed is taken modulo 2**64.
    """
    xp = array_namespace(c0, c1, c2, c3)
    counters = [xp.asarray(c) for c in (c0, c1, c2, c3)]
    for c in counters:
        if c.dtype != np.uint32 and (c.dtype.kind not in "iu" or (c.size and (c.min() < 0 or c.max() > 0xFFFFFFFF))):
            raise ValueError(f"philox counters are uint32 values, got an array of {c.dtype} outside 0..2**32-1")
    shape = np.broadcast_shapes(*(c.shape for c in counters))
    n = math.prod(shape)
    flat = [xp.broadcast_to(c, shape).ravel() if c.ndim else int(c) for c in counters]
    seed = int(seed) % 2**64
    outs = tuple(xp.empty(n, np.uint32) for _ in range(4))
    step = _CHUNK if xp is np else _GPU_CHUNK
    for start in range(0, n, step):
        stop = min(start + step, n)
        chunk = [c[start:stop].astype(np.uint64) if isinstance(c, xp.ndarray) else xp.full(stop - start, c, np.uint64)
                 for c in flat]
        for out, word in zip(outs, _rounds(xp, seed & 0xFFFFFFFF, seed >> 32, *chunk)):
            out[start:stop] = word
    return tuple(out.reshape(shape) for out in outs)


def _rounds(xp, k0: int, k1: int, c0, c1, c2, c3) -> tuple:
    """The 10 rounds on uint64 arrays that hold 32-bit words (overwritten). A 32x32-bit product
    fits a uint64, whose high and low halves are Philox's mulhi and mullo."""
    prod_a, prod_b = xp.empty_like(c0), xp.empty_like(c0)
    spare0, spare2 = xp.empty_like(c0), xp.empty_like(c0)
    for _ in range(N_ROUNDS):
        xp.multiply(c0, np.uint64(PHILOX_ROUND_A), out=prod_a)
        xp.multiply(c2, np.uint64(PHILOX_ROUND_B), out=prod_b)
        # c0' = mulhi(B, c2) ^ c1 ^ k0 and c2' = mulhi(A, c0) ^ c3 ^ k1, built in the spare arrays
        xp.right_shift(prod_b, _SHIFT32, out=spare0)
        spare0 ^= c1
        spare0 ^= np.uint64(k0)
        xp.right_shift(prod_a, _SHIFT32, out=spare2)
        spare2 ^= c3
        spare2 ^= np.uint64(k1)
        # c1' = mullo(B, c2), c3' = mullo(A, c0)
        xp.bitwise_and(prod_b, _MASK32, out=c1)
        xp.bitwise_and(prod_a, _MASK32, out=c3)
        c0, spare0 = spare0, c0
        c2, spare2 = spare2, c2
        k0 = (k0 + PHILOX_KEY_A) & 0xFFFFFFFF
        k1 = (k1 + PHILOX_KEY_B) & 0xFFFFFFFF
    return c0, c1, c2, c3


def randint4x(seed: int, offsets: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four uint32 words of Philox for each element offset: counter (offset's low word, its
    high word, 0, 0). Triton's `tl.randint4x(seed, offsets)` for int64 offsets."""
    bits = _offset_bits(offsets)
    return philox4x32(seed, (bits & _MASK32).astype(np.uint32), (bits >> _SHIFT32).astype(np.uint32))


def randint(seed: int, offsets: np.ndarray | int) -> np.ndarray:
    """A uint32 random word for each element offset: Triton's `tl.randint(seed, offsets)`."""
    return randint4x(seed, offsets)[0]


def uint_to_uniform_float(x: np.ndarray) -> np.ndarray:
    """uint32 words to float32 in [0, 1), as Triton's `uint_to_uniform_float`: the word as int32,
    `~x` where negative (so 2**31 values, each twice), times UNIFORM_SCALE in float32."""
    xp = array_namespace(x)
    x = xp.asarray(x, dtype=np.uint32).view(np.int32)
    folded = x ^ (x >> 31)  # ~x where x < 0: the arithmetic shift gives all ones there
    return xp.multiply(folded.astype(np.float32), UNIFORM_SCALE, dtype=np.float32)


def uniform(seed: int, offsets: np.ndarray | int, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Uniform floats in [0, 1), one per element offset: Triton's `tl.rand(seed, offsets)`.

    Computed in float32; float64 gets the float32 values cast (the same numbers).
    """
    dtype = _float_dtype(dtype)
    return uint_to_uniform_float(randint(seed, offsets)).astype(dtype, copy=False)


def normal(seed: int, offsets: np.ndarray | int, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Standard normal floats, one per element offset: Triton's `tl.randn(seed, offsets)`, the
    cosine branch of Box-Muller on the uniforms of Philox's first two words.

    Computed in float32 (|x| <= 5.68, never NaN or inf); float64 gets the float32 values cast.
    """
    dtype = _float_dtype(dtype)
    words = randint4x(seed, offsets)
    normals = pair_uniform_to_normal(uint_to_uniform_float(words[0]), uint_to_uniform_float(words[1]))
    return normals.astype(dtype, copy=False)


def pair_uniform_to_normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Box-Muller's cosine branch in float32, the first of Triton's `pair_uniform_to_normal`:
    `sqrt(-2 log(max(u1, 1e-7))) * cos(2 pi u2)`."""
    xp = array_namespace(u1, u2)
    u1 = xp.maximum(xp.asarray(u1, dtype=np.float32), NORMAL_U1_MIN)
    xp.log(u1, out=u1)
    u1 *= np.float32(-2.0)
    radius = xp.sqrt(u1, out=u1)
    angle_cos = xp.cos(xp.multiply(TWO_PI, u2, dtype=np.float32))
    return xp.multiply(radius, angle_cos, out=radius)


def _offset_bits(offsets: np.ndarray | int) -> np.ndarray:
    """Offsets as the uint64 bit patterns of int64 values."""
    offsets = array_namespace(offsets).asarray(offsets)
    if offsets.dtype.kind not in "iu":
        raise TypeError(f"random offsets must be integers (int64 element offsets), got {offsets.dtype}")
    return offsets.astype(np.int64, copy=False).view(np.uint64)


def _float_dtype(dtype: DTypeLike) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"philox draws float32 or float64, not {dtype}: draw float32 and cast (a cast to a "
                        "narrower float can round a uniform up to 1.0)")
    return dtype


def draw(dist: str, seed: int, offsets, dtype) -> np.ndarray:
    """`uniform` ("uniform") or `normal` ("normal") draws for these counters, as `dtype`: computed in
    float32 as Triton does, then cast (a float64 draw is the float32 one, on every backend)."""
    fn = uniform if dist == "uniform" else normal
    work = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    return fn(seed, offsets, dtype=work).astype(dtype, copy=False)
