"""`jitorch.nn`: modules, parameters, functional ops and initializers, with PyTorch's names.

import jitorch.nn as nn
model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
loss = nn.functional.cross_entropy(model(x), y)
"""

from . import functional, init, parallel, utils
from .modules import *  # noqa: F403 - the layer classes are this package's API
from .modules import __all__ as _modules_all
from .modules.module import RemovableHandle
from .parallel import DataParallel
from .parameter import Buffer, Parameter

__all__ = ["functional", "init", "parallel", "utils", "Parameter", "Buffer", "RemovableHandle", "DataParallel",
           *_modules_all]
