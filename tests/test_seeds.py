"""Seeds from the summary images, and the reach that keeps a seed's footprint near it."""
from types import SimpleNamespace

import numpy as np

from calseg.seeds import find_seeds, seed_support
from calseg.tile import _clipped_by_reach


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(yy - cy, xx - cx) <= r


def test_a_correlated_neuropil_plateau_seeds_no_more_than_noise_but_a_cell_on_it_does(monkeypatch):
    # Correlation image: noise, a broad plateau (a patch of correlated neuropil, 7 cell
    # diameters across) and two cells, one on the plateau and one off it; the peak image is
    # flat noise. Both cells are seeds; the plateau seeds about as often as the same area of
    # plain noise (the solver prunes those), where without its slow landscape removed the
    # plateau's noise bumps all clear the threshold.
    import calseg.seeds

    rng = np.random.default_rng(0)
    d = 10.0
    shape = (200, 200)
    yy, xx = np.mgrid[0:200, 0:200]
    corr = 0.02 * rng.standard_normal(shape)
    corr += 0.06 * np.exp(-((yy - 60) ** 2 + (xx - 60) ** 2) / (2 * 35.0 ** 2))
    cells = [(60, 60), (160, 150)]
    for cy, cx in cells:
        corr += 0.25 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (d / 3) ** 2))
    peak = rng.standard_normal(shape).astype(np.float32)

    def counts():
        seeds = find_seeds(corr.astype(np.float32), peak, d)
        for cy, cx in cells:
            assert np.min(np.hypot(seeds[:, 0] - cy, seeds[:, 1] - cx)) <= 2
        plateau = int((np.hypot(seeds[:, 0] - 60, seeds[:, 1] - 60) <= 40).sum())
        noise = int((np.hypot(seeds[:, 0] - 150, seeds[:, 1] - 60) <= 40).sum())
        return plateau, noise

    plateau, noise = counts()
    monkeypatch.setattr(calseg.seeds, "CORR_BACKGROUND", 50.0)   # ~ no landscape removed
    plateau_flat, _ = counts()
    assert plateau <= 2 * noise + 5
    assert plateau_flat > 4 * plateau and plateau_flat > 50


def test_seed_support_is_a_disk_clipped_to_the_tile():
    s = seed_support(np.array([[10, 10], [-3, 5]]), (30, 40), 6.0)
    assert s.shape == (1200, 2)
    assert abs(s[:, 0].sum() - np.pi * 36) < 12
    img = s[:, 1].reshape(30, 40)
    assert img[0, 5] and not img[4, 5] and 0 < img.sum() < np.pi * 36 / 2


def test_a_mask_pressed_against_its_reach_is_clipped_a_centred_cell_is_not():
    shape = (40, 40)
    support = seed_support(np.array([[20, 20], [20, 20]]), shape, 9.0)
    fact = SimpleNamespace(support=support)
    cell = _disk(shape, 21, 19, 4.5)
    broad = _disk(shape, 20, 20, 9.0)
    assert not _clipped_by_reach(cell, fact, 0, shape)
    assert _clipped_by_reach(broad, fact, 1, shape)
    # unrestricted columns (grown atoms, or no support at all) are never clipped
    assert not _clipped_by_reach(broad, SimpleNamespace(support=None), 0, shape)
    full = SimpleNamespace(support=np.ones((1600, 1), bool))
    assert not _clipped_by_reach(broad, full, 0, shape)
    # the tile's own border is not a rim: a cell cut by it is left to the merge
    edge = seed_support(np.array([[0, 20]]), shape, 9.0)
    assert not _clipped_by_reach(_disk(shape, 0, 20, 4.5), SimpleNamespace(support=edge), 0, shape)
