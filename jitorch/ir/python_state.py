"""What a traced function did to Python state: shallow snapshots of the containers it can reach.

A trace records tensor operations; a Python-level write (`state["step"] += 1` in a custom optimizer,
a global counter, `self.calls += 1` in a forward) happens once, while tracing, and a replay of the
program would never repeat it. So the tracer snapshots every container reachable from the
function (its globals and closure, its bound module, its arguments: dicts, lists, tuples and the
attributes of plain objects, modules and optimizers) before tracing and compares afterwards. A
program whose trace wrote Python state is traced again on every call, which runs the writes as
eager code would. Check mode also uses the snapshot to undo a trace's writes before its eager run.

Tensors are not looked into, and a tensor stored into a container is not a Python write: the tracer
follows tensors itself (write-backs, and state made during the trace).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator

import numpy as np

from .._trace_state import note_module_change
from ..tensor import Tensor

MAX_OBJECTS = 20_000  # a bound on the walk: a trace must not stall on a huge reachable heap
_SKIP = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type,
         types.CodeType, np.ndarray, np.generic, str, bytes, int, float, complex, bool, range, Tensor)


def _plain(value) -> bool:
    if isinstance(value, tuple):
        return all(map(_plain, value))
    return value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic))


def _same(old, new) -> bool:
    if old is new:
        return True
    try:
        return _plain(old) and _plain(new) and type(old) is type(new) and bool(old == new)
    except Exception:  # an exotic __eq__
        return False


_REGISTRIES = ("_modules", "_parameters", "_buffers")


def _internal(obj) -> bool:
    """An object of jitorch's own (a Module, an Optimizer, or a subclass): its private attributes
    are jitorch's bookkeeping, not user state; its registries and public attributes are."""
    return any(c.__module__.startswith("jitorch.") for c in type(obj).__mro__)


class _Container:
    """One container's shallow contents at snapshot time: [(key, value)] in order."""

    __slots__ = ("obj", "label", "kind", "items")

    def __init__(self, obj, label: str, kind: str) -> None:
        self.obj, self.label, self.kind = obj, label, kind
        self.items = list(_entries(obj, kind))


def _kind(obj) -> str | None:
    if isinstance(obj, dict):
        return "dict"
    if isinstance(obj, list):
        return "list"
    if isinstance(obj, tuple):
        return "tuple"
    if isinstance(obj, _SKIP) or not hasattr(obj, "__dict__") or callable(obj) and not hasattr(obj, "forward"):
        return None
    return "object"


def _entries(obj, kind: str) -> Iterator[tuple[object, object]]:
    if kind == "dict":
        yield from dict.items(obj)
    elif kind in ("list", "tuple"):
        yield from enumerate(obj)
    else:
        internal = _internal(obj)
        for key, value in vars(obj).items():
            if not (internal and key.startswith("_")) or key in _REGISTRIES:
                yield key, value


def _child_label(parent: str, kind: str, key, name_of: Callable[[object], str]) -> str:
    if kind == "object":  # a module's registry is labelled so that its entries read as attributes
        return parent + "." if key in _REGISTRIES else f"{parent}.{key}"
    if parent.endswith("."):
        return f"{parent}{key}"
    return f"{parent}[{name_of(key) if isinstance(key, Tensor) else repr(key)}]"


class PythonWrite:
    """One entry that a trace changed: `label` is where (`opt.state[fc.weight]['step']`)."""

    def __init__(self, label: str, before, after) -> None:
        self.label, self.before, self.after = label, before, after

    def __str__(self) -> str:
        show = lambda v: "(absent)" if v is _ABSENT else repr(v) if _plain(v) else type(v).__name__
        return f"{self.label}: {show(self.before)} -> {show(self.after)}"


_ABSENT = object()


class PythonState:
    """Snapshots of the containers reachable from `roots` ([(name, object)])."""

    def __init__(self, roots: list[tuple[str, object]], name_of: Callable[[object], str]) -> None:
        self.name_of = name_of
        self.containers: dict[int, _Container] = {}
        stack = [(label, obj) for label, obj in reversed(roots)]
        while stack and len(self.containers) < MAX_OBJECTS:
            label, obj = stack.pop()
            kind = _kind(obj)
            if kind is None or id(obj) in self.containers:
                continue
            entry = self.containers[id(obj)] = _Container(obj, label, kind)
            stack.extend((_child_label(label, kind, key, name_of), value) for key, value in reversed(entry.items))

    def writes(self) -> list[PythonWrite]:
        """The Python values the trace changed, added or removed (tensor entries are the tracer's)."""
        found = []
        for entry in self.containers.values():
            if entry.kind == "tuple":
                continue
            before, after = dict(entry.items), dict(_entries(entry.obj, entry.kind))
            for key in [*before, *(k for k in after if k not in before)]:
                old, new = before.get(key, _ABSENT), after.get(key, _ABSENT)
                if not _same(old, new) and not (_holds_only_tensors(old) and _holds_only_tensors(new)):
                    label = _child_label(entry.label, entry.kind, key, self.name_of)
                    found.append(PythonWrite(label, old, new))
        return found

    def new_tensors(self) -> dict[str, Tensor]:
        """The tensors that entries changed since the snapshot hold now, by where they are."""
        found: dict[str, Tensor] = {}
        for entry in self.containers.values():
            if entry.kind == "tuple":
                continue
            before = dict(entry.items)
            for key, value in _entries(entry.obj, entry.kind):
                if not _same(before.get(key, _ABSENT), value):
                    _collect(value, _child_label(entry.label, entry.kind, key, self.name_of), found, self.name_of)
        return found

    def restore(self) -> None:
        """Put every container back as it was at the snapshot (undoing a trace's Python writes)."""
        note_module_change()  # module attributes may be among them: compiled programs look again
        for entry in self.containers.values():
            obj = entry.obj
            if entry.kind == "dict":
                if list(dict.items(obj)) != entry.items:
                    dict.clear(obj)
                    dict.update(obj, entry.items)
            elif entry.kind == "list":
                obj[:] = [v for _, v in entry.items]
            elif entry.kind == "object":
                current = vars(obj)
                before = dict(entry.items)
                for key in [k for k in current if k not in before]:
                    if not (_internal(obj) and key.startswith("_")):
                        del current[key]
                current.update(entry.items)


def _holds_only_tensors(value) -> bool:
    """A tensor, or a fresh container of tensors only (optimizer state made in the trace)."""
    if value is _ABSENT or value is None or isinstance(value, Tensor):
        return True
    if isinstance(value, dict):
        return all(_holds_only_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_holds_only_tensors(v) for v in value)
    return False


def _collect(value, label: str, found: dict, name_of) -> None:
    if isinstance(value, Tensor):
        found[label] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            _collect(v, _child_label(label, "dict", k, name_of), found, name_of)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _collect(v, f"{label}[{i}]", found, name_of)
