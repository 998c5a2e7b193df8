"""The IR: a typed SSA graph with one node per primitive application.

Every `Value` has a shape and a dtype and is defined once, by a graph input or by one `Node`.
Every node names its primitive (a key of `jitorch.primitives.PRIMS`, or `const`), its inputs,
static params (hashable) and the user's source line. A graph prints one line per node, like a
jaxpr, hashes structurally (`Graph.key()`), and checks itself (`Graph.verify()`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .. import dtypes as _dt
from ..symbolic import SymInt, concrete, hints

_SHORT = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16", "int32": "i32",
          "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool"}



def abstract_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A stand-in for a value of this shape and dtype with no data: zero strides, no memory (a
    traced tensor's `_data`, a meta tensor's)."""
    return np.broadcast_to(np.zeros((), dtype), hints(shape))

class Value:
    """An SSA value: shape, dtype, and the node that defines it (None for graph inputs)."""

    __slots__ = ("id", "shape", "dtype", "node", "symbolic")

    def __init__(self, id: int, shape: tuple[int, ...], dtype: _dt.DType, node: Node | None = None) -> None:
        self.id = id
        self.shape = tuple(shape)
        self.dtype = dtype
        self.node = node
        self.symbolic = any(type(d) is SymInt for d in self.shape)  # sizes that are expressions of symbols

    @property
    def name(self) -> str:
        return f"%{self.id}"

    def type_str(self) -> str:
        return f"{_SHORT[self.dtype.name]}[{','.join(map(repr, self.shape))}]"  # (a SymInt shows its expression)

    def __repr__(self) -> str:
        return f"{self.name}:{self.type_str()}"


class Const:
    """A constant array as a hashable, printable node param."""

    __slots__ = ("array", "_digest")

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.array(array, copy=True)
        self.array.flags.writeable = False
        self._digest = hashlib.sha1(
            self.array.tobytes() + str((self.array.shape, self.array.dtype.str)).encode()
        ).hexdigest()

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, Const) and other._digest == self._digest

    def __repr__(self) -> str:
        a = self.array
        if a.size == 1:
            v = a.reshape(()).item() if a.dtype != _dt.bfloat16.np else float(a.reshape(()))
            return repr(v)
        return f"<{a.size} values {self._digest[:8]}>"


class Node:
    """One primitive application: `out = op(*inputs, **params)`, from the user's `source` line."""

    __slots__ = ("op", "inputs", "params", "out", "source", "region")

    def __init__(self, op: str, inputs: tuple[Value, ...], params: dict, out: Value, source: str,
                 region: int | None = None) -> None:
        self.op = op
        self.inputs = inputs
        self.params = params
        self.out = out
        self.source = source
        # a checkpointed region's recompute in the backward (`jitorch.utils.checkpoint`): its number,
        # so that no pass merges it with the forward values it recomputes (they are freed instead)
        self.region = region

    def params_key(self) -> tuple:
        return tuple(sorted(self.params.items()))

    def __repr__(self) -> str:
        return format_node(self)


@dataclass
class Input:
    """A graph input and where its value comes from at call time."""

    value: Value
    # "arg" (a tensor argument), "lifted" (a tensor the function touched), "grad", "rng", "cotangent",
    # "size" (a symbolic size used as a number: its Expr in a symbolic graph, its value once specialized)
    kind: str
    label: str
    ref: object = None  # where the runtime reads it: the arg's index, the lifted tensor, the grad's owner


def _format_param(v) -> str:
    if isinstance(v, _dt.DType):
        return v.name
    if isinstance(v, tuple):
        return "(" + ",".join(_format_param(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def format_node(node: Node, with_source: bool = True) -> str:
    args = " ".join(v.name for v in node.inputs)
    params = " ".join(f"{k}={_format_param(v)}" for k, v in node.params.items())
    text = f"{node.out.name}:{node.out.type_str()} = {node.op}"
    if args:
        text += " " + args
    if params:
        text += " " + params
    if with_source and node.source:
        text = f"{text:<64} # {node.source}"
    return text


class Graph:
    """Inputs, nodes in execution order, and outputs (plus, for a training step, write-backs)."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.inputs: list[Input] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.output_labels: list[str] = []
        self._next_id = 0

    def new_value(self, shape, dtype: _dt.DType, node: Node | None = None) -> Value:
        v = Value(self._next_id, shape, dtype, node)
        self._next_id += 1
        return v

    def add_input(self, shape, dtype: _dt.DType, kind: str, label: str, ref: object = None) -> Value:
        v = self.new_value(shape, dtype)
        self.inputs.append(Input(v, kind, label, ref))
        return v

    def add_node(self, op: str, inputs: tuple[Value, ...], params: dict, shape, dtype: _dt.DType,
                 source: str = "", region: int | None = None) -> Value:
        out = self.new_value(shape, dtype)
        node = Node(op, tuple(inputs), params, out, source, region)
        out.node = node
        self.nodes.append(node)
        return out

    def add_output(self, value: Value, label: str) -> None:
        self.outputs.append(value)
        self.output_labels.append(label)

    def copy(self) -> Graph:
        """A copy to transform (passes rewrite nodes in place): new nodes and values, ids kept."""
        return self.specialized({})

    def specialized(self, env: dict[str, int], sizes_as_constants: bool = False) -> Graph:
        """This graph of a dynamic-shape trace with its size symbols given values (`env`): every
        symbolic shape and param evaluated, value ids kept (with `env` empty: a plain copy, symbols
        and all). A "size" input (a symbolic size used as a number) stays an input holding its
        value (so fused kernels read it at run time and serve every size), or with
        `sizes_as_constants` becomes a constant (as a trace at those sizes has it: what a symbolic
        trace is checked by)."""
        out = Graph(self.name)
        out._next_id = self._next_id
        values: dict[int, Value] = {}

        def value(v: Value) -> Value:
            found = values.get(v.id)
            if found is None:
                found = values[v.id] = Value(v.id, concrete(v.shape, env) if v.symbolic and env else v.shape, v.dtype)
            return found

        def param(p):
            return concrete(p, env) if env else p

        for i in self.inputs:
            if i.kind != "size" or not env:
                out.inputs.append(Input(value(i.value), i.kind, i.label, i.ref))
            elif sizes_as_constants:
                v = value(i.value)
                v.node = Node("const", (), {"value": Const(np.array(i.ref.evaluate(env), np.int64))}, v, "")
                out.nodes.append(v.node)
            else:
                size = i.ref.evaluate(env)
                out.inputs.append(Input(value(i.value), i.kind, f"{i.label}={size}", size))
        for node in self.nodes:
            new = Node(node.op, tuple(map(value, node.inputs)), {k: param(p) for k, p in node.params.items()},
                       value(node.out), node.source, node.region)
            new.out.node = new
            out.nodes.append(new)
        out.outputs = [value(v) for v in self.outputs]
        out.output_labels = list(self.output_labels)
        return out

    # --- text ---------------------------------------------------------------------------
    def format(self, with_source: bool = True) -> str:
        """The graph as text: one line per input, node and output."""
        lines = [f"graph {self.name}("]
        for inp in self.inputs:
            lines.append(f"    {inp.value.name}:{inp.value.type_str():<18} {inp.kind} {inp.label}")
        lines.append("):")
        for node in self.nodes:
            lines.append("    " + format_node(node, with_source))
        for v, label in zip(self.outputs, self.output_labels):
            lines.append(f"    {label} <- {v.name}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def key(self) -> str:
        """A structural hash: equal for graphs that compute the same thing the same way."""
        ids: dict[int, int] = {}

        def local(v: Value) -> int:
            return ids.setdefault(v.id, len(ids))

        parts = [f"{local(i.value)}:{i.value.type_str()}:{i.kind}" for i in self.inputs]
        for n in self.nodes:
            ins = ",".join(str(local(v)) for v in n.inputs)
            parts.append(f"{local(n.out)}={n.op}({ins}){n.params_key()!r}:{n.out.type_str()}")
        parts.append("->" + ",".join(f"{lbl}={local(v)}" for v, lbl in zip(self.outputs, self.output_labels)))
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()

    def dag_key(self) -> str:
        """A structural hash that ignores node order: each output hashed as the expression that
        computes it from labelled inputs (two traces that record the same computation in another
        order hash equal)."""
        memo: dict[int, str] = {}
        for inp in self.inputs:
            memo[inp.value.id] = _digest(f"in:{inp.kind}:{inp.label}:{inp.value.type_str()}")
        for n in self.nodes:
            ins = ",".join(memo[v.id] for v in n.inputs)
            memo[n.out.id] = _digest(f"{n.op}({ins}){n.params_key()!r}:{n.out.type_str()}")
        return _digest("->".join(f"{label}={memo[v.id]}" for v, label in zip(self.outputs, self.output_labels)))

    # --- checks -------------------------------------------------------------------------
    def verify(self) -> None:
        """Raise IRError unless every value is defined once, before use, with the type its rule gives."""
        from ..primitives import PRIMS

        defined: set[int] = set()
        for inp in self.inputs:
            if inp.value.id in defined:
                raise IRError(f"input {inp.value.name} is defined twice")
            defined.add(inp.value.id)
        for node in self.nodes:
            for v in node.inputs:
                if v.id not in defined:
                    raise IRError(f"{format_node(node)}: input {v.name} is used before it is defined")
            if node.out.id in defined:
                raise IRError(f"{format_node(node)}: {node.out.name} is defined twice")
            if node.out.node is not node:
                raise IRError(f"{format_node(node)}: {node.out.name} does not point back to its node")
            defined.add(node.out.id)
            if node.op == "const":
                arr = node.params["value"].array
                expected = (arr.shape, arr.dtype)
            elif node.op in PRIMS:
                dummies = [np.broadcast_to(np.zeros((), v.dtype.np), v.shape) for v in node.inputs]
                try:
                    expected = PRIMS[node.op].infer(*dummies, **node.params)
                except Exception as err:  # a malformed node: report it, whatever the rule raised
                    raise IRError(f"{format_node(node)}: shape rule failed: {err}") from None
            else:
                raise IRError(f"{format_node(node)}: unknown op {node.op!r}")
            if expected is not None:
                shape, dtype = expected
                if tuple(shape) != node.out.shape or np.dtype(dtype) != node.out.dtype.np:
                    raise IRError(
                        f"{format_node(node)}: the rule gives {_dt.from_numpy_dtype(np.dtype(dtype)).name}"
                        f"{list(shape)}, the node says {node.out.type_str()}"
                    )
        for v in self.outputs:
            if v.id not in defined:
                raise IRError(f"output {v.name} is not defined")

    def uses(self) -> dict[int, int]:
        """How many times each value id is read (by nodes and outputs)."""
        counts: dict[int, int] = {}
        for node in self.nodes:
            for v in node.inputs:
                counts[v.id] = counts.get(v.id, 0) + 1
        for v in self.outputs:
            counts[v.id] = counts.get(v.id, 0) + 1
        return counts


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class IRError(Exception):
    """A malformed graph (raised by `Graph.verify`)."""
