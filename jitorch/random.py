"""Random number generation: one global generator (reseeded by `manual_seed`) and `Generator`
objects for data loaders: counter-based (Philox), so compiled programs draw what eager code does."""

from __future__ import annotations

import math

import numpy as np

from . import dtypes as _dt
from . import philox
from ._trace_state import trace_state
from .device import Device, cpu
from .errors import TraceError
from .tensor import Tensor


class Generator:
    """A random number generator with its own state, like `torch.Generator`: a seed and a counter.

    Tensor draws are Philox 4x32-10 (`jitorch.philox`), keyed by the seed, one counter per element:
    a draw of n numbers takes the next n counters. A compiled program takes the same counters for
    the same draws, so eager and compiled runs draw the same numbers, on every backend. Host-side
    algorithms (permutations, sampling without replacement) use a numpy generator seeded from the
    next counter (`numpy_rng`).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.manual_seed(int(np.random.SeedSequence().entropy % (2**63)))

    def manual_seed(self, seed: int) -> Generator:
        self._seed = int(seed)
        self._offset = 0
        return self

    def seed(self) -> int:
        return self.manual_seed(int(np.random.SeedSequence().entropy % (2**63)))._seed

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> dict:
        return {"seed": self._seed, "offset": self._offset}

    def set_state(self, state: dict) -> None:
        self._seed, self._offset = int(state["seed"]), int(state["offset"])

    def take(self, n: int) -> int:
        """Reserve the next n counters; returns the first."""
        start = self._offset
        self._offset += n
        return start

    def counters(self, n: int) -> np.ndarray:
        """The next n counters, as element offsets."""
        start = self.take(n)
        return np.arange(start, start + n, dtype=np.int64)

    def numpy_rng(self) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64([self._seed % 2**64, self.take(1)]))


default_generator = Generator().manual_seed(0)


def manual_seed(seed: int) -> Generator:
    """Seed the global generator so that random ops repeat run to run."""
    return default_generator.manual_seed(seed)


def seed() -> int:
    return default_generator.seed()


def initial_seed() -> int:
    return default_generator.initial_seed()


def get_rng_state() -> dict:
    return default_generator.get_state()


def set_rng_state(state: dict) -> None:
    default_generator.set_state(state)


def rng(generator: Generator | None) -> np.random.Generator:
    """A numpy generator for host-side algorithms, from `generator` (or the global one)."""
    return (generator or default_generator).numpy_rng()


def draw(dist: str, seed: int, offsets: np.ndarray, dtype: _dt.DType) -> np.ndarray:
    return philox.draw(dist, seed, offsets, dtype.np)


def _float_dtype(dtype) -> _dt.DType:
    dtype = _dt.get_default_dtype() if dtype is None else _dt.get_dtype(dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating dtype for random floats, got {dtype}")
    return dtype


def _traced_random(shape, dtype: _dt.DType, dist: str, generator, device):
    """Inside jitorch.compile: a random op seeded per call, or None when not tracing."""
    tracer = trace_state.tracer
    if tracer is None:
        return None
    if generator is not None:
        raise TraceError("random ops with an explicit generator are not supported inside jitorch.compile")
    return tracer.random(tuple(shape), dtype, dist, Device(device) if device is not None else cpu)


def uniform(shape, low: float = 0.0, high: float = 1.0, dtype=None, generator=None, device=None):
    """A tensor of uniform samples in [low, high) (on the CPU; on `device` while tracing)."""
    dtype = _float_dtype(dtype)
    traced = _traced_random(shape, dtype, "uniform", generator, device)
    if traced is not None:
        return traced if (low, high) == (0.0, 1.0) else traced * (high - low) + low
    gen = generator or default_generator
    r = draw("uniform", gen._seed, gen.counters(math.prod(shape)), dtype).reshape(tuple(shape))
    if low != 0.0 or high != 1.0:
        r = r * (high - low) + low
    return Tensor._make(r.astype(dtype.np, copy=False))


def normal(shape, mean: float = 0.0, std: float = 1.0, dtype=None, generator=None, device=None):
    """A tensor of normal samples (on the CPU; on `device` while tracing)."""
    dtype = _float_dtype(dtype)
    traced = _traced_random(shape, dtype, "normal", generator, device)
    if traced is not None:
        return traced if (mean, std) == (0.0, 1.0) else traced * std + mean
    gen = generator or default_generator
    r = draw("normal", gen._seed, gen.counters(math.prod(shape)), dtype).reshape(tuple(shape))
    if mean != 0.0 or std != 1.0:
        r = r * std + mean
    return Tensor._make(r.astype(dtype.np, copy=False))
