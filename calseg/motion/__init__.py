"""Motion correction: rigid and piecewise-rigid registration of a movie to a reference.

- :func:`estimate_motion` streams a movie and returns a frozen :class:`MotionEstimate`
  (per-frame displacements, reference image, block displacements in piecewise mode);
- :class:`CorrectedMovie` is a lazy, picklable view with the Movie interface whose frames are
  corrected on read;
- :class:`ArrayMovie` gives a plain ``(T, H, W)`` array the Movie interface.
"""
from calseg.motion.array_movie import ArrayMovie, as_movie
from calseg.motion.correct import CorrectedMovie
from calseg.motion.estimate import MotionEstimate, default_max_shift, estimate_motion

__all__ = ["ArrayMovie", "CorrectedMovie", "MotionEstimate", "as_movie", "default_max_shift", "estimate_motion"]
