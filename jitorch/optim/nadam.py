"""NAdam: Adam with Nesterov momentum, its momentum warmed up by `momentum_decay`."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .. import dtypes as _dt
from ..tensor import Tensor
from ._common import begin_update, beta_power, check_betas, lazy_state, scalar_state
from .optimizer import Optimizer, ParamGroup, check_nonnegative, implementation_flags

_LOG_096 = math.log(0.96)  # the paper's momentum schedule: mu_t = beta1 * (1 - 0.5 * 0.96 ** (t * decay))


class NAdam(Optimizer):
    """PyTorch's NAdam, with `momentum_decay` and `decoupled_weight_decay` (NAdamW). The product of
    the momentum schedule is per-parameter state (`mu_product`), as in PyTorch.

        opt = jitorch.optim.NAdam(model.parameters(), lr=2e-3, momentum_decay=4e-3)
    """

    def __init__(self, params: Iterable, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False) -> None:
        check_nonnegative("learning rate", lr)
        check_nonnegative("epsilon value", eps)
        check_betas(betas)
        check_nonnegative("weight_decay value", weight_decay)
        check_nonnegative("momentum_decay value", momentum_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize,
                        **implementation_flags("NAdam", foreach=foreach, capturable=capturable,
                                               differentiable=differentiable))
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor) -> dict:
        return lazy_state(self, p, mu_product=lambda: scalar_state(self, p, 1.0), exp_avg=None, exp_avg_sq=None)

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        state = self._init_state(p)
        const, step, grad = begin_update(p, group, state, decoupled=group["decoupled_weight_decay"])
        lr, (beta1, beta2) = group.hyper("lr"), group.hyper("betas")
        decay_log = group.per_step("momentum_decay * log 0.96", _dt.float64,
                                   lambda: group.hyper("momentum_decay") * _LOG_096)
        mu = beta1 * (1 - 0.5 * (step * decay_log).exp())
        mu_next = beta1 * (1 - 0.5 * ((step + 1) * decay_log).exp())
        mu_product = state["mu_product"]
        mu_product.mul_(mu)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, const("1 - beta1", compute=lambda: 1 - beta1))
        exp_avg_sq.mul_(const("beta2", compute=lambda: beta2)).add_(
            grad * grad * const("1 - beta2", compute=lambda: 1 - beta2))
        bias_correction2 = 1 - beta_power(group, 1, step)
        denom = (exp_avg_sq / bias_correction2).sqrt() + const("eps", compute=lambda: group.hyper("eps"))
        p.sub_(grad / denom * (lr * (1 - mu) / (1 - mu_product)))
        p.sub_(exp_avg / denom * (lr * mu_next / (1 - mu_product * mu_next)))
