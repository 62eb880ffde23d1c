"""What is reported: the footprint-conditioned noise level, the fragment tests, views of a neuron
from a neighbouring tile, and the peak image's running baseline."""
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from calseg.lam import trace_null
from calseg.merge import merge_components
from calseg.model.temporal import DecayOperator
from calseg.patches import plan_tiles
from calseg.prox.composite import CompositeNorm
from calseg.tile import (Component, TileContext, _components, _solidity, _whole_in_window,
                         background_dictionary)

T, FPS = 300, 10.0


def _polar_direct(g, alpha=1.0, beta=1.0):
    """max <g, a> over a >= 0 with alpha |a|_2 + beta |a|_1 <= 1, by a 1-D search over the
    threshold t of the maximiser's direction (g - t)+ (independent of calseg's dual_norm)."""
    gp = np.maximum(g, 0)
    if gp.max() <= 0:
        return 0.0

    def neg(t):
        v = np.maximum(gp - t, 0)
        return -(g @ v) / (alpha * np.linalg.norm(v) + beta * v.sum())

    grid = np.linspace(0, gp.max() * 0.999, 200)
    t0 = grid[np.argmin([neg(t) for t in grid])]
    step = grid[1] - grid[0]
    res = minimize_scalar(neg, bounds=(max(t0 - step, 0), min(t0 + step, gp.max() * 0.999)), method="bounded",
                          options={"xatol": 1e-10})
    return float(-min(res.fun, neg(t0)))


def _model():
    op = DecayOperator.from_tau(T, 0.8, FPS)
    F = background_dictionary(T, 3, np.zeros((T, 0)))
    return op, F


def test_trace_null_is_the_quantile_of_the_direct_polar():
    op, F = _model()
    q = trace_null(T, op, F, CompositeNorm(1.0, 1.0, nonnegative=True), n_traces=60, quantile=0.9, seed=4)
    E = np.random.default_rng(4).standard_normal((T, 60))
    E -= F @ (F.T @ E)
    G = op.adjoint(E)
    ref = np.quantile([_polar_direct(G[:, j]) for j in range(60)], 0.9)
    assert q == pytest.approx(ref, rel=1e-4)


def test_noise_exceeds_the_fixed_footprint_level_about_one_time_in_a_hundred():
    """White noise movies projected on one fixed unit-Z-norm footprint (a disk): the best
    temporal atom's projection exceeds ||psi||_2 * q99 in about 1% of draws."""
    op, F = _model()
    temporal = CompositeNorm(1.0, 1.0, nonnegative=True)
    q99 = trace_null(T, op, F, temporal, n_traces=400, seed=1)
    h = w = 9
    yy, xx = np.mgrid[0:h, 0:w]
    z = np.clip(3.5 - np.hypot(yy - 4, xx - 4), 0, 1).ravel()
    znorm = CompositeNorm(1.0, 1.0, 0.6, nonnegative=True, image_shape=(h, w), connectivity=8).value(z[:, None])[0]
    psi = z / znorm
    bar = np.linalg.norm(psi) * q99
    rng = np.random.default_rng(2)
    n, over = 400, 0
    for _ in range(n // 50):
        E = rng.standard_normal((50, T, h * w))
        e = E @ psi                                   # (50, T): the noise seen through psi
        e = e.T - F @ (F.T @ e.T)
        G = op.adjoint(e)
        over += sum(_polar_direct(G[:, j]) > bar for j in range(G.shape[1]))
    assert over / n < 0.035, over
    one = np.zeros(h * w)
    one[40] = 1.0
    one_norm = CompositeNorm(1.0, 1.0, 0.6, nonnegative=True, image_shape=(h, w), connectivity=8).value(one[:, None])[0]
    assert bar < 0.75 * q99 / one_norm  # below a one-pixel footprint's level, which sets rho_noise


def test_solidity_tells_a_cell_from_a_ragged_patch():
    yy, xx = np.mgrid[0:15, 0:15]
    disk = np.hypot(yy - 7, xx - 7) <= 5
    assert _solidity(disk) > 0.85
    ragged = np.zeros((15, 15), bool)
    ragged[7, :] = True
    ragged[:, 7] = True
    ragged[2:5, 2:5] = True
    ragged[10:13, 10:13] = True
    assert _solidity(ragged) < 0.65


def test_whole_in_window_ignores_the_image_edges():
    tiles = plan_tiles(60, 60, 32, 8)
    t = next(t for t in tiles if t.y0 == 0 and t.x0 == 0)
    assert _whole_in_window(t, 1.0, 1.0, 4.0, (60, 60))        # at the image corner: whole
    assert not _whole_in_window(t, 10.0, 30.0, 4.0, (60, 60))  # 2 px from the window's right edge
    assert _whole_in_window(t, 10.0, 27.0, 4.0, (60, 60))


def _comp(cy, cx, score, owned, tile=0, T=50, seed=0):
    yy, xx = np.mgrid[0:64, 0:64]
    mask = np.flatnonzero((np.hypot(yy - cy, xx - cx) <= 3).ravel())
    rng = np.random.default_rng(seed)
    cal = rng.random(T).astype(np.float32)
    return Component(pixels=mask, weights=np.ones(len(mask), np.float32), mask=mask, calcium=cal,
                     spikes=cal, centroid=(float(cy), float(cx)), score=score, snr=1.0, baseline=1.0,
                     tile=tile, owned=owned)


def test_views_from_a_neighbour_fill_in_only_what_the_owners_missed():
    owned = [_comp(10, 10, 5.0, True, seed=1), _comp(40, 40, 1.0, True, seed=2)]
    spare = [
        _comp(10, 12, 9.0, False, tile=1, seed=3),   # overlaps an owned neuron: a duplicate
        _comp(25, 50, 2.0, False, tile=1, seed=4),   # nobody owns it: kept
        _comp(25.5, 50, 3.0, False, tile=2, seed=5),  # the same neuron from another tile: the stronger kept
        _comp(40, 47, 0.5, False, tile=3, seed=6),   # 7 px from an owned one, masks apart: kept
    ]
    kept = merge_components(owned + spare, 8.0)
    cents = sorted(c.centroid for c in kept)
    assert cents == [(10.0, 10.0), (25.5, 50.0), (40.0, 40.0), (40.0, 47.0)]
    assert [c.owned for c in kept[:2]] == [True, True]


def test_peak_image_measures_transients_from_a_running_baseline():
    """A slow, large drift (neuropil, illumination) is not a peak; a transient half its size is."""
    from calseg.summary import _smoothed_peak

    n, H, W = 600, 4, 4
    t = np.arange(n)
    X = np.zeros((n, H, W), np.float32)
    X[:, 0, 0] = 4.0 * np.sin(2 * np.pi * t / 600.0)          # one slow cycle
    X[300:306, 1, 1] = 2.0                                   # one transient of a few frames
    peak, _ = _smoothed_peak(X, 3, 0.0)
    assert peak[1, 1] == pytest.approx(2.0, rel=0.05)
    assert peak[0, 0] < 0.5


def test_reporting_rule_strong_or_whole_compact_and_cell_sized():
    # Four components on one 60x60 tile, all with the same trace: a cell-sized disk and a blob
    # of 3.2 cell areas, each once below the noise polar (relaxed: passes on its own footprint's
    # level only when whole, compact and cell-sized) and once above it (strong).
    from types import SimpleNamespace

    from calseg.patches import Tile

    d, h = 10.0, 60
    op, _ = _model()
    yy, xx = np.mgrid[0:h, 0:h]
    disk = (np.hypot(yy - 15, xx - 15) <= 0.5 * d).ravel()
    blob = (np.hypot(yy - 40, xx - 40) <= 0.9 * d).ravel()     # 3.2 cell areas
    Z = np.stack([disk, blob, disk, blob], axis=1).astype(float)
    A = np.zeros((T, 4))
    A[[20, 90, 200], :] = 1.0
    fact = SimpleNamespace(A=A, Z=Z, support=None)
    area = np.pi * (d / 2) ** 2
    ctx = TileContext(noise=np.ones((h, h), np.float32), mean=np.ones((h, h), np.float32),
                      seeds=np.zeros((0, 2), int), neuropil=np.zeros((T, 0)), diameter=d, fps=FPS,
                      tau=0.8, rise=None, lam=1.0, spatial=(1.0, 1.0, 0.6), temporal=(1.0, 1.0),
                      n_background=3, connectivity=8, max_iter=10, tol=1e-4, certify=False,
                      grow_rank=False, max_grow=0, certificate_tol=1e-3, mask_threshold=0.2,
                      min_area=0.15 * area, max_area=4.0 * area, rho_noise=10.0, trace_null=1e-3)
    tile = Tile(index=0, y0=0, y1=h, x0=0, x1=h, core_y0=0, core_y1=h, core_x0=0, core_x1=h)
    rho = np.array([5.0, 5.0, 20.0, 20.0])   # below, below, above, above rho_noise
    comps = _components(tile, fact, op, np.ones((h, h), np.float32), np.ones((h, h), np.float32),
                        ctx, rho)
    got = sorted((round(c.centroid[0]), round(c.centroid[1]), int(c.mask.size)) for c in comps)
    # the relaxed blob is dropped; the strong one and both disks are kept
    assert [(g[0], g[1]) for g in got] == [(15, 15), (15, 15), (40, 40)]
