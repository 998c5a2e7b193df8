"""The models a server answers for, and dynamic batching: requests that arrive close together run as
one call of the model, each answered with its own rows.

A model whose inputs and outputs all lead with one dynamic dim (exported with a dynamic batch) is
batched: a worker takes the first waiting request, then gathers more until the batch holds
`max_batch` rows or `max_delay` seconds have passed since the first, runs them concatenated along
that dim (in a thread of its own: the server keeps answering meanwhile), and splits the outputs
back by each request's rows. Requests whose other dims differ (two sequence lengths) go in
separate batches, in order. A batch smaller than the dim's least size (2: sizes 0 and 1 were
constants to the export's trace; or its `Dim`'s min) is padded with copies of its first row, and
`max_batch` is capped at the dim's `Dim` max. A model without such a dim runs each request alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import dtypes
from ..creation import from_numpy
from ..ir.pytree import flatten


class RequestError(ValueError):
    """A request the model cannot take (its inputs' names, dtypes or shapes): answered 400."""


class Runner:
    """A loaded program on numpy arrays: `input_specs`, `output_specs` (name, shape with a dynamic dim
    as a str, dtype name) and `run(arrays) -> list of output arrays` (the outputs in order)."""

    def __init__(self, program) -> None:
        self.program, self.device = program, program.device
        self.input_specs, self.output_specs = program.input_specs, program.output_specs
        self.bounds = dict(getattr(program, "bounds", {}))  # size symbol -> (least, largest), None: unbounded

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
        try:
            out = self.program(*tensors)
        except ValueError as err:  # (shapes the program refuses: the request's fault)
            raise RequestError(str(err)) from None
        leaves, _, _ = flatten(out)
        return [t.detach().cpu().numpy() for t in leaves]


@dataclass
class _Request:
    arrays: list[np.ndarray]
    rows: int
    rest: tuple  # every input's shape past the batch dim: requests batch together only where these agree
    future: asyncio.Future


class ServedModel:
    """One version of one model: its runner, and (where it batches) its batching worker."""

    def __init__(self, name: str, version: str, runner, max_batch: int = 32, max_delay: float = 0.005) -> None:
        self.name, self.version, self.runner = name, version, runner
        self.max_batch, self.max_delay = max(1, max_batch), max(0.0, max_delay)
        self.batchable = _leads_with_one_dynamic_dim(runner.input_specs, runner.output_specs) and self.max_batch > 1
        # the sizes the batch dim takes: from 2 (sizes 0 and 1 were constants to the export's trace), within
        # the bounds it was exported with (a smaller batch is padded with copies of its first row)
        least, largest = getattr(runner, "bounds", {}).get(runner.input_specs[0].shape[0], (None, None)) \
            if self.batchable else (None, None)
        self.least, self.largest = max(2, least or 2), largest
        if largest is not None:
            self.max_batch = min(self.max_batch, largest)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"jitorch-serve-{name}")
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._held: _Request | None = None  # a request that did not fit the last batch: the next one's first
        self.on_batch: Callable[[int], None] = lambda rows: None

    def warm_up(self) -> None:
        """Run every batch size once (2 to `max_batch` rows of zeros), where the other dims are fixed:
        a program plans each new set of sizes on its first call, which no request should wait for."""
        specs = self.runner.input_specs
        if not self.batchable or any(isinstance(d, str) for s in specs for d in s.shape[1:]):
            return
        for rows in range(self.least, self.max_batch + 1):
            self.runner.run([np.zeros((rows, *s.shape[1:]), dtypes.get_dtype(s.dtype).np) for s in specs])

    def check(self, arrays: list[np.ndarray]) -> None:
        """Raise RequestError unless `arrays` fit the inputs' specs (dynamic dims at any size)."""
        specs = self.runner.input_specs
        if len(arrays) != len(specs):
            raise RequestError(f"model {self.name} takes {len(specs)} inputs ({_show(specs)}), got {len(arrays)}")
        for spec, a in zip(specs, arrays):
            fixed = all(isinstance(d, str) or d == n for d, n in zip(spec.shape, a.shape))
            rows = a.shape[0] if a.ndim else 0
            if (a.ndim != len(spec.shape) or not fixed
                    or (self.batchable and not 1 <= rows <= (self.largest or rows))):
                limit = f", the first 1 to {self.largest}" if self.batchable and self.largest else ""
                raise RequestError(f"input {spec.name}: expected shape [{', '.join(map(str, spec.shape))}] "
                                   f"(a str: any size{limit}), got {list(a.shape)}")

    async def infer(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        self.check(arrays)
        loop = asyncio.get_running_loop()
        if not self.batchable:
            self.on_batch(arrays[0].shape[0] if arrays and arrays[0].ndim else 1)
            return await loop.run_in_executor(self._executor, self.runner.run, arrays)
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work())
        future = loop.create_future()
        rest = tuple(a.shape[1:] for a in arrays)
        await self._queue.put(_Request(arrays, arrays[0].shape[0], rest, future))
        return await future

    async def close(self) -> None:
        """Answer every request already waiting, then stop the worker."""
        if self._worker is not None:
            await self._queue.put(None)
            await self._worker
            self._worker = None
        self._executor.shutdown(wait=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping or self._held is not None:
            first, self._held = self._held, None
            if first is None:
                first = await self._queue.get()
                if first is None:
                    break
            batch, rows = [first], first.rows
            deadline = loop.time() + self.max_delay
            while rows < self.max_batch and not stopping:
                try:
                    item = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:  # (the builtin TimeoutError from Python 3.11)
                    break
                if item is None:
                    stopping = True
                elif item.rest != first.rest or rows + item.rows > self.max_batch:
                    self._held = item  # (the next batch starts with it)
                    break
                else:
                    batch.append(item)
                    rows += item.rows
            await self._run(batch, rows)

    async def _run(self, batch: list[_Request], rows: int) -> None:
        arrays = [np.concatenate(parts) for parts in zip(*(r.arrays for r in batch))]
        if rows < self.least:  # (padded with copies of the first row, whose answers are dropped)
            arrays = [np.concatenate([a, np.repeat(a[:1], self.least - rows, axis=0)]) for a in arrays]
        self.on_batch(rows)
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self.runner.run, arrays)
        except Exception as err:  # (every request of the batch gets the error; the worker goes on)
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(err)
            return
        start = 0
        for r in batch:
            if not r.future.done():
                r.future.set_result([o[start:start + r.rows] for o in outputs])
            start += r.rows


def _leads_with_one_dynamic_dim(inputs, outputs) -> bool:
    leading = {spec.shape[0] if spec.shape else None for spec in (*inputs, *outputs)}
    return len(leading) == 1 and isinstance(next(iter(leading)), str)


def _show(specs) -> str:
    return ", ".join(map(str, specs))
