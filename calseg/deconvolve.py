"""Spike inference on traces a user already has, with calseg's own temporal model and norm.

For each trace y (T,) the problem is the temporal half of the factorization with a fixed
footprint:

    min_{a >= 0, b}  ½ ‖ỹ − D a − F b‖² + λ (α ‖a‖₂ + β ‖a‖₁),   ỹ = (y − median y) / σ

with D the unit-column calcium-decay dictionary, F slow Fourier atoms (a drifting baseline, free),
σ the trace's noise SD (robust, from frame-to-frame differences) and λ in noise units. b is
eliminated exactly (projection onto F's orthogonal complement) and a is found by FISTA with the
composite prox ℓ1⁺ → ℓ2 (METHOD.md §4.1), stopping on the relative change of the objective.
The returned spikes are a / n (calcium increments per frame, in the trace's units).
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, InputError

#: default λ (in units of the trace's noise SD) for deconvolution
DEFAULT_DECONV_LAM = 0.6


def trace_noise(y: np.ndarray) -> float:
    """Robust noise SD of a trace from its frame-to-frame differences."""
    d = np.diff(y)
    s = np.median(np.abs(d - np.median(d))) / (0.6745 * np.sqrt(2.0))
    if not np.isfinite(s) or s <= 0:
        s = float(np.std(y)) or 1.0
    return float(s)


def deconvolve_trace(y: np.ndarray, op, *, lam: float = DEFAULT_DECONV_LAM, temporal=(1.0, 1.0),
                     n_background: int = 3, max_iter: int = 2000, tol: float = 1e-7):
    """Deconvolve one trace; returns (spikes (T,), calcium fit (T,), info dict)."""
    from .model.background import fourier_background
    from .prox.norms import group_l2_shrink, soft_threshold

    y = np.asarray(y, dtype=np.float64)
    T = y.shape[0]
    sigma = trace_noise(y)
    yn = (y - np.median(y)) / sigma
    F = fourier_background(T, n_background) if n_background > 0 else np.zeros((T, 0))

    def proj(v):
        return v - F @ (F.T @ v) if F.shape[1] else v

    yr = proj(yn)
    L = op.norm_sq
    alpha, beta = temporal
    a = np.zeros(T)
    z = a.copy()
    t = 1.0
    Dty = op.adjoint(yr)

    def objective(a):
        r = yr - proj(op.apply(a))
        return 0.5 * r @ r + lam * (alpha * np.linalg.norm(a) + beta * a.sum())

    f_old = objective(a)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        g = op.adjoint(proj(op.apply(z))) - Dty
        v = z - g / L
        v = soft_threshold(v[:, None], lam * beta / L, nonnegative=True)
        a_new = group_l2_shrink(v, np.array([lam * alpha / L]))[:, 0]
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        z = a_new + ((t - 1) / t_new) * (a_new - a)
        f_new = objective(a_new)
        if f_new > f_old:  # restart the momentum (monotone FISTA)
            z = a_new.copy()
            t_new = 1.0
        a, t = a_new, t_new
        if abs(f_old - f_new) <= tol * max(abs(f_new), 1e-12):
            f_old = f_new
            break
        f_old = f_new
    spikes = a / op.col_norms * sigma
    calcium = op.apply(a) * sigma
    return spikes, calcium, {"noise": sigma, "n_iter": n_iter, "objective": f_old}


def deconvolve(traces: np.ndarray, fps: float, *, tau: float | None = None, rise: float | None = None,
               lam: float = DEFAULT_DECONV_LAM, temporal=(1.0, 1.0), n_background: int = 3,
               max_iter: int = 2000, tol: float = 1e-7):
    """Infer spike trains for every column of ``traces``.

    Parameters
    ----------
    traces : ndarray of shape (T, n)
        Fluorescence or ΔF/F traces, one column per neuron; trailing NaN (padding) is allowed and
        kept as NaN in the output.
    fps : float
        Frame rate (Hz).
    tau, rise : float, optional
        Decay / rise time (s); ``tau=None`` estimates it per trace from the autocovariance.
    lam : float
        λ in noise SDs (larger → sparser spikes).

    Returns
    -------
    spikes : ndarray of shape (T, n)
    info : list of dict, one per trace (tau used, noise, iterations)
    """
    from .model.temporal import DecayOperator
    from .summary import estimate_tau

    X = np.asarray(traces, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise InputError(f"traces must be a (frames, neurons) table, got shape {X.shape}")
    if not fps or fps <= 0:
        raise ConfigError(f"fps = {fps!r} is not allowed: must be > 0")
    if lam <= 0:
        raise ConfigError(f"lam = {lam!r} is not allowed: must be > 0")
    out = np.full_like(X, np.nan)
    infos = []
    for j in range(X.shape[1]):
        col = X[:, j]
        ok = np.isfinite(col)
        if not ok.any():
            infos.append({"column": j, "status": "empty"})
            continue
        last = int(np.flatnonzero(ok)[-1]) + 1
        y = col[:last].copy()
        if not np.all(np.isfinite(y)):  # interior gaps: fill by linear interpolation
            idx = np.arange(last)
            good = np.isfinite(y)
            y[~good] = np.interp(idx[~good], idx[good], y[good])
        if last < 10:
            infos.append({"column": j, "status": "too short"})
            continue
        t_j = tau if tau is not None else estimate_tau(y[:, None], fps)
        r_j = rise if (rise is not None and rise * fps >= 0.3 and abs(rise - t_j) > 1e-3 * t_j) else None
        op = DecayOperator.from_tau(last, t_j, fps, rise=r_j)
        s, _, info = deconvolve_trace(y, op, lam=lam, temporal=temporal, n_background=n_background,
                                      max_iter=max_iter, tol=tol)
        out[:last, j] = s
        infos.append({"column": j, "tau_s": t_j, "rise_s": r_j, **info})
    return out, infos
