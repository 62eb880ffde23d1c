"""Start points for the factorization solver (Z is updated first, so Z0 = 0)."""
from __future__ import annotations

import numpy as np

from calseg.errors import ConfigError

__all__ = ["INIT_METHODS", "init_factors"]

INIT_METHODS = ("random", "impulse")


def init_factors(n_frames, n_pixels, rank, *, method="random", seed=0):
    """Initial temporal factor A0 and a zero spatial factor Z0.

    Parameters
    ----------
    n_frames : int
        T.
    n_pixels : int
        P.
    rank : int
        Number of columns r (>= 1).
    method : {"random", "impulse"}
        "random": sparse nonnegative columns, each with about ``max(1, T // 20)`` spikes of
        exponentially distributed size at random frames (drawn from ``seed``), so that the first
        Z-step correlates each column with the activity of different frames.
        "impulse": the authors' start, r impulses evenly spaced over the recording
        (column i = e_{floor(i T / r)}); needs r <= T.
    seed : int
        Seed of the random generator (ignored by "impulse").

    Returns
    -------
    A0 : ndarray of shape (T, r), float64
    Z0 : ndarray of shape (P, r), float64, all zeros

    Notes
    -----
    The solver's first Z-step from Z0 = 0 is ``Z = prox(Y'^T D A0 / L_Z)``, which is invariant to
    the scale of A0 (the objective is degree-2 homogeneous in each column pair).
    """
    T, P, r = int(n_frames), int(n_pixels), int(rank)
    if r < 1:
        raise ConfigError(f"rank must be an integer >= 1, got {rank!r}")
    if method == "random":
        rng = np.random.default_rng(seed)
        n_spikes = max(1, T // 20)
        A0 = np.zeros((T, r))
        for i in range(r):
            frames = rng.choice(T, size=min(n_spikes, T), replace=False)
            A0[frames, i] = rng.exponential(1.0, size=frames.size) + 0.1
    elif method == "impulse":
        if r > T:
            raise ConfigError(f"rank must be <= n_frames ({T}) for init='impulse', got {r}")
        A0 = np.zeros((T, r))
        A0[(np.arange(r) * T) // r, np.arange(r)] = 1.0
    else:
        raise ConfigError(f"init must be one of {INIT_METHODS} or a pair (A0, Z0), got {method!r}")
    return A0, np.zeros((P, r))
