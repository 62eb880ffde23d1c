"""Bounds on the polar of the factor regulariser (METHOD sections 5.2-5.4).

For a residual correlation ``W = D^T R`` of shape (T, P) the polar is

    rho*(W) = max{ phi^T W psi : ||phi||_A <= 1, ||psi||_Z <= 1 (, phi >= 0, psi >= 0) }

with ``||.||_A`` the temporal and ``||.||_Z`` the spatial :class:`CompositeNorm`. Computing it is
NP-hard in general (sparse / nonnegative PCA with TV), so calseg brackets it:

* :func:`polar_lower` - alternating exact block maximisation from several starts (a feasible
  pair, so its value is a certified lower bound and the pair is an improving atom when the
  value exceeds lambda).
* :func:`polar_upper` - valid upper bounds: U1 spectral, U2 l1/l2 split, U3 TV-aware row
  bound (exact spatial dual norms of the rows of W, temporal ball inside an l1 ball) and its
  mirror U3' over pixels (temporal dual norms of the columns, spatial ball inside an l1 ball).
  The smallest is reported.

Every upper bound here is *rigorous up to floating-point rounding*: spectral norms come from a
dense eigen-solver or a Collatz-Wielandt bound (never from an iterative estimate alone), and
the TV-aware row bound is certified by an explicit dual-feasible point of the TV term, so it
does not depend on the accuracy of any inner solver.
"""
from __future__ import annotations

import warnings

import numpy as np

from calseg.certify.dualnorm import (_dual_l1, _dual_no_tv, _dual_tv_cert_rows, _weights,
                                     dual_norm, pixel_costs, single_pixel_lower)
from calseg.errors import ConfigError, ConvergenceWarning, InputError
from calseg.model.objective import _big_t_times, _big_times

__all__ = ["polar_lower", "polar_upper"]

_EFFORT = {
    #            starts iters  split_steps  power_iters  tv_budget (FISTA iterations per block)
    "low":      (4,     10,    10,          30,          300),
    "normal":   (8,     30,    16,          60,          1500),
    "high":     (16,    100,   24,          150,         10000),
}
_ROW_BLOCK = 512
# rows of the TV row bound solved first, from their largest no-TV bounds down (each from a cold
# start, to tol: they set the pruning floor; 16 rather than 64 saved ~10 % of the row bound on
# 102 px x 3000-frame tiles, the bound moving by < 1e-3 relative, within its tolerance)
_ROWS_FIRST = 16
# accuracy of the block maximisers inside the lower-bound search: only the feasible points are
# used (their values are recomputed), so this trades bound quality for time, never validity
# (1e-3 vs 1e-4 on 102 px x 3000-frame tiles: the atom found moved by < 1e-4 relative, the
# search took 35 % less time where it found one to grow)
_INNER_TOL = 1e-3


def _effort(effort):
    if effort not in _EFFORT:
        raise ConfigError(f"effort must be one of {sorted(_EFFORT)}, got {effort!r}")
    return _EFFORT[effort]


def _check_W(W, check_finite=True):
    W = np.asarray(W)
    if W.ndim != 2 or W.size == 0:
        raise InputError(f"W must be a non-empty 2-D array of shape (T, P), got shape {W.shape}")
    if W.dtype not in (np.float32, np.float64):
        W = W.astype(np.float64)
    if check_finite and not np.all(np.isfinite(W)):
        raise InputError("W contains NaN or infinite values")
    return W


def _check_norms(W, temporal, spatial):
    T, P = W.shape
    for name, nrm, n in (("temporal", temporal, T), ("spatial", spatial, P)):
        a, b, c = _weights(nrm)
        if a == 0 and b == 0:
            raise ConfigError(f"{name} norm has l2 = l1 = 0; the polar is infinite")
        if c > 0:
            shape = getattr(nrm, "image_shape", None)
            if shape is None or int(np.prod(shape)) != n:
                raise InputError(
                    f"{name} norm has tv > 0 and image_shape {shape!r}, which does not match "
                    f"the {n} entries of its side of W")


# ------------------------------------------------------------------------------------------
# spectral norms (rigorous upper bounds)


def _rounding_margin(M):
    n = max(M.shape)
    u = float(np.finfo(M.dtype).eps)
    return 1.0 + 4 * n * u if M.dtype == np.float32 else 1.0 + 1e-10


def sigma_max_upper(M, *, power_iters=60, dense_limit=600):
    """An upper bound on ``sigma_max(M)``, exact for small matrices.

    Small matrices (smaller side <= ``dense_limit``) or any signed matrix: largest eigenvalue of
    the smaller Gram matrix by a dense symmetric eigen-solver. Large entrywise nonnegative
    matrices (dense or ``scipy.sparse``): a Collatz-Wielandt bound
    ``rho(K) <= max_i (K x)_i / x_i`` (any ``x > 0``) on ``K = M M^T`` with ``x`` from a few
    power iterations; valid whatever the number of iterations.
    """
    from scipy import sparse

    if sparse.issparse(M):
        if M.nnz == 0:
            return 0.0
        return _collatz_wielandt(M, power_iters) * (1.0 + 1e-10)
    M = np.asarray(M)
    if M.size == 0 or not np.any(M):
        return 0.0
    rows, cols = M.shape
    nonneg = bool(np.all(M >= 0))
    if min(rows, cols) <= dense_limit or not nonneg:
        M64 = M.astype(np.float64, copy=False)
        G = M64 @ M64.T if rows <= cols else M64.T @ M64
        lam = float(np.linalg.eigvalsh(G)[-1])
        n = G.shape[0]
        return float(np.sqrt(max(lam, 0.0) * (1 + 1e-12 * n) + 1e-300)) * _rounding_margin(M)
    return _collatz_wielandt(M, power_iters) * _rounding_margin(M)


def _collatz_wielandt(M, power_iters):
    """sqrt of a Collatz-Wielandt bound on the spectral radius of ``M M^T`` (smaller side)."""
    Mt = M if M.shape[0] <= M.shape[1] else M.T
    dt = Mt.dtype
    x = np.ones(Mt.shape[0], dtype=dt)
    for _ in range(power_iters):
        y = np.asarray(Mt @ (Mt.T @ x)).reshape(-1)
        s = float(np.max(y))
        if s <= 0:
            return 0.0
        x = (y / s).astype(dt, copy=False)
    x = x.astype(np.float64) + 1e-6
    Kx = np.asarray(Mt @ (Mt.T @ x.astype(dt))).reshape(-1).astype(np.float64)
    return float(np.sqrt(float(np.max(Kx / x))))


def _largest_line_norm(W, t=0.0, absolute=False):
    """The largest l2 norm of a row or a column of ``(f(W) - t)+`` (``f = |.|`` when
    ``absolute``, else the identity): a lower bound on its ``sigma_max``. One pass, no copy."""
    from calseg.certify._kernels import line_sumsq

    W = np.ascontiguousarray(W)
    rows = np.zeros(W.shape[0])
    parts = np.zeros((min(8, max(W.shape[0], 1)), W.shape[1]))
    line_sumsq(W, float(t), bool(absolute), rows, parts)
    return float(np.sqrt(max(rows.max(initial=0.0), parts.sum(axis=0).max(initial=0.0))))


def _split_bound(Wb, a_t, b_t, a_s, b_s, steps, power_iters, u1, cap=float("inf")):
    """U2: min_t max(t / (b b'), sigma_max((Wb - t)_+) / (a a')) over a bisection in t.

    ``u1`` is U1 (the value at t = 0). ``(Wb - t)_+`` is stored sparse once it is sparse.
    The bisection stops early once ``min(A(t), B(t))`` at an evaluated t exceeds ``cap`` (the
    best other bound): with A increasing and B decreasing in t the minimum over t of
    ``max(A, B)`` is then at least about that value, so U2 would not be the smallest bound.
    """
    from scipy import sparse

    top = float(np.max(Wb))
    best = min(top / (b_t * b_s), u1)
    lo, hi = 0.0, top
    for _ in range(steps):
        t = 0.5 * (lo + hi)
        mask = Wb > t
        nnz = int(np.count_nonzero(mask))
        if nnz < 0.1 * Wb.size:
            r, c = np.nonzero(mask)
            S = sparse.csr_matrix((Wb[r, c].astype(np.float64) - t, (r, c)), shape=Wb.shape)
        else:
            S = np.maximum(Wb - np.asarray(t, dtype=Wb.dtype), 0)
        del mask
        A = t / (b_t * b_s)
        B = sigma_max_upper(S, power_iters=power_iters) / (a_t * a_s)
        best = min(best, max(A, B))
        if min(A, B) > cap:
            break
        if A < B:
            lo = t
        else:
            hi = t
    return best


def _rows_sandwich(W, temporal, spatial, *, tol, budget):
    """U3: bounds on ``max_k h_Z°(±W[k, :])`` (signs: + only when phi >= 0).

    Returns ``(upper, lower, k_best, psi_best, row_lo)``, where ``upper >= max_k h_Z°`` and
    ``lower`` is the value of the explicit pair ``(e_k, psi_best)`` with ``h_Z(psi_best) = 1``.
    """
    a, b, c = _weights(spatial)
    T, P = W.shape
    signs = (1.0,) if temporal.nonnegative else (1.0, -1.0)
    rows_lo = np.zeros(T * len(signs))
    if c == 0 or P == 1:
        # exact closed form (or pure l1) for every row
        upper, lower, kb, xb = 0.0, -np.inf, 0, None
        for si, sg in enumerate(signs):
            for s in range(0, T, _ROW_BLOCK):
                V = sg * np.asarray(W[s:s + _ROW_BLOCK].T, dtype=np.float64)
                if a == 0:
                    mu, X = _dual_l1(V, b, bool(spatial.nonnegative))
                else:
                    mu, X = _dual_no_tv(V, a, b, bool(spatial.nonnegative))
                rows_lo[si * T + s: si * T + s + V.shape[1]] = mu
                j = int(np.argmax(mu))
                upper = max(upper, float(mu[j]))
                if mu[j] > lower:
                    lower, kb, xb = float(mu[j]), si * T + s + j, X[:, j].copy()
        return upper, lower, kb, xb, rows_lo
    # TV case: order all rows by their no-TV (upper) bound, branch and bound in blocks
    ub = np.empty(T * len(signs))
    if a > 0 and b > 0:
        from ._kernels import rows_no_tv

        cost = pixel_costs(spatial, P)
        for si, sg in enumerate(signs):
            rows_no_tv(W, sg, a, b, bool(spatial.nonnegative), cost,
                       ub[si * T:(si + 1) * T], rows_lo[si * T:(si + 1) * T])
    else:
        for si, sg in enumerate(signs):
            for s in range(0, T, _ROW_BLOCK):
                V = sg * np.asarray(W[s:s + _ROW_BLOCK].T, dtype=np.float64)
                ub[si * T + s: si * T + s + V.shape[1]] = _dual_no_tv(
                    V, a, b, bool(spatial.nonnegative), want_x=False)[0]
                rows_lo[si * T + s: si * T + s + V.shape[1]] = single_pixel_lower(V, spatial)
    order = np.argsort(-ub)
    best = float(np.max(rows_lo))
    kb = int(np.argmax(rows_lo))
    xb = None
    upper = best
    # 1. the rows with the largest no-TV bounds, each from a zero TV dual: they set the floor
    #    (best lower value) and the cap (largest upper end) that prune the rest
    # 2. every other row that could still raise the maximum, in time order: consecutive rows
    #    of W = D^T R are strongly correlated, so each starts from its predecessor's TV dual
    # Rows whose bracket falls below max(best (1 + tol), upper) stop early: they cannot raise
    # the maximum (branch and bound). 3 FISTA steps to start (2 from a warm start, at the
    # scale of the stop, which then usually proves the stop in one round); slow rows double.
    phases = [(order[:_ROWS_FIRST], False), (np.sort(order[_ROWS_FIRST:]), True)]
    for rows, warm in phases:
        for pos in range(0, rows.size, _ROW_BLOCK):
            blk = rows[pos:pos + _ROW_BLOCK]
            blk = blk[ub[blk] > max(best * (1 + tol), upper)]
            if blk.size == 0:
                continue
            VT = W[blk % T]                  # W's dtype: the kernels read float32 exactly
            VT[blk >= T] *= -1
            # (the single-pixel lower ends are rows_lo's: not computed again)
            lo, hi, XT, _ = _dual_tv_cert_rows(VT, spatial, tol=tol, floor=best, cap=upper,
                                               prune=True, max_iter=budget,
                                               inner0=2 if warm else 3, hi0=ub[blk], warm=warm,
                                               lo0=rows_lo[blk])
            rows_lo[blk] = np.maximum(rows_lo[blk], lo)
            upper = max(upper, float(np.max(hi)))
            j = int(np.argmax(lo))
            if lo[j] > best:
                # a row no round improved keeps its single-pixel atom (XT row zero): rebuilt below
                best, kb = float(lo[j]), int(blk[j])
                xb = XT[j].copy() if np.any(XT[j]) else None
    if xb is None:                       # best is the single-pixel atom of row kb
        sg = 1.0 if kb < T else -1.0
        v = sg * np.asarray(W[kb % T], dtype=np.float64)
        vv = np.maximum(v, 0) if spatial.nonnegative else np.abs(v)
        cost = pixel_costs(spatial, P)
        j = int(np.argmax(vv / cost))
        xb = np.zeros(P)
        xb[j] = (1.0 if v[j] >= 0 else -1.0) / cost[j]
        best = float(v @ xb)
    return max(upper, best), best, kb, xb, rows_lo


def _cols_bound(W, temporal, spatial):
    """U3': ``max_j h_A°(±W[:, j]) / b`` with the temporal dual norm without its TV term
    (an upper bound on it); needs spatial l1 ``b > 0``."""
    a, b_t, _ = _weights(temporal)
    _, b, _ = _weights(spatial)
    T, P = W.shape
    signs = (1.0,) if spatial.nonnegative else (1.0, -1.0)
    best = 0.0
    col_scores = np.zeros(P)
    for s in range(0, P, _ROW_BLOCK):
        V = np.asarray(W[:, s:s + _ROW_BLOCK], dtype=np.float64)
        for sg in signs:
            if a == 0:
                mu = _dual_l1(sg * V, b_t, bool(temporal.nonnegative))[0]
            else:
                mu = _dual_no_tv(sg * V, a, b_t, bool(temporal.nonnegative), want_x=False)[0]
            col_scores[s:s + V.shape[1]] = np.maximum(col_scores[s:s + V.shape[1]], mu)
    best = float(np.max(col_scores))
    return best / b, col_scores


# ------------------------------------------------------------------------------------------
# public API


def polar_upper(W, temporal, spatial, *, tol=1e-4, effort="normal"):
    """Valid upper bounds on the polar ``rho*(W)``.

    Parameters
    ----------
    W : ndarray of shape (T, P)
        Residual correlation ``D^T R``.
    temporal, spatial : CompositeNorm
        Norms of the temporal factor ``phi`` (T,) and the spatial factor ``psi`` (P,).
    tol : float, keyword-only
        Relative accuracy of the TV-aware row bound's per-row brackets.
    effort : {"low", "normal", "high"}, keyword-only
        Iteration budgets (power iterations, split bisection, TV dual FISTA iterations).

    Returns
    -------
    rho_up : float
        ``min`` of the applicable bounds (``inf`` if none applies).
    bounds : dict
        ``"spectral"`` U1 ``sigma_max(W+)/(a a')``, ``"split"`` U2, ``"tv_rows"`` U3
        ``max_k h_Z°(W_k)/b'``, ``"pixels"`` U3' ``max_j h_A°(W[:, j])/b``; ``inf`` when not
        applicable (e.g. no l1 term on the relaxed side) or skipped because a cheap lower
        estimate of it already exceeds a bound computed before it (the minimum is unchanged).

    Notes
    -----
    With ``phi, psi >= 0``, ``phi^T W psi <= phi^T W+ psi``; with a signed side, ``|W|`` is used
    (``h(|x|) <= h(x)`` for these norms). U3 uses ``B_A subset (1/b') conv{0, ±e_k}`` and the
    convexity of ``phi -> h_Z°(W^T phi)``; each row's dual norm is certified by a
    dual-feasible TV point (:func:`calseg.certify.dualnorm._dual_tv_cert`), rows whose cheaper no-TV bound is below
    the running maximum are skipped (branch and bound).
    """
    rho, bounds, _ = _polar_upper(W, temporal, spatial, tol=tol, effort=effort)
    return rho, bounds


def _polar_upper(W, temporal, spatial, *, tol, effort, check_finite=True):
    W = _check_W(W, check_finite)
    _check_norms(W, temporal, spatial)
    _, _, split_steps, power_iters, budget = _effort(effort)
    a_t, b_t, _ = _weights(temporal)
    a_s, b_s, _ = _weights(spatial)
    both_nonneg = bool(temporal.nonnegative) and bool(spatial.nonnegative)
    inf = float("inf")
    bounds = {"spectral": inf, "split": inf, "tv_rows": inf, "pixels": inf}
    extra = {}
    # The row bound (usually the tightest) first: a bound whose cheap lower estimate already
    # exceeds the best one so far cannot lower the minimum and is not computed ("skipped").
    # Skipping never affects validity: rho_up is the minimum of the bounds that were computed.
    if b_t > 0:
        up, low, kb, xb, rows_lo = _rows_sandwich(W, temporal, spatial, tol=tol, budget=budget)
        bounds["tv_rows"] = up / b_t
        extra.update(row_scores=rows_lo, row_best=(low, kb, xb))
    if a_t > 0 and a_s > 0:
        signed = not both_nonneg                  # the bounds use |W| instead of W+
        skipped = extra.setdefault("skipped", [])
        Wb = None
        cap = min(bounds.values())
        # sigma_max(M) >= the largest l2 norm of a column or row of M: a cheap lower estimate
        if _largest_line_norm(W, 0.0, signed) / (a_t * a_s) < cap:
            Wb = np.abs(W) if signed else np.maximum(W, 0)
            u1 = sigma_max_upper(Wb, power_iters=power_iters)
            if signed:
                u1 = min(u1, sigma_max_upper(W))
            bounds["spectral"] = u1 / (a_t * a_s)
        else:
            skipped.append("spectral")
        if b_t > 0 and b_s > 0:
            # U2 = min_t max(t / (b b'), sigma((Wb - t)+) / (a a')) >= cap when the second term
            # is >= cap at t* = cap b b' (it only grows as t decreases; the first is > cap above t*)
            cap = min(bounds.values())
            t_star = cap * b_t * b_s if np.isfinite(cap) else np.inf
            if not np.isfinite(t_star) or \
                    _largest_line_norm(W, t_star, signed) / (a_t * a_s) < cap:
                if Wb is None:
                    Wb = np.abs(W) if signed else np.maximum(W, 0)
                bounds["split"] = _split_bound(Wb, a_t, b_t, a_s, b_s, split_steps, power_iters,
                                               bounds["spectral"], cap=cap)
            else:
                skipped.append("split")
        del Wb
    if b_s > 0:
        # every single-entry atom e_t e_j / (h_A(e_t) h_Z(e_j)) is feasible for the pixel bound's
        # maximisation, so max W+ / ((a_t + b_t) b_s) is a lower estimate of it
        top = max(float(W.max()), 0.0) if temporal.nonnegative else float(np.abs(W).max())
        cheap = top / ((a_t + b_t) * b_s)
        if cheap < min(bounds.values()):
            bounds["pixels"], extra["col_scores"] = _cols_bound(W, temporal, spatial)
        else:
            extra.setdefault("skipped", []).append("pixels")
    rho = min(bounds.values())
    return rho, bounds, extra


def polar_lower(W, temporal, spatial, *, n_starts=8, max_iter=30, seed=0, row_scores=None,
                col_scores=None, tol=1e-7, svd_start=True, check_finite=True):
    """Lower bound on ``rho*(W)`` by alternating exact maximisation from several starts.

    Parameters
    ----------
    W : ndarray of shape (T, P)
    temporal, spatial : CompositeNorm
    n_starts : int, keyword-only
        Number of starting points: the top left singular vector of ``W+`` (``|W|`` for a
        signed side), coordinate vectors ``e_k`` of the rows with the largest spatial dual
        norms, temporal maximisers of the pixels with the largest temporal dual norms, then
        seeded random nonnegative vectors.
    max_iter : int, keyword-only
        Alternations per start (each: one spatial and one temporal dual norm, all starts
        batched as columns).
    seed : int, keyword-only
    row_scores, col_scores : ndarray of shape (T,) / (P,) or None, keyword-only
        Scores used to pick the row / pixel starts (e.g. from :func:`polar_upper`); default:
        the closed-form dual norms without the TV term.
    tol : float, keyword-only
        A start stops when its value improves by less than ``tol`` relative.
    svd_start : bool, keyword-only
        Include the singular-vector start (power iterations cost about as many passes over
        ``W`` as the alternations; on residuals dominated by noise ``W+`` is nearly rank one
        with a flat top vector, which rarely wins over the row and pixel starts).
    check_finite : bool, keyword-only
        Check that W holds no NaN or inf (a pass over it); False when the caller computed W
        from data it checked.

    Returns
    -------
    rho_low : float
        ``phi^T W psi`` with ``h_A(phi) = h_Z(psi) = 1`` (0 and zero vectors if no start has
        a positive value).
    phi : ndarray of shape (T,)
    psi : ndarray of shape (P,)

    Notes
    -----
    psi <- argmax_{h_Z(psi) <= 1} psi^T (W^T phi) and phi <- argmax_{h_A(phi) <= 1} phi^T (W psi)
    are exact (:func:`calseg.certify.dualnorm.dual_norm`), so the value never decreases.
    """
    W = _check_W(W, check_finite)
    _check_norms(W, temporal, spatial)
    T, P = W.shape
    for name, v in (("n_starts", n_starts), ("max_iter", max_iter)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    rng = np.random.default_rng(seed)
    both_nonneg = bool(temporal.nonnegative) and bool(spatial.nonnegative)
    starts = []
    # 1. top left singular vector of W+ (|W|), by power iteration
    if svd_start:
        Wb = np.maximum(W, 0) if both_nonneg else np.abs(W)
        u = np.ones(T, dtype=W.dtype)
        for _ in range(8):         # a start, not a bound: a few power steps are enough
            u = Wb @ (Wb.T @ u)
            nu = float(np.max(np.abs(u)))
            if nu == 0:
                break
            u = u / nu
        del Wb
        if np.any(u):
            starts.append(np.abs(u).astype(np.float64))
    # 2. rows with the largest spatial dual norms (both signs if phi may be negative)
    n_rest = max(n_starts - len(starts), 0)
    n_rows = (n_rest + 1) // 2
    n_cols = n_rest - n_rows
    stats = {}                     # (sign, nonneg) -> row and column (sum of squares, max)

    def line_stats(sg, nonneg):
        if (sg, nonneg) not in stats:
            stats[(sg, nonneg)] = _line_stats(W, sg, nonneg)
        return stats[(sg, nonneg)]

    if row_scores is None:
        a, b, _ = _weights(spatial)
        nonneg = bool(spatial.nonnegative)
        parts = []
        for sg in ((1.0,) if temporal.nonnegative else (1.0, -1.0)):
            ss, mx = line_stats(sg, nonneg)[:2]
            parts.append(_top_scores(W.T if sg > 0 else -W.T, a, b, nonneg, n_rows,
                                     _cheap_bound(ss, mx, a, b)))
        row_scores = np.concatenate(parts)
    row_scores = np.asarray(row_scores, dtype=np.float64)
    for k in np.argsort(-row_scores)[:n_rows]:
        e = np.zeros(T)
        e[k % T] = 1.0 if k < T else -1.0
        starts.append(e)
    # 3. pixels with the largest temporal dual norms: their temporal maximisers
    if col_scores is None:
        a, b, _ = _weights(temporal)
        nonneg = bool(temporal.nonnegative)
        ss, mx = line_stats(1.0, nonneg)[2:]
        col_scores = _top_scores(W, a, b, nonneg, n_cols, _cheap_bound(ss, mx, a, b))
    col_scores = np.asarray(col_scores, dtype=np.float64)
    cols = np.argsort(-col_scores)[:n_cols]
    if cols.size:
        _, Phi0 = dual_norm(np.asarray(W[:, cols], dtype=np.float64), temporal, tol=1e-6)
        starts.extend(Phi0[:, j] for j in range(cols.size) if np.any(Phi0[:, j]))
    # 4. random nonnegative starts fill the budget
    while len(starts) < n_starts:
        starts.append(rng.random(T))
    Phi = np.stack(starts, 1)
    return _alternate(W, temporal, spatial, Phi, max_iter=max_iter, tol=tol)


def _line_stats(W, sign, nonneg):
    """Sums of squares and maxima of ``v = (sign W)^+`` (``|W|`` if not ``nonneg``) along the
    rows and the columns of W, in one numba pass over W as stored (float64 results):
    ``(row_ss, row_max, col_ss, col_max)``."""
    from ._kernels import line_pos_stats

    W = np.ascontiguousarray(W)
    T, P = W.shape
    nb = min(8, max(T, 1))
    rows_ss, rows_mx = np.empty(T), np.empty(T)
    col_ss, col_mx = np.zeros((nb, P)), np.zeros((nb, P))
    line_pos_stats(W, float(sign), bool(nonneg), rows_ss, rows_mx, col_ss, col_mx)
    return rows_ss, rows_mx, col_ss.sum(axis=0), col_mx.max(axis=0)


def _cheap_bound(ss, mx, a, b):
    """``min(||v+|| / a, max v+ / b)`` from the lines' sums of squares and maxima: an upper
    bound on the dual norm of ``a ||.||_2 + b ||.||_1`` (each term alone is a norm <= it)."""
    ub = np.full(ss.shape, np.inf)
    if a > 0:
        ub = np.sqrt(ss) / a
    if b > 0:
        ub = np.minimum(ub, mx / b)
    return ub


def _top_scores(V, a, b, nonneg, n, ub):
    """Scores of the columns of V for picking ``n`` starts: the exact no-TV dual norms of the
    ``8 n + 16`` columns with the largest cheap upper bound ``ub`` (:func:`_cheap_bound`), and
    that bound times -1 elsewhere (ranked after them). Starts are heuristics; this saves an
    exact dual norm of every row or pixel."""
    m = V.shape[1]
    k = min(m, 8 * n + 16)
    if k >= m or n <= 0:
        return _scores_no_tv(V, a, b, nonneg) if n > 0 else np.zeros(m)
    top = np.argpartition(-ub, k - 1)[:k]
    out = -ub
    out[top] = _scores_no_tv(np.asarray(V[:, top]), a, b, nonneg)
    return out


def _scores_no_tv(V, a, b, nonneg):
    out = np.empty(V.shape[1])
    for s in range(0, V.shape[1], _ROW_BLOCK):
        Vb = np.asarray(V[:, s:s + _ROW_BLOCK], dtype=np.float64)
        if a == 0:
            Vp = np.maximum(Vb, 0) if nonneg else np.abs(Vb)
            out[s:s + Vb.shape[1]] = Vp.max(axis=0) / b
        else:
            out[s:s + Vb.shape[1]] = _dual_no_tv(Vb, a, b, nonneg, want_x=False)[0]
    return out


def _alternate(W, temporal, spatial, Phi, *, max_iter, tol):
    T, P = W.shape
    s = Phi.shape[1]
    vals = np.full(s, -np.inf)
    Psi = np.zeros((P, s))
    active = np.arange(s)
    best = (0.0, np.zeros(T), np.zeros(P))
    for _ in range(max_iter):
        if active.size == 0:
            break
        # exact block maximisers; only the feasible maximisers are used (values are recomputed
        # below), so the inner accuracy affects the quality of the bound, not its validity
        G = _big_t_times(W, Phi[:, active])                                # (P, s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            _, Psi_a = dual_norm(G, spatial, tol=_INNER_TOL, max_iter=1000)
            Hm = _big_times(W, Psi_a)                                      # (T, s)
            _, Phi_a = dual_norm(Hm, temporal, tol=_INNER_TOL, max_iter=1000)
        # certified values of the pairs (normalise by the computed norms)
        ha = np.asarray(temporal.value(Phi_a), dtype=np.float64).reshape(-1)
        hz = np.asarray(spatial.value(Psi_a), dtype=np.float64).reshape(-1)
        ok = (ha > 0) & (hz > 0)
        v = np.where(ok, np.einsum("ij,ij->j", Phi_a, Hm) / np.where(ok, ha * hz, 1.0), 0.0)
        improved = v > vals[active] + tol * np.abs(v)
        upd = ok & (v >= vals[active])
        ua = active[upd]
        Phi[:, ua] = Phi_a[:, upd] / ha[upd]
        Psi[:, ua] = Psi_a[:, upd] / hz[upd]
        vals[ua] = v[upd]
        active = active[improved & ok]
    if np.all(~np.isfinite(vals)) or np.max(vals) <= 0:
        return 0.0, best[1], best[2]
    k = int(np.argmax(vals))
    phi, psi = Phi[:, k].copy(), Psi[:, k].copy()
    rho = float(phi @ _big_times(W, psi[:, None])[:, 0])
    if rho <= 0:
        return 0.0, np.zeros(T), np.zeros(P)
    return rho, phi, psi
