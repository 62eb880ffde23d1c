import numpy as np
import pytest

from calseg.patches import default_tile_geometry, plan_tiles, run_tiles


@pytest.mark.parametrize("H,W,size,overlap", [(100, 100, 40, 10), (64, 200, 64, 16), (30, 17, 40, 10),
                                              (257, 129, 72, 20)])
def test_cores_partition_the_image_and_windows_overlap(H, W, size, overlap):
    tiles = plan_tiles(H, W, size, overlap)
    owner = np.zeros((H, W), int)
    for t in tiles:
        owner[t.core_y0:t.core_y1, t.core_x0:t.core_x1] += 1
        # core inside window, window inside image, windows full size unless the image is smaller
        assert t.y0 <= t.core_y0 <= t.core_y1 <= t.y1 and t.x0 <= t.core_x0 <= t.core_x1 <= t.x1
        assert 0 <= t.y0 < t.y1 <= H and 0 <= t.x0 < t.x1 <= W
        assert t.shape == (min(size, H), min(size, W))
    assert np.all(owner == 1)
    # neighbouring windows overlap by at least `overlap`, and every core point is at least
    # overlap/2 away from its window's inner edges
    for t in tiles:
        for y, x in [(t.core_y0, t.core_x0), (t.core_y1 - 1, t.core_x1 - 1)]:
            if t.y0 > 0:
                assert y - t.y0 >= overlap // 2
            if t.y1 < H:
                assert t.y1 - 1 - y >= overlap // 2 - 1


def test_owns_is_exclusive():
    tiles = plan_tiles(90, 90, 40, 12)
    rng = np.random.default_rng(0)
    for y, x in rng.uniform(0, 90, size=(200, 2)):
        assert sum(t.owns(y, x) for t in tiles) == 1


def test_overlap_must_be_smaller_than_tile():
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 100, 20, 20)


def test_default_geometry_scales_with_diameter():
    s1, o1 = default_tile_geometry(6, 512, 512)
    s2, o2 = default_tile_geometry(12, 512, 512)
    assert s2 > s1 and o2 > o1 and o2 >= 12 * 1.5


def _square(t):
    return t.index ** 2


def test_run_tiles_serial_and_pool_agree():
    tiles = plan_tiles(60, 60, 30, 8)
    a = run_tiles(_square, tiles, workers=1)
    b = run_tiles(_square, tiles, workers=2)
    assert a == b == [t.index ** 2 for t in tiles]
