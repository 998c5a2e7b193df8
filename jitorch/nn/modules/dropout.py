"""`torch.nn.modules.dropout`'s path, for code that imports Dropout from there (it lives in `misc`)."""

from .misc import Dropout

__all__ = ["Dropout"]
