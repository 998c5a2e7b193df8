"""`torch.nn.modules.flatten`'s path, for code that imports Flatten from there (it lives in `misc`)."""

from .misc import Flatten, Unflatten

__all__ = ["Flatten", "Unflatten"]
