"""Tests for benchmarks/competitors: spikefinder metric, CSV handling, Suite2p output conversion.

Only numpy-level helpers run in calseg's environment; tests that need OASIS or Suite2p run
through ``.venv-suite2p`` when it exists (marked slow) and skip otherwise.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMP = ROOT / "benchmarks" / "competitors"
S2P_PY = ROOT / ".venv-suite2p" / "bin" / "python"


def _load(name):
    if str(COMP) not in sys.path:
        sys.path.insert(0, str(COMP))  # oasis_runner imports its sibling spikefinder.py
    spec = importlib.util.spec_from_file_location(f"competitors_{name}", COMP / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sf():
    return _load("spikefinder")


@pytest.fixture(scope="module")
def s2p():
    return _load("suite2p_runner")


@pytest.fixture(scope="module")
def oasis_runner():
    return _load("oasis_runner")


# ------------------------------------------------------------------ spikefinder metric
def test_corr_hand_made_case(sf):
    # 18 samples at 100 Hz -> four 40 ms bins; the last 2 samples form an incomplete bin
    truth = np.array([1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 1], float)
    pred = np.array([0, .5, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 5, 5], float)
    # bins: truth [1, 0, 2, 1], pred [0.5, 0, 2, 0]
    # deviations: t [0, -1, 1, 0], p [-.125, -.625, 1.375, -.625]
    # r = 2 / sqrt(2 * 2.6875)
    expected = 2.0 / np.sqrt(2.0 * 2.6875)
    assert sf.spikefinder_corr(pred, truth, fs=100, bin_ms=40) == pytest.approx(expected, rel=1e-12)
    # the incomplete trailing bin must not count: changing it leaves r unchanged
    pred2 = pred.copy()
    pred2[-2:] = [-100.0, 300.0]
    assert sf.spikefinder_corr(pred2, truth) == pytest.approx(expected, rel=1e-12)


def test_corr_drops_nan_samples_before_binning(sf):
    truth = np.array([1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0], float)
    pred = np.array([0, .5, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0], float)
    expected = 2.0 / np.sqrt(2.0 * 2.6875)
    # NaN padding at the end of one series removes those samples from both
    t_pad = np.concatenate([truth, [np.nan] * 8])
    p_pad = np.concatenate([pred, [3.0] * 8])
    assert sf.spikefinder_corr(p_pad, t_pad) == pytest.approx(expected, rel=1e-12)
    # 2-D: columns scored independently; constant prediction -> NaN
    P = np.stack([p_pad, np.ones_like(p_pad)], axis=1)
    T = np.stack([t_pad, t_pad], axis=1)
    r = sf.spikefinder_corr(P, T)
    assert r.shape == (2,)
    assert r[0] == pytest.approx(expected, rel=1e-12)
    assert np.isnan(r[1])


def test_corr_matches_challenge_reference_on_random_data(sf):
    # independent reference: the challenge's convolve(ones(4), 'valid')[::4] + corrcoef
    rng = np.random.default_rng(3)
    T, N = 1003, 4
    truth = rng.poisson(0.2, (T, N)).astype(float)
    pred = truth + rng.gamma(1.0, 0.5, (T, N))
    truth[900:, 1] = np.nan
    pred[950:, 2] = np.nan
    got = sf.spikefinder_corr(pred, truth, fs=100, bin_ms=40)
    for j in range(N):
        ok = ~(np.isnan(pred[:, j]) | np.isnan(truth[:, j]))
        a = np.convolve(pred[ok, j], np.ones(4), "valid")[::4]
        b = np.convolve(truth[ok, j], np.ones(4), "valid")[::4]
        assert got[j] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-10)
    # invariant to a positive affine change of the prediction
    assert np.allclose(sf.spikefinder_corr(3.0 * pred + 7.0, truth), got, rtol=1e-10)


def test_corr_rejects_fractional_bins_and_shape_mismatch(sf):
    x = np.zeros(40)
    with pytest.raises(ValueError, match="whole number"):
        sf.spikefinder_corr(x, x, fs=100, bin_ms=45)
    with pytest.raises(ValueError, match="shape"):
        sf.spikefinder_corr(x, x[:-1])


def test_padded_csv_roundtrip(sf, tmp_path):
    data = np.array([[1.5, -2.0, 0.25], [3.0, np.nan, 1e-3], [np.nan, np.nan, 7.0]])
    p = tmp_path / "x.csv"
    sf.write_padded_csv(p, data, ["0", "1", "2"])
    text = p.read_text().splitlines()
    assert text[0] == "0,1,2"
    assert text[3] == ",,7"
    back, cols = sf.read_padded_csv(p)
    assert cols == ["0", "1", "2"]
    np.testing.assert_array_equal(np.isnan(back), np.isnan(data))
    np.testing.assert_allclose(back[~np.isnan(data)], data[~np.isnan(data)], rtol=1e-6)


def test_load_spikefinder_matches_readme(sf, shared_data):
    d = shared_data / "spikefinder_train"
    if not d.is_dir():
        pytest.skip("spikefinder_train not present")
    sets = {s.name: s for s in sf.load_spikefinder(d)}
    assert sorted(sets) == ["4", "5", "6"]
    # README table: cells, samples, total spikes; dataset 6 shortest recording 5998 samples
    for name, n, T, total in [("4", 6, 27763, 7607), ("5", 9, 16919, 8810), ("6", 9, 23998, 2735)]:
        s = sets[name]
        assert s.calcium.shape == s.spikes.shape == (T, n)
        assert np.nansum(s.spikes) == total
    lengths = (~np.isnan(sets["6"].calcium)).sum(axis=0)
    assert lengths.min() == 5998


# ------------------------------------------------------------------ OASIS runner helpers
def test_trailing_valid_length(oasis_runner):
    f = oasis_runner.trailing_valid_length
    assert f(np.array([1.0, 2.0, np.nan, np.nan])) == 2
    assert f(np.array([1.0, np.nan, 3.0])) == 3  # interior NaN is not padding
    assert f(np.array([np.nan, np.nan])) == 0
    assert f(np.arange(5.0)) == 5


@pytest.mark.slow
def test_oasis_runner_end_to_end(tmp_path, sf):
    if not S2P_PY.exists():
        pytest.skip(".venv-suite2p not created (bash scripts/suite2p_env.sh)")
    rng = np.random.default_rng(7)
    T, fps, g = 3000, 100.0, 0.97
    S = (rng.random((T, 2)) < 0.01).astype(float)
    C = np.zeros_like(S)
    for t in range(T):
        C[t] = (g * C[t - 1] if t else 0.0) + S[t]
    Y = 0.5 + C + rng.normal(0, 0.1, C.shape)
    Y[2000:, 1] = np.nan  # shorter recording in column "b"
    S[2000:, 1] = np.nan
    inp, out = tmp_path / "cal.csv", tmp_path / "spk.csv"
    sf.write_padded_csv(inp, Y, ["a", "b"], fmt="%.8g")
    subprocess.run([str(S2P_PY), str(COMP / "oasis_runner.py"), str(inp), str(out), "--fps", "100"],
                   check=True, capture_output=True)
    P, cols = sf.read_padded_csv(out)
    assert cols == ["a", "b"] and P.shape == (T, 2)
    np.testing.assert_array_equal(np.isnan(P), np.isnan(Y))
    assert np.all(P[~np.isnan(P)] >= -1e-9)  # OASIS leaves rounding-level negatives (~1e-17)
    r = sf.spikefinder_corr(P, S)
    assert np.all(r > 0.8), r
    meta = json.loads(out.with_suffix(".json").read_text())
    assert abs(meta["columns"]["a"]["g"][0] - g) < 0.02


# ------------------------------------------------------------------ Suite2p output conversion
def test_regions_from_stat_keeps_cells_in_order(s2p):
    stat = [
        {"ypix": np.array([1, 1, 2]), "xpix": np.array([3, 4, 3])},
        {"ypix": np.array([9]), "xpix": np.array([9])},
        {"ypix": np.array([5, 5, 5]), "xpix": np.array([7, 6, 7])},  # duplicate pixel (5, 7)
    ]
    iscell = np.array([[1.0, 0.9], [0.0, 0.2], [1.0, 0.6]])
    regions, keep = s2p.regions_from_stat(stat, iscell)
    assert keep.tolist() == [0, 2]
    assert [r["id"] for r in regions] == [1, 2]
    assert regions[0]["coordinates"] == [[1, 3], [1, 4], [2, 3]]  # [row, col]
    assert regions[1]["coordinates"] == [[5, 6], [5, 7]]
    json.dumps(regions)  # plain Python ints
    with pytest.raises(ValueError, match="iscell"):
        s2p.regions_from_stat(stat, iscell[:2])


def test_running_percentile_limits(s2p):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 50))
    np.testing.assert_allclose(s2p.running_percentile(x, 1, 8.0), x)
    full = s2p.running_percentile(x, 500, 8.0)  # window clipped to T: global percentile
    np.testing.assert_allclose(full, np.repeat(np.percentile(x, 8.0, axis=1)[:, None], 50, 1))
    # centred window of 5 at t=10 covers samples 8..12; at the ends it shifts inside the trace
    w = s2p.running_percentile(x, 5, 50.0)
    assert w[1, 10] == pytest.approx(np.median(x[1, 8:13]))
    assert w[1, 0] == pytest.approx(np.median(x[1, 0:5]))
    assert w[1, 49] == pytest.approx(np.median(x[1, 45:50]))


def test_dff_recovers_known_transients(s2p):
    T, fs = 600, 10.0
    Fneu = np.full((2, T), 50.0)
    # F - 0.7*Fneu = 100 (cell 0) or 40 (cell 1) at rest, with sparse transients
    F = np.vstack([np.full(T, 135.0), np.full(T, 75.0)])
    F[0, [100, 300]] += [50.0, 20.0]
    F[1, 450] += 10.0
    dff, F0 = s2p.dff_running_percentile(F, Fneu, fs)
    np.testing.assert_allclose(F0, [[100.0] * T, [40.0] * T])
    expected = np.zeros((2, T))
    expected[0, [100, 300]] = [0.5, 0.2]
    expected[1, 450] = 0.25
    np.testing.assert_allclose(dff, expected, atol=1e-12)
    # raw denominator: same numerator, divided by the 8th percentile of F (135 and 75)
    dff_raw, _ = s2p.dff_running_percentile(F, Fneu, fs, denominator="raw")
    np.testing.assert_allclose(dff_raw, expected * (F0 / np.array([[135.0], [75.0]])), atol=1e-12)
    with pytest.raises(ValueError, match="denominator"):
        s2p.dff_running_percentile(F, Fneu, fs, denominator="mean")
    # non-positive baseline -> NaN, not inf
    dff_bad, _ = s2p.dff_running_percentile(np.zeros((1, T)), Fneu[:1], fs)
    assert np.isnan(dff_bad).all()


def test_write_table_layout(s2p, tmp_path):
    v = np.array([[0.0, 1.5, np.nan], [2.0, -1.0, 0.25]])  # (N=2 cells, T=3 frames)
    p = tmp_path / "traces.csv"
    s2p.write_table(p, v, fs=4.0)
    lines = p.read_text().splitlines()
    assert lines == ["frame,time_s,1,2", "0,0.000000,0,2", "1,0.250000,1.5,-1", "2,0.500000,,0.25"]


def test_write_motion_flips_suite2p_offsets_into_corrections(s2p, tmp_path):
    """Registered: motion.csv holds -yoff, -xoff (calseg's correction convention), which
    calseg.score.motion_offset reads; not registered (no offsets in ops): no file."""
    p = tmp_path / "motion.csv"
    assert s2p.write_motion(p, {"yoff": np.array([1, 2, 3]), "xoff": np.array([0, -1, 0])})
    assert p.read_text().splitlines() == ["frame,dy,dx", "0,-1.0000,-0.0000", "1,-2.0000,1.0000",
                                          "2,-3.0000,-0.0000"]
    q = tmp_path / "none.csv"
    assert not s2p.write_motion(q, {}) and not q.exists()
