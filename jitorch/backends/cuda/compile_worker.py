"""Processes that compile Triton kernels into Triton's disk caches, for `launch.prepare_kernels`.

Triton's front end (a kernel's Python AST to its IR) holds Python's lock, so threads compile side by
side only in what follows it (MLIR, LLVM, ptxas): a training step's hundreds of configurations took
about as long on 16 threads as the front end alone. Processes run it in parallel too. They touch no
GPU (`triton_driver.CompileOnlyDriver`) and leave their work in Triton's disk cache, where the
program's own compiles then find it.

Each worker is this module run as a program (`python -m`, so a user's script is never imported
again, as a spawned `multiprocessing` child would import it), fed on its standard input with
pickled `launch.CompileJob`s, one at a time, and answering each on its standard output with the
pickled outcome: None, or the text of the error where the configuration does not compile. The
first message is the GPU's compute capability. The pool starts on first need and stays for the
process's later programs (a start costs an import of Triton).
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence

_pool: _Pool | None = None
_pool_lock = threading.Lock()


class _Worker:
    def __init__(self, capability: tuple[int, int]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_environment())
        self.send(capability)

    def send(self, message: object) -> None:
        pickle.dump(message, self.process.stdin)
        self.process.stdin.flush()

    def ask(self, job) -> str | None:
        self.send(job)
        return pickle.load(self.process.stdout)  # (EOFError where the worker died)

    def close(self) -> None:
        try:
            self.process.stdin.close()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def _environment() -> dict[str, str]:
    """This process's environment, with the folder holding this jitorch first on the module path
    (a script run from a checkout imports it from there without an install)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""))


class _Pool:
    def __init__(self, workers: int, capability: tuple[int, int]) -> None:
        self.capability = capability
        self.workers = [_Worker(capability) for _ in range(workers)]

    def run(self, jobs: Sequence) -> list[str | None]:
        """Each job's outcome, the jobs shared out as workers become free; raises where a worker
        died (the caller compiles on threads instead)."""
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for k, job in enumerate(jobs):
            todo.put((k, job))
        outcomes: list = [None] * len(jobs)
        failures: list[BaseException] = []

        def serve(worker: _Worker) -> None:
            try:
                while not failures:
                    try:
                        k, job = todo.get_nowait()
                    except queue.Empty:
                        return
                    outcomes[k] = worker.ask(job)
            except BaseException as err:  # (a dead worker: its pipe closed)
                failures.append(err)

        threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in self.workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise RuntimeError(f"a compile process stopped: {failures[0]!r}")
        return outcomes

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


def compile_in_processes(jobs: Sequence, workers: int, capability: tuple[int, int]) -> list[str | None]:
    """Each job's outcome (None, or the text of its error), compiled by `workers` processes for a
    GPU of compute capability `capability` (a pool made on first call; remade where a worker died
    or the capability or size changed)."""
    global _pool
    with _pool_lock:
        if _pool is not None and (_pool.capability != capability or len(_pool.workers) != workers
                                  or any(w.process.poll() is not None for w in _pool.workers)):
            _pool.close()
            _pool = None
        if _pool is None:
            _pool = _Pool(workers, capability)
        return _pool.run(jobs)


def shutdown() -> None:
    """Stop the compile processes (they also stop when this process ends: their input closes)."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


def _serve() -> None:
    """A worker's loop: the capability, then jobs until the input closes."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # (whatever a compile prints stays off the answers)
    requests = sys.stdin.buffer
    from . import triton_driver

    triton_driver.activate_compile_only(pickle.load(requests))
    while True:
        try:
            job = pickle.load(requests)
        except EOFError:
            return
        try:
            outcome = job._replace(required=False)()
        except BaseException as err:  # noqa: BLE001 - any failure is the configuration's, reported back
            outcome = f"{type(err).__name__}: {err}"
        pickle.dump(outcome, answers)
        answers.flush()


if __name__ == "__main__":
    _serve()
