"""Lazy reading of calcium-imaging recordings stored as TIFF.

:func:`read_movie` opens one TIFF (multi-page, BigTIFF, ImageJ hyperstack including the > 4 GB
"virtual" layout, OME-TIFF, ScanImage), a folder of single-frame TIFFs (Neurofinder layout), or a
list / glob of files, and returns a :class:`Movie`: a handle of shape ``(T, H, W)`` that holds no
pixel data. Frames are read on demand: uncompressed data by positional reads of just the
rows a request needs (no memory map, so reading a long recording tile by tile never makes the
file resident in the process), compressed data page by page through tifffile. Stored values are returned
exactly (no rescaling, no halving of uint16 into int16).

The memory a run needs is modelled in :mod:`calseg.memory`.
"""
from __future__ import annotations

import contextlib
import glob as _glob
import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError

log = logging.getLogger("calseg.io")

__all__ = ["Movie", "read_movie", "value_range",
           "scanimage_frame_metadata", "natural_sort_key"]

TIFF_SUFFIXES = (".tif", ".tiff")
#: largest plausible single frame (pixels); a header claiming more is treated as corrupt
MAX_FRAME_PIXELS = 2 ** 28
#: float movies up to this many bytes are checked for NaN/inf when opened
CHECK_FINITE_AT_OPEN_BYTES = 64 * 2 ** 20
#: at most this many files are kept open at once by one Movie
MAX_OPEN_FILES = 16
_GLOB_CHARS = re.compile(r"[*?\[]")
#: tifffile log messages that mean frames are missing (tifffile logs them and carries on)
_FATAL_TIFFFILE_LOG = re.compile(r"invalid page offset|truncat", re.I)
_UNIT_TO_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometers": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0,
    "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometers": 1.0, "\\u00b5m": 1.0,
    "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
    "inch": 25400.0, "in": 25400.0,
}
_TIME_TO_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
              "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}


def natural_sort_key(path) -> list:
    """Sort key putting ``image2`` before ``image10`` (digit runs compare as integers)."""
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts]


# --------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """How the frames of one file map to stored pages (plain data: pickles without handles).

    ``pages`` maps frame ``t`` of this file to a page index: ``base + t * step`` when ``index``
    is None, else ``index[t]``. In ``memmap`` mode (the layout a memory map could address) page
    ``i`` is the ``(H, W)`` block at byte ``offset + i * H * W * itemsize``; in ``offsets`` mode
    (uncompressed pages separated by IFDs) it is the block at byte ``offsets[i]``; both are read
    with positional reads of the rows asked for; in
    ``pages`` mode it indexes the pages of tifffile series ``series`` (or the file's page list
    when ``series`` is None) and tifffile decodes them.
    """

    path: str
    n_frames: int
    height: int
    width: int
    dtype: str            # native dtype str of the values
    file_dtype: str       # dtype str with the file's byte order
    mode: str             # "memmap" or "pages"
    base: int = 0
    step: int = 1
    index: np.ndarray | None = None
    offset: int = 0
    n_pages: int = 0
    series: int | None = 0
    file_size: int = 0
    mtime_ns: int = 0
    offsets: np.ndarray | None = None  # per-page data offsets ("offsets" mode)

    def page_indices(self, t0: int, t1: int):
        """Page indices of local frames ``t0:t1`` as a slice (arithmetic) or an int array."""
        if self.index is None:
            return slice(self.base + t0 * self.step, self.base + (t1 - 1) * self.step + 1,
                         self.step)
        return self.index[t0:t1]


@dataclass
class _FileInfo:
    source: _Source
    kind: str
    fps: float | None = None
    fps_source: str | None = None
    pixel_size: float | None = None
    pixel_size_source: str | None = None
    notes: list = field(default_factory=list)


class _TiffLogCapture(logging.Handler):
    """Hands each tifffile record to the collectors open in the thread that logged it."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.local = threading.local()

    def emit(self, record):
        for records in getattr(self.local, "open", ()):
            records.append(record)


_CAPTURE_LOCK = threading.Lock()
_CAPTURE = {"depth": 0, "propagate": True, "handler": _TiffLogCapture()}


@contextlib.contextmanager
def _quiet_tifffile():
    """Collect tifffile's log records instead of letting them reach the user's stderr.

    Thread-safe and re-entrant: the handler is installed once while any block is open, and
    each block sees only the records logged by its own thread.
    """
    logger = logging.getLogger("tifffile")
    handler = _CAPTURE["handler"]
    with _CAPTURE_LOCK:
        if _CAPTURE["depth"] == 0:
            _CAPTURE["propagate"] = logger.propagate
            logger.addHandler(handler)
            logger.propagate = False
        _CAPTURE["depth"] += 1
    records: list = []
    if not hasattr(handler.local, "open"):
        handler.local.open = []
    handler.local.open.append(records)
    try:
        yield records
    finally:
        stack = handler.local.open
        del stack[max(k for k, r in enumerate(stack) if r is records)]  # by identity
        with _CAPTURE_LOCK:
            _CAPTURE["depth"] -= 1
            if _CAPTURE["depth"] == 0:
                logger.removeHandler(handler)
                logger.propagate = _CAPTURE["propagate"]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------- metadata


def _to_float(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _imagej_metadata(tf, page) -> tuple[float | None, float | None]:
    """(fps, pixel size in µm) from ImageJ metadata (``finterval``/``fps``, resolution + unit)."""
    meta = tf.imagej_metadata or {}
    fps = None
    finterval = _to_float(meta.get("finterval"))
    if finterval is not None:
        fps = 1.0 / finterval
    elif _to_float(meta.get("fps")) is not None:
        fps = _to_float(meta.get("fps"))
    pixel = None
    unit = str(meta.get("unit", "")).strip().lower()
    scale = _UNIT_TO_UM.get(unit)
    if scale is not None:
        try:
            num, den = page.tags["XResolution"].value
            ppu = num / den if den else 0.0
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            ppu = 0.0
        if ppu > 0 and math.isfinite(ppu):
            pixel = scale / ppu
    return fps, pixel


def _ome_metadata(xml: str | None, image: int = 0) -> tuple[float | None, float | None]:
    """(fps, pixel size in µm) from OME-XML ``Pixels`` attributes of image ``image``."""
    if not xml:
        return None, None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    images = [el for el in root if el.tag.endswith("}Image") or el.tag == "Image"]
    if len(images) <= image:
        return None, None
    pixels = next((el for el in images[image] if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None, None
    pixel = None
    size = _to_float(pixels.get("PhysicalSizeX"))
    if size is not None:
        scale = _UNIT_TO_UM.get(pixels.get("PhysicalSizeXUnit", "µm").strip().lower())
        if scale is not None:
            pixel = size * scale
    fps = None
    dt = _to_float(pixels.get("TimeIncrement"))
    if dt is not None:
        scale = _TIME_TO_S.get(pixels.get("TimeIncrementUnit", "s").strip().lower())
        if scale is not None:
            fps = 1.0 / (dt * scale)
    return fps, pixel


def _si_get(meta: dict, name: str):
    """Look up a ScanImage setting by its name after ``SI.`` (any version prefix)."""
    for prefix in ("SI.", "scanimage.SI.", "SI5.", "scanimage.SI5.", "SI4.", "scanimage.SI4."):
        if prefix + name in meta:
            return meta[prefix + name]
    return None


def scanimage_frame_metadata(meta: dict, n_pages: int) -> dict:
    """Interpret ScanImage non-varying frame data (``SI.*`` keys, as parsed by tifffile).

    Parameters
    ----------
    meta : dict
        Flat mapping of ScanImage settings, e.g. ``{"SI.hChannels.channelSave": [1, 2],
        "SI.hRoiManager.scanFrameRate": 30.0, ...}``.
    n_pages : int
        Number of pages (stored 2-D images) in the file.

    Returns
    -------
    dict
        ``grid`` (tuple of page-grid sizes, C order), ``axes`` (letters of the grid: ``T``
        frames, ``Z`` planes, ``C`` channels, ``F`` frames within a slice of a slow stack),
        ``n_channels``, ``n_planes``, ``fps`` (Hz, per plane: the volume rate when several planes
        are interleaved) and ``pixel_size`` (µm, from ``imagingFovUm`` when present), the last
        two None when absent. ScanImage stores channels fastest, then frames within a slice,
        then slices, then volumes.
    """
    save = _si_get(meta, "hChannels.channelSave")
    if save is None:
        save = _si_get(meta, "channelsSave")
    if isinstance(save, (list, tuple)):
        flat = np.ravel(np.asarray(save, dtype=object))
        n_channels = max(len(flat), 1)
    else:
        n_channels = 1
    n_slices = _si_get(meta, "hStackManager.actualNumSlices")
    if n_slices is None:
        n_slices = _si_get(meta, "hStackManager.numSlices")
    try:
        n_slices = int(n_slices) if n_slices is not None else 1
    except (TypeError, ValueError, OverflowError):
        n_slices = 1
    enabled = [_si_get(meta, "hStackManager.enable"), _si_get(meta, "hFastZ.enable")]
    enabled = [bool(e) for e in enabled if e is not None]
    if n_slices > 1 and enabled and not any(enabled):
        n_slices = 1
    n_slices = max(n_slices, 1)
    try:
        per_slice = int(_si_get(meta, "hStackManager.framesPerSlice"))
    except (TypeError, ValueError, OverflowError):
        per_slice = 1
    per_slice = max(per_slice, 1)

    if n_slices == 1:
        grid, axes = (max(n_pages // n_channels, 0), n_channels), "TC"
        fps = _to_float(_si_get(meta, "hRoiManager.scanFrameRate"))
    elif per_slice == 1:  # fast z: volumes of interleaved planes
        grid, axes = (n_pages // (n_slices * n_channels), n_slices, n_channels), "TZC"
        fps = _to_float(_si_get(meta, "hRoiManager.scanVolumeRate"))
    else:  # slow stack: volumes x slices x frames-per-slice
        grid = (n_pages // (n_slices * per_slice * n_channels), n_slices, per_slice, n_channels)
        axes = "TZFC"
        fps = None
    if fps is None and n_slices == 1:
        fps = _to_float(meta.get("state.acq.frameRate"))
    pixel = None
    fov = _si_get(meta, "hRoiManager.imagingFovUm")
    ppl = _to_float(_si_get(meta, "hRoiManager.pixelsPerLine"))
    if fov is not None and ppl is not None:
        try:
            xs = np.asarray(fov, dtype=float).reshape(-1, 2)[:, 0]
            width = float(xs.max() - xs.min())
            pixel = width / ppl if width > 0 else None
        except (TypeError, ValueError):
            pixel = None
    return {"grid": grid, "axes": axes, "n_channels": n_channels, "n_planes": n_slices,
            "fps": fps, "pixel_size": pixel}


def _scanimage_frame_data(tf) -> dict:
    meta = tf.scanimage_metadata or {}
    data = dict(meta.get("FrameData") or {})
    if data:
        return data
    import tifffile

    page = tf.pages.first
    for text in (page.software, page.description):
        if not text:
            continue
        if text.startswith("state."):
            try:
                parsed = tifffile.scanimage_description_metadata(text)
            except Exception:  # noqa: BLE001 - malformed legacy metadata: ignore it
                parsed = None
            if isinstance(parsed, dict):
                return _flatten(parsed)
            continue
        try:
            parsed = tifffile.matlabstr2py(text)
        except Exception:  # noqa: BLE001 - not ScanImage key = value text
            continue
        if isinstance(parsed, dict) and parsed:
            return parsed
    return {}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------- opening


def _check_selection(path, axis_name: str, option: str, value, n: int) -> int:
    if value is None:
        if n > 1:
            raise InputError(f"{path}: has {n} {axis_name}s; select one with --{option} "
                             f"0..{n - 1} ({option}= in Python)")
        return 0
    if not 0 <= value < n:
        raise InputError(f"{path}: {option}={value} is out of range: the file has {n} "
                         f"{axis_name}{'s' if n != 1 else ''} (0..{n - 1})")
    return value


def _layout(path, grid, axes, channel, plane, notes):
    """Page mapping for the chosen channel/plane: (n_frames, base, step, index or None)."""
    grid = tuple(int(n) for n in grid)
    dims = [(a, n) for a, n in zip(axes, grid)]
    strides = [int(np.prod(grid[i + 1:], dtype=np.int64)) for i in range(len(grid))]
    frame_pos = [i for i, (a, n) in enumerate(dims) if a not in "CZ" and n > 1]
    c_pos = [i for i, (a, n) in enumerate(dims) if a == "C" and n > 1]
    z_pos = [i for i, (a, n) in enumerate(dims) if a == "Z" and n > 1]
    if not frame_pos:
        # a stack whose only non-spatial axis is labelled Z (or C, when there are many) is a
        # time series with a wrong label (e.g. ImageJ 'slices' or 'channels' for frames)
        if z_pos and plane is None:
            frame_pos, z_pos = z_pos, []
            notes.append(f"axis Z ({grid[frame_pos[0]]}) read as frames")
        elif c_pos and not z_pos and channel is None and grid[c_pos[0]] > 4:
            frame_pos, c_pos = c_pos, []
            notes.append(f"axis C ({grid[frame_pos[0]]}) read as frames")
    base = 0
    nc = grid[c_pos[0]] if c_pos else 1
    c = _check_selection(path, "channel", "channel", channel, nc)
    if c_pos:
        base += c * strides[c_pos[0]]
    nz = grid[z_pos[0]] if z_pos else 1
    z = _check_selection(path, "plane", "plane", plane, nz)
    if z_pos:
        base += z * strides[z_pos[0]]
    sizes = [grid[i] for i in frame_pos]
    n_frames = int(np.prod(sizes, dtype=np.int64)) if frame_pos else 1
    if len(frame_pos) <= 1:
        step = strides[frame_pos[0]] if frame_pos else 1
        return n_frames, base, step, None
    t = np.arange(n_frames, dtype=np.int64)
    multi = np.unravel_index(t, sizes)
    index = base + sum(m * strides[i] for m, i in zip(multi, frame_pos))
    return n_frames, base, 1, np.ascontiguousarray(index, dtype=np.int64)


def _open_tifffile(path: Path):
    import tifffile

    try:
        with _quiet_tifffile():
            return tifffile.TiffFile(str(path))
    except tifffile.TiffFileError as exc:
        msg = str(exc).lower()
        if "not a tiff" in msg or "invalid tiff" in msg or "byteorder" in msg:
            raise InputError(f"{path}: not a TIFF file") from None
        raise InputError(f"{path}: corrupt or truncated TIFF ({_one_line(exc)})") from None
    except MemoryError:
        raise InputError(f"{path}: corrupt TIFF (its header claims an impossible size)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({_one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on corrupt headers
        raise InputError(f"{path}: corrupt or truncated TIFF ({_one_line(exc)})") from None


def _analyze(path: Path, channel, plane, *, single: bool) -> _FileInfo:
    """Open ``path``, work out its layout and metadata, close it again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({_one_line(exc)})") from None
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if st.st_size < 8:
        raise InputError(f"{path}: not a TIFF file ({st.st_size} bytes)")
    with _quiet_tifffile() as records:
        tf = _open_tifffile(path)
        try:
            try:
                try:
                    info = _analyze_open(tf, path, st, channel, plane, single=single)
                except InputError as exc:
                    if "corrupt" in str(exc):
                        raise
                    _raise_if_damaged(path, records)
                    raise
                # a damaged file explains any other complaint: report it first
                _raise_if_damaged(path, records)
                return info
            except InputError:
                raise
            except MemoryError:
                raise InputError(f"{path}: corrupt TIFF (its header claims an impossible "
                                 "size)") from None
            except Exception as exc:  # noqa: BLE001 - corrupt structures surface anywhere
                detail = _one_line(exc)
                if records:
                    detail += "; " + " ".join(records[-1].getMessage().split())[:200]
                raise InputError(f"{path}: corrupt or truncated TIFF ({detail})") from None
        finally:
            tf.close()


def _page_offsets(pages, bits: int) -> np.ndarray | None:
    """Data offset of every page when each is stored uncompressed in one piece, else None."""
    if len(pages) > 1_000_000:
        return None
    out = np.empty(len(pages), dtype=np.int64)
    for i, pg in enumerate(pages):
        if pg is None or len(pg.dataoffsets) == 0:
            return None
        key = pg.keyframe if pg.keyframe is not None else pg
        if not (pg.is_final and key.compression == 1 and key.bitspersample == bits):
            return None
        out[i] = pg.dataoffsets[0]
    return out


def _raise_if_damaged(path, records):
    bad = [r for r in records if _FATAL_TIFFFILE_LOG.search(r.getMessage())]
    if bad:
        detail = re.sub(r"<tifffile[^>]*>\s*", "", bad[0].getMessage())
        detail = " ".join(detail.split())[:200]
        raise InputError(f"{path}: truncated or corrupt TIFF ({detail})")


def _analyze_open(tf, path, st, channel, plane, *, single) -> _FileInfo:
    if len(tf.pages) == 0:
        raise InputError(f"{path}: the TIFF holds zero frames (no image pages)")
    notes: list[str] = []
    fps = pixel = None
    fps_src = pix_src = None
    series_index: int | None = 0
    if tf.is_scanimage:
        kind = "ScanImage TIFF"
        data = _scanimage_frame_data(tf)
        page = tf.pages.first
        n_pages = len(tf.pages)
        si = scanimage_frame_metadata(data, n_pages)
        grid, axes = si["grid"], si["axes"]
        used = int(np.prod(grid, dtype=np.int64))
        if used == 0:
            raise InputError(f"{path}: ScanImage file holds {n_pages} pages, fewer than one "
                             f"volume of {si['n_planes']} plane(s) x {si['n_channels']} "
                             "channel(s)")
        if used != n_pages:
            notes.append(f"{n_pages - used} trailing pages of an incomplete volume ignored")
        if si["fps"] is not None:
            fps, fps_src = si["fps"], "scanimage"
        if si["pixel_size"] is not None:
            pixel, pix_src = si["pixel_size"], "scanimage"
        series_index = None
        page_shape, page_axes = page.shape, page.axes
        dtype = page.dtype
        offset = None
        pages_for_check = [tf.pages.first, tf.pages[used - 1]]
        page_list = lambda: tf.pages[:used]  # noqa: E731
        memmappable = False
    else:
        series = tf.series[0]
        if tf.is_imagej and series.kind != "imagej":
            images = (tf.imagej_metadata or {}).get("images", "?")
            raise InputError(f"{path}: truncated or corrupt ImageJ TIFF (its metadata claims "
                             f"{images} images that the file does not hold)")
        kind = {"imagej": "ImageJ hyperstack", "ome": "OME-TIFF", "shaped": "multi-page TIFF",
                "generic": "multi-page TIFF", "uniform": "multi-page TIFF"}.get(
                    series.kind, f"{series.kind} TIFF")
        if tf.is_bigtiff:
            kind = "BigTIFF " + kind
        shape, axes_all = tuple(series.shape), series.axes
        if 0 in shape:
            raise InputError(f"{path}: the TIFF holds zero frames (empty image data)")
        dtype = series.dtype
        if dtype is None:
            raise InputError(f"{path}: unsupported pixel format")
        if "S" in axes_all and shape[axes_all.index("S")] > 1:
            n = shape[axes_all.index("S")]
            raise InputError(f"{path}: RGB/colour data ({n} samples per pixel); calseg needs "
                             "one grey value per pixel")
        keep = [(a, n) for a, n in zip(axes_all, shape) if a != "S"]
        if len(keep) < 2 or keep[-2][0] != "Y" or keep[-1][0] != "X":
            raise InputError(f"{path}: unsupported image layout (axes {axes_all!r})")
        grid = tuple(n for _, n in keep[:-2])
        if not grid:
            kind = "BigTIFF image" if tf.is_bigtiff else "TIFF image"
        axes = "".join(a for a, _ in keep[:-2])
        page_shape = (keep[-2][1], keep[-1][1])
        page_axes = "YX"
        if series.kind == "imagej":
            f, p = _imagej_metadata(tf, series.keyframe)
            if f is not None:
                fps, fps_src = f, "imagej"
            if p is not None:
                pixel, pix_src = p, "imagej"
        elif tf.is_ome:
            f, p = _ome_metadata(tf.ome_metadata, 0)
            if f is not None:
                fps, fps_src = f, "ome"
            if p is not None:
                pixel, pix_src = p, "ome"
        if len(tf.series) > 1:
            notes.append(f"first of {len(tf.series)} image series used")
        offset = series.dataoffset
        key = series.keyframe
        memmappable = (offset is not None and key is not None and key.is_memmappable
                       and key.compression == 1
                       and key.bitspersample == np.dtype(dtype).itemsize * 8)
        if memmappable and tf.is_ome and len(series.pages) > 1:
            last = series.pages[-1] if series.pages[-1] is not None else None
            memmappable = last is not None and getattr(last, "parent", tf) is tf
        n_pages = int(np.prod(grid, dtype=np.int64)) if grid else 1
        if not memmappable:
            if len(series) != n_pages:
                raise InputError(f"{path}: truncated or corrupt TIFF (its metadata describes "
                                 f"{n_pages} pages, the file holds {len(series)})")
            pages_for_check = [series.pages[0], series.pages[n_pages - 1]]
        else:
            pages_for_check = []
        page_list = lambda: [series[i] for i in range(n_pages)]  # noqa: E731

    if "S" in page_axes and page_shape[page_axes.index("S")] > 1:
        raise InputError(f"{path}: RGB/colour data ({page_shape[page_axes.index('S')]} samples "
                         "per pixel); calseg needs one grey value per pixel")
    hw = [n for a, n in zip(page_axes, page_shape) if a in "YX"]
    if len(hw) != 2:
        raise InputError(f"{path}: unsupported page layout (axes {page_axes!r})")
    height, width = int(hw[0]), int(hw[1])
    if height * width == 0 or any(n == 0 for n in grid):
        raise InputError(f"{path}: the TIFF holds zero frames (empty image data)")
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif":
        raise InputError(f"{path}: unsupported pixel type {dtype} (integer or float needed)")
    if height * width > MAX_FRAME_PIXELS:
        raise InputError(f"{path}: corrupt TIFF header: it claims {height} x {width} pixel "
                         "frames, larger than any imaging frame")

    n_frames, base, step, index = _layout(path, grid, axes, channel, plane, notes)
    n_pages = int(np.prod(grid, dtype=np.int64)) if grid else 1
    file_dtype = dtype.newbyteorder(tf.byteorder)
    frame_bytes = height * width * dtype.itemsize
    offsets = None
    if memmappable:
        need = offset + n_pages * frame_bytes
        if need > st.st_size:
            raise InputError(f"{path}: truncated or corrupt TIFF (its header describes "
                             f"{_fmt_bytes(n_pages * frame_bytes)} of image data, the file has "
                             f"{_fmt_bytes(st.st_size)})")
        mode = "memmap"
    else:
        for pg in pages_for_check:
            if pg is None:
                raise InputError(f"{path}: truncated or corrupt TIFF (its metadata describes "
                                 f"{n_pages} pages; some are missing)")
            ends = [o + c for o, c in zip(pg.dataoffsets, pg.databytecounts)]
            if not ends or max(ends) > st.st_size:
                raise InputError(f"{path}: truncated or corrupt TIFF (image data of a page "
                                 f"ends past the end of the {_fmt_bytes(st.st_size)} file)")
        mode = "pages"
        offset = 0
        offsets = _page_offsets(page_list(), dtype.itemsize * 8)
        if offsets is not None:
            if int(offsets.max()) + frame_bytes > st.st_size:
                raise InputError(f"{path}: truncated or corrupt TIFF (image data of a page "
                                 f"ends past the end of the {_fmt_bytes(st.st_size)} file)")
            mode = "offsets"
    if single and n_frames < 2:
        raise InputError(f"{path}: a single 2-D image (1 frame), not a movie")
    source = _Source(path=str(path), n_frames=n_frames, height=height, width=width,
                     dtype=dtype.str, file_dtype=file_dtype.str, mode=mode, base=base,
                     step=step, index=index, offset=int(offset or 0), n_pages=n_pages,
                     series=series_index, file_size=st.st_size, mtime_ns=st.st_mtime_ns,
                     offsets=offsets)
    return _FileInfo(source, kind, fps, fps_src, pixel, pix_src, notes)


def _expand(item) -> list[Path]:
    """Files named by one argument: a file, a folder of TIFFs (or its images/), or a glob."""
    p = Path(os.path.expanduser(str(item)))
    if p.is_dir():
        found = _tiffs_in(p)
        if not found and (p / "images").is_dir():
            found = _tiffs_in(p / "images")
        if not found:
            raise InputError(f"{p}: folder holds no TIFF files (*.tif, *.tiff), nor does an "
                             "images/ subfolder")
        return found
    if p.exists() or not _GLOB_CHARS.search(str(item)):
        return [p]
    found = [Path(f) for f in _glob.glob(os.path.expanduser(str(item)))]
    found = [f for f in found if f.is_file()]
    if not found:
        raise InputError(f"{item}: no files match this pattern")
    return sorted(found, key=natural_sort_key)


def _tiffs_in(folder: Path) -> list[Path]:
    files = [f for f in folder.iterdir()
             if f.suffix.lower() in TIFF_SUFFIXES and not f.name.startswith(".") and f.is_file()]
    return sorted(files, key=natural_sort_key)


def _check_option(name: str, value, *, integer: bool):
    if value is None:
        return None
    if integer:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{name}={value!r} is not allowed: use a whole number >= 0 "
                              "(0-based index)")
        return int(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not allowed: use a positive number") from None
    if not (math.isfinite(v) and v > 0):
        raise ConfigError(f"{name}={value!r} is not allowed: use a positive finite number")
    return v


def read_movie(path_or_paths, *, channel=None, plane=None, fps=None, pixel_size=None) -> "Movie":
    """Open a recording lazily as a :class:`Movie` of shape ``(T, H, W)``.

    Parameters
    ----------
    path_or_paths : str, path-like, or sequence of them
        One TIFF file; a folder holding TIFFs (or an ``images/`` subfolder, the Neurofinder
        layout); a glob pattern; or a list of any of these. Several files are concatenated
        along time in natural sort order (``image2`` before ``image10``).
    channel, plane : int, optional
        0-based channel / z-plane to read when the data hold several (ImageJ C/Z axes, OME,
        ScanImage). Required when there are several.
    fps : float, optional
        Frame rate in Hz; overrides the file's metadata.
    pixel_size : float, optional
        Pixel size in µm; overrides the file's metadata.

    Returns
    -------
    Movie
        Lazy handle; ``movie.metadata_source`` says where fps and pixel size came from
        (``"argument"``, ``"imagej"``, ``"ome"``, ``"scanimage"`` or None when unknown).

    Raises
    ------
    InputError
        Missing file, not a TIFF, corrupt or truncated data, a single image, RGB data, zero
        frames, frames of different sizes across files, NaN/inf values (checked at open for
        float movies up to ``CHECK_FINITE_AT_OPEN_BYTES``; use :meth:`Movie.check_finite`
        for larger ones), or an ambiguous channel/plane.
    ConfigError
        An option outside its allowed range.
    """
    channel = _check_option("channel", channel, integer=True)
    plane = _check_option("plane", plane, integer=True)
    fps = _check_option("fps", fps, integer=False)
    pixel_size = _check_option("pixel_size", pixel_size, integer=False)
    if isinstance(path_or_paths, (str, os.PathLike)):
        items = [path_or_paths]
    else:
        try:
            items = list(path_or_paths)
        except TypeError:
            raise InputError(f"{path_or_paths!r}: not a path or a list of paths") from None
    if not items:
        raise InputError("no input files given")
    paths: list[Path] = []
    for item in items:
        paths.extend(_expand(item))
    if len(items) > 1:
        paths = sorted(paths, key=natural_sort_key)
    seen = set()
    for p in paths:
        key = os.path.abspath(p)
        if key in seen:
            raise InputError(f"{p}: listed more than once")
        seen.add(key)
    single = len(paths) == 1
    infos = [_analyze(p, channel, plane, single=single) for p in paths]
    first = infos[0].source
    for info in infos[1:]:
        s = info.source
        if (s.height, s.width) != (first.height, first.width):
            raise InputError(f"{s.path}: frames are {s.height} x {s.width} but {first.path} "
                             f"has {first.height} x {first.width}; all files must match")
        if s.dtype != first.dtype:
            raise InputError(f"{s.path}: pixel type {np.dtype(s.dtype)} differs from "
                             f"{np.dtype(first.dtype)} in {first.path}")
    total = sum(i.source.n_frames for i in infos)
    if total < 2:
        raise InputError(f"{paths[0]}: a single 2-D image (1 frame), not a movie")
    meta = infos[0]
    src = {"fps": meta.fps_source, "pixel_size": meta.pixel_size_source}
    if fps is not None:
        if meta.fps is not None and not math.isclose(fps, meta.fps, rel_tol=1e-6):
            log.info("fps %g given; the file's metadata says %g", fps, meta.fps)
        src["fps"] = "argument"
    if pixel_size is not None:
        if meta.pixel_size is not None and not math.isclose(pixel_size, meta.pixel_size,
                                                            rel_tol=1e-6):
            log.info("pixel size %g µm given; the file's metadata says %g µm", pixel_size,
                     meta.pixel_size)
        src["pixel_size"] = "argument"
    notes = [f"{Path(i.source.path).name}: {n}" for i in infos for n in i.notes]
    for n in notes[:5]:
        log.debug("%s", n)
    kind = meta.kind if single else f"{len(paths)} files ({meta.kind})"
    movie = Movie([i.source for i in infos], kind=kind,
                  fps=fps if fps is not None else meta.fps,
                  pixel_size=pixel_size if pixel_size is not None else meta.pixel_size,
                  metadata_source=src, options={"channel": channel, "plane": plane},
                  notes=notes)
    if movie.dtype.kind == "f" and movie.nbytes <= CHECK_FINITE_AT_OPEN_BYTES:
        movie.check_finite()
    return movie


# --------------------------------------------------------------------------- Movie


def _norm_slice(s, n: int, name: str) -> slice:
    if s is None:
        return slice(0, n, 1)
    if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
        i = int(s) + (n if s < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"{name} index {s} out of range for size {n}")
        return slice(i, i + 1, 1)
    if not isinstance(s, slice):
        raise TypeError(f"{name} must be a slice or None, not {type(s).__name__}")
    return slice(*s.indices(n))


class Movie:
    """Lazy handle on a recording of shape ``(T, H, W)`` (frames, rows, cols).

    Holds no pixel data: :meth:`read`, :meth:`iter_batches` and indexing read frames on demand
    (uncompressed data by positional reads of only the rows asked for, frame by frame; compressed
    data page by page) and return the stored values exactly unless ``dtype`` asks for a
    conversion. Memory is the returned array plus at most a few MB of read buffer, whatever the
    file's size: no memory map keeps file pages resident. Picklable: pickling keeps the file
    layout (paths, offsets), never data; the files are reopened on first use (and must not have
    changed).
    Create with :func:`read_movie`.
    """

    def __init__(self, sources, *, kind, fps, pixel_size, metadata_source, options, notes=()):
        self._sources = list(sources)
        self._starts = np.cumsum([0] + [s.n_frames for s in self._sources])
        self.kind = kind
        self.fps = fps
        self.pixel_size = pixel_size
        self.metadata_source = dict(metadata_source)
        self.options = dict(options)
        self.notes = list(notes)
        self._handles: OrderedDict = OrderedDict()
        self._lock = threading.RLock()  # guards the handle cache and tifffile decoding

    # ---- shape and sizes
    @property
    def shape(self) -> tuple[int, int, int]:
        s = self._sources[0]
        return int(self._starts[-1]), s.height, s.width

    @property
    def n_frames(self) -> int:
        return int(self._starts[-1])

    @property
    def height(self) -> int:
        return self._sources[0].height

    @property
    def width(self) -> int:
        return self._sources[0].width

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._sources[0].dtype)

    @property
    def paths(self) -> list[Path]:
        return [Path(s.path) for s in self._sources]

    @property
    def nbytes(self) -> int:
        t, h, w = self.shape
        return t * h * w * self.dtype.itemsize

    @property
    def size_on_disk(self) -> int:
        return int(sum(s.file_size for s in self._sources))

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        t, h, w = self.shape
        name = self.paths[0].name + (f" (+{len(self._sources) - 1} files)"
                                     if len(self._sources) > 1 else "")
        return f"<Movie {name}: {t} x {h} x {w} {self.dtype}, {self.kind}>"

    # ---- lifecycle
    def close(self) -> None:
        """Close every open file handle (reads reopen them)."""
        with self._lock:
            for h in self._handles.values():
                _close_handle(h)
            self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._handles = OrderedDict()
        self._lock = threading.RLock()

    def _handle(self, i: int):
        with self._lock:
            return self._handle_locked(i)

    def _handle_locked(self, i: int):
        h = self._handles.get(i)
        if h is not None:
            self._handles.move_to_end(i)
            return h
        s = self._sources[i]
        try:
            st = os.stat(s.path)
        except OSError:
            raise InputError(f"{s.path}: no longer readable (moved or deleted?)") from None
        if st.st_size != s.file_size or st.st_mtime_ns != s.mtime_ns:
            raise InputError(f"{s.path}: changed on disk since it was opened")
        if s.mode in ("memmap", "offsets"):
            try:
                h = _RawFile(s.path)
            except OSError as exc:
                raise InputError(f"{s.path}: cannot open ({_one_line(exc)})") from None
        else:
            h = _open_tifffile(Path(s.path))
        self._handles[i] = h
        while len(self._handles) > MAX_OPEN_FILES:
            _, old = self._handles.popitem(last=False)
            _close_handle(old)
        return h

    # ---- reading
    def read(self, start=0, stop=None, *, rows=None, cols=None, dtype=None) -> np.ndarray:
        """Frames ``start:stop`` (optionally a spatial tile) as an array.

        Parameters
        ----------
        start, stop : int, optional
            Frame range (Python slice semantics, negative values count from the end).
        rows, cols : slice, optional
            Spatial tile; None means all rows / columns.
        dtype : numpy dtype, optional
            Output type; None keeps the stored type (values exact).

        Returns
        -------
        ndarray of shape (t, h, w)
        """
        ts = slice(*slice(start, stop).indices(self.n_frames))
        return self._read(ts, rows, cols, dtype)

    def __getitem__(self, index):
        if isinstance(index, tuple):
            if len(index) > 3:
                raise IndexError(f"too many indices for a (T, H, W) movie: {len(index)}")
            index = index + (None,) * (3 - len(index))
            t, r, c = index
        else:
            t, r, c = index, None, None
        squeeze = [isinstance(x, (int, np.integer)) for x in (t, r, c)]
        ts = _norm_slice(t, self.n_frames, "frame")
        out = self._read(ts, r, c, None)
        return out[tuple(0 if s else slice(None) for s in squeeze)]

    def iter_batches(self, batch_size=256, *, start=0, stop=None, rows=None, cols=None,
                     dtype=None):
        """Yield ``(first_frame_index, ndarray of shape (t, h, w))`` over frames ``start:stop``."""
        if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                or batch_size < 1):
            raise ConfigError(f"batch_size={batch_size!r} is not allowed: use an integer >= 1")
        t0, t1, _ = slice(start, stop).indices(self.n_frames)
        for b in range(t0, t1, int(batch_size)):
            e = min(b + int(batch_size), t1)
            yield b, self._read(slice(b, e, 1), rows, cols, dtype)

    def _read(self, ts: slice, rows, cols, dtype) -> np.ndarray:
        h, w = self.height, self.width
        rs = _norm_slice(rows, h, "rows")
        cs = _norm_slice(cols, w, "cols")
        frames = np.arange(ts.start, ts.stop, ts.step, dtype=np.int64)
        nr = len(range(rs.start, rs.stop, rs.step))
        nc = len(range(cs.start, cs.stop, cs.step))
        out = np.empty((len(frames), nr, nc), dtype=self.dtype if dtype is None else dtype)
        if len(frames) == 0:
            return out
        src_of = np.searchsorted(self._starts, frames, side="right") - 1
        # runs of consecutive requested frames that come from the same file, in request order
        cuts = np.flatnonzero(np.diff(src_of)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(frames)]):
            i = int(src_of[a])
            self._read_source(i, frames[a:b] - self._starts[i], rs, cs, out[a:b])
        return out

    def _read_source(self, i, local, rs, cs, out):
        s = self._sources[i]
        # the lock keeps a handle from being evicted (closed) while it is read
        with self._lock:
            h = self._handle_locked(i)
            pages = _pages_of(s, local)
            if s.mode == "pages":
                self._read_pages(s, h, pages, local, rs, cs, out)
            else:
                _read_raw(s, h, pages, rs, cs, out)

    def _read_pages(self, s, h, pages, local, rs, cs, out):
        chunk = max(1, int(2 ** 27 // max(1, s.height * s.width * np.dtype(s.dtype).itemsize)))
        for k in range(0, len(pages), chunk):
            key = [int(p) for p in pages[k:k + chunk]]
            try:
                with _quiet_tifffile():
                    data = h.asarray(key=key, series=s.series, maxworkers=1)
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - corrupt page data
                raise InputError(f"{s.path}: corrupt image data near frame "
                                 f"{int(local[k])} ({_one_line(exc)})") from None
            data = data.reshape(len(key), s.height, s.width)
            out[k:k + len(key)] = data[:, _ix(rs), _ix(cs)]

    # ---- checks
    def check_finite(self, batch_size=256) -> None:
        """Stream over the movie and raise InputError at the first NaN or inf value.

        Integer movies return at once. Memory use is one batch of frames.
        """
        if self.dtype.kind != "f":
            return
        for b, batch in self.iter_batches(_batch_for(self, batch_size)):
            bad = ~np.isfinite(batch)
            if bad.any():
                _raise_nonfinite(self, b, batch, bad)


def _raise_nonfinite(movie, b, batch, bad):
    t = b + int(np.argmax(bad.reshape(len(batch), -1).any(axis=1)))
    i = int(np.searchsorted(movie._starts, t, side="right") - 1)
    what = "NaN" if np.isnan(batch[bad]).any() else "infinite"
    raise InputError(f"{movie._sources[i].path}: contains {what} values "
                     f"(first at frame {t}); calseg needs finite data")


def _batch_for(movie, batch_size):
    frame = max(1, movie.height * movie.width * max(movie.dtype.itemsize, 4))
    return int(max(1, min(batch_size, 2 ** 28 // frame)))


def _pages_of(s: _Source, local: np.ndarray) -> np.ndarray:
    if s.index is None:
        return s.base + local * s.step
    return s.index[local]


def _ix(sl: slice) -> slice:
    """A normalised slice (``slice.indices`` form) usable as an array index: a reversed slice
    running to the first element has stop -1, which numpy would read as the last element."""
    return slice(sl.start, None if sl.stop < 0 else sl.stop, sl.step)


def _close_handle(h):
    with contextlib.suppress(Exception):
        h.close()


#: largest read buffer (bytes) of one positional read
_READ_CHUNK = 8 * 2 ** 20


class _RawFile:
    """A read-only file descriptor with positional reads (``os.pread``; seek + read elsewhere).

    Not a memory map on purpose: the pages a memory map touches count in the process's resident
    set until it is unmapped, so one pass over a 10 GB recording would show a 10 GB peak RSS.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))

    def readinto(self, buf, offset: int) -> None:
        """Fill ``buf`` (a writable, C-contiguous buffer) with the bytes at ``offset``."""
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                n = os.preadv(self.fd, [view[done:]], offset + done)
            else:  # pragma: no cover - Windows
                os.lseek(self.fd, offset + done, os.SEEK_SET)
                data = os.read(self.fd, len(view) - done)
                n = len(data)
                view[done:done + n] = data
            if n <= 0:
                raise InputError(f"{self.path}: read failed (the file ends at byte "
                                 f"{offset + done}, inside the image data; truncated?)")
            done += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read_raw(s: _Source, f: _RawFile, pages, rs: slice, cs: slice, out: np.ndarray) -> None:
    """Copy rows ``rs`` x cols ``cs`` of uncompressed ``pages`` of ``s`` into ``out``.

    Reads, per frame, only the band of whole rows from the first to the last row asked for;
    runs of consecutive full frames stored back to back are read in one call, straight into
    ``out`` when no conversion is needed.
    """
    dt = np.dtype(s.file_dtype)
    row_bytes = s.width * dt.itemsize
    frame_bytes = s.height * row_bytes
    pages = np.asarray(pages, dtype=np.int64)
    if s.mode == "memmap":
        starts = s.offset + pages * frame_bytes
    else:
        starts = np.asarray(s.offsets, dtype=np.int64)[pages]
    rows = range(rs.start, rs.stop, rs.step)
    if out.size == 0:
        return
    lo, hi = min(rows[0], rows[-1]), max(rows[0], rows[-1])
    band_rows = hi - lo + 1
    sel = slice(rows[0] - lo, None if rs.stop - lo < 0 else rs.stop - lo, rs.step)
    full = band_rows == s.height and rs.step == 1 and cs == slice(0, s.width, 1)
    direct = full and out.dtype == dt and out.flags.c_contiguous
    try:
        if full:
            # runs of frames stored back to back: one read per run (chunked)
            per = max(1, _READ_CHUNK // frame_bytes)
            k = 0
            while k < len(pages):
                e = k + 1
                while e < len(pages) and e - k < per and starts[e] == starts[e - 1] + frame_bytes:
                    e += 1
                if direct:
                    f.readinto(out[k:e], int(starts[k]))
                else:
                    buf = np.empty((e - k, s.height, s.width), dtype=dt)
                    f.readinto(buf, int(starts[k]))
                    out[k:e] = buf
                k = e
            return
        buf = np.empty((band_rows, s.width), dtype=dt)
        first = lo * row_bytes
        for k in range(len(pages)):
            f.readinto(buf, int(starts[k]) + first)
            out[k] = buf[sel, _ix(cs)]
    except OSError as exc:
        raise InputError(f"{s.path}: read failed ({_one_line(exc)})") from None


def value_range(movie: Movie, *, batch_size=256) -> tuple[float, float]:
    """Minimum and maximum over the whole movie, streamed in batches of frames.

    Raises
    ------
    InputError
        If the movie holds NaN or inf values (naming the file and the first bad frame).
    """
    lo = hi = None
    for b, batch in movie.iter_batches(_batch_for(movie, batch_size)):
        if batch.dtype.kind == "f":
            bad = ~np.isfinite(batch)
            if bad.any():
                _raise_nonfinite(movie, b, batch, bad)
        bmin, bmax = batch.min(), batch.max()
        lo = bmin if lo is None else min(lo, bmin)
        hi = bmax if hi is None else max(hi, bmax)
    return lo.item(), hi.item()
