"""`jitorch.distributions`: probability distributions as in `torch.distributions`, sampling from
jitorch's generator (so a compiled function draws what eager code does), with reparameterized
`rsample` where PyTorch has one and its argument validation."""

from . import constraints
from .bernoulli import Bernoulli
from .categorical import Categorical
from .distribution import Distribution
from .kl import kl_divergence, register_kl
from .multivariate_normal import MultivariateNormal
from .normal import Normal
from .uniform import Uniform

__all__ = ["Bernoulli", "Categorical", "Distribution", "MultivariateNormal", "Normal", "Uniform", "constraints",
           "kl_divergence", "register_kl"]
