"""Tests for calseg.score and calseg.regions against hand-worked cases.

Neurofinder reference: codeneuro/neurofinder-python, neurofinder/main.py + commands/evaluate.py
(regions ``a`` = truth, ``b`` = estimate). Several cases below are that package's own unit tests
(tests/test_main.py), with the numbers it asserts.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from calseg.errors import ConfigError, InputError
from calseg.regions import (
    label_image,
    read_regions,
    regions_from_coordinates,
    regions_from_label_image,
    write_label_tiff,
    write_regions_json,
)
from calseg.score import format_table, iou_match, neurofinder_match, read_table_csv, score


def square(r0, c0, h, w=None):
    """Coordinates of an h x w block with top-left corner (r0, c0)."""
    w = h if w is None else w
    return [[r, c] for r in range(r0, r0 + h) for c in range(c0, c0 + w)]


def ring7():
    """Perimeter of the 7 x 7 square rows/cols 0..6: 24 pixels, centre (3, 3)."""
    return [[r, c] for r in range(7) for c in range(7) if r in (0, 6) or c in (0, 6)]


def write_json(path, regions, ids=None):
    items = [{"coordinates": c} for c in regions]
    if ids is not None:
        for it, i in zip(items, ids):
            it["id"] = i
    path.write_text(json.dumps(items))
    return path


def write_csv(path, ids, values, dt=0.1):
    values = np.asarray(values, dtype=float)
    lines = ["frame,time_s," + ",".join(str(i) for i in ids)]
    for t, row in enumerate(values):
        lines.append(f"{t},{t * dt:.3f}," + ",".join(repr(float(v)) for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


NF_KEYS = ("recall", "precision", "combined", "inclusion", "exclusion")


# --------------------------------------------------------------------------- Neurofinder


def test_perfect_gives_one_everywhere():
    regions = [square(0, 0, 4), square(10, 12, 3), ring7()]
    regions[2] = [[r + 20, c + 20] for r, c in regions[2]]
    r = score(regions, regions, threshold=np.float32(5), bin_frames=np.int64(1))
    for k in NF_KEYS:
        assert r["neurofinder"][k] == 1.0
    assert r["neurofinder"]["pairs"] == [[1, 1], [2, 2], [3, 3]]
    for k in ("precision", "recall", "f1", "mean_iou"):
        assert r["iou"][k] == 1.0
    assert r["iou"]["n_matched"] == 3


def test_neurofinder_package_own_cases():
    # neurofinder-python tests/test_main.py: test_similarity, test_similarity_no_threshold,
    # test_overlap_too_few, test_overlap_too_many, test_match_flipped
    a = [[[0, 0], [0, 1], [1, 0], [1, 1]], [[10, 10], [10, 11], [11, 10], [11, 11]]]
    b = [[[0, 0], [0, 1], [1, 0], [1, 1]], [[30, 30], [31, 30], [31, 31]]]
    nf = score(a, b, threshold=5)["neurofinder"]
    assert (nf["recall"], nf["precision"]) == (0.5, 0.5)
    nf = score(a, b, threshold=math.inf)["neurofinder"]
    assert (nf["recall"], nf["precision"]) == (1.0, 1.0)

    b = [[[0, 0], [0, 1], [1, 0], [1, 1]], [[10, 10], [11, 11]]]
    nf = score(a, b, threshold=math.inf)["neurofinder"]
    assert (nf["inclusion"], nf["exclusion"]) == (0.75, 1.0)

    a2 = [[[0, 0], [0, 1]], [[10, 10], [10, 11]]]
    b2 = [[[0, 0], [0, 1]], [[10, 10], [10, 11], [11, 10], [11, 12]]]
    nf = score(a2, b2, threshold=math.inf)["neurofinder"]
    assert (nf["inclusion"], nf["exclusion"]) == (1.0, 0.75)

    bf = [[[30, 30], [31, 30], [31, 31]], [[0, 0], [0, 1], [1, 0], [1, 1]]]
    ta = regions_from_coordinates(a)
    tb = regions_from_coordinates(bf)
    assert neurofinder_match(ta.centers, tb.centers, math.inf).tolist() == [1, 0]
    assert neurofinder_match(ta.centers, tb.centers, 5).tolist() == [1, -1]


def test_shift_within_and_beyond_threshold():
    truth = [square(10, 10, 4)]  # 16 px, centre (11.5, 11.5)
    # shift 3 rows: distance 3 < 5 -> matched; overlap = 1 row of 4 px -> 4/16 both ways
    r = score(truth, [square(13, 10, 4)])
    nf = r["neurofinder"]
    assert nf["n_matched"] == 1 and nf["recall"] == 1.0 and nf["precision"] == 1.0
    assert nf["inclusion"] == pytest.approx(0.25) and nf["exclusion"] == pytest.approx(0.25)
    # IoU = 4 / 28 < 0.5: no IoU match
    assert r["iou"]["n_matched"] == 0 and r["iou"]["f1"] == 0.0 and math.isnan(r["iou"]["mean_iou"])

    # shift (3, 4): distance exactly 5 -> not matched (the original's test is strict '<')
    nf = score(truth, [square(13, 14, 4)])["neurofinder"]
    assert nf["n_matched"] == 0
    assert all(nf[k] == 0.0 for k in NF_KEYS)
    nf = score(truth, [square(13, 14, 4)], threshold=5.001)["neurofinder"]
    assert nf["n_matched"] == 1 and nf["inclusion"] == 0.0  # disjoint pixels

    # shift 6 columns: beyond
    nf = score(truth, [square(10, 16, 4)])["neurofinder"]
    assert nf["recall"] == 0.0 and nf["combined"] == 0.0


def test_dropped_regions_lower_recall():
    truth = [square(12 * k, 0, 4) for k in range(5)]
    pred = [truth[0], truth[2], truth[4]]
    r = score(truth, pred)
    nf = r["neurofinder"]
    assert nf["recall"] == 3 / 5 and nf["precision"] == 1.0
    assert nf["combined"] == pytest.approx(2 * 0.6 * 1.0 / 1.6)  # 0.75
    assert nf["pairs"] == [[1, 1], [3, 2], [5, 3]]
    assert r["iou"]["recall"] == 3 / 5 and r["iou"]["precision"] == 1.0
    assert r["iou"]["f1"] == pytest.approx(0.75)


def test_added_regions_lower_precision():
    truth = [square(0, 0, 4), square(20, 0, 4)]
    pred = [square(40, 40, 3), truth[1], square(0, 40, 3), truth[0]]
    r = score(truth, pred)
    nf = r["neurofinder"]
    assert nf["recall"] == 1.0 and nf["precision"] == 0.5
    assert nf["combined"] == pytest.approx(2 / 3)
    assert nf["pairs"] == [[1, 4], [2, 2]]
    assert (nf["inclusion"], nf["exclusion"]) == (1.0, 1.0)
    assert r["iou"]["precision"] == 0.5 and r["iou"]["recall"] == 1.0


def test_empty_prediction_scores_zero():
    # The original divides by len(pred) = 0 here; calseg defines every 0/0 ratio as 0.
    r = score([square(0, 0, 3)], [])
    assert all(r["neurofinder"][k] == 0.0 for k in NF_KEYS)
    assert r["iou"]["precision"] == 0.0 and r["iou"]["recall"] == 0.0 and r["iou"]["f1"] == 0.0
    assert math.isnan(r["iou"]["mean_iou"])
    assert r["pred"]["n_regions"] == 0


def test_greedy_order_and_ties_follow_the_original():
    # truth centres (0.5, 0.5) then (0.5, 3.5); one prediction at (0.5, 2.5): distances 2 and 1.
    # Greedy visits truth 1 first, which takes the prediction although truth 2 is closer.
    t = regions_from_coordinates([square(0, 0, 2), square(0, 3, 2)])
    p = regions_from_coordinates([square(0, 2, 2)])
    assert neurofinder_match(t.centers, p.centers, 5).tolist() == [0, -1]
    # truth in the other order: the other truth region gets it
    t_rev = regions_from_coordinates([square(0, 3, 2), square(0, 0, 2)])
    assert neurofinder_match(t_rev.centers, p.centers, 5).tolist() == [0, -1]
    assert score(t_rev, p)["neurofinder"]["pairs"] == [[1, 1]]
    # a tie: two predictions at distance 2 on either side -> the lower index wins
    t1 = regions_from_coordinates([square(0, 2, 2)])
    p2 = regions_from_coordinates([square(0, 4, 2), square(0, 0, 2)])
    assert neurofinder_match(t1.centers, p2.centers, 5).tolist() == [0]


def test_greedy_centres_and_hungarian_iou_differ():
    # T1 = 7x7 ring (24 px, centre (3, 3)); T2 = 3x3 block inside it (centre (3, 3)).
    # P1 = the ring without its right column's 5 inner pixels (19 px, centre (3, 42/19)),
    # P2 = the block. Greedy: T1 takes the nearest centre, P2 (distance 0); T2 gets P1
    # (distance 3 - 42/19 = 0.789 < 5). Those pairs share no pixel: inclusion = exclusion = 0.
    # Hungarian on IoU pairs T1-P1 (19/24) and T2-P2 (1).
    ring = ring7()
    block = square(2, 2, 3)
    p1 = [rc for rc in ring if not (rc[1] == 6 and 1 <= rc[0] <= 5)]
    assert len(p1) == 19
    r = score([ring, block], [p1, block])
    nf, io = r["neurofinder"], r["iou"]
    assert nf["pairs"] == [[1, 2], [2, 1]]
    assert nf["recall"] == 1.0 and nf["precision"] == 1.0
    assert nf["inclusion"] == 0.0 and nf["exclusion"] == 0.0
    assert [p[:2] for p in io["pairs"]] == [[1, 1], [2, 2]]
    assert io["pairs"][0][2] == pytest.approx(19 / 24) and io["pairs"][1][2] == 1.0
    assert io["mean_iou"] == pytest.approx((19 / 24 + 1) / 2)
    # a threshold of 0.5 px: greedy also loses T2 (0.789 > 0.5), Hungarian still finds both
    r = score([ring, block], [p1, block], threshold=0.5)
    assert r["neurofinder"]["recall"] == 0.5 and r["iou"]["recall"] == 1.0


def test_iou_match_maximises_number_of_pairs_first():
    # Max total IoU alone would take (0, 0) = 0.9 and leave row 1 unmatched; counting pairs
    # first takes (0, 1) and (1, 0), both above 0.2.
    rows, cols = iou_match(np.array([[0.9, 0.3], [0.3, 0.0]]), 0.2)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    rows, cols = iou_match(np.array([[0.9, 0.3], [0.3, 0.0]]), 0.5)
    assert rows.tolist() == [0] and cols.tolist() == [0]


def test_iou_threshold_is_inclusive():
    truth = [square(0, 0, 4)]  # 16 px
    half = square(0, 0, 2, 4)  # 8 px inside it: IoU = 8/16 = 0.5
    r = score(truth, [half])
    assert r["iou"]["n_matched"] == 1 and r["iou"]["mean_iou"] == 0.5
    assert r["neurofinder"]["inclusion"] == 0.5 and r["neurofinder"]["exclusion"] == 1.0
    assert score(truth, [half], iou_threshold=0.51)["iou"]["n_matched"] == 0


# --------------------------------------------------------------------------- file forms


def test_label_image_and_json_give_identical_results(tmp_path):
    ring = ring7()
    truth = [ring, square(2, 2, 3), square(10, 3, 4), square(20, 20, 2)]
    pred = [[rc for rc in ring if rc[1] != 6], square(2, 2, 3), square(11, 3, 4), square(30, 0, 3)]
    tj = write_json(tmp_path / "t.json", truth)
    pj = write_json(tmp_path / "p.json", pred)
    tt, pt = tmp_path / "t.tif", tmp_path / "p.tif"
    write_label_tiff(tt, read_regions(tj))
    write_label_tiff(pt, read_regions(pj))
    ref = score(tj, pj)
    # ring -> block (centre distance 0), block -> cut ring (1.24), 4x4 -> shifted 4x4 (1.0)
    assert ref["neurofinder"]["pairs"] == [[1, 2], [2, 1], [3, 3]]
    # IoU: cut ring 17/24, block 1, shifted 4x4 12/20
    assert [p[:2] for p in ref["iou"]["pairs"]] == [[1, 1], [2, 2], [3, 3]]
    assert ref["iou"]["mean_iou"] == pytest.approx((17 / 24 + 1 + 12 / 20) / 3)
    for a, b in ((tt, pj), (tj, pt), (tt, pt)):
        r = score(a, b)
        for k in ("neurofinder", "iou"):
            assert r[k] == ref[k]
    # an in-memory label image works too
    r = score(tifffile.imread(tt), pred)
    assert r["neurofinder"] == ref["neurofinder"] and r["iou"] == ref["iou"]


def test_regions_round_trip(tmp_path):
    reg = regions_from_coordinates([square(0, 0, 2), square(5, 5, 3)], ids=[7, 3])
    write_regions_json(tmp_path / "r.json", reg)
    back = read_regions(tmp_path / "r.json")
    assert back.ids.tolist() == [7, 3]
    assert all(np.array_equal(a, b) for a, b in zip(back.coords, reg.coords))
    write_regions_json(tmp_path / "n.json", reg, with_ids=False)
    assert read_regions(tmp_path / "n.json").ids.tolist() == [1, 2]

    lab = label_image(reg, (10, 12))
    assert lab.dtype == np.uint16 and lab.shape == (10, 12)
    assert (lab == 7).sum() == 4 and (lab == 3).sum() == 9 and (lab > 0).sum() == 13
    back = regions_from_label_image(lab)
    assert back.ids.tolist() == [3, 7] and back.shape == (10, 12)  # ordered by label
    assert sorted(map(tuple, back.coords[1].tolist())) == sorted(map(tuple, square(0, 0, 2)))
    write_label_tiff(tmp_path / "l.tif", reg, (10, 12))
    assert np.array_equal(tifffile.imread(tmp_path / "l.tif"), lab)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


# --------------------------------------------------------------------------- correlation


def test_correlation_on_matched_neurons_by_id(tmp_path):
    # truth ids 1, 2, 3; prediction lists them in another order (ids 1 <-> truth 2, 2 <-> truth 1)
    # and misses truth 3, plus one extra region (id 3) far away.
    a, b, c = square(0, 0, 4), square(10, 0, 4), square(20, 0, 4)
    truth = [a, b, c]
    pred = [b, a, square(40, 40, 3)]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    y = np.empty((40, 3))
    y[:, 0] = 2.0 * x[:, 1] + 1.0   # pred 1 ~ truth 2: r = 1
    y[:, 1] = -x[:, 0]              # pred 2 ~ truth 1: r = -1
    y[:, 2] = rng.normal(size=40)   # unmatched: ignored
    ts = write_csv(tmp_path / "ts.csv", [1, 2, 3], x)
    ps = write_csv(tmp_path / "ps.csv", [1, 2, 3], y)
    r = score(truth, pred, truth_spikes=ts, pred_spikes=ps)
    sp = r["spikes"]
    assert sp["n_neurons"] == 2 and sp["n_undefined"] == 0
    per = {(t, p): v for t, p, v in sp["per_neuron"]}
    assert per[(1, 2)] == pytest.approx(-1.0) and per[(2, 1)] == pytest.approx(1.0)
    assert sp["mean"] == pytest.approx(0.0, abs=1e-12) and sp["median"] == pytest.approx(0.0, abs=1e-12)
    assert r["traces"] is None


def test_correlation_binning_hand_worked(tmp_path):
    # truth spikes at frames 0, 4, 8; predicted one frame late (1, 5, 9); T = 12.
    # bin 1: mean 1/4 each, cov sum = 0 - 12/16 = -3/4, var sum = 3 - 12/16 = 9/4 -> r = -1/3.
    # bin 2: both become [1, 0, 1, 0, 1, 0] -> r = 1.
    x = np.zeros((12, 1))
    y = np.zeros((12, 1))
    x[[0, 4, 8], 0] = 1
    y[[1, 5, 9], 0] = 1
    reg = [square(0, 0, 3)]
    r1 = score(reg, reg, truth_spikes=x, pred_spikes=y)["spikes"]
    assert r1["mean"] == pytest.approx(-1 / 3)
    r2 = score(reg, reg, truth_spikes=x, pred_spikes=y, bin_frames=2)["spikes"]
    assert r2["mean"] == pytest.approx(1.0) and r2["bin"] == 2
    # bin 5: frames 10, 11 dropped; truth [2, 1] (0, 4 | 8), pred [1, 2] (1 | 5, 9) -> r = -1
    r5 = score(reg, reg, truth_spikes=x, pred_spikes=y, bin_frames=5)["spikes"]
    assert r5["mean"] == pytest.approx(-1.0)
    # a prediction without any spike: r undefined, reported as such and left out of the summary
    two = [square(0, 0, 3), square(9, 9, 3)]
    y2 = np.concatenate([y, np.zeros((12, 1))], axis=1)
    x2 = np.concatenate([x, x], axis=1)
    rz = score(two, two, truth_spikes=x2, pred_spikes=y2)["spikes"]
    assert rz["n_undefined"] == 1 and rz["per_neuron"][1][2] is None
    assert rz["mean"] == pytest.approx(-1 / 3) and rz["median"] == pytest.approx(-1 / 3)
    rz = score(two[1:], two[1:], truth_spikes=x, pred_spikes=np.zeros((12, 1)))["spikes"]
    assert rz["n_undefined"] == 1 and math.isnan(rz["mean"]) and math.isnan(rz["median"])
    with pytest.raises(ConfigError, match="bin_frames"):
        score(reg, reg, truth_spikes=x, pred_spikes=y, bin_frames=7)


def test_folders_simulate_and_run_layouts(tmp_path):
    regs = [square(0, 0, 4), square(10, 10, 4)]
    sim = tmp_path / "sim"
    (sim / "truth").mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    write_json(sim / "truth" / "regions.json", regs)
    write_json(run / "regions.json", regs[::-1], ids=[5, 9])  # run ids 5 -> truth 2, 9 -> truth 1
    t = np.arange(30, dtype=float)
    spikes = np.stack([(t % 5 == 0), (t % 7 == 0)], axis=1).astype(float)
    calcium = np.stack([np.sin(t / 3), np.cos(t / 4)], axis=1)
    write_csv(sim / "truth" / "spikes.csv", [1, 2], spikes)
    write_csv(sim / "truth" / "calcium.csv", [1, 2], calcium)
    write_csv(run / "spikes.csv", [5, 9], spikes[:, ::-1])
    write_csv(run / "traces.csv", [5, 9], 3 * calcium[:, ::-1] + 1)
    r = score(sim, run)
    assert r["iou"]["pairs"] == [[1, 9, 1.0], [2, 5, 1.0]]
    assert r["spikes"]["mean"] == pytest.approx(1.0) and r["traces"]["mean"] == pytest.approx(1.0)
    assert r["spikes"]["truth_source"].endswith("spikes.csv")
    assert r["traces"]["truth_source"].endswith("calcium.csv")
    assert r["traces"]["pred_source"].endswith("traces.csv")
    # an explicit table whose counterpart cannot be found is an error
    with pytest.raises(InputError, match="pred spikes"):
        score(sim / "truth" / "regions.json", run / "regions.json",
              truth_spikes=sim / "truth" / "spikes.csv")
    # frame counts must agree
    write_csv(tmp_path / "short.csv", [5, 9], spikes[:20])
    with pytest.raises(InputError, match="short.csv"):
        score(sim, run, pred_spikes=tmp_path / "short.csv")


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_name_the_file(tmp_path):
    good = write_json(tmp_path / "good.json", [square(0, 0, 2)])
    with pytest.raises(InputError, match="missing.json"):
        score(tmp_path / "missing.json", good)
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"coordinates\": [[0, 0]")
    with pytest.raises(InputError, match="bad.json.*not valid JSON"):
        score(good, bad)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(InputError, match="empty.json.*no region"):
        score(empty, good)
    nocoords = tmp_path / "nocoords.json"
    nocoords.write_text(json.dumps([{"coordinates": []}]))
    with pytest.raises(InputError, match="nocoords.json.*region 0 has no coordinates"):
        score(good, nocoords)
    notlist = tmp_path / "notlist.json"
    notlist.write_text(json.dumps({"coordinates": [[0, 0]]}))
    with pytest.raises(InputError, match="notlist.json"):
        read_regions(notlist)
    dup = write_json(tmp_path / "dup.json", [square(0, 0, 2), square(5, 5, 2)], ids=[4, 4])
    with pytest.raises(InputError, match="dup.json.*id 4"):
        read_regions(dup)
    frac = tmp_path / "frac.json"
    frac.write_text(json.dumps([{"coordinates": [[0.5, 1]]}]))
    with pytest.raises(InputError, match="frac.json"):
        read_regions(frac)

    t3 = tmp_path / "stack.tif"
    tifffile.imwrite(t3, np.zeros((2, 4, 4), np.uint16))
    with pytest.raises(InputError, match="stack.tif.*2-D"):
        score(t3, good)
    tf = tmp_path / "float.tif"
    tifffile.imwrite(tf, np.ones((4, 4), np.float32))
    with pytest.raises(InputError, match="float.tif.*integer"):
        score(good, tf)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="junk.tif"):
        score(good, junk)
    with pytest.raises(InputError, match="neither regions.json"):
        score(tmp_path, good)

    hdr = tmp_path / "hdr.csv"
    hdr.write_text("t,1,2\n0,1,2\n")
    with pytest.raises(InputError, match="hdr.csv.*integer ids"):
        read_table_csv(hdr)
    nan = tmp_path / "nan.csv"
    nan.write_text("frame,time_s,1\n0,0,1\n1,0.1,abc\n")
    with pytest.raises(InputError, match="nan.csv.*row 3"):
        read_table_csv(nan)
    gap = tmp_path / "gap.csv"
    gap.write_text("frame,time_s,1\n0,0,1\n1,0.1,\n")
    with pytest.raises(InputError, match="gap.csv.*missing"):
        read_table_csv(gap)
    ids, vals = read_table_csv(write_csv(tmp_path / "ok.csv", [4, 2], [[1, 2], [3, 4]]))
    assert ids.tolist() == [4, 2] and vals.tolist() == [[1, 2], [3, 4]]
    noid = write_csv(tmp_path / "noid.csv", [1], np.arange(5.0)[:, None])
    with pytest.raises(InputError, match="noid.csv.*neuron id 2"):
        score([square(0, 0, 2), square(9, 9, 2)], [square(0, 0, 2), square(9, 9, 2)],
              truth_spikes=noid, pred_spikes=noid)


@pytest.mark.parametrize("kw", [{"threshold": 0}, {"threshold": -1.0}, {"iou_threshold": 0},
                                {"iou_threshold": 1.5}, {"bin_frames": 0}, {"bin_frames": 1.5},
                                {"threshold": float("nan")}, {"iou_threshold": True}])
def test_bad_parameters_raise_config_error(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        score([square(0, 0, 2)], [square(0, 0, 2)], **kw)


# --------------------------------------------------------------------------- CLI


def test_cli_table_json_and_errors(tmp_path):
    from calseg.cli import main

    t = write_json(tmp_path / "t.json", [square(0, 0, 4), square(20, 0, 4)])
    p = write_json(tmp_path / "p.json", [square(1, 0, 4)])
    runner = CliRunner()
    res = runner.invoke(main, ["score", str(t), str(p)])
    assert res.exit_code == 0, res.output
    assert "recall     0.5000" in res.output and "precision  1.0000" in res.output
    res = runner.invoke(main, ["score", str(t), str(p), "--json", "--threshold", "0.5"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)  # strict JSON: mean_iou is null, not NaN
    assert out["neurofinder"]["recall"] == 0.0 and out["iou"]["n_matched"] == 1
    res = runner.invoke(main, ["score", str(t), str(p), "--json", "--iou", "0.9"])
    assert json.loads(res.output, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))["iou"]["mean_iou"] is None
    res = runner.invoke(main, ["score", str(tmp_path / "nope.json"), str(p)])
    assert res.exit_code == 1
    assert res.output.startswith("calseg: error:") and "nope.json" in res.output
    res = runner.invoke(main, ["score", str(t), str(p), "--bin", "0"])
    assert res.exit_code == 2


def test_format_table_mentions_correlations():
    reg = [square(0, 0, 3)]
    x = np.arange(10.0)[:, None]
    r = score(reg, reg, truth_traces=x, pred_traces=x ** 2)
    text = format_table(r)
    assert "Traces correlation" in text and "mean r" in text and "Spikes" not in text


def test_empty_run_folder_scores_zero_without_reading_its_empty_tables(tmp_path):
    """A calseg run that found nothing writes tables with only frame,time_s: still scorable."""
    import json as _json

    from calseg.score import score as _score

    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "regions.json").write_text(_json.dumps([{"id": 1, "coordinates": [[1, 1], [1, 2]]}]))
    (truth / "spikes.csv").write_text("frame,time_s,1\n0,0.0,1\n1,0.1,0\n2,0.2,0\n")
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "regions.json").write_text("[]")
    (pred / "spikes.csv").write_text("frame,time_s\n0,0.0\n1,0.1\n2,0.2\n")
    out = _score(truth, pred)
    assert out["neurofinder"]["recall"] == 0 and out["spikes"]["n_neurons"] == 0


def test_motion_corrected_result_is_scored_in_its_own_frame(tmp_path):
    """A motion-corrected result lives in the frame of a reference built from the recording,
    offset from the simulator's frame by c = mean(s + d): the truth is moved by round(c) first."""
    import json

    from calseg.score import motion_offset, score

    rng = np.random.default_rng(0)
    T = 50
    d = np.cumsum(rng.normal(0, 0.3, (T, 2)), axis=0)            # content displacements
    s = -d + np.array([3.2, -1.1]) + rng.normal(0, 0.05, (T, 2))   # corrections, offset (3.2, -1.1)
    truth_dir, pred_dir = tmp_path / "sim", tmp_path / "out"
    (truth_dir / "truth").mkdir(parents=True)
    pred_dir.mkdir()
    yy, xx = np.mgrid[0:40, 0:40]
    cells = [(10, 10), (25, 28)]
    disk = lambda cy, cx: np.argwhere(np.hypot(yy - cy, xx - cx) <= 3).tolist()
    (truth_dir / "truth" / "regions.json").write_text(json.dumps(
        [{"id": k + 1, "coordinates": disk(cy, cx)} for k, (cy, cx) in enumerate(cells)]))
    (pred_dir / "regions.json").write_text(json.dumps(
        [{"id": k + 1, "coordinates": disk(cy + 3, cx - 1)} for k, (cy, cx) in enumerate(cells)]))
    for path, m in ((truth_dir / "truth" / "motion.csv", d), (pred_dir / "motion.csv", s)):
        with open(path, "w") as fh:
            fh.write("frame,dy,dx\n")
            for t in range(T):
                fh.write(f"{t},{m[t, 0]:.4f},{m[t, 1]:.4f}\n")
    assert motion_offset(truth_dir, pred_dir) == (3, -1)
    aligned = score(truth_dir, pred_dir)
    assert aligned["motion_offset"] == [3, -1]
    assert aligned["iou"]["f1"] == 1.0
    raw = score(truth_dir, pred_dir, align_motion=False)
    assert raw["motion_offset"] is None and raw["iou"]["f1"] < 1.0
    assert motion_offset(truth_dir / "truth" / "regions.json", pred_dir) is None  # files, not folders
