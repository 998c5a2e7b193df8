"""`dispatch(prim, inputs, params)`: the one door every op goes through.

Eagerly it runs the primitive's numpy kernel (or, on the meta device, only its shape rule) and, when
grad mode is on and an input requires grad, records an autograd node. While a function is being
traced for `jitorch.compile`, the active tracer receives the op instead.
"""

from __future__ import annotations

import numpy as np

from . import autograd as _ag
from ._trace_state import trace_state
from .device import cpu, meta
from .dtypes import FLOAT_DTYPES
from .primitives import VIEW_PRIMS, Prim
from .tensor import Tensor

_grad_mode = _ag._grad_mode
_FLOAT_NP = frozenset(d.np for d in FLOAT_DTYPES)
_new = object.__new__


def meta_array(shape, dtype) -> np.ndarray:
    # A zero-stride stand-in: carries shape and dtype, costs no memory.
    return np.broadcast_to(np.zeros((), dtype), shape)


def _device_error(prim: Prim, inputs) -> RuntimeError:
    devices = ", ".join(sorted({str(t._device) for t in inputs}))
    shapes = ", ".join(f"{tuple(t.shape)} on {t._device}" for t in inputs)
    return RuntimeError(
        f"Expected all tensors to be on the same device, but found at least two devices: {devices} "
        f"(in `{prim.name}` with inputs {shapes}). Move them with .to(device) first."
    )


def _check_devices(prim: Prim, inputs) -> None:
    device = inputs[0]._device
    for t in inputs:
        if t._device is not device:
            raise _device_error(prim, inputs)
        if t._value is not None and trace_state.tracer is None:
            from .ir.trace import escaped_error

            raise escaped_error(t, prim.name)


def _explain_failure(prim: Prim, inputs, params, err: Exception) -> Exception:
    """Turn a numpy error into one that names the op, shapes and dtypes."""
    try:
        prim.infer(*[t._data for t in inputs], **params)
    except (ValueError, IndexError, TypeError) as rule_err:
        return type(rule_err)(f"{prim.name}: {rule_err}")
    shapes = ", ".join(f"{tuple(t.shape)} {t.dtype.name}" for t in inputs)
    return type(err)(f"{prim.name} failed on inputs [{shapes}]: {err}")


def dispatch(prim: Prim, inputs: tuple, params: dict):
    """Run primitive `prim` on Tensors `inputs` with static `params`; returns a Tensor."""
    if trace_state.tracer is not None:
        _check_devices(prim, inputs)
        return trace_state.tracer.record(prim, inputs, params)
    device = inputs[0]._device
    for t in inputs:
        if t._device is not device or t._value is not None:
            _check_devices(prim, inputs)
    arrays = [t._data for t in inputs]
    if device is not cpu:
        return _dispatch_meta(prim, inputs, arrays, params)
    try:
        data = prim.impl(*arrays, **params)
    except (ValueError, IndexError) as err:
        raise _explain_failure(prim, inputs, params, err) from None
    if type(data) is not np.ndarray:
        data = np.asarray(data)
    out = _new(Tensor)
    out._data = data
    if prim.name in VIEW_PRIMS and data.base is not None and np.may_share_memory(data, arrays[0]):
        src = inputs[0]
        out._ver = src._counter()
        out._base = src if src._base is None else src._base
    if _grad_mode.enabled and data.dtype in _FLOAT_NP:  # integer and bool results have no gradient
        for t in inputs:
            if t.requires_grad:
                _record(prim, inputs, params, out)
                break
    return out


def _record(prim: Prim, inputs: tuple, params: dict, out: Tensor) -> None:
    out.grad_fn = _ag.Node(prim, inputs, params, out)
    out.requires_grad = True


def _dispatch_meta(prim: Prim, inputs: tuple, arrays: list, params: dict) -> Tensor:
    shape, dtype = prim.infer(*arrays, **params)
    out = Tensor._make(meta_array(shape, dtype))
    out._device = meta
    if _grad_mode.enabled and np.dtype(dtype) in _FLOAT_NP and any(t.requires_grad for t in inputs):
        _record(prim, inputs, params, out)
    return out
