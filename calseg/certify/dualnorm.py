"""Exact dual norm of calseg's composite column norm (METHOD section 5.1).

For ``h(x) = a ||x||_2 + b ||x||_1 + c TV_G(x)`` (``+ indicator(x >= 0)``) with ``a > 0`` the
dual norm ``h°(w) = max{<w, x> : h(x) <= 1}`` is the unique root ``mu* > 0`` of

    f(mu) = ||prox_{mu g}(w)||_2 - a mu,        g = h - a ||.||_2,

because ``||prox_{mu g}(w)|| = dist(w, mu dg(0))`` is convex and nonincreasing in ``mu``. The
maximiser is ``x* = xh / h(xh)`` with ``xh = prox_{mu* g}(w)``.

* Without TV the root is found in closed form (sort, cumulative sums, one quadratic per
  column): :func:`_dual_no_tv`.
* With TV every evaluation of ``f`` needs one TV prox (``CompositeNorm(0, b, c, ...).prox``,
  warm-started). The root is bracketed by the single-pixel lower bound and the no-TV dual
  norm (an upper bound, the TV-free ball being larger) and refined by a safeguarded secant
  that exploits convexity: the secant through two points left of the root undershoots it
  and the chord to a point right of it overshoots it, so both stay valid bracket ends
  (bisection takes over when a step does not halve the bracket).

The accuracy of the TV case is ``tol`` relative, up to the accuracy of the TV prox itself
(the norm's ``tv_tol``; the prox used here is built with ``tv_tol <= tol``).
"""
from __future__ import annotations

import numpy as np

from calseg.errors import ConfigError, InputError

__all__ = ["dual_norm"]

# Closed-form dual norms are computed on blocks of this many columns to bound the
# (n, block) temporaries of the sort/cumsum.
_BLOCK = 256
_TOPK = 64


def dual_norm(W, norm, *, tol=1e-8, warm=None, method="dual", max_iter=20000):
    """Column-wise dual norm ``h°(w) = max{<w, x> : h(x) <= 1}`` and its maximiser.

    Parameters
    ----------
    W : ndarray of shape (n,) or (n, m)
        One vector per column (an image flattened in C order, or a time series).
    norm : CompositeNorm
        ``h(x) = l2 ||x||_2 + l1 ||x||_1 + tv TV(x)`` (``+ indicator(x >= 0)`` when
        ``norm.nonnegative``). ``l2 > 0`` is required when ``tv > 0``; with ``l2 = 0`` and
        ``tv = 0`` the pure-l1 case is solved exactly (``max_i w_i^+ / l1``).
    tol : float, keyword-only
        Relative accuracy of ``mu`` (TV case; the other cases are closed form).
    warm : object or None, keyword-only
        ``method="prox"`` only: warm-start state of the TV prox (from ``norm.prox``) for the
        same number of columns.
    method : {"dual", "prox"}, keyword-only
        TV case only. ``"dual"`` (default): the bracket is certified on both sides - the lower
        end by a feasible point, the upper end by a dual-feasible TV variable ``q``
        (``mu (l1 s + tv G^T q) in mu dg(0)``) obtained by FISTA on the TV-prox dual, so ``mu``
        is a guaranteed upper bound whatever the inner accuracy. ``"prox"``: the root of
        ``f`` bracketed with ``CompositeNorm(0, l1, tv, ...).prox`` (METHOD 5.1 verbatim),
        exact up to the TV prox's own accuracy; slower, kept as an independent path.
    max_iter : int, keyword-only
        ``method="dual"``: budget of inner FISTA iterations (all rounds); when it runs out
        before the bracket meets ``tol``, ``mu`` stays a valid upper bound and a
        :class:`~calseg.errors.ConvergenceWarning` is issued.

    Returns
    -------
    mu : ndarray of shape (m,), float64
        The dual norms (upper end of the final bracket, so ``mu >= h°(w)`` up to the TV-prox
        accuracy). 0 for columns whose dual norm is 0 (e.g. ``w <= 0`` with nonnegativity).
    X : ndarray of shape (n, m) (``(n,)`` for 1-D input), float64
        Maximisers with ``h(x) = 1`` (0 where ``mu = 0``); ``<w, x> >= mu (1 - tol)``.

    Notes
    -----
    Cheap bounds used to bracket the TV case:
    ``max_i w_i^+ / (l2 + l1 + tv deg_i) <= h°(w) <= h_noTV°(w) <= min(||w^+|| / l2, max w^+ / l1)``.
    """
    W2 = np.asarray(W)
    if W2.ndim not in (1, 2):
        raise InputError(f"W must have shape (n,) or (n, m), got shape {W2.shape}")
    was_1d = W2.ndim == 1
    W2 = np.asarray(W2[:, None] if was_1d else W2, dtype=np.float64)
    if not np.all(np.isfinite(W2)):
        raise InputError("W contains NaN or infinite values")
    if not (np.isfinite(tol) and 0 < tol < 1):
        raise ConfigError(f"tol must be in (0, 1), got {tol!r}")
    if method not in ("dual", "prox"):
        raise ConfigError(f"method must be 'dual' or 'prox', got {method!r}")
    mu, X, _, _ = _dual(W2, norm, tol=tol, warm=warm, method=method, max_iter=max_iter)
    return (mu, X[:, 0]) if was_1d else (mu, X)


# ------------------------------------------------------------------------------------------
# internals


def _weights(norm):
    a, b, c = float(norm.l2), float(norm.l1), float(norm.tv)
    if min(a, b, c) < 0:
        raise ConfigError(f"norm weights must be >= 0, got l2={a}, l1={b}, tv={c}")
    return a, b, c


def _dual(W, norm, *, tol, warm=None, floor=None, prune=False, method="dual", max_iter=20000):
    """Dual norms of the columns of float64 ``W`` (n, m).

    Returns ``(hi, X, lo_val, warm)``: ``hi`` upper ends, ``X`` maximisers (h = 1), ``lo_val``
    certified lower values ``<w, x>``. With ``prune=True`` columns whose bracket falls below
    the running maximum of the lower values (and ``floor``) are abandoned early: their
    ``hi`` is then only an upper bound that is <= that maximum (branch and bound for
    ``max_k h°(w_k)``).
    """
    a, b, c = _weights(norm)
    nonneg = bool(norm.nonnegative)
    n, m = W.shape
    if c == 0.0 or n == 1:
        if a == 0.0:
            if b == 0.0:
                raise ConfigError("the norm is identically 0 (l2 = l1 = tv = 0); its dual norm is infinite")
            mu, X = _dual_l1(W, b, nonneg)
        else:
            mu, X = _dual_no_tv(W, a, b, nonneg)
        return mu, X, _values(W, X), warm
    if a == 0.0:
        raise ConfigError(
            f"the dual norm of a norm with tv = {c} > 0 needs l2 > 0 (got l2 = 0); "
            "the pure l1 + TV case is not supported")
    if method == "dual":
        lo, hi, X, best = _dual_tv_cert(W, norm, tol=tol, floor=floor, prune=prune,
                                        max_iter=max_iter)
        if not prune and np.any(hi - lo > tol * hi):
            import warnings

            from calseg.errors import ConvergenceWarning
            warnings.warn(f"dual_norm: {int(np.sum(hi - lo > tol * hi))} column(s) did not reach "
                          f"tol={tol} within max_iter={max_iter}; mu is still an upper bound",
                          ConvergenceWarning, stacklevel=3)
        return hi, X, lo, warm
    return _dual_tv(W, norm, a, b, c, nonneg, tol=tol, warm=warm, floor=floor, prune=prune)


def _values(W, X):
    return np.einsum("ij,ij->j", W, X)


def _dual_l1(W, b, nonneg):
    """Dual of ``b ||.||_1`` (+ nonnegativity): ``max_i w_i^+ / b``, maximiser ``e_i / b``."""
    V = np.maximum(W, 0.0) if nonneg else np.abs(W)
    idx = np.argmax(V, axis=0)
    cols = np.arange(W.shape[1])
    mu = V[idx, cols] / b
    X = np.zeros_like(W)
    sgn = np.where(W[idx, cols] >= 0, 1.0, -1.0)
    X[idx, cols] = np.where(mu > 0, sgn / b, 0.0)
    return mu, X


def _segment_root(Vs, after, a, b):
    """Root of ``sum_i (v_i - b mu)_+^2 = a^2 mu^2`` given the largest values ``Vs`` (k, m) sorted
    descending and the next value ``after`` (m,); returns ``(mu, violation)`` (violation > 0
    means the root needs more than k values)."""
    k = np.arange(1, Vs.shape[0] + 1, dtype=np.float64)[:, None]
    S1 = np.cumsum(Vs, axis=0)
    S2 = np.cumsum(Vs * Vs, axis=0)
    disc = b * b * (S1 * S1 - k * S2) + a * a * S2
    with np.errstate(invalid="ignore", divide="ignore"):
        mk = S2 / (b * S1 + np.sqrt(np.maximum(disc, 0.0)))
    mk = np.where((disc >= -1e-12 * a * a * S2) & (S2 > 0), mk, np.nan)
    nxt = np.vstack([Vs[1:], after[None, :]])
    # violation of v_{k+1} <= b mu_k <= v_k, relative to the column scale
    scale = np.maximum(Vs[:1], 1e-300)
    viol = (np.maximum(nxt - b * mk, 0.0) + np.maximum(b * mk - Vs, 0.0)) / scale
    viol = np.where(np.isnan(viol), np.inf, viol)
    best = np.argmin(viol, axis=0)
    cols = np.arange(Vs.shape[1])
    ms = mk[best, cols]
    vb = viol[best, cols]
    zero = Vs[0] <= 0
    return np.where(zero | ~np.isfinite(ms), 0.0, ms), np.where(zero, 0.0, vb)


def _dual_no_tv(W, a, b, nonneg, want_x=True):
    """Closed-form dual of ``a ||.||_2 + b ||.||_1`` (+ nonnegativity), ``a > 0``.

    On the segment where the k largest ``v = w^+`` (or ``|w|``) exceed ``b mu`` the root
    equation ``sum_{i<=k} (v_i - b mu)^2 = a^2 mu^2`` is a quadratic whose relevant root is
    ``mu_k = S2 / (b S1 + sqrt(b^2 (S1^2 - k S2) + a^2 S2))`` (S1, S2: sums of the k largest
    v and v^2); the right k is the one whose ``mu_k`` lies in its own segment.
    """
    n, m = W.shape
    mu = np.zeros(m)
    V = np.maximum(W, 0.0) if nonneg else np.abs(W)
    if b == 0.0:
        mu = np.sqrt(np.einsum("ij,ij->j", V, V)) / a
    else:
        # the root usually involves few entries: try the top _TOPK first (O(n) partition),
        # fall back to a full sort for the columns whose root lies beyond them
        K = min(n, _TOPK)
        for s in range(0, m, _BLOCK):
            Vb = V[:, s:s + _BLOCK]
            if K < n:
                part = -np.partition(-Vb, K, axis=0)
                top, after = -np.sort(-part[:K], axis=0), part[K]
            else:
                top, after = -np.sort(-Vb, axis=0), np.zeros(Vb.shape[1])
            ms, viol = _segment_root(top, after, a, b)
            bad = np.flatnonzero(viol > 1e-9)
            if bad.size and K < n:
                ms[bad], _ = _segment_root(-np.sort(-Vb[:, bad], axis=0), np.zeros(bad.size), a, b)
            mu[s:s + _BLOCK] = ms
    if not want_x:
        return mu, None
    if nonneg:
        Xh = np.maximum(W - b * mu, 0.0)
    else:
        Xh = np.sign(W) * np.maximum(np.abs(W) - b * mu, 0.0)
    h = a * np.sqrt(np.einsum("ij,ij->j", Xh, Xh)) + b * np.abs(Xh).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        X = np.where(h > 0, Xh / np.where(h > 0, h, 1.0), 0.0)
    return mu, X


def degrees(image_shape, connectivity):
    """Number of grid neighbours of each pixel (C order), shape ``(H * W,)``."""
    from calseg.prox.norms import grid_edges

    H, W = int(image_shape[0]), int(image_shape[1])
    e = grid_edges((H, W), connectivity)
    return np.bincount(e.ravel(), minlength=H * W).astype(np.float64)


def pixel_costs(norm, n):
    """``h(e_i)`` for each of the ``n`` pixels: ``a + b + c * degree_i`` (float64)."""
    a, b, c = _weights(norm)
    if c > 0 and n > 1:
        return a + b + c * degrees(norm.image_shape, norm.connectivity)
    return np.full(n, a + b)


def single_pixel_lower(W, norm):
    """``max_i w_i^+ / h(e_i)`` per column: the best single-pixel atom, a lower bound on h°."""
    V = np.maximum(W, 0.0) if norm.nonnegative else np.abs(W)
    return (V / pixel_costs(norm, W.shape[0])[:, None]).max(axis=0)


def _g_norm(norm, tol):
    """The norm ``g = h - l2 ||.||_2`` as a CompositeNorm with a TV tolerance <= ``tol``."""
    kw = dict(nonnegative=bool(norm.nonnegative), image_shape=norm.image_shape,
              connectivity=norm.connectivity)
    for name in ("tv_method", "tv_max_iter"):
        if hasattr(norm, name):
            kw[name] = getattr(norm, name)
    kw["tv_tol"] = min(float(getattr(norm, "tv_tol", tol)), tol)
    if kw.get("tv_max_iter") is not None:
        kw["tv_max_iter"] = max(int(kw["tv_max_iter"]), 2000)
    return type(norm)(0.0, norm.l1, norm.tv, **kw)


def _slice_warm(warm, keep, m):
    """Restrict an opaque warm state to the columns ``keep`` if its layout allows it."""
    if warm is None:
        return None
    if isinstance(warm, np.ndarray):
        return warm[..., keep] if warm.ndim >= 1 and warm.shape[-1] == m else None
    if isinstance(warm, (tuple, list)):
        parts = [_slice_warm(w, keep, m) if w is not None else None for w in warm]
        if any(p is None and w is not None for p, w in zip(parts, warm)):
            return None
        return type(warm)(parts)
    return None


def _dual_tv(W, norm, a, b, c, nonneg, *, tol, warm, floor, prune, max_eval=80):
    n, m = W.shape
    g = _g_norm(norm, tol)
    V = np.maximum(W, 0.0) if nonneg else W
    f0 = np.sqrt(np.einsum("ij,ij->j", V, V))              # f(0+) = ||w^+||
    hi, _ = _dual_no_tv(W, a, b, nonneg)                     # f(hi) <= 0
    lo = single_pixel_lower(W, norm)                         # f(lo) >= 0
    lo = np.minimum(lo, hi)
    X = np.zeros((n, m))
    lo_val = np.zeros(m)
    # evaluated points: two left (l2 < l1, f >= 0) and one right (r, f <= 0)
    l2p, fl2 = np.zeros(m), f0.copy()
    l1p, fl1 = np.full(m, np.nan), np.full(m, np.nan)
    rp, fr = hi.copy(), np.full(m, np.nan)
    blo, bhi = lo.copy(), hi.copy()
    width_prev = bhi - blo
    active = np.flatnonzero(hi > 0)
    best_low = -np.inf if floor is None else float(floor)
    # first evaluation at the single-pixel bound, then iterate
    nxt = blo.copy()
    w_state, w_cols = warm, np.arange(m)
    for _ in range(max_eval):
        if active.size == 0:
            break
        if w_cols.size != active.size or np.any(w_cols != active):
            w_state = _slice_warm(w_state, np.searchsorted(w_cols, active), w_cols.size) \
                if np.all(np.isin(active, w_cols)) else None
            w_cols = active
        mus = np.maximum(nxt[active], 1e-300)
        P, w_state = g.prox(W[:, active], mus, warm=w_state)
        P = np.asarray(P, dtype=np.float64).reshape(n, active.size)
        fm = np.sqrt(np.einsum("ij,ij->j", P, P)) - a * mus
        left = fm > 0
        # left points: shift and record maximiser candidates
        la = active[left]
        if la.size:
            l2p[la], fl2[la] = np.where(np.isnan(l1p[la]), l2p[la], l1p[la]), \
                np.where(np.isnan(fl1[la]), fl2[la], fl1[la])
            l1p[la], fl1[la] = mus[left], fm[left]
            blo[la] = np.maximum(blo[la], mus[left])
            Pl = P[:, left]
            h = np.asarray(norm.value(Pl), dtype=np.float64).reshape(-1)
            ok = h > 0
            Xl = np.where(ok, Pl / np.where(ok, h, 1.0), 0.0)
            vals = _values(W[:, la], Xl)
            better = vals > lo_val[la]
            X[:, la[better]] = Xl[:, better]
            lo_val[la[better]] = vals[better]
        ra = active[~left]
        if ra.size:
            rp[ra], fr[ra] = mus[~left], fm[~left]
            bhi[ra] = np.minimum(bhi[ra], mus[~left])
        # convexity-derived bracket ends
        act = active
        has_l1 = ~np.isnan(l1p[act])
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (fl1[act] - fl2[act]) / (l1p[act] - l2p[act])
            xl = np.where(has_l1 & (slope < 0), l1p[act] - fl1[act] / slope, blo[act])
            chord_ok = has_l1 & ~np.isnan(fr[act]) & (fr[act] < fl1[act])
            xr = np.where(chord_ok, l1p[act] - fl1[act] * (rp[act] - l1p[act]) / (fr[act] - fl1[act]),
                          bhi[act])
        xl = np.where(np.isfinite(xl), xl, blo[act])
        xr = np.where(np.isfinite(xr), xr, bhi[act])
        blo[act] = np.clip(xl, blo[act], bhi[act])
        bhi[act] = np.clip(xr, blo[act], bhi[act])
        width = bhi[act] - blo[act]
        if np.any(has_l1):
            best_low = max(best_low, float(np.max(lo_val[act])))
        done = width <= tol * bhi[act]
        if prune:
            done |= bhi[act] <= best_low
        # next point: the secant undershoot (left of the root) unless the bracket stalled
        stalled = width > 0.5 * width_prev[act]
        cand = np.where(has_l1 & ~stalled, blo[act] + 1e-3 * width, 0.5 * (blo[act] + bhi[act]))
        nxt[act] = cand
        width_prev[act] = width
        active = act[~done]
    # columns never evaluated on the left (e.g. the bound was already tight): use lo itself
    missing = np.flatnonzero((lo_val <= 0) & (hi > 0))
    if missing.size and not prune:
        P, _ = g.prox(W[:, missing], np.maximum(blo[missing] * (1 - tol), 1e-300))
        P = np.asarray(P, dtype=np.float64).reshape(n, missing.size)
        h = np.asarray(norm.value(P), dtype=np.float64).reshape(-1)
        ok = h > 0
        X[:, missing] = np.where(ok, P / np.where(ok, h, 1.0), 0.0)
        lo_val[missing] = _values(W[:, missing], X[:, missing])
    return np.where(hi > 0, bhi, 0.0), X, lo_val, w_state


# ------------------------------------------------------------------------------------------
# certified TV case: bracket from a feasible primal point and a dual-feasible TV variable


def _grad(X3, conn):
    """Edge differences ``x_a - x_b`` of images X3 (H, W, m), in ``grid_edges`` order."""
    d = [X3[:, :-1] - X3[:, 1:], X3[:-1, :] - X3[1:, :]]
    if conn == 8:
        d.append(X3[:-1, :-1] - X3[1:, 1:])
        d.append(X3[:-1, 1:] - X3[1:, :-1])
    return d


def _grad_T(p, shape3, conn):
    """Adjoint of :func:`_grad`: ``G^T p`` as images (H, W, m)."""
    out = np.zeros(shape3)
    out[:, :-1] += p[0]
    out[:, 1:] -= p[0]
    out[:-1, :] += p[1]
    out[1:, :] -= p[1]
    if conn == 8:
        out[:-1, :-1] += p[2]
        out[1:, 1:] -= p[2]
        out[:-1, 1:] += p[3]
        out[1:, :-1] -= p[3]
    return out


def _edge_shape(k, H, W):
    """Shape of edge family k (0 horizontal, 1 vertical, 2/3 diagonals) on an H x W grid."""
    return [(H, W - 1), (H - 1, W), (H - 1, W - 1), (H - 1, W - 1)][k]


def _box(scale, dt):
    """``scale`` (float64) rounded *down* to dtype ``dt``, so that clipping to it is feasible."""
    dt = np.dtype(dt)
    scale = np.asarray(scale, dtype=np.float64)
    sc = scale.astype(dt)
    return np.where(sc.astype(np.float64) > scale, np.nextafter(sc, dt.type(0)), sc).astype(dt)


def _tv_dual_fista(V3, p, scale, n_iter, conn, *, parallel=None):
    """``n_iter`` FISTA steps (per-column adaptive restart) on the dual of the TV prox,

        min_{|p_e| <= scale_j} 1/2 ||v_j - G^T p_j||^2,       step 1 / ||G||^2,

    for images ``V3`` (H, W, m) (float32 or float64). ``p`` is a list of edge arrays of V3's
    dtype in :func:`_grad` order (the start; not modified). Returns new arrays strictly inside
    the box (``|p| <= scale`` exactly, see :func:`_box`), so ``p / scale`` is a feasible TV dual
    whatever the number of steps.

    Numba kernel (``calseg.prox._dual_kernels``): each column runs all its steps in
    cache-resident buffers, columns in parallel; same iterates as
    :func:`_tv_dual_fista_numpy` up to rounding. ``parallel`` (None: automatic) picks the
    threaded kernel.
    """
    from calseg.prox import _dual_kernels

    dt = np.dtype(V3.dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"V3 must be float32 or float64, got {dt}")
    V3 = np.ascontiguousarray(V3)
    H, W, m = V3.shape
    sc = np.ascontiguousarray(np.broadcast_to(_box(scale, dt), (m,)))
    pin = tuple(np.ascontiguousarray(pi, dtype=dt) for pi in p)
    pout = tuple(np.empty_like(pi) for pi in pin)
    L_inv = dt.type(1.0 / (16.0 if conn == 8 else 8.0))       # ||G||^2 <= 2 * max degree
    if parallel is None:
        from calseg.prox.tv import PARALLEL_MIN_SIZE

        # threads only pay for their wake-up on large problems (same rule as the TV prox)
        parallel = m > 1 and H * W * m >= PARALLEL_MIN_SIZE
    kern = _dual_kernels.tv_dual_fista_columns if parallel else \
        _dual_kernels.tv_dual_fista_columns_serial
    kern(V3, pin, pout, sc, int(n_iter), L_inv)
    return list(pout)


def _tv_dual_fista_numpy(V3, p, scale, n_iter, conn):
    """``n_iter`` FISTA steps (per-column adaptive restart) on the dual of the TV prox,

        min_{|p_e| <= scale_j} 1/2 ||v_j - G^T p_j||^2,       step 1 / ||G||^2,

    for images ``V3`` (H, W, m) (float32 or float64), in place on preallocated buffers. ``p`` is
    a list of edge arrays of V3's dtype (the start); returned strictly inside the box
    (``|p| <= scale`` exactly, see :func:`_box`), so ``p / scale`` is a feasible TV dual
    whatever the number of steps.

    Pure numpy; the reference (twin) of the numba kernel behind :func:`_tv_dual_fista`.
    """
    dt = V3.dtype
    L_inv = dt.type(1.0 / (16.0 if conn == 8 else 8.0))       # ||G||^2 <= 2 * max degree
    sc = _box(scale, dt)
    m = V3.shape[2]
    p = [np.clip(pi, -sc, sc) for pi in p]
    z = [pi.copy() for pi in p]
    pn = [np.empty_like(pi) for pi in p]
    g = [np.empty_like(pi) for pi in p]
    x = np.empty_like(V3)
    t = np.ones(m)
    for _ in range(n_iter):
        np.copyto(x, V3)                                  # x = v - G^T z
        x[:, :-1] -= z[0]
        x[:, 1:] += z[0]
        x[:-1, :] -= z[1]
        x[1:, :] += z[1]
        if conn == 8:
            x[:-1, :-1] -= z[2]
            x[1:, 1:] += z[2]
            x[:-1, 1:] -= z[3]
            x[1:, :-1] += z[3]
        np.subtract(x[:, :-1], x[:, 1:], out=g[0])        # g = G x
        np.subtract(x[:-1, :], x[1:, :], out=g[1])
        if conn == 8:
            np.subtract(x[:-1, :-1], x[1:, 1:], out=g[2])
            np.subtract(x[:-1, 1:], x[1:, :-1], out=g[3])
        ip = np.zeros(m)
        for k in range(len(p)):
            g[k] *= L_inv
            g[k] += z[k]
            np.clip(g[k], -sc, sc, out=pn[k])             # pn = P(z + G x / L)
            np.subtract(z[k], pn[k], out=g[k])            # g = z - pn
            np.subtract(pn[k], p[k], out=z[k])            # z = pn - p
            ip += np.einsum("ijk,ijk->k", g[k], z[k], dtype=np.float64)
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        restart = ip > 0                                  # step against the momentum
        beta = np.where(restart, 0.0, (t - 1) / t_new).astype(dt)
        t = np.where(restart, 1.0, t_new)
        for k in range(len(p)):
            z[k] *= beta                                  # z = pn + beta (pn - p)
            z[k] += pn[k]
            p[k], pn[k] = pn[k], p[k]
    return p


def _shrink(U, thr, nonneg):
    if nonneg:
        return np.maximum(U - thr, 0.0)
    return np.sign(U) * np.maximum(np.abs(U) - thr, 0.0)


def _single_pixel_atoms(W, norm):
    """Lower values and maximisers of the best single-pixel atoms ``±e_i / h(e_i)``."""
    V = np.maximum(W, 0.0) if norm.nonnegative else np.abs(W)
    cost = pixel_costs(norm, W.shape[0])
    ratio = V / cost[:, None]
    idx = np.argmax(ratio, axis=0)
    cols = np.arange(W.shape[1])
    val = ratio[idx, cols]
    X = np.zeros_like(W)
    X[idx, cols] = np.where(val > 0, np.where(W[idx, cols] >= 0, 1.0, -1.0) / cost[idx], 0.0)
    return val, X


def _dual_tv_cert(V, norm, *, tol, floor=None, prune=False, max_iter=20000, inner0=20, hi0=None):
    """Certified brackets ``lo <= h°(v_j) <= hi`` of the columns of float64 ``V`` (n, m).

    For a TV dual ``q`` with ``|q| <= 1`` the set ``mu (l1 s + tv G^T q)`` (``|s| <= 1``, minus the
    nonnegative orthant under nonnegativity) lies in ``mu dg(0)``; hence any ``mu`` with
    ``F_q(mu) = ||S_{mu l1}(v - mu tv G^T q)||_2 - l2 mu <= 0`` is an upper bound on ``h°(v)``
    (``F_q`` is convex and ``F_q >= f``). ``q`` comes from FISTA (with adaptive restart) on the
    dual of the TV prox at the midpoint of the current bracket, warm-started across rounds;
    the smallest root of ``F_q`` is found by bisection and every accepted end is checked.
    The lower end is the value ``<v, x> / h(x)`` of the primal point of that prox. With
    ``prune``, columns whose upper end falls below ``(1 + tol)`` times ``floor`` or the best
    lower value are abandoned (their ``hi`` is then <= that value: ``max(hi)`` stays a valid
    upper bound on the largest dual norm, within ``tol`` of it).

    ``hi0`` optionally gives precomputed upper bounds (e.g. the no-TV dual norms).
    Returns ``(lo, hi, X, best)`` with ``X`` the best feasible maximisers (``h(x) = 1``).
    """
    VT = np.ascontiguousarray(np.asarray(V, dtype=np.float64).T)
    lo, hi, XT, best = _dual_tv_cert_rows(VT, norm, tol=tol, floor=floor, prune=prune,
                                          max_iter=max_iter, inner0=inner0, hi0=hi0)
    return lo, hi, XT.T, best


#: images per parallel block of the certified TV dual norm: the running best (the pruning
#: floor) advances between blocks, so results do not depend on the number of threads. Small
#: blocks prune sooner (the row bound's first rows: 10 % less time with 8 than with 32 on a
#: single-threaded tile worker), large ones keep more threads busy
_CERT_BLOCK = 8
#: warm-started runs of consecutive rows, and runs per parallel wave
_WARM_RUN = 32
_WARM_WAVE = 4


def _dual_tv_cert_rows(VT, norm, *, tol, floor=None, cap=None, prune=False, max_iter=20000,
                       inner0=20, hi0=None, warm=False, lo0=None):
    """:func:`_dual_tv_cert` on the rows of ``VT`` (m, n) (float32 or float64, C order): images
    stored contiguously, e.g. rows of a residual correlation ``W``; no transposes.

    ``cap`` (with ``prune``): also abandon images whose upper end is at or below it (an upper
    bound already established elsewhere: they cannot raise the maximum). ``warm``: the rows
    follow each other closely (e.g. consecutive frames of ``W``): runs of consecutive rows
    warm-start each row's TV dual from the row before (:func:`calseg.certify._kernels.cert_rows_warm`). ``lo0``:
    the rows' single-pixel lower values when already known (e.g. from
    :func:`calseg.certify._kernels.rows_no_tv`); their maximisers are then not stored (the
    rows of ``XT`` that no round improved stay zero). Returns ``(lo, hi, XT, best)``, ``XT``
    (m, n).
    """
    from calseg.certify import _kernels as K

    a, b, c = _weights(norm)
    nonneg = bool(norm.nonnegative)
    H, Wd = (int(s) for s in norm.image_shape)
    conn = int(norm.connectivity)
    # float32 rows (a float32 W) are read as they are: every value converts to float64 exactly
    # inside the kernels, so the brackets are those of the float64 copy, without making it
    VT = np.ascontiguousarray(VT, dtype=np.float32 if VT.dtype == np.float32 else np.float64)
    m, n = VT.shape
    hi = _dual_no_tv(np.asarray(VT.T, dtype=np.float64), a, b, nonneg, want_x=False)[0] \
        if hi0 is None else np.array(hi0, dtype=np.float64)
    XT = np.zeros((m, n))
    if lo0 is None:
        lo = np.empty(m)                 # single-pixel atoms: the starting lower ends
        cost = pixel_costs(norm, n)
        K.single_pixel_rows(VT, np.ascontiguousarray(cost, dtype=np.float64), nonneg, lo, XT)
    else:
        lo = np.array(lo0, dtype=np.float64)
    best = max(-np.inf if floor is None else float(floor), float(np.max(lo)) if m else -np.inf)
    # float32 halves the memory traffic of the inner solver; it limits the dual accuracy to
    # ~1e-6 relative, so high-accuracy requests stay in float64
    proto = np.zeros(0, dtype=np.float32 if tol >= 1e-5 else np.float64)
    rounds = np.zeros(m, dtype=np.int64)
    L_inv = 1.0 / (16.0 if conn == 8 else 8.0)              # ||G||^2 <= 2 * max degree
    args = (H, Wd, 4 if conn == 8 else 2, float(a), float(b), float(c), nonneg, float(tol),
            float(best) if np.isfinite(best) else -1.0,
            float(cap) if (cap is not None and prune) else -1.0, bool(prune), int(max_iter),
            int(inner0), L_inv)
    if warm:
        best = K.cert_rows_warm(VT, lo, hi, XT, rounds, *args, _WARM_RUN, _WARM_WAVE, proto)
    else:
        best = K.cert_columns(VT, np.arange(m, dtype=np.int64), lo, hi, XT, rounds, *args,
                              _CERT_BLOCK, proto)
    return lo, hi, XT, float(best)


def _dual_tv_cert_numpy(V, norm, *, tol, floor=None, cap=None, prune=False, max_iter=20000,
                        inner0=20, hi0=None):
    """:func:`_dual_tv_cert` in numpy around the same FISTA steps (the one-image kernel): the
    twin of ``calseg.certify._kernels.cert_columns`` / ``single_pixel_rows`` (same brackets,
    maximisers and running best up to rounding)."""
    from calseg.certify._kernels import bisect_fq_serial

    a, b, c = _weights(norm)
    nonneg = bool(norm.nonnegative)
    H, Wd = (int(s) for s in norm.image_shape)
    conn = int(norm.connectivity)
    n, m = V.shape
    hi = _dual_no_tv(V, a, b, nonneg, want_x=False)[0] if hi0 is None else \
        np.array(hi0, dtype=np.float64)
    lo, X = _single_pixel_atoms(V, norm)
    best = max(-np.inf if floor is None else float(floor), float(np.max(lo)) if m else -np.inf)
    best = best if np.isfinite(best) else -1.0
    cap = float(cap) if (cap is not None and prune) else -1.0
    fdt = np.float32 if tol >= 1e-5 else np.float64
    V3all = V.reshape(H, Wd, m)
    for s0 in range(0, m, _CERT_BLOCK):
        fl0, cp = best, cap
        for j in range(s0, min(s0 + _CERT_BLOCK, m)):
            v = V[:, j]
            lc, hc = lo[j], hi[j]
            fl = max(fl0, lc)
            stop = max(fl * (1 + tol), cp) if prune else -np.inf
            if hc <= 0 or hc - lc <= tol * hc or hc <= stop:
                continue
            p = [np.zeros(_edge_shape(k, H, Wd) + (1,), dtype=fdt)
                 for k in range(4 if conn == 8 else 2)]
            old, inner, used = 0.0, inner0, 0
            while used < max_iter:
                mu = 0.5 * (lc + hc)
                scale = mu * c                             # box of p = mu c q
                if old > 0:
                    ratio = fdt(scale / max(old, 1e-300))
                    sc = _box(scale, fdt)
                    p = [np.clip(pi * ratio, -sc, sc) for pi in p]
                old = scale
                n_in = min(inner, max_iter - used)
                p = _tv_dual_fista(V3all[:, :, j:j + 1].astype(fdt), p, np.array([scale]), n_in,
                                   conn, parallel=False)
                used += n_in
                g = _grad_T([pi.astype(np.float64) for pi in p], (H, Wd, 1), conn).reshape(n)
                # upper end first: smallest root of the convex F_q; under pruning a bracket
                # that falls to the stop is done without its lower end
                d = g / max(mu, 1e-300)                    # = tv G^T q
                r, lft = np.array([hc]), np.array([min(lc, hc)])
                good = np.empty(1, dtype=np.bool_)
                stop = max(fl * (1 + tol), cp) if prune else -np.inf
                bisect_fq_serial(v[None, :].copy(), d[None, :].copy(), r, lft, float(a), float(b),
                                 nonneg, float(tol), float(stop), bool(prune), good)
                width_old = hc - lc
                if good[0]:
                    hc = min(hc, float(r[0]))
                if hc <= stop:
                    break
                # lower end: primal point of the prox at mu, normalised
                x = _shrink(v - g, mu * b, nonneg)
                hx = float(np.asarray(norm.value(x[:, None])).reshape(-1)[0])
                val = float(v @ x) / hx if hx > 0 else 0.0
                if val > lc:
                    lc = val
                    X[:, j] = x / hx
                fl = max(fl, lc)
                width = hc - lc
                stop = max(fl * (1 + tol), cp) if prune else -np.inf
                if width <= tol * hc or hc <= stop:
                    break
                if width > 0.25 * width_old:
                    inner = min(2 * inner, 2000)
            lo[j], hi[j] = lc, hc
        for j in range(s0, min(s0 + _CERT_BLOCK, m)):
            best = max(best, lo[j])
            if prune:
                cap = max(cap, hi[j])
    return lo, hi, X, float(best)
