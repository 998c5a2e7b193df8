"""Devices. `cpu` holds numpy arrays; `meta` holds only shapes and dtypes (no data), as in PyTorch;
`cuda` holds the arrays of the CUDA backend, when one is registered (`jitorch.backends`).

A `Device` is only a name, as `torch.device` is: `jitorch.device("cuda")` works on any machine.
Putting a tensor there is what needs the backend (`placement`), and a tensor's cuda device always
has an index: `jitorch.zeros(2, device="cuda").device` is `cuda:0` (the current device).
"""

from __future__ import annotations

from . import backends

_KINDS = ("cpu", "cuda", "meta")


class Device:
    """A device such as `jitorch.device("cpu")`, `jitorch.device("cuda:0")` or
    `jitorch.device("cuda", 0)`. Instances are interned: compare with `is` or `==`. As in PyTorch,
    `device("cuda")` (no index, "the current one") is not equal to `device("cuda:0")`."""

    __slots__ = ("type", "index", "_hash")
    _interned: dict[str, Device] = {}

    def __new__(cls, spec: str | int | Device = "cpu", index: int | None = None) -> Device:
        if isinstance(spec, Device) and index is None:
            return spec
        name = _device_name(spec, index)
        dev = cls._interned.get(name)
        if dev is not None:
            return dev
        kind, _, idx = name.partition(":")
        dev = object.__new__(cls)
        dev.type = kind
        dev.index = int(idx) if idx else None
        dev._hash = hash(name)  # (as a string's: a device equals its name; every eager op hashes one)
        cls._interned[name] = dev
        return dev

    def __repr__(self) -> str:
        return f"device(type='{self.type}')" if self.index is None else (
            f"device(type='{self.type}', index={self.index})"
        )

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            other = Device(other)
        return self is other

    def __hash__(self) -> int:
        return self._hash

    # interned: a copy is the device itself (copy.deepcopy of a param group or an optimizer state)
    def __reduce__(self):
        return (Device, (str(self),))

    def __copy__(self) -> Device:
        return self

    def __deepcopy__(self, memo) -> Device:
        return self


def _device_name(spec, index) -> str:
    """The canonical name of a device spec ("cuda:0"), with PyTorch's errors for a malformed one."""
    if isinstance(spec, Device):
        spec = spec.type if spec.index is None else str(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):  # torch.device(0) is the accelerator's device 0
        spec, index = "cuda", spec if index is None else index
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', an int or a jitorch.device, got {spec!r}")
    kind, colon, idx = spec.partition(":")
    if kind not in _KINDS:
        raise RuntimeError(f"Expected one of {', '.join(_KINDS)} device type at start of device string: {spec}")
    if colon and not (idx.isdigit() and (idx == "0" or not idx.startswith("0"))):
        raise RuntimeError(f"Invalid device string: '{spec}'")
    if index is not None:
        if colon:
            raise RuntimeError(f"type (string) must not include an index because index was passed explicitly: {spec}")
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"device index must be an int, got {index!r}")
        if index < 0:
            raise RuntimeError("Device index must not be negative")
        idx = str(index)
    return f"{kind}:{idx}" if idx else kind


# the current device of each indexed kind: where device="cuda" puts a tensor (jitorch.cuda.set_device)
_current_index: dict[str, int] = {"cuda": 0}


def current_index(kind: str) -> int:
    return _current_index[kind]


def set_current_index(kind: str, index: int) -> None:
    _current_index[kind] = index


def unavailable_reason(kind: str) -> str | None:
    """Why device type `kind` has no backend here, or None when it has one. The CUDA backend says
    why itself (no CuPy, no driver, no GPU) where it can (`jitorch.backends.unavailable_reason`)."""
    if backends.has_backend(kind):
        return None
    explain = getattr(backends, "unavailable_reason", None)
    reason = explain(kind) if explain is not None else None
    return reason or f"no {kind} backend is registered in this jitorch"


def unavailable_error(spec: str | Device) -> RuntimeError:
    """The error for putting a tensor on CUDA device `spec` where jitorch has none: which reason, and
    what to do (PyTorch says "Torch not compiled with CUDA enabled")."""
    return RuntimeError(
        f"device '{spec}' is not available: jitorch has no CUDA device to use here ({unavailable_reason('cuda')}). "
        'With an NVIDIA GPU and its driver, install the CUDA extra (pip install -e ".[cuda]" in a checkout of '
        "jitorch); otherwise use device='cpu'."
    )


def placement(spec: str | int | Device) -> Device:
    """The device a tensor made or moved with `device=spec` lands on: a cuda device without an index
    is the current one ("cuda" -> cuda:0), and a device whose backend is missing is refused, naming
    the device and the reason."""
    dev = Device(spec)
    if dev.type == "cuda":
        if not backends.has_backend("cuda"):
            raise unavailable_error(dev)
        if dev.index is None:
            dev = Device("cuda", _current_index["cuda"])
    return dev


cpu = Device("cpu")
meta = Device("meta")
