"""`jitorch.compile`: trace a function (a forward pass or a whole training step) into the IR, cache
the result under guards, and replay it.

    @jitorch.compile
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

Modes: "default" (trace, optimize, run the program), "reduce-overhead" (as "default", then a
program on the GPU is captured into a CUDA graph and replayed), "max-autotune" (as "reduce-overhead",
with a wider search of each GPU kernel's launch configurations), "max-autotune-no-cudagraphs",
"eager" (run the Python as written: pdb and print work), "check" (run both, compare, and name the
first IR node that diverges). The rest of torch.compile's interface (`backend`, `options`,
`fullgraph`, `dynamic`, `disable`) is `compile`'s. The environment variable JITORCH_DISABLE=1 and the
context manager `jitorch.compiler.disable()` force eager mode.

The package, by concern: `api` (compile, CompiledFunction, disable, is_compiling), `guards` (the
cache key of a call and what else a program depends on), `program` (one cache entry: run, write
back, compiled backward), `check` (mode="check"), `cudagraphs` (mode="reduce-overhead"),
`composites` (eager composites run as cached compiled functions on backends that fuse them: the
GPU). Splitting a joint forward+backward graph is an IR transform: `jitorch.ir.joint`. A compiled
Module is wrapped by nn's `OptimizedModule`: nn sits above the compiler.
"""

from . import composites
from .api import RECOMPILE_LIMIT, CompiledFunction, compile, disable, forget_programs, is_compiling
from .check import CompileCheckError
from .dynamic import mark_dynamic
from .program import CompiledBackward, Program


def reset() -> None:
    """Forget every compiled program (PyTorch's `torch.compiler.reset()`): functions already compiled
    trace again on their next call, and eager composites' compiled forms are made again when next
    used. Kernels compiled to machine code stay cached (in this process and on disk): a retrace
    finds them."""
    forget_programs()
    composites.forget()


# shown (in tracebacks, reprs, help) where users import them from, as before the package was split
for _public in (CompileCheckError, CompiledFunction, Program, compile, disable, is_compiling, mark_dynamic, reset):
    _public.__module__ = __name__
del _public

__all__ = ["RECOMPILE_LIMIT", "CompileCheckError", "CompiledBackward", "CompiledFunction", "Program", "compile",
           "disable", "is_compiling", "mark_dynamic", "reset"]
