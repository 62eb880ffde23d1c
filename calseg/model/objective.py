"""The factorized objective without forming the T x P residual.

    F(A, Z, B) = 1/2 ||Y - D A Z^T - F_bg B^T||_F^2 + lam * sum_i ||A_i||_A ||Z_i||_Z

The square is expanded with quantities precomputed once from the data (``D^T Y``, ``||Y||^2``,
``Y^T F_bg``) and r x r / k x r Gram matrices, accumulated in float64.

To avoid cancellation when the movie has a large baseline (the unsubtracted mean is absorbed by
the background atoms), the data are first projected off the background:
``Y' = Y - F_bg F_bg^T Y`` (F_bg has orthonormal columns) and ``B' = B - Y^T F_bg``. Then
``Y - D A Z^T - F_bg B^T = Y' - D A Z^T - F_bg B'^T`` exactly, and every term of the expansion is
of the size of the signal, not of the baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Precomputed", "precompute", "smooth_loss", "penalty", "objective"]

_CHUNK = 1024


@dataclass(frozen=True)
class Precomputed:
    """Data quantities the solver iterates on (built by :func:`precompute`).

    Attributes
    ----------
    DtY : ndarray of shape (T, P), dtype of Y
        ``D^T Y'`` with ``Y' = Y - F F^T Y``.
    yy : float
        ``||Y'||_F^2`` (float64 accumulation).
    YtF : ndarray of shape (P, k), float64
        ``Y^T F`` of the original data (``B = B' + YtF``).
    YpF : ndarray of shape (P, k), float64
        ``Y'^T F`` (zero up to the rounding of Y' to the data dtype).
    F : ndarray of shape (T, k), float64
    DtF : ndarray of shape (T, k), float64
        ``D^T F``.
    FtF : ndarray of shape (k, k), float64
    """

    DtY: np.ndarray
    yy: float
    YtF: np.ndarray
    YpF: np.ndarray
    F: np.ndarray
    DtF: np.ndarray
    FtF: np.ndarray

    @property
    def dtype(self):
        return self.DtY.dtype


def precompute(Y, op, F=None):
    """Project the data off the background and apply D^T once.

    Parameters
    ----------
    Y : ndarray of shape (T, P), float32 or float64
    op : temporal operator (``apply``/``adjoint``), e.g. :class:`~calseg.model.temporal.DecayOperator`
    F : ndarray of shape (T, k) with orthonormal columns, or None

    Returns
    -------
    Precomputed
        Works in column blocks: no float64 copy of a float32 movie is made.
    """
    Y = np.asarray(Y)
    T, P = Y.shape
    dtype = Y.dtype if Y.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    if F is None:
        F = np.zeros((T, 0))
    F = np.asarray(F, dtype=np.float64)
    k = F.shape[1]
    DtY = np.empty((T, P), dtype=dtype)
    YtF = np.zeros((P, k))
    YpF = np.zeros((P, k))
    yy = 0.0
    # the projection in the data's dtype: a float64 F against float32 data would convert every
    # chunk to float64 first (measured 10x slower for a 3,000 x 5,184 tile); float32 products
    # of k <= ~10 orthonormal atoms are exact to float32 rounding, which Y' is stored in anyway
    from ._kernels import project_off

    Fd = np.ascontiguousarray(F, dtype=dtype)
    FdT = np.ascontiguousarray(Fd.T)
    Yp = np.empty((T, min(P, _CHUNK)), dtype=dtype)
    for start in range(0, P, _CHUNK):
        sl = slice(start, start + _CHUNK)
        Yc = np.asarray(Y[:, sl], dtype=dtype)    # a view (the kernel takes strided blocks)
        c = Yc.shape[1]
        C = FdT @ Yc if k else np.zeros((0, c), dtype)                 # (k, c)
        YtF[sl] = C.T
        ycols = np.zeros(c)
        YpFc = np.zeros((k, c))   # float64: the rounding of Y' is what it measures
        Ypc = Yp[:, :c] if c == Yp.shape[1] else np.empty((T, c), dtype)
        project_off(Yc, Fd, C, F, Ypc, ycols, YpFc)
        YpF[sl] = YpFc.T
        yy += float(ycols.sum())
        DtY[:, sl] = op.adjoint(Ypc)
    DtF = op.adjoint(F) if k else np.zeros((T, 0))
    return Precomputed(DtY=DtY, yy=yy, YtF=YtF, YpF=YpF, F=F, DtF=np.asarray(DtF, np.float64),
                       FtF=F.T @ F)


def _loss_shifted(pre, DA, A, Z, Bp, DtYZ):
    """1/2 ||Y' - D A Z^T - F B'^T||^2 from small matrices (float64).

    DA = D A (T, r), DtYZ = (D^T Y') Z (T, r), Bp = B' (P, k).
    """
    val = pre.yy
    if A.shape[1]:
        ZtZ = Z.T @ Z
        val += float(np.sum((DA.T @ DA) * ZtZ)) - 2.0 * float(np.sum(A * DtYZ))
    if Bp is not None and Bp.shape[1]:
        val += float(np.sum(pre.FtF * (Bp.T @ Bp))) - 2.0 * float(np.sum(pre.YpF * Bp))
        if A.shape[1]:
            val += 2.0 * float(np.sum((pre.DtF.T @ A) * (Bp.T @ Z)))
    return 0.5 * val


_SPARSE_ROWS = 0.3    # gather M's columns when X has nonzero rows on fewer than this fraction
_ROW_BLOCK = 256      # rows of M gathered at a time (a block stays in cache for the product)


def _big_times(M, X):
    """``M @ X`` with M a big (T, P) data-dtype matrix and X (P, r); float64 result.

    X is cast down to M's dtype. Footprints are compact, so X usually has few nonzero rows:
    then only M's matching columns are read, a block of rows at a time (gathered into a small
    contiguous array for the product), which moves a fraction of M through memory instead of
    all of it. The products are memory-bound at the solver's small r, so this is what counts.
    """
    X = np.asarray(X)
    rows = np.flatnonzero(np.any(X != 0, axis=1))
    out = np.zeros((M.shape[0], X.shape[1]), dtype=M.dtype)
    if rows.size > _SPARSE_ROWS * M.shape[1]:
        np.matmul(M, X.astype(M.dtype, copy=False), out=out)
    elif rows.size:
        Xs = X[rows].astype(M.dtype)
        for s in range(0, M.shape[0], _ROW_BLOCK):
            np.matmul(M[s:s + _ROW_BLOCK, rows], Xs, out=out[s:s + _ROW_BLOCK])
    return out.astype(np.float64)


def _big_t_times(M, X):
    """``M^T @ X`` with M a big (T, P) data-dtype matrix and X (T, r); float64 (P, r) result.

    Computed as ``(X^T M)^T``: for a C-ordered M that product streams M's rows, about twice as
    fast as BLAS on the transposed view at small r. When X is nonzero on few rows (spike
    trains: the polar search's temporal factors are nonzero on ~1-3 % of the frames), only
    those rows of M are read, a block at a time.
    """
    X = np.asarray(X)
    Xt = np.ascontiguousarray(X.T, dtype=M.dtype)
    rows = np.flatnonzero(np.any(X != 0, axis=1))
    if rows.size > _SPARSE_ROWS * M.shape[0]:
        return np.asarray((Xt @ M).T, dtype=np.float64)
    out = np.zeros((X.shape[1], M.shape[1]), dtype=M.dtype)
    for s in range(0, rows.size, _ROW_BLOCK):
        idx = rows[s:s + _ROW_BLOCK]
        out += Xt[:, idx] @ M[idx]
    return np.asarray(out.T, dtype=np.float64)


def smooth_loss(pre, op, A, Z, B=None):
    """``1/2 ||Y - D A Z^T - F B^T||_F^2`` from :class:`Precomputed` quantities.

    Parameters
    ----------
    pre : Precomputed
    op : temporal operator used in :func:`precompute`
    A : ndarray of shape (T, r)
    Z : ndarray of shape (P, r)
    B : ndarray of shape (P, k) or None (None means B = Y^T F, the fit of the data alone;
        with k = 0 it is ignored)

    Returns
    -------
    float
    """
    A = np.asarray(A, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.float64)
    if A.ndim == 1:
        A, Z = A[:, None], Z[:, None]
    Bp = None
    if pre.F.shape[1]:
        Bp = np.zeros_like(pre.YtF) if B is None else np.asarray(B, np.float64) - pre.YtF
    DA = np.asarray(op.apply(A), dtype=np.float64) if A.shape[1] else A
    DtYZ = _big_times(pre.DtY, Z) if A.shape[1] else A
    return _loss_shifted(pre, DA, A, Z, Bp, DtYZ)


def penalty(A, Z, temporal, spatial):
    """``sum_i ||A_i||_A ||Z_i||_Z`` (float64).

    Parameters
    ----------
    A : ndarray of shape (T, r)
    Z : ndarray of shape (P, r)
    temporal, spatial : objects with ``value(X) -> (r,)`` (e.g. ``CompositeNorm``)
    """
    if A.shape[1] == 0:
        return 0.0
    return float(np.dot(np.asarray(temporal.value(A), np.float64),
                        np.asarray(spatial.value(Z), np.float64)))


def objective(Y, op, A, Z, B=None, F=None, *, lam, temporal, spatial):
    """The full objective ``1/2 ||Y - D A Z^T - F B^T||^2 + lam sum_i ||A_i||_A ||Z_i||_Z``.

    Parameters
    ----------
    Y : ndarray of shape (T, P)
    op : temporal operator
    A : ndarray of shape (T, r)
    Z : ndarray of shape (P, r)
    B : ndarray of shape (P, k) or None
    F : ndarray of shape (T, k) with orthonormal columns, or None
    lam : float
    temporal, spatial : column norms with ``value``

    Returns
    -------
    float

    Notes
    -----
    Convenience wrapper (one pass over Y): the solver keeps the :class:`Precomputed` quantities
    and calls the pieces directly.
    """
    pre = precompute(Y, op, F)
    if B is None and pre.F.shape[1]:
        raise ValueError("B is required when F is given")
    A = np.asarray(A, np.float64)
    Z = np.asarray(Z, np.float64)
    return smooth_loss(pre, op, A, Z, B) + lam * penalty(A, Z, temporal, spatial)
