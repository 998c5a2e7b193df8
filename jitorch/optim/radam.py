"""RAdam: Adam whose adaptive step is switched on, and rectified, once its variance estimate is reliable."""

from __future__ import annotations

from collections.abc import Iterable

from .. import dtypes as _dt
from ..ops import where
from ..tensor import Tensor
from ._common import begin_update, beta_power, check_betas, lazy_state
from .optimizer import Optimizer, ParamGroup, check_nonnegative, implementation_flags


class RAdam(Optimizer):
    """PyTorch's RAdam, with `decoupled_weight_decay` (RAdamW).

    Whether a step is adaptive (`rho_t > 5`) depends on the step count, which is data: the choice is
    one `where` rather than a Python `if`, so a compiled step takes both early and later steps.

        opt = jitorch.optim.RAdam(model.parameters(), lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False) -> None:
        check_nonnegative("learning rate", lr)
        check_nonnegative("epsilon value", eps)
        check_betas(betas)
        check_nonnegative("weight_decay value", weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay,
                        **implementation_flags("RAdam", foreach=foreach, capturable=capturable,
                                               differentiable=differentiable))
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor) -> dict:
        return lazy_state(self, p, exp_avg=None, exp_avg_sq=None)

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        state = self._init_state(p)
        const, step, grad = begin_update(p, group, state, decoupled=group["decoupled_weight_decay"])
        beta1, beta2 = group.hyper("betas")
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, const("1 - beta1", compute=lambda: 1 - beta1))
        exp_avg_sq.mul_(const("beta2", compute=lambda: beta2)).add_(
            grad * grad * const("1 - beta2", compute=lambda: 1 - beta2))
        beta2_power = beta_power(group, 1, step)
        bias_correction2 = 1 - beta2_power
        # the longest the approximated simple moving average gets
        rho_inf = group.per_step("rho_inf", _dt.float64, lambda: 2 / (1 - beta2) - 1)
        rho_t = rho_inf - 2 * step * beta2_power / bias_correction2
        # NaN while rho_t < 4, where `where` does not pick it
        rectification = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).sqrt()
        adaptive_lr = bias_correction2.sqrt() / (exp_avg_sq.sqrt() + const("eps", compute=lambda: group.hyper("eps")))
        update = where(rho_t > 5.0, adaptive_lr * rectification, 1.0)
        bias_corrected_exp_avg = exp_avg / (1 - beta_power(group, 0, step))
        p.sub_(bias_corrected_exp_avg * group.hyper("lr") * update)
