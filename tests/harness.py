"""Run an `OpCase` in jitorch and in PyTorch on the same seeded inputs and compare.

`run_case(case, transform=...)` checks values, shapes and dtypes of every output (integers and bools
exactly, floats within their dtype's tolerance at the output's own scale, see `TOLERANCES`) and,
for differentiable cases, the gradient of every floating input under a random cotangent.
`transform(fn)` receives the jitorch-bound function (`fn(*tensors)`) and returns what to call
instead: identity for eager runs, `jitorch.compile` for compiled ones. `device` runs both libraries
there ("cuda": jitorch's GPU backend beside PyTorch's).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable

import ml_dtypes
import numpy as np
import pytest
import torch

import jitorch
from tests.op_cases import FLOATS, TOLERANCES, Input, OpCase

_NP = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int32": np.int32,
    "int64": np.int64,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def identity(fn: Callable) -> Callable:
    return fn


def seed_for(name: str, seed: int = 0) -> int:
    """A stable per-case seed (Python's hash() of a str changes run to run)."""
    return zlib.crc32(name.encode()) + seed


def make_array(spec: Input, rng: np.random.Generator) -> np.ndarray:
    """Random values for one input spec; floats are exactly representable in the spec's dtype."""
    shape, domain = spec.shape, spec.domain
    n = int(np.prod(shape, dtype=np.int64))
    if domain == "bool":
        return np.asarray(rng.random(shape) < 0.5)
    if isinstance(domain, tuple) and domain[0] == "int":
        vals = rng.integers(domain[1], domain[2], size=shape).astype(np.float64)
    elif isinstance(domain, tuple) and domain[0] == "perm":
        _, dim, size = domain
        full = list(shape)
        full[dim] = size
        order = np.argsort(rng.random(full), axis=dim)
        vals = np.take(order, np.arange(shape[dim]), axis=dim)
    elif domain == "real":
        vals = rng.standard_normal(shape)
    elif domain == "positive":
        vals = rng.uniform(0.5, 2.0, shape)
    elif domain == "unit":
        vals = rng.uniform(0.05, 0.95, shape)
    elif domain == "nonzero":
        vals = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif domain == "distinct":
        vals = (rng.permutation(n).reshape(shape) - n // 2) * 0.5
        if spec.dtype not in FLOATS:
            vals = vals * 2
    else:
        raise ValueError(f"unknown domain {domain!r}")
    if spec.dtype not in FLOATS and spec.dtype != "bool":
        # through int64: a value out of a narrow type's range wraps (-1 is uint8's 255), where a float
        # converted straight to it is undefined
        return np.asarray(vals).astype(np.int64).astype(_NP[spec.dtype])
    return np.asarray(vals).astype(_NP[spec.dtype])


def make_arrays(case: OpCase, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed_for(case.name, seed))
    return [make_array(spec, rng) for spec in case.inputs]


def _needs_grad(case: OpCase, spec: Input) -> bool:
    return case.grad and spec.grad and spec.dtype in FLOATS


def to_torch(arr: np.ndarray, dtype: str, requires_grad: bool, device: str = "cpu") -> torch.Tensor:
    if dtype == "bfloat16":
        t = torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
    else:
        t = torch.from_numpy(arr.copy())
    return t.to(device).requires_grad_(requires_grad)


def to_jitorch(arr: np.ndarray, requires_grad: bool, device: str = "cpu") -> jitorch.Tensor:
    return jitorch.tensor(arr, requires_grad=requires_grad, device=device)


def to_numpy(t) -> np.ndarray:
    """Either library's tensor as a numpy array on the host (bfloat16 widened to float32)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    a = t.detach().to("cpu").numpy()
    return a.astype(np.float32) if a.dtype == ml_dtypes.bfloat16 else a


def dtype_name(t) -> str:
    return str(t.dtype).split(".")[-1]


def flatten_outputs(out) -> list:
    """Outputs as a flat list of tensors (tuples, lists and namedtuples are walked)."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o)]
    return [out]


def assert_close(got, want, what: str, grad: bool = False) -> None:
    """Compare a jitorch result with a torch one: shape and dtype exactly, values per dtype.

    Floats may differ by n * eps * (|want| + the largest finite |want|), with n from `TOLERANCES`
    for the dtype (forward values or gradients) and eps the dtype's machine epsilon.
    """
    assert tuple(got.shape) == tuple(want.shape), (
        f"{what}: shape {tuple(got.shape)} != torch {tuple(want.shape)}"
    )
    dtype = dtype_name(want)
    assert dtype_name(got) == dtype, f"{what}: dtype {got.dtype} != torch {want.dtype}"
    g, w = to_numpy(got), to_numpy(want)
    if dtype not in FLOATS:
        np.testing.assert_array_equal(g, w, err_msg=what)
        return
    g, w = g.astype(np.float64), w.astype(np.float64)
    finite = np.abs(w[np.isfinite(w)])
    scale = float(finite.max()) if finite.size else 0.0
    tol = TOLERANCES[dtype][grad] * float(ml_dtypes.finfo(_NP[dtype]).eps)
    np.testing.assert_allclose(
        g, w, rtol=tol, atol=tol * scale, equal_nan=True,
        err_msg=f"{what} ({dtype}: within {tol:.2g} relative and {tol:.2g} of the output's scale {scale:.3g})",
    )


def _float_outputs(outs: list) -> list[int]:
    return [i for i, o in enumerate(outs) if dtype_name(o) in FLOATS and o.requires_grad]


def run_case(case: OpCase, transform: Callable = identity, seed: int = 0, device: str = "cpu") -> None:
    """Run `case` in both libraries and assert that values, shapes, dtypes and gradients agree."""
    arrays = make_arrays(case, seed)
    flags = [_needs_grad(case, s) for s in case.inputs]
    jt_in = [to_jitorch(a, f, device) for a, f in zip(arrays, flags)]
    th_in = [to_torch(a, s.dtype, f, device) for a, s, f in zip(arrays, case.inputs, flags)]
    jt_fn = transform(functools.partial(case.fn, jitorch))
    try:
        th_out = flatten_outputs(case.fn(torch, *th_in))
    except (RuntimeError, NotImplementedError) as err:
        if device != "cpu":
            # PyTorch refuses the case on this device (int64 matmul on cuda, a case that builds CPU
            # tensors of its own): there is no reference to compare with
            pytest.skip(f"PyTorch refuses {case.name} on {device}: {err}")
        raise
    jt_out = flatten_outputs(jt_fn(*jt_in))
    assert len(jt_out) == len(th_out), f"{case.name}: {len(jt_out)} outputs, torch gives {len(th_out)}"
    for i, (g, w) in enumerate(zip(jt_out, th_out)):
        assert isinstance(g, jitorch.Tensor), f"{case.name}: output {i} is a {type(g).__name__}"
        assert_close(g, w, f"{case.name} output {i}")
    if any(flags):
        _check_grads(case, jt_in, th_in, jt_out, th_out, flags, seed)


def _check_grads(case, jt_in, th_in, jt_out, th_out, flags, seed) -> None:
    outs = _float_outputs(th_out)
    assert _float_outputs(jt_out) == outs, f"{case.name}: outputs requiring grad differ from torch's"
    if not outs:
        return  # e.g. argmax: integer outputs only, and jitorch agrees that none requires grad
    rng = np.random.default_rng(seed_for(case.name, seed + 1))
    cot = [rng.standard_normal(tuple(th_out[i].shape)).astype(np.float32) for i in outs]
    th_cot = [torch.from_numpy(c).to(th_out[i].device).to(th_out[i].dtype) for c, i in zip(cot, outs)]
    jt_cot = [jitorch.tensor(c, device=jt_out[i].device).to(jt_out[i].dtype) for c, i in zip(cot, outs)]
    th_leaves = [t for t, f in zip(th_in, flags) if f]
    jt_leaves = [t for t, f in zip(jt_in, flags) if f]
    th_g = torch.autograd.grad([th_out[i] for i in outs], th_leaves, th_cot, allow_unused=True)
    jt_g = jitorch.autograd.grad([jt_out[i] for i in outs], jt_leaves, jt_cot, allow_unused=True)
    for k, (g, w) in enumerate(zip(jt_g, th_g)):
        if w is None:
            w = torch.zeros_like(th_leaves[k])
        if g is None:
            g = jitorch.zeros_like(jt_leaves[k])
        assert_close(g, w, f"{case.name} grad of input {k}", grad=True)
