"""A one-time raw copy of a recording whose layout makes tile reads slow.

Tiles read all frames of a small window. From an uncompressed TIFF that costs only the window's
rows; from compressed (or tiled) pages every tile must decode every whole frame, and from a
folder of thousands of single-frame files every tile must reopen every file. For those layouts,
when the run has several tiles, :func:`tile_cache` streams the recording once into
``OUT.cache/movie.npy`` (a plain ``.npy`` of the stored values, read without memory mapping by
:class:`~calseg.io.tiff.Movie`), beside the output folder ``OUT``, and removes it when the run
ends unless asked to keep it. A kept cache is reused by a later run on the same input
(``OUT.cache/source.json`` records the input's fingerprint, channel and plane).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import OutputError
from .tiff import MAX_OPEN_FILES, Movie, _Source

log = logging.getLogger("calseg")

#: bytes per batch of the streaming copy
COPY_BATCH_BYTES = 64 * 2 ** 20


def cache_folder(out) -> Path:
    """Where the cache of the run writing ``out`` lives: the sibling folder ``OUT.cache``."""
    out = Path(out)
    return out.with_name(out.name + ".cache")


def slow_tile_reads(movie, n_tiles: int) -> str | None:
    """Why reading ``movie`` tile by tile would be slow (None when it would not, or one tile)."""
    sources = getattr(movie, "_sources", None)
    if n_tiles <= 1 or not sources:
        return None
    if any(s.mode == "pages" for s in sources):
        return "its frames are stored compressed or in tiles, so every tile would decode every frame"
    if len(sources) > MAX_OPEN_FILES:
        return f"it is {len(sources)} files, so every tile would reopen every file"
    return None


@contextlib.contextmanager
def tile_cache(movie, out, *, n_tiles: int, keep: bool = False, progress=None):
    """Yield the movie the run should read: ``movie`` itself, or a raw cache of it.

    Parameters
    ----------
    movie : Movie
    out : path
        The run's output folder; the cache is its sibling ``OUT.cache``.
    n_tiles : int
        Tiles of the run (one tile reads the recording once anyway: no cache).
    keep : bool
        Leave the cache in place (a later run on the same input reuses it).
    progress : callable(done_frames, total_frames), optional

    Raises
    ------
    OutputError
        The cache cannot be written (no room on the disk, folder not writable).
    """
    reason = slow_tile_reads(movie, n_tiles)
    if reason is None:
        yield movie
        return
    folder = cache_folder(out)
    cached = None
    try:
        cached = _reuse(movie, folder)
        if cached is None:
            log.info("writing a raw cache %s (%s; %s)", folder, reason, _fmt(movie.nbytes))
            cached = write_raw_cache(movie, folder, progress=progress)
        yield cached
    finally:
        if cached is not None:
            cached.close()
        if keep and cached is not None:
            log.info("raw cache kept: %s", folder)
        else:  # not asked for, or never completed
            shutil.rmtree(folder, ignore_errors=True)


def write_raw_cache(movie, folder, *, progress=None) -> Movie:
    """Stream ``movie`` into ``folder/movie.npy`` (stored values, exact) and open it as a Movie.

    Memory is one batch of frames (``COPY_BATCH_BYTES``). The file is written under a
    temporary name and renamed when complete.
    """
    folder = Path(folder)
    T, H, W = movie.shape
    dtype = np.dtype(movie.dtype)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write the raw cache ({exc.strerror or exc})") from None
    if free < movie.nbytes + (64 << 20):
        raise OutputError(f"{folder}: no room for the raw cache of {movie.paths[0]}: it needs "
                          f"{_fmt(movie.nbytes)}, the disk has {_fmt(free)} free")
    path = folder / "movie.npy"
    tmp = folder / ".movie.npy.partial"
    batch = max(1, COPY_BATCH_BYTES // max(1, H * W * dtype.itemsize))
    try:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_2_0(
                fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                     "shape": (T, H, W)})
            for start, frames in movie.iter_batches(batch):
                np.ascontiguousarray(frames, dtype=dtype).tofile(fh)
                if progress is not None:
                    progress(start + len(frames), T)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"{path}: cannot write the raw cache ({exc.strerror or exc})") from None
    (folder / "source.json").write_text(json.dumps(_identity(movie), indent=1))
    return open_raw_cache(path, like=movie)


def open_raw_cache(path, *, like) -> Movie:
    """The ``.npy`` at ``path`` as a :class:`Movie` with ``like``'s metadata (fps, pixel size)."""
    path = Path(path)
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if fortran or len(shape) != 3:
        raise ValueError(f"{path}: not a (T, H, W) C-ordered array")
    T, H, W = shape
    st = path.stat()
    source = _Source(path=str(path), n_frames=T, height=H, width=W, dtype=dtype.newbyteorder("=").str,
                     file_dtype=dtype.str, mode="memmap", offset=offset, n_pages=T,
                     file_size=st.st_size, mtime_ns=st.st_mtime_ns)
    return Movie([source], kind=f"raw cache of {like.kind}", fps=like.fps, pixel_size=like.pixel_size,
                 metadata_source=like.metadata_source, options=like.options, notes=like.notes)


def _identity(movie) -> dict:
    from ..pipeline import fingerprint

    return {"input": fingerprint(movie.paths)["sha256_head_tail"],
            "paths": [str(p) for p in movie.paths], "options": movie.options,
            "shape": list(movie.shape), "dtype": str(movie.dtype)}


def _reuse(movie, folder: Path) -> Movie | None:
    """The cache in ``folder`` if it was made from this input with these options, else None."""
    path, meta = folder / "movie.npy", folder / "source.json"
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        same = json.loads(meta.read_text()) == json.loads(json.dumps(_identity(movie)))
        cached = open_raw_cache(path, like=movie) if same else None
    except (OSError, ValueError):
        return None
    if cached is None or cached.shape != movie.shape or cached.dtype != movie.dtype:
        return None
    log.info("reusing the raw cache %s", folder)
    return cached


def _fmt(n: float) -> str:
    from ..memory import format_bytes

    return format_bytes(n)
