"""Accuracy of calseg's motion estimate against the true shifts of simulated recordings.

Run from the repository root on folders written by ``calseg simulate`` (with motion)::

    python benchmarks/motion_accuracy.py /tmp/mot/s128_21 /tmp/mot/s256_21 [--mode rigid,piecewise]
                                         [--json out.json] [--option name=value ...]

For each recording (a folder holding ``movie.tif`` and ``truth/motion.csv``) and each mode, the
motion is estimated with :func:`calseg.motion.estimate_motion` and compared with the truth.

Error definition
----------------
``calseg simulate`` writes the *content* displacement ``d_t`` of every frame
(``frame_t(y, x) = reference(y - dy_t, x - dx_t)``); ``estimate_motion`` reports the correction
to apply, ``shifts[t] ~= -d_t``. The reference image is built from the recording, so its origin
is arbitrary: a constant offset between estimate and truth is not an error. The per-frame error
is therefore ``e_t = shifts[t] + d_t - mean_t(shifts + d)`` (the mean difference is subtracted
per axis), and the figures are ``rms_y = sqrt(mean(e_y^2))``, ``rms_x`` likewise and
``rms = sqrt(mean(e_y^2 + e_x^2))`` (total, both axes together). The largest ``|e|`` and the
95th percentile of ``|e|`` are printed too. Piecewise estimates are scored on their rigid
``shifts`` and, in the ``blocks`` column, on every block's displacement (the simulated motion is
rigid, so every block should see it): the RMS over frames and blocks, each block's own mean
difference removed (a static warp of the reference is no more an error than an offset).

Time is the wall-clock time of ``estimate_motion`` alone (reading the TIFF included, writing
nothing). Prints one table row per recording and mode; never asserts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def read_truth(folder: Path) -> np.ndarray:
    """True content displacements ``(dy, dx)`` per frame, shape (T, 2), from ``truth/motion.csv``."""
    table = np.loadtxt(folder / "truth" / "motion.csv", delimiter=",", skiprows=1, ndmin=2)
    return table[:, 1:3]


def shift_errors(correction, content_shift) -> dict:
    """RMS error of an estimated correction against true content displacements, offset removed.

    Parameters
    ----------
    correction : ndarray of shape (T, 2)
        Estimated displacement to apply to each frame (``MotionEstimate.shifts``).
    content_shift : ndarray of shape (T, 2)
        True displacement of each frame's content (``truth/motion.csv``).

    Returns
    -------
    dict with ``rms_y, rms_x, rms`` (total), ``p95`` and ``max`` of the per-frame error norm, and
    ``offset_y, offset_x`` (the subtracted mean difference), all in px.
    """
    e = np.asarray(correction, dtype=np.float64) + np.asarray(content_shift, dtype=np.float64)
    offset = e.mean(axis=0)
    e = e - offset
    norm = np.sqrt(np.sum(e**2, axis=1))
    return {
        "rms_y": float(np.sqrt(np.mean(e[:, 0] ** 2))),
        "rms_x": float(np.sqrt(np.mean(e[:, 1] ** 2))),
        "rms": float(np.sqrt(np.mean(norm**2))),
        "p95": float(np.percentile(norm, 95)),
        "max": float(norm.max()),
        "offset_y": float(offset[0]),
        "offset_x": float(offset[1]),
    }


def _parse_option(text: str):
    name, _, value = text.partition("=")
    if not name or not _:
        raise argparse.ArgumentTypeError(f"--option {text!r}: name=value is allowed")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def measure(folder: Path, mode: str, options: dict) -> dict:
    """Estimate motion of ``folder/movie.tif`` in ``mode`` and score it against the truth."""
    from calseg.io.tiff import read_movie
    from calseg.motion import estimate_motion

    truth = read_truth(folder)
    movie = read_movie(folder / "movie.tif")
    t0 = time.perf_counter()
    est = estimate_motion(movie, mode=mode, **options)
    elapsed = time.perf_counter() - t0
    T, H, W = movie.shape
    row = {"movie": folder.name, "size": f"{H}x{W}x{T}", "mode": mode, "time_s": elapsed,
           "temporal_window": est.temporal_window, **shift_errors(est.shifts, truth)}
    if est.block_shifts is not None:
        e = est.block_shifts.reshape(T, -1, 2) + truth[:, None, :]
        e = e - e.mean(axis=0)
        row["block_rms"] = float(np.sqrt(np.mean(np.sum(e**2, axis=2))))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recordings", nargs="+", type=Path, help="folders written by calseg simulate")
    ap.add_argument("--mode", default="rigid", help="comma-separated: rigid, piecewise")
    ap.add_argument("--option", action="append", type=_parse_option, default=[],
                    help="extra estimate_motion keyword, name=value (value parsed as JSON)")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    options = dict(args.option)
    rows = []
    print(f"{'movie':<14} {'size':<14} {'mode':<9} {'rms_y':>6} {'rms_x':>6} {'rms':>6} "
          f"{'p95':>6} {'max':>6} {'blocks':>6} {'win':>3} {'time_s':>7}", flush=True)
    for folder in args.recordings:
        if not (folder / "truth" / "motion.csv").is_file():
            print(f"{folder}: no truth/motion.csv (simulated without motion?)", file=sys.stderr)
            continue
        for mode in args.mode.split(","):
            r = measure(folder, mode.strip(), options)
            rows.append(r)
            blocks = f"{r['block_rms']:6.3f}" if "block_rms" in r else f"{'-':>6}"
            print(f"{r['movie']:<14} {r['size']:<14} {r['mode']:<9} {r['rms_y']:6.3f} {r['rms_x']:6.3f} "
                  f"{r['rms']:6.3f} {r['p95']:6.3f} {r['max']:6.3f} {blocks} {r['temporal_window']:3d} "
                  f"{r['time_s']:7.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
