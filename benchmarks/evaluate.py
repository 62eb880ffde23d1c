"""calseg against Suite2p (segmentation on simulated movies) and OASIS (spike inference on spikefinder).

Run as ``python benchmarks/evaluate.py`` (``make evaluate``) from the repository root::

    python benchmarks/evaluate.py [--quick] [--presets easy,standard] [--seeds 1,2]
                                  [--size 256x256] [--frames 2000] [--work DIR] [--no-suite2p]
                                  [--no-spikefinder] [--spikefinder-dir DIR]

Segmentation part: for each configuration (preset, size, frames, seed) ``calseg simulate`` writes
a movie with ground truth into ``WORK/sim/<name>`` (skipped when ``truth/params.json`` is already
there: the folder is a cache), then ``calseg run`` (subprocess, ``--workers 2``,
``--motion-correction none`` unless the simulation has motion, ``--cell-diameter`` from the
simulation parameters, fps from the file) and, when ``.venv-suite2p/bin/python`` exists,
``competitors/suite2p_runner.py`` (``--no-registration`` without motion, ``--diameter`` from the
parameters) segment it, each timed (wall seconds, peak resident memory of the whole process tree
sampled every 0.1 s) and scored with :func:`calseg.score.score` against the truth.

Spikefinder part: :func:`calseg.deconvolve.deconvolve` (defaults: sparse spikes; and as a rate,
``smooth=RATE_SMOOTH_S``) and OASIS (``competitors/oasis_runner.py``
in ``.venv-suite2p``) on the spikefinder training sets, scored with the challenge's correlation
(``spikefinder_corr``: Pearson r of 40 ms bin sums), per dataset and over all cells.

A failing method gives a row ``failed: <reason>``; the other rows still run. Both tables are
printed and written to ``WORK/evaluation.json`` and ``WORK/evaluation.csv`` /
``WORK/spikefinder.csv``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPETITORS = ROOT / "benchmarks" / "competitors"
S2P_PYTHON = ROOT / ".venv-suite2p" / "bin" / "python"
SPIKEFINDER_DIR = Path("/work/shared/data/spikefinder_train")
DEFAULT_WORK = Path(os.environ.get("CALSEG_EVAL_WORK", "/tmp/calseg-evaluate"))

#: default configurations: (preset, (H, W) or None, frames or None, seed)
DEFAULT_CONFIGS = (
    [(p, size, frames, s) for size, frames in (((256, 256), 2000), ((512, 512), 3000))
     for p in ("easy", "standard", "hard") for s in (1, 2)]
    + [("realistic", (512, 512), 600, s) for s in (1, 2, 3)]
)
QUICK_CONFIGS = [("standard", (128, 128), 1000, 11), ("realistic", (192, 192), 600, 12)]

#: Gaussian SD (s) of the "calseg rate" row: calseg's sparse spikes reported as a continuous rate
RATE_SMOOTH_S = 0.1

SEG_COLUMNS = ["method", "dataset", "nf_recall", "nf_precision", "nf_combined", "iou_f1",
               "spike_r", "trace_r", "n_found", "n_truth", "wall_s", "peak_rss_mb", "status"]
SF_COLUMNS = ["method", "dataset", "n_cells", "mean_r", "median_r", "wall_s", "status"]


# --------------------------------------------------------------------------- processes

def calseg_executable() -> list:
    """Command prefix running calseg's CLI with this interpreter."""
    exe = Path(sys.executable).with_name("calseg")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "calseg.cli"]


def run_measured(cmd, *, log_path=None, poll_s: float = 0.1, env=None) -> dict:
    """Run ``cmd`` and measure it.

    Parameters
    ----------
    cmd : list of str
    log_path : Path, optional
        stdout and stderr go here (else they are captured and dropped).
    poll_s : float
        Sampling interval of the memory of the process tree.

    Returns
    -------
    dict
        ``returncode``, ``wall_s``, ``cpu_s`` (user + system of the process and its children, from
        ``wait4``), ``peak_rss_mb`` (largest sampled sum of the resident set sizes over the process
        and all its descendants; with ``psutil`` absent, the largest single process from
        ``ru_maxrss``), ``tail`` (last lines of the output, for failure messages).
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the dev environment
        psutil = None
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    peak = 0
    ps = psutil.Process(proc.pid) if psutil else None
    while True:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            pid, status, ru = proc.pid, 0, None
        if pid == proc.pid:
            break
        if ps is not None:
            total = 0
            try:
                procs = [ps] + ps.children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
        time.sleep(poll_s)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if log_path:
        log.close()
    cpu = (ru.ru_utime + ru.ru_stime) if ru is not None else float("nan")
    if peak == 0 and ru is not None:
        peak = ru.ru_maxrss * 1024
    tail = ""
    if log_path and Path(log_path).exists():
        lines = [ln for ln in Path(log_path).read_text(errors="replace").splitlines() if ln.strip()]
        tail = " | ".join(lines[-2:])[-300:]
    return {"returncode": proc.returncode, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak / 2 ** 20,
            "tail": tail}


# --------------------------------------------------------------------------- segmentation

def config_name(preset, size, frames, seed) -> str:
    """Folder / dataset name of one simulate configuration, e.g. ``standard_256x256x2000_s1``."""
    dims = f"{size[0]}x{size[1]}" if size else "default"
    return f"{preset}_{dims}x{frames or 'default'}_s{seed}"


def simulate_cached(work: Path, preset, size, frames, seed) -> tuple:
    """Simulate one configuration into ``work/sim/<name>`` unless it is already there.

    Returns
    -------
    sim_dir : Path
    params : dict
        ``truth/params.json``.
    """
    name = config_name(preset, size, frames, seed)
    sim_dir = work / "sim" / name
    params_file = sim_dir / "truth" / "params.json"
    if not params_file.exists():
        cmd = calseg_executable() + ["simulate", "-o", str(sim_dir), "--preset", preset, "--seed", str(seed),
                                     "--force"]
        if size:
            cmd += ["--size", f"{size[0]}x{size[1]}"]
        if frames:
            cmd += ["--frames", str(frames)]
        print(f"  simulate {name} ...", flush=True)
        sim_dir.parent.mkdir(parents=True, exist_ok=True)
        res = run_measured(cmd, log_path=work / "sim" / f"{name}.log")
        if res["returncode"] != 0 or not params_file.exists():
            raise RuntimeError(f"calseg simulate failed: {res['tail']}")
    return sim_dir, json.loads(params_file.read_text())


def _score_row(method, dataset, sim_dir, out_dir, meas) -> dict:
    """Score one output folder; when a trace table cannot be scored (Suite2p leaves NaN where its
    baseline F0 <= 0), score the regions and spikes alone and say so in the status."""
    from calseg.errors import InputError
    from calseg.score import score

    status = "ok"
    try:
        res = score(sim_dir, out_dir)
    except InputError as exc:
        if "traces" not in str(exc) and "calcium" not in str(exc):
            raise
        t_reg, p_reg = sim_dir / "truth" / "regions.json", out_dir / "regions.json"
        t_spk, p_spk = sim_dir / "truth" / "spikes.csv", out_dir / "spikes.csv"
        spikes = t_spk.exists() and p_spk.exists()
        res = score(t_reg, p_reg, truth_spikes=t_spk if spikes else None, pred_spikes=p_spk if spikes else None)
        status = f"ok (trace r not scored: empty/NaN cells in {out_dir.name}'s traces)"
    nf, iou = res["neurofinder"], res["iou"]
    spikes, traces = res.get("spikes"), res.get("traces")
    return {"method": method, "dataset": dataset, "nf_recall": nf["recall"], "nf_precision": nf["precision"],
            "nf_combined": nf["combined"], "iou_f1": iou["f1"],
            "spike_r": spikes["mean"] if spikes else None, "trace_r": traces["mean"] if traces else None,
            "n_found": res["pred"]["n_regions"], "n_truth": res["truth"]["n_regions"],
            "wall_s": meas["wall_s"], "cpu_s": meas["cpu_s"], "peak_rss_mb": meas["peak_rss_mb"],
            "status": status}


def _failed(method, dataset, reason, meas=None) -> dict:
    row = {c: None for c in SEG_COLUMNS}
    row.update(method=method, dataset=dataset, status=f"failed: {reason}")
    if meas:
        row.update(wall_s=meas["wall_s"], peak_rss_mb=meas["peak_rss_mb"])
    return row


def run_calseg(sim_dir: Path, params: dict, out_dir: Path, dataset: str) -> dict:
    """``calseg run`` on one simulated movie, timed and scored; a failure gives a failed row."""
    cmd = calseg_executable() + ["run", str(sim_dir / "movie.tif"), "-o", str(out_dir), "--force",
                                 "--workers", "2", "--cell-diameter", f"{params['cell_diameter']:g}",
                                 "--no-report"]
    if not params.get("motion"):
        cmd += ["--motion-correction", "none"]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    meas = run_measured(cmd, log_path=out_dir.parent / f"{out_dir.name}.log")
    if meas["returncode"] != 0:
        return _failed("calseg", dataset, f"exit {meas['returncode']}: {meas['tail']}", meas)
    try:
        return _score_row("calseg", dataset, sim_dir, out_dir, meas)
    except Exception as exc:  # noqa: BLE001 - a bad output must not stop the evaluation
        return _failed("calseg", dataset, f"scoring: {exc}", meas)


def run_suite2p(sim_dir: Path, params: dict, out_dir: Path, dataset: str) -> dict:
    """Suite2p (``suite2p_runner.py`` in ``.venv-suite2p``) on one simulated movie, timed and scored."""
    cmd = [str(S2P_PYTHON), str(COMPETITORS / "suite2p_runner.py"), str(sim_dir / "movie.tif"), str(out_dir),
           "--fps", f"{params['fps']:g}", "--diameter", f"{params['cell_diameter']:g}", "--threads", "2"]
    if not params.get("motion"):
        cmd.append("--no-registration")
    out_dir.mkdir(parents=True, exist_ok=True)
    meas = run_measured(cmd, log_path=out_dir.parent / f"{out_dir.name}.log")
    if meas["returncode"] != 0:
        return _failed("suite2p", dataset, f"exit {meas['returncode']}: {meas['tail']}", meas)
    try:
        return _score_row("suite2p", dataset, sim_dir, out_dir, meas)
    except Exception as exc:  # noqa: BLE001
        return _failed("suite2p", dataset, f"scoring: {exc}", meas)


def evaluate_segmentation(configs, work: Path, *, suite2p: bool = True) -> list:
    """All segmentation rows (calseg, then Suite2p when available) for the configurations."""
    rows = []
    have_s2p = suite2p and S2P_PYTHON.exists()
    if suite2p and not have_s2p:
        print(f"  ({S2P_PYTHON} not found: Suite2p rows skipped)")
    for preset, size, frames, seed in configs:
        name = config_name(preset, size, frames, seed)
        try:
            sim_dir, params = simulate_cached(work, preset, size, frames, seed)
        except Exception as exc:  # noqa: BLE001
            rows.append(_failed("simulate", name, str(exc)))
            continue
        print(f"  calseg run {name} ...", flush=True)
        rows.append(run_calseg(sim_dir, params, work / "runs" / name / "calseg", name))
        print("   " + _one_line(rows[-1]), flush=True)
        if have_s2p:
            print(f"  suite2p {name} ...", flush=True)
            rows.append(run_suite2p(sim_dir, params, work / "runs" / name / "suite2p", name))
            print("   " + _one_line(rows[-1]), flush=True)
    return rows


def _one_line(row) -> str:
    if not row["status"].startswith("ok"):
        return f"{row['method']}: {row['status']}"
    return (f"{row['method']}: combined {row['nf_combined']:.3f}, IoU F1 {row['iou_f1']:.3f}, "
            f"{row['wall_s']:.1f} s, {row['peak_rss_mb']:.0f} MB")


# --------------------------------------------------------------------------- spikefinder

def _has_spikes(spikes):
    """Per column: whether the ground truth has at least one spike (its r is defined)."""
    import numpy as np

    return np.nansum(spikes, axis=0) > 0


def evaluate_spikefinder(directory: Path, work: Path, *, oasis: bool = True, fps: float = 100.0) -> list:
    """calseg.deconvolve and OASIS on every spikefinder training set; rows per dataset and 'all'."""
    sys.path.insert(0, str(COMPETITORS))
    import numpy as np
    from spikefinder import load_spikefinder, spikefinder_corr, write_padded_csv

    from calseg.deconvolve import deconvolve

    sets = load_spikefinder(directory)
    out = work / "spikefinder"
    out.mkdir(parents=True, exist_ok=True)
    per_method = {}
    rows = []
    methods = ["calseg", "calseg rate"] + (["oasis"] if oasis and S2P_PYTHON.exists() else [])
    if oasis and not S2P_PYTHON.exists():
        print(f"  ({S2P_PYTHON} not found: OASIS rows skipped)")
    for ds in sets:
        sparse, sparse_wall = None, 0.0
        for method in methods:
            t0 = time.perf_counter()
            try:
                if method == "calseg":
                    pred, _ = deconvolve(ds.calcium, fps)
                    write_padded_csv(out / f"{ds.name}.calseg.csv", pred, ds.columns)
                    wall = time.perf_counter() - t0
                    sparse, sparse_wall = pred, wall
                elif method == "calseg rate":
                    # = deconvolve(..., smooth=RATE_SMOOTH_S): the same Gaussian on each column's
                    # valid part (tests/test_benchmarks.py checks that identity), without solving again
                    from scipy.ndimage import gaussian_filter1d

                    if sparse is None:
                        raise RuntimeError("the calseg row of this dataset failed")
                    pred = np.full_like(sparse, np.nan)
                    for j in range(sparse.shape[1]):
                        ok = np.flatnonzero(np.isfinite(sparse[:, j]))
                        if ok.size:
                            n = ok[-1] + 1
                            pred[:n, j] = gaussian_filter1d(sparse[:n, j], RATE_SMOOTH_S * fps, mode="constant")
                    write_padded_csv(out / f"{ds.name}.calseg_rate.csv", pred, ds.columns)
                    wall = time.perf_counter() - t0 + sparse_wall
                else:
                    cal = out / f"{ds.name}.calcium.csv"
                    write_padded_csv(cal, ds.calcium, ds.columns)
                    dst = out / f"{ds.name}.oasis.csv"
                    meas = run_measured([str(S2P_PYTHON), str(COMPETITORS / "oasis_runner.py"), str(cal), str(dst),
                                         "--fps", f"{fps:g}"], log_path=out / f"{ds.name}.oasis.log")
                    if meas["returncode"] != 0:
                        raise RuntimeError(f"exit {meas['returncode']}: {meas['tail']}")
                    from spikefinder import read_padded_csv

                    pred, _ = read_padded_csv(dst)
                    wall = meas["wall_s"]
                r = spikefinder_corr(pred, ds.spikes)
                # a neuron for which a method predicts no spike at all scores 0, not NaN (NaN
                # would drop it from the mean and reward giving up on hard cells)
                r = np.where(np.isnan(r) & _has_spikes(ds.spikes), 0.0, r)
            except Exception as exc:  # noqa: BLE001
                rows.append({"method": method, "dataset": ds.name, "n_cells": len(ds.columns), "mean_r": None,
                             "median_r": None, "wall_s": time.perf_counter() - t0,
                             "status": f"failed: {exc}"[:300]})
                continue
            per_method.setdefault(method, []).append(r)
            rows.append({"method": method, "dataset": ds.name, "n_cells": int(np.sum(np.isfinite(r))),
                         "mean_r": float(np.nanmean(r)), "median_r": float(np.nanmedian(r)), "wall_s": wall,
                         "per_cell_r": [None if not np.isfinite(v) else float(v) for v in r], "status": "ok"})
            print(f"  spikefinder {ds.name} {method}: mean r {rows[-1]['mean_r']:.3f} ({wall:.1f} s)", flush=True)
    for method, rs in per_method.items():
        allr = np.concatenate(rs)
        wall = sum(r["wall_s"] for r in rows if r["method"] == method and r["status"] == "ok")
        rows.append({"method": method, "dataset": "all cells", "n_cells": int(np.sum(np.isfinite(allr))),
                     "mean_r": float(np.nanmean(allr)), "median_r": float(np.nanmedian(allr)), "wall_s": wall,
                     "status": "ok"})
        rows.append({"method": method, "dataset": "mean of datasets", "n_cells": int(np.sum(np.isfinite(allr))),
                     "mean_r": float(np.mean([np.nanmean(r) for r in rs])), "median_r": None, "wall_s": wall,
                     "status": "ok"})
    return rows


# --------------------------------------------------------------------------- tables

_SEG_HEAD = [("method", "method", "{}"), ("dataset", "dataset", "{}"), ("nf_recall", "NF recall", "{:.3f}"),
             ("nf_precision", "NF prec.", "{:.3f}"), ("nf_combined", "NF comb.", "{:.3f}"),
             ("iou_f1", "IoU>=.5 F1", "{:.3f}"), ("spike_r", "spike r", "{:.3f}"), ("trace_r", "trace r", "{:.3f}"),
             ("wall_s", "wall s", "{:.1f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}")]
_SF_HEAD = [("method", "method", "{}"), ("dataset", "dataset", "{}"), ("n_cells", "cells", "{}"),
            ("mean_r", "mean r", "{:.3f}"), ("median_r", "median r", "{:.3f}"), ("wall_s", "wall s", "{:.1f}")]


def format_table(rows, head) -> str:
    """Plain-text table; a failed row shows its status after the method and dataset.

    Parameters
    ----------
    rows : list of dict
    head : list of (key, title, format)

    Returns
    -------
    str
    """
    cells = [[title for _, title, _ in head]]
    notes = []
    for row in rows:
        line = []
        for key, _, fmt in head:
            v = row.get(key)
            line.append("-" if v is None else fmt.format(v))
        cells.append(line)
        notes.append("" if row.get("status", "ok") == "ok" else "  " + row["status"])
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    out = []
    for k, line in enumerate(cells):
        text = "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        out.append(text.rstrip() + (notes[k - 1] if k else ""))
        if k == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def write_outputs(work: Path, seg_rows, sf_rows, meta) -> None:
    """``evaluation.json`` (both tables + meta), ``evaluation.csv`` and ``spikefinder.csv`` in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "evaluation.json").write_text(json.dumps({"meta": meta, "segmentation": seg_rows,
                                                      "spikefinder": sf_rows}, indent=1))
    for name, rows, cols in (("evaluation.csv", seg_rows, SEG_COLUMNS + ["cpu_s"]),
                             ("spikefinder.csv", sf_rows, SF_COLUMNS)):
        with open(work / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)


# --------------------------------------------------------------------------- CLI

def parse_configs(args) -> list:
    """Configurations from the options: defaults, ``--quick``, or the cross product of the lists."""
    if not (args.presets or args.seeds or args.size or args.frames):
        return list(QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS)
    presets = args.presets.split(",") if args.presets else ["easy", "standard", "hard"]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [1, 2]
    size = None
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--size must look like 256x256, got {args.size!r}") from None
        size = (h, w)
    elif args.quick:
        size = (128, 128)
    frames = args.frames or (1000 if args.quick else (2000 if size is None or size == (256, 256) else None))
    size = size or (256, 256)
    return [(p, size, frames, s) for p in presets for s in seeds]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small configurations (minutes, not hours)")
    ap.add_argument("--presets", help="comma-separated simulate presets (easy,standard,hard,realistic)")
    ap.add_argument("--seeds", help="comma-separated seeds")
    ap.add_argument("--size", help="field of view HxW")
    ap.add_argument("--frames", type=int, help="frames per movie")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work folder (default {DEFAULT_WORK})")
    ap.add_argument("--no-segmentation", action="store_true", help="skip the simulate/run part")
    ap.add_argument("--no-suite2p", action="store_true", help="calseg rows only")
    ap.add_argument("--no-spikefinder", action="store_true", help="skip the spikefinder part")
    ap.add_argument("--no-oasis", action="store_true", help="spikefinder: calseg rows only")
    ap.add_argument("--spikefinder-dir", type=Path, default=SPIKEFINDER_DIR)
    args = ap.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    configs = parse_configs(args)
    seg_rows, sf_rows = [], []
    if not args.no_segmentation:
        print(f"segmentation: {len(configs)} configuration(s), work folder {work}", flush=True)
        seg_rows = evaluate_segmentation(configs, work, suite2p=not args.no_suite2p)
    if not args.no_spikefinder:
        if args.spikefinder_dir.is_dir():
            print(f"spikefinder: {args.spikefinder_dir}", flush=True)
            sf_rows = evaluate_spikefinder(args.spikefinder_dir, work, oasis=not args.no_oasis)
        else:
            print(f"spikefinder: {args.spikefinder_dir} not found, skipped")
    meta = {"configs": [config_name(*c) for c in configs], "argv": sys.argv if argv is None else argv,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_outputs(work, seg_rows, sf_rows, meta)
    if seg_rows:
        print("\nSegmentation (simulated movies; calseg score against the truth)")
        print(format_table(seg_rows, _SEG_HEAD))
    if sf_rows:
        print("\nSpike inference (spikefinder train, r of 40 ms bin sums, 100 Hz)")
        print(format_table(sf_rows, _SF_HEAD))
    print(f"\ntables written to {work}/evaluation.json, evaluation.csv, spikefinder.csv")
    return {"segmentation": seg_rows, "spikefinder": sf_rows}


if __name__ == "__main__":
    main()
