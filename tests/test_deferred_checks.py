"""Index checks that a backend with queued work (the GPU) runs on the device and raises at the next
wait: `jitorch/backends/cuda/checks.py`'s queue on a numpy stand-in for CuPy, and where the errors
surface (`Backend.finish_checks`: where values reach the user, never inside a trace)."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest

import jitorch as jt
import jitorch.nn.functional as F
from tests.test_backends import StandIn


class _Reduction:
    """cupy.ReductionKernel's stand-in for the out-of-range kernel: the same test, in numpy."""

    def __init__(self, *args) -> None:
        pass

    def __call__(self, x, lo, hi, skip, skipping):
        return np.array(bool((((x < lo) | (x >= hi)) & ~(skipping & (x == skip))).any()))


@pytest.fixture
def checks(monkeypatch):
    fake = types.SimpleNamespace(ReductionKernel=_Reduction, asnumpy=np.asarray, stack=np.stack)
    monkeypatch.setitem(sys.modules, "jitorch.backends.cuda.gpu_check", types.SimpleNamespace(cupy=fake))
    monkeypatch.delitem(sys.modules, "jitorch.backends.cuda.checks", raising=False)
    module = importlib.import_module("jitorch.backends.cuda.checks")
    yield module
    sys.modules.pop("jitorch.backends.cuda.checks", None)


def test_checks_wait_in_the_queue_and_the_first_failure_raises_with_its_value(checks):
    def error(value):
        return IndexError(f"bad {value}")

    checks.check_indices(np.array([0, 1, 2]), 0, 3, error)
    checks.check_indices(np.array([1, -100, 7]), 0, 5, error, skip=-100)  # 7 fails, -100 is skipped
    checks.check_indices(np.array([9]), 0, 5, error)
    checks.check_indices(np.array([], np.int64), 0, 5, error)  # (nothing to check)
    assert len(checks.pending) == 3
    with pytest.raises(IndexError, match="bad 7"):
        checks.finish()
    assert checks.pending == []
    checks.check_indices(np.array([-100]), 0, 5, error, skip=-100)
    checks.finish()  # a skipped value alone is no error


def test_a_loop_that_never_waits_reads_the_flags_every_max_pending_checks(checks):
    for _ in range(3 * checks.MAX_PENDING):
        checks.check_indices(np.array([1]), 0, 5, IndexError)
        assert len(checks.pending) < checks.MAX_PENDING
    checks.check_indices(np.array([5]), 0, 5, lambda v: IndexError(f"bad {v}"))
    with pytest.raises(IndexError, match="bad 5"):
        for _ in range(checks.MAX_PENDING):
            checks.check_indices(np.array([1]), 0, 5, IndexError)


class _Deferring(StandIn):
    """The backend stand-in with checks queued as the GPU's are: failures raise at `finish_checks`."""

    def __init__(self) -> None:
        super().__init__()
        self.queued = []

    def check_indices(self, index, lo, hi, error, skip=None):
        self.queued.append((np.array(index), lo, hi, error, skip))

    def finish_checks(self):
        queued, self.queued = self.queued, []
        for index, lo, hi, error, skip in queued:
            bad = index[((index < lo) | (index >= hi)) & (index != skip if skip is not None else True)]
            if bad.size:
                raise error(int(bad.flat[0]))


@pytest.fixture
def deferring(monkeypatch):
    from jitorch import backends, dispatch
    from jitorch.device import Device

    backend = _Deferring()
    monkeypatch.setitem(backends._BACKENDS, "cuda", backend)
    monkeypatch.setattr(Device, "_interned", dict(Device._interned))
    monkeypatch.setattr(dispatch, "_backends", {})
    return backend


@pytest.mark.parametrize("read", ["item", "tolist", "cpu", "print"])
def test_a_failed_check_raises_where_values_reach_the_user(deferring, read):
    x = jt.randn(4, 3).to("cuda")
    loss = F.cross_entropy(x, jt.tensor([0, 1, 7, 2]).to("cuda"))  # (no error yet: queued)
    assert len(deferring.queued) == 1
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        {"item": loss.item, "tolist": loss.tolist, "cpu": loss.cpu, "print": lambda: repr(loss)}[read]()
    assert deferring.queued == []


def test_a_trace_copying_its_constants_to_the_host_raises_nothing_queued(deferring):
    """A compiled function's first call traces and reads its constants on the host: a check queued
    before it stays queued (it is not the user's wait), and fires at the next value read."""
    x = jt.randn(2, 5).to("cuda")
    F.cross_entropy(x, jt.tensor([9, 0]).to("cuda"))
    compiled = jt.compile(lambda x: x * jt.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).to("cuda"))
    out = compiled(x)
    assert len(deferring.queued) == 1
    with pytest.raises(IndexError, match="Target 9 is out of bounds"):
        out.sum().item()
