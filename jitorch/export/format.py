"""The exported program's file format: a directory holding `program.json` (the graph) and
`weights.safetensors` (the weights and the graph's constant arrays).

`program.json`, version 1:

    {"format": "jitorch.export", "version": 1, "producer": "jitorch 0.1.0", "name": "forward",
     "inputs":  [{"value": 0, "name": "x", "arg": 0, "shape": [4, 64], "dtype": "float32"},
                 {"value": 1, "name": "fc.weight", "weight": "fc.weight", "shape": [10, 64], "dtype": "float32"}],
     "nodes":   [{"op": "matmul", "inputs": [0, 2], "params": {}, "value": 3, "shape": [4, 10],
                  "dtype": "float32", "source": "model.py:12 (forward)"}, ...],
     "outputs": [{"value": 5, "name": "out"}],
     "output_tree": "*"}

Every value has an integer id, defined once (by an input or a node) before it is read. An input is
an argument of the call (`arg`: its position) or a weight (`weight`: its name in the weights file).
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
from .safetensors import FormatError

FORMAT, VERSION = "jitorch.export", 1
GRAPH_FILE, WEIGHTS_FILE = "program.json", "weights.safetensors"
MAX_GRAPH_BYTES = 256 * 1024 * 1024


class ExportError(ValueError):
    """What a function or model cannot be exported with, named."""


# ---------------------------------------------------------------------------------------------
# params and trees


def encode_param(value, constants: dict[str, np.ndarray], where: str):
    """A node param as JSON (see the module's docstring); a `Const`'s array goes into `constants`."""
    if value is None or type(value) in (bool, int, str):
        return value
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


def graph_document(graph: Graph, inputs: list[dict], names: list[str], treedef, producer: str) -> tuple[dict, dict]:
    """(`program.json`'s content, the constant arrays its params refer to) for an inference graph;
    `inputs` are the entries of `graph.inputs` (each with "arg" or "weight" and a "name"), `names`
    the outputs' names."""
    constants: dict[str, np.ndarray] = {}
    nodes = []
    for node in graph.nodes:
        where = f"{node.op} ({node.source or 'no source line'})"
        if node.op != "const" and node.op not in PRIMS:
            raise ExportError(f"{where}: not a primitive jitorch can load")
        nodes.append({"op": node.op, "inputs": [v.id for v in node.inputs],
                      "params": {k: encode_param(v, constants, where) for k, v in node.params.items()},
                      "value": node.out.id, "shape": _concrete_shape(node.out, where), "dtype": node.out.dtype.name,
                      "source": node.source})
    document = {
        "format": FORMAT, "version": VERSION, "producer": producer, "name": graph.name,
        "inputs": [{"value": inp.value.id, **spec, "shape": _concrete_shape(inp.value, spec["name"]),
                    "dtype": inp.value.dtype.name} for inp, spec in zip(graph.inputs, inputs)],
        "nodes": nodes,
        "outputs": [{"value": v.id, "name": name} for v, name in zip(graph.outputs, names)],
        "output_tree": encode_tree(treedef, "outputs"),
    }
    return document, constants


def _concrete_shape(value: Value, where: str) -> list[int]:
    if value.symbolic:
        raise ExportError(f"{where}: symbolic sizes {value.shape} cannot be exported yet (export with concrete shapes)")
    return list(value.shape)


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


def build_graph(document: dict, constants: dict[str, np.ndarray], path: str) -> Graph:
    """The graph of a `program.json` document, every value defined before use and every node's shape
    and dtype checked by its primitive's rule."""
    graph = Graph(document["name"])
    values: dict[int, Value] = {}

    def typed(entry: dict, where: str) -> tuple[tuple[int, ...], _dt.DType]:
        shape, dtype = entry.get("shape"), entry.get("dtype")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise FormatError(f"{path}: {where}: malformed shape {shape!r}")
        try:
            return tuple(shape), _dt.get_dtype(dtype)
        except TypeError:
            raise FormatError(f"{path}: {where}: unknown dtype {dtype!r}") from None

    def define(vid, value: Value, where: str) -> None:
        if type(vid) is not int or vid in values:
            raise FormatError(f"{path}: {where}: value id {vid!r} is malformed or defined twice")
        values[vid] = value

    for k, entry in enumerate(document["inputs"]):
        where = f"input {k} ({entry.get('name') if isinstance(entry, dict) else entry!r})"
        if not isinstance(entry, dict) or ("arg" in entry) == ("weight" in entry):
            raise FormatError(f"{path}: {where}: an input is an argument (\"arg\") or a weight (\"weight\")")
        shape, dtype = typed(entry, where)
        kind, ref = ("arg", entry["arg"]) if "arg" in entry else ("lifted", entry["weight"])
        define(entry.get("value"), graph.add_input(shape, dtype, kind, str(entry.get("name", ref)), ref), where)
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
    try:
        graph.verify()
    except IRError as err:
        raise FormatError(f"{path}: inconsistent graph: {err}") from None
    return graph
