"""Helpers for training loops: gradient clipping, parameter <-> vector conversion."""

from . import rnn as rnn  # the submodule, as torch.nn.utils.rnn
from .clip_grad import clip_grad_norm_, clip_grad_value_, get_total_norm
from .convert_parameters import parameters_to_vector, vector_to_parameters

__all__ = [
    "clip_grad_norm_",
    "clip_grad_value_",
    "get_total_norm",
    "parameters_to_vector",
    "vector_to_parameters",
]
