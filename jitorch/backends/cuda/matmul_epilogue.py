"""A matrix product and the pointwise kernel that alone reads it (`jitorch.ir.fusion.MatmulEpilogue`)
on the GPU: either cuBLAS and then the epilogue's own Triton kernel, or one Triton kernel that
computes the product tile by tile and applies the epilogue to each tile in registers
(`jitorch.codegen.triton.render_matmul`), never writing the product.

Which one runs is measured, as Inductor's max-autotune measures its templates, but on by default
since the choice is kept: the first launch on a device times cuBLAS plus the epilogue and each
configuration the template offers (`time_launches`: CUDA events, the median of 5) on the call's own
arguments, and keeps the fastest, in this process and in `launch.cache_dir()` as
`matmul_<digest>.json`, named by what it was chosen for (the template's source, M, N, K, the matmul
precision, the GPU and Triton). A later process reads the file and times nothing; a damaged or
foreign file is ignored and written again. While a CUDA graph is captured nothing is timed: cuBLAS
(through nvmath) and the epilogue run until a launch outside the capture chooses.
`JITORCH_AUTOTUNE=0` keeps cuBLAS and the epilogue untimed; `JITORCH_LOGS=perf` logs the times.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

from ... import logs
from .. import get_float32_matmul_precision
from . import graphs, launch, triton_driver
from .launch import TritonKernel, gpu_identity, time_launches
from .triton_driver import Pointer

CUBLAS = "cuBLAS and the epilogue kernel"


class MatmulEpilogueKernel:
    """`run(inputs, outs=None) -> outputs` of a `MatmulEpilogue`: inputs are A, B and the epilogue's
    other inputs in the item's order; outputs the epilogue's. `epilogue` is the epilogue kernel's
    own `TritonKernel` (the product among its inputs); `matmul(a, b)` the backend's product;
    `precision` the float32 matmul precision the template was rendered for (at another, cuBLAS
    and the epilogue run)."""

    def __init__(self, item, source, epilogue: TritonKernel, matmul: Callable, precision: str) -> None:
        launch.set_up(self, item, source, item.rows_and_columns)  # (the rows: leading dims flattened)
        self.shape = self.loop_shape
        self.depth = item.matmul.inputs[0].shape[-1]
        self.epilogue, self.matmul, self.float32_precision = epilogue, matmul, precision
        self.product_shape = item.product.shape
        product = item.product.id
        self.product_at = next(k for k, v in enumerate(item.kernel.inputs) if v.id == product)
        self.pointer_types = [p.type.removeprefix("*") for p in source.params if p.kind in ("input", "output")]
        self._choice: dict[int, int | None] = {}  # device -> a template configuration's index, or None: cuBLAS

    # --- compiling ------------------------------------------------------------------------------
    def compile_jobs(self) -> list[tuple[tuple, launch.CompileJob]]:
        """The epilogue kernel's compiles, and every template configuration (all are timed), for
        the layout its operands will most likely have (`_likely_strides`)."""
        jobs = self.epilogue.compile_jobs()
        if os.environ.get("JITORCH_AUTOTUNE", "1") != "0":
            for index in range(len(self.configs)):
                args = self._arguments(self._likely_strides(), index, [Pointer(16, t) for t in self.pointer_types])
                # (a template configuration that does not compile is left out of the timing)
                jobs.append(((self.digest, repr(args), repr(self.configs[index].options())),
                             launch.compile_job(self, index, args)))
        return jobs

    def prepare(self) -> None:
        self.epilogue.prepare()

    def _likely_strides(self) -> list[tuple[int, int]]:
        """Each operand's element strides as the program will most likely pass it: a factor made by
        swapping the last two dims of another value (`F.linear`'s `weight.t()`, a gradient's
        `x.t()`) is that value's transposed view; the rest are C-contiguous. Triton specializes on
        strides (a stride of 1 is a constant to it): compiled for another layout, the template would
        compile again, one configuration after another, at its first launch."""
        found = []
        for k, v in enumerate(self.kernel.inputs):
            shape = _shape_2d(v.shape)
            maker = v.node
            if k < 2 and len(v.shape) == 2 and maker is not None and maker.op == "permute" \
                    and tuple(maker.params["dims"]) == (1, 0):
                found.append(tuple(0 if n == 1 else s for n, s in zip(shape, (1, shape[0]))))
            else:
                found.append(_strides_2d(shape, None))
        return found

    def _arguments(self, strides: list[tuple[int, int]], index: int, pointers: list) -> tuple:
        m, n = self.shape
        config = self.configs[index]
        runtime = self.rendered.matmul_args(m, n, self.depth, strides)
        return (*pointers, *runtime, *(config.constexprs[c] for c in self.rendered.constexprs))

    def _grid(self, index: int) -> tuple[int, int, int]:
        return (*self.rendered.launch_grid(self.shape, self.configs[index]), 1, 1)

    # --- running --------------------------------------------------------------------------------
    def run(self, arrays: list, outs: list | None = None) -> list:
        if get_float32_matmul_precision() != self.float32_precision:
            return self._separately(arrays, outs)  # (the template multiplies at the precision it was made for)
        cupy = launch.cupy
        device = cupy.cuda.runtime.getDevice()
        if device not in self._choice:
            with self._tune_lock:
                if device not in self._choice:
                    chosen = self._settled(device)
                    if chosen is False:
                        if graphs.capturing():
                            return self._separately(arrays, outs)
                        chosen = self._tune(device, arrays)
                    self._choice[device] = chosen
        index = self._choice[device]
        return self._separately(arrays, outs) if index is None else self._template(arrays, outs, index)

    def _separately(self, arrays: list, outs: list | None) -> list:
        product = self.matmul(arrays[0], arrays[1]).reshape(self.product_shape)  # (F.linear's leading dims)
        others = arrays[2:]
        inputs = [*others[: self.product_at], product, *others[self.product_at:]]
        return self.epilogue.run(inputs, outs)

    def _template(self, arrays: list, outs: list | None, index: int) -> list:
        cupy = launch.cupy
        keep = [(a if type(a) is cupy.ndarray else launch.device_array(np.asarray(a), dt)).reshape(_shape_2d(a.shape))
                for a, dt in zip(arrays, self.in_dtypes)]  # (a view where the layout allows, else a copy)
        outs = [cupy.empty(shape, dt) if o is None else o
                for o, shape, dt in zip(outs or [None] * len(self.out_shapes), self.out_shapes, self.out_dtypes)]
        pointers = [a.data.ptr for a in (*keep, *outs)]  # (outputs: C-contiguous, row-major as the product)
        strides = [_strides_2d(a.shape, a.strides, a.itemsize) for a in keep]
        aligned = not any(p & 15 for p in pointers)
        key = (cupy.cuda.runtime.getDevice(), index, tuple(strides), aligned)
        found = self._launches.get(key)
        if found is None:
            address = 16 if aligned else 8
            args = self._arguments(strides, index, [Pointer(address, t) for t in self.pointer_types])
            found = self._launches[key] = triton_driver.compile_launch(self.function, args, self._grid(index),
                                                                       **self.configs[index].options())
        run, scratch_bytes = found
        args = self._arguments(strides, index, pointers)
        stream = cupy.cuda.get_current_stream().ptr
        if scratch_bytes:
            run(stream, args, cupy.empty(scratch_bytes, np.uint8).data.ptr)
        else:
            run(stream, args)
        return outs

    # --- choosing -------------------------------------------------------------------------------
    def _record(self, device: int) -> tuple[str, dict]:
        name, capability = gpu_identity(device)
        m, n = self.shape
        key = {"source": self.digest, "mnk": [m, n, self.depth], "precision": self.rendered.precision, "gpu": name,
               "capability": capability, "triton": triton_driver.triton.__version__}
        return launch.record_path("matmul", key), key

    def _settled(self, device: int) -> int | None | bool:
        """The choice where no timing is needed: cuBLAS with JITORCH_AUTOTUNE=0, or one recorded on
        disk for this key and still offered; False where it must be timed."""
        if os.environ.get("JITORCH_AUTOTUNE", "1") == "0":
            return None
        choice = launch.read_record(*self._record(device))
        if choice == CUBLAS:
            return None
        offered = [_as_json(c) for c in self.configs]
        return offered.index(choice) if choice in offered else False

    def _tune(self, device: int, arrays: list) -> int | None:
        cupy = launch.cupy
        spare = [cupy.empty(shape, dt) for shape, dt in zip(self.out_shapes, self.out_dtypes)]
        self._separately(arrays, spare)  # (the epilogue kernel's own first launch, which may time it, comes first)
        times = {None: time_launches(lambda: self._separately(arrays, spare))}
        for index in range(len(self.configs)):
            try:
                self._template(arrays, spare, index)  # (compiled, and loaded on the device, before the clock)
                times[index] = time_launches(lambda index=index: self._template(arrays, spare, index))
            except Exception as err:  # (a configuration that does not compile or launch can't win)
                logs.log("perf", f"{self.name}: {self.configs[index].constexprs} failed ({type(err).__name__}: {err})")
        best = min(times, key=times.get)
        path, key = self._record(device)
        choice = CUBLAS if best is None else _as_json(self.configs[best])
        tried = [{"choice": CUBLAS if i is None else _as_json(self.configs[i]), "ms": ms} for i, ms in times.items()]
        launch.write_record(path, {"kernel": self.name, "key": key, "config": choice, "tried": tried})
        logs.log("perf", f"{self.name}: " + ", ".join(f"{t['choice'] if i is None else t['choice']['constexprs']} "
                                                      f"{t['ms'] * 1e3:.1f} us" for i, t in zip(times, tried))
                 + f"; fastest {choice if best is None else choice['constexprs']}")
        return best


def _as_json(config) -> dict:
    return {"constexprs": dict(config.constexprs), "num_warps": config.num_warps, "num_stages": config.num_stages}


def _shape_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    """An operand's shape as a 2-d one: leading dims flattened into rows (a 1-d bias is one row; a
    0-d value one element)."""
    if not shape:
        return (1, 1)
    return (math.prod(shape[:-1]), shape[-1])


def _strides_2d(shape: tuple[int, int], strides: tuple[int, ...] | None, itemsize: int = 1) -> tuple[int, int]:
    """The element strides of a 2-d operand (0 along a dim of 1); C-contiguous where `strides` is None."""
    strides = (shape[1], 1) if strides is None else tuple(s // itemsize for s in strides)
    return tuple(0 if size == 1 else s for size, s in zip(shape, strides))
