"""Compiler logs: `JITORCH_LOGS=graph,recompiles,guards` or `jitorch.set_logs("graph,recompiles")`.

Kinds: `graph` (the IR after the passes), `recompiles` (why a cache miss happened), `guards` (the
guards of each new cache entry), `perf` (trace and lowering times; on the GPU each Triton kernel's
compile time, and the configurations its first launch timed, their times and the fastest),
`cudagraphs` (mode="reduce-overhead": each capture, and why a program is not captured).
"""

from __future__ import annotations

import os
import sys

KINDS = ("graph", "recompiles", "guards", "perf", "fusion", "kernels", "cudagraphs")
_enabled: set[str] = set()


def set_logs(spec: str | None = None, **kinds: bool) -> None:
    """Turn log kinds on: `set_logs("graph,recompiles")`, `set_logs(graph=True)`, `set_logs("")` for none."""
    global _enabled
    if spec is None and not kinds:
        spec = os.environ.get("JITORCH_LOGS", "")
    if spec is not None:
        names = {s.strip() for s in spec.split(",") if s.strip()}
        unknown = names - set(KINDS) - {"all"}
        if unknown:
            raise ValueError(f"unknown log kinds {sorted(unknown)}; choose from {KINDS}")
        _enabled = set(KINDS) if "all" in names else names
    for name, on in kinds.items():
        if name not in KINDS:
            raise ValueError(f"unknown log kind {name!r}; choose from {KINDS}")
        (_enabled.add if on else _enabled.discard)(name)


def enabled(kind: str) -> bool:
    return kind in _enabled


def log(kind: str, message: str) -> None:
    """Print `message` to stderr when `kind` is on."""
    if kind in _enabled:
        print(f"[jitorch {kind}] {message}", file=sys.stderr)


set_logs()
