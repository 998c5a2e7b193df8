"""`jitorch.compile(fn, mode="reduce-overhead")`: a compiled program on a device whose backend
captures graphs (CUDA) is recorded once into a device graph and then replayed, so that a call costs
a few copies and one launch instead of one launch per kernel (what bounds a small training step).

A program's life in this mode (`GraphedProgram.run`):
1. warm-up: its first run is an ordinary one, which also compiles and caches every kernel;
2. capture: on its next run, the call's inputs are copied into buffers made for the graph (static
   inputs), and its plan, the write-backs into the parameters and optimizer state on its device, and
   the gathering of what goes back to the host, are recorded reading those buffers and the lifted
   tensors where they are (`Backend.capture`); the graph then runs once for this call;
3. replay: each later run copies the call's inputs into the static inputs, launches the graph, and
   copies out what leaves it: outputs, gradients, arguments written in place, CPU tensors written.

What may change between calls without a retrace reaches the graph as data, copied into its static
inputs before each launch: tensor arguments and gradients (device to device), CPU values (the
learning rate and other hyperparameters an optimizer keeps as 0-d CPU tensors, Adam's step count,
CPU scalar arguments) and the random generator's seed and counter for this call (one host-to-device
copy for all of them). A Python value the trace baked in is guarded: a change makes another program,
which captures its own graph. Lifted tensors are read where they were at capture: a lifted tensor
(or a written one) whose buffer was replaced since (`p.data = ...`) makes the program capture again;
so does a change of the float32 matmul precision, which the recorded products baked in.

Outputs, gradients and the values a compiled backward keeps are copied out of the graph's memory
after each replay, so a tensor a call returned keeps its value after the next call.

Not captured, with one `cudagraphs` log line saying why (`JITORCH_LOGS=cudagraphs`; `explain()`
says it too), and run as in mode="default" instead: a program on the CPU (as PyTorch does with CPU
code), a program whose eager kernels the backend refuses to capture (`Backend.capture_refusal`: a
kernel that reads device values on the host, ...), one whose capture failed, one that makes state of
its own, and one whose lifted tensors moved more than `MAX_CAPTURES` times.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import autograd as _ag
from .. import logs
from ..backends import CaptureError, get_float32_matmul_precision
from ..runtime.executor import PrimStep
from ..tensor import Tensor
from .program import Program

WARMUP_RUNS = 1  # ordinary runs of a program before it is captured (they compile every kernel it launches)
MAX_CAPTURES = 4  # captures of one program (its tensors moved in between) before it stops trying


class GraphedProgram:
    """A program under mode="reduce-overhead": its runs, its captured graph, or why it has none."""

    def __init__(self, program: Program, name: str) -> None:
        self.program = program
        self.name = name
        self.runs = self.replays = self.captures = 0
        self.captured: _Captured | None = None
        self.refused: str | None = None
        self.runs_as_default = _runs_as_default(program)
        if program.one_shot:  # it is traced again on the next call, which captures its own graph
            self.runs_as_default = f"it serves one call only: {program.one_shot}"
        if self.runs_as_default is None:
            why = _refusal(program)
            if why is not None:
                self._refuse(why)

    def run(self, leaves: list, rerun: Callable[[], object] | None = None):
        """One call: an ordinary run (warm-up, or a program that is not captured), a capture, or a replay."""
        program = self.program
        self.runs += 1
        if self.runs_as_default is not None or self.refused is not None or self.runs <= WARMUP_RUNS:
            return program.run(leaves, rerun=rerun)
        if self.captured is not None:
            moved = self.captured.moved()
            if moved is None:
                self.replays += 1
                return self.captured.replay(leaves, rerun)
            self.captured = None
            if self.captures >= MAX_CAPTURES:
                self._refuse(f"it was captured {self.captures} times and {moved} again; it runs uncaptured")
                return program.run(leaves, rerun=rerun)
            logs.log("cudagraphs", f"{self.name}: capturing again: {moved}")
        return self._capture(leaves, rerun)

    def describe(self) -> str:
        """One line for `explain()`: whether the program is captured, or why not."""
        if self.runs_as_default is not None:
            return f"CUDA graph: none; {self.runs_as_default}"
        if self.refused is not None:
            return f"CUDA graph: not captured: {self.refused}"
        if self.captured is None:
            return (f"CUDA graph: warming up ({self.runs} of {WARMUP_RUNS} ordinary runs); captured on the run after"
                    if self.runs <= WARMUP_RUNS else "CUDA graph: captured again on the next run")
        return (f"CUDA graph: captured ({self.captures} capture{'s' * (self.captures > 1)}, {self.replays} "
                f"replays); {self.captured.summary()}")

    def _refuse(self, why: str) -> None:
        self.refused = why
        logs.log("cudagraphs", f"{self.name}: not captured: {why}")

    def _capture(self, leaves: list, rerun):
        program = self.program
        captured = _Captured(program, leaves)
        try:
            captured.record()
        except CaptureError as err:
            self._refuse(f"capturing it failed ({err}); it runs uncaptured")
            # nothing ran: this call runs as an ordinary one, on the inputs already taken for it
            return program.run(leaves, inputs=captured.inputs, rerun=rerun)
        self.captures += 1
        self.captured = captured
        logs.log("cudagraphs", f"{self.name}: captured ({captured.summary()})")
        captured.graph.launch()
        return captured.finish(leaves, rerun)


def _runs_as_default(program: Program) -> str | None:
    """Why the mode does nothing for this program (None where its backend captures graphs)."""
    device, backend = program.device, program.backend
    if device is None or device.type == "cpu":
        return ("the program runs on the CPU, where mode='reduce-overhead' is mode='default' (CUDA graphs "
                "record GPU work; PyTorch also runs CPU code uncaptured)")
    if not backend.captures_graphs:
        return f"the {device.type} backend captures no device graphs: mode='reduce-overhead' is mode='default' there"
    return None


def _refusal(program: Program) -> str | None:
    """Why this program must not be captured, read from its plan and what it writes (None: it may)."""
    info = program.info
    if info.escaped or any(ref() is not None for ref, _ in info.born_writes):
        return "it keeps tensors it made (state a replay would not remake)"
    for kind, _ in program.fetch:
        if kind not in ("arg", "lifted", "grad", "rng", "size"):
            return f"it reads a {kind} input"
    for step in program.plan.steps:
        if type(step) is PrimStep:
            why = program.backend.capture_refusal(step.node)
            if why is not None:
                where = f" (at {step.node.source})" if step.node.source else ""
                return f"its plan runs {why}{where}"
    return None


class _Staging:
    """Host values that travel in one copy: a flat host buffer and a flat device buffer, each value
    a view of both at the same offset (16-byte aligned)."""

    def __init__(self, backend, like: list[np.ndarray]) -> None:
        offsets, end = [], 0
        for array in like:
            offsets.append(end)
            end += -(-array.nbytes // 16) * 16
        self.backend = backend
        self.host = np.zeros(max(end, 16), np.uint8)
        self.device = backend.empty(self.host.shape, np.dtype(np.uint8))
        self.layout = [(offset, array.shape, array.dtype) for offset, array in zip(offsets, like)]
        self.host_views = [_view(self.host, *entry) for entry in self.layout]
        self.device_views = [_view(self.device, *entry) for entry in self.layout]

    def upload(self, values: list[np.ndarray]) -> None:
        for view, value in zip(self.host_views, values):
            np.copyto(view, value, casting="unsafe")
        self.backend.copy_into(self.device, self.host)

    def download(self) -> list[np.ndarray]:
        host = self.backend.to_numpy(self.device)  # waits for the graph
        return [_view(host, *entry) for entry in self.layout]


def _view(flat, offset: int, shape: tuple, dtype: np.dtype):
    return flat[offset: offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize].view(dtype).reshape(shape)


class _Captured:
    """One captured graph of a program, with its static inputs and what each call copies in and out."""

    def __init__(self, program: Program, leaves: list) -> None:
        self.program = program
        backend, device, info = program.backend, program.device, program.info
        self.precision = get_float32_matmul_precision()
        # the graph's inputs: lifted tensors on the device where they are (`fixed`, checked before each
        # replay), static buffers for device arguments and gradients (`copied`), and views of one
        # staging buffer for host values (`host_reads`)
        self.inputs: list = []
        self.fixed: list[tuple[Tensor, object]] = []
        self.copied: list[tuple[str, object, object]] = []  # (kind, arg index or gradient's owner, buffer)
        self.host_reads: list[tuple[str, object]] = []
        host_slots = []
        for kind, ref in program.fetch:
            t = leaves[ref] if kind == "arg" else ref
            if kind not in ("rng", "size") and t._device is device:
                if kind == "lifted":
                    self.fixed.append((t, t._data))
                    self.inputs.append(t._data)
                    continue
                source = t._data if kind == "arg" else t._grad._data
                buffer = backend.empty(source.shape, source.dtype)
                self.copied.append((kind, ref, buffer))
                self.inputs.append(buffer)
            else:  # CPU tensors (hyperparameters, a step count, scalar arguments), the random seed/counter, sizes
                self.host_reads.append((kind, ref))
                host_slots.append(len(self.inputs))
                self.inputs.append(None)
        values = self._host_values(leaves)
        self.host_in = _Staging(backend, values) if values else None
        for slot, view in zip(host_slots, self.host_in.device_views if self.host_in else ()):
            self.inputs[slot] = view
        self.refresh(leaves, values)
        # the write-backs: into device tensors from inside the graph (`written`: they must stay where
        # they are); into arguments (a new tensor each call) and CPU tensors after each replay
        self.written = [(t, slot) for t, slot in info.writes if t._device is device]
        self.fixed += [(t, t._data) for t, _ in self.written]
        self.host_writes = [(t, slot) for t, slot in info.writes if t._device is not device]
        host_targets = [t for t, _ in self.host_writes]
        self.arg_writes = []  # (leaf index, slot, whether the argument is a CPU tensor)
        for i, slot in info.arg_writes:
            on_host = leaves[i]._device is not device
            self.arg_writes.append((i, slot, on_host))
            if on_host:
                host_targets.append(leaves[i])
        self.host_out = _Staging(backend, [t._data for t in host_targets]) if host_targets else None
        self.arena = program.plan.reserve_arena()
        self.graph = None
        self.results: list = []
        self.staged: list = []  # per argument written in place: its new value, in the graph's memory

    def _host_values(self, leaves: list) -> list[np.ndarray]:
        """This call's host values, in the order of `host_reads` (taking its random counters)."""
        return [self.program.read_input(kind, ref, leaves) for kind, ref in self.host_reads]

    def refresh(self, leaves: list, values: list[np.ndarray] | None = None) -> None:
        """Copy this call's inputs into the static inputs (queued before the graph's launch)."""
        copy_into = self.program.backend.copy_into
        for kind, ref, buffer in self.copied:
            copy_into(buffer, leaves[ref]._data if kind == "arg" else ref._grad._data)
        if self.host_in is not None:
            self.host_in.upload(self._host_values(leaves) if values is None else values)

    def record(self) -> None:
        """Capture the plan and the write-backs that stay on the device (raises CaptureError)."""
        program = self.program
        backend = program.backend
        slots = [slot for _, slot in self.written] + [slot for _, slot in self.host_writes]
        slots += [slot for _, slot, _ in self.arg_writes]
        host_out = self.host_out.device_views if self.host_out is not None else []

        def work():
            results = program.plan.run(self.inputs, arena=self.arena)
            for slot in program.before_writes:  # (an output that is a tensor's value before this call writes it)
                results[slot] = backend.copy(results[slot])
            input_ids = {id(a) for a in self.inputs}
            # results may be views of inputs about to be overwritten: copies first, as Program does
            # (a result the plan wrote into its own tensor's buffer needs no copy)
            own = [t._data for t, _ in self.written]
            staged = [results[slot] if k < len(own) and results[slot] is own[k]
                      else program._owned(results[slot], input_ids) for k, slot in enumerate(slots)]
            n_written, n_host = len(self.written), len(self.host_writes)
            for (t, _), value in zip(self.written, staged):
                if value is not t._data:
                    backend.copy_into(t._data, value)
            # what goes to CPU tensors is gathered into one buffer, copied back once per call
            host_values = staged[n_written: n_written + n_host]
            host_values += [v for (_, _, on_host), v in zip(self.arg_writes, staged[n_written + n_host:]) if on_host]
            for view, value in zip(host_out, host_values):
                backend.copy_into(view, value)
            return results, [v for (_, _, on_host), v in zip(self.arg_writes, staged[n_written + n_host:])
                             if not on_host]

        self.graph, (self.results, self.staged) = backend.capture(work)

    def moved(self) -> str | None:
        """Why the graph no longer applies (None while it does): a tensor it reads or writes in place
        has a new buffer, or a setting it baked in changed."""
        for t, data in self.fixed:
            if t._data is not data:
                return f"{self.program.label(t)} has a new buffer since the capture"
        if get_float32_matmul_precision() != self.precision:
            return f"the float32 matmul precision changed ({self.precision!r} -> {get_float32_matmul_precision()!r})"
        return None

    def replay(self, leaves: list, rerun):
        self.refresh(leaves)
        self.graph.launch()
        return self.finish(leaves, rerun)

    def finish(self, leaves: list, rerun):
        """After a launch: the write-backs outside the graph, gradients, and the user's outputs, each
        copied out of the graph's memory (the next replay overwrites it)."""
        program = self.program
        backend, info, results = program.backend, program.info, self.results
        device_args = iter(self.staged)
        host_targets = [t for t, _ in self.host_writes]
        for i, _, on_host in self.arg_writes:
            if on_host:
                host_targets.append(leaves[i])
            else:
                backend.copy_into(leaves[i]._data, next(device_args))
        if self.host_out is not None:
            for t, value in zip(host_targets, self.host_out.download()):
                t._backend().copy_into(t._data, value)
        for t, _ in info.writes:
            t._bump_version()
        for i, _ in info.arg_writes:
            leaves[i]._bump_version()
        program.set_grads(leaves, results, backend.copy)  # (copied out of the graph's memory)
        backward = program.backward
        if backward is not None and _ag._grad_mode.enabled:  # the backward reads its saved values later
            n = len(results) - backward.n_saved
            results = results[:n] + [backend.copy(r) for r in results[n:]]
        return program.outputs(leaves, results, rerun, fresh=backend.copy)

    def summary(self) -> str:
        kernels = len(self.program.plan.kernels)
        steps = len(self.program.plan.steps)
        return (f"{steps} plan steps ({kernels} fused kernels), {len(self.written)} in-place writes in the graph; "
                f"each call copies in {len(self.copied)} device and {len(self.host_reads)} host inputs")
