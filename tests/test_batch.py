"""calseg batch: discovery, skipping, locks, killed and concurrent runs, bad recordings.

Tests of batch logic replace the solver with ``tests/fake_segment.py`` (fast, and able to sleep
and to count its calls); ``test_end_to_end_real_pipeline`` runs the real pipeline on a tiny
simulated recording.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from calseg.batch import find_recordings, output_state
from calseg.cli import main
from calseg.config import Settings
from calseg.locking import FileLock
from calseg.pipeline import OUTPUT_FILES

from fake_segment import fake_segment

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAKE = TESTS / "fake_segment.py"


def movie(path, seed=0, T=30, H=16, W=16):
    rng = np.random.default_rng(seed)
    a = rng.integers(100, 200, (T, H, W), dtype=np.uint16)
    a[:, 5:8, 6:9] += (rng.random(T) * 500).astype(np.uint16)[:, None, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, a)
    return path


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr("calseg.pipeline.segment", fake_segment)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def rows(outroot):
    with open(Path(outroot) / "batch.csv", newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def assert_complete(folder):
    folder = Path(folder)
    for f in OUTPUT_FILES:
        assert (folder / f).is_file(), (folder, f)
    info = json.loads((folder / "run.json").read_text())
    masks = tifffile.imread(folder / "masks.tif")
    regions = json.loads((folder / "regions.json").read_text())
    assert masks.shape == tuple(info["shape"][1:])
    assert len(regions) == info["n_neurons"]
    return info


def leftovers(outroot):
    return sorted(p.name for p in Path(outroot).iterdir() if ".partial-" in p.name or ".old-" in p.name)


# --------------------------------------------------------------------------- discovery


def test_discovery_rules(tmp_path):
    a = movie(tmp_path / "day1" / "movie.tif")
    b = movie(tmp_path / "day2" / "movie.tif")
    many = tmp_path / "many"
    movie(many / "m2.tif"), movie(many / "m10.tif"), movie(many / "m1.ome.tif")
    nf = tmp_path / "neurofinder.00.00"
    (nf / "images").mkdir(parents=True)
    for k in range(3):  # Neurofinder layout: images/image00000.tif ... one frame each
        tifffile.imwrite(nf / "images" / f"image{k:05d}.tif", np.full((8, 8), k, np.uint16))
    seq = tmp_path / "seq"
    seq.mkdir()
    for k in (1, 2, 10):
        tifffile.imwrite(seq / f"frame{k}.tif", np.full((8, 8), k, np.uint16))
    root = tmp_path / "root"  # a folder of recording folders
    movie(root / "r1" / "x.tif")
    movie(root / "r2" / "images" / "y.tif")
    (root / ".hidden").mkdir()
    movie(root / ".hidden" / "z.tif")
    lst = tmp_path / "lists" / "l.txt"
    lst.parent.mkdir()
    lst.write_text("# nightly list\n\n../day1/movie.tif\n  # indented comment\n../missing.tif\n")
    out = tmp_path / "many" / "results"  # OUTROOT inside an input folder is never an input
    movie(out / "old" / "masks.tif")

    recs = find_recordings([str(a), str(b), str(many), str(nf), str(seq), str(root),
                            str(tmp_path / "nothing*.tif"), f"@{lst}"], exclude=out)
    by = {r.name: r for r in recs}
    # same stem twice: told apart by the parent folder; the list repeats day1/movie.tif (dropped)
    assert by["day1_movie"].files == (a,) and by["day2_movie"].files == (b,)
    assert [r.name for r in recs if r.source.startswith(str(many))] == ["m1", "m2", "m10"]
    assert by["neurofinder.00.00"].files == tuple(nf / "images" / f"image{k:05d}.tif" for k in range(3))
    assert [f.name for f in by["seq"].files] == ["frame1.tif", "frame2.tif", "frame10.tif"]
    assert by["x"].files == (root / "r1" / "x.tif",)
    assert by["r2"].files == (root / "r2" / "images" / "y.tif",)
    assert "z" not in by
    assert "no files match" in by["nothing_.tif"].error
    assert "no such file" in by["missing"].error
    assert len(recs) == len(by) == 11
    assert not any("results" in r.source for r in recs)
    # the names do not depend on the order or the rest of the batch
    again = find_recordings([str(b), str(a)])
    assert {r.name for r in again} == {"day1_movie", "day2_movie"}


def test_discovery_same_name_same_parent_uses_hash(tmp_path):
    a = movie(tmp_path / "x" / "d" / "m.tif")
    b = movie(tmp_path / "y" / "d" / "m.tif")
    names = [r.name for r in find_recordings([str(a), str(b)])]
    assert len(set(names)) == 2 and all(n.startswith("m-") for n in names)


def test_no_inputs_is_a_usage_error(tmp_path):
    res = cli("batch", "-o", tmp_path / "out")
    assert res.exit_code == 2
    lst = tmp_path / "empty.txt"
    lst.write_text("# nothing\n")
    res = cli("batch", f"@{lst}", "-o", tmp_path / "out")
    assert res.exit_code == 1 and "no inputs" in res.stderr


# --------------------------------------------------------------------------- skipping


def test_batch_skips_finished_redoes_changed(tmp_path, fake, monkeypatch):
    marker = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CALSEG_TEST_MARKER", str(marker))
    ins = [movie(tmp_path / "in" / f"r{k}.tif", seed=k) for k in range(3)]
    out = tmp_path / "out"

    def calls():
        return len(marker.read_text().splitlines()) if marker.exists() else 0

    res = cli("batch", tmp_path / "in", "-o", out, "--fps", 10)
    assert res.exit_code == 0, res.output
    assert calls() == 3
    r = rows(out)
    assert [r[n]["status"] for n in ("r0", "r1", "r2")] == ["done"] * 3
    assert r["r0"]["n_neurons"] == "1" and r["r0"]["certificate"] == "certified"
    for k in range(3):
        info = assert_complete(out / f"r{k}")
        assert info["settings"]["fps"] == 10 and info["input"]["paths"] == [str(ins[k])]
    assert res.stdout.strip().endswith("batch.csv") and "3 done" in res.stdout

    res = cli("batch", tmp_path / "in", "-o", out, "--fps", 10)
    assert res.exit_code == 0 and calls() == 3
    assert {v["status"] for v in rows(out).values()} == {"skipped"}
    assert rows(out)["r1"]["n_neurons"] == "1"

    movie(ins[1], seed=99)  # new content: only r1 is redone
    res = cli("batch", tmp_path / "in", "-o", out, "--fps", 10)
    assert res.exit_code == 0 and calls() == 4
    assert {n: v["status"] for n, v in rows(out).items()} == {"r0": "skipped", "r1": "done", "r2": "skipped"}
    assert "input changed" in res.stderr

    res = cli("batch", tmp_path / "in", "-o", out, "--fps", 10, "--lam-scale", 2)  # new settings
    assert res.exit_code == 0 and calls() == 7 and "settings changed" in res.stderr
    res = cli("batch", tmp_path / "in", "-o", out, "--fps", 10, "--lam-scale", 2, "--force")
    assert res.exit_code == 0 and calls() == 10
    assert {v["status"] for v in rows(out).values()} == {"done"}

    (out / "r2" / "traces.csv").unlink()  # damaged output: redone
    res = cli("batch", tmp_path / "in", "-o", out, "--fps", 10, "--lam-scale", 2)
    assert rows(out)["r2"]["status"] == "done" and calls() == 11
    assert "missing traces.csv" in res.stderr
    assert leftovers(out) == []


def test_output_state_reasons(tmp_path, fake):
    src = movie(tmp_path / "a.tif")
    out = tmp_path / "out"
    assert cli("batch", src, "-o", out, "--fps", 10).exit_code == 0
    s = Settings(fps=10)
    assert output_state(out / "a", [src], s)[:2] == (True, "output complete, input and settings unchanged")
    assert output_state(out / "a", [src], Settings(fps=11))[1] == "settings changed"
    assert output_state(out / "zzz", [src], s)[1] == "no output yet"
    (out / "a" / "run.json").write_text("{broken")
    assert output_state(out / "a", [src], s)[1] == "run.json is unreadable"


def test_foreign_folder_is_not_replaced(tmp_path, fake):
    src = movie(tmp_path / "a.tif")
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "thesis.docx").write_text("precious")
    res = cli("batch", src, "-o", out, "--fps", 10)
    assert res.exit_code == 1
    assert "not a calseg output folder" in rows(out)["a"]["error"]
    assert (out / "a" / "thesis.docx").read_text() == "precious"
    res = cli("batch", src, "-o", out, "--fps", 10, "--force")
    assert res.exit_code == 0
    assert_complete(out / "a")


# --------------------------------------------------------------------------- bad among good


def test_bad_recording_among_good(tmp_path, fake):
    good = [movie(tmp_path / "in" / f"good{k}.tif", seed=k) for k in range(2)]
    (tmp_path / "in" / "text.tif").write_text("not an image at all")
    full = tmp_path / "full.tif"
    movie(full)
    (tmp_path / "in" / "cut.tif").write_bytes(full.read_bytes()[:3000])
    out = tmp_path / "out"
    res = cli("batch", tmp_path / "in", "-o", out, "--fps", 10)
    assert res.exit_code == 1
    r = rows(out)
    assert {n: v["status"] for n, v in r.items()} == {
        "good0": "done", "good1": "done", "text": "failed", "cut": "failed"}
    assert "not a TIFF" in r["text"]["error"] and "text.tif" in r["text"]["error"]
    assert "truncated or corrupt" in r["cut"]["error"]
    for n in ("good0", "good1"):
        assert_complete(out / n)
    assert not (out / "text").exists() and not (out / "cut").exists()
    errs = [ln for ln in res.stderr.splitlines() if "failed:" in ln]
    assert len(errs) == 2 and all(ln.startswith("calseg: [") for ln in errs)
    summary = json.loads((out / "batch.json").read_text())
    assert summary["exit_code"] == 1 and summary["counts"] == {"done": 2, "failed": 2}


def test_internal_error_in_one_recording(tmp_path, monkeypatch):
    ins = [movie(tmp_path / "in" / f"r{k}.tif", seed=k) for k in range(2)]

    def boom(mov, settings, progress=None):
        if "r0" in str(mov.paths[0]):
            raise ZeroDivisionError("a bug")
        return fake_segment(mov, settings, progress=progress)

    monkeypatch.setattr("calseg.pipeline.segment", boom)
    res = cli("batch", *ins, "-o", tmp_path / "out", "--fps", 10)
    assert res.exit_code == 1
    r = rows(tmp_path / "out")
    assert r["r0"]["status"] == "failed" and r["r1"]["status"] == "done"
    assert "internal error: ZeroDivisionError: a bug (rerun with --debug" in r["r0"]["error"]
    assert "Traceback" not in res.stderr
    res = cli("--debug", "batch", *ins, "-o", tmp_path / "out2", "--fps", 10)
    assert res.exit_code == 1 and "Traceback" in res.stderr and "ZeroDivisionError" in res.stderr


# --------------------------------------------------------------------------- locks


def test_locked_recording_is_left_to_its_holder(tmp_path, fake):
    ins = [movie(tmp_path / "in" / f"r{k}.tif", seed=k) for k in range(2)]
    out = tmp_path / "out"
    lock = FileLock(out / ".locks" / "r0.lock")
    assert lock.acquire()
    try:
        res = cli("batch", *ins, "-o", out, "--fps", 10, "--json")
    finally:
        lock.release()
    assert res.exit_code == 1
    summary = json.loads(res.stdout)  # stdout holds only the JSON
    st = {r["name"]: r for r in summary["recordings"]}
    assert st["r0"]["status"] == "locked" and st["r1"]["status"] == "done"
    assert f"pid {os.getpid()}" in st["r0"]["error"]
    assert not (out / "r0").exists()
    assert not (out / ".locks" / "r0.lock").exists()  # released locks leave no file
    res = cli("batch", *ins, "-o", out, "--fps", 10)
    assert res.exit_code == 0 and rows(out)["r0"]["status"] == "done"


def test_lock_semantics(tmp_path):
    p = tmp_path / "locks" / "x.lock"
    a, b = FileLock(p), FileLock(p)
    assert a.acquire()
    assert not b.acquire() and b.holder["pid"] == os.getpid()
    a.release()
    assert not p.exists()
    assert b.acquire()
    b.release()
    # a lock file left by a dead process (kill -9) is taken over, and its holder is reported
    p.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": "elsewhere", "started": "then"}))
    c = FileLock(p)
    assert c.acquire() and c.previous["pid"] == 2 ** 22 + 12345
    assert json.loads(p.read_text())["pid"] == os.getpid()
    c.release()


def test_stale_lock_and_partial_folders_cleaned(tmp_path, fake):
    src = movie(tmp_path / "a.tif")
    out = tmp_path / "out"
    (out / ".locks").mkdir(parents=True)
    (out / ".locks" / "a.lock").write_text(json.dumps({"pid": 2 ** 22 + 7, "host": os.uname().nodename}))
    for junk in (".a.partial-abcd1234", ".a.old-4242", ".other.partial-zzzz9999"):
        (out / junk).mkdir()
        (out / junk / "masks.tif").write_bytes(b"half")
    (out / ".a.partial-notmine").mkdir()  # not a calseg temp name: left alone
    res = cli("batch", src, "-o", out, "--fps", 10)
    assert res.exit_code == 0, res.output
    assert "taking over from pid" in res.stderr and "no longer running" in res.stderr
    assert leftovers(out) == [".a.partial-notmine"]
    assert_complete(out / "a")


# --------------------------------------------------------------------------- killed and concurrent runs


def _start(args, env_extra, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO), **env_extra)
    return subprocess.Popen([sys.executable, str(FAKE), *map(str, args)], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def test_killed_batch_resumes_to_completion(tmp_path):
    ins = [movie(tmp_path / "in" / f"r{k}.tif", seed=k) for k in range(3)]
    out = tmp_path / "out"
    marker = tmp_path / "calls.jsonl"
    proc = _start(["batch", tmp_path / "in", "-o", out, "--fps", 10],
                  {"CALSEG_TEST_SLOW_SEGMENT": "3", "CALSEG_TEST_MARKER": str(marker)})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until r0 is finished and r1 is under way
            n = len(marker.read_text().splitlines()) if marker.exists() else 0
            if (out / "r0" / "run.json").exists() and n >= 2:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the batch run did not get going")
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert_complete(out / "r0")
    assert not (out / "r1").exists() and not (out / "r2").exists()  # no half-written folder
    assert rows(out)["r0"]["status"] == "done" and rows(out)["r1"]["status"] == "pending"

    # make a temp folder like one a kill during writing leaves (the kill above may or may not)
    (out / ".r1.partial-deadbeef").mkdir(exist_ok=True)
    proc = _start(["batch", tmp_path / "in", "-o", out, "--fps", 10], {"CALSEG_TEST_MARKER": str(marker)})
    so, se = proc.communicate(timeout=60)
    assert proc.returncode == 0, se.decode()
    assert {n: v["status"] for n, v in rows(out).items()} == {"r0": "skipped", "r1": "done", "r2": "done"}
    for k in range(3):
        assert_complete(out / f"r{k}")
    assert leftovers(out) == []
    assert list((out / ".locks").iterdir()) == []
    calls = [json.loads(ln)["paths"][0] for ln in marker.read_text().splitlines()]
    assert calls.count(str(ins[0])) == 1  # r0 was not redone


def test_two_concurrent_batches_process_each_recording_once(tmp_path):
    ins = [movie(tmp_path / "in" / f"r{k}.tif", seed=k) for k in range(4)]
    out = tmp_path / "out"
    marker = tmp_path / "calls.jsonl"
    env = {"CALSEG_TEST_SLOW_SEGMENT": "1.0", "CALSEG_TEST_MARKER": str(marker)}
    args = ["--quiet", "batch", tmp_path / "in", "-o", out, "--fps", 10, "--json"]
    procs = [_start(args, env), _start(args, env)]
    results = []
    for p in procs:
        so, se = p.communicate(timeout=90)
        results.append((p.returncode, json.loads(so), se.decode()))
    calls = [json.loads(ln) for ln in marker.read_text().splitlines()]
    per_rec = {str(i): sum(c["paths"] == [str(i)] for c in calls) for i in ins}
    assert set(per_rec.values()) == {1}, per_rec  # each recording segmented exactly once
    assert len({c["pid"] for c in calls}) == 2  # and both runs did some of the work
    for k in range(4):
        info = assert_complete(out / f"r{k}")
        statuses = sorted(next(r["status"] for r in res[1]["recordings"] if r["name"] == f"r{k}")
                          for res in results)
        assert statuses in (["done", "locked"], ["done", "skipped"]), statuses
        done_by = [res[1]["pid"] for res in results
                   if next(r for r in res[1]["recordings"] if r["name"] == f"r{k}")["status"] == "done"]
        assert info["batch"]["pid"] == done_by[0] == info["fake_segment_pid"]
    for code, summary, _err in results:
        assert code == summary["exit_code"]
        assert code == (1 if summary["counts"].get("locked") else 0)
    assert leftovers(out) == []


# --------------------------------------------------------------------------- real pipeline


def _real_batch(tmp_path, size, frames, *options):
    """calseg simulate -> calseg batch (the real segment) -> rerun skips."""
    sim = tmp_path / "sim"
    res = cli("-q", "simulate", "-o", sim, "--preset", "easy", "--size", size, "--frames", frames,
              "--neurons", "2", "--seed", "3")
    assert res.exit_code == 0, res.output
    movie(tmp_path / "sim" / "junk" / "broken.tif").write_bytes(b"II*\x00garbage")
    out = tmp_path / "out"
    args = ["batch", sim / "movie.tif", sim / "junk" / "broken.tif", "-o", out, "--json", "--workers", 1,
            *options]
    res = cli(*args)
    assert res.exit_code == 1, res.stderr
    st = {r["name"]: r for r in json.loads(res.stdout)["recordings"]}
    assert st["broken"]["status"] == "failed" and "broken.tif" in st["broken"]["error"]
    row = st["movie"]
    assert row["status"] == "done", row
    info = assert_complete(out / "movie")
    assert row["n_neurons"] == info["n_neurons"]
    assert info["input"]["paths"] == [str(sim / "movie.tif")]
    res = cli(*args)
    assert json.loads(res.stdout)["recordings"][0]["status"] == "skipped"
    return row


def test_end_to_end_real_pipeline(tmp_path):
    """Small and with a short iteration budget, to keep the default suite fast."""
    row = _real_batch(tmp_path, "32x32", "100", "--no-certify", "--no-grow", "--max-iter", 10)
    assert row["certificate"] == "not computed"


@pytest.mark.slow
def test_end_to_end_real_pipeline_certified(tmp_path):
    row = _real_batch(tmp_path, "40x40", "150")
    assert row["n_neurons"] >= 1
    assert row["certificate"] in ("certified", "bounded")
    assert 0 <= row["relative_gap"] < 1


def test_sigterm_stops_cleanly(tmp_path):
    """cron/systemd stop a run with SIGTERM: exit 130, summary says where it stopped, no leftovers."""
    for k in range(2):
        movie(tmp_path / "in" / f"r{k}.tif", seed=k)
    out = tmp_path / "out"
    marker = tmp_path / "calls.jsonl"
    proc = _start(["batch", tmp_path / "in", "-o", out, "--fps", 10],
                  {"CALSEG_TEST_SLOW_SEGMENT": "3", "CALSEG_TEST_MARKER": str(marker)})
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    so, se = proc.communicate(timeout=30)
    assert proc.returncode == 130, se.decode()
    assert "calseg: interrupted" in se.decode()
    r = rows(out)
    assert (r["r0"]["status"], r["r1"]["status"]) == ("interrupted", "pending")
    assert not (out / "r0").exists() and leftovers(out) == []
    assert list((out / ".locks").iterdir()) == []


def test_frame_sequence_and_neurofinder_folders_are_one_recording_each(tmp_path, fake):
    rng = np.random.default_rng(5)
    nf = tmp_path / "data" / "neurofinder.01.00" / "images"
    seq = tmp_path / "data" / "session7"
    for folder in (nf, seq):
        folder.mkdir(parents=True)
        for t in range(12):
            tifffile.imwrite(folder / f"image{t}.tif", rng.integers(0, 999, (10, 12), dtype=np.uint16))
    out = tmp_path / "out"
    res = cli("batch", tmp_path / "data", "-o", out, "--fps", 7)
    assert res.exit_code == 0, res.output
    assert set(rows(out)) == {"neurofinder.01.00", "session7"}
    for name, folder in (("neurofinder.01.00", nf), ("session7", seq)):
        info = assert_complete(out / name)
        assert info["shape"] == [12, 10, 12]
        assert info["input"]["paths"] == [str(folder / f"image{t}.tif") for t in range(12)]  # natural order
