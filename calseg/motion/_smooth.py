"""Temporal smoothing of per-frame displacement estimates: a robust random-walk Kalman smoother.

Model, per series (one axis of the rigid shift, or of one block's residual)::

    x_t = x_{t-1} + w_t,   w_t ~ N(0, q)      (motion: a random walk)
    z_t = x_t + v_t,       v_t ~ N(0, r)      (estimate: truth plus independent noise)

``q`` and ``r`` are measured from the estimates themselves, by maximum likelihood (the Kalman
filter's innovations). The Rauch-Tung-Striebel smoother then gives the minimum-variance estimate
of ``x``; its weights fall off geometrically away from each frame, over about ``sqrt(r / q)``
frames, so it smooths where the noise is high relative to the motion and leaves clean estimates
alone.

Jumps: when a frame's innovation (estimate minus prediction) exceeds ``JUMP_SIGMAS`` standard
deviations (joint over the two axes) the prediction variance is raised by the squared innovation,
so the filter follows the jump at once and the backward pass does not average across it. The
smoothing length is also capped (``q >= r / MAX_LENGTH**2``), so a displacement change too small
to be detected is spread over at most a few tens of frames.
"""
from __future__ import annotations

import numpy as np

__all__ = ["random_walk_noise", "smooth_random_walk"]

JUMP_SIGMAS = 4.0
MAX_LENGTH = 30.0  # frames: cap on sqrt(r / q), the smoothing length


def _take(a, index):
    """``a[index[...], ...]`` along axis 0: one grid entry per series."""
    return np.take_along_axis(a, index[None], axis=0)[0]


def random_walk_noise(z, max_noise=None):
    """Maximum-likelihood process and measurement variances ``(q, r)`` of each series.

    Parameters
    ----------
    z : ndarray of shape (T, ...)
        Series along axis 0.
    max_noise : ndarray of shape z.shape[1:], optional
        Upper bound on ``r`` measured independently; where the likelihood's ``r`` is larger,
        ``r`` is set to the bound and ``q`` re-estimated by maximum likelihood with ``r`` fixed.

    Returns
    -------
    q, r : ndarray of shape z.shape[1:]
        ``q >= r / MAX_LENGTH**2``; both 0 for series shorter than 8 frames.

    Notes
    -----
    For a ratio ``lam = q / r`` the Kalman filter run with ``r = 1`` gives innovations ``nu_t``
    of variance ``F_t r``; the likelihood, maximised over ``r`` in closed form
    (``r = mean(nu^2 / F)``), is ``-n/2 log r - 1/2 sum log F_t`` (Harvey 1989, the
    concentrated likelihood of the local-level model). It is evaluated for every series at once
    on a grid of ``lam`` (a factor ``10**0.125`` apart, from ``1 / MAX_LENGTH**2`` to ``10**4``,
    where the smoother no longer changes anything) and refined by a parabola in ``log lam``.
    Jumps and failed frames are not down-weighted here (they raise ``q`` and ``r`` a little,
    i.e. they shorten the smoothing); the smoother itself treats them.
    """
    z = np.asarray(z, dtype=np.float64)
    T = z.shape[0]
    shape = z.shape[1:]
    if T < 8:
        return np.zeros(shape), np.zeros(shape)
    log_lam = np.arange(np.log10(1.0 / MAX_LENGTH**2), 4.0 + 1e-9, 0.125)
    lam = (10.0**log_lam).reshape((-1,) + (1,) * len(shape))  # (G, 1, ...)
    x = np.broadcast_to(z[0], (lam.shape[0],) + shape).copy()
    p = np.ones_like(x)
    ss = np.zeros_like(x)
    logf = np.zeros_like(x)
    for t in range(1, T):
        p_pred = p + lam
        f = p_pred + 1.0
        nu = z[t] - x
        ss += nu**2 / f
        logf += np.log(f)
        gain = p_pred / f
        x += gain * nu
        p = gain
    n = T - 1
    r_hat = ss / n
    tiny = np.finfo(np.float64).tiny
    loglik = -0.5 * n * np.log(np.maximum(r_hat, tiny)) - 0.5 * logf
    best = np.argmax(loglik, axis=0)
    # parabola through the best grid point and its neighbours, in log lam
    i = np.clip(best, 1, lam.shape[0] - 2)
    lm, l0, lp = _take(loglik, i - 1), _take(loglik, i), _take(loglik, i + 1)
    den = lm - 2.0 * l0 + lp
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(den < 0, 0.5 * (lm - lp) / den, 0.0)
    delta = np.where(best == i, np.clip(delta, -0.5, 0.5), 0.0)
    step = log_lam[1] - log_lam[0]
    log_best = log_lam[best] + delta * step
    r = _take(r_hat, best)
    q = r * 10.0**log_best
    if max_noise is not None:
        cap = np.broadcast_to(np.asarray(max_noise, dtype=np.float64), shape)
        over = r > cap
        if over.any():
            # likelihood with r fixed at the bound: -1/2 (sum log F + n log r + sum nu^2 / F / r)
            fixed = np.maximum(cap, tiny)
            ll_fixed = -0.5 * (logf + ss / fixed)
            j = np.argmax(ll_fixed, axis=0)
            q = np.where(over, cap * 10.0 ** log_lam[j], q)
            r = np.where(over, cap, r)
    return q, r


def smooth_random_walk(z, q, r, jump_sigmas=JUMP_SIGMAS):
    """Robust Rauch-Tung-Striebel smoother of random-walk-plus-noise series.

    Parameters
    ----------
    z : ndarray of shape (T, ..., D)
        Estimates; the last axis (e.g. dy, dx) is tested for jumps jointly.
    q, r : ndarray of shape z.shape[1:]
        Process and measurement variances (see :func:`random_walk_noise`).
    jump_sigmas : float
        Innovation threshold in standard deviations (per axis of the joint test).

    Returns
    -------
    smoothed : ndarray of shape z.shape
    n_jumps : int
        Number of (frame, series) pairs treated as jumps.

    Notes
    -----
    Where ``r == 0`` the estimates are returned unchanged (the filter gain is 1).
    """
    z = np.asarray(z, dtype=np.float64)
    T = z.shape[0]
    if T < 2:
        return z.copy(), 0
    q = np.broadcast_to(np.asarray(q, dtype=np.float64), z.shape[1:])
    r = np.broadcast_to(np.asarray(r, dtype=np.float64), z.shape[1:])
    dof = z.shape[-1]
    limit = jump_sigmas**2 * dof
    xf = np.empty_like(z)  # filtered means
    pf = np.empty_like(z)  # filtered variances
    pp = np.empty_like(z)  # predicted variances (pp[t] for step t-1 -> t)
    xf[0] = z[0]
    pf[0] = r
    pp[0] = np.inf
    n_jumps = 0
    for t in range(1, T):
        p_pred = pf[t - 1] + q
        nu = z[t] - xf[t - 1]
        s = p_pred + r
        with np.errstate(divide="ignore", invalid="ignore"):
            chi2 = np.sum(np.where(s > 0, nu**2 / s, 0.0), axis=-1, keepdims=True)
        jump = chi2 > limit
        if jump.any():
            n_jumps += int(jump.sum())
            p_pred = np.where(jump, p_pred + nu**2, p_pred)
            s = p_pred + r
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(s > 0, p_pred / s, 1.0)
        xf[t] = xf[t - 1] + gain * nu
        pf[t] = (1.0 - gain) * p_pred
        pp[t] = p_pred
    out = xf.copy()
    for t in range(T - 2, -1, -1):
        with np.errstate(divide="ignore", invalid="ignore"):
            back = np.where(pp[t + 1] > 0, pf[t] / pp[t + 1], 0.0)
        out[t] = xf[t] + back * (out[t + 1] - xf[t])  # the prediction of x_{t+1} is xf[t]
    return out, n_jumps
