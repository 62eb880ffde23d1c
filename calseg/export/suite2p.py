"""A Suite2p-compatible folder: ``suite2p/plane0/`` that the Suite2p GUI (1.x and 0.x) opens.

Written files (N neurons, T frames, H x W field of view):

* ``stat.npy`` — object array of N dicts: ``ypix``, ``xpix`` (int64 pixel rows/cols of the
  neuron's whole mask from ``regions.json``), ``lam`` (float32 footprint weights there), ``med``,
  ``npix``, ``soma_crop`` (all True), ``npix_soma``, ``mrs``, ``mrs0``, ``compact``, ``radius``,
  ``aspect_ratio``, ``footprint``, ``npix_norm``, ``npix_norm_no_crop``, ``overlap``, ``snr``,
  ``skew``, ``std``, ``iplane`` — the shape statistics by Suite2p's definitions
  (``detection/stats.py``), computed here.
* ``F.npy`` (N, T) float32 — fluorescence reconstructed from calseg's ΔF/F as
  F = F0 (1 + ΔF/F), with F0 per neuron chosen so that the time average of F equals the
  neuron's average over its mask in ``mean.tif`` (F0 = 1 when ``mean.tif`` is absent).
* ``Fneu.npy`` (N, T) float32 — zeros: calseg's ΔF/F already has the neuropil and background
  removed by the model, so ``F - 0.7 * Fneu`` = F and Suite2p's ΔF/F of it gives back calseg's.
* ``spks.npy`` (N, T) float32 — calseg's inferred spikes (calcium increments, ΔF/F units).
* ``iscell.npy`` (N, 2) float64 — column 0 = 1 (calseg kept every neuron), column 1 = the
  neuron's score divided by the largest score (1 for the strongest neuron).
* ``ops.npy`` — one dict with what the GUI reads on load (``Ly``, ``Lx``, ``nframes``, ``fs``,
  ``tau``, ``diameter``, ``meanImg``, ``meanImgE``, ``Vcorr``, ``xrange``, ``yrange``,
  ``save_path``, ...), plus Suite2p 1.x's split of it into ``db.npy``, ``settings.npy``,
  ``reg_outputs.npy`` and ``detect_outputs.npy`` (what ``suite2p.io.combined`` and the 1.x NWB
  export read).
* ``README.txt`` — these conventions, in the folder.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from .._version import __version__

__all__ = ["write_suite2p", "roi_stats", "enhanced_mean_image"]

README = """\
This folder was written by calseg {version} from the result folder
  {result_dir}
in Suite2p's layout, so that the Suite2p GUI (File > Load processed data > stat.npy) can open it.

What the files hold (N = {n} neurons, T = {t} frames, {h} x {w} pixels):

stat.npy    N dicts. ypix/xpix: each neuron's whole mask (regions.json; masks may overlap,
            'overlap' flags the shared pixels; masks.tif gives a shared pixel to one neuron).
            lam: calseg's footprint weights at those pixels. Shape statistics (med, compact,
            radius, aspect_ratio, npix_norm, ...) follow Suite2p's definitions; soma_crop is all
            True (calseg's masks are somata). snr is calseg's SNR, skew/std those of the
            neuron's dF/F trace. footprint = 0 (Suite2p's value when no spatial scale applies).
F.npy       N x T float32. NOT raw fluorescence: calseg reports dF/F, and F is reconstructed as
            F = F0 * (1 + dF/F), F0 per neuron set so that mean(F) equals the neuron's average
            over its mask in mean.tif{f0_note}.
Fneu.npy    N x T zeros. calseg's dF/F already excludes neuropil and background (they are
            separate terms of its model), so F - 0.7 * Fneu = F; do not subtract anything else.
spks.npy    N x T float32: calseg's inferred spikes (calcium increments per frame, dF/F units),
            not Suite2p/OASIS deconvolution.
iscell.npy  N x 2: column 0 = 1 for every neuron (calseg kept all of them), column 1 = score /
            max(score), a relative strength rather than a classifier probability.
ops.npy     the settings and images the GUI reads (Ly, Lx, nframes, fs, tau, diameter,
            meanImg, meanImgE, Vcorr = calseg's local-correlation image, xrange, yrange, ...);
            db.npy, settings.npy, reg_outputs.npy, detect_outputs.npy hold the same split the
            way Suite2p 1.x writes it. There is no registered binary (data.bin): the GUI's
            registration viewer and "add ROI" need the movie and are unavailable.
Row i of every file is the neuron in row i of neurons.csv; stat[i]['calseg_id'] is its id.
"""


def _median_pixel(ypix, xpix):
    """The mask pixel closest to the (coordinate-wise) median of the mask."""
    ym, xm = np.median(ypix), np.median(xpix)
    i = int(np.argmin((ypix - ym) ** 2 + (xpix - xm) ** 2))
    return [int(ypix[i]), int(xpix[i])]


def roi_stats(ypix, xpix, lam, diameter: float) -> dict:
    """Suite2p's per-ROI shape statistics for one mask.

    Parameters
    ----------
    ypix, xpix : ndarray of shape (n,), int
        Pixel rows and columns.
    lam : ndarray of shape (n,)
        Non-negative pixel weights (footprint).
    diameter : float
        Typical cell diameter in pixels (Suite2p's ``diameter``), the unit of the radii.

    Returns
    -------
    dict
        ``med``, ``npix``, ``mrs``, ``mrs0``, ``compact``, ``radius``, ``aspect_ratio``.

    Notes
    -----
    With d the diameter and distances measured in diameters from the median position:
    ``mrs`` is the mean distance of the mask's pixels, ``mrs0`` that of the ``npix`` grid points
    nearest to a centre (the most compact shape of that size), ``compact = max(1, mrs / mrs0)``.
    With Σ the ``lam``-weighted covariance of the pixel positions (in diameters) and
    r0 >= r1 = 2 sqrt(eig(Σ)): ``radius = r0 d`` and ``aspect_ratio = 2 r0 / (0.01 + r0 + r1)``.
    """
    ypix = np.asarray(ypix, np.float64)
    xpix = np.asarray(xpix, np.float64)
    lam = np.asarray(lam, np.float64)
    d = float(diameter)
    n = ypix.size
    med = _median_pixel(ypix, xpix)
    cy, cx = np.median(ypix), np.median(xpix)
    mrs = float(np.mean(np.hypot((ypix - cy) / d, (xpix - cx) / d)))
    half = int(np.ceil(3 * d))
    gy, gx = np.meshgrid(np.arange(-half, half + 1) / d, np.arange(-half, half + 1) / d, indexing="ij")
    disk = np.sort(np.hypot(gy, gx).ravel())
    mrs0 = float(disk[:n].mean())
    w = np.where(lam > 0, lam, 0.0)
    if w.sum() <= 0:
        w = np.ones(n)
    w = w / w.sum()
    keep = w > 0
    yx = np.stack([ypix[keep] / d, xpix[keep] / d])
    mu = (w[keep] * yx).sum(axis=1)
    dev = (yx - mu[:, None]) * np.sqrt(w[keep])
    cov = dev @ dev.T
    ev = np.sort(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1]
    r0, r1 = 2.0 * np.sqrt(ev)
    return {"med": med, "npix": int(n), "mrs": mrs, "mrs0": mrs0,
            "compact": max(1.0, mrs / (1e-10 + mrs0)), "radius": float(r0 * d),
            "aspect_ratio": float(2 * r0 / (0.01 + r0 + r1))}


def enhanced_mean_image(mean: np.ndarray, diameter: float) -> np.ndarray:
    """Contrast-normalised mean image (Suite2p's ``meanImgE``): local mean removed, local SD divided.

    Parameters
    ----------
    mean : ndarray of shape (H, W)
    diameter : float
        Cell diameter in pixels; the local window is a Gaussian of SD ``diameter``.

    Returns
    -------
    ndarray of shape (H, W), float32, in [0, 1]
        Clipped at -6..6 local SDs and rescaled from its 1st..99th percentile to 0..1.
    """
    from scipy import ndimage as ndi

    m = np.asarray(mean, np.float64)
    s = max(float(diameter), 1.0)
    hp = m - ndi.gaussian_filter(m, s)
    sd = np.sqrt(ndi.gaussian_filter(hp ** 2, s)) + 1e-10
    e = np.clip(hp / (sd + np.median(sd)), -6, 6)
    lo, hi = np.percentile(e, [1, 99])
    return np.clip((e - lo) / (hi - lo + 1e-12), 0, 1).astype(np.float32)


def _skew(x: np.ndarray) -> np.ndarray:
    """Sample skewness of each row of ``x`` (0 for a constant row)."""
    x = np.asarray(x, np.float64)
    xc = x - x.mean(axis=1, keepdims=True)
    sd = np.sqrt((xc ** 2).mean(axis=1))
    m3 = (xc ** 3).mean(axis=1)
    return np.where(sd > 0, m3 / np.maximum(sd, 1e-300) ** 3, 0.0)


def write_suite2p(result_dir, out=None) -> Path:
    """Write a ``calseg run`` result folder as a Suite2p ``plane0`` folder.

    Parameters
    ----------
    result_dir : str or Path
        A ``calseg run`` result folder.
    out : str or Path, optional
        Folder in which ``suite2p/plane0/`` is created; default ``result_dir``. The ``plane0``
        folder is written under a temporary name and renamed into place when complete
        (replacing an earlier export).

    Returns
    -------
    Path
        The ``.../suite2p/plane0`` folder.

    Notes
    -----
    See the module docstring (and the ``README.txt`` written with the files) for what each file
    holds; in short F is reconstructed from ΔF/F, Fneu is zeros and spks are calseg's spikes.
    """
    from .folder import ResultDir, atomic_path

    rd = ResultDir(result_dir)
    out = Path(out) if out is not None else rd.path
    plane = (out / "suite2p" / "plane0").resolve()
    H, W = rd.shape
    ids = rd.ids
    N = len(ids)
    traces = rd.traces.T.astype(np.float32)     # (N, T)
    spikes = rd.spikes.T.astype(np.float32)
    T = traces.shape[1]
    run = rd.run
    resolved = run.get("resolved") or {}
    settings_in = run.get("settings") or {}
    fps = rd.fps or 1.0
    tau = float(resolved.get("tau_s") or settings_in.get("tau") or 1.0)
    diameter = float(resolved.get("cell_diameter_px") or settings_in.get("cell_diameter") or 12.0)

    mean = rd.mean if rd.mean is not None else np.zeros((H, W), np.float32)
    corr = rd.correlation if rd.correlation is not None else np.zeros((H, W), np.float32)
    regions = rd.regions
    count = np.zeros((H, W), np.int32)
    for c in regions:
        count[c[:, 0], c[:, 1]] += 1

    neurons = rd.neurons
    scores = np.array([float(r.get("score") or 0.0) for r in neurons])
    prob = scores / scores.max() if N and scores.max() > 0 else np.ones(N)
    skew = _skew(traces) if T else np.zeros(N)
    std = traces.std(axis=1) if T else np.zeros(N)

    stat = []
    F0 = np.ones(N)
    npix_all = np.array([len(c) for c in regions], np.float64)
    norm = np.median(npix_all[:100]) if N else 1.0
    for k, page in enumerate(rd.iter_footprints(range(N))):
        c = regions[k]
        ypix, xpix = c[:, 0].astype(np.int64), c[:, 1].astype(np.int64)
        lam = page[ypix, xpix].astype(np.float32)
        if not (lam > 0).any():
            lam = np.ones(len(ypix), np.float32)
        lam = np.maximum(lam, 0)
        s = roi_stats(ypix, xpix, lam, diameter) if len(ypix) else \
            {"med": [0, 0], "npix": 0, "mrs": 0.0, "mrs0": 0.0, "compact": 1.0, "radius": 0.0, "aspect_ratio": 1.0}
        if rd.mean is not None and len(ypix):
            roi_mean = float(np.average(mean[ypix, xpix], weights=lam) if lam.sum() > 0 else mean[ypix, xpix].mean())
            denom = 1.0 + float(traces[k].mean()) if T else 1.0
            F0[k] = roi_mean / denom if denom > 0 else roi_mean
        snr = neurons[k].get("snr")
        stat.append({
            "ypix": ypix, "xpix": xpix, "lam": lam, **s,
            "footprint": 0.0,
            "soma_crop": np.ones(len(ypix), bool), "npix_soma": int(len(ypix)),
            "npix_norm": np.float32(len(ypix) / (norm + 1e-10)),
            "npix_norm_no_crop": np.float32(len(ypix) / (norm + 1e-10)),
            "overlap": count[ypix, xpix] > 1,
            "snr": np.float32(snr if isinstance(snr, (int, float)) else np.nan),
            "skew": np.float32(skew[k]), "std": np.float32(std[k]),
            "iplane": 0, "calseg_id": int(ids[k]),
        })
    stat_arr = np.empty(N, dtype=object)
    for k, s in enumerate(stat):
        stat_arr[k] = s
    F = (F0[:, None] * (1.0 + traces)).astype(np.float32)
    Fneu = np.zeros_like(F)
    iscell = np.column_stack([np.ones(N), prob]).astype(np.float64)

    inp = run.get("input") or {}
    data_paths = [str(Path(p).parent) for p in inp.get("paths", [])] or [str(rd.path.resolve())]
    file_list = [str(p) for p in inp.get("paths", [])]
    meanE = enhanced_mean_image(mean, diameter)
    db = {
        "data_path": sorted(set(data_paths)), "file_list": file_list, "input_format": "tif",
        "nplanes": 1, "nrois": 1, "nchannels": 1, "functional_chan": 1, "iplane": 0,
        "Ly": int(H), "Lx": int(W), "nframes": int(T), "batch_size": 500,
        "save_path0": str(out.resolve()), "save_folder": "suite2p", "save_path": str(plane),
        "fast_disk": str(plane), "reg_file": str(plane / "data.bin"),
        "db_path": str(plane / "db.npy"), "settings_path": str(plane / "settings.npy"),
        "frames_per_file": np.array([T]), "frames_per_folder": np.array([T]),
        "meanImg": mean.astype(np.float32), "dx": None, "dy": None, "lines": None,
        "ignore_flyback": None, "subfolders": None, "keep_movie_raw": False,
    }
    settings = {
        "fs": float(fps), "tau": tau, "diameter": np.array([diameter, diameter]),
        "version": f"calseg {__version__}", "torch_device": "cpu",
        "run": {"do_registration": 0, "do_regmetrics": False, "do_detection": False,
                "do_deconvolution": False, "multiplane_parallel": False},
        "io": {"combined": False, "save_mat": False, "save_NWB": False, "save_ops_orig": True,
               "delete_bin": False, "move_bin": False},
        "detection": {"algorithm": "calseg", "soma_crop": False, "max_overlap": 1.0,
                      "npix_norm_min": 0.0, "npix_norm_max": np.inf},
        "extraction": {"neuropil_extract": False, "neuropil_coefficient": 0.7, "allow_overlap": True,
                       "batch_size": 500, "snr_threshold": 0.0, "inner_neuropil_radius": 2,
                       "min_neuropil_pixels": 350, "lam_percentile": 50.0, "circular_neuropil": False},
        "dcnv_preprocess": {"baseline": "maximin", "win_baseline": 60.0, "sig_baseline": 10.0,
                            "prctile_baseline": 8.0},
        "classification": {"classifier_path": None, "use_builtin_classifier": False, "preclassify": 0.0},
    }
    reg_outputs = {"meanImg": mean.astype(np.float32), "meanImgE": meanE,
                   "yrange": [0, int(H)], "xrange": [0, int(W)],
                   "yoff": np.zeros(T, np.int64), "xoff": np.zeros(T, np.int64),
                   "corrXY": np.ones(T, np.float32), "badframes": np.zeros(T, bool),
                   "badframes0": np.zeros(T, bool), "bidiphase": 0.0}
    detect_outputs = {"Vcorr": corr.astype(np.float32), "diameter": np.array([diameter, diameter])}
    ops = {**db, **settings, **reg_outputs, **detect_outputs, "aspect": 1.0,
           "date_proc": datetime.datetime.now(datetime.timezone.utc),
           "calseg_result": str(rd.path.resolve())}

    with atomic_path(plane) as tmp:
        tmp.mkdir()
        np.save(tmp / "stat.npy", stat_arr, allow_pickle=True)
        np.save(tmp / "F.npy", F)
        np.save(tmp / "Fneu.npy", Fneu)
        np.save(tmp / "spks.npy", spikes)
        np.save(tmp / "iscell.npy", iscell)
        np.save(tmp / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
        np.save(tmp / "db.npy", np.array(db, dtype=object), allow_pickle=True)
        np.save(tmp / "settings.npy", np.array(settings, dtype=object), allow_pickle=True)
        np.save(tmp / "reg_outputs.npy", np.array(reg_outputs, dtype=object), allow_pickle=True)
        np.save(tmp / "detect_outputs.npy", np.array(detect_outputs, dtype=object), allow_pickle=True)
        f0_note = "" if rd.mean is not None else " (mean.tif was absent: F0 = 1)"
        (tmp / "README.txt").write_text(README.format(
            version=__version__, result_dir=rd.path.resolve(), n=N, t=T, h=H, w=W, f0_note=f0_note), encoding="utf-8")
    return plane
