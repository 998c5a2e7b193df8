"""The Bernoulli distribution: 1 with probability `probs`, else 0."""

from __future__ import annotations

import math
import numbers

from ..creation import arange, bernoulli
from ..nn.functional import binary_cross_entropy_with_logits
from ..ops import broadcast_tensors, where
from ..tensor import Size, Tensor
from . import constraints
from .distribution import Distribution, lazy_property, probs_or_logits, probs_to_logits


class Bernoulli(Distribution):
    """Bernoulli given `probs` in [0, 1] or `logits` (log-odds), exactly one of them."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.boolean
    has_enumerate_support = True
    _batched_params = ("probs", "logits", "_param")

    def __init__(self, probs=None, logits=None, validate_args: bool | None = None) -> None:
        name, param = probs_or_logits(probs, logits)
        setattr(self, name, param)
        self._param = param
        scalar = isinstance(probs if probs is not None else logits, numbers.Number)
        super().__init__(Size() if scalar else param.shape, validate_args=validate_args)

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self) -> Tensor:
        return self.logits.sigmoid()

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        """1 where probs > 1/2, 0 where below, NaN at exactly 1/2 (both are modes)."""
        mode = (self.probs >= 0.5).to(self.probs.dtype)
        return where(self.probs == 0.5, math.nan, mode)

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    @property
    def param_shape(self) -> Size:
        return self._param.shape

    def enumerate_support(self, expand: bool = True) -> Tensor:
        values = arange(2, dtype=self._param.dtype, device=self._param.device)
        values = values.reshape((-1,) + (1,) * len(self._batch_shape))
        return values.expand((-1,) + tuple(self._batch_shape)) if expand else values

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """0/1 samples (in the parameter's dtype) from jitorch's generator; no gradient."""
        return bernoulli(self.probs.detach().expand(self._extended_shape(sample_shape)))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_tensors(self.logits, value.to(self.logits.dtype))
        return -binary_cross_entropy_with_logits(logits, value, reduction="none")

    def entropy(self) -> Tensor:
        return binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")
