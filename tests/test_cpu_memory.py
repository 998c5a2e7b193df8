"""The CPU heap settings of jitorch.backends.cpu.memory: when asked for, freed activation-sized
buffers are reused, not handed back to the kernel and faulted in again; and importing jitorch
leaves the process's allocator alone."""

import os
import subprocess
import sys

import numpy as np
import pytest

# Like a training step: each round fills three 4 MB activations and frees them all; prints the
# page faults that took (Linux counts minor faults per process: each first touch of a fresh 4 KB
# page is one).
FAULTS_SCRIPT = """
import resource
import numpy as np
import jitorch
rounds = 32
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(rounds):
    live = [np.ones(2**20, np.float32) for _ in range(3)]
    del live
print(jitorch.backends.cpu.memory.malloc_tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

PAGES_PER_BUFFER = 4 * 2**20 // 4096
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap settings")


def run_faults(tuning: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "JITORCH_MALLOC_TUNING"}
    if tuning is not None:
        env["JITORCH_MALLOC_TUNING"] = tuning
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@linux_only
def test_freed_buffers_are_reused_without_page_faults():
    tuned, faults = run_faults("1")
    assert tuned
    assert faults < 6 * PAGES_PER_BUFFER  # the first round faults in; later ones reuse its pages


@linux_only
def test_the_setting_can_be_switched_off():
    tuned, faults = run_faults("0")
    assert not tuned
    # glibc's default gives heap memory back at each free beyond its trim threshold (twice the
    # largest block freed so far), so every round faults fresh pages in again
    assert faults > 16 * PAGES_PER_BUFFER


@linux_only
def test_importing_jitorch_leaves_the_allocator_alone():
    tuned, faults = run_faults(None)
    assert not tuned
    assert faults > 16 * PAGES_PER_BUFFER


# ---------------------------------------------------------------------------------------------
# large buffers from kept slabs


@pytest.fixture
def slabs():
    from jitorch.backends.cpu import memory

    memory.forget_kept()
    yield memory
    memory.forget_kept()


def test_a_large_buffer_is_a_whole_aligned_array_and_its_slab_comes_back_when_every_view_is_gone(slabs):
    from jitorch.backends import backend_for

    backend = backend_for("cpu")
    a = slabs.empty((2048, 4100), np.float32)  # 33.6 MB: past glibc's mmap threshold
    assert a.shape == (2048, 4100) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % 64 == 0
    assert backend.owns_buffer(a) and not backend.owns_buffer(a[1:]) and not backend.owns_buffer(a.reshape(-1))
    address, view = a.ctypes.data, a[10:20]
    del a
    assert slabs._kept[0] == 0  # the view keeps the slab on loan
    view[...] = 1.0
    del view
    assert slabs._kept[0] > 0
    b = slabs.empty((4100, 2048), np.float32)  # the same bytes in another shape: the same slab
    assert b.ctypes.data == address and slabs._kept[0] == 0
    c = slabs.empty((4100, 2048), np.float32)  # while b lives, another
    assert not np.shares_memory(b, c)


def test_small_buffers_and_types_the_interface_cannot_name_are_plain_numpy(slabs):
    import ml_dtypes

    assert slabs.empty((1024, 1024), np.float32).base is None  # 4 MB: glibc's heap reuses it
    half = slabs.empty((4096, 8192), ml_dtypes.bfloat16)
    assert half.base is None and half.dtype == ml_dtypes.bfloat16


def test_no_more_than_the_cap_is_kept(slabs, monkeypatch):
    monkeypatch.setattr(slabs, "KEEP_BYTES", 40 * 2**20)
    arrays = [slabs.empty((9 * 2**20,), np.float32) for _ in range(2)]  # 36 MB each
    del arrays
    assert slabs._kept[0] <= 40 * 2**20 and sum(map(len, slabs._free.values())) == 1


def test_a_compiled_function_returns_large_outputs_that_stay_its_callers(slabs):
    import jitorch as jt

    f = jt.compile(lambda x: (x * 2 + 1).exp())
    x = jt.randn(3000, 3000)  # 36 MB outputs
    outs = [f(x) for _ in range(3)]  # each kept: none may be written by a later call
    want = np.exp(x.numpy() * 2 + 1)
    for out in outs:
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)
    assert len({o.numpy().ctypes.data for o in outs}) == 3
    outs[0] += 1  # in place, on the caller's own buffer
    np.testing.assert_allclose(outs[0].numpy(), want + 1, rtol=1e-6)
    np.testing.assert_allclose(f(x).numpy(), want, rtol=1e-6)
