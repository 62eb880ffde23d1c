"""Tiles: plan overlapping tiles over the field of view and run a function on each.

A tile owns the *core* of its window: the part nearer to it than to any neighbour (the overlap
is split down the middle). A component belongs to the tile whose core holds its centroid, so
with an overlap of at least one cell diameter a neuron near a border lies whole inside the
window of the tile that keeps it.

Tiles run serially, in a local process pool (``workers > 1``) or on a Dask cluster (a scheduler
address); a task receives the movie *handle* (paths and options, pickled small) and the tile,
never the pixels, and results do not depend on where a tile ran.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    """One window of the field of view, in global pixel coordinates (half-open ranges)."""

    index: int
    y0: int
    y1: int
    x0: int
    x1: int
    core_y0: int
    core_y1: int
    core_x0: int
    core_x1: int

    @property
    def rows(self) -> slice:
        return slice(self.y0, self.y1)

    @property
    def cols(self) -> slice:
        return slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    def near(self, points, margin: float):
        """(n,) bool: which global (row, col) ``points`` lie in the window grown by ``margin``
        on every side (e.g. seeds up to a cell radius outside it)."""
        import numpy as np

        p = np.asarray(points, dtype=float).reshape(-1, 2)
        return ((p[:, 0] >= self.y0 - margin) & (p[:, 0] < self.y1 + margin)
                & (p[:, 1] >= self.x0 - margin) & (p[:, 1] < self.x1 + margin))

    def owns(self, y: float, x: float) -> bool:
        """Whether the global point (y, x) lies in this tile's core."""
        return self.core_y0 <= y < self.core_y1 and self.core_x0 <= x < self.core_x1


def _starts(n: int, size: int, overlap: int) -> list[int]:
    if size >= n:
        return [0]
    step = size - overlap
    k = math.ceil((n - size) / step) + 1
    # spread the windows evenly so the last one ends exactly at n
    return [round(i * (n - size) / (k - 1)) for i in range(k)]


def plan_tiles(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Overlapping tiles covering an image, with cores that partition it exactly.

    Parameters
    ----------
    height, width : int
        Field of view in pixels.
    tile_size : int
        Side of a (square) tile; tiles at the image edge are never smaller than this unless the
        image itself is.
    overlap : int
        Minimum overlap between neighbouring tiles (pixels); must be < tile_size.
    """
    if overlap >= tile_size:
        raise ValueError(f"tile overlap ({overlap}) must be smaller than the tile size ({tile_size})")
    ys = _starts(height, min(tile_size, height), overlap)
    xs = _starts(width, min(tile_size, width), overlap)
    th, tw = min(tile_size, height), min(tile_size, width)

    def cores(starts, size, n):
        bounds = [0]
        for a, b in zip(starts[:-1], starts[1:]):
            # the middle of the overlap between window a and window b
            bounds.append((b + a + size) // 2)
        bounds.append(n)
        return list(zip(bounds[:-1], bounds[1:]))

    cy, cx = cores(ys, th, height), cores(xs, tw, width)
    tiles = []
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            tiles.append(Tile(len(tiles), y0, y0 + th, x0, x0 + tw, cy[i][0], cy[i][1], cx[j][0], cx[j][1]))
    return tiles


#: default tile side in cell diameters (before fitting it to the field of view): a tile's cost
#: per pixel and frame hardly depends on its size (72 to 128 px tiles of 12-px cells on a
#: 512 x 512 x 3,000 recording: 3.1 to 3.2x the time for 3.2x the pixels), so the share of
#: pixels done twice in the overlaps sets the total: 2.2x the field of view with 6 diameters
#: (72 px), 1.5x with 9 (102 px after fitting), for 1.3x the time per frame
TILE_DIAMETERS = 9


def fitted_tile_size(n: int, size: int, overlap: int) -> int:
    """The smallest side <= ``size`` that covers ``n`` pixels with as many tiles as ``size``
    needs, overlapping by exactly ``overlap``: the tiles then share no more than the overlap
    (a 108-px tile on 512 px needs 6 windows; 102-px ones cover it with overlaps of 20 px
    instead of 26)."""
    if size >= n or size <= overlap:
        return min(size, n)
    k = math.ceil((n - overlap) / (size - overlap))
    return min(size, math.ceil((n + (k - 1) * overlap) / k))


def default_tile_geometry(diameter: float, height: int, width: int) -> tuple[int, int]:
    """Tile side and overlap from the cell diameter: about ``TILE_DIAMETERS`` diameters wide,
    fitted to the field of view (:func:`fitted_tile_size`), 1.5 diameters overlap."""
    overlap = int(math.ceil(1.5 * diameter)) + 2
    size = max(int(round(TILE_DIAMETERS * diameter)), overlap + 16, 32)
    size = min(size, max(height, width))
    if size <= overlap:
        overlap = max(size // 3, 0)
    return fitted_tile_size(max(height, width), size, overlap), overlap


def start_pool(workers: int, *, warm: bool = True):
    """A local pool of ``workers`` spawned processes for :func:`run_tiles` (``pool=``), started
    now: while the main process streams the summary pass, each worker imports calseg and loads
    its cached numba kernels (a small factorization, :func:`_warm_up`), seconds that otherwise
    came before the first tile (``warm=False``: no warm-up). Shut it down with
    ``pool.shutdown()``."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with _thread_env(max(1, (os.cpu_count() or 1) // workers)):   # the workers' environment
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        for _ in range(workers if warm else 0):
            pool.submit(_warm_up)
    return pool


def _warm_up():
    """Load the kernels a tile uses (from numba's cache) with a small seeded factorization of
    a 12 x 100 block (wider than one column chunk, as tiles are); the result is discarded."""
    import warnings

    import numpy as np

    from .factorize import factorize

    rng = np.random.default_rng(0)
    T, h, w = 60, 12, 100
    Y = rng.standard_normal((T, h * w)).astype(np.float32)
    support = np.zeros((h * w, 1), dtype=bool)
    support[:, 0] = (np.arange(h * w) % w) < 20
    Y[:, support[:, 0]] += 4.0 * (rng.random(T) < 0.1)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factorize(Y, (h, w), lam=1.0, tau=0.5, fps=10.0, n_background=2, support=support,
                  init=(np.abs(rng.standard_normal((T, 1))), 0.1 * support), max_iter=3,
                  certify=True, grow_rank=True, max_grow=1, grow_reach=4.0)


def run_tiles(fn, tiles, *, workers: int = 1, scheduler: str | None = None, progress=None,
              cost=None, pool=None):
    """Apply ``fn(tile)`` to every tile and return the results in tile order.

    Parameters
    ----------
    fn : callable(Tile) -> object
        Must be picklable (a module-level function or a ``functools.partial`` of one) when
        ``workers > 1`` or a ``scheduler`` is given. It should carry a movie *handle* (paths and
        layout), never pixels: it is sent once to every process.
    tiles : list of Tile
    workers : int
        Local processes (``spawn``); 1 runs the tiles here, one after another.
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler (``tcp://host:8786``); the tiles
        then run on its workers and ``workers`` is ignored. Needs the ``dask`` extra.
    progress : callable(done, total), optional
    cost : sequence of float, optional
        Expected work of each tile (e.g. its number of seeds): in a process pool the costliest
        tiles start first, so that no long tile is left to run alone at the end (results
        stay in tile order and do not depend on it). Dask gets them as task priorities.
    pool : concurrent.futures.ProcessPoolExecutor, optional
        A pool from :func:`start_pool` to run the tiles in (``workers`` is then its size);
        the caller shuts it down.

    Notes
    -----
    On a Dask cluster ``fn`` is scattered to every worker once and each task receives only the
    tile (a few integers); the worker reads the tile's pixels from the files itself, so the
    files must be readable at the same paths on the workers. A worker that dies (e.g. killed for
    exceeding its memory limit) fails the run with a one-line error.
    """
    results = [None] * len(tiles)
    queue = submission_order(tiles, cost)
    if scheduler:
        from .errors import CalsegError

        distributed = _import_distributed()
        client = connect_scheduler(scheduler)
        try:
            [remote_fn] = client.scatter([fn], broadcast=True, hash=False)
            prio = {t.index: len(queue) - k for k, t in enumerate(queue)}
            futures = {client.submit(_call, remote_fn, t, pure=False, priority=prio[t.index]): t.index
                       for t in queue}
            for done, fut in enumerate(distributed.as_completed(futures, loop=client.loop), 1):
                try:
                    results[futures[fut]] = fut.result()
                except distributed.KilledWorker as exc:
                    raise CalsegError(f"a Dask worker died running tile {futures[fut]} ({exc}); "
                                      "give the workers more memory or use smaller tiles "
                                      "(--tile-size)") from None
                if progress:
                    progress(done, len(tiles))
        finally:
            client.close()
        return results
    if pool is None and (workers <= 1 or len(tiles) <= 1):
        for done, t in enumerate(tiles, 1):
            results[t.index] = fn(t)
            if progress:
                progress(done, len(tiles))
        return results
    import concurrent.futures as cf

    own = pool is None
    if own:
        pool = start_pool(workers, warm=False)
    try:
        futures = {pool.submit(fn, t): t.index for t in queue}
        for done, fut in enumerate(cf.as_completed(futures), 1):
            results[futures[fut]] = fut.result()
            if progress:
                progress(done, len(tiles))
    finally:
        if own:
            pool.shutdown(cancel_futures=True)
    return results


def submission_order(tiles, cost=None) -> list:
    """``tiles`` costliest first (a stable sort: equal costs keep the tile order)."""
    if cost is None:
        return list(tiles)
    return [tiles[i] for i in sorted(range(len(tiles)), key=lambda i: -cost[i])]


_THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _thread_env(n: int):
    """Spawned workers inherit ``n`` threads each for numba and BLAS (set in the environment
    they start with), so that workers x threads does not oversubscribe the cores."""
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: str(n) for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _call(fn, tile):
    return fn(tile)


def _import_distributed():
    try:
        import distributed  # optional extra: imported only when a scheduler is used
    except ImportError:  # pragma: no cover - depends on the environment
        from .errors import ConfigError

        raise ConfigError("--scheduler needs the dask extra: pip install 'calseg[dask]'") from None
    return distributed


def connect_scheduler(address: str, *, timeout: float = 20.0):
    """A ``distributed.Client`` connected to the scheduler at ``address``.

    Raises
    ------
    ConfigError
        dask is not installed, or no scheduler answers at ``address`` within ``timeout`` s.
    """
    from .errors import ConfigError

    distributed = _import_distributed()
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address!r} "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None


def scheduler_workers(address: str) -> int:
    """Number of workers of the scheduler at ``address`` (connects, counts, disconnects)."""
    client = connect_scheduler(address)
    try:
        return len(client.scheduler_info().get("workers", {}))
    finally:
        client.close()
