"""Slow, independent numpy/scipy references and numpy twins of calseg's numba kernels.

Nothing here imports calseg's solvers: the references are written from the definitions
(dense difference matrices, bounded least squares, primal-dual iterations) so that the tests
compare two independent computations.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import lsq_linear

# ----------------------------------------------------------------------------------------------
# graphs


def grid_edges_loops(H, W, connectivity):
    """Edges of the 4/8-connected H x W grid (C-order pixels), enumerated pixel by pixel."""
    offs = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    edges = []
    for y in range(H):
        for x in range(W):
            for dy, dx in offs:
                yy, xx = y + dy, x + dx
                if 0 <= yy < H and 0 <= xx < W:
                    edges.append((y * W + x, yy * W + xx))
    return np.array(edges, dtype=np.int64).reshape(-1, 2)


def diff_matrix(edges, n):
    """Dense (E, n) matrix with (D x)_e = x_a - x_b for edge e = (a, b)."""
    D = np.zeros((len(edges), n))
    D[np.arange(len(edges)), edges[:, 0]] = 1.0
    D[np.arange(len(edges)), edges[:, 1]] = -1.0
    return D


def chain_matrix(n):
    """Difference matrix of a 1-D chain of n samples, (D x)_k = x_k - x_{k+1}."""
    e = np.stack([np.arange(n - 1), np.arange(1, n)], 1) if n > 1 else np.zeros((0, 2), np.int64)
    return diff_matrix(e, n)


# ----------------------------------------------------------------------------------------------
# TV prox references


def prox_graph_tv(y, c, D):
    """Exact prox of ``c ||D x||_1`` at y via the dual bounded least squares (BVLS).

    ``min_{|u| <= c} ||D^T u - y||^2``; the prox is ``x = y - D^T u`` (unique even when u is not).
    Returns (x, u) in float64.
    """
    y = np.asarray(y, dtype=np.float64)
    if c <= 0 or D.shape[0] == 0:
        return y.copy(), np.zeros(D.shape[0])
    res = lsq_linear(D.T, y, bounds=(-c, c), method="bvls", tol=1e-14, max_iter=10000)
    u = res.x
    return y - D.T @ u, u


def tv_dual_fista_twin(v, q0, box, step, n_iter, D):
    """Numpy twin of the ``tv_prox_fista_columns`` kernels: ``n_iter`` FISTA steps with
    O'Donoghue-Candes gradient restart on ``min_{|q| <= box} ||v - D^T q||^2 / 2`` from ``q0``
    (clipped first), step ``step``, on a dense difference matrix D (E, n).

    Returns ``(q, x)`` with ``x = v - D^T q`` (float64).
    """
    q = np.clip(np.asarray(q0, dtype=np.float64), -box, box)
    z = q.copy()
    t = 1.0
    for _ in range(n_iter):
        x = v - D.T @ z
        pn = np.clip(z + step * (D @ x), -box, box)
        ip = (z - pn) @ (pn - q)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        beta = 0.0 if ip > 0 else (t - 1.0) / t_new
        t = 1.0 if ip > 0 else t_new
        z = pn + beta * (pn - q)
        q = pn
    return q, v - D.T @ q


def tv_prox_gap(x, q, c, D):
    """Prox duality gap ``c ||D x||_1 - <q, D x>`` (>= 0 for ``|q| <= c``), float64."""
    d = D @ np.asarray(x, dtype=np.float64)
    return float(np.sum(c * np.abs(d) - q * d))


def tv1d_reference(y, lam):
    """Exact 1-D TV prox (numpy twin of ``tv1d_condat``), by bounded least squares on the dual."""
    return prox_graph_tv(y, lam, chain_matrix(len(y)))[0]


def tv1d_rows_twin(Y, lam):
    """Numpy twin of ``tv1d_rows``: the 1-D TV prox of every row of Y (r, n)."""
    return np.stack([tv1d_reference(Y[i], lam[i]) for i in range(Y.shape[0])]).astype(Y.dtype)


def dykstra_mean_twin(Y, D):
    """Numpy twin of ``dykstra_mean``: Y - mean over families of D (k, r, n)."""
    return (Y - D.mean(axis=0)).astype(Y.dtype)


def _chain_index(start, length, stride):
    return start + stride * np.arange(length)


def family_prox_twin(X, Df, Dold, c, beta, k, starts, lengths, stride, group):
    """Numpy twin of ``family_prox``: returns (Df_new, Dold_new, dot per group)."""
    Df = Df.astype(np.float64).copy()
    Dold = Dold.astype(np.float64).copy()
    r = X.shape[0]
    nch = len(starts)
    ngr = -(-nch // group)
    dot = np.zeros((r, ngr))
    for j in range(r):
        if c[j] <= 0:
            continue
        for ch in range(nch):
            idx = _chain_index(starts[ch], lengths[ch], stride)
            z = X[j, idx] + Df[j, idx]
            d = z - tv1d_reference(z, k * c[j])
            dot[j, ch // group] += np.sum((Df[j, idx] - d) * (d - Dold[j, idx]))
            Dold[j, idx] = d + beta[j] * (d - Dold[j, idx])
            Df[j, idx] = d
    return Df, Dold, dot


def family_gap_twin(X, Df, c, k, starts, lengths, stride):
    """Numpy twin of ``family_gap``: (r, nch) prox-gap terms and c|dx| sums of one family."""
    r = X.shape[0]
    out = np.zeros((r, len(starts)))
    tv = np.zeros((r, len(starts)))
    for j in range(r):
        for ch in range(len(starts)):
            idx = _chain_index(starts[ch], lengths[ch], stride)
            q = np.cumsum(Df[j, idx].astype(np.float64))[:-1] / k
            dx = X[j, idx[:-1]].astype(np.float64) - X[j, idx[1:]]
            out[j, ch] = np.sum(c[j] * np.abs(dx) - q * dx)
            tv[j, ch] = np.sum(c[j] * np.abs(dx))
    return out, tv


# ----------------------------------------------------------------------------------------------
# composite prox reference: Chambolle-Pock on min_x 1/2||x - y||^2 + sum_i F_i(K_i x)


def composite_prox_primal_dual(y, a, b, c, D, nonneg, iters=20000):
    """prox of a||x||_2 + b||x||_1 + c||Dx||_1 (+ indicator x >= 0) by accelerated Chambolle-Pock.

    Independent of the composition theorem: every term is a separate dual block
    (K = [D; I; I]), ``g(x) = ||x - y||^2 / 2`` is 1-strongly convex (CP 2011, Algorithm 2).
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    L = np.sqrt(np.linalg.norm(D, 2) ** 2 + 2.0) if D.size else np.sqrt(2.0)
    tau = sigma = 1.0 / L
    x = y.copy()
    xb = x.copy()
    p_tv = np.zeros(D.shape[0])
    p_2 = np.zeros(n)
    p_1 = np.zeros(n)

    def proj_l1plus_conj(v, s):
        # prox of s * f* with f = b||.||_1 (+ indicator >= 0): v - s prox_{f/s}(v/s)
        w = v / s
        if nonneg:
            pw = np.maximum(w - b / s, 0.0)
        else:
            pw = np.sign(w) * np.maximum(np.abs(w) - b / s, 0.0)
        return v - s * pw

    for _ in range(iters):
        p_tv = np.clip(p_tv + sigma * (D @ xb), -c, c)
        v = p_2 + sigma * xb
        nv = np.linalg.norm(v)
        p_2 = v if nv <= a else v * (a / nv)
        p_1 = proj_l1plus_conj(p_1 + sigma * xb, sigma)
        x_old = x
        x = (x - tau * (D.T @ p_tv + p_2 + p_1) + tau * y) / (1.0 + tau)
        theta = 1.0 / np.sqrt(1.0 + 2.0 * tau)
        tau *= theta
        sigma /= theta
        xb = x + theta * (x - x_old)
    return x


def prox_l1_tv_joint(y, b, c, D, nonneg):
    """Exact joint prox of ``b||x||_1 + c||Dx||_1`` (+ indicator x >= 0) by one bounded LS.

    ``b||x||_1 (+ iota_{x>=0}) = sup_{v in V} <v, x>`` with ``V = [-b, b]^n`` (or ``(-inf, b]^n``),
    and ``c||Dx||_1 = sup_{|u| <= c} <D^T u, x>``, so the prox is ``x = y - K^T w`` with
    ``K = [D; I]`` and ``w`` minimising ``||K^T w - y||^2`` over the box. Does not use any
    composition of proxes.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    K = np.vstack([D, np.eye(n)])
    lo = np.concatenate([np.full(D.shape[0], -c), np.full(n, -np.inf if nonneg else -b)])
    hi = np.concatenate([np.full(D.shape[0], c), np.full(n, b)])
    if np.all(hi - lo == 0):
        return y - K.T @ hi
    res = lsq_linear(K.T, y, bounds=(lo, hi + 1e-300), method="bvls", tol=1e-14, max_iter=20000)
    return y - K.T @ res.x


def composite_prox_reference(y, a, b, c, D, nonneg):
    """prox of a||x||_2 + b||x||_1 + c||Dx||_1 (+ x >= 0): l2 shrink of the joint l1+TV prox.

    The l2 step uses only that ``b||.||_1 + c||D.||_1 (+ iota)`` is positively homogeneous
    (``prox_{g/mu}(y/mu) = prox_g(y)/mu``, then ``||x|| = ||p|| - a``); the l1/TV part is solved
    jointly by :func:`prox_l1_tv_joint`.
    """
    p = prox_l1_tv_joint(y, b, c, D, nonneg)
    npn = np.linalg.norm(p)
    return np.zeros_like(p) if npn <= a else (1.0 - a / npn) * p


def composite_objective(x, y, a, b, c, D):
    return 0.5 * np.sum((x - y) ** 2) + a * np.linalg.norm(x) + b * np.abs(x).sum() + c * np.abs(D @ x).sum()


def batch_stats_twin(X, k):
    """Numpy twin of ``calseg._summary_kernels.batch_stats`` written with loops over shifts.

    Returns ``(s1, ss, cross, dmed, med, peak)`` with the kernel's meanings.
    """
    X = np.asarray(X, dtype=np.float64)
    t, H, W = X.shape
    s1 = X.sum(axis=0)
    Xc = X - X.mean(axis=0)
    ss = (Xc * Xc).sum(axis=0)
    cross = np.zeros((4, H, W))
    for h, (dy, dx) in enumerate([(0, 1), (1, -1), (1, 0), (1, 1)]):
        for i in range(H):
            for j in range(W):
                ii, jj = i + dy, j + dx
                if 0 <= ii < H and 0 <= jj < W:
                    cross[h, i, j] = np.dot(Xc[:, i, j], Xc[:, ii, jj])
    def lower_median(V):
        return np.sort(V, axis=0)[(V.shape[0] - 1) // 2]

    med = lower_median(X)
    dmed = lower_median(np.abs(np.diff(X, axis=0))) if t >= 2 else np.zeros((H, W))
    kk = min(k, t)
    run = np.stack([X[s:s + kk].mean(axis=0) for s in range(t - kk + 1)])
    peak = run.max(axis=0) - med
    return s1, ss, cross, dmed, med, peak
