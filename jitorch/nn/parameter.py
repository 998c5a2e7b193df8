"""`Parameter`: a leaf Tensor that a Module registers as trainable."""

from __future__ import annotations

import numpy as np

from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that is a module parameter: a leaf with `requires_grad=True` by default.

    `Parameter(jitorch.randn(3, 4))` shares the tensor's storage, as PyTorch does.
    """

    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True) -> Parameter:
        if data is None:
            arr = np.zeros((0,), dtype=np.float32)
            device = None
        elif isinstance(data, Tensor):
            arr, device = data._data, data._device
        else:
            raise TypeError(f"Parameter expects a jitorch Tensor, got {type(data).__name__}")
        p = object.__new__(cls)
        p._data = arr
        if device is not None:
            p._device = device
        if requires_grad:
            p.requires_grad_(True)
        return p

    def __init__(self, data: Tensor | None = None, requires_grad: bool = True) -> None:
        pass  # all set in __new__ (object's __init__ would refuse the arguments)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo) -> Parameter:
        out = Parameter(Tensor._make(self._backend().copy(self._data)), self.requires_grad)
        out._device = self._device
        if self.grad is not None:
            out.grad = self.grad.__deepcopy__(memo)
        memo[id(self)] = out
        return out


class Buffer(Tensor):
    """Marks a tensor as a module buffer when assigned as an attribute (`self.x = Buffer(t)`)."""

    def __new__(cls, data: Tensor, persistent: bool = True) -> Buffer:
        b = object.__new__(cls)
        b._data = data._data
        b._device = data._device
        b.persistent = persistent
        return b

    def __init__(self, data: Tensor, persistent: bool = True) -> None:
        pass
