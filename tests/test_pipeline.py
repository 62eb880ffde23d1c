"""End-to-end pipeline on tiny recordings made in the test (seeded, a few seconds each)."""
import csv
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from scipy.signal import lfilter

from calseg.cli import main
from calseg.config import Settings
from calseg.pipeline import OUTPUT_FILES, segment, write_result

FPS = 20.0


def make_movie(shape=(40, 40), T=500, cells=(), noise=1.0, seed=0, base=50.0):
    """cells: list of (row, col, radius, amplitude); Poisson-ish spikes, decay tau 0.5 s."""
    rng = np.random.default_rng(seed)
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    movie = np.full((T, H, W), base, dtype=np.float64)
    g = np.exp(-1 / (FPS * 0.5))
    truth = []
    for (r, c, rad, amp) in cells:
        foot = np.clip(rad + 0.5 - np.hypot(yy - r, xx - c), 0, 1)
        spikes = (rng.random(T) < 0.04).astype(float)
        calcium = lfilter([1], [1, -g], spikes)
        movie += amp * calcium[:, None, None] * foot[None]
        truth.append((foot > 0.5, spikes))
    movie += noise * rng.standard_normal(movie.shape)
    return movie.astype(np.float32), truth


def settings(**kw):
    base = dict(fps=FPS, cell_diameter=8.0, tau=0.5, workers=1, max_iter=150, motion_correction="none")
    base.update(kw)
    return Settings(**base).validated()


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_pure_noise_gives_an_empty_valid_result(tmp_path):
    movie, _ = make_movie(seed=1)
    res = segment(movie, settings())
    assert res.n_neurons == 0
    out = write_result(res, tmp_path / "out")
    for name in OUTPUT_FILES:
        assert (out / name).exists(), name
    assert tifffile.imread(out / "masks.tif").max() == 0
    with open(out / "traces.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["frame", "time_s"] and len(rows) == 501
    assert json.loads((out / "regions.json").read_text()) == []


def test_one_neuron_is_found_once_with_its_spikes():
    movie, truth = make_movie(cells=[(20, 18, 4, 3.0)], seed=2)
    res = segment(movie, settings())
    assert res.n_neurons == 1
    mask = res.masks == 1
    assert _iou(mask, truth[0][0]) > 0.5
    r = np.corrcoef(res.spikes[:, 0], truth[0][1])[0, 1]
    assert r > 0.6, r
    assert res.certificate["status"] in ("certified", "bounded")
    assert res.certificate["gap"] >= 0


def test_neuron_on_a_tile_border_comes_out_once_and_whole():
    # tiles of 32 px with 14 px overlap on a 40x60 field: windows at x=0..32 and 28..60,
    # core boundary at x=30, where the neuron sits
    movie, truth = make_movie(shape=(40, 60), cells=[(20, 30, 4, 3.0)], seed=3)
    res = segment(movie, settings(tile_size=32, tile_overlap=14))
    assert res.info["resolved"]["n_tiles"] >= 2
    assert res.n_neurons == 1
    assert _iou(res.masks == 1, truth[0][0]) > 0.5


def test_outputs_read_back(tmp_path):
    movie, truth = make_movie(cells=[(12, 12, 4, 3.0), (28, 28, 4, 3.0)], seed=4)
    res = segment(movie, settings())
    out = write_result(res, tmp_path / "out")
    n = res.n_neurons
    assert n == 2
    masks = tifffile.imread(out / "masks.tif")
    assert masks.dtype == np.uint16 and masks.shape == (40, 40) and set(np.unique(masks)) == {0, 1, 2}
    fp = tifffile.imread(out / "footprints.tif")
    assert fp.dtype == np.float32 and fp.shape == (2, 40, 40)
    with open(out / "neurons.csv") as fh:
        neurons = list(csv.DictReader(fh))
    assert [r["id"] for r in neurons] == ["1", "2"]
    assert set(neurons[0]) >= {"id", "centroid_y", "centroid_x", "area", "peak_dff", "snr", "score"}
    for name in ("traces.csv", "spikes.csv"):
        with open(out / name) as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["frame", "time_s", "1", "2"] and len(rows) == 501
        assert float(rows[21][1]) == pytest.approx(20 / FPS)
    regions = json.loads((out / "regions.json").read_text())
    assert [r["id"] for r in regions] == [1, 2]
    run = json.loads((out / "run.json").read_text())
    assert run["calseg_version"] and run["settings"]["fps"] == FPS and "timings_s" in run
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["status"] in ("certified", "bounded") and len(cert["tiles"]) == run["resolved"]["n_tiles"]


def test_cli_run_exit_codes(tmp_path):
    movie, _ = make_movie(cells=[(20, 20, 4, 3.0)], seed=5)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TYX", "finterval": 1 / FPS})
    out = tmp_path / "out"
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(path), "-o", str(out), "--cell-diameter", "8", "--tau", "0.5",
                             "--workers", "1", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n_neurons"] == 1
    # existing output folder without --force: exit 1, one line, nothing changed
    before = sorted(p.name for p in out.iterdir())
    r = runner.invoke(main, ["run", str(path), "-o", str(out)])
    assert r.exit_code == 1 and "--force" in r.stderr and "Traceback" not in r.output
    assert sorted(p.name for p in out.iterdir()) == before
    r = runner.invoke(main, ["run", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o2")])
    assert r.exit_code == 1 and "missing.tif" in r.stderr
    assert not (tmp_path / "o2").exists()
    r = runner.invoke(main, ["run", str(path), "-o", str(tmp_path / "o3"), "--connectivity-typo", "4"])
    assert r.exit_code == 2
    # no partial folders left behind
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_seed_just_outside_a_tile_starts_its_cut_cell_inside():
    """A seed up to a cell radius outside the tile (a cell cut by the border) starts a column
    whose footprint is the part of its disk inside the tile, with the trace read at the
    nearest tile pixel."""
    from calseg.seeds import init_factors

    rng = np.random.default_rng(3)
    T, h, w = 300, 20, 20
    spikes = (rng.random(T) < 0.05).astype(float)
    trace = np.convolve(spikes, 0.9 ** np.arange(40))[:T]
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((yy - 8) ** 2 + (xx + 2) ** 2) / (2 * 3.0 ** 2))   # centre at column -2
    Y = (trace[:, None] * blob.ravel()[None, :] * 5 + rng.normal(size=(T, h * w))).astype(np.float32)
    Y -= Y.mean(axis=0)
    A, Z = init_factors(Y, (h, w), np.array([[8, -2]]), 10.0, 0.9, np.ones(T))
    z = Z[:, 0].reshape(h, w)
    assert z.max() > 0 and np.all(np.nonzero(z)[1] <= 6)          # on the left edge only
    assert np.corrcoef(A[:, 0], spikes)[0, 1] > 0.5


def test_initial_factors_project_the_background_out_of_the_traces_they_use():
    """init_factors(Y, background=F) starts from what it would start from on the whole tile
    with the background projected out, (I - F F^T) Y, without that (T, P) copy."""
    from calseg.model.background import fourier_background
    from calseg.seeds import init_factors

    rng = np.random.default_rng(4)
    T, h, w = 400, 24, 24
    F = fourier_background(T, 4)
    trace = np.convolve((rng.random(T) < 0.04).astype(float), 0.9 ** np.arange(40))[:T]
    yy, xx = np.mgrid[0:h, 0:w]
    seeds = np.array([[8, 9], [16, 15]])
    Y = rng.normal(size=(T, h * w)) + 4 * F @ rng.normal(size=(F.shape[1], h * w))   # strong drifts
    for y0, x0 in seeds:
        Y += 4 * trace[:, None] * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / 8.0).ravel()
        trace = np.roll(trace, 37)
    args = ((h, w), seeds, 8.0, 0.9, np.linspace(1, 2, T))
    A, Z = init_factors(Y, *args, background=F)
    A_ref, Z_ref = init_factors(Y - F @ (F.T @ Y), *args)
    np.testing.assert_allclose(A, A_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(Z, Z_ref, rtol=1e-9, atol=1e-9)
    A_raw, _ = init_factors(Y, *args)                  # and the projection matters here
    assert not np.allclose(A, A_raw)
