"""calseg timings: proximal operators, solver sweeps, and ``calseg run`` against Suite2p.

Run as ``python benchmarks/bench.py`` (``make bench``) from the repository root::

    python benchmarks/bench.py [--quick] [--frames 1000,3000,10000] [--size 512x512]
                               [--work DIR] [--no-micro] [--no-suite2p] [--no-motion]
                               [--max-memory SIZE]

(``make bench BENCH_ARGS="--no-micro --size 128x128 --frames 200,400"`` for a short run.)

1. ``bench_prox.main()`` and ``bench_solver.main()`` (micro-benchmarks, their own output).
2. ``calseg simulate --preset standard`` recordings of 512 x 512 at 1,000, 3,000 and 10,000 frames
   (``--quick``: 256 x 256 at 500 and 1,000), cached in ``WORK/sim/`` (reused when present);
   ``calseg run --workers 2`` on each as a subprocess, without motion correction and with rigid
   motion correction (``--no-motion``: without only): wall seconds, CPU seconds (process +
   children), peak resident memory of the process tree, seconds per frame.
   Every timed row follows an untimed warm-up run on a small recording (``warm_up``), so
   that the one-time compilation of the numba kernels is not counted in the first row.
3. Suite2p (``competitors/suite2p_runner.py`` in ``.venv-suite2p``) on the same files without
   and with registration, when that environment exists. The ratio columns compare each Suite2p
   row with the calseg row doing the same work: Suite2p without registration / calseg without
   motion correction, Suite2p with registration / calseg with rigid motion correction (> 1:
   calseg is faster).
4. Growth with length: each method's seconds per frame on the longest recording over that on
   the shortest (the issue asks calseg to stay within 1.5x from 1,000 to 10,000 frames).

Prints figures; never asserts on time. Rows are also written to ``WORK/bench.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import (COMPETITORS, S2P_PYTHON, calseg_executable, run_measured,  # noqa: E402
                      simulate_cached)

DEFAULT_WORK = Path("/tmp/calseg-bench")

_HEAD = [("method", "method", "{}"), ("movie", "movie", "{}"), ("wall_s", "wall s", "{:.1f}"),
         ("cpu_s", "CPU s", "{:.1f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
         ("s_per_frame", "s/frame", "{:.4f}"), ("wall_ratio", "wall / calseg", "{:.2f}"),
         ("cpu_ratio", "CPU / calseg", "{:.2f}")]

CALSEG = "calseg"
CALSEG_RIGID = "calseg (rigid)"
S2P_NOREG = "suite2p (no reg.)"
S2P_REG = "suite2p"
#: which calseg row each Suite2p row is compared with (the same work)
_REFERENCE = {S2P_NOREG: CALSEG, S2P_REG: CALSEG_RIGID}


def time_calseg(movie: Path, out_dir: Path, diameter: float, *, motion: str = "none",
                max_memory: str | None = None) -> dict:
    """``calseg run --workers 2 --motion-correction MOTION`` on ``movie``; measurements (see run_measured)."""
    cmd = calseg_executable() + ["run", str(movie), "-o", str(out_dir), "--force", "--workers", "2",
                                 "--motion-correction", motion, "--cell-diameter", f"{diameter:g}", "--no-report"]
    if max_memory:
        cmd += ["--max-memory", max_memory]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return run_measured(cmd, log_path=out_dir.parent / f"{out_dir.name}.log")


def time_suite2p(movie: Path, out_dir: Path, fps: float, diameter: float, registration: bool) -> dict:
    """Suite2p runner on ``movie`` (with or without registration); measurements."""
    cmd = [str(S2P_PYTHON), str(COMPETITORS / "suite2p_runner.py"), str(movie), str(out_dir),
           "--fps", f"{fps:g}", "--diameter", f"{diameter:g}", "--threads", "2"]
    if not registration:
        cmd.append("--no-registration")
    out_dir.mkdir(parents=True, exist_ok=True)
    return run_measured(cmd, log_path=out_dir.parent / f"{out_dir.name}.log")


def _row(method, movie, n_frames, meas, ref=None) -> dict:
    row = {"method": method, "movie": movie, "n_frames": n_frames, "wall_s": meas["wall_s"],
           "cpu_s": meas["cpu_s"], "peak_rss_mb": meas["peak_rss_mb"],
           "s_per_frame": meas["wall_s"] / n_frames, "wall_ratio": None, "cpu_ratio": None,
           "status": "ok" if meas["returncode"] == 0 else f"failed: exit {meas['returncode']}: {meas['tail']}"}
    if ref is not None and ref["status"] == "ok" and row["status"] == "ok":
        row["wall_ratio"] = row["wall_s"] / ref["wall_s"]
        row["cpu_ratio"] = row["cpu_s"] / ref["cpu_s"] if ref["cpu_s"] > 0 else None
    if row["status"] != "ok":
        row["s_per_frame"] = None  # the time to failure is kept in wall_s / cpu_s
    return row


def warm_up(work: Path, *, motion: bool = True, suite2p: bool = False) -> None:
    """Run calseg once (untimed) on a small recording, so that no timed row includes the
    one-time compilation of the numba kernels (cached on disk per installation): on a fresh
    install the first 512 x 512 x 1,000 run took 139 s, the next ones about 50 s."""
    sim_dir, params = simulate_cached(work, "standard", (96, 96), 300, 0)
    t0 = time.perf_counter()
    for mode in ("none", "rigid") if motion else ("none",):
        meas = time_calseg(sim_dir / "movie.tif", work / "runs" / "warmup" / mode, params["cell_diameter"],
                           motion=mode)
        if meas["returncode"] != 0:
            print(f"  warm-up run failed (exit {meas['returncode']}): {meas['tail']}")
    if suite2p:   # the same for Suite2p (its numba functions, torch's first use)
        for reg in (False, True):
            time_suite2p(sim_dir / "movie.tif", work / "runs" / "warmup" / f"suite2p_{reg}", params["fps"],
                         params["cell_diameter"], reg)
    print(f"  warm-up runs on a {sim_dir.name} recording (not timed): "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


def bench_pipeline(size, frame_counts, work: Path, *, suite2p: bool = True, motion: bool = True,
                   max_memory: str | None = None) -> list:
    """Timing rows of calseg (without and with rigid motion correction) and Suite2p (without and
    with registration) per movie length."""
    rows = []
    have_s2p = suite2p and S2P_PYTHON.exists()
    warm_up(work, motion=motion, suite2p=have_s2p)
    if suite2p and not have_s2p:
        print(f"  ({S2P_PYTHON} not found: Suite2p rows skipped)")
    for n in frame_counts:
        try:
            sim_dir, params = simulate_cached(work, "standard", size, n, 0)
        except Exception as exc:  # noqa: BLE001
            rows.append({"method": "simulate", "movie": f"{size[0]}x{size[1]}x{n}", "status": f"failed: {exc}"})
            continue
        movie = sim_dir / "movie.tif"
        name = f"{size[0]}x{size[1]}x{n}"
        refs = {}
        for label, mode in ((CALSEG, "none"), (CALSEG_RIGID, "rigid")):
            if mode == "rigid" and not motion:
                continue
            print(f"  {label} {name} ...", flush=True)
            out = work / "runs" / name / ("calseg" if mode == "none" else "calseg_rigid")
            refs[label] = _row(label, name, n, time_calseg(movie, out, params["cell_diameter"], motion=mode,
                                                           max_memory=max_memory))
            rows.append(refs[label])
        if have_s2p:
            for label, reg in ((S2P_NOREG, False), (S2P_REG, True)):
                print(f"  {label} {name} ...", flush=True)
                meas = time_suite2p(movie, work / "runs" / name / ("suite2p_reg" if reg else "suite2p_noreg"),
                                    params["fps"], params["cell_diameter"], reg)
                rows.append(_row(label, name, n, meas, refs.get(_REFERENCE[label])))
    return rows


def growth(rows) -> dict:
    """Per method: seconds per frame on its longest recording / on its shortest (None if either failed)."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and r.get("n_frames")]
        if len(mine) < 2:
            continue
        short, long = min(mine, key=lambda r: r["n_frames"]), max(mine, key=lambda r: r["n_frames"])
        ok = short.get("s_per_frame") and long.get("s_per_frame")
        out[method] = {"from_frames": short["n_frames"], "to_frames": long["n_frames"],
                       "ratio": long["s_per_frame"] / short["s_per_frame"] if ok else None}
    return out


def main(argv=None) -> dict:
    from evaluate import format_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="256x256 at 500 and 1000 frames")
    ap.add_argument("--size", help="field of view HxW (default 512x512; quick 256x256)")
    ap.add_argument("--frames", help="comma-separated frame counts (default 1000,3000,10000; quick 500,1000)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work folder (default {DEFAULT_WORK})")
    ap.add_argument("--no-micro", action="store_true", help="skip bench_prox / bench_solver")
    ap.add_argument("--no-suite2p", action="store_true", help="calseg rows only")
    ap.add_argument("--no-motion", action="store_true", help="no calseg run with rigid motion correction")
    ap.add_argument("--max-memory", help="pass --max-memory SIZE to calseg run (e.g. 4GB)")
    args = ap.parse_args(argv)
    size = (256, 256) if args.quick else (512, 512)
    if args.size:
        try:
            size = tuple(int(v) for v in args.size.lower().split("x"))
            assert len(size) == 2
        except (ValueError, AssertionError):
            raise SystemExit(f"--size must look like 512x512, got {args.size!r}") from None
    frames = [500, 1000] if args.quick else [1000, 3000, 10000]
    if args.frames:
        frames = [int(v) for v in args.frames.split(",")]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    if not args.no_micro:
        import bench_prox
        import bench_solver

        t0 = time.perf_counter()
        if args.quick:
            out["prox"] = bench_prox.main(size=256)
        else:
            out["prox"] = bench_prox.main()
        print()
        out["solver"] = bench_solver.main()
        print(f"(micro-benchmarks: {time.perf_counter() - t0:.0f} s)\n", flush=True)
    print(f"calseg run vs Suite2p: {size[0]}x{size[1]}, frames {frames}, work folder {work}", flush=True)
    rows = bench_pipeline(size, frames, work, suite2p=not args.no_suite2p, motion=not args.no_motion,
                          max_memory=args.max_memory)
    print()
    print(format_table(rows, _HEAD))
    print("ratios: Suite2p without registration / calseg without motion correction; Suite2p with "
          "registration / calseg with rigid motion correction (> 1: calseg is faster)")
    grow = growth(rows)
    if grow:
        print("time per frame, longest / shortest recording: " + ", ".join(
            f"{m} {g['ratio']:.2f}x ({g['from_frames']} -> {g['to_frames']} frames)" if g["ratio"] else f"{m} -"
            for m, g in grow.items()))
    (work / "bench.json").write_text(json.dumps({"rows": rows, "growth": grow}, indent=1))
    print(f"\nrows written to {work}/bench.json")
    out["pipeline"] = rows
    out["growth"] = grow
    return out


if __name__ == "__main__":
    main()
