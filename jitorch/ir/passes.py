"""Graph passes: dead-code elimination, common-subexpression elimination, constant folding and
algebraic simplification. Each pass returns a new node list; `optimize` runs them to a fixed point
and, in debug mode, verifies the graph after each one.

Simplifications are small rules in a table: a rule looks at one node and returns the value that
replaces its output, or None.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..symbolic import is_symbolic
from .graph import Const, Graph, IRError, Node, Value

# A folded constant larger than this stays a computation: baking big arrays bloats the graph.
FOLD_LIMIT = 1 << 16


def _remap(graph: Graph, repl: dict[int, Value], keep: list[Node]) -> None:
    """Point every input and output through `repl` (a value id -> replacement map)."""

    def find(v: Value) -> Value:
        while v.id in repl:
            v = repl[v.id]
        return v

    for node in keep:
        node.inputs = tuple(find(v) for v in node.inputs)
    graph.nodes = keep
    graph.outputs = [find(v) for v in graph.outputs]


def dce(graph: Graph) -> bool:
    """Drop nodes whose values nothing reads. Returns whether anything changed."""
    live = {v.id for v in graph.outputs}
    keep = []
    for node in reversed(graph.nodes):
        if node.out.id in live:
            keep.append(node)
            live.update(v.id for v in node.inputs)
    keep.reverse()
    changed = len(keep) != len(graph.nodes)
    graph.nodes = keep
    return changed


def cse(graph: Graph) -> bool:
    """Merge nodes that apply the same op to the same inputs with the same params."""
    seen: dict[tuple, Value] = {}
    repl: dict[int, Value] = {}
    keep = []
    for node in graph.nodes:
        node.inputs = tuple(repl.get(v.id, v) for v in node.inputs)
        key = (node.op, tuple(v.id for v in node.inputs), node.params_key(), node.out.dtype, node.out.shape,
               node.region)
        prev = seen.get(key)
        if prev is not None and node.op != "random":
            repl[node.out.id] = prev
        else:
            seen[key] = node.out
            keep.append(node)
    _remap(graph, repl, keep)
    return bool(repl)


def _const_array(v: Value) -> np.ndarray | None:
    node = v.node
    return node.params["value"].array if node is not None and node.op == "const" else None


# Constants are host (numpy) arrays; the kernels that evaluate them are a backend's, handed over by
# `use_constant_kernels` (the CPU backend does, when it loads): this package imports no backend.
_constant_kernels: dict[str, Callable] = {}


def use_constant_kernels(kernels: dict[str, Callable]) -> None:
    global _constant_kernels
    _constant_kernels = kernels


def fold_constants(graph: Graph) -> bool:
    """Evaluate nodes whose inputs are all constants (small results only)."""
    changed = False
    for node in graph.nodes:
        if node.op not in _constant_kernels:
            continue
        if node.op in ("const", "random") or not node.inputs:
            continue
        if node.out.symbolic or is_symbolic(tuple(node.params.values())):
            continue  # (a constant has one size: this node has one for each call)
        arrays = [_const_array(v) for v in node.inputs]
        if any(a is None for a in arrays) or int(np.prod(node.out.shape)) > FOLD_LIMIT:
            continue
        with np.errstate(all="ignore"):
            result = np.asarray(_constant_kernels[node.op](*arrays, **node.params))
        node.op, node.inputs, node.params = "const", (), {"value": Const(result)}
        changed = True
    return changed


# --- simplification rules ----------------------------------------------------------------

def _is_scalar_const(v: Value, value: float) -> bool:
    a = _const_array(v)
    return a is not None and a.size == 1 and a.reshape(()).item() == value


def _same_type(a: Value, b: Value) -> bool:
    return a.shape == b.shape and a.dtype is b.dtype


def _identity_operand(node: Node) -> Value | None:
    """x*1, 1*x, x+0, 0+x, x-0, x/1 -> x (only when x already has the result's type)."""
    op, ins = node.op, node.inputs
    unit = {"mul": 1, "div": 1, "add": 0, "sub": 0}.get(op)
    if unit is None:
        return None
    x, y = ins
    if _is_scalar_const(y, unit) and _same_type(x, node.out):
        return x
    if op in ("mul", "add") and _is_scalar_const(x, unit) and _same_type(y, node.out):
        return y
    return None


def _unit_power(node: Node) -> Value | None:
    """pow(x, 1) -> x (a gradient of x**2 has one)."""
    if node.op == "pow" and len(node.inputs) == 2 and _is_scalar_const(node.inputs[1], 1) \
            and _same_type(node.inputs[0], node.out):
        return node.inputs[0]
    return None


def _no_op_movement(node: Node) -> Value | None:
    """reshape/expand to the same shape, identity permute, cast to the same dtype -> the input."""
    if node.op in ("reshape", "expand", "cast", "copy") or (
        node.op == "permute" and node.params["dims"] == tuple(range(len(node.params["dims"])))
    ):
        x = node.inputs[0]
        if node.op != "copy" and _same_type(x, node.out):
            return x
    return None


def _double_negation(node: Node) -> Value | None:
    x = node.inputs[0] if node.inputs else None
    if node.op == "neg" and x.node is not None and x.node.op == "neg":
        return x.node.inputs[0]
    return None


def _compose_movement(node: Node) -> Value | None:
    """reshape(reshape(x)) -> reshape(x); permute(permute(x)) -> one permute. Rewrites in place."""
    x = node.inputs[0] if node.inputs else None
    if x is None or x.node is None or x.node.op != node.op:
        return None
    if node.op == "reshape":
        node.inputs = x.node.inputs
        return None
    if node.op == "permute":
        inner = x.node.params["dims"]
        node.params = {"dims": tuple(inner[d] for d in node.params["dims"])}
        node.inputs = x.node.inputs
    return None


RULES: list[Callable[[Node], Value | None]] = [
    _identity_operand, _unit_power, _no_op_movement, _double_negation, _compose_movement,
]


def simplify(graph: Graph) -> bool:
    """Apply the rule table to every node once."""
    repl: dict[int, Value] = {}
    keep = []
    changed = False
    for node in graph.nodes:
        node.inputs = tuple(repl.get(v.id, v) for v in node.inputs)
        before = (node.inputs, node.params)
        replacement = None
        for rule in RULES:
            replacement = rule(node)
            if replacement is not None:
                break
        if replacement is not None:
            repl[node.out.id] = replacement
            changed = True
        else:
            keep.append(node)
            changed |= (node.inputs, node.params) != before
    _remap(graph, repl, keep)
    return changed


def _swaps_last_two(dims: tuple[int, ...]) -> bool:
    n = len(dims)
    return n >= 2 and dims == tuple(range(n - 2)) + (n - 1, n - 2)


def _transposed(graph: Graph, v: Value, source: str, emit: list[Node]) -> Value:
    """v with its last two dims swapped: the input of a permute that did exactly that, or a new
    permute (a view: BLAS reads it through its transpose flag) appended to `emit`."""
    if v.node is not None and v.node.op == "permute" and _swaps_last_two(v.node.params["dims"]):
        return v.node.inputs[0]
    dims = tuple(range(len(v.shape) - 2)) + (len(v.shape) - 1, len(v.shape) - 2)
    out = graph.new_value(tuple(v.shape[d] for d in dims), v.dtype)
    out.node = Node("permute", (v,), {"dims": dims}, out, source)
    emit.append(out.node)
    return out


def transpose_products(graph: Graph) -> bool:
    """A matmul read only through a transpose of its last two dims becomes the product of the
    transposed operands, (a @ b)^T -> b^T @ a^T. A linear layer's weight gradient is such a
    transpose; as a view it reached the optimizer's fused update, which had to copy it, and now the
    GEMM writes it in the weight's own layout."""
    uses: dict[int, int] = {}
    for v in [v for n in graph.nodes for v in n.inputs] + graph.outputs:
        uses[v.id] = uses.get(v.id, 0) + 1
    nodes: list[Node] = []
    changed = False
    for node in graph.nodes:
        x = node.inputs[0] if node.op == "permute" else None
        if (x is not None and x.node is not None and x.node.op == "matmul" and uses[x.id] == 1
                and _swaps_last_two(node.params["dims"]) and all(len(v.shape) >= 2 for v in x.node.inputs)):
            a, b = x.node.inputs
            bt = _transposed(graph, b, node.source, nodes)
            at = _transposed(graph, a, node.source, nodes)
            node.op, node.inputs, node.params = "matmul", (bt, at), {}
            changed = True
        nodes.append(node)
    graph.nodes = nodes
    return changed


def _filled(v: Value) -> np.ndarray | None:
    """v's constant array, or for a scalar constant expanded to v's shape (and copied: zeros of a
    symbolic shape are made so) that scalar."""
    node = v.node
    if node is not None and node.op == "copy":
        node = node.inputs[0].node
    if node is not None and node.op == "expand":
        scalar = _const_array(node.inputs[0])
        return scalar.reshape(()) if scalar is not None and scalar.size == 1 else None
    return _const_array(v)


def _slice_of_zeros(node: Node, out: Value) -> tuple[int, int, Value] | None:
    """For `zeros[key] = v` over one basic slice of one dim, shaped as `out`: (dim, start, v)."""
    if node.op != "index_put" or len(node.inputs) != 2:
        return None
    base, v = node.inputs
    zeros = _filled(base) if base.shape == out.shape else None
    if zeros is None or zeros.shape not in (out.shape, ()) or zeros.any() or v.dtype is not out.dtype:
        return None
    cut = None
    for d, part in enumerate(node.params["key"]):
        if not (isinstance(part, tuple) and len(part) == 4 and part[0] == "slice"
                and all(i is None or type(i) is int for i in part[1:]) and part[3] in (1, None)):
            return None
        size = out.shape[d]
        if part[1] in (None, 0) and (part[2] is None or type(size) is int and part[2] == size):
            continue  # (the whole dim: no comparison with a symbolic size)
        start, stop = 0 if part[1] is None else part[1], size if part[2] is None else part[2]
        if type(size) is not int or type(stop) is not int or not 0 <= start <= stop <= size or cut is not None:
            return None  # (a bound to check against a symbolic size, or a negative or clipped one)
        cut = (d, start, stop)
    if cut is None:
        return None
    d, start, stop = cut
    if v.shape != out.shape[:d] + (stop - start,) + out.shape[d + 1:]:
        return None
    return d, start, v


def slices_as_cat(graph: Graph) -> bool:
    """A sum of zero tensors each written in one slice of one dim, the slices tiling that dim, is the
    concatenation of what was written: the gradient of a tensor read through `split` (attention's
    q/k/v weights) is three such scatters into zeros and two full-size adds; as a `cat` it is one
    copy of the pieces, as PyTorch's split backward."""
    uses: dict[int, list[Node]] = {}
    for n in graph.nodes:
        for v in n.inputs:
            uses.setdefault(v.id, []).append(n)
    outputs = {v.id for v in graph.outputs}

    def inner(v: Value, root: Node) -> bool:  # an add of the same tree, read only by it
        return (v.node is not None and v.node.op == "add" and not v.node.params and v.id not in outputs
                and len(uses.get(v.id, ())) == 1 and v.shape == root.out.shape and v.dtype is root.out.dtype)

    changed = False
    for node in graph.nodes:
        if node.op != "add" or node.params or node.out.symbolic:
            continue
        users = uses.get(node.out.id, ())
        if len(users) == 1 and node.out.id not in outputs and inner(node.out, users[0]):
            continue  # (part of its user's tree)
        pieces, stack = [], list(node.inputs)
        while stack:
            v = stack.pop()
            if inner(v, node):
                stack.extend(v.node.inputs)
                continue
            found = None if v.node is None or len(uses.get(v.id, ())) != 1 or v.id in outputs \
                else _slice_of_zeros(v.node, node.out)
            if found is None:
                break
            pieces.append(found)
        else:
            dims = {d for d, _, _ in pieces}
            if len(dims) != 1:
                continue
            dim = dims.pop()
            pieces.sort(key=lambda piece: piece[1])
            at = 0
            for _, start, v in pieces:
                if start != at:
                    break
                at += v.shape[dim]
            else:
                if at == node.out.shape[dim]:
                    node.op, node.inputs, node.params = "cat", tuple(v for _, _, v in pieces), {"dim": dim}
                    changed = True
    return changed


_ROW_REDUCTIONS = frozenset({"sum", "amax", "amin"})


def _rewrite(graph: Graph, rewrite: Callable[[Graph, Node], list[Node] | None]) -> bool:
    """Apply `rewrite` to every node: None leaves it as it is; else it changed the node in place
    and returns the nodes it made for it, which go just before it. Returns whether any changed."""
    nodes: list[Node] = []
    changed = False
    for node in graph.nodes:
        made = rewrite(graph, node)
        if made is not None:
            nodes += made
            changed = True
        nodes.append(node)
    graph.nodes = nodes
    return changed


def _new_node(graph: Graph, like: Node, op: str, inputs: tuple, params: dict, shape: tuple, dtype) -> Node:
    """A node made for `like` (its source line and checkpointed region)."""
    out = graph.new_value(shape, dtype)
    out.node = Node(op, inputs, params, out, like.source, like.region)
    return out.node


def _keepdim_last(graph: Graph, node: Node) -> list[Node] | None:
    x = node.inputs[0] if node.op in _ROW_REDUCTIONS and node.inputs else None
    if not (x is not None and not x.symbolic and not node.out.symbolic and len(x.shape) >= 1 and x.shape[-1] > 1
            and node.params.get("keepdim") is False and tuple(node.params.get("dims", ())) == (len(x.shape) - 1,)):
        return None
    kept = _new_node(graph, node, node.op, node.inputs, dict(node.params, keepdim=True), x.shape[:-1] + (1,),
                     node.out.dtype)
    node.op, node.inputs, node.params = "reshape", (kept.out,), {"shape": tuple(node.out.shape)}
    return [kept]


def keepdim_reductions(graph: Graph) -> bool:
    """A reduction over the last dim that drops it (`x.exp().sum(-1)`, a loss's final sum or mean,
    a norm) is the reduction keeping the dim, then a reshape (a view): in that form it joins the
    kernel of its producers as a row kernel (`fusion.is_row_reduction`) instead of running alone
    after them, which would write and read back each full-size value it reduces."""
    return _rewrite(graph, _keepdim_last)


def _small_power(node: Node) -> int | None:
    """n where `node` is pow(x, n) of a float x by a constant n in 2..4 (both of x's type)."""
    if node.op != "pow" or len(node.inputs) != 2 or node.inputs[0].dtype.name not in ("float32", "float64"):
        return None
    x, e = node.inputs
    exponent = _const_array(e)
    if exponent is None or exponent.size != 1 or not _same_type(x, node.out):
        return None
    n = exponent.reshape(()).item()
    return int(n) if n in (2.0, 3.0, 4.0) else None


def _power_as_products(graph: Graph, node: Node) -> list[Node] | None:
    n = _small_power(node)
    if n is None:
        return None
    x = node.inputs[0]
    square = _new_node(graph, node, "mul", (x, x), {}, x.shape, x.dtype)
    node.op, node.params = "mul", {}
    node.inputs = (square.out, x) if n == 3 else (square.out, square.out) if n == 4 else (x, x)
    return [square] if n != 2 else []


def integer_powers(graph: Graph) -> bool:
    """pow(x, n) for n = 2, 3, 4 as products, x*x, (x*x)*x, (x*x)*(x*x), as PyTorch's pow kernel
    computes them (a GELU's tanh form cubes its input): a fused kernel then multiplies in vector
    registers instead of calling the C library's pow for every element."""
    return _rewrite(graph, _power_as_products)


PASSES: list[tuple[str, Callable[[Graph], bool]]] = [
    ("simplify", simplify), ("fold_constants", fold_constants), ("transpose_products", transpose_products),
    ("slices_as_cat", slices_as_cat), ("keepdim_reductions", keepdim_reductions), ("integer_powers", integer_powers),
    ("cse", cse), ("dce", dce),
]


def optimize(graph: Graph, debug: bool | None = None, max_rounds: int = 6) -> Graph:
    """Run the passes until nothing changes. With debug (or JITORCH_DEBUG=1), verify after each."""
    if debug is None:
        debug = os.environ.get("JITORCH_DEBUG", "") not in ("", "0")
    for _ in range(max_rounds):
        changed = False
        for name, run_pass in PASSES:
            changed |= run_pass(graph)
            if debug:
                try:
                    graph.verify()
                except IRError as err:
                    raise IRError(f"after pass {name}: {err}") from None
        if not changed:
            break
    return graph
