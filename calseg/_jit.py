"""The one place numba is configured.

Kernels live in ``_kernels.py`` modules and are decorated with :func:`njit` from here, so
every kernel is cached on disk (a second run does not recompile) and uses the same
floating-point flags. ``fastmath`` keeps IEEE NaN/inf semantics (no ``nnan``/``ninf``).
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


prange = numba.prange
