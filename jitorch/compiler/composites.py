"""Eager composites as cached compiled functions, on backends where an eager kernel costs a launch.

On the GPU every primitive an eager composite runs is a kernel launch with ~15-25 us of host time
(CuPy's launch and jitorch's dispatch): `F.layer_norm` is a dozen of them forward and more backward,
where PyTorch runs one native kernel each way. Where the tensors' backend says
`fuses_eager_composites` (`jitorch.dispatch.fuses_composites`), such an op calls `call` here
instead of its composite: the composite, traced once per op, static arguments and input shapes, runs
as a `jitorch.compile`d function, so its forward is one or two fused kernels and its backward the
compiled backward of that trace. The composite stays the one definition of the math: the compiled
function runs exactly it (under the tracer, where it takes the plain path).

    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
        ...check the arguments (errors name the user's shapes)...
        if fuses_composites(input, weight, bias):
            return composites.call(_layer_norm, input=input, weight=weight, bias=bias, dims=dims, eps=eps)
        return _layer_norm(input, weight, bias, dims, eps)

Each composite gets at most `MAX_PROGRAMS` programs (input shapes, dtypes, requires_grad, grad
mode); a call that would trace one more runs the composite eagerly instead, so a stream of new
shapes (sampling a growing sequence) neither traces without end nor keeps a program per shape.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

from ..ir.pytree import flatten
from ..tensor import Tensor
from .api import CompiledFunction, disable
from .guards import call_key

MAX_PROGRAMS = 16  # per composite and static arguments


class _Bound:
    """`composite` with its static arguments bound, called with its tensor arguments by position
    (the compiled function's fast path); its signature names them, so guards and logs say `input`."""

    def __init__(self, composite: Callable, tensor_names: tuple[str, ...], static: dict[str, Any]) -> None:
        self.composite, self.tensor_names, self.static = composite, tensor_names, static
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        self.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in tensor_names])
        args = ", ".join([*tensor_names, *(f"{k}={v!r}" for k, v in static.items())])
        self.__name__ = self.__qualname__ = f"{composite.__name__.lstrip('_')}({args})"

    def __call__(self, *tensors: Tensor):
        return self.composite(**dict(zip(self.tensor_names, tensors)), **self.static)


_TENSOR = object()  # marks a tensor argument's place in a cache key
_compiled: dict[tuple, CompiledFunction] = {}  # (composite, its arguments with tensors marked) -> compiled


class Cache:
    """Compiled composites kept by the object they compute with (a module passed as a static
    argument), not in this module's global table: a program refers to the modules it traced (its
    guards read them), so a global entry would keep a model alive for good, where one kept by the
    model goes with it. A copy or pickle of the owner starts with an empty cache."""

    def __init__(self) -> None:
        self.compiled: dict[tuple, CompiledFunction] = {}
        _caches.add(self)

    def __deepcopy__(self, memo: dict) -> Cache:
        return Cache()

    def __reduce__(self):
        return Cache, ()


_caches: weakref.WeakSet = weakref.WeakSet()  # every live Cache (`forget` empties them)


def call(composite: Callable, *, cache: Cache | None = None, **arguments: Any) -> Any:
    """`composite(**arguments)` run as a cached compiled function. The Tensor arguments are its
    inputs; every other argument (a dim, eps, a reduction, None for an absent weight) is static:
    it picks the compiled function, one per distinct set, baked into its trace. The caller checks
    the arguments first (or sends odd ones down the plain path): data-dependent checks (a class
    index out of range) do not run on traced tensors, and an error raised while tracing names the
    op's source line besides the shapes, unlike the plain path's. `cache`: where to keep the
    compiled function (a `Cache` a module keeps, for a composite given that module); else this
    module's table."""
    table = _compiled if cache is None else cache.compiled
    key = (composite, *[(name, _TENSOR if isinstance(value, Tensor) else value) for name, value in arguments.items()])
    try:
        compiled = table.get(key)
    except TypeError:  # an unhashable static argument (a list for a dtype): no cache entry for it
        return composite(**arguments)
    if compiled is None:
        compiled = table[key] = _compile(composite, arguments)
    tensors = [value for value in arguments.values() if isinstance(value, Tensor)]
    if compiled.compiles >= MAX_PROGRAMS and not _cached(compiled, tensors):
        with disable():  # a new shape past the limit: the composite op by op, as on the CPU
            return compiled(*tensors)
    return compiled(*tensors)


def forget() -> None:
    """Drop every composite's compiled function, those modules keep too (`jitorch.compiler.reset`;
    tests; freeing the programs' memory)."""
    _compiled.clear()
    for cache in list(_caches):
        cache.compiled.clear()


def _compile(composite: Callable, arguments: dict[str, Any]) -> CompiledFunction:
    names = tuple(name for name, value in arguments.items() if isinstance(value, Tensor))
    static = {name: value for name, value in arguments.items() if not isinstance(value, Tensor)}
    bound = _Bound(composite, names, static)
    compiled = CompiledFunction(bound, name=bound.__name__)
    # new shapes are new programs by design here, up to MAX_PROGRAMS; the user did not compile this
    compiled._warned_limit = True
    return compiled


def _cached(compiled: CompiledFunction, tensors: list[Tensor]) -> bool:
    """Whether `compiled` already has a program for a call on `tensors` (as its own lookup keys it)."""
    named, _ = compiled._bind(tuple(tensors), {})
    leaves, _, treedef = flatten(named)
    return call_key(treedef, leaves) in compiled.cache


def compiled_functions() -> dict[tuple, CompiledFunction]:
    """The compiled composites so far, by (composite, arguments with tensors marked): for tests and
    for seeing what eager code compiled (`explain()` of each)."""
    return dict(_compiled)
