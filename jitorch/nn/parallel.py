"""`jitorch.nn.parallel`: PyTorch's wrappers for training on several devices, as far as one device goes.

Scripts import these unconditionally and use them only when several GPUs or processes are there
(nanoGPT, pytorch/examples' dcgan). `DataParallel` over one device runs its module as it is, as
PyTorch's does; more than one device, or `DistributedDataParallel`, needs training across devices,
which jitorch does not do yet: those raise saying so, and what to run instead.
"""

from __future__ import annotations

from .modules.module import Module


class DataParallel(Module):
    """`module` run as it is: PyTorch's DataParallel on at most one device. Its state dict keys carry
    the `module.` prefix, as PyTorch's, so checkpoints move between the two."""

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0) -> None:
        super().__init__()
        if device_ids is not None and len(list(device_ids)) > 1:
            raise RuntimeError(f"DataParallel over devices {list(device_ids)}: jitorch trains on one device; pass "
                               "device_ids=None (or one device), or run the module without the wrapper")
        self.module = module
        self.dim = dim

    def forward(self, *inputs, **kwargs):
        return self.module(*inputs, **kwargs)


class DistributedDataParallel(Module):
    """PyTorch's DDP: jitorch does not train across processes yet, so making one raises, naming what to do."""

    def __init__(self, module: Module, *args, **kwargs) -> None:
        raise RuntimeError("DistributedDataParallel: jitorch does not train across processes yet (no process "
                           "group can be initialized). Run the script as one process, without torchrun or RANK "
                           "in the environment, and without wrapping the model.")


__all__ = ["DataParallel", "DistributedDataParallel"]
