"""Every differentiable primitive's vjp against float64 central finite differences.

For random directions u (inputs) and v (output): <v, J u> from (f(x + eps u) - f(x - eps u)) / 2eps
must equal <vjp(v), u>. Inputs stay away from kinks (abs at 0, ties in max, rounding steps).
A new primitive without a case here fails `test_every_differentiable_prim_has_a_case`.
"""

from __future__ import annotations

import numpy as np
import pytest

import jitorch as jt
from jitorch.dispatch import dispatch
from jitorch.gradients import VJP
from jitorch.ops import normalize_key
from jitorch.primitives import PRIMS

EPS = 1e-6
N_DIRECTIONS = 3


def _real(rng, *shape):
    return rng.standard_normal(shape)


def _positive(rng, *shape):
    return rng.uniform(0.5, 2.0, shape)


def _nonzero(rng, *shape):
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def _distinct(rng, *shape):
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.1 + rng.uniform(-0.01, 0.01, shape)


def _key(shape, key):
    """A getitem/index_put key in primitive form, and its index tensors."""
    nkey, tensors = normalize_key(jt.zeros(*shape), key)
    return nkey, [t.numpy() for t in tensors]


def _unary(name, gen=_real):
    return lambda rng: ([gen(rng, 3, 4)], {})


def _binary(gen_a=_real, gen_b=_real, shape_b=(3, 4)):
    return lambda rng: ([gen_a(rng, 3, 4), gen_b(rng, *shape_b)], {})


def _getitem(key):
    def make(rng):
        nkey, tensors = _key((4, 5), key)
        return [_real(rng, 4, 5), *tensors], {"key": nkey}

    return make


def _index_put(key, value_shape, accumulate):
    def make(rng):
        nkey, tensors = _key((4, 5), key)
        return [_real(rng, 4, 5), _real(rng, *value_shape), *tensors], {"key": nkey, "accumulate": accumulate}

    return make


def _unique_index(rng, shape, dim, size):
    full = list(shape)
    full[dim] = size
    return np.take(np.argsort(rng.random(full), axis=dim), np.arange(shape[dim]), axis=dim).astype(np.int64)


def _remainder(rng):
    y = rng.uniform(1.0, 2.0, (3, 4))
    x = (rng.integers(-3, 3, (3, 4)) + rng.uniform(0.1, 0.9, (3, 4))) * y  # far from the jumps
    return [x, y], {}


_CONV = {"kernel": (2, 2), "dilation": (1, 1), "padding": (1, 0), "stride": (1, 2)}

# name -> list of makers; a maker returns (numpy inputs, params). float64 inputs are differentiated.
CASES: dict[str, list] = {
    "neg": [_unary("neg")],
    "exp": [_unary("exp")],
    "log": [_unary("log", _positive)],
    "log1p": [_unary("log1p", _positive)],
    "expm1": [_unary("expm1")],
    "sqrt": [_unary("sqrt", _positive)],
    "rsqrt": [_unary("rsqrt", _positive)],
    "sin": [_unary("sin")],
    "cos": [_unary("cos")],
    "tanh": [_unary("tanh")],
    "sigmoid": [_unary("sigmoid")],
    "relu": [_unary("relu", _nonzero)],
    "relu_backward": [lambda rng: ([_real(rng, 3, 4), _nonzero(rng, 3, 4)], {})],
    "abs": [_unary("abs", _nonzero)],
    "sign": [_unary("sign", _nonzero)],
    "floor": [_unary("floor")],
    "ceil": [_unary("ceil")],
    "round": [_unary("round")],
    "trunc": [_unary("trunc")],
    "reciprocal": [_unary("reciprocal", _nonzero)],
    "erf": [_unary("erf")],
    "cast": [
        lambda rng: ([_real(rng, 3, 4)], {"dtype": jt.float64}),
        lambda rng: ([_real(rng, 3, 4)], {"dtype": jt.float32}),
    ],
    "add": [_binary(), _binary(shape_b=(4,))],
    "sub": [_binary(), _binary(shape_b=(3, 1))],
    "mul": [_binary(), _binary(shape_b=(1, 4))],
    "div": [_binary(_real, _nonzero), _binary(_real, _nonzero, (4,))],
    "pow": [_binary(_positive, _real), _binary(_positive, _real, (1,))],
    "maximum": [lambda rng: (np.split(_distinct(rng, 2, 3, 4), 2), {})],
    "minimum": [lambda rng: (np.split(_distinct(rng, 2, 3, 4), 2), {})],
    "remainder": [_remainder],
    "where": [lambda rng: ([rng.random((3, 4)) < 0.5, _real(rng, 3, 4), _real(rng, 4)], {})],
    "sum": [
        lambda rng: ([_real(rng, 3, 4, 2)], {"dims": (0, 2), "keepdim": False}),
        lambda rng: ([_real(rng, 3, 4)], {"dims": (1,), "keepdim": True}),
    ],
    "prod": [
        lambda rng: ([_nonzero(rng, 3, 4)], {"dims": (1,), "keepdim": False}),
        lambda rng: ([_nonzero(rng, 2, 3)], {"dims": (0, 1), "keepdim": True}),
    ],
    "amax": [
        lambda rng: ([_distinct(rng, 3, 4)], {"dims": (1,), "keepdim": False}),
        lambda rng: ([_distinct(rng, 2, 3, 2)], {"dims": (0, 2), "keepdim": True}),
    ],
    "amin": [
        lambda rng: ([_distinct(rng, 3, 4)], {"dims": (0,), "keepdim": True}),
        lambda rng: ([_distinct(rng, 3, 4)], {"dims": (0, 1), "keepdim": False}),
    ],
    "cumsum": [lambda rng: ([_real(rng, 3, 4)], {"dim": 1}), lambda rng: ([_real(rng, 3, 4)], {"dim": 0})],
    "reshape": [lambda rng: ([_real(rng, 3, 4)], {"shape": (2, 6)})],
    "permute": [lambda rng: ([_real(rng, 2, 3, 4)], {"dims": (2, 0, 1)})],
    "expand": [lambda rng: ([_real(rng, 3, 1)], {"shape": (2, 3, 4)})],
    "flip": [lambda rng: ([_real(rng, 3, 4)], {"dims": (0, 1)})],
    "copy": [lambda rng: ([_real(rng, 3, 4).T], {})],
    "pad": [lambda rng: ([_real(rng, 3, 4)], {"pads": ((1, 0), (2, 3)), "value": 0.5})],
    "getitem": [
        _getitem((slice(1, 3), 2)),
        _getitem((None, Ellipsis, slice(None, None, 2))),
        _getitem((jt.tensor([0, 3, 3]),)),
        _getitem((slice(None), jt.tensor([[1, 1], [4, 0]]))),
    ],
    "index_put": [
        _index_put((1,), (5,), False),
        _index_put((jt.tensor([0, 2, 0]),), (3, 5), True),
        _index_put((slice(None), jt.tensor([1, 3])), (4, 1), False),
    ],
    "cat": [
        lambda rng: ([_real(rng, 2, 3), _real(rng, 4, 3)], {"dim": 0}),
        lambda rng: ([_real(rng, 2, 3), _real(rng, 2, 1), _real(rng, 2, 2)], {"dim": 1}),
    ],
    "matmul": [
        lambda rng: ([_real(rng, 3, 4), _real(rng, 4, 2)], {}),
        lambda rng: ([_real(rng, 2, 3, 4), _real(rng, 4, 5)], {}),
    ],
    "einsum": [
        lambda rng: ([_real(rng, 3, 4), _real(rng, 4, 5)], {"equation": "ij,jk->ik"}),
        lambda rng: ([_real(rng, 3, 3, 2)], {"equation": "iij->ij"}),
        lambda rng: ([_real(rng, 2, 3), _real(rng, 3), _real(rng, 3, 4)], {"equation": "ij,j,jk->i"}),
    ],
    "gather": [lambda rng: ([_real(rng, 3, 5), rng.integers(0, 5, (3, 4))], {"dim": 1})],
    "scatter_add": [
        lambda rng: ([_real(rng, 3, 5), rng.integers(0, 5, (3, 6)), _real(rng, 3, 6)], {"dim": 1}),
        lambda rng: ([_real(rng, 3, 2), rng.integers(0, 3, (4, 2)), _real(rng, 5, 2)], {"dim": 0}),
    ],
    "scatter": [
        lambda rng: ([_real(rng, 3, 5), _unique_index(rng, (3, 4), 1, 5), _real(rng, 3, 4)], {"dim": 1}),
        lambda rng: ([_real(rng, 4, 3), _unique_index(rng, (2, 3), 0, 4), _real(rng, 3, 3)], {"dim": 0}),
    ],
    "unfold": [lambda rng: ([_real(rng, 2, 2, 4, 5)], dict(_CONV))],
    "fold": [lambda rng: ([_real(rng, 2, 8, 10)], {"output_size": (4, 5), **_CONV})],
    "attention": [
        lambda rng: ([_real(rng, 2, 2, 5, 4), _real(rng, 2, 2, 6, 4), _real(rng, 2, 2, 6, 3)],
                     {"is_causal": False, "scale": 0.7}),
        lambda rng: ([_real(rng, 1, 2, 6, 4), _real(rng, 1, 2, 4, 4), _real(rng, 1, 2, 4, 5)],
                     {"is_causal": True, "scale": 0.5}),
    ],
    # linear algebra (well-conditioned inputs; outputs of several parts are packed flat)
    "inv": [lambda rng: ([_real(rng, 2, 3, 3) + 3 * np.eye(3)], {})],
    "det": [lambda rng: ([_real(rng, 3, 3)], {})],
    "slogdet": [lambda rng: ([_real(rng, 3, 3)], {})],
    "solve": [lambda rng: ([_real(rng, 2, 3, 3) + 3 * np.eye(3), _real(rng, 3, 2)], {})],
    "qr": [lambda rng: ([_real(rng, 2, 4, 3)], {"mode": "reduced"})],
    "svd": [lambda rng: ([_real(rng, 4, 3)], {"full_matrices": False})],
    "svdvals": [lambda rng: ([_real(rng, 2, 4, 3)], {})],
    "cholesky": [lambda rng: ([_spd(rng, 3)], {"upper": False})],
    "eigh": [lambda rng: ([_spd(rng, 3)], {"UPLO": "L"})],
}
# primitives that read one triangle of a symmetric input: their directions are symmetric too
_SYMMETRIC = {"cholesky", "eigh"}


def _spd(rng, n: int) -> np.ndarray:
    """A symmetric positive-definite matrix with distinct eigenvalues (well apart)."""
    a = _real(rng, n, n)
    return a @ a.T + np.diag(np.arange(1, n + 1) * 2.0)


def _differentiable_prims() -> list[str]:
    return sorted(VJP)


def test_every_differentiable_prim_has_a_case():
    missing = [name for name in _differentiable_prims() if name not in CASES]
    assert not missing, f"add finite-difference cases to tests/test_gradcheck.py for: {missing}"


def _run(name, arrays, params):
    with jt.no_grad():
        return dispatch(PRIMS[name], tuple(jt.tensor(a) for a in arrays), params).numpy().astype(np.float64)


_PARAMS = [(name, i) for name in sorted(CASES) for i in range(len(CASES[name]))]


@pytest.mark.parametrize("name,i", _PARAMS, ids=[f"{n}-{i}" for n, i in _PARAMS])
def test_vjp_matches_finite_differences(name, i):
    rng = np.random.default_rng(1000 + i)
    arrays, params = CASES[name][i](rng)
    arrays = [np.ascontiguousarray(a) if a.dtype != np.float64 else a for a in arrays]
    diff = [k for k, a in enumerate(arrays) if a.dtype == np.float64]
    inputs = [jt.tensor(a, requires_grad=k in diff) for k, a in enumerate(arrays)]
    out = dispatch(PRIMS[name], tuple(inputs), params)
    # float64: the difference quotient is good to about 1e-10 (rounding of f over a 1e-6 step). A
    # float32 output (cast) rounds at 1e-7: a wider step (exact for that linear op) keeps the quotient
    # good to about 1e-6 of the terms' scale
    eps, tol = (EPS, 1e-8) if out.dtype is jt.float64 else (1e-2, 1e-5)
    for _ in range(N_DIRECTIONS):
        us = {k: rng.standard_normal(arrays[k].shape) for k in diff}
        if name in _SYMMETRIC:
            us = {k: (u + np.swapaxes(u, -1, -2)) / 2 for k, u in us.items()}
        v = rng.standard_normal(tuple(out.shape))
        plus = [a + eps * us[k] if k in us else a for k, a in enumerate(arrays)]
        minus = [a - eps * us[k] if k in us else a for k, a in enumerate(arrays)]
        terms = v * (_run(name, plus, params) - _run(name, minus, params)) / (2 * eps)
        jvp = np.sum(terms)
        grads = jt.autograd.grad(
            out,
            [inputs[k] for k in diff],
            grad_outputs=jt.tensor(v).to(out.dtype),
            retain_graph=True,
            allow_unused=True,
        )
        vjp = sum(np.sum(g.numpy().astype(np.float64) * us[k]) for k, g in zip(diff, grads) if g is not None)
        for k, g in zip(diff, grads):
            assert g is None or g.shape == inputs[k].shape, f"{name}: grad of input {k} has the wrong shape"
        # the sum may cancel: it is known to the scale of its terms, not to its own
        np.testing.assert_allclose(vjp, jvp, rtol=tol, atol=tol * np.sum(np.abs(terms)), err_msg=f"{name} case {i}")
