"""Tensor creation: from data, filled, ranges, and random."""

from __future__ import annotations

import contextlib
import sys
import warnings

import numpy as np

from . import cuda
from . import dtypes as _dt
from ._trace_state import trace_state
from .backends import backend_for
from .device import Device, placement
from .errors import BackendError, TraceWarning
from .random import normal, rng, uniform
from .symbolic import SymInt, is_symbolic, specialize
from .tensor import Tensor


def _finish(data: np.ndarray, device, requires_grad: bool) -> Tensor:
    """A tensor of host array `data`, moved to `device` (None: the CPU)."""
    t = Tensor._make(data)
    if device is not None:
        t = t.to(placement(device))
    if requires_grad:
        t.requires_grad_(True)
    return t


def _shape(size) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = size[0]
    for s in size:
        if not isinstance(s, (int, np.integer)) or (type(s) is not SymInt and s < 0):
            raise ValueError(f"sizes must be non-negative integers, got {tuple(size)}")
    return tuple(s if type(s) is SymInt else int(s) for s in size)  # (a symbolic size stays one)


def _is_sequence(x) -> bool:
    return isinstance(x, (list, tuple)) or (isinstance(x, (np.ndarray, Tensor)) and x.ndim > 0)


def _ragged_message(data) -> str | None:
    """PyTorch's words for nested sequences whose lengths disagree, e.g. [[1, 2, 3], [4, 5]]: "expected
    sequence of length 3 at dim 1 (got 2)"; None when the nesting is regular. The expected lengths
    are those along the first elements, as PyTorch reads them."""
    shape = []
    first = data
    while _is_sequence(first):
        shape.append(len(first))
        if not len(first):
            break
        first = first[0]
    pending = [(data, 0)]  # a stack, not recursion: the walk visits every element
    while pending:
        x, dim = pending.pop()
        if dim == len(shape):
            if _is_sequence(x):
                return f"expected a number at dim {dim} (got a sequence of length {len(x)})"
            continue
        if not _is_sequence(x):
            return f"expected sequence of length {shape[dim]} at dim {dim} (got {type(x).__name__})"
        if len(x) != shape[dim]:
            return f"expected sequence of length {shape[dim]} at dim {dim} (got {len(x)})"
        pending.extend((item, dim + 1) for item in reversed(x))
    return None


def _array(data, dtype=None) -> np.ndarray:
    """np.array(data), with PyTorch's ValueError naming the ragged dim where numpy's names none."""
    try:
        return np.array(data, dtype=dtype)
    except ValueError:
        message = _ragged_message(data)
        if message is None:
            raise
        raise ValueError(message) from None


def _infer_np(data, dtype: _dt.DType | None) -> np.ndarray:
    if dtype is not None:
        return _array(data, dtype=dtype.np)
    arr = _array(data)
    if isinstance(data, np.ndarray) or isinstance(data, np.generic):
        return arr.astype(_dt.from_numpy_dtype(arr.dtype).np, copy=False)
    if arr.dtype.kind == "f":
        return arr.astype(_dt.get_default_dtype().np)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        return arr
    raise TypeError(f"cannot make a tensor from data of type {type(data).__name__} (numpy dtype {arr.dtype})")


def _warn_if_traced(what: str, data) -> None:
    """Inside a trace, a tensor made from a numpy array holds the trace's values for good: the
    numpy code that made them runs only while tracing (a literal list is a constant anyway)."""
    if (trace_state.tracer is not None and isinstance(data, np.ndarray)
            and not sys._getframe(2).f_globals.get("__name__", "").startswith("jitorch.")):  # (the user's call)
        from ._trace_state import user_source

        warnings.warn(
            f"jitorch.compile: {what} of a numpy array at {user_source()} is a constant of the compiled "
            "program: later calls reuse the values it had while tracing (numpy code runs only then). If "
            "they change between calls, make the tensor outside the compiled function and pass it in.",
            TraceWarning, stacklevel=3)


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of `data` (a number, nested lists, a numpy array or a tensor).

    Python floats become the default float dtype (float32), ints int64, bools bool; numpy arrays
    keep their dtype. Example: `jitorch.tensor([[1., 2.], [3., 4.]], requires_grad=True)`.
    """
    if isinstance(data, Tensor):  # a copy, on data's device unless told otherwise (as PyTorch)
        device = data.device if device is None else device
        data = data.detach()._concrete("jitorch.tensor()")
    else:
        _warn_if_traced("jitorch.tensor()", data)
    dtype = None if dtype is None else _dt.get_dtype(dtype)
    arr = np.array(_infer_np(data, dtype), copy=True)
    return _finish(arr, device, requires_grad)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like `tensor`, but shares memory with a numpy array or tensor when no conversion is needed."""
    if isinstance(data, Tensor):
        return data.to(device=device, dtype=dtype)
    if isinstance(data, np.ndarray) and (dtype is None or _dt.get_dtype(dtype).np == data.dtype):
        _warn_if_traced("jitorch.as_tensor()", data)
        return _finish(np.asarray(data, dtype=_dt.from_numpy_dtype(data.dtype).np), device, False)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with a numpy array (writes show through both ways)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(array).__name__})")
    _dt.from_numpy_dtype(array.dtype)
    _warn_if_traced("jitorch.from_numpy()", array)
    return Tensor._make(array)


# DLPack device types (dlpack.h): memory a CUDA device reads (numpy reads kDLCPU's)
_KDL_CUDA, _KDL_CUDA_MANAGED = 2, 13


def from_dlpack(ext) -> Tensor:
    """A tensor sharing memory with any DLPack-capable array, without a copy: numpy or PyTorch CPU
    arrays give a CPU tensor; CuPy arrays or PyTorch/JAX CUDA arrays a tensor on that CUDA device."""
    kind, index = ext.__dlpack_device__() if hasattr(ext, "__dlpack_device__") else (1, 0)
    if kind in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        return _from_device_dlpack(ext, placement(Device("cuda", int(index))))
    try:
        arr = np.from_dlpack(ext)
    except (RuntimeError, BufferError, TypeError) as err:
        if "bfloat16" not in str(getattr(ext, "dtype", "")):
            raise
        from ._dlpack import import_bfloat16

        try:  # numpy has no bfloat16: take the bits as uint16 and view them as bfloat16
            arr = import_bfloat16(ext)
        except Exception:
            raise err from None
    _dt.from_numpy_dtype(arr.dtype)
    return Tensor._make(arr)


def _from_device_dlpack(ext, device: Device) -> Tensor:
    backend = backend_for(device.type)
    importer = getattr(backend, "from_dlpack", None) or _library_from_dlpack(backend)
    if importer is None:
        raise BackendError(f"the {device.type} backend cannot take DLPack arrays (it has no from_dlpack)")
    with cuda.placing(device.index):
        data = importer(ext)
    _dt.from_numpy_dtype(data.dtype)
    t = Tensor._make(data)
    t._device = device
    return t


def _library_from_dlpack(backend):
    """The `from_dlpack` of the array library whose arrays the backend's buffers are (CuPy's), if any."""
    library = sys.modules.get(getattr(backend.buffer_type, "__module__", "").partition(".")[0])
    return getattr(library, "from_dlpack", None)


def _not_traceable(name: str) -> None:
    if trace_state.tracer is not None:
        from ._trace_state import user_source
        from .errors import TraceError

        raise TraceError(f"{name} is not supported inside jitorch.compile yet (at {user_source()}); "
                         "draw it outside the compiled function and pass it in")


def _fill(size, value, dtype, device, requires_grad, default=None) -> Tensor:
    dtype = _dt.get_dtype(dtype) if dtype is not None else (default or _dt.get_default_dtype())
    value = _dt.scalar_for(value, dtype, checked=True)
    shape = _shape(size)
    if is_symbolic(shape):
        return _symbolic_fill(shape, value, dtype, device)
    if device is None or trace_state.tracer is not None:
        return _finish(np.full(shape, value, dtype=dtype.np), device, requires_grad)
    t = filled_on(placement(device), shape, value, dtype.np)
    if requires_grad:
        t.requires_grad_(True)
    return t


def filled_on(device: Device, shape: tuple[int, ...], value, np_dtype: np.dtype) -> Tensor:
    """A new tensor of `shape` holding `value` on `device`, made there by its backend (a GPU fills
    its own memory, where a host array of the shape would be made and copied); on the CPU, and while
    tracing (where it is a constant of the trace), from a host array."""
    if device.type == "cpu" or trace_state.tracer is not None:
        return _finish(np.full(shape, value, dtype=np_dtype), device, False)
    backend = backend_for(device.type)
    with cuda.placing(device.index) if device.type == "cuda" else contextlib.nullcontext():
        data = backend.full(shape, value, np_dtype)
    t = Tensor._make(data)
    t._device = device
    return t


def _symbolic_fill(shape: tuple, value, dtype: _dt.DType, device) -> Tensor:
    """A filled tensor of a symbolic shape, inside a dynamic-shape trace: the value broadcast to the
    shape and copied, so the graph makes it for every size (a constant would have this call's)."""
    return _finish(np.array(value, dtype=dtype.np), device, False).expand(shape).clone()


def zeros(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _fill(size, 0, dtype, device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _fill(size, 1, dtype, device, requires_grad)


def empty(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    dtype = _dt.get_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    shape = _shape(size)
    if is_symbolic(shape):
        return _symbolic_fill(shape, 0, dtype, device)
    return _finish(np.empty(shape, dtype=dtype.np), device, requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor filled with `fill_value`; its dtype follows the value (bool, int64, float32)."""
    return _fill((tuple(size),), fill_value, dtype, device, requires_grad, _dt.scalar_dtype(fill_value))


def _like(fn, input: Tensor, dtype, device, requires_grad, *args) -> Tensor:
    return fn(*args, dtype=dtype or input.dtype, device=device or input.device, requires_grad=requires_grad)


def zeros_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(lambda **k: zeros(tuple(input.shape), **k), input, dtype, device, requires_grad)


def ones_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(lambda **k: ones(tuple(input.shape), **k), input, dtype, device, requires_grad)


def empty_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(lambda **k: empty(tuple(input.shape), **k), input, dtype, device, requires_grad)


def full_like(input: Tensor, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _like(lambda **k: full(tuple(input.shape), fill_value, **k), input, dtype, device, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Values from start to end (exclusive) by step; int64 unless any bound is a float."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise RuntimeError("arange: step must be nonzero")
    if dtype is None:
        is_float = any(isinstance(v, float) for v in (start, end, step))
        dtype = _dt.get_default_dtype() if is_float else _dt.int64
    dtype = _dt.get_dtype(dtype)
    if is_symbolic((start, end, step)):
        return _symbolic_arange(start, end, step, dtype, device)
    n = max(0, int(np.ceil((end - start) / step)))
    data = (start + step * np.arange(n, dtype=np.float64)).astype(dtype.np) if dtype.is_floating_point else (
        np.arange(start, end, step).astype(dtype.np))
    return _finish(data, device, requires_grad)


def _symbolic_arange(start, end, step, dtype: _dt.DType, device) -> Tensor:
    """arange with a symbolic bound, inside a dynamic-shape trace: a running count of ones (exact in
    int64), so the graph makes it for every size."""
    if not all(isinstance(v, int) for v in (start, end, step)) or step <= 0:
        start, end, step = (specialize(v) for v in (start, end, step))
        return arange(start, end, step, dtype=dtype, device=device)
    count = (end - start + step - 1) // step
    index = _symbolic_fill((count,), 1, _dt.int64, device).cumsum(0) - 1
    values = index * step + start if (step, start) != (1, 0) else index
    return values.to(dtype)


def linspace(start, end, steps: int, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    dtype = _dt.get_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    return _finish(np.linspace(start, end, steps).astype(dtype.np), device, requires_grad)


def logspace(start, end, steps: int, base: float = 10.0, dtype=None, device=None,
             requires_grad: bool = False) -> Tensor:
    """`steps` values from base**start to base**end, their exponents evenly spaced (computed in
    float64, then cast to `dtype`, as PyTorch's)."""
    dtype = _dt.get_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    return _finish(np.power(float(base), np.linspace(start, end, steps)).astype(dtype.np), device, requires_grad)


def eye(n: int, m: int | None = None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    dtype = _dt.get_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    return _finish(np.eye(n, m, dtype=dtype.np), device, requires_grad)


def rand(*size, generator=None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    device = None if device is None else placement(device)
    t = uniform(_shape(size), 0.0, 1.0, dtype, generator, device)
    if t._value is not None:  # traced inside jitorch.compile
        return t
    return _finish(t._data, device, requires_grad)


def randn(*size, generator=None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples."""
    device = None if device is None else placement(device)
    t = normal(_shape(size), 0.0, 1.0, dtype, generator, device)
    if t._value is not None:  # traced inside jitorch.compile
        return t
    return _finish(t._data, device, requires_grad)


def randint(low, high=None, size=None, generator=None, dtype=None, device=None,
            requires_grad: bool = False) -> Tensor:
    """Integers in [low, high): `randint(10, (3,))` or `randint(2, 10, (3,))`."""
    if size is None:
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    dtype = _dt.get_dtype(dtype) if dtype is not None else _dt.int64
    device = None if device is None else placement(device)
    if high - low > 2**24 and trace_state.tracer is None:  # beyond what a float32 uniform resolves
        return _finish(rng(generator).integers(low, high, size=tuple(size)).astype(dtype.np), device, requires_grad)
    # from uniforms, eagerly as in a compiled function: the same integers for the same seed
    u = uniform(tuple(size), 0.0, 1.0, _dt.float64, generator, device)
    out = ((u * (high - low)).floor() + low).to(dtype)
    return out if out._value is not None else _finish(out._data, device, requires_grad)


def randperm(n: int, generator=None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    _not_traceable("randperm")
    dtype = _dt.get_dtype(dtype) if dtype is not None else _dt.int64
    return _finish(rng(generator).permutation(n).astype(dtype.np), device, requires_grad)


def rand_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return rand(tuple(input.shape), dtype=dtype or input.dtype, device=device or input.device,
                requires_grad=requires_grad)


def randn_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return randn(tuple(input.shape), dtype=dtype or input.dtype, device=device or input.device,
                 requires_grad=requires_grad)


def randint_like(input: Tensor, low, high=None, dtype=None, device=None) -> Tensor:
    return randint(low, high, tuple(input.shape), dtype=dtype or input.dtype, device=device or input.device)


def bernoulli(input: Tensor, generator=None) -> Tensor:
    """Samples 1 with probability `input` (elementwise), else 0."""
    # from uniforms, eagerly as in a compiled function: the same draws for the same seed
    u = uniform(tuple(input.shape), 0.0, 1.0, input.dtype, generator, input.device)
    return (u.to(input.device) < input).to(input.dtype)


def multinomial(input: Tensor, num_samples: int, replacement: bool = False, generator=None) -> Tensor:
    """Draw category indices with probabilities proportional to the rows of `input`."""
    _not_traceable("multinomial")
    probs = np.asarray(input._concrete("multinomial"), dtype=np.float64)
    g = rng(generator)
    rows = probs.reshape(-1, probs.shape[-1])
    out = np.stack([g.choice(rows.shape[1], size=num_samples, replace=replacement, p=r / r.sum())
                    for r in rows])
    return _finish(out.reshape(probs.shape[:-1] + (num_samples,)).astype(np.int64), input.device, False)
