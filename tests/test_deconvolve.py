import numpy as np
import pytest
from click.testing import CliRunner
from scipy.signal import lfilter

from calseg.cli import main
from calseg.deconvolve import _diff_sd, deconvolve, deconvolve_trace, noise_level, trace_noise
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


def _resampled(y_slow, factor):
    """Band-limited (Fourier) resampling of a slow series to ``factor`` times its rate, as the
    spikefinder organisers resampled every recording to 100 Hz."""
    from scipy.signal import resample

    return resample(y_slow, len(y_slow) * factor)


@pytest.mark.parametrize("factor,expected", [(1, 1), (2, 2), (4, 4), (12, 8)])
def test_noise_level_sees_through_resampling(factor, expected):
    """White noise of SD 0.5 recorded at a low rate and resampled ``factor`` times: its lag-1
    differences are far too small, but the spectrum's collapse above the original Nyquist
    frequency gives the factor (to a power of two), the noise SD comes from differences at that
    lag, and the noise projected on a transient grows by sqrt(corr_frames)."""
    rng = np.random.default_rng(5)
    y = _resampled(0.5 * rng.standard_normal(40000 // factor), factor)
    sigma, m = noise_level(y)
    assert m == expected
    assert 0.5 * 0.7 < sigma < 0.5 * 1.1, sigma
    assert trace_noise(y) == pytest.approx(sigma * np.sqrt(m))
    if factor > 1:
        assert _diff_sd(y, 1) < 0.7 * sigma  # what the frame-to-frame estimate alone would say


@pytest.mark.parametrize("fps,noise", [(7.0, 0.1), (15.0, 0.05), (30.0, 0.05)])
def test_clean_native_traces_are_not_taken_for_resampled(fps, noise):
    """A clean calcium trace at its own rate (dense spiking, tiny noise): its spectrum falls with
    frequency but never collapses, so the noise stays the frame-to-frame estimate, not the much
    larger spread of the signal over a few frames."""
    s, y = _spiky(4000, 1, fps=fps, tau=1.0, rate=2.0 / fps, noise=noise, seed=9)
    sigma, m = noise_level(y[:, 0])
    assert m == 1
    assert sigma == _diff_sd(y[:, 0], 1) and sigma < 3 * noise


def test_decay_estimate_skips_the_resampling_correlation():
    """An AR(1) calcium process (τ = 0.7 s at 8 Hz) plus noise, resampled to 96 Hz: fitting the
    decay from past the noise's correlation recovers τ; from lag 2 the fit mistakes the
    resampled noise's fast decorrelation for the decay."""
    from calseg.summary import estimate_tau

    fps_slow, factor, tau = 8.0, 12, 0.7
    good, naive = [], []
    for seed in (6, 7, 8):
        rng = np.random.default_rng(seed)
        s = (rng.random(6000) < 0.15) * rng.uniform(0.5, 1.5, 6000)
        c = lfilter([1], [1, -np.exp(-1 / (fps_slow * tau))], s)
        y = _resampled(c + 0.6 * rng.standard_normal(6000), factor)
        m = noise_level(y)[1]
        assert m == 8
        good.append(estimate_tau(y[:, None], fps_slow * factor, min_lag=2 * m))
        naive.append(estimate_tau(y[:, None], fps_slow * factor))
    assert abs(np.mean(good) - tau) < 0.1 * tau, good
    assert abs(np.mean(naive) - tau) > 0.15 * tau, naive


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
