"""Run Suite2p 1.1.0 on one movie and write calseg-comparable outputs.

Runs INSIDE the Suite2p environment (``bash scripts/suite2p_env.sh`` creates ``.venv-suite2p``)::

    .venv-suite2p/bin/python benchmarks/competitors/suite2p_runner.py MOVIE.tif OUTDIR \\
        --fps F --diameter D [--no-registration] [--threads 2] [--spatial-scale S]

Outputs in OUTDIR:

- ``regions.json``  Neurofinder format, ``[{"id": k, "coordinates": [[row, col], ...]}, ...]``
  for the ROIs Suite2p's built-in classifier calls cells (``iscell[:, 0] == 1``), ids 1..N in
  Suite2p's ROI order. Coordinates are all pixels of the ROI (``stat["ypix"], stat["xpix"]``).
- ``traces.csv``    header ``frame,time_s,1,...,N``; ΔF/F = (F − 0.7·Fneu − F0) / F0 with F0 a
  running 8th percentile of F − 0.7·Fneu over a centred 60 s window (shifted inside the movie at
  its ends; the whole movie when shorter than 60 s).
  Frames where F0 <= 0 are written empty (NaN). ``--dff-denominator raw`` divides by the same
  running percentile of raw F instead (use it when the neuropil is nearly as bright as the cells,
  e.g. the Thunder vS1 movie, where F0 of the corrected trace reaches 0).
- ``spikes.csv``    same layout; Suite2p's ``spks`` (its own OASIS on its own baseline-corrected
  trace; arbitrary units, and halved for uint16 input because Suite2p converts uint16 frames
  with ``// 2``).
- ``motion.csv``    with registration only: ``frame,dy,dx``, the rigid corrections in calseg's
  convention (``-yoff``, ``-xoff``: a frame's content displaced by d is corrected by about −d plus
  a constant), so ``calseg score`` can place the truth in Suite2p's registered frame as it does for
  calseg's.
- ``timing.json``   wall seconds, CPU seconds (this process and its children), peak RSS,
  Suite2p's per-stage ``plane_times``, counts.
- ``settings.json`` the exact Suite2p ``db`` and ``settings`` dictionaries used.
- ``suite2p/``      Suite2p's own output folder (stat.npy, F.npy, ..., data.bin).

The numpy-only helpers (``regions_from_stat``, ``dff_running_percentile``, ``write_table``) do
not import Suite2p or torch, so they are testable from calseg's environment.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

NEUROPIL_COEFFICIENT = 0.7
BASELINE_PERCENTILE = 8.0
BASELINE_WINDOW_S = 60.0


# ----------------------------------------------------------------------------------------------
# format helpers (numpy only)
# ----------------------------------------------------------------------------------------------
def regions_from_stat(stat, iscell):
    """Neurofinder regions for the ROIs classified as cells.

    Parameters
    ----------
    stat : sequence of dict
        Suite2p ROI statistics; each needs integer arrays ``"ypix"`` and ``"xpix"``.
    iscell : ndarray of shape (n_rois, 2) or (n_rois,)
        Suite2p classifier output; column 0 (or the vector) is 1 for cells.

    Returns
    -------
    regions : list of dict
        ``{"id": k, "coordinates": [[row, col], ...]}`` with k = 1..N in ROI order.
    keep : ndarray of shape (N,), int
        Indices into ``stat`` of the kept ROIs.
    """
    iscell = np.asarray(iscell)
    flag = iscell[:, 0] if iscell.ndim == 2 else iscell
    if len(flag) != len(stat):
        raise ValueError(f"iscell has {len(flag)} rows but stat has {len(stat)} ROIs")
    keep = np.flatnonzero(flag > 0.5)
    regions = []
    for k, i in enumerate(keep, start=1):
        y = np.asarray(stat[i]["ypix"], dtype=np.int64)
        x = np.asarray(stat[i]["xpix"], dtype=np.int64)
        coords = np.unique(np.stack([y, x], axis=1), axis=0)  # sorted, no duplicates
        regions.append({"id": k, "coordinates": coords.tolist()})
    return regions, keep


def running_percentile(x, window, q):
    """Running percentile along the last axis over a centred window kept inside the trace.

    Parameters
    ----------
    x : ndarray of shape (N, T)
    window : int, >= 1
        Window length in samples (clipped to T).
    q : float in [0, 100]

    Returns
    -------
    ndarray of shape (N, T)
        ``out[:, t] = percentile(x[:, a : a + window], q)`` with
        ``a = clip(t - window // 2, 0, T - window)``: the window is centred on t and shifted
        (not shortened) at the ends, so every estimate uses ``window`` samples.
    """
    x = np.asarray(x, dtype=np.float64)
    N, T = x.shape
    window = int(max(1, min(window, T)))
    h = window // 2
    out = np.empty_like(x)
    for t in range(T):
        a = min(max(0, t - h), T - window)
        out[:, t] = np.percentile(x[:, a:a + window], q, axis=1)
    return out


def dff_running_percentile(F, Fneu, fs, *, neuropil_coefficient=NEUROPIL_COEFFICIENT,
                           percentile=BASELINE_PERCENTILE, window_s=BASELINE_WINDOW_S,
                           denominator="corrected"):
    """ΔF/F of neuropil-corrected traces against a running-percentile baseline.

    Parameters
    ----------
    F, Fneu : ndarray of shape (N, T)
        ROI and neuropil fluorescence.
    fs : float
        Frame rate in Hz.
    denominator : {"corrected", "raw"}
        Divide by the baseline of the neuropil-corrected trace (default) or by the same running
        percentile of the raw ROI trace F, which stays positive when the neuropil is nearly as
        bright as the cell.

    Returns
    -------
    dff : ndarray of shape (N, T)
        NaN where the denominator is not positive.
    baseline : ndarray of shape (N, T)
        The running baseline F0 of the corrected trace (subtracted in the numerator).

    Notes
    -----
    Fc = F − c·Fneu, F0 = running ``percentile`` of Fc over round(window_s·fs) frames (centred, shifted
    inside the trace at the ends; the whole trace when it is shorter than the window),
    ΔF/F = (Fc − F0) / F0 (``denominator="corrected"``) or (Fc − F0) / F0raw with F0raw the
    same running percentile of F (``denominator="raw"``).
    """
    if denominator not in ("corrected", "raw"):
        raise ValueError(f"denominator must be 'corrected' or 'raw', got {denominator!r}")
    Fc = np.asarray(F, dtype=np.float64) - neuropil_coefficient * np.asarray(Fneu, dtype=np.float64)
    if Fc.shape[1] == 0:
        return Fc.copy(), Fc.copy()
    window = int(round(window_s * fs))
    F0 = running_percentile(Fc, window, percentile)
    den = F0 if denominator == "corrected" else running_percentile(F, window, percentile)
    with np.errstate(divide="ignore", invalid="ignore"):
        dff = np.where(den > 0, (Fc - F0) / den, np.nan)
    return dff, F0


def write_table(path, values, fs, *, fmt="%.6g"):
    """Write ``frame,time_s,1,...,N`` rows, one per frame.

    Parameters
    ----------
    path : str or Path
    values : ndarray of shape (N, T)
        One row per cell (Suite2p layout); written transposed, one line per frame.
    fs : float
        Frame rate, for ``time_s = frame / fs``.
    """
    values = np.asarray(values, dtype=np.float64)
    N, T = values.shape
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(",".join(["frame", "time_s"] + [str(k) for k in range(1, N + 1)]) + "\n")
        for t in range(T):
            cells = ["" if np.isnan(v) else fmt % v for v in values[:, t]]
            fh.write(",".join([str(t), "%.6f" % (t / fs)] + cells) + "\n")
    tmp.replace(path)


def _write_json(path, obj):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    tmp.replace(path)


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


# ----------------------------------------------------------------------------------------------
# Suite2p run
# ----------------------------------------------------------------------------------------------
def build_settings(fps, diameter, *, registration=True, threads=2, spatial_scale=None, tau=None):
    """Suite2p 1.1.0 ``settings`` dict: defaults plus the few values this benchmark sets."""
    import suite2p

    s = suite2p.default_settings()  # nested dict; run_s2p merges only the top level
    s["torch_device"] = "cpu"
    s["fs"] = float(fps)
    s["diameter"] = [float(diameter), float(diameter)]
    s["run"]["do_registration"] = 1 if registration else 0
    s["classification"]["use_builtin_classifier"] = True  # ignore any ~/.suite2p user classifier
    if tau is not None:
        s["tau"] = float(tau)
    if spatial_scale is not None:
        s["detection"]["sparsery_settings"]["spatial_scale"] = int(spatial_scale)
    return s


def build_db(movie, outdir):
    """Suite2p's db for one TIFF or a list of TIFFs in one folder (read in that order)."""
    import suite2p

    movies = [Path(m).resolve() for m in (movie if isinstance(movie, (list, tuple)) else [movie])]
    db = suite2p.default_db()
    db["data_path"] = [str(movies[0].parent)]
    db["file_list"] = [m.name for m in movies]
    db["input_format"] = "tif"
    db["save_path0"] = str(Path(outdir).resolve())
    db["save_folder"] = "suite2p"
    return db


_CHUNK_FRAMES = 2000


def _prepare_movie(movie, outdir):
    """Return a TIFF Suite2p reads faithfully, converting dtypes it would mangle.

    Suite2p casts non-integer frames with ``astype(int16)`` (truncation, overflow for large
    floats). For float or other non-int16/uint16 input we write OUTDIR/input_int16.tif with a
    linear map of the movie's [min, max] onto [0, 30000]; ΔF/F is invariant to the scale but
    not to the offset, so the offset is recorded in timing.json.
    """
    import tifffile

    with tifffile.TiffFile(movie) as tf:
        dtype = tf.series[0].dtype
        shape = tf.series[0].shape
        n_pages = len(tf.pages)
    if dtype in (np.dtype(np.int16), np.dtype(np.uint16)) and n_pages == shape[0]:
        return Path(movie), {"input_dtype": str(dtype), "input_shape": list(shape), "converted": False}
    if dtype in (np.dtype(np.int16), np.dtype(np.uint16)):
        # an ImageJ hyperstack over 4 GB stores one page and the frames contiguously after it;
        # Suite2p counts pages (it would see one frame): rewrite it as multi-page chunks
        data = tifffile.memmap(movie)
        paths = []
        for k, s0 in enumerate(range(0, shape[0], _CHUNK_FRAMES)):
            path = Path(outdir) / f"input_{k:03d}.tif"
            tifffile.imwrite(path, np.asarray(data[s0:s0 + _CHUNK_FRAMES]))
            paths.append(path)
        del data
        return paths, {"input_dtype": str(dtype), "input_shape": list(shape), "converted": False,
                       "rewritten_as_pages": len(paths)}
    Y = tifffile.imread(movie).astype(np.float64)
    lo, hi = float(Y.min()), float(Y.max())
    scale = 30000.0 / (hi - lo) if hi > lo else 1.0
    Z = np.rint((Y - lo) * scale).astype(np.int16)
    path = Path(outdir) / "input_int16.tif"
    tifffile.imwrite(path, Z)
    return path, {"input_dtype": str(dtype), "input_shape": list(shape), "converted": True,
                  "offset": lo, "scale": scale}


def run(movie, outdir, fps, diameter, *, registration=True, threads=2, spatial_scale=None,
        tau=None, dff_denominator="corrected"):
    """Run Suite2p and write the converted outputs; returns the timing dict."""
    t_wall = time.perf_counter()
    t_cpu = time.process_time()
    import torch
    import suite2p
    from importlib.metadata import version

    torch.set_num_threads(int(threads))
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    s2p_dir = outdir / "suite2p"
    if s2p_dir.exists():
        # run_s2p would silently reuse old binaries and skip registration; start clean.
        shutil.rmtree(s2p_dir)
    movie_in, input_info = _prepare_movie(movie, outdir)
    settings = build_settings(fps, diameter, registration=registration, threads=threads,
                              spatial_scale=spatial_scale, tau=tau)
    Ly, Lx = input_info["input_shape"][-2:]
    block = settings["registration"]["block_size"]
    if settings["registration"]["nonrigid"] and (Ly <= block[0] or Lx <= block[1]):
        # Suite2p 1.1.0 bug: with a single non-rigid block along an axis,
        # nonrigid.transform_data interpolates to size 0 and raises. One block is
        # rigid registration anyway, so switch non-rigid off for such frames.
        settings["registration"]["nonrigid"] = False
        input_info["nonrigid_disabled"] = f"frame {Ly}x{Lx} <= block_size {tuple(block)}"
    db = build_db(movie_in, outdir)
    _write_json(outdir / "settings.json", {"db": db, "settings": settings,
                                            "torch_num_threads": int(threads)})
    from suite2p.run_s2p import logger_setup

    logger_setup(str(outdir))  # Suite2p's log to stderr and OUTDIR/run.log
    suite2p.run_s2p(db=dict(db), settings=settings)
    if isinstance(movie_in, list):           # the rewritten chunks (Suite2p kept its binary)
        for path in movie_in:
            Path(path).unlink(missing_ok=True)

    plane = s2p_dir / "plane0"
    stat = np.load(plane / "stat.npy", allow_pickle=True)
    F = np.load(plane / "F.npy")
    Fneu = np.load(plane / "Fneu.npy")
    spks = np.load(plane / "spks.npy")
    iscell = np.load(plane / "iscell.npy")
    ops = np.load(plane / "ops.npy", allow_pickle=True).item()

    regions, keep = regions_from_stat(stat, iscell)
    _write_json(outdir / "regions.json", regions)
    dff, F0 = dff_running_percentile(F[keep], Fneu[keep], fps, denominator=dff_denominator)
    write_table(outdir / "traces.csv", dff, fps)
    write_table(outdir / "spikes.csv", spks[keep], fps)
    write_motion(outdir / "motion.csv", ops)

    self_ru = resource.getrusage(resource.RUSAGE_SELF)
    child_ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = {
        "tool": "suite2p",
        "versions": {"suite2p": version("suite2p"), "torch": torch.__version__,
                     "python": sys.version.split()[0]},
        "movie": str(Path(movie).resolve()),
        **input_info,
        "wall_s": time.perf_counter() - t_wall,
        "cpu_s": (time.process_time() - t_cpu) + child_ru.ru_utime + child_ru.ru_stime,
        "peak_rss_mb": max(self_ru.ru_maxrss, child_ru.ru_maxrss) / 1024.0,  # Linux: KiB
        "plane_times_s": {k: float(v) for k, v in ops.get("plane_times", {}).items()},
        "n_rois": int(len(stat)),
        "n_cells": int(len(keep)),
        "n_frames": int(F.shape[1]),
        "fps": float(fps),
        "diameter": float(diameter),
        "registration": bool(registration),
        "nonrigid": bool(settings["registration"]["nonrigid"]),
        "tau_s": float(settings["tau"]),
        "spatial_scale_setting": int(settings["detection"]["sparsery_settings"]["spatial_scale"]),
        "torch_num_threads": int(threads),
        "dff_baseline": f"running {BASELINE_PERCENTILE:g}th percentile of F - "
                        f"{NEUROPIL_COEFFICIENT}*Fneu over a centred {BASELINE_WINDOW_S:g} s window",
        "dff_denominator": dff_denominator,
        "n_dff_nan_values": int(np.isnan(dff).sum()),
        "n_cells_with_nonpositive_baseline": int((F0 <= 0).any(axis=1).sum()) if F0.size else 0,
    }
    _write_json(outdir / "timing.json", timing)
    return timing


def write_motion(path, ops):
    """``frame,dy,dx`` = (−yoff, −xoff) per frame when Suite2p registered the movie; else nothing.

    Suite2p's ``yoff``/``xoff`` are the offsets it measured (a frame whose content moved by d
    gets about +d); calseg's ``motion.csv`` holds corrections (about −d), hence the sign.
    """
    yoff, xoff = ops.get("yoff"), ops.get("xoff")
    if yoff is None or xoff is None or len(yoff) == 0:  # no registration: no offsets in ops
        return False
    with open(path, "w") as fh:
        fh.write("frame,dy,dx\n")
        for t, (y, x) in enumerate(zip(np.asarray(yoff, float), np.asarray(xoff, float))):
            fh.write(f"{t},{-y:.4f},{-x:.4f}\n")
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run Suite2p 1.1.0 (CPU) and write calseg-comparable outputs.")
    ap.add_argument("movie", help="TIFF movie (T, H, W)")
    ap.add_argument("outdir")
    ap.add_argument("--fps", type=float, required=True, help="frame rate in Hz (Suite2p 'fs')")
    ap.add_argument("--diameter", type=float, required=True, help="cell diameter in pixels")
    ap.add_argument("--no-registration", action="store_true", help="set run.do_registration = 0")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--spatial-scale", type=int, default=None,
                    help="sparsery spatial_scale (default: Suite2p's 0 = automatic)")
    ap.add_argument("--tau", type=float, default=None,
                    help="indicator decay time in s (default: Suite2p's 1.0)")
    ap.add_argument("--dff-denominator", choices=["corrected", "raw"], default="corrected",
                    help="divide by the baseline of F - 0.7*Fneu (default) or of raw F")
    a = ap.parse_args(argv)
    if not Path(a.movie).is_file():
        ap.error(f"movie {a.movie} does not exist")
    if a.fps <= 0 or a.diameter <= 0 or a.threads < 1:
        ap.error("--fps and --diameter must be > 0 and --threads >= 1")
    timing = run(a.movie, a.outdir, a.fps, a.diameter, registration=not a.no_registration,
                 threads=a.threads, spatial_scale=a.spatial_scale, tau=a.tau,
                 dff_denominator=a.dff_denominator)
    print(json.dumps({k: timing[k] for k in ("n_rois", "n_cells", "wall_s", "cpu_s", "peak_rss_mb")}))


if __name__ == "__main__":
    main()
