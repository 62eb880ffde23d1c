"""Read a ``calseg run`` result folder back, for the report and the exporters.

A result folder holds ``masks.tif`` (uint16 label image, 0 = background, label = neuron id),
``footprints.tif`` (float32, one page per neuron, page k = neuron id k + 1), ``regions.json``
(Neurofinder), ``neurons.csv``, ``traces.csv`` and ``spikes.csv`` (``frame,time_s,<id>,...``,
one row per frame, ΔF/F), ``certificate.json``, ``run.json``, ``mean.tif`` and
``correlation.tif``. :class:`ResultDir` reads each file only when asked and caches it; the
footprint stack is read page by page (:meth:`ResultDir.footprint`), never whole.

Every problem a user can cause (missing folder, missing or malformed file) raises
:class:`calseg.errors.InputError` naming the file.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputError

__all__ = ["ResultDir", "atomic_path"]


class ResultDir:
    """Lazy, read-only view of a result folder.

    Parameters
    ----------
    path : str or Path
        The folder ``calseg run -o`` wrote.

    Attributes (read on first use)
    ------------------------------
    masks : ndarray of shape (H, W), uint16
    neurons : list of dict
        Rows of ``neurons.csv``, numbers converted (id as int).
    ids : ndarray of shape (N,), int64
        Neuron ids in ``neurons.csv`` order (1..N for a calseg result).
    traces, spikes : ndarray of shape (T, N), float32
        Columns in ``ids`` order.
    times : ndarray of shape (T,), float64
        ``time_s`` column (NaN when the frame rate was unknown).
    regions : list of ndarray of shape (n_k, 2)
        Each neuron's whole mask as (row, col) pixels, in ``ids`` order (from ``regions.json``;
        falls back to ``masks.tif`` when that file is absent).
    certificate, run : dict
    mean, correlation : ndarray of shape (H, W), float32, or None when absent
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"{self.path}: not a folder (expected a `calseg run` result folder)")

    def file(self, name: str, *, required: bool = True) -> Path | None:
        p = self.path / name
        if not p.is_file():
            if required:
                raise InputError(f"{p}: missing (is {self.path} a complete `calseg run` result folder?)")
            return None
        return p

    # ------------------------------------------------------------------ images
    def _tiff(self, name: str, *, required: bool = True):
        import tifffile

        p = self.file(name, required=required)
        if p is None:
            return None
        try:
            return tifffile.imread(p)
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise InputError(f"{p}: cannot read as TIFF ({exc})") from None

    @cached_property
    def masks(self) -> np.ndarray:
        m = self._tiff("masks.tif")
        if m.ndim != 2 or not np.issubdtype(m.dtype, np.integer):
            raise InputError(f"{self.path / 'masks.tif'}: expected a 2-D integer label image, "
                             f"got shape {m.shape} and dtype {m.dtype}")
        return m

    @property
    def shape(self) -> tuple:
        """(H, W) of the field of view."""
        return tuple(self.masks.shape)

    @cached_property
    def mean(self) -> np.ndarray | None:
        img = self._tiff("mean.tif", required=False)
        return None if img is None else np.asarray(img, np.float32)

    @cached_property
    def correlation(self) -> np.ndarray | None:
        img = self._tiff("correlation.tif", required=False)
        return None if img is None else np.asarray(img, np.float32)

    def iter_footprints(self, indices):
        """Yield the footprint of each neuron at 0-based ``indices`` (page k = neuron id k + 1).

        Yields
        ------
        ndarray of shape (H, W), float32
            Zeros for a neuron whose page is missing (``footprints.tif`` absent or short).
        """
        import tifffile

        indices = [int(i) for i in indices]
        p = self.file("footprints.tif", required=False)
        if p is None:
            for _ in indices:
                yield np.zeros(self.shape, np.float32)
            return
        try:
            tf = tifffile.TiffFile(p)
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise InputError(f"{p}: cannot read as TIFF ({exc})") from None
        with tf:
            n = len(tf.pages)
            stack = tf.pages[0].asarray() if n == 1 and len(tf.pages[0].shape) == 3 else None
            for i in indices:
                try:
                    if stack is not None:
                        page = stack[i] if i < stack.shape[0] else None
                    else:
                        page = tf.pages[i].asarray() if i < n else None
                except Exception as exc:
                    raise InputError(f"{p}: cannot read page {i} ({exc})") from None
                if page is None:
                    yield np.zeros(self.shape, np.float32)
                elif page.shape != self.shape:
                    raise InputError(f"{p}: page {i} has shape {page.shape}, masks.tif {self.shape}")
                else:
                    yield np.asarray(page, np.float32)

    def footprints(self, indices) -> np.ndarray:
        """Footprints of the neurons at 0-based ``indices``, ndarray of shape (len(indices), H, W)."""
        indices = list(indices)
        out = np.zeros((len(indices), *self.shape), np.float32)
        for j, page in enumerate(self.iter_footprints(indices)):
            out[j] = page
        return out

    # ------------------------------------------------------------------ tables
    @cached_property
    def neurons(self) -> list:
        p = self.file("neurons.csv")
        try:
            with open(p, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{p}: cannot read ({exc})") from None
        out = []
        for k, r in enumerate(rows):
            row = {}
            for key, val in r.items():
                if key is None:
                    raise InputError(f"{p}: row {k + 2} has more fields than the header")
                row[key] = _number(val)
            if not isinstance(row.get("id"), int):
                raise InputError(f"{p}: row {k + 2} has no integer 'id'")
            out.append(row)
        return out

    @cached_property
    def ids(self) -> np.ndarray:
        return np.array([r["id"] for r in self.neurons], dtype=np.int64)

    @property
    def n_neurons(self) -> int:
        return len(self.neurons)

    def _frame_table(self, name: str):
        p = self.file(name)
        header, values = _read_frame_csv(p)
        if "frame" not in header or "time_s" not in header:
            raise InputError(f"{p}: header must start with frame,time_s (got {', '.join(header[:3])})")
        cols = {h: i for i, h in enumerate(header)}
        out = np.zeros((values.shape[0], len(self.ids)), np.float32)
        for j, nid in enumerate(self.ids):
            i = cols.get(str(int(nid)))
            if i is None:
                raise InputError(f"{p}: no column for neuron {int(nid)} (listed in neurons.csv)")
            out[:, j] = values[:, i]
        return out, values[:, cols["time_s"]].astype(np.float64)

    @cached_property
    def _trace_table(self):
        return self._frame_table("traces.csv")

    @cached_property
    def traces(self) -> np.ndarray:
        return self._trace_table[0]

    @cached_property
    def spikes(self) -> np.ndarray:
        return self._frame_table("spikes.csv")[0]

    @cached_property
    def times(self) -> np.ndarray:
        return self._trace_table[1]

    # ------------------------------------------------------------------ json
    def _json(self, name: str, *, required: bool = True):
        p = self.file(name, required=required)
        if p is None:
            return {}
        try:
            with open(p, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{p}: cannot read as JSON ({exc})") from None

    @cached_property
    def certificate(self) -> dict:
        return self._json("certificate.json", required=False)

    @cached_property
    def run(self) -> dict:
        return self._json("run.json", required=False)

    @cached_property
    def regions(self) -> list:
        p = self.file("regions.json", required=False)
        if p is None:
            return self._regions_from_masks()
        from ..regions import read_regions

        reg = read_regions(p)
        by_id = dict(zip(reg.ids.tolist(), reg.coords))
        out = []
        for nid in self.ids.tolist():
            if nid not in by_id:
                raise InputError(f"{p}: no region with id {nid} (listed in neurons.csv)")
            c = np.unique(np.asarray(by_id[nid], np.int64), axis=0)
            H, W = self.shape
            if len(c) and (c[:, 0].max() >= H or c[:, 1].max() >= W):
                raise InputError(f"{p}: region {nid} lies outside the {H}x{W} field of view")
            out.append(c)
        return out

    def _regions_from_masks(self) -> list:
        m = self.masks
        out = []
        for nid in self.ids.tolist():
            rr, cc = np.nonzero(m == nid)
            out.append(np.column_stack([rr, cc]).astype(np.int64))
        return out

    # ------------------------------------------------------------------ facts
    @property
    def fps(self) -> float | None:
        fps = (self.run.get("resolved") or {}).get("fps") or (self.run.get("settings") or {}).get("fps")
        if fps:
            return float(fps)
        t = self.times
        if len(t) > 1 and np.isfinite(t[:2]).all() and t[1] > t[0]:
            return float(1.0 / (t[1] - t[0]))
        return None

    @property
    def n_frames(self) -> int:
        shape = self.run.get("shape")
        if shape:
            return int(shape[0])
        return int(self.traces.shape[0])


def _number(text):
    if text is None:
        return None
    t = text.strip()
    if t == "":
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def _read_frame_csv(path: Path):
    """Header list and (T, columns) float64 values; fast path through numpy, NaN for empty cells."""
    try:
        with open(path, encoding="utf-8") as fh:
            header = [h.strip() for h in fh.readline().strip().split(",")]
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if not header or header == [""]:
        raise InputError(f"{path}: empty file, expected a header row")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return header, np.zeros((0, len(header)))
    try:
        values = np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError:
        values = np.full((len(lines), len(header)), np.nan)
        for t, ln in enumerate(lines):
            cells = ln.split(",")
            if len(cells) != len(header):
                raise InputError(f"{path}: row {t + 2} has {len(cells)} fields, the header has {len(header)}")
            for i, c in enumerate(cells):
                c = c.strip()
                if c and c.lower() != "nan":
                    try:
                        values[t, i] = float(c)
                    except ValueError:
                        raise InputError(f"{path}: row {t + 2}, column {header[i]!r} holds {c!r}, "
                                         "not a number") from None
    if values.shape[1] != len(header):
        raise InputError(f"{path}: rows have {values.shape[1]} fields, the header has {len(header)}")
    return header, values


@contextlib.contextmanager
def atomic_path(path, *, suffix: str = ""):
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    ``suffix`` is appended to the temporary name (some writers choose the format by extension).
    On any error the temporary file or folder is removed and ``path`` is left as it was.
    """
    import shutil

    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + suffix, dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    tmp = Path(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = folder / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, (InputError, OutputError)):
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise
