"""calseg.io.cache: the raw cache written when tile reads would be slow, and --keep-cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from calseg.cli import main
from calseg.errors import OutputError
from calseg.io.cache import cache_folder, slow_tile_reads, tile_cache
from calseg.io.tiff import read_movie

from fake_segment import fake_segment


def _movie(path, compression=None, T=40, H=24, W=30, dtype=np.uint16, seed=0):
    a = np.random.default_rng(seed).integers(0, 60000, (T, H, W)).astype(dtype)
    tifffile.imwrite(path, a, compression=compression, metadata={"axes": "TYX"})
    return a


def test_which_layouts_are_cached(tmp_path):
    _movie(tmp_path / "plain.tif")
    _movie(tmp_path / "zlib.tif", compression="zlib")
    plain, packed = read_movie(tmp_path / "plain.tif"), read_movie(tmp_path / "zlib.tif")
    assert slow_tile_reads(plain, 9) is None
    assert slow_tile_reads(packed, 1) is None  # one tile reads the file once anyway
    assert "compressed" in slow_tile_reads(packed, 9)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(20):
        tifffile.imwrite(folder / f"f{t:03d}.tif", np.full((8, 8), t, np.uint16))
    assert "20 files" in slow_tile_reads(read_movie(folder), 4)


@pytest.mark.parametrize("keep", [False, True])
def test_cache_reads_the_same_values_and_goes_away_unless_kept(tmp_path, keep):
    a = _movie(tmp_path / "zlib.tif", compression="zlib", dtype=np.int16)
    m = read_movie(tmp_path / "zlib.tif")
    out = tmp_path / "results" / "rec1"
    folder = cache_folder(out)
    assert folder == tmp_path / "results" / "rec1.cache"
    seen = []
    with tile_cache(m, out, n_tiles=4, keep=keep, progress=lambda d, n: seen.append((d, n))) as c:
        assert c is not m and c._sources[0].mode == "memmap"  # read by positional reads
        assert c.paths == [folder / "movie.npy"] and c.fps == m.fps and c.dtype == np.int16
        np.testing.assert_array_equal(c.read(), a)
        np.testing.assert_array_equal(c.read(3, 30, rows=slice(5, 17), cols=slice(2, 29, 3)),
                                      a[3:30, 5:17, 2:29:3])
        np.testing.assert_array_equal(np.load(folder / "movie.npy"), a)  # a plain .npy
        assert seen[-1] == (40, 40)
    assert folder.exists() == keep
    if keep:
        info = json.loads((folder / "source.json").read_text())
        assert info["paths"] == [str(tmp_path / "zlib.tif")] and info["shape"] == [40, 24, 30]
        # a later run on the same input reuses the kept cache instead of writing it again
        before = (folder / "movie.npy").stat().st_mtime_ns
        with tile_cache(read_movie(tmp_path / "zlib.tif"), out, n_tiles=4, keep=True,
                        progress=lambda d, n: pytest.fail("rewritten")) as c:
            np.testing.assert_array_equal(c.read(7), a[7:])
        assert (folder / "movie.npy").stat().st_mtime_ns == before
        # ... but not one on another input
        b = _movie(tmp_path / "zlib.tif", compression="zlib", dtype=np.int16, seed=1)
        with tile_cache(read_movie(tmp_path / "zlib.tif"), out, n_tiles=4) as c:
            np.testing.assert_array_equal(c.read(), b)
        assert not folder.exists()


def test_uncompressed_movie_is_read_in_place(tmp_path):
    _movie(tmp_path / "plain.tif")
    m = read_movie(tmp_path / "plain.tif")
    with tile_cache(m, tmp_path / "out", n_tiles=9) as c:
        assert c is m
    assert not cache_folder(tmp_path / "out").exists()


@pytest.mark.parametrize("keep", [False, True])
def test_no_room_for_the_cache_is_an_output_error(tmp_path, monkeypatch, keep):
    import shutil
    from collections import namedtuple

    _movie(tmp_path / "zlib.tif", compression="zlib")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 6, 10 ** 6, 1000))
    with pytest.raises(OutputError, match=r"no room for the raw cache of .*zlib.tif: it needs"):
        with tile_cache(read_movie(tmp_path / "zlib.tif"), tmp_path / "out", n_tiles=4, keep=keep):
            pass
    assert not cache_folder(tmp_path / "out").exists()  # nothing half-made is kept


def test_run_keep_cache_through_the_cli(tmp_path, monkeypatch):
    """calseg run on a compressed TIFF with several tiles: the segmentation reads the cache;
    --keep-cache leaves it, and run.json names it."""
    a = _movie(tmp_path / "zlib.tif", compression="zlib")
    read = []

    def segment(movie, settings, progress=None):
        read.append(movie.paths[0])
        np.testing.assert_array_equal(movie.read(), a)
        return fake_segment(movie, settings, progress=progress)

    monkeypatch.setattr("calseg.pipeline.segment", segment)
    args = ["run", str(tmp_path / "zlib.tif"), "--fps", "10", "--tile-size", "12", "--tile-overlap", "4",
            "--no-report"]
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert read[-1] == tmp_path / "a.cache" / "movie.npy" and not (tmp_path / "a.cache").exists()
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b"), "--keep-cache"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.cache" / "movie.npy").is_file()
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["raw_cache"] == str(tmp_path / "b.cache" / "movie.npy")
    assert run["input"]["paths"] == [str(tmp_path / "zlib.tif")]
