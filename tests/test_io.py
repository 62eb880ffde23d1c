"""Tests of calseg.io.tiff (read_movie / Movie) and the `calseg info` command.

Every file is written on the fly with tifffile into tmp_path; values read back are compared with
the arrays written (or with tifffile.imread), never with the reader's own output.
"""
from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from calseg.cli import main
from calseg.errors import ConfigError, InputError
from calseg.io.tiff import (
    Movie,
    natural_sort_key,
    read_movie,
    scanimage_frame_metadata,
    value_range,
)

DTYPES = [np.uint8, np.uint16, np.int16, np.float32]


def _random(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 1e3).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def _info(args):
    return CliRunner().invoke(main, ["info", *map(str, args)])


# --------------------------------------------------------------------------- reader paths


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bigtiff", [False, True])
def test_multipage_exact_values(tmp_path, rng, dtype, bigtiff):
    a = _random(rng, (9, 13, 17), dtype)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, a, bigtiff=bigtiff)
    with read_movie(path) as m:
        assert isinstance(m, Movie)
        assert m.shape == (9, 13, 17) and len(m) == 9 and m.n_frames == 9
        assert (m.height, m.width) == (13, 17)
        assert m.dtype == np.dtype(dtype)
        assert m.nbytes == a.nbytes
        assert m.size_on_disk == path.stat().st_size
        assert m.paths == [path]
        out = m.read()
        assert out.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out, a)
        f32 = m.read(2, 5, dtype=np.float32)
        assert f32.dtype == np.float32
        np.testing.assert_array_equal(f32, a[2:5].astype(np.float32))


def _write_pagewise(path, a, **kwargs):
    with tifffile.TiffWriter(path) as w:
        for frame in a:
            w.write(frame, contiguous=False, metadata=None, **kwargs)


@pytest.mark.parametrize("layout, mode", [
    ("contiguous", "memmap"), ("big-endian", "memmap"), ("pagewise", "offsets"),
    ("pagewise big-endian", "offsets"), ("zlib", "pages")])
def test_batches_and_tiles_equal_imread(tmp_path, rng, layout, mode):
    a = _random(rng, (23, 20, 24), np.uint16)
    path = tmp_path / "m.tif"
    if layout == "contiguous":
        tifffile.imwrite(path, a, metadata=None)
    elif layout == "big-endian":
        tifffile.imwrite(path, a, byteorder=">")
    elif layout == "pagewise":
        _write_pagewise(path, a)
    elif layout == "pagewise big-endian":
        with tifffile.TiffWriter(path, byteorder=">") as w:
            for frame in a:
                w.write(frame, contiguous=False, metadata=None)
    else:
        tifffile.imwrite(path, a, compression="zlib", metadata=None)
    ref = tifffile.imread(path)
    np.testing.assert_array_equal(ref, a)
    m = read_movie(path)
    assert m._sources[0].mode == mode  # the read path under test
    rows, cols = slice(3, 11), slice(7, 24)
    np.testing.assert_array_equal(m.read(4, 19, rows=rows, cols=cols), ref[4:19, rows, cols])
    np.testing.assert_array_equal(m.read(-5), ref[-5:])
    got = list(m.iter_batches(6, start=2, stop=21, rows=rows, cols=cols, dtype=np.float32))
    assert [b for b, _ in got] == [2, 8, 14, 20]
    assert [x.shape[0] for _, x in got] == [6, 6, 6, 1]
    np.testing.assert_array_equal(np.concatenate([x for _, x in got]),
                                  ref[2:21, rows, cols].astype(np.float32))
    np.testing.assert_array_equal(m[5], ref[5])
    np.testing.assert_array_equal(m[3:20:4], ref[3:20:4])
    np.testing.assert_array_equal(m[1:4, 2:5, 6:9], ref[1:4, 2:5, 6:9])
    np.testing.assert_array_equal(m[7, 2, 3:5], ref[7, 2, 3:5])
    assert m.read(5, 5).shape == (0, 20, 24)
    # stepped and reversed windows, empty windows, a conversion of full frames
    np.testing.assert_array_equal(m[2:9, 17:2:-3, ::-2], ref[2:9, 17:2:-3, ::-2])
    np.testing.assert_array_equal(m[:, 1:19:4, 3], ref[:, 1:19:4, 3])
    assert m[:, 5:5].shape == (23, 0, 24)
    np.testing.assert_array_equal(m.read(dtype=np.float64), ref.astype(np.float64))
    with pytest.raises(ConfigError):
        list(m.iter_batches(0))


_RSS_SCRIPT = """
import resource, sys
import numpy as np
from calseg.io.tiff import read_movie
m = read_movie(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = 0
for y in range(0, m.height, 64):
    for x in range(0, m.width, 64):
        n += int(m.read(rows=slice(y, y + 64), cols=slice(x, x + 64), dtype=np.float32)[-1, 0, 0])
for _, b in m.iter_batches(64):
    n += int(b[0, 0, 0])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(m._sources[0].mode, (after - before) * 1024)
"""


@pytest.mark.parametrize("pagewise", [False, True])
def test_tile_reads_keep_memory_to_the_tile(tmp_path, pagewise):
    """Reading every tile of a 200 MB recording raises the peak RSS by about one tile (the
    float32 result, 16 MB), never by the file's size (a memory map would make it resident)."""
    T, H, W = 1600, 256, 256
    path = tmp_path / "long.tif"

    def frames():
        for t in range(T):
            yield np.full((H, W), t % 65535, np.uint16)

    if pagewise:
        with tifffile.TiffWriter(path) as w:
            for f in frames():
                w.write(f, contiguous=False, metadata=None)
    else:
        tifffile.imwrite(path, frames(), shape=(T, H, W), dtype=np.uint16)
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == ("offsets" if pagewise else "memmap")
    tile = T * 64 * 64 * 4
    grew = int(out[1])
    assert grew < 2 * tile + 16 * 2 ** 20, (grew / 2 ** 20, path.stat().st_size / 2 ** 20)


def test_pickle_reopens_lazily(tmp_path, rng):
    a = _random(rng, (12, 10, 11), np.int16)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, a)
    m = read_movie(path)
    m.read(0, 2)  # opens a handle; pickling must not carry it
    blob = pickle.dumps(m)
    assert len(blob) < 4000  # layout only, no pixel data (a.nbytes = 2640 would not fit twice)
    m2 = pickle.loads(blob)
    np.testing.assert_array_equal(m2.read(rows=slice(2, 6)), a[:, 2:6])
    m2.close()
    np.testing.assert_array_equal(m2[3], a[3])  # reopens after close
    # a changed file is refused rather than read with a stale layout
    tifffile.imwrite(path, a[:6])
    with pytest.raises(InputError, match="changed on disk"):
        pickle.loads(blob).read()


def test_pickled_movie_in_worker_process(tmp_path, rng):
    a = _random(rng, (8, 6, 5), np.uint16)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, a, compression="zlib")
    m = read_movie(path)
    import concurrent.futures as cf

    with cf.ProcessPoolExecutor(1) as ex:
        total = ex.submit(_tile_sum, m).result()
    assert total == int(a[:, 1:4, 2:5].astype(np.int64).sum())


def _tile_sum(movie):
    return int(movie.read(rows=slice(1, 4), cols=slice(2, 5)).astype(np.int64).sum())


def test_imagej_hyperstack_channel_plane_selection(tmp_path, rng):
    a = _random(rng, (6, 3, 2, 16, 20), np.uint16)  # T Z C Y X
    path = tmp_path / "hs.tif"
    tifffile.imwrite(path, a, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TZCYX", "finterval": 0.125, "unit": "um"})
    with pytest.raises(InputError, match=r"has 2 channels.*--channel 0\.\.1"):
        read_movie(path)
    with pytest.raises(InputError, match=r"has 3 planes.*--plane 0\.\.2"):
        read_movie(path, channel=0)
    with pytest.raises(InputError, match="channel=2 is out of range"):
        read_movie(path, channel=2, plane=0)
    for c in range(2):
        for z in range(3):
            m = read_movie(path, channel=c, plane=z)
            assert m.shape == (6, 16, 20)
            np.testing.assert_array_equal(m.read(), a[:, z, c])
            np.testing.assert_array_equal(m.read(1, 5, rows=slice(4, 9)), a[1:5, z, c, 4:9])
    assert m.fps == pytest.approx(8.0)
    assert m.pixel_size == pytest.approx(0.5)
    assert m.metadata_source == {"fps": "imagej", "pixel_size": "imagej"}
    m = read_movie(path, channel=0, plane=0, fps=30, pixel_size=1.25)
    assert (m.fps, m.pixel_size) == (30.0, 1.25)
    assert m.metadata_source == {"fps": "argument", "pixel_size": "argument"}


def test_imagej_virtual_layout_beyond_4gb_path(tmp_path, rng):
    """ImageJ > 4 GB files have one IFD and the frames stored contiguously after it."""
    a = _random(rng, (5, 2, 16, 20), np.uint16)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, a, imagej=True, metadata={"axes": "TCYX", "fps": 7.5})
    buf = bytearray(path.read_bytes())
    ifd = struct.unpack("<I", buf[4:8])[0]
    n_tags = struct.unpack("<H", buf[ifd:ifd + 2])[0]
    nxt = ifd + 2 + 12 * n_tags
    buf[nxt:nxt + 4] = b"\0\0\0\0"  # cut the IFD chain after the first page
    path.write_bytes(bytes(buf))
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 1 and tf.series[0].shape[0] == 5  # the layout under test
    m = read_movie(path, channel=1)
    assert m.shape == (5, 16, 20) and m.fps == 7.5
    np.testing.assert_array_equal(m.read(), a[:, 1])
    np.testing.assert_array_equal(m.read(2, 4, cols=slice(3, 8)), a[2:4, 1, :, 3:8])


@pytest.mark.slow
def test_imagej_file_over_4gb(tmp_path):
    """A real > 4 GB ImageJ file (sparse on disk where the file system allows: ~10 MB used)."""
    t, h, w = 1100, 2048, 2048  # 4.6 GB of uint8
    path = tmp_path / "big.tif"
    with pytest.warns(UserWarning, match="truncating ImageJ file"):
        mm = tifffile.memmap(path, shape=(t, h, w), dtype=np.uint8, imagej=True,
                             metadata={"axes": "TYX", "finterval": 0.05})
        mm[0] = 1
        mm[1000, 5, 7] = 200
        mm[-1] = 3
        mm.flush()
        del mm
    assert path.stat().st_size > 2 ** 32
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == 1 and not tf.is_bigtiff
    m = read_movie(path)
    assert m.shape == (t, h, w) and m.fps == pytest.approx(20.0)
    tile = m.read(999, 1001, rows=slice(0, 10), cols=slice(0, 10))
    assert tile[1, 5, 7] == 200 and int(tile.sum()) == 200
    assert m[-1].min() == 3 and m[0].max() == 1


def test_ome_metadata_and_plane(tmp_path, rng):
    a = _random(rng, (7, 2, 12, 14), np.float32)  # T Z Y X
    path = tmp_path / "m.ome.tif"
    tifffile.imwrite(path, a, ome=True,
                     metadata={"axes": "TZYX", "PhysicalSizeX": 0.8, "PhysicalSizeXUnit": "µm",
                               "TimeIncrement": 50.0, "TimeIncrementUnit": "ms"})
    with pytest.raises(InputError, match="has 2 planes"):
        read_movie(path)
    m = read_movie(path, plane=1)
    np.testing.assert_array_equal(m.read(), a[:, 1])
    assert m.fps == pytest.approx(20.0)
    assert m.pixel_size == pytest.approx(0.8)
    assert m.metadata_source == {"fps": "ome", "pixel_size": "ome"}
    assert "OME" in m.kind


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_scanimage_like_file(tmp_path, rng, compression):
    """BigTIFF whose pages carry ScanImage frame data in the Software tag (SI 2016+ style)."""
    a = _random(rng, (4, 3, 2, 16, 20), np.int16)  # volumes, planes, channels (storage order)
    sw = ("SI.hChannels.channelSave = [1;2]\nSI.hStackManager.numSlices = 3\n"
          "SI.hStackManager.framesPerSlice = 1\nSI.hFastZ.enable = true\n"
          "SI.hRoiManager.scanFrameRate = 30\nSI.hRoiManager.scanVolumeRate = 10\n"
          "SI.hRoiManager.pixelsPerLine = 20\n"
          "SI.hRoiManager.imagingFovUm = [-50 -40;50 -40;50 40;-50 40]\n")
    path = tmp_path / "si.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as w:
        for page in a.reshape(-1, 16, 20):
            w.write(page, software=sw, description="frameNumbers = 1", metadata=None,
                    contiguous=False, compression=compression)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_scanimage
    with pytest.raises(InputError, match="has 2 channels"):
        read_movie(path)
    m = read_movie(path, channel=1, plane=2)
    assert "ScanImage" in m.kind
    assert m._sources[0].mode == ("offsets" if compression is None else "pages")
    np.testing.assert_array_equal(m.read(), a[:, 2, 1])
    assert m.fps == 10.0  # volume rate: each plane is sampled once per volume
    assert m.pixel_size == pytest.approx(5.0)  # 100 µm over 20 pixels
    assert m.metadata_source == {"fps": "scanimage", "pixel_size": "scanimage"}


def test_scanimage_metadata_parsing():
    # single plane, two channels: channels interleaved per frame, frame rate per frame
    out = scanimage_frame_metadata({"SI.hChannels.channelSave": [[1], [2]],
                                    "SI.hRoiManager.scanFrameRate": 15.2,
                                    "SI.hStackManager.numSlices": 1}, n_pages=20)
    assert out["grid"] == (10, 2) and out["axes"] == "TC"
    assert out["fps"] == 15.2 and out["pixel_size"] is None
    # one channel saved (scalar), fast z over 4 planes, incomplete last volume dropped
    out = scanimage_frame_metadata({"SI.hChannels.channelSave": 1,
                                    "SI.hStackManager.numSlices": 4,
                                    "SI.hStackManager.framesPerSlice": 1,
                                    "SI.hFastZ.enable": True,
                                    "SI.hRoiManager.scanFrameRate": 40.0,
                                    "SI.hRoiManager.scanVolumeRate": 10.0}, n_pages=42)
    assert out["grid"] == (10, 4, 1) and out["n_planes"] == 4 and out["fps"] == 10.0
    # numSlices set but stacks disabled: a plain time series
    out = scanimage_frame_metadata({"SI.hStackManager.numSlices": 5,
                                    "SI.hStackManager.enable": False}, n_pages=8)
    assert out["grid"] == (8, 1) and out["n_planes"] == 1 and out["fps"] is None
    # slow stack: volumes x slices x frames per slice x channels
    out = scanimage_frame_metadata({"SI.hStackManager.numSlices": 3,
                                    "SI.hStackManager.framesPerSlice": 5}, n_pages=30)
    assert out["grid"] == (2, 3, 5, 1) and out["axes"] == "TZFC"


def test_slow_stack_frames_from_two_axes(tmp_path, rng):
    a = _random(rng, (2, 3, 4, 10, 12), np.uint16)  # volumes, slices, frames/slice
    sw = ("SI.hChannels.channelSave = 1\nSI.hStackManager.numSlices = 3\n"
          "SI.hStackManager.framesPerSlice = 4\nSI.hStackManager.enable = true\n")
    path = tmp_path / "slow.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as w:
        for page in a.reshape(-1, 10, 12):
            w.write(page, software=sw, metadata=None, contiguous=False)
    m = read_movie(path, plane=1)
    np.testing.assert_array_equal(m.read(), a[:, 1].reshape(8, 10, 12))
    np.testing.assert_array_equal(m[2:7:2], a[:, 1].reshape(8, 10, 12)[2:7:2])


def test_folder_of_single_frames_neurofinder_layout(tmp_path, rng):
    a = _random(rng, (12, 9, 8), np.uint16)
    folder = tmp_path / "neurofinder.00.00"
    (folder / "images").mkdir(parents=True)
    for i, frame in enumerate(a):
        tifffile.imwrite(folder / "images" / f"image{i}.tiff", frame)  # unpadded: 2 < 10
    (folder / "images" / "notes.txt").write_text("not an image")
    for target in (folder, folder / "images"):
        m = read_movie(target)
        assert m.shape == (12, 9, 8)
        assert [p.name for p in m.paths][:3] == ["image0.tiff", "image1.tiff", "image2.tiff"]
        np.testing.assert_array_equal(m.read(), a)
        np.testing.assert_array_equal(m.read(5, 11, rows=slice(2, 7)), a[5:11, 2:7])
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(m)).read(9), a[9:])


def test_many_files_few_handles(tmp_path, rng, monkeypatch):
    import calseg.io.tiff as tiff

    monkeypatch.setattr(tiff, "MAX_OPEN_FILES", 2)
    a = _random(rng, (9, 5, 6), np.float32)
    for i, frame in enumerate(a):
        if i % 2:
            tifffile.imwrite(tmp_path / f"f{i}.tif", frame, compression="zlib")
        else:
            tifffile.imwrite(tmp_path / f"f{i}.tif", frame)
    m = read_movie(tmp_path)
    for _ in range(2):
        np.testing.assert_array_equal(m.read(cols=slice(1, 4)), a[:, :, 1:4])
        assert len(m._handles) <= 2
    m.close()
    assert len(m._handles) == 0


def test_concurrent_reads_from_threads(tmp_path, rng, monkeypatch):
    import concurrent.futures as cf

    import calseg.io.tiff as tiff

    monkeypatch.setattr(tiff, "MAX_OPEN_FILES", 1)  # force handle eviction between threads
    parts = [_random(rng, (6, 12, 10), np.uint16) for _ in range(3)]
    for i, part in enumerate(parts):
        tifffile.imwrite(tmp_path / f"c{i}.tif", part, compression="zlib")
    a = np.concatenate(parts)
    m = read_movie(tmp_path)
    jobs = [(r, c) for r in range(0, 12, 4) for c in range(0, 10, 5)] * 3
    with cf.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda rc: m.read(rows=slice(rc[0], rc[0] + 4),
                                            cols=slice(rc[1], rc[1] + 5)), jobs))
    for (r, c), tile in zip(jobs, got):
        np.testing.assert_array_equal(tile, a[:, r:r + 4, c:c + 5])


def test_glob_and_list_in_natural_order(tmp_path, rng):
    parts = [_random(rng, (n, 6, 7), np.int16) for n in (3, 1, 4)]
    names = ["rec_2.tif", "rec_10.tif", "rec_9.tif"]  # natural order: 2, 9, 10
    for name, part in zip(names, parts):
        tifffile.imwrite(tmp_path / name, part, photometric="minisblack")
    expected = np.concatenate([parts[0], parts[2], parts[1]])
    m = read_movie(str(tmp_path / "rec_*.tif"))
    assert [p.name for p in m.paths] == ["rec_2.tif", "rec_9.tif", "rec_10.tif"]
    np.testing.assert_array_equal(m.read(), expected)
    m = read_movie([tmp_path / n for n in names])
    np.testing.assert_array_equal(m.read(), expected)
    # reads crossing file boundaries, as batches and as tiles
    got = np.concatenate([x for _, x in m.iter_batches(3, rows=slice(1, 5))])
    np.testing.assert_array_equal(got, expected[:, 1:5])
    np.testing.assert_array_equal(m[2:6], expected[2:6])
    np.testing.assert_array_equal(m[::-3, 1], expected[::-3, 1])
    assert sorted(["a10", "a2", "a1"], key=natural_sort_key) == ["a1", "a2", "a10"]
    with pytest.raises(InputError, match="listed more than once"):
        read_movie([tmp_path / names[0], tmp_path / names[0]])


def test_finite_check_streams(tmp_path, rng, monkeypatch):
    import calseg.io.tiff as tiff

    a = _random(rng, (30, 8, 8), np.float32)
    a[21, 3, 3] = np.inf
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, a)
    monkeypatch.setattr(tiff, "CHECK_FINITE_AT_OPEN_BYTES", 0)  # as for a large movie
    m = read_movie(path)  # opens without reading the data
    with pytest.raises(InputError, match=r"infinite values \(first at frame 21\)"):
        m.check_finite(batch_size=4)
    with pytest.raises(InputError, match="f.tif: contains infinite"):
        value_range(m, batch_size=4)


def test_value_range(tmp_path, rng):
    a = _random(rng, (40, 10, 12), np.int16)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, a)
    assert value_range(read_movie(path), batch_size=7) == (int(a.min()), int(a.max()))


# --------------------------------------------------------------------------- bad inputs


def _bad_files(tmp_path, rng):
    """(name, path, options, message fragment) for every input that must be refused."""
    a = _random(rng, (10, 16, 20), np.uint16)
    cases = []
    cases.append(("missing", tmp_path / "missing.tif", {}, "no such file"))
    p = tmp_path / "text.tif"
    p.write_text("this is plain text, not an image")
    cases.append(("not a tiff", p, {}, "not a TIFF"))
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, a)
    p = tmp_path / "trunc_shaped.tif"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    cases.append(("truncated", p, {}, "truncated or corrupt"))
    nometa = tmp_path / "nometa.tif"
    tifffile.imwrite(nometa, a, metadata=None)
    p = tmp_path / "trunc_chain.tif"
    p.write_bytes(nometa.read_bytes()[: nometa.stat().st_size // 2])
    cases.append(("truncated chain", p, {}, "truncated or corrupt"))
    zipped = tmp_path / "zipped.tif"
    tifffile.imwrite(zipped, a, compression="zlib", metadata=None)
    p = tmp_path / "trunc_zlib.tif"
    p.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    cases.append(("truncated compressed", p, {}, "truncated or corrupt"))
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, a, imagej=True)
    p = tmp_path / "ij_claims_more.tif"
    data = ij.read_bytes()
    assert b"images=10\nchannels=10" in data
    p.write_bytes(data.replace(b"images=10\nchannels=10", b"images=99\nchannels=99"))
    cases.append(("imagej truncated", p, {}, "truncated or corrupt ImageJ"))
    ome = tmp_path / "ome.tif"
    tifffile.imwrite(ome, a, ome=True, metadata={"axes": "TYX"})
    p = tmp_path / "ome_claims_more.tif"
    data = ome.read_bytes()
    assert b'SizeT="10"' in data
    p.write_bytes(data.replace(b'SizeT="10"', b'SizeT="99"'))
    cases.append(("ome truncated", p, {}, "describes 99 pages"))
    p = tmp_path / "single.tif"
    tifffile.imwrite(p, a[0])
    cases.append(("single image", p, {}, "single 2-D image"))
    p = tmp_path / "rgb.tif"
    tifffile.imwrite(p, rng.integers(0, 255, (5, 16, 20, 3), dtype=np.uint8), photometric="rgb")
    cases.append(("rgb", p, {}, "3 samples per pixel"))
    p = tmp_path / "rgba.tif"
    tifffile.imwrite(p, rng.integers(0, 255, (16, 20, 4), dtype=np.uint8), photometric="rgb",
                     extrasamples=["unassalpha"])
    cases.append(("rgba", p, {}, "4 samples per pixel"))
    p = tmp_path / "nopages.tif"
    p.write_bytes(b"II*\x00\x00\x00\x00\x00")
    cases.append(("zero frames", p, {}, "zero frames"))
    p = tmp_path / "empty.tif"
    with pytest.warns(UserWarning):
        tifffile.imwrite(p, np.zeros((0, 16, 20), np.uint16))
    cases.append(("zero-size", p, {}, "zero frames"))
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    tifffile.imwrite(sizes / "a1.tif", a[:3], photometric="minisblack")
    tifffile.imwrite(sizes / "a2.tif", a[:3, :, :19], photometric="minisblack")
    cases.append(("sizes", sizes, {}, "16 x 19 but"))
    for what, bad in (("NaN", np.nan), ("infinite", -np.inf)):
        f = a.astype(np.float32)
        f[7, 3, 4] = bad
        p = tmp_path / f"nonfinite_{what}.tif"
        tifffile.imwrite(p, f)
        cases.append((what, p, {}, f"contains {what} values"))
    # headers claiming absurd sizes: frames of 4e6 x 4e6 pixels, and 12000 x 12000 (288 MB)
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, a[:2], metadata=None)
    with tifffile.TiffFile(small) as tf:
        wo = tf.pages[0].tags["ImageWidth"].valueoffset
        lo = tf.pages[0].tags["ImageLength"].valueoffset
    for side, frag in ((4_000_000, "larger than any imaging frame"),
                       (12_000, "truncated or corrupt")):
        buf = bytearray(small.read_bytes())
        buf[wo:wo + 4] = struct.pack("<I", side)
        buf[lo:lo + 4] = struct.pack("<I", side)
        p = tmp_path / f"claims_{side}.tif"
        p.write_bytes(bytes(buf))
        cases.append((f"absurd {side}", p, {}, frag))
    cases.append(("no match", tmp_path / "nothing_*.tif", {}, "no files match"))
    hs = tmp_path / "hs.tif"
    tifffile.imwrite(hs, _random(rng, (4, 3, 8, 9), np.uint8), imagej=True,
                     metadata={"axes": "TCYX"})
    cases.append(("ambiguous channel", hs, {}, "--channel 0..2"))
    cases.append(("channel range", hs, {"channel": 3}, "channel=3 is out of range"))
    cases.append(("plane range", hs, {"channel": 0, "plane": 1}, "plane=1 is out of range"))
    return cases


def test_bad_inputs_library(tmp_path, rng):
    for name, path, opts, frag in _bad_files(tmp_path, rng):
        with pytest.raises(InputError) as err:
            read_movie(path, **opts)
        msg = str(err.value)
        assert frag in msg, (name, msg)
        assert "\n" not in msg, name


def test_bad_inputs_cli(tmp_path, rng):
    for name, path, opts, frag in _bad_files(tmp_path, rng):
        args = [path] + [x for k, v in opts.items() for x in (f"--{k}", v)]
        res = _info(args)
        assert res.exit_code == 1, (name, res.output)
        assert res.stdout == "", name
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, (name, res.stderr)
        assert lines[0].startswith("calseg: error: "), (name, lines)
        assert frag in lines[0], (name, lines)
        named = path.name if "*" not in path.name else "nothing_"
        assert named in lines[0], (name, lines)
        assert "Traceback" not in res.stderr


def test_bad_options():
    with pytest.raises(ConfigError, match="fps"):
        read_movie("x.tif", fps=-1)
    with pytest.raises(ConfigError, match="channel"):
        read_movie("x.tif", channel=1.5)
    assert _info(["x.tif", "--pixel-size", "0"]).exit_code == 2


# --------------------------------------------------------------------------- calseg info


def test_info_human_and_json(tmp_path, rng):
    a = _random(rng, (8, 3, 2, 10, 12), np.uint16)
    a[0, 0, 1, 0, 0] = 5
    a[3, 1, 1, 2, 2] = 60000
    path = tmp_path / "hs.tif"
    tifffile.imwrite(path, a, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "TZCYX", "finterval": 0.5, "unit": "micron"})
    sel = a[:, 1, 1]
    res = _info([path, "--channel", "1", "--plane", "1", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["shape"] == [8, 10, 12] and rep["dtype"] == "uint16"
    assert (rep["min"], rep["max"]) == (int(sel.min()), int(sel.max()))
    assert rep["fps"] == 2.0 and rep["fps_source"] == "imagej"
    assert rep["pixel_size_um"] == 0.25 and rep["pixel_size_source"] == "imagej"
    assert rep["size_on_disk"] == path.stat().st_size
    assert rep["nbytes"] == sel.nbytes
    from calseg.config import Settings
    from calseg.memory import plan_for_movie

    planned = plan_for_movie(read_movie(path, channel=1, plane=1), Settings(workers=1)).peak
    assert rep["estimated_run_memory"] == planned
    res = _info([path, "--channel", "1", "--plane", "1", "--fps", "12.5"])
    assert res.exit_code == 0, res.output
    assert "8 frames x 10 rows x 12 cols" in res.stdout
    assert "12.5 Hz" in res.stdout and "0.25 µm (from imagej)" in res.stdout
    assert f"{sel.min()} .. {sel.max()}" in res.stdout


def test_info_several_paths_and_glob(tmp_path, rng):
    parts = [_random(rng, (3, 5, 6), np.uint8) for _ in range(3)]
    for i, part in enumerate(parts):
        tifffile.imwrite(tmp_path / f"p{i + 1}.tif", part, photometric="minisblack")
    res = _info([tmp_path / "p2.tif", tmp_path / "p1.tif", "--json"])
    rep = json.loads(res.stdout)
    assert rep["n_files"] == 2 and rep["shape"] == [6, 5, 6]
    assert rep["paths"][0].endswith("p1.tif")
    res = _info([str(tmp_path / "p*.tif"), "--json"])
    rep = json.loads(res.stdout)
    both = np.concatenate(parts)
    assert rep["shape"] == [9, 5, 6] and rep["max"] == int(both.max())


def test_shared_data_loads_through_info(shared_data):
    expect = {"sima_example/example.tif": ([20, 128, 256], "uint16", 0, 4094),
              "thunder_mouse_vS1/movie.tif": ([500, 64, 64], "int16", 0, 909)}
    for rel, (shape, dtype, lo, hi) in expect.items():
        path = shared_data / rel
        if not path.exists():
            pytest.skip(f"{rel} not present")
        res = _info([path, "--json"])
        assert res.exit_code == 0, res.output
        rep = json.loads(res.stdout)
        assert rep["shape"] == shape and rep["dtype"] == dtype
        assert (rep["min"], rep["max"]) == (lo, hi)
        ref = tifffile.imread(path)
        m = read_movie(path)
        np.testing.assert_array_equal(m.read(5, 15, rows=slice(10, 40)), ref[5:15, 10:40])


def test_cli_import_is_light():
    code = ("import sys, calseg.cli; "
            "bad = [m for m in ('numba', 'tifffile', 'calseg.io.tiff') "
            "if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
