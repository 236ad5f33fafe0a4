"""`kzoo.runtime.tune_cpu_allocator`: freed train-step buffers are reused."""

import subprocess
import sys

import pytest

# Allocates, touches and frees a 64 MB buffer from a worker thread (as a
# framework's thread pool does) six times, and prints the minor page faults
# of the last five.
SCRIPT = """
import resource, sys, threading
import numpy as np
from kzoo import runtime
np._core.multiarray._set_madvise_hugepage(False)  # 4 kB pages, as XLA's buffers get
if sys.argv[1] == "tuned":
    assert runtime.tune_cpu_allocator()

def work():
    for _ in range(6):
        if _ == 1:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(16 * 2**20, "float32")
        a += 1
        del a
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)

thread = threading.Thread(target=work)
thread.start()
thread.join()
"""


def _faults(mode):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_tuned_allocator_reuses_freed_buffers_instead_of_faulting():
    # Untuned, each 64 MB buffer is a fresh mmap: 16,384 page faults of 4 kB.
    untuned, tuned = _faults("default"), _faults("tuned")
    assert untuned > 5 * 16_000, untuned
    assert tuned < untuned / 20, (tuned, untuned)
