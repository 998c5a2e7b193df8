"""Run an unmodified PyTorch script on jitorch: inside it, `import torch` gives jitorch.

    python -m jitorch.as_torch train.py --epochs 3         # as `python train.py --epochs 3`
    python -m jitorch.as_torch -m mypkg.train --epochs 3   # as `python -m mypkg.train --epochs 3`

Every `import torch.<path>` (and `from torch.<path> import name`) resolves to the module
`jitorch.<path>`, registered under both names, so `torch.nn is jitorch.nn`. A PyTorch module that
jitorch does not have fails to import with a ModuleNotFoundError naming the line that imported it.

In a test or a notebook, the same aliasing is a context manager that undoes itself (real torch
modules imported before it come back afterwards):

    import jitorch.as_torch
    with jitorch.as_torch.torch_is_jitorch():
        import torch
        assert torch is jitorch
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pkgutil
import runpy
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

__all__ = ["torch_is_jitorch", "run_script", "run_module", "main"]

USAGE = """usage: python -m jitorch.as_torch script.py [args ...]
       python -m jitorch.as_torch -m package.module [args ...]
Runs a PyTorch script with `import torch` resolving to jitorch."""


def _is_torch_name(name: str) -> bool:
    return name == "torch" or name.startswith("torch.")


def _jitorch_name(torch_name: str) -> str:
    return "jitorch" + torch_name[len("torch"):]


def _importer_location() -> str:
    """`file:line` of the code whose import reached the finder: the first frame outside importlib and
    this file, or 'unknown code' when the stack holds none."""
    machinery = os.path.dirname(importlib.__file__) + os.sep
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (filename.startswith("<frozen importlib") or filename.startswith(machinery) or filename == __file__):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "unknown code"


def _missing_message(torch_name: str) -> str:
    # the import system only asks for a.b.c once a.b is a package, so the parent has a __path__
    parent = torch_name.rpartition(".")[0]
    package = importlib.import_module(_jitorch_name(parent))
    children = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    return (f"jitorch has no module {torch_name} (imported by {_importer_location()}); jitorch implements a "
            f"subset of PyTorch. The modules under {parent} are: {', '.join(children)}. Import the names you "
            f"need from one of those, remove what needs {torch_name}, or run the script with PyTorch itself.")


class _TorchAsJitorch(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `torch.<path>` as `jitorch.<path>` and loads it by handing back that very module."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not _is_torch_name(fullname):
            return None
        if importlib.util.find_spec(_jitorch_name(fullname)) is None:
            raise ModuleNotFoundError(_missing_message(fullname), name=fullname)
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder module, replaced in exec_module

    def exec_module(self, module: ModuleType) -> None:
        # the import system hands out whatever sys.modules holds under the name once this returns: the
        # jitorch module, whose own __name__ and __spec__ stay untouched
        sys.modules[module.__name__] = importlib.import_module(_jitorch_name(module.__name__))


def _pop_torch_modules() -> dict[str, ModuleType]:
    return {name: sys.modules.pop(name) for name in [n for n in sys.modules if _is_torch_name(n)]}


@contextlib.contextmanager
def torch_is_jitorch() -> Iterator[None]:
    """Within the block, `import torch[.X]` gives `jitorch[.X]` (the same module objects).

    Real torch modules already imported are set aside for the block and put back afterwards; the
    aliases and the finder are removed, so code after the block sees the modules it saw before.
    """
    set_aside = _pop_torch_modules()
    finder = _TorchAsJitorch()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        _pop_torch_modules()
        sys.modules.update(set_aside)


def run_script(path: str, args: Sequence[str]) -> None:
    """Run the script at `path` as `python path *args` would (argv, `__main__`, the script's folder
    first on sys.path), with torch resolving to jitorch."""
    if not os.path.exists(path):
        sys.exit(f"jitorch.as_torch: can't open file {path!r}: no such file; give the path of a PyTorch script")
    sys.argv = [path, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    with torch_is_jitorch():
        runpy.run_path(path, run_name="__main__")


def run_module(name: str, args: Sequence[str]) -> None:
    """Run module `name` as `python -m name *args` would, with torch resolving to jitorch."""
    sys.argv = [name, *args]  # run_module puts the module's file in argv[0], as `python -m` does
    with torch_is_jitorch():
        runpy.run_module(name, run_name="__main__", alter_sys=True)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: `script.py args...` or `-m package.module args...` (see USAGE)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return
    if not args or args == ["-m"]:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    if args[0] == "-m":
        run_module(args[1], args[2:])
    else:
        run_script(args[0], args[1:])


if __name__ == "__main__":
    main()
