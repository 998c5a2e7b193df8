"""Guards: what a compiled program depends on besides its graph, and how a change is put in words.

A call's cache key is its signature: the arguments' pytree structure, a guard per leaf (a tensor's
shape, dtype, device and requires_grad; a hashable value itself; any other object by identity) and
grad mode. Python values the function reads by name (a global `scale = 0.5`) are found here too, and
readable names for the tensors the function can reach (`model.fc1.weight`), for the IR and the
recompile log.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable

import numpy as np

from .. import _autocast
from ..autograd import _grad_mode
from ..ir.trace import is_plain_value
from ..tensor import Tensor


def leaf_guard(leaf) -> tuple:
    """One argument leaf's part of the cache key: ("tensor", shape, numpy dtype, device, requires_grad),
    ("value", type name, value) for a hashable value, ("object", type name, id) for anything else.
    A plain tuple: it is built and hashed on every call."""
    if isinstance(leaf, Tensor):
        data = leaf._data  # (the dtype object, not its `.str`, which numpy builds on every read)
        return ("tensor", data.shape, data.dtype, str(leaf._device), leaf.requires_grad)
    try:
        hash(leaf)
        return ("value", type(leaf).__name__, leaf)
    except TypeError:
        return ("object", type(leaf).__name__, id(leaf))


def call_key(treedef, leaves: list) -> tuple:
    """The cache key of a call: (argument structure, a `leaf_guard` per leaf, grad mode and the
    autocast state: a function traced under autocast recorded its casts)."""
    return (treedef, tuple(map(leaf_guard, leaves)), (_grad_mode.enabled, _autocast.key()))


def _describe_autocast(key: tuple) -> str:
    return ", ".join(f"{device} {dtype}" for device, dtype in key) or "off"


def describe_guard(guard: tuple) -> str:
    """A `leaf_guard` in words."""
    if guard[0] == "tensor":
        return f"shape {tuple(guard[1])} {np.dtype(guard[2]).name} requires_grad={guard[4]}"
    return f"{guard[1]} {guard[2]!r}" if guard[0] == "value" else f"{guard[1]} object id {guard[2]}"


# the fields of a tensor guard (see leaf_guard): position, name, and how to show it in a recompile reason
_TENSOR_FIELDS = ((1, "shape", tuple), (2, "dtype", lambda s: np.dtype(s).name), (3, "device", str),
                  (4, "requires_grad", bool))


def diff_keys(old: tuple, new: tuple, paths: list[str]) -> list[tuple[str, str]]:
    """Which guard changed between two cache keys: [(argument path, 'what -> what')]."""
    (t_old, leaves_old, (grad_old, cast_old)), (t_new, leaves_new, (grad_new, cast_new)) = old, new
    if grad_old != grad_new:
        return [("grad mode", f"{grad_old} -> {grad_new}")]
    if cast_old != cast_new:
        return [("autocast", f"{_describe_autocast(cast_old)} -> {_describe_autocast(cast_new)}")]
    if t_old != t_new or len(leaves_old) != len(leaves_new):
        return [("argument structure", "changed")]
    out = []
    for path, a, b in zip(paths, leaves_old, leaves_new):
        if a != b:
            if a[0] == b[0] == "tensor":
                for i, name, show in _TENSOR_FIELDS:
                    if a[i] != b[i]:
                        out.append((f"arg {path}", f"{name} {show(a[i])} -> {show(b[i])}"))
            else:
                out.append((f"arg {path}", f"{describe_guard(a)} -> {describe_guard(b)}"))
    return out


def free_python_values(fn) -> list[tuple[tuple, str, Callable[[], object]]]:
    """The plain Python values (numbers, bools, strings) a function reads from its globals or its
    closure, found in its code and the code nested in it: a trace bakes them in, so a compiled
    program is guarded on each (a changed `scale = 0.5` retraces instead of being ignored).
    Functions it calls are not looked into. Each is (key, label, read), as
    `Tracer.note_python_value` takes them."""
    code = getattr(fn, "__code__", None)
    if code is None or not hasattr(fn, "__globals__"):
        return []
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    found = []
    scope = fn.__globals__
    for name in sorted(names):
        if name in scope and is_plain_value(scope[name]):
            found.append(((id(scope), name), f"global {name}", functools.partial(scope.get, name)))
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            plain = is_plain_value(cell.cell_contents)
        except ValueError:  # a cell not assigned yet
            continue
        if plain:
            found.append(((id(cell), name), f"closure variable {name}", lambda cell=cell: cell.cell_contents))
    return found


def named_objects(fn) -> list[tuple[str, object]]:
    """The objects `fn` can reach by name: its bound module, closure variables, globals it uses."""
    found = []
    target = getattr(fn, "__self__", None)
    if target is not None:
        found.append(("model", target))
    code = getattr(fn, "__code__", None)
    if code is None:
        return found
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        with contextlib.suppress(ValueError):  # an empty cell
            found.append((name, cell.cell_contents))
    globs = getattr(fn, "__globals__", {})
    found += [(name, globs[name]) for name in code.co_names if name in globs]
    return found


def module_labels(fn) -> dict[int, str]:
    """Readable names (`model.fc1.weight`, `opt.param_groups[0].lr`) for the tensors `fn` can reach,
    so that lifted inputs in the IR and in recompile reasons say what they are."""
    labels: dict[int, str] = {}
    optimizers = []
    for name, obj in named_objects(fn):
        if isinstance(obj, Tensor):
            labels.setdefault(id(obj), name)
        elif hasattr(obj, "named_parameters") and not isinstance(obj, type):
            with contextlib.suppress(Exception):
                for pname, p in obj.named_parameters():
                    labels.setdefault(id(p), f"{name}.{pname}")
                for bname, b in obj.named_buffers():
                    labels.setdefault(id(b), f"{name}.{bname}")
        elif hasattr(obj, "param_groups") and hasattr(obj, "state"):
            optimizers.append((name, obj))
    for name, opt in optimizers:  # after the modules, so state can be named after its parameter
        for i, group in enumerate(opt.param_groups):
            for key in group:
                try:
                    hyper = group.hyper(key)
                except (KeyError, AttributeError):  # a switch such as amsgrad, or a plain dict
                    continue
                for k, t in enumerate(hyper if isinstance(hyper, tuple) else (hyper,)):
                    suffix = f"[{k}]" if isinstance(hyper, tuple) else ""
                    labels.setdefault(id(t), f"{name}.param_groups[{i}].{key}{suffix}")
        for p, state in opt.state.items():
            owner = labels.get(id(p), f"param{list(p.shape)}")
            for key, t in state.items() if isinstance(state, dict) else ():
                if isinstance(t, Tensor):
                    labels.setdefault(id(t), f"{name}.state[{owner}].{key}")
    return labels
