"""Flatten nested tuples, lists and dicts into leaves plus a hashable structure, and back."""

from __future__ import annotations

from typing import Any

LEAF = "*"


def flatten(tree: Any, path: str = "") -> tuple[list[Any], list[str], Any]:
    """Return (leaves, their paths like `batch[0]` or `cfg['lr']`, a hashable treedef)."""
    leaves: list[Any] = []
    paths: list[str] = []
    treedef = _flatten(tree, path, leaves, paths)
    return leaves, paths, treedef


def _flatten(tree, path, leaves, paths):
    if isinstance(tree, (tuple, list)) and not hasattr(tree, "_fields"):
        kind = "tuple" if isinstance(tree, tuple) else "list"
        return (kind, tuple(_flatten(x, f"{path}[{i}]", leaves, paths) for i, x in enumerate(tree)))
    if isinstance(tree, tuple):  # a namedtuple keeps its type
        return ("named", type(tree), tuple(_flatten(x, f"{path}.{f}", leaves, paths)
                                           for f, x in zip(tree._fields, tree)))
    if isinstance(tree, dict):
        keys = tuple(tree)
        # at the root (a function's named arguments) a key is a plain name: `x`, not `['x']`
        sub = (lambda k: str(k)) if path == "" else (lambda k: f"{path}[{k!r}]")
        return ("dict", keys, tuple(_flatten(tree[k], sub(k), leaves, paths) for k in keys))
    leaves.append(tree)
    paths.append(path)
    return LEAF


def unflatten(treedef, leaves: list[Any]) -> Any:
    """Rebuild a tree from `flatten`'s treedef and a list of leaves."""
    it = iter(leaves)
    return _unflatten(treedef, it)


def _unflatten(treedef, it):
    if treedef == LEAF:
        return next(it)
    kind = treedef[0]
    if kind == "tuple":
        return tuple(_unflatten(t, it) for t in treedef[1])
    if kind == "list":
        return [_unflatten(t, it) for t in treedef[1]]
    if kind == "named":
        return treedef[1](*[_unflatten(t, it) for t in treedef[2]])
    return {k: _unflatten(t, it) for k, t in zip(treedef[1], treedef[2])}
