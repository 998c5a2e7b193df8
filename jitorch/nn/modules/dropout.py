"""`torch.nn.modules.dropout`'s path, for code that imports the dropouts from there (they live in `misc`)."""

from .misc import AlphaDropout, Dropout, Dropout1d, Dropout2d, Dropout3d

__all__ = ["AlphaDropout", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]
