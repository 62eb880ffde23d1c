"""One streaming pass over a recording: the summary images and signals the pipeline starts from.

Computed in frame batches (memory = a few batches of frames, whatever the recording's length), each
batch by one numba kernel (:func:`calseg._summary_kernels.batch_stats`):

* ``mean`` image and per-pixel ``noise`` SD (robust: median absolute frame-to-frame difference,
  median over batches, divided by 0.6745·√2 — the signal's slow calcium transients barely move it);
* ``correlation`` image: each pixel's mean correlation with its 8 neighbours, on data high-passed
  by removing each batch's per-pixel mean (cells light up; neuropil and noise do not);
* ``peak`` image: the maximum over time of the data binned over about half a decay time and
  blurred over a quarter of a cell, minus the median of its frame batch, in units of its own
  noise (cells that fire once still show, cell-sized transients gain the square root of their
  area over single pixels; slow drifts do not count);
* ``coarse``: block means of every frame on a grid of ``block`` pixels — the neuropil's time
  courses come from its leading singular vectors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MAD_TO_SD = 1.0 / (0.6745 * np.sqrt(2.0))


@dataclass(frozen=True)
class Summary:
    """Summary images of a recording (all (H, W) float32) and coarse block traces (T, nblocks)."""

    mean: np.ndarray
    noise: np.ndarray
    correlation: np.ndarray
    peak: np.ndarray
    coarse: np.ndarray
    block: int
    n_frames: int

    @property
    def shape(self):
        return self.mean.shape


def _neighbour_shifts():
    return [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


_HALF_SHIFTS = [(0, 1), (1, -1), (1, 0), (1, 1)]


def _block_sums(X, block, nby, nbx):
    """Sums of (t, H, W) frames over square blocks (the last row/column of blocks may be
    partial), as (t, nby * nbx) float32, without a padded copy of the batch."""
    from ._summary_kernels import block_sums

    out = np.empty((X.shape[0], nby * nbx), np.float32)
    block_sums(np.ascontiguousarray(X, dtype=np.float32), int(block), out)
    return out


#: bins (of about half a decay time each) in the running median that the peak is measured from
PEAK_BASELINE_BINS = 21


def _in_parts(fn, n, pool, *, axis, out_shape, dtype):
    """``fn(slice)`` over ``pool``'s threads on up to 2 parts of ``range(n)``, the results
    joined along ``axis`` into a new array. For numpy/scipy steps that release the GIL and
    work independently on each part (blurs of separate bins, per-pixel medians): the result is
    the one-call result, bit for bit."""
    out = np.empty(out_shape, dtype)
    cuts = [0, n // 2, n] if pool is not None and n >= 2 else [0, n]
    parts = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    idx = [slice(None)] * len(out_shape)

    def run(sl):
        idx_sl = list(idx)
        idx_sl[axis] = sl
        out[tuple(idx_sl)] = fn(sl)

    if len(parts) == 1:
        run(parts[0])
    else:
        list(pool.map(run, parts))
    return out


def _smoothed_peak(X, bin_frames, sigma, pool=None):
    """Max over time of the binned, blurred frames minus their running median, and the median
    absolute difference of consecutive binned frames (None with fewer than 3 bins), both (H, W).

    The running median spans ``PEAK_BASELINE_BINS`` bins (about ten decay times): neuropil and
    illumination drifts slower than that do not count as peaks, while a transient, a few bins
    long, does not move the median. ``pool``: a thread pool that the binning, the blur and the
    median run on in two parts (each half the time; same results)."""
    from scipy import ndimage

    t, H, W = X.shape
    nb = t // bin_frames
    if nb == 0:
        Xb = X.mean(axis=0, keepdims=True)
    else:
        Xb = _in_parts(lambda sl: X[:nb * bin_frames, sl].reshape(nb, bin_frames, -1, W).mean(axis=1),
                       H, pool, axis=1, out_shape=(nb, H, W), dtype=X.dtype)
    if sigma > 0:
        # (no blur along time: the bins are independent)
        Xb = _in_parts(lambda sl: ndimage.gaussian_filter(Xb[sl], sigma=(0, sigma, sigma),
                                                          mode="nearest"),
                       Xb.shape[0], pool, axis=0, out_shape=Xb.shape, dtype=Xb.dtype)
    if Xb.shape[0] > PEAK_BASELINE_BINS:
        from ._summary_kernels import peak_over_running_median

        peak = peak_over_running_median(np.ascontiguousarray(Xb, dtype=np.float32),
                                        PEAK_BASELINE_BINS)
    else:
        peak = (Xb.max(axis=0) - np.median(Xb, axis=0)).astype(np.float32)
    nd = None
    if Xb.shape[0] >= 3:
        nd = _in_parts(lambda sl: np.median(np.abs(np.diff(Xb[:, sl], axis=0)), axis=0),
                       H, pool, axis=0, out_shape=(H, W), dtype=np.float32)
    return peak, nd


#: frames converted to float32 per read: a batch is filled from reads this size into one buffer
#: kept for the whole pass, instead of a fresh batch-sized array per batch (first-touch page
#: faults of a new 0.5 GB array cost more than the reading: 4.7 s vs 1.0 s per 512x512x3000 pass)
_READ_FRAMES = 128


def _reused_batches(movie, batch_size):
    """``(first_frame, X)`` over ``movie`` in float32 batches of ``batch_size`` frames.

    Two buffers, kept for the whole pass: while the caller works on one batch, a thread reads
    the next into the other (reading and converting a 512 x 512 x 500 batch takes ~0.4 s, most
    of it outside the GIL, and the caller's single-threaded steps leave a core free for it).
    Every X is a view of one of them: the caller must be done with a batch before asking for
    the next one."""
    T = int(movie.shape[0])
    b = int(batch_size)
    starts = list(range(0, T, b))
    if not starts:
        return
    rest = tuple(int(n) for n in movie.shape[1:])
    bufs = [np.empty((min(b, T),) + rest, np.float32) for _ in range(min(2, len(starts)))]

    def fill(i):
        first = starts[i]
        last = min(T, first + b)
        X = bufs[i % len(bufs)][:last - first]
        for s, C in movie.iter_batches(min(_READ_FRAMES, b), start=first, stop=last, dtype=np.float32):
            X[s - first:s - first + C.shape[0]] = C
        return first, X

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calseg-read") as reader:
        pending = reader.submit(fill, 0)
        for i in range(len(starts)):
            first, X = pending.result()
            if i + 1 < len(starts):
                pending = reader.submit(fill, i + 1)     # into the other buffer
            yield first, X


def summarize(movie, *, block: int = 16, batch_size: int = 500, smooth_frames: int = 3,
              bin_frames: int = 1, peak_sigma: float = 0.0, progress=None) -> Summary:
    """Stream ``movie`` once and return its :class:`Summary`.

    Parameters
    ----------
    movie : Movie-like
        Anything with ``shape`` (T, H, W) and ``iter_batches(batch_size, dtype=...)``.
    block : int
        Side of the square blocks averaged into ``coarse`` (neuropil estimation).
    batch_size : int
        Frames per batch; memory grows with it, results barely do.
    smooth_frames : int
        Width of the running mean of the per-pixel peak (``bin_frames`` = 1, ``peak_sigma`` = 0).
    bin_frames : int
        Frames averaged into one before the ``peak`` image (about half a decay time: a transient
        is then one sample with the noise of ``bin_frames`` frames averaged).
    peak_sigma : float
        Gaussian blur (pixels, about a quarter of a cell diameter) of the binned frames before the
        ``peak`` image: a transient of a cell-sized object stands out by the square root of its
        area, where a single pixel's does not. 0 keeps the per-pixel running-mean peak.
    progress : callable(done_frames, total_frames) or None
    """
    from concurrent.futures import ThreadPoolExecutor

    from ._summary_kernels import batch_stats

    T, H, W = movie.shape
    nby, nbx = -(-H // block), -(-W // block)
    s1 = np.zeros((H, W))
    s2 = np.zeros((H, W))
    half = np.zeros((4, H, W))
    noise_parts = []
    peak_raw = np.full((H, W), -np.inf, dtype=np.float32)
    coarse = np.zeros((T, nby * nbx), dtype=np.float32)
    counts = _block_sums(np.ones((1, H, W), np.float32), block, nby, nbx)[0]
    # per-batch outputs of the kernel
    b_s1 = np.empty((H, W))
    b_ss = np.empty((H, W))
    b_cross = np.empty((4, H, W))
    b_dmed = np.empty((H, W), np.float32)
    b_med = np.empty((H, W), np.float32)
    b_peak = np.empty((H, W), np.float32)
    k = max(int(smooth_frames), 1)
    bin_frames = max(int(bin_frames), 1)
    smoothed = bin_frames > 1 or peak_sigma > 0
    peak_noise = []
    done = 0
    # two threads for the numpy/scipy steps of the smoothed peak (the kernels are numba-parallel)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="calseg-summary") as pool:
        for start, X in _reused_batches(movie, batch_size):
            t = X.shape[0]
            coarse[start:start + t] = _block_sums(X, block, nby, nbx) / counts
            batch_stats(X, k, not smoothed, b_s1, b_ss, b_cross, b_dmed, b_med, b_peak)
            if t >= 2:
                noise_parts.append((b_dmed * _MAD_TO_SD, t))
            s1 += b_s1
            s2 += b_ss
            half += b_cross
            # the peak is measured against each batch's own median (slow drifts do not count)
            if smoothed:
                pr, nd = _smoothed_peak(X, bin_frames, peak_sigma, pool)
                np.maximum(peak_raw, pr, out=peak_raw)
                if nd is not None:
                    peak_noise.append(nd)
            else:
                np.maximum(peak_raw, b_peak, out=peak_raw)
            done += t
            if progress is not None:
                progress(done, T)
    if done == 0:
        raise ValueError("movie has no frames")
    mean = (s1 / done).astype(np.float32)
    if noise_parts:
        weights = np.array([w for _, w in noise_parts], dtype=np.float64)
        stack = np.stack([n for n, _ in noise_parts])
        noise = np.median(stack, axis=0) if len(noise_parts) > 2 else np.average(stack, axis=0, weights=weights)
    else:
        noise = np.ones((H, W))
    noise = np.asarray(noise, dtype=np.float32)
    floor = max(float(np.median(noise)) * 1e-3, 1e-6)
    noise = np.maximum(noise, floor)

    # local correlation from the high-passed second moments; the kernel gives the products
    # with the four "forward" neighbours, the other four are the same sums seen from the neighbour
    cross = np.zeros((8, H, W))
    index = {s: j for j, s in enumerate(_neighbour_shifts())}
    for h, (dy, dx) in enumerate(_HALF_SHIFTS):
        ys = slice(max(dy, 0), H + min(dy, 0))
        yd = slice(max(-dy, 0), H + min(-dy, 0))
        xs = slice(max(dx, 0), W + min(dx, 0))
        xd = slice(max(-dx, 0), W + min(-dx, 0))
        cross[index[(dy, dx)], yd, xd] = half[h, yd, xd]
        cross[index[(-dy, -dx)], ys, xs] = half[h, yd, xd]
    sd = np.sqrt(np.maximum(s2, 0))
    corr_sum = np.zeros((H, W))
    n_nb = np.zeros((H, W))
    for j, (dy, dx) in enumerate(_neighbour_shifts()):
        ys = slice(max(dy, 0), H + min(dy, 0))
        yd = slice(max(-dy, 0), H + min(-dy, 0))
        xs = slice(max(dx, 0), W + min(dx, 0))
        xd = slice(max(-dx, 0), W + min(-dx, 0))
        denom = sd[yd, xd] * sd[ys, xs]
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(denom > 0, cross[j, yd, xd] / denom, 0.0)
        corr_sum[yd, xd] += c
        n_nb[yd, xd] += 1
    correlation = (corr_sum / np.maximum(n_nb, 1)).astype(np.float32)
    if smoothed:
        # noise of the binned, blurred frames, measured like the pixels' (median over batches)
        pn = np.median(np.stack(peak_noise), axis=0) * _MAD_TO_SD if peak_noise else noise
        pn = np.maximum(pn, max(float(np.median(pn)) * 1e-3, 1e-6))
        peak = (peak_raw / pn).astype(np.float32)
    else:
        peak = (peak_raw / noise).astype(np.float32)
    return Summary(mean=mean, noise=noise, correlation=correlation, peak=peak, coarse=coarse,
                   block=block, n_frames=T)


def neuropil_atoms(summary: Summary, n_atoms: int, *, min_spread: float = 0.5) -> np.ndarray:
    """Leading temporal components of the coarse block traces that are spread across the field.

    A component is kept only if its spatial loading is spread over at least ``min_spread`` of the
    blocks (participation ratio), so that a single bright neuron never becomes "background".

    Returns
    -------
    ndarray of shape (T, k), k <= n_atoms, unit-norm columns (float64)
    """
    C = summary.coarse.astype(np.float64)
    T, nb = C.shape
    if n_atoms <= 0 or nb < 4 or T < 4:
        return np.zeros((T, 0))
    C = C - C.mean(axis=0)
    sd = C.std(axis=0)
    C = C / np.where(sd > 0, sd, 1.0)
    U, s, Vt = np.linalg.svd(C, full_matrices=False)
    keep = []
    for i in range(min(n_atoms, len(s))):
        v2 = Vt[i] ** 2
        pr = v2.sum() ** 2 / max((v2 ** 2).sum(), 1e-300) / nb
        if pr >= min_spread:
            keep.append(U[:, i])
    if not keep:
        return np.zeros((T, 0))
    return np.stack(keep, axis=1)


def estimate_tau(movie_or_traces, fps: float, *, n_pixels: int = 200, summary: Summary | None = None,
                 max_frames: int = 5000, seeds=None, batch_size: int = 500, min_lag: int = 2,
                 n_seeds: int = 16) -> float:
    """Estimate the calcium decay time (s) from the autocovariance of the most active traces.

    The movie is read in batches of ``batch_size`` whole frames (the memory it takes).
    Only the ``n_seeds`` strongest seeds are used: in sparse, dim recordings most weaker seeds sit
    on neuropil, vessels or noise, whose slow drifts would read as a decay of several seconds.

    For an exponentially decaying calcium process plus white noise, the autocovariance at lags
    k >= 1 is c·γ^k, free of the noise. For each trace (the 3x3 neighbourhood means around the
    ``seeds``, else the ``n_pixels`` pixels of highest local correlation, or the given traces),
    log acov(k) is fitted by a line over the lags from ``min_lag`` (default 2: past the rise) to
    where acov falls below a fifth of acov(``min_lag``); the median γ over traces gives
    τ = −1/(fps·ln γ), clamped to [0.05, 5] s. Traces whose noise is correlated over a few frames
    (resampled to a higher rate) need ``min_lag`` past that correlation length.
    """
    if isinstance(movie_or_traces, np.ndarray) and movie_or_traces.ndim == 2:
        traces = movie_or_traces.astype(np.float64)
    else:
        movie = movie_or_traces
        T, H, W = movie.shape
        stop = min(T, max_frames)
        if seeds is not None and len(seeds):
            from .io.cache import slow_tile_reads

            pts = np.asarray(seeds)[: max(1, min(n_pixels // 4, n_seeds))]
            cols = []
            if slow_tile_reads(movie, len(pts) + 1) is None:
                # each seed's 3 x 3 window alone (a raw file reads only those rows: 0.1 s
                # instead of a 1.5 s pass over every whole frame of a 512^2 x 3000 recording)
                block = np.empty((stop, len(pts)), np.float32)
                for j, (r, c) in enumerate(pts):
                    X = movie.read(0, stop, rows=slice(max(r - 1, 0), min(r + 2, H)),
                                   cols=slice(max(c - 1, 0), min(c + 2, W)), dtype=np.float32)
                    block[:, j] = X.mean(axis=(1, 2))
                cols.append(block)
            else:
                for _, X in movie.iter_batches(batch_size, stop=stop, dtype=np.float32):
                    block = np.empty((X.shape[0], len(pts)), np.float32)
                    for j, (r, c) in enumerate(pts):
                        block[:, j] = X[:, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].mean(axis=(1, 2))
                    cols.append(block)
        else:
            score = summary.correlation if summary is not None else np.ones((H, W))
            flat = np.argsort(score.ravel())[::-1][:n_pixels]
            ys, xs = np.unravel_index(flat, (H, W))
            cols = [X[:, ys, xs] for _, X in movie.iter_batches(batch_size, stop=stop, dtype=np.float32)]
        traces = np.concatenate(cols, axis=0).astype(np.float64)
    traces = traces[np.all(np.isfinite(traces), axis=1)]
    T = traces.shape[0]
    min_lag = max(int(min_lag), 2)
    max_lag = int(min(max(T // 4, min_lag + 1), max(5 * fps * 2, 10, 4 * min_lag)))
    g = []
    for j in range(traces.shape[1]):
        x = traces[:, j] - np.median(traces[:, j])
        x = x - x.mean()
        ac = np.array([np.dot(x[k:], x[:T - k]) / (T - k) for k in range(1, max_lag + 1)])
        first = min_lag - 1  # index of lag min_lag
        if ac[0] <= 0 or len(ac) <= first + 1 or ac[first] <= 0:
            continue
        lags = np.arange(1, max_lag + 1)
        use = np.zeros(len(ac), bool)
        for k in range(first, len(ac)):  # from min_lag, contiguous while acov stays high
            if ac[k] < 0.2 * ac[first]:
                break
            use[k] = True
        if use.sum() < 2:
            if ac[first - 1] > 0 and ac[first] < ac[first - 1]:
                g.append(ac[first] / ac[first - 1])
            continue
        slope = np.polyfit(lags[use], np.log(ac[use]), 1)[0]
        if slope < 0:
            g.append(float(np.exp(slope)))
    if not g:
        return 1.0
    gamma = float(np.median(g))
    tau = -1.0 / (fps * np.log(gamma))
    return float(np.clip(tau, 0.05, 5.0))
