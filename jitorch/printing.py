"""`repr(tensor)` in PyTorch's style: `tensor([[0.1234, ...]], requires_grad=True)`."""

from __future__ import annotations

import numpy as np

from . import dtypes as _dt

_DEFAULT_DTYPES = ("float32", "int64", "bool")


def _format_data(data: np.ndarray) -> str:
    if data.dtype == _dt.bfloat16.np or data.dtype == np.float16:
        data = data.astype(np.float32)
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        big = finite.size and (np.abs(finite).max() >= 1e8 or 0 < np.abs(finite[finite != 0]).min(
            initial=np.inf) < 1e-4)
        if finite.size and np.all(finite == np.round(finite)) and not big:
            fmt = {"float_kind": lambda v: f"{v:.0f}."}
        elif big:
            fmt = {"float_kind": lambda v: f"{v:.4e}"}
        else:
            fmt = {"float_kind": lambda v: f"{v:.4f}"}
        return np.array2string(data, separator=", ", formatter=fmt, prefix="tensor(", threshold=1000,
                               edgeitems=3, max_line_width=80)
    if data.dtype.kind == "b":
        return np.array2string(data, separator=", ", prefix="tensor(", threshold=1000,
                               formatter={"bool": lambda v: "True" if v else "False"})
    return np.array2string(data, separator=", ", prefix="tensor(", threshold=1000, max_line_width=80)


def tensor_repr(t) -> str:
    extras = []
    if t._value is not None:
        body = f"<traced {t._value.name}: shape={tuple(t.shape)}>"
    elif t.device.type == "meta":
        body = "..."
        extras.append(f"size={tuple(t.shape)}")
        extras.append("device='meta'")
    else:
        body = _format_data(t._data)
    if t.numel() == 0 and t.ndim > 1:
        extras.append(f"size={tuple(t.shape)}")
    if t.dtype.name not in _DEFAULT_DTYPES or (t.numel() == 0 and t.dtype.name != "float32"):
        extras.append(f"dtype=jitorch.{t.dtype.name}")
    if t.grad_fn is not None:
        extras.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t.requires_grad:
        extras.append("requires_grad=True")
    return "tensor(" + ", ".join([body] + extras) + ")"
