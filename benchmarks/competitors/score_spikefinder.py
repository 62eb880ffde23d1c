"""Score predicted spikes against spikefinder truth: per-neuron Pearson r at 25 Hz.

    python score_spikefinder.py PRED.csv TRUTH.csv [--fs 100] [--bin-ms 40]

Both CSVs: header of column names, one column per neuron, NaN padding allowed; columns are
matched by name. Prints one line per neuron and the mean. Numpy only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spikefinder import read_padded_csv, spikefinder_corr  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pred_csv")
    ap.add_argument("truth_csv")
    ap.add_argument("--fs", type=float, default=100.0)
    ap.add_argument("--bin-ms", type=float, default=40.0)
    a = ap.parse_args(argv)
    P, pc = read_padded_csv(a.pred_csv)
    Y, yc = read_padded_csv(a.truth_csv)
    missing = [c for c in yc if c not in pc]
    if missing:
        ap.error(f"prediction lacks columns {missing}")
    if P.shape[0] != Y.shape[0]:
        ap.error(f"row counts differ: prediction {P.shape[0]}, truth {Y.shape[0]}")
    P = P[:, [pc.index(c) for c in yc]]
    r = spikefinder_corr(P, Y, fs=a.fs, bin_ms=a.bin_ms)
    for c, v in zip(yc, r):
        print(f"{c}\t{v:.4f}")
    print(f"mean\t{np.nanmean(r):.4f}")


if __name__ == "__main__":
    main()
