"""`repr(tensor)` in PyTorch's style: `tensor([[0.1234, ...]], requires_grad=True)`."""

from __future__ import annotations

import numpy as np

from . import dtypes as _dt

_DEFAULT_DTYPES = ("float32", "int64", "bool")


_PRECISION = 4
_THRESHOLD = 1000  # more elements than this: show the first and last EDGEITEMS of each dim
_EDGEITEMS = 3
_LINEWIDTH = 80
_INDENT = len("tensor(")


def _summarized(data: np.ndarray) -> np.ndarray:
    """The elements shown when a tensor is summarized (PyTorch's get_summarized_data)."""
    if data.ndim == 0:
        return data
    if data.shape[0] > 2 * _EDGEITEMS:
        data = np.concatenate([data[:_EDGEITEMS], data[-_EDGEITEMS:]])
    return np.stack([_summarized(row) for row in data]) if data.ndim > 1 else data


class _Formatter:
    """Chooses one format for all elements (integer-valued, fixed or scientific) and one width,
    as PyTorch's _Formatter does, so columns line up."""

    def __init__(self, data: np.ndarray) -> None:
        flat = data.reshape(-1)
        self.floating = data.dtype.kind == "f"
        self.int_mode, self.sci_mode, self.width = True, False, 1
        if not self.floating:
            self.width = max((len(self._plain(v)) for v in flat.tolist()), default=1)
            return
        vals = flat[np.isfinite(flat) & (flat != 0)].astype(np.float64)
        if vals.size == 0:
            return
        lo, hi = np.abs(vals).min(), np.abs(vals).max()
        self.int_mode = bool(np.all(vals == np.ceil(vals)))
        self.sci_mode = hi / lo > 1000.0 or hi > 1.0e8 or (not self.int_mode and lo < 1.0e-4)
        if self.sci_mode:
            self.width = max(len(f"{v:.{_PRECISION}e}") for v in vals.tolist())
        elif self.int_mode:
            self.width = max(len(f"{v:.0f}") + 1 for v in vals.tolist())
        else:
            self.width = max(len(f"{v:.{_PRECISION}f}") for v in vals.tolist())

    @staticmethod
    def _plain(v) -> str:
        return str(v)

    def format(self, v) -> str:
        if not self.floating:
            text = self._plain(v)
        elif self.sci_mode:
            text = f"{v:.{_PRECISION}e}"
        elif self.int_mode:
            text = f"{v:.0f}" + ("" if v != v or v in (float("inf"), float("-inf")) else ".")
        else:
            text = f"{v:.{_PRECISION}f}"
        return text.rjust(self.width)


def _vector_str(data: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    per_line = max(1, (_LINEWIDTH - indent) // (fmt.width + 2))
    if summarize and data.shape[0] > 2 * _EDGEITEMS:
        items = ([fmt.format(v) for v in data[:_EDGEITEMS].tolist()] + [" ..."]
                 + [fmt.format(v) for v in data[-_EDGEITEMS:].tolist()])
    else:
        items = [fmt.format(v) for v in data.tolist()]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "[" + ("," + "\n" + " " * (indent + 1)).join(lines) + "]"


def _nested_str(data: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    if data.ndim == 0:
        return fmt.format(data.item())
    if data.ndim == 1:
        return _vector_str(data, indent, summarize, fmt)
    rows = range(data.shape[0])
    if summarize and data.shape[0] > 2 * _EDGEITEMS:
        rows = list(range(_EDGEITEMS)) + [None] + list(range(data.shape[0] - _EDGEITEMS, data.shape[0]))
    parts = ["..." if i is None else _nested_str(data[i], indent + 1, summarize, fmt) for i in rows]
    return "[" + ("," + "\n" * (data.ndim - 1) + " " * (indent + 1)).join(parts) + "]"


def _format_data(data: np.ndarray) -> str:
    if data.dtype == _dt.bfloat16.np or data.dtype == np.float16:
        data = data.astype(np.float32)
    if data.size == 0:
        return "[]"
    summarize = data.size > _THRESHOLD
    fmt = _Formatter(_summarized(data) if summarize else data)
    return _nested_str(data, _INDENT, summarize, fmt)


def tensor_repr(t) -> str:
    extras = []
    if t._value is not None:
        from .errors import concrete_value_error

        raise concrete_value_error(t, "printing a tensor's values")
    elif t.device.type == "meta":
        body = "..."
        extras.append(f"size={tuple(t.shape)}")
        extras.append("device='meta'")
    else:
        body = _format_data(t._concrete("printing a tensor's values"))
    if t.numel() == 0 and t.ndim > 1:
        extras.append(f"size={tuple(t.shape)}")
    if t.device.type not in ("cpu", "meta"):
        extras.append(f"device='{t.device}'")
    if t.dtype.name not in _DEFAULT_DTYPES or (t.numel() == 0 and t.dtype.name != "float32"):
        extras.append(f"dtype=jitorch.{t.dtype.name}")
    if t.grad_fn is not None:
        extras.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t.requires_grad:
        extras.append("requires_grad=True")
    return "tensor(" + ", ".join([body] + extras) + ")"
