"""Optimizers (`SGD`, `Adam`, `AdamW`, `RMSprop`, `Adadelta`, `Adagrad`, `Adamax`, `NAdam`, `RAdam`,
`LBFGS`) and learning-rate schedulers (`lr_scheduler`)."""

from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .lbfgs import LBFGS
from .nadam import NAdam
from .optimizer import Optimizer, ParamGroup
from .radam import RAdam
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "ParamGroup", "SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad", "Adamax", "NAdam",
           "RAdam", "LBFGS", "lr_scheduler"]
