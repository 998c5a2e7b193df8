"""The meta device: tensors with a shape and a dtype and no data, as in PyTorch. Its "kernels" are
the primitives' shape rules, its buffers zero-stride numpy stand-ins that cost no memory."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import BackendError
from ..ir.graph import abstract_array
from ..primitives import PRIMS
from . import Backend, register

meta_array = abstract_array  # a meta tensor's buffer: shape and dtype, no data


def _shape_only(infer: Callable) -> Callable:
    def kernel(*arrays, **params):
        shape, dtype = infer(*arrays, **params)
        return meta_array(shape, dtype)

    return kernel


class MetaBackend(Backend):
    device_type = "meta"
    kernels = {name: _shape_only(prim.infer) for name, prim in PRIMS.items()}

    def empty(self, shape, dtype) -> np.ndarray:
        return meta_array(shape, dtype)

    def copy(self, array: np.ndarray) -> np.ndarray:
        return array

    def copy_into(self, dst, src) -> None:
        pass  # nothing to write: a meta tensor has no data

    def add_into(self, dst, src) -> None:
        pass

    def owns_buffer(self, array) -> bool:
        return False

    def to_numpy(self, array):
        raise BackendError("a tensor on the meta device has no data to read")

    def as_buffer(self, value) -> np.ndarray:
        return np.asarray(value)

    def is_view_of(self, out, src) -> bool:
        return False  # nothing to share: writes to a meta tensor write nothing

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return meta_array(array.shape, array.dtype)


register(MetaBackend())
