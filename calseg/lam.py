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
* ρ_noise itself is the bar for what is reported and grown: a component whose data projection
  on its own atom does not exceed ρ_noise (:func:`calseg.tile.atom_projections`), or an atom
  from the polar search below it, cannot be told from noise and is dropped.
"""
from __future__ import annotations

import numpy as np

#: λ / ρ_noise. Below 1 on purpose: ρ_noise is set by extremely sparse atoms (a few frames, a
#: few pixels) that seeds never start from, while dim neurons stand at ~0.4-1 ρ_noise; measured
#: on a standard-preset simulation without growth (0.35: Neurofinder combined 0.87; 0.5: 0.85;
#: 1.3: 0.80); with growth (3 rounds) 0.35 gave 0.93.
DEFAULT_FACTOR = 0.35


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
