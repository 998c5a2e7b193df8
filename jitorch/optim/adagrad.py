"""Adagrad: divide each coordinate's step by the root of its summed squared gradients."""

from __future__ import annotations

from collections.abc import Iterable

from ..creation import full_like
from ..tensor import Tensor
from ._common import begin_update, lazy_state
from .optimizer import Optimizer, ParamGroup, check_nonnegative, implementation_flags


class Adagrad(Optimizer):
    """PyTorch's Adagrad, with `lr_decay` (`lr / (1 + (step - 1) * lr_decay)`) and an initial
    accumulator value. As in PyTorch the state (`step`, `sum`) exists from construction on, so a
    state dict saved before the first step already holds it.

        opt = jitorch.optim.Adagrad(model.parameters(), lr=1e-2, lr_decay=1e-4, initial_accumulator_value=0.1)
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None) -> None:
        for name, value in (("learning rate", lr), ("lr_decay value", lr_decay),
                            ("weight_decay value", weight_decay),
                            ("initial_accumulator_value value", initial_accumulator_value),
                            ("epsilon value", eps)):
            check_nonnegative(name, value)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize,
                        **implementation_flags("Adagrad", foreach=foreach, differentiable=differentiable,
                                               fused=fused))
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)

    def _init_state(self, p: Tensor) -> dict:
        # the constructor's value, as PyTorch (a group's own `initial_accumulator_value` is ignored)
        return lazy_state(self, p, sum=lambda: full_like(p, self.defaults["initial_accumulator_value"]))

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        state = self._init_state(p)
        const, step, grad = begin_update(p, group, state)
        decayed_lr = group.hyper("lr") / (1 + (step - 1) * group.hyper("lr_decay"))
        state_sum = state["sum"]
        state_sum.add_(grad * grad)
        std = state_sum.sqrt() + const("eps", compute=lambda: group.hyper("eps"))
        p.sub_(grad / std * decayed_lr)
