"""Adadelta: a per-coordinate step size from running averages of squared gradients and updates."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from ..tensor import Tensor
from ._common import lazy_state, signed_grad, with_weight_decay
from .optimizer import Optimizer, ParamGroup, check_nonnegative, implementation_flags


class Adadelta(Optimizer):
    """PyTorch's Adadelta: `delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * grad`, `p -= lr * delta`.

        opt = jitorch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.9, weight_decay=1e-4)
    """

    def __init__(self, params: Iterable, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, foreach: bool | None = None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False) -> None:
        check_nonnegative("learning rate", lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonnegative("epsilon value", eps)
        check_nonnegative("weight_decay value", weight_decay)
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        **implementation_flags("Adadelta", capturable=capturable, foreach=foreach,
                                               differentiable=differentiable))
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor) -> dict:
        return lazy_state(self, p, square_avg=None, acc_delta=None)

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        state = self._init_state(p)
        const = functools.partial(group.per_step, dtype=p.dtype)
        state["step"].add_(1)
        grad = with_weight_decay(p, signed_grad(p, group), group)
        rho = const("rho", compute=lambda: group.hyper("rho"))
        one_minus_rho = const("1 - rho", compute=lambda: 1 - group.hyper("rho"))
        eps = const("eps", compute=lambda: group.hyper("eps"))
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        square_avg.mul_(rho).add_(grad * grad * one_minus_rho)
        delta = (acc_delta + eps).sqrt() / (square_avg + eps).sqrt() * grad
        acc_delta.mul_(rho).add_(delta * delta * one_minus_rho)
        p.sub_(delta * const("lr", compute=lambda: group.hyper("lr")))
