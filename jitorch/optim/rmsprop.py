"""RMSprop, with momentum, centering and weight decay."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from ..creation import zeros_like
from ..tensor import Tensor
from .optimizer import Optimizer, ParamGroup, check_nonnegative, implementation_flags


class RMSprop(Optimizer):
    """PyTorch's RMSprop: divide the gradient by a running root-mean-square of recent gradients.

        opt = jitorch.optim.RMSprop(model.parameters(), lr=1e-2, alpha=0.99, momentum=0.9, centered=True)
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False) -> None:
        for name, value in (("learning rate", lr), ("epsilon value", eps), ("momentum value", momentum),
                            ("weight_decay value", weight_decay), ("alpha value", alpha)):
            check_nonnegative(name, value)
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize,
                        **implementation_flags("RMSprop", capturable=capturable, foreach=foreach,
                                               differentiable=differentiable))
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: ParamGroup) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = self._step_count(p)
            state["square_avg"] = zeros_like(p)
            if group.nonzero("momentum"):
                state["momentum_buffer"] = zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = zeros_like(p)
        return state

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        state = self._init_state(p, group)
        grad = -p.grad if group["maximize"] else p.grad
        alpha = group.hyper("alpha")
        const = functools.partial(group.per_step, dtype=p.dtype)
        state["step"].add_(1)
        if group.nonzero("weight_decay"):
            grad = grad + p * const("weight_decay", compute=lambda: group.hyper("weight_decay"))
        square_avg = state["square_avg"]
        one_minus_alpha = const("1 - alpha", compute=lambda: 1 - alpha)
        square_avg.mul_(const("alpha", compute=lambda: alpha)).add_(grad * grad * one_minus_alpha)
        if group["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg.lerp_(grad, one_minus_alpha)
            avg = (square_avg - grad_avg * grad_avg).sqrt()
        else:
            avg = square_avg.sqrt()
        avg = avg + const("eps", compute=lambda: group.hyper("eps"))
        lr = const("lr", compute=lambda: group.hyper("lr"))
        if group.nonzero("momentum"):
            buf = state["momentum_buffer"]
            buf.mul_(const("momentum", compute=lambda: group.hyper("momentum"))).add_(grad / avg)
            p.sub_(buf * lr)
        else:
            p.sub_(grad / avg * lr)
