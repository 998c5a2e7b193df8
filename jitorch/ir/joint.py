"""Splitting a joint forward+backward graph into a forward graph and a backward graph.

`jitorch.compile` traces a differentiable function's backward into the same graph as its forward
(the cotangents of the outputs are `cotangent` inputs; the gradients are the last outputs), so that
the passes optimize both together. Before running, the joint graph is cut in two: the forward runs
on every call, and the backward runs later, only when autograd asks for it, reading the forward
values it needs ("saved") as inputs.
"""

from __future__ import annotations

from typing import NamedTuple

from .graph import Graph, Input, Value


class JointSplit(NamedTuple):
    """The two halves of a joint graph: the forward's outputs are its own, then the saved values;
    the backward's inputs are the saved values, then the cotangents."""

    forward: Graph
    backward: Graph
    n_saved: int


def split_joint(graph: Graph, n_forward_outputs: int) -> JointSplit:
    """Cut `graph` (whose first `n_forward_outputs` outputs are the forward's, the rest gradients)
    in two. Forward nodes are those not reached from a cotangent input (nor a checkpointed region's
    recompute); every forward value a
    backward node reads becomes a saved output of the forward and an input of the backward, except
    constants, which are cheaper to repeat in the backward than to save."""
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
    saved: dict[int, Value] = {}
    bwd_outputs = graph.outputs[n_forward_outputs:]
    consts = []
    for v in [v for node in bwd_nodes for v in node.inputs] + list(bwd_outputs):
        if v.id in bwd_ids:
            continue
        if v.node is not None and v.node.op == "const":
            if v.id not in {c.out.id for c in consts}:
                consts.append(v.node)
        else:
            saved.setdefault(v.id, v)
    fwd = Graph(graph.name)
    fwd.inputs = [i for i in graph.inputs if i.kind != "cotangent"]
    fwd.nodes = fwd_nodes
    fwd.outputs = graph.outputs[:n_forward_outputs] + list(saved.values())
    fwd.output_labels = graph.output_labels[:n_forward_outputs] + ["saved"] * len(saved)
    bwd = Graph(graph.name + ".backward")
    bwd.inputs = [Input(v, "saved", "") for v in saved.values()]
    bwd.inputs += [i for i in graph.inputs if i.kind == "cotangent"]
    bwd.nodes = consts + bwd_nodes
    bwd.outputs = list(bwd_outputs)
    bwd.output_labels = graph.output_labels[n_forward_outputs:]
    return JointSplit(fwd, bwd, len(saved))


def prune_inputs(graph: Graph) -> None:
    """Drop inputs nothing reads (lifted tensors only touched by dead code). Arguments and
    cotangents stay: the caller passes them by position."""
    used = set(graph.uses())
    graph.inputs = [i for i in graph.inputs if i.value.id in used or i.kind in ("arg", "cotangent")]
