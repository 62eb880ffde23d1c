"""Background dictionary F of the model Y ~ D A Z^T + F B^T (METHOD section 1.2)."""
from __future__ import annotations

import numpy as np

from calseg.errors import ConfigError

__all__ = ["fourier_background"]


def fourier_background(n_frames, n_atoms):
    """Slowest Fourier atoms with orthonormal columns.

    Parameters
    ----------
    n_frames : int
        Number of frames T (>= 1).
    n_atoms : int
        Number of atoms k (0 <= k <= T, and the highest frequency must stay below T/2 so that
        every atom is nonzero).

    Returns
    -------
    F : ndarray of shape (T, k), float64
        Column 0 is the constant (DC) atom, then ``cos(2 pi f t / T)``, ``sin(2 pi f t / T)``
        for f = 1, 2, ... in that order, each scaled to unit l2 norm. ``F.T @ F = I``.

    Notes
    -----
    Cosines and sines of integer frequencies 0 < f < T/2 over a whole number of periods are
    exactly orthogonal on t = 0..T-1 with squared norm T/2, so no orthogonalization is needed.
    The coefficients B (P x k) are unpenalized: ``F B^T`` is a per-pixel slow baseline/drift.
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ConfigError(f"n_frames must be a positive integer, got {n_frames!r}")
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)) or n_atoms < 0:
        raise ConfigError(f"n_background must be a nonnegative integer, got {n_atoms!r}")
    T, k = int(n_frames), int(n_atoms)
    f_max = k // 2  # atoms 1..k-1 are cos/sin pairs of frequencies 1..ceil((k-1)/2)
    if k > 1 and 2 * f_max >= T:
        raise ConfigError(
            f"n_background must be small enough that the highest frequency ({f_max}) stays "
            f"below n_frames/2 = {T / 2:g}, got n_background={k} for {T} frames")
    t = np.arange(T, dtype=np.float64)
    F = np.empty((T, k))
    if k:
        F[:, 0] = 1.0 / np.sqrt(T)
    scale = np.sqrt(2.0 / T)
    for j in range(1, k):
        f = (j + 1) // 2
        phase = 2.0 * np.pi * f * t / T
        F[:, j] = scale * (np.cos(phase) if j % 2 == 1 else np.sin(phase))
    return F
