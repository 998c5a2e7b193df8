"""The multivariate normal distribution N(loc, Sigma), parameterized by its covariance matrix, its
precision matrix or the Cholesky factor of its covariance."""

from __future__ import annotations

import math

from .. import linalg
from ..creation import randn
from ..primitives import broadcast_shapes
from ..tensor import Tensor
from . import constraints
from .distribution import Distribution, lazy_property


def _solve_lower(L: Tensor, b: Tensor) -> Tensor:
    """L^-1 b for lower-triangular L (..., k, k) and vectors b (..., k), batch dims broadcast. Reads
    L's lower triangle only, so that no gradient reaches its upper one, as PyTorch's triangular solve."""
    batch = broadcast_shapes(tuple(L.shape[:-2]), tuple(b.shape[:-1]))
    k = L.shape[-1]
    return linalg.solve(L.tril().expand(batch + (k, k)), b.expand(batch + (k,)))


def _solve_lower_matrix(L: Tensor, B: Tensor) -> Tensor:
    """L^-1 B for lower-triangular L (..., k, k) and matrices B (..., k, m), batch dims broadcast."""
    batch = broadcast_shapes(tuple(L.shape[:-2]), tuple(B.shape[:-2]))
    return linalg.solve(L.tril().expand(batch + tuple(L.shape[-2:])), B.expand(batch + tuple(B.shape[-2:])))


def _precision_to_scale_tril(P: Tensor) -> Tensor:
    """The lower Cholesky factor of P^-1, without inverting P: flip P, factor it, flip back."""
    Lf = linalg.cholesky(P.flip((-2, -1)))
    L_inv = Lf.flip((-2, -1)).mT
    return _solve_lower_matrix(L_inv, linalg.eye_like(P, P.shape[-1]))


class MultivariateNormal(Distribution):
    """Multivariate normal with mean `loc` (..., k) and exactly one of `covariance_matrix`,
    `precision_matrix` or `scale_tril` (..., k, k), batch dims broadcast. Sampling and densities
    work through the Cholesky factor L of the covariance (L L^T = Sigma).

        >>> MultivariateNormal(jitorch.zeros(2), scale_tril=jitorch.eye(2)).rsample((5,)).shape
        jitorch.Size([5, 2])
    """

    arg_constraints = {"loc": constraints.real_vector, "covariance_matrix": constraints.positive_definite,
                       "precision_matrix": constraints.positive_definite, "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True
    _batched_params = ("loc", "covariance_matrix", "precision_matrix", "scale_tril")

    def __init__(self, loc: Tensor, covariance_matrix: Tensor | None = None, precision_matrix: Tensor | None = None,
                 scale_tril: Tensor | None = None, validate_args: bool | None = None) -> None:
        if loc.ndim < 1:
            raise ValueError(f"loc must be at least one-dimensional, got shape {tuple(loc.shape)}.")
        given = [(name, m) for name, m in (("covariance_matrix", covariance_matrix),
                                           ("precision_matrix", precision_matrix), ("scale_tril", scale_tril))
                 if m is not None]
        if len(given) != 1:
            raise ValueError("Exactly one of covariance_matrix or precision_matrix or scale_tril may be specified.")
        name, matrix = given[0]
        if matrix.ndim < 2:
            raise ValueError(f"{name} must be at least two-dimensional, with optional leading batch "
                             f"dimensions; got shape {tuple(matrix.shape)}.")
        if matrix.shape[-1] != loc.shape[-1] or matrix.shape[-2] != loc.shape[-1]:
            raise ValueError(f"{name} of shape {tuple(matrix.shape)} does not match loc of shape "
                             f"{tuple(loc.shape)}: expected (..., {loc.shape[-1]}, {loc.shape[-1]}).")
        batch_shape = broadcast_shapes(tuple(matrix.shape[:-2]), tuple(loc.shape[:-1]))
        event = tuple(loc.shape[-1:])
        setattr(self, name, matrix.expand(batch_shape + event + event))
        self.loc = loc.expand(batch_shape + event)
        super().__init__(batch_shape, event, validate_args=validate_args)
        # the factor unbroadcast (batch dims of the matrix given only), as PyTorch keeps it
        if name == "scale_tril":
            self._unbroadcasted_scale_tril = matrix
        elif name == "covariance_matrix":
            self._unbroadcasted_scale_tril = linalg.cholesky(matrix)
        else:
            self._unbroadcasted_scale_tril = _precision_to_scale_tril(matrix)

    @lazy_property
    def scale_tril(self) -> Tensor:
        return self._unbroadcasted_scale_tril.expand(self._batch_shape + self._event_shape + self._event_shape)

    @lazy_property
    def covariance_matrix(self) -> Tensor:
        L = self._unbroadcasted_scale_tril
        return (L @ L.mT).expand(self._batch_shape + self._event_shape + self._event_shape)

    @lazy_property
    def precision_matrix(self) -> Tensor:
        return linalg.inv(self.covariance_matrix)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return (self._unbroadcasted_scale_tril ** 2).sum(-1).expand(self._batch_shape + self._event_shape)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """loc + L eps with eps ~ N(0, I) from jitorch's generator: differentiable in loc and L."""
        eps = randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + (self._unbroadcasted_scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def _half_log_det(self) -> Tensor:
        """log det(L) = 1/2 log det(Sigma)."""
        return self._unbroadcasted_scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        diff = value - self.loc
        mahalanobis = (_solve_lower(self._unbroadcasted_scale_tril, diff) ** 2).sum(-1)
        k = self._event_shape[0]
        return -0.5 * (k * math.log(2 * math.pi) + mahalanobis) - self._half_log_det()

    def entropy(self) -> Tensor:
        k = self._event_shape[0]
        h = 0.5 * k * (1.0 + math.log(2 * math.pi)) + self._half_log_det()
        return h.expand(self._batch_shape) if len(self._batch_shape) else h
