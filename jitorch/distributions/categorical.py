"""The categorical distribution over the indices 0 .. K-1 of the last dim of `probs` or `logits`."""

from __future__ import annotations

import math

from .. import dtypes as _dt
from ..creation import arange, rand
from ..ops import broadcast_tensors
from ..tensor import Size, Tensor
from . import constraints
from .distribution import Distribution, lazy_property, probs_or_logits, probs_to_logits


class Categorical(Distribution):
    """Categorical given `probs` (nonnegative, normalized along the last dim) or unnormalized
    `logits`, exactly one of them; the last dim indexes the categories, the rest is the batch."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    has_enumerate_support = True
    _batched_params = ("probs", "logits", "_param")

    def __init__(self, probs=None, logits=None, validate_args: bool | None = None) -> None:
        name, param = probs_or_logits(probs, logits)
        if param.ndim < 1:
            raise ValueError(f"`{name}` parameter must be at least one-dimensional.")
        if name == "probs":
            self.probs = param / param.sum(-1, keepdim=True)
        else:
            self.logits = param - param.logsumexp(-1, keepdim=True)
        self._param = self.probs if name == "probs" else self.logits
        self._num_events = param.shape[-1]
        super().__init__(param.shape[:-1], validate_args=validate_args)

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs)

    @lazy_property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self._num_events - 1)

    @property
    def mean(self) -> Tensor:
        return self._param.new_full(self._extended_shape(), math.nan)

    @property
    def mode(self) -> Tensor:
        return self.probs.argmax(-1)

    @property
    def variance(self) -> Tensor:
        return self._param.new_full(self._extended_shape(), math.nan)

    @property
    def param_shape(self) -> Size:
        return self._param.shape

    def enumerate_support(self, expand: bool = True) -> Tensor:
        values = arange(self._num_events, dtype=_dt.int64, device=self._param.device)
        values = values.reshape((-1,) + (1,) * len(self._batch_shape))
        return values.expand((-1,) + tuple(self._batch_shape)) if expand else values

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """int64 category indices by inverting the cumulative probabilities at uniforms from
        jitorch's generator; no gradient."""
        probs = self.probs.detach()
        shape = self._extended_shape(sample_shape)
        u = rand(tuple(shape) + (1,), dtype=probs.dtype, device=probs.device)
        below = (probs.cumsum(-1) <= u).sum(-1)
        return below.clamp(max=self._num_events - 1)  # (a cumulative sum rounded below 1 at the end)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        index, log_pmf = broadcast_tensors(value.to(_dt.int64).unsqueeze(-1), self.logits)
        return log_pmf.gather(-1, index[..., :1]).squeeze(-1)

    def entropy(self) -> Tensor:
        logits = self.logits.clamp(min=_dt.finfo(self.logits.dtype).min)
        return -(logits * self.probs).sum(-1)
