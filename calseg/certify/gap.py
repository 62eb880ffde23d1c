"""Duality-gap certificate and rank growth for the calcium model (METHOD sections 5.5-5.6).

Problem (B unpenalised, ``F`` the background dictionary):

    min_{A, Z, B}  1/2 ||Y - D A Z^T - F B^T||_F^2 + lam sum_i ||A_i||_A ||Z_i||_Z

At a point (A, Z) :func:`certify` refits B by least squares (so ``F^T R = 0``), forms
``R = (I - F F^+)(Y - D A Z^T)``, ``W = D^T R``, ``Theta = sum_i ||A_i||_A ||Z_i||_Z`` and
``F_val = 1/2 ||R||^2 + lam Theta``, brackets the polar ``rho_low <= rho*(W) <= rho_up``
(:mod:`calseg.certify.polar`) and bounds the suboptimality ``F_val - P*`` from above in two
ways, reporting the smaller:

* Fenchel gap with the dual point ``s R``, ``s = min(1, lam / rho_up)`` (feasible because
  ``rho*(D^T s R) <= lam`` and ``F^T R = 0``):
  ``gap = 1/2 (1 - s)^2 ||R||^2 + lam Theta - s <W, X>``;
* linearisation bound: ``(lam Theta - <W, X>) + max(0, rho_up - lam) F_val / lam``.

``status = "certified"`` iff the relative gap ``gap / F_val <= tol``; otherwise ``"bounded"``
(the gap is still a valid bound, just not small).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from calseg.certify.polar import _check_norms, _effort, _polar_upper, polar_lower
from calseg.errors import ConfigError, InputError
from calseg.model.objective import _big_times

__all__ = ["Atom", "Certificate", "append_atom", "certify"]

_CHUNK = 1024        # rows of (T, P) arrays reduced at a time in float64


@dataclass(frozen=True)
class Certificate:
    """Bounds on the global suboptimality of a factorisation.

    Attributes
    ----------
    objective : float
        ``F_val = 1/2 ||R||^2 + lam Theta`` at the point, B refitted.
    dual_value : float
        Dual objective of the feasible dual point ``s R`` (a lower bound on the optimum P*).
    gap : float
        Upper bound on ``objective - P*`` (the smaller of the Fenchel and linearisation bounds).
    relative_gap : float
        ``gap / objective`` (0 when the objective is 0).
    rho_low, rho_up : float
        Certified lower and upper bounds on the polar of ``W = D^T R``.
    lam : float
    status : str
        ``"certified"`` iff ``relative_gap <= tol``, else ``"bounded"``.
    tol : float
    bounds : dict
        Individual upper bounds on the polar and on the gap, the inner product ``<W, X>``,
        ``Theta`` and ``||R||^2``.
    seconds : float
        Wall time of :func:`certify`.
    """

    objective: float
    dual_value: float
    gap: float
    relative_gap: float
    rho_low: float
    rho_up: float
    lam: float
    status: str
    tol: float
    bounds: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self):
        """Plain JSON-serialisable dict (infinite bounds become ``None``)."""
        d = asdict(self)
        d["bounds"] = {k: (None if not np.isfinite(v) else float(v)) for k, v in self.bounds.items()}
        return d


@dataclass(frozen=True)
class Atom:
    """A rank-one direction ``phi psi^T`` with ``||phi||_A = ||psi||_Z = 1`` and
    ``rho = phi^T W psi`` (it decreases the objective when ``rho > lam``)."""

    phi: np.ndarray
    psi: np.ndarray
    rho: float


# ------------------------------------------------------------------------------------------
# helpers


def _sumsq(M):
    """||M||_F^2 accumulated in float64, row chunks."""
    return float(sum(np.einsum("ij,ij->", M[s:s + _CHUNK], M[s:s + _CHUNK], dtype=np.float64)
                     for s in range(0, M.shape[0], _CHUNK)))


def _check_inputs(Y, op, A, Z, lam, background, check_finite=True):
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.size == 0:
        raise InputError(f"Y must be a non-empty (T, P) array, got shape {Y.shape}")
    if Y.dtype not in (np.float32, np.float64):
        Y = Y.astype(np.float64)
    T, P = Y.shape
    A = np.asarray(A, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.float64)
    if A.ndim == 1:
        A = A[:, None]
    if Z.ndim == 1:
        Z = Z[:, None]
    if A.ndim != 2 or A.shape[0] != T:
        raise InputError(f"A must have shape (T, r) with T = {T}, got {A.shape}")
    if Z.ndim != 2 or Z.shape[0] != P or Z.shape[1] != A.shape[1]:
        raise InputError(f"Z must have shape (P, r) = ({P}, {A.shape[1]}), got {Z.shape}")
    if getattr(op, "n_frames", T) != T:
        raise InputError(f"operator has n_frames = {op.n_frames} but Y has {T} frames")
    if not (isinstance(lam, (int, float, np.integer, np.floating)) and np.isfinite(lam) and lam > 0):
        raise ConfigError(f"lam must be a finite number > 0, got {lam!r}")
    Q = None
    if background is not None:
        F = np.asarray(background, dtype=np.float64)
        if F.ndim != 2 or F.shape[0] != T:
            raise InputError(f"background must have shape (T, k) with T = {T}, got {F.shape}")
        if F.shape[1]:
            Q, rr = np.linalg.qr(F)
            d = np.abs(np.diag(rr))
            Q = Q[:, d > 1e-10 * max(float(d.max()), 1e-300)]
    for name, M in ((("Y", Y),) if check_finite else ()) + (("A", A), ("Z", Z)):
        if not np.all(np.isfinite(M)):
            raise InputError(f"{name} contains NaN or infinite values")
    return Y, A, Z, Q


def _residual(Y, op, A, Z, Q):
    """``R = (I - Q Q^T)(Y - D A Z^T)`` in Y's dtype, and ``DA`` (T, r) float64."""
    DA = np.asarray(op.apply(A), dtype=np.float64).reshape(A.shape)
    dt = Y.dtype
    R = np.empty(Y.shape, dtype=dt)
    DAd, Zd = DA.astype(dt), Z.astype(dt)
    for s in range(0, Y.shape[1], 4 * _CHUNK):
        R[:, s:s + 4 * _CHUNK] = Y[:, s:s + 4 * _CHUNK] - DAd @ Zd[s:s + 4 * _CHUNK].T
    if Q is not None:
        Qd = Q.astype(dt)
        for s in range(0, Y.shape[1], 4 * _CHUNK):
            blk = R[:, s:s + 4 * _CHUNK]
            blk -= Qd @ (Qd.T @ blk)
            blk -= Qd @ (Qd.T @ blk)          # second pass: projection exact to rounding
    return R, DA


# ------------------------------------------------------------------------------------------
# public API


def certify(Y, op, A, Z, *, lam, temporal, spatial, background=None, tol=1e-3, effort="normal",
            seed=0, pre=None, lower=None, data=None, check_finite=True):
    """Certificate of global (sub)optimality of ``(A, Z)`` and the best improving atom found.

    Parameters
    ----------
    Y : ndarray of shape (T, P)
        Data (float32 kept; reductions accumulate in float64).
    op : temporal operator
        ``op.apply(X) = D X`` and ``op.adjoint(R) = D^T R`` for (T, m) arrays.
    A : ndarray of shape (T, r)
        Temporal coefficients.
    Z : ndarray of shape (P, r)
        Spatial maps.
    lam : float, keyword-only
        Regularisation weight, > 0.
    temporal, spatial : CompositeNorm, keyword-only
        ``||.||_A`` and ``||.||_Z``.
    background : ndarray of shape (T, k) or None, keyword-only
        Unpenalised background dictionary F; B is refitted by least squares.
    tol : float, keyword-only
        Relative gap below which the status is ``"certified"``.
    effort : {"low", "normal", "high"}, keyword-only
        Budgets of the polar bounds (starts and iterations of the lower bound; power
        iterations, split bisection and TV dual iterations of the upper bounds); "low" starts
        the lower bound from rows and pixels only (no singular-vector start).
    seed : int, keyword-only
        Seed of the random starts of the lower bound.
    pre : Precomputed or None, keyword-only
        The solver's :class:`~calseg.model.objective.Precomputed` for the same Y, operator and
        background: ``W``, ``||R||^2`` and ``<R, D A Z^T>`` then come from ``D^T P Y`` and
        ``||P Y||^2`` and (T, r)/(r, r) products instead of a pass over Y and a filter of the
        (T, P) residual. Without it (e.g. ``calseg certify``) everything is computed from Y.
    lower : Atom or None, keyword-only
        The result of :func:`improving_atom` at this same (A, Z) (e.g. rank growth's last
        search, which found nothing worth adding): its pair is the lower bound's search, which
        is then not repeated.
    data : ndarray of shape (T, P) or None, keyword-only
        ``W = D^T R`` at this same (A, Z) (from ``improving_atom(..., return_data=True)``,
        which needs ``pre``): used instead of recomputing it (a copy of ``D^T Y`` and a
        product). Ignored without ``pre``.
    check_finite : bool, keyword-only
        Check that Y holds no NaN or inf (a pass over it); False when the caller has (the
        residual correlation computed from finite data is finite, and is not checked again).

    Returns
    -------
    certificate : Certificate
    atom : Atom or None
        Maximiser of the lower bound (``None`` if ``rho_low <= 0``); it decreases the objective
        when ``atom.rho > lam`` (see :func:`append_atom`).

    Notes
    -----
    ``F_val - P* <= gap``: weak duality with the dual point ``s R``, using
    ``<R, Y> = ||R||^2 + <W, X>`` (true because ``F^T R = 0``). At a stationary point
    ``<W, X> = lam Theta`` and the relative gap is at most ``max(0, rho_up / lam - 1)``, so a
    certificate needs ``rho_up <= lam (1 + tol)`` roughly. Memory: ``R`` and ``W`` are (T, P) in
    Y's dtype.
    """
    t0 = time.perf_counter()
    if not (isinstance(tol, (int, float, np.floating)) and np.isfinite(tol) and tol > 0):
        raise ConfigError(f"tol must be a finite number > 0, got {tol!r}")
    n_starts, max_iter = _effort(effort)[:2]
    Y, A, Z, Q = _check_inputs(Y, op, A, Z, lam, background, check_finite)
    lam = float(lam)
    if pre is not None:
        rr, inner = _residual_terms_pre(pre, op, A, Z, Q)
        if data is not None and data.shape == pre.DtY.shape:
            W = data
        else:
            W = _polar_data_pre(pre, op, A, Z, Q)
    else:
        R, DA = _residual(Y, op, A, Z, Q)
        rr = _sumsq(R)
        # <W, X> = <R, D A Z^T> = sum_i (D A_i)^T R Z_i
        RZ = np.zeros((Y.shape[0], A.shape[1]))
        for s in range(0, Y.shape[1], 4 * _CHUNK):
            RZ += R[:, s:s + 4 * _CHUNK].astype(np.float64) @ Z[s:s + 4 * _CHUNK]
        inner = float(np.sum(DA * RZ))
        del RZ
        W = np.asarray(op.adjoint(R))
        if W.dtype != R.dtype:
            W = W.astype(R.dtype)
        del R
    theta = float(np.sum(np.asarray(temporal.value(A)) * np.asarray(spatial.value(Z)))) \
        if A.shape[1] else 0.0
    F_val = 0.5 * rr + lam * theta
    _check_norms(W, temporal, spatial)
    rho_up, ub, extra = _polar_upper(W, temporal, spatial, tol=min(1e-3, tol), effort=effort,
                                     check_finite=False)
    if lower is not None:
        # recompute the given pair's value on this W (its rho is then certified here too)
        phi = np.asarray(lower.phi, dtype=np.float64)
        psi = np.asarray(lower.psi, dtype=np.float64)
        ha = float(np.asarray(temporal.value(phi[:, None])).reshape(-1)[0])
        hz = float(np.asarray(spatial.value(psi[:, None])).reshape(-1)[0])
        rho_low = float(phi @ _big_times(W, psi[:, None])[:, 0]) / (ha * hz) \
            if ha > 0 and hz > 0 else 0.0
        if rho_low <= 0:
            rho_low, phi, psi = 0.0, np.zeros(W.shape[0]), np.zeros(W.shape[1])
        else:
            phi, psi = phi / ha, psi / hz
    else:
        rho_low, phi, psi = polar_lower(W, temporal, spatial, n_starts=n_starts,
                                        max_iter=max_iter, seed=seed, check_finite=False,
                                        row_scores=extra.get("row_scores"),
                                        col_scores=extra.get("col_scores"),
                                        svd_start=effort != "low")
    # the row sandwich's best single row is itself a feasible pair
    if "row_best" in extra and extra["row_best"][2] is not None:
        low_r, k, xb = extra["row_best"]
        T = W.shape[0]
        e = np.zeros(T)
        e[k % T] = 1.0 if k < T else -1.0
        he = float(np.asarray(temporal.value(e)).reshape(-1)[0])
        val = float(e @ (W @ xb.astype(W.dtype)).astype(np.float64)) / he
        if val > rho_low:
            rho_low, phi, psi = val, e / he, xb
    del W
    rho_up_used = max(rho_up, 0.0)
    s = 1.0 if rho_up_used <= lam else lam / rho_up_used
    fenchel = 0.5 * (1 - s) ** 2 * rr + lam * theta - s * inner
    dual_value = s * (rr + inner) - 0.5 * s * s * rr
    lin = (lam * theta - inner) + max(0.0, rho_up - lam) * F_val / lam
    gap_raw = min(fenchel, lin)
    gap = max(gap_raw, 0.0)
    rel = gap / F_val if F_val > 0 else 0.0
    status = "certified" if rel <= tol else "bounded"
    bounds = dict(ub)
    bounds.update(fenchel_gap=fenchel, linearization_gap=lin, inner=inner, theta=theta,
                  residual_sq=rr, dual_scale=s)
    cert = Certificate(objective=F_val, dual_value=dual_value, gap=gap, relative_gap=rel,
                       rho_low=float(rho_low), rho_up=float(rho_up), lam=lam, status=status,
                       tol=float(tol), bounds=bounds, seconds=time.perf_counter() - t0)
    atom = Atom(phi=np.asarray(phi, dtype=np.float64), psi=np.asarray(psi, dtype=np.float64),
                rho=float(rho_low)) if rho_low > 0 else None
    return cert, atom


def _residual_terms_pre(pre, op, A, Z, Q):
    """``||R||^2`` and ``<R, D A Z^T>`` for ``R = P Y - P D A Z^T`` (``P = I - Q Q^T``) from
    ``pre.yy = ||P Y||^2`` and ``pre.DtY = D^T P Y``: with ``s = <P Y, D A Z^T> = sum(A * (D^T P Y) Z)``
    and ``g = ||P D A Z^T||^2 = sum((P D A)^T (P D A) * Z^T Z)``, ``||R||^2 = yy - 2 s + g`` and
    ``<R, D A Z^T> = s - g``."""
    if not A.shape[1]:
        return float(pre.yy), 0.0
    DA = np.asarray(op.apply(A), dtype=np.float64).reshape(A.shape)
    if Q is not None:
        DA = DA - Q @ (Q.T @ DA)
    YZ = _big_times(pre.DtY, Z)
    s = float(np.sum(A * YZ))
    g = float(np.sum((DA.T @ DA) * (Z.T @ Z)))
    return float(pre.yy) - 2.0 * s + g, s - g


def _polar_data_pre(pre, op, A, Z, Q):
    """``W = D^T (I - Q Q^T)(Y - D A Z^T)`` from the solver's ``pre.DtY = D^T (I - F F^T) Y``
    (F and Q span the same columns): one (T, r) x (r, P) product instead of a pass over Y and
    a filter of the whole (T, P) residual."""
    W = np.array(pre.DtY, copy=True)
    if A.shape[1]:
        DA = np.asarray(op.apply(A), dtype=np.float64).reshape(A.shape)
        if Q is not None:
            DA = DA - Q @ (Q.T @ DA)
        G = np.asarray(op.adjoint(DA), dtype=np.float64).astype(W.dtype)
        cols = np.flatnonzero(np.any(Z != 0, axis=1))   # only the footprints' pixels change
        if cols.size > W.shape[1] // 16:
            # W^T -= Z G^T in place: one BLAS call on the (F-ordered) transpose, the zero rows
            # of Z included (they subtract exact zeros). Gathering and scattering the columns
            # of the footprints' pixels instead costs ~8x more once they are a third of the
            # tile (140 vs 17 ms on a 102^2 x 3000 tile)
            from scipy.linalg import blas

            gemm = blas.sgemm if W.dtype == np.float32 else blas.dgemm
            out = gemm(-1.0, np.asarray(Z, dtype=W.dtype, order="F"), np.asfortranarray(G),
                       beta=1.0, c=W.T, trans_b=True, overwrite_c=True)
            if not np.shares_memory(out, W):       # (BLAS made a copy: keep its result)
                W[...] = out.T
        elif cols.size:
            W[:, cols] -= G @ Z[cols].astype(W.dtype).T
    return W


def improving_atom(Y, op, A, Z, *, lam, temporal, spatial, background=None, effort="low", seed=0,
                   pre=None, return_data=False, check_finite=True):
    """The best atom the polar lower-bound search finds at (A, Z), without the upper bounds.

    Cheaper than :func:`certify` (no upper bounds, no gap): what rank growth needs between
    solver runs. Returns None when the search finds no pair with a positive value. ``pre``
    (the solver's :class:`~calseg.model.objective.Precomputed` for the same Y, operator and
    background) saves a pass over Y. ``return_data``: return ``(atom, W)`` with the residual
    correlation ``W = D^T R`` searched, for :func:`certify` at the same (A, Z) (``data=``).
    ``check_finite``: as in :func:`certify`.
    """
    n_starts, max_iter = _effort(effort)[:2]
    Y, A, Z, Q = _check_inputs(Y, op, A, Z, lam, background, check_finite)
    if pre is not None:
        W = _polar_data_pre(pre, op, A, Z, Q)
    else:
        R, _ = _residual(Y, op, A, Z, Q)
        W = np.asarray(op.adjoint(R))
        if W.dtype != R.dtype:
            W = W.astype(R.dtype)
        del R
    _check_norms(W, temporal, spatial)
    rho, phi, psi = polar_lower(W, temporal, spatial, n_starts=n_starts, max_iter=max_iter, seed=seed,
                                svd_start=effort != "low", check_finite=False)
    atom = None if rho <= 0 else Atom(phi=np.asarray(phi, dtype=np.float64),
                                      psi=np.asarray(psi, dtype=np.float64), rho=float(rho))
    return (atom, W) if return_data else atom


def append_atom(Y, op, A, Z, atom, *, lam, background=None, check_finite=True):
    """Append ``(sqrt(eta) phi, sqrt(eta) psi)`` with the exact line-search step.

    Parameters
    ----------
    Y : ndarray of shape (T, P)
    op : temporal operator
    A : ndarray of shape (T, r)
    Z : ndarray of shape (P, r)
    atom : Atom
        Typically from :func:`certify` at the same (A, Z).
    lam : float, keyword-only
    background : ndarray of shape (T, k) or None, keyword-only
    check_finite : bool, keyword-only
        As in :func:`certify`.

    Returns
    -------
    A_new : ndarray of shape (T, r + 1)
    Z_new : ndarray of shape (P, r + 1)

    Notes
    -----
    The atom is taken as normalised, ``||phi||_A = ||psi||_Z = 1`` (as :func:`certify` returns
    it). With ``rho = phi^T D^T R psi`` (recomputed at (A, Z), B refitted) the objective changes
    by ``-eta (rho - lam) + eta^2 / 2 ||P D phi||^2 ||psi||^2`` (``P = I - F F^+``), minimised at
    ``eta* = (rho - lam) / (||P D phi||^2 ||psi||^2)``, a decrease of
    ``(rho - lam)^2 / (2 ||P D phi||^2 ||psi||^2)``. Raises :class:`~calseg.errors.InputError`
    when the atom does not decrease the objective (``rho <= lam``).
    """
    Y, A, Z, Q = _check_inputs(Y, op, A, Z, lam, background, check_finite)
    T, P = Y.shape
    phi = np.asarray(atom.phi, dtype=np.float64).reshape(-1)
    psi = np.asarray(atom.psi, dtype=np.float64).reshape(-1)
    if phi.shape != (T,) or psi.shape != (P,):
        raise InputError(f"atom must have phi of shape ({T},) and psi of shape ({P},), got "
                         f"{phi.shape} and {psi.shape}")
    # rho = (P D phi)^T (Y psi - D A (Z^T psi))
    Dphi = np.asarray(op.apply(phi[:, None]), dtype=np.float64).reshape(T)
    if Q is not None:
        Dphi = Dphi - Q @ (Q.T @ Dphi)
    Ypsi = np.zeros(T)
    for s0 in range(0, P, 4 * _CHUNK):
        Ypsi += Y[:, s0:s0 + 4 * _CHUNK].astype(np.float64) @ psi[s0:s0 + 4 * _CHUNK]
    DA = np.asarray(op.apply(A), dtype=np.float64).reshape(A.shape)
    rho = float(Dphi @ (Ypsi - DA @ (Z.T @ psi)))
    curv = float(Dphi @ Dphi) * float(psi @ psi)
    if not rho > lam or curv <= 0:
        raise InputError(
            f"the atom does not decrease the objective: phi^T D^T R psi = {rho:.6g} must exceed "
            f"lam = {float(lam):.6g} (and D phi psi^T must be nonzero)")
    eta = (rho - float(lam)) / curv
    r = np.sqrt(eta)
    return np.column_stack([A, r * phi]), np.column_stack([Z, r * psi])
