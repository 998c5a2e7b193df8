"""jitorch's own exceptions and warnings, in a module that imports only leaves (`_trace_state`, for
the user's source line): any layer may raise them without importing the layer of the concept."""

from __future__ import annotations

from ._trace_state import user_source


class ShapeError(RuntimeError, ValueError):
    """A shape rule's error: a RuntimeError, as PyTorch raises, and also a ValueError, so code that
    catches numpy's shape errors (dispatch, the tracer) catches it too."""


class TraceError(RuntimeError):
    """A function being compiled needed something tracing cannot give (a concrete value, ...)."""


class CompileCheckError(AssertionError):
    """mode="check" found the compiled function disagreeing with the eager one."""


class FusionWarning(RuntimeWarning):
    """Fused kernels could not be built; the program runs unfused (correct, slower)."""


class TraceWarning(UserWarning):
    """Something a compiled function did while it was traced will not happen again on later calls
    (a numpy array made into a tensor is a constant of the program)."""


class BackendError(NotImplementedError):
    """A device has no backend, or its backend has no kernel for a primitive."""


def concrete_value_error(t, what: str) -> TraceError:
    """`what` (`.item()`, `bool(t)`, ...) met a traced tensor: it has no value while tracing."""
    return TraceError(
        f"{what} needs a concrete value, but inside jitorch.compile this tensor (shape "
        f"{tuple(t.shape)}, {t.dtype.name}) is traced and has no value yet. At {user_source()}. "
        "Compute the value outside the compiled function or return it as an output; replace Python "
        "`if`/`while` on tensors with jitorch.where; for print-debugging use jitorch.compile(fn, "
        "mode='eager'); or pass fallback='eager' to run this function eagerly."
    )


def escaped_error(t, op: str) -> TraceError:
    """A traced tensor reached an eager op: it was stored away during a trace and used later."""
    return TraceError(
        f"`{op}` got a traced tensor (shape {tuple(t.shape)}) outside the function that traced it: a "
        "value from inside jitorch.compile was stored somewhere (a global, a module attribute) and used "
        "later. Return it from the compiled function instead."
    )
