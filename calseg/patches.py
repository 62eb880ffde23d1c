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

import math
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


def default_tile_geometry(diameter: float, height: int, width: int) -> tuple[int, int]:
    """Tile side and overlap from the cell diameter: about 6 diameters wide, 1.5 diameters overlap."""
    overlap = int(math.ceil(1.5 * diameter)) + 2
    size = max(int(round(6 * diameter)), overlap + 16, 32)
    size = min(size, max(height, width))
    if size <= overlap:
        overlap = max(size // 3, 0)
    return size, overlap


def run_tiles(fn, tiles, *, workers: int = 1, scheduler: str | None = None, progress=None):
    """Apply ``fn(tile)`` to every tile and return the results in tile order.

    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one) when
    ``workers > 1`` or a ``scheduler`` is given.
    """
    results = [None] * len(tiles)
    if scheduler:
        try:
            from dask.distributed import Client, as_completed  # optional extra
        except ImportError:  # pragma: no cover - depends on the environment
            from .errors import ConfigError

            raise ConfigError("--scheduler needs the dask extra: pip install 'calseg[dask]'") from None
        with Client(scheduler) as client:
            futures = {client.submit(fn, t, pure=False): t.index for t in tiles}
            for done, fut in enumerate(as_completed(futures), 1):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(done, len(tiles))
        return results
    if workers <= 1 or len(tiles) <= 1:
        for done, t in enumerate(tiles, 1):
            results[t.index] = fn(t)
            if progress:
                progress(done, len(tiles))
        return results
    import concurrent.futures as cf
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(fn, t): t.index for t in tiles}
        for done, fut in enumerate(cf.as_completed(futures), 1):
            results[futures[fut]] = fut.result()
            if progress:
                progress(done, len(tiles))
    return results
