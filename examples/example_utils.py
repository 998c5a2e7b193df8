"""Helpers shared by the examples: the step budget, the device, a progress bar that degrades without tqdm.

The examples import this module by name, which works because Python puts a script's own folder on
`sys.path` (`python examples/char_lm.py`); `bench/train.py` puts `examples/` there itself.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable, Iterator

try:
    from tqdm import tqdm
except ImportError:  # tqdm is in the `examples` extra; the examples still run without it
    tqdm = None

STEPS_ENV = "JITORCH_EXAMPLE_STEPS"


def add_budget_args(parser: argparse.ArgumentParser, default_steps: int | None, what: str) -> None:
    """Add `--steps` (falling back to $JITORCH_EXAMPLE_STEPS, then `default_steps`) and `--seed`."""
    env = os.environ.get(STEPS_ENV)
    default = int(env) if env else default_steps
    parser.add_argument("--steps", type=int, default=default,
                        help=f"{what} (default {default_steps}; ${STEPS_ENV} overrides it)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation and batches")


def cuda_module(lib):
    """`lib.cuda` of jitorch or torch, or None where the framework has no such module."""
    try:
        return importlib.import_module(f"{lib.__name__}.cuda")
    except ImportError:
        return None


def default_device(lib) -> str:
    """"cuda" when `lib` (jitorch or torch) has a usable GPU (`lib.cuda.is_available()`), else "cpu"."""
    cuda = cuda_module(lib)
    return "cuda" if cuda is not None and cuda.is_available() else "cpu"


def add_device_arg(parser: argparse.ArgumentParser, lib) -> None:
    """Add `--device`, defaulting to "cuda" where `lib` has a GPU and to "cpu" elsewhere."""
    default = default_device(lib)
    parser.add_argument("--device", default=default,
                        help=f"where to train: cpu or cuda (default: cuda when {lib.__name__}.cuda.is_available(), "
                             f"else cpu; here {default})")


def model_device(model):
    """The device of `model`'s parameters (a jitorch or torch device): where its inputs must go."""
    return next(iter(model.parameters())).device


class _PlainProgress:
    """The few parts of tqdm's interface the examples use, for when tqdm is not installed."""

    def __init__(self, iterable: Iterable, total: int | None, desc: str) -> None:
        self.iterable, self.desc = iterable, desc

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    @staticmethod
    def write(s: str) -> None:
        print(s, flush=True)


def progress(iterable: Iterable, total: int | None = None, desc: str = ""):
    """A tqdm progress bar on stderr when tqdm is installed, else a silent stand-in."""
    if tqdm is None:
        return _PlainProgress(iterable, total, desc)
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)


def say(line: str) -> None:
    """Print a line to stdout without breaking an open progress bar."""
    if tqdm is None:
        print(line, flush=True)
    else:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
