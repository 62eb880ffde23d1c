"""Temporal operators D of the model Y ~ D A Z^T + F B^T.

``DecayOperator`` is the calcium-decay dictionary of METHOD section 1.2: column j of D is the
indicator kernel started at frame j (a causal decaying exponential, or a difference of
exponentials when a rise time is given), truncated at the end of the recording and scaled to
unit l2 norm. D is lower-triangular Toeplitz up to the column scaling; it is never formed:
``apply`` and ``adjoint`` are recursive filters along the time axis (a numba kernel whose twin is
``scipy.signal.lfilter``),
O(T) per column.

``IdentityOperator`` has the same interface with D = I (no deconvolution).
"""
from __future__ import annotations

import math

import numpy as np

from calseg.errors import ConfigError

__all__ = ["DecayOperator", "IdentityOperator"]

def _check_frames(n_frames):
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ConfigError(f"n_frames must be a positive integer, got {n_frames!r}")
    return int(n_frames)


def _check_gamma(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not (0.0 <= value < 1.0):
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    return value


def _as_2d(X, n_frames, what):
    X = np.asarray(X)
    if X.ndim not in (1, 2) or X.shape[0] != n_frames:
        raise ValueError(
            f"{what} must have shape ({n_frames},) or ({n_frames}, m), got {X.shape}")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X


class DecayOperator:
    """Calcium-decay dictionary D (T x T), applied by recursive filtering.

    Parameters
    ----------
    n_frames : int
        Number of frames T.
    gamma : float
        Per-frame decay factor in [0, 1), ``exp(-1 / (fps * tau))``.
    rise_gamma : float, optional
        Per-frame factor of the rise, in [0, 1) and different from ``gamma``. When given, the
        kernel is the AR(2) impulse response
        ``h[k] = (gamma**(k+1) - rise_gamma**(k+1)) / (gamma - rise_gamma)``, a difference of
        exponentials that rises, peaks and decays with ``gamma``.

    Attributes
    ----------
    n_frames : int
    gamma, rise_gamma : float
    col_norms : ndarray of shape (T,)
        n_j, the l2 norm of the truncated kernel started at frame j, before scaling.
    norm_sq : float
        ``||D||_2**2`` (computed on first access, then cached).

    Notes
    -----
    With the unscaled Toeplitz matrix K (``K[i, j] = h[i - j]`` for i >= j) and
    N = diag(n), D = K N^{-1}, so every column of D has unit l2 norm. For AR(1),
    ``n_j**2 = (1 - gamma**(2 (T - j))) / (1 - gamma**2)``; in general
    ``n_j**2 = sum_{k < T - j} h[k]**2`` (cumulative energy of the kernel).
    ``D x = lfilter(b, a, x / n)`` and ``D^T r = lfilter(b, a, r[::-1])[::-1] / n``.
    """

    def __init__(self, n_frames, gamma, *, rise_gamma=None):
        self.n_frames = _check_frames(n_frames)
        self.gamma = _check_gamma("gamma", gamma)
        if rise_gamma is not None:
            rise_gamma = _check_gamma("rise_gamma", rise_gamma)
            if abs(rise_gamma - self.gamma) < 1e-12:
                raise ConfigError(
                    f"rise_gamma must differ from gamma (a difference of exponentials), "
                    f"got {rise_gamma!r} == {self.gamma!r}")
        self.rise_gamma = rise_gamma
        T = self.n_frames
        if rise_gamma is None:
            self._b = np.array([1.0])
            self._a = np.array([1.0, -self.gamma])
            k = np.arange(T, 0, -1, dtype=np.float64)  # T - j
            g2 = self.gamma ** 2
            norms_sq = (1.0 - g2 ** k) / (1.0 - g2)
        else:
            g, d = self.gamma, rise_gamma
            self._b = np.array([1.0])
            self._a = np.array([1.0, -(g + d), g * d])
            h = _impulse_response(self._a, T)
            cum = np.cumsum(h * h)
            norms_sq = cum[::-1]  # column j sees h[0 .. T-1-j]
        self.col_norms = np.sqrt(norms_sq)
        self._inv_norms = 1.0 / self.col_norms
        self._norm_sq = None

    @classmethod
    def from_tau(cls, n_frames, tau, fps, *, rise=None):
        """Build the operator from time constants in seconds.

        Parameters
        ----------
        n_frames : int
        tau : float
            Decay time constant in seconds (> 0); ``gamma = exp(-1 / (fps * tau))``.
        fps : float
            Frame rate in Hz (> 0).
        rise : float, optional
            Rise time constant in seconds (> 0, different from ``tau``).
        """
        tau = _positive("tau", tau)
        fps = _positive("fps", fps)
        rise_gamma = None
        if rise is not None:
            rise = _positive("rise", rise)
            rise_gamma = math.exp(-1.0 / (fps * rise))
        return cls(n_frames, math.exp(-1.0 / (fps * tau)), rise_gamma=rise_gamma)

    def __repr__(self):
        extra = "" if self.rise_gamma is None else f", rise_gamma={self.rise_gamma:.6g}"
        return f"DecayOperator(n_frames={self.n_frames}, gamma={self.gamma:.6g}{extra})"

    def kernel(self):
        """The unscaled kernel h of length T (h[0] = 1)."""
        return _impulse_response(self._a, self.n_frames)

    def apply(self, X):
        """D X.

        Parameters
        ----------
        X : ndarray of shape (T,) or (T, m)

        Returns
        -------
        ndarray of the same shape; float32 input stays float32.
        """
        X = _as_2d(X, self.n_frames, "X")
        return self._filter(X, adjoint=False)

    def adjoint(self, R):
        """D^T R for R of shape (T,) or (T, m); float32 input stays float32."""
        R = _as_2d(R, self.n_frames, "R")
        return self._filter(R, adjoint=True)

    def _filter(self, X, *, adjoint):
        dtype = X.dtype
        b = self._b.astype(dtype)
        a = self._a.astype(dtype)
        inv = self._inv_norms.astype(dtype)
        if X.ndim == 1:
            return self._filter_block(X[:, None], b, a, inv, adjoint)[:, 0]
        return self._filter_block(X, b, a, inv, adjoint)

    @staticmethod
    def _filter_block(X, b, a, inv, adjoint):
        from ._kernels import BAND, ar_filter, ar_filter_serial

        X = np.ascontiguousarray(X)
        out = np.empty(X.shape, dtype=X.dtype)
        a1 = X.dtype.type(-a[1])
        a2 = X.dtype.type(-a[2] if a.size > 2 else 0.0)
        kernel = ar_filter if X.shape[1] > 2 * BAND else ar_filter_serial
        kernel(X, a1, a2, inv, adjoint, out)
        return out

    @property
    def norm_sq(self):
        """``||D||_2**2``, the largest eigenvalue of D^T D (Lanczos, cached)."""
        if self._norm_sq is None:
            self._norm_sq = _operator_norm_sq(self)
        return self._norm_sq


class IdentityOperator:
    """D = I (T x T): no temporal deconvolution. Same interface as :class:`DecayOperator`."""

    def __init__(self, n_frames):
        self.n_frames = _check_frames(n_frames)
        self.col_norms = np.ones(self.n_frames)
        self.norm_sq = 1.0

    def __repr__(self):
        return f"IdentityOperator(n_frames={self.n_frames})"

    def apply(self, X):
        """Return a copy of X (shape (T,) or (T, m))."""
        return _as_2d(X, self.n_frames, "X").copy()

    def adjoint(self, R):
        """Return a copy of R (shape (T,) or (T, m))."""
        return _as_2d(R, self.n_frames, "R").copy()


def _positive(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _impulse_response(a, n):
    """The first ``n`` samples of the impulse response of ``1 / (a[0] + a[1] z^-1 + ...)``
    (``a[0] = 1``), by its recursion: ``scipy.signal.lfilter([1], a, impulse)`` without importing
    scipy.signal (a second of a run's single-threaded start, in every worker too)."""
    coef = [-float(c) for c in a[1:]]
    h = [0.0] * n
    for t in range(n):
        v = 1.0 if t == 0 else 0.0
        for k, c in enumerate(coef, start=1):
            if t >= k:
                v += c * h[t - k]
        h[t] = v
    return np.array(h)


def _operator_norm_sq(op):
    """Largest eigenvalue of D^T D by Lanczos (ARPACK) with a fixed start vector."""
    T = op.n_frames
    if T == 1:
        return float(op.apply(np.ones(1))[0] ** 2)
    if T <= 64:
        D = op.apply(np.eye(T))
        return float(np.linalg.norm(D, 2) ** 2)
    from scipy.sparse.linalg import LinearOperator, eigsh

    lin = LinearOperator((T, T), matvec=lambda v: op.adjoint(op.apply(np.ravel(v))),
                         dtype=np.float64)
    v0 = np.random.default_rng(0).random(T) + 0.5
    val = eigsh(lin, k=1, which="LA", v0=v0, tol=1e-12, return_eigenvectors=False,
                maxiter=20 * T)
    return float(val[0])
