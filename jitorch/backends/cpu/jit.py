"""The CPU backend's compiler: LLVM IR text to machine code, in-process through llvmlite's MCJIT.

A kernel's code depends on its nodes, dtypes and broadcast pattern, not on its sizes (they are
arguments), so the same update of differently shaped parameters, or the same layer twice, is one
function. Each distinct function is its own small module, named by the digest of its IR text:
compiled once per process, and its machine code is kept on disk for the next process
(`cache_dir()`: content-addressed by that digest, per llvmlite version and host CPU; written
atomically; a damaged entry is recompiled, never fatal). Many new kernels at once (a training
step's first run) are shared with helper processes, one per spare CPU, which compile theirs into
that cache while this process compiles the rest (`_start_helpers`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading

_addresses: dict[str, int] = {}  # digest -> function address in the engine
_engine = None
_target_machine = None


def _machine():
    global _target_machine
    if _target_machine is None:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        _target_machine = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                                       features=llvm.get_host_cpu_features().flatten(),
                                                       opt=3, jit=True)
    return _target_machine


@functools.cache
def has_avx512f() -> bool:
    """Whether the host has AVX-512F: exp then scales with vscalef (`llvm_math.math_functions`)."""
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_features().get("avx512f", False)


def cache_dir() -> str:
    """Where compiled kernels are kept: per llvmlite version and host CPU (JITORCH_CACHE_DIR moves it)."""
    import llvmlite
    import llvmlite.binding as llvm

    root = os.environ.get("JITORCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jitorch")
    features = hashlib.sha1(llvm.get_host_cpu_features().flatten().encode()).hexdigest()[:12]
    return os.path.join(root, "llvm", f"llvmlite{llvmlite.__version__}-{llvm.get_host_cpu_name()}-{features}")


def _read_cached(digest: str) -> bytes | None:
    """The cached object code, or None when absent or damaged (a truncated or corrupt file is
    recompiled: its leading checksum no longer matches)."""
    if os.environ.get("JITORCH_CACHE", "1") == "0":
        return None
    try:
        with open(os.path.join(cache_dir(), digest + ".o"), "rb") as f:
            data = f.read()
    except OSError:
        return None
    checksum, body = data[:32], data[32:]
    return body if body and hashlib.sha256(body).digest() == checksum else None


def _write_cached(digest: str, body: bytes) -> None:
    """Atomically (temp file, then rename), so a reader never sees half a file; failures only
    cost a recompile next time."""
    if os.environ.get("JITORCH_CACHE", "1") == "0":
        return
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(hashlib.sha256(body).digest() + body)
        os.replace(tmp, os.path.join(folder, digest + ".o"))
    except OSError:
        pass


def _shared_engine():
    global _engine
    if _engine is None:
        import llvmlite.binding as llvm

        _engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _machine())
        # only kernel modules (named by their digest) are cached, not the engine's empty first one
        _engine.set_object_cache(
            lambda module, body: _is_digest(module.name) and _write_cached(module.name, bytes(body)),
            lambda module: _read_cached(module.name) if _is_digest(module.name) else None)
    return _engine


def _is_digest(name: str) -> bool:
    return len(name) == 40 and all(c in "0123456789abcdef" for c in name)


def _optimize(module, machine=None) -> None:
    """LLVM's -O3 pipeline with both vectorizers, for `machine` (the host's by default)."""
    import llvmlite.binding as llvm

    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(machine or _machine(), pto)
    pb.getModulePassManager().run(module, pb)


_compile_lock = threading.Lock()  # LLVM's engine is not safe to grow from two threads at once


def digest_of(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def compile_texts(texts: dict[str, str], optimize: bool = True) -> dict[str, int]:
    """Machine code for each kernel (digest -> IR text of a function named @"kernel"), compiling
    only those this process has not: digest -> function address. `optimize=False` skips LLVM's
    IR passes (code that only calls other functions gains nothing from them)."""
    if not all(d in _addresses for d in texts):
        with _compile_lock:
            new = {d: t for d, t in texts.items() if d not in _addresses}
            helpers = _start_helpers(new) if optimize else _Helpers([], set())
            _compile_new({d: t for d, t in new.items() if d not in helpers.taken}, optimize)
            helpers.wait()
            _compile_new({d: t for d, t in new.items() if d in helpers.taken})  # (their machine code, from disk)
    return {d: _addresses[d] for d in texts}


# ---------------------------------------------------------------------------------------------
# compiling side by side: llvmlite runs one compile at a time per process, so a first run's many
# kernels are shared with helper processes (this file run as a script: llvmlite alone, no jitorch),
# which leave their machine code in the disk cache for this process to load

# a helper costs a process start (about 0.06 s, and LLVM's set-up): it takes a share of the new kernels
# when they come to at least this many lines of IR each (LLVM compiles about 10 lines a millisecond)
HELPER_MIN_LINES = 2000


class _Helpers:
    def __init__(self, processes: list, taken: set[str]) -> None:
        self.processes, self.taken = processes, taken

    def wait(self) -> None:
        """Wait for the helpers (a kernel one failed to leave on disk is compiled here after)."""
        for process in self.processes:
            try:
                process.wait(timeout=600)
            except Exception:  # (a stuck helper: its kernels are compiled here)
                process.kill()


def _start_helpers(new: dict[str, str]) -> _Helpers:
    """Hand a share of the kernels not yet on disk to helper processes (one per spare CPU); what
    they took, by digest."""
    import json
    import subprocess
    import sys

    uncached = [d for d in new if _read_cached(d) is None]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    lines = sum(new[d].count("\n") for d in uncached)
    count = min(cpus - 1, len(uncached) - 1, lines // HELPER_MIN_LINES - 1)
    if os.environ.get("JITORCH_CACHE", "1") == "0" or count < 1:
        return _Helpers([], set())
    shares = [uncached[k + 1::count + 1] for k in range(count)]  # (this process keeps every (count+1)-th)
    processes = []
    for share in shares:
        try:
            process = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            process.stdin.write(json.dumps({d: new[d] for d in share}).encode())
            process.stdin.close()
            processes.append(process)
        except OSError:
            break
    taken = {d for share in shares[:len(processes)] for d in share}
    if processes:
        from ... import logs

        logs.log("perf", f"{len(uncached)} new kernels: {len(taken)} compiled by {len(processes)} helper process(es)")
    return _Helpers(processes, taken)


def _compile_new(new: dict[str, str], optimize: bool = True) -> None:
    import llvmlite.binding as llvm

    if not new:
        return
    engine, tm = _shared_engine(), _machine()
    for digest, text in new.items():
        module = llvm.parse_assembly(text.replace('@"kernel"', f'@"{_symbol(digest)}"'))
        module.name = digest
        module.triple = tm.triple
        module.data_layout = str(tm.target_data)
        if _read_cached(digest) is None:  # a cached one is loaded as machine code: no need to optimize
            module.verify()
            if optimize:
                _optimize(module)
        engine.add_module(module)
    engine.finalize_object()
    for digest in new:
        _addresses[digest] = engine.get_function_address(_symbol(digest))


def _symbol(digest: str) -> str:
    return f"jitorch_kernel_{digest[:24]}"


if __name__ == "__main__":  # a helper (see _start_helpers): compile the kernels given on stdin into the disk cache
    import json
    import sys

    _compile_new(json.loads(sys.stdin.read()))
