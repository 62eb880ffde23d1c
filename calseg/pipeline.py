"""The whole job: a recording in, neurons with traces, spikes and a certificate out.

``segment(movie, settings)`` runs, timing each stage:

1. *summary* — one streaming pass: mean, per-pixel noise, local correlation and peak images,
   coarse block traces (:mod:`calseg.summary`);
2. *kinetics* — the decay time from ``--tau``/``--indicator`` or estimated from the data;
   neuropil time courses from the coarse traces; seeds from the summary images;
3. *tiles* — overlapping tiles sized from the cell diameter, each factorized with its
   certificate (:mod:`calseg.tile`), serially, in processes or on a Dask cluster;
4. *merge* — duplicates across tile overlaps removed (:mod:`calseg.merge`);
5. *outputs* — masks, footprints, ΔF/F traces, spikes, tables (``write_result``).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .config import Settings
from .errors import ConfigError, InputError

log = logging.getLogger("calseg")

#: rise time / decay time assumed when the decay is estimated from the data
RISE_FRACTION = 0.06
#: decay time (s) assumed for binning the peak image when it is not given (GCaMP6-like)
PEAK_TAU_GUESS_S = 1.0

@dataclass
class Result:
    """Everything a run produces, in memory.

    Attributes
    ----------
    neurons : list of dict
        One row per neuron: id, centroid_y, centroid_x, area, peak_dff, snr, score.
    masks : ndarray of shape (H, W), uint16
        Label image, 0 = background, label = neuron id.
    components : list of Component
        Sparse footprints, masks, calcium and spikes, in id order.
    traces : ndarray of shape (T, N), float32
        ΔF/F of each neuron.
    spikes : ndarray of shape (T, N), float32
        Inferred spike trains (calcium increments per frame, in ΔF/F units).
    certificate : dict
        Overall certificate and one per tile.
    info : dict
        Resolved settings, timings, memory, input fingerprint.
    """

    neurons: list
    masks: np.ndarray
    components: list
    traces: np.ndarray
    spikes: np.ndarray
    certificate: dict
    info: dict
    shape: tuple
    fps: float
    settings: Settings = field(default_factory=Settings)
    images: dict = field(default_factory=dict)
    tile_results: list = field(default_factory=list)
    context: object = None
    motion: object = None

    @property
    def n_neurons(self) -> int:
        return len(self.neurons)


def _peak_rss_bytes() -> int:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return int(max(self_kb, child_kb) * scale)


def fingerprint(paths) -> dict:
    """Cheap, stable identity of input files: names, sizes, mtimes and a hash of head and tail."""
    h = hashlib.sha256()
    files = []
    for p in paths:
        p = Path(p)
        st = p.stat()
        files.append({"path": str(p.resolve()), "bytes": st.st_size, "mtime": st.st_mtime})
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 20))
            if st.st_size > (2 << 20):
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
        h.update(str(st.st_size).encode())
    return {"sha256_head_tail": h.hexdigest(), "files": files}


def segment(movie, settings: Settings | None = None, *, progress=None) -> Result:
    """Find the neurons of a recording.

    Parameters
    ----------
    movie : Movie or ndarray of shape (T, H, W)
        A :func:`calseg.read_movie` handle (read lazily, tile by tile) or an array.
    settings : Settings, optional
        Defaults need only ``fps`` (when the movie's metadata lacks it) and ``cell_diameter``.
    progress : callable(stage, done, total), optional

    Returns
    -------
    Result
    """
    from ._alloc import keep_freed_memory, release_free_memory
    from .memory import format_bytes
    from .merge import merge_components
    from .patches import plan_tiles, run_tiles
    from .seeds import find_seeds
    from .summary import estimate_tau, neuropil_atoms, summarize
    from .tile import TileContext, process_tile

    settings = (settings or Settings()).validated()
    keep_freed_memory()
    if isinstance(movie, np.ndarray):
        from .motion.array_movie import ArrayMovie

        movie = ArrayMovie(movie, fps=settings.fps)
    T, H, W = movie.shape
    fps = settings.fps or getattr(movie, "fps", None)
    if not fps:
        raise ConfigError("the frame rate is unknown: pass --fps (the recording's metadata has none)")
    fps = float(fps)
    diameter = settings.diameter_px(settings.pixel_size or getattr(movie, "pixel_size", None))
    if T < 10:
        raise InputError(f"{_name(movie)}: only {T} frames; calseg needs at least 10")
    from .memory import plan_run

    # workers, batch and tile sizes within --max-memory (refused here, before any work)
    plan = plan_run((T, H, W), settings=settings, diameter=diameter, name=_name(movie))
    if settings.scheduler:
        _check_scheduler(movie, settings.scheduler)
    timings: dict[str, float] = {}
    report = progress or (lambda stage, done, total: None)

    motion = None
    if settings.motion_correction != "none":
        from .motion import CorrectedMovie, estimate_motion

        t0 = time.perf_counter()
        motion = estimate_motion(movie, mode=settings.motion_correction, seed=settings.seed,
                                 batch_size=plan.motion_batch, progress=lambda d, n: report("motion", d, n))
        movie = CorrectedMovie(movie, motion)
        timings["motion"] = time.perf_counter() - t0
        log.info("motion (%s): largest shift %.2f px", settings.motion_correction,
                 float(np.abs(motion.shifts).max()) if len(motion.shifts) else 0.0)

    # the tile workers start now: they import calseg and load their kernels during the summary
    pool = None
    if plan.workers > 1 and not settings.scheduler:
        from .patches import start_pool

        pool = start_pool(plan.workers)
    try:
        t0 = time.perf_counter()
        tau_guess = settings.decay()[0] or PEAK_TAU_GUESS_S
        summ = summarize(movie, block=max(16, int(round(2 * diameter))), batch_size=plan.summary_batch,
                         bin_frames=max(1, int(round(0.5 * tau_guess * fps))), peak_sigma=diameter / 4.0,
                         progress=lambda d, n: report("summary", d, n))
        timings["summary"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        tau, rise = settings.decay()
        tau_source = "settings" if tau is not None else "estimated"
        seeds = find_seeds(summ.correlation, summ.peak, diameter)
        if tau is None:
            tau = estimate_tau(movie, fps, summary=summ, seeds=seeds, batch_size=plan.summary_batch)
            if rise is None:
                # the data rarely pin the rise down; GCaMP-family indicators rise in ~6% of their
                # decay time (it is dropped below a third of a frame)
                rise = RISE_FRACTION * tau
        if rise is not None and abs(rise - tau) < 1e-3 * tau:
            rise = None
        if rise is not None and rise * fps < 0.3:  # a rise much shorter than a frame is invisible
            rise = None
        if T < 2 * tau * fps:
            log.warning("the recording (%d frames) is shorter than two decay times (%.1f frames)", T, tau * fps)
        neuropil = neuropil_atoms(summ, settings.n_neuropil)
        timings["kinetics_seeds"] = time.perf_counter() - t0

        tile_size, overlap = plan.tile_size, plan.tile_overlap
        tiles = plan_tiles(H, W, tile_size, overlap)

        t0 = time.perf_counter()
        from .lam import DEFAULT_FACTOR, noise_polar, trace_null
        from .model.temporal import DecayOperator
        from .prox.composite import CompositeNorm
        from .tile import background_dictionary

        op = DecayOperator.from_tau(T, tau, fps, rise=rise)
        F = background_dictionary(T, settings.n_background, neuropil)
        rho_noise = noise_polar(T, tiles[0].shape, op, F, CompositeNorm(*settings.temporal),
                                CompositeNorm(*settings.spatial, image_shape=tiles[0].shape,
                                              connectivity=settings.connectivity), seed=settings.seed)
        lam = float(settings.lam) if settings.lam is not None else settings.lam_scale * DEFAULT_FACTOR * rho_noise
        q_trace = trace_null(T, op, F, CompositeNorm(*settings.temporal, nonnegative=True), seed=settings.seed)
        timings["lambda"] = time.perf_counter() - t0
        area = np.pi * diameter ** 2 / 4.0
        ctx = TileContext(
            noise=summ.noise, mean=summ.mean, seeds=seeds, neuropil=neuropil, diameter=diameter,
            fps=fps, tau=tau, rise=rise, lam=lam, spatial=tuple(settings.spatial),
            temporal=tuple(settings.temporal), n_background=settings.n_background,
            connectivity=settings.connectivity, max_iter=settings.max_iter, tol=settings.tol,
            certify=settings.certify, grow_rank=settings.grow_rank, max_grow=settings.max_grow,
            certificate_tol=settings.certificate_tol, mask_threshold=settings.mask_threshold,
            min_area=settings.min_area_fraction * area, max_area=settings.max_area_fraction * area,
            seed=settings.seed, rho_noise=rho_noise, trace_null=q_trace)
        workers = plan.workers
        where = f"on the Dask cluster at {settings.scheduler}" if settings.scheduler else f"{workers} worker(s)"
        log.info("%d x %d x %d frames at %.3g Hz; cell diameter %.1f px; tau %.3g s (%s); lambda %.3g; "
                 "%d tiles of %d px (overlap %d); %d seeds; %s; estimated peak memory %s", T, H, W, fps,
                 diameter, tau, tau_source, lam, len(tiles), tile_size, overlap, len(seeds), where,
                 format_bytes(plan.peak))
        if plan.changes:
            log.info("to fit max_memory %s: %s", settings.max_memory or "(free memory)", "; ".join(plan.changes))
        release_free_memory()       # the summary's batches: not held while the workers run
        t0 = time.perf_counter()
        fn = functools.partial(process_tile, movie=movie, ctx=ctx)
        # tiles with more seeds take longer (more columns): started first, they do not finish last
        # (the seeds a tile starts from: those up to a cell radius outside its window)
        cost = [int(np.count_nonzero(t.near(seeds, 0.5 * diameter))) for t in tiles]
        tile_results = run_tiles(fn, tiles, workers=workers, scheduler=settings.scheduler,
                                 progress=lambda d, n: report("tiles", d, n), cost=cost,
                                 pool=pool)
        timings["tiles"] = time.perf_counter() - t0
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    t0 = time.perf_counter()
    comps = [c for r in tile_results for c in r.components]
    comps = merge_components(comps, diameter)
    comps.sort(key=lambda c: -c.score)
    timings["merge"] = time.perf_counter() - t0

    neurons, masks, traces, spikes = _tables(comps, (H, W), T)
    certificate = _overall_certificate(tile_results, settings.certificate_tol)
    info = {
        "calseg_version": __version__,
        "settings": settings.to_dict(),
        "resolved": {"fps": fps, "cell_diameter_px": diameter, "tau_s": tau, "tau_source": tau_source,
                     "rise_s": rise, "lam": lam, "noise_polar": rho_noise, "trace_null": q_trace, "tile_size": tile_size, "tile_overlap": overlap,
                     "n_tiles": len(tiles), "n_seeds": int(len(seeds)),
                     "n_neuropil_atoms": int(neuropil.shape[1]), "workers": workers,
                     "scheduler": settings.scheduler, "memory": plan.to_dict()},
        "shape": [T, H, W],
        "timings_s": timings,
        "tiles": [r.info for r in tile_results],
        "peak_rss_bytes": _peak_rss_bytes(),
    }
    return Result(neurons=neurons, masks=masks, components=comps, traces=traces, spikes=spikes,
                  certificate=certificate, info=info, shape=(T, H, W), fps=fps, settings=settings,
                  images={"mean": summ.mean, "correlation": summ.correlation, "noise": summ.noise,
                          "peak": summ.peak},
                  tile_results=tile_results, context=ctx, motion=motion)


def _check_scheduler(movie, address: str) -> None:
    """Refuse an in-memory movie (every task would carry its pixels) and an unreachable scheduler."""
    from .patches import scheduler_workers

    base = movie
    while hasattr(base, "estimate") and hasattr(base, "movie"):  # a motion-corrected view
        base = base.movie
    if not getattr(base, "paths", ()):
        raise ConfigError("a Dask scheduler needs a recording read from files (calseg.read_movie): "
                          "its tasks get the file paths and a tile, never the pixels")
    n = scheduler_workers(address)
    log.info("Dask scheduler %s: %d worker(s)", address, n)
    if n == 0:
        log.warning("the Dask scheduler at %s has no workers yet; the tiles wait for some", address)


def _name(movie) -> str:
    paths = getattr(movie, "paths", None)
    return str(paths[0]) if paths else "recording"


def _tables(comps, shape, T):
    H, W = shape
    masks = np.zeros(H * W, dtype=np.uint16)
    best = np.zeros(H * W, dtype=np.float32)
    neurons = []
    traces = np.zeros((T, len(comps)), dtype=np.float32)
    spikes = np.zeros((T, len(comps)), dtype=np.float32)
    for k, c in enumerate(comps):
        nid = k + 1
        # a pixel claimed by two masks goes to the neuron with the larger footprint there
        wmap = dict(zip(c.pixels.tolist(), c.weights.tolist()))
        wm = np.array([wmap.get(p, 0.0) for p in c.mask.tolist()], dtype=np.float32)
        take = wm > best[c.mask]
        masks[c.mask[take]] = nid
        best[c.mask[take]] = wm[take]
        base = c.baseline if c.baseline > 0 else np.nan
        traces[:, k] = c.calcium / base if np.isfinite(base) else c.calcium
        spikes[:, k] = c.spikes / base if np.isfinite(base) else c.spikes
        neurons.append({"id": nid, "centroid_y": round(c.centroid[0], 2), "centroid_x": round(c.centroid[1], 2),
                        "area": int(len(c.mask)), "peak_dff": float(np.max(traces[:, k])) if T else 0.0,
                        "snr": round(c.snr, 3), "score": float(c.score), "tile": c.tile})
    return neurons, masks.reshape(H, W), traces, spikes


def _overall_certificate(tile_results, tol) -> dict:
    certs = [r.certificate for r in tile_results if r.certificate is not None]
    per_tile = [{"tile": r.tile.index, **(r.certificate or {"status": "not computed"})} for r in tile_results]
    if not certs:
        return {"status": "not computed", "tiles": per_tile}
    obj = float(sum(c["objective"] for c in certs))
    gap = float(sum(c["gap"] for c in certs))
    status = "certified" if all(c["status"] == "certified" for c in certs) and len(certs) == len(tile_results) \
        else "bounded"
    lam = certs[0]["lam"]
    return {
        "status": status,
        "objective": obj,
        "gap": gap,
        "relative_gap": gap / obj if obj > 0 else 0.0,
        "tol": tol,
        "lam": lam,
        "max_rho_low_over_lam": max(c["rho_low"] / c["lam"] for c in certs),
        "max_rho_up_over_lam": max(c["rho_up"] / c["lam"] for c in certs),
        "n_tiles": len(tile_results),
        "n_certified": sum(c["status"] == "certified" for c in certs),
        "note": "the overall problem is the sum of the tiles' convex problems; its gap is the sum of theirs",
        "tiles": per_tile,
    }


def _write_footprints(path: Path, components, shape) -> None:
    """One float32 page per neuron (page k = id k+1) as one series, written page by page.

    A result without neurons gets a single all-zero page whose metadata says ``neurons: 0``.
    """
    import tifffile

    H, W = shape

    def pages():
        for c in components:
            page = np.zeros(H * W, np.float32)
            page[c.pixels] = c.weights
            yield page.reshape(H, W)

    n = len(components)
    with tifffile.TiffWriter(path) as tw:
        if n == 0:
            tw.write(np.zeros((H, W), np.float32), metadata={"neurons": 0})
        else:
            tw.write(pages(), shape=(n, H, W), dtype=np.float32, compression="zlib",
                     photometric="minisblack",
                     metadata={"neurons": n})


def save_factors(path: Path, result: Result) -> None:
    """Everything ``calseg certify`` needs besides the movie: each tile's factors and model."""
    import json

    ctx = result.context
    arrays = {"noise": ctx.noise, "neuropil": ctx.neuropil.astype(np.float32)}
    tiles = []
    for r in result.tile_results:
        t = r.tile
        tiles.append([t.index, t.y0, t.y1, t.x0, t.x1, t.core_y0, t.core_y1, t.core_x0, t.core_x1])
        arrays[f"A_{t.index}"] = r.A if r.A is not None else np.zeros((result.shape[0], 0), np.float32)
        arrays[f"Z_{t.index}"] = r.Z if r.Z is not None else np.zeros((t.shape[0] * t.shape[1], 0), np.float32)
    model = {k: getattr(ctx, k) for k in ("fps", "tau", "rise", "lam", "spatial", "temporal", "n_background",
                                          "connectivity", "certificate_tol", "diameter")}
    arrays["tiles"] = np.array(tiles, dtype=np.int64).reshape(-1, 9)
    arrays["model_json"] = np.array(json.dumps(model))
    np.savez_compressed(path, **arrays)


OUTPUT_FILES = ("masks.tif", "footprints.tif", "regions.json", "neurons.csv", "traces.csv",
                "spikes.csv", "certificate.json", "run.json", "mean.tif", "correlation.tif")
NEURON_COLUMNS = ["id", "centroid_y", "centroid_x", "area", "peak_dff", "snr", "score"]


def write_result(result: Result, out, *, force: bool = False, extra_info: dict | None = None,
                 exports=(), report: bool = True) -> Path:
    """Write every output file of ``result`` into the folder ``out``, atomically.

    After the core files are in place, ``rois.zip``, the requested ``exports`` ("suite2p",
    "nwb") and, unless ``report=False``, ``summary.png`` + ``report.html`` are added.
    """
    import tifffile

    from .io.outputs import ResultFolder, write_frame_table, write_json, write_table
    from .regions import regions_from_coordinates, write_regions_json

    H, W = result.masks.shape
    names = [str(n["id"]) for n in result.neurons]
    with ResultFolder(out, force=force) as tmp:
        tifffile.imwrite(tmp / "masks.tif", result.masks)
        _write_footprints(tmp / "footprints.tif", result.components, (H, W))
        # regions.json keeps each neuron's whole mask (Neurofinder regions may overlap);
        # masks.tif gives a shared pixel to the neuron with the larger footprint there
        coords = [np.column_stack(np.divmod(np.sort(c.mask), W)) for c in result.components]
        regions = regions_from_coordinates(coords, ids=[n["id"] for n in result.neurons])
        write_regions_json(tmp / "regions.json", regions)
        write_table(tmp / "neurons.csv", result.neurons, NEURON_COLUMNS + ["tile"])
        write_frame_table(tmp / "traces.csv", result.traces, names, result.fps)
        write_frame_table(tmp / "spikes.csv", result.spikes, names, result.fps)
        write_json(tmp / "certificate.json", result.certificate)
        for name in ("mean", "correlation"):
            if name in result.images:
                tifffile.imwrite(tmp / f"{name}.tif", np.asarray(result.images[name], np.float32))
        if result.context is not None:
            save_factors(tmp / "factors.npz", result)
        if result.motion is not None:
            result.motion.to_csv(tmp / "motion.csv")
        info = dict(result.info)
        if extra_info:
            info.update(extra_info)
        info["n_neurons"] = result.n_neurons
        info["peak_rss_bytes"] = _peak_rss_bytes()
        write_json(tmp / "run.json", info)
    from .export import write_extras

    write_extras(out, exports, report=report)
    return Path(out)
