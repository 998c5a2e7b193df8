"""Optimizers (`SGD`, `Adam`, `AdamW`, `RMSprop`) and learning-rate schedulers (`lr_scheduler`)."""

from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer, ParamGroup
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "ParamGroup", "SGD", "Adam", "AdamW", "RMSprop", "lr_scheduler"]
