"""Where neurons probably are: seed points from the summary images, and initial factors from them.

The factorization can start from anything, but a start near the answer saves most of the work:
one column per candidate neuron (a seed), instead of the authors' one impulse per frame, which
does not scale. Seeds that are not neurons are pruned by the solver's group sparsity; neurons
without a seed are added by rank growth (the certificate's improving atom).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _robust_z(img: np.ndarray) -> np.ndarray:
    med = np.median(img)
    mad = np.median(np.abs(img - med)) / 0.6745
    return (img - med) / max(mad, 1e-12)


#: the correlation image's slow landscape (Gaussian of this many cell diameters) is subtracted
#: before its maxima are taken: a patch of correlated neuropil raises every pixel's correlation
#: with its neighbours, a plateau that seeded dozens of columns in one tile
CORR_BACKGROUND = 1.0


def find_seeds(correlation: np.ndarray, peak: np.ndarray, diameter: float, *,
               corr_z: float = 2.5, peak_z: float = 3.5) -> np.ndarray:
    """Candidate neuron centres: local maxima of the smoothed correlation and peak images.

    A point is a seed when it is a local maximum (minimum distance ≈ diameter/3) of
    ``max(zc / corr_z, zp / peak_z)`` and that score is at least 1, with ``zc`` and ``zp`` the
    robust z-scores (median, MAD) of the smoothed correlation image minus its slow landscape
    (:data:`CORR_BACKGROUND`) and of the peak image.
    Cells that fire often stand out in the correlation image; cells that fire a few times
    only in the peak image (binned, blurred transients, see :func:`calseg.summary.summarize`).

    Returns
    -------
    ndarray of shape (n, 2), int: (row, col) of each seed, strongest first.
    """
    d = float(diameter)
    sigma = max(d / 8.0, 0.5)
    c = correlation.astype(np.float64)
    zc = _robust_z(ndimage.gaussian_filter(c, sigma=sigma)
                   - ndimage.gaussian_filter(c, sigma=CORR_BACKGROUND * d, mode="nearest"))
    zp = _robust_z(ndimage.gaussian_filter(peak.astype(np.float64), sigma=sigma))
    score = np.maximum(zc / corr_z, zp / peak_z)
    size = max(3, int(round(d / 3.0)) | 1)
    is_max = score == ndimage.maximum_filter(score, size=size, mode="nearest")
    ys, xs = np.nonzero(is_max & (score >= 1.0))
    order = np.argsort(-score[ys, xs])
    return np.stack([ys[order], xs[order]], axis=1).astype(int)


def seed_support(seeds, image_shape, radius) -> np.ndarray:
    """(P, n) bool: the pixels of an (h, w) image within ``radius`` of each seed (a seed may lie
    outside the image)."""
    h, w = image_shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((h * w, len(seeds)), dtype=bool)
    for k, (y, x) in enumerate(seeds):
        out[:, k] = (((yy - y) ** 2 + (xx - x) ** 2) <= radius ** 2).ravel()
    return out


def init_factors(Yn: np.ndarray, image_shape: tuple[int, int], seeds: np.ndarray, diameter: float,
                 gamma: float, col_norms: np.ndarray, background: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Initial (A, Z) for the seeds of one tile.

    For each seed the trace of a small neighbourhood is deconvolved by the inverse AR(1) filter
    (a_t = y_t − γ y_{t−1}, kept where it exceeds twice the innovation noise) to give A's column
    in the units of the unit-norm decay dictionary, and Z's column is the positive part of each
    nearby pixel's correlation with that trace inside a disk of the expected diameter.

    Parameters
    ----------
    Yn : ndarray of shape (T, P)
        Tile data, per-pixel mean removed and divided by the noise SD.
    image_shape : (h, w)
    seeds : ndarray of shape (n, 2)
        (row, col) in tile coordinates; a seed may lie just outside the tile (a cell cut by its
        border): its trace is read at the nearest tile pixel and its footprint start is the
        part of its disk inside the tile.
    gamma : float
        Per-frame calcium decay factor.
    col_norms : ndarray of shape (T,)
        Column norms n_j of the undivided decay dictionary (D's columns are kernel / n_j).
    background : ndarray of shape (T, k) with orthonormal columns, optional
        Background atoms projected out of the traces used (the seed's trace and its disk's
        pixels), as if from ``(I - F F^T) Yn`` without a projected copy of the whole tile.

    Returns
    -------
    A : ndarray of shape (T, n), Z : ndarray of shape (P, n), same dtype as Yn.
    """
    T, P = Yn.shape
    h, w = image_shape
    n = len(seeds)
    A = np.zeros((T, n), dtype=Yn.dtype)
    Z = np.zeros((P, n), dtype=Yn.dtype)
    radius = max(diameter / 2.0, 1.5)
    disks = seed_support(seeds, (h, w), 1.5 * radius)
    cube = Yn.reshape(T, h, w)
    Fb = np.asarray(background, np.float64) if background is not None and background.shape[1] else None
    for k, (r, c) in enumerate(seeds):
        rc, cc = min(max(r, 0), h - 1), min(max(c, 0), w - 1)
        r0, r1 = max(rc - 1, 0), min(rc + 2, h)
        c0, c1 = max(cc - 1, 0), min(cc + 2, w)
        y = cube[:, r0:r1, c0:c1].reshape(T, -1).mean(axis=1).astype(np.float64)
        if Fb is not None:
            y -= Fb @ (Fb.T @ y)
        y = y - np.median(y)
        innov = np.empty_like(y)
        innov[0] = y[0]
        innov[1:] = y[1:] - gamma * y[:-1]
        s = np.median(np.abs(innov - np.median(innov))) / 0.6745
        a = np.where(innov > 2.0 * s, innov, 0.0)
        if not np.any(a > 0):
            a = np.maximum(innov, 0.0)
        A[:, k] = a * col_norms
        idx = np.flatnonzero(disks[:, k])
        Ysub = Yn[:, idx].astype(np.float64)
        if Fb is not None:
            Ysub -= Fb @ (Fb.T @ Ysub)
        yc = y - y.mean()
        num = yc @ (Ysub - Ysub.mean(axis=0))
        den = np.sqrt((yc @ yc) * ((Ysub - Ysub.mean(axis=0)) ** 2).sum(axis=0)) + 1e-12
        corr = num / den
        Z[idx, k] = np.maximum(corr - 0.2, 0.0)
        if not np.any(Z[:, k] > 0):
            Z[rc * w + cc, k] = 1.0
        # scale so that D a z^T matches the data at the seed: least squares on the seed trace
    return A, Z
