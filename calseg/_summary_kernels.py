"""Numba kernel of the summary pass: every per-pixel statistic of one frame batch in one sweep.

The numpy formulation needs several full-size temporaries per batch (a transposed copy for the
medians, the frame differences, a cumulative sum, four shifted products), so it is bound by memory
traffic; this kernel reads each image row of the batch once into a small buffer and computes
everything from there, in parallel over rows (each row owns its outputs). Numpy twin:
``tests/reference.py::batch_stats``.
"""
from __future__ import annotations

import numpy as np

from ._jit import helper, njit, prange


@helper
def _median_bisect(a, n, iters):
    """Lower median of ``a[:n]`` (the ``(n - 1) // 2``-th smallest value) to
    ``(max - min) / 2**iters``, by bisection on the value.

    Each step is one branch-free counting pass (vectorised); a quickselect is exact but its
    data-dependent branches make it several times slower on noisy data.
    """
    lo = a[0]
    hi = a[0]
    for q in range(1, n):
        v = a[q]
        lo = min(lo, v)
        hi = max(hi, v)
    half = 0.5 * n
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        c = 0
        for q in range(n):
            c += a[q] < mid
        if c < half:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@njit(parallel=True)
def batch_stats(X, k, with_peak, s1, ss, cross, dmed, med, peak):
    """Statistics of one batch ``X`` (t, H, W) float32, written into preallocated outputs.

    Parameters
    ----------
    X : ndarray of shape (t, H, W), float32
    k : int
        Width of the running mean whose maximum gives ``peak``.
    with_peak : bool
        Compute ``med`` and ``peak`` (a median per pixel, the costliest part); when False they
        are left untouched (the caller makes its peak image another way).
    s1 : (H, W) float64     sum over frames
    ss : (H, W) float64     sum of squares about the batch mean
    cross : (4, H, W) float64
        Sum over frames of the products of mean-removed values of each pixel with its
        neighbour at (0, +1), (+1, -1), (+1, 0), (+1, +1) (0 where the neighbour is outside).
    dmed : (H, W) float32   lower median of |x[t+1] - x[t]| (0 when t < 2)
    med : (H, W) float32    lower median over frames
        (medians to 2**-20 of each pixel's range, by bisection)
    peak : (H, W) float32   max over t of the k-frame running mean minus the median
    """
    t, H, W = X.shape
    kk = min(k, t)
    for i in prange(H):
        # this row and the next, transposed so that each pixel's time series is contiguous
        R = np.empty((W, t), np.float64)
        N = np.empty((W, t), np.float64)
        buf = np.empty(t, np.float32)
        dbuf = np.empty(max(t - 1, 1), np.float32)
        mu = np.zeros(W, np.float64)
        mun = np.zeros(W, np.float64)
        for s in range(t):
            for j in range(W):
                R[j, s] = X[s, i, j]
        for j in range(W):
            acc = 0.0
            for s in range(t):
                acc += R[j, s]
            s1[i, j] = acc
            mu[j] = acc / t
            for s in range(t):
                R[j, s] -= mu[j]
        has_next = i + 1 < H
        if has_next:
            for s in range(t):
                for j in range(W):
                    N[j, s] = X[s, i + 1, j]
            for j in range(W):
                acc = 0.0
                for s in range(t):
                    acc += N[j, s]
                mun[j] = acc / t
                for s in range(t):
                    N[j, s] -= mun[j]
        for j in range(W):
            sq = 0.0
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            for s in range(t):
                sq += R[j, s] * R[j, s]
            if j + 1 < W:
                for s in range(t):
                    a0 += R[j, s] * R[j + 1, s]
            if has_next:
                if j >= 1:
                    for s in range(t):
                        a1 += R[j, s] * N[j - 1, s]
                for s in range(t):
                    a2 += R[j, s] * N[j, s]
                if j + 1 < W:
                    for s in range(t):
                        a3 += R[j, s] * N[j + 1, s]
            ss[i, j] = sq
            cross[0, i, j] = a0
            cross[1, i, j] = a1
            cross[2, i, j] = a2
            cross[3, i, j] = a3
            if t >= 2:
                for s in range(t - 1):
                    dbuf[s] = abs(R[j, s + 1] - R[j, s])
                dmed[i, j] = np.float32(_median_bisect(dbuf, t - 1, 20))
            else:
                dmed[i, j] = 0.0
            if not with_peak:
                continue
            # median and the running-mean peak, on the raw values (mean added back)
            for s in range(t):
                buf[s] = R[j, s] + mu[j]
            m = np.float32(_median_bisect(buf, t, 20))
            med[i, j] = m
            run = 0.0
            for s in range(kk):
                run += R[j, s]
            best = run
            for s in range(kk, t):
                run += R[j, s] - R[j, s - kk]
                if run > best:
                    best = run
            peak[i, j] = np.float32(best / kk + mu[j] - m)


@njit(parallel=True)
def peak_over_running_median(Xb, width):
    """``max over t of (Xb[t] - running median of Xb)`` per pixel, (H, W) float32.

    The running median has an odd ``width`` centred on t, with the series' first and last values
    repeated past its ends (``scipy.ndimage.median_filter(Xb, size=(width, 1, 1),
    mode="nearest")``, which it equals exactly). Each pixel keeps its window sorted and moves it
    one value at a time (one removal, one insertion), instead of selecting a median from scratch
    at every t: the windows are short, so this is a few dozen operations per sample.
    """
    t, H, W = Xb.shape
    half = width // 2
    peak = np.empty((H, W), np.float32)
    for i in prange(H):
        win = np.empty(width, np.float32)
        v = np.empty(t, np.float32)
        for j in range(W):
            for s in range(t):
                v[s] = Xb[s, i, j]
            # the window at t = 0: v[clip(-half .. half)], sorted by insertion
            n = 0
            for q in range(-half, half + 1):
                x = v[min(max(q, 0), t - 1)]
                p = n
                while p > 0 and win[p - 1] > x:
                    win[p] = win[p - 1]
                    p -= 1
                win[p] = x
                n += 1
            best = v[0] - win[half]
            for s in range(1, t):
                out_v = v[min(max(s - 1 - half, 0), t - 1)]
                in_v = v[min(s + half, t - 1)]
                # remove one copy of out_v
                p = 0
                while p < width - 1 and win[p] != out_v:   # (bounded: NaN equals nothing)
                    p += 1
                while p < width - 1:
                    win[p] = win[p + 1]
                    p += 1
                # insert in_v into win[:width - 1]
                p = width - 1
                while p > 0 and win[p - 1] > in_v:
                    win[p] = win[p - 1]
                    p -= 1
                win[p] = in_v
                d = v[s] - win[half]
                if d > best:
                    best = d
            peak[i, j] = best
    return peak


@njit(parallel=True)
def block_sums(X, block, out):
    """Sums of each frame of ``X`` (t, H, W) over square ``block`` x ``block`` pixel blocks (the
    last row/column of blocks may be partial), written into ``out`` (t, nby * nbx) float32 with
    blocks in row-major order; accumulated in float64. One pass over the batch, in parallel over
    frames (numpy's two ``reduceat`` passes took 0.16 s per 500 x 512 x 512 batch)."""
    t, H, W = X.shape
    nbx = (W + block - 1) // block
    for s in prange(t):
        acc = np.zeros(out.shape[1], np.float64)
        for y in range(H):
            base = (y // block) * nbx
            for bx in range(nbx):
                v = 0.0
                for x in range(bx * block, min(W, (bx + 1) * block)):
                    v += X[s, y, x]
                acc[base + bx] += v
        for b in range(out.shape[1]):
            out[s, b] = np.float32(acc[b])

