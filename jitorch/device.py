"""Devices. `cpu` holds numpy arrays; `meta` holds only shapes and dtypes (no data), as in PyTorch."""

from __future__ import annotations

from .backends import has_backend


class Device:
    """A device such as `jitorch.device("cpu")`. Instances are interned: compare with `is` or `==`."""

    __slots__ = ("type", "index")
    _interned: dict[str, Device] = {}

    def __new__(cls, spec: str | Device = "cpu", index: int | None = None) -> Device:
        if isinstance(spec, Device):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"device must be a string like 'cpu' or a jitorch.device, got {spec!r}")
        name = spec if index is None else f"{spec}:{index}"
        dev = cls._interned.get(name)
        if dev is not None:
            return dev
        kind, _, idx = name.partition(":")
        if kind not in ("cpu", "meta", "cuda"):
            raise RuntimeError(f"unknown device {spec!r}; expected 'cpu', 'meta' or 'cuda'")
        if kind == "cuda" and not has_backend("cuda"):
            # PyTorch built without CUDA says "Torch not compiled with CUDA enabled"
            raise RuntimeError(
                f"device {name!r} is not available: this version of jitorch has no CUDA device "
                "(it runs on the CPU only); use device='cpu'"
            )
        dev = object.__new__(cls)
        dev.type = kind
        dev.index = int(idx) if idx else None
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
        return hash(str(self))


cpu = Device("cpu")
meta = Device("meta")
