"""The exported program's file format: a directory holding `program.json` (the graph) and
`weights.safetensors` (the weights and the graph's constant arrays, written and read by
`jitorch.save` / `jitorch.load`, which check every byte range).

`program.json`, version 1:

    {"format": "jitorch.export", "version": 1, "producer": "jitorch 0.1.0", "name": "forward",
     "inputs":  [{"value": 0, "name": "x", "arg": 0, "shape": [4, 64], "dtype": "float32"},
                 {"value": 1, "name": "fc.weight", "weight": "fc.weight", "shape": [10, 64], "dtype": "float32"}],
     "nodes":   [{"op": "matmul", "inputs": [0, 2], "params": {}, "value": 3, "shape": [4, 10],
                  "dtype": "float32", "source": "model.py:12 (forward)"}, ...],
     "outputs": [{"value": 5, "name": "out"}],
     "output_tree": "*"}

Every value has an integer id, defined once (by an input or a node) before it is read. An input is
an argument of the call (`arg`: its position), a weight (`weight`: its name in the weights file) or
a size used as a number (`size`: its expression, below).

Dynamic sizes: a dim exported as dynamic is a symbol ("s0") wherever it appears: in shapes and
params as {"size": EXPR, "hint": 8} (the value it had in the export), where EXPR is a polynomial,
{"terms": [[[ATOM, ...], coefficient], ...]}, an ATOM a symbol's name or {"//": [EXPR, d]} /
{"%": [EXPR, d]}. `symbols` says where each symbol is read ({"s0": {"sources": [[arg, dim], ...],
"hint": 8}}), `bounds` the sizes each may take ({"s0": [2, 64]}, null for no bound: `Dim`'s min and
max), `fixed` the dynamic dims the export saw at size 0 or 1 ([[arg, dim, size], ...], taken as
constants), `guards` what the trace assumed about the sizes ([{"lhs": EXPR, "op": "<", "rhs":
EXPR, "answer": true}, ...]). A call binds the symbols from its arguments' shapes, checks the
guards, and runs the graph specialized to those sizes.
A node's `op` is a primitive of `jitorch.primitives.PRIMS` or "const" (its `value` param an array
in the weights file). Params are JSON with tags for what JSON lacks: {"float": "0.5"} (repr of a
float, "inf" and "nan" included), {"tuple": [...]}, {"list": [...]}, {"dtype": "bfloat16"},
{"const": "constants/3"} (an array in the weights file). `output_tree` is how the outputs nest: "*"
for one, {"tuple": [...]}, {"list": [...]} or {"dict": [[key, tree], ...]}.

Reading is safe: nothing is unpickled or evaluated, ops are looked up in jitorch's primitive table,
and every shape and dtype is checked against the primitives' own rules (`Graph.verify`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .. import dtypes as _dt
from ..ir.graph import Const, Graph, IRError, Value
from ..ir.pytree import LEAF
from ..primitives import PRIMS
from ..symbolic import Expr, Guard, ShapeEnv, SymbolSource, SymInt

FORMAT, VERSION = "jitorch.export", 1
GRAPH_FILE, WEIGHTS_FILE = "program.json", "weights.safetensors"
MAX_GRAPH_BYTES = 256 * 1024 * 1024


class FormatError(ValueError):
    """An exported program's file that is not what it should be: truncated, oversized, inconsistent,
    or of another format or version."""


class ExportError(ValueError):
    """What a function or model cannot be exported with, named."""


# ---------------------------------------------------------------------------------------------
# params and trees


def encode_param(value, constants: dict[str, np.ndarray], where: str):
    """A node param as JSON (see the module's docstring); a `Const`'s array goes into `constants`."""
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is SymInt:
        return {"size": encode_expr(value.expr), "hint": value.hint}
    if type(value) is float:
        return {"float": repr(value)}
    if type(value) is tuple:
        return {"tuple": [encode_param(v, constants, where) for v in value]}
    if type(value) is list:
        return {"list": [encode_param(v, constants, where) for v in value]}
    if isinstance(value, _dt.DType):
        return {"dtype": value.name}
    if isinstance(value, Const):
        key = f"constants/{len(constants)}"
        constants[key] = value.array
        return {"const": key}
    if isinstance(value, np.generic):
        return encode_param(value.item(), constants, where)
    raise ExportError(f"{where}: a param of type {type(value).__name__} ({value!r}) has no place in the "
                      "export format")


def decode_param(value, constants: dict[str, np.ndarray], where: str):
    if value is None or type(value) in (bool, int, str):
        return value
    if isinstance(value, dict) and set(value) == {"size", "hint"} and type(value["hint"]) is int:
        return SymInt(value["hint"], decode_expr(value["size"], where))
    if isinstance(value, dict) and len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "float" and isinstance(inner, str):
            try:
                return float(inner)
            except ValueError:
                pass
        elif tag in ("tuple", "list") and isinstance(inner, list):
            items = [decode_param(v, constants, where) for v in inner]
            return tuple(items) if tag == "tuple" else items
        elif tag == "dtype" and isinstance(inner, str):
            try:
                return _dt.get_dtype(inner)
            except TypeError:
                pass
        elif tag == "const" and isinstance(inner, str):
            if inner not in constants:
                raise FormatError(f"{where}: constant {inner!r} is not in {WEIGHTS_FILE}")
            return Const(constants[inner])
    raise FormatError(f"{where}: unreadable param {value!r}")


def encode_expr(expr: Expr) -> dict:
    def atom(a):
        return a if isinstance(a, str) else {a[0]: [encode_expr(a[1]), a[2]]}

    return {"terms": [[[atom(a) for a in monomial], c] for monomial, c in expr.terms]}


def decode_expr(value, where: str) -> Expr:
    def atom(a):
        if isinstance(a, str) and a.isidentifier():
            return a
        if isinstance(a, dict) and len(a) == 1:
            ((op, inner),) = a.items()
            if op in ("//", "%") and isinstance(inner, list) and len(inner) == 2 and type(inner[1]) is int \
                    and inner[1] > 0:
                return (op, decode_expr(inner[0], where), inner[1])
        raise FormatError(f"{where}: unreadable size term {a!r}")

    terms = value.get("terms") if isinstance(value, dict) and set(value) == {"terms"} else None
    if not isinstance(terms, list) or not all(
            isinstance(t, list) and len(t) == 2 and isinstance(t[0], list) and type(t[1]) is int for t in terms):
        raise FormatError(f"{where}: unreadable size expression {value!r}")
    found: dict[tuple, int] = {}
    for monomial, c in terms:
        key = tuple(atom(a) for a in monomial)
        found[key] = found.get(key, 0) + c
    return Expr(found)


def encode_shape_env(env: ShapeEnv) -> dict:
    """Where each symbol is read, the dims fixed at 0 or 1, and the guards (see the module's docstring)."""
    return {"symbols": {name: {"sources": [[s.leaf, s.dim] for s in sources], "hint": env.hints[name]}
                        for name, sources in env.sources.items()},
            "fixed": [[s.leaf, s.dim, s.size] for s in env.fixed],
            "guards": [{"lhs": encode_expr(g.lhs), "op": g.op, "rhs": encode_expr(g.rhs), "answer": g.answer}
                       for g in env.guards]}


def decode_shape_env(document: dict, arg_names: list[str], where: str) -> ShapeEnv:
    env = ShapeEnv()

    def source(entry, size: int | None = None) -> SymbolSource:
        if (not isinstance(entry, list) or len(entry) < 2 or not all(type(x) is int for x in entry[:2])
                or not 0 <= entry[0] < len(arg_names) or entry[1] < 0):
            raise FormatError(f"{where}: unreadable size source {entry!r}")
        return SymbolSource(entry[0], entry[1], f"{arg_names[entry[0]]}.size({entry[1]})", size)

    symbols = document.get("symbols", {})
    if not isinstance(symbols, dict):
        raise FormatError(f"{where}: 'symbols' must be an object")
    for name, entry in symbols.items():
        if not (name.isidentifier() and isinstance(entry, dict) and isinstance(entry.get("sources"), list)
                and entry["sources"] and type(entry.get("hint")) is int):
            raise FormatError(f"{where}: unreadable symbol {name!r}: {entry!r}")
        env.sources[name] = [source(e) for e in entry["sources"]]
        env.hints[name] = entry["hint"]
    for entry in document.get("fixed", []):
        if not isinstance(entry, list) or len(entry) != 3 or type(entry[2]) is not int:
            raise FormatError(f"{where}: unreadable fixed size {entry!r}")
        env.fixed.append(source(entry, entry[2]))
    for entry in document.get("guards", []):
        if not isinstance(entry, dict) or entry.get("op") not in ("==", "!=", "<", "<=", ">", ">=") \
                or type(entry.get("answer")) is not bool:
            raise FormatError(f"{where}: unreadable guard {entry!r}")
        guard = Guard(decode_expr(entry.get("lhs"), where), entry["op"], decode_expr(entry.get("rhs"), where),
                      entry["answer"])
        unknown = (guard.lhs.symbols() | guard.rhs.symbols()) - set(env.sources)
        if unknown:
            raise FormatError(f"{where}: a guard reads sizes no argument gives: {sorted(unknown)}")
        env.guards.append(guard)
    return env


def encode_dim(d):
    return {"size": encode_expr(d.expr), "hint": d.hint} if type(d) is SymInt else d


def encode_tree(treedef, where: str):
    if treedef == LEAF:
        return "*"
    kind = treedef[0]
    if kind in ("tuple", "list"):
        return {kind: [encode_tree(t, where) for t in treedef[1]]}
    if kind == "dict" and all(type(k) in (str, int) for k in treedef[1]):
        return {"dict": [[k, encode_tree(t, where)] for k, t in zip(treedef[1], treedef[2])]}
    raise ExportError(f"{where}: outputs nested in a {kind} ({treedef[1]}) cannot be exported; return "
                      "tensors, or tuples, lists or dicts (str or int keys) of them")


def decode_tree(tree, where: str):
    if tree == "*":
        return LEAF
    if isinstance(tree, dict) and len(tree) == 1:
        ((kind, inner),) = tree.items()
        if kind in ("tuple", "list") and isinstance(inner, list):
            return (kind, tuple(decode_tree(t, where) for t in inner))
        if kind == "dict" and isinstance(inner, list) and all(
                isinstance(p, list) and len(p) == 2 and type(p[0]) in (str, int) for p in inner):
            return ("dict", tuple(p[0] for p in inner), tuple(decode_tree(p[1], where) for p in inner))
    raise FormatError(f"{where}: unreadable output_tree {tree!r}")


def count_leaves(treedef) -> int:
    if treedef == LEAF:
        return 1
    return sum(count_leaves(t) for t in treedef[-1])


# ---------------------------------------------------------------------------------------------
# the graph


def graph_document(graph: Graph, inputs: list[dict], names: list[str], treedef, producer: str,
                   env: ShapeEnv | None = None, bounds: dict[str, tuple] | None = None) -> tuple[dict, dict]:
    """(`program.json`'s content, the constant arrays its params refer to) for an inference graph
    (over the size symbols of `env`, where it has them); `inputs` are the entries of `graph.inputs`
    (each with "arg", "weight" or "size" and a "name"), `names` the outputs' names."""
    constants: dict[str, np.ndarray] = {}
    nodes = []
    for node in graph.nodes:
        where = f"{node.op} ({node.source or 'no source line'})"
        if node.op != "const" and node.op not in PRIMS:
            raise ExportError(f"{where}: not a primitive jitorch can load")
        nodes.append({"op": node.op, "inputs": [v.id for v in node.inputs],
                      "params": {k: encode_param(v, constants, where) for k, v in node.params.items()},
                      "value": node.out.id, "shape": [encode_dim(d) for d in node.out.shape],
                      "dtype": node.out.dtype.name, "source": node.source})
    document = {
        "format": FORMAT, "version": VERSION, "producer": producer, "name": graph.name,
        "inputs": [{"value": inp.value.id, **spec, "shape": [encode_dim(d) for d in inp.value.shape],
                    "dtype": inp.value.dtype.name} for inp, spec in zip(graph.inputs, inputs)],
        "nodes": nodes,
        "outputs": [{"value": v.id, "name": name} for v, name in zip(graph.outputs, names)],
        "output_tree": encode_tree(treedef, "outputs"),
        **(encode_shape_env(env) if env is not None else {}),
        **({"bounds": {name: list(b) for name, b in bounds.items()}} if bounds else {}),
    }
    return document, constants


def read_document(directory: str) -> dict:
    """`program.json` of an exported program's directory, checked to be this format and version."""
    path = os.path.join(directory, GRAPH_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: no {GRAPH_FILE}: not a program saved by jitorch.export.save")
    size = os.path.getsize(path)
    if size > MAX_GRAPH_BYTES:
        raise FormatError(f"{path}: {size} bytes, more than a graph file may have ({MAX_GRAPH_BYTES})")
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{path}: not JSON ({err}): truncated or not an exported program?") from None
    found = document.get("format") if isinstance(document, dict) else None
    if found != FORMAT:
        raise FormatError(f"{path}: not a jitorch.export program (format {found!r})")
    if document.get("version") != VERSION:
        raise FormatError(f"{path}: format version {document.get('version')!r}; this jitorch reads version {VERSION} "
                          f"(the file was written by {document.get('producer', 'an unknown producer')})")
    for key, kind in (("inputs", list), ("nodes", list), ("outputs", list), ("name", str)):
        if not isinstance(document.get(key), kind):
            raise FormatError(f"{path}: {key!r} missing or not a {kind.__name__}")
    return document


def build_graph(document: dict, constants: dict[str, np.ndarray], path: str) -> tuple[Graph, ShapeEnv, dict]:
    """The graph of a `program.json` document, its size symbols and their bounds, every value defined
    before use and every node's shape and dtype checked by its primitive's rule (at the export's sizes)."""
    graph = Graph(document["name"])
    values: dict[int, Value] = {}
    arg_names = [str(e.get("name", f"arg{e['arg']}")) for e in sorted(
        (e for e in document["inputs"] if isinstance(e, dict) and type(e.get("arg")) is int), key=lambda e: e["arg"])]
    env = decode_shape_env(document, arg_names, path)

    def dim(d, where: str):
        if type(d) is int and d >= 0:
            return d
        if isinstance(d, dict) and set(d) == {"size", "hint"} and type(d["hint"]) is int:
            expr = decode_expr(d["size"], f"{path}: {where}")
            if expr.symbols() - set(env.sources):
                raise FormatError(f"{path}: {where}: a size reads symbols no argument gives: {d!r}")
            return SymInt(d["hint"], expr)
        raise FormatError(f"{path}: {where}: malformed size {d!r}")

    def typed(entry: dict, where: str) -> tuple[tuple, _dt.DType]:
        shape, dtype = entry.get("shape"), entry.get("dtype")
        if not isinstance(shape, list):
            raise FormatError(f"{path}: {where}: malformed shape {shape!r}")
        try:
            return tuple(dim(d, where) for d in shape), _dt.get_dtype(dtype)
        except TypeError:
            raise FormatError(f"{path}: {where}: unknown dtype {dtype!r}") from None

    def define(vid, value: Value, where: str) -> None:
        if type(vid) is not int or vid in values:
            raise FormatError(f"{path}: {where}: value id {vid!r} is malformed or defined twice")
        values[vid] = value

    for k, entry in enumerate(document["inputs"]):
        where = f"input {k} ({entry.get('name') if isinstance(entry, dict) else entry!r})"
        kinds = [key for key in ("arg", "weight", "size") if isinstance(entry, dict) and key in entry]
        if len(kinds) != 1:
            raise FormatError(f"{path}: {where}: an input is an argument (\"arg\"), a weight (\"weight\") or a "
                              "size (\"size\")")
        shape, dtype = typed(entry, where)
        kind = kinds[0]
        ref = (entry["arg"] if kind == "arg" else entry["weight"] if kind == "weight"
               else decode_expr(entry["size"], f"{path}: {where}"))
        if (kind == "arg" and not (type(ref) is int and ref >= 0)) or (kind == "weight" and not isinstance(ref, str)):
            raise FormatError(f"{path}: {where}: an argument's position is an int, a weight's name a str; "
                              f"got {ref!r}")
        if kind == "size" and ref.symbols() - set(env.sources):
            raise FormatError(f"{path}: {where}: a size reads symbols no argument gives: {sorted(ref.symbols())}")
        label = str(entry.get("name", kind))
        define(entry.get("value"), graph.add_input(shape, dtype, {"weight": "lifted"}.get(kind, kind), label, ref),
               where)
    for k, entry in enumerate(document["nodes"]):
        op = entry.get("op") if isinstance(entry, dict) else None
        where = f"node {k} ({op}{', ' + entry['source'] if isinstance(entry, dict) and entry.get('source') else ''})"
        if op != "const" and op not in PRIMS:
            raise FormatError(f"{path}: {where}: unknown op {op!r}: not one of jitorch's primitives")
        ins = entry.get("inputs")
        if not isinstance(ins, list) or not all(type(i) is int and i in values for i in ins):
            raise FormatError(f"{path}: {where}: inputs {ins!r} are not all values defined before it")
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise FormatError(f"{path}: {where}: params must be an object")
        decoded = {name: decode_param(p, constants, f"{path}: {where}") for name, p in params.items()}
        shape, dtype = typed(entry, where)
        define(entry.get("value"), graph.add_node(op, tuple(values[i] for i in ins), decoded, shape, dtype,
                                                  str(entry.get("source", ""))), where)
    for k, entry in enumerate(document["outputs"]):
        if not isinstance(entry, dict) or entry.get("value") not in values:
            raise FormatError(f"{path}: output {k}: {entry!r} names no defined value")
        graph.add_output(values[entry["value"]], str(entry.get("name", f"out{k}")))
    check(graph, env.hints, path)
    return graph, env, _read_bounds(document.get("bounds", {}), env, path)


def _read_bounds(found, env: ShapeEnv, path: str) -> dict[str, tuple]:
    if not isinstance(found, dict) or not all(
            name in env.sources and isinstance(b, list) and len(b) == 2 and all(v is None or type(v) is int for v in b)
            for name, b in found.items()):
        raise FormatError(f"{path}: unreadable bounds {found!r}")
    return {name: tuple(b) for name, b in found.items()}


def check(graph: Graph, sizes: dict[str, int], path: str) -> Graph:
    """`graph` specialized to `sizes`, checked: every value defined once before use, every node's
    shape and dtype its primitive's rule gives."""
    concrete = graph.specialized(sizes) if sizes else graph
    try:
        concrete.verify()
    except (IRError, KeyError) as err:
        raise FormatError(f"{path}: inconsistent graph: {err}") from None
    return concrete
