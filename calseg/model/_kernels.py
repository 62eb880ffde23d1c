"""Numba kernel of the calcium-decay filter (numpy/scipy twin: ``scipy.signal.lfilter``).

``scipy.signal.lfilter(..., axis=0)`` on a C-ordered (T, m) block walks each column with a
stride of m elements; this kernel runs the recursion one frame at a time over a band of columns
(contiguous, vectorised), bands in parallel for wide blocks (a serial driver for narrow ones,
where waking threads costs more than the work).
"""
from __future__ import annotations

import numpy as np

from .._jit import helper, njit, prange

BAND = 256


@helper
def _ar_band(X, a1, a2, scale, adjoint, out, c0, c1):
    T = X.shape[0]
    n = c1 - c0
    u1 = np.zeros(n, out.dtype)
    u2 = np.zeros(n, out.dtype)
    if not adjoint:
        for t in range(T):
            s = scale[t]
            for q in range(n):
                u = s * X[t, c0 + q] + a1 * u1[q] + a2 * u2[q]
                u2[q] = u1[q]
                u1[q] = u
                out[t, c0 + q] = u
    else:
        for t in range(T - 1, -1, -1):
            s = scale[t]
            for q in range(n):
                u = X[t, c0 + q] + a1 * u1[q] + a2 * u2[q]
                u2[q] = u1[q]
                u1[q] = u
                out[t, c0 + q] = s * u


@njit
def ar_filter_serial(X, a1, a2, scale, adjoint, out):
    """AR(2) recursion along axis 0 of ``X`` (T, m) into ``out`` (same shape and dtype).

    Forward: ``out[t] = scale[t] * X[t] + a1 * out[t-1] + a2 * out[t-2]``
    (``lfilter([1], [1, -a1, -a2], scale * X)``).
    Adjoint (time reversed, scale applied after): ``u[t] = X[t] + a1 u[t+1] + a2 u[t+2]``,
    ``out[t] = scale[t] * u[t]``. ``a2 = 0`` gives AR(1).
    """
    m = X.shape[1]
    for c0 in range(0, m, BAND):
        _ar_band(X, a1, a2, scale, adjoint, out, c0, min(c0 + BAND, m))


@njit(parallel=True)
def ar_filter(X, a1, a2, scale, adjoint, out):
    """:func:`ar_filter_serial` with bands of columns in parallel."""
    m = X.shape[1]
    nb = (m + BAND - 1) // BAND
    for b in prange(nb):
        c0 = b * BAND
        _ar_band(X, a1, a2, scale, adjoint, out, c0, min(c0 + BAND, m))


@njit
def project_off(Y, Fd, C, F, Yp, yy, YpF):
    """``Yp = Y - Fd @ C`` with ``yy += sum over frames of Yp**2`` (per column, float64) and
    ``YpF += F^T Yp`` (float64), in one pass over a (T, c) block.

    Y, Yp : (T, c), the data's dtype; Fd : (T, k) F in that dtype; C : (k, c) ``Fd^T Y`` in it;
    F : (T, k) float64; yy : (c,) float64; YpF : (k, c) float64 (accumulated into).
    Each frame's row is projected, squared and correlated while it is in cache: numpy needed a
    float64 copy of the block for ``F^T Yp`` and another pass for the squares.
    """
    T, c = Y.shape
    k = Fd.shape[1]
    for t in range(T):
        for p in range(c):
            Yp[t, p] = Y[t, p]
        for j in range(k):
            f = Fd[t, j]
            for p in range(c):
                Yp[t, p] -= f * C[j, p]
        for p in range(c):
            v = np.float64(Yp[t, p])
            yy[p] += v * v
        for j in range(k):
            f = F[t, j]
            for p in range(c):
                YpF[j, p] += f * np.float64(Yp[t, p])


@njit
def gather_columns_t(X, cols, out):
    """``out[j, :] = X[:, cols[j]]``: columns of a C-ordered (T, P) array gathered into the rows
    of ``out`` (len(cols), T), in cache-sized blocks of pixels x frames (numpy's
    ``X[:, cols].T`` copy strides through X once per pixel: 2x slower on a 6,000-pixel gather
    of a 3,000 x 10,000 tile)."""
    T = X.shape[0]
    m = cols.shape[0]
    for j0 in range(0, m, 32):
        j1 = min(j0 + 32, m)
        for t0 in range(0, T, 256):
            t1 = min(t0 + 256, T)
            for j in range(j0, j1):
                p = cols[j]
                for t in range(t0, t1):
                    out[j, t] = X[t, p]


@njit
def runs_t_times(X, A, cptr, rstart, rlen, roff, out):
    """``out[p, i] = sum_t X[t, p] A[t, i]`` for the pixels p of column i's support only, given
    as runs of consecutive pixels (run k: ``rstart[k] .. rstart[k] + rlen[k]``, column i's runs
    ``cptr[i]:cptr[i + 1]``, ``roff[k]`` its offset in one accumulator); other entries of
    ``out`` (P, r) are left as they are. X (T, P) C-ordered, float64 sums.

    The frames go in order and, in each, only the columns with ``A[t, i] != 0`` (sparse spike
    trains) read their runs of row t: a fraction of X, streamed once, where a BLAS product
    reads every frame of every pixel of the supports' union (2x faster on a 102 px tile with
    15 footprints of 700 px and 20 % nonzero spikes)."""
    T = X.shape[0]
    r = A.shape[1]
    total = 0
    for i in range(r):
        for k in range(cptr[i], cptr[i + 1]):
            total = max(total, roff[k] + rlen[k])
    acc = np.zeros(total)
    for t in range(T):
        for i in range(r):
            a = A[t, i]
            if a != 0.0:
                for k in range(cptr[i], cptr[i + 1]):
                    s = rstart[k]
                    o = roff[k]
                    for q in range(rlen[k]):
                        acc[o + q] += a * X[t, s + q]
    for i in range(r):
        for k in range(cptr[i], cptr[i + 1]):
            s = rstart[k]
            o = roff[k]
            for q in range(rlen[k]):
                out[s + q, i] = acc[o + q]
