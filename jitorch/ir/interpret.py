"""The reference executor: runs a graph node by node with the eager CPU kernels.

It is the ground truth that fused kernels are checked against (`mode="check"`), and the executor of
compiled programs until a backend claims them. `KERNELS` may override a primitive's kernel (tests use
it to plant a wrong kernel and see the check mode name it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..primitives import PRIMS
from .graph import Graph, format_node

KERNELS: dict[str, Callable] = {}


class Plan:
    """A graph flattened into steps over numbered slots, freeing each value after its last use."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        slot_of: dict[int, int] = {}
        for i, inp in enumerate(graph.inputs):
            slot_of[inp.value.id] = i
        self.n_inputs = len(graph.inputs)
        self.constants: list[tuple[int, np.ndarray]] = []
        last_use: dict[int, int] = {}
        for step, node in enumerate(graph.nodes):
            for v in node.inputs:
                last_use[v.id] = step
        keep = {v.id for v in graph.outputs}
        steps = []
        for step, node in enumerate(graph.nodes):
            slot = slot_of[node.out.id] = len(slot_of)
            if node.op == "const":
                self.constants.append((slot, node.params["value"].array))
                continue
            frees = tuple(slot_of[v.id] for v in set(node.inputs)
                          if last_use.get(v.id) == step and v.id not in keep)
            steps.append((node.op, PRIMS[node.op].impl, tuple(slot_of[v.id] for v in node.inputs),
                          node.params, slot, frees, node))
        self.steps = steps
        self.n_slots = len(slot_of)
        self.output_slots = [slot_of[v.id] for v in graph.outputs]

    def run(self, inputs: list[np.ndarray], record: dict | None = None) -> list[np.ndarray]:
        """Evaluate the graph. With `record`, store every node's output there by value id."""
        env: list = [None] * self.n_slots
        env[: self.n_inputs] = inputs
        for slot, array in self.constants:
            env[slot] = array
        overrides = KERNELS
        with np.errstate(all="ignore"):
            for op, kernel, ins, params, out, frees, node in self.steps:
                if overrides:
                    kernel = overrides.get(op, kernel)
                try:
                    result = kernel(*[env[i] for i in ins], **params)
                except Exception as err:
                    shapes = ", ".join(str(getattr(env[i], "shape", None)) for i in ins)
                    raise RuntimeError(
                        f"compiled program failed at `{format_node(node)}` on input shapes [{shapes}]: {err}"
                    ) from err
                env[out] = result if type(result) is np.ndarray else np.asarray(result)
                if record is not None:
                    record[node.out.id] = env[out]
                for i in frees:
                    env[i] = None
        return [env[i] for i in self.output_slots]
