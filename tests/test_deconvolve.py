import numpy as np
import pytest
from click.testing import CliRunner
from scipy.signal import lfilter

from calseg.cli import main
from calseg.deconvolve import deconvolve, deconvolve_trace, trace_noise
from calseg.errors import ConfigError
from calseg.model.background import fourier_background
from calseg.model.temporal import DecayOperator


def _spiky(T, n, fps=30.0, tau=0.8, rate=0.03, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    s = (rng.random((T, n)) < rate).astype(float) * rng.uniform(0.5, 1.5, (T, n))
    c = lfilter([1], [1, -np.exp(-1 / (fps * tau))], s, axis=0)
    return s, c + noise * rng.standard_normal((T, n)) + 1.0


def test_optimality_conditions_hold_at_the_solution():
    """KKT of min_{a>=0,b} ½‖ỹ − Da − Fb‖² + λ(α‖a‖₂ + β‖a‖₁), checked on the returned spikes."""
    _, y = _spiky(400, 1, seed=1)
    y = y[:, 0]
    op = DecayOperator.from_tau(400, 0.8, 30.0)
    lam, (alpha, beta) = 0.6, (1.0, 1.0)
    spikes, _, info = deconvolve_trace(y, op, lam=lam, temporal=(alpha, beta), tol=1e-13, max_iter=20000)
    a = spikes * op.col_norms / info["noise"]
    yn = (y - np.median(y)) / info["noise"]
    F = fourier_background(400, 3)
    P = lambda v: v - F @ (F.T @ v)
    g = op.adjoint(P(op.apply(a)) - P(yn))
    na = np.linalg.norm(a)
    assert na > 0
    pos = a > 1e-9
    resid_pos = g[pos] + lam * beta + lam * alpha * a[pos] / na
    assert np.max(np.abs(resid_pos)) < 1e-3 * max(1.0, np.abs(g).max())
    assert np.all(g[~pos] + lam * beta >= -1e-3)


def test_recovers_spikes_and_keeps_nan_padding():
    s, y = _spiky(3000, 2, seed=2)
    y[2500:, 1] = np.nan
    out, info = deconvolve(y, 30.0, tau=0.8)
    assert np.isnan(out[2500:, 1]).all() and np.isfinite(out[:2500, 1]).all()
    for j, stop in ((0, 3000), (1, 2500)):
        r = np.corrcoef(out[:stop, j], s[:stop, j])[0, 1]
        assert r > 0.8, r
    assert np.all(out[np.isfinite(out)] >= 0)


def test_noise_estimate_is_robust_to_spikes():
    rng = np.random.default_rng(3)
    y = 0.5 * rng.standard_normal(5000)
    y[::50] += 20
    assert abs(trace_noise(y) - 0.5) < 0.05


def test_bad_parameters():
    with pytest.raises(ConfigError, match="fps"):
        deconvolve(np.zeros((20, 1)), 0)
    with pytest.raises(ConfigError, match="lam"):
        deconvolve(np.zeros((20, 1)), 30, lam=-1)


def test_cli_roundtrip_and_errors(tmp_path):
    s, y = _spiky(600, 2, seed=4)
    src = tmp_path / "traces.csv"
    with open(src, "w") as fh:
        fh.write("frame,time_s,a,b\n")
        for t in range(600):
            fh.write(f"{t},{t / 30:.4f},{y[t, 0]:.5f},{y[t, 1]:.5f}\n")
    out = tmp_path / "spikes.csv"
    r = CliRunner().invoke(main, ["deconvolve", str(src), "-o", str(out), "--fps", "30", "--tau", "0.8"])
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0] == "frame,time_s,a,b" and len(lines) == 601
    assert lines[5].split(",")[:2] == ["4", "0.1333"]
    r = CliRunner().invoke(main, ["deconvolve", str(src), "-o", str(out), "--fps", "30"])
    assert r.exit_code == 1 and "exists" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,x\n")
    r = CliRunner().invoke(main, ["deconvolve", str(bad), "-o", str(tmp_path / "o.csv"), "--fps", "30"])
    assert r.exit_code == 1 and "bad.csv" in r.output and "not a number" in r.output
    r = CliRunner().invoke(main, ["deconvolve", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "o.csv"),
                                  "--fps", "30"])
    assert r.exit_code == 1 and "no such file" in r.output
