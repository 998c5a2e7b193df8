"""The CUDA backend's launcher: runs a rendered Triton kernel on CuPy arrays.

`TritonKernel(desc, source)` wraps one kernel that `jitorch.codegen.triton.render(desc)` rendered
(a `TritonSource`: the function's text and name, its parameters with what each one is, its
compile-time constants, configurations and launch grid). Its code (`compiled_form`: the text
without its comments, the function named without the sizes ending its name, so that the same
kernel at another size or in another layer is one source) becomes a module of its own on disk
(Triton's JIT reads a kernel's source from its file): `cache_dir()`, named by the digest of the
code and the Triton version, written atomically; a file whose text is not what its name promises
is written again. The kernel is compiled (`JITFunction.warmup`) for the current device the first
time it runs there, once per specialization Triton makes of the arguments (see `TritonKernel.run`),
and launched through the compiled kernel's C launcher with its argument list prepared once
(`triton_driver.launch_function`), on CuPy's current stream: a few microseconds of Python per
launch, against about 15 us for `kernel[grid](...)`.

Choosing a configuration (as PyTorch Inductor's autotuning, but on by default, since the choice is
kept): where the renderer offers several (`TritonSource.configs`: block sizes and warp counts; one
for kernels of under 1 MiB), the kernel's first launch on a device compiles each (Triton's own disk
cache serves a repeat), times each on that call's own arguments (`time_launches`: CUDA events on
the current stream, the median of 5 after 2 warm-ups) and keeps the fastest. The default is timed
first, and a kernel whose default runs under `TUNE_MIN_MS` keeps it without compiling the others:
a few percent of a few microseconds is worth less than the compiles, and a transformer's training
step has hundreds of kernels. The choice is kept in
this process and in `cache_dir()` as `autotune_<digest>.json`, named by the digest of what it was
chosen for: the kernel source's digest (`source_digest`), the loop shape, the GPU's name and
compute capability, and the Triton version, which the file repeats under "key" with the choice
("config": constexprs and num_warps) and each time measured ("tried"). A later process reads it
and times nothing; a file that is damaged, unreadable, made for another key or naming a
configuration no longer offered is ignored and written again after timing. Nothing is timed while
a CUDA graph is being captured (`graphs.capturing()`): the default runs, and the choice waits for
a launch outside the capture. `JITORCH_AUTOTUNE=0` turns the timing off (the default always);
`JITORCH_LOGS=perf` logs each kernel's compile time, and each tuning's time, configurations and
their times, and the winner.

Inputs are viewed in the kernel's collapsed loop shape (`KernelDesc`): dims merged as the loop's
are, without a copy where the layout allows, else a contiguous copy first; the innermost stride is
1 or 0 (a strided innermost dim is copied first, as on the CPU). Outputs are C-contiguous arrays
the caller gives (a compiled program's memory plan) or new ones.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import operator
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import tokenize
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ... import logs
from ...ir.fusion import KernelDesc
from .. import autotuning_wide
from . import compile_worker, graphs, triton_driver
from .triton_driver import Pointer

if TYPE_CHECKING:  # (a jitorch without the Triton renderer still imports this module)
    from ...codegen.triton import Config

cupy = None  # imported by the first TritonKernel: this module imports on a machine without a GPU
device_array = None  # scalars.device_array, imported with it


def _import_cupy() -> None:
    global cupy, device_array
    if cupy is None:
        import cupy

        from .scalars import device_array

# ---------------------------------------------------------------------------------------------
# kernel sources on disk

_HEADER = "import triton\nimport triton.language as tl\n\n"


def cache_dir() -> str:
    """Where kernel sources are kept: $JITORCH_CACHE_DIR/triton, or ~/.cache/jitorch/triton."""
    root = os.environ.get("JITORCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jitorch")
    return os.path.join(root, "triton")


def source_digest(text: str) -> str:
    """What a kernel source's file is named by: its text and the Triton version that compiles it."""
    return hashlib.sha256(f"triton {triton_driver.triton.__version__}\n{text}".encode()).hexdigest()[:32]


def module_text(text: str) -> str:
    """A kernel's source as the module that defines it: with imports of triton and triton.language
    where the text has none."""
    return text if "import triton" in text else _HEADER + text


def compiled_form(text: str, name: str) -> tuple[str, str]:
    """What is compiled of a rendered kernel: its code without the comments (the IR nodes and user
    lines it cites, for a person reading it), its variables numbered in order of appearance instead
    of by IR value (`v351_ptr` -> `v0_ptr`), and its function named without the sizes ending its
    name (`fused_add_relu_64x96` -> `fused_add_relu`), with that name. The code takes its sizes at
    run time, so kernels that differ only in those (the same op in each layer of a model, a program
    lowered for another size) are one source for Triton's caches: compiled once."""
    generic = re.sub(r"_\d+(?:x\d+)*$", "", name) or name
    code = _canonical(text)
    if generic != name:
        code = re.sub(rf"\bdef {re.escape(name)}\(", f"def {generic}(", code)
    return code, generic


_VARIABLE = re.compile(r"(v|acc)(\d+)(\w*)$")  # the renderer's names of IR values: v12, v12_ptr, acc12


def _canonical(text: str) -> str:
    """`text` with its comments cut and the IR values' variables renumbered by first appearance,
    formatting kept."""
    lines = text.splitlines()
    edits: dict[int, list[tuple[int, int, str]]] = collections.defaultdict(list)  # line -> (start, end, new)
    numbers: dict[str, int] = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        row, col = token.start[0] - 1, token.start[1]
        if token.type == tokenize.COMMENT:
            edits[row].append((col, len(lines[row]), ""))
        elif token.type == tokenize.NAME and (found := _VARIABLE.match(token.string)):
            prefix, number, suffix = found.groups()
            edits[row].append((col, token.end[1], f"{prefix}{numbers.setdefault(number, len(numbers))}{suffix}"))
    kept = []
    for i, line in enumerate(lines):
        for start, end, new in sorted(edits.get(i, ()), reverse=True):
            line = line[:start] + new + line[end:]
        if line.strip():  # (blank lines, and lines that held only a comment, go)
            kept.append(line.rstrip())
    return "\n".join(kept) + "\n"


_functions: dict[str, object] = {}  # "digest:name" -> that JITFunction, loaded in this process
_load_lock = threading.Lock()


def load_kernel_function(text: str, name: str):
    """The `@triton.jit` function `name` defined by the module source `module_text(text)`, loaded
    from its file in `cache_dir()` (written first where it is missing or damaged)."""
    text = module_text(text)
    digest = source_digest(text)
    key = f"{digest}:{name}"
    found = _functions.get(key)
    if found is None:
        with _load_lock:
            found = _functions.get(key)
            if found is None:
                found = _functions[key] = getattr(_load_module(digest, text), name)
    return found


def _load_module(digest: str, text: str) -> types.ModuleType:
    module_name = f"jitorch_triton_{digest}"
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    path = _source_file(digest, text)
    module = types.ModuleType(module_name)
    module.__file__ = path
    sys.modules[module_name] = module
    try:
        # the text in hand, not the file, is what runs; Triton reads the file for the kernel's source lines
        exec(compile(text, path, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _source_file(digest: str, text: str) -> str:
    """The path of a file holding exactly `text`: the cached one, or one written now (atomically,
    so that a reader never sees half a file). Where the cache folder can't be written, a folder
    in the system's temporary directory serves."""
    for folder in (cache_dir(), os.path.join(tempfile.gettempdir(), f"jitorch-triton-{os.getuid()}")):
        path = os.path.join(folder, f"kernel_{digest}.py")
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return path
        except (OSError, UnicodeDecodeError):
            pass  # missing or damaged: write it
        if write_atomically(path, text):
            return path
    raise OSError(f"jitorch could not write a Triton kernel's source file under {cache_dir()} or the temporary "
                  "directory (set JITORCH_CACHE_DIR to a writable folder)")


def write_atomically(path: str, text: str) -> bool:
    """Write `text` to `path` through a temporary file renamed over it; False (and no file, no
    temporary left behind) where that fails."""
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".kernel-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return False


# ---------------------------------------------------------------------------------------------
# arguments


def view_strides(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int,
                 dim_groups: tuple[tuple[int, ...], ...], kernel_ndim: int) -> list[int] | None:
    """The element strides of an array (`shape`, byte `strides`) viewed in a kernel's loop shape,
    whose dim d merges the kernel dims `dim_groups[d]` (the array's dims right-aligned to the
    kernel's `kernel_ndim`): 0 along a loop dim the array is broadcast on, None where its dims
    can't be merged without a copy.

        >>> view_strides((4, 6), (24, 4), 4, ((0, 1),), 2)  # a C-contiguous float32 4x6: one dim
        [1]
    """
    pad = kernel_ndim - len(shape)
    shape, strides = (1,) * pad + tuple(shape), (0,) * pad + tuple(strides)
    found = []
    for group in dim_groups:
        stride, span = 0, None  # span: the stride the next dim out must have to merge
        for d in reversed(group):
            if shape[d] == 1:
                continue
            if strides[d] % itemsize:
                return None
            step = strides[d] // itemsize
            if span is None:
                stride = step
            elif step != span:
                return None
            span = step * shape[d]
        found.append(stride)
    return found


def contiguous_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """The byte strides of a C-contiguous array of `shape`."""
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.insert(0, step)
        step *= size
    return tuple(strides)


class Arguments:
    """A kernel function's arguments in order, from one call's values: `pick(values)` takes them
    from `values = pointers + runtime + constexprs`, where `pointers` are the inputs' addresses then
    the outputs', `runtime` the values of the other parameters in the order of `params` (what
    `TritonSource.runtime_args` gives) and `constexprs` the compile-time constants'. `params`
    say what each parameter is (`jitorch.codegen.triton.Param`: kind "input", "output" with its
    operand, or another kind)."""

    def __init__(self, params: list, n_in: int, n_out: int, n_constexprs: int) -> None:
        order, runtime = [], n_in + n_out
        for p in params:
            if p.kind == "input":
                order.append(p.operand)
            elif p.kind == "output":
                order.append(n_in + p.operand)
            else:
                order.append(runtime)
                runtime += 1
        order += range(runtime, runtime + n_constexprs)
        self.order = order
        self.pick = operator.itemgetter(*order) if len(order) > 1 else lambda values: (values[order[0]],)


def set_up(kernel, item, source, loop_shape: tuple[int, ...]) -> None:
    """What every kernel object of the cuda backend keeps: `item` (a `Kernel`, `KernelGroup` or
    `MatmulEpilogue`), its rendered `source` loaded, the configurations offered for `loop_shape`
    (which a recorded choice is keyed by), its operands' dtypes and output shapes."""
    _import_cupy()
    kernel.kernel, kernel.name = item, item.name()
    kernel.source, kernel.rendered = source.text, source
    text, name = compiled_form(source.text, source.name)
    kernel.compiled_text, kernel.function_name = text, name
    kernel.function = load_kernel_function(text, name)
    kernel.digest = source_digest(module_text(text))
    kernel.loop_shape = loop_shape
    kernel.search = "wide" if autotuning_wide() else "default"  # (mode="max-autotune": more candidates)
    kernel.configs = source.configs(loop_shape, wide=kernel.search == "wide")
    kernel.in_dtypes = [v.dtype.np for v in item.inputs]
    kernel.out_dtypes = [v.dtype.np for v in item.outputs]
    kernel.out_shapes = [v.shape for v in item.outputs]
    kernel._launches = {}  # the variants compiled and prepared, by what they were compiled for
    kernel._chosen = {}  # device -> the index in `configs` of its configuration
    kernel._tune_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# the kernel


class TritonKernel:
    """A rendered Triton kernel ready to run on CuPy arrays: `run(inputs, outs=None) -> outputs`.

    `source` is the renderer's `TritonSource`: `text` and `name` (the function), `params` (what each
    argument before the constants is), `constexprs` (the constants' names), `configs(loop_shape)`,
    `launch_grid(loop_shape, config)` and `runtime_args(loop_shape, input_strides)`. Where the
    renderer offers more than one configuration, the kernel's first launch on a device times each
    on the call's own arguments and keeps the fastest, remembered in this process and on disk
    (see "choosing a configuration" below); else it runs in the one offered."""

    def __init__(self, desc: KernelDesc, source) -> None:
        kernel = desc.kernel
        set_up(self, kernel, source, desc.loop_shape)
        self.dim_groups, self.kernel_ndim = desc.dim_groups, len(kernel.shape)
        self.broadcast = desc.broadcast
        # each input's strides when it is C-contiguous (the usual case: nothing to compute per call)
        self.contiguous = [view_strides(v.shape, contiguous_strides(v.shape, dtype.itemsize), dtype.itemsize,
                                        self.dim_groups, self.kernel_ndim)
                           for v, dtype in zip(kernel.inputs, self.in_dtypes)]
        self.arguments = Arguments(source.params, len(kernel.inputs), len(kernel.outputs), len(source.constexprs))
        # the element type of each pointer as the renderer declares it ("*i8" for bool): in and out
        element = {(p.kind, p.operand): p.type.removeprefix("*") for p in source.params}
        self.pointer_types = [element[("input", k)] for k in range(len(kernel.inputs))]
        self.pointer_types += [element[("output", j)] for j in range(len(kernel.outputs))]


    @property
    def config(self) -> Config:
        """The configuration the kernel runs in on the current device (the default until one is chosen)."""
        return self.configs[self._chosen.get(cupy.cuda.runtime.getDevice(), 0)]

    @property
    def grid(self) -> tuple[int, int, int]:
        """The programs a launch on the current device runs."""
        return self._grid(self._chosen.get(cupy.cuda.runtime.getDevice(), 0))

    def prepare(self) -> None:
        """Compile for the current device and the usual arguments (contiguous, 16-byte aligned), so
        that a kernel that fails to compile fails while its program is built: in the configuration
        already chosen (in this process or on disk), else the default, and the others only when the
        first launch times them."""
        device = cupy.cuda.runtime.getDevice()
        key = (device, True, None)
        index = self._chosen.get(device)
        if index is None:
            index = self._settled(device)
        started = time.perf_counter()
        entry = self._compile(key, 0 if index is None else index)
        logs.log("perf", f"{self.name}: compiled in {(time.perf_counter() - started) * 1e3:.0f} ms "
                         f"({_format(self.configs[0 if index is None else index])})")
        if index is not None:
            self._chosen[device] = index
            self._launches[key] = entry

    def compile_jobs(self) -> list[tuple[tuple, CompileJob]]:
        """What `prepare` and the first launch will compile, as (key, job) pairs whose job compiles
        one configuration into Triton's caches (in memory and on disk) without loading it: the
        configuration chosen, else every one offered (the first launch times them). Jobs of equal
        keys compile the same thing (a kernel repeated in each layer of a model)."""
        device = cupy.cuda.runtime.getDevice()
        index = self._chosen.get(device)
        if index is None:
            index = self._settled(device)
        wanted = range(len(self.configs)) if index is None else (index,)
        jobs = []
        for i in wanted:
            args, _ = self._arguments((device, True, None), i)
            key = (self.digest, repr(args), repr(self.configs[i].options()))
            # (the default's failure is raised again by prepare(), where the program is built)
            jobs.append((key, compile_job(self, i, args, required=i == 0)))
        return jobs

    def run(self, arrays: list, outs: list | None = None) -> list:
        """Compute the kernel's outputs from its inputs (CuPy arrays; a CPU scalar is copied over),
        into `outs` (C-contiguous arrays of the outputs' shapes and dtypes) where given; a None in
        `outs`, or no `outs`, means a new array. Queued on CuPy's current stream.

        Triton compiles a kernel for the arguments' properties: each address and integer divisible
        by 16 or not, an integer equal to 1 made a constant. Sizes and output strides are fixed per
        kernel; so are input strides when inputs are contiguous. The call's addresses choose
        between two compiled variants (all 16-byte aligned, or compiled for any alignment); other
        input strides, a variant each."""
        ndarray = cupy.ndarray
        pointers = []
        strides_key, keep = None, None
        for array in arrays:
            if type(array) is not ndarray or not array.flags.c_contiguous:
                pointers, strides, keep = self._strided_inputs(arrays)
                strides_key = tuple(map(tuple, strides))
                break
            pointers.append(array.data.ptr)
        if outs is None:
            outs = [cupy.empty(shape, dtype) for shape, dtype in zip(self.out_shapes, self.out_dtypes)]
        elif any(o is None for o in outs):
            outs = [cupy.empty(shape, dtype) if o is None else o
                    for o, shape, dtype in zip(outs, self.out_shapes, self.out_dtypes)]
        pointers += [o.data.ptr for o in outs]
        every = 0
        for p in pointers:
            every |= p
        key = (cupy.cuda.runtime.getDevice(), not every & 15, strides_key)
        launch, scratch_bytes, runtime = self._launches.get(key) or self._first_launch(key, pointers)
        args = self.arguments.pick(pointers + runtime)
        stream = cupy.cuda.get_current_stream().ptr
        if scratch_bytes:
            scratch = cupy.empty(scratch_bytes, np.uint8)
            launch(stream, args, scratch.data.ptr)
        else:
            launch(stream, args)
        # (copies in `keep` and the scratch buffer go back to CuPy's pool when this returns: the pool
        # hands a block out again only to work queued after this launch on the same stream)
        return outs

    def _strided_inputs(self, arrays: list) -> tuple[list[int], list[list[int]], list]:
        """Addresses and strides of inputs of any layout, with the copies made where one can't be
        read as it is (kept until the launch is queued)."""
        pointers, strides, keep = [], [], []
        for k, array in enumerate(arrays):
            if type(array) is not cupy.ndarray:  # a CPU scalar joins a GPU kernel, as in PyTorch
                array = device_array(np.asarray(array), self.in_dtypes[k])
            found = view_strides(array.shape, array.strides, array.itemsize, self.dim_groups, self.kernel_ndim)
            if found is None or found and not self.broadcast[k][-1] and found[-1] != 1:
                array = cupy.ascontiguousarray(array)
                found = self.contiguous[k]
            keep.append(array)
            pointers.append(array.data.ptr)
            strides.append(found)
        return pointers, strides, keep

    def _grid(self, index: int) -> tuple[int, int, int]:
        grid = tuple(self.rendered.launch_grid(self.loop_shape, self.configs[index]))
        return grid + (1,) * (3 - len(grid))

    def _compile(self, key: tuple, index: int) -> tuple:
        """Compile configuration `index` for `key` (device, addresses aligned, input strides or None
        when contiguous) on its device (Triton's own caches answer a repeat) and prepare its launch:
        (launch, scratch bytes, the arguments after the pointers)."""
        args, runtime = self._arguments(key, index)
        launch, scratch = triton_driver.compile_launch(self.function, args, self._grid(index),
                                                       **self.configs[index].options())
        return launch, scratch, runtime

    def _arguments(self, key: tuple, index: int) -> tuple[tuple, list]:
        """The arguments configuration `index` compiles for with `key`'s specialization, and those
        after the pointers (sizes, strides, constants)."""
        _, aligned, strides = key
        config = self.configs[index]
        runtime = self.rendered.runtime_args(self.loop_shape, self.contiguous if strides is None else strides)
        runtime += [config.constexprs[name] for name in self.rendered.constexprs]
        address = 16 if aligned else 8  # Triton reads only an address's divisibility while compiling
        pointers = [Pointer(address, element) for element in self.pointer_types]
        return self.arguments.pick(pointers + runtime), runtime

    def _launch_args(self, pointers: list[int], runtime: list, index: int) -> tuple[tuple, object]:
        """A launch's arguments in configuration `index` (`runtime`: its arguments after the
        pointers), and what must live until the launch is queued."""
        return self.arguments.pick(pointers + runtime), None

    # --- choosing a configuration ---------------------------------------------------------------

    def _first_launch(self, key: tuple, pointers: list[int]) -> tuple:
        """The launch of `key`'s variant in the configuration of its device, chosen now where none
        is yet: settled without timing where it can be, else timed on this call's arguments
        (`pointers`: its inputs' and outputs' addresses). While a CUDA graph is being captured
        nothing is timed (the timed launches would be recorded, not run): the default runs, and the
        choice waits for a launch outside the capture."""
        device = key[0]
        index, entry = self._chosen.get(device), None
        if index is None:
            with self._tune_lock:
                index = self._chosen.get(device)
                if index is None:
                    index = self._settled(device)
                    if index is None:
                        if graphs.capturing():
                            return self._compile(key, 0)
                        index, entry = self._tune(key, pointers)
                    self._chosen[device] = index
        entry = self._launches[key] = entry or self._compile(key, index)
        return entry

    def _settled(self, device: int) -> int | None:
        """The configuration to run on `device` where no timing is needed (one offered, tuning off
        with JITORCH_AUTOTUNE=0, or a choice made before in this process or recorded on disk);
        None where the configurations must be timed."""
        if len(self.configs) == 1 or os.environ.get("JITORCH_AUTOTUNE", "1") == "0":
            return 0
        path, key = self._record(device)
        config = _choices.get(path)
        if config is None:
            config = _read_choice(path, key)
            if config is not None:
                _choices[path] = config
                logs.log("perf", f"{self.name}: {_format(config)}, chosen before ({path})")
        offered = [_as_json(c) for c in self.configs]
        # (a choice among configurations the renderer no longer offers is timed again)
        return offered.index(config) if config in offered else None

    def _record(self, device: int) -> tuple[str, dict]:
        """Where the choice for `device` is recorded, and what it was chosen for."""
        name, capability = gpu_identity(device)
        key = {"source": self.digest, "loop_shape": list(self.loop_shape), "gpu": name, "capability": capability,
               "triton": triton_driver.triton.__version__, "search": self.search}
        return record_path("autotune", key), key

    def _tune(self, key: tuple, pointers: list[int]) -> tuple[int, tuple]:
        """Compile each configuration for `key` and time it on the call's arguments (`time_launches`):
        the fastest (its index and compiled launch), remembered in this process and written to disk.
        The timed launches write the call's outputs (the call's own launch follows and writes them
        again), except where an output is written over an input (a parameter updated in place):
        launched over and over there it would apply the update each time, so the timing writes
        such outputs into spare arrays instead."""
        started = time.perf_counter()
        stream = cupy.cuda.get_current_stream().ptr
        n_in = len(pointers) - len(self.out_shapes)
        read = set(pointers[:n_in])
        if any(p in read for p in pointers[n_in:]):
            spare = [cupy.empty(shape, dtype) for shape, dtype in zip(self.out_shapes, self.out_dtypes)]
            pointers = pointers[:n_in] + [o.data.ptr for o in spare]
        times, entries, compile_seconds = {}, {}, 0.0
        for index, config in enumerate(self.configs):
            compile_started = time.perf_counter()
            try:
                launch, scratch_bytes, runtime = entries[index] = self._compile(key, index)
            except Exception as err:  # (the default compiled in prepare(): one that won't can't win)
                if index == 0:
                    raise
                logs.log("perf", f"{self.name}: {_format(config)} does not compile ({type(err).__name__}: {err})")
                continue
            compile_seconds += time.perf_counter() - compile_started
            args, _keep = self._launch_args(pointers, runtime, index)
            scratch = cupy.empty(scratch_bytes, np.uint8) if scratch_bytes else None
            if scratch is None:
                times[index] = time_launches(lambda launch=launch, args=args: launch(stream, args))
            else:
                times[index] = time_launches(lambda launch=launch, args=args, at=scratch.data.ptr:
                                             launch(stream, args, at))
            if index == 0 and times[0] < TUNE_MIN_MS and self.search != "wide":
                break  # (too short for another configuration to be worth its compile; max-autotune tries them)
        best = min(times, key=times.get)
        path, record = self._record(key[0])
        _choices[path] = _as_json(self.configs[best])
        tried = [{**_as_json(self.configs[i]), "ms": ms} for i, ms in times.items()]
        written = write_record(path, {"kernel": self.name, "key": record, "config": _as_json(self.configs[best]),
                                      "tried": tried})
        if logs.enabled("perf"):
            each = ", ".join(f"{_format(self.configs[i])} {ms * 1e3:.1f} us" for i, ms in times.items())
            logs.log("perf", f"{self.name}: tuned in {(time.perf_counter() - started) * 1e3:.0f} ms (compiling "
                             f"{compile_seconds * 1e3:.0f} ms): {each}; fastest {_format(self.configs[best])}"
                             + ("" if written else f" (not recorded: {path} can't be written)"))
        return best, entries[best]


# ---------------------------------------------------------------------------------------------
# a group of kernels as one launch


class GroupedTritonKernel(TritonKernel):
    """A `KernelGroup` rendered by `jitorch.codegen.triton.render_group` (a `GroupSource`): one launch
    computing every member, `run(inputs, outs)` over the members' inputs and outputs in the group's
    order. Its one runtime argument is a table of the operands' addresses, the members' sizes and
    first programs, copied to the device on the current stream where it is not one of the last few
    the kernel made (a training step's parameters and moments stay put; its gradients come back to
    a few addresses). While a CUDA graph is captured the table is copied from pinned host memory
    that the kernel keeps: the graph's copy reads it on every replay (a captured graph's addresses
    never change).
    Configurations are chosen as for any kernel, over the members' total size."""

    def __init__(self, group, source) -> None:
        set_up(self, group, source, source.sizes)
        self.pointer_types = ["i64"]
        self._pinned: list = []  # host tables that captured graphs copy from on each replay
        self._tables: dict[tuple, object] = {}  # (configuration, addresses) -> its table on the device

    def _arguments(self, key: tuple, index: int) -> tuple[tuple, list]:
        runtime = [self.configs[index].constexprs["BLOCK"]]
        return (Pointer(16, "i64"), *runtime), runtime

    def _launch_args(self, pointers: list[int], runtime: list, index: int) -> tuple[tuple, object]:
        capturing = graphs.capturing()
        key = (index, *pointers)
        table = None if capturing else self._tables.get(key)
        if table is None:
            table = self._upload(np.array(self.rendered.table(pointers, self.configs[index]), np.int64), capturing)
            if not capturing:  # (one made while capturing is the graph's: never handed to a later launch)
                self._tables[key] = table
                if len(self._tables) > _TABLES_KEPT:
                    del self._tables[next(iter(self._tables))]
        return (table.data.ptr, *runtime), table

    def _upload(self, table: np.ndarray, capturing: bool):
        """`table` on the device, copied on the current stream from pinned host memory: no wait for
        the device (a copy from pageable memory goes through the driver's staging buffers, which
        wait for the device once they are all in use). The pinned buffer lives until the copy has
        run, or, while capturing, as long as the kernel: the graph copies from it on every replay.
        (The runtime's own call: CuPy's copy_from_host_async refuses any copy while capturing.)"""
        pinned = cupy.cuda.alloc_pinned_memory(table.nbytes)
        np.frombuffer(pinned, np.int64, table.size)[:] = table
        on_device = cupy.empty(table.shape, np.int64)
        stream = cupy.cuda.get_current_stream()
        cupy.cuda.runtime.memcpyAsync(on_device.data.ptr, pinned.ptr, table.nbytes,
                                      cupy.cuda.runtime.memcpyHostToDevice, stream.ptr)
        if capturing:
            self._pinned.append(pinned)
        else:
            while _uploading and _uploading[0][0].done:
                _uploading.popleft()
            _uploading.append((stream.record(), pinned))
        return on_device

    def run(self, arrays: list, outs: list | None = None) -> list:
        """The members' outputs from their inputs (CuPy arrays; a CPU scalar is copied over), into
        `outs` where given (None: new arrays). An operand that is not a C-contiguous array at a
        16-byte address (the kernel loads 16 bytes at a time) goes through a copy."""
        ndarray = cupy.ndarray
        keep, pointers = [], []
        for k, array in enumerate(arrays):
            if type(array) is not ndarray:
                array = device_array(np.asarray(array), self.in_dtypes[k])
            if not array.flags.c_contiguous or array.data.ptr & 15:
                array = array.copy()  # (C-contiguous, at an address of CuPy's pool)
            keep.append(array)
            pointers.append(array.data.ptr)
        outs = list(outs) if outs is not None else [None] * len(self.out_shapes)
        given = list(outs)
        for j, (out, shape, dtype) in enumerate(zip(outs, self.out_shapes, self.out_dtypes)):
            if out is None or out.data.ptr & 15:
                outs[j] = cupy.empty(shape, dtype)
        pointers += [o.data.ptr for o in outs]
        key = (cupy.cuda.runtime.getDevice(), True, None)
        launch, scratch_bytes, runtime = self._launches.get(key) or self._first_launch(key, pointers)
        args, table = self._launch_args(pointers, runtime, self._chosen.get(key[0], 0))
        stream = cupy.cuda.get_current_stream().ptr
        if scratch_bytes:
            launch(stream, args, cupy.empty(scratch_bytes, np.uint8).data.ptr)
        else:
            launch(stream, args)
        for j, out in enumerate(given):
            if out is not None and out is not outs[j]:  # (a given output at an odd address)
                out[...] = outs[j]
                outs[j] = out
        return outs


_TABLES_KEPT = 4  # device tables kept per grouped kernel: a training step's addresses change little
_uploading: collections.deque = collections.deque()  # (event, pinned buffer) of copies maybe not run yet


# ---------------------------------------------------------------------------------------------
# compiling many kernels at once


def compile_threads() -> int:
    """How many kernels compile side by side: $JITORCH_COMPILE_THREADS, else the CPUs this process
    may run on."""
    found = os.environ.get("JITORCH_COMPILE_THREADS")
    if found:
        return max(1, int(found))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CompileJob(NamedTuple):
    """One configuration of a kernel to compile into Triton's caches, in a form another process
    can take: the compiled form of its source (`compiled_form`), its arguments as a launch passes
    them, its grid and options. `required`: a failure is the kernel's (else that configuration is
    left out of the timing, and a log line says so)."""

    text: str
    name: str
    args: tuple
    grid: tuple[int, int, int]
    options: dict
    label: str
    required: bool

    def __call__(self) -> str | None:
        """Compile; the error's text where it fails and is not `required` (else it raises)."""
        try:
            triton_driver.compile_only(load_kernel_function(self.text, self.name), list(self.args), self.grid,
                                       **self.options)
        except Exception as err:
            if self.required:
                raise
            return f"{type(err).__name__}: {err}"
        return None


def compile_job(kernel, index: int, args: tuple, required: bool = False) -> CompileJob:
    """The job compiling configuration `index` of `kernel` (set up by `set_up`) for `args`."""
    config = kernel.configs[index]
    return CompileJob(kernel.compiled_text, kernel.function_name, tuple(args), kernel._grid(index),
                      config.options(), f"{kernel.name}: {_format(config)}", required)


PROCESS_MIN_JOBS = 24  # a batch this large compiles in processes (`compile_worker`); a smaller one on threads


def _compile_in_threads(jobs: list[CompileJob], threads: int) -> list[str | None]:
    device = cupy.cuda.runtime.getDevice()

    def on_device(job: CompileJob) -> str | None:
        with cupy.cuda.Device(device):  # (the current device is the thread's own)
            return job()

    with ThreadPoolExecutor(threads, thread_name_prefix="jitorch-compile") as pool:
        return list(pool.map(on_device, jobs))


def prepare_kernels(kernels: list) -> None:
    """`prepare` each kernel (a program's, as it is built) on the current device, their compiles
    first, side by side (`compile_threads()`; in processes for a large batch): every configuration
    a kernel's first launch will time, each distinct one once. A transformer's training step has a
    hundred kernels and some four configurations for each large one; one after another they took
    most of a first call. Then each kernel's `prepare` finds its compiled code in Triton's caches."""
    unique: dict[tuple, CompileJob] = {}
    for kernel in kernels:
        for key, job in kernel.compile_jobs():
            unique.setdefault(key, job)
    jobs = list(unique.values())
    workers = min(compile_threads(), len(jobs))
    if workers > 1:
        started = time.perf_counter()
        where = f"{workers} threads"
        outcomes = None
        if len(jobs) >= PROCESS_MIN_JOBS:
            capability = triton_driver.activate().get_device_capability()
            try:
                outcomes = compile_worker.compile_in_processes(jobs, workers, capability)
                where = f"{workers} processes"
            except Exception as err:  # (a process that could not start or died: the threads compile)
                logs.log("perf", f"compile processes failed ({type(err).__name__}: {err}); compiling on threads")
        if outcomes is None:
            outcomes = _compile_in_threads(jobs, workers)
        for job, outcome in zip(jobs, outcomes):
            if outcome is not None:
                logs.log("perf", f"{job.label} does not compile ({outcome})")
        logs.log("perf", f"{len(jobs)} kernel configurations compiled in "
                         f"{(time.perf_counter() - started) * 1e3:.0f} ms on {where}")
    for kernel in kernels:
        kernel.prepare()


# ---------------------------------------------------------------------------------------------
# timing, and the choices made


_choices: dict[str, dict] = {}  # a choice's file -> its configuration (`_as_json`), chosen or read in this process
TUNE_MIN_MS = 0.05  # a default faster than this is kept untried against the others
_gpus: dict[int, tuple[str, str]] = {}


def gpu_identity(device: int) -> tuple[str, str]:
    """(name, compute capability) of GPU `device`: ("NVIDIA H200", "9.0")."""
    found = _gpus.get(device)
    if found is None:
        props = cupy.cuda.runtime.getDeviceProperties(device)
        name = props["name"]
        found = _gpus[device] = (name.decode() if isinstance(name, bytes) else str(name),
                                 f"{props['major']}.{props['minor']}")
    return found


# a kernel that keeps the GPU busy for a while (one thread spinning on the GPU's nanosecond clock),
# queued before the timed launches: the host then queues them faster than the GPU runs them, so the
# events time kernels back to back, not the host's launch cost (which a kernel of a few microseconds
# would otherwise measure)
HOLD_SOURCE = """
@triton.jit
def jitorch_hold(nanoseconds):
    start = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    now = start
    while now - start < nanoseconds:
        now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
"""
_HOLD_NS = 1_000_000  # longer than the host takes to queue one configuration's launches and events
_holds: dict[int, Callable] = {}  # device -> the hold kernel's prepared launch


def _hold() -> Callable:
    device = cupy.cuda.runtime.getDevice()
    found = _holds.get(device)
    if found is None:
        triton_driver.activate()
        compiled = load_kernel_function(HOLD_SOURCE, "jitorch_hold").warmup(
            _HOLD_NS, grid=(1, 1, 1), num_warps=1, enable_fp_fusion=False)  # (set: Triton 3.9 warns where unset)
        found = _holds[device] = triton_driver.launch_function(compiled, (1, 1, 1))
    return found


def time_launches(launch_once: Callable[[], None], warmup: int = 2, repeat: int = 5) -> float:
    """Milliseconds one `launch_once()` takes on the GPU: the median of `repeat` launches timed with
    CUDA events on CuPy's current stream, after `warmup` untimed ones, all queued behind a kernel
    that holds the GPU for a millisecond."""
    hold = _hold()
    stream = cupy.cuda.get_current_stream()
    events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(repeat)]
    hold(stream.ptr, (_HOLD_NS,))
    for _ in range(warmup):
        launch_once()
    for start, end in events:
        start.record(stream)
        launch_once()
        end.record(stream)
    events[-1][1].synchronize()
    return statistics.median(cupy.cuda.get_elapsed_time(start, end) for start, end in events)


def _as_json(config: Config) -> dict:
    """A renderer's `Config` as its choice is recorded: {"constexprs": {...}, "num_warps": n}."""
    return {"constexprs": dict(config.constexprs), "num_warps": config.num_warps}


def _format(config: Config | dict) -> str:
    """`BLOCK=1024 num_warps=4` for a `Config` or its record, for logs (ROW_IN_REGISTERS, the same in
    every configuration offered, left out)."""
    record = config if isinstance(config, dict) else _as_json(config)
    return " ".join([*(f"{k}={v}" for k, v in record["constexprs"].items() if k != "ROW_IN_REGISTERS"),
                     f"num_warps={record['num_warps']}"])


def record_path(prefix: str, key: dict) -> str:
    """Where a choice made for `key` is recorded: `cache_dir()`/<prefix>_<digest of key>.json."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(cache_dir(), f"{prefix}_{digest}.json")


def read_record(path: str, key: dict) -> dict | None:
    """The choice recorded in `path` for `key` (its "config"); None where the file is missing,
    unreadable, damaged or made for another key (it is written again once the kernel is timed)."""
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
        return found["config"] if found["key"] == key else None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def write_record(path: str, record: dict) -> bool:
    """Write a choice's record (what it was chosen for under "key", the choice under "config", and
    what was timed) atomically; False where it can't be written."""
    return write_atomically(path, json.dumps(record, indent=1) + "\n")


def _read_choice(path: str, key: dict) -> dict | None:
    """The configuration recorded in `path` for `key` (`_as_json`'s form), or None."""
    config = read_record(path, key)
    try:
        if not isinstance(config["constexprs"], dict):
            return None
        return {"constexprs": config["constexprs"], "num_warps": config["num_warps"]}
    except (KeyError, TypeError):
        return None
