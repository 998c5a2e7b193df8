"""Adam and AdamW (decoupled weight decay), with AMSGrad and maximize."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from .. import dtypes as _dt
from ..creation import zeros_like
from ..ops import maximum
from ..tensor import Tensor
from .optimizer import Optimizer, ParamGroup, check_nonnegative, implementation_flags


class Adam(Optimizer):
    """PyTorch's Adam. Bias corrections are computed from the step-count tensor and the beta tensors,
    so a compiled step reads them as data rather than baking in Python floats.

        opt = jitorch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), amsgrad=True)
        opt = jitorch.optim.Adam(model.parameters(), fused=True)  # the update as one compiled program
    """

    always_decoupled = False  # AdamW: decoupled whatever a loaded state dict says, as in PyTorch

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        check_nonnegative("learning rate", lr)
        check_nonnegative("epsilon value", eps)
        check_nonnegative("weight_decay value", weight_decay)
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        flags = implementation_flags(type(self).__name__, foreach=foreach, capturable=capturable,
                                     differentiable=differentiable, fused=fused)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, **flags)
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: ParamGroup) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = self._step_count(p)
            state["exp_avg"] = zeros_like(p)
            state["exp_avg_sq"] = zeros_like(p)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = zeros_like(p)
        return state

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        state = self._init_state(p, group)
        grad = -p.grad if group["maximize"] else p.grad
        lr = group.hyper("lr")
        beta1, beta2 = group.hyper("betas")
        const = functools.partial(group.per_step, dtype=p.dtype)
        step = state["step"]
        step.add_(1)
        if group.nonzero("weight_decay"):
            weight_decay = group.hyper("weight_decay")
            if self.always_decoupled or group.get("decoupled_weight_decay", False):  # AdamW's rule
                p.mul_(const("1 - lr * weight_decay", compute=lambda: 1 - lr * weight_decay))
            else:
                grad = grad + p * const("weight_decay", compute=lambda: weight_decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, const("1 - beta1", compute=lambda: 1 - beta1))
        exp_avg_sq.mul_(const("beta2", compute=lambda: beta2)).add_(
            grad * grad * const("1 - beta2", compute=lambda: 1 - beta2))
        # beta ** step as exp(step * log(beta)), in float64: the same value to within a few ulps, from
        # ops that every fusing backend renders (the GPU's kernels take no float64 pow), so a compiled
        # update's bias corrections are one small kernel beside its parameters' own
        log_beta1 = group.per_step("log beta1", _dt.float64, compute=lambda: beta1.log())
        log_beta2 = group.per_step("log beta2", _dt.float64, compute=lambda: beta2.log())
        step_size = lr / (1 - (step * log_beta1).exp())
        bias_correction2_sqrt = (1 - (step * log_beta2).exp()).sqrt()
        second_moment = exp_avg_sq
        if group["amsgrad"]:
            second_moment = state["max_exp_avg_sq"]
            second_moment.copy_(maximum(second_moment, exp_avg_sq))
        denom = second_moment.sqrt() / bias_correction2_sqrt + const("eps", compute=lambda: group.hyper("eps"))
        p.sub_(exp_avg / denom * step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay: `p *= 1 - lr * weight_decay` before the Adam update
    (`Adam(..., decoupled_weight_decay=True)`)."""

    always_decoupled = True

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)
