"""`jitorch.cuda.amp`: PyTorch's older spellings of mixed precision on cuda, kept because real code
still writes them (`from torch.cuda.amp import autocast, GradScaler`): each is the `jitorch.amp`
one with the device type fixed to "cuda", as PyTorch's deprecated aliases are."""

from __future__ import annotations

from .. import amp
from .. import dtypes as _dt


class autocast(amp.autocast):  # noqa: N801 - PyTorch's name
    """`jitorch.amp.autocast("cuda", ...)`: PyTorch's `torch.cuda.amp.autocast(enabled, dtype, cache_enabled)`."""

    def __init__(self, enabled: bool = True, dtype=_dt.float16, cache_enabled: bool = True) -> None:
        super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


class GradScaler(amp.GradScaler):
    """`jitorch.amp.GradScaler("cuda", ...)`: PyTorch's `torch.cuda.amp.GradScaler(init_scale, ...)`."""

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        super().__init__("cuda", init_scale=init_scale, growth_factor=growth_factor, backoff_factor=backoff_factor,
                         growth_interval=growth_interval, enabled=enabled)


__all__ = ["GradScaler", "autocast"]
