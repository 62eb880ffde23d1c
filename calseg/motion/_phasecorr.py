"""Registration primitives: edge tapers, reference filters, cross-power spectra, sub-pixel peaks.

Every function works on a stack of images at once (a leading batch axis) and treats each image
independently, so results do not depend on how frames are grouped into batches.

Conventions
-----------
``content displacement`` ``s``: a frame ``f`` whose content is the reference ``r`` moved by
``s = (sy, sx)``, i.e. ``f(y, x) = r(y - sy, x - sx)``, has its cross-correlation peak
``c(tau) = sum_x f(x) r(x - tau)`` at ``tau = s``. The functions here return ``s``; the public
API reports the correction ``d = -s``.
"""
from __future__ import annotations

import numpy as np
from scipy import fft as sfft

_WORKERS = 1  # scipy.fft threads; stays 1 so that tile/worker parallelism upstream is not oversubscribed


def _taper_axis(n, slope, centre=0.0):
    """Sigmoid taper along an axis of ``n`` px, its middle moved by ``centre`` (broadcasts)."""
    x = np.abs(np.arange(n, dtype=np.float64) - centre - (n - 1) / 2.0)
    edge = max(n / 2.0 - 3.0 * slope, 0.25 * n)
    return 1.0 / (1.0 + np.exp((x - edge) / slope))


def spatial_taper(shape, slope):
    """Smooth edge taper: product of two sigmoids, ~0.05 at each edge, ~0.5 at ``3 slope`` px from it.

    Parameters
    ----------
    shape : tuple of int (H, W)
    slope : float
        Width of the sigmoid ramp in pixels.

    Returns
    -------
    ndarray of shape (H, W), float32, values in (0, 1)
    """
    return (_taper_axis(shape[0], slope)[:, None] * _taper_axis(shape[1], slope)[None, :]).astype(np.float32)


def shifted_tapers(shape, slope, offsets):
    """:func:`spatial_taper` moved by a (sub-pixel) offset per image: ``T_b(p) = T(p - offsets[b])``.

    A frame whose content is the reference moved by ``s`` and which is tapered by ``T(p - s)``
    equals the tapered reference moved by ``s``, so its correlation peak is not pulled towards
    the taper's centre (which a fixed taper does, in proportion to the displacement).

    Parameters
    ----------
    shape : tuple of int (H, W)
    slope : float
    offsets : ndarray of shape (B, 2)

    Returns
    -------
    ndarray of shape (B, H, W), float32
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    ty = _taper_axis(shape[0], slope, offsets[:, :1]).astype(np.float32)  # (B, H)
    tx = _taper_axis(shape[1], slope, offsets[:, 1:]).astype(np.float32)  # (B, W)
    return ty[:, :, None] * tx[:, None, :]


def gaussian_lowpass(shape, sigma):
    """Fourier transform (rfft2 layout) of a unit-sum Gaussian of ``sigma`` px.

    Returns
    -------
    ndarray of shape (H, W // 2 + 1), float64; all ones when ``sigma == 0``
    """
    ky = sfft.fftfreq(shape[0])[:, None]
    kx = sfft.rfftfreq(shape[1])[None, :]
    return np.exp(-2.0 * np.pi**2 * sigma**2 * (ky**2 + kx**2))


def _half_weights(width):
    """Multiplicity of each rfft column in the full spectrum (1 for DC and Nyquist, else 2)."""
    n = width // 2 + 1
    a = np.full(n, 2.0)
    a[0] = 1.0
    if width % 2 == 0:
        a[-1] = 1.0
    return a


def reference_filter(reference, taper, sigma, whitening=0.5):
    """Partially whitened, low-passed conjugate reference spectrum.

    ``W(k) = conj(R(k)) / |R(k)|**whitening * G_sigma(k)`` with
    ``R = rfft2(taper * (ref - mean(ref)))`` and the DC term set to 0. ``whitening=1`` is phase
    correlation whitened on the reference side (robust to slow brightness changes, but it
    weights noise-dominated frequencies as much as the signal ones), ``whitening=0`` is plain
    cross-correlation (the maximum-likelihood choice for white noise and an exact reference).
    The Gaussian of ``sigma`` px keeps the noise of a low-photon frame from dominating the high
    frequencies and makes the correlation peak smooth for sub-pixel fitting.

    Parameters
    ----------
    reference : ndarray of shape (H, W)
    taper : ndarray of shape (H, W)
    sigma : float
    whitening : float in [0, 1]

    Returns
    -------
    filt : ndarray of shape (H, W // 2 + 1), complex64
    energy : float
        ``||irfft2(W)||^2``, the squared norm of the filter's impulse response (for scores).
    """
    ref = np.asarray(reference, dtype=np.float64)
    spec = sfft.rfft2((ref - ref.mean()) * taper, workers=_WORKERS)
    mag = np.abs(spec)
    eps = 1e-6 * float(mag.max()) + np.finfo(np.float64).tiny
    filt = np.conj(spec) / (mag + eps) ** whitening * gaussian_lowpass(ref.shape, sigma)
    filt[0, 0] = 0.0
    return filt.astype(np.complex64), filter_energy(filt, ref.shape[1])


def frame_spectra(frames, taper, *, weighted_mean=False):
    """``rfft2`` of each mean-removed, tapered frame.

    Parameters
    ----------
    frames : ndarray of shape (B, H, W), float32
    taper : ndarray of shape (H, W) or (B, H, W)
        One taper for all frames, or one per frame.
    weighted_mean : bool
        Remove the taper-weighted mean (which leaves no constant times the taper, so a uniform
        brightness change cannot add a taper-shaped bump to the correlation) instead of the
        plain mean.

    Returns
    -------
    spectra : ndarray of shape (B, H, W // 2 + 1), complex64
    energy : ndarray of shape (B,)
        Squared norm of each tapered frame (Parseval), for normalised scores.
    """
    frames = np.asarray(frames, dtype=np.float32)
    taper = np.asarray(taper, dtype=np.float32)
    if weighted_mean:
        tb = np.broadcast_to(taper, frames.shape)
        w = tb.sum(axis=(1, 2), dtype=np.float64)
        mean = np.einsum("bij,bij->b", frames, tb, dtype=np.float64) / np.where(w > 0, w, 1.0)
    else:
        mean = frames.mean(axis=(1, 2), dtype=np.float64)
    centred = frames - mean[:, None, None].astype(np.float32)
    centred *= taper
    energy = np.einsum("bij,bij->b", centred, centred, dtype=np.float64)
    spectra = sfft.rfft2(centred, workers=_WORKERS)
    return spectra, energy


def filter_energy(filt, width):
    """``||irfft2(filt)||^2`` (Parseval) of a filter in rfft2 layout for frames ``width`` wide."""
    n_pix = filt.shape[0] * width
    return float(np.sum(_half_weights(width) * np.abs(filt) ** 2) / n_pix)


def matched_filter(reference, taper, noise_power, n_average=None):
    """Noise-matched (maximum-likelihood) conjugate reference spectrum.

    ``W(k) = conj(R(k)) w(k) / N(k)`` with ``R = rfft2(taper * (ref - mean))``, ``N`` the power
    spectrum of what is left of a registered frame once the moved reference is taken away
    (shot and read noise, activity, neuropil: all that is not motion), and the Wiener factor
    ``w = S / (S + N / n)``, ``S = max(|R|^2 - N / n, 0)``, for a reference averaged over
    ``n`` frames (``w = 1`` when ``n_average`` is None: a reference taken as exact). For
    Gaussian noise of spectrum ``N`` and an exact reference, the maximum of the correlation
    with ``W`` is the maximum-likelihood displacement; the Wiener factor keeps frequencies at
    which the reference itself is mostly noise from adding their noise to the peak.

    Parameters
    ----------
    reference : ndarray of shape (H, W)
    taper : ndarray of shape (H, W)
    noise_power : ndarray of shape (H, W // 2 + 1)
        Mean ``|rfft2|^2`` of the tapered residuals, the same taper.
    n_average : float, optional
        Number of frames averaged into the reference.

    Returns
    -------
    filt : ndarray of shape (H, W // 2 + 1), complex64
        DC term 0; all zeros when the reference and the noise are blank. The noise is floored
        at ``1e-3`` of the mean ``|R|^2`` (per-pixel SNR capped at 30 dB), so that noise-free
        data get plain cross-correlation.
    energy : float
        ``||irfft2(W)||^2`` (for normalised scores).
    """
    ref = np.asarray(reference, dtype=np.float64)
    spec = sfft.rfft2((ref - ref.mean()) * taper, workers=_WORKERS)
    power = np.abs(spec) ** 2
    # a floor of 1e-3 of the mean signal power per frequency (a 30 dB cap on the per-pixel SNR):
    # on (nearly) noise-free data the residual spectrum is interpolation error, not noise, and
    # the filter becomes plain cross-correlation instead of amplifying that error
    floor = 1e-3 * float(power.mean())
    noise = np.maximum(np.asarray(noise_power, dtype=np.float64), floor)
    if not float(noise.max()) > 0:
        return np.zeros(spec.shape, dtype=np.complex64), 0.0
    if n_average is None:
        wiener = 1.0
    else:
        ref_noise = noise / float(n_average)
        signal = np.maximum(power - ref_noise, 0.0)
        wiener = signal / (signal + ref_noise)
    filt = np.conj(spec) * wiener / noise
    filt[0, 0] = 0.0
    return filt.astype(np.complex64), filter_energy(filt, ref.shape[1])


def _evaluate(cross, shape, centres, offsets):
    """Exact band-limited correlation at ``centres + offsets x offsets`` (matrix DFT).

    Parameters
    ----------
    cross : ndarray of shape (B, H, W // 2 + 1)
    shape : (H, W)
    centres : ndarray of shape (B, 2)
    offsets : ndarray of shape (n,)

    Returns
    -------
    ndarray of shape (B, n, n), float64
    """
    H, W = shape
    fy = sfft.fftfreq(H)
    fx = sfft.rfftfreq(W)
    ty = centres[:, 0, None] + offsets[None, :]
    tx = centres[:, 1, None] + offsets[None, :]
    ey = np.exp(2j * np.pi * ty[:, :, None] * fy[None, None, :])
    ex = _half_weights(W)[None, :, None] * np.exp(2j * np.pi * fx[None, :, None] * tx[:, None, :])
    ey = ey.astype(np.complex64)
    ex = ex.astype(np.complex64)
    return np.real((ey @ cross) @ ex).astype(np.float64) / (H * W)


def _parabola(vm, v0, vp):
    """Vertex offset (in grid steps, within [-0.5, 0.5]) of the parabola through three samples."""
    den = vm - 2.0 * v0 + vp
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(den < 0, 0.5 * (vm - vp) / den, 0.0)
    return np.clip(delta, -0.5, 0.5)


def locate_peaks(cross, shape, max_shift, upsample):
    """Sub-pixel location of each correlation peak within ``|s| <= max_shift``.

    The integer peak of ``irfft2(cross)`` inside the search window is refined by a parabolic
    fit through its integer neighbours, then by :func:`refine_peaks` (a parabolic fit through the
    exactly evaluated correlation ``+-1/upsample`` px around it along each axis).

    Parameters
    ----------
    cross : ndarray of shape (B, H, W // 2 + 1), complex
        Cross-power spectra (frame spectrum times reference filter).
    shape : (H, W)
    max_shift : (int, int)
        Search half-widths along y and x, each ``< min(H, W) / 2``.
    upsample : int
        Inverse of the refinement step in px.

    Returns
    -------
    shifts : ndarray of shape (B, 2), float64
        Content displacement ``s`` (see module notes), clipped to the window.
    peak : ndarray of shape (B,), float64
        Correlation value at the peak.
    """
    H, W = shape
    my, mx = int(max_shift[0]), int(max_shift[1])
    corr = sfft.irfft2(cross, s=(H, W), workers=_WORKERS)
    iy = np.arange(-my, my + 1) % H
    ix = np.arange(-mx, mx + 1) % W
    window = corr[:, iy][:, :, ix]
    b = corr.shape[0]
    flat = window.reshape(b, -1).argmax(axis=1)
    # a flat correlation (blank frame) has no peak: prefer zero displacement on ties
    centre = my * (2 * mx + 1) + mx
    flat = np.where(window[:, my, mx] >= window.reshape(b, -1)[np.arange(b), flat], centre, flat)
    py, px = np.divmod(flat, 2 * mx + 1)
    ty = py - my
    tx = px - mx
    rows = np.arange(b)
    v0 = corr[rows, ty % H, tx % W].astype(np.float64)
    dy = _parabola(corr[rows, (ty - 1) % H, tx % W], v0, corr[rows, (ty + 1) % H, tx % W])
    dx = _parabola(corr[rows, ty % H, (tx - 1) % W], v0, corr[rows, ty % H, (tx + 1) % W])
    centres = np.stack([ty + dy, tx + dx], axis=1).astype(np.float64)
    return refine_peaks(cross, shape, centres, upsample, max_shift)


def refine_peaks(cross, shape, centres, upsample, max_shift, stages=1):
    """Refine peak estimates by parabolic fits through exactly evaluated correlation values.

    Parameters
    ----------
    cross : ndarray of shape (B, H, W // 2 + 1), complex
    shape : (H, W)
    centres : ndarray of shape (B, 2)
        Starting estimates.
    upsample : int
        The fits use samples ``1 / upsample`` px apart.
    max_shift : (int, int)
        Results are clipped to ``|s| <= max_shift``.
    stages : int
        Number of fits at ``1 / upsample`` spacing. One suffices when the start is within
        ~0.3 px (a second changed the error on noise-free data by < 0.0001 px).

    Returns
    -------
    shifts : ndarray of shape (B, 2), float64
    peak : ndarray of shape (B,), float64
    """
    b = cross.shape[0]
    centres = np.array(centres, dtype=np.float64)
    step = 1.0 / max(int(upsample), 1)
    peak = np.zeros(b)
    for h in [step] * stages:
        vals = _evaluate(cross, shape, centres, np.array([-h, 0.0, h]))
        c = vals[:, 1, 1]
        centres = centres + h * np.stack(
            [_parabola(vals[:, 0, 1], c, vals[:, 2, 1]), _parabola(vals[:, 1, 0], c, vals[:, 1, 2])], axis=1
        )
        peak = vals.reshape(b, -1).max(axis=1)
    centres[:, 0] = np.clip(centres[:, 0], -max_shift[0], max_shift[0])
    centres[:, 1] = np.clip(centres[:, 1], -max_shift[1], max_shift[1])
    return centres, peak
