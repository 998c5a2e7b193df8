"""`repr(tensor)` in PyTorch's style: `tensor([[0.1234, ...]], requires_grad=True)`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import dtypes as _dt

_DEFAULT_DTYPES = ("float32", "int64", "bool")
_INDENT = len("tensor(")


@dataclasses.dataclass
class _PrintOptions:
    precision: int = 4  # digits after the point
    threshold: float = 1000  # more elements than this: show the first and last `edgeitems` of each dim
    edgeitems: int = 3
    linewidth: int = 80
    sci_mode: bool | None = None  # None: chosen from the values, as PyTorch's _Formatter does


_OPTIONS = _PrintOptions()
_PROFILES = {
    "default": _PrintOptions(),
    "short": _PrintOptions(precision=2, edgeitems=2),
    "full": _PrintOptions(threshold=math.inf),
}


def set_printoptions(precision: int | None = None, threshold: float | None = None, edgeitems: int | None = None,
                     linewidth: int | None = None, profile: str | None = None, sci_mode: bool | None = None) -> None:
    """Set how tensors print, as `torch.set_printoptions`: a `profile` ("default", "short", "full")
    first, then any option given on top of it. `sci_mode` is always set (None: chosen per tensor).

        jitorch.set_printoptions(precision=2)   # tensor([1.12])
        jitorch.set_printoptions(profile="default")
    """
    if profile is not None:
        if profile not in _PROFILES:
            raise ValueError(f"set_printoptions: unknown profile {profile!r}; use one of {sorted(_PROFILES)}")
        for field, value in dataclasses.asdict(_PROFILES[profile]).items():
            if field != "sci_mode":
                setattr(_OPTIONS, field, value)
    given = {"precision": precision, "threshold": threshold, "edgeitems": edgeitems, "linewidth": linewidth}
    for field, value in given.items():
        if value is not None:
            setattr(_OPTIONS, field, value)
    _OPTIONS.sci_mode = sci_mode


def get_printoptions() -> dict:
    """The current print options, as a dict that `set_printoptions(**options)` takes back."""
    return dataclasses.asdict(_OPTIONS)


def _summarized(data: np.ndarray) -> np.ndarray:
    """The elements shown when a tensor is summarized (PyTorch's get_summarized_data)."""
    if data.ndim == 0:
        return data
    edge = _OPTIONS.edgeitems
    if data.ndim > 1 and not edge:
        return data.reshape(-1)[:0]
    if data.shape[0] > 2 * edge:
        data = np.concatenate([data[:edge], data[-edge:]])
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
        self.sci_mode = hi / lo > 1000.0 or hi > 1.0e8 or lo < 1.0e-4
        if _OPTIONS.sci_mode is not None:
            self.sci_mode = _OPTIONS.sci_mode
        extra = 1 if self.int_mode and not self.sci_mode else 0  # room for the point of "3."
        self.width = max(len(self._finite(v)) + extra for v in vals.tolist())

    def _finite(self, v: float) -> str:
        if self.sci_mode:
            return f"{v:.{_OPTIONS.precision}e}"
        return f"{v:.0f}" if self.int_mode else f"{v:.{_OPTIONS.precision}f}"

    @staticmethod
    def _plain(v) -> str:
        return str(v)

    def format(self, v) -> str:
        if not self.floating:
            text = self._plain(v)
        else:
            text = self._finite(v)
            if self.int_mode and not self.sci_mode and math.isfinite(v):
                text += "."
        return text.rjust(self.width)


def _vector_str(data: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    per_line = max(1, (_OPTIONS.linewidth - indent) // (fmt.width + 2))
    edge = _OPTIONS.edgeitems
    if summarize and not edge:
        items = ["..."]
    elif summarize and data.shape[0] > 2 * edge:
        items = ([fmt.format(v) for v in data[:edge].tolist()] + [" ..."]
                 + [fmt.format(v) for v in data[-edge:].tolist()])
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
    edge = _OPTIONS.edgeitems
    if summarize and data.shape[0] > 2 * edge:
        rows = list(range(edge)) + [None] + list(range(data.shape[0] - edge, data.shape[0]))
    parts = ["..." if i is None else _nested_str(data[i], indent + 1, summarize, fmt) for i in rows]
    return "[" + ("," + "\n" * (data.ndim - 1) + " " * (indent + 1)).join(parts) + "]"


def _format_data(data: np.ndarray) -> str:
    if data.dtype == _dt.bfloat16.np or data.dtype == np.float16:
        data = data.astype(np.float32)
    if data.size == 0:
        return "[]"
    summarize = data.size > _OPTIONS.threshold
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
        if (t.numel() == 0 and t.ndim > 1) or (t.numel() and not _OPTIONS.edgeitems):
            extras.append(f"size={tuple(t.shape)}")  # the values alone do not show it
    if t.device.type not in ("cpu", "meta"):
        extras.append(f"device='{t.device}'")
    if t.dtype.name not in _DEFAULT_DTYPES or (t.numel() == 0 and t.dtype.name != "float32"):
        extras.append(f"dtype=jitorch.{t.dtype.name}")
    if t.grad_fn is not None:
        extras.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t.requires_grad:
        extras.append("requires_grad=True")
    return _add_suffixes("tensor(" + body, extras) + ")"


def _add_suffixes(text: str, suffixes: list[str]) -> str:
    """`text, suffix, ...`, a suffix going to a new line where it would pass `linewidth` (as PyTorch)."""
    parts = [text]
    line_length = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if line_length + len(suffix) + 2 > _OPTIONS.linewidth:
            parts.append(",\n" + " " * _INDENT + suffix)
            line_length = _INDENT + len(suffix)
        else:
            parts.append(", " + suffix)
            line_length += len(suffix) + 2
    return "".join(parts)
