"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from ..tensor import Tensor
from .optimizer import Optimizer, ParamGroup, check_nonnegative, implementation_flags


class SGD(Optimizer):
    """PyTorch's SGD: `b = momentum * b + (1 - dampening) * g`, `p -= lr * (g + momentum * b | b)`.

    The momentum buffer starts as the first gradient (no dampening on step 1), as in PyTorch.

        opt = jitorch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None) -> None:
        for name, value in (("learning rate", lr), ("momentum value", momentum),
                            ("weight_decay value", weight_decay)):
            check_nonnegative(name, value)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize,
                        **implementation_flags("SGD", foreach=foreach, differentiable=differentiable, fused=fused))
        super().__init__(params, defaults)

    def _update(self, p: Tensor, group: ParamGroup) -> None:
        grad = -p.grad if group["maximize"] else p.grad
        const = functools.partial(group.per_step, dtype=p.dtype)
        # Python values only choose which ops run (a compiled step guards on them: ParamGroup); the numbers
        # themselves come from the group's tensors so that changing them is not a recompile.
        if group.nonzero("weight_decay"):
            grad = grad + p * const("weight_decay", compute=lambda: group.hyper("weight_decay"))
        if group.nonzero("momentum"):
            momentum = const("momentum", compute=lambda: group.hyper("momentum"))
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad * const("1 - dampening", compute=lambda: 1 - group.hyper("dampening")))
            grad = grad + buf * momentum if group["nesterov"] else buf
        p.sub_(grad * const("lr", compute=lambda: group.hyper("lr")))
