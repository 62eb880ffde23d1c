"""Synthetic calcium-imaging recordings with ground truth (``calseg simulate``).

One entry point, :func:`simulate`, renders a two-photon-like movie frame batch by frame batch
into ``movie.tif`` and writes its ground truth into ``truth/``. The whole movie is never held
in memory: 512 x 512 x 3000 frames (standard) takes about 100 s of CPU time (mostly drawing the
Poisson photon noise) and under 200 MB of memory, whatever the number of frames (measured peak
RSS 160 MB at 300 and at 1,200 frames of 512 x 512); beyond 4 GB the movie is ImageJ's
"virtual" hyperstack layout (one header, contiguous frames).

Model (all intensities in photons per pixel per frame before the camera)
------------------------------------------------------------------------
For pixel ``x`` of a canvas (the field of view, padded by the largest motion shift) and
frame ``t``::

    lam(x, t) = bleach(t) * PSF * { V(x) * [ N(x, t) + sum_k S_k(x) * (1 + dff_k(t)) ] }
    movie(y, t) = round(gain * Poisson(lam(y - d_t, t)) + Normal(0, read_noise) + offset)

* ``S_k`` -- soma ``k``: an irregular star-shaped body (ellipse with random 2nd-4th harmonics,
  soft edge) of the given diameter, brightness ``photons * contrast_k``; a fraction of cells
  have a dimmer (cytosolic indicator excluded) nucleus so they look ring-shaped.
* ``N`` -- neuropil: ``photons * G(x) * (1 - occupancy(x)) * (1 + sum_j U_j(x) v_j(t))``, a
  smooth spatial field ``G`` displaced by the somata, with a low-rank fluctuation: one
  global component (correlated across the whole field) and ``NEUROPIL_RANK - 1`` smooth local
  patterns, each with a slow temporal process ``v_j`` (Gaussian-filtered noise).
* ``V`` -- transmission of dark blood vessels (curved tubes, 3-7 px wide).
* ``dff_k`` -- noise-free Delta F / F of neuron ``k``: spikes (Poisson events with a lognormal
  rate across neurons; each event is a burst of several spikes with probability
  ``burst_prob``) convolved with a double-exponential kernel (per-neuron rise/decay), scaled by
  a per-neuron amplitude (Delta F / F per spike) and a mild saturation
  ``dff = x / (1 + x / dff_max)``.
* ``bleach(t) = 1 - bleach_frac * (1 - exp(-t / bleach_tau_s))``.
* ``PSF`` -- Gaussian of standard deviation ``psf_sigma`` px (applied to each spatial component,
  which is exact because the model is linear in them).
* ``d_t = (dy_t, dx_t)`` -- rigid motion: a mean-reverting random walk plus occasional jumps,
  sub-pixel, applied by linear interpolation: ``frame_t(y, x) = reference(y - dy_t, x - dx_t)``;
  to register frame ``t`` shift it by ``(-dy_t, -dx_t)``.

Truth conventions
-----------------
``footprints.tif`` holds each neuron's blurred spatial component ``PSF * (V S_k)`` in the
reference (motion-free) frame, normalised to a maximum of 1. The **mask** of a neuron is the set
of pixels where its footprint is at least ``MASK_THRESHOLD`` (= 0.25) of its maximum.
``masks.tif`` labels each pixel with the neuron whose normalised footprint is largest among the
neurons whose mask contains it (0 = no neuron). ``cell_diameter`` is the diameter of the disk
whose area equals the median mask area (the soma radius is set so that the 0.25 contour of the
blurred soma lies at ``cell_diameter / 2``).

Presets: every parameter of every preset is in the one table ``_TABLE`` below (name, unit and
meaning, then the easy / standard / hard / realistic values); :func:`preset_params` reads it.
``size``, ``frames``, ``fps``, ``cell_diameter``, ``motion`` and the neuron count can be
overridden from the command line. ``easy``: high SNR, few overlaps, no motion; ``standard``:
typical 30 Hz GCaMP6s (decay ~1 s), moderate noise, some overlaps; ``hard``: low SNR, dim cells,
more overlaps, motion on.

The realistic preset reproduces statistics measured on a real Neurofinder 00.xx clip (512 x 512,
7 Hz, GCaMP6s): about one photon per pixel per frame (per-pixel noise SD ~ mean), cells of median
area ~67 px no brighter than their surround in the mean image, 60 % with a dark nucleus, a median
of ~2 transients per cell in 600 frames, peak Delta F / F median ~0.55, neuropil fluctuating ~8 %
and correlated across the field, dark vessels over ~3 % of the field. Its table values are
calibrated so that these statistics, measured on the simulated movie with the estimators in
``tests/test_simulate.py::test_realistic_statistics``, land on the targets (e.g. ``amplitude`` and
``neuropil_fluct`` are larger than the measured 0.55 / 8 % because a region of interest mixes
in neuropil and smoothing removes part of the fluctuation). Motion is off because the measured
clip was already registered. Measured on a full-size realistic simulation (512 x 512 x 600,
seed 7, 315 cells): noise SD / mean 1.01, median area 66 px, 58 % with a visible nucleus,
mask / surround brightness 0.94, median 2 transients per cell, 24 % with none, peak dF/F median
0.52, vessels 3.5 %, neuropil fluctuation 8.8 % (quadrant correlation 0.92); Suite2p 1.1.0
(diameter 9, no registration) found 46 of the 315 cells (recall 0.15, precision 1.0).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ._version import __version__
from .errors import ConfigError, OutputError

log = logging.getLogger("calseg")

MASK_THRESHOLD = 0.25
"""A neuron's mask is where its footprint is at least this fraction of its maximum."""

NEUROPIL_RANK = 4
"""Number of neuropil fluctuation components (one global + local smooth patterns)."""

BATCH_FRAMES = 32
"""Frames rendered at once (memory ~ BATCH_FRAMES * canvas * 8 bytes)."""

PRESET_NAMES = ("easy", "standard", "hard", "realistic")

# The one preset table. name: (unit -- meaning, easy, standard, hard, realistic)
_TABLE = {
    "height":         ("px -- field rows", 256, 256, 256, 512),
    "width":          ("px -- field columns", 256, 256, 256, 512),
    "n_frames":       ("frames -- movie length", 1000, 1000, 1000, 600),
    "fps":            ("Hz -- frame rate", 30.0, 30.0, 30.0, 7.0),
    "density":        ("cells per 1e4 px (at this cell_diameter) -- default n_neurons",
                       4.0, 8.0, 10.0, 12.0),
    "cell_diameter":  ("px -- median equivalent mask diameter", 12.0, 12.0, 12.0, 9.1),
    "diameter_cv":    ("log-SD of diameters across cells", 0.10, 0.12, 0.15, 0.15),
    "irregularity":   ("SD of the soma outline's 2nd-4th harmonics", 0.08, 0.12, 0.15, 0.15),
    "overlap_frac":   ("fraction of cells allowed to overlap a neighbour", 0.02, 0.10, 0.25, 0.15),
    "nucleus_frac":   ("fraction of cells with a dark nucleus", 0.20, 0.40, 0.50, 0.62),
    "nucleus_depth":  ("relative dimming at the nucleus", 0.6, 0.6, 0.7, 0.75),
    "rate_hz":        ("events/s -- median event rate (lognormal across cells)",
                       0.50, 0.30, 0.20, 0.017),
    "rate_sigma":     ("log-SD of event rates across cells", 0.5, 0.7, 0.8, 1.5),
    "burst_prob":     ("probability that an event is a burst", 0.15, 0.20, 0.20, 0.60),
    "burst_extra":    ("spikes -- mean extra spikes in a burst (size 2 + Poisson)",
                       1.0, 1.5, 1.5, 1.5),
    "amplitude":      ("dF/F per spike -- median", 0.50, 0.25, 0.15, 0.42),
    "amplitude_cv":   ("log-SD of amplitudes across cells", 0.2, 0.3, 0.4, 0.5),
    "dff_max":        ("dF/F -- saturation scale", 8.0, 5.0, 4.0, 4.0),
    "tau_rise_s":     ("s -- median rise time constant", 0.05, 0.07, 0.08, 0.08),
    "tau_decay_s":    ("s -- median decay time constant", 1.0, 1.0, 1.2, 1.2),
    "tau_cv":         ("log-SD of time constants across cells", 0.15, 0.2, 0.25, 0.25),
    "photons":        ("photons/px/frame -- mean neuropil baseline", 40.0, 10.0, 3.0, 1.0),
    "contrast":       ("x neuropil -- median soma brightness", 2.0, 1.5, 1.15, 0.95),
    "contrast_sigma": ("log-SD of soma brightness", 0.2, 0.25, 0.3, 0.25),
    "background_cv":  ("log-SD of the smooth baseline field", 0.15, 0.2, 0.25, 0.3),
    "neuropil_fluct": ("relative SD of neuropil fluctuations", 0.02, 0.04, 0.08, 0.11),
    "neuropil_tau_s": ("s -- time scale of neuropil fluctuations", 2.0, 2.0, 2.0, 3.0),
    "bleach_frac":    ("fraction of signal bleachable", 0.2, 0.3, 0.4, 0.3),
    "bleach_tau_s":   ("s -- bleaching time constant", 1000.0, 300.0, 150.0, 300.0),
    "psf_sigma":      ("px -- Gaussian PSF SD", 1.0, 1.0, 1.2, 1.0),
    "gain":           ("ADU per photon", 2.0, 2.0, 2.0, 10.0),
    "offset":         ("ADU -- dark level", 100.0, 100.0, 100.0, 0.0),
    "read_noise":     ("ADU -- Gaussian read-noise SD", 1.0, 2.0, 4.0, 2.0),
    "vessel_frac":    ("fraction of field under dark vessels (transmission < 0.5)",
                       0.0, 0.01, 0.02, 0.035),
    "motion":         ("rigid motion on/off", False, False, True, False),
    "motion_step_px": ("px -- per-frame random-walk SD", 0.10, 0.10, 0.15, 0.10),
    "motion_tau_s":   ("s -- mean-reversion time of the walk", 2.0, 2.0, 2.0, 2.0),
    "jump_rate_hz":   ("1/s -- rate of sudden jumps", 0.02, 0.02, 0.05, 0.02),
    "jump_px":        ("px -- SD of a jump's new resting offset", 2.0, 2.0, 3.0, 2.0),
    "motion_max_px":  ("px -- largest shift", 6.0, 6.0, 8.0, 6.0),
}

# Options a caller may override: name -> (type, low, high) inclusive.
_LIMITS = {
    "height": (int, 16, 8192),
    "width": (int, 16, 8192),
    "n_frames": (int, 2, 1_000_000),
    "fps": (float, 0.1, 1000.0),
    "n_neurons": (int, 1, 1_000_000),
    "cell_diameter": (float, 3.0, 100.0),
    "seed": (int, 0, 2**32 - 1),
}


def preset_params(preset: str) -> dict:
    """Return the full parameter dictionary of a preset (from ``_TABLE``).

    Parameters
    ----------
    preset : {"easy", "standard", "hard", "realistic"}

    Returns
    -------
    dict
            Parameter name -> value (the units are in ``_TABLE``).
    """
    if preset not in PRESET_NAMES:
        raise ConfigError(f"preset={preset!r} is not allowed; choose one of {', '.join(PRESET_NAMES)}")
    i = PRESET_NAMES.index(preset)
    return {name: row[1 + i] for name, row in _TABLE.items()}


@dataclass(frozen=True)
class SimulationInfo:
    """What :func:`simulate` wrote.

    Attributes
    ----------
    out_dir : Path
        The output folder (``movie.tif`` and ``truth/``).
    preset : str
    shape : tuple of int
        ``(T, H, W)`` of ``movie.tif``.
    fps : float
    n_neurons : int
    seed : int
    motion : bool
    params : dict
        Every parameter used (also in ``truth/params.json``).
    command : str
        The ``calseg simulate`` command line that reproduces the recording.
    elapsed_s : float
        Wall-clock time of the simulation.
    """

    out_dir: Path
    preset: str
    shape: tuple
    fps: float
    n_neurons: int
    seed: int
    motion: bool
    params: dict = field(repr=False)
    command: str = ""
    elapsed_s: float = 0.0


# --------------------------------------------------------------------------- validation


def _check(name: str, value, cli_name: str | None = None):
    kind, lo, hi = _LIMITS[name]
    label = cli_name or name
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{label}={value!r} is not a number; allowed: {kind.__name__} in [{lo}, {hi}]")
    if kind is int and float(value) != int(value):
        raise ConfigError(f"{label}={value!r} is not an integer; allowed: integer in [{lo}, {hi}]")
    if not math.isfinite(float(value)) or not lo <= value <= hi:
        raise ConfigError(f"{label}={value!r} is out of range; allowed: {kind.__name__} in [{lo}, {hi}]")
    return kind(value)


def _resolve(preset, height, width, n_frames, fps, n_neurons, cell_diameter, motion, seed) -> dict:
    p = preset_params(preset)
    for name, value in (("height", height), ("width", width), ("n_frames", n_frames), ("fps", fps),
                        ("cell_diameter", cell_diameter)):
        if value is not None:
            p[name] = _check(name, value)
    if motion is not None:
        if not isinstance(motion, (bool, np.bool_)):
            raise ConfigError(f"motion={motion!r} is not allowed; use True or False")
        p["motion"] = bool(motion)
    p["seed"] = _check("seed", seed)
    H, W = p["height"], p["width"]
    if p["cell_diameter"] > min(H, W) / 2:
        raise ConfigError(f"cell_diameter={p['cell_diameter']!r} is too large for a {H}x{W} field; "
                          f"allowed: at most {min(H, W) / 2} (half the smaller side)")
    if n_neurons is None:
        # Density is per 1e4 px at the preset's own diameter; keep the area fraction if changed.
        d0 = _TABLE["cell_diameter"][1 + PRESET_NAMES.index(preset)]
        p["n_neurons"] = max(1, int(round(p["density"] * H * W / 1e4
                                          * (d0 / p["cell_diameter"]) ** 2)))
    else:
        p["n_neurons"] = _check("n_neurons", n_neurons)
    max_cells = int(0.5 * H * W / (math.pi * (p["cell_diameter"] / 2) ** 2))
    if p["n_neurons"] > max_cells:
        raise ConfigError(f"n_neurons={p['n_neurons']} is too many for a {H}x{W} field with "
                          f"cell_diameter={p['cell_diameter']}; allowed: 1 to {max_cells}")
    p["preset"] = preset
    p["mask_threshold"] = MASK_THRESHOLD
    p["neuropil_rank"] = NEUROPIL_RANK
    p["calseg_version"] = __version__
    return p


def _command(out_dir, p) -> str:
    return (f"calseg simulate -o {out_dir} --preset {p['preset']} --size {p['height']}x{p['width']}"
            f" --frames {p['n_frames']} --fps {p['fps']!r} --neurons {p['n_neurons']}"
            f" --cell-diameter {p['cell_diameter']!r} {'--motion' if p['motion'] else '--no-motion'}"
            f" --seed {p['seed']}")


# --------------------------------------------------------------------------- spatial model


def _step_down(x, width):
    """Logistic 1 / (1 + exp(x / width)) without overflow: 1 for x << 0, 0 for x >> 0."""
    return 0.5 * (1.0 - np.tanh(x / (2.0 * width)))


def _smooth_field(rng, shape, scale_px):
    """A zero-mean, unit-SD smooth Gaussian random field of correlation length ~scale_px."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), scale_px, mode="wrap")
    sd = f.std()
    return (f - f.mean()) / (sd if sd > 0 else 1.0)


def _vessels(rng, shape, target_frac, psf_sigma):
    """Transmission map in (0, 1] with dark curved tubes covering ~target_frac of the field."""
    from scipy.ndimage import distance_transform_edt

    H, W = shape
    trans = np.ones(shape)
    if target_frac <= 0:
        return trans
    covered = np.zeros(shape, dtype=bool)
    for _ in range(200):
        if covered.mean() >= target_frac:
            break
        width = rng.uniform(3.0, 7.0)
        depth = rng.uniform(0.7, 0.9)
        # Enter from a random border point, heading inwards, wandering smoothly.
        side = rng.integers(4)
        if side == 0:
            y, x, ang = 0.0, rng.uniform(0, W), rng.uniform(0.2, np.pi - 0.2)
        elif side == 1:
            y, x, ang = H - 1.0, rng.uniform(0, W), -rng.uniform(0.2, np.pi - 0.2)
        elif side == 2:
            y, x, ang = rng.uniform(0, H), 0.0, rng.uniform(-np.pi / 2 + 0.2, np.pi / 2 - 0.2)
        else:
            y, x, ang = rng.uniform(0, H), W - 1.0, rng.uniform(np.pi / 2 + 0.2, 3 * np.pi / 2 - 0.2)
        path = np.zeros(shape, dtype=bool)
        dang = 0.0
        for _step in range(4 * (H + W)):
            iy, ix = int(round(y)), int(round(x))
            if not (0 <= iy < H and 0 <= ix < W):
                if _step > 2:
                    break
            else:
                path[iy, ix] = True
            dang = 0.9 * dang + rng.normal(0, 0.006)  # gently curving, rarely looping
            ang += dang
            y += 0.7 * np.sin(ang)
            x += 0.7 * np.cos(ang)
        dist = distance_transform_edt(~path)
        tube = _step_down(dist - width / 2, 0.5)
        trans *= 1.0 - depth * tube
        covered |= trans < 0.5
    return trans


def _soma(rng, radius, irregularity, nucleus, nucleus_depth, edge=0.4):
    """Local (box) images of one soma: body in [0, 1] and nucleus dimming factor in (0, 1].

    Returns (body, dim, cy, cx) where (cy, cx) is the soma centre inside the box.
    """
    ratio = 1.0 + abs(rng.normal(0, 0.12))
    theta0 = rng.uniform(0, np.pi)
    harm = [(m, rng.normal(0, irregularity / (m - 1)), rng.uniform(0, 2 * np.pi)) for m in (2, 3, 4)]
    half = int(math.ceil(radius * (ratio ** 0.5) * (1 + 3 * irregularity) + 3))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    # Elongate along theta0, keeping the area of the unperturbed ellipse = pi r^2.
    c, s = np.cos(theta0), np.sin(theta0)
    u = (c * xx + s * yy) / np.sqrt(ratio)
    v = (-s * xx + c * yy) * np.sqrt(ratio)
    rho = np.hypot(u, v)
    th = np.arctan2(v, u)
    r_theta = radius * (1.0 + sum(a * np.cos(m * th - ph) for m, a, ph in harm))
    body = _step_down(rho - r_theta, edge)
    dim = np.ones_like(body)
    if nucleus:
        nr = radius * rng.uniform(0.5, 0.65)
        oy, ox = rng.normal(0, 0.1 * radius, 2)
        d = np.hypot(yy - oy, xx - ox)
        dim = 1.0 - nucleus_depth * rng.uniform(0.85, 1.0) * _step_down(d - nr, edge)
    return body, dim, half, half


def _place(rng, n, shape, pad, radii, overlap_frac, trans):
    """Soma centres (canvas coordinates) inside the visible field, honouring overlap rules."""
    H, W = shape
    centers = np.zeros((n, 2))
    overlaps = rng.random(n) < overlap_frac
    for k in range(n):
        for _try in range(2000):
            cy = rng.uniform(0, H) + pad
            cx = rng.uniform(0, W) + pad
            if trans[int(cy), int(cx)] < 0.5:
                continue
            if k:
                d = np.hypot(centers[:k, 0] - cy, centers[:k, 1] - cx)
                need = (radii[:k] + radii[k]) * np.where(overlaps[:k] | overlaps[k], 0.55, 1.05)
                if np.any(d < need):
                    continue
            centers[k] = cy, cx
            break
        else:
            raise ConfigError(f"n_neurons={n} cannot be placed in a {H}x{W} field with these cell "
                              f"sizes (placed {k}); allowed: fewer neurons or smaller cells")
    return centers


# --------------------------------------------------------------------------- temporal model


def _spikes(rng, n, T, fps, rates, burst_prob, burst_extra):
    """Spike counts per frame, shape (T, n), from Poisson events with bursts."""
    S = np.zeros((T, n), dtype=np.int32)
    dur = T / fps
    for k in range(n):
        n_ev = rng.poisson(rates[k] * dur)
        t_ev = rng.uniform(0, dur, n_ev)
        for t0 in t_ev:
            m = 1
            if rng.random() < burst_prob:
                m = 2 + rng.poisson(burst_extra)
            ts = t0 + np.concatenate([[0.0], np.cumsum(rng.exponential(0.02, m - 1))])
            fr = (ts * fps).astype(np.int64)
            fr = fr[fr < T]
            np.add.at(S[:, k], fr, 1)
    return S


def _calcium(S, fps, tau_rise, tau_decay, amplitude, dff_max):
    """Noise-free Delta F / F, shape (T, n): double-exponential kernel sampled mid-frame.

    A spike in frame ``t`` contributes ``h((t' - t + 1/2) / fps)`` to frame ``t' >= t`` with
    ``h(s) = (exp(-s / tau_decay) - exp(-s / tau_rise)) / peak``, computed by two AR(1)
    recursions (vectorised over neurons).
    """
    T, n = S.shape
    gd = np.exp(-1.0 / (fps * tau_decay))
    gr = np.exp(-1.0 / (fps * tau_rise))
    tpk = np.log(tau_decay / tau_rise) * tau_decay * tau_rise / (tau_decay - tau_rise)
    norm = np.exp(-tpk / tau_decay) - np.exp(-tpk / tau_rise)
    d = np.zeros(n)
    r = np.zeros(n)
    X = np.empty((T, n))
    s = S.astype(float)
    for t in range(T):
        d = gd * d + s[t]
        r = gr * r + s[t]
        X[t] = np.sqrt(gd) * d - np.sqrt(gr) * r
    X *= amplitude / norm
    return X / (1.0 + X / dff_max)


def _slow_process(rng, T, fps, tau_s):
    """Unit-SD, zero-mean Gaussian-filtered noise with time scale tau_s, shape (T,)."""
    from scipy.ndimage import gaussian_filter1d

    sig = max(tau_s * fps, 0.5)
    pad = int(4 * sig) + 1
    v = gaussian_filter1d(rng.standard_normal(T + 2 * pad), sig)[pad:pad + T]
    sd = v.std()
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


def _motion(rng, T, fps, step, tau_s, jump_rate, jump_px, max_px):
    """True rigid shifts (dy, dx) per frame, shape (T, 2): OU random walk + jumps."""
    a = np.exp(-1.0 / (tau_s * fps))
    shifts = np.zeros((T, 2))
    base = np.zeros(2)
    cur = np.zeros(2)
    p_jump = 1.0 - np.exp(-jump_rate / fps)
    for t in range(T):
        if t and rng.random() < p_jump:
            base = np.clip(rng.normal(0, jump_px, 2), -max_px / 2, max_px / 2)
        cur = base + a * (cur - base) + rng.normal(0, step, 2)
        cur = np.clip(cur, -max_px, max_px)
        shifts[t] = cur
    return shifts


# --------------------------------------------------------------------------- writing


def _prepare_dir(out_dir: Path, force: bool) -> Path:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputError(f"output {str(out_dir)!r} exists and is not a folder")
        if any(out_dir.iterdir()) and not force:
            raise OutputError(f"output folder {str(out_dir)!r} is not empty; "
                              "use --force (force=True) to replace it")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write into {str(parent)!r}: {exc.strerror or exc}") from exc
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should not be
    return tmp


def _commit_dir(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_table(path: Path, X, fps, fmt):
    T, n = X.shape
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "time_s", *range(1, n + 1)])
        for t in range(T):
            w.writerow([t, f"{t / fps:.6f}", *(fmt % v for v in X[t])])


# --------------------------------------------------------------------------- entry point


def simulate(out_dir, *, preset="standard", height=None, width=None, n_frames=None, fps=None,
             n_neurons=None, cell_diameter=None, motion=None, seed=0, force=False,
             progress: Callable[[int, int], None] | None = None) -> SimulationInfo:
    """Simulate a calcium-imaging recording with ground truth and write it to ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder; created. Must be absent or empty unless ``force``.
    preset : {"easy", "standard", "hard", "realistic"}
        Parameter set (values in ``_TABLE``).
    height, width : int, optional
        Field of view in pixels (16..8192); preset default when None.
    n_frames : int, optional
        Number of frames T (2..1e6).
    fps : float, optional
        Frame rate in Hz (0.1..1000). Kinetics are given in seconds, so they scale with it.
    n_neurons : int, optional
        Number of neurons; default = preset density x field area.
    cell_diameter : float, optional
        Equivalent diameter of the median mask, px (3..100, at most half the smaller side).
    motion : bool, optional
        Rigid motion on/off; preset default when None.
    seed : int
        Seed (0..2**32-1). Same seed and parameters -> byte-identical ``movie.tif``.
    force : bool
        Replace a non-empty ``out_dir``.
    progress : callable, optional
        Called as ``progress(frames_done, n_frames)`` after each frame batch.

    Returns
    -------
    SimulationInfo

    Raises
    ------
    ConfigError
        An option is out of range (the message names it, its value and the allowed range).
    OutputError
        ``out_dir`` is non-empty without ``force``, or cannot be written.

    Notes
    -----
    Files written (all at once: a temporary sibling folder is renamed at the end)::

        movie.tif              uint16 (T, H, W), ImageJ hyperstack, finterval = 1/fps
        truth/regions.json     [{"id": k, "coordinates": [[row, col], ...]}, ...], k = 1..N
        truth/masks.tif        uint16 (H, W) label image (0 = background)
        truth/footprints.tif   float32 (N, H, W), each normalised to max 1
        truth/spikes.csv       frame,time_s,1..N  spike counts per frame
        truth/calcium.csv      frame,time_s,1..N  noise-free Delta F / F
        truth/neurons.csv      per-neuron parameters (centre, brightness, rate, kinetics...)
        truth/vessels.tif      float32 (H, W) vessel transmission in (0, 1]
        truth/motion.csv       frame,dy,dx  (only with motion)
        truth/params.json      every parameter, seed, version, command line

    The model is described in the module docstring.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    p = _resolve(preset, height, width, n_frames, fps, n_neurons, cell_diameter, motion, seed)
    cmd = _command(out_dir, p)
    tmp = _prepare_dir(out_dir, force)
    try:
        _render(tmp, p, cmd, progress)
        _commit_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - t_start
    log.debug("simulated %d neurons, %d frames of %d x %d in %.1f s -> %s", p["n_neurons"],
             p["n_frames"], p["height"], p["width"], elapsed, out_dir)
    return SimulationInfo(out_dir=out_dir, preset=p["preset"],
                          shape=(p["n_frames"], p["height"], p["width"]), fps=p["fps"],
                          n_neurons=p["n_neurons"], seed=p["seed"], motion=p["motion"], params=p,
                          command=cmd, elapsed_s=elapsed)


def _render(root: Path, p: dict, cmd: str, progress) -> None:  # noqa: C901 - one linear recipe
    import tifffile
    from scipy.ndimage import gaussian_filter, shift as nd_shift

    H, W, T, fps, n = p["height"], p["width"], p["n_frames"], p["fps"], p["n_neurons"]
    # Independent streams per model part, so changing one part never reshuffles another.
    ss = np.random.SeedSequence(p["seed"])
    (s_vessel, s_cells, s_spikes, s_kin, s_np, s_motion, s_noise) = ss.spawn(7)
    r_cells = np.random.default_rng(s_cells)
    r_kin = np.random.default_rng(s_kin)

    # The canvas is padded by the largest shift the motion model allows, with or without motion,
    # so that the same seed gives the same cells, activity and background either way (the
    # motion-free recording is the reference of the moving one).
    shifts = None
    pad = int(math.ceil(p["motion_max_px"])) + 2
    if p["motion"]:
        shifts = _motion(np.random.default_rng(s_motion), T, fps, p["motion_step_px"],
                         p["motion_tau_s"], p["jump_rate_hz"], p["jump_px"], p["motion_max_px"])
    Hc, Wc = H + 2 * pad, W + 2 * pad
    sig = p["psf_sigma"]

    trans = _vessels(np.random.default_rng(s_vessel), (Hc, Wc), p["vessel_frac"], sig)
    G = np.exp(p["background_cv"] * _smooth_field(r_cells, (Hc, Wc), max(H, W) / 12))
    G /= G.mean()

    # Somata. The 0.25 contour of a blurred soft disk of radius R lies ~0.55 sigma + 0.25 outside
    # R, so R is reduced by that much to make the mask diameter equal cell_diameter.
    diam = p["cell_diameter"] * np.exp(p["diameter_cv"] * r_cells.standard_normal(n))
    radii = np.maximum(diam / 2 - 0.55 * sig - 0.25, 1.0)
    centers = _place(r_cells, n, (H, W), pad, radii, p["overlap_frac"], trans)
    has_nuc = r_cells.random(n) < p["nucleus_frac"]
    contrast = p["contrast"] * np.exp(p["contrast_sigma"] * r_cells.standard_normal(n))
    occupancy = np.zeros((Hc, Wc))
    bodies = []
    for k in range(n):
        body, dim, oy, ox = _soma(r_cells, radii[k], p["irregularity"], has_nuc[k],
                                  p["nucleus_depth"])
        y0 = int(round(centers[k, 0])) - oy
        x0 = int(round(centers[k, 1])) - ox
        bodies.append((body, dim, y0, x0))
    # Occupancy (somata displace neuropil) on the canvas.
    for body, _dim, y0, x0 in bodies:
        ys, xs, by, bx = _clip_box(y0, x0, body.shape, (Hc, Wc))
        occupancy[ys, xs] += body[by, bx]
    np.clip(occupancy, 0, 1, out=occupancy)

    # Blurred spatial components of neurons, in local boxes with a PSF margin.
    m = int(math.ceil(4 * sig))
    comps = []  # (image, y0, x0) on canvas, photons per frame at baseline
    for k, (body, dim, y0, x0) in enumerate(bodies):
        img = np.pad(body * dim, m)
        yy0, xx0 = y0 - m, x0 - m
        ys, xs, by, bx = _clip_box(yy0, xx0, img.shape, (Hc, Wc))
        local = np.zeros(img.shape)
        local[by, bx] = img[by, bx] * trans[ys, xs] * G[ys, xs]
        local = gaussian_filter(local, sig, mode="constant") * (p["photons"] * contrast[k])
        comps.append((local.astype(np.float32), yy0, xx0))

    # Neuropil: base + low-rank slow fluctuation (component 0 global, the rest local patterns).
    r_np = np.random.default_rng(s_np)
    base = p["photons"] * G * (1.0 - occupancy) * trans
    B0 = gaussian_filter(base, sig)
    weights = np.array([0.85] + [0.5 / np.sqrt(NEUROPIL_RANK - 1)] * (NEUROPIL_RANK - 1))
    weights *= p["neuropil_fluct"] / np.sqrt((weights ** 2).sum())
    Us = [np.ones((Hc, Wc))] + [_smooth_field(r_np, (Hc, Wc), max(H, W) / 6)
                                for _ in range(NEUROPIL_RANK - 1)]
    Bj = np.stack([gaussian_filter(base * u, sig) for u in Us]).astype(np.float32)
    V = np.stack([w * _slow_process(r_np, T, fps, p["neuropil_tau_s"]) for w in weights], axis=1)

    # Activity.
    r_sp = np.random.default_rng(s_spikes)
    rates = p["rate_hz"] * np.exp(p["rate_sigma"] * r_sp.standard_normal(n))
    S = _spikes(r_sp, n, T, fps, rates, p["burst_prob"], p["burst_extra"])
    tau_rise = p["tau_rise_s"] * np.exp(p["tau_cv"] * r_kin.standard_normal(n))
    tau_decay = p["tau_decay_s"] * np.exp(p["tau_cv"] * r_kin.standard_normal(n))
    tau_rise = np.minimum(tau_rise, 0.5 * tau_decay)
    amp = p["amplitude"] * np.exp(p["amplitude_cv"] * r_kin.standard_normal(n))
    C = _calcium(S, fps, tau_rise, tau_decay, amp, p["dff_max"])
    tt = np.arange(T) / fps
    bleach = 1.0 - p["bleach_frac"] * (1.0 - np.exp(-tt / p["bleach_tau_s"]))

    # ---- truth (reference frame = canvas cropped by pad)
    truth = root / "truth"
    truth.mkdir()
    fps_meta = {"axes": "TYX", "finterval": 1.0 / fps}
    foot_view = []  # footprints cropped to the field, normalised there to max 1: (img, y0, x0)
    for img, y0, x0 in comps:
        ys, xs, by, bx = _clip_box(y0 - pad, x0 - pad, img.shape, (H, W))
        crop = img[by, bx]
        foot_view.append((crop / crop.max(), ys.start, xs.start))
    label = np.zeros((H, W), dtype=np.uint16)
    best = np.zeros((H, W), dtype=np.float32)
    regions = []
    for k, (f, y0, x0) in enumerate(foot_view):
        ys, xs, by, bx = _clip_box(y0, x0, f.shape, (H, W))
        sub = f[by, bx]
        mask = sub >= MASK_THRESHOLD
        rr, cc = np.nonzero(mask)
        regions.append({"id": k + 1,
                        "coordinates": [[int(r + ys.start), int(c + xs.start)] for r, c in zip(rr, cc)]})
        win = mask & (sub > best[ys, xs])
        best[ys, xs][win] = sub[win]
        label[ys, xs][win] = k + 1
    with open(truth / "regions.json", "w") as fh:
        json.dump(regions, fh)
    tifffile.imwrite(truth / "masks.tif", label, imagej=True, metadata={"axes": "YX"})

    def footprint_pages():
        for f, y0, x0 in foot_view:
            page = np.zeros((H, W), dtype=np.float32)
            ys, xs, by, bx = _clip_box(y0, x0, f.shape, (H, W))
            page[ys, xs] = f[by, bx]
            yield page

    tifffile.imwrite(truth / "footprints.tif", footprint_pages(), shape=(n, H, W),
                     dtype=np.float32, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(truth / "vessels.tif", trans[pad:pad + H, pad:pad + W].astype(np.float32),
                     imagej=True, metadata={"axes": "YX"})
    _write_table(truth / "spikes.csv", S, fps, "%d")
    _write_table(truth / "calcium.csv", C, fps, "%.6g")
    if shifts is not None:
        with open(truth / "motion.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["frame", "dy", "dx"])
            for t in range(T):
                w.writerow([t, f"{shifts[t, 0]:.6f}", f"{shifts[t, 1]:.6f}"])
    with open(truth / "neurons.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "center_row", "center_col", "diameter_px", "mask_area_px", "nucleus",
                    "contrast", "brightness_photons", "rate_hz", "n_spikes", "tau_rise_s",
                    "tau_decay_s", "amplitude_dff_per_spike"])
        for k in range(n):
            w.writerow([k + 1, f"{centers[k, 0] - pad:.3f}", f"{centers[k, 1] - pad:.3f}",
                        f"{diam[k]:.3f}", len(regions[k]["coordinates"]), int(has_nuc[k]),
                        f"{contrast[k]:.4f}", f"{p['photons'] * contrast[k]:.4f}",
                        f"{rates[k]:.5f}", int(S[:, k].sum()), f"{tau_rise[k]:.4f}",
                        f"{tau_decay[k]:.4f}", f"{amp[k]:.4f}"])
    params = dict(p)
    params["command"] = cmd
    params["files"] = {"movie": "movie.tif", "movie_dtype": "uint16", "movie_axes": "TYX",
                       "mask_rule": f"footprint >= {MASK_THRESHOLD} * max(footprint)",
                       "motion_convention": "frame_t(y, x) = reference(y - dy_t, x - dx_t)"}
    with open(truth / "params.json", "w") as fh:
        json.dump(params, fh, indent=2)

    # ---- movie, batch by batch
    gain, offset, read = p["gain"], p["offset"], p["read_noise"]
    noise_key = s_noise.generate_state(4)

    def frames():
        done = 0
        for t0 in range(0, T, BATCH_FRAMES):
            t1 = min(T, t0 + BATCH_FRAMES)
            lam = np.tensordot(V[t0:t1].astype(np.float32), Bj, axes=(1, 0))
            lam += B0.astype(np.float32)
            act = (1.0 + C[t0:t1]).astype(np.float32)
            for k, (img, y0, x0) in enumerate(comps):
                ys, xs, by, bx = _clip_box(y0, x0, img.shape, (Hc, Wc))
                lam[:, ys, xs] += act[:, k, None, None] * img[None, by, bx]
            lam *= bleach[t0:t1, None, None].astype(np.float32)
            for i in range(t1 - t0):
                t = t0 + i
                fr = lam[i]
                if shifts is not None:
                    fr = nd_shift(fr, shifts[t], order=1, mode="nearest")[pad:pad + H, pad:pad + W]
                else:
                    fr = np.ascontiguousarray(fr[pad:pad + H, pad:pad + W])
                np.maximum(fr, 0, out=fr)
                rng = np.random.default_rng([*noise_key, t])
                adu = rng.poisson(fr).astype(np.float32) * gain
                adu += rng.normal(0.0, read, fr.shape).astype(np.float32) + offset
                np.rint(adu, out=adu)
                np.clip(adu, 0, 65535, out=adu)
                yield adu.astype(np.uint16)
            done = t1
            if progress is not None:
                progress(done, T)

    with warnings.catch_warnings():
        # beyond 4 GB tifffile writes ImageJ's own layout (one IFD, contiguous frames, what
        # ImageJ and calseg read) and says so in a warning; that is the intended file
        warnings.filterwarnings("ignore", message=".*truncating ImageJ file")
        tifffile.imwrite(root / "movie.tif", frames(), shape=(T, H, W), dtype=np.uint16,
                         imagej=True, metadata=fps_meta)


def _clip_box(y0, x0, shape, bounds):
    """Slices of a box of ``shape`` at (y0, x0) clipped to ``bounds``: (ys, xs, by, bx)."""
    h, w = shape
    Hb, Wb = bounds
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, Hb), min(x0 + w, Wb)
    if yb <= ya or xb <= xa:
        return slice(0, 0), slice(0, 0), slice(0, 0), slice(0, 0)
    return (slice(ya, yb), slice(xa, xb), slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
