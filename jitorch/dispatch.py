"""`dispatch(prim, inputs, params)`: the one door every op goes through.

Eagerly it runs the primitive's numpy kernel (or, on the meta device, only its shape rule) and, when
grad mode is on and an input requires grad, records an autograd node. While a function is being
traced for `jitorch.compile`, the active tracer receives the op instead.
"""

from __future__ import annotations

import numpy as np

from . import autograd as _ag
from .device import meta
from .primitives import Prim

# Primitives whose numpy kernel may return a view of its first input (shared storage).
_VIEW_PRIMS = frozenset({"reshape", "permute", "expand", "getitem", "flip"})


class _TraceState:
    tracer = None  # set by jitorch.compile while it traces


trace_state = _TraceState()


def _meta_array(shape, dtype) -> np.ndarray:
    # A zero-stride stand-in: carries shape and dtype, costs no memory.
    return np.broadcast_to(np.zeros((), dtype), shape)


def _device_error(prim: Prim, inputs) -> RuntimeError:
    devices = ", ".join(sorted({str(t._device) for t in inputs}))
    shapes = ", ".join(f"{tuple(t.shape)} on {t._device}" for t in inputs)
    return RuntimeError(
        f"Expected all tensors to be on the same device, but found at least two devices: {devices} "
        f"(in `{prim.name}` with inputs {shapes}). Move them with .to(device) first."
    )


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
    from .tensor import Tensor

    device = inputs[0]._device
    for t in inputs:
        if t._device is not device:
            raise _device_error(prim, inputs)
    tracer = trace_state.tracer
    if tracer is not None:
        return tracer.record(prim, inputs, params)
    arrays = [t._data for t in inputs]
    if device is meta:
        shape, dtype = prim.infer(*arrays, **params)
        out = Tensor._make(_meta_array(shape, dtype))
        out._device = meta
    else:
        try:
            data = prim.impl(*arrays, **params)
        except (ValueError, IndexError) as err:
            raise _explain_failure(prim, inputs, params, err) from None
        if type(data) is not np.ndarray:
            data = np.asarray(data)
        out = Tensor._make(data)
        if prim.name in _VIEW_PRIMS and data.base is not None and np.may_share_memory(data, arrays[0]):
            src = inputs[0]
            out._ver = src._counter()
            out._base = src if src._base is None else src._base
    if _ag._grad_mode.enabled:
        for t in inputs:
            if t.requires_grad:
                node = _ag.Node(prim, inputs, params, out)
                out.grad_fn = node
                out.requires_grad = True
                break
    return out
