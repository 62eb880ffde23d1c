"""Join the components of all tiles into one set of neurons.

Each tile reports the components whose centroid lies in its core (*owned*), so a neuron is
normally found once. Near a core boundary two tiles can both see the same neuron with centroids
that fall on either side, and inside one tile rank growth can add a partial copy of a neuron
already there; such pairs (masks overlapping by more than ``overlap`` of the smaller one and
calcium traces correlated above ``corr``) are merged by keeping the stronger component.
Overlapping neurons with different activity are kept apart by the trace test.

A dim neuron is sometimes found by a neighbouring tile and missed by the one that owns it (each
tile's solve starts from its own seeds and sees a different background). Tiles therefore also
report components outside their core that their window holds whole (*not owned*); after all
owned components are merged, such a component is added only when no kept neuron lies within a
radius of it or overlaps its mask by more than ``SPARE_OVERLAP``, and its own duplicates from
other tiles are dropped the same way.
"""
from __future__ import annotations

import numpy as np


#: a view from a neighbouring tile is a duplicate when its mask overlaps a kept neuron's by more
#: than this fraction of the smaller mask (or their centroids are within a radius)
SPARE_OVERLAP = 0.3


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 or len(b) == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / min(len(a), len(b))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    d = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / d) if d > 0 else 0.0


def merge_components(components: list, diameter: float, *, overlap: float = 0.5,
                     corr: float = 0.7) -> list:
    """Remove duplicates found by neighbouring tiles; strongest first order is returned.

    Parameters
    ----------
    components : list of Component
    diameter : float
        Pairs whose centroids are further apart than one diameter are never compared.
    """
    owned = [c for c in components if getattr(c, "owned", True)]
    spare = [c for c in components if not getattr(c, "owned", True)]
    r2 = (0.5 * diameter) ** 2
    kept: list = []
    # owned components: a duplicate shares the mask and the activity of a stronger one
    _add_new(kept, sorted(owned, key=lambda c: -c.score), diameter,
             lambda k, c, d2: _overlap(k.mask, c.mask) > overlap and _corr(k.calcium, c.calcium) > corr)
    # neighbours' views: a duplicate is near a kept neuron or overlaps it
    _add_new(kept, sorted(spare, key=lambda c: (-c.score, c.tile)), diameter,
             lambda k, c, d2: d2 < r2 or _overlap(k.mask, c.mask) > SPARE_OVERLAP)
    return kept


def _add_new(kept: list, candidates, diameter: float, is_duplicate) -> None:
    """Append to ``kept`` each candidate that is not a duplicate (``is_duplicate(k, c, d2)``) of a
    kept component whose centroid lies within one diameter (squared distance d2)."""
    for c in candidates:
        dup = False
        for k in kept:
            dy = k.centroid[0] - c.centroid[0]
            dx = k.centroid[1] - c.centroid[1]
            d2 = dy * dy + dx * dx
            if d2 <= diameter * diameter and is_duplicate(k, c, d2):
                dup = True
                break
        if not dup:
            kept.append(c)
