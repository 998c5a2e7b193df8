"""`jitorch.amp.GradScaler`, as PyTorch's: loss scaling for float16 training.

    scaler = jitorch.amp.GradScaler("cuda")
    with jitorch.autocast("cuda", dtype=jitorch.float16):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()   # gradients of loss * scale: small ones survive float16
    scaler.step(optimizer)          # unscales them; skips the update where one is inf or NaN
    scaler.update()                 # halves the scale after a skip; doubles it after growth_interval good steps

Unlike PyTorch's, `step` never reads the inf/NaN check on the host: the optimizer's update runs and
keeps the old values where the check failed (`Optimizer._step_unless`), and `update` adjusts the
scale with tensor ops, so a training step compiled with `jitorch.compile` around all of this needs
no `.item()` and traces once, whether steps are skipped or not. The scale, the growth tracker and
each check are 0-d float32 tensors on the gradients' device.
"""

from __future__ import annotations

import enum
import warnings
from collections import defaultdict
from typing import Any

from .. import dtypes as _dt
from .._trace_state import trace_state
from ..autograd import no_grad
from ..creation import full, zeros
from ..dispatch import fuses_composites
from ..ops import where
from ..tensor import Tensor


class _Stage(enum.Enum):
    READY = 0
    UNSCALED = 1
    STEPPED = 2


class GradScaler:
    """PyTorch's `torch.amp.GradScaler(device, init_scale, growth_factor, backoff_factor,
    growth_interval, enabled)` (see the module docstring). On a device type without a backend
    (cuda without a GPU), it warns and disables itself, as PyTorch's does."""

    def __init__(self, device: str = "cuda", init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True) -> None:
        self._device = str(device)
        if enabled and self._device.startswith("cuda"):
            from .. import cuda

            if not cuda.is_available():
                warnings.warn("torch.cuda.amp.GradScaler is enabled, but CUDA is not available.  Disabling.",
                              UserWarning, stacklevel=2)
                enabled = False
        if enabled:
            if growth_factor <= 1.0:
                raise ValueError("The growth factor must be > 1.0.")
            if backoff_factor >= 1.0:
                raise ValueError("The backoff factor must be < 1.0.")
        self._enabled = enabled
        self._init_scale, self._growth_factor, self._backoff_factor = init_scale, growth_factor, backoff_factor
        self._growth_interval = growth_interval
        self._init_growth_tracker = 0
        self._scale: Tensor | None = None  # made on the device of the first outputs scaled
        self._growth_tracker: Tensor | None = None
        self._per_optimizer: defaultdict[int, dict[str, Any]] = defaultdict(_fresh_state)
        self._unscale_compiled = None  # `_unscale_grads` compiled, where each op is a launch (the GPU)

    # --- scaling ----------------------------------------------------------------------------------
    def scale(self, outputs):
        """`outputs` (a tensor, or lists and tuples of them) times the scale."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            self._lazy_init(outputs.device)
            return outputs * self._scale.to(outputs.device)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise ValueError("outputs must be a Tensor or an iterable of Tensors")

    def _lazy_init(self, device) -> None:
        if self._scale is None:
            self._scale = full((), self._init_scale, dtype=_dt.float32, device=device)
            self._growth_tracker = full((), self._init_growth_tracker, dtype=_dt.float32, device=device)

    @no_grad()
    def unscale_(self, optimizer) -> None:
        """Divide the optimizer's gradients by the scale, in place, and note on the device whether
        one of them is inf or NaN (once per optimizer between two `update`s)."""
        if not self._enabled:
            return
        if self._scale is None:
            raise RuntimeError("unscale_() was called before scale(): there is no scale yet.")
        state = self._per_optimizer[id(optimizer)]
        if state["stage"] is _Stage.UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if state["stage"] is _Stage.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if any(g.dtype == _dt.float16 for g in grads):
            raise ValueError("Attempting to unscale FP16 gradients.")
        inv_scale = (1.0 / self._scale.to(_dt.float64)).to(_dt.float32)
        if trace_state.tracer is None and grads and fuses_composites(*grads):
            # one compiled program (a few launches: grouped kernels), as the optimizer's update runs
            # where each op is a launch; traced inline inside a compiled step
            if self._unscale_compiled is None:
                from ..compiler import compile

                self._unscale_compiled = compile(_unscale_grads, name="GradScaler.unscale_")
            found = self._unscale_compiled(grads, inv_scale)
        else:
            found = _unscale_grads(grads, inv_scale)
        state["found_inf"] = found
        state["stage"] = _Stage.UNSCALED

    def step(self, optimizer, *args, **kwargs):
        """`optimizer.step()` unless a gradient is inf or NaN (unscaling first if `unscale_` was not
        called), decided on the device."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs or args:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        state = self._per_optimizer[id(optimizer)]
        if state["stage"] is _Stage.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if state["stage"] is _Stage.READY:
            self.unscale_(optimizer)
        optimizer._step_unless(state["found_inf"])
        state["stage"] = _Stage.STEPPED
        return None

    @no_grad()
    def update(self, new_scale: float | Tensor | None = None) -> None:
        """The next scale: `new_scale` where given; else halved (`backoff_factor`) if this step found
        an inf or NaN, multiplied by `growth_factor` after `growth_interval` steps without one."""
        if not self._enabled:
            return
        if new_scale is not None:
            value = new_scale if isinstance(new_scale, Tensor) else full((), float(new_scale), dtype=_dt.float32)
            self._scale.copy_(value)
        else:
            checks = [s["found_inf"] for s in self._per_optimizer.values() if "found_inf" in s]
            if not checks:
                raise RuntimeError("No inf checks were recorded prior to update.")
            found = checks[0].to(self._scale.device)
            for check in checks[1:]:
                found = found + check.to(self._scale.device)
            bad = found > 0
            tracker = where(bad, 0.0, self._growth_tracker + 1)
            grow = tracker >= self._growth_interval
            scale = where(bad, self._scale * self._backoff_factor,
                          where(grow, self._scale * self._growth_factor, self._scale))
            self._scale.copy_(scale)
            self._growth_tracker.copy_(where(grow, 0.0, tracker))
        self._per_optimizer = defaultdict(_fresh_state)

    # --- reading and saving -----------------------------------------------------------------------
    def get_scale(self) -> float:
        """The current scale as a Python float (reads the device)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else float(self._scale.item())

    def is_enabled(self) -> bool:
        return self._enabled

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = new_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = new_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = new_interval

    def _get_growth_tracker(self) -> int:
        return self._init_growth_tracker if self._growth_tracker is None else int(self._growth_tracker.item())

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's keys: scale, growth_factor, backoff_factor, growth_interval, _growth_tracker
        (empty where disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._get_growth_tracker()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved from a disabled "
                               "instance of GradScaler.")
        self._init_scale = state_dict["scale"]
        if self._scale is not None:
            self._scale.fill_(state_dict["scale"])
        self._growth_factor = state_dict["growth_factor"]
        self._backoff_factor = state_dict["backoff_factor"]
        self._growth_interval = state_dict["growth_interval"]
        self._init_growth_tracker = state_dict["_growth_tracker"]
        if self._growth_tracker is not None:
            self._growth_tracker.fill_(state_dict["_growth_tracker"])


def _fresh_state() -> dict[str, Any]:
    return {"stage": _Stage.READY}


def _unscale_grads(grads: list[Tensor], inv_scale: Tensor) -> Tensor:
    """Multiply each gradient by `inv_scale` in place; 1.0 where one of them held an inf or NaN, else
    0.0 (a 0-d float32 tensor on the scale's device)."""
    found = zeros((), dtype=_dt.float32, device=inv_scale.device)
    for grad in grads:
        found = found + (~grad.isfinite()).any().to(_dt.float32).to(found.device)
        grad.mul_(inv_scale.to(grad.device))
    return (found > 0).to(_dt.float32)
