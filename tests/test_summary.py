"""The summary pass: its numba kernel against a numpy twin, and the summary images' meaning."""
import numpy as np
import pytest

from calseg._summary_kernels import batch_stats, peak_over_running_median
from calseg.motion.array_movie import ArrayMovie
from calseg.summary import summarize
from reference import batch_stats_twin


@pytest.mark.parametrize("shape,k", [((37, 5, 7), 3), ((2, 3, 4), 3), ((1, 4, 4), 3), ((20, 1, 6), 1)])
def test_batch_stats_matches_twin(shape, k):
    rng = np.random.default_rng(3)
    X = (100 + 10 * rng.standard_normal(shape)).astype(np.float32)
    t, H, W = shape
    out = [np.empty((H, W)), np.empty((H, W)), np.empty((4, H, W)), np.empty((H, W), np.float32),
           np.empty((H, W), np.float32), np.empty((H, W), np.float32)]
    batch_stats(X, k, True, *out)
    ref = batch_stats_twin(X, k)
    for got, want in zip(out, ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    # without the peak: the same statistics, median and peak left as they were
    out2 = [np.empty_like(o) for o in out[:4]] + [np.full((H, W), -7, np.float32) for _ in range(2)]
    batch_stats(X, k, False, *out2)
    for got, want in zip(out2[:4], ref[:4]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    assert np.all(out2[4] == -7) and np.all(out2[5] == -7)


def test_summary_finds_a_correlated_cell_and_unit_noise():
    rng = np.random.default_rng(0)
    T, H, W = 600, 24, 30
    Y = 50 + rng.standard_normal((T, H, W)).astype(np.float32) * 2.0
    trace = np.zeros(T)
    trace[rng.choice(T, 12, replace=False)] = 20.0
    trace = np.convolve(trace, np.exp(-np.arange(40) / 10.0))[:T]
    Y[:, 10:14, 12:16] += trace[:, None, None].astype(np.float32)
    s = summarize(ArrayMovie(Y, fps=30.0), block=8, batch_size=250)
    np.testing.assert_allclose(s.mean, Y.mean(axis=0), rtol=1e-5)
    # noise: robust frame-to-frame SD of the white part (2.0 everywhere off the cell)
    off = np.ones((H, W), bool)
    off[9:15, 11:17] = False
    assert abs(np.median(s.noise[off]) - 2.0) < 0.1
    # the cell is where the correlation and the peak images are largest
    iy, ix = np.unravel_index(np.argmax(s.correlation), (H, W))
    assert 10 <= iy < 14 and 12 <= ix < 16
    assert s.correlation[off].max() < 0.3 < s.correlation[11, 13]
    assert s.peak[11, 13] > 5 * np.median(s.peak[off])
    assert s.coarse.shape == (T, 3 * 4)


@pytest.mark.parametrize("shape", [(33, 9, 11), (21, 3, 4), (22, 2, 3), (60, 4, 5)])
def test_running_median_peak_equals_scipy_median_filter(shape):
    # The sliding sorted window must give exactly the running median of scipy's median_filter
    # (nearest-edge padding), ties included.
    from scipy import ndimage

    rng = np.random.default_rng(3)
    Xb = rng.standard_normal(shape).astype(np.float32)
    Xb[:, 0, 0] = 1.5                                # a constant pixel: all ties
    Xb[3:8, 1, 1] = 2.0                              # a run of equal values
    Xb[:, 1, 2] = np.round(Xb[:, 1, 2])              # many ties
    base = ndimage.median_filter(Xb, size=(21, 1, 1), mode="nearest")
    expected = (Xb - base).max(axis=0)
    np.testing.assert_array_equal(peak_over_running_median(Xb, 21), expected)


@pytest.mark.parametrize("shape,block", [((3, 50, 37), 16), ((2, 48, 48), 24), ((1, 7, 5), 16)])
def test_block_sums_equal_numpy(shape, block):
    # partial last blocks included; float64 accumulation against numpy's float64 reduceat
    from calseg.summary import _block_sums

    X = np.random.default_rng(3).random(shape, dtype=np.float32)
    t, H, W = shape
    rows = np.add.reduceat(X, np.arange(0, H, block), axis=1, dtype=np.float64)
    ref = np.add.reduceat(rows, np.arange(0, W, block), axis=2).reshape(t, -1)
    got = _block_sums(X, block, -(-H // block), -(-W // block))
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("batch", [300, 2000])
def test_read_ahead_gives_the_summary_of_plain_sequential_batches(batch, monkeypatch):
    """The summary's next batch is read in a thread into a second buffer while the current one
    is used: every image equals the one from batches read one after another."""
    import calseg.summary as summary_module

    rng = np.random.default_rng(0)
    X = (100 + 10 * rng.standard_normal((1100, 40, 48))).astype(np.float32)
    X[:, 10:14, 20:24] += 30 * (rng.random(1100) < 0.05)[:, None, None]
    movie = ArrayMovie(X, fps=30.0)
    kw = dict(batch_size=batch, bin_frames=5, peak_sigma=1.0)
    ahead = summarize(movie, **kw)

    def sequential(movie, batch_size):
        for first in range(0, movie.shape[0], batch_size):
            yield first, np.asarray(movie.read(first, min(movie.shape[0], first + batch_size)), np.float32)

    monkeypatch.setattr(summary_module, "_reused_batches", sequential)
    plain = summarize(movie, **kw)
    for name in ("mean", "noise", "correlation", "peak", "coarse"):
        np.testing.assert_array_equal(getattr(ahead, name), getattr(plain, name), err_msg=name)


def test_tau_from_seed_windows_equals_the_pass_over_whole_frames(monkeypatch):
    """A movie whose windows read cheaply gives each seed's 3 x 3 trace by a window read;
    otherwise (compressed pages) one pass over whole frames: the same traces, the same tau
    (seeds at the borders included)."""
    import calseg.io.cache as cache
    from calseg.summary import estimate_tau

    rng = np.random.default_rng(4)
    T, H, W, fps, tau = 900, 20, 24, 20.0, 0.6
    Y = 10 + rng.standard_normal((T, H, W)).astype(np.float32)
    seeds = np.array([[5, 6], [0, 0], [19, 23], [12, 17]])
    g = np.exp(-1 / (fps * tau))
    for r, c in seeds:
        s = (rng.random(T) < 0.03) * 8.0
        trace = np.zeros(T)
        for t in range(T):
            trace[t] = s[t] + (g * trace[t - 1] if t else 0.0)
        Y[:, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] += trace[:, None, None].astype(np.float32)
    movie = ArrayMovie(Y, fps=fps)
    windows = estimate_tau(movie, fps, seeds=seeds, batch_size=128)
    monkeypatch.setattr(cache, "slow_tile_reads", lambda m, n: "compressed")
    frames = estimate_tau(movie, fps, seeds=seeds, batch_size=128)
    assert windows == frames
    assert windows == pytest.approx(tau, rel=0.25)
