"""Numba kernels of FISTA on the box-constrained dual of the 2-D grid TV prox (private).

The dual of ``prox_{TV}`` at an image ``v`` (H, W) with box ``|p_e| <= s`` is

    min_{|p_e| <= s}  1/2 ||v - G^T p||^2,          (G x)_e = x_a - x_b,

over the edges of the 4- or 8-connected grid in four families, each stored as an array:
horizontal ``(H, W-1)`` (a = (i, j), b = (i, j+1)), vertical ``(H-1, W)`` (b = (i+1, j)),
diagonal ``(H-1, W-1)`` (b = (i+1, j+1)) and anti-diagonal ``(H-1, W-1)`` (a = (i, j+1),
b = (i+1, j)); 4-connectivity uses the first two. This is the layout of
``calseg.certify.dualnorm._grad``.

Inside a kernel each family lives in a zero-padded ``(H + 1, W + 1)`` buffer (edge ``(i, j)`` at
``[i + 1, j + 1]``, every other entry 0), so ``G^T p`` is one branch-free stencil per pixel and
every loop runs over contiguous memory. Every kernel writes into preallocated outputs; the numpy
twin is ``calseg.certify.dualnorm._tv_dual_fista_numpy``.
"""
import functools

import numpy as np

from calseg._jit import FASTMATH, njit as _calseg_njit, prange

njit = functools.partial(_calseg_njit, fastmath=set(FASTMATH))


@njit
def _gt_residual(v, Z, x, K):
    """``x = v - G^T z`` for the padded family buffers ``Z`` (K, H + 1, W + 1)."""
    H, W = v.shape
    for i in range(H):
        if K == 4:
            for j in range(W):
                x[i, j] = (v[i, j] - Z[0, i + 1, j + 1] + Z[0, i + 1, j]
                           - Z[1, i + 1, j + 1] + Z[1, i, j + 1]
                           - Z[2, i + 1, j + 1] + Z[2, i, j]
                           - Z[3, i + 1, j] + Z[3, i, j + 1])
        else:
            for j in range(W):
                x[i, j] = (v[i, j] - Z[0, i + 1, j + 1] + Z[0, i + 1, j]
                           - Z[1, i + 1, j + 1] + Z[1, i, j + 1])


@njit
def _project_family(x, Z, P, k, s, L_inv):
    """Projected gradient step of family ``k``; returns its restart inner product (float64).

    On every edge e: ``pn = clip(z + (x_a - x_b) / L, -s, s)``, accumulate
    ``(z - pn) (pn - p)``, then ``Z <- pn - p`` (the step, used by the extrapolation) and
    ``P <- pn``.
    """
    H, W = x.shape
    ip = 0.0
    if k == 0:
        i0, i1, j0, j1, di, djb, dja = 0, H, 0, W - 1, 0, 1, 0
    elif k == 1:
        i0, i1, j0, j1, di, djb, dja = 0, H - 1, 0, W, 1, 0, 0
    elif k == 2:
        i0, i1, j0, j1, di, djb, dja = 0, H - 1, 0, W - 1, 1, 1, 0
    else:
        i0, i1, j0, j1, di, djb, dja = 0, H - 1, 0, W - 1, 1, 0, 1
    for i in range(i0, i1):
        for j in range(j0, j1):
            z = Z[k, i + 1, j + 1]
            u = z + (x[i, j + dja] - x[i + di, j + djb]) * L_inv
            pn = min(max(u, -s), s)
            po = P[k, i + 1, j + 1]
            ip += np.float64(z - pn) * np.float64(pn - po)
            Z[k, i + 1, j + 1] = pn - po
            P[k, i + 1, j + 1] = pn
    return ip


@njit
def _dual_fista_column(V, Pin, Pout, c, sc, n_iter, K, L_inv):
    """All ``n_iter`` FISTA steps of column ``c`` of ``V`` (H, W, m) in thread-local buffers."""
    H, W = V.shape[0], V.shape[1]
    dt = V.dtype
    s = sc[c]
    v = np.empty((H, W), dt)
    x = np.empty((H, W), dt)
    Z = np.zeros((K, H + 1, W + 1), dt)
    P = np.zeros((K, H + 1, W + 1), dt)
    beta_buf = np.empty(1, dt)
    for i in range(H):
        for j in range(W):
            v[i, j] = V[i, j, c]
    # start: the given p clipped to the box (z = p)
    for k in range(K):
        A = Pin[k]
        for i in range(A.shape[0]):
            for j in range(A.shape[1]):
                P[k, i + 1, j + 1] = min(max(A[i, j, c], -s), s)
    Zf = Z.reshape(-1)
    Pf = P.reshape(-1)
    for q in range(Zf.shape[0]):
        Zf[q] = Pf[q]
    t = 1.0
    for _ in range(n_iter):
        _gt_residual(v, Z, x, K)
        ip = 0.0
        for k in range(K):
            ip += _project_family(x, Z, P, k, s, L_inv)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        if ip > 0.0:                     # the step went against the momentum: restart
            beta_buf[0] = 0.0
            t = 1.0
        else:
            beta_buf[0] = (t - 1.0) / t_new
            t = t_new
        b = beta_buf[0]
        # z = pn + beta (pn - p); padding stays 0 (0 + b * 0)
        for q in range(Zf.shape[0]):
            Zf[q] = Pf[q] + b * Zf[q]
    for k in range(K):
        A = Pout[k]
        for i in range(A.shape[0]):
            for j in range(A.shape[1]):
                A[i, j, c] = P[k, i + 1, j + 1]


@njit(parallel=True)
def tv_dual_fista_columns(V, Pin, Pout, sc, n_iter, L_inv):
    """``n_iter`` FISTA steps with per-column adaptive restart on the TV-prox dual of each column.

    V : (H, W, m) float32 or float64 (images along the last axis, as in the certificate).
    Pin, Pout : tuples of 2 (4-connected) or 4 (8-connected) family arrays of V's dtype, shapes
    ``(H, W-1, m), (H-1, W, m) [, (H-1, W-1, m), (H-1, W-1, m)]``; Pin is the start (clipped to
    the box first), Pout receives the result (may not alias Pin).
    sc : (m,) box half-widths in V's dtype; L_inv : ``1 / ||G||^2`` bound in V's dtype
    (1/8 for 4-connected, 1/16 for 8-connected).

    Step (O'Donoghue-Candes gradient restart per column)::

        x = v - G^T z;  pn = clip(z + G x * L_inv, -s, s)
        restart if <z - pn, pn - p> > 0 (then beta = 0, t = 1) else beta = (t - 1) / t_new
        z = pn + beta (pn - p);  p = pn

    Every output entry is a clip to ``[-sc, sc]``, so ``|Pout| <= sc`` exactly. Columns are
    independent and run in parallel (each owns its slice of Pout).
    """
    K = len(Pin)
    for c in prange(V.shape[2]):
        _dual_fista_column(V, Pin, Pout, c, sc, n_iter, K, L_inv)


@njit
def tv_dual_fista_columns_serial(V, Pin, Pout, sc, n_iter, L_inv):
    """``tv_dual_fista_columns`` without threads (one column or tiny problems)."""
    K = len(Pin)
    for c in range(V.shape[2]):
        _dual_fista_column(V, Pin, Pout, c, sc, n_iter, K, L_inv)
