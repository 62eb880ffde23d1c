"""Numba kernels of the proximal operators (private; called through calseg.prox.tv).

Every kernel writes into preallocated outputs and has a numpy twin in ``tests/reference.py``.

Chains: a "chain" is a 1-D path of pixels in a flat image of ``n`` pixels, given by a start
index, a stride and a length (rows: stride 1; columns: stride W; diagonals: W + 1; anti-diagonals:
W - 1). The edges of a chain join consecutive pixels. A "family" is a set of disjoint chains
(all rows, all columns, ...); the anisotropic grid TV is the sum of its families' chain TVs.
"""
import numpy as np

from calseg._jit import helper, njit, prange


@helper
def tv1d_condat(y, lam, x):
    """Exact prox of ``lam * sum_k |x_{k+1} - x_k|`` at ``y`` (Condat 2013), written into ``x``.

    ``y`` and ``x`` are 1-D contiguous arrays of the same length (may be the same array:
    every output index is written after the last read of the same input index).
    Internal arithmetic is float64.

    Condat, "A direct algorithm for 1-D total variation denoising", IEEE SPL 20(11), 2013,
    Section III. Variables follow the paper: the current segment starts at ``k0``; ``vmin``/``vmax``
    bound its value; ``umin``/``umax`` are the running dual values under each hypothesis;
    ``km``/``kp`` are the last positions where the lower/upper bound was attained.
    """
    n = y.shape[0]
    if n == 0:
        return
    if n == 1 or lam <= 0.0:
        for i in range(n):
            x[i] = y[i]
        return
    lam = np.float64(lam)
    twolam = 2.0 * lam
    k = 0
    k0 = 0
    km = 0
    kp = 0
    vmin = np.float64(y[0]) - lam
    vmax = np.float64(y[0]) + lam
    umin = lam
    umax = -lam
    while True:
        # step 2: a segment of one sample at the end of the signal
        if k == n - 1:
            x[n - 1] = vmin + umin
            return
        # steps 3-6: scan forward
        while k < n - 1:
            yk1 = np.float64(y[k + 1])
            if yk1 + umin < vmin - lam:
                # negative jump: the segment [k0, km] takes the value vmin
                for i in range(k0, km + 1):
                    x[i] = vmin
                km += 1
                k = km
                k0 = km
                kp = km
                yk = np.float64(y[k])
                vmin = yk
                vmax = yk + twolam
                umin = lam
                umax = -lam
            elif yk1 + umax > vmax + lam:
                # positive jump: the segment [k0, kp] takes the value vmax
                for i in range(k0, kp + 1):
                    x[i] = vmax
                kp += 1
                k = kp
                k0 = kp
                km = kp
                yk = np.float64(y[k])
                vmin = yk - twolam
                vmax = yk
                umin = lam
                umax = -lam
            else:
                k += 1
                umin += yk1 - vmin
                umax += yk1 - vmax
                if umin >= lam:
                    vmin += (umin - lam) / (k - k0 + 1)
                    umin = lam
                    km = k
                if umax <= -lam:
                    vmax += (umax + lam) / (k - k0 + 1)
                    umax = -lam
                    kp = k
        # steps 7-9: the end of the signal was reached
        if umin < 0.0:
            for i in range(k0, km + 1):
                x[i] = vmin
            km += 1
            k = km
            k0 = km
            yk = np.float64(y[k])
            vmin = yk
            umin = lam
            umax = yk + lam - vmax
        elif umax > 0.0:
            for i in range(k0, kp + 1):
                x[i] = vmax
            kp += 1
            k = kp
            k0 = kp
            yk = np.float64(y[k])
            vmax = yk
            umax = -lam
            umin = yk - lam - vmin
        else:
            v = vmin + umin / (k - k0 + 1)
            for i in range(k0, n):
                x[i] = v
            return


@njit(parallel=True)
def tv1d_rows(Y, lam, X):
    """Condat 1-D TV prox of every row: ``X[i] = prox_{lam[i] TV}(Y[i])``.

    Y, X : (r, n) C-contiguous, same dtype; lam : (r,) float64.
    """
    r = Y.shape[0]
    for i in prange(r):
        tv1d_condat(Y[i], lam[i], X[i])


@helper
def _mean_item(Y, D, X, j):
    k = D.shape[0]
    inv = 1.0 / k
    for p in range(Y.shape[1]):
        acc = 0.0
        for f in range(k):
            acc += D[f, j, p]
        X[j, p] = Y[j, p] - acc * inv


@njit(parallel=True)
def dykstra_mean(Y, D, X):
    """``X[j] = Y[j] - mean_f D[f, j]`` for every image j (primal point of the family duals).

    Y, X : (r, n); D : (k, r, n). ``dykstra_mean_serial`` is the same without threads.
    """
    for j in prange(Y.shape[0]):
        _mean_item(Y, D, X, j)


@njit
def dykstra_mean_serial(Y, D, X):
    for j in range(Y.shape[0]):
        _mean_item(Y, D, X, j)


@helper
def _family_prox_item(X, Df, Dold, c, beta, k, starts, lengths, stride, group, dotbuf, t, ngr, maxlen):
    nch = starts.shape[0]
    j = t // ngr
    gi = t - j * ngr
    cj = c[j]
    if cj <= 0.0:
        dotbuf[j, gi] = 0.0
        return
    b = beta[j]
    c0 = gi * group
    c1 = min(c0 + group, nch)
    G = c1 - c0
    z = np.empty((G, maxlen), dtype=X.dtype)
    p = np.empty(maxlen, dtype=X.dtype)
    gl = 0
    for g in range(G):
        if lengths[c0 + g] > gl:
            gl = lengths[c0 + g]
    # gather z = X + Df along each chain
    if stride == 1:
        for g in range(G):
            s0 = starts[c0 + g]
            for i in range(lengths[c0 + g]):
                z[g, i] = X[j, s0 + i] + Df[j, s0 + i]
    else:
        for i in range(gl):
            for g in range(G):
                if i < lengths[c0 + g]:
                    idx = starts[c0 + g] + i * stride
                    z[g, i] = X[j, idx] + Df[j, idx]
    dot = 0.0
    for g in range(G):
        m = lengths[c0 + g]
        s0 = starts[c0 + g]
        tv1d_condat(z[g, :m], k * cj, p[:m])
        for i in range(m):
            z[g, i] -= p[i]
    # scatter d, the extrapolated point, and the restart inner product
    if stride == 1:
        for g in range(G):
            s0 = starts[c0 + g]
            for i in range(lengths[c0 + g]):
                idx = s0 + i
                dn = z[g, i]
                do = Dold[j, idx]
                dot += np.float64(Df[j, idx] - dn) * np.float64(dn - do)
                Df[j, idx] = dn
                Dold[j, idx] = dn + b * (dn - do)
    else:
        for i in range(gl):
            for g in range(G):
                if i < lengths[c0 + g]:
                    idx = starts[c0 + g] + i * stride
                    dn = z[g, i]
                    do = Dold[j, idx]
                    dot += np.float64(Df[j, idx] - dn) * np.float64(dn - do)
                    Df[j, idx] = dn
                    Dold[j, idx] = dn + b * (dn - do)
    dotbuf[j, gi] = dot


@njit(parallel=True)
def family_prox(X, Df, Dold, c, beta, k, starts, lengths, stride, group, dotbuf):
    """One family step of accelerated parallel Dykstra, in place on ``Df`` and ``Dold``.

    For every image j with ``c[j] > 0`` and chain (start, length) of the family:
    ``z = X[j] + Df[j]`` on the chain, ``p = prox_{k c_j TV_chain}(z)`` (Condat),
    ``Df[j] <- d = z - p`` and ``Dold[j] <- d + beta[j] * (d - Dold[j])`` on the chain (FISTA
    extrapolation). ``dotbuf[j, g] = sum (Df_in - d) * (d - Dold_in)`` over the chains of group g
    (O'Donoghue-Candes gradient restart test: restart when its total is > 0). Images with
    ``c[j] == 0`` are left untouched.

    Chains are processed in groups of ``group`` consecutive entries of ``starts``: for strided
    families, consecutive starts are adjacent pixels, so gathering element i of every chain of a
    group reads contiguous memory.

    X : (r, n); Df, Dold : (r, n); c, beta : (r,) float64; k : int (number of families);
    starts, lengths : (nch,) int64; stride : int; group : int >= 1;
    dotbuf : (r, ceil(nch / group)) float64.
    """
    ngr = (starts.shape[0] + group - 1) // group
    maxlen = lengths.max()
    for t in prange(X.shape[0] * ngr):
        _family_prox_item(X, Df, Dold, c, beta, k, starts, lengths, stride, group, dotbuf, t, ngr, maxlen)


@njit
def family_prox_serial(X, Df, Dold, c, beta, k, starts, lengths, stride, group, dotbuf):
    """``family_prox`` without threads (small problems: no thread start-up cost)."""
    ngr = (starts.shape[0] + group - 1) // group
    maxlen = lengths.max()
    for t in range(X.shape[0] * ngr):
        _family_prox_item(X, Df, Dold, c, beta, k, starts, lengths, stride, group, dotbuf, t, ngr, maxlen)


@helper
def _family_gap_item(X, Df, c, k, starts, lengths, stride, gapbuf, tvbuf, t, nch):
    j = t // nch
    ch = t - j * nch
    cj = c[j]
    s0 = starts[ch]
    m = lengths[ch]
    g = 0.0
    a = 0.0
    u = 0.0
    xa = np.float64(X[j, s0])
    for i in range(m - 1):
        u += np.float64(Df[j, s0 + i * stride])
        xb = np.float64(X[j, s0 + (i + 1) * stride])
        dx = xa - xb
        g += cj * abs(dx) - (u / k) * dx
        a += cj * abs(dx)
        xa = xb
    gapbuf[j, ch] = g
    tvbuf[j, ch] = a


@njit(parallel=True)
def family_gap(X, Df, c, k, starts, lengths, stride, gapbuf, tvbuf):
    """Prox-gap terms of one family: ``gapbuf[j, ch] = sum_e c_j |dx_e| - q_e dx_e``.

    Over the chain's edges e = (a, next a), ``dx_e = X[j, a] - X[j, next]`` and the family dual
    ``q = cumsum(Df[j] along the chain) / k`` (so ``Df = D_f^T (k q)``); each term is >= 0 when
    ``|q| <= c_j``. Accumulated in float64.

    ``tvbuf[j, ch] = sum_e c_j |dx_e|`` (the scale of the gap's rounding error).

    X, Df : (r, n); c : (r,) float64; gapbuf, tvbuf : (r, nch) float64.
    """
    nch = starts.shape[0]
    for t in prange(X.shape[0] * nch):
        _family_gap_item(X, Df, c, k, starts, lengths, stride, gapbuf, tvbuf, t, nch)


@njit
def family_gap_serial(X, Df, c, k, starts, lengths, stride, gapbuf, tvbuf):
    """``family_gap`` without threads."""
    nch = starts.shape[0]
    for t in range(X.shape[0] * nch):
        _family_gap_item(X, Df, c, k, starts, lengths, stride, gapbuf, tvbuf, t, nch)
