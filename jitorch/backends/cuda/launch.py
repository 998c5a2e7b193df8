"""The CUDA backend's launcher: runs a rendered Triton kernel on CuPy arrays.

`TritonKernel(desc, source)` wraps one kernel that `jitorch.codegen.triton.render(desc)` rendered
(a `TritonSource`: the function's text and name, its parameters with what each one is, its
compile-time constants, configurations and launch grid). The text becomes a module of its own on
disk (Triton's JIT reads a kernel's source from its file): `cache_dir()`, named by the digest of the
text and the Triton version, written atomically; a file whose text is not what its name promises
is written again. The kernel is compiled (`JITFunction.warmup`) for the current device the first
time it runs there, once per specialization Triton makes of the arguments (see `TritonKernel.run`),
and launched through the compiled kernel's C launcher with its argument list prepared once
(`triton_driver.launch_function`), on CuPy's current stream: a few microseconds of Python per
launch, against about 15 us for `kernel[grid](...)`.

Inputs are viewed in the kernel's collapsed loop shape (`KernelDesc`): dims merged as the loop's
are, without a copy where the layout allows, else a contiguous copy first; the innermost stride is
1 or 0 (a strided innermost dim is copied first, as on the CPU). Outputs are C-contiguous arrays
the caller gives (a compiled program's memory plan) or new ones.
"""

from __future__ import annotations

import hashlib
import operator
import os
import sys
import tempfile
import threading
import types

import numpy as np

from ...ir.fusion import KernelDesc
from . import triton_driver
from .triton_driver import Pointer

cupy = None  # imported by the first TritonKernel: this module imports on a machine without a GPU
device_array = None  # scalars.device_array, imported with it

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


_functions: dict[str, object] = {}  # "digest:name" -> that JITFunction, loaded in this process
_load_lock = threading.Lock()


def load_kernel_function(text: str, name: str):
    """The `@triton.jit` function `name` defined by the module source `text` (imports of triton
    and triton.language are added where the text has none), loaded from its file in `cache_dir()`
    (written first where it is missing or damaged)."""
    if "import triton" not in text:
        text = _HEADER + text
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


# ---------------------------------------------------------------------------------------------
# the kernel


class TritonKernel:
    """A rendered Triton kernel ready to run on CuPy arrays: `run(inputs, outs=None) -> outputs`.

    `source` is the renderer's `TritonSource`: `text` and `name` (the function), `params` (what each
    argument before the constants is), `constexprs` (the constants' names), `configs(loop_shape)`,
    `launch_grid(loop_shape, config)` and `runtime_args(loop_shape, input_strides)`. The kernel runs
    in the first configuration offered (the renderer's default; none is timed against the others)."""

    def __init__(self, desc: KernelDesc, source) -> None:
        global cupy, device_array
        if cupy is None:
            import cupy

            from .scalars import device_array
        kernel = desc.kernel
        self.kernel = kernel
        self.name = kernel.name()
        self.source = source.text
        self.rendered = source
        self.function = load_kernel_function(source.text, source.name)
        self.loop_shape = loop_shape = desc.loop_shape
        config = source.configs(loop_shape)[0]
        self.options = config.options()
        grid = tuple(source.launch_grid(loop_shape, config))
        self.grid = grid + (1,) * (3 - len(grid))
        self.dim_groups, self.kernel_ndim = desc.dim_groups, len(kernel.shape)
        self.broadcast = desc.broadcast
        self.in_dtypes = [v.dtype.np for v in kernel.inputs]
        self.out_dtypes = [v.dtype.np for v in kernel.outputs]
        self.out_shapes = [v.shape for v in kernel.outputs]
        # each input's strides when it is C-contiguous (the usual case: nothing to compute per call)
        self.contiguous = [view_strides(v.shape, contiguous_strides(v.shape, dtype.itemsize), dtype.itemsize,
                                        self.dim_groups, self.kernel_ndim)
                           for v, dtype in zip(kernel.inputs, self.in_dtypes)]
        self.constexprs = [config.constexprs[name] for name in source.constexprs]
        self.static = source.runtime_args(loop_shape, self.contiguous) + self.constexprs
        self.arguments = Arguments(source.params, len(kernel.inputs), len(kernel.outputs), len(self.constexprs))
        # the element type of each pointer as the renderer declares it ("*i8" for bool): in and out
        element = {(p.kind, p.operand): p.type.removeprefix("*") for p in source.params}
        self.pointer_types = [element[("input", k)] for k in range(len(kernel.inputs))]
        self.pointer_types += [element[("output", j)] for j in range(len(kernel.outputs))]
        self._launches: dict[tuple, tuple] = {}  # (device, aligned, input strides) -> (launch, scratch bytes)

    def prepare(self) -> None:
        """Compile for the current device and the usual arguments (contiguous, 16-byte aligned), so
        that a kernel that fails to compile fails while its program is built."""
        self._launch_for((cupy.cuda.runtime.getDevice(), True, None))

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
        runtime, strides_key, keep = self.static, None, None
        for array in arrays:
            if type(array) is not ndarray or not array.flags.c_contiguous:
                pointers, strides, keep = self._strided_inputs(arrays)
                strides_key = tuple(map(tuple, strides))
                runtime = self._runtime(strides_key)
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
        launch, scratch_bytes = self._launches.get(key) or self._launch_for(key)
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

    def _runtime(self, strides: tuple | None) -> list:
        """The values of the parameters after the pointers, for inputs of these strides (None: contiguous)."""
        if strides is None:
            return self.static
        return self.rendered.runtime_args(self.loop_shape, strides) + self.constexprs

    def _launch_for(self, key: tuple) -> tuple:
        """Compile the variant of `key` (device, addresses aligned, input strides or None when
        contiguous) on its device and prepare its launch."""
        device, aligned, strides = key
        triton_driver.activate()
        address = 16 if aligned else 8  # Triton reads only an address's divisibility while compiling
        pointers = [Pointer(address, element) for element in self.pointer_types]
        args = self.arguments.pick(pointers + self._runtime(strides))
        compiled = self.function.warmup(*args, grid=self.grid, **self.options)
        found = self._launches[key] = (triton_driver.launch_function(compiled, self.grid),
                                       triton_driver.scratch_bytes(compiled, self.grid))
        return found
