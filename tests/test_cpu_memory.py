"""The CPU heap settings of jitorch.backends.cpu.memory: when asked for, freed activation-sized
buffers are reused, not handed back to the kernel and faulted in again; and importing jitorch
leaves the process's allocator alone."""

import os
import subprocess
import sys

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
