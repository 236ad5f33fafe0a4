"""Process settings that make kzoo's CPU training faster.

`tune_cpu_allocator` keeps the large buffers a train step allocates and frees
in the process instead of returning them to the operating system. glibc's
`malloc` serves each framework thread from its own arena, whose heaps hold at
most 64 MB, and hands larger blocks to `mmap`; both go back to the system
when freed. A compiled step that allocates tens of MB of temporaries then
takes a page fault for every 4 kB it touches, every step: about 16,600 per
step (65 MB) for `LSTMOptimizer` on an 85k-parameter model, half of its
time on JAX (BENCHMARKS.md, "Cost inside `model.fit`").

PyTorch's CPU performance guide answers the same problem with jemalloc or
tcmalloc; this uses glibc's own settings instead: one arena
(`M_ARENA_MAX=1`), no `mmap` for large blocks (`M_MMAP_MAX=0`) and freed
memory kept up to 1 GiB (`M_TRIM_THRESHOLD`). The process then keeps the
memory of its largest step: its resident size stays at its peak.

This module imports no deep-learning framework. The `kzoo` command calls
`tune_cpu_allocator` before it loads one.
"""

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 1 << 30


def tune_cpu_allocator():
    """Makes glibc's `malloc` keep freed memory for the next train step.

    Call it first, before importing Keras or a framework: threads that
    already allocated keep their own arenas. The settings last for the life
    of the process. Equivalent to starting Python with
    `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824`.

    Returns:
        `True` if glibc accepted the settings; `False` where the C library is
        not glibc (macOS, Windows, musl), which is left as it is.

    Example (the first lines of a training script, on Linux):

    >>> import kzoo.runtime
    >>> kzoo.runtime.tune_cpu_allocator()
    True
    >>> import keras
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)
