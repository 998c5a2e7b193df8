"""`dispatch(prim, inputs, params)`: the one door every op goes through.

Eagerly it runs the primitive's kernel from the backend of the inputs' device (`jitorch.backends`:
numpy on the CPU; on the meta device, only the shape rule) and, when grad mode is on and an input
requires grad, records an autograd node. While a function is being traced for `jitorch.compile`,
the active tracer receives the op instead.
"""

from __future__ import annotations

from . import autograd as _ag
from ._trace_state import trace_state
from .backends import backend_for
from .device import cpu
from .dtypes import FLOAT_DTYPES
from .errors import BackendError, escaped_error
from .primitives import VIEW_PRIMS, Prim
from .tensor import VIEW_GRAD, VIEW_NO_GRAD, Tensor, view_record

_grad_mode = _ag._grad_mode
_FLOAT_NP = frozenset(d.np for d in FLOAT_DTYPES)
_new = object.__new__


def _device_error(prim: Prim, inputs, first, second) -> RuntimeError:
    shapes = ", ".join(f"{tuple(t.shape)} on {t._device}" for t in inputs)
    return RuntimeError(
        f"Expected all tensors to be on the same device, but found at least two devices, {first} and {second}! "
        f"(in `{prim.name}` with inputs {shapes}). Move them with .to(device) first."
    )


def common_device(prim: Prim, inputs):
    """The device an op on `inputs` runs on. They must share one, except that a 0-d CPU tensor may
    join tensors of another device as a scalar, as in PyTorch (an optimizer's hyperparameters)."""
    device = None
    for t in inputs:
        if t._value is not None and trace_state.tracer is None:
            raise escaped_error(t, prim.name)
        if t._device is cpu and not t._data.shape:
            continue
        if device is None:
            device = t._device
        elif t._device is not device:
            raise _device_error(prim, inputs, device, t._device)
    return device if device is not None else cpu


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
        return trace_state.tracer.record(prim, inputs, params, common_device(prim, inputs))
    device = inputs[0]._device
    for t in inputs:
        if t._device is not device or t._value is not None:
            device = common_device(prim, inputs)
            break
    backend = _backends.get(device) or _backend_of(device)
    arrays = [t._data for t in inputs]
    try:
        data = backend.kernels[prim.name](*arrays, **params)
    except (ValueError, IndexError) as err:
        raise _explain_failure(prim, inputs, params, err) from None
    except KeyError:
        if prim.name in backend.kernels:
            raise
        raise BackendError(f"`{prim.name}` has no kernel on device {device} (inputs "
                           + ", ".join(f"{tuple(t.shape)} {t.dtype.name}" for t in inputs) + ")") from None
    if type(data) is not backend.buffer_type:
        data = backend.as_buffer(data)
    out = _new(Tensor)
    out._data = data
    if device is not cpu:
        out._device = device
    if prim.name in VIEW_PRIMS and backend.is_view_of(data, arrays[0]):
        src = inputs[0]
        counter = out._ver = src._counter()
        # how autograd makes it again from its base (as `tensor.view_record`, inline: views are common)
        if src._base is None:
            out._base = src
            out._view_of = (src, ((prim, params),), VIEW_GRAD if _grad_mode.enabled else VIEW_NO_GRAD)
            if counter.history:
                out._hist = counter.history
        else:
            out._base = src._base
            view_record(src, prim, params, out)
    if _grad_mode.enabled and data.dtype in _FLOAT_NP:  # integer and bool results have no gradient
        for t in inputs:
            # (a view whose base was written in place since it was made remakes its history first)
            if t.requires_grad or (t._base is not None and t._hist != t._ver.history and t._refresh_history()):
                _record(prim, inputs, params, out)
                break
    return out


_backends: dict = {}  # device -> its backend, looked up once


def fuses_composites(*tensors) -> bool:
    """Whether an eager composite over `tensors` (None entries: absent optional tensors) runs as a
    cached compiled function (`jitorch.compiler.composites`): no tracer is active, the tensors share
    one device and its backend says `fuses_eager_composites` (the GPU's does, the CPU's does not).
    Anything else (mixed devices, a tensor leaked from a trace) takes the plain path, which raises
    the usual error. Called on every such op: it costs about as much as one attribute lookup per tensor."""
    if trace_state.tracer is not None:
        return False
    device = tensors[0]._device
    for t in tensors:
        if t is not None and (t._device is not device or t._value is not None):
            return False
    backend = _backends.get(device) or _backend_of(device)
    return backend.fuses_eager_composites


def _backend_of(device):
    backend = _backends[device] = backend_for(device.type)
    return backend


def _record(prim: Prim, inputs: tuple, params: dict, out: Tensor) -> None:
    out.grad_fn = _ag.Node(prim, inputs, params, out)
    out.requires_grad = True
