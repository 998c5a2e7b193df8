"""Pieces of update math that several optimizers share: one definition each, read as data.

Every function here takes a `ParamGroup` and reads hyperparameters through `group.hyper` and
`group.per_step`, so an update built from them runs unchanged eagerly, as the fused update and
inside a `jitorch.compile`d training step (see `optimizer.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from .. import dtypes as _dt
from ..creation import zeros_like
from ..tensor import Tensor
from .optimizer import Optimizer, ParamGroup


def check_betas(betas: Sequence[float]) -> None:
    """Raise PyTorch's ValueError for a beta outside [0, 1)."""
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def signed_grad(p: Tensor, group: ParamGroup) -> Tensor:
    """The gradient to descend along: negated under `maximize=True`."""
    return -p.grad if group["maximize"] else p.grad


def with_weight_decay(p: Tensor, grad: Tensor, group: ParamGroup, decoupled: bool = False) -> Tensor:
    """Apply the group's weight decay: L2 (`grad + weight_decay * p`, returned) or, `decoupled`,
    AdamW's rule (`p *= 1 - lr * weight_decay` in place, `grad` returned unchanged). Zero weight
    decay is a switch (`ParamGroup.nonzero`): no ops at all."""
    if not group.nonzero("weight_decay"):
        return grad
    weight_decay = group.hyper("weight_decay")
    if decoupled:
        p.mul_(group.per_step("1 - lr * weight_decay", p.dtype,
                              lambda: 1 - group.hyper("lr") * weight_decay))
        return grad
    return grad + p * group.per_step("weight_decay", p.dtype, lambda: weight_decay)


def beta_power(group: ParamGroup, index: int, step: Tensor) -> Tensor:
    """`betas[index] ** step` in float64, as `exp(step * log(beta))`: ops every fusing backend
    renders (GPU kernels take no float64 pow), within a few ulps of the power (as `Adam`)."""
    beta = group.hyper("betas")[index]
    log_beta = group.per_step(f"log beta{index + 1}", _dt.float64, lambda: beta.log())
    return (step * log_beta).exp()


def scalar_state(optimizer: Optimizer, p: Tensor, value: float) -> Tensor:
    """A 0-d per-parameter state value (NAdam's `mu_product`) placed and typed as the step count
    is (`Optimizer._step_count`), so that it lives wherever the update reads it."""
    return optimizer._step_count(p).fill_(value)


def lazy_state(optimizer: Optimizer, p: Tensor, **buffers: Callable[[], Tensor] | None) -> dict:
    """`p`'s state, made on its first use as PyTorch's optimizers make it (so state dicts list the
    same keys in the same order): the step count, then each named buffer, zeros like `p` where no
    maker is given."""
    state = optimizer.state[p]
    if not state:
        state["step"] = optimizer._step_count(p)
        for name, make in buffers.items():
            state[name] = zeros_like(p) if make is None else make()
    return state


def begin_update(p: Tensor, group: ParamGroup, state: dict, decoupled: bool = False
                 ) -> tuple[Callable, Tensor, Tensor]:
    """What every Adam-family update starts with: (`const`, the group's per-step constants in p's
    dtype; the step count, advanced; the gradient, signed for `maximize` and with the group's weight
    decay applied, `decoupled` as AdamW's)."""
    step = state["step"]
    step.add_(1)
    grad = with_weight_decay(p, signed_grad(p, group), group, decoupled=decoupled)
    return functools.partial(group.per_step, dtype=p.dtype), step, grad
