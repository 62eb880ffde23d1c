"""Smoke tests of the evaluation scripts' helpers (no simulation, no competitor run)."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
evaluate = pytest.importorskip("evaluate")


def test_table_aligns_columns_and_marks_failed_rows():
    rows = [
        {"method": "calseg", "dataset": "easy_256x256x2000_s1", "nf_recall": 0.91234, "nf_precision": 1.0,
         "nf_combined": 0.9541, "iou_f1": 0.8, "spike_r": None, "trace_r": 0.5, "wall_s": 12.34,
         "peak_rss_mb": 812.4, "status": "ok"},
        {"method": "suite2p", "dataset": "easy", "status": "failed: exit 1: boom"},
    ]
    lines = evaluate.format_table(rows, evaluate._SEG_HEAD).splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-"}
    assert lines[0].split()[:2] == ["method", "dataset"]
    cells = lines[2].split()
    assert cells[:5] == ["calseg", "easy_256x256x2000_s1", "0.912", "1.000", "0.954"]
    assert cells[-2:] == ["12.3", "812"] and "-" in cells  # missing spike r shown as '-'
    assert lines[3].endswith("failed: exit 1: boom")
    # numeric columns are right-aligned: every row's 'wall s' value ends where the header does
    end = lines[0].index("wall s") + len("wall s")
    assert lines[2][end - 4:end] == "12.3"


def _args(**kw):
    base = dict(quick=False, presets=None, seeds=None, size=None, frames=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_configurations_from_options():
    assert evaluate.parse_configs(_args()) == list(evaluate.DEFAULT_CONFIGS)
    assert evaluate.parse_configs(_args(quick=True)) == evaluate.QUICK_CONFIGS
    got = evaluate.parse_configs(_args(presets="easy,hard", seeds="3", size="64x96", frames=200))
    assert got == [("easy", (64, 96), 200, 3), ("hard", (64, 96), 200, 3)]
    assert evaluate.config_name("hard", (64, 96), 200, 3) == "hard_64x96x200_s3"
    with pytest.raises(SystemExit, match="--size"):
        evaluate.parse_configs(_args(size="64by96"))


def test_run_measured_reports_exit_code_time_and_memory(tmp_path):
    code = "import sys, time; x = b'x' * (60 * 2**20); time.sleep(0.4); print('bye'); sys.exit(3)"
    res = evaluate.run_measured([sys.executable, "-c", code], log_path=tmp_path / "log.txt", poll_s=0.05)
    assert res["returncode"] == 3
    assert res["wall_s"] >= 0.4
    assert res["peak_rss_mb"] > 60  # the 60 MB buffer is resident while it sleeps
    assert res["tail"] == "bye"
