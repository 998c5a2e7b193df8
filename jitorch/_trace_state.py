"""Whether a function is being traced for jitorch.compile, and where in the user's code (a module of
its own, importing nothing of jitorch's, so that every layer can read it). Per thread, as PyTorch's grad mode is:
one thread tracing must not turn another thread's eager ops into traced ones."""

import os
import sys
import threading


class _GradMode(threading.local):
    enabled = True  # whether ops record autograd nodes (jitorch.no_grad turns it off)
    collecting = None  # a list that every autograd node made now joins (a checkpointed region's), or None


grad_mode = _GradMode()


class _TraceState(threading.local):
    tracer = None  # the active jitorch.ir.trace.Tracer, or None
    vjp_source = None  # while tracing a backward pass: "backward of file:line" of the forward op
    recompute = None  # while tracing a checkpointed region's recompute: the region's number (`Node.region`)


trace_state = _TraceState()


class ModuleChanges:
    """How many times any Module's attributes or registries (parameters, buffers, children, hooks)
    or training flag changed, process-wide. A compiled program re-checks the modules it traced
    only on calls where this moved: in a training loop nothing changes, and the check is one
    integer compare instead of a snapshot of every module."""

    count = 0


def note_module_change() -> None:
    ModuleChanges.count += 1


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_INSIDE: dict[str, bool] = {}  # file name -> whether it belongs to the jitorch package


def user_source() -> str:
    """`file:line (function)` of the innermost frame outside the jitorch package; for ops of a
    backward pass, the line of the forward op they differentiate."""
    if trace_state.vjp_source is not None:
        return trace_state.vjp_source
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        inside = _INSIDE.get(code.co_filename)
        if inside is None:
            inside = _INSIDE[code.co_filename] = os.path.abspath(code.co_filename).startswith(_PKG_DIR)
        if not inside:
            return f"{_short_path(code.co_filename)}:{frame.f_lineno} ({code.co_name})"
        frame = frame.f_back
    return ""


def _short_path(filename: str) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return rel if not rel.startswith("..") else filename
