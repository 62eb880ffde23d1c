"""Neuron regions: read and write Neurofinder ``regions.json`` files and label-image TIFFs.

A set of regions is a :class:`Regions`: one integer coordinate array of shape (N_k, 2) per
region, holding (row, col) pixel positions, plus one integer id per region. Two on-disk forms:

* Neurofinder JSON — a list of ``{"coordinates": [[row, col], ...]}`` objects, each optionally
  with an ``"id"``. Region k (0-based) without an ``"id"`` key gets id k + 1.
* Label image — a 2-D unsigned-integer TIFF (uint16 when written), 0 = background, every other
  value one region whose id is that value. Regions are ordered by increasing label.

Ids tie a region to its column in the per-neuron CSV tables (``spikes.csv``, ``traces.csv``).
Every reader raises :class:`calseg.errors.InputError` naming the file on malformed input; every
writer writes to a temporary file in the target folder and renames it into place.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import InputError, OutputError

__all__ = [
    "Regions",
    "read_regions",
    "regions_from_coordinates",
    "regions_from_label_image",
    "label_image",
    "write_regions_json",
    "write_label_tiff",
]

_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class Regions:
    """A set of neuron regions.

    Attributes
    ----------
    coords : tuple of ndarray of shape (N_k, 2), dtype int64
        (row, col) pixel coordinates of each region, in the order given by the source
        (duplicates, if the source had any, are kept: Neurofinder's centre is their mean).
    ids : ndarray of shape (K,), dtype int64
        Positive, distinct region ids.
    shape : tuple of (int, int) or None
        Image shape (rows, cols) when the source knew it (a label image), else None.
    source : str
        Where the regions came from (a path, or ``"<array>"``), used in error messages.
    """

    coords: tuple
    ids: np.ndarray
    shape: tuple | None = None
    source: str = "<array>"

    def __len__(self) -> int:
        return len(self.coords)

    @cached_property
    def extent(self) -> tuple:
        """Image shape (rows, cols): ``shape`` when known, else the smallest one holding every region."""
        if self.shape is not None:
            return tuple(self.shape)
        rows = max((int(c[:, 0].max()) + 1 for c in self.coords), default=0)
        cols = max((int(c[:, 1].max()) + 1 for c in self.coords), default=0)
        return (rows, cols)

    @cached_property
    def centers(self) -> np.ndarray:
        """Region centres, ndarray of shape (K, 2): the mean of each region's coordinates."""
        if not self.coords:
            return np.zeros((0, 2))
        out = np.array([c.mean(axis=0) for c in self.coords], dtype=np.float64)
        out.setflags(write=False)
        return out


def _make(coords, ids, shape, source) -> Regions:
    coords = tuple(coords)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) != len(coords):
        raise InputError(f"{source}: {len(coords)} regions but {len(ids)} ids")
    if len(ids):
        if ids.min() < 1:
            raise InputError(f"{source}: region ids must be positive integers, got {int(ids.min())}")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise InputError(f"{source}: region id {int(uniq[counts > 1][0])} appears more than once")
    if shape is not None:
        shape = (int(shape[0]), int(shape[1]))
    return Regions(coords=coords, ids=ids, shape=shape, source=source)


def _coord_array(value, source: str, k: int) -> np.ndarray:
    """Validate one region's coordinates: a non-empty list of [row, col] non-negative integers."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{source}: region {k} coordinates are not a list of [row, col] numbers") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        if arr.size == 0:
            raise InputError(f"{source}: region {k} has no coordinates")
        raise InputError(f"{source}: region {k} coordinates must be [[row, col], ...], "
                         f"got an array of shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{source}: region {k} has no coordinates")
    if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
        raise InputError(f"{source}: region {k} coordinates must be whole pixel indices")
    if (arr < 0).any():
        raise InputError(f"{source}: region {k} has a negative coordinate")
    return arr.astype(np.int64)


def regions_from_coordinates(coords, ids=None, *, source: str = "<array>") -> Regions:
    """Regions from a list of coordinate arrays.

    Parameters
    ----------
    coords : sequence of array_like of shape (N_k, 2)
        (row, col) integer pixel coordinates of each region; N_k >= 1.
    ids : sequence of int, optional
        One positive id per region; default 1, 2, ..., K.
    source : str
        Name used in error messages.

    Returns
    -------
    Regions
    """
    arrays = [_coord_array(c, source, k) for k, c in enumerate(coords)]
    if ids is None:
        ids = np.arange(1, len(arrays) + 1)
    return _make(arrays, ids, None, source)


def regions_from_label_image(labels, *, source: str = "<array>") -> Regions:
    """Regions from a label image.

    Parameters
    ----------
    labels : ndarray of shape (H, W), integer dtype
        0 = background; each positive value is one region with that id.
    source : str
        Name used in error messages.

    Returns
    -------
    Regions
        Ordered by increasing label; coordinates in C (row-major) order; ``shape`` = (H, W).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"{source}: a label image must be 2-D (rows, cols), got shape {labels.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{source}: a label image must have an integer dtype, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise InputError(f"{source}: a label image must not hold negative labels")
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    lab = flat[nz].astype(np.int64)
    order = np.argsort(lab, kind="stable")  # stable: row-major order within each region
    nz, lab = nz[order], lab[order]
    ids, starts = np.unique(lab, return_index=True)
    width = labels.shape[1]
    coords = [np.stack(np.divmod(p, width), axis=1).astype(np.int64)
              for p in np.split(nz, starts[1:])] if len(ids) else []
    return _make(coords, ids, labels.shape, source)


def _read_json(path: Path) -> Regions:
    src = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{src}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{src}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{src}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise InputError(f"{src}: expected a JSON list of {{\"coordinates\": [[row, col], ...]}} "
                         f"objects, got a {type(data).__name__}")
    coords, ids = [], []
    for k, item in enumerate(data):
        if not isinstance(item, dict) or "coordinates" not in item:
            raise InputError(f"{src}: region {k} is not an object with a \"coordinates\" key")
        coords.append(_coord_array(item["coordinates"], src, k))
        if "id" in item:
            rid = item["id"]
            if isinstance(rid, bool) or not isinstance(rid, (int, float)) or rid != int(rid):
                raise InputError(f"{src}: region {k} has id {rid!r}; ids must be positive integers")
            ids.append(int(rid))
        else:
            ids.append(k + 1)
    return _make(coords, ids, None, src)


def _read_tiff(path: Path) -> Regions:
    import tifffile

    src = str(path)
    if not path.is_file():
        raise InputError(f"{src}: no such file")
    try:
        labels = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types on corrupt files
        raise InputError(f"{src}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    return regions_from_label_image(labels, source=src)


def read_regions(path) -> Regions:
    """Read regions from a Neurofinder ``.json`` file or a label-image ``.tif``/``.tiff``.

    Parameters
    ----------
    path : str or Path
        The file; its suffix chooses the reader (anything not TIFF is read as JSON).

    Returns
    -------
    Regions

    Raises
    ------
    InputError
        Missing file, malformed JSON, a region without coordinates, a label image that is not a
        2-D integer array.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a regions.json or label-image TIFF")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        return _read_tiff(path)
    return _read_json(path)


def label_image(regions: Regions, shape=None) -> np.ndarray:
    """Paint regions into a label image.

    Parameters
    ----------
    regions : Regions
    shape : tuple of (int, int), optional
        Output shape; default ``regions.extent``.

    Returns
    -------
    ndarray of shape (H, W), dtype uint16
        Pixel value = id of the region covering it, 0 elsewhere. Where regions overlap, the later
        region in ``regions`` wins (a label image cannot hold overlaps).
    """
    shape = tuple(regions.extent if shape is None else shape)
    if len(regions.ids) and regions.ids.max() > np.iinfo(np.uint16).max:
        raise OutputError(f"region id {int(regions.ids.max())} does not fit a uint16 label image")
    if regions.extent[0] > shape[0] or regions.extent[1] > shape[1]:
        raise OutputError(f"regions extend to {regions.extent}, outside the image shape {shape}")
    out = np.zeros(shape, dtype=np.uint16)
    for c, rid in zip(regions.coords, regions.ids):
        out[c[:, 0], c[:, 1]] = rid
    return out


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc})") from None
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write ({exc})") from None
        raise


def write_regions_json(path, regions: Regions, *, with_ids: bool = True) -> None:
    """Write regions as Neurofinder JSON, atomically.

    Parameters
    ----------
    path : str or Path
    regions : Regions
    with_ids : bool
        Write each region's ``"id"`` (default). Without it, reading back gives ids 1..K.
    """
    items = []
    for c, rid in zip(regions.coords, regions.ids):
        item = {"id": int(rid)} if with_ids else {}
        item["coordinates"] = c.tolist()
        items.append(item)
    text = json.dumps(items, separators=(",", ":")).encode("utf-8")
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(text))


def write_label_tiff(path, regions: Regions, shape=None) -> None:
    """Write regions as a uint16 label-image TIFF, atomically (see :func:`label_image`)."""
    import tifffile

    labels = label_image(regions, shape)
    _atomic_write(Path(path), lambda tmp: tifffile.imwrite(tmp, labels))
