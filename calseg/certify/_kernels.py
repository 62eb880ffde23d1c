"""Numba kernels of the certified TV dual norm: the upper-end search (numpy twin: the loop it
replaced, ``tests/test_certify_kernels.py::bisect_fq_twin``) and the per-round column work
around the FISTA steps (numpy twin: ``calseg.certify.dualnorm._dual_tv_cert_numpy``).

For a column ``v`` and a fixed TV-dual direction ``d = tv G^T q`` the function
``F(mu) = ||S_{mu b}(v - mu d)||_2 - a mu`` is convex with ``F(mu) <= 0`` proving ``mu``
an upper bound on the dual norm; the smallest such ``mu`` is bracketed by bisection.
"""
from __future__ import annotations

import math

import numpy as np

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


# ------------------------------------------------------------------------------------------
# one round of the certified TV dual norm (``calseg.certify.dualnorm._dual_tv_cert``):
# everything after the FISTA steps, per column (numpy twin: ``_dual_tv_cert_numpy``).
# Columns are rows of ``VT`` (m, n), images H x W in C order; the TV duals ``P`` are the
# FISTA kernel's family arrays (H, W-1, na), (H-1, W, na) [, (H-1, W-1, na) x 2] in the
# order of ``dualnorm._grad``, one column per active image.


@njit
def _gtp_block(P, j0, j1, H, W, D):
    """``D[j] = G^T p`` (float64) for the columns ``j0 <= j < j1`` of the family arrays ``P``.

    One stencil per pixel with the columns innermost: the families store the columns along
    their last axis, so a block reads whole cache lines and writes each ``D`` entry once
    (measured 2-4x faster than one column at a time or accumulating family by family)."""
    eight = len(P) == 4
    P0 = P[0]
    P1 = P[1]
    for i in range(H):
        for k in range(W):
            e = i * W + k
            for j in range(j0, j1):
                s = 0.0
                if k < W - 1:
                    s += P0[i, k, j]
                if k > 0:
                    s -= P0[i, k - 1, j]
                if i < H - 1:
                    s += P1[i, k, j]
                if i > 0:
                    s -= P1[i - 1, k, j]
                if eight:
                    if i < H - 1:
                        if k < W - 1:
                            s += P[2][i, k, j]
                        if k > 0:
                            s += P[3][i, k - 1, j]
                    if i > 0:
                        if k > 0:
                            s -= P[2][i - 1, k - 1, j]
                        if k < W - 1:
                            s -= P[3][i - 1, k, j]
                D[j, e] = s


@njit
def _tv_column(x, H, W, eight):
    """Grid TV ``sum |x_a - x_b|`` of an image ``x`` (n,) in C order."""
    s = 0.0
    for i in range(H):
        for k in range(W - 1):
            s += abs(x[i * W + k] - x[i * W + k + 1])
    for i in range(H - 1):
        for k in range(W):
            s += abs(x[i * W + k] - x[(i + 1) * W + k])
    if eight:
        for i in range(H - 1):
            for k in range(W - 1):
                s += abs(x[i * W + k] - x[(i + 1) * W + k + 1])
                s += abs(x[i * W + k + 1] - x[(i + 1) * W + k])
    return s


@njit
def _round_lower(VT, act, mu, H, W, eight, a, b, c, nonneg, lo, XT, D, vals, j):
    """Primal point of column ``j`` (``D[j] = G^T p`` on entry): ``x = S_{mu b}(v - G^T p)``, ``vals[j] = <v, x> / h(x)``
    (0 when ``h(x) = 0``); improves ``lo``/``XT`` of image ``act[j]``; ``D[j] = G^T p / mu``."""
    col = act[j]
    v = VT[col]
    g = D[j]                                               # G^T p, from _gtp_block
    n = H * W
    x = np.empty(n)
    thr = mu[j] * b
    s2 = 0.0
    s1 = 0.0
    vx = 0.0
    for i in range(n):
        u = v[i] - g[i]
        if nonneg:
            xi = u - thr
            if xi < 0.0:
                xi = 0.0
        else:
            au = abs(u) - thr
            if au > 0.0:
                xi = au if u > 0.0 else -au
            else:
                xi = 0.0
        x[i] = xi
        s2 += xi * xi
        s1 += abs(xi)
        vx += v[i] * xi
    h = a * math.sqrt(s2) + b * s1 + c * _tv_column(x, H, W, eight)
    val = vx / h if h > 0.0 else 0.0
    vals[j] = val
    if val > lo[col]:
        lo[col] = val
        for i in range(n):
            XT[col, i] = x[i] / h
    den = max(mu[j], 1e-300)
    for i in range(n):
        g[i] = g[i] / den


@njit
def _round_upper(VT, act, D, a, b, nonneg, tol, floor, best, prune, lo, hi, r, lft, good,
                 keep, slow, j):
    """Bisection of ``F_q`` for column ``j`` (direction ``D[j]``), then its bookkeeping."""
    col = act[j]
    r[j] = hi[col]
    lft[j] = min(lo[col], r[j])
    _bisect_column(VT[col], D[j], r, lft, j, a, b, nonneg, tol, floor, prune, good)
    width_old = hi[col] - lo[col]
    if good[j]:
        hi[col] = min(hi[col], r[j])
    width = hi[col] - lo[col]
    k = width > tol * hi[col]
    if prune:
        k = k and hi[col] > best * (1.0 + tol)
    keep[j] = k
    slow[j] = k and width > 0.25 * width_old


@njit(parallel=True)
def cert_round(VT, act, P, mu, H, W, a, b, c, nonneg, tol, best, prune, lo, hi, XT, D, vals,
               r, lft, good, keep, slow, best_out):
    """One round of the certified TV dual norm after the FISTA steps, in place.

    VT (m, n) float64 columns; act (na,) int64 active columns; P the FISTA duals (``p = mu c
    q``, families of :func:`_gtp_column`); mu (na,) bracket midpoints; lo, hi (m,) brackets and
    XT (m, n) maximisers (updated for ``act``); best (float, may be -inf) the running best lower
    value, ``best_out[0]`` receives it after this round's lower ends. Scratch/outputs per
    active column: D (>= na, n), vals, r, lft (na,) float64, good, keep, slow (na,) bool.
    Lower ends of all columns first (in parallel), then the best, then the bisections.
    """
    na = act.shape[0]
    eight = len(P) == 4
    bs = 64                              # columns per G^T p block (measured)
    for blk in prange((na + bs - 1) // bs):
        j0 = blk * bs
        j1 = min(j0 + bs, na)
        _gtp_block(P, j0, j1, H, W, D)
        for j in range(j0, j1):
            _round_lower(VT, act, mu, H, W, eight, a, b, c, nonneg, lo, XT, D, vals, j)
    for j in range(na):
        if vals[j] > best:
            best = vals[j]
    best_out[0] = best
    floor = best if math.isfinite(best) else -1.0
    for j in prange(na):
        _round_upper(VT, act, D, a, b, nonneg, tol, floor, best, prune, lo, hi, r, lft, good,
                     keep, slow, j)


@njit
def cert_round_serial(VT, act, P, mu, H, W, a, b, c, nonneg, tol, best, prune, lo, hi, XT, D,
                      vals, r, lft, good, keep, slow, best_out):
    """:func:`cert_round` on one thread (a few columns)."""
    na = act.shape[0]
    _gtp_block(P, 0, na, H, W, D)
    for j in range(na):
        _round_lower(VT, act, mu, H, W, len(P) == 4, a, b, c, nonneg, lo, XT, D, vals, j)
    for j in range(na):
        if vals[j] > best:
            best = vals[j]
    best_out[0] = best
    floor = best if math.isfinite(best) else -1.0
    for j in range(na):
        _round_upper(VT, act, D, a, b, nonneg, tol, floor, best, prune, lo, hi, r, lft, good,
                     keep, slow, j)


@njit(parallel=True)
def gather_scale(S, idx, ratio, out):
    """``out[:, :, j] = S[:, :, idx[j]] * ratio[j]`` for S (H, W, m), out (H, W, len(idx))."""
    for i in prange(S.shape[0]):
        for k in range(S.shape[1]):
            for j in range(idx.shape[0]):
                out[i, k, j] = S[i, k, idx[j]] * ratio[j]


@njit(parallel=True)
def single_pixel_atoms(V, cost, nonneg, VT, lo, XT):
    """Columns of ``V`` (n, m) copied to the rows of ``VT`` (m, n), and the best single-pixel
    atom ``±e_i / cost_i`` of each: ``lo[j] = max_i w_i^+ / cost_i`` (first maximiser),
    ``XT[j]`` (zeroed by the caller) the atom (left 0 when the value is 0).

    Blocks of columns in parallel, rows of ``V`` read contiguously."""
    n, m = V.shape
    bs = 64
    for blk in prange((m + bs - 1) // bs):
        j0 = blk * bs
        j1 = min(j0 + bs, m)
        best = np.full(j1 - j0, -1.0)
        arg = np.zeros(j1 - j0, np.int64)
        for i in range(n):
            ci = cost[i]
            for j in range(j0, j1):
                w = V[i, j]
                VT[j, i] = w
                if nonneg:
                    w = max(w, 0.0)
                else:
                    w = abs(w)
                t = w / ci
                if t > best[j - j0]:
                    best[j - j0] = t
                    arg[j - j0] = i
        for j in range(j0, j1):
            lo[j] = best[j - j0]
            bi = arg[j - j0]
            if lo[j] > 0.0:
                XT[j, bi] = (1.0 if V[bi, j] >= 0.0 else -1.0) / cost[bi]


@njit
def gather_scale_serial(S, idx, ratio, out):
    """:func:`gather_scale` on one thread."""
    for i in range(S.shape[0]):
        for k in range(S.shape[1]):
            for j in range(idx.shape[0]):
                out[i, k, j] = S[i, k, idx[j]] * ratio[j]
