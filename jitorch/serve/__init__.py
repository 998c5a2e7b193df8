"""`jitorch.serve`: serve exported programs (`jitorch.export.save`) over HTTP.

    python -m jitorch.serve digits.jtexport --port 8080          # or: jitorch-serve ...
    curl localhost:8080/v2/models/digits                          # metadata
    curl -X POST localhost:8080/v2/models/digits/infer -d '{"inputs": [...]}'

The KServe v2 inference protocol, TorchServe's `/predictions/{name}`, dynamic batching, several
models and versions, Prometheus metrics at `/metrics`, and a graceful shutdown that answers the
requests in flight (see `app.py` and `batching.py`). Needs the `serve` extra (Starlette and uvicorn).
"""

from __future__ import annotations

from .batching import RequestError, Runner, ServedModel

__all__ = ["RequestError", "Runner", "ServedModel", "make_app", "serve"]


def make_app(models, max_body_bytes: int | None = None, warm_up: bool = True):
    """The Starlette application for `models` (ServedModel instances)."""
    from .app import MAX_BODY_BYTES
    from .app import make_app as build

    return build(models, MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes, warm_up)


def serve(models, sock, *, max_body_bytes: int | None = None, graceful_seconds: float = 30.0,
          warm_up: bool = True) -> None:
    """Serve `models` with uvicorn on `sock` (a bound socket) until SIGINT or SIGTERM; then stop taking
    connections, answer the requests in flight (for at most `graceful_seconds`) and return."""
    import signal
    import threading

    import uvicorn

    config = uvicorn.Config(make_app(models, max_body_bytes, warm_up), log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=graceful_seconds)
    if threading.current_thread() is not threading.main_thread():
        uvicorn.Server(config).run(sockets=[sock])
        return
    # uvicorn shuts down on SIGINT/SIGTERM, then raises the signal again for the handler it found:
    # with these, that second delivery is a no-op and the shutdown ends in a normal return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
