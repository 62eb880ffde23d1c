"""Command-line behaviour of every command: help, exit codes, settings files, --quiet, --log-file,
--debug, --json, progress, and bad inputs tried on purpose through ``calseg run`` and ``calseg batch``.

Tests that only need *a* result use the fast stand-in solver of ``tests/fake_segment.py``; those
whose point is the real pipeline's behaviour (constant recording, recording shorter than the
decay time) run the real one on tiny movies.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import struct
import subprocess
import sys
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from calseg.cli import _Progress, main
from calseg.config import Settings
from calseg.pipeline import OUTPUT_FILES

from fake_segment import fake_segment

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr("calseg.pipeline.segment", fake_segment)


def movie(path, seed=0, T=30, H=16, W=16, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    a = rng.integers(100, 200, (T, H, W)).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, a)
    return path


def snapshot(root, skip=()):
    """{relative path: (size, mtime_ns)} of everything under root outside the ``skip`` folders."""
    out = {}
    skip = [Path(s) for s in skip]
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if any(d == s or s in d.parents for s in skip):
            continue
        for name in dirnames + filenames:
            p = d / name
            if p in skip:
                continue
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def one_error_line(res, *fragments):
    lines = res.stderr.strip().splitlines()
    errs = [ln for ln in lines if ln.startswith("calseg: error:")]
    assert len(errs) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in errs[0], (f, errs[0])
    return errs[0]


# --------------------------------------------------------------------------- help, version, usage


def test_every_command_has_help():
    res = cli("--help")
    assert res.exit_code == 0
    assert set(main.commands) >= {"run", "batch", "config", "info", "simulate", "score", "deconvolve"}
    for name, cmd in main.commands.items():
        assert name in res.stdout
        for flag in ("--help", "-h"):
            r = cli(name, flag)
            assert r.exit_code == 0, (name, r.output)
            assert r.stdout.startswith(f"Usage: main {name}") or r.stdout.startswith(f"Usage: calseg {name}")
            assert cmd.help and len(cmd.help.split()) > 3, name
    for opt in ("--debug", "--quiet", "--log-file", "--version"):
        assert opt in res.stdout


def test_version_and_usage_errors(tmp_path):
    from calseg import __version__

    res = cli("--version")
    assert res.exit_code == 0 and __version__ in res.stdout
    assert cli("run").exit_code == 2  # missing MOVIE and -o
    assert cli("batch", "x.tif").exit_code == 2  # missing -o
    res = cli("run", "x.tif", "-o", tmp_path / "o", "--no-such-option")
    assert res.exit_code == 2 and "no-such-option" in res.stderr
    assert cli("run", "x.tif", "-o", tmp_path / "o", "--fps", "fast").exit_code == 2
    assert cli("no-such-command").exit_code == 2
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- settings files


def test_config_prints_defaults_as_toml(tmp_path):
    res = cli("config")
    assert res.exit_code == 0
    data = tomllib.loads(res.stdout)["calseg"]
    defaults = Settings().to_dict()
    assert data == {k: v for k, v in defaults.items() if v is not None}
    for k, v in defaults.items():
        if v is None:
            assert f"# {k} = " in res.stdout
    p = tmp_path / "s.toml"
    p.write_text(res.stdout)
    again = cli("config", "--config", p)
    assert again.exit_code == 0 and again.stdout == res.stdout
    p.write_text("fps = 7.5\ncertify = false\n")  # a file without the [calseg] table works too
    data = tomllib.loads(cli("config", "--config", p).stdout)["calseg"]
    assert data["fps"] == 7.5 and data["certify"] is False and data["seed"] == 0


BAD_SETTINGS = [
    ("fsp = 7\n", ["fsp", "unknown setting", "known:", "fps"]),
    ("fps = -3\n", ["'fps'", "-3", "must be > 0"]),
    ("connectivity = 6\n", ["'connectivity'", "6", "allowed: 4, 8"]),
    ('certify = "yes"\n', ["'certify'", "'yes'", "expected true or false"]),
    ("spatial = [1, 2]\n", ["'spatial'", "expected 3 numbers"]),
    ("max_iter = 0\n", ["'max_iter'", "0", "must be >= 1"]),
    ('indicator = "gcamp99"\n', ["'indicator'", "gcamp99", "known indicators", "gcamp6s"]),
    ("fps = = 3\n", ["not valid TOML"]),
]


@pytest.mark.parametrize("text,fragments", BAD_SETTINGS)
def test_bad_settings_file_rejected_everywhere(tmp_path, fake, text, fragments):
    src = movie(tmp_path / "m.tif")
    p = tmp_path / "s.toml"
    p.write_text("[calseg]\n" + text)
    before = snapshot(tmp_path)
    for args in (["config", "--config", p],
                 ["run", src, "-o", tmp_path / "out", "--config", p],
                 ["batch", src, "-o", tmp_path / "outroot", "--config", p]):
        res = cli(*args)
        assert res.exit_code == 1, (args, res.output)
        one_error_line(res, str(p) if "not valid" in fragments[0] or "unknown" in fragments[1] else "",
                       *fragments)
        assert res.stdout == ""
    assert snapshot(tmp_path) == before  # nothing written anywhere, not even OUTROOT


def test_bad_option_values_name_key_value_rule(tmp_path, fake):
    src = movie(tmp_path / "m.tif")
    for args, frags in ((["--fps", "-1"], ["'fps'", "-1", "must be > 0"]),
                        (["--tile-size", "3"], ["'tile_size'", "3", "must be >= 8"]),
                        (["--cell-diameter", "0.5"], ["'cell_diameter'", "0.5", "must be >= 1"]),
                        (["--indicator", "gfp"], ["'indicator'", "gfp", "known indicators"])):
        for cmd, out in (("run", tmp_path / "o"), ("batch", tmp_path / "root")):
            res = cli(cmd, src, "-o", out, *args)
            assert res.exit_code == 1, (cmd, args, res.output)
            one_error_line(res, *frags)
            assert not out.exists()
    res = cli("run", src, "-o", tmp_path / "o", "--config", tmp_path / "nope.toml")
    assert res.exit_code == 1
    one_error_line(res, "nope.toml", "settings file not found")


def test_command_line_overrides_settings_file(tmp_path, fake):
    src = movie(tmp_path / "m.tif")
    p = tmp_path / "s.toml"
    p.write_text("[calseg]\nfps = 5.0\nlam_scale = 2.0\nseed = 3\ncell_diameter = 9.0\n")
    res = cli("run", src, "-o", tmp_path / "o", "--config", p, "--fps", 20, "--seed", 4)
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "o" / "run.json").read_text())["settings"]
    assert (s["fps"], s["lam_scale"], s["seed"], s["cell_diameter"]) == (20.0, 2.0, 4, 9.0)
    res = cli("batch", src, "-o", tmp_path / "root", "--config", p, "--cell-diameter", "15um",
              "--pixel-size", "1.5", "--no-certify")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "root" / "m" / "run.json").read_text())["settings"]
    assert (s["fps"], s["lam_scale"], s["cell_diameter"], s["diameter_unit"], s["pixel_size"],
            s["certify"]) == (5.0, 2.0, 15.0, "um", 1.5, False)


# --------------------------------------------------------------------------- quiet, log file, debug, json


def test_quiet_json_and_plain_output(tmp_path, fake):
    src = movie(tmp_path / "m.tif")
    res = cli("run", src, "-o", tmp_path / "a", "--fps", 10)
    assert res.exit_code == 0
    assert res.stdout.startswith("1 neurons -> ") and "calseg: " in res.stderr
    res = cli("--quiet", "run", src, "-o", tmp_path / "b", "--fps", 10)
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    res = cli("--quiet", "batch", src, "-o", tmp_path / "c", "--fps", 10)
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    res = cli("--quiet", "run", tmp_path / "missing.tif", "-o", tmp_path / "d", "--fps", 10)
    assert res.exit_code == 1 and res.stdout == ""
    one_error_line(res, "missing.tif", "no such file")

    res = cli("run", src, "-o", tmp_path / "e", "--fps", 10, "--json")
    assert res.exit_code == 0
    summary = json.loads(res.stdout)  # stdout holds the JSON and nothing else
    assert summary["n_neurons"] == 1 and summary["certificate"] == "certified"
    assert "calseg: " in res.stderr
    res = cli("batch", src, tmp_path / "missing.tif", "-o", tmp_path / "f", "--fps", 10, "--json")
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    assert [r["status"] for r in summary["recordings"]] == ["done", "failed"]
    assert summary == json.loads((tmp_path / "f" / "batch.json").read_text())


def test_log_file_appends_everything(tmp_path, fake):
    src = movie(tmp_path / "m.tif")
    log = tmp_path / "logs" / "calseg.log"
    log.parent.mkdir()
    res = cli("--quiet", "--log-file", log, "batch", src, "-o", tmp_path / "root", "--fps", 10)
    assert res.exit_code == 0 and res.stderr == ""
    first = log.read_text().splitlines()
    assert f" INFO [{os.getpid()}] calseg: calseg " in first[0]  # each invocation opens with its argv
    assert any("[1/1] m: done" in ln for ln in first)  # --quiet silences stderr, not the file
    assert all(f"[{os.getpid()}]" in ln and (" INFO " in ln or " ERROR " in ln) for ln in first)
    res = cli("--log-file", log, "run", tmp_path / "missing.tif", "-o", tmp_path / "o", "--fps", 10)
    assert res.exit_code == 1
    lines = log.read_text().splitlines()
    assert lines[: len(first)] == first  # appended, not replaced
    assert "no such file" in lines[-1] and "ERROR" in lines[-1]
    res = cli("--log-file", tmp_path / "m.tif" / "x.log", "config")
    assert res.exit_code == 1
    one_error_line(res, "cannot open the log file")


def test_debug_shows_tracebacks(tmp_path):
    res = cli("run", tmp_path / "missing.tif", "-o", tmp_path / "o", "--fps", 10)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    res = cli("--debug", "run", tmp_path / "missing.tif", "-o", tmp_path / "o", "--fps", 10)
    assert res.exit_code == 1 and type(res.exception).__name__ == "InputError"
    proc = subprocess.run([sys.executable, "-m", "calseg.cli", "--debug", "run",
                           str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "InputError" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "calseg.cli", "run", str(tmp_path / "missing.tif"),
                           "-o", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"calseg: error: {tmp_path / 'missing.tif'}: no such file"]


def test_warnings_are_one_log_line(tmp_path, monkeypatch):
    import warnings

    from calseg.errors import ConvergenceWarning

    def warns(mov, settings, progress=None):
        warnings.warn("stopped on its iteration budget", ConvergenceWarning, stacklevel=1)
        return fake_segment(mov, settings, progress=progress)

    monkeypatch.setattr("calseg.pipeline.segment", warns)
    src = movie(tmp_path / "m.tif")
    log = tmp_path / "log.txt"
    res = cli("--log-file", log, "run", src, "-o", tmp_path / "o", "--fps", 10)
    assert res.exit_code == 0
    lines = [ln for ln in res.stderr.splitlines() if "ConvergenceWarning" in ln]
    assert lines == ["calseg: warning: ConvergenceWarning: stopped on its iteration budget"]
    assert "warnings.warn" not in res.stderr
    assert "WARNING" in next(ln for ln in log.read_text().splitlines() if "ConvergenceWarning" in ln)


def test_progress_terminal_vs_log_lines(monkeypatch, caplog):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    p = _Progress(quiet=False)
    for k in range(1, 5):
        p("tiles", k, 4)
    assert tty.getvalue().count("\r") == 4 and tty.getvalue().endswith("4/4 ( 100%)\n")
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    caplog.set_level("INFO", logger="calseg")
    p = _Progress(quiet=False)
    for k in range(1, 101):
        p("tiles", k, 100)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["tiles 1/100", "tiles 100/100"]  # sparse lines (every 10 s and the last)
    assert "\r" not in plain.getvalue()
    caplog.clear()
    p = _Progress(quiet=True)
    p("tiles", 1, 1)
    assert caplog.records == []


# --------------------------------------------------------------------------- bad inputs, on purpose


def _png_bytes():
    raw = b"".join(b"\x00" + bytes(range(8)) for _ in range(8))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def bad_files(d: Path):
    """(name, path, message fragment) of recordings that must be refused with one line."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    a = rng.integers(100, 200, (20, 16, 16)).astype(np.uint16)
    cases = []
    full = d / "full.tif"
    tifffile.imwrite(full, a)
    p = d / "truncated.tif"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    cases.append(("truncated", p, "truncated or corrupt"))
    p = d / "empty.tif"
    p.write_bytes(b"")
    cases.append(("empty", p, "not a TIFF file (0 bytes)"))
    p = d / "zeroframes.tif"
    p.write_bytes(b"II*\x00\x00\x00\x00\x00")
    cases.append(("zero frames", p, "zero frames"))
    p = d / "single.tif"
    tifffile.imwrite(p, a[0])
    cases.append(("single frame", p, "single 2-D image"))
    p = d / "five.tif"
    tifffile.imwrite(p, a[:5])
    cases.append(("five frames", p, "only 5 frames; calseg needs at least 10"))
    p = d / "rgb.tif"
    tifffile.imwrite(p, rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8), photometric="rgb")
    cases.append(("rgb", p, "3 samples per pixel"))
    p = d / "nan.tif"
    tifffile.imwrite(p, np.full((12, 16, 16), np.nan, np.float32))
    cases.append(("nan", p, "contains NaN values"))
    p = d / "png.tif"
    p.write_bytes(_png_bytes())
    cases.append(("png named .tif", p, "not a TIFF file"))
    p = d / "text.tif"
    p.write_text("frame,value\n1,2\n")
    cases.append(("text named .tif", p, "not a TIFF file"))
    small = d / "small.tif"
    tifffile.imwrite(small, a[:2], metadata=None)
    with tifffile.TiffFile(small) as tf:
        wo = tf.pages[0].tags["ImageWidth"].valueoffset
        lo = tf.pages[0].tags["ImageLength"].valueoffset
    buf = bytearray(small.read_bytes())
    small.unlink()
    buf[wo:wo + 4] = struct.pack("<I", 4_000_000)  # 4e6 x 4e6 uint16 frames: 32 TB each
    buf[lo:lo + 4] = struct.pack("<I", 4_000_000)
    p = d / "terabytes.tif"
    p.write_bytes(bytes(buf))
    cases.append(("absurd header", p, "larger than any imaging frame"))
    return cases


def test_bad_inputs_through_run(tmp_path):
    cases = bad_files(tmp_path / "in")
    for name, path, frag in cases:
        out = tmp_path / f"out_{path.stem}"
        before = snapshot(tmp_path)
        res = cli("run", path, "-o", out, "--fps", 10)
        assert res.exit_code == 1, (name, res.output)
        assert res.stdout == ""
        line = one_error_line(res, path.name, frag)
        assert len(line) < 400, name
        assert snapshot(tmp_path) == before, name  # no output, no temp folder, input untouched


def test_bad_inputs_through_batch(tmp_path, fake):
    cases = [c for c in bad_files(tmp_path / "in") if c[0] != "five frames"]
    (tmp_path / "in" / "five.tif").unlink()  # the fake solver does not check the length
    movie(tmp_path / "in" / "good.tif")
    root = tmp_path / "root"
    before = snapshot(tmp_path)
    res = cli("batch", tmp_path / "in", "-o", root, "--fps", 10, "--json")
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    st = {r["name"]: r for r in summary["recordings"]}
    assert st["good"]["status"] == "done"
    for name, path, frag in cases:
        r = st[path.stem]
        assert r["status"] == "failed", (name, r)
        assert frag in r["error"] and path.name in r["error"] and "\n" not in r["error"], (name, r)
        assert not (root / path.stem).exists()
    assert snapshot(tmp_path, skip=[root]) == before
    assert sorted(p.name for p in root.iterdir()) == [".locks", "batch.csv", "batch.json", "good"]


def test_unreadable_file_emulated(tmp_path, monkeypatch, fake):
    """chmod 000 does not stop root, so the denial is emulated at open() for that one file."""
    src = movie(tmp_path / "secret.tif")
    ok = movie(tmp_path / "ok.tif")
    real_open = builtins.open

    def guarded(file, *a, **k):
        if str(file) == str(src):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    res = cli("run", src, "-o", tmp_path / "o", "--fps", 10)
    assert res.exit_code == 1
    one_error_line(res, "secret.tif", "Permission denied")
    assert not (tmp_path / "o").exists()
    res = cli("batch", src, ok, "-o", tmp_path / "root", "--fps", 10, "--json")
    assert res.exit_code == 1
    st = {r["name"]: r for r in json.loads(res.stdout)["recordings"]}
    assert st["secret"]["status"] == "failed" and "Permission denied" in st["secret"]["error"]
    assert st["ok"]["status"] == "done"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_real(tmp_path):
    src = movie(tmp_path / "secret.tif")
    src.chmod(0)
    try:
        res = cli("run", src, "-o", tmp_path / "o", "--fps", 10)
    finally:
        src.chmod(0o644)
    assert res.exit_code == 1
    one_error_line(res, "secret.tif", "Permission denied")


def test_unwritable_output_locations(tmp_path, fake):
    src = movie(tmp_path / "m.tif")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    before = snapshot(tmp_path)
    for out in (afile / "out", Path("/proc/calseg-test/out")):  # under a file; in /proc
        res = cli("run", src, "-o", out, "--fps", 10)
        assert res.exit_code == 1, (out, res.output)
        one_error_line(res, str(out.parent))
        res = cli("batch", src, "-o", out, "--fps", 10)
        assert res.exit_code == 1, (out, res.output)
        one_error_line(res, str(out), "cannot create the output folder")
    for cmd in ("run", "batch"):  # the output is a file: a usage error (click checks it)
        res = cli(cmd, src, "-o", afile, "--fps", 10)
        assert res.exit_code == 2 and "is a file" in res.stderr
    assert snapshot(tmp_path) == before
    assert afile.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent(tmp_path, fake):
    src = movie(tmp_path / "m.tif")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = cli("run", src, "-o", ro / "out", "--fps", 10)
        assert res.exit_code == 1
        one_error_line(res, "not writable")
        res = cli("batch", src, "-o", ro / "root", "--fps", 10)
        assert res.exit_code == 1
    finally:
        ro.chmod(0o755)


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk(tmp_path, fake, monkeypatch):
    src = movie(tmp_path / "m.tif")
    src2 = movie(tmp_path / "n.tif", seed=2)
    monkeypatch.setattr("calseg.io.outputs.write_table", _enospc)  # disk fills while writing
    before = snapshot(tmp_path)
    res = cli("run", src, "-o", tmp_path / "out", "--fps", 10)
    assert res.exit_code == 1
    one_error_line(res, "out", "No space left on device")
    assert snapshot(tmp_path) == before  # no output folder, no .out.partial-* left

    root = tmp_path / "root"
    res = cli("batch", src, src2, "-o", root, "--fps", 10, "--json")
    assert res.exit_code == 1
    rows = json.loads(res.stdout)["recordings"]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("No space left on device" in r["error"] for r in rows)
    assert sorted(p.name for p in root.iterdir()) == [".locks", "batch.csv", "batch.json"]
    assert snapshot(tmp_path, skip=[root]) == before

    # the disk is full even for the summary: one clean line, exit 1, no temp file left
    monkeypatch.undo()
    monkeypatch.setattr("calseg.pipeline.segment", fake_segment)
    real_open = builtins.open

    def no_summary(file, mode="r", *a, **k):
        if "batch.csv" in str(file) and "w" in mode:
            _enospc()
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr("calseg.batch.open", no_summary, raising=False)
    res = cli("batch", src, "-o", tmp_path / "root2", "--fps", 10)
    assert res.exit_code == 1
    one_error_line(res, "batch.csv", "cannot write the batch summary", "No space left on device")
    assert not [p for p in (tmp_path / "root2").iterdir() if p.name.endswith(".tmp")]


# the real pipeline: what a blank recording and one shorter than the decay time give


def test_constant_recording_gives_empty_valid_result(tmp_path):
    """Decision: a constant movie (all pixels equal) is not an error; it has no neurons.

    calseg writes a complete, valid result with 0 neurons and exits 0, so a blank recording in a
    nightly batch shows up as '0 neurons' in batch.csv instead of stopping anything.
    """
    src = tmp_path / "constant.tif"
    tifffile.imwrite(src, np.full((40, 24, 24), 500, np.uint16))
    res = cli("run", src, "-o", tmp_path / "out", "--fps", 10, "--workers", 1, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["n_neurons"] == 0
    for f in OUTPUT_FILES:
        assert (tmp_path / "out" / f).is_file()
    assert json.loads((tmp_path / "out" / "regions.json").read_text()) == []
    assert not tifffile.imread(tmp_path / "out" / "masks.tif").any()


def test_recording_shorter_than_decay_time(tmp_path):
    """12 frames at 30 Hz (0.4 s) with GCaMP6s (1.2 s decay): a warning line, a result, exit 0."""
    src = tmp_path / "short.tif"
    movie(src, T=12, H=20, W=20)
    res = cli("run", src, "-o", tmp_path / "out", "--fps", 30, "--indicator", "gcamp6s",
              "--workers", 1, "--json", "--no-certify", "--no-grow", "--max-iter", 5)
    assert res.exit_code == 0, res.stderr
    assert "shorter than two decay times" in res.stderr
    json.loads(res.stdout)
    for f in OUTPUT_FILES:
        assert (tmp_path / "out" / f).is_file()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 32 KB tmpfs (a really full disk); skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_really_full_disk(tmp_path, fake, tiny_disk):
    src = movie(tmp_path / "m.tif", T=200, H=64, W=64)  # outputs of ~150 KB do not fit in 32 KB
    res = cli("run", src, "-o", tiny_disk / "out", "--fps", 10)
    assert res.exit_code == 1
    one_error_line(res, "out", "No space left on device")
    assert list(tiny_disk.iterdir()) == []  # no output folder, no temp folder
    res = cli("batch", src, "-o", tiny_disk / "root", "--fps", 10)
    assert res.exit_code == 1
    assert "No space left on device" in rows_of(tiny_disk / "root")["m"]["error"]
    assert sorted(p.name for p in (tiny_disk / "root").iterdir()) == [".locks", "batch.csv", "batch.json"]


def rows_of(root):
    import csv

    with open(Path(root) / "batch.csv", newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}
