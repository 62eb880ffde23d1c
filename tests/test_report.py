"""summary.png / report.html, on result folders synthesised with exactly `calseg run`'s layout.

``make_result_folder`` (also used by tests/test_export.py) writes masks.tif, footprints.tif,
regions.json, neurons.csv, traces.csv, spikes.csv, certificate.json, run.json, mean.tif and
correlation.tif with calseg's own writers, from a seeded random field of elliptical neurons.
"""
from __future__ import annotations

import base64
import re
import time

import numpy as np
import pytest
import tifffile

from calseg.errors import ConfigError, InputError


def make_result_folder(out, *, H=96, W=128, T=300, n=25, fps=10.0, diameter=12.0, seed=0,
                       overlap=True, with_images=True):
    """Write a realistic-looking `calseg run` result folder; return a dict of the ground truth.

    Neurons are elliptical, centres at least ~0.75 diameter apart (neighbours may overlap);
    ids are ordered by decreasing score as the pipeline orders them. Returns masks (H, W) uint16,
    regions (list of (n_k, 2) arrays), footprints (n, H, W), traces and spikes (T, n), scores.
    """
    from calseg.io.outputs import write_frame_table, write_json, write_table
    from calseg.regions import regions_from_coordinates, write_regions_json

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    centres = []
    tries = 0
    min_d = 0.75 * diameter if overlap else 1.3 * diameter
    while len(centres) < n and tries < 200 * n:
        tries += 1
        c = rng.uniform([diameter / 2, diameter / 2], [H - diameter / 2, W - diameter / 2])
        if not centres or np.hypot(*(np.asarray(centres) - c).T).min() >= min_d:
            centres.append(c)
    n = len(centres)
    fps_arr = np.zeros((n, H, W), np.float32)
    whole = []
    windows = []
    half = int(np.ceil(diameter))
    for k, (cy, cx) in enumerate(centres):
        a = diameter / 2 * rng.uniform(0.8, 1.2)
        b = a * rng.uniform(0.7, 1.0)
        th = rng.uniform(0, np.pi)
        y0, y1 = max(0, int(cy) - half), min(H, int(cy) + half + 1)
        x0, x1 = max(0, int(cx) - half), min(W, int(cx) + half + 1)
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        r2 = u ** 2 + v ** 2
        f = np.exp(-1.2 * r2) * (1 - 0.35 * np.exp(-6 * r2))  # dimmer nucleus
        f[r2 > 2.2] = 0
        fps_arr[k, y0:y1, x0:x1] = f / f.max()
        windows.append((slice(y0, y1), slice(x0, x1)))
        whole.append(fps_arr[k][windows[-1]] >= 0.25)
    scores = np.sort(rng.lognormal(0.0, 0.6, n))[::-1]
    masks = np.zeros((H, W), np.uint16)
    best = np.zeros((H, W), np.float32)
    regions = []
    for k, win in enumerate(windows):
        f = fps_arr[k][win]
        take = whole[k] & (f > best[win])
        masks[win][take] = k + 1
        best[win][take] = f[take]
        rr, cc = np.nonzero(whole[k])
        regions.append(np.column_stack([rr + win[0].start, cc + win[1].start]).astype(np.int64))

    t = np.arange(T) / fps
    decay = np.exp(-1.0 / (fps * 1.0))
    spikes = np.zeros((T, n), np.float32)
    traces = np.zeros((T, n), np.float32)
    from scipy.signal import lfilter

    for k in range(n):
        events = rng.random(T) < 0.4 / fps * (1 + (k < n // 3))
        amp = rng.uniform(0.3, 1.2) * (0.5 + scores[k] / scores.max())
        s = events * amp * rng.uniform(0.6, 1.4, T)
        spikes[:, k] = s
        traces[:, k] = lfilter([1.0], [1.0, -decay], s) + 0.04 * rng.standard_normal(T)

    mean = 100 + 15 * np.exp(-((yy - H * 0.3) ** 2 + (xx - W * 0.6) ** 2) / (0.3 * H * W))
    bright = 40 * rng.uniform(0.5, 1.5, n)
    for k, win in enumerate(windows):
        mean[win] += bright[k] * fps_arr[k][win]
    vessel = np.exp(-((yy - 0.4 * xx - H * 0.2) ** 2) / 8.0)
    mean = mean * (1 - 0.4 * vessel) + 3 * rng.standard_normal((H, W))
    corr = np.clip((fps_arr.max(axis=0) * 0.7 if n else 0)
                   + 0.05 * rng.standard_normal((H, W)) + 0.08, -0.1, 1)

    tifffile.imwrite(out / "masks.tif", masks)
    with tifffile.TiffWriter(out / "footprints.tif") as tw:
        if n == 0:  # as the pipeline writes it (tifffile warns about the empty page)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                tw.write(np.zeros((0, H, W), np.float32), compression="zlib")
        for k in range(n):
            tw.write(fps_arr[k], compression="zlib", compressionargs={"level": 1})
    write_regions_json(out / "regions.json", regions_from_coordinates(regions, ids=list(range(1, n + 1))))
    neurons = []
    for k in range(n):
        cy, cx = regions[k].mean(axis=0)
        neurons.append({"id": k + 1, "centroid_y": round(float(cy), 2), "centroid_x": round(float(cx), 2),
                        "area": int(len(regions[k])), "peak_dff": float(traces[:, k].max()),
                        "snr": round(float(3 + 5 * scores[k]), 3), "score": float(scores[k]),
                        "tile": int(k % 4)})
    write_table(out / "neurons.csv", neurons, ["id", "centroid_y", "centroid_x", "area", "peak_dff", "snr",
                                               "score", "tile"])
    names = [str(k + 1) for k in range(n)]
    write_frame_table(out / "traces.csv", traces, names, fps)
    write_frame_table(out / "spikes.csv", spikes, names, fps)
    tiles = [{"tile": i, "status": "certified", "objective": 1000.0 + i, "gap": 0.2 + 0.01 * i,
              "lam": 1.0, "rho_low": 0.999, "rho_up": 1.001} for i in range(4)]
    write_json(out / "certificate.json", {
        "status": "certified", "objective": 4006.0, "gap": 0.86, "relative_gap": 0.86 / 4006.0, "tol": 1e-3,
        "lam": 1.0, "max_rho_low_over_lam": 0.999, "max_rho_up_over_lam": 1.001, "n_tiles": 4,
        "n_certified": 4, "note": "synthetic", "tiles": tiles})
    write_json(out / "run.json", {
        "calseg_version": "0.1.0", "settings": {"fps": fps, "cell_diameter": diameter, "indicator": "gcamp6f"},
        "resolved": {"fps": fps, "cell_diameter_px": diameter, "tau_s": 1.0, "tau_source": "estimated",
                     "lam": 1.0, "tile_size": 72, "tile_overlap": 18, "n_tiles": 4, "workers": 2},
        "shape": [T, H, W], "timings_s": {"summary": 1.5, "tiles": 20.25, "merge": 0.1},
        "peak_rss_bytes": 812_000_000, "n_neurons": n, "wall_seconds": 23.4,
        "input": {"paths": [str(out.parent / "movie.tif")]}})
    if with_images:
        tifffile.imwrite(out / "mean.tif", mean.astype(np.float32))
        tifffile.imwrite(out / "correlation.tif", corr.astype(np.float32))
    return {"masks": masks, "regions": regions, "footprints": fps_arr, "traces": traces, "spikes": spikes,
            "scores": scores, "n": n, "T": T, "H": H, "W": W, "fps": fps, "mean": mean, "corr": corr}


def _has(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


# (a mark, not importorskip: tests/test_export.py imports make_result_folder from here)
pytestmark = pytest.mark.skipif(not _has("matplotlib"), reason="matplotlib (the 'report' extra) is absent")


def _png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_writes_png_and_self_contained_html(tmp_path):
    from calseg.report import write_report

    truth = make_result_folder(tmp_path / "res")
    png, page = write_report(tmp_path / "res")
    assert png == tmp_path / "res" / "summary.png" and page == tmp_path / "res" / "report.html"
    data = png.read_bytes()
    w, h = _png_size(data)
    assert 1500 <= w <= 2600 and 1000 <= h <= 2000
    text = page.read_text(encoding="utf-8")
    # the embedded image is the PNG itself, and nothing is fetched from outside
    m = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert m and base64.b64decode(m.group(1)) == data
    assert not re.search(r"(src|href)=['\"]https?:", text)
    for fact in ("certified", "300 × 96 × 128", "10 Hz", f"{truth['n']}", "1 s (estimated)", "812.0 MB",
                 "23.4 s", "gcamp6f", "2.15e-04"):
        assert fact in text, fact
    # no stray temporary files
    assert sorted(p.name for p in (tmp_path / "res").iterdir() if p.name.startswith(".")) == []


def test_report_into_another_folder_and_without_optional_files(tmp_path):
    from calseg.report import write_report

    make_result_folder(tmp_path / "res", n=6, with_images=False)
    for name in ("certificate.json", "run.json", "footprints.tif"):
        (tmp_path / "res" / name).unlink()
    png, page = write_report(tmp_path / "res", tmp_path / "elsewhere")
    assert png.parent == tmp_path / "elsewhere" and png.stat().st_size > 10_000
    assert "no certificate" in page.read_text(encoding="utf-8")
    assert not (tmp_path / "res" / "summary.png").exists()


def test_report_with_no_neurons(tmp_path):
    from calseg.report import write_report

    make_result_folder(tmp_path / "res", n=0)
    png, page = write_report(tmp_path / "res")
    assert png.stat().st_size > 10_000
    assert "0 neurons" in page.read_text(encoding="utf-8")


def test_report_labels_every_neuron_when_they_fit_and_skips_overlaps_when_dense(tmp_path):
    from calseg.export.folder import ResultDir
    from calseg.report import _choose_labels, render_summary

    make_result_folder(tmp_path / "sparse", n=15, overlap=False)
    drawn = render_summary(ResultDir(tmp_path / "sparse"), tmp_path / "a.png")
    assert drawn["labels_drawn"] == 15
    # a dense field with 3-digit ids at a large font: the labels chosen never overlap, the strongest
    # neuron always gets its id, and every skipped id would have overlapped a chosen one
    make_result_folder(tmp_path / "dense", H=160, W=160, T=30, n=140, diameter=10.0, seed=2)
    rd = ResultDir(tmp_path / "dense")
    font, pt_per_px = 9.0, 2.0
    order = list(range(rd.n_neurons))
    chosen = _choose_labels(rd, order, font, pt_per_px)
    assert chosen[0] == 0 and 20 < len(chosen) < rd.n_neurons

    def box(k):
        r = rd.neurons[k]
        w = 0.62 * font / pt_per_px * len(str(k + 1)) / 2 + 0.3
        h = 0.5 * font / pt_per_px + 0.3
        return r["centroid_x"] - w, r["centroid_x"] + w, r["centroid_y"] - h, r["centroid_y"] + h

    def overlap(a, b):
        return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]

    boxes = [box(k) for k in chosen]
    assert not any(overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    for k in set(order) - set(chosen):
        assert any(overlap(box(k), b) for b in boxes)


def test_report_500_neurons_at_512_is_fast_and_legible(tmp_path):
    from calseg.export.folder import ResultDir
    from calseg.report import render_summary

    truth = make_result_folder(tmp_path / "big", H=512, W=512, T=150, n=520, diameter=12.0, seed=3)
    assert truth["n"] >= 480
    import matplotlib.backends.backend_agg  # noqa: F401  (imports are not the report's cost)
    import matplotlib.figure  # noqa: F401
    import matplotlib.textpath  # noqa: F401
    t0 = time.process_time()   # CPU time: the shared test machine's load does not count
    drawn = render_summary(ResultDir(tmp_path / "big"), tmp_path / "summary.png")
    elapsed = time.process_time() - t0
    assert elapsed < 6.0, elapsed
    assert drawn["label_font_pt"] >= 3.5                  # readable when zoomed, not microscopic
    assert 0.9 * truth["n"] <= drawn["labels_drawn"] <= truth["n"]
    assert (tmp_path / "summary.png").stat().st_size < 4_000_000


def test_report_refuses_bad_input(tmp_path):
    from calseg.report import write_report

    with pytest.raises(InputError, match="not a folder"):
        write_report(tmp_path / "missing")
    make_result_folder(tmp_path / "res", n=3)
    with pytest.raises(ConfigError, match="'dpi'"):
        write_report(tmp_path / "res", dpi=5)
    (tmp_path / "res" / "traces.csv").unlink()
    with pytest.raises(InputError, match="traces.csv: missing"):
        write_report(tmp_path / "res")
    assert not (tmp_path / "res" / "summary.png").exists()
