"""A stand-in backend for the `cuda` device type that runs the Triton renderer's kernels in Triton's CPU
interpreter, so that compiled programs execute every kernel `jitorch.codegen.triton` emits on a
machine without a GPU.

`InterpreterBackend` keeps numpy buffers (copied on every transfer, as tests/test_backends.py's
stand-in does), the CPU's eager kernels, and fuses what the Triton renderer fuses (`can_fuse` is
`jitorch.codegen.triton.fusible`, every kernel is worth one, as on the GPU). `compile_kernels`
renders each kernel and returns an `InterpretedKernel`, which prepares arguments as the cuda launcher
(`jitorch.backends.cuda.launch.TritonKernel`) does, in its default configuration: inputs viewed in
the loop shape with strides in elements (`view_strides`), a contiguous copy where the layout can't be
viewed or the innermost stride is not 1, C-contiguous outputs; the numpy buffers go to the
interpreter as torch CPU tensors (`torch.from_numpy`, no copy; bool as int8, as the renderer's
`*i8` pointers read it).

The interpreter is chosen when a kernel is decorated (TRITON_INTERPRET=1 read by `@triton.jit`), and
Triton's own jitted helpers (`tl.rand`) are decorated when `triton.language` is first imported: only a
process that had TRITON_INTERPRET=1 before it imported Triton can use this backend (a kernel checks
that it is interpreted). Ahead-of-time compilation needs the opposite: `compile_for_sm90(pairs)`
compiles rendered sources for sm_90 in a process of its own (`python -m tests.triton_interpreter_backend`).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import tokenize

import numpy as np

from jitorch.backends import get_float32_matmul_precision
from jitorch.backends.cpu import CPUBackend
from jitorch.backends.cuda.launch import contiguous_strides, view_strides
from jitorch.codegen import triton as triton_codegen
from jitorch.ir.fusion import KernelDesc, KernelGroup, MatmulEpilogue


class InterpretedKernel:
    """One rendered kernel, run in Triton's interpreter on numpy arrays: `run(inputs, outs=None) -> outputs`."""

    def __init__(self, desc: KernelDesc, source: triton_codegen.TritonSource, backend: InterpreterBackend) -> None:
        kernel = desc.kernel
        self.kernel, self.name, self.backend = kernel, kernel.name(), backend
        self.source, self.rendered = source.text, source  # as TritonKernel: the text (logged), the TritonSource
        self.loop_shape = desc.loop_shape
        self.config = source.configs(desc.loop_shape)[0]  # the default (the cuda launcher may time others)
        self.grid = source.launch_grid(desc.loop_shape, self.config)
        self.dim_groups, self.kernel_ndim, self.broadcast = desc.dim_groups, len(kernel.shape), desc.broadcast
        self.in_dtypes = [v.dtype.np for v in kernel.inputs]
        self.out_dtypes = [v.dtype.np for v in kernel.outputs]
        self.out_shapes = [v.shape for v in kernel.outputs]
        self.contiguous = [view_strides(v.shape, contiguous_strides(v.shape, dt.itemsize), dt.itemsize,
                                        self.dim_groups, self.kernel_ndim)
                           for v, dt in zip(kernel.inputs, self.in_dtypes)]
        self.function = None

    def run(self, arrays: list, outs: list | None = None) -> list[np.ndarray]:
        """Compute the kernel's outputs into `outs` (C-contiguous arrays; None or a None in it: new ones)."""
        import torch

        inputs, strides = [], []
        for k, array in enumerate(arrays):
            array = np.asarray(array, dtype=self.in_dtypes[k])  # a 0-d CPU scalar, as the cuda launcher takes it
            found = view_strides(array.shape, array.strides, array.itemsize, self.dim_groups, self.kernel_ndim)
            reversed_dims = any(s < 0 for s in array.strides)  # torch.from_numpy takes no negative strides
            if found is None or (found and not self.broadcast[k][-1] and found[-1] != 1) or reversed_dims:
                array = np.ascontiguousarray(array)
                found = self.contiguous[k]
            inputs.append(array)
            strides.append(found)
        outs = [np.empty(shape, dt) if o is None else o
                for o, shape, dt in zip(outs or [None] * len(self.out_shapes), self.out_shapes, self.out_dtypes)]
        tensors = {"input": [_tensor(torch, a) for a in inputs], "output": [_tensor(torch, o) for o in outs]}
        runtime = iter(self.rendered.runtime_args(self.loop_shape, strides))
        args = {p.name: tensors[p.kind][p.operand] if p.kind in tensors else next(runtime)
                for p in self.rendered.params}
        self._function()[self.grid](**args, **self.config.constexprs, **self.config.options())
        self.backend.launches += 1
        self.backend.programs += int(np.prod(self.grid))
        return outs

    def _function(self):
        if self.function is None:
            from triton.runtime.interpreter import InterpretedFunction

            self.function = self.rendered.define()
            assert isinstance(self.function, InterpretedFunction), (
                "Triton was imported without TRITON_INTERPRET=1: the kernel would need a GPU")
        return self.function


class InterpretedGroup:
    """A `KernelGroup` as one interpreted launch, its table holding the numpy buffers' addresses
    (the interpreter reads memory at the addresses a kernel computes, as the GPU does)."""

    def __init__(self, group: KernelGroup, source: triton_codegen.GroupSource, backend: InterpreterBackend) -> None:
        self.kernel, self.name, self.backend = group, group.name(), backend
        self.source, self.rendered = source.text, source
        self.config = source.configs(())[0]
        self.grid = source.launch_grid((), self.config)
        self.in_dtypes = [v.dtype.np for v in group.inputs]
        self.outputs = [(v.shape, v.dtype.np) for v in group.outputs]
        self.function = None

    def run(self, arrays: list, outs: list | None = None) -> list[np.ndarray]:
        import torch

        inputs = [np.ascontiguousarray(np.asarray(a, dtype=dt)) for a, dt in zip(arrays, self.in_dtypes)]
        outs = [np.empty(shape, dt) if o is None else o
                for o, (shape, dt) in zip(outs or [None] * len(self.outputs), self.outputs)]
        table = np.array(self.rendered.table([a.ctypes.data for a in (*inputs, *outs)], self.config), np.int64)
        self._function()[self.grid](torch.from_numpy(table), **self.config.constexprs, **self.config.options())
        self.backend.launches += 1
        self.backend.programs += int(np.prod(self.grid))
        return outs

    _function = InterpretedKernel._function


class InterpretedMatmul:
    """A `MatmulEpilogue` as the Triton template, interpreted, in its default configuration (the
    cuda launcher may choose cuBLAS and the epilogue kernel instead, by timing)."""

    def __init__(self, item: MatmulEpilogue, source: triton_codegen.MatmulSource, backend: InterpreterBackend):
        self.kernel, self.name, self.backend = item, item.name(), backend
        self.source, self.rendered = source.text, source
        self.shape = item.rows_and_columns
        self.config = source.configs(self.shape)[0]
        self.grid = source.launch_grid(self.shape, self.config)
        self.in_dtypes = [v.dtype.np for v in item.inputs]
        self.outputs = [(v.shape, v.dtype.np) for v in item.outputs]
        self.function = None

    def run(self, arrays: list, outs: list | None = None) -> list[np.ndarray]:
        import torch

        inputs = [np.ascontiguousarray(np.asarray(a, dtype=dt)) for a, dt in zip(arrays, self.in_dtypes)]
        inputs = [a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1) for a in inputs]  # (as 2-d operands)
        outs = [np.empty(shape, dt) if o is None else o
                for o, (shape, dt) in zip(outs or [None] * len(self.outputs), self.outputs)]
        strides = [tuple(0 if n == 1 else s // a.itemsize for n, s in zip(a.shape, a.strides)) for a in inputs]
        m, n = self.shape
        args = self.rendered.matmul_args(m, n, inputs[0].shape[1], strides)
        self._function()[self.grid](*(_tensor(torch, a) for a in (*inputs, *outs)), *args, **self.config.constexprs,
                                    **self.config.options())
        self.backend.launches += 1
        self.backend.programs += int(np.prod(self.grid))
        return outs

    _function = InterpretedKernel._function


def _tensor(torch, array: np.ndarray):
    """A torch CPU tensor on the array's memory: bool as int8 (the renderer's `*i8`), ml_dtypes'
    bfloat16 by its bits."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array.view(np.int8) if array.dtype == np.bool_ else array)


class InterpreterBackend(CPUBackend):
    """The `cuda` device type on numpy buffers, with fused kernels rendered to Triton and interpreted.
    `launches` and `programs` count kernel launches and Triton programs run; `sources` holds every
    rendered kernel by its text, with the configuration it ran in."""

    device_type = "cuda"

    def __init__(self) -> None:
        self.launches = self.programs = 0
        self.sources: dict[str, tuple[triton_codegen.TritonSource, triton_codegen.Config]] = {}

    def runs_natively(self, op) -> bool:
        return False  # (as the GPU's backend: each kernel is a launch of its own)

    def from_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def can_fuse(self, node) -> bool:
        return triton_codegen.fusible(node)

    def worth_a_kernel(self, kernel) -> bool:
        return True  # as the cuda backend: every fusible node runs in a Triton kernel

    groups_kernels = True  # as the cuda backend
    fuses_column_sums = True
    fuses_matmul_epilogues = True

    def compile_kernels(self, descs: list) -> list:
        precision = get_float32_matmul_precision()
        kernels = [InterpretedGroup(d, triton_codegen.render_group(d), self) if isinstance(d, KernelGroup)
                   else InterpretedMatmul(d, triton_codegen.render_matmul(d, precision), self)
                   if isinstance(d, MatmulEpilogue)
                   else InterpretedKernel(d, triton_codegen.render(d), self) for d in descs]
        for k in kernels:
            self.sources.setdefault(k.source, (k.rendered, k.config))
        return kernels


@contextlib.contextmanager
def serving_cuda():
    """While the block runs, a new `InterpreterBackend` (yielded) serves the `cuda` device type."""
    import pytest

    from jitorch import backends, dispatch
    from jitorch.device import Device

    backend = InterpreterBackend()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(backends._BACKENDS, "cuda", backend)
        patch.setattr(Device, "_interned", dict(Device._interned))  # forget any earlier cuda device
        patch.setattr(dispatch, "_backends", {})  # and the backend dispatch found for it
        yield backend


@contextlib.contextmanager
def serving_cuda_reporting(path: str, report):
    """`serving_cuda()`, and when the block ends, `report(backend)` pickled to `path` (what an
    interpreter process's tests rendered, for the test that started it to compile for sm_90)."""
    with serving_cuda() as backend:
        yield backend
    with open(path, "wb") as f:
        pickle.dump(report(backend), f)


def run_interpreted_tests(test_file: str, select: str, report_variable: str, report_path: str) -> str:
    """Run the tests of `test_file` that `-k select` picks in a pytest process with the interpreter
    on (TRITON_INTERPRET=1) and `report_variable` naming `report_path`; its output (it must pass)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", report_variable: report_path}
    done = subprocess.run([sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", "-k", select,
                           "-rfEX", "--tb=short"], capture_output=True, text=True, env=env, cwd=_REPO, check=False)
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]
    return done.stdout


# ---------------------------------------------------------------------------------------------
# ahead-of-time compilation for sm_90, in a process without the interpreter


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def without_comments(text: str) -> str:
    """A kernel's code without its comments: kernels that differ only in the source lines they cite
    compile alike."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return tokenize.untokenize((t.type, t.string) for t in tokens if t.type != tokenize.COMMENT)


def compile_for_sm90(pairs: list[tuple[triton_codegen.TritonSource, triton_codegen.Config]]) -> list[str]:
    """The PTX of each (source, config), compiled for sm_90 in a new process with the interpreter off;
    an AssertionError with Triton's message for the first that fails."""
    return without_interpreter("tests.triton_interpreter_backend", pairs)


def without_interpreter(module: str, request, env: dict | None = None):
    """`python -m module` in a new process with the interpreter off (and `env` added), given the
    pickled `request` on stdin: what it pickles to stdout, or an AssertionError with its error."""
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **(env or {})}
    done = subprocess.run([sys.executable, "-m", module], input=pickle.dumps(request),
                          capture_output=True, env=env, cwd=_REPO, check=False)
    if done.returncode:
        raise AssertionError(done.stderr.decode(errors="replace")[-6000:])
    return pickle.loads(done.stdout)


def _compile_main() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pairs = pickle.load(sys.stdin.buffer)
    ptx = []
    for source, config in pairs:
        try:
            compiled = triton.compile(ASTSource(source.define(), source.signature(), constexprs=config.constexprs),
                                      target=GPUTarget("cuda", 90, 32), options=config.options())
        except Exception as err:
            raise SystemExit(f"{source.name} with {config} does not compile for sm_90: {err}\n{source.text}") from err
        ptx.append(compiled.asm["ptx"])
    sys.stdout.buffer.write(pickle.dumps(ptx))


if __name__ == "__main__":
    _compile_main()
