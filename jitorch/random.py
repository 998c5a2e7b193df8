"""Random number generation: one global generator (reseeded by `manual_seed`) and `Generator`
objects for data loaders, each wrapping numpy's PCG64."""

from __future__ import annotations

import numpy as np

from . import dtypes as _dt


class Generator:
    """A random number generator with its own state, like `torch.Generator`."""

    def __init__(self, device: str = "cpu") -> None:
        self._seed = int(np.random.SeedSequence().entropy % (2**63))
        self._rng = np.random.Generator(np.random.PCG64(self._seed))

    def manual_seed(self, seed: int) -> Generator:
        self._seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self._seed))
        return self

    def seed(self) -> int:
        return self.manual_seed(int(np.random.SeedSequence().entropy % (2**63)))._seed

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> dict:
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state


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
    return (generator or default_generator)._rng


def _float_dtype(dtype) -> _dt.DType:
    dtype = _dt.get_default_dtype() if dtype is None else _dt.get_dtype(dtype)
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating dtype for random floats, got {dtype}")
    return dtype


def _traced_random(shape, dtype: _dt.DType, dist: str, generator):
    """Inside jitorch.compile: a random op seeded per call, or None when not tracing."""
    from ._trace_state import trace_state

    tracer = trace_state.tracer
    if tracer is None:
        return None
    if generator is not None:
        from .ir.trace import TraceError

        raise TraceError("random ops with an explicit generator are not supported inside jitorch.compile")
    return tracer.random(tuple(shape), dtype, dist)


def uniform(shape, low: float = 0.0, high: float = 1.0, dtype=None, generator=None):
    """A tensor of uniform samples in [low, high)."""
    from .tensor import Tensor

    dtype = _float_dtype(dtype)
    traced = _traced_random(shape, dtype, "uniform", generator)
    if traced is not None:
        return traced if (low, high) == (0.0, 1.0) else traced * (high - low) + low
    r = rng(generator).random(tuple(shape), dtype=np.float64 if dtype is _dt.float64 else np.float32)
    if low != 0.0 or high != 1.0:
        r = r * (high - low) + low
    return Tensor._make(r.astype(dtype.np, copy=False))


def normal(shape, mean: float = 0.0, std: float = 1.0, dtype=None, generator=None):
    """A tensor of normal samples."""
    from .tensor import Tensor

    dtype = _float_dtype(dtype)
    traced = _traced_random(shape, dtype, "normal", generator)
    if traced is not None:
        return traced if (mean, std) == (0.0, 1.0) else traced * std + mean
    r = rng(generator).standard_normal(tuple(shape), dtype=np.float64 if dtype is _dt.float64 else np.float32)
    if mean != 0.0 or std != 1.0:
        r = r * std + mean
    return Tensor._make(r.astype(dtype.np, copy=False))
