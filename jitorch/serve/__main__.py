"""`python -m jitorch.serve PATH [PATH ...]` (or `jitorch-serve`): serve exported programs over HTTP.

Each PATH is a directory written by `jitorch.export.save`, served under its name (the directory's
name without its extension) as version 1, or given as NAME=PATH or NAME:VERSION=PATH.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys


def parse_model(text: str) -> tuple[str, str, str]:
    """(name, version, path) of a command-line model: PATH, NAME=PATH or NAME:VERSION=PATH."""
    if "=" in text:
        head, path = text.split("=", 1)
        name, _, version = head.partition(":")
    else:
        path, name, version = text, os.path.splitext(os.path.basename(os.path.normpath(text)))[0], ""
    if not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH, NAME=PATH or NAME:VERSION=PATH")
    return name, version or "1", path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jitorch-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=parse_model, metavar="PATH",
                        help="an exported program's directory: PATH, NAME=PATH or NAME:VERSION=PATH")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port; default 8080)")
    parser.add_argument("--device", default="cpu", help="where the models run: cpu or cuda (default cpu)")
    parser.add_argument("--max-batch", type=int, default=32,
                        help="most rows a batch of requests may hold (1: no batching; default 32)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0,
                        help="longest a request waits for others to batch with, in ms (default 5)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body, in MB (default 64)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per model call, for jitorch's kernels and numpy's BLAS (default 1: under load "
                             "the server answers many requests at once, and each call's threads would take cores "
                             "from the others)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="report ready at once, without first running each batch size (whose first call plans it)")
    args = parser.parse_args(argv)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        parser.exit(2, f"jitorch-serve needs Starlette and uvicorn ({err}): pip install -e \".[serve]\"\n")

    from .. import set_num_threads
    from ..backends.cpu.native import set_blas_threads
    from ..export import load
    from . import Runner, ServedModel, serve

    if args.threads < 1:
        parser.exit(2, f"jitorch-serve: --threads must be at least 1, got {args.threads}\n")
    set_num_threads(args.threads)
    set_blas_threads(args.threads)

    served = []
    for name, version, path in args.models:
        try:
            program = load(path, device=args.device)
        except (OSError, ValueError, RuntimeError) as err:  # (RuntimeError: a device that is not available)
            parser.exit(2, f"jitorch-serve: cannot load {path}: {err}\n")
        served.append(ServedModel(name, version, Runner(program), args.max_batch, args.max_delay_ms / 1e3))
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        parser.exit(2, f"jitorch-serve: cannot listen on {args.host}:{args.port}: {err}\n")
    host, port = sock.getsockname()[:2]
    names = ", ".join(f"{m.name} (version {m.version}{', batched' if m.batchable else ''})" for m in served)
    print(f"jitorch-serve: {names} on http://{host}:{port}", flush=True)
    serve(served, sock, max_body_bytes=int(args.max_body_mb * 1024 * 1024), warm_up=args.warm_up)
    return 0


if __name__ == "__main__":
    sys.exit(main())
