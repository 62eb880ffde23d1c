"""Numba kernels of FISTA on the box-constrained dual of the 2-D grid TV prox (private).

The dual of ``prox_{c TV}`` at an image ``v`` (H, W) is

    min_{|p_e| <= s}  1/2 ||v - G^T p||^2,          (G x)_e = x_a - x_b,   s <= c,

over the edges of the 4- or 8-connected grid in four families: horizontal (a = (i, j),
b = (i, j+1)), vertical (b = (i+1, j)), diagonal (b = (i+1, j+1)) and anti-diagonal
(a = (i, j+1), b = (i+1, j)); 4-connectivity uses the first two. The primal point is
``x = v - G^T p``.

Layout: inside the kernels the dual of one image is ``P`` (K, H + 1, W + 1), K = 2 or 4, with
edge (i, j) of family k at ``P[k, i + 1, j + 1]`` and every other entry 0 (row 0, column 0, the
missing edges), so ``G^T p`` is one branch-free stencil per pixel and every loop runs over
contiguous memory.

Step (FISTA with O'Donoghue-Candes gradient restart, per image), from the extrapolated
point ``z``::

    x = v - G^T z;  pn = clip(z + (G x) * L_inv, -s, s)
    restart if <z - pn, pn - p> > 0 (b = 0, t = 1), else b = (t - 1) / t_new
    z = pn + b (pn - p);  p = pn

in three passes (``x``, each family, ``z``): on images up to 512 x 512 this measured faster
than one fused row-by-row pass.

Two users: the certificate (``tv_dual_fista_columns``: a fixed number of steps on images stored
along the last axis; numpy twin ``calseg.certify.dualnorm._tv_dual_fista_numpy``) and
``prox_tv2d(method="fista_nb")`` (``tv_prox_fista_columns``: steps until a certified duality
gap; numpy twin ``tests/reference.py:tv_dual_fista_twin``). Kernels write into preallocated
outputs; every output of the dual is a clip to ``[-s, s]``, so it is feasible exactly.
"""
import numpy as np

from calseg._jit import helper, njit, prange


# ------------------------------------------------------------------------------------------
# one FISTA step

@helper
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


@helper
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


@helper
def _fista_step(v, Z, P, x, s, L_inv, K):
    """One projected gradient step from the extrapolated point ``Z``; returns the restart
    inner product. On return ``P`` holds the new iterate and ``Z`` the step ``pn - p``."""
    _gt_residual(v, Z, x, K)
    ip = 0.0
    for k in range(K):
        ip += _project_family(x, Z, P, k, s, L_inv)
    return ip


@helper
def _extrapolate(Z, P, b):
    """``Z = P + b Z`` (``pn + beta (pn - p)``) over the whole buffers; padding stays 0."""
    Zf = Z.reshape(-1)
    Pf = P.reshape(-1)
    for q in range(Zf.shape[0]):
        Zf[q] = Pf[q] + b * Zf[q]


@helper
def _primal_row(v, P, X, i, K):
    """Row i of the primal point ``X = v - G^T P`` in float64 (the certified iterate)."""
    W = v.shape[1]
    for j in range(W):
        a = (np.float64(P[0, i + 1, j]) - np.float64(P[0, i + 1, j + 1])
             + np.float64(P[1, i, j + 1]) - np.float64(P[1, i + 1, j + 1]))
        if K == 4:
            a += (np.float64(P[2, i, j]) - np.float64(P[2, i + 1, j + 1])
                  + np.float64(P[3, i, j + 1]) - np.float64(P[3, i + 1, j]))
        X[i, j] = v[i, j] + a


@helper
def _gap_row(X, P, c, i, K, out):
    """Prox-gap terms of the edges owned by row i: ``out = (sum c|dx| - p dx, sum c|dx|)``."""
    H, W = X.shape
    r = i + 1
    g = 0.0
    a = 0.0
    for j in range(W - 1):
        dx = X[i, j] - X[i, j + 1]
        g += c * abs(dx) - np.float64(P[0, r, j + 1]) * dx
        a += c * abs(dx)
    if i < H - 1:
        for j in range(W):
            dx = X[i, j] - X[i + 1, j]
            g += c * abs(dx) - np.float64(P[1, r, j + 1]) * dx
            a += c * abs(dx)
        if K == 4:
            for j in range(W - 1):
                dx = X[i, j] - X[i + 1, j + 1]
                g += c * abs(dx) - np.float64(P[2, r, j + 1]) * dx
                a += c * abs(dx)
                dx = X[i, j + 1] - X[i + 1, j]
                g += c * abs(dx) - np.float64(P[3, r, j + 1]) * dx
                a += c * abs(dx)
    out[0] = g
    out[1] = a


@helper
def _clip_dual(P, s):
    H1, W1 = P.shape[1], P.shape[2]
    for k in range(P.shape[0]):
        for i in range(H1):
            for j in range(W1):
                P[k, i, j] = min(max(P[k, i, j], -s), s)


@helper
def _next_check(it, gap, thr, check_min, check_max):
    """Iterations until the next gap check: half the distance to the target under a
    ``sqrt(gap) ~ 1/k`` model (certified error of FISTA decays at least that fast here)."""
    if not thr > 0.0 or not gap < 1e300 * thr:
        return check_max
    rho = np.sqrt(gap / thr)
    step = int(0.5 * max(it, check_min) * (rho - 1.0))
    return min(max(step, check_min), check_max)


@helper
def _momentum(ip, t, beta_buf):
    """FISTA momentum with O'Donoghue-Candes gradient restart; returns the new t."""
    t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
    if ip > 0.0:
        beta_buf[0] = 0.0
        return 1.0
    beta_buf[0] = (t - 1.0) / t_new
    return t_new


# ------------------------------------------------------------------------------------------
# the certificate: a fixed number of steps, images along the last axis


@helper
def _dual_fista_column(V, Pin, Pout, c, sc, n_iter, L_inv):
    """All ``n_iter`` steps of image ``c`` of ``V`` (H, W, m) in thread-local buffers."""
    H, W = V.shape[0], V.shape[1]
    K = len(Pin)
    dt = V.dtype
    s = sc[c]
    v = np.empty((H, W), dt)
    x = np.empty((H, W), dt)
    P = np.zeros((K, H + 1, W + 1), dt)
    beta_buf = np.zeros(1, dt)
    for i in range(H):
        for j in range(W):
            v[i, j] = V[i, j, c]
    for k in range(K):
        A = Pin[k]
        for i in range(A.shape[0]):
            for j in range(A.shape[1]):
                P[k, i + 1, j + 1] = min(max(A[i, j, c], -s), s)
    Z = P.copy()
    t = 1.0
    for _ in range(n_iter):
        ip = _fista_step(v, Z, P, x, s, L_inv, K)
        t = _momentum(ip, t, beta_buf)
        _extrapolate(Z, P, beta_buf[0])
    for k in range(K):
        A = Pout[k]
        for i in range(A.shape[0]):
            for j in range(A.shape[1]):
                A[i, j, c] = P[k, i + 1, j + 1]


@njit(parallel=True)
def tv_dual_fista_columns(V, Pin, Pout, sc, n_iter, L_inv):
    """``n_iter`` FISTA steps with per-image restart on the TV-prox dual of each image.

    V : (H, W, m) float32 or float64 (images along the last axis, as in the certificate).
    Pin, Pout : tuples of 2 (4-connected) or 4 (8-connected) family arrays of V's dtype, shapes
    ``(H, W-1, m), (H-1, W, m) [, (H-1, W-1, m), (H-1, W-1, m)]``; Pin is the start (clipped to
    the box first), Pout receives the result (may not alias Pin).
    sc : (m,) box half-widths in V's dtype; L_inv : step in V's dtype.

    Each image runs all its steps in cache-resident buffers; images in parallel (each owns its
    slice of Pout). ``|Pout| <= sc`` exactly.
    """
    for c in prange(V.shape[2]):
        _dual_fista_column(V, Pin, Pout, c, sc, n_iter, L_inv)


@njit
def tv_dual_fista_columns_serial(V, Pin, Pout, sc, n_iter, L_inv):
    """``tv_dual_fista_columns`` without threads (one image or tiny problems)."""
    for c in range(V.shape[2]):
        _dual_fista_column(V, Pin, Pout, c, sc, n_iter, L_inv)


# ------------------------------------------------------------------------------------------
# prox_tv2d(method="fista_nb"): steps until a certified duality gap


@helper
def _prox_image(v, P, c, s, thresh0, L_inv, rounding, max_iter, check_min, check_max, stall, X, stats):
    """Solve one image serially (see :func:`tv_prox_fista_columns`)."""
    H, W = v.shape
    K = P.shape[0]
    dt = P.dtype
    _clip_dual(P, s)
    vd = np.empty((H, W), dt)
    for i in range(H):
        for j in range(W):
            vd[i, j] = v[i, j]
    Z = P.copy()
    x = np.empty((H, W), dt)
    beta_buf = np.zeros(1, dt)
    gbuf = np.zeros(2)
    t = 1.0
    it = 0
    nxt = 0
    gap = np.inf
    best = np.inf
    best_it = 0
    status = 0.0
    while True:
        if it == nxt:
            for i in range(H):
                _primal_row(v, P, X, i, K)
            g = 0.0
            a = 0.0
            for i in range(H):
                _gap_row(X, P, c, i, K, gbuf)
                g += gbuf[0]
                a += gbuf[1]
            thr = max(thresh0, rounding * a)
            gap = max(g, 0.0)
            if gap <= thr:
                status = 1.0
                break
            if it >= max_iter:
                break
            if gap < 0.9 * best:
                best = gap
                best_it = it
            elif stall > 0 and it - best_it >= max(stall, it // 2):
                status = -1.0          # the gap stopped decreasing: rounding floor of dtype
                break
            nxt = min(it + _next_check(it, gap, thr, check_min, check_max), max_iter)
        ip = _fista_step(vd, Z, P, x, s, L_inv, K)
        t = _momentum(ip, t, beta_buf)
        _extrapolate(Z, P, beta_buf[0])
        it += 1
    stats[0] = gap
    stats[1] = it
    stats[2] = status


@njit(parallel=True)
def tv_prox_fista_columns(V, Q, c, s, thresh0, L_inv, rounding, max_iter, check_min, check_max, stall,
                          X, stats):
    """Prox of grid TV of every image by FISTA on its box-constrained dual, to a certified gap.

    For each image j (in parallel; each owns ``Q[j]``, ``X[j]``, ``stats[j]``):
    ``min_{|p| <= s_j} ||v_j - G^T p||^2 / 2`` from the warm start ``Q[j]`` (clipped to the box
    first), step ``L_inv``, per-image gradient restart, until the prox duality gap of
    ``X = v - G^T p`` (float64), ``gap = sum_e c_j |dx_e| - p_e dx_e``, is at most
    ``max(thresh0_j, rounding * c_j TV(X))`` or ``max_iter`` steps were taken. The gap is
    checked at step 0 and then at adaptively spaced steps in ``[check_min, check_max]``. With
    ``stall > 0`` an image also stops when its gap has not dropped by 10% for
    ``max(stall, steps / 2)`` steps (the rounding floor of a float32 dual; the caller then
    continues in float64).

    V : (r, H, W) float64; Q : (r, K, H + 1, W + 1) float32/float64, in/out (padded layout, K = 2
    for 4-connectivity, 4 for 8-connectivity); c : (r,) float64 weights (feasibility:
    ``s_j <= c_j``); s : (r,) box of Q's dtype; thresh0 : (r,) float64; L_inv : Q's dtype;
    X : (r, H, W) float64 out; stats : (r, 3) float64 out (gap, steps, status: 1 converged,
    0 out of steps, -1 stalled).
    """
    for j in prange(V.shape[0]):
        _prox_image(V[j], Q[j], c[j], s[j], thresh0[j], L_inv, rounding, max_iter, check_min,
                    check_max, stall, X[j], stats[j])


@njit
def tv_prox_fista_columns_serial(V, Q, c, s, thresh0, L_inv, rounding, max_iter, check_min, check_max,
                                 stall, X, stats):
    """``tv_prox_fista_columns`` without threads."""
    for j in range(V.shape[0]):
        _prox_image(V[j], Q[j], c[j], s[j], thresh0[j], L_inv, rounding, max_iter, check_min,
                    check_max, stall, X[j], stats[j])


# ------------------------------------------------------------------------------------------
# the TV value of images


@helper
def tv_image(x, H, W, eight):
    """Anisotropic grid TV ``sum |x_a - x_b|`` of an image ``x`` (H * W,) in C order, float64
    (numpy reference: the difference-matrix test of :func:`calseg.prox.norms.tv_value`)."""
    s = 0.0
    for i in range(H):
        r0 = i * W
        for j in range(W - 1):
            s += abs(x[r0 + j + 1] - x[r0 + j])
        if i + 1 < H:
            r1 = r0 + W
            for j in range(W):
                s += abs(x[r1 + j] - x[r0 + j])
            if eight:
                for j in range(W - 1):
                    s += abs(x[r1 + j + 1] - x[r0 + j])
                    s += abs(x[r1 + j] - x[r0 + j + 1])
    return s


@njit
def tv_rows(XT, H, W, eight, out):
    """``out[k]`` = :func:`tv_image` of image ``XT[k]``."""
    for k in range(XT.shape[0]):
        out[k] = tv_image(XT[k], H, W, eight)
