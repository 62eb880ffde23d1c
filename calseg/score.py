"""Score found neurons against a ground truth: Neurofinder metrics, IoU matching, trace correlation.

Three families of numbers, all from a TRUTH and a PRED set of regions (see :mod:`calseg.regions`):

* **Neurofinder** (recall, precision, combined, inclusion, exclusion), computed exactly as the
  Neurofinder benchmark's scorer does. Source read: ``codeneuro/neurofinder-python``,
  ``neurofinder/main.py`` (``match``, ``centers``, ``shapes``) and
  ``neurofinder/commands/evaluate.py`` (``combined`` and its 0/0 guard), built on
  ``freeman-lab/regional``, ``regional/regional.py`` (``one.center`` = mean of the coordinates,
  ``one.distance`` = Euclidean distance between centres, ``one.overlap(method='rates')``).
  In that code the first argument ``a`` is the ground truth and ``b`` the estimate.
* **IoU** — one-to-one matching maximising the number of pairs with IoU >= ``iou_threshold``
  (Hungarian algorithm), then their total IoU; precision, recall, F1 and mean IoU of the pairs.
* **Correlation** — Pearson correlation between truth and predicted spike trains or traces of the
  IoU-matched neurons, optionally after summing ``bin_frames`` consecutive frames.

The only entry point most callers need is :func:`score`.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputError
from .regions import Regions, read_regions, regions_from_coordinates, regions_from_label_image

__all__ = [
    "score",
    "neurofinder_match",
    "neurofinder_metrics",
    "iou_matrix",
    "iou_match",
    "iou_metrics",
    "read_table_csv",
    "correlation_metrics",
    "format_table",
]

_TRACE_FILES = ("traces.csv", "calcium.csv")


# --------------------------------------------------------------------------- Neurofinder

def neurofinder_match(truth_centers, pred_centers, threshold: float) -> np.ndarray:
    """Greedy centre matching, in Neurofinder's order.

    Truth regions are visited in order; each takes the nearest still-unmatched predicted centre
    if that distance is strictly below ``threshold`` (ties go to the lowest predicted index),
    and that predicted region is then no longer available.

    Parameters
    ----------
    truth_centers : ndarray of shape (Kt, 2)
    pred_centers : ndarray of shape (Kp, 2)
    threshold : float
        Distance in pixels; a pair matches when its distance is ``< threshold``.

    Returns
    -------
    ndarray of shape (Kt,), dtype int64
        Index of the matched predicted region for each truth region, or -1.
    """
    truth_centers = np.asarray(truth_centers, dtype=np.float64).reshape(-1, 2)
    pred_centers = np.asarray(pred_centers, dtype=np.float64).reshape(-1, 2)
    out = np.full(len(truth_centers), -1, dtype=np.int64)
    available = np.ones(len(pred_centers), dtype=bool)
    if len(pred_centers) == 0:
        return out
    for i, c in enumerate(truth_centers):
        if not available.any():
            break
        d = np.sqrt(((pred_centers - c) ** 2).sum(axis=1))
        d[~available] = np.inf
        j = int(np.argmin(d))  # first index among equal minima, as the original's argmin
        if d[j] < threshold:
            out[i] = j
            available[j] = False
    return out


def _overlap_rates(a: np.ndarray, b: np.ndarray, width: int) -> tuple:
    """regional's ``one.overlap(method='rates')``: (hits/len(a), hits/len(b)).

    hits = number of entries of ``a``'s coordinate list that occur in ``b``'s.
    """
    fa = a[:, 0] * width + a[:, 1]
    fb = b[:, 0] * width + b[:, 1]
    hits = float(np.isin(fa, fb).sum())
    return hits / len(fa), hits / len(fb)


def neurofinder_metrics(truth: Regions, pred: Regions, *, threshold: float = 5.0) -> dict:
    """Neurofinder's five numbers for a truth and a predicted set of regions.

    Parameters
    ----------
    truth, pred : Regions
    threshold : float
        Centre-distance threshold in pixels (strict ``<``), default 5 as Neurofinder's CLI.

    Returns
    -------
    dict
        ``recall``, ``precision``, ``combined``, ``inclusion``, ``exclusion``, ``n_matched``,
        ``threshold`` and ``pairs`` (list of [truth_id, pred_id]).

    Notes
    -----
    With M = number of matched pairs, Kt = len(truth), Kp = len(pred):

    * recall = M / Kt, precision = M / Kp,
      combined = 2 * recall * precision / (recall + precision), and 0 when both are 0 (as the
      original's ``evaluate``);
    * for each matched pair, inclusion_i = |T_i ∩ P_i| / |T_i| and exclusion_i = |T_i ∩ P_i| / |P_i|
      (pixel counts); inclusion and exclusion are their means over pairs, and both are 0 when
      there is no pair (as the original's ``shapes``).

    Where the original is undefined — no predicted region (it divides by zero) — calseg defines
    precision = 0. An empty truth set is refused earlier, by :func:`score`.
    """
    match = neurofinder_match(truth.centers, pred.centers, threshold)
    pairs = [(i, int(j)) for i, j in enumerate(match) if j >= 0]
    m = len(pairs)
    recall = m / len(truth) if len(truth) else 0.0
    precision = m / len(pred) if len(pred) else 0.0
    combined = _f_score(recall, precision)
    width = max(truth.extent[1], pred.extent[1], 1)
    if pairs:
        rates = np.array([_overlap_rates(truth.coords[i], pred.coords[j], width) for i, j in pairs])
        inclusion, exclusion = (float(v) for v in rates.mean(axis=0))
    else:
        inclusion, exclusion = 0.0, 0.0
    return {
        "threshold": float(threshold),
        "recall": recall,
        "precision": precision,
        "combined": combined,
        "inclusion": inclusion,
        "exclusion": exclusion,
        "n_matched": m,
        "pairs": [[int(truth.ids[i]), int(pred.ids[j])] for i, j in pairs],
    }


def _f_score(recall: float, precision: float) -> float:
    if recall == 0 and precision == 0:
        return 0.0
    return 2.0 * recall * precision / (recall + precision)


# --------------------------------------------------------------------------- IoU

def _mask_matrix(regions: Regions, width: int, n_pixels: int):
    """Sparse (K, n_pixels) 0/1 matrix of each region's distinct pixels."""
    from scipy import sparse

    rows, cols = [], []
    for k, c in enumerate(regions.coords):
        flat = np.unique(c[:, 0] * width + c[:, 1])
        rows.append(np.full(len(flat), k, dtype=np.int64))
        cols.append(flat)
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    data = np.ones(len(rows), dtype=np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(regions), max(n_pixels, 1)))


def iou_matrix(truth: Regions, pred: Regions) -> np.ndarray:
    """Intersection over union of every (truth, pred) pair of regions.

    Parameters
    ----------
    truth, pred : Regions

    Returns
    -------
    ndarray of shape (Kt, Kp), float64
        |T_i ∩ P_j| / |T_i ∪ P_j| on distinct pixels.
    """
    h = max(truth.extent[0], pred.extent[0], 1)
    w = max(truth.extent[1], pred.extent[1], 1)
    if len(truth) == 0 or len(pred) == 0:
        return np.zeros((len(truth), len(pred)))
    a = _mask_matrix(truth, w, h * w)
    b = _mask_matrix(pred, w, h * w)
    inter = (a @ b.T).toarray()
    size_a = np.asarray(a.sum(axis=1)).ravel()
    size_b = np.asarray(b.sum(axis=1)).ravel()
    union = size_a[:, None] + size_b[None, :] - inter
    return inter / union


def iou_match(iou, threshold: float = 0.5) -> tuple:
    """One-to-one matching of regions by IoU.

    Parameters
    ----------
    iou : ndarray of shape (Kt, Kp)
    threshold : float
        A pair may match only when its IoU is ``>= threshold``.

    Returns
    -------
    rows, cols : ndarray of shape (M,), dtype int64
        Matched truth and predicted indices, sorted by truth index.

    Notes
    -----
    Solves the assignment problem (``scipy.optimize.linear_sum_assignment``) on the weights
    w_ij = [iou_ij >= t] * (C + iou_ij) with C = min(Kt, Kp) + 1: since the IoU part of any
    assignment sums to less than C, it first maximises the number of qualifying pairs, then their
    total IoU.
    """
    from scipy.optimize import linear_sum_assignment

    iou = np.asarray(iou, dtype=np.float64)
    if iou.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ok = iou >= threshold
    weight = np.where(ok, min(iou.shape) + 1.0 + iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    keep = ok[rows, cols]
    rows, cols = rows[keep].astype(np.int64), cols[keep].astype(np.int64)
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]


def iou_metrics(truth: Regions, pred: Regions, *, iou_threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of one-to-one IoU matching (see :func:`iou_match`).

    Returns
    -------
    dict
        ``threshold``, ``precision`` = M / Kp, ``recall`` = M / Kt, ``f1``, ``n_matched`` = M,
        ``mean_iou`` (mean IoU of the M pairs; NaN when M = 0) and ``pairs``
        (list of [truth_id, pred_id, iou]). Any 0/0 ratio is defined as 0.
    """
    iou = iou_matrix(truth, pred)
    rows, cols = iou_match(iou, iou_threshold)
    m = len(rows)
    recall = m / len(truth) if len(truth) else 0.0
    precision = m / len(pred) if len(pred) else 0.0
    vals = iou[rows, cols]
    return {
        "threshold": float(iou_threshold),
        "precision": precision,
        "recall": recall,
        "f1": _f_score(recall, precision),
        "n_matched": m,
        "mean_iou": float(vals.mean()) if m else math.nan,
        "pairs": [[int(truth.ids[i]), int(pred.ids[j]), float(v)] for i, j, v in zip(rows, cols, vals)],
    }


# --------------------------------------------------------------------------- traces

def read_table_csv(path) -> tuple:
    """Read a per-neuron table: header ``frame,time_s,<id1>,<id2>,...``, one row per frame.

    Parsing is :func:`calseg.io.tables.read_csv_table`'s; this adds the scorer's requirements
    (integer neuron ids, no missing value).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ids : ndarray of shape (K,), int64
        Neuron ids from the header.
    values : ndarray of shape (T, K), float64
        One column per neuron.
    """
    from .io.tables import read_csv_table

    table = read_csv_table(path)
    try:
        ids = np.array([int(n) for n in table.names], dtype=np.int64)
    except ValueError:
        raise InputError(f"{path}: neuron columns must be named by integer ids, "
                         f"got {', '.join(table.names[:4])}{', ...' if len(table.names) > 4 else ''}") from None
    if len(np.unique(ids)) != len(ids):
        raise InputError(f"{path}: a neuron id appears twice in the header")
    if np.isnan(table.values).any():
        raise InputError(f"{path}: has missing values (empty or nan cells); correlation needs every frame")
    return ids, table.values


def _bin(x: np.ndarray, n: int) -> np.ndarray:
    """Sum consecutive groups of ``n`` rows of x (T, K); a trailing partial group is dropped."""
    t = (x.shape[0] // n) * n
    return x[:t].reshape(-1, n, x.shape[1]).sum(axis=1)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Column-wise Pearson correlation of x, y (T, M); NaN where a column is constant."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    den = np.sqrt((xc * xc).sum(axis=0) * (yc * yc).sum(axis=0))
    num = (xc * yc).sum(axis=0)
    r = np.full(x.shape[1], np.nan)
    ok = den > 0
    r[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return r


def correlation_metrics(truth_table, pred_table, truth_ids, pred_ids, *, bin_frames: int = 1,
                        names=("truth", "pred")) -> dict:
    """Pearson correlation between truth and predicted columns of matched neurons.

    Parameters
    ----------
    truth_table, pred_table : tuple (ids ndarray (K,), values ndarray (T, K))
        As returned by :func:`read_table_csv`; both with the same T.
    truth_ids, pred_ids : sequence of int, length M
        Ids of the matched pairs (pair m is truth_ids[m] <-> pred_ids[m]).
    bin_frames : int
        Sum this many consecutive frames before correlating (trailing partial bin dropped).
    names : tuple of str
        Names of the two tables for error messages.

    Returns
    -------
    dict
        ``bin``, ``n_neurons`` = M, ``mean`` and ``median`` of the defined correlations (NaN if
        none), ``n_undefined`` (pairs where one of the binned series is constant, so r is
        undefined) and ``per_neuron`` (list of [truth_id, pred_id, r], r None when undefined).
    """
    (tid, tv), (pid, pv) = truth_table, pred_table
    if tv.shape[0] != pv.shape[0]:
        raise InputError(f"{names[0]} has {tv.shape[0]} frames but {names[1]} has {pv.shape[0]}")
    n_bins = tv.shape[0] // bin_frames
    if n_bins < 2:
        raise ConfigError(f"bin_frames={bin_frames} leaves {n_bins} bin(s) of {tv.shape[0]} frames; "
                          "correlation needs at least 2 (use a smaller bin)")
    tcol = {int(k): c for c, k in enumerate(tid)}
    pcol = {int(k): c for c, k in enumerate(pid)}
    for ids, cols, name in ((truth_ids, tcol, names[0]), (pred_ids, pcol, names[1])):
        missing = [int(k) for k in ids if int(k) not in cols]
        if missing:
            raise InputError(f"{name} has no column for neuron id {missing[0]}"
                             f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    x = _bin(tv[:, [tcol[int(k)] for k in truth_ids]], bin_frames)
    y = _bin(pv[:, [pcol[int(k)] for k in pred_ids]], bin_frames)
    r = _pearson(x, y) if len(truth_ids) else np.zeros(0)
    good = r[np.isfinite(r)]
    return {
        "bin": int(bin_frames),
        "n_neurons": int(len(r)),
        "mean": float(good.mean()) if len(good) else math.nan,
        "median": float(np.median(good)) if len(good) else math.nan,
        "n_undefined": int(len(r) - len(good)),
        "per_neuron": [[int(a), int(b), (float(v) if np.isfinite(v) else None)]
                       for a, b, v in zip(truth_ids, pred_ids, r)],
    }


# --------------------------------------------------------------------------- inputs

def _as_regions(x, role: str) -> tuple:
    """(Regions, {"spikes": path|None, "traces": path|None}) from any accepted input."""
    found = {"spikes": None, "traces": None}
    if isinstance(x, Regions):
        return x, found
    if isinstance(x, (str, Path)):
        path = Path(x)
        if path.is_dir():
            folder = None
            for cand in (path, path / "truth"):
                if (cand / "regions.json").is_file():
                    folder = cand
                    break
            if folder is None:
                raise InputError(f"{path}: folder has neither regions.json nor truth/regions.json")
            if (folder / "spikes.csv").is_file():
                found["spikes"] = folder / "spikes.csv"
            for name in _TRACE_FILES:
                if (folder / name).is_file():
                    found["traces"] = folder / name
                    break
            return read_regions(folder / "regions.json"), found
        if not path.exists():
            raise InputError(f"{path}: no such file or folder ({role})")
        return read_regions(path), found
    if isinstance(x, np.ndarray):
        # an array is a label image; coordinates come as a list of (N_k, 2) arrays
        return regions_from_label_image(x, source=f"<{role} label image>"), found
    if isinstance(x, (list, tuple)):
        items = list(x)
        if items and all(isinstance(i, dict) for i in items):
            if not all("coordinates" in i for i in items):
                raise InputError(f"{role}: every region object needs a \"coordinates\" key")
            ids = [i.get("id", k + 1) for k, i in enumerate(items)]
            return regions_from_coordinates([i["coordinates"] for i in items], ids,
                                            source=f"<{role} regions>"), found
        return regions_from_coordinates(items, source=f"<{role} regions>"), found
    raise InputError(f"{role}: expected a path, a folder, Regions, a label image (2-D integer "
                     f"array) or a list of coordinate arrays, got {type(x).__name__}")


def _as_table(x, regions: Regions, name: str) -> tuple:
    """(ids, values (T, K)) from a CSV path or an array whose columns follow the region order."""
    if isinstance(x, (str, Path)):
        return read_table_csv(x)
    if isinstance(x, tuple) and len(x) == 2:
        ids, values = np.asarray(x[0], dtype=np.int64), np.asarray(x[1], dtype=np.float64)
    else:
        values = np.asarray(x, dtype=np.float64)
        ids = regions.ids
    if values.ndim != 2 or values.shape[1] != len(ids):
        raise InputError(f"{name}: expected an array of shape (T, {len(ids)}), got {values.shape}")
    if not np.isfinite(values).all():
        raise InputError(f"{name}: holds NaN or infinite values")
    return ids, values


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)


def _check_params(threshold, iou_threshold, bin_frames) -> None:
    if not (_is_real(threshold) and threshold > 0):
        raise ConfigError(f"threshold={threshold!r}: must be a positive distance in pixels")
    if not (_is_real(iou_threshold) and 0 < iou_threshold <= 1):
        raise ConfigError(f"iou_threshold={iou_threshold!r}: must be in (0, 1]")
    if isinstance(bin_frames, bool) or not isinstance(bin_frames, numbers.Integral) or bin_frames < 1:
        raise ConfigError(f"bin_frames={bin_frames!r}: must be an integer >= 1")


def _motion_csv(x, names) -> Path | None:
    if not isinstance(x, (str, Path)) or not Path(x).is_dir():
        return None
    for name in names:
        if (Path(x) / name).is_file():
            return Path(x) / name
    return None


def motion_offset(truth, pred) -> tuple[int, int] | None:
    """Whole-pixel offset of a motion-corrected result's frame from the simulation's truth frame.

    Motion correction aligns the recording to a reference built from the recording itself, so
    its frame sits at the recording's typical position, not at the simulator's undisplaced
    reference. With ``truth/motion.csv`` (content displacements d_t, as ``calseg simulate``
    writes them) next to the truth and ``motion.csv`` (corrections s_t ≈ −d_t + c) next to the
    prediction, the constant c = mean_t(s_t + d_t), rounded per axis, is that offset; the truth
    regions are moved by it before matching. None when either file is missing.
    """
    t_path = _motion_csv(truth, ("truth/motion.csv", "motion.csv"))
    p_path = _motion_csv(pred, ("motion.csv",))
    if t_path is None or p_path is None:
        return None
    t = np.genfromtxt(t_path, delimiter=",", names=True)
    p = np.genfromtxt(p_path, delimiter=",", names=True)
    if t.size != p.size or not {"dy", "dx"} <= set(t.dtype.names) or not {"dy", "dx"} <= set(p.dtype.names):
        raise InputError(f"{p_path}: {p.size} frames of shifts against {t.size} in {t_path}")
    return (int(np.rint(np.mean(p["dy"] + t["dy"]))), int(np.rint(np.mean(p["dx"] + t["dx"]))))


def _shifted(regions: Regions, offset) -> Regions:
    """The regions moved by ``offset`` (rows, cols); pixels moved below 0 are dropped."""
    coords, ids = [], []
    for c, i in zip(regions.coords, regions.ids):
        moved = c + np.asarray(offset, dtype=c.dtype)
        moved = moved[(moved >= 0).all(axis=1)]
        if len(moved):
            coords.append(moved)
            ids.append(i)
    return regions_from_coordinates(coords, ids, source=f"{regions.source} (moved by {tuple(offset)})")


def score(truth, pred, *, threshold: float = 5.0, iou_threshold: float = 0.5,
          truth_spikes=None, pred_spikes=None, truth_traces=None, pred_traces=None,
          bin_frames: int = 1, align_motion: bool = True) -> dict:
    """Score predicted neurons against a ground truth.

    Parameters
    ----------
    truth, pred : str, Path, Regions, ndarray of shape (H, W) or list
        Each one of: a Neurofinder ``regions.json``; a label-image TIFF; a folder holding
        ``regions.json`` or ``truth/regions.json`` (and then its ``spikes.csv`` and
        ``traces.csv``/``calcium.csv`` are used unless given explicitly); a
        :class:`~calseg.regions.Regions`; a 2-D integer label image; a list of (N_k, 2)
        coordinate arrays or of ``{"coordinates": ..., "id": ...}`` objects.
    threshold : float
        Neurofinder centre-distance threshold in pixels (a pair matches when distance < threshold).
    iou_threshold : float
        Minimum IoU of a pair in the one-to-one IoU matching, in (0, 1].
    truth_spikes, pred_spikes, truth_traces, pred_traces : str, Path or ndarray, optional
        CSV tables (``frame,time_s,<id>,...``) or arrays of shape (T, K) whose columns follow the
        region order. A table named explicitly whose counterpart is missing is an error.
    bin_frames : int
        Frames summed per bin before correlating (default 1: no binning).
    align_motion : bool
        When both are folders with motion files, move the truth regions by the offset of the
        motion-corrected frame (:func:`motion_offset`) before matching (default True).

    Returns
    -------
    dict
        ``truth`` / ``pred`` (source, n_regions), ``shape`` (image rows, cols used for IoU),
        ``neurofinder`` (see :func:`neurofinder_metrics`), ``iou`` (see :func:`iou_metrics`),
        ``spikes`` and ``traces`` (see :func:`correlation_metrics`, on the IoU-matched pairs;
        None when no pair of tables is available).

    Raises
    ------
    InputError
        A file is missing or malformed, or the truth holds no region.
    ConfigError
        A threshold or ``bin_frames`` is out of range.
    """
    _check_params(threshold, iou_threshold, bin_frames)
    t_regions, t_found = _as_regions(truth, "truth")
    p_regions, p_found = _as_regions(pred, "pred")
    if len(t_regions) == 0:
        raise InputError(f"{t_regions.source}: the truth holds no region; nothing to score against")
    offset = motion_offset(truth, pred) if align_motion else None
    if offset is not None and offset != (0, 0):
        t_regions = _shifted(t_regions, offset)
    shape = [max(t_regions.extent[0], p_regions.extent[0]), max(t_regions.extent[1], p_regions.extent[1])]

    result = {
        "truth": {"source": t_regions.source, "n_regions": len(t_regions)},
        "motion_offset": list(offset) if offset is not None else None,
        "pred": {"source": p_regions.source, "n_regions": len(p_regions)},
        "shape": shape,
        "neurofinder": neurofinder_metrics(t_regions, p_regions, threshold=threshold),
        "iou": iou_metrics(t_regions, p_regions, iou_threshold=iou_threshold),
    }
    pairs = result["iou"]["pairs"]
    t_ids = [p[0] for p in pairs]
    p_ids = [p[1] for p in pairs]
    for kind, t_given, p_given in (("spikes", truth_spikes, pred_spikes),
                                   ("traces", truth_traces, pred_traces)):
        t_src = t_given if t_given is not None else t_found[kind]
        p_src = p_given if p_given is not None else p_found[kind]
        if t_src is None or p_src is None:
            if t_given is not None or p_given is not None:
                missing = "truth" if t_src is None else "pred"
                raise InputError(f"{kind} correlation needs both tables; no {missing} {kind} "
                                 f"given or found next to the {missing} regions")
            result[kind] = None
            continue
        t_name = str(t_src) if isinstance(t_src, (str, Path)) else f"truth {kind}"
        p_name = str(p_src) if isinstance(p_src, (str, Path)) else f"pred {kind}"
        if not pairs:  # nothing matched (e.g. an empty prediction, whose tables have no columns)
            result[kind] = {"bin": int(bin_frames), "n_neurons": 0, "mean": float("nan"),
                            "median": float("nan"), "n_undefined": 0, "per_neuron": [],
                            "truth_source": t_name, "pred_source": p_name}
            continue
        result[kind] = correlation_metrics(_as_table(t_src, t_regions, t_name),
                                           _as_table(p_src, p_regions, p_name),
                                           t_ids, p_ids, bin_frames=int(bin_frames),
                                           names=(t_name, p_name))
        result[kind]["truth_source"] = t_name
        result[kind]["pred_source"] = p_name
    return result


# --------------------------------------------------------------------------- report

def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}"


def format_table(result: dict) -> str:
    """A short human-readable table of a :func:`score` result."""
    nf, io = result["neurofinder"], result["iou"]
    lines = [
        f"truth: {result['truth']['n_regions']} regions ({result['truth']['source']})",
        f"pred:  {result['pred']['n_regions']} regions ({result['pred']['source']})",
        "",
        f"Neurofinder (centre distance < {nf['threshold']:g} px, greedy): {nf['n_matched']} matched",
        f"  recall     {_fmt(nf['recall'])}",
        f"  precision  {_fmt(nf['precision'])}",
        f"  combined   {_fmt(nf['combined'])}",
        f"  inclusion  {_fmt(nf['inclusion'])}",
        f"  exclusion  {_fmt(nf['exclusion'])}",
        "",
        f"IoU (one-to-one, IoU >= {io['threshold']:g}): {io['n_matched']} matched",
        f"  recall     {_fmt(io['recall'])}",
        f"  precision  {_fmt(io['precision'])}",
        f"  F1         {_fmt(io['f1'])}",
        f"  mean IoU   {_fmt(io['mean_iou'])}",
    ]
    for kind in ("spikes", "traces"):
        c = result.get(kind)
        if c is None:
            continue
        extra = f", {c['n_undefined']} undefined (constant)" if c["n_undefined"] else ""
        lines += ["", f"{kind.capitalize()} correlation on IoU-matched neurons "
                      f"(bin {c['bin']} frame{'s' if c['bin'] != 1 else ''}): {c['n_neurons']} neurons{extra}",
                  f"  mean r     {_fmt(c['mean'])}",
                  f"  median r   {_fmt(c['median'])}"]
    return "\n".join(lines)
