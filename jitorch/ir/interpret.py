"""The executor of compiled programs: runs a graph's steps over numbered slots.

A step is either one primitive with its eager CPU kernel or, when the CPU backend is on, a fused
kernel that computes several pointwise nodes in one pass (`jitorch.ir.fusion`,
`jitorch.codegen.llvm`). The unfused steps are the reference: `mode="check"` compares against
them, and a run given `kernels` (primitive name -> kernel) runs the reference steps with those
kernels in place of the eager ones (tests plant a wrong one and see check mode name it).

`JITORCH_CPU_FUSION=0` (read when a program is built) turns fusion off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np

from .. import logs
from ..primitives import PRIMS
from .graph import Graph, Node, format_node


class FusionWarning(RuntimeWarning):
    """Fused kernels could not be built; the program runs unfused (correct, slower)."""


def fusion_enabled() -> bool:
    return os.environ.get("JITORCH_CPU_FUSION", "1") != "0"


class Plan:
    """A graph flattened into steps over numbered slots, freeing each value after its last use."""

    def __init__(self, graph: Graph, fuse: bool | None = None) -> None:
        self.graph = graph
        self.slot_of: dict[int, int] = {inp.value.id: i for i, inp in enumerate(graph.inputs)}
        self.n_inputs = len(graph.inputs)
        for node in graph.nodes:
            self.slot_of[node.out.id] = len(self.slot_of)
        self.n_slots = len(self.slot_of)
        self.output_slots = [self.slot_of[v.id] for v in graph.outputs]
        self.constants = [(self.slot_of[n.out.id], n.params["value"].array) for n in graph.nodes if n.op == "const"]
        self.reference_steps = self._steps([n for n in graph.nodes if n.op != "const"])
        self.kernels: list = []
        self.steps = self.reference_steps
        if fuse if fuse is not None else fusion_enabled():
            self.steps = self._fused_steps()

    def _fused_steps(self) -> list:
        from ..codegen import llvm
        from .fusion import Kernel, partition

        order = partition(self.graph, lambda n: n.op != "const" and llvm.fusible(n), llvm.worth_a_kernel)
        kernels = [k for k in order if isinstance(k, Kernel)]
        if not kernels:
            return self.reference_steps
        try:
            self.kernels = llvm.compile_kernels(kernels)
        except Exception as err:  # a code generator bug must not take the user's program down with it
            warnings.warn(FusionWarning(
                f"{self.graph.name}: the fused CPU kernels failed to compile ({type(err).__name__}: {err}); this "
                "program runs on the eager kernels instead. Please report it with the output of "
                "JITORCH_LOGS=fusion,kernels."), stacklevel=2)
            return self.reference_steps
        fused = sum(len(k.nodes) for k in kernels)
        logs.log("fusion", f"{self.graph.name}: {len(kernels)} fused kernels compute {fused} of "
                           f"{len(self.graph.nodes)} nodes\n" + "\n".join(k.format() for k in kernels))
        if logs.enabled("kernels"):
            for kernel in self.kernels:
                logs.log("kernels", kernel.source)
        compiled = dict(zip(map(id, kernels), self.kernels))
        return self._steps([compiled.get(id(k), k) for k in order if not (isinstance(k, Node) and k.op == "const")])

    def _steps(self, items: list) -> list:
        """(name, fn, input slots, params, output slots, slots to free after, what) per step; `fn`
        of a fused kernel takes the input list and returns the output list (params is None)."""
        slot_of = self.slot_of
        reads = [item.kernel.inputs if not isinstance(item, Node) else item.inputs for item in items]
        last_use: dict[int, int] = {}
        for step, values in enumerate(reads):
            for v in values:
                last_use[v.id] = step
        keep = {v.id for v in self.graph.outputs}
        steps = []
        for step, (item, values) in enumerate(zip(items, reads)):
            frees = tuple(slot_of[v.id] for v in set(values) if last_use.get(v.id) == step and v.id not in keep)
            ins = tuple(slot_of[v.id] for v in values)
            if isinstance(item, Node):
                steps.append((item.op, PRIMS[item.op].impl, ins, item.params, (slot_of[item.out.id],), frees, item))
            else:
                outs = tuple(slot_of[v.id] for v in item.kernel.outputs)
                steps.append((item.name, item.run, ins, None, outs, frees, item))
        return steps

    def run(self, inputs: list[np.ndarray], record: dict | None = None,
            kernels: dict[str, Callable] | None = None) -> list[np.ndarray]:
        """Evaluate the graph. With `record`, store every value it materializes there by value id.
        With `kernels` (even empty), run the unfused reference steps, taking a primitive's kernel
        from `kernels` where it has one."""
        env: list = [None] * self.n_slots
        env[: self.n_inputs] = inputs
        for slot, array in self.constants:
            env[slot] = array
        overrides = kernels
        steps = self.reference_steps if overrides is not None else self.steps
        with np.errstate(all="ignore"):
            for op, kernel, ins, params, outs, frees, what in steps:
                args = [env[i] for i in ins]
                try:
                    if params is None:
                        results = kernel(args)
                    else:
                        result = overrides.get(op, kernel)(*args, **params) if overrides else kernel(*args, **params)
                        results = (result if type(result) is np.ndarray else np.asarray(result),)
                except Exception as err:
                    shapes = ", ".join(str(getattr(a, "shape", None)) for a in args)
                    where = format_node(what) if params is not None else what.kernel.format()
                    raise RuntimeError(f"compiled program failed at `{where}` on input shapes [{shapes}]: {err}") \
                        from err
                for slot, result in zip(outs, results):
                    env[slot] = result
                if record is not None:
                    values = [what.out] if params is not None else what.kernel.outputs
                    for v, result in zip(values, results):
                        record[v.id] = result
                for i in frees:
                    env[i] = None
        return [env[i] for i in self.output_slots]
