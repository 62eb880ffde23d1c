"""Spike inference on traces a user already has, with calseg's own temporal model and norm.

For each trace y (T,) the problem is the temporal half of the factorization with a fixed
footprint:

    min_{a >= 0, b}  ½ ‖ỹ − D a − F b‖² + λ (α ‖a‖₂ + β ‖a‖₁),   ỹ = (y − median y) / σ

with D the unit-column calcium-decay dictionary, F slow Fourier atoms (a drifting baseline, free),
σ the SD of the trace's noise projected on one unit-norm transient (robust, from frame-to-frame
differences; for traces resampled to a higher rate than they were recorded at, from differences
at the lag where the noise decorrelates, times the square root of that lag) and λ in those
units, so λ = 2 asks each spike to stand two noise SDs above the noise along its transient. b is
eliminated exactly (projection onto F's orthogonal complement) and a is found by FISTA with the
composite prox ℓ1⁺ → ℓ2 (METHOD.md §4.1), stopping on the relative change of the objective.
The returned spikes are a / n (calcium increments per frame, in the trace's units).
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, InputError

#: default λ (in units of the trace's noise SD) for deconvolution
DEFAULT_DECONV_LAM = 2.0
#: shortest baseline-drift period (s) followed by the Fourier background with ``n_background="auto"``
DEFAULT_DRIFT_PERIOD_S = 20.0


def _diff_sd(y: np.ndarray, k: int) -> float:
    """Robust SD of the lag-``k`` differences of ``y``, divided by √2 (= the noise SD for white noise)."""
    d = y[k:] - y[:-k]
    return float(np.median(np.abs(d - np.median(d))) / (0.6745 * np.sqrt(2.0)))


def resampling_factor(y: np.ndarray, *, collapse: float = 30.0) -> int:
    """How many frames per recorded sample a trace has, if it was resampled to a higher rate.

    A trace recorded at rate f and resampled (interpolated, or band-limited by an anti-aliasing
    filter) to a higher rate has almost no power above the original Nyquist frequency f/2: its
    spectrum collapses there, by orders of magnitude (spikefinder's data, resampled to 100 Hz,
    drop 600x to 10^10x within one octave). A trace sampled at its own rate keeps a flat white
    noise floor up to the Nyquist frequency, and even a clean calcium signal's spectrum falls
    only ~4-16x per octave. The octave bands of a Welch spectrum, from the lowest up, are scanned
    for the first that holds less than ``1/collapse`` of the power density of the octave below;
    its lower edge f_c gives the factor fs / (2 f_c) (a power of two). 1 when there is none.

    Parameters
    ----------
    y : ndarray of shape (T,)
    collapse : float
        Drop in mean power density between adjacent octaves that marks the cutoff.

    Returns
    -------
    int
    """
    from scipy.signal import welch

    y = np.asarray(y, dtype=np.float64)
    T = y.shape[0]
    if T < 256:
        return 1
    f, P = welch(y - np.median(y), fs=1.0, nperseg=min(1024, T // 4))
    edges = [0.5 / 2 ** k for k in range(7)]  # 0.5, 0.25, ... 1/128 cycles per frame
    bands = []
    for hi, lo in zip(edges, edges[1:]):
        sel = (f > lo) & (f <= hi)
        bands.append(float(P[sel].mean()) if sel.any() else np.nan)
    # bands[0] is the top octave; scan from the lowest octave up for the first collapse
    for k in range(len(bands) - 2, -1, -1):
        low, high = bands[k + 1], bands[k]
        if np.isfinite(low) and np.isfinite(high) and low > 0 and high < low / collapse:
            return 2 ** (k + 1)  # cutoff at edges[k + 1] = 0.5 / 2**(k+1) cycles per frame
    return 1


def noise_level(y: np.ndarray) -> tuple[float, int]:
    """Noise SD of a trace and the number of frames over which its noise stays correlated.

    For a trace at its own sampling rate: the robust SD of its frame-to-frame differences / √2
    (white noise). For a trace resampled ``m`` times (see :func:`resampling_factor`), the noise
    is correlated over ``m`` frames and its lag-1 differences are far smaller than the noise;
    the SD is then taken from the lag-``m`` differences, where the noise has decorrelated.

    Parameters
    ----------
    y : ndarray of shape (T,)

    Returns
    -------
    sigma : float
        Noise SD per frame (> 0).
    corr_frames : int
        Correlation length of the noise in frames (1 for white noise).
    """
    y = np.asarray(y, dtype=np.float64)
    m = resampling_factor(y)
    m = m if m < y.shape[0] // 4 else 1
    s = _diff_sd(y, m) if y.shape[0] > m else np.nan
    if not np.isfinite(s) or s <= 0:
        return float(np.std(y)) or 1.0, 1
    return s, m


def trace_noise(y: np.ndarray, level: tuple[float, int] | None = None) -> float:
    """Noise level of a trace for the deconvolution's λ: the SD of its noise projected on one
    unit-norm calcium transient.

    For white noise that is the per-frame noise SD. Noise correlated over ``m`` frames (see
    :func:`noise_level`) adds up coherently over a transient, which spans many more frames, so its
    projection is larger by about √m; without this factor a trace resampled from 8 Hz to 100 Hz
    looks ~35 times less noisy than it is and every noise bump becomes a spike. ``level``: the
    trace's :func:`noise_level`, when already computed.
    """
    sigma, m = noise_level(y) if level is None else level
    return float(sigma * np.sqrt(m))


def lipschitz_bound(op) -> float:
    """Upper bound on ``||D||_2**2`` in O(T) for a decay operator with a non-negative kernel.

    Schur's test: for a matrix with non-negative entries, ``||D||_2**2 <= ||D||_1 ||D||_inf``
    (largest column sum times largest row sum). For the unit-column calcium dictionary both sums
    come from the kernel h (T,) and the column norms n: column j sums ``cumsum(h)[T-1-j] / n_j``,
    row i sums ``(h * (1/n))[i]`` (a causal filtering of 1/n). For a positive kernel the bound is
    tight as T grows (the Toeplitz norm is attained at frequency 0), and it replaces the Lanczos
    estimate, which needs thousands of passes over long traces. Operators without a ``kernel``
    (the identity) fall back to their own ``norm_sq``.

    Parameters
    ----------
    op : DecayOperator or IdentityOperator

    Returns
    -------
    float
    """
    if not hasattr(op, "kernel"):
        return float(op.norm_sq)
    from scipy.signal import lfilter

    h = op.kernel()
    if np.any(h < 0):
        return float(op.norm_sq)
    inv = 1.0 / op.col_norms
    col = np.cumsum(h)[::-1] * inv
    row = lfilter(op._b, op._a, inv)
    return float(col.max() * row.max())


def _step_constant(op) -> float:
    """Lipschitz constant for FISTA: a loose Lanczos estimate (×1.01) capped by Schur's bound.

    Lanczos converges from below, so with relative tolerance 1e-4 the factor 1.01 keeps the
    estimate above ``||D||_2**2``; when it does not converge within a few restarts (long traces
    with flat spectra), Schur's bound :func:`lipschitz_bound` is used alone.
    """
    bound = lipschitz_bound(op)
    T = op.n_frames
    if not hasattr(op, "kernel") or T <= 64:
        return bound
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    lin = LinearOperator((T, T), matvec=lambda v: op.adjoint(op.apply(np.ravel(v))), dtype=np.float64)
    v0 = np.random.default_rng(0).random(T) + 0.5
    try:
        val = float(eigsh(lin, k=1, which="LA", v0=v0, tol=1e-4, ncv=24, maxiter=8,
                          return_eigenvectors=False)[0])
    except ArpackNoConvergence:
        return bound
    return min(bound, 1.01 * val)


def deconvolve_trace(y: np.ndarray, op, *, lam: float = DEFAULT_DECONV_LAM, temporal=(1.0, 1.0),
                     n_background: int = 3, max_iter: int = 2000, tol: float = 1e-7, level=None):
    """Deconvolve one trace; returns (spikes (T,), calcium fit (T,), info dict).

    ``level``: the trace's :func:`noise_level` when the caller already has it."""
    from .model.background import fourier_background
    from .prox.norms import group_l2_shrink, soft_threshold

    y = np.asarray(y, dtype=np.float64)
    T = y.shape[0]
    sigma = trace_noise(y, level)
    yn = (y - np.median(y)) / sigma
    F = fourier_background(T, n_background) if n_background > 0 else np.zeros((T, 0))

    def proj(v):
        return v - F @ (F.T @ v) if F.shape[1] else v

    yr = proj(yn)
    L = _step_constant(op)
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


def background_atoms(n_frames: int, fps: float, period_s: float = DEFAULT_DRIFT_PERIOD_S) -> int:
    """Number of slow Fourier atoms so that baseline drifts slower than ``period_s`` are free.

    The atoms are a constant plus cos/sin pairs at 1, 2, ... cycles per recording; pairs are added
    up to the frequency 1 / ``period_s``, so a 10-minute recording gets a richer baseline than a
    1-minute one (at least 3 atoms, as in the factorization).

    Parameters
    ----------
    n_frames : int
    fps : float
    period_s : float
        Shortest drift period (s) the baseline may follow; calcium transients (decays of a few
        seconds at most) are much faster and stay in the spikes.

    Returns
    -------
    int
    """
    n_cycles = int(n_frames / fps // period_s)
    n_cycles = min(n_cycles, max((n_frames - 1) // 2 - 1, 1))
    return max(3, 1 + 2 * n_cycles)


def deconvolve(traces: np.ndarray, fps: float, *, tau: float | None = None, rise: float | None = None,
               lam: float = DEFAULT_DECONV_LAM, temporal=(1.0, 1.0), n_background="auto",
               max_iter: int = 2000, tol: float = 1e-7, smooth: float | None = None):
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
    temporal : (float, float)
        (α, β): weights of ‖a‖₂ and ‖a‖₁ in the temporal norm.
    n_background : int or "auto"
        Slow Fourier atoms of the free baseline; ``"auto"`` (default) adds atoms with the length of
        the recording, see :func:`background_atoms`.
    max_iter, tol : int, float
        FISTA budget and relative-objective stopping tolerance.
    smooth : float, optional
        Report a continuous spike rate instead of the sparse increments: the spikes are convolved
        with a Gaussian of this SD (s) (their sum is kept, except near the ends). ``None`` (default): sparse.

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
    if smooth is not None and not (smooth >= 0 and np.isfinite(smooth)):
        raise ConfigError(f"smooth = {smooth!r} is not allowed: must be a time in seconds >= 0, or None")
    if not (n_background == "auto" or (isinstance(n_background, (int, np.integer)) and n_background >= 0)):
        raise ConfigError(f"n_background = {n_background!r} is not allowed: must be an integer >= 0 or 'auto'")
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
        level = noise_level(y)  # once per trace: the decay fit and the λ units both use it
        t_j = tau if tau is not None else estimate_tau(y[:, None], fps, min_lag=max(2, 2 * level[1]))
        r_j = rise if (rise is not None and rise * fps >= 0.3 and abs(rise - t_j) > 1e-3 * t_j) else None
        op = DecayOperator.from_tau(last, t_j, fps, rise=r_j)
        n_bg = background_atoms(last, fps) if n_background == "auto" else int(n_background)
        s, _, info = deconvolve_trace(y, op, lam=lam, temporal=temporal, n_background=n_bg,
                                      max_iter=max_iter, tol=tol, level=level)
        if smooth:
            from scipy.ndimage import gaussian_filter1d

            s = gaussian_filter1d(s, smooth * fps, mode="constant")
        out[:last, j] = s
        infos.append({"column": j, "tau_s": t_j, "rise_s": r_j, "n_background": n_bg, **info})
    return out, infos
