"""Numba kernel of the certified TV dual norm's upper-end search (numpy twin: the loop it
replaced, ``tests/test_certify_kernels.py::bisect_fq_twin``).

For a column ``v`` and a fixed TV-dual direction ``d = tv G^T q`` the function
``F(mu) = ||S_{mu b}(v - mu d)||_2 - a mu`` is convex with ``F(mu) <= 0`` proving ``mu``
an upper bound on the dual norm; the smallest such ``mu`` is bracketed by bisection.
"""
from __future__ import annotations

import math

from .._jit import njit, prange


@njit
def _fq(v, d, mu, a, b, nonneg):
    s = 0.0
    thr = mu * b
    for i in range(v.shape[0]):
        u = v[i] - mu * d[i]
        if nonneg:
            u = u - thr
            if u > 0.0:
                s += u * u
        else:
            au = abs(u) - thr
            if au > 0.0:
                s += au * au
    return math.sqrt(s) - a * mu


@njit
def _bisect_column(v, d, r, lft, j, a, b, nonneg, tol, floor, prune, good):
    good[j] = _fq(v, d, r[j], a, b, nonneg) <= 0.0
    if not good[j]:
        return
    rj = r[j]
    lj = lft[j]
    for _ in range(64):
        if rj - lj <= 0.05 * tol * rj:
            break
        if prune and rj <= floor * (1.0 + tol):
            break
        mid = 0.5 * (lj + rj)
        if _fq(v, d, mid, a, b, nonneg) <= 0.0:
            rj = mid
        else:
            lj = mid
    r[j] = rj
    lft[j] = lj


@njit(parallel=True)
def bisect_fq(VT, DT, r, lft, a, b, nonneg, tol, floor, prune, good):
    """Per row j of ``VT``/``DT`` (m, n): ``good[j] = F(r[j]) <= 0``; for good rows, bisect
    ``[lft[j], r[j]]`` (in place, at most 64 halvings) keeping ``F(r) <= 0``, until
    ``r - lft <= 0.05 tol r`` or (``prune``) ``r <= floor (1 + tol)``. Rows in parallel."""
    for j in prange(VT.shape[0]):
        _bisect_column(VT[j], DT[j], r, lft, j, a, b, nonneg, tol, floor, prune, good)


@njit
def bisect_fq_serial(VT, DT, r, lft, a, b, nonneg, tol, floor, prune, good):
    """:func:`bisect_fq` on one thread (a few rows: waking threads costs more than the work)."""
    for j in range(VT.shape[0]):
        _bisect_column(VT[j], DT[j], r, lft, j, a, b, nonneg, tol, floor, prune, good)
