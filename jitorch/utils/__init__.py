"""Utilities: `jitorch.utils.data` (datasets, samplers and the DataLoader) and
`jitorch.utils.checkpoint` (activation checkpointing)."""

from . import checkpoint, data

__all__ = ["checkpoint", "data"]
