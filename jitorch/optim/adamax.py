"""Adamax: Adam with the infinity norm of past gradients in place of their root mean square."""

from __future__ import annotations

from collections.abc import Iterable

from ..ops import maximum
from ..tensor import Tensor
from ._common import begin_update, beta_power, check_betas, lazy_state
from .optimizer import Optimizer, ParamGroup, check_nonnegative, implementation_flags


class Adamax(Optimizer):
    """PyTorch's Adamax: `exp_inf = max(beta2 * exp_inf, |grad| + eps)`,
    `p -= lr / (1 - beta1 ** step) * exp_avg / exp_inf`.

        opt = jitorch.optim.Adamax(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    """

    def __init__(self, params: Iterable, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False) -> None:
        check_nonnegative("learning rate", lr)
        check_nonnegative("epsilon value", eps)
        check_betas(betas)
        check_nonnegative("weight_decay value", weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize,
                        **implementation_flags("Adamax", foreach=foreach, differentiable=differentiable,
                                               capturable=capturable))
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor) -> dict:
        return lazy_state(self, p, exp_avg=None, exp_inf=None)

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        state = self._init_state(p)
        const, step, grad = begin_update(p, group, state)
        beta1, beta2 = group.hyper("betas")
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        exp_avg.lerp_(grad, const("1 - beta1", compute=lambda: 1 - beta1))
        exp_inf.copy_(maximum(exp_inf * const("beta2", compute=lambda: beta2),
                              grad.abs() + const("eps", compute=lambda: group.hyper("eps"))))
        step_size = group.hyper("lr") / (1 - beta_power(group, 0, step))
        p.sub_(exp_avg / exp_inf * step_size)
