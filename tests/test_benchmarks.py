"""Smoke tests of the evaluation scripts' helpers (no simulation, no competitor run)."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
evaluate = pytest.importorskip("evaluate")


def test_table_aligns_columns_and_marks_failed_rows():
    rows = [
        {"method": "calseg", "dataset": "easy_256x256x2000_s1", "nf_recall": 0.91234, "nf_precision": 1.0,
         "nf_combined": 0.9541, "iou_f1": 0.8, "spike_r": None, "trace_r": 0.5, "wall_s": 12.34,
         "peak_rss_mb": 812.4, "status": "ok"},
        {"method": "suite2p", "dataset": "easy", "status": "failed: exit 1: boom"},
    ]
    lines = evaluate.format_table(rows, evaluate._SEG_HEAD).splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-"}
    assert lines[0].split()[:2] == ["method", "dataset"]
    cells = lines[2].split()
    assert cells[:5] == ["calseg", "easy_256x256x2000_s1", "0.912", "1.000", "0.954"]
    assert cells[-2:] == ["12.3", "812"] and "-" in cells  # missing spike r shown as '-'
    assert lines[3].endswith("failed: exit 1: boom")
    # numeric columns are right-aligned: every row's 'wall s' value ends where the header does
    end = lines[0].index("wall s") + len("wall s")
    assert lines[2][end - 4:end] == "12.3"


def _args(**kw):
    base = dict(quick=False, presets=None, seeds=None, size=None, frames=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_configurations_from_options():
    assert evaluate.parse_configs(_args()) == list(evaluate.DEFAULT_CONFIGS)
    assert evaluate.parse_configs(_args(quick=True)) == evaluate.QUICK_CONFIGS
    got = evaluate.parse_configs(_args(presets="easy,hard", seeds="3", size="64x96", frames=200))
    assert got == [("easy", (64, 96), 200, 3), ("hard", (64, 96), 200, 3)]
    assert evaluate.config_name("hard", (64, 96), 200, 3) == "hard_64x96x200_s3"
    with pytest.raises(SystemExit, match="--size"):
        evaluate.parse_configs(_args(size="64by96"))


def test_run_measured_reports_exit_code_time_and_memory(tmp_path):
    code = "import sys, time; x = b'x' * (60 * 2**20); time.sleep(0.4); print('bye'); sys.exit(3)"
    res = evaluate.run_measured([sys.executable, "-c", code], log_path=tmp_path / "log.txt", poll_s=0.05)
    assert res["returncode"] == 3
    assert res["wall_s"] >= 0.4
    assert res["peak_rss_mb"] > 60  # the 60 MB buffer is resident while it sleeps
    assert res["tail"] == "bye"


# ---- calseg.deconvolve pieces changed alongside the spikefinder evaluation

def test_step_constant_bounds_the_operator_norm():
    from calseg.deconvolve import _step_constant, lipschitz_bound
    from calseg.model.temporal import DecayOperator

    for T in (50, 300, 1500):
        for g, r in ((0.0, None), (0.5, None), (0.9, 0.3), (0.99, None), (0.995, 0.8)):
            op = DecayOperator(T, g, rise_gamma=r)
            ref = op.norm_sq  # tight Lanczos value
            assert lipschitz_bound(op) >= ref * (1 - 1e-9), (T, g, r)
            L = _step_constant(op)
            assert ref * (1 - 1e-9) <= L <= 1.02 * ref + 1e-9 or L == lipschitz_bound(op), (T, g, r, L, ref)


def test_rate_output_is_the_smoothed_spike_train():
    import numpy as np
    from scipy.ndimage import gaussian_filter1d

    from calseg.deconvolve import deconvolve
    from calseg.errors import ConfigError

    rng = np.random.default_rng(5)
    T, fps = 1500, 30.0
    s = (rng.random(T) < 0.03) * 1.0
    y = np.convolve(s, np.exp(-np.arange(90) / (fps * 0.8)))[:T] + 0.1 * rng.standard_normal(T)
    sparse, _ = deconvolve(y[:, None], fps, tau=0.8)
    rate, _ = deconvolve(y[:, None], fps, tau=0.8, smooth=0.1)
    np.testing.assert_allclose(rate[:, 0], gaussian_filter1d(sparse[:, 0], 3.0, mode="constant"), atol=1e-12)
    inner = slice(30, T - 30)
    assert abs(rate[inner].sum() - sparse[inner].sum()) < 0.05 * sparse.sum()
    with pytest.raises(ConfigError, match="smooth"):
        deconvolve(y[:, None], fps, smooth=-1.0)
    with pytest.raises(ConfigError, match="n_background"):
        deconvolve(y[:, None], fps, n_background="many")


def test_background_atoms_grow_with_the_recording_length():
    from calseg.deconvolve import background_atoms, deconvolve

    assert background_atoms(600, 30.0) == 3  # 20 s: constant + one slow pair
    assert background_atoms(100 * 60 * 10, 100.0) == 1 + 2 * 30  # 10 min at 100 Hz, 20 s periods
    from calseg.model.background import fourier_background

    k = background_atoms(8, 1000.0, period_s=1e-3)  # capped below the Nyquist limit of 8 frames
    assert k == 5 and fourier_background(8, k).shape == (8, 5)
    import numpy as np
    _, info = deconvolve(np.random.default_rng(0).standard_normal((3000, 1)), 10.0, tau=1.0)
    assert info[0]["n_background"] == background_atoms(3000, 10.0) == 31


def test_bench_pairs_each_suite2p_row_with_the_same_work_and_reports_growth():
    bench = pytest.importorskip("bench")

    def meas(wall, cpu=1.0):
        return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": 100.0, "returncode": 0, "tail": ""}

    rows = []
    for n, scale in ((1000, 1.0), (10000, 12.0)):
        ref = {m: bench._row(m, f"x{n}", n, meas(w * scale)) for m, w in
               ((bench.CALSEG, 10.0), (bench.CALSEG_RIGID, 20.0))}
        rows += list(ref.values())
        for label in (bench.S2P_NOREG, bench.S2P_REG):
            rows.append(bench._row(label, f"x{n}", n, meas(40.0 * scale), ref[bench._REFERENCE[label]]))
    by = {(r["method"], r["n_frames"]): r for r in rows}
    assert by[(bench.S2P_NOREG, 1000)]["wall_ratio"] == pytest.approx(4.0)  # vs calseg without motion
    assert by[(bench.S2P_REG, 1000)]["wall_ratio"] == pytest.approx(2.0)    # vs calseg with rigid motion
    assert by[(bench.CALSEG, 1000)]["s_per_frame"] == pytest.approx(0.01)
    g = bench.growth(rows)
    assert g[bench.CALSEG] == {"from_frames": 1000, "to_frames": 10000, "ratio": pytest.approx(1.2)}
    assert set(g) == {bench.CALSEG, bench.CALSEG_RIGID, bench.S2P_NOREG, bench.S2P_REG}
    failed = bench._row(bench.CALSEG, "x", 500, dict(meas(5.0), returncode=1))
    assert bench.growth([failed, by[(bench.CALSEG, 1000)]])[bench.CALSEG]["ratio"] is None
