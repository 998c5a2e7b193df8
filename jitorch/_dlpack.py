"""bfloat16 through DLPack. numpy (jitorch's CPU storage) exchanges only the dtypes it knows, and
bfloat16 is not one of them, so jitorch moves bfloat16 data as 16-bit unsigned integers and
rewrites the dtype code in the DLPack capsule: to bfloat16 on the way out, from it on the way in.
The bits are the same; only the tag changes."""

from __future__ import annotations

import ctypes

import numpy as np

_KDL_UINT = 1
_KDL_BFLOAT = 4


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                ("ndim", ctypes.c_int32), ("dtype", _DLDataType)]


class _DLManagedTensorVersioned(ctypes.Structure):
    # DLPack >= 1.0: a version header, manager context, deleter and flags come before the tensor
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.restype = ctypes.c_char_p
_get_name.argtypes = [ctypes.py_object]
_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _retag(capsule, old: int, new: int):
    """Change a capsule's 16-bit dtype code from `old` to `new` (in place); return the capsule."""
    name = _get_name(capsule)
    address = _get_pointer(capsule, name)
    if name == b"dltensor_versioned":
        dtype = _DLManagedTensorVersioned.from_address(address).dl_tensor.dtype
    else:  # legacy DLManagedTensor: the DLTensor comes first
        dtype = _DLTensor.from_address(address).dtype
    if dtype.code == old and dtype.bits == 16:
        dtype.code = new
    return capsule


def export_bfloat16(data: np.ndarray, **kwargs):
    """A DLPack capsule for a bfloat16 numpy array."""
    return _retag(data.view(np.uint16).__dlpack__(**kwargs), _KDL_UINT, _KDL_BFLOAT)


class _AsUInt16:
    """Presents another library's bfloat16 DLPack export to numpy as uint16."""

    def __init__(self, ext) -> None:
        self.ext = ext

    def __dlpack__(self, **kwargs):
        return _retag(self.ext.__dlpack__(**kwargs), _KDL_BFLOAT, _KDL_UINT)

    def __dlpack_device__(self):
        return self.ext.__dlpack_device__()


def import_bfloat16(ext) -> np.ndarray:
    """A numpy bfloat16 array sharing memory with a bfloat16 DLPack producer."""
    from .dtypes import bfloat16

    return np.from_dlpack(_AsUInt16(ext)).view(bfloat16.np)
