"""Numba kernel of the rigid motion correction (numpy/scipy twin: ``scipy.ndimage.shift`` with
``order=1, mode="nearest"``, one frame at a time, as ``CorrectedMovie`` does otherwise).

Reading a tile of a corrected movie shifts every frame of a small window; one scipy call per
frame costs more in call overhead than in interpolation, so a whole batch of frames is shifted
in one kernel call, frames in parallel.
"""
from __future__ import annotations

import math

import numpy as np

from .._jit import helper, njit, prange


@helper
def _interp_axis(c, n):
    """Clamp a source coordinate to ``[0, n - 1]``: the two neighbouring indices and the weight
    of the second (``mode="nearest"``)."""
    if c < 0.0:
        c = 0.0
    elif c > n - 1:
        c = n - 1.0
    i0 = int(math.floor(c))
    i1 = i0 + 1 if i0 < n - 1 else i0
    return i0, i1, c - i0


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
            y0, y1, fy = _interp_axis((y + r0) - dy, H)
            for x in range(w):
                x0, x1, fx = _interp_axis((x + c0) - dx, W)
                top = (1.0 - fx) * np.float64(src[i, y0, x0]) + fx * np.float64(src[i, y0, x1])
                bot = (1.0 - fx) * np.float64(src[i, y1, x0]) + fx * np.float64(src[i, y1, x1])
                out[i, y, x] = (1.0 - fy) * top + fy * bot
