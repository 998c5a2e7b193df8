"""`kl_divergence(p, q)`: KL(p || q) by a table of rules per pair of distribution types, which
`register_kl` extends, as in `torch.distributions.kl`."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..ops import where
from ..tensor import Tensor
from .categorical import Categorical
from .distribution import Distribution
from .multivariate_normal import MultivariateNormal, _solve_lower, _solve_lower_matrix
from .normal import Normal

_KL: dict[tuple[type, type], Callable] = {}


def register_kl(type_p: type, type_q: type) -> Callable:
    """A decorator registering `fn(p, q)` as KL(p || q) for p of `type_p` and q of `type_q`."""

    def register(fn: Callable) -> Callable:
        _KL[type_p, type_q] = fn
        return fn

    return register


def kl_divergence(p: Distribution, q: Distribution) -> Tensor:
    """KL(p || q), batched over the distributions' batch shape; the rule for the most specific
    registered pair of their types' bases."""
    for tp in type(p).__mro__:
        for tq in type(q).__mro__:
            if (tp, tq) in _KL:
                return _KL[tp, tq](p, q)
    raise NotImplementedError(f"No KL(p || q) is implemented for p of type {type(p).__name__} and q of type "
                              f"{type(q).__name__}. Register one with jitorch.distributions.register_kl.")


@register_kl(Normal, Normal)
def _kl_normal_normal(p: Normal, q: Normal) -> Tensor:
    var_ratio = (p.scale / q.scale) ** 2
    t1 = ((p.loc - q.loc) / q.scale) ** 2
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(p: Categorical, q: Categorical) -> Tensor:
    t = p.probs * (p.logits - q.logits)
    t = where(q.probs == 0, math.inf, t)  # p puts mass where q has none: infinite
    t = where(p.probs == 0, 0.0, t)  # 0 log 0 = 0
    return t.sum(-1)


@register_kl(MultivariateNormal, MultivariateNormal)
def _kl_mvn_mvn(p: MultivariateNormal, q: MultivariateNormal) -> Tensor:
    """log det(L_q) - log det(L_p) + (||L_q^-1 L_p||_F^2 + ||L_q^-1 (mu_q - mu_p)||^2 - k) / 2."""
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL-divergence between two Multivariate Normals with different event shapes cannot be "
                         f"computed: {tuple(p.event_shape)} and {tuple(q.event_shape)}")
    p_L, q_L = p._unbroadcasted_scale_tril, q._unbroadcasted_scale_tril
    ratio = _solve_lower_matrix(q_L, p_L)
    mahalanobis = (_solve_lower(q_L, q.loc - p.loc) ** 2).sum(-1)
    return q._half_log_det() - p._half_log_det() + 0.5 * ((ratio ** 2).sum((-2, -1)) + mahalanobis - p.event_shape[0])
