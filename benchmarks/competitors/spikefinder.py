"""Spikefinder loading and scoring, shared by the OASIS runner and calseg's evaluation.

Numpy only (no scipy, no pandas) so it imports in any of the project's environments.

The score follows the spikefinder challenge (Berens et al. 2018; reference
implementation ``codeneuro/spikefinder-python``, ``score(..., method='corr',
downsample=4)``): per neuron, drop the samples where either series is NaN,
sum non-overlapping blocks of ``bin_ms`` (4 samples of 10 ms at 100 Hz,
i.e. 25 Hz), discard an incomplete trailing block, then take the Pearson
correlation of the two block-count series.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SpikefinderSet", "load_spikefinder", "read_padded_csv", "write_padded_csv",
           "bin_counts", "spikefinder_corr"]


@dataclass(frozen=True)
class SpikefinderSet:
    """One spikefinder dataset.

    Attributes
    ----------
    name : str
        Dataset id as in the file names (e.g. ``"4"``).
    calcium : ndarray of shape (T, N)
        Fluorescence traces at 100 Hz, NaN-padded at the end of shorter recordings.
    spikes : ndarray of shape (T, N)
        True spike counts per 10 ms bin, NaN-padded like ``calcium``.
    columns : list of str
        Column names from the CSV header (one per neuron).
    """

    name: str
    calcium: np.ndarray
    spikes: np.ndarray
    columns: list


def read_padded_csv(path):
    """Read a CSV with one header row of column names and NaN (empty) padding.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    data : ndarray of shape (T, N), float64
        Empty cells become NaN.
    columns : list of str
    """
    path = Path(path)
    with open(path, newline="") as fh:
        header = fh.readline().strip()
    if not header:
        raise ValueError(f"CSV {path}: first line must be a header of column names, got an empty line")
    columns = [c.strip().strip('"') for c in header.split(",")]
    data = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.float64)
    data = np.atleast_1d(data)
    if data.ndim == 1:
        # one column (T,) or one row (N,)
        data = data[:, None] if len(columns) == 1 else data[None, :]
    if data.shape[1] != len(columns):
        raise ValueError(f"CSV {path}: header names {len(columns)} columns but rows have {data.shape[1]}")
    return data, columns


def write_padded_csv(path, data, columns, *, fmt="%.6g"):
    """Write a (T, N) array with a header row; NaN cells are written empty.

    Parameters
    ----------
    path : str or Path
    data : ndarray of shape (T, N)
    columns : sequence of str, length N
    fmt : str
        printf-style format for finite values.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(columns):
        raise ValueError(f"data must have shape (T, {len(columns)}), got {data.shape}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write(",".join(str(c) for c in columns) + "\n")
        for row in data:
            fh.write(",".join("" if np.isnan(v) else fmt % v for v in row) + "\n")
    tmp.replace(path)


def load_spikefinder(directory, *, datasets=None):
    """Load the spikefinder ``{k}.train.calcium.csv`` / ``{k}.train.spikes.csv`` pairs in a folder.

    Parameters
    ----------
    directory : str or Path
        Folder holding the CSVs (e.g. ``/work/shared/data/spikefinder_train``).
    datasets : iterable of str, optional
        Dataset ids to load; default all pairs found, sorted numerically.

    Returns
    -------
    list of SpikefinderSet
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"spikefinder directory {directory} does not exist")
    found = sorted((m.group(1) for p in directory.glob("*.train.calcium.csv")
                    if (m := re.fullmatch(r"(\w+)\.train\.calcium\.csv", p.name))),
                   key=lambda s: (len(s), s))
    names = found if datasets is None else [str(d) for d in datasets]
    out = []
    for name in names:
        cal, ccols = read_padded_csv(directory / f"{name}.train.calcium.csv")
        spk, scols = read_padded_csv(directory / f"{name}.train.spikes.csv")
        if cal.shape != spk.shape or ccols != scols:
            raise ValueError(f"dataset {name}: calcium {cal.shape} and spikes {spk.shape} do not match")
        out.append(SpikefinderSet(name=name, calcium=cal, spikes=spk, columns=ccols))
    return out


def bin_counts(x, factor):
    """Sum non-overlapping blocks of ``factor`` samples, dropping an incomplete last block.

    Parameters
    ----------
    x : ndarray of shape (T,)
    factor : int, >= 1

    Returns
    -------
    ndarray of shape (T // factor,)
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor}")
    n = (x.size // factor) * factor
    return x[:n].reshape(-1, factor).sum(axis=1)


def spikefinder_corr(pred, truth, fs=100.0, bin_ms=40.0):
    """Spikefinder correlation score per neuron.

    Parameters
    ----------
    pred : ndarray of shape (T,) or (T, N)
        Predicted spike rate / counts per sample (any non-negative scale).
    truth : ndarray of the same shape
        True spike counts per sample.
    fs : float
        Sampling rate of both series in Hz.
    bin_ms : float
        Width of the counting bins in ms; ``bin_ms * fs / 1000`` must be a whole number of samples.

    Returns
    -------
    float or ndarray of shape (N,)
        Pearson r per column (a float for 1-D input). NaN where a binned series is constant
        or fewer than two bins remain.

    Notes
    -----
    For each column, samples where either input is NaN are removed, the remaining samples are
    summed in blocks of ``k = bin_ms * fs / 1000`` (incomplete trailing block dropped), and
    r = cov(p, t) / (std(p) std(t)) is computed on the block sums.
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")
    kf = bin_ms * fs / 1000.0
    k = int(round(kf))
    if k < 1 or abs(kf - k) > 1e-9:
        raise ValueError(f"bin_ms * fs / 1000 must be a whole number >= 1 of samples, got {kf}")
    one_d = pred.ndim == 1
    P = pred[:, None] if one_d else pred
    Y = truth[:, None] if one_d else truth
    r = np.full(P.shape[1], np.nan)
    for j in range(P.shape[1]):
        ok = ~(np.isnan(P[:, j]) | np.isnan(Y[:, j]))
        p = bin_counts(P[ok, j], k)
        t = bin_counts(Y[ok, j], k)
        if p.size < 2:
            continue
        p = p - p.mean()
        t = t - t.mean()
        den = np.sqrt((p @ p) * (t @ t))
        if den > 0:
            r[j] = (p @ t) / den
    return float(r[0]) if one_d else r
