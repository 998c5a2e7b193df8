"""Whether a function is being traced for jitorch.compile (a module of its own so that tensor.py and
dispatch.py can both read it without importing each other). Per thread, as PyTorch's grad mode is:
one thread tracing must not turn another thread's eager ops into traced ones."""

import threading


class _TraceState(threading.local):
    tracer = None  # the active jitorch.ir.trace.Tracer, or None
    vjp_source = None  # while tracing a backward pass: "backward of file:line" of the forward op


trace_state = _TraceState()


class ModuleChanges:
    """How many times any Module's attributes or registries (parameters, buffers, children, hooks)
    or training flag changed, process-wide. A compiled program re-checks the modules it traced
    only on calls where this moved: in a training loop nothing changes, and the check is one
    integer compare instead of a snapshot of every module."""

    count = 0


def note_module_change() -> None:
    ModuleChanges.count += 1
