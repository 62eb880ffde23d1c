"""Exports read back with the library that owns each format and compared with calseg's outputs.

Result folders are synthesised with `calseg run`'s exact layout by
``tests/test_report.py::make_result_folder`` (seeded; neighbours' masks overlap).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from calseg.errors import ConfigError, InputError

sys.path.insert(0, str(Path(__file__).parent))
from test_report import make_result_folder  # noqa: E402

SUITE2P_PY = Path(__file__).resolve().parents[1] / ".venv-suite2p" / "bin" / "python"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("res") / "res"
    truth = make_result_folder(out, H=80, W=112, T=240, n=22, seed=5)
    return out, truth


CORE_FILES = ("masks.tif", "footprints.tif", "regions.json", "neurons.csv", "traces.csv", "spikes.csv",
              "certificate.json", "run.json", "mean.tif", "correlation.tif")


def _fresh_copy(src, dst):
    """Copy only the files `calseg run` writes (other tests add exports to the shared folder)."""
    import shutil

    dst.mkdir(parents=True)
    for name in CORE_FILES:
        shutil.copy(src / name, dst / name)
    return dst


def _rasterise(coords_list, shape):
    """Pixels whose centres lie inside any of the polygons (x, y pixel-corner coordinates)."""
    from matplotlib.path import Path as MPath

    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    pts = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    inside = np.zeros(H * W, bool)
    for c in coords_list:
        inside |= MPath(np.asarray(c, float)).contains_points(pts)
    return inside.reshape(H, W)


# --------------------------------------------------------------------------- ImageJ ROIs
def test_rois_zip_reproduces_masks(result):
    roifile = pytest.importorskip("roifile")

    from calseg.export.rois import write_imagej_rois

    out, truth = result
    path = write_imagej_rois(out)
    assert path == out / "rois.zip"
    rois = roifile.roiread(path)
    masks = tifffile.imread(out / "masks.tif")
    present = [k for k in range(1, truth["n"] + 1) if (masks == k).any()]
    assert [r.name for r in rois] == [str(k) for k in present]
    ious = []
    for r in rois:
        assert r.roitype in (roifile.ROI_TYPE.POLYGON, roifile.ROI_TYPE.RECT)
        filled = _rasterise(r.coordinates(multi=True), masks.shape)
        ref = masks == int(r.name)
        ious.append((filled & ref).sum() / (filled | ref).sum())
    # the outlines run along pixel edges: filling them gives back every mask exactly
    assert min(ious) == 1.0


def test_rois_of_awkward_masks(tmp_path):
    """Two pieces, a hole, pixels touching at a corner, a 1-pixel neuron, image borders."""
    roifile = pytest.importorskip("roifile")

    from calseg.export.rois import write_imagej_rois

    assert make_result_folder(tmp_path / "r", H=20, W=24, T=30, n=4, diameter=5.0, seed=1)["n"] == 4
    m = np.zeros((20, 24), np.uint16)
    m[0:4, 0:3] = 1
    m[10:12, 20:24] = 1                       # a second piece of neuron 1: a composite ROI
    m[5:10, 5:10] = 2
    m[7, 7] = 0                               # a hole: filled in the ROI
    m[14, 14] = m[15, 15] = m[16, 14] = 3     # 8-connected through corners
    m[19, 0] = 4
    tifffile.imwrite(tmp_path / "r" / "masks.tif", m)
    rois = roifile.roiread(write_imagej_rois(tmp_path / "r", tmp_path / "other.zip"))
    assert [r.name for r in rois] == ["1", "2", "3", "4"]
    assert rois[0].roitype == roifile.ROI_TYPE.RECT and len(rois[0].coordinates(multi=True)) == 2
    for r in rois:
        filled = _rasterise(r.coordinates(multi=True), m.shape)
        ref = m == int(r.name)
        if r.name == "2":
            ref[7, 7] = True
        np.testing.assert_array_equal(filled, ref, err_msg=r.name)


def test_rois_from_a_real_imagej_zip_convention(shared_data):
    """Our tracer on the masks of Fiji's own ROIs (sima example) gives ROIs that fill identically."""
    roifile = pytest.importorskip("roifile")

    from calseg.export.rois import mask_outlines

    zpath = shared_data / "sima_example" / "imageJ_ROIs.zip"
    if not zpath.exists():
        pytest.skip("sima_example/imageJ_ROIs.zip absent")
    checked = 0
    for roi in roifile.roiread(zpath)[:20]:
        c = roi.coordinates()
        shape = (int(c[:, 1].max()) + 3, int(c[:, 0].max()) + 3)
        fiji = _rasterise([c], shape)
        if not fiji.any():
            continue
        ours = _rasterise(mask_outlines(fiji), shape)
        from scipy import ndimage as ndi

        np.testing.assert_array_equal(ours, ndi.binary_fill_holes(fiji))
        checked += 1
    assert checked >= 2


# --------------------------------------------------------------------------- Suite2p
def test_suite2p_folder_has_what_the_gui_reads(result, tmp_path):
    from calseg.export.suite2p import write_suite2p

    out, truth = result
    plane = write_suite2p(out, tmp_path)
    assert plane == (tmp_path / "suite2p" / "plane0").resolve()
    n, T, H, W = truth["n"], truth["T"], truth["H"], truth["W"]
    stat = np.load(plane / "stat.npy", allow_pickle=True)
    ops = np.load(plane / "ops.npy", allow_pickle=True).item()
    F, Fneu, spks = (np.load(plane / f) for f in ("F.npy", "Fneu.npy", "spks.npy"))
    iscell = np.load(plane / "iscell.npy")
    assert stat.shape == (n,) and F.shape == Fneu.shape == spks.shape == (n, T) and iscell.shape == (n, 2)
    # the keys the GUI's loader, mask drawing, colour views and ROI panel read
    for s in stat:
        for key in ("ypix", "xpix", "lam", "med", "npix", "radius", "aspect_ratio", "compact", "footprint",
                    "overlap", "skew", "std", "npix_norm", "soma_crop", "snr"):
            assert key in s, key
        assert s["ypix"].dtype == np.int64 and s["lam"].dtype == np.float32 and s["overlap"].dtype == bool
        assert len(s["ypix"]) == len(s["xpix"]) == len(s["lam"]) == len(s["overlap"]) == s["npix"]
    for key in ("Ly", "Lx", "nframes", "fs", "tau", "diameter", "meanImg", "meanImgE", "Vcorr", "xrange",
                "yrange", "save_path", "data_path", "reg_file", "extraction", "detection", "aspect"):
        assert key in ops, key
    assert (ops["Ly"], ops["Lx"], ops["nframes"], ops["fs"]) == (H, W, T, truth["fps"])
    assert ops["meanImg"].shape == ops["meanImgE"].shape == ops["Vcorr"].shape == (H, W)
    np.testing.assert_array_equal(ops["Vcorr"], tifffile.imread(out / "correlation.tif"))
    assert int(ops["tau"] * ops["fs"] / 2) >= 1    # the GUI's default bin
    # masks: each stat is the neuron's whole region; where masks.tif labels a pixel k, it is in stat k
    masks = tifffile.imread(out / "masks.tif")
    label = np.zeros((H, W), np.int64)
    for k, s in enumerate(stat):
        np.testing.assert_array_equal(np.column_stack([s["ypix"], s["xpix"]]), truth["regions"][k])
        np.testing.assert_allclose(s["lam"], truth["footprints"][k][s["ypix"], s["xpix"]], rtol=1e-6)
        assert s["calseg_id"] == k + 1
        mine = masks[s["ypix"], s["xpix"]] == k + 1
        label[s["ypix"][mine], s["xpix"][mine]] = k + 1
        # 'overlap' flags exactly the pixels another neuron's region also covers
        others = np.zeros((H, W), bool)
        for j, r in enumerate(truth["regions"]):
            if j != k:
                others[r[:, 0], r[:, 1]] = True
        np.testing.assert_array_equal(s["overlap"], others[s["ypix"], s["xpix"]])
    np.testing.assert_array_equal(label, masks)
    assert any(s["overlap"].any() for s in stat)       # the fixture has overlapping neighbours
    # traces: F reconstructs calseg's dF/F exactly as F/F0 - 1; its mean is the mask's mean image value
    dff = truth["traces"].T
    F0 = F.mean(axis=1) / (1 + dff.mean(axis=1))
    np.testing.assert_allclose(F / F0[:, None] - 1, dff, atol=2e-5)
    mean = tifffile.imread(out / "mean.tif")
    for k, s in enumerate(stat[:5]):
        w = truth["footprints"][k][s["ypix"], s["xpix"]]
        np.testing.assert_allclose(F[k].mean(), np.average(mean[s["ypix"], s["xpix"]], weights=w), rtol=1e-4)
    assert not Fneu.any()
    np.testing.assert_allclose(spks, truth["spikes"].T, atol=1e-5)
    np.testing.assert_array_equal(iscell[:, 0], 1)
    np.testing.assert_allclose(iscell[:, 1], truth["scores"] / truth["scores"].max(), rtol=1e-5)
    # suite2p's skew of the trace
    from scipy.stats import skew

    np.testing.assert_allclose([s["skew"] for s in stat], skew(dff, axis=1), rtol=1e-3, atol=1e-4)
    readme = (plane / "README.txt").read_text()
    assert "F = F0 * (1 + dF/F)" in readme and "zeros" in readme


def test_suite2p_shape_statistics_match_definitions():
    """A disk is compact with aspect ~1; an elongated ellipse is not; radius scales with size."""
    from calseg.export.suite2p import roi_stats

    yy, xx = np.mgrid[:41, :41]
    disk = (yy - 20) ** 2 + (xx - 20) ** 2 <= 36
    s = roi_stats(yy[disk], xx[disk], np.ones(disk.sum()), 12.0)
    assert s["med"] == [20, 20] and s["npix"] == disk.sum()
    assert s["compact"] == pytest.approx(1.0, abs=0.02)
    assert s["aspect_ratio"] == pytest.approx(1.0, abs=0.01)
    # a uniform disk of radius R has per-axis variance R^2/4, so 2 sigma = R (pixels)
    assert s["radius"] == pytest.approx(6.0, rel=0.05)
    ell = ((yy - 20) / 3.0) ** 2 + ((xx - 20) / 12.0) ** 2 <= 1
    e = roi_stats(yy[ell], xx[ell], np.ones(ell.sum()), 12.0)
    assert e["aspect_ratio"] > 1.5 and e["compact"] > 1.2 and e["radius"] == pytest.approx(12.0, rel=0.05)


@pytest.mark.slow  # imports Suite2p (and torch) in its own environment: ~15-50 s
@pytest.mark.skipif(not SUITE2P_PY.exists(), reason="the Suite2p environment (.venv-suite2p) is absent")
def test_suite2p_folder_loads_with_suite2p_itself(result, tmp_path):
    """Suite2p 1.1.0's own code on the folder: the GUI's loader and the numerical part of its set-up
    (ROI boundaries and circles, background views, colour maps, mask layers), its roi_stats on our
    pixels (the shape statistics must agree), and io.combined."""
    from calseg.export.suite2p import write_suite2p

    out, truth = result
    plane = write_suite2p(out, tmp_path)
    script = textwrap.dedent(f"""
        import ast, json, os, types, numpy as np, matplotlib, suite2p
        from matplotlib.colors import hsv_to_rgb
        from scipy.ndimage import binary_dilation, binary_fill_holes
        from suite2p.detection.stats import roi_stats
        from suite2p.io.save import combined

        # The GUI modules import Qt (absent here): run their functions' own source, taken with ast,
        # with Qt stand-ins for the two label calls in init_masks.
        class QFont:
            Bold = 75
            def __init__(self, *a, **k): pass
        label = types.SimpleNamespace(setPos=lambda *a: None, setFont=lambda *a: None)
        ns = {{"np": np, "os": os, "matplotlib": matplotlib, "hsv_to_rgb": hsv_to_rgb,
               "binary_dilation": binary_dilation, "binary_fill_holes": binary_fill_holes,
               "pg": types.SimpleNamespace(TextItem=lambda *a, **k: label),
               "QtGui": types.SimpleNamespace(QFont=QFont)}}
        gui = os.path.join(os.path.dirname(suite2p.__file__), "gui")
        def grab(module, *names):
            tree = ast.parse(open(os.path.join(gui, module)).read())
            fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
            assert len(fns) == len(names), (module, names)
            exec(compile(ast.Module(fns, []), module, "exec"), ns)
        grab("io.py", "load_files")
        grab("utils.py", "boundary", "circle")
        grab("views.py", "init_views")
        grab("masks.py", "make_colors", "hsv2rgb", "istat_hsv", "istat_transform", "init_masks", "rgb_masks")

        plane = {str(plane)!r}
        got = ns["load_files"](os.path.join(plane, "stat.npy"))
        assert got is not None, "load_files refused the folder"
        stat, ops, F, Fneu, spks, iscell, probcell, redcell, probredcell, hasred = got
        # what load_to_GUI / make_masks_and_enable_buttons compute before drawing
        p = types.SimpleNamespace(stat=stat, ops=ops, iscell=iscell, probcell=probcell, redcell=redcell,
                                  hasred=hasred, colors={{}}, rois={{}}, ops_plot={{"colormap": "hsv"}},
                                  checkBoxN=types.SimpleNamespace(isChecked=lambda: False,
                                                                  setChecked=lambda v: None))
        p.color_names = ["A: random", "S: skew", "D: compact", "F: snr", "G: aspect_ratio", "H: chan2_prob",
                         "J: classifier, cell prob=", "K: correlations, bin=", "L: corr with 1D var, bin=^^^",
                         "M: rastermap / custom"]
        gui_bin = int(ops["tau"] * ops["fs"] / 2)
        for n in range(len(stat)):
            yext, xext = ns["boundary"](stat[n]["ypix"], stat[n]["xpix"])
            ycirc, xcirc = ns["circle"](stat[n]["med"], stat[n]["radius"])
            assert len(yext) > 0 and len(ycirc) == 100
        ns["init_views"](p)
        ns["make_colors"](p)
        ns["init_masks"](p)
        sroi = p.rois["Sroi"][0]
        stats_shown = {{k: [float(s[k]) for s in stat] for k in ("npix_norm", "skew", "compact", "snr",
                                                                 "aspect_ratio")}}
        fresh = np.array([{{"ypix": s["ypix"], "xpix": s["xpix"], "lam": s["lam"]}} for s in stat])
        ref = roi_stats(fresh, ops["Ly"], ops["Lx"], diameter=list(ops["diameter"]), max_overlap=None,
                        do_soma_crop=False)
        res = {{k: [float(np.ravel(r[k])[0]) if k != "med" else list(map(float, r[k])) for r in ref]
               for k in ("med", "compact", "radius", "aspect_ratio", "npix_norm", "mrs", "mrs0")}}
        mine = {{k: [float(np.ravel(s[k])[0]) if k != "med" else list(map(float, s[k])) for s in stat]
                for k in res}}
        c = combined(os.path.dirname(plane), save=True)
        print(json.dumps({{"n": len(stat), "F": list(F.shape), "iscell": int(iscell.sum()), "ref": res,
                          "mine": mine, "combined_n": len(c[0]), "combined_Ly": int(c[1]["Ly"]),
                          "views": list(p.views.shape), "rgb": list(p.colors["RGB"].shape),
                          "sroi": np.argwhere(sroi).tolist(), "bin": gui_bin,
                          "finite": all(np.isfinite(v).all() for v in stats_shown.values())}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([str(SUITE2P_PY), "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rep["n"] == truth["n"] and rep["F"] == [truth["n"], truth["T"]] and rep["iscell"] == truth["n"]
    assert rep["combined_n"] == truth["n"] and rep["combined_Ly"] == truth["H"]
    assert rep["views"] == [7, truth["H"], truth["W"], 3] and rep["rgb"][0] == 2 and rep["finite"]
    assert rep["bin"] >= 1
    # the GUI's cell mask layer covers exactly the union of the neurons' regions
    union = np.zeros((truth["H"], truth["W"]), bool)
    for r in truth["regions"]:
        union[r[:, 0], r[:, 1]] = True
    np.testing.assert_array_equal(np.array(rep["sroi"]), np.argwhere(union))
    for key in rep["ref"]:
        np.testing.assert_allclose(np.array(rep["mine"][key], float), np.array(rep["ref"][key], float),
                                   rtol=1e-5, atol=1e-6, err_msg=key)


# --------------------------------------------------------------------------- NWB
def test_nwb_round_trip_and_validator(result, tmp_path):
    pynwb = pytest.importorskip("pynwb")
    from calseg.export.nwb import write_nwb

    out, truth = result
    path = write_nwb(out, tmp_path / "x.nwb")
    assert path == tmp_path / "x.nwb"
    errors = pynwb.validate(path=str(path))
    errors = errors[0] if isinstance(errors, tuple) else errors
    assert list(errors) == []
    n, T, H, W = truth["n"], truth["T"], truth["H"], truth["W"]
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        f = io.read()
        ophys = f.processing["ophys"]
        ps = ophys["ImageSegmentation"]["PlaneSegmentation"]
        assert len(ps) == n
        assert list(ps["neuron_id"][:]) == list(range(1, n + 1))
        for k in range(n):
            pm = np.asarray(ps["pixel_mask"][k].tolist())      # rows (x, y, weight)
            yx = pm[:, [1, 0]].astype(np.int64)
            np.testing.assert_array_equal(yx, truth["regions"][k])
            np.testing.assert_allclose(pm[:, 2], truth["footprints"][k][yx[:, 0], yx[:, 1]], rtol=1e-6)
        from calseg.io.tables import read_csv_table

        dff = ophys["DfOverF"]["DfOverF"]
        csv_traces = read_csv_table(out / "traces.csv")
        assert csv_traces.names == [str(k) for k in range(1, n + 1)]
        np.testing.assert_array_equal(dff.data[:], csv_traces.values.astype(np.float32))
        np.testing.assert_allclose(dff.data[:], truth["traces"], rtol=1e-5, atol=1e-6)
        assert dff.rate == truth["fps"] and dff.data.shape == (T, n)
        assert list(dff.rois.data[:]) == list(range(n))
        spk = ophys["Deconvolved"]["Deconvolved"]
        np.testing.assert_array_equal(spk.data[:], read_csv_table(out / "spikes.csv").values.astype(np.float32))
        plane = f.imaging_planes["ImagingPlane"]
        assert plane.imaging_rate == truth["fps"] and plane.indicator == "gcamp6f"
        assert plane.device.name == "calseg input"
        imgs = ophys["SummaryImages"]
        np.testing.assert_array_equal(imgs["correlation"].data[:], tifffile.imread(out / "correlation.tif"))
        assert imgs["mean"].data.shape == (H, W)


def test_nwb_without_neurons_validates(tmp_path):
    pynwb = pytest.importorskip("pynwb")
    from calseg.export.nwb import write_nwb

    make_result_folder(tmp_path / "r", n=0, T=20)
    path = write_nwb(tmp_path / "r")
    errors = pynwb.validate(path=str(path))
    assert list(errors[0] if isinstance(errors, tuple) else errors) == []


def test_nwb_missing_pynwb_is_a_config_error(tmp_path, monkeypatch):
    from calseg.export import nwb

    make_result_folder(tmp_path / "r", n=2, T=20)
    monkeypatch.setitem(sys.modules, "pynwb", None)
    with pytest.raises(ConfigError, match=r"pip install 'calseg\[nwb\]'"):
        nwb.write_nwb(tmp_path / "r")


# --------------------------------------------------------------------------- the hook
def test_write_exports_parses_checks_and_writes(result, tmp_path, monkeypatch):
    from calseg.export import check_exports, parse_exports, write_exports

    assert parse_exports("suite2p, NWB,suite2p") == ("suite2p", "nwb")
    assert parse_exports(None) == ()
    with pytest.raises(ConfigError, match="'matlab' is unknown"):
        parse_exports("suite2p,matlab")
    res = _fresh_copy(result[0], tmp_path / "res")
    written = write_exports(res, "rois,suite2p")
    assert written == {"rois": res / "rois.zip", "suite2p": (res / "suite2p" / "plane0").resolve()}
    assert sorted(p.name for p in res.iterdir() if p.name.startswith(".")) == []   # no temporaries
    monkeypatch.setitem(sys.modules, "pynwb", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynwb" else real(name, *a))
    with pytest.raises(ConfigError, match="--export nwb needs pynwb"):
        check_exports(["nwb"])


def test_exporters_refuse_a_folder_that_is_not_a_result(tmp_path):
    from calseg.export.rois import write_imagej_rois
    from calseg.export.suite2p import write_suite2p

    with pytest.raises(InputError, match="not a folder"):
        write_suite2p(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(InputError, match=r"(masks|neurons)\.(tif|csv): missing"):
        write_imagej_rois(tmp_path / "half")
    make_result_folder(tmp_path / "r", n=3, T=20)
    (tmp_path / "r" / "traces.csv").write_text("frame,time_s,1,2\n0,0.0,1,2\n")
    with pytest.raises(InputError, match="no column for neuron 3"):
        write_suite2p(tmp_path / "r")
    assert not (tmp_path / "r" / "suite2p" / "plane0").exists()


def test_write_extras_is_what_every_result_gets(result, tmp_path, monkeypatch, caplog):
    from calseg.export import write_extras

    res = _fresh_copy(result[0], tmp_path / "res")
    written = write_extras(res, "nwb" if _has("pynwb") else ())
    assert {"summary", "report", "rois"} <= set(written) and (res / "summary.png").stat().st_size > 10_000
    assert ("nwb" in written) == _has("pynwb")
    # without matplotlib and roifile the report and ROIs are skipped with a warning, not an error
    res2 = _fresh_copy(result[0], tmp_path / "res2")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "roifile", None)
    with caplog.at_level("WARNING", logger="calseg"):
        written = write_extras(res2, "suite2p")
    assert set(written) == {"suite2p"}
    assert "pip install matplotlib" in caplog.text and "pip install roifile" in caplog.text
    assert not (res2 / "summary.png").exists() and not (res2 / "rois.zip").exists()


def _has(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None
