"""Deconvolve every column of a calcium CSV with OASIS (default settings) and write spikes.

Runs in an environment with ``oasis-deconv`` (``.venv-suite2p`` has it)::

    .venv-suite2p/bin/python benchmarks/competitors/oasis_runner.py CALCIUM.csv OUT_SPIKES.csv --fps F

Input: header row of column names, one column per neuron, one row per frame; trailing NaN
(empty cells) pad shorter recordings. Per column, the trailing NaN are dropped, the rest is
deconvolved, and the output column is NaN-padded back to the same length.

OASIS call (oasis-deconv 0.3.x): ``oasis.functions.deconvolve(y, penalty=1)`` — AR(1) with
g estimated from the autocovariance, noise sn estimated from the power spectrum, baseline b
optimised (non-negative), L1 penalty under the noise constraint ||c − y||² = sn²·T; i.e. the
package defaults (README/demo: ``c, s, b, g, lam = deconvolve(y, penalty=1)``). ``--fps`` is only
used when ``--tau-d`` fixes the decay time (then g = exp(−1/(tau_d·fps))); with the default
estimated g the frame rate does not enter the computation and is recorded in the sidecar JSON.

Also writes OUT_SPIKES.json: per-column g, b, lam, sn-free summary, and timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spikefinder import read_padded_csv, write_padded_csv  # noqa: E402


def trailing_valid_length(x):
    """Length of ``x`` without its trailing NaN run.

    Parameters
    ----------
    x : ndarray of shape (T,)

    Returns
    -------
    int
        Index one past the last non-NaN value (0 when all NaN).
    """
    ok = np.flatnonzero(~np.isnan(np.asarray(x, dtype=np.float64)))
    return int(ok[-1]) + 1 if ok.size else 0


def deconvolve_columns(Y, *, fps=None, tau_d=None):
    """OASIS AR(1) on each column, dropping and restoring trailing NaN padding.

    Parameters
    ----------
    Y : ndarray of shape (T, N)
        Calcium traces, NaN-padded at the end.
    fps : float, optional
        Frame rate; required when ``tau_d`` is given.
    tau_d : float, optional
        Fixed decay time in seconds; default: estimate g per trace.

    Returns
    -------
    S : ndarray of shape (T, N)
        Deconvolved activity, NaN where the input was trailing padding.
    info : list of dict
        Per column: n_valid, g, b, lam, seconds.
    """
    from oasis.functions import deconvolve

    Y = np.asarray(Y, dtype=np.float64)
    S = np.full_like(Y, np.nan)
    info = []
    for j in range(Y.shape[1]):
        n = trailing_valid_length(Y[:, j])
        y = Y[:n, j]
        if n == 0:
            info.append({"n_valid": 0})
            continue
        if np.isnan(y).any():
            raise ValueError(f"column {j}: NaN inside the trace (only trailing NaN padding is allowed)")
        t0 = time.perf_counter()
        if tau_d is None:
            c, s, b, g, lam = deconvolve(y, penalty=1)
        else:
            c, s, b, g, lam = deconvolve(y, tau_d=tau_d, framerate=fps, penalty=1)
        S[:n, j] = s
        info.append({"n_valid": n, "g": [float(v) for v in np.atleast_1d(g)], "b": float(b),
                     "lam": float(lam), "seconds": time.perf_counter() - t0})
    return S, info


def main(argv=None):
    ap = argparse.ArgumentParser(description="OASIS (AR(1), default settings) on each CSV column.")
    ap.add_argument("calcium_csv")
    ap.add_argument("out_csv")
    ap.add_argument("--fps", type=float, required=True, help="frame rate in Hz")
    ap.add_argument("--tau-d", type=float, default=None,
                    help="fix the decay time (s) instead of estimating g per trace")
    a = ap.parse_args(argv)
    if a.fps <= 0:
        ap.error(f"--fps must be > 0, got {a.fps}")
    if a.tau_d is not None and a.tau_d <= 0:
        ap.error(f"--tau-d must be > 0, got {a.tau_d}")
    from importlib.metadata import version

    t0 = time.perf_counter()
    c0 = time.process_time()
    Y, cols = read_padded_csv(a.calcium_csv)
    S, info = deconvolve_columns(Y, fps=a.fps, tau_d=a.tau_d)
    write_padded_csv(a.out_csv, S, cols)
    meta = {"tool": "oasis", "oasis_deconv": version("oasis-deconv"),
            "call": "deconvolve(y, penalty=1)" if a.tau_d is None
            else f"deconvolve(y, tau_d={a.tau_d}, framerate={a.fps}, penalty=1)",
            "fps": a.fps, "input": str(Path(a.calcium_csv).resolve()),
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "columns": dict(zip(cols, info))}
    out_json = Path(a.out_csv).with_suffix(".json")
    tmp = out_json.with_name(out_json.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out_json)
    print(f"{len(cols)} columns, {meta['wall_s']:.2f} s -> {a.out_csv}")


if __name__ == "__main__":
    main()
