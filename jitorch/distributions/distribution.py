"""`Distribution`: the base of every distribution, as `torch.distributions.Distribution`: shapes,
sampling through `rsample`, and PyTorch's argument and sample validation with its messages."""

from __future__ import annotations

import numbers

from .. import dtypes as _dt
from .._trace_state import user_source
from ..autograd import no_grad
from ..creation import tensor
from ..errors import TraceError
from ..ops import broadcast_tensors
from ..tensor import Size, Tensor
from .constraints import Constraint


def broadcast_all(*values) -> list[Tensor]:
    """The values (tensors or numbers) as tensors of one broadcast shape; numbers take the first
    tensor's dtype and device, else the default dtype."""
    like = next((v for v in values if isinstance(v, Tensor)), None)
    if like is None and not all(isinstance(v, numbers.Number) for v in values):
        raise ValueError("Input arguments must all be instances of numbers.Number or jitorch.Tensor.")
    dtype = like.dtype if like is not None else _dt.get_default_dtype()
    device = like.device if like is not None else None
    tensors = [v if isinstance(v, Tensor) else tensor(float(v), dtype=dtype, device=device) for v in values]
    return broadcast_tensors(*tensors)


class Distribution:
    """A probability distribution over events of `event_shape`, batched over `batch_shape`.

    With `validate_args` (on by default, as Python's `assert` is) parameters are checked against
    `arg_constraints` when it is made and values against `support` in `log_prob`."""

    has_rsample = False
    has_enumerate_support = False
    _validate_args = __debug__
    arg_constraints: dict[str, Constraint] = {}
    # the tensor attributes laid out as batch_shape + a parameter's own dims, which `expand` expands
    # (those not yet computed, such as a lazy `logits`, are skipped)
    _batched_params: tuple[str, ...] = ()

    @staticmethod
    def set_default_validate_args(value: bool) -> None:
        """Turn validation on or off for distributions made from now on without `validate_args`."""
        if value not in (True, False):
            raise ValueError(f"validate_args must be True or False, not {value!r}")
        Distribution._validate_args = value

    def __init__(self, batch_shape: tuple[int, ...] = (), event_shape: tuple[int, ...] = (),
                 validate_args: bool | None = None) -> None:
        self._batch_shape = Size(batch_shape)
        self._event_shape = Size(event_shape)
        if validate_args is not None:
            self._validate_args = validate_args
        if self._validate_args:
            self._validate_parameters()

    def _validate_parameters(self) -> None:
        for param, constraint in self.arg_constraints.items():
            if param not in self.__dict__:
                continue  # derived from the one given (logits from probs): valid when that one is
            value = self.__dict__[param]
            if not self._holds(constraint.check(value)):
                raise ValueError(
                    f"Expected parameter {param} ({type(value).__name__} of shape {tuple(value.shape)}) of "
                    f"distribution {self!r} to satisfy the constraint {constraint!r}, but found invalid values:\n"
                    f"{value}")

    def _holds(self, valid: Tensor) -> bool:
        """Whether every element of `valid` is true; inside jitorch.compile, where values are
        unknown until the program runs, an error saying how to make the distribution there."""
        if valid._value is not None:
            raise TraceError(f"{type(self).__name__}: validating its arguments needs their values, which a "
                             f"function traced by jitorch.compile does not have (at {user_source()}). Pass "
                             "validate_args=False to distributions made inside compiled functions.")
        return bool(valid.all())

    @property
    def batch_shape(self) -> Size:
        return self._batch_shape

    @property
    def event_shape(self) -> Size:
        return self._event_shape

    def expand(self, batch_shape: tuple[int, ...], _instance: Distribution | None = None) -> Distribution:
        """The same distribution with its parameters expanded (as `Tensor.expand`: views, no copies)
        to a new `batch_shape`, which must broadcast from the current one.

            >>> Normal(jitorch.zeros(3), 1.0).expand((4, 3)).sample().shape
            jitorch.Size([4, 3])
        """
        batch_shape = Size(batch_shape)
        new = _instance if _instance is not None else type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        own_dims = len(self._batch_shape)
        for name in self._batched_params:
            value = self.__dict__.get(name)
            if isinstance(value, Tensor):
                new.__dict__[name] = value.expand(tuple(batch_shape) + tuple(value.shape[own_dims:]))
        Distribution.__init__(new, batch_shape, self._event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def support(self) -> Constraint:
        raise NotImplementedError

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement mean")

    @property
    def mode(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement mode")

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement variance")

    @property
    def stddev(self) -> Tensor:
        return self.variance.sqrt()

    def cdf(self, value: Tensor) -> Tensor:
        """The cumulative distribution function at `value`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement cdf")

    def icdf(self, value: Tensor) -> Tensor:
        """The inverse of `cdf`: the value at which the cdf reaches `value` in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__} does not implement icdf")

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """Every value of a discrete support along a new leading dim (expanded over the batch shape
        unless expand=False)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement enumerate_support")

    def perplexity(self) -> Tensor:
        """exp(entropy)."""
        return self.entropy().exp()

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """Samples of shape sample_shape + batch_shape + event_shape, without gradient."""
        with no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """Reparameterized samples: gradients flow from them to the parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no reparameterized sampler (rsample); use sample()")

    def log_prob(self, value: Tensor) -> Tensor:
        raise NotImplementedError

    def entropy(self) -> Tensor:
        raise NotImplementedError

    def _extended_shape(self, sample_shape: tuple[int, ...] = ()) -> Size:
        return Size(tuple(sample_shape) + tuple(self._batch_shape) + tuple(self._event_shape))

    def _validate_sample(self, value: Tensor) -> None:
        """PyTorch's checks of a value given to `log_prob`: a tensor, of a shape that broadcasts with
        batch_shape + event_shape, inside the support."""
        if not isinstance(value, Tensor):
            raise ValueError("The value argument to log_prob must be a Tensor")
        event_start = value.ndim - len(self._event_shape)
        if tuple(value.shape[event_start:]) != tuple(self._event_shape):
            raise ValueError(f"The right-most size of value must match event_shape: {value.shape} vs "
                             f"{self._event_shape}.")
        expected = self._extended_shape()
        for i, j in zip(reversed(tuple(value.shape)), reversed(tuple(expected))):
            if i != 1 and j != 1 and i != j:
                raise ValueError(f"Value is not broadcastable with batch_shape+event_shape: {value.shape} vs "
                                 f"{expected}.")
        if not self._holds(self.support.check(value)):
            raise ValueError(
                f"Expected value argument ({type(value).__name__} of shape {tuple(value.shape)}) to be within the "
                f"support ({self.support!r}) of the distribution {self!r}, but found invalid values:\n{value}")

    def __repr__(self) -> str:
        given = [(p, self.__dict__[p]) for p in self.arg_constraints if isinstance(self.__dict__.get(p), Tensor)]
        shown = [f"{p}: {_shown(v)}" for p, v in given]
        return f"{type(self).__name__}({', '.join(shown)})"


def _shown(value: Tensor):
    """How PyTorch's repr of a distribution shows a parameter: a 0-d one by value, else its shape."""
    if value.numel() != 1:
        return value.shape
    return value.item() if value.ndim == 0 else value


class lazy_property:
    """A property computed on first use and then kept in the instance (so `probs` given, `logits`
    is derived only if asked for, and validation sees only the parameter that was given)."""

    def __init__(self, compute) -> None:
        self.compute = compute
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


def clamp_probs(probs: Tensor) -> Tensor:
    """probs kept eps away from 0 and 1, so that their logits are finite."""
    eps = _dt.finfo(probs.dtype).eps
    return probs.clamp(eps, 1 - eps)


def probs_to_logits(probs: Tensor, is_binary: bool = False) -> Tensor:
    """log-odds of binary probabilities, or the log of categorical ones."""
    clamped = clamp_probs(probs)
    return clamped.log() - (-clamped).log1p() if is_binary else clamped.log()


def probs_or_logits(probs, logits) -> tuple[str, Tensor]:
    """Which of the two was given (exactly one must be), and it as a tensor."""
    if (probs is None) == (logits is None):
        raise ValueError("Either `probs` or `logits` must be specified, but not both.")
    name, value = ("probs", probs) if probs is not None else ("logits", logits)
    return name, broadcast_all(value)[0]
