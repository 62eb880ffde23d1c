"""Numba kernels of the certified TV dual norm: the upper-end search (numpy twin: the loop it
replaced, ``tests/test_certify_kernels.py::bisect_fq_twin``) and the whole bracket of each
image, FISTA steps included (numpy twin: ``calseg.certify.dualnorm._dual_tv_cert_numpy``).

For a column ``v`` and a fixed TV-dual direction ``d = tv G^T q`` the function
``F(mu) = ||S_{mu b}(v - mu d)||_2 - a mu`` is convex with ``F(mu) <= 0`` proving ``mu``
an upper bound on the dual norm; the smallest such ``mu`` is bracketed by bisection.
"""
from __future__ import annotations

import math

import numpy as np

from .._jit import helper, njit, prange
from ..prox._dual_kernels import _extrapolate, _fista_step, _momentum, tv_image


@helper
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


@helper
def _bisect_column(v, d, r, lft, j, a, b, nonneg, tol, stop, prune, good):
    good[j] = _fq(v, d, r[j], a, b, nonneg) <= 0.0
    if not good[j]:
        return
    ok, rj, lj = _bisect_scalar(v, d, r[j], lft[j], a, b, nonneg, tol, stop, prune)
    r[j] = rj
    lft[j] = lj


@njit
def bisect_fq_serial(VT, DT, r, lft, a, b, nonneg, tol, stop, prune, good):
    """Per row j of ``VT``/``DT`` (m, n): ``good[j] = F(r[j]) <= 0``; for good rows, narrow
    ``[lft[j], r[j]]`` (in place) keeping ``F(r) <= 0``: with ``prune``, first try ``r = stop``
    (an end at or below ``stop`` is all a branch and bound needs), then bisect (at most 64
    halvings) until ``r - lft <= 0.05 tol r``. The numpy twin's bisection (the fused kernel
    bisects each image itself with :func:`_bisect_scalar`)."""
    for j in range(VT.shape[0]):
        _bisect_column(VT[j], DT[j], r, lft, j, a, b, nonneg, tol, stop, prune, good)



# ------------------------------------------------------------------------------------------
# the whole certified TV dual norm of one image in thread-local buffers (``cert_columns``):
# the same bracket rounds as ``cert_round`` + the FISTA kernel, without gathering images
# between layouts every round (numpy twin: ``calseg.certify.dualnorm._dual_tv_cert_numpy``)


@helper
def _box_down(scale, buf):
    """``scale`` rounded down to ``buf``'s dtype, so that clipping to it keeps ``|p| <= scale``."""
    buf[0] = scale
    s = buf[0]
    if np.float64(s) > scale:
        s = np.nextafter(s, s * 0)
    return s


@helper
def _gtp_padded(P, H, W, g):
    """``g = G^T p`` (float64, C order) for a padded dual ``P`` (K, H + 1, W + 1)."""
    K = P.shape[0]
    for i in range(H):
        for j in range(W):
            s = (np.float64(P[0, i + 1, j + 1]) - np.float64(P[0, i + 1, j])
                 + np.float64(P[1, i + 1, j + 1]) - np.float64(P[1, i, j + 1]))
            if K == 4:
                s += (np.float64(P[2, i + 1, j + 1]) - np.float64(P[2, i, j])
                      + np.float64(P[3, i + 1, j]) - np.float64(P[3, i, j + 1]))
            g[i * W + j] = s


@helper
def _bisect_scalar(v, d, r, lft, a, b, nonneg, tol, stop, prune):
    """Narrow ``[lft, r]`` around the smallest root of ``F`` (see :func:`bisect_fq_serial`):
    ``(good, r, lft)``. With ``prune`` and ``lft < stop < r``, ``F(stop) <= 0`` ends it at
    once (``r = stop``, good); otherwise ``good = F(r) <= 0`` (nothing changes when it fails)
    and the bisection runs."""
    if prune and lft < stop < r:
        if _fq(v, d, stop, a, b, nonneg) <= 0.0:
            return True, stop, lft
        lft = stop
    if not _fq(v, d, r, a, b, nonneg) <= 0.0:
        return False, r, lft
    if prune and r <= stop:
        return True, r, lft
    for _ in range(64):
        if r - lft <= 0.05 * tol * r:
            break
        mid = 0.5 * (lft + r)
        if _fq(v, d, mid, a, b, nonneg) <= 0.0:
            r = mid
        else:
            lft = mid
    return True, r, lft


@helper
def _cert_column(VT, col, lo, hi, XT, rounds, H, W, K, a, b, c, nonneg, tol, floor, cap, prune,
                 max_iter, inner0, L_inv, proto, P, old, at_stop):
    """All bracket rounds of image ``VT[col]`` (see :func:`cert_columns`), starting from the TV
    dual ``P`` (K, H + 1, W + 1) of box half-width ``old`` (0: a zero start), updated in place;
    returns its final half-width. ``at_stop``: the first round solves the TV dual at the
    pruning stop instead of the bracket midpoint (a warm start from a similar image is then
    usually close enough to prove the stop an upper end in one round)."""
    v = VT[col]
    n = H * W
    lc = lo[col]
    hc = hi[col]
    fl = max(floor, lc)
    stop = max(fl * (1.0 + tol), cap) if prune else -np.inf
    if hc <= 0.0 or hc - lc <= tol * hc or hc <= stop:
        return old
    dt = proto.dtype
    v32 = np.empty((H, W), dt)
    for i in range(H):
        for j in range(W):
            v32[i, j] = v[i * W + j]
    Z = np.empty_like(P)
    x32 = np.empty((H, W), dt)
    beta = np.zeros(1, dt)
    buf = np.zeros(1, dt)
    _box_down(L_inv, buf)
    Linv = buf[0]
    g = np.empty(n)
    d = np.empty(n)
    xs = np.empty(n)
    eight = K == 4
    inner = inner0
    used = 0
    nr = 0
    while used < max_iter:
        mu = 0.5 * (lc + hc)
        if at_stop and nr == 0 and lc < stop < hc:
            mu = stop
        scale = mu * c
        s = _box_down(scale, buf)
        if old > 0.0:                                  # rescale the warm start to the new box
            buf[0] = scale / max(old, 1e-300)
            ratio = buf[0]
            Pf = P.reshape(-1)
            for q in range(Pf.shape[0]):
                Pf[q] = min(max(Pf[q] * ratio, -s), s)
        old = scale
        n_in = min(inner, max_iter - used)
        Z[:] = P
        t = 1.0
        for _ in range(n_in):
            ip = _fista_step(v32, Z, P, x32, s, Linv, K)
            t = _momentum(ip, t, beta)
            _extrapolate(Z, P, beta[0])
        used += n_in
        nr += 1
        _gtp_padded(P, H, W, g)
        # upper end first: the smallest root of F_q, q = p / (mu c); under pruning a bracket
        # that falls to the stop is done without its lower end
        den = max(mu, 1e-300)
        for i in range(n):
            d[i] = g[i] / den
        width_old = hc - lc
        stop = max(fl * (1.0 + tol), cap) if prune else -np.inf
        good, r, _ = _bisect_scalar(v, d, hc, min(lc, hc), a, b, nonneg, tol, stop, prune)
        if good:
            hc = min(hc, r)
        if hc <= stop:
            break
        # lower end: the primal point of the prox at mu, normalised
        thr = mu * b
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
            xs[i] = xi
            s2 += xi * xi
            s1 += abs(xi)
            vx += v[i] * xi
        hx = a * math.sqrt(s2) + b * s1 + c * tv_image(xs, H, W, eight)
        val = vx / hx if hx > 0.0 else 0.0
        if val > lc:
            lc = val
            for i in range(n):
                XT[col, i] = xs[i] / hx
        fl = max(fl, lc)
        width = hc - lc
        stop = max(fl * (1.0 + tol), cap) if prune else -np.inf
        if width <= tol * hc or hc <= stop:
            break
        if width > 0.25 * width_old:
            inner = min(2 * inner, 2000)
    lo[col] = lc
    hi[col] = hc
    rounds[col] = nr
    return old


@njit(parallel=True)
def cert_columns(VT, order, lo, hi, XT, rounds, H, W, K, a, b, c, nonneg, tol, floor, cap,
                 prune, max_iter, inner0, L_inv, block, proto):
    """Certified brackets ``lo <= h°(v) <= hi`` of the images ``VT[order]`` (rows of VT (m, n),
    float64), in place; returns the best lower value (at least ``floor``).

    On entry ``lo``/``XT`` hold each image's single-pixel atom and ``hi`` an upper bound (the
    no-TV dual norm). Every image runs its rounds (FISTA on the TV-prox dual at the bracket
    midpoint, warm-started; lower end from the primal point; upper end by bisection of
    ``F_q``, doubling its steps when the bracket shrinks slowly) in thread-local float32
    buffers, until ``hi - lo <= tol hi``, its step budget ``max_iter`` is spent, or (``prune``)
    ``hi <= max(best (1 + tol), cap)`` with ``cap`` raised to the largest ``hi`` of the
    earlier blocks: then it cannot raise ``max(best, cap)``, the branch and bound of
    ``max_k h°(v_k)`` (``max(hi)`` stays a valid upper bound on it). Images go in blocks of ``block`` (in ``order``), in
    parallel inside a block, with the running best of the earlier blocks as the floor: the
    result does not depend on the number of threads. ``rounds`` receives each image's round
    count. The inner solver runs in ``proto``'s dtype (float32 halves its memory traffic and
    limits the dual accuracy to ~1e-6 relative; float64 for tighter tolerances).
    """
    best = floor
    m = order.shape[0]
    nb = (m + block - 1) // block
    for ib in range(nb):
        s0 = ib * block
        s1 = min(s0 + block, m)
        fl = best
        cp = cap
        for q in prange(s0, s1):
            P = np.zeros((K, H + 1, W + 1), proto.dtype)
            _cert_column(VT, order[q], lo, hi, XT, rounds, H, W, K, a, b, c, nonneg, tol, fl,
                         cp, prune, max_iter, inner0, L_inv, proto, P, 0.0, False)
        for q in range(s0, s1):
            if lo[order[q]] > best:
                best = lo[order[q]]
            if prune and hi[order[q]] > cap:
                cap = hi[order[q]]
    return best


@njit(parallel=True)
def cert_rows_warm(VT, lo, hi, XT, rounds, H, W, K, a, b, c, nonneg, tol, floor, cap, prune,
                   max_iter, inner0, L_inv, block, wave, proto):
    """:func:`cert_columns` on images that follow each other closely (rows of a residual
    correlation in time order): runs of ``block`` consecutive images are processed in order,
    each starting from the TV dual of the one before (rescaled to its box), so an image much
    like its predecessor starts near its solution. Runs go in parallel in waves of ``wave``
    runs, the floor and cap advancing between waves (results independent of the number of
    threads). Returns the best lower value."""
    best = floor
    m = VT.shape[0]
    nb = (m + block - 1) // block
    for w0 in range(0, nb, wave):
        w1 = min(w0 + wave, nb)
        fl = best
        cp = cap
        for ib in prange(w0, w1):
            P = np.zeros((K, H + 1, W + 1), proto.dtype)
            old = 0.0
            for q in range(ib * block, min((ib + 1) * block, m)):
                old = _cert_column(VT, q, lo, hi, XT, rounds, H, W, K, a, b, c, nonneg, tol,
                                   fl, cp, prune, max_iter, inner0, L_inv, proto, P, old,
                                   old > 0.0)
        for q in range(w0 * block, min(w1 * block, m)):
            if lo[q] > best:
                best = lo[q]
            if prune and hi[q] > cap:
                cap = hi[q]
    return best


@njit(parallel=True)
def single_pixel_rows(VT, cost, nonneg, lo, XT):
    """Best single-pixel atom ``±e_i / cost_i`` of each row of ``VT`` (m, n):
    ``lo[j] = max_i w_i^+ / cost_i`` (first maximiser), ``XT[j]`` (zeroed by the caller) the
    atom (left 0 when the value is 0). Rows in parallel."""
    m, n = VT.shape
    for j in prange(m):
        best = -1.0
        arg = 0
        for i in range(n):
            w = VT[j, i]
            if nonneg:
                w = max(w, 0.0)
            else:
                w = abs(w)
            t = w / cost[i]
            if t > best:
                best = t
                arg = i
        lo[j] = best
        if best > 0.0:
            XT[j, arg] = (1.0 if VT[j, arg] >= 0.0 else -1.0) / cost[arg]


@njit(parallel=True)
def line_sumsq(W, t, absolute, rows, colparts):
    """Row and column sums of squares of ``(f(W) - t)+`` with ``f = |.|`` (``absolute``) or the
    identity, without forming it: ``rows`` (T,) receives the row sums, ``colparts`` (nb, P)
    (zeroed by the caller) partial column sums of ``nb`` row bands (sum them over axis 0)."""
    T, P = W.shape
    nb = colparts.shape[0]
    for b in prange(nb):
        s0 = b * T // nb
        s1 = (b + 1) * T // nb
        cp = colparts[b]
        for i in range(s0, s1):
            acc = 0.0
            for j in range(P):
                x = np.float64(W[i, j])
                if absolute:
                    x = abs(x)
                x -= t
                if x > 0.0:
                    x2 = x * x
                    acc += x2
                    cp[j] += x2
            rows[i] = acc


@njit(parallel=True)
def line_pos_stats(W, sign, nonneg, row_ss, row_max, col_ss, col_max):
    """Sums of squares and maxima of ``v = (sign W)^+`` (``|W|`` if not ``nonneg``) along every
    row and column of W (T, P) in one pass, without forming v: ``row_ss``, ``row_max`` (T,);
    ``col_ss``, ``col_max`` (nb, P), zeroed by the caller, receive per-band partial results of
    ``nb`` row bands (sum / max them over axis 0)."""
    T, P = W.shape
    nb = col_ss.shape[0]
    for bd in prange(nb):
        s0 = bd * T // nb
        s1 = (bd + 1) * T // nb
        css = col_ss[bd]
        cmx = col_max[bd]
        for i in range(s0, s1):
            acc = 0.0
            mx = 0.0
            if nonneg:                   # branch-free inner loops (they vectorize)
                for j in range(P):
                    x = max(sign * np.float64(W[i, j]), 0.0)
                    acc += x * x
                    css[j] += x * x
                    mx = max(mx, x)
                    cmx[j] = max(cmx[j], x)
            else:
                for j in range(P):
                    x = abs(np.float64(W[i, j]))
                    acc += x * x
                    css[j] += x * x
                    mx = max(mx, x)
                    cmx[j] = max(cmx[j], x)
            row_ss[i] = acc
            row_max[i] = mx


@helper
def _entry(W, k, j, sign, nonneg):
    x = sign * float(W[k, j])
    return x if nonneg else abs(x)


@njit(parallel=True)
def rows_no_tv(W, sign, a, b, nonneg, cost, ub, lo):
    """Per row ``k`` of ``W`` (n, P), with ``v = (sign W[k])^+`` (``|W[k]|`` if not nonneg):

    * ``ub[k]``: the dual norm of ``a ||.||_2 + b ||.||_1`` (+ nonnegativity) at v, ``a, b > 0``
      (numpy twin: :func:`calseg.certify.dualnorm._dual_no_tv`): the root ``mu`` of
      ``||(v - b mu)^+||_2 = a mu``. The single-pixel atom ``e_j / (a + b)`` gives
      ``mu >= max v / (a + b)``, so only the entries above ``b max v / (a + b)`` can be in the
      root's support: those are sorted and the segment formula solved on them.
    * ``lo[k]``: ``max_j v_j / cost_j``, the best single-pixel atom of the full norm (numpy
      twin: :func:`calseg.certify.dualnorm.single_pixel_lower`).

    Reads each row of W in place (no float64 copy of the block); float64 arithmetic.
    """
    n, P = W.shape
    for k in prange(n):
        vmax = 0.0
        best_lo = 0.0
        for j in range(P):
            x = _entry(W, k, j, sign, nonneg)
            vmax = max(vmax, x)
            best_lo = max(best_lo, x / cost[j])
        lo[k] = best_lo
        if vmax <= 0.0:
            ub[k] = 0.0
            continue
        thr = b * vmax / (a + b)
        buf = np.empty(P)
        m = 0
        rest = 0.0                       # the largest entry left out (<= thr)
        for j in range(P):
            x = _entry(W, k, j, sign, nonneg)
            if x > thr:
                buf[m] = x
                m += 1
            elif x > rest:
                rest = x
        top = np.sort(buf[:m])
        s1 = 0.0
        s2 = 0.0
        best_mu = 0.0
        best_viol = np.inf
        for q in range(m):
            v = top[m - 1 - q]
            s1 += v
            s2 += v * v
            disc = max(b * b * (s1 * s1 - (q + 1) * s2) + a * a * s2, 0.0)
            mu = s2 / (b * s1 + math.sqrt(disc))
            nxt = top[m - 2 - q] if q + 1 < m else rest
            viol = max(nxt - b * mu, 0.0) + max(b * mu - v, 0.0)
            if viol < best_viol:
                best_viol = viol
                best_mu = mu
            if viol == 0.0:
                break
        ub[k] = best_mu
