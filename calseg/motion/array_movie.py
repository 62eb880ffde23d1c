"""An in-memory movie with the :class:`calseg.io.tiff.Movie` interface.

:class:`ArrayMovie` lets every stage that consumes a movie handle (motion correction, the
pipeline, tests) accept a plain ``(T, H, W)`` array as well. It also holds the small helpers
that turn ``start``/``stop``/``rows``/``cols`` arguments into validated integer bounds, shared
with :class:`calseg.motion.CorrectedMovie`.
"""
from __future__ import annotations

import numpy as np

from calseg.errors import InputError

__all__ = ["ArrayMovie", "as_movie"]


def _frame_bounds(start, stop, n_frames):
    """Validated ``(start, stop)`` frame bounds, negatives counted from the end."""
    start = 0 if start is None else int(start)
    stop = n_frames if stop is None else int(stop)
    if start < 0:
        start += n_frames
    if stop < 0:
        stop += n_frames
    if not 0 <= start <= stop <= n_frames:
        raise InputError(
            f"frame range start={start}, stop={stop} is outside the movie: "
            f"0 <= start <= stop <= {n_frames} is allowed"
        )
    return start, stop


def _axis_bounds(window, size, name):
    """Validated ``(lo, hi)`` bounds of a ``rows``/``cols`` window.

    ``window`` may be None (the whole axis), an index (one row/column, kept as an axis of
    length 1), a ``slice`` with step 1 (or None) or a ``(lo, hi)`` pair; negative values count
    from the end, as in Python slicing.
    """
    if window is None:
        return 0, size
    if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
        i = int(window) + (size if window < 0 else 0)
        if not 0 <= i < size:
            raise InputError(f"{name}={window} is outside the frame: an index in [-{size}, {size}) is allowed")
        return i, i + 1
    if isinstance(window, slice):
        if window.step not in (None, 1):
            raise InputError(f"{name}={window!r} has a step; only contiguous windows (step 1) are allowed")
        lo, hi = window.start, window.stop
    else:
        try:
            lo, hi = window
        except (TypeError, ValueError):
            raise InputError(f"{name}={window!r} is not a window; a slice or a (start, stop) pair is allowed") from None
    lo = 0 if lo is None else int(lo)
    hi = size if hi is None else int(hi)
    if lo < 0:
        lo += size
    if hi < 0:
        hi += size
    if not 0 <= lo < hi <= size:
        raise InputError(f"{name}={window!r} is empty or outside the frame: 0 <= start < stop <= {size} is allowed")
    return lo, hi


class ArrayMovie:
    """A ``(T, H, W)`` array behind the :class:`calseg.io.tiff.Movie` interface.

    Parameters
    ----------
    data : array_like of shape (T, H, W)
        The frames. Kept by reference (no copy) when it already is an ndarray.
    fps : float, optional
        Frame rate in Hz, if known.
    pixel_size : float, optional
        Pixel size in micrometres, if known.

    Notes
    -----
    ``read`` and ``iter_batches`` return copies, so callers may modify them in place. The
    object pickles its array (it is in memory, so there is no file handle to pickle instead).
    """

    def __init__(self, data, *, fps=None, pixel_size=None):
        data = np.asarray(data)
        if data.ndim != 3:
            raise InputError(f"movie array has shape {data.shape}; a 3-D array (T, H, W) is allowed")
        if min(data.shape) < 1:
            raise InputError(f"movie array has shape {data.shape}; every dimension must be at least 1")
        if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
            raise InputError(f"movie array has dtype {data.dtype}; integer or floating dtypes are allowed")
        self._data = data
        self.fps = None if fps is None else float(fps)
        self.pixel_size = None if pixel_size is None else float(pixel_size)
        self.paths = ()

    @property
    def shape(self):
        """``(T, H, W)``."""
        return tuple(int(n) for n in self._data.shape)

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
        return self._data.dtype

    def __len__(self):
        return self.n_frames

    def __repr__(self):
        return f"ArrayMovie(shape={self.shape}, dtype={self.dtype})"

    def read(self, start=0, stop=None, *, rows=None, cols=None, dtype=None):
        """Frames ``start:stop`` (rows and cols windows optional) as a new array.

        Returns
        -------
        ndarray of shape (stop - start, h, w)
            In ``dtype`` if given, else the array's own dtype.
        """
        start, stop = _frame_bounds(start, stop, self.n_frames)
        r0, r1 = _axis_bounds(rows, self.height, "rows")
        c0, c1 = _axis_bounds(cols, self.width, "cols")
        out = self._data[start:stop, r0:r1, c0:c1]
        return np.array(out, dtype=dtype if dtype is not None else out.dtype, copy=True)

    def iter_batches(self, batch_size=256, *, start=0, stop=None, rows=None, cols=None, dtype=None):
        """Yield ``(first_frame_index, frames)`` for consecutive batches of ``batch_size`` frames."""
        if int(batch_size) < 1:
            raise InputError(f"batch_size={batch_size} is not allowed; a positive integer is allowed")
        start, stop = _frame_bounds(start, stop, self.n_frames)
        for first in range(start, stop, int(batch_size)):
            last = min(stop, first + int(batch_size))
            yield first, self.read(first, last, rows=rows, cols=cols, dtype=dtype)

    def __getitem__(self, key):
        if isinstance(key, slice):
            idx = range(*key.indices(self.n_frames))
            if idx.step == 1 and len(idx):
                return self.read(idx.start, idx.stop)
            return np.array(self._data[key])
        index = int(key)
        if index < 0:
            index += self.n_frames
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {key} is outside the movie of {self.n_frames} frames")
        return np.array(self._data[index])

    def close(self):
        """Nothing to release; present for interface compatibility."""


def as_movie(movie):
    """``movie`` itself if it has the Movie interface, an :class:`ArrayMovie` for an array.

    Raises
    ------
    InputError
        If ``movie`` is neither a movie handle nor a 3-D numeric array.
    """
    if hasattr(movie, "read") and hasattr(movie, "iter_batches") and hasattr(movie, "shape"):
        if len(tuple(movie.shape)) != 3:
            raise InputError(f"movie has shape {tuple(movie.shape)}; a (T, H, W) movie is allowed")
        return movie
    if isinstance(movie, (np.ndarray, list, tuple)):
        return ArrayMovie(movie)
    raise InputError(
        f"movie of type {type(movie).__name__} is not allowed; a Movie handle or a (T, H, W) array is allowed"
    )
