"""Keep freed large arrays in the process instead of handing them back to the kernel.

glibc's malloc serves blocks above its mmap threshold (at most 32 MB, dynamically adjusted)
with fresh ``mmap`` pages and returns them on ``free``. A tile allocates and frees arrays of
tens of MB (``D^T Y``, its residual copies, (T, r) blocks) hundreds of times; every time the
kernel maps and zeroes new pages, which showed up as a quarter of a worker's CPU time
(page faults per 6 tiles 110,000 -> 33,000, system time 3.5 -> 1.0 s, tile CPU time -8 to
-20 %). Raising the thresholds lets freed blocks be reused; a process that is done with a
stage's large arrays hands them back with :func:`release_free_memory` (the pipeline does before
the tiles, so the summary's batches are not held while the workers run).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30      # blocks below 1 GiB come from the (reused) heap
_TRIM_THRESHOLD = 1 << 30      # keep up to 1 GiB of free heap instead of returning it
_TOP_PAD = 64 << 20            # grow the heap 64 MiB at a time

_done = False


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim     # noqa: B018 - glibc only (not musl)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for large, repeatedly reallocated arrays (once per process).

    Returns True when the thresholds were set, False elsewhere (not Linux/glibc) or when the
    allocator refused them; the result is then only slower, never different.
    """
    global _done
    if _done:
        return True
    libc = _libc()
    if libc is None:                 # not glibc: nothing to tune
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
                                              (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
                                              (_M_TOP_PAD, _TOP_PAD)))
    _done = ok
    return ok


def release_free_memory() -> bool:
    """Return the free memory :func:`keep_freed_memory` kept to the system (glibc
    ``malloc_trim``); True when something was released. Only memory already freed goes."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return bool(libc.malloc_trim(0))
