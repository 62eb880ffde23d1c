"""The one place numba is configured.

Kernels live in ``_kernels.py`` modules and are decorated with :func:`njit` from here (with
:func:`helper` when other kernels call them), so every kernel is cached on disk (a second run
does not recompile), uses the same floating-point flags and gives the same bits in every
process. ``fastmath`` keeps IEEE NaN/inf semantics (no ``nnan``/``ninf``).
Importing this module imports numba; the CLI must never import it at load time.
"""
import os

# Idle OpenMP threads sleep instead of spinning between parallel regions: on a machine shared
# with other jobs (or with calseg's own worker processes) spinning threads steal the cores the
# work needs (a 512x512 TV prox: 22 s spinning vs 10 s passive at load 10). Set before numba
# starts its threading layer; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numba  # noqa: E402

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def njit(*args, parallel=False, **kwargs):
    """``numba.njit`` with calseg's flags: ``cache=True``, shared fastmath set, no GIL."""
    kwargs.setdefault("cache", True)
    kwargs.setdefault("fastmath", set(FASTMATH))  # numba wants a set, not a frozenset
    kwargs.setdefault("nogil", True)
    kwargs["parallel"] = parallel
    if args and callable(args[0]) and len(args) == 1:
        return numba.njit(**kwargs)(args[0])
    return numba.njit(*args, **kwargs)


def helper(fn=None, **kwargs):
    """:func:`njit` for a function that other kernels call: numba inlines its body into each
    caller (``inline="always"``, at numba's IR level), so every kernel is one self-contained
    machine-code function.

    Without it, the caller's module links a copy of the callee, which LLVM optimises again, and
    with ``reassoc`` that copy can sum in a different order from the callee's own compiled
    code. Both copies define the same symbol, and a call binds to whichever was loaded first,
    so the result depended on the process's history: compiled now or loaded from the cache,
    helper called on its own before or not. A tile run in a worker then differed in its last
    bits from the same tile run in the main process. Callers from Python are unaffected.
    """
    kwargs["inline"] = "always"
    return njit(**kwargs) if fn is None else njit(fn, **kwargs)


prange = numba.prange
