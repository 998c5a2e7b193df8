"""`torch.nn.modules.sparse`'s path, for code that imports Embedding from there (it lives in `misc`)."""

from .misc import Embedding

__all__ = ["Embedding"]
