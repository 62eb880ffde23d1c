"""ImageJ / Fiji ROIs: ``rois.zip`` with one polygon per neuron, traced from ``masks.tif``.

Each neuron's outline runs along pixel edges, in ImageJ's pixel-corner coordinates (pixel
(row r, col c) is the unit square [c, c+1] x [r, r+1]), so the pixels whose centres lie inside the
polygon — the pixels ImageJ's "Fill" or "Create Mask" selects — are exactly the neuron's mask.
Holes inside a mask are filled; a mask made of several 8-connected pieces becomes one composite
ROI (ImageJ's ShapeRoi) holding one polygon per piece.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["mask_outlines", "label_outlines", "write_imagej_rois"]

# headings in (row, col) steps; the tracer keeps the mask on its right (clockwise on screen)
_EAST, _SOUTH, _WEST, _NORTH = (0, 1), (1, 0), (0, -1), (-1, 0)


def _left(d):
    return (-d[1], d[0])


def _right(d):
    return (d[1], -d[0])


def _trace_component(m: np.ndarray) -> np.ndarray:
    """Outer boundary of one 8-connected, hole-free component ``m`` (padded by >= 1 pixel).

    Returns
    -------
    ndarray of shape (K, 2), int64
        (row, col) corner vertices in order, clockwise on screen, first vertex not repeated,
        only where the direction changes.
    """
    up = np.zeros_like(m)
    up[1:] = m[:-1]
    down = np.zeros_like(m)
    down[:-1] = m[1:]
    lef = np.zeros_like(m)
    lef[:, 1:] = m[:, :-1]
    rig = np.zeros_like(m)
    rig[:, :-1] = m[:, 1:]
    out: dict = {}

    def add(rows, cols, dr0, dc0, d):
        for r, c in zip(rows.tolist(), cols.tolist()):
            out.setdefault((r + dr0, c + dc0), []).append(d)

    add(*np.nonzero(m & ~up), 0, 0, _EAST)       # top edge   (r, c)     -> (r, c+1)
    add(*np.nonzero(m & ~rig), 0, 1, _SOUTH)     # right edge (r, c+1)   -> (r+1, c+1)
    add(*np.nonzero(m & ~down), 1, 1, _WEST)     # bottom     (r+1, c+1) -> (r+1, c)
    add(*np.nonzero(m & ~lef), 1, 0, _NORTH)     # left       (r+1, c)   -> (r, c)
    rows, cols = np.nonzero(m)
    k = np.lexsort((cols, rows))[0]               # top-most, then left-most pixel: its top edge is outer
    start = (int(rows[k]), int(cols[k]))
    v, d = start, _EAST
    out[v].remove(_EAST)
    verts = [start]
    while True:
        v = (v[0] + d[0], v[1] + d[1])
        if v == start:
            break
        options = out.get(v)
        if not options:  # pragma: no cover - cannot happen on a closed edge set
            raise RuntimeError("outline tracing lost the boundary")
        # at a pinch (two pixels touching at a corner) turn left: keep the component in one piece
        for nd in (_left(d), d, _right(d)):
            if nd in options:
                break
        options.remove(nd)
        if nd != d:
            verts.append(v)
        d = nd
    return np.asarray(verts, dtype=np.int64)


def mask_outlines(mask: np.ndarray, *, origin=(0, 0)) -> list:
    """Pixel-edge outlines of a binary mask, one per 8-connected piece, largest first.

    Parameters
    ----------
    mask : ndarray of shape (h, w), bool
    origin : (row, col)
        Added to the vertices (the position of ``mask`` in the full image).

    Returns
    -------
    list of ndarray of shape (K, 2), float64
        (x, y) = (col, row) pixel-corner coordinates of each piece's outer boundary (holes filled),
        not closed (the first vertex is not repeated).
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    pieces = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        sub = labels[sl] == k
        sub = ndi.binary_fill_holes(sub)
        pad = np.pad(sub, 1)
        rc = _trace_component(pad) - 1 + np.array([sl[0].start + origin[0], sl[1].start + origin[1]])
        pieces.append((int(sub.sum()), rc[:, ::-1].astype(np.float64)))
    pieces.sort(key=lambda p: -p[0])
    return [p[1] for p in pieces]


def label_outlines(labels: np.ndarray, ids) -> list:
    """Outlines of each id's pixels in a label image (see :func:`mask_outlines`).

    Parameters
    ----------
    labels : ndarray of shape (H, W), integer
    ids : sequence of int

    Returns
    -------
    list (one entry per id) of list of ndarray of shape (K, 2)
        (x, y) corner coordinates; an empty list for an id with no pixels.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    objs = ndi.find_objects(labels.astype(np.int64)) if top > 0 else []
    out = []
    for nid in ids:
        nid = int(nid)
        sl = objs[nid - 1] if 0 < nid <= len(objs) else None
        if sl is None:
            out.append([])
            continue
        out.append(mask_outlines(labels[sl] == nid, origin=(sl[0].start, sl[1].start)))
    return out


def _roi(pieces, name: str):
    import roifile

    if len(pieces) == 1:
        roi = roifile.ImagejRoi.frompoints(pieces[0].astype(np.int32), name=name)
        roi.roitype = roifile.ROI_TYPE.POLYGON
        return roi
    # composite (ShapeRoi): a path of MOVETO x y, LINETO x y ..., CLOSE per piece
    path = []
    for p in pieces:
        path += [0.0, float(p[0, 0]), float(p[0, 1])]
        for x, y in p[1:]:
            path += [1.0, float(x), float(y)]
        path.append(4.0)
    allp = np.concatenate(pieces)
    roi = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, name=name,
                            multi_coordinates=np.asarray(path, np.float32))
    roi.left, roi.top = int(allp[:, 0].min()), int(allp[:, 1].min())
    roi.right, roi.bottom = int(allp[:, 0].max()), int(allp[:, 1].max())
    roi.n_coordinates = 0
    roi.shape_roi_size = len(path)   # marks the ROI as composite; the path follows the header
    return roi


def write_imagej_rois(result_dir, path=None) -> Path:
    """Write each neuron's outline from ``masks.tif`` as an ImageJ ROI into a zip.

    Parameters
    ----------
    result_dir : str or Path
        A ``calseg run`` result folder.
    path : str or Path, optional
        The zip to write; default ``result_dir/rois.zip``. Written atomically.

    Returns
    -------
    Path
        The zip written. Its entries are named ``<id>.roi`` (the ROI names are the neuron ids,
        in id order), and Fiji's ROI Manager opens it directly (File > Open, or drag and drop).

    Notes
    -----
    Pixel (r, c) is inside a neuron's ROI exactly when ``masks.tif[r, c] == id`` (holes filled).
    A neuron that lost all its pixels to overlapping neighbours in ``masks.tif`` gets no ROI.
    """
    try:
        import roifile
    except ImportError:
        raise ConfigError("ImageJ ROI export needs roifile (a calseg dependency): pip install roifile") from None
    from .folder import ResultDir, atomic_path

    rd = ResultDir(result_dir)
    path = Path(path) if path is not None else rd.path / "rois.zip"
    ids = rd.ids.tolist()
    outlines = label_outlines(rd.masks, ids)
    rois = [_roi(pieces, str(nid)) for nid, pieces in zip(ids, outlines) if pieces]
    with atomic_path(path, suffix=".zip") as tmp:
        if rois:
            roifile.roiwrite(tmp, rois, mode="w")
        else:  # an empty but valid zip
            import zipfile

            with zipfile.ZipFile(tmp, "w"):
                pass
    return path
