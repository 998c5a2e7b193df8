"""Whether a function is being traced for jitorch.compile (a module of its own so that tensor.py and
dispatch.py can both read it without importing each other)."""


class _TraceState:
    tracer = None  # the active jitorch.ir.trace.Tracer, or None
    vjp_source = None  # while tracing a backward pass: "backward of file:line" of the forward op


trace_state = _TraceState()
