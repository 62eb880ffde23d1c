"""How much memory a run needs, and the workers, batch and tile sizes that fit a budget.

:func:`plan_run` is called once, before any pixel is read (``calseg run`` calls it before it
writes a cache, :func:`calseg.pipeline.segment` again to apply it). Without a budget it keeps
the defaults and only lowers the number of worker processes to what the machine's free memory
holds (results never depend on the number of workers). With ``max_memory`` (``--max-memory 4GB``)
it lowers, in this order, until the estimated peak fits:

1. the frames per batch of the streaming passes (motion correction, summary images, decay
   time), from 500 down to 32 — the summary images change very slightly with it, so run.json
   records it;
2. the number of worker processes, down to 1;
3. the tile side, from its default (``calseg.patches.TILE_DIAMETERS`` cell diameters, fitted to
   the field of view) down to the overlap plus one diameter, unless ``tile_size`` was set;

and raises :class:`~calseg.errors.ConfigError` (one line naming the file and what it would
need) when even the smallest configuration does not fit. With a Dask ``scheduler`` the tiles run
on the cluster's workers: the budget then covers this process, and one tile must fit in it too
(the budget is taken as the per-worker budget).

The model (bytes; ``F = H*W`` pixels per frame, ``P`` pixels per tile, ``b`` frames per batch,
``nb`` coarse blocks, ``N`` neurons at most)::

    base      = PROCESS_BYTES                                 # interpreter, numpy, numba kernels
    images    = 200 F + 4 T nb                                # summary images, coarse traces
    motion    = 4 F (2 b_m + 150) + FFT_BYTES                 # only with motion correction
    summary   = 4 F (4 b) + 16 F ceil(T / b)                  # batch copies; per-batch noise
                                                              # images, stacked for their median
    tau       = 8 F min(b, T)                                 # only when the decay is estimated
    lambda    = LAMBDA_COPIES * 4 T P' + LAMBDA_PIXEL_BYTES P'  # noise polar, P' = min(P, 4096)
    tile      = TILE_COPIES * 4 T P + TILE_CHUNK_COPIES * 8 min(T, 512) P + TILE_FIXED  # one tile
    tiles     = tile                       (1 worker, in this process)
              = workers (PROCESS_BYTES + tile + 8 F)          (worker processes)
    waiting   = workers WARM_WORKER_BYTES  (worker processes: started before the summary, they
                                            wait through the summary, tau and lambda stages)
    results   = RESULT_BYTES * T N,  N = NEURON_COVER * F / (pi d^2 / 4)
    peak      = base + images + max(motion, summary + waiting, tau + waiting,
                                    lambda + waiting, tiles + results)

The constants were measured (``tracemalloc`` peaks of each stage, and peak RSS of whole runs:
one 72 x 72 tile of 6,000 frames, estimate 1.15 GB, peak RSS 0.79 GB), with a margin; they
describe the current solver and must follow it (``tests/test_memory.py`` checks each stage).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

#: resident memory of one calseg process before it holds any data (Python, numpy, scipy, numba
#: and the loaded kernels; measured ~250 MB)
PROCESS_BYTES = 300 * 10 ** 6
#: float32 (T, P) arrays a tile holds at its peak (data, D^T P Y, the certificate's W and the
#: polar search's products). Measured with tracemalloc on 32x32 and 48x48 tiles of 300-4,000
#: frames: 4.8-6.1 copies, plus a part that grows up to ~13 KB per pixel and no further (the
#: certificate's float64 blocks of 512 rows of W and their maximisers,
#: ``calseg.certify.polar._ROW_BLOCK``): TILE_CHUNK_COPIES float64 rows of TILE_CHUNK_FRAMES
TILE_COPIES = 6
TILE_CHUNK_COPIES = 4
TILE_CHUNK_FRAMES = 512
TILE_FIXED = 16 * 10 ** 6
#: a worker process waiting for its first tile after its warm-up (``calseg.patches._warm_up``)
WARM_WORKER_BYTES = PROCESS_BYTES + 50 * 10 ** 6
#: the same for the white-noise block λ is measured on (measured 3 copies + ~14 KB per pixel)
LAMBDA_COPIES = 5
LAMBDA_PIXEL_BYTES = 16 * 1024
#: motion estimation's FFT work buffers
FFT_BYTES = 40 * 10 ** 6
#: bytes per neuron per frame of the results (tile factors, component traces, output tables)
RESULT_BYTES = 24
#: the most of the field that somata are assumed to cover (bounds the neuron count)
NEURON_COVER = 0.3
#: candidate frames per batch, largest first; the defaults are the first entries
BATCHES = (500, 400, 300, 200, 150, 100, 64, 32)
DEFAULT_SUMMARY_BATCH = 500
DEFAULT_MOTION_BATCH = 200


@dataclass(frozen=True)
class MemoryPlan:
    """Workers, batch and tile sizes for a run, and its estimated memory (bytes)."""

    budget: int | None
    workers: int
    tile_size: int
    tile_overlap: int
    n_tiles: int
    summary_batch: int
    motion_batch: int
    estimate: dict
    changes: tuple = field(default_factory=tuple)

    @property
    def peak(self) -> int:
        return int(self.estimate["peak"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["changes"] = list(self.changes)
        return d


def format_bytes(n: float) -> str:
    """1234567890 -> '1.2 GB' (decimal units, as --max-memory reads them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} B"  # pragma: no cover


def estimate_peak(shape, *, tile_shape, workers=1, summary_batch=DEFAULT_SUMMARY_BATCH,
                  motion_batch=DEFAULT_MOTION_BATCH, motion=True,
                  estimate_tau=True, diameter=12.0, block=None, remote_tiles=False) -> dict:
    """Estimated peak memory of a run, stage by stage (bytes; see the module docstring).

    Parameters
    ----------
    shape : (T, H, W)
    tile_shape : (h, w)
        Pixels of one tile window.
    workers : int
        Tiles processed at the same time; 1 means in this process.
    summary_batch, motion_batch : int
        Frames per batch of the streaming passes.
    motion, estimate_tau : bool
        Whether those stages run.
    diameter : float
        Cell diameter (px): bounds the neuron count and sets the coarse blocks.
    block : int, optional
        Side of the coarse blocks (default ``max(16, 2 diameter)``, as the pipeline).
    remote_tiles : bool
        Tiles run elsewhere (Dask): this process holds only the results.

    Returns
    -------
    dict
        ``base, images, motion, summary, tau, lambda, tile, tiles, results, peak``.
    """
    T, H, W = (int(n) for n in shape)
    F = H * W
    P = int(tile_shape[0]) * int(tile_shape[1])
    block = block or max(16, int(round(2 * diameter)))
    nb = math.ceil(H / block) * math.ceil(W / block)
    b = min(summary_batch, T)
    out = {"base": PROCESS_BYTES, "images": 200 * F + 4 * T * nb}
    out["motion"] = 4 * F * (2 * min(motion_batch, T) + 150) + FFT_BYTES if motion else 0
    out["summary"] = 4 * F * 4 * b + 16 * F * math.ceil(T / b)    # the next batch is read ahead
    out["tau"] = 8 * F * b if estimate_tau else 0
    Pl = min(P, 4096)
    out["lambda"] = LAMBDA_COPIES * 4 * T * Pl + LAMBDA_PIXEL_BYTES * Pl
    out["tile"] = (TILE_COPIES * 4 * T * P + TILE_CHUNK_COPIES * 8 * min(T, TILE_CHUNK_FRAMES) * P
                   + TILE_FIXED)
    if remote_tiles:
        out["tiles"] = 0
    elif workers <= 1:
        out["tiles"] = out["tile"]
    else:
        out["tiles"] = workers * (PROCESS_BYTES + out["tile"] + 8 * F)
    n_max = math.ceil(NEURON_COVER * F / (math.pi * diameter ** 2 / 4.0))
    out["results"] = RESULT_BYTES * T * n_max
    # a local pool's workers start before the summary (calseg.patches.start_pool) and wait
    out["waiting"] = workers * WARM_WORKER_BYTES if workers > 1 and not remote_tiles else 0
    stages = (out["motion"], out["summary"] + out["waiting"], out["tau"] + out["waiting"],
              out["lambda"] + out["waiting"], out["tiles"] + out["results"])
    out["peak"] = out["base"] + out["images"] + max(stages)
    return {k: int(v) for k, v in out.items()}


def plan_run(shape, *, settings, diameter: float, name: str = "recording", cpu_count=None,
             available=None) -> MemoryPlan:
    """Workers, batch and tile sizes that fit ``settings.max_memory`` (see the module docstring).

    Parameters
    ----------
    shape : (T, H, W)
    settings : Settings
        Reads ``max_memory``, ``workers``, ``scheduler``, ``tile_size``, ``tile_overlap``,
        ``motion_correction`` and the decay settings.
    diameter : float
        Cell diameter in pixels.
    name : str
        The recording, for the error message.
    cpu_count, available : int, optional
        Cores and free memory (bytes) of this machine (default: measured).

    Raises
    ------
    ConfigError
        ``max_memory`` is too small for even the smallest configuration.
    """
    from .config import parse_bytes
    from .errors import ConfigError
    from .patches import default_tile_geometry, fitted_tile_size, plan_tiles

    T, H, W = (int(n) for n in shape)
    size0, overlap0 = default_tile_geometry(diameter, H, W)
    tile_fixed = settings.tile_size is not None
    size0 = settings.tile_size or size0
    overlap = settings.tile_overlap if settings.tile_overlap is not None else overlap0
    if overlap >= size0:
        raise ConfigError(f"setting 'tile_overlap' = {overlap} must be smaller than the tile size ({size0})")
    remote = bool(getattr(settings, "scheduler", None))
    cpus = cpu_count or os.cpu_count() or 1
    flags = dict(motion=settings.motion_correction != "none",
                 estimate_tau=settings.decay()[0] is None, diameter=diameter)
    budget = parse_bytes(settings.max_memory) if settings.max_memory is not None else None

    def geometry(size):
        tiles = plan_tiles(H, W, size, overlap)
        th, tw = min(size, H), min(size, W)
        return len(tiles), (th, tw)

    def estimate(size, workers, batch):
        n, tshape = geometry(size)
        return estimate_peak((T, H, W), tile_shape=tshape, workers=workers, summary_batch=batch,
                             motion_batch=min(batch, DEFAULT_MOTION_BATCH), remote_tiles=remote,
                             **flags)

    def fits(est):
        # with remote tiles one tile must also fit (the budget is the per-worker budget)
        return est["peak"] <= budget and (not remote or PROCESS_BYTES + est["tile"] <= budget)

    def plan(size, workers, batch, changes):
        n, _ = geometry(size)
        return MemoryPlan(budget=budget, workers=workers, tile_size=size, tile_overlap=overlap,
                          n_tiles=n, summary_batch=batch, motion_batch=min(batch, DEFAULT_MOTION_BATCH),
                          estimate=estimate(size, workers, batch), changes=tuple(changes))

    n0, _ = geometry(size0)
    workers0 = 1 if remote else (settings.workers or max(1, min(cpus, n0)))
    batch0 = BATCHES[0]
    if budget is None:
        # no budget: defaults, but no more worker processes than the free memory holds (results
        # do not depend on it); an explicit --workers is obeyed
        changes = []
        workers = workers0
        if settings.workers is None and workers > 1:
            free = available if available is not None else _available_memory()
            while workers > 1 and free and estimate(size0, workers, batch0)["peak"] > 0.9 * free:
                workers -= 1
            if workers < workers0:
                changes.append(f"workers {workers0} -> {workers} (free memory "
                               f"{format_bytes(free)})")
        return plan(size0, workers, batch0, changes)

    # 1. batches, 2. workers, 3. tile size: the first configuration that fits
    min_size = max(overlap + int(math.ceil(diameter)), 24)
    if tile_fixed or size0 <= min_size:
        sizes = [size0]
    else:  # smaller tiles, each fitted to the field of view (as few pixels done twice as may be)
        fitted = (fitted_tile_size(max(H, W), s, overlap) for s in range(size0, min_size, -4))
        sizes = sorted({s for s in fitted if s >= min_size} | {min_size}, reverse=True)
    for size in sizes:
        for workers in range(workers0, 0, -1):
            for batch in BATCHES:
                if fits(estimate(size, workers, batch)):
                    changes = []
                    if batch != batch0:
                        changes.append(f"batches {batch0} -> {batch} frames")
                    if workers != workers0:
                        changes.append(f"workers {workers0} -> {workers}")
                    if size != size0:
                        changes.append(f"tile size {size0} -> {size} px")
                    return plan(size, workers, batch, changes)
    def need(est):
        return max(est["peak"], PROCESS_BYTES + est["tile"]) if remote else est["peak"]

    batch, least = min(((b, estimate(sizes[-1], 1, b)) for b in BATCHES), key=lambda x: need(x[1]))
    how = (f"1 worker, {sizes[-1]}-px tiles{' (--tile-size)' if tile_fixed else ''}, "
           f"{batch}-frame batches")
    raise ConfigError(f"{name}: does not fit in max_memory {settings.max_memory}: {T} frames of "
                      f"{H} x {W} need about {format_bytes(need(least))} even with {how}; "
                      f"raise --max-memory" + (" or lower --tile-size" if tile_fixed else ""))


def _available_memory() -> int | None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None
    return int(psutil.virtual_memory().available)


def plan_for_movie(movie, settings) -> MemoryPlan:
    """:func:`plan_run` for a movie handle: the cell diameter from the settings and the movie's
    pixel size, the first file as the name in messages."""
    settings = settings.validated()
    diameter = settings.diameter_px(settings.pixel_size or getattr(movie, "pixel_size", None))
    paths = getattr(movie, "paths", ())
    return plan_run(movie.shape, settings=settings, diameter=diameter,
                    name=str(paths[0]) if paths else "recording")
