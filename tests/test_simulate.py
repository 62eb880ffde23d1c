"""Tests for calseg.simulate and `calseg simulate`.

Statistics are measured from the written files (movie, masks, spike table) with estimators
written here, independently of the simulator's internals.
"""
from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from scipy import ndimage as ndi

from calseg.cli import main
from calseg.errors import ConfigError, OutputError
from calseg.simulate import MASK_THRESHOLD, _calcium, preset_params, simulate

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def read_table(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array(rows[1:], dtype=float)


def load(d):
    d = Path(d)
    movie = tifffile.imread(d / "movie.tif")
    params = json.loads((d / "truth" / "params.json").read_text())
    regions = json.loads((d / "truth" / "regions.json").read_text())
    labels = tifffile.imread(d / "truth" / "masks.tif")
    foot = tifffile.imread(d / "truth" / "footprints.tif")
    if foot.ndim == 2:
        foot = foot[None]
    return movie, params, regions, labels, foot


def region_masks(regions, shape):
    masks = np.zeros((len(regions), *shape), dtype=bool)
    for m, r in zip(masks, regions):
        c = np.asarray(r["coordinates"], dtype=int).reshape(-1, 2)
        m[c[:, 0], c[:, 1]] = True
    return masks


def roi_stats(Y, masks, fps):
    """Per-ROI transients (3-frame mean crossing median + 3 robust SD), peak dF/F and SNR."""
    n_tr, peaks, snr = [], [], []
    k3 = np.ones(3) / 3
    for m in masks:
        F = Y[:, m].mean(1)
        Fs = np.convolve(F, k3, mode="same")
        F0 = np.median(Fs)
        robust_sd = 1.4826 * np.median(np.abs(Fs - F0))
        z = (Fs - F0) / robust_sd
        count, armed = 0, True
        for v in z:
            if armed and v > 3:
                count, armed = count + 1, False
            elif v < 1:
                armed = True
        n_tr.append(count)
        dF = np.diff(F)
        frame_sd = 1.4826 * np.median(np.abs(dF - np.median(dF))) / np.sqrt(2)
        peaks.append((Fs[1:-1].max() - F0) / F0)
        snr.append((Fs[1:-1].max() - F0) / frame_sd)
    return np.array(n_tr), np.array(peaks), np.array(snr)


def photon_transfer(Y):
    """Fit per-pixel temporal variance (from frame differences) = slope * mean + intercept.

    The variance is a robust one (MAD of the differences), so that the rare large differences
    at transient onsets do not inflate it; it depends on the noise model, not on the activity.
    """
    mean = Y.mean(0).ravel()
    d = np.diff(Y, axis=0)
    mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    var = ((mad / 0.6745) ** 2 / 2).ravel()
    slope, intercept = np.polyfit(mean, var, 1)
    return slope, intercept


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "rec"
    info = simulate(out, preset="standard", height=48, width=56, n_frames=70, n_neurons=6, seed=5)
    return out, info


# --------------------------------------------------------------------------- files and formats


def test_output_files_and_formats(small_run):
    out, info = small_run
    movie, params, regions, labels, foot = load(out)
    T, H, W = 70, 48, 56
    assert info.shape == (T, H, W) and info.n_neurons == 6
    assert movie.shape == (T, H, W) and movie.dtype == np.uint16
    with tifffile.TiffFile(out / "movie.tif") as tf:
        assert tf.is_imagej
        assert tf.imagej_metadata["finterval"] == pytest.approx(1 / 30)
        assert tf.series[0].dataoffset is not None  # contiguous: memory-mappable
    assert labels.shape == (H, W) and labels.dtype == np.uint16
    assert foot.shape == (6, H, W) and foot.dtype == np.float32
    assert np.allclose(foot.reshape(6, -1).max(1), 1.0)
    assert [r["id"] for r in regions] == list(range(1, 7))
    # regions are exactly the thresholded footprints
    masks = region_masks(regions, (H, W))
    assert np.array_equal(masks, foot >= MASK_THRESHOLD)
    # label rule: within the union of masks, the neuron with the largest footprint value
    union = masks.any(0)
    expect = np.where(union, np.argmax(np.where(masks, foot, -1), axis=0) + 1, 0)
    assert np.array_equal(labels, expect)
    for name in ("spikes.csv", "calcium.csv"):
        header, X = read_table(out / "truth" / name)
        assert header == ["frame", "time_s", "1", "2", "3", "4", "5", "6"]
        assert np.array_equal(X[:, 0], np.arange(T))
        assert np.allclose(X[:, 1], np.arange(T) / 30, atol=1e-6)
    _, S = read_table(out / "truth" / "spikes.csv")
    assert np.all(S[:, 2:] == np.round(S[:, 2:])) and S[:, 2:].min() >= 0
    assert not (out / "truth" / "motion.csv").exists()
    assert params["preset"] == "standard" and params["seed"] == 5
    assert params["calseg_version"] and params["command"].startswith("calseg simulate")
    assert params["mask_threshold"] == MASK_THRESHOLD
    # no temporary siblings are left behind
    assert [p.name for p in out.parent.iterdir()] == ["rec"]


def test_calcium_matches_direct_convolution():
    rng = np.random.default_rng(3)
    T, n, fps = 400, 3, 20.0
    S = rng.poisson(0.05, (T, n))
    tr, td = np.array([0.05, 0.1, 0.2]), np.array([0.5, 1.0, 2.0])
    amp, dmax = np.array([0.2, 0.5, 1.0]), 4.0
    C = _calcium(S, fps, tr, td, amp, dmax)
    for k in range(n):
        s = np.arange(T) / fps + 0.5 / fps  # spike mid-frame
        h = np.exp(-s / td[k]) - np.exp(-s / tr[k])
        grid = np.linspace(0, 10 * td[k], 200001)
        h /= (np.exp(-grid / td[k]) - np.exp(-grid / tr[k])).max()
        x = amp[k] * np.convolve(S[:, k], h)[:T]
        assert np.allclose(C[:, k], x / (1 + x / dmax), rtol=1e-6, atol=1e-9)


def test_movie_follows_calcium(tmp_path):
    """In an easy recording each neuron's ROI trace is driven by its own calcium trace."""
    out = tmp_path / "easy"
    simulate(out, preset="easy", height=64, width=64, n_frames=300, n_neurons=5, seed=11)
    movie, params, regions, labels, foot = load(out)
    _, C = read_table(out / "truth" / "calcium.csv")
    Y = movie.astype(float) - params["offset"]
    for k in range(5):
        own = labels == k + 1
        if C[:, 2 + k].std() == 0 or own.sum() < 10:
            continue
        F = Y[:, own].mean(1)
        assert np.corrcoef(F, C[:, 2 + k])[0, 1] > 0.8


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(preset="hard", height=40, width=40, n_frames=40, n_neurons=4)
    simulate(tmp_path / "a", seed=7, **kw)
    simulate(tmp_path / "b", seed=7, **kw)
    simulate(tmp_path / "c", seed=8, **kw)
    for f in ("movie.tif", "truth/footprints.tif", "truth/spikes.csv", "truth/calcium.csv",
              "truth/motion.csv", "truth/masks.tif", "truth/regions.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "movie.tif").read_bytes() != (tmp_path / "c" / "movie.tif").read_bytes()


def test_recorded_command_reproduces_movie(small_run, tmp_path):
    out, info = small_run
    cmd = json.loads((out / "truth" / "params.json").read_text())["command"]
    assert cmd == info.command
    args = shlex.split(cmd)[1:]
    args[args.index("-o") + 1] = str(tmp_path / "again")
    res = CliRunner().invoke(main, ["-q", *args])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again" / "movie.tif").read_bytes() == (out / "movie.tif").read_bytes()


# --------------------------------------------------------------------------- statistics per preset


@pytest.mark.parametrize("preset, snr_range", [("easy", (20, 200)), ("standard", (6, 40)),
                                               ("hard", (1.5, 9))])
def test_preset_statistics(tmp_path, preset, snr_range):
    out = tmp_path / preset
    simulate(out, preset=preset, height=112, width=112, n_frames=450, motion=False, seed=2)
    movie, p, regions, labels, foot = load(out)
    Y = movie.astype(float) - p["offset"]
    T = Y.shape[0]
    # camera model: photon-transfer slope = gain (ADU per photon), intercept ~ read noise^2
    slope, intercept = photon_transfer(Y)
    assert slope == pytest.approx(p["gain"], rel=0.1)
    assert abs(intercept - p["read_noise"] ** 2) < 0.15 * p["gain"] * Y.mean()
    # spike rates: median across neurons of the spike table, vs the preset's median event rate
    # times the mean number of spikes per event
    _, S = read_table(out / "truth" / "spikes.csv")
    rates = S[:, 2:].sum(0) / (T / p["fps"])
    expected = p["rate_hz"] * (1 + p["burst_prob"] * (1 + p["burst_extra"]))
    assert 0.4 * expected < np.median(rates) < 2.5 * expected
    # SNR of active cells: peak of the 3-frame mean over the per-frame noise SD
    masks = region_masks(regions, labels.shape)
    _, _, snr = roi_stats(Y, masks, p["fps"])
    active = S[:, 2:].sum(0) > 0
    assert snr_range[0] < np.median(snr[active]) < snr_range[1]
    # mask sizes follow cell_diameter (area of the equivalent disk)
    area = np.median(masks.sum((1, 2)))
    assert area == pytest.approx(np.pi * p["cell_diameter"] ** 2 / 4, rel=0.2)


def test_realistic_statistics(tmp_path):
    """The realistic preset matches statistics measured on a real Neurofinder 00.xx clip."""
    out = tmp_path / "real"
    simulate(out, preset="realistic", height=160, width=160, seed=1)
    movie, p, regions, labels, foot = load(out)
    Y = movie.astype(float) - p["offset"]
    T, H, W = Y.shape
    assert (T, p["fps"]) == (600, 7.0)
    mean = Y.mean(0)
    # ~1 photon per pixel per frame: per-pixel noise SD ~ mean
    noise_sd = np.diff(Y, axis=0).std(0) / np.sqrt(2)
    assert 0.8 < np.median(noise_sd / mean) < 1.25
    masks = region_masks(regions, (H, W))
    assert 55 <= np.median(masks.sum((1, 2))) <= 80
    # dark nucleus: footprint at the mask's centroid well below its maximum
    nucleus = []
    for m, f in zip(masks, foot):
        cy, cx = ndi.center_of_mass(m)
        nucleus.append(f[int(round(cy)), int(round(cx))] < 0.85)
    assert 0.4 <= np.mean(nucleus) <= 0.85
    # cells no brighter than their surround in the mean image
    anymask = labels > 0
    ratio = []
    for m in masks:
        ring = ndi.binary_dilation(m, iterations=6) & ~ndi.binary_dilation(m, iterations=2) & ~anymask
        ratio.append(mean[m].mean() / mean[ring].mean())
    assert 0.75 < np.median(ratio) < 1.05
    n_tr, peaks, _ = roi_stats(Y, masks, p["fps"])
    assert 1 <= np.median(n_tr) <= 3
    assert 0.08 <= np.mean(n_tr == 0) <= 0.4
    assert 0.35 <= np.median(peaks[n_tr > 0]) <= 0.8
    # dark vessels: mean image below half its smooth local level
    dark = mean / ndi.gaussian_filter(mean, 10) < 0.5
    assert 0.015 <= dark.mean() <= 0.06
    # neuropil: background quadrant traces fluctuate ~8 % and move together
    bg = ~ndi.binary_dilation(anymask | dark, iterations=4)
    t = np.arange(T)
    quads = []
    for ys in (slice(0, H // 2), slice(H // 2, H)):
        for xs in (slice(0, W // 2), slice(W // 2, W)):
            tr = Y[:, ys, xs][:, bg[ys, xs]].mean(1)
            tr = ndi.gaussian_filter1d(tr, p["fps"] * 0.5)
            quads.append((tr - np.polyval(np.polyfit(t, tr, 2), t)) / tr.mean())
    quads = np.array(quads)
    assert 0.04 <= np.median(quads.std(1)) <= 0.14
    assert np.median(np.corrcoef(quads)[np.triu_indices(4, 1)]) > 0.5


# --------------------------------------------------------------------------- motion


def test_motion_shifts_saved_and_applied(tmp_path):
    from skimage.registration import phase_cross_correlation

    out = tmp_path / "moving"
    simulate(out, preset="easy", height=64, width=64, n_frames=120, n_neurons=8, motion=True,
             seed=4)
    movie, p, regions, labels, foot = load(out)
    # footprints live in the reference frame, each normalised to max 1 inside the field
    assert np.allclose(foot.reshape(len(foot), -1).max(1), 1.0)
    assert all(len(r["coordinates"]) > 0 for r in regions)
    header, D = read_table(out / "truth" / "motion.csv")
    assert header == ["frame", "dy", "dx"] and D.shape == (120, 3)
    shifts = D[:, 1:]
    assert np.abs(shifts).max() <= p["motion_max_px"]
    assert np.std(shifts[:, 0]) > 0.05 and np.std(shifts[:, 1]) > 0.05
    assert np.any(np.abs(shifts - np.round(shifts)) > 0.1)  # sub-pixel
    Y = movie.astype(float)
    # undo the true shifts: the registered mean is the template each frame is compared with
    reg = np.stack([ndi.shift(f, -d, order=1, mode="nearest") for f, d in zip(Y, shifts)])
    template = reg.mean(0)
    win = np.outer(np.hanning(48), np.hanning(48))  # fixed crop edges would bias towards 0
    est_shifts = []
    for t in range(0, 120, 6):
        a, b = template[8:-8, 8:-8], Y[t, 8:-8, 8:-8]
        est, _, _ = phase_cross_correlation((a - a.mean()) * win, (b - b.mean()) * win,
                                            upsample_factor=20, normalization=None)
        est_shifts.append(-est)  # est is the shift that registers frame t: -d_t
    est_shifts = np.array(est_shifts)
    true = shifts[::6]
    for axis in (0, 1):  # a wrong sign or axis order would give a negative or ~0 correlation
        assert np.corrcoef(est_shifts[:, axis], true[:, axis])[0, 1] > 0.85
    assert np.median(np.abs(est_shifts - true)) < 0.15


# --------------------------------------------------------------------------- output safety


def test_refuses_non_empty_dir_and_force_replaces(tmp_path):
    out = tmp_path / "rec"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        simulate(out, height=32, width=32, n_frames=10, n_neurons=2)
    assert [f.name for f in out.iterdir()] == ["keep.txt"]
    simulate(out, height=32, width=32, n_frames=10, n_neurons=2, force=True)
    assert sorted(f.name for f in out.iterdir()) == ["movie.tif", "truth"]
    empty = tmp_path / "empty"
    empty.mkdir()
    simulate(empty, height=32, width=32, n_frames=10, n_neurons=2)
    assert (empty / "movie.tif").exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["empty", "rec"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        simulate(a_file, height=32, width=32, n_frames=10, n_neurons=2, force=True)


def test_interrupted_run_leaves_nothing(tmp_path):
    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(tmp_path / "rec", height=32, width=32, n_frames=100, n_neurons=2, progress=boom)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, words", [
    (dict(preset="medium"), ["preset", "medium", "easy"]),
    (dict(height=8), ["height", "8", "16"]),
    (dict(width=10000), ["width", "10000", "8192"]),
    (dict(n_frames=1), ["n_frames", "1", "2"]),
    (dict(fps=0.0), ["fps", "0.0", "0.1"]),
    (dict(fps=float("nan")), ["fps", "nan"]),
    (dict(n_neurons=0), ["n_neurons", "0", "[1, "]),
    (dict(n_neurons=10_000, height=32, width=32), ["n_neurons", "10000", "too many"]),
    (dict(cell_diameter=1.0), ["cell_diameter", "1.0", "3.0"]),
    (dict(cell_diameter=30.0, height=32, width=32), ["cell_diameter", "30.0", "16"]),
    (dict(seed=-3), ["seed", "-3"]),
    (dict(height=32.5), ["height", "32.5", "integer"]),
    (dict(motion="yes"), ["motion", "yes"]),
])
def test_invalid_options_raise_config_error(tmp_path, kw, words):
    with pytest.raises(ConfigError) as exc:
        simulate(tmp_path / "x", **kw)
    for w in words:
        assert w in str(exc.value)
    assert not (tmp_path / "x").exists()


def test_presets_table_complete():
    keys = set(preset_params("standard"))
    for name in ("easy", "hard", "realistic"):
        assert set(preset_params(name)) == keys
    assert preset_params("hard")["motion"] and not preset_params("easy")["motion"]
    real = preset_params("realistic")
    assert (real["height"], real["width"], real["n_frames"], real["fps"]) == (512, 512, 600, 7.0)


# --------------------------------------------------------------------------- CLI


def test_cli_exit_codes(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["simulate", "-o", str(tmp_path / "a"), "--size", "32x40", "--frames",
                          "12", "--neurons", "2", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert tifffile.imread(tmp_path / "a" / "movie.tif").shape == (12, 32, 40)
    assert "2 neurons" in res.stdout
    res = r.invoke(main, ["simulate", "-o", str(tmp_path / "a"), "--size", "32x40"])
    assert res.exit_code == 1 and "not empty" in res.stderr
    res = r.invoke(main, ["simulate", "-o", str(tmp_path / "a"), "--size", "32x40", "--frames",
                          "12", "--neurons", "3", "--force"])
    assert res.exit_code == 0
    assert json.loads((tmp_path / "a" / "truth" / "params.json").read_text())["n_neurons"] == 3
    res = r.invoke(main, ["simulate", "-o", str(tmp_path / "b"), "--fps", "-2"])
    assert res.exit_code == 1 and "fps" in res.stderr and "-2" in res.stderr
    res = r.invoke(main, ["simulate", "-o", str(tmp_path / "b"), "--preset", "medium"])
    assert res.exit_code == 2
    res = r.invoke(main, ["simulate", "-o", str(tmp_path / "b"), "--size", "32x", "--frames", "5"])
    assert res.exit_code == 2
    res = r.invoke(main, ["simulate", "-o", str(tmp_path / "b"), "--size", "32", "--height", "40"])
    assert res.exit_code == 2
    res = r.invoke(main, ["simulate", "-o", str(tmp_path / "c"), "--size", "40", "--frames", "20",
                          "--neurons", "2", "--preset", "hard", "--no-motion"])
    assert res.exit_code == 0 and not (tmp_path / "c" / "truth" / "motion.csv").exists()
    assert not (tmp_path / "b").exists()
    res = r.invoke(main, ["simulate", "-h"])
    assert res.exit_code == 0 and "--preset" in res.stdout


# --------------------------------------------------------------------------- sample data


def test_sample_data_is_consistent():
    root = REPO / "sample_data"
    if not (root / "movie.tif").exists():
        pytest.fail("sample_data/movie.tif is missing (see sample_data/README.md)")
    movie, params, regions, labels, foot = load(root)
    assert movie.shape == (params["n_frames"], params["height"], params["width"])
    assert len(regions) == params["n_neurons"] == foot.shape[0]
    assert params["command"] in (root / "README.md").read_text()
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 5e6


@pytest.mark.slow
def test_sample_data_regenerates_identically(tmp_path):
    root = REPO / "sample_data"
    cmd = json.loads((root / "truth" / "params.json").read_text())["command"]
    args = shlex.split(cmd)[1:]
    args[args.index("-o") + 1] = str(tmp_path / "again")
    res = CliRunner().invoke(main, ["-q", *args])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again" / "movie.tif").read_bytes() == (root / "movie.tif").read_bytes()
