"""Motion estimation and correction on small synthetic movies with known sub-pixel motion.

Frames are made by shifting (or warping) a textured image with scipy.ndimage, independently of
the FFT machinery under test; errors are measured against the known displacements.
"""
from __future__ import annotations

import dataclasses
import pickle
import tracemalloc

import numpy as np
import pytest
from numpy.fft import fft2, ifft2
from scipy import ndimage

from calseg.errors import ConfigError, InputError
from calseg.motion import ArrayMovie, CorrectedMovie, MotionEstimate, estimate_motion
from calseg.motion._phasecorr import (
    _evaluate,
    locate_peaks,
    matched_filter,
    reference_filter,
    shifted_tapers,
    spatial_taper,
)
from calseg.motion._smooth import random_walk_noise, smooth_random_walk
from calseg.motion import estimate as estimate_module
from calseg.motion.estimate import _add_shifted, _coverage, _noise_power, _read_smoothed


# ------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------


def texture(shape, rng):
    """Blob 'cells' on a smooth background with fine structure; mean 1, min 0."""
    H, W = shape
    n = H * W // 150
    img = np.zeros(shape)
    img[rng.integers(0, H, n), rng.integers(0, W, n)] = rng.uniform(0.5, 1.5, n)
    img = ndimage.gaussian_filter(img, 2.0) * 25.0
    img += 2.4 * ndimage.gaussian_filter(rng.standard_normal(shape), 8)
    img += 0.6 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    img -= img.min()
    return img / img.mean()


def random_walk(T, rng, step, limit):
    s = np.cumsum(rng.normal(0.0, step, (T, 2)), axis=0)
    return np.clip(s - s.mean(axis=0), -limit, limit)


def shifted_movie(T, shape, rng, *, step=0.15, limit=4.0):
    """Frames whose content is a texture moved by ``s[t]`` (``frame(p) = clean(p - s)``)."""
    m = int(limit) + 6
    H, W = shape
    canvas = texture((H + 2 * m, W + 2 * m), rng)
    s = random_walk(T, rng, step, limit)
    frames = np.stack([ndimage.shift(canvas, st, order=3, mode="nearest")[m : m + H, m : m + W] for st in s])
    return frames.astype(np.float32), s, canvas[m : m + H, m : m + W].astype(np.float32)


def rms_error(correction, content_shift):
    """RMS (over frames, both axes together) of ``correction + content_shift``, up to a constant.

    The reference built from the recording fixes the origin only up to a constant offset.
    """
    e = np.asarray(correction) + content_shift
    e = e - np.median(e, axis=0)
    return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))


def hard_like_movie(T, size, rng, *, contrast=0.4, photons=3.0, step=0.15):
    """Frames with the noise of ``calseg simulate --preset hard`` and its random-walk motion.

    About 3 photons per pixel per frame, gain 2 ADU per photon, 100 ADU dark level, 4 ADU read
    noise, integer output; a texture of modest contrast; 40 % bleaching over 150 s at 30 Hz and
    a slow 6 % global brightness fluctuation; content displaced by a random walk of ``step`` px
    per frame and axis, applied by linear interpolation like the simulator.

    Returns
    -------
    frames : ndarray of shape (T, size, size), float32
    content_shift : ndarray of shape (T, 2)
    """
    m = 12
    canvas = 1.0 + contrast * (texture((size + 2 * m, size + 2 * m), rng) - 1.0)
    s = np.cumsum(rng.normal(0.0, step, (T, 2)), axis=0)
    s = np.clip(s - s.mean(axis=0), 2 - m, m - 2)
    t = np.arange(T) / 30.0
    fluct = ndimage.gaussian_filter1d(rng.standard_normal(T), 30.0)
    brightness = (1.0 - 0.4 * (1.0 - np.exp(-t / 150.0))) * (1.0 + 0.06 * fluct / fluct.std())
    frames = np.empty((T, size, size), np.float32)
    for i in range(T):
        lam = ndimage.shift(canvas, s[i], order=1, mode="nearest")[m : m + size, m : m + size]
        lam = np.clip(lam, 0.0, None) * photons * brightness[i]
        frames[i] = np.rint(2.0 * rng.poisson(lam) + rng.normal(100.0, 4.0, lam.shape))
    return frames, s


# ------------------------------------------------------------------------------------------
# primitives
# ------------------------------------------------------------------------------------------


def test_matrix_dft_matches_inverse_fft_on_the_integer_grid():
    rng = np.random.default_rng(0)
    cross = np.fft.rfft2(rng.standard_normal((3, 20, 17))).astype(np.complex64)
    corr = np.fft.irfft2(cross, s=(20, 17))
    centres = np.array([[0.0, 0.0], [3.0, -5.0], [-7.0, 8.0]])
    vals = _evaluate(cross, (20, 17), centres, np.array([-1.0, 0.0, 1.0]))
    for b, (cy, cx) in enumerate(centres.astype(int)):
        for i, dy in enumerate((-1, 0, 1)):
            for j, dx in enumerate((-1, 0, 1)):
                assert vals[b, i, j] == pytest.approx(corr[b, (cy + dy) % 20, (cx + dx) % 17], abs=1e-4)


def test_peak_of_exact_fourier_shift_is_found_to_a_hundredth_of_a_pixel():
    # periodic, band-limited image moved by an exact Fourier shift: no interpolation error
    rng = np.random.default_rng(1)
    img = ndimage.gaussian_filter(rng.standard_normal((64, 64)), 2.0, mode="wrap")
    truth = rng.uniform(-6, 6, (20, 2))
    ky = np.fft.fftfreq(64)[:, None]
    kx = np.fft.fftfreq(64)[None, :]
    frames = np.stack(
        [np.real(ifft2(fft2(img) * np.exp(-2j * np.pi * (ky * sy + kx * sx)))) for sy, sx in truth]
    ).astype(np.float32)
    ones = np.ones((64, 64), np.float32)  # no taper: the image is periodic
    filt, _ = reference_filter(img, ones, 1.0, 0.5)
    cross = np.fft.rfft2(frames - frames.mean(axis=(1, 2), keepdims=True)) * filt
    found, _ = locate_peaks(cross.astype(np.complex64), (64, 64), (8, 8), 10)
    np.testing.assert_allclose(found, truth, atol=0.01)


def test_matched_filter_is_cross_correlation_for_white_noise_and_finds_exact_shifts():
    rng = np.random.default_rng(1)
    img = ndimage.gaussian_filter(rng.standard_normal((64, 64)), 2.0, mode="wrap")
    ones = np.ones((64, 64), np.float32)
    white = np.full((64, 33), 7.0)
    filt, energy = matched_filter(img, ones, white)
    plain = np.conj(np.fft.rfft2(img - img.mean())) / 7.0
    plain[0, 0] = 0.0
    np.testing.assert_allclose(filt, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())
    assert energy == pytest.approx(np.sum(np.fft.irfft2(plain, s=(64, 64)) ** 2), rel=1e-5)
    # a reference averaged over n frames is shrunk (Wiener) where it is mostly noise
    shrunk, _ = matched_filter(img, ones, white, n_average=4)
    assert np.all(np.abs(shrunk) <= np.abs(filt) + 1e-6)
    truth = rng.uniform(-6, 6, (20, 2))
    ky = np.fft.fftfreq(64)[:, None]
    kx = np.fft.fftfreq(64)[None, :]
    frames = np.stack(
        [np.real(ifft2(fft2(img) * np.exp(-2j * np.pi * (ky * sy + kx * sx)))) for sy, sx in truth]
    ).astype(np.float32)
    cross = np.fft.rfft2(frames - frames.mean(axis=(1, 2), keepdims=True)) * filt
    found, _ = locate_peaks(cross.astype(np.complex64), (64, 64), (8, 8), 10)
    np.testing.assert_allclose(found, truth, atol=0.01)
    # no noise measured at all (a blank residual): floored, still plain cross-correlation
    floored, _ = matched_filter(img, ones, np.zeros((64, 33)))
    np.testing.assert_allclose(floored / np.abs(floored).max(), filt / np.abs(filt).max(), atol=1e-5)
    blank, e0 = matched_filter(np.zeros((64, 64)), ones, np.zeros((64, 33)))
    assert not np.any(blank) and e0 == 0.0


def test_spatial_taper_is_one_inside_and_small_at_the_edges():
    t = spatial_taper((64, 48), 3.0)
    assert t.shape == (64, 48) and t.dtype == np.float32
    assert t[32, 24] > 0.99 and t[0, 0] < 0.01 and t[0, 24] < 0.06 and t[9, 24] == pytest.approx(0.5, abs=0.05)


def test_running_mean_does_not_depend_on_the_split():
    rng = np.random.default_rng(2)
    movie = ArrayMovie(rng.standard_normal((23, 5, 4)).astype(np.float32))
    whole = _read_smoothed(movie, 0, 23, 5)
    parts = np.concatenate([_read_smoothed(movie, a, min(23, a + 4), 5) for a in range(0, 23, 4)])
    np.testing.assert_array_equal(whole, parts)
    data = movie.read().astype(np.float64)
    for t in (0, 1, 11, 22):
        np.testing.assert_allclose(whole[t], data[max(0, t - 2) : t + 3].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_shifted_taper_is_the_taper_moved_by_the_offset():
    base = spatial_taper((40, 50), 2.0)
    moved = shifted_tapers((40, 50), 2.0, np.array([[0.0, 0.0], [3.0, -2.0], [0.4, 0.7]]))
    assert moved.shape == (3, 40, 50) and moved.dtype == np.float32
    np.testing.assert_allclose(moved[0], base, atol=1e-7)
    np.testing.assert_allclose(moved[1][5:-5, 5:-5], base[2:-8, 7:-3], atol=1e-6)  # T(p - (3, -2))
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(moved[2][inner], ndimage.shift(base, (0.4, 0.7), order=3)[inner], atol=2e-3)


def test_reference_accumulation_matches_scipy_shift():
    frame = np.random.default_rng(3).random((20, 17)).astype(np.float32)
    for d in ((0.3, -1.7), (0.0, 0.0), (-5.2, 3.0), (19.5, 0.1), (-25.0, 2.0), (2.0, -0.5)):
        total = np.zeros((20, 17))
        _add_shifted(total, frame, np.array(d))
        ref = ndimage.shift(frame.astype(np.float64), d, order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(total, ref, atol=1e-12)
    for n, d in ((17, 0.0), (17, 0.3), (17, -2.7), (9, 5.5), (9, 12.0)):
        ref = ndimage.shift(np.ones(n), d, order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(_coverage(n, d), ref, atol=1e-12)


# ------------------------------------------------------------------------------------------
# temporal smoothing
# ------------------------------------------------------------------------------------------


def _posterior_mean(z, q, r):
    """Random-walk-plus-noise posterior mean with a flat prior: solve (I/r + D'D/q) x = z/r."""
    T = z.size
    D = np.diff(np.eye(T), axis=0)
    return np.linalg.solve(np.eye(T) / r + D.T @ D / q, z / r)


def test_noise_spectrum_keeps_white_noise_and_weights_slow_changes_by_the_run_length(monkeypatch):
    rng = np.random.default_rng(5)
    T, H, W = 96, 32, 32
    ref = ndimage.gaussian_filter(rng.normal(0.0, 10.0, (H, W)), 2.0) + 50.0
    taper = spatial_taper((H, W), 2.0)
    pattern = np.cos(2 * np.pi * 4 * np.arange(W) / W)[None, :] * np.ones((H, 1))
    slow = np.sin(2 * np.pi * np.arange(T) / 48 + 0.3)  # period 48 frames: nearly constant over a run
    white = ref + rng.normal(0.0, 1.0, (T, H, W))
    changing = ref + 0.01 * rng.normal(0.0, 1.0, (T, H, W)) + slow[:, None, None] * pattern
    shifts = np.zeros((T, 2))
    power = {}
    for run in (1, 4):
        monkeypatch.setattr(estimate_module, "_NOISE_BLOCK", run)
        power[run] = [_noise_power(ArrayMovie(m.astype(np.float32)), ref, shifts, taper, 64) for m in (white, changing)]
    # white noise: the per-frame spectrum, whatever the run length (64 frames: ~12 % sampling error)
    assert np.mean(power[4][0]) == pytest.approx(np.mean(power[1][0]), rel=0.1)
    # a change slow against the runs: ~4 times its per-frame power at its frequency (0.98 x 4
    # for a run of 4 frames of this sine)
    assert power[4][1][0, 4] / power[1][1][0, 4] == pytest.approx(4.0, rel=0.1)


def test_smoother_equals_the_posterior_mean_without_jumps():
    rng = np.random.default_rng(20)
    z = np.cumsum(rng.normal(0, 0.15, (120, 2)), axis=0) + rng.normal(0, 0.3, (120, 2))
    q, r = np.array([0.02, 0.03]), np.array([0.09, 0.05])
    out, jumps = smooth_random_walk(z, q, r, jump_sigmas=np.inf)
    assert jumps == 0
    for k in range(2):
        np.testing.assert_allclose(out[:, k], _posterior_mean(z[:, k], q[k], r[k]), atol=1e-9)


def test_noise_and_motion_variances_are_recovered_and_smoothing_reaches_its_bound():
    rng = np.random.default_rng(21)
    T, q, r = 4000, 0.15**2, 0.3**2
    x = np.cumsum(rng.normal(0, np.sqrt(q), (T, 2)), axis=0)
    z = x + rng.normal(0, np.sqrt(r), (T, 2))
    q_hat, r_hat = random_walk_noise(z)
    np.testing.assert_allclose(q_hat, q, rtol=0.2)
    np.testing.assert_allclose(r_hat, r, rtol=0.1)
    out, _ = smooth_random_walk(z, q_hat, r_hat)
    # steady-state smoother variance of the local-level model
    p = (q + np.sqrt(q * q + 4 * q * r)) / 2
    pf = p * r / (p + r)
    j = pf / p
    bound = (pf - j * j * p) / (1 - j * j)
    err = np.sqrt(np.mean((out - x) ** 2, axis=0))
    assert np.all(err < 1.05 * np.sqrt(bound)) and np.all(err < 0.5 * np.sqrt(r))


def test_a_jump_is_followed_not_smeared():
    rng = np.random.default_rng(22)
    x = np.cumsum(rng.normal(0, 0.05, (300, 2)), axis=0)
    x[150:] += [4.0, -3.0]
    z = x + rng.normal(0, 0.3, x.shape)
    q, r = random_walk_noise(z)
    robust, jumps = smooth_random_walk(z, q, r)
    plain, _ = smooth_random_walk(z, q, r, jump_sigmas=np.inf)
    assert jumps >= 1
    near = slice(145, 155)
    assert np.abs(robust[near] - x[near]).max() < 0.8
    assert np.abs(plain[near] - x[near]).max() > 1.0  # what the jump test prevents


def test_an_upper_bound_on_the_noise_keeps_fast_motion():
    # white motion with tiny noise looks like noise around a constant to the series alone
    rng = np.random.default_rng(23)
    x = rng.normal(0, 2.0, (200, 2))
    z = x + rng.normal(0, 0.01, x.shape)
    q, r = random_walk_noise(z)
    assert np.all(r > 1.0)  # the series alone misreads the motion as noise
    q, r = random_walk_noise(z, max_noise=np.full(2, 1e-4))
    out, _ = smooth_random_walk(z, q, r)
    assert np.abs(out - x).max() < 0.05


# ------------------------------------------------------------------------------------------
# rigid estimation
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moving():
    return shifted_movie(160, (96, 96), np.random.default_rng(10))


def test_rigid_error_below_a_tenth_of_a_pixel_at_moderate_noise(moving):
    frames, s, clean = moving
    rng = np.random.default_rng(11)
    noisy = frames + rng.normal(0.0, 0.3, frames.shape).astype(np.float32)  # SNR ~ 3 per pixel
    est = estimate_motion(noisy)
    assert est.mode == "rigid" and est.shifts.shape == (160, 2) and est.block_shifts is None
    assert rms_error(est.shifts, s) < 0.1


@pytest.mark.parametrize("photons", [1.0, 2.0])
def test_rigid_error_below_a_fifth_of_a_pixel_at_one_or_two_photons(photons):
    frames, s, _ = shifted_movie(150, (128, 128), np.random.default_rng(12), step=0.08)
    counts = np.random.default_rng(13).poisson(np.clip(frames, 0, None) * photons).astype(np.float32)
    est = estimate_motion(counts, n_reference_frames=60)
    assert rms_error(est.shifts, s) < 0.2
    if photons == 1.0:
        # slow motion and photon-starved frames: the automatic window averages frames
        assert est.temporal_window > 1


def test_hard_preset_like_noise_is_registered_to_a_fifth_of_a_pixel():
    # error = estimate + content shift, minus its mean (the reference's origin is arbitrary)
    frames, s = hard_like_movie(240, 96, np.random.default_rng(0))
    est = estimate_motion(frames)
    first_pass = estimate_motion(frames, refine=False, smooth=False)

    def rms(correction):
        e = correction + s
        e = e - e.mean(axis=0)
        return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))

    assert rms(est.shifts) < 0.2
    # the refined, smoothed estimate is what brings it there (0.158 against 0.200 px)
    assert rms(est.shifts) < 0.9 * rms(first_pass.shifts)


def test_sign_convention_correcting_recovers_the_static_image(moving):
    frames, s, clean = moving
    est = estimate_motion(frames, reference=clean, temporal_window=1)
    # content moved by +s, the correction to apply is -s (scipy.ndimage.shift meaning)
    np.testing.assert_allclose(est.shifts, -s, atol=0.05)
    corrected = CorrectedMovie(frames, est, order=3).read()
    inner = (slice(None), slice(8, -8), slice(8, -8))
    err = np.abs(corrected[inner] - clean[inner[1:]]).max()
    assert err < 0.05 * float(clean.max() - clean.min())
    # the uncorrected frames are far from the static image: the check above can fail
    assert np.abs(frames[inner] - clean[inner[1:]]).max() > 10 * err


def test_zero_motion_gives_zero_shifts():
    rng = np.random.default_rng(14)
    clean = texture((80, 80), rng).astype(np.float32)
    frames = rng.poisson(np.broadcast_to(clean * 5.0, (100, 80, 80))).astype(np.float32)
    est = estimate_motion(frames)
    assert np.abs(est.shifts).max() < 0.1
    assert np.sqrt(np.mean(est.shifts**2)) < 0.03


@pytest.mark.parametrize("mode", ["rigid", "piecewise"])
def test_batch_size_does_not_change_the_result(moving, mode):
    frames = moving[0][:60]
    kw = dict(mode=mode, temporal_window=3, block_size=(48, 48), n_reference_frames=30)
    a = estimate_motion(frames, batch_size=7, **kw)
    b = estimate_motion(frames, batch_size=60, **kw)
    np.testing.assert_array_equal(a.shifts, b.shifts)
    np.testing.assert_array_equal(a.peak_correlation, b.peak_correlation)
    if mode == "piecewise":
        np.testing.assert_array_equal(a.block_shifts, b.block_shifts)


def test_progress_is_reported_per_batch_of_each_pass(moving):
    calls = []
    estimate_motion(moving[0][:50], batch_size=20, temporal_window=1, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(20, 100), (40, 100), (50, 100), (70, 100), (90, 100), (100, 100)]
    calls.clear()
    estimate_motion(
        moving[0][:50], batch_size=20, temporal_window=1, refine=False, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(20, 50), (40, 50), (50, 50)]


def test_large_shift_within_max_shift_is_found():
    rng = np.random.default_rng(15)
    canvas = texture((140, 140), rng)
    s = np.array([[0.0, 0.0], [9.3, -11.6], [-12.2, 4.4], [0.4, 0.2]] * 5)
    frames = np.stack([ndimage.shift(canvas, st, order=3)[20:120, 20:120] for st in s]).astype(np.float32)
    est = estimate_motion(frames, max_shift=15, reference=canvas[20:120, 20:120], temporal_window=1)
    np.testing.assert_allclose(est.shifts, -s, atol=0.1)


# ------------------------------------------------------------------------------------------
# piecewise-rigid
# ------------------------------------------------------------------------------------------


def warp(t, yy, xx, rigid, amp, size):
    """Content displacement u_t at pixels (yy, xx): rigid walk plus a smooth sinusoidal warp."""
    uy = rigid[t, 0] + amp[t, 0] * np.sin(2 * np.pi * xx / size)
    ux = rigid[t, 1] + amp[t, 1] * np.cos(2 * np.pi * yy / size)
    return uy, ux


def warped_movie(T, size, rng):
    """``frame_t(p) = clean(p - u_t(p))``, content displaced by a smooth non-rigid field ``u_t``.

    Also returns the exact correction fields ``d_t`` with ``frame_t(p - d_t(p)) = clean(p)``,
    i.e. the fixed point ``d = -u(p - d)``.
    """
    m = 12
    canvas = texture((size + 2 * m, size + 2 * m), rng)
    rigid = random_walk(T, rng, 0.15, 3.0)
    amp = 1.5 * np.sin(np.linspace(0, 3 * np.pi, T))[:, None] * np.array([1.0, -0.8])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    frames, fields = [], []
    for t in range(T):
        uy, ux = warp(t, yy, xx, rigid, amp, size)
        frames.append(ndimage.map_coordinates(canvas, [yy + m - uy, xx + m - ux], order=3))
        dy, dx = -uy, -ux
        for _ in range(12):  # contraction ~0.07 per step
            uy2, ux2 = warp(t, yy - dy, xx - dx, rigid, amp, size)
            dy, dx = -uy2, -ux2
        fields.append(np.stack([dy, dx], axis=-1))
    return np.stack(frames).astype(np.float32), np.stack(fields), canvas[m : m + size, m : m + size]


def test_piecewise_recovers_a_smooth_warp_better_than_rigid():
    frames, d_true, clean = warped_movie(40, 128, np.random.default_rng(16))
    noisy = frames + np.random.default_rng(17).normal(0, 0.2, frames.shape).astype(np.float32)
    kw = dict(temporal_window=1, block_size=(32, 32))
    rig = estimate_motion(noisy, mode="rigid", **kw)
    pw = estimate_motion(noisy, mode="piecewise", **kw)
    # (128 - 32) / (32 / 2) = 6 steps -> 7 blocks per axis
    assert pw.block_shifts.shape == (40, 7, 7, 2)
    assert pw.block_centres[0].shape == (7,) and pw.block_size == (32, 32)
    inner = (slice(None), slice(16, -16), slice(16, -16))

    def field_rms(est):
        # a reference built from warped frames is itself warped: compare up to a static field
        e = np.stack([est.displacement_field(t) for t in range(40)]) - d_true
        e = (e - np.median(e, axis=0))[inner]
        return float(np.sqrt(np.mean(np.sum(e**2, axis=-1))))

    def spread(est):
        # corrected frames agree with each other (noise-free frames corrected)
        c = CorrectedMovie(frames, est).read()[inner]
        return float(np.sqrt(np.mean((c - c.mean(axis=0)) ** 2)))

    assert field_rms(pw) < 0.3
    assert field_rms(pw) < 0.35 * field_rms(rig)
    assert spread(pw) < 0.4 * spread(rig)


def test_rigid_field_is_constant_and_piecewise_field_interpolates_block_centres(moving):
    frames = moving[0][:20]
    pw = estimate_motion(frames, mode="piecewise", block_size=(33, 33), temporal_window=1, n_reference_frames=20)
    ys, xs = pw.block_centres
    d = pw.displacement_field(5)
    # odd blocks have integer centres, where the bilinear field equals the block value
    iy, ix = int(ys[1]), int(xs[2])
    assert (iy, ix) == (ys[1], xs[2])
    np.testing.assert_allclose(d[iy, ix], pw.block_shifts[5, 1, 2], atol=1e-12)
    np.testing.assert_allclose(d[iy, (ix + int(xs[3])) // 2], pw.block_shifts[5, 1, 2:4].mean(axis=0), atol=0.02)
    np.testing.assert_allclose(d[0, 0], pw.block_shifts[5, 0, 0], atol=1e-12)  # constant beyond the outer centres
    np.testing.assert_allclose(pw.displacement_field(5, rows=(10, 30), cols=slice(3, 9)), d[10:30, 3:9])
    rig = estimate_motion(frames, temporal_window=1, n_reference_frames=20)
    assert np.all(rig.displacement_field(3) == rig.shifts[3])


# ------------------------------------------------------------------------------------------
# corrected movie
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrected(moving):
    frames = moving[0][:30]
    est = estimate_motion(frames, temporal_window=1, n_reference_frames=30)
    return frames, est


def test_corrected_frames_equal_scipy_shift(corrected):
    frames, est = corrected
    cm = CorrectedMovie(frames, est)
    assert cm.shape == frames.shape and cm.dtype == np.float32 and len(cm) == 30
    out = cm.read(4, 9)
    for i, t in enumerate(range(4, 9)):
        ref = ndimage.shift(frames[t], est.shifts[t], order=1, mode="nearest")
        np.testing.assert_allclose(out[i], ref, rtol=1e-6, atol=1e-6)


def test_batch_shift_kernel_equals_scipy_shift_per_frame_with_large_shifts_and_windows():
    """The rigid default path shifts a whole batch in one numba kernel: same values as
    ``scipy.ndimage.shift(order=1, mode="nearest")`` frame by frame, for shifts past the edge
    and for windows touching the frame border."""
    from calseg.motion.estimate import MotionEstimate

    rng = np.random.default_rng(5)
    T, H, W = 7, 23, 31
    frames = rng.normal(size=(T, H, W)).astype(np.float32)
    shifts = np.array([[0.0, 0.0], [0.3, -0.7], [-2.5, 4.25], [5.9, -6.1], [-0.01, 0.99],
                       [1.0, -1.0], [-3.3, 0.6]])
    est = MotionEstimate(shifts=shifts, mode="rigid", reference=frames.mean(axis=0),
                         peak_correlation=np.ones(T), max_shift=8, temporal_window=1)
    cm = CorrectedMovie(frames, est)
    full = np.stack([ndimage.shift(frames[t], shifts[t], order=1, mode="nearest") for t in range(T)])
    np.testing.assert_allclose(cm.read(), full, rtol=1e-6, atol=1e-6)
    for rows, cols in ((slice(0, 9), slice(0, 12)), (slice(14, 23), slice(20, 31)), (slice(5, 6), slice(3, 30))):
        np.testing.assert_allclose(cm.read(1, 6, rows=rows, cols=cols), full[1:6, rows, cols], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["rigid", "piecewise"])
def test_windows_batches_and_indexing_agree_with_the_full_read(moving, mode):
    frames = moving[0][:24]
    est = estimate_motion(frames, mode=mode, block_size=(32, 32), temporal_window=1, n_reference_frames=24)
    cm = CorrectedMovie(frames, est)
    full = cm.read()
    np.testing.assert_allclose(cm.read(3, 10, rows=slice(20, 50), cols=(0, 31)), full[3:10, 20:50, 0:31], atol=1e-5)
    np.testing.assert_allclose(cm.read(rows=slice(80, 96)), full[:, 80:96], atol=1e-5)
    batches = list(cm.iter_batches(10, start=2))
    assert [b for b, _ in batches] == [2, 12, 22]
    np.testing.assert_array_equal(np.concatenate([x for _, x in batches]), full[2:])
    np.testing.assert_array_equal(cm[-1], full[-1])
    np.testing.assert_array_equal(cm[1:9:3], full[1:9:3])
    assert cm.read(0, 2, dtype=np.float64).dtype == np.float64


def test_corrected_movie_pickles_handle_and_estimate_not_frames(corrected, tmp_path):
    frames, est = corrected
    cm = CorrectedMovie(frames, est)
    back = pickle.loads(pickle.dumps(cm))
    np.testing.assert_array_equal(back.read(0, 5), cm.read(0, 5))
    # with a file-backed movie only the handle travels
    tifffile = pytest.importorskip("tifffile")
    from calseg.io.tiff import read_movie

    path = tmp_path / "m.tif"
    tifffile.imwrite(path, (frames * 100).astype(np.uint16))
    movie = read_movie(path)
    cm_file = CorrectedMovie(movie, est)
    blob = pickle.dumps(cm_file)
    estimate_bytes = len(pickle.dumps(est))
    assert len(blob) < estimate_bytes + 20_000 < frames.nbytes
    back = pickle.loads(blob)
    np.testing.assert_allclose(back.read(0, 3), cm_file.read(0, 3))
    assert back.fps == movie.fps and tuple(back.paths) == tuple(movie.paths)


def test_corrected_movie_rejects_a_mismatched_estimate(corrected):
    frames, est = corrected
    with pytest.raises(InputError, match="estimate covers 30 frames"):
        CorrectedMovie(frames[:10], est)
    with pytest.raises(ConfigError, match="order=7"):
        CorrectedMovie(frames, est, order=7)


# ------------------------------------------------------------------------------------------
# memory, csv, validation
# ------------------------------------------------------------------------------------------


class SyntheticMovie:
    """Frames made on demand (never the whole movie in memory) with the Movie interface."""

    def __init__(self, n_frames, clean, shifts):
        self.clean, self.shifts_ = clean, shifts
        self.shape = (n_frames, *clean.shape)

    def read(self, start=0, stop=None, *, rows=None, cols=None, dtype=None):
        stop = self.shape[0] if stop is None else stop
        out = np.empty((stop - start, *self.clean.shape), dtype=np.float32)
        for i, t in enumerate(range(start, stop)):
            out[i] = np.roll(self.clean, tuple(self.shifts_[t]), axis=(0, 1))
            out[i] += 0.1 * np.sin(t + np.arange(self.clean.size)).reshape(self.clean.shape)  # fixed 'noise'
        return out

    def iter_batches(self, batch_size=256, **kw):
        raise NotImplementedError

    def __len__(self):
        return self.shape[0]


def _peak_bytes(n_frames, batch_size):
    rng = np.random.default_rng(18)
    clean = texture((64, 64), rng).astype(np.float32)
    shifts = rng.integers(-3, 4, (n_frames, 2))
    movie = SyntheticMovie(n_frames, clean, shifts)
    tracemalloc.start()
    try:
        est = estimate_motion(movie, batch_size=batch_size, n_reference_frames=50, temporal_window=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, est


def test_memory_is_bounded_by_the_batch_not_the_length():
    batch = 64
    batch_bytes = batch * 64 * 64 * 4
    short, _ = _peak_bytes(300, batch)
    long, est = _peak_bytes(1500, batch)
    movie_bytes = 1500 * 64 * 64 * 4  # 25 MB if it were read at once
    assert long < 8 * batch_bytes and long < movie_bytes / 3
    # growth from 300 to 1500 frames is only the per-frame results (a few tens of bytes a frame)
    assert long - short < 1200 * 200
    assert est.n_frames == 1500


def test_to_csv_writes_one_row_per_frame(tmp_path, moving):
    frames = moving[0][:12]
    est = estimate_motion(frames, mode="piecewise", block_size=(48, 48), temporal_window=1, n_reference_frames=12)
    path = est.to_csv(tmp_path)
    assert path == tmp_path / "motion.csv"
    header = path.read_text().splitlines()[0].split(",")
    assert header[:4] == ["frame", "dy", "dx", "peak_correlation"] and "nonrigid_rms" in header
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    assert table.shape == (12, len(header))
    np.testing.assert_array_equal(table[:, 0], np.arange(12))
    np.testing.assert_allclose(table[:, 1:3], est.shifts, atol=1e-6)
    rigid = estimate_motion(frames, temporal_window=1, n_reference_frames=12)
    assert np.loadtxt(rigid.to_csv(tmp_path / "r.csv"), delimiter=",", skiprows=1).shape == (12, 4)


def test_estimate_is_frozen(corrected):
    _, est = corrected
    assert isinstance(est, MotionEstimate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.mode = "piecewise"
    with pytest.raises(ValueError):
        est.shifts[0, 0] = 1.0


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        (dict(mode="affine"), ConfigError, "mode='affine'"),
        (dict(max_shift=40), ConfigError, "max_shift=40"),
        (dict(temporal_window=4), ConfigError, "temporal_window=4"),
        (dict(whitening=2.0), ConfigError, "whitening=2.0"),
        (dict(mode="piecewise", block_size=(8, 8)), ConfigError, "block_size"),
        (dict(reference=np.zeros((5, 5))), InputError, "reference has shape"),
        (dict(batch_size=0), ConfigError, "batch_size=0"),
    ],
)
def test_bad_settings_raise_with_the_parameter_named(kwargs, error, text):
    frames = np.zeros((4, 64, 64), np.float32)
    with pytest.raises(error, match=text):
        estimate_motion(frames, **kwargs)


def test_bad_movies_raise_input_error():
    with pytest.raises(InputError, match="3-D"):
        estimate_motion(np.zeros((64, 64)))
    with pytest.raises(InputError, match="8 x 8"):
        estimate_motion(np.zeros((3, 4, 64)))


def test_blank_and_non_finite_movies():
    est = estimate_motion(np.zeros((12, 32, 32), np.float32), temporal_window=1)
    assert np.all(est.shifts == 0) and np.all(est.peak_correlation == 0)
    frames = np.random.default_rng(19).random((12, 32, 32)).astype(np.float32)
    frames[7, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        estimate_motion(frames, temporal_window=1, reference=np.ones((32, 32)))


def test_array_movie_has_the_movie_interface():
    data = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    m = ArrayMovie(data, fps=10)
    assert m.shape == (2, 3, 4) and (m.n_frames, m.height, m.width) == (2, 3, 4) and len(m) == 2
    assert m.fps == 10.0 and m.pixel_size is None and m.paths == () and m.dtype == np.uint16
    np.testing.assert_array_equal(m.read(1, 2, rows=slice(1, 3), cols=(2, 4)), data[1:2, 1:3, 2:4])
    assert m.read(dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(m.read(rows=-1, cols=0), data[:, 2:3, 0:1])
    np.testing.assert_array_equal(m[-1], data[1])
    np.testing.assert_array_equal(m[::-1], data[::-1])
    np.testing.assert_array_equal(m[1:], data[1:])
    assert [b for b, _ in m.iter_batches(1)] == [0, 1]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m)).read(), data)
    with pytest.raises(InputError, match="rows="):
        m.read(rows=slice(2, 9))
    with pytest.raises(InputError, match="stop=5"):
        m.read(0, 5)


def test_real_recording_aligns_better_after_correction(shared_data):
    from calseg.io.tiff import read_movie

    movie = read_movie(shared_data / "sima_example" / "example.tif")  # 20 frames with visible motion
    est = estimate_motion(movie)
    assert np.abs(est.shifts).max() > 1.0  # there is motion to correct

    def mean_corr(frames):
        ref = est.reference[10:-10, 10:-10].ravel()
        return np.mean([np.corrcoef(f[10:-10, 10:-10].ravel(), ref)[0, 1] for f in frames])

    before = mean_corr(movie.read(dtype=np.float32))
    after = mean_corr(CorrectedMovie(movie, est).read())
    assert after > before + 0.05
