"""`assert_close`: PyTorch's test assertion, with its default tolerances per dtype and its messages,
so tests written for `torch.testing` read the same here.

    >>> import jitorch as jt
    >>> assert_close(jt.tensor([1.0, 2.0]), jt.tensor([1.0, 2.0 + 1e-7]))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from . import dtypes as _dt
from .creation import from_numpy
from .tensor import Tensor

# (rtol, atol) by dtype, as torch.testing's defaults; integer and bool dtypes compare exactly
_DEFAULT_TOLERANCES = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}


def _tolerances(dtypes: Sequence[str], rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The tolerances to use: the caller's (both or neither), else the loosest default of `dtypes`."""
    if (rtol is None) != (atol is None):
        missing = "atol" if atol is None else "rtol"
        raise ValueError(f"Both 'rtol' and 'atol' must be either specified or omitted, but got no {missing}.")
    if rtol is not None:
        return rtol, atol
    defaults = [_DEFAULT_TOLERANCES.get(name, (0.0, 0.0)) for name in dtypes]
    return max(r for r, _ in defaults), max(a for _, a in defaults)


def _mismatch_msg(identifier: str, extra: str, abs_diff: str, rel_diff: str, rtol: float, atol: float) -> str:
    """PyTorch's message: the headline, `extra`, then the absolute and relative differences (with
    the allowed tolerance unless the comparison is for equality)."""
    equality = rtol == 0 and atol == 0
    abs_line = abs_diff + ("" if equality else f" (up to {atol} allowed)")
    rel_line = rel_diff + ("" if equality else f" (up to {rtol} allowed)")
    return f"{identifier} are not {'equal' if equality else 'close'}!\n\n{extra}\n{abs_line}\n{rel_line}"


def _scalar_mismatch_msg(actual, expected, rtol: float, atol: float) -> str:
    abs_diff = abs(actual - expected)
    rel_diff = float("inf") if expected == 0 else abs_diff / abs(expected)
    return _mismatch_msg("Scalars", f"Expected {expected} but got {actual}.", f"Absolute difference: {abs_diff}",
                         f"Relative difference: {rel_diff}", rtol, atol)


def _tensor_mismatch_msg(actual: np.ndarray, expected: np.ndarray, matches: np.ndarray, rtol: float,
                         atol: float) -> str:
    """Counts the mismatches and names the greatest differences among them, computed in the inputs'
    float type (integers and bools in int64), with their indices."""
    if actual.ndim == 0:
        return _scalar_mismatch_msg(actual.item(), expected.item(), rtol, atol)
    total, bad = matches.size, int(matches.size - matches.sum())
    extra = f"Mismatched elements: {bad} / {total} ({bad / total:.1%})"
    if actual.dtype.kind not in "fc":
        actual, expected = actual.astype(np.int64), expected.astype(np.int64)
    with np.errstate(all="ignore"):
        abs_diff = np.abs(actual - expected).ravel()
        abs_diff[matches.ravel()] = 0
        rel_diff = abs_diff / np.abs(expected).ravel()
    rel_diff[matches.ravel()] = 0
    return _mismatch_msg("Tensor-likes", extra, _greatest("absolute", abs_diff, actual.shape),
                         _greatest("relative", rel_diff, actual.shape), rtol, atol)


def _greatest(kind: str, diff: np.ndarray, shape: tuple[int, ...]) -> str:
    """'Greatest <kind> difference: <value> at index <(i, j)>' (a NaN counts as the greatest)."""
    at = int(np.argmax(diff))
    index = tuple(int(i) for i in np.unravel_index(at, shape))
    return f"Greatest {kind} difference: {diff[at].item()} at index {index}"


def _host(t: Tensor) -> np.ndarray:
    """A tensor's values on the host, bfloat16 widened to float32 (numpy has no arithmetic of its own
    for it)."""
    data = t.detach().cpu().numpy()
    return data.astype(np.float32) if t.dtype is _dt.bfloat16 else data


def _attribute_mismatch(actual: Tensor, expected: Tensor, check_dtype: bool, check_device: bool) -> str | None:
    """The message for the first of shape, device and dtype (those checked) that differs, else None."""
    checks = [("shape", actual.shape, expected.shape)]
    if check_device:
        checks.append(("device", actual.device, expected.device))
    if check_dtype:
        checks.append(("dtype", actual.dtype, expected.dtype))
    for name, a, e in checks:
        if a != e:
            return f"The values for attribute '{name}' do not match: {a!r} != {e!r}."
    return None


def _compare_tensors(actual: Tensor, expected: Tensor, rtol, atol, equal_nan: bool, check_dtype: bool,
                     check_device: bool) -> str | None:
    """None where the tensors are close, else the message saying how they differ."""
    mismatch = _attribute_mismatch(actual, expected, check_dtype, check_device)
    if mismatch is not None:
        return mismatch
    rtol, atol = _tolerances([actual.dtype.name, expected.dtype.name], rtol, atol)
    a, e = _host(actual), _host(expected)
    if a.dtype != e.dtype:
        common = np.promote_types(a.dtype, e.dtype)
        a, e = a.astype(common), e.astype(common)
    with np.errstate(all="ignore"):
        matches = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=equal_nan) if a.dtype.kind in "fc" else a == e
    if matches.all():
        return None
    return _tensor_mismatch_msg(a, e, np.asarray(matches), rtol, atol)


def _compare_numbers(actual, expected, rtol, atol, equal_nan: bool, check_dtype: bool) -> str | None:
    """None where the numbers are close, else the message saying how they differ."""
    if check_dtype and type(actual) is not type(expected):
        return f"The (d)types do not match: {type(actual)} != {type(expected)}."
    if isinstance(actual, bool):
        rtol, atol = _tolerances(["bool"], rtol, atol)
        return None if actual == expected else _scalar_mismatch_msg(int(actual), int(expected), rtol, atol)
    rtol, atol = _tolerances(["float64" if isinstance(actual, float) or isinstance(expected, float) else "int64"],
                             rtol, atol)
    if np.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan):
        return None
    return _scalar_mismatch_msg(actual, expected, rtol, atol)


def _pairs(actual, expected, where: str = "") -> list[tuple[object, object, str]]:
    """The (actual, expected, location) leaves of two matching structures of sequences and
    mappings, or a TypeError/AssertionError where their structure or types differ."""
    if isinstance(actual, Tensor) and isinstance(expected, Tensor):
        return [(actual, expected, where)]
    if isinstance(actual, np.ndarray) and isinstance(expected, np.ndarray):
        return [(from_numpy(actual), from_numpy(expected), where)]
    if isinstance(actual, (bool, int, float)) and isinstance(expected, (bool, int, float)):
        return [(actual, expected, where)]
    if isinstance(actual, Mapping) and isinstance(expected, Mapping):
        if set(actual) != set(expected):
            raise AssertionError(f"The keys of the mappings do not match: {sorted(map(repr, actual))} != "
                                 f"{sorted(map(repr, expected))}.")
        return [p for key in actual for p in _pairs(actual[key], expected[key], f"{where}[{key!r}]")]
    if (isinstance(actual, Sequence) and isinstance(expected, Sequence)
            and not isinstance(actual, str) and not isinstance(expected, str)):
        if len(actual) != len(expected):
            raise AssertionError(f"The length of the sequences mismatch: {len(actual)} != {len(expected)}")
        return [p for i, (a, e) in enumerate(zip(actual, expected)) for p in _pairs(a, e, f"{where}[{i}]")]
    raise TypeError(f"No comparison pair was able to handle inputs of type {type(actual)} and {type(expected)}.")


def assert_close(actual, expected, *, rtol: float | None = None, atol: float | None = None, equal_nan: bool = False,
                 check_dtype: bool = True, check_device: bool = True,
                 msg: str | Callable[[str], str] | None = None) -> None:
    """Raise an AssertionError unless `actual` and `expected` (tensors, numpy arrays, Python
    numbers, or sequences and mappings of them) are close: |actual - expected| <= atol + rtol *
    |expected| elementwise, with PyTorch's default tolerances for the dtypes when neither is given.
    The message counts the mismatched elements and names the greatest differences and their
    indices; `msg` replaces it (a string) or rewrites it (a callable).

        >>> assert_close(jt.tensor([1.0]), jt.tensor([1.5]))
        Traceback (most recent call last):
        AssertionError: Tensor-likes are not close!
        ...
    """
    for a, e, where in _pairs(actual, expected):
        if isinstance(a, Tensor):
            failure = _compare_tensors(a, e, rtol, atol, equal_nan, check_dtype, check_device)
        else:
            failure = _compare_numbers(a, e, rtol, atol, equal_nan, check_dtype)
        if failure is None:
            continue
        if where:
            failure += f"\n\nThe failure occurred for item {where}"
        if msg is not None:
            failure = msg(failure) if callable(msg) else msg
        raise AssertionError(failure)
