"""`jitorch.export`: a model's inference graph and weights as a file that runs without its Python code.

    ep = jitorch.export.export(model, (x,))        # traced in eval mode, without autograd
    print(ep)                                       # the graph, its inputs and outputs
    jitorch.export.save(ep, "model.jtexport")       # a directory: program.json + weights.safetensors
    run = jitorch.export.load("model.jtexport", device="cpu")
    y = run(x)                                      # in any process: no pickle, no model code

The names follow `torch.export`. What is saved is the optimized forward graph of one call, every
primitive in it, its weights and constant arrays (see `format.py` for the file format); loading
rebuilds the graph from jitorch's own primitive table, checks it, and plans it on the device the
way `jitorch.compile` plans a program (fused kernels, compiled once and kept in the kernel disk
cache). Shapes are those of the example arguments: a call with other shapes is refused, naming
the input (`dynamic_shapes` is not supported yet).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..autograd import no_grad
from ..backends import backend_for
from ..device import Device
from ..ir.graph import Graph
from ..ir.pytree import unflatten
from ..runtime.executor import Plan
from ..tensor import Tensor
from .format import (
    GRAPH_FILE,
    WEIGHTS_FILE,
    ExportError,
    build_graph,
    count_leaves,
    decode_tree,
    graph_document,
    read_document,
)
from .safetensors import FormatError, load_file, save_file

__all__ = ["ExportError", "ExportedProgram", "FormatError", "LoadedProgram", "TensorSpec", "export", "load", "save"]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported program: its name, shape and dtype (a jitorch dtype name)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}{list(self.shape)}"


class ExportedProgram:
    """The inference graph of one call of a model or function, with its weights and its input and
    output specs. `module(device)` runs it; `jitorch.export.save` writes it."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], output_tree) -> None:
        self.graph = graph
        self.weights = weights  # name -> host array
        self.output_tree = output_tree
        self.input_specs, self.output_specs = _specs(graph)

    def module(self, device: str | Device = "cpu") -> LoadedProgram:
        """A callable that runs this program on `device`."""
        return LoadedProgram(self.graph, self.weights, self.output_tree, device)

    def __str__(self) -> str:
        lines = [f"ExportedProgram {self.graph.name}",
                 "  inputs:  " + ", ".join(map(str, self.input_specs)),
                 "  outputs: " + ", ".join(map(str, self.output_specs)),
                 f"  weights: {len(self.weights)} tensors, {sum(a.size for a in self.weights.values()):,} elements",
                 self.graph.format()]
        return "\n".join(lines)

    __repr__ = __str__


def _specs(graph: Graph) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(the argument inputs' specs, the outputs' specs) of an exported graph."""
    inputs = [TensorSpec(i.label, i.value.shape, i.value.dtype.name) for i in graph.inputs if i.kind == "arg"]
    outputs = [TensorSpec(label, v.shape, v.dtype.name) for v, label in zip(graph.outputs, graph.output_labels)]
    return inputs, outputs


def export(model_or_fn: Callable, args: tuple, kwargs: dict | None = None, *, dynamic_shapes=None,
           strict: bool = True) -> ExportedProgram:
    """Trace one call `model_or_fn(*args)` into an inference graph: a module is put in eval mode for
    the trace (and back after), autograd is off. `args` are tensors (positional); the outputs are
    tensors or tuples, lists or dicts of them. Weights are named by the module's `state_dict` keys
    where the module holds them."""
    if dynamic_shapes is not None:
        raise NotImplementedError("jitorch.export: dynamic_shapes is not supported yet; export once per input "
                                  "shape (the loaded program refuses other shapes, naming the input)")
    if kwargs:
        raise ExportError("jitorch.export: pass the example inputs positionally (args), not as keyword arguments")
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    for k, a in enumerate(args):
        if not isinstance(a, Tensor):
            raise ExportError(f"jitorch.export: argument {k} is a {type(a).__name__}; the example inputs must be "
                              "tensors (put other values in the model or a closure)")
    from .. import compiler  # (the compiler is a layer below this one; imported when first used)
    from ..nn import Module

    module = model_or_fn if isinstance(model_or_fn, Module) else None
    names = _argument_names(model_or_fn, len(args))
    fn = model_or_fn.forward if module is not None else model_or_fn  # (traced as written: its source lines)
    was_training = module.training if module is not None else None
    compiled = compiler.compile(fn, dynamic=False, fullgraph=True)
    try:
        if module is not None:
            module.eval()
        with no_grad():
            compiled(*args)
    finally:
        if module is not None:
            module.train(was_training)
    (program,) = compiled.programs()
    return _exported(program, module, names)


def _argument_names(fn: Callable, n: int) -> list[str]:
    target = getattr(fn, "forward", fn)
    try:
        params = [p for p in inspect.signature(target).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"arg{k}" for k in range(len(names), n)]


def _exported(program, module, arg_names: list[str]) -> ExportedProgram:
    info, graph = program.info, program.graph
    what = graph.name
    if program.backward is not None:
        raise ExportError(f"{what}: the exported call computed gradients")
    if info.writes or info.arg_writes or info.born_writes or info.grad_writes or info.python_writes or info.escaped:
        raise ExportError(f"{what}: the call writes state (in-place updates of tensors, attributes or .grad); "
                          "an exported program only computes its outputs")
    if any(slot is None for slot in info.user_out) or program.passthrough:
        raise ExportError(f"{what}: every output must be a tensor the call computes (no Python values, "
                          "no inputs returned as they are)")
    names = _weight_names(module)
    weights: dict[str, np.ndarray] = {}
    out = Graph(graph.name)
    values = {}
    for inp in graph.inputs:
        if inp.kind not in ("arg", "lifted"):
            raise ExportError(f"{what}: input {inp.label} ({inp.kind}) cannot be exported: an exported program "
                              "reads its arguments and weights only (no random numbers)")
        label, ref = (arg_names[inp.ref], inp.ref) if inp.kind == "arg" else (inp.label, inp.ref)
        if inp.kind == "lifted":  # (a weight: by its state_dict name where the module holds it)
            label = ref = names.get(id(inp.ref)) or inp.label
            weights[label] = inp.ref.detach().cpu().numpy()
        values[inp.value.id] = out.add_input(inp.value.shape, inp.value.dtype, inp.kind, label, ref)
    for node in graph.nodes:
        values[node.out.id] = out.add_node(node.op, tuple(values[v.id] for v in node.inputs), dict(node.params),
                                           node.out.shape, node.out.dtype, node.source)
    for k, slot in enumerate(info.user_out):
        out.add_output(values[graph.outputs[slot].id], f"out{k}" if len(info.user_out) > 1 else "out")
    return ExportedProgram(out, weights, program.out_treedef)


def _weight_names(module) -> dict[int, str]:
    if module is None:
        return {}
    named = [*module.named_parameters(), *module.named_buffers()]  # (non-persistent buffers too: a mask)
    return {id(t): name for name, t in named}


def save(ep: ExportedProgram, path: str | os.PathLike) -> None:
    """Write `ep` to the directory `path` (made, or replaced where it holds an exported program):
    `program.json` and `weights.safetensors` (see `jitorch.export.format`). Written beside and
    renamed into place, so an interrupted save leaves any earlier program whole."""
    from .. import __version__

    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isfile(os.path.join(path, GRAPH_FILE)):
        raise FileExistsError(f"{path} exists and is not an exported program: choose another path")
    inputs = [{"arg": i.ref, "name": i.label} if i.kind == "arg" else {"weight": i.ref, "name": i.label}
              for i in ep.graph.inputs]
    document, constants = graph_document(ep.graph, inputs, list(ep.graph.output_labels), ep.output_tree,
                                         f"jitorch {__version__}")
    clash = set(constants) & set(ep.weights)
    if clash:
        raise ExportError(f"weights named like the graph's constants: {sorted(clash)}")
    staging = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        save_file({**ep.weights, **constants}, os.path.join(staging, WEIGHTS_FILE),
                  {"format": "jitorch.export", "producer": document["producer"]})
        with open(os.path.join(staging, GRAPH_FILE), "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1)
        old = f"{path}.old-{os.getpid()}"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load(path: str | os.PathLike, device: str | Device = "cpu") -> LoadedProgram:
    """The program saved at `path`, ready to run on `device` (checked as it is read: see
    `jitorch.export.format`; a file that is not as it should be raises FormatError naming it)."""
    path = os.fspath(path)
    document = read_document(path)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE}")
    arrays, _ = load_file(weights_path)
    graph = build_graph(document, arrays, os.path.join(path, GRAPH_FILE))
    tree = decode_tree(document.get("output_tree", "*"), os.path.join(path, GRAPH_FILE))
    if count_leaves(tree) != len(graph.outputs):
        raise FormatError(f"{path}: output_tree has {count_leaves(tree)} leaves for {len(graph.outputs)} outputs")
    args = sorted(i.ref for i in graph.inputs if i.kind == "arg")
    if args != list(range(len(args))) or any(type(a) is not int for a in args):
        raise FormatError(f"{path}: argument positions {args} are not 0..{len(args) - 1}")
    weights = {}
    for inp in graph.inputs:
        if inp.kind == "arg":
            continue
        array = arrays.get(inp.ref)
        if array is None:
            raise FormatError(f"{weights_path}: weight {inp.ref!r} is missing")
        if array.shape != inp.value.shape or array.dtype != inp.value.dtype.np:
            raise FormatError(f"{weights_path}: weight {inp.ref!r} is {array.dtype}{list(array.shape)}, the graph "
                              f"reads {inp.value.dtype.name}{list(inp.value.shape)}")
        weights[inp.ref] = array
    unused = set(arrays) - set(weights) - {k for k in arrays if k.startswith("constants/")}
    if unused:
        raise FormatError(f"{weights_path}: tensors the graph does not read: {sorted(unused)[:5]}")
    return LoadedProgram(graph, weights, tree, device)


class LoadedProgram:
    """An exported program planned on a device: call it with tensors of the input specs' shapes and
    dtypes (positionally); it returns the outputs as the exported call returned them."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], output_tree, device: str | Device) -> None:
        self.device = device if isinstance(device, Device) else Device(device)
        self.backend = backend_for(self.device.type)
        self.graph, self.output_tree = graph, output_tree
        self.input_specs, self.output_specs = _specs(graph)
        self._weights = {name: self.backend.from_numpy(a if a.flags.c_contiguous else a.copy())
                         for name, a in weights.items()}
        self._fetch = [("arg", i.ref) if i.kind == "arg" else ("weight", i.ref) for i in graph.inputs]
        self._plan = Plan(graph, self.backend)

    def __call__(self, *args):
        if len(args) != len(self.input_specs):
            raise TypeError(f"the exported program takes {len(self.input_specs)} inputs "
                            f"({', '.join(map(str, self.input_specs))}), got {len(args)}")
        arrays = [self._argument(k, a) for k, a in enumerate(args)]
        inputs = [arrays[ref] if kind == "arg" else self._weights[ref] for kind, ref in self._fetch]
        with no_grad():
            results = self._plan.run(inputs)
        outs = []
        for data in results:
            t = Tensor._make(data if self.backend.owns_buffer(data) else self.backend.copy(data))
            if self.device.type != "cpu":
                t._device = self.device
            outs.append(t)
        return unflatten(self.output_tree, outs)

    def _argument(self, k: int, a):
        spec = self.input_specs[k]
        if not isinstance(a, Tensor):
            raise TypeError(f"input {spec.name}: expected a tensor ({spec.dtype}{list(spec.shape)}), "
                            f"got {type(a).__name__}")
        if tuple(a.shape) != spec.shape or a.dtype.name != spec.dtype:
            raise ValueError(f"input {spec.name}: expected {spec.dtype}{list(spec.shape)}, got "
                             f"{a.dtype.name}{list(a.shape)} (the program was exported for these shapes)")
        if a.device != self.device:
            raise ValueError(f"input {spec.name} is on {a.device}; this program runs on {self.device}: "
                             f"move it with .to('{self.device}')")
        return a._data

    def __str__(self) -> str:
        return (f"LoadedProgram {self.graph.name} on {self.device}: "
                + ", ".join(map(str, self.input_specs)) + " -> " + ", ".join(map(str, self.output_specs)))
