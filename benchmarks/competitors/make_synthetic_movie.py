"""Write a small synthetic calcium movie (Gaussian cells with spikes) for smoke-testing the runners.

Usage: python make_synthetic_movie.py OUTDIR [--T 1000] [--size 128] [--cells 12] [--fps 10] [--seed 0]

Writes OUTDIR/movie.tif (uint16, (T, H, W)), OUTDIR/truth_regions.json (Neurofinder format,
pixels where the footprint exceeds 20% of its peak) and OUTDIR/truth_spikes.csv
(``frame,time_s,1,...,N`` like the runners' spikes.csv).
Numpy + tifffile only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def make_movie(T=1000, size=128, n_cells=12, fps=10.0, radius=3.0, tau_s=0.5, rate_hz=0.3,
               seed=0):
    """Return (movie uint16 (T, size, size), footprints (n_cells, size, size), spikes (T, n_cells))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    margin = 4 * radius
    centers = []
    while len(centers) < n_cells:
        c = rng.uniform(margin, size - margin, 2)
        if all(np.hypot(*(c - d)) > 4 * radius for d in centers):
            centers.append(c)
    A = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2)) for cy, cx in centers])
    S = (rng.random((T, n_cells)) < rate_hz / fps).astype(np.float64)
    g = np.exp(-1.0 / (tau_s * fps))
    C = np.zeros_like(S)
    for t in range(T):
        C[t] = (g * C[t - 1] if t else 0.0) + S[t]
    background = 200.0 + 30.0 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 3) ** 2))
    signal = np.tensordot(100.0 * (0.5 + C), A, axes=(1, 0))  # cells have a resting brightness too
    Y = background[None] + signal + rng.normal(0.0, 10.0, (T, size, size))
    return np.clip(np.rint(Y), 0, 65535).astype(np.uint16), A, S


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cells", type=int, default=12)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import tifffile

    out = Path(a.outdir)
    out.mkdir(parents=True, exist_ok=True)
    Y, A, S = make_movie(a.T, a.size, a.cells, a.fps, seed=a.seed)
    tifffile.imwrite(out / "movie.tif", Y, imagej=True)
    regions = [{"id": k + 1, "coordinates": np.argwhere(A[k] > 0.2).tolist()} for k in range(len(A))]
    (out / "truth_regions.json").write_text(json.dumps(regions))
    frames = np.arange(a.T)
    table = np.column_stack([frames, frames / a.fps, S])
    np.savetxt(out / "truth_spikes.csv", table, delimiter=",", fmt=["%d", "%.6f"] + ["%d"] * S.shape[1],
               header=",".join(["frame", "time_s"] + [str(k + 1) for k in range(S.shape[1])]),
               comments="")
    print(f"wrote {out/'movie.tif'} {Y.shape} {Y.dtype}, {len(A)} cells")


if __name__ == "__main__":
    main()
