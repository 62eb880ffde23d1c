"""A lazy, motion-corrected view of a movie with the Movie interface."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from calseg.errors import ConfigError, InputError
from calseg.motion.array_movie import _axis_bounds, _frame_bounds, as_movie
from calseg.motion.estimate import MotionEstimate

__all__ = ["CorrectedMovie"]

_MODES = ("nearest", "reflect", "mirror", "constant")


class CorrectedMovie:
    """Motion-corrected frames of ``movie``, computed on demand.

    Parameters
    ----------
    movie : Movie or ndarray of shape (T, H, W)
        The uncorrected recording (any object with the Movie interface, or an array).
    estimate : MotionEstimate
        Displacements for every frame of ``movie`` (same T, H, W).
    order : int
        Interpolation order, 0-5 (0 nearest, 1 bilinear, 3 cubic spline).
    mode : {"nearest", "reflect", "mirror", "constant"}
        How pixels whose source lies outside the frame are filled. ``"nearest"`` (default)
        repeats the edge pixel; ``"constant"`` fills with ``cval``.
    cval : float
        Fill value for ``mode="constant"``.

    Notes
    -----
    Corrected frame ``t`` is ``corrected(p) = frame_t(p - d_t(p))`` with ``d_t`` the estimate's
    displacement field (constant for rigid estimates): exactly
    ``scipy.ndimage.shift(frame_t, estimate.shifts[t], order=order, mode=mode)`` in rigid mode,
    ``scipy.ndimage.map_coordinates`` on the dense field in piecewise mode.

    Windows (``rows``/``cols``) are corrected from a source window padded by the largest
    displacement, so a window equals the same region of the full corrected frame (exactly for
    ``order <= 1``; for spline orders the prefilter sees a padded window, differences < 1e-4
    of the local contrast).

    Frames are returned as float32 unless ``dtype`` is given. Pickling stores the underlying
    movie handle and the estimate, never corrected frames.
    """

    def __init__(self, movie, estimate, *, order=1, mode="nearest", cval=0.0):
        self.movie = as_movie(movie)
        if not isinstance(estimate, MotionEstimate):
            raise InputError(f"estimate of type {type(estimate).__name__} is not allowed; a MotionEstimate is allowed")
        shape = tuple(int(n) for n in self.movie.shape)
        if (estimate.n_frames, *estimate.frame_shape) != shape:
            raise InputError(
                f"estimate covers {estimate.n_frames} frames of {estimate.frame_shape}; "
                f"the movie is {shape}: an estimate of the same movie is allowed"
            )
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 0 <= order <= 5:
            raise ConfigError(f"order={order!r} is not allowed; an integer in [0, 5] is allowed")
        if mode not in _MODES:
            raise ConfigError(f"mode={mode!r} is not allowed; one of {', '.join(_MODES)} is allowed")
        self.estimate = estimate
        self.order = int(order)
        self.mode = mode
        self.cval = float(cval)

    # -- Movie interface -------------------------------------------------------------------

    @property
    def shape(self):
        return tuple(int(n) for n in self.movie.shape)

    @property
    def n_frames(self):
        return self.shape[0]

    @property
    def height(self):
        return self.shape[1]

    @property
    def width(self):
        return self.shape[2]

    @property
    def dtype(self):
        return np.dtype(np.float32)

    @property
    def fps(self):
        return getattr(self.movie, "fps", None)

    @property
    def pixel_size(self):
        return getattr(self.movie, "pixel_size", None)

    @property
    def paths(self):
        return getattr(self.movie, "paths", ())

    def __len__(self):
        return self.n_frames

    def __repr__(self):
        return f"CorrectedMovie({self.movie!r}, mode={self.estimate.mode!r}, order={self.order})"

    def close(self):
        """Close the underlying movie."""
        self.movie.close()

    def read(self, start=0, stop=None, *, rows=None, cols=None, dtype=None):
        """Corrected frames ``start:stop`` (optionally a rows x cols window).

        Returns
        -------
        ndarray of shape (stop - start, h, w)
            float32, or ``dtype`` if given.
        """
        T, H, W = self.shape
        start, stop = _frame_bounds(start, stop, T)
        r0, r1 = _axis_bounds(rows, H, "rows")
        c0, c1 = _axis_bounds(cols, W, "cols")
        out = np.empty((stop - start, r1 - r0, c1 - c0), dtype=np.float32)
        if stop > start:
            my, mx = self.estimate.max_displacement(start, stop)
            extra = 1 if self.order <= 1 else 8
            py, px = int(math.ceil(my)) + extra, int(math.ceil(mx)) + extra
            full = (r0, r1, c0, c1) == (0, H, 0, W)
            sr0, sr1 = (0, H) if full else (max(0, r0 - py), min(H, r1 + py))
            sc0, sc1 = (0, W) if full else (max(0, c0 - px), min(W, c1 + px))
            src = self.movie.read(start, stop, rows=slice(sr0, sr1), cols=slice(sc0, sc1), dtype=np.float32)
            src = np.asarray(src, dtype=np.float32)
            if self.estimate.block_shifts is None and self.order == 1 and self.mode == "nearest":
                # the default: every frame of the batch in one kernel call (same values as the
                # per-frame scipy path below, to float rounding)
                from calseg.motion._kernels import shift_bilinear

                shifts = np.ascontiguousarray(self.estimate.shifts[start:stop], dtype=np.float64)
                shift_bilinear(np.ascontiguousarray(src), shifts, r0 - sr0, c0 - sc0, out)
            else:
                for i in range(stop - start):
                    out[i] = self._correct(src[i], start + i, (sr0, sc0), (r0, r1, c0, c1))
        if dtype is not None and np.dtype(dtype) != out.dtype:
            return out.astype(dtype)
        return out

    def iter_batches(self, batch_size=256, *, start=0, stop=None, rows=None, cols=None, dtype=None):
        """Yield ``(first_frame_index, corrected_frames)`` for consecutive batches."""
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise InputError(f"batch_size={batch_size} is not allowed; a positive integer is allowed")
        start, stop = _frame_bounds(start, stop, self.n_frames)
        for first in range(start, stop, int(batch_size)):
            last = min(stop, first + int(batch_size))
            yield first, self.read(first, last, rows=rows, cols=cols, dtype=dtype)

    def __getitem__(self, key):
        if isinstance(key, slice):
            idx = range(*key.indices(self.n_frames))
            if len(idx) == 0:
                return np.empty((0, self.height, self.width), dtype=np.float32)
            if idx.step == 1:
                return self.read(idx.start, idx.stop)
            return np.stack([self.read(i, i + 1)[0] for i in idx])
        index = int(key)
        if index < 0:
            index += self.n_frames
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {key} is outside the movie of {self.n_frames} frames")
        return self.read(index, index + 1)[0]

    # -- correction ------------------------------------------------------------------------

    def _correct(self, src, t, origin, window):
        """Correct one source window ``src`` (whose top-left pixel is ``origin``) into ``window``."""
        r0, r1, c0, c1 = window
        oy, ox = origin
        est = self.estimate
        kw = dict(order=self.order, mode=self.mode, cval=self.cval)
        if est.block_shifts is None:
            dy, dx = est.shifts[t]
            shifted = ndimage.shift(src, (dy, dx), prefilter=self.order > 1, **kw)
            return shifted[r0 - oy : r1 - oy, c0 - ox : c1 - ox]
        d = est.displacement_field(t, rows=(r0, r1), cols=(c0, c1))
        yy = np.arange(r0, r1, dtype=np.float64)[:, None] - oy - d[..., 0]
        xx = np.arange(c0, c1, dtype=np.float64)[None, :] - ox - d[..., 1]
        return ndimage.map_coordinates(src, np.stack([yy, xx]), prefilter=self.order > 1, **kw)
