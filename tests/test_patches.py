import os

import numpy as np
import pytest

from calseg.patches import (default_tile_geometry, fitted_tile_size, plan_tiles, run_tiles,
                            submission_order)


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


@pytest.mark.parametrize("n, size, overlap", [(512, 108, 20), (512, 72, 20), (256, 108, 20),
                                              (796, 100, 14), (300, 290, 20), (100, 200, 20)])
def test_fitted_tile_size_needs_no_more_tiles_and_overlaps_by_exactly_the_overlap(n, size, overlap):
    fitted = fitted_tile_size(n, size, overlap)
    assert fitted <= min(size, n)
    if size >= n:
        assert fitted == n
        return
    starts = [t.x0 for t in plan_tiles(1, n, fitted, overlap)]
    assert len(starts) == len([t.x0 for t in plan_tiles(1, n, size, overlap)])
    gaps = [fitted - (b - a) for a, b in zip(starts, starts[1:])]   # overlaps between windows
    assert min(gaps) >= overlap and max(gaps) <= overlap + 1       # no more shared than needed
    # and one pixel less would need another tile
    assert len(plan_tiles(1, n, fitted - 1, overlap)) > len(starts)


def _square(t):
    return t.index ** 2


def _pid(tile):
    return os.getpid()


def test_run_tiles_serial_and_pool_agree():
    tiles = plan_tiles(60, 60, 30, 8)
    a = run_tiles(_square, tiles, workers=1)
    b = run_tiles(_square, tiles, workers=2)
    assert a == b == [t.index ** 2 for t in tiles]


def test_tiles_are_submitted_costliest_first_and_results_stay_in_tile_order():
    tiles = plan_tiles(60, 60, 20, 6)
    cost = [(7 * t.index) % 5 for t in tiles]
    order = [t.index for t in submission_order(tiles, cost)]
    assert sorted(order) == list(range(len(tiles)))
    assert [cost[i] for i in order] == sorted(cost, reverse=True)
    assert all(a < b for a, b in zip(order, order[1:]) if cost[a] == cost[b])   # stable
    assert submission_order(tiles) == tiles
    assert run_tiles(_square, tiles, workers=2, cost=cost) == [t.index ** 2 for t in tiles]


def test_a_pool_started_ahead_warms_up_and_runs_the_tiles():
    from calseg.patches import _warm_up, start_pool

    _warm_up()                                       # the warm-up itself runs cleanly here
    tiles = plan_tiles(60, 60, 30, 8)
    pool = start_pool(2)
    try:
        assert run_tiles(_square, tiles, pool=pool) == [t.index ** 2 for t in tiles]
    finally:
        pool.shutdown()


def test_run_tiles_unreachable_scheduler_is_a_config_error():
    pytest.importorskip("distributed")
    from calseg.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"):
        from calseg.patches import connect_scheduler

        connect_scheduler("tcp://127.0.0.1:9", timeout=1)


def test_movie_handle_pickles_without_pixels(tmp_path):
    """What a Dask task or a pool worker receives with the movie: paths and layout, not frames."""
    import pickle

    import tifffile

    from calseg.io.tiff import read_movie
    from calseg.motion import CorrectedMovie, estimate_motion

    a = np.random.default_rng(0).integers(0, 60000, (200, 64, 64), dtype=np.uint16)  # 1.6 MB
    tifffile.imwrite(tmp_path / "m.tif", a)
    m = read_movie(tmp_path / "m.tif")
    m.read(rows=slice(0, 8))  # an open handle is not pickled either
    blob = pickle.dumps(m)
    assert len(blob) < 4096 and str(tmp_path / "m.tif").encode() in blob
    np.testing.assert_array_equal(pickle.loads(blob).read(3, 5, rows=slice(2, 9)), a[3:5, 2:9])
    corrected = CorrectedMovie(m, estimate_motion(m, max_shift=2, n_reference_frames=20))
    # the handle plus the motion estimate (shifts, a reference image), not the frames
    assert len(pickle.dumps(corrected)) < a.nbytes / 50


def test_segment_refuses_an_in_memory_movie_on_a_scheduler():
    from calseg.config import Settings
    from calseg.errors import ConfigError
    from calseg.pipeline import segment

    movie = np.random.default_rng(0).standard_normal((50, 32, 32)).astype(np.float32)
    s = Settings(fps=10.0, scheduler="tcp://127.0.0.1:9", motion_correction="none").validated()
    with pytest.raises(ConfigError, match="read from files"):
        segment(movie, s)


def test_dask_cluster_gives_the_serial_result(tmp_path):
    """calseg run --scheduler on a real two-process LocalCluster, in Dask's default worker
    environment (BLAS pinned to one thread), and --workers 2 (a local pool): the same masks,
    footprints, traces, spikes and certificate, to the last bit, as the serial run
    (motion-corrected, 4 tiles). Under CI the kernels are compiled in this process and loaded
    from numba's cache in the workers; that once changed the last bits (see ``calseg._jit.helper``)."""
    distributed = pytest.importorskip("distributed")
    import json

    import tifffile
    from click.testing import CliRunner

    from calseg.cli import main
    from calseg.simulate import simulate

    simulate(tmp_path / "sim", preset="easy", height=48, width=48, n_frames=200, seed=3)
    movie = str(tmp_path / "sim" / "movie.tif")
    common = ["run", movie, "--no-report", "--max-iter", "30", "--no-grow", "--tile-size", "32",
              "--tile-overlap", "14", "--json"]
    serial = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "serial"), "--workers", "1"])
    assert serial.exit_code == 0, serial.output
    pool = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "pool"), "--workers", "2"])
    assert pool.exit_code == 0, pool.output
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        res = CliRunner().invoke(main, [*common, "-o", str(tmp_path / "dask"), "--scheduler",
                                        cluster.scheduler_address])
        assert res.exit_code == 0, res.output
        assert "on the Dask cluster at " + cluster.scheduler_address in res.stderr
        # tasks sent this way run in the cluster's worker processes
        pids = run_tiles(_pid, plan_tiles(60, 60, 30, 8), scheduler=cluster.scheduler_address)
        assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2

    def numbers(d):
        cert = json.loads((d / "certificate.json").read_text())
        for t in cert["tiles"]:
            t.pop("seconds", None)  # time taken, not a result
        return cert

    a = tmp_path / "serial"
    run_a = json.loads((a / "run.json").read_text())
    assert run_a["resolved"]["n_tiles"] == 4
    for b in (tmp_path / "pool", tmp_path / "dask"):
        np.testing.assert_array_equal(tifffile.imread(a / "masks.tif"), tifffile.imread(b / "masks.tif"))
        np.testing.assert_array_equal(tifffile.imread(a / "footprints.tif"),
                                      tifffile.imread(b / "footprints.tif"))
        for name in ("traces.csv", "spikes.csv", "neurons.csv", "regions.json"):
            assert (a / name).read_text() == (b / name).read_text(), (b.name, name)
        assert numbers(a) == numbers(b), b.name
    assert json.loads((tmp_path / "dask" / "run.json").read_text())["resolved"]["scheduler"] \
        == cluster.scheduler_address
    assert json.loads(serial.stdout)["n_neurons"] == json.loads(res.stdout)["n_neurons"] >= 1
