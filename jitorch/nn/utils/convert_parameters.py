"""Flatten parameters into one vector and back."""

from __future__ import annotations

from collections.abc import Iterable

from ...autograd import no_grad
from ...ops import cat
from ...tensor import Tensor


def parameters_to_vector(parameters: Iterable[Tensor]) -> Tensor:
    """All parameters flattened and concatenated into one 1-D tensor."""
    return cat([p.reshape(-1) for p in parameters])


def vector_to_parameters(vec: Tensor, parameters: Iterable[Tensor]) -> None:
    """Copy consecutive slices of `vec` into the parameters (the inverse of `parameters_to_vector`)."""
    if vec.ndim != 1:
        raise TypeError(f"expected a 1-D vector, got shape {tuple(vec.shape)}")
    offset = 0
    with no_grad():
        for p in parameters:
            n = p.numel()
            p.copy_(vec[offset : offset + n].reshape(p.shape))
            offset += n
