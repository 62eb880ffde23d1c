"""Numba kernel of the rigid motion correction (numpy/scipy twin: ``scipy.ndimage.shift`` with
``order=1, mode="nearest"``, one frame at a time, as ``CorrectedMovie`` does otherwise).

Reading a tile of a corrected movie shifts every frame of a small window; one scipy call per
frame costs more in call overhead than in interpolation, so a whole batch of frames is shifted
in one kernel call, frames in parallel.
"""
from __future__ import annotations

import math

import numpy as np

from .._jit import njit, prange


@njit(parallel=True)
def shift_bilinear(src, shifts, r0, c0, out):
    """``out[i] = shift(src[i], shifts[i])[r0:r0 + h, c0:c0 + w]`` for ``out`` (n, h, w):
    bilinear interpolation of ``src`` (n, H, W) at ``(y - dy_i, x - dx_i)``, coordinates
    clamped to the source window (``mode="nearest"``), float64 arithmetic."""
    n, H, W = src.shape
    h, w = out.shape[1], out.shape[2]
    for i in prange(n):
        dy = shifts[i, 0]
        dx = shifts[i, 1]
        for y in range(h):
            cy = (y + r0) - dy
            if cy < 0.0:
                cy = 0.0
            elif cy > H - 1:
                cy = H - 1.0
            y0 = int(math.floor(cy))
            fy = cy - y0
            y1 = y0 + 1 if y0 < H - 1 else y0
            for x in range(w):
                cx = (x + c0) - dx
                if cx < 0.0:
                    cx = 0.0
                elif cx > W - 1:
                    cx = W - 1.0
                x0 = int(math.floor(cx))
                fx = cx - x0
                x1 = x0 + 1 if x0 < W - 1 else x0
                top = (1.0 - fx) * np.float64(src[i, y0, x0]) + fx * np.float64(src[i, y0, x1])
                bot = (1.0 - fx) * np.float64(src[i, y1, x0]) + fx * np.float64(src[i, y1, x1])
                out[i, y, x] = (1.0 - fy) * top + fy * bot
