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
cache). Shapes are those of the example arguments but for the dims exported as dynamic
(`dynamic_shapes`, as in `torch.export`): a call with other shapes is refused, naming the input.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import serialization
from ..autograd import no_grad
from ..backends import backend_for
from ..device import Device, placement
from ..ir.graph import Graph
from ..ir.pytree import unflatten
from ..runtime.executor import Plan
from ..symbolic import SymInt
from ..tensor import Tensor
from .format import (
    GRAPH_FILE,
    WEIGHTS_FILE,
    ExportError,
    FormatError,
    build_graph,
    check,
    count_leaves,
    decode_tree,
    encode_expr,
    graph_document,
    read_document,
)

__all__ = ["Dim", "ExportError", "ExportedProgram", "FormatError", "LoadedProgram", "TensorSpec", "export", "load",
           "save"]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported program: its name, shape and dtype (a jitorch dtype name)."""

    name: str
    shape: tuple[int | str, ...]  # a dynamic dim by its symbol's name ("s0")
    dtype: str

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"


class ExportedProgram:
    """The inference graph of one call of a model or function, with its weights and its input and
    output specs. `module(device)` runs it; `jitorch.export.save` writes it."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], output_tree, shape_env=None) -> None:
        self.graph = graph  # over size symbols where dims are dynamic
        self.weights = weights  # name -> host array
        self.output_tree = output_tree
        self.shape_env = shape_env  # the symbols' sources and guards (a ShapeEnv), or None
        self.bounds: dict[str, tuple] = {}  # symbol -> (least size or None, largest or None), from `Dim`s
        self.input_specs, self.output_specs = _specs(graph)

    def module(self, device: str | Device = "cpu") -> LoadedProgram:
        """A callable that runs this program on `device`."""
        return LoadedProgram(self.graph, self.weights, self.output_tree, device, self.shape_env, self.bounds)

    def __str__(self) -> str:
        lines = [f"ExportedProgram {self.graph.name}",
                 "  inputs:  " + ", ".join(map(str, self.input_specs)),
                 "  outputs: " + ", ".join(map(str, self.output_specs)),
                 f"  weights: {len(self.weights)} tensors, {sum(a.size for a in self.weights.values()):,} elements"]
        if self.shape_env is not None:
            lines += ["  " + line for line in self.shape_env.describe()]
        lines.append(self.graph.format())
        return "\n".join(lines)

    __repr__ = __str__


def _specs(graph: Graph) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(the argument inputs' specs, the outputs' specs) of an exported graph."""
    def spec(name: str, v) -> TensorSpec:
        return TensorSpec(name, tuple(str(d.expr) if type(d) is SymInt else d for d in v.shape), v.dtype.name)

    inputs = [spec(i.label, i.value) for i in graph.inputs if i.kind == "arg"]
    outputs = [spec(label, v) for v, label in zip(graph.outputs, graph.output_labels)]
    return inputs, outputs


def export(model_or_fn: Callable, args: tuple, kwargs: dict | None = None, *, dynamic_shapes=None,
           strict: bool = True) -> ExportedProgram:
    """Trace one call `model_or_fn(*args)` into an inference graph: a module is put in eval mode for
    the trace (and back after), autograd is off. `args` are tensors (positional); the outputs are
    tensors or tuples, lists or dicts of them. Weights are named as the module names its parameters
    and buffers (its `state_dict` keys) where the module holds them.

    `dynamic_shapes`, as in `torch.export`: per argument (a dict by argument name, or a tuple in
    argument order) None or {dim: name or `Dim`} for the dims that may differ from call to call (a
    batch, a sequence length); every other dim is fixed. Dims given one name are one size. `strict`
    is accepted for `torch.export`'s signature: jitorch's trace is always strict (a Python value
    the model reads becomes a constant, a data-dependent branch an error)."""
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
    dynamic = _dynamic_dims(dynamic_shapes, names, args)
    traced_args = [a.detach() for a in args]  # (marked as dynamic, not the caller's tensors)
    for k, dims in dynamic.items():
        compiler.mark_dynamic(traced_args[k], sorted(dims))
    fn = model_or_fn.forward if module is not None else model_or_fn  # (traced as written: its source lines)
    was_training = module.training if module is not None else None
    compiled = compiler.compile(fn, dynamic=None if dynamic else False, fullgraph=True)
    try:
        if module is not None:
            module.eval()
        with no_grad():
            compiled(*traced_args)
    finally:
        if module is not None:
            module.train(was_training)
    (entry,) = [e for entries in compiled.cache.values() for e in entries]
    ep = _exported(entry, module, names)
    if ep.shape_env is not None:
        ep.bounds = _bounds(ep.shape_env, dynamic)
    return ep


def _dynamic_dims(dynamic_shapes, names: list[str], args: tuple) -> dict[int, dict[int, tuple]]:
    """{argument index: {dynamic dim: (least size or None, largest or None)}} from `dynamic_shapes`
    (see `export`); the example's sizes must lie within the bounds."""
    if dynamic_shapes is None:
        return {}
    if isinstance(dynamic_shapes, dict):
        unknown = set(dynamic_shapes) - set(names)
        if unknown:
            raise ExportError(f"dynamic_shapes names {sorted(unknown)}, which are not arguments ({names})")
        per_arg = [dynamic_shapes.get(name) for name in names]
    elif isinstance(dynamic_shapes, (tuple, list)) and len(dynamic_shapes) == len(args):
        per_arg = list(dynamic_shapes)
    else:
        raise ExportError("dynamic_shapes: a dict by argument name, or a tuple with one entry per argument")
    found = {}
    for k, (spec, a) in enumerate(zip(per_arg, args)):
        if spec is None:
            continue
        dims = spec if isinstance(spec, dict) else dict.fromkeys(spec)
        found[k] = {}
        for d, dim in dims.items():
            if type(d) is not int or not -a.ndim <= d < a.ndim:
                raise ExportError(f"dynamic_shapes: dim {d!r} of {names[k]} (shape {list(a.shape)}) is out of range")
            size = a.shape[d]
            if size < 2:
                raise ExportError(f"dynamic_shapes: {names[k]}.size({d}) is {size} in the example; "
                                  "export with a size of at least 2 for a dynamic dim")
            lo, hi = (dim.min, dim.max) if isinstance(dim, Dim) else (None, None)
            if (lo is not None and size < lo) or (hi is not None and size > hi):
                raise ExportError(f"dynamic_shapes: {names[k]}.size({d}) is {size} in the example, outside {dim!r}")
            found[k][d % a.ndim] = (lo, hi)
    return found


def _bounds(env, dynamic: dict[int, dict[int, tuple]]) -> dict[str, tuple]:
    """Each size symbol's (least, largest) size from the `Dim`s of the dims it stands for."""
    bounds = {}
    for name, sources in env.sources.items():
        los = [dynamic.get(s.leaf, {}).get(s.dim, (None, None))[0] for s in sources]
        his = [dynamic.get(s.leaf, {}).get(s.dim, (None, None))[1] for s in sources]
        lo = max((b for b in los if b is not None), default=None)
        hi = min((b for b in his if b is not None), default=None)
        if lo is not None or hi is not None:
            bounds[name] = (lo, hi)
    return bounds


class Dim:
    """A named dynamic size for `dynamic_shapes`, as `torch.export.Dim`: `min` and `max` bound the
    sizes a loaded program takes (a call outside them is refused, naming the dim)."""

    def __init__(self, name: str, *, min: int | None = None, max: int | None = None) -> None:  # noqa: A002
        self.name, self.min, self.max = name, min, max

    def __repr__(self) -> str:
        bounds = "".join(f", {k}={v}" for k, v in (("min", self.min), ("max", self.max)) if v is not None)
        return f"Dim({self.name!r}{bounds})"


def _argument_names(fn: Callable, n: int) -> list[str]:
    target = getattr(fn, "forward", fn)
    try:
        params = [p for p in inspect.signature(target).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"arg{k}" for k in range(len(names), n)]


def _exported(entry, module, arg_names: list[str]) -> ExportedProgram:
    """The ExportedProgram of a compiled function's one cache entry: its Program, or the graph over
    size symbols of a SymbolicProgram (optimized over the symbols, as the compiler does)."""
    from ..compiler.dynamic import SymbolicProgram
    from ..ir.joint import prune_inputs
    from ..ir.passes import optimize
    from ..symbolic import SizeEscape, strict

    env = None
    if isinstance(entry, SymbolicProgram):
        (program,) = entry.programs.values()
        try:
            with strict():
                graph = optimize(entry.graph.copy())
                prune_inputs(graph)
        except SizeEscape as err:
            raise ExportError(f"{entry.name}: the model uses a dynamic size as a number in a way its graph cannot "
                              f"express ({err}); export without dynamic_shapes") from None
        env = entry.env
    else:
        program, graph = entry, entry.graph
    info, what = program.info, graph.name
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
        if inp.kind not in ("arg", "lifted", "size"):
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
    if env is not None:
        env = _named_sources(env, arg_names)
    return ExportedProgram(out, weights, program.out_treedef, env)


def _named_sources(env, arg_names: list[str]):
    """`env` with its sizes labelled by the export's argument names (`input.size(0)`)."""
    from ..symbolic import ShapeEnv, SymbolSource

    named = ShapeEnv()
    named.hints, named.guards = dict(env.hints), list(env.guards)
    named.sources = {name: [SymbolSource(s.leaf, s.dim, f"{arg_names[s.leaf]}.size({s.dim})") for s in sources]
                     for name, sources in env.sources.items()}
    named.fixed = [SymbolSource(s.leaf, s.dim, f"{arg_names[s.leaf]}.size({s.dim})", s.size) for s in env.fixed]
    return named


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
              if i.kind == "lifted" else {"size": encode_expr(i.ref), "name": i.label} for i in ep.graph.inputs]
    document, constants = graph_document(ep.graph, inputs, list(ep.graph.output_labels), ep.output_tree,
                                         f"jitorch {__version__}", ep.shape_env, ep.bounds)
    clash = set(constants) & set(ep.weights)
    if clash:
        raise ExportError(f"weights named like the graph's constants: {sorted(clash)}")
    staging = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        serialization.save({**ep.weights, **constants}, os.path.join(staging, WEIGHTS_FILE))
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
    arrays = _read_weights(weights_path)
    graph, shape_env, bounds = build_graph(document, arrays, os.path.join(path, GRAPH_FILE))
    tree = decode_tree(document.get("output_tree", "*"), os.path.join(path, GRAPH_FILE))
    if count_leaves(tree) != len(graph.outputs):
        raise FormatError(f"{path}: output_tree has {count_leaves(tree)} leaves for {len(graph.outputs)} outputs")
    args = sorted(i.ref for i in graph.inputs if i.kind == "arg")
    if args != list(range(len(args))):
        raise FormatError(f"{path}: argument positions {args} are not 0..{len(args) - 1}")
    weights = {}
    for inp in graph.inputs:
        if inp.kind != "lifted":  # (an argument, or a size the call's shapes give)
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
    return LoadedProgram(graph, weights, tree, device, shape_env if shape_env.sources or shape_env.fixed else None,
                         bounds)


def _read_weights(path: str) -> dict[str, np.ndarray]:
    """The arrays of a weights file by name (`jitorch.load`, which refuses truncated, oversized or
    inconsistent files naming them)."""
    try:
        found = serialization.load(path, map_location="cpu")
    except serialization.CheckpointError as err:
        raise FormatError(str(err)) from None
    if not isinstance(found, dict) or not all(isinstance(k, str) for k in found):
        raise FormatError(f"{path}: not a flat table of named tensors")
    return {k: v.numpy() if isinstance(v, Tensor) else np.asarray(v) for k, v in found.items()}


class LoadedProgram:
    """An exported program planned on a device: call it with tensors of the input specs' dtypes and
    shapes (dynamic dims at any size the export allows), positionally; it returns the outputs as the
    exported call returned them. Each new set of dynamic sizes is planned once (its kernels compile
    once, into the kernel disk cache)."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], output_tree, device: str | Device,
                 shape_env=None, bounds: dict[str, tuple] | None = None) -> None:
        self.device = placement(device)  # ("cuda" is the current cuda device, as tensors moved there have it)
        self.backend = backend_for(self.device.type)
        self.graph, self.output_tree, self.shape_env, self.bounds = graph, output_tree, shape_env, bounds or {}
        self.input_specs, self.output_specs = _specs(graph)
        self._weights = {name: self.backend.from_numpy(a if a.flags.c_contiguous else a.copy())
                         for name, a in weights.items()}
        self._plans: dict[tuple[int, ...], tuple[Plan, list, list]] = {}  # sizes -> (plan, inputs, their shapes)
        if shape_env is None:
            self._plan_for({})

    def _plan_for(self, sizes: dict[str, int]) -> tuple[Plan, list, list]:
        key = tuple(sizes.values())
        found = self._plans.get(key)
        if found is None:
            graph = check(self.graph, sizes, self.graph.name) if sizes else self.graph
            fetch = []
            for i in graph.inputs:
                if i.kind == "arg":
                    fetch.append(i.ref)
                elif i.kind == "lifted":
                    fetch.append(self._weights[i.ref])
                else:  # (a size used as a number)
                    fetch.append(self.backend.from_numpy(np.array(i.ref, np.int64)))
            shapes = [i.value.shape for i in sorted((i for i in graph.inputs if i.kind == "arg"), key=lambda i: i.ref)]
            found = self._plans[key] = (Plan(graph, self.backend), fetch, shapes)
        return found

    def __call__(self, *args):
        if len(args) != len(self.input_specs):
            raise TypeError(f"the exported program takes {len(self.input_specs)} inputs "
                            f"({', '.join(map(str, self.input_specs))}), got {len(args)}")
        for spec, a in zip(self.input_specs, args):
            self._check(spec, a)
        sizes = {}
        if self.shape_env is not None:
            sizes, reason = self.shape_env.bind([tuple(a.shape) for a in args])
            if sizes is None:
                raise ValueError(f"the exported program does not take these shapes: {reason}")
            for name, (lo, hi) in self.bounds.items():
                if (lo is not None and sizes[name] < lo) or (hi is not None and sizes[name] > hi):
                    raise ValueError(f"{self.shape_env.label(name)} is {sizes[name]}; the program was exported for "
                                     f"sizes {'' if lo is None else f'{lo} '}to{'' if hi is None else f' {hi}'}")
        plan, fetch, shapes = self._plan_for(sizes)
        for spec, a, shape in zip(self.input_specs, args, shapes):
            if tuple(a.shape) != tuple(shape):
                raise ValueError(f"input {spec.name}: expected {spec.dtype}{list(shape)}, got "
                                 f"{a.dtype.name}{list(a.shape)} (its fixed dims are the exported shapes')")
        inputs = [args[ref]._data if type(ref) is int else ref for ref in fetch]
        with no_grad():
            results = plan.run(inputs)
        outs = []
        for data in results:
            t = Tensor._make(data if self.backend.owns_buffer(data) else self.backend.copy(data))
            if self.device.type != "cpu":
                t._device = self.device
            outs.append(t)
        return unflatten(self.output_tree, outs)

    def _check(self, spec: TensorSpec, a) -> None:
        if not isinstance(a, Tensor):
            raise TypeError(f"input {spec.name}: expected a tensor ({spec.dtype}{list(spec.shape)}), "
                            f"got {type(a).__name__}")
        if a.dtype.name != spec.dtype or a.ndim != len(spec.shape):
            raise ValueError(f"input {spec.name}: expected {spec.dtype}[{', '.join(map(str, spec.shape))}], got "
                             f"{a.dtype.name}{list(a.shape)}")
        if a.device != self.device:
            raise ValueError(f"input {spec.name} is on {a.device}; this program runs on {self.device}: "
                             f"move it with .to('{self.device}')")

    def __str__(self) -> str:
        return (f"LoadedProgram {self.graph.name} on {self.device}: "
                + ", ".join(map(str, self.input_specs)) + " -> " + ", ".join(map(str, self.output_specs)))
