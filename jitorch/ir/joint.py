"""Splitting a joint forward+backward graph into a forward graph and a backward graph.

`jitorch.compile` traces a differentiable function's backward into the same graph as its forward
(the cotangents of the outputs are `cotangent` inputs; the gradients are the last outputs), so that
the passes optimize both together. Before running, the joint graph is cut in two: the forward runs
on every call, and the backward runs later, only when autograd asks for it, reading the forward
values it needs ("saved") as inputs.
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple

from ..primitives import PRIMS, PrimKind
from ..symbolic import hints
from .graph import Graph, Input, Node, Value


class JointSplit(NamedTuple):
    """The two halves of a joint graph: the forward's outputs are its own, then the saved values;
    the backward's inputs are the saved values, then the cotangents."""

    forward: Graph
    backward: Graph
    n_saved: int


def split_joint(graph: Graph, n_forward_outputs: int) -> JointSplit:
    """Cut `graph` (whose first `n_forward_outputs` outputs are the forward's, the rest gradients)
    in two. Forward nodes are those not reached from a cotangent input (nor a checkpointed region's
    recompute). Of the forward values the backward reads, it gets each either saved (an output of
    the forward, an input of the backward) or recomputed from saved ones by cheap ops (pointwise and
    shape ops, computed again in the backward, where they fuse into its kernels): the choice saves
    the fewest bytes (`_min_cut`, as AOTAutograd's min-cut partitioner), parameters and other lifted
    tensors counting nothing (they outlive the call). Constants are repeated in the backward."""
    cot = {i.value.id for i in graph.inputs if i.kind == "cotangent"}
    bwd_ids = set(cot)
    fwd_nodes, bwd_nodes = [], []
    for node in graph.nodes:
        # (a checkpointed region's recompute runs in the backward, from the values the forward saves)
        if node.region is not None or any(v.id in bwd_ids for v in node.inputs):
            bwd_ids.add(node.out.id)
            bwd_nodes.append(node)
        else:
            fwd_nodes.append(node)
    bwd_outputs = graph.outputs[n_forward_outputs:]
    consts, needed = [], {}
    for v in [v for node in bwd_nodes for v in node.inputs] + list(bwd_outputs):
        if v.id in bwd_ids:
            continue
        if v.node is not None and v.node.op == "const":
            if v.id not in {c.out.id for c in consts}:
                consts.append(v.node)
        else:
            needed.setdefault(v.id, v)
    saved, recomputed = _min_cut(graph, fwd_nodes, needed)
    for node in recomputed:  # (the constants a recompute reads are repeated too)
        for u in node.inputs:
            if u.node is not None and u.node.op == "const" and u.id not in {c.out.id for c in consts}:
                consts.append(u.node)
    recompute_nodes, renamed = _recompute(graph, recomputed, saved)
    bwd_nodes = [_renamed(node, renamed) for node in bwd_nodes]
    fwd = Graph(graph.name)
    fwd.inputs = [i for i in graph.inputs if i.kind != "cotangent"]
    fwd.nodes = _live(fwd_nodes, graph.outputs[:n_forward_outputs] + list(saved.values()))
    fwd.outputs = graph.outputs[:n_forward_outputs] + list(saved.values())
    fwd.output_labels = graph.output_labels[:n_forward_outputs] + ["saved"] * len(saved)
    bwd = Graph(graph.name + ".backward")
    bwd.inputs = [Input(v, "saved", "") for v in saved.values()]
    bwd.inputs += [i for i in graph.inputs if i.kind == "cotangent"]
    bwd.nodes = consts + recompute_nodes + bwd_nodes
    bwd.outputs = [renamed.get(v.id, v) for v in bwd_outputs]
    bwd.output_labels = graph.output_labels[n_forward_outputs:]
    fwd._next_id = bwd._next_id = graph._next_id  # (values made later stay distinct from both halves')
    return JointSplit(fwd, bwd, len(saved))


# ---------------------------------------------------------------------------------------------
# what to save: a minimum cut


_CHEAP = (PrimKind.ELEMENTWISE, PrimKind.MOVEMENT)  # ops worth computing again rather than saving
_SCALE = 1024  # a byte's cost in the cut (see `_min_cut`)


def _recomputable(node: Node) -> bool:
    prim = PRIMS.get(node.op)
    return prim is not None and prim.kind in _CHEAP and node.op not in ("random", "const")


def _min_cut(graph: Graph, fwd_nodes: list[Node], needed: dict[int, Value]
             ) -> tuple[dict[int, Value], list[Node]]:
    """(the forward values to save, the forward nodes the backward computes again, in order) such
    that every value in `needed` is saved or recomputed from saved values by `_recomputable` nodes,
    and the saved bytes are fewest: a minimum s-t cut where each value is an edge of its bytes,
    every forward input and every value of a node that must run in the forward hangs from the
    source, and every needed value from the sink."""
    lifted = {i.value.id for i in graph.inputs if i.kind == "lifted"}
    values = {i.value.id: i.value for i in graph.inputs if i.kind != "cotangent"}
    values.update((n.out.id, n.out) for n in fwd_nodes if n.op != "const")  # (constants are repeated, never saved)
    flow = _FlowGraph()
    for vid, v in values.items():
        # bytes (scaled, so that between cuts of equal bytes the one saving what the backward reads
        # as is wins: it recomputes least); a lifted tensor outlives the call: saving it is free
        size = math.prod(hints(v.shape)) * v.dtype.np.itemsize  # (a symbolic size: the traced call's)
        cost = 0 if vid in lifted else max(0, size * _SCALE - (vid in needed))
        flow.edge(("in", vid), ("out", vid), cost)
        producer = v.node
        if producer is None or not _recomputable(producer):
            flow.edge("source", ("in", vid), None)
        else:
            for u in producer.inputs:
                if u.id in values:
                    flow.edge(("out", u.id), ("in", vid), None)
    for vid in needed:
        flow.edge(("out", vid), "sink", None)
    source_side = flow.min_cut("source", "sink")
    saved = {vid: values[vid] for vid in values
             if ("in", vid) in source_side and ("out", vid) not in source_side}
    wanted = set(needed) - set(saved)
    order = []
    for node in reversed(fwd_nodes):  # the recomputed values, and what they are made from, back to saved ones
        if node.out.id in wanted:
            order.append(node)
            wanted.update(u.id for u in node.inputs if u.id not in saved)
    return saved, order[::-1]


class _FlowGraph:
    """A flow network for `min_cut` (Edmonds-Karp); a capacity None is unbounded."""

    def __init__(self) -> None:
        self.capacity: dict[tuple, float] = {}
        self.neighbours: dict[object, set] = {}

    def edge(self, a, b, capacity: int | None) -> None:
        c = math.inf if capacity is None else capacity
        self.capacity[a, b] = self.capacity.get((a, b), 0) + c
        self.capacity.setdefault((b, a), 0)
        self.neighbours.setdefault(a, set()).add(b)
        self.neighbours.setdefault(b, set()).add(a)

    def min_cut(self, source, sink) -> set:
        """The nodes on the source's side of a minimum cut (reachable from it once the flow is maximal)."""
        capacity = self.capacity
        while True:
            parent = {source: None}
            queue = collections.deque([source])
            while queue and sink not in parent:
                a = queue.popleft()
                for b in self.neighbours.get(a, ()):
                    if b not in parent and capacity[a, b] > 0:
                        parent[b] = a
                        queue.append(b)
            if sink not in parent:
                return set(parent)
            path, b = [], sink
            while parent[b] is not None:
                path.append((parent[b], b))
                b = parent[b]
            push = min(capacity[e] for e in path)
            if push == math.inf:  # (no finite cut: never, as every value's own edge is finite)
                raise AssertionError("joint split: an unbounded path from the forward's inputs to the backward")
            for a, b in path:
                capacity[a, b] -= push
                capacity[b, a] += push


def _recompute(graph: Graph, nodes: list[Node], saved: dict[int, Value]) -> tuple[list[Node], dict[int, Value]]:
    """Copies of forward `nodes` for the backward, each making a value of its own (the forward keeps
    its definitions): the copies, and forward value id -> its backward copy."""
    renamed: dict[int, Value] = {}
    copies = []
    for node in nodes:
        out = graph.new_value(node.out.shape, node.out.dtype)
        copy = Node(node.op, tuple(renamed.get(u.id, u) for u in node.inputs), node.params, out,
                    node.source, node.region)
        out.node = copy
        renamed[node.out.id] = out
        copies.append(copy)
    return copies, renamed


def _live(nodes: list[Node], outputs: list[Value]) -> list[Node]:
    """`nodes` less those no output depends on (what the backward now computes for itself)."""
    live = {v.id for v in outputs}
    kept = []
    for node in reversed(nodes):
        if node.out.id in live:
            kept.append(node)
            live.update(u.id for u in node.inputs)
    return kept[::-1]


def _renamed(node: Node, renamed: dict[int, Value]) -> Node:
    """`node` reading the backward's copies of recomputed values (itself where it reads none)."""
    if not any(u.id in renamed for u in node.inputs):
        return node
    node.inputs = tuple(renamed.get(u.id, u) for u in node.inputs)
    return node


def prune_inputs(graph: Graph) -> None:
    """Drop inputs nothing reads (lifted tensors only touched by dead code). Arguments and
    cotangents stay: the caller passes them by position."""
    used = set(graph.uses())
    graph.inputs = [i for i in graph.inputs if i.value.id in used or i.kind in ("arg", "cotangent")]
