"""Proximal operators of total variation: exact 1-D (Condat) and 2-D anisotropic grid TV.

2-D TV of an image x of shape (H, W) (flattened in C order) on the 4- or 8-connected grid is
``TV(x) = sum_{(a,b) in E} |x_a - x_b|`` (diagonal edges weight 1). Its prox

    prox_{c TV}(y) = argmin_x  c TV(x) + ||x - y||^2 / 2

has no closed form; three solvers sit in a registry, ``TV2D_METHODS``:

* ``"fista_nb"`` (default): FISTA with gradient restart on the box-constrained dual
  ``min_{|q|_inf <= c} ||y - D^T q||^2 / 2``, step ``1 / ||D||^2`` (8 or 12), in numba
  kernels: each image runs all its steps in cache-resident buffers, threads over images when
  the problem is large, gap checks spaced adaptively, float32 steps when their rounding cannot
  matter (see :func:`_fista_nb`). Cheap steps (~1 ns per edge), so it needs more of them than
  dykstra but is 3-30x faster on the solver's warm-started 72 x 72 columns and on 512 x 512
  images; very large weights (``c`` many times the noise) favour dykstra.
* ``"dykstra"``: the edges split into 1-D chain families (rows, columns and, for
  8-connectivity, both diagonals); each family's prox is exact by Condat's algorithm and the
  families are combined by parallel Dykstra-like splitting (Combettes & Pesquet 2011),
  accelerated as FISTA on the family duals with gradient restart. Numba kernels, threads over
  (image, group of chains) when the problem is large. Few, expensive iterations.
* ``"fista"`` (simple numpy reference): FISTA on the same dual as ``"fista_nb"``, step 1/16,
  no restart.

All keep a dual-feasible ``q`` with primal point ``x = y - D^T q`` and stop on the prox duality
gap ``gap = c ||D x||_1 - <q, D x> >= 0``, which bounds the distance to the exact prox:
``||x - x*||_2 <= sqrt(2 gap)``. ``tol`` is a relative distance: a column stops once
``sqrt(2 gap) <= tol * ||y - mean(y)||_2`` (TV prox commutes with adding a constant, so the
constant part of y does not count). A gap below ``1e-15 * c * TV(x)`` is float64 rounding noise
and also counts as converged, so tolerances below about 1e-7 are met only as far as rounding
allows. The bound is pessimistic: the true error is typically 10-50x below ``tol``.
The gap and the returned x are computed in float64 whatever the input dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calseg.errors import ConfigError
from calseg.prox.norms import as_columns, column_weights, validate_image_shape

__all__ = ["TV2D_METHODS", "TVState", "chain_families", "prox_tv1d", "prox_tv2d"]


@dataclass(frozen=True)
class TVState:
    """Opaque warm-start state of :func:`prox_tv2d` (pass it back unchanged)."""

    method: str
    image_shape: tuple
    connectivity: int
    r: int
    dtype: np.dtype
    arrays: tuple

    def matches(self, method, image_shape, connectivity, r, dtype):
        return (
            self.method == method
            and self.image_shape == tuple(image_shape)
            and self.connectivity == connectivity
            and self.r == r
            and self.dtype == dtype
        )


def prox_tv1d(X, weight):
    """Exact prox of 1-D total variation of each column (Condat's direct algorithm).

    Parameters
    ----------
    X : ndarray of shape (n,) or (n, r)
        Signals along axis 0, e.g. time series of length n.
    weight : float or ndarray of shape (r,)
        TV weight per column, >= 0 (0 returns the column unchanged).

    Returns
    -------
    ndarray, same shape and floating dtype as X
        ``argmin_x weight * sum_k |x_{k+1} - x_k| + ||x - X||^2 / 2`` per column.

    Notes
    -----
    L. Condat, "A direct algorithm for 1-D total variation denoising", IEEE Signal Processing
    Letters 20(11):1054-1057, 2013. Non-iterative and exact up to rounding; linear time in
    practice. Computed in float64 internally, returned in the input dtype.
    """
    from calseg.prox import _kernels

    X2, was_1d = as_columns(X)
    n, r = X2.shape
    lam = column_weights(weight, r, "weight")
    Yt = np.ascontiguousarray(X2.T)
    out = np.empty_like(Yt)
    _kernels.tv1d_rows(Yt, lam, out)
    Y = out.T
    return Y[:, 0].copy() if was_1d else np.ascontiguousarray(Y) if X2.flags.c_contiguous else Y


def chain_families(image_shape, connectivity=8):
    """The grid's edges as families of disjoint 1-D chains in a C-ordered flat image.

    Returns
    -------
    list of (starts, lengths, stride)
        One entry per non-empty family (rows, columns, down-right diagonals, down-left
        diagonals); ``starts``, ``lengths`` are int64 arrays over the family's chains of length
        >= 2; chain i visits ``starts[i] + stride * (0 .. lengths[i] - 1)``.
    """
    H, W = validate_image_shape(image_shape, connectivity=connectivity)
    fams = []
    if W >= 2:
        fams.append((np.arange(H) * W, np.full(H, W), 1))
    if H >= 2:
        fams.append((np.arange(W), np.full(W, H), W))
    if connectivity == 8 and H >= 2 and W >= 2:
        # down-right: (y, x) -> (y + 1, x + 1); starts on the top row and the left column
        s_top = np.arange(W)
        l_top = np.minimum(H, W - s_top)
        ys = np.arange(1, H)
        s = np.concatenate([s_top, ys * W])
        ln = np.concatenate([l_top, np.minimum(H - ys, W)])
        fams.append((s, ln, W + 1))
        # down-left: (y, x) -> (y + 1, x - 1); starts on the top row and the right column
        l_top = np.minimum(H, s_top + 1)
        s = np.concatenate([s_top, ys * W + W - 1])
        ln = np.concatenate([l_top, np.minimum(H - ys, W)])
        fams.append((s, ln, W - 1))
    out = []
    for s, ln, stride in fams:
        keep = ln >= 2
        if keep.any():
            out.append((s[keep].astype(np.int64), ln[keep].astype(np.int64), int(stride)))
    return out


def _tree_mean_certificate(Y, image_shape):
    """Columns whose TV prox is exactly their mean, certified by a spanning-tree dual.

    The dual ``q`` supported on the tree (all row edges + the vertical edges of column 0) with
    ``D^T q = y - mean(y)`` is unique; if ``max|q| <= c`` it is feasible and the prox is the
    constant ``mean(y)`` (for any graph containing the tree). Returns ``max|q|`` per column.

    Y : (r, n) float.
    """
    H, W = image_shape
    r = Y.shape[0]
    Yc = Y.reshape(r, H, W).astype(np.float64)
    Yc = Yc - Yc.mean(axis=(1, 2), keepdims=True)
    rows = Yc.sum(axis=2)
    m = np.zeros(r)
    if W >= 2:
        qh = np.cumsum(Yc, axis=2)[:, :, :-1] - rows[:, :, None]
        m = np.maximum(m, np.abs(qh).max(axis=(1, 2)))
    if H >= 2:
        qv = np.cumsum(rows, axis=1)[:, :-1]
        m = np.maximum(m, np.abs(qv).max(axis=1))
    return m


def _dykstra(Yt, c, image_shape, connectivity, tol, max_iter, warm, check_every=4):
    """Accelerated parallel Dykstra over chain families (FISTA on the dual, adaptive restart).

    With k families and ``d_f = D_f^T u_f`` the scaled family duals, the iteration
    ``x = y - mean_f d_f;  d_f <- (x + d_f) - prox_{k c TV_f}(x + d_f)`` is proximal gradient
    (step 1/k) on the dual ``min_u ||y - sum_f D_f^T u_f / k||^2 / 2`` s.t. ``|u_f| <= k c``
    (parallel Dykstra-like splitting). It is accelerated by FISTA extrapolation of ``d`` with
    O'Donoghue-Candes gradient restart. ``x = y - mean_f d_f`` of a non-extrapolated ``d`` is the
    primal point of a feasible dual, so its prox gap certifies it.
    """
    from calseg.prox import _kernels

    r, n = Yt.shape
    fams = chain_families(image_shape, connectivity)
    k = len(fams)
    # threads only pay off on large problems (a parallel region costs a thread wake-up)
    if r * n >= PARALLEL_MIN_SIZE:
        k_mean, k_prox, k_gap = _kernels.dykstra_mean, _kernels.family_prox, _kernels.family_gap
    else:
        k_mean = _kernels.dykstra_mean_serial
        k_prox, k_gap = _kernels.family_prox_serial, _kernels.family_gap_serial
    X = np.empty_like(Yt)
    cur = warm.arrays[0].copy() if warm is not None else np.zeros((k, r, n), dtype=Yt.dtype)
    hat = cur.copy()
    scale = np.sqrt(((Yt - Yt.mean(axis=1, keepdims=True)).astype(np.float64) ** 2).sum(axis=1))
    thresh0 = 0.5 * (tol * scale) ** 2
    thresh = thresh0.copy()
    gapbufs = [np.zeros((r, len(f[0]))) for f in fams]
    group = 8
    dotbufs = [np.zeros((r, -(-len(f[0]) // group))) for f in fams]
    t = np.ones(r)
    active = c > 0
    gap = np.zeros(r)
    gap_known = False
    it = 0
    converged = not active.any()

    tvbufs = [np.zeros((r, len(f[0]))) for f in fams]

    def measure_gap():
        k_mean(Yt, cur, X)
        g = np.zeros(r)
        ctv = np.zeros(r)
        for f, (s, ln, stride) in enumerate(fams):
            k_gap(X, cur[f], c, k, s, ln, stride, gapbufs[f], tvbufs[f])
            g += gapbufs[f].sum(axis=1)
            ctv += tvbufs[f].sum(axis=1)
        # below ROUNDING * c TV(x) the computed gap is rounding noise: count it as converged
        thresh[:] = np.maximum(thresh0, ROUNDING * ctv)
        return np.where(c > 0, np.maximum(g, 0.0), 0.0)

    while not converged and it < max_iter:
        if it % check_every == 0 and (it > 0 or warm is None):
            gap = measure_gap()
            gap_known = True
            done = active & (gap <= thresh)
            if done.any():
                hat[:, done] = cur[:, done]
                active &= ~done
            if not active.any():
                converged = True
                break
        ca = np.where(active, c, 0.0)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        beta = np.where(active, (t - 1.0) / t_new, 0.0)
        k_mean(Yt, hat, X)
        for f, (s, ln, stride) in enumerate(fams):
            k_prox(X, hat[f], cur[f], ca, beta, k, s, ln, stride, group, dotbufs[f])
        # hat now holds the new iterate, cur the extrapolated point: swap roles
        cur, hat = hat, cur
        dot = sum(db.sum(axis=1) for db in dotbufs)
        restart = active & (dot > 0)
        if restart.any():
            hat[:, restart] = cur[:, restart]
            t_new[restart] = 1.0
        t = t_new
        it += 1
        gap_known = False
    if not converged or not gap_known:
        gap = measure_gap()
        converged = bool(np.all(gap[c > 0] <= thresh[c > 0]))
    else:
        k_mean(Yt, cur, X)
    return X, (cur,), {"n_iter": it, "gap": gap, "converged": converged}


def _grad_ops(image_shape, connectivity):
    H, W = image_shape

    def D(x):  # x (r, H, W) -> list of edge arrays, (D x)_e = x_a - x_b
        out = [x[:, :, :-1] - x[:, :, 1:], x[:, :-1, :] - x[:, 1:, :]]
        if connectivity == 8:
            out.append(x[:, :-1, :-1] - x[:, 1:, 1:])
            out.append(x[:, :-1, 1:] - x[:, 1:, :-1])
        return out

    def DT(q, out):  # out (r, H, W) <- D^T q
        out[:] = 0
        out[:, :, :-1] += q[0]
        out[:, :, 1:] -= q[0]
        out[:, :-1, :] += q[1]
        out[:, 1:, :] -= q[1]
        if connectivity == 8:
            out[:, :-1, :-1] += q[2]
            out[:, 1:, 1:] -= q[2]
            out[:, :-1, 1:] += q[3]
            out[:, 1:, :-1] -= q[3]
        return out

    return D, DT


def _fista(Yt, c, image_shape, connectivity, tol, max_iter, warm, check_every=10):
    H, W = image_shape
    r, n = Yt.shape
    Y = Yt.reshape(r, H, W)
    D, DT = _grad_ops(image_shape, connectivity)
    shapes = [e.shape for e in D(Y[:1])]
    L = 8.0 if connectivity == 4 else 16.0
    cb = c.astype(Yt.dtype)[:, None, None]
    if warm is not None:
        q = [np.clip(a, -cb, cb) for a in warm.arrays]
    else:
        q = [np.zeros((r,) + s[1:], dtype=Yt.dtype) for s in shapes]
    z = [a.copy() for a in q]
    t = 1.0
    tmp = np.empty_like(Y)
    scale = np.sqrt(((Yt - Yt.mean(axis=1, keepdims=True)).astype(np.float64) ** 2).sum(axis=1))
    thresh0 = 0.5 * (tol * scale) ** 2
    thresh = thresh0.copy()
    gap = np.zeros(r)
    converged = False
    it = 0

    def gap_of(q):
        x = Y - DT(q, tmp)
        g = np.zeros(r)
        ctv = np.zeros(r)
        for qe, de in zip(q, D(x)):
            g += (c[:, None, None] * np.abs(de) - qe * de).sum(axis=(1, 2), dtype=np.float64)
            ctv += (c[:, None, None] * np.abs(de)).sum(axis=(1, 2), dtype=np.float64)
        thresh[:] = np.maximum(thresh0, ROUNDING * ctv)
        return np.maximum(g, 0.0), x

    while it < max_iter:
        if it % check_every == 0:
            gap, _ = gap_of(q)
            if np.all(gap <= thresh):
                converged = True
                break
        x = Y - DT(z, tmp)
        grads = D(x)
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_new
        for e in range(len(q)):
            q_new = np.clip(z[e] + grads[e] / L, -cb, cb)
            z[e] = q_new + beta * (q_new - q[e])
            q[e] = q_new
        t = t_new
        it += 1
    if not converged:
        gap, _ = gap_of(q)
        converged = bool(np.all(gap <= thresh))
    x = (Y - DT(q, tmp)).reshape(r, n)
    return x.copy(), tuple(q), {"n_iter": it, "gap": gap, "converged": converged}


def _round_down(x, dt):
    """Float64 ``x`` rounded *down* in magnitude to dtype ``dt`` (a box that stays feasible)."""
    x = np.asarray(x, dtype=np.float64)
    xd = x.astype(dt)
    return np.where(np.abs(xd.astype(np.float64)) > np.abs(x), np.nextafter(xd, dt(0)), xd).astype(dt)


def _float32_steps_ok(c, thresh0, n_edges):
    """Whether float32 dual steps can reach the gap thresholds: the rounding of a float32 dual
    moves ``x`` by ~``8 eps32 c`` per pixel and costs up to ``2 c |dx|`` per edge, so the gap
    floor is about ``16 eps32 c^2 |E|``; it must stay below every active threshold."""
    floor32 = 16.0 * np.finfo(np.float32).eps * c ** 2 * n_edges
    act = c > 0
    return bool(np.all(floor32[act] <= thresh0[act]))


def _fista_nb(Yt, c, image_shape, connectivity, tol, max_iter, warm):
    """FISTA with gradient restart on the box-constrained dual, numba kernels.

    The same dual as ``"fista"`` (``min_{|q| <= c} ||y - D^T q||^2 / 2``) with step
    ``1 / ||D||^2`` (``||D||^2 <= 8`` on the 4-connected grid and ``<= 12`` on the 8-connected
    one, tighter than the degree bound 16), and O'Donoghue-Candes gradient restart. Each image
    runs all its steps in its own cache-resident buffers (one thread per image when the problem
    is large), with adaptively spaced gap checks. The mean is removed first (TV prox commutes
    with constants).

    Precision: the steps run in float32 (half the memory traffic) when the rounding of a
    float32 dual cannot keep the gap above the target, i.e. when ``16 eps32 c^2 |E|`` (|E|
    edges) is below the gap threshold; an image whose gap still stalls continues in float64
    from where it stopped. Whatever the step precision, the box is rounded down so ``q`` stays
    feasible and the gap of ``x = y - D^T q`` is evaluated in float64, so the certificate holds.
    """
    from calseg.prox import _dual_kernels

    H, W = image_shape
    r, n = Yt.shape
    K = 4 if connectivity == 8 else 2
    mean = Yt.mean(axis=1, keepdims=True)
    V = np.ascontiguousarray((Yt - mean).reshape(r, H, W), dtype=np.float64)
    scale = np.sqrt(np.einsum("ijk,ijk->i", V, V))
    thresh0 = 0.5 * (tol * scale) ** 2
    c = np.ascontiguousarray(c, dtype=np.float64)
    n_edges = H * (W - 1) + (H - 1) * W + (2 * (H - 1) * (W - 1) if connectivity == 8 else 0)
    use32 = _float32_steps_ok(c, thresh0, n_edges)
    shape = (r, K, H + 1, W + 1)
    if warm is not None and warm.arrays and warm.arrays[0].shape == shape:
        Q0 = warm.arrays[0]
    else:
        Q0 = np.zeros(shape)
    X = np.empty((r, H, W))
    stats = np.zeros((r, 3))
    steps = np.zeros(r)
    todo = np.arange(r)
    for dt in ((np.float32, np.float64) if use32 else (np.float64,)):
        Q = np.array(Q0, dtype=dt, order="C")
        if todo.size < r:
            Q, V_, c_, t_ = Q[todo], V[todo], c[todo], thresh0[todo]
            budget = int(max_iter - steps[todo].max())
        else:
            V_, c_, t_, budget = V, c, thresh0, int(max_iter)
        X_, st = np.empty((todo.size, H, W)), np.zeros((todo.size, 3))
        L_inv = dt(1.0 / (12.0 if connectivity == 8 else 8.0))
        stall = FISTA_NB_STALL if dt is np.float32 else 0
        # one thread per image, only when there is enough work to pay for waking the threads
        parallel = todo.size > 1 and todo.size * n >= PARALLEL_MIN_SIZE
        kern = _dual_kernels.tv_prox_fista_columns if parallel else \
            _dual_kernels.tv_prox_fista_columns_serial
        kern(V_, Q, c_, _round_down(c_, dt), t_, L_inv, ROUNDING, max(budget, 0),
             FISTA_NB_CHECK[0], FISTA_NB_CHECK[1], stall, X_, st)
        X[todo], stats[todo] = X_, st
        steps[todo] += st[:, 1]
        if todo.size < r:
            Q0 = np.array(Q0, dtype=dt)
            Q0[todo] = Q
        else:
            Q0 = Q
        todo = todo[st[:, 2] < 0]                    # stalled in float32: go on in float64
        if todo.size == 0:
            break
    X = X.reshape(r, n)
    X += mean
    active = c > 0
    info = {"n_iter": int(steps.max()) if r else 0, "gap": stats[:, 0].copy(),
            "converged": bool(np.all(stats[active, 2] > 0))}
    return X, (Q0,), info


FISTA_NB_CHECK = (4, 50)
"""Bounds on the number of ``"fista_nb"`` steps between two gap checks."""

FISTA_NB_STALL = 200
"""float32 ``"fista_nb"`` steps without a 10% gap decrease before an image moves to float64."""


PARALLEL_MIN_SIZE = 1 << 16
"""Problems with fewer than this many pixel-columns (r * H * W) run the serial kernels."""

ROUNDING = 1e-15
"""A gap below ``ROUNDING * c * TV(x)`` is rounding noise of its float64 sum and counts as met."""

TV2D_METHODS = {"fista_nb": _fista_nb, "dykstra": _dykstra, "fista": _fista}
"""Registry of 2-D TV prox solvers: name -> solver(Yt (r, n), c (r,), image_shape, connectivity,
tol, max_iter, warm_state_or_None) -> (X (r, n), state arrays, info dict)."""

TV2D_MAX_ITER = {"fista_nb": 20000, "dykstra": 500, "fista": 500}
"""Default iteration budget of each method (``prox_tv2d(max_iter=None)``)."""


def prox_tv2d(X, weight, image_shape, *, connectivity=8, method="fista_nb", tol=1e-6,
              max_iter=None, warm=None):
    """Prox of anisotropic grid total variation of each column (an image flattened in C order).

    Parameters
    ----------
    X : ndarray of shape (n,) or (n, r), n = H * W
    weight : float or ndarray of shape (r,)
        TV weight c per column, >= 0.
    image_shape : (int, int)
        (H, W).
    connectivity : {4, 8}
    method : {"fista_nb", "dykstra", "fista"}
        See the module docstring; all give the same answer up to ``tol``.
    tol : float
        Relative accuracy certified by the duality gap: a column stops when
        ``sqrt(2 gap) <= tol * ||y - mean(y)||``, which implies
        ``||x - prox(y)|| <= tol * ||y - mean(y)||``.
    max_iter : int or None
        Iteration budget (the result is then returned with ``info["converged"] = False``).
        None: the method's default, ``TV2D_MAX_ITER[method]`` (an iteration of ``"fista_nb"``
        costs ~1/30 of a ``"dykstra"`` one, hence its larger budget).
    warm : TVState or None
        State returned by a previous call; used when method, image shape, connectivity,
        number of columns and dtype match, silently ignored otherwise.

    Returns
    -------
    Y : ndarray, same shape and floating dtype as X (computed in float64 internally)
    state : TVState
        Warm-start state for the next call.
    info : dict
        ``n_iter`` (int), ``converged`` (bool), ``gap`` (ndarray of shape (r,), final prox
        duality gap per column), ``method`` (str), ``n_mean`` (columns answered in closed form).

    Notes
    -----
    Columns whose prox is provably the constant ``mean(y)`` (a spanning-tree dual certificate)
    are answered directly; the others go to the chosen solver.
    """
    if method not in TV2D_METHODS:
        raise ConfigError(f"method must be one of {sorted(TV2D_METHODS)}, got {method!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise ConfigError(f"tol must be a finite number > 0, got {tol!r}")
    if max_iter is None:
        max_iter = TV2D_MAX_ITER[method]
    if int(max_iter) != max_iter or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    X2, was_1d = as_columns(X)
    n, r = X2.shape
    H, W = validate_image_shape(image_shape, n, connectivity)
    c = column_weights(weight, r, "weight")
    shape = (H, W)
    # solved in float64 whatever the input dtype: in float32 the rounding of the duality gap
    # (~ edges * c * eps * |x|) would stall the certified stopping rule near 1e-4
    Yt = np.ascontiguousarray(X2.T, dtype=np.float64)
    if warm is not None and not (isinstance(warm, TVState) and warm.matches(method, shape, connectivity, r, Yt.dtype)):
        warm = None
    out = Yt.copy()
    info = {"n_iter": 0, "gap": np.zeros(r), "converged": True, "method": method, "n_mean": 0}
    state_arrays = warm.arrays if warm is not None else None
    todo = c > 0
    if H * W > 1 and todo.any():
        qmax = _tree_mean_certificate(Yt, shape)
        mean_cols = todo & (qmax <= c)
        if mean_cols.any():
            out[mean_cols] = Yt[mean_cols].mean(axis=1, keepdims=True).astype(Yt.dtype)
            info["n_mean"] = int(mean_cols.sum())
        solve = todo & ~mean_cols
        if solve.any():
            # the solver runs on all columns (keeps the state shape fixed); done columns get c = 0
            cs = np.where(solve, c, 0.0)
            Xs, state_arrays, sinfo = TV2D_METHODS[method](Yt, cs, shape, connectivity, tol,
                                                           int(max_iter), warm)
            out[solve] = Xs[solve]
            info.update(sinfo)
    state = TVState(method, shape, connectivity, r, Yt.dtype, state_arrays if state_arrays is not None else ())
    if not state.arrays:
        state = None
    Y = out.T.astype(X2.dtype)
    if was_1d:
        return Y[:, 0].copy(), state, info
    return np.ascontiguousarray(Y), state, info
