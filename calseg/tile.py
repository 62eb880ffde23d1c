"""Factorize one tile of a recording into components.

A tile reads only its own pixels (all frames), normalises every pixel to unit noise, builds the
background dictionary (slow Fourier atoms + the recording's neuropil time courses), starts the
factorization from the seeds in (or a cell radius around) its window and returns the components whose centroid lies in
its core, in global coordinates, with everything the outputs need.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .patches import Tile


@dataclass(frozen=True)
class TileContext:
    """What every tile shares (small, picklable): global summaries and solver settings."""

    noise: np.ndarray          # (H, W) per-pixel noise SD of the raw data
    mean: np.ndarray           # (H, W) mean image
    seeds: np.ndarray          # (n, 2) global (row, col)
    neuropil: np.ndarray       # (T, k) global neuropil time courses (unit norm)
    diameter: float
    fps: float
    tau: float
    rise: float | None
    lam: float
    spatial: tuple
    temporal: tuple
    n_background: int
    connectivity: int
    max_iter: int
    tol: float
    certify: bool
    grow_rank: bool
    max_grow: int
    certificate_tol: float
    mask_threshold: float
    min_area: float
    max_area: float
    seed: int = 0
    rho_noise: float = 0.0     # polar of white noise for this tile size: the growth threshold
    trace_null: float = 0.0    # 99th percentile of one noise trace's temporal polar (calseg.lam.trace_null)


#: a component below ρ_noise must have a mask at least this many times the smallest reportable
#: cell's area to pass on its own footprint's noise level (calseg.lam): small fragments of local
#: neuropil fluctuations clear that level too, whole dim cells are larger
RELAXED_MIN_AREA = 2.0
#: ... and a compact one (area / convex-hull area): on realistic-preset simulations the ragged
#: patches of local neuropil that clear their own noise level mostly had solidity < 0.65, the dim
#: cells > 0.65 (58 of 59)
RELAXED_MIN_SOLIDITY = 0.65
#: ... and not much larger than a cell (in cell areas, pi (d/2)^2): what passes on its own noise
#: level at 2-4 cell areas was a blob of local neuropil (realistic simulations: 14 of 35 false
#: positives above 2.3 cell areas, no true cell)
RELAXED_MAX_AREA = 2.0
#: a seed's footprint stays within this many cell diameters of the seed (and a grown column's
#: within as many of its atom's centroid): a seed's start trace
#: carries the local neuropil too, and unrestricted its column can drift onto a broader signal
#: (a 9-px start grew to 1,400 px, centred 20 px away) and the cell it was seeded on is lost
SEED_REACH = 1.25
#: ... and a footprint whose mask covers more than this fraction of its reach's rim is a piece
#: of that broader signal (a cell, within a radius of its seed, stays clear of the rim)
REACH_EDGE_FRACTION = 0.2


def _solidity(mask: np.ndarray) -> float:
    """Area of a 2-D mask over the area of its convex hull (1 for a convex shape)."""
    from skimage.morphology import convex_hull_image

    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    hull = convex_hull_image(crop)
    return float(crop.sum() / max(hull.sum(), 1))


@dataclass
class Component:
    """One neuron found in a tile, in global coordinates."""

    pixels: np.ndarray          # (k,) flat global pixel indices of the footprint's support
    weights: np.ndarray         # (k,) footprint values there, raw (fluorescence) units per unit calcium
    mask: np.ndarray            # (m,) flat global pixel indices of the mask
    calcium: np.ndarray         # (T,) D a: calcium in units of the footprint
    spikes: np.ndarray          # (T,) a / n: calcium increments per frame
    centroid: tuple[float, float]
    score: float                # ||A_i||_A ||Z_i||_Z
    snr: float
    baseline: float             # F0: mean background fluorescence under the mask
    tile: int
    owned: bool = True          # centroid in the tile's core; False: a whole view from a neighbour


@dataclass
class TileResult:
    tile: Tile
    components: list[Component]
    certificate: dict | None
    info: dict = field(default_factory=dict)
    A: np.ndarray | None = None   # (T, r) the tile's final factors, normalised units (for re-checking)
    Z: np.ndarray | None = None   # (P, r)


def background_dictionary(n_frames: int, n_fourier: int, neuropil: np.ndarray) -> np.ndarray:
    """Orthonormal (T, k) background atoms: slow Fourier atoms plus neuropil time courses."""
    from .model.background import fourier_background

    parts = []
    if n_fourier > 0:
        parts.append(fourier_background(n_frames, n_fourier))
    if neuropil is not None and neuropil.shape[1] > 0:
        parts.append(np.asarray(neuropil, dtype=np.float64))
    if not parts:
        return np.zeros((n_frames, 0))
    F = np.concatenate(parts, axis=1)
    Q, R = np.linalg.qr(F)
    keep = np.abs(np.diag(R)) > 1e-8 * max(np.abs(np.diag(R)).max(), 1e-300)
    return Q[:, keep]


def tile_model(n_frames: int, ctx: TileContext):
    """The temporal operator D and background dictionary F a tile is factorized with."""
    from .model.temporal import DecayOperator

    op = DecayOperator.from_tau(n_frames, ctx.tau, ctx.fps, rise=ctx.rise)
    return op, background_dictionary(n_frames, ctx.n_background, ctx.neuropil)


def read_tile(movie, tile: Tile, noise: np.ndarray):
    """A tile's data as (T, P) float32, each pixel minus its mean and divided by its noise SD."""
    Y = movie.read(rows=tile.rows, cols=tile.cols, dtype=np.float32)
    T, h, w = Y.shape
    sigma = noise[tile.rows, tile.cols].astype(np.float32)
    mu = Y.mean(axis=0, dtype=np.float64).astype(np.float32)
    Y -= mu
    Y /= sigma
    return Y.reshape(T, h * w), mu, sigma


def process_tile(tile: Tile, *, movie, ctx: TileContext) -> TileResult:
    """Factorize one tile of ``movie`` (see module docstring), with BLAS on one thread.

    A BLAS on several threads splits some products and norms (``gemv`` on short, wide
    matrices; dot products past ~10^4 terms) into per-thread partial sums, so their last bits
    depend on the thread count: 2 in a serial run on two cores, 1 in a pool worker (calseg sets
    it) or a Dask worker (Dask sets it). One thread everywhere makes a tile's result the same
    whichever way it runs; the parallelism is across tiles.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _process_tile(tile, movie=movie, ctx=ctx)


def _process_tile(tile: Tile, *, movie, ctx: TileContext) -> TileResult:
    from ._alloc import keep_freed_memory
    from .factorize import factorize
    from .seeds import init_factors, seed_support

    keep_freed_memory()              # in whichever process runs the tile (pool, dask, serial)
    t0 = time.perf_counter()
    h, w = tile.shape
    Yn, mu, sigma = read_tile(movie, tile, ctx.noise)
    T = Yn.shape[0]
    t_read = time.perf_counter() - t0

    op, F = tile_model(T, ctx)

    # seeds in the window and up to a cell radius outside it: a cell cut by the window's border
    # starts from its seed instead of being left to rank growth (it belongs to a neighbour)
    m = 0.5 * ctx.diameter
    inside = tile.near(ctx.seeds, m)
    local = ctx.seeds[inside] - np.array([tile.y0, tile.x0]) if np.any(inside) else np.zeros((0, 2), int)
    # initial factors from the data with the background projected out (of the traces they use)
    A0, Z0 = init_factors(Yn, (h, w), local, ctx.diameter, op.gamma, op.col_norms, background=F)
    support = seed_support(local, (h, w), SEED_REACH * ctx.diameter)
    A0, Z0, kept = _rescale(Yn, op, F, A0, Z0)
    support = support[:, kept]

    fact = factorize(
        Yn, (h, w), lam=ctx.lam, spatial=ctx.spatial, temporal=ctx.temporal, nonnegative=True,
        operator=op, background=F, init=(A0, Z0), connectivity=ctx.connectivity,
        max_iter=ctx.max_iter, tol=ctx.tol, certify=ctx.certify, grow_rank=ctx.grow_rank,
        max_grow=ctx.max_grow, certificate_tol=ctx.certificate_tol, seed=ctx.seed,
        grow_min_rho=ctx.rho_noise, grow_min_support=max(1, int(ctx.min_area)), support=support,
        grow_reach=SEED_REACH * ctx.diameter)
    t_fact = time.perf_counter() - t0 - t_read

    rho = atom_projections(Yn, op, F, fact.A, fact.Z, (h, w), ctx)
    comps = _components(tile, fact, op, sigma, mu, ctx, rho)
    cert = fact.certificate.to_dict() if getattr(fact, "certificate", None) is not None else None
    info = {"tile": tile.index, "window": [tile.y0, tile.y1, tile.x0, tile.x1], "seeds": int(len(local)),
            "rank": int(fact.A.shape[1]), "kept": len(comps), "n_iter": int(fact.n_iter),
            "n_grow": int(getattr(fact, "n_grow", 0)),
            "seconds_certificate": float(fact.certificate.seconds) if fact.certificate is not None else 0.0,
            "stop_reason": fact.stop_reason, "objective": float(fact.objective),
            "seconds_read": t_read, "seconds_factorize": t_fact,
            "seconds": time.perf_counter() - t0}
    return TileResult(tile=tile, components=comps, certificate=cert, info=info,
                      A=np.asarray(fact.A, np.float32), Z=np.asarray(fact.Z, np.float32))


def _clipped_by_reach(mask, fact, i, image_shape) -> bool:
    """True when component i's mask covers more than ``REACH_EDGE_FRACTION`` of the rim of
    the support its footprint was restricted to (its seed's reach, inside the tile)."""
    support = getattr(fact, "support", None)
    if support is None or support[:, i].all():
        return False
    s = support[:, i].reshape(image_shape)
    rim = s & ~ndimage.binary_erosion(s, border_value=1)
    n = int(rim.sum())
    return n > 0 and int((mask & rim).sum()) > REACH_EDGE_FRACTION * n


def _rescale(Yn, op, F, A, Z):
    """Scale each initial column pair to its least-squares amplitude and balance the two norms;
    returns (A, Z, kept), kept marking the columns with a positive amplitude."""
    if A.shape[1] == 0:
        return A, Z, np.zeros(0, dtype=bool)
    DA = op.apply(A.astype(np.float64))
    if F.shape[1]:
        DA = DA - F @ (F.T @ DA)
    num = np.einsum("tk,tk->k", DA, (Yn @ Z.astype(np.float32)).astype(np.float64))
    den = (DA * DA).sum(axis=0) * (Z.astype(np.float64) ** 2).sum(axis=0)
    s = np.where(den > 0, np.maximum(num, 0) / np.maximum(den, 1e-300), 0.0)
    na = np.linalg.norm(A, axis=0) * np.sqrt(s)
    nz = np.linalg.norm(Z, axis=0) * np.sqrt(s)
    keep = s > 0
    bal = np.where(keep & (na > 0) & (nz > 0), np.sqrt(np.maximum(nz, 1e-300) / np.maximum(na, 1e-300)), 0.0)
    A = (A * (np.sqrt(s) * bal)).astype(A.dtype)
    Z = (Z * (np.sqrt(s) / np.where(bal > 0, bal, 1.0))).astype(Z.dtype)
    return A[:, keep], Z[:, keep], keep


def atom_projections(Yn, op, F, A, Z, image_shape, ctx: TileContext) -> np.ndarray:
    """For each column i, the data's projection on its unit atom, the other columns removed.

    ρ_i = φᵢᵀ Dᵀ (I − F Fᵀ)(Y − Σ_{j≠i} D a_j z_jᵀ) ψᵢ with φᵢ = a_i/‖a_i‖_A, ψᵢ = z_i/‖z_i‖_Z.
    White noise projects at most ρ_noise on any atom (the polar of noise), so a component with
    ρ_i ≤ ρ_noise cannot be told from noise and is not reported.
    """
    from .prox.composite import CompositeNorm

    A = np.asarray(A, dtype=np.float64)
    Z = np.asarray(Z, dtype=np.float64)
    if A.shape[1] == 0:
        return np.zeros(0)
    na = CompositeNorm(*ctx.temporal, nonnegative=True).value(A)
    nz = CompositeNorm(*ctx.spatial, nonnegative=True, image_shape=image_shape,
                       connectivity=ctx.connectivity).value(Z)
    DPhi = op.apply(A / np.where(na > 0, na, 1.0))
    if F.shape[1]:
        DPhi = DPhi - F @ (F.T @ DPhi)
    DA = op.apply(A)
    YZ = (Yn @ Z.astype(Yn.dtype)).astype(np.float64)     # (T, r)
    ZtZ = Z.T @ Z
    # (Y - D A Z^T + D a_i z_i^T) z_i  =  Y z_i - D A (Z^T z_i) + D a_i (z_i^T z_i)
    M = YZ - DA @ ZtZ + DA * np.diag(ZtZ)
    return np.einsum("ti,ti->i", DPhi, M) / np.where(nz > 0, nz, 1.0)


def _components(tile: Tile, fact, op, sigma, mu, ctx: TileContext, rho=None) -> list[Component]:
    h, w = tile.shape
    H, W = ctx.noise.shape
    A = np.asarray(fact.A, dtype=np.float64)
    Z = np.asarray(fact.Z, dtype=np.float64)
    if A.shape[1] == 0:
        return []
    from .prox.composite import CompositeNorm

    tnorm = CompositeNorm(*ctx.temporal, nonnegative=True)
    snorm = CompositeNorm(*ctx.spatial, nonnegative=True, image_shape=(h, w), connectivity=ctx.connectivity)
    znorm = snorm.value(Z)
    scores = tnorm.value(A) * znorm
    # a component clears the noise over every atom (strong), or the noise seen through its own
    # footprint, SIGNIFICANCE · ‖ψ‖₂ · q99 (calseg.lam), if its mask turns out whole and compact
    from .lam import SIGNIFICANCE

    if rho is None:
        strong = relaxed = np.ones(Z.shape[1], bool)
    else:
        strong = rho > ctx.rho_noise
        own = SIGNIFICANCE * ctx.trace_null * np.linalg.norm(Z, axis=0) / np.where(znorm > 0, znorm, 1.0)
        relaxed = (rho > own) if ctx.trace_null > 0 else strong
    C = op.apply(A)  # (T, r) calcium in normalised units
    sig = sigma.astype(np.float64).ravel()
    # background level per pixel: the mean image minus the mean of every component's contribution
    contrib = (Z * sig[:, None]) @ C.mean(axis=0)
    base_img = mu.astype(np.float64).ravel() - contrib
    yy, xx = np.mgrid[0:h, 0:w]
    cell_area = np.pi * (0.5 * ctx.diameter) ** 2
    out = []
    for i in range(A.shape[1]):
        z = Z[:, i]
        if not np.any(z > 0) or not np.any(A[:, i] > 0):
            continue
        if not (strong[i] or relaxed[i]):
            continue
        img = z.reshape(h, w)
        mask = img >= ctx.mask_threshold * img.max()
        lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
        if n > 1:  # keep the connected piece holding most of the footprint's weight
            sums = ndimage.sum(img, lab, index=np.arange(1, n + 1))
            mask = lab == (1 + int(np.argmax(sums)))
        area = int(mask.sum())
        if area < ctx.min_area or area > ctx.max_area:
            continue
        if _clipped_by_reach(mask, fact, i, (h, w)):
            continue  # pressed against its seed's reach: part of a broader signal, not a cell
        if not strong[i] and (area < RELAXED_MIN_AREA * ctx.min_area
                              or area > RELAXED_MAX_AREA * cell_area
                              or _solidity(mask) < RELAXED_MIN_SOLIDITY):
            continue  # only a whole, compact, cell-sized object may pass on its own noise level
        wts = img * mask
        cy = float((yy * wts).sum() / wts.sum()) + tile.y0
        cx = float((xx * wts).sum() / wts.sum()) + tile.x0
        owned = tile.owns(cy, cx)
        if not owned and not _whole_in_window(tile, cy, cx, 0.5 * ctx.diameter, (H, W)):
            continue  # cut by the window's border: the neighbour that owns it sees it whole
        raw_w = (z * sig)  # raw units per unit calcium
        m = mask.ravel()
        amp = float(raw_w[m].mean())
        baseline = float(base_img[m].mean())
        sup = np.flatnonzero(z > 0)
        gy, gx = np.divmod(sup, w)
        gpix = (gy + tile.y0) * W + (gx + tile.x0)
        my, mx = np.divmod(np.flatnonzero(m), w)
        gmask = (my + tile.y0) * W + (mx + tile.x0)
        calcium = C[:, i] * amp
        spikes = A[:, i] / op.col_norms * amp
        snr = float(C[:, i].max() * np.linalg.norm(z))
        out.append(Component(pixels=gpix.astype(np.int64), weights=raw_w[sup].astype(np.float32),
                             mask=gmask.astype(np.int64), calcium=calcium.astype(np.float32),
                             spikes=spikes.astype(np.float32), centroid=(cy, cx),
                             score=float(scores[i]), snr=snr, baseline=baseline, tile=tile.index,
                             owned=owned))
    return out


def _whole_in_window(tile: Tile, cy: float, cx: float, margin: float, image_shape) -> bool:
    """Whether a centroid lies ``margin`` inside every window edge that is not the image's edge."""
    H, W = image_shape
    return ((tile.y0 == 0 or cy >= tile.y0 + margin) and (tile.y1 == H or cy < tile.y1 - margin)
            and (tile.x0 == 0 or cx >= tile.x0 + margin) and (tile.x1 == W or cx < tile.x1 - margin))
