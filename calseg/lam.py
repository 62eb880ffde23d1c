"""The default λ and the significance threshold, both from the polar of pure noise.

A component enters the solution only where the polar of the residual exceeds λ (METHOD.md §2,
§5.6). On noise-normalised data the residual of a perfect fit is white unit noise, whose polar
ρ_noise depends on the number of frames, the tile size, the decay kernel and the norm weights,
but not on the recording. ``noise_polar`` measures it once per run on a synthetic white-noise
block of the tile's size (the polar lower bound of :func:`calseg.certify.polar.polar_lower`).

calseg uses it twice:

* λ = ``DEFAULT_FACTOR`` · ρ_noise. ρ_noise is set by very sparse atoms (a few frames, a few
  pixels) that the seeds never start from, while dim neurons project at only ~0.4–1 ρ_noise, so
  the solver runs with λ below the noise polar (less shrinkage, dim neurons survive);
* ρ_noise itself is the bar for what is grown: an atom from the polar search below it cannot be
  told from noise and is not added.

For what is *reported*, the bar that matters is the one for the component's own footprint:
ρ_noise is a supremum over every atom, set by one- or two-pixel atoms, and a dim neuron with a
broad footprint (whose ℓ1 and TV weights shrink its projection) can stand well clear of noise on
its own footprint while staying below ρ_noise. With the footprint ψ fixed, white noise E projects
on (φ, ψ) at most ``‖ψ‖₂ · q`` with q the temporal polar of one white-noise trace (Eψ/‖ψ‖₂ is
white); :func:`trace_null` gives q's 99th percentile. A component is reported when its projection
exceeds ρ_noise or ``SIGNIFICANCE · ‖ψ‖₂ · q99`` (the factor covers ψ having been fitted to the
same data).
"""
from __future__ import annotations

import numpy as np

#: λ / ρ_noise. Below 1 on purpose: ρ_noise is set by extremely sparse atoms (a few frames, a
#: few pixels) that seeds never start from, while dim neurons stand at ~0.4-1 ρ_noise; measured
#: on a standard-preset simulation without growth (0.35: Neurofinder combined 0.87; 0.5: 0.85;
#: 1.3: 0.80); with growth (3 rounds) 0.35 gave 0.93.
DEFAULT_FACTOR = 0.35

#: How far above the fixed-footprint noise level (99th percentile) a component must project to
#: be reported without clearing ρ_noise (see the module docstring). On simulations every
#: component past the area test stood >= 2.7x that level when it was a true neuron (realistic
#: preset), and no false one came near it.
SIGNIFICANCE = 2.0


def noise_polar(n_frames: int, image_shape: tuple[int, int], op, background: np.ndarray,
                temporal, spatial, *, seed: int = 0, max_pixels: int = 64 * 64) -> float:
    """Polar (lower bound, several starts) of D^T (I − F F^T) E for white unit noise E.

    The block is cropped to at most ``max_pixels`` pixels (the polar of noise grows only with
    the logarithm of the size), keeping the tile's aspect ratio.
    """
    from .certify.polar import polar_lower
    from .prox.composite import CompositeNorm

    h, w = image_shape
    scale = min(1.0, float(np.sqrt(max_pixels / float(h * w))))
    h2, w2 = max(int(h * scale), 4), max(int(w * scale), 4)
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n_frames, h2 * w2)).astype(np.float32)
    if background is not None and background.shape[1]:
        E -= (background @ (background.T @ E)).astype(np.float32)
    Wn = op.adjoint(E)
    sp = CompositeNorm(spatial.l2, spatial.l1, spatial.tv, nonnegative=spatial.nonnegative,
                       image_shape=(h2, w2), connectivity=spatial.connectivity)
    rho, _, _ = polar_lower(Wn, temporal, sp, n_starts=4, max_iter=10, seed=seed, tol=1e-3)
    return float(rho)


def trace_null(n_frames: int, op, background: np.ndarray, temporal, *, n_traces: int = 200,
               quantile: float = 0.99, seed: int = 0) -> float:
    """Upper quantile of the temporal polar of one white unit-noise trace.

    The polar is of Dᵀ (I − F Fᵀ) e over the temporal norm (``temporal``, non-negative); for a
    fixed unit-Z-norm footprint ψ, white noise projects on the best (φ, ψ) at most ‖ψ‖₂ times this.

    Parameters
    ----------
    n_frames : int
    op : DecayOperator
    background : ndarray of shape (T, k)
        Orthonormal background atoms (projected out, as in the tiles).
    temporal : CompositeNorm
    n_traces : int
        Noise traces drawn.
    quantile : float
    seed : int

    Returns
    -------
    float
    """
    from .certify.dualnorm import dual_norm

    rng = np.random.default_rng(seed)
    E = rng.standard_normal((n_frames, n_traces))
    if background is not None and background.shape[1]:
        E -= background @ (background.T @ E)
    vals = dual_norm(op.adjoint(E), temporal)[0]
    return float(np.quantile(vals, quantile))
