"""Command-line interface: translates options into library calls and errors into exit codes.

Exit codes: 0 success, 1 a data/runtime error (one line on stderr, traceback only with
``--debug``), 2 a usage error (click's own). Nothing numerical is imported at load time:
each command imports what it needs when it runs, so ``calseg --help`` stays instant.
"""
from __future__ import annotations

import json
import logging
import sys

import click

from ._version import __version__
from .errors import CalsegError

log = logging.getLogger("calseg")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """A click group that turns calseg errors into one line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CalsegError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _say_error(f"calseg: error: {exc}")
            ctx.exit(1)
        except MemoryError:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _say_error("calseg: error: out of memory (try --max-memory or a smaller tile size)")
            ctx.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            _say_error("calseg: interrupted")
            ctx.exit(130)
        except Exception as exc:  # a bug: say so in one line unless asked for the traceback
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _say_error(f"calseg: internal error: {type(exc).__name__}: {exc} "
                       "(rerun with --debug for the traceback)")
            ctx.exit(1)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="calseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug log lines.")
@click.option("-q", "--quiet", is_flag=True, help="Only print errors.")
@click.option("--log-file", "log_file", type=click.Path(dir_okay=False), default=None,
              help="Also append every log line (with time and process id) to this file.")
@click.pass_context
def main(ctx, debug, quiet, log_file):
    """calseg: neurons, traces and spikes from calcium-imaging recordings.

    Every result carries a certificate: a bound on its distance from the global optimum of the
    convex problem behind the factorization.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    _setup_logging(debug=debug, quiet=quiet, log_file=log_file)


# ---- logging (--quiet / --debug / --log-file), owned by the batch work -------------------------


def _setup_logging(*, debug: bool, quiet: bool, log_file: str | None) -> None:
    """One stderr handler (``calseg: message``) and, with ``--log-file``, one appending file handler.

    The handlers are (re)installed on the root logger on every invocation, replacing those of an
    earlier invocation in the same process (tests), and bound to the current ``sys.stderr``.
    ``--quiet`` raises only the stderr handler's threshold, so the log file still gets every line.
    """
    from .errors import OutputError

    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_calseg", False):
            root.removeHandler(h)
            h.close()
    stderr_level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.INFO)
    file_level = logging.DEBUG if debug else logging.INFO
    err = _StderrHandler()
    err.setFormatter(logging.Formatter("calseg: %(message)s"))
    err.setLevel(stderr_level)
    err._calseg = True
    root.addHandler(err)
    level = stderr_level
    if log_file:
        try:
            fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{log_file}: cannot open the log file ({exc.strerror or exc})") from None
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        fh.setLevel(file_level)
        fh._calseg = True
        fh._calseg_file = True
        root.addHandler(fh)
        level = min(level, file_level)
        _log_to_file("calseg " + " ".join(sys.argv[1:]), logging.INFO)
    root.setLevel(level)
    if not debug:  # a warning is one log line (stderr and --log-file), not file:line + source
        import warnings

        def showwarning(message, category, filename, lineno, file=None, line=None):
            logging.getLogger("calseg").warning("warning: %s: %s", category.__name__, message)

        warnings.showwarning = showwarning


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (click's test runner swaps it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _say_error(text: str) -> None:
    """The one-line error on stderr, and in the --log-file when there is one."""
    click.echo(text, err=True)
    _log_to_file(text)


def _log_to_file(text: str, level: int = logging.ERROR) -> None:
    """Append a line that is not a log record (errors echoed by click, the command line) to the
    --log-file, if any."""
    for h in logging.getLogger().handlers:
        if getattr(h, "_calseg_file", False):
            h.handle(logging.LogRecord("calseg", level, __file__, 0, text, None, None))


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------- info
# (section owned by the reader work: calseg/io)


@main.command("info", context_settings=CONTEXT)
@click.argument("movie", nargs=-1, required=True)
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="0-based channel to read when the data hold several.")
@click.option("--plane", type=click.IntRange(min=0), default=None,
              help="0-based z-plane to read when the data hold several.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Frame rate in Hz (overrides the file's metadata).")
@click.option("--pixel-size", "pixel_size", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Pixel size in µm (overrides the file's metadata).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info_cmd(movie, channel, plane, fps, pixel_size, as_json):
    """Describe a recording: shape, type, value range, frame rate, pixel size, sizes.

    MOVIE is a TIFF file, a folder of TIFFs (or with an images/ subfolder), a quoted glob
    such as 'images/*.tif', or several of these (concatenated in natural order).
    """
    from .config import Settings
    from .io.tiff import read_movie, value_range
    from .memory import plan_for_movie

    items = movie[0] if len(movie) == 1 else list(movie)
    with read_movie(items, channel=channel, plane=plane, fps=fps, pixel_size=pixel_size) as mv:
        lo, hi = value_range(mv)
        mem = {"total": plan_for_movie(mv, Settings(workers=1)).peak}
        t, h, w = mv.shape
        report = {
            "paths": [str(p) for p in mv.paths], "n_files": len(mv.paths), "format": mv.kind,
            "shape": [t, h, w], "n_frames": t, "height": h, "width": w,
            "dtype": str(mv.dtype), "min": lo, "max": hi,
            "fps": mv.fps, "fps_source": mv.metadata_source.get("fps"),
            "pixel_size_um": mv.pixel_size,
            "pixel_size_source": mv.metadata_source.get("pixel_size"),
            "duration_s": (t / mv.fps) if mv.fps else None,
            "size_on_disk": mv.size_on_disk, "nbytes": mv.nbytes,
            "estimated_run_memory": mem["total"],
            "channel": channel, "plane": plane, "notes": mv.notes,
        }
    if as_json:
        _echo_json(report)
        return

    def size(n):
        for unit in ("B", "KB", "MB", "GB", "TB"):
            if n < 1000 or unit == "TB":
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1000.0

    def source(key):
        s = report[key]
        return f" (from {s})" if s and s != "argument" else ""

    files = report["paths"][0] if len(report["paths"]) == 1 else (
        f"{report['n_files']} files: {report['paths'][0]} ... {report['paths'][-1]}")
    fps_txt = (f"{report['fps']:.4g} Hz{source('fps_source')}" if report["fps"]
               else "unknown (give --fps)")
    px_txt = (f"{report['pixel_size_um']:.4g} µm{source('pixel_size_source')}"
              if report["pixel_size_um"] else "unknown (give --pixel-size)")
    lines = [
        ("file", files), ("format", report["format"]),
        ("shape", f"{t} frames x {h} rows x {w} cols (T, H, W)"),
        ("dtype", report["dtype"]), ("value range", f"{lo} .. {hi}"),
        ("frame rate", fps_txt), ("pixel size", px_txt),
        ("size on disk", size(report["size_on_disk"])), ("data size", size(report["nbytes"])),
        ("run memory", f"~{size(report['estimated_run_memory'])} (estimate: default settings, 1 worker)"),
    ]
    if report["duration_s"]:
        lines.insert(6, ("duration", f"{report['duration_s']:.1f} s"))
    for note in report["notes"][:5]:
        lines.append(("note", note))
    for k, v in lines:
        click.echo(f"{k + ':':<14}{v}")

# --------------------------------------------------------------------------- simulate
# (section owned by the simulator work: calseg/simulate.py)


def _parse_size(text):
    """'HxW' or 'N' (square) -> (H, W); None passes through."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise click.BadParameter(f"{text!r} is not HxW (e.g. 256x256) or a single size", param_hint="--size")


@main.command("simulate", context_settings=CONTEXT)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (movie.tif + truth/). Must be absent or empty unless --force.")
@click.option("--preset", type=click.Choice(["easy", "standard", "hard", "realistic"]),
              default="standard", show_default=True,
              help="Parameter set; 'realistic' matches real Neurofinder statistics (512x512x600, 7 Hz).")
@click.option("--size", default=None, metavar="HxW", help="Field of view in pixels, e.g. 256x256.")
@click.option("--height", type=int, default=None, help="Rows (alternative to --size).")
@click.option("--width", type=int, default=None, help="Columns (alternative to --size).")
@click.option("--frames", "n_frames", type=int, default=None, help="Number of frames.")
@click.option("--fps", type=float, default=None, help="Frame rate in Hz.")
@click.option("--neurons", "n_neurons", type=int, default=None,
              help="Number of neurons (default: preset density x field area).")
@click.option("--cell-diameter", type=float, default=None, help="Median cell diameter in px.")
@click.option("--motion/--no-motion", default=None, help="Rigid motion (default: per preset).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.pass_context
def simulate_cmd(ctx, out_dir, preset, size, height, width, n_frames, fps, n_neurons,
                 cell_diameter, motion, seed, force):
    """Simulate a calcium-imaging recording with ground truth (movie.tif, truth/)."""
    from .simulate import simulate

    hw = _parse_size(size)
    if hw is not None:
        if height is not None or width is not None:
            raise click.UsageError("use either --size or --height/--width, not both")
        height, width = hw
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    state = {"next": 0.1}

    def progress(done, total):
        if not quiet and done / total >= state["next"]:
            log.info("simulate: %d/%d frames", done, total)
            state["next"] = done / total + 0.1

    info = simulate(out_dir, preset=preset, height=height, width=width, n_frames=n_frames,
                    fps=fps, n_neurons=n_neurons, cell_diameter=cell_diameter, motion=motion,
                    seed=seed, force=force, progress=progress)
    if not quiet:
        T, H, W = info.shape
        click.echo(f"wrote {info.out_dir}: {T} frames of {H}x{W} at {info.fps:g} Hz, "
                   f"{info.n_neurons} neurons (preset {info.preset}, seed {info.seed}, "
                   f"motion {'on' if info.motion else 'off'}) in {info.elapsed_s:.1f} s")

# --------------------------------------------------------------------------- score
# (section owned by the scorer work: calseg/score.py)

def _json_safe(obj):
    """Replace NaN/inf floats by None so that --json output is strict JSON."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


@main.command("score", context_settings=CONTEXT)
@click.argument("truth", type=click.Path())
@click.argument("pred", type=click.Path())
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Neurofinder centre-distance threshold in pixels (match when distance < threshold).")
@click.option("--iou", "iou_threshold", type=click.FloatRange(0, 1, min_open=True), default=0.5,
              show_default=True, help="Minimum IoU of a pair in the one-to-one IoU matching.")
@click.option("--truth-spikes", type=click.Path(dir_okay=False),
              help="Truth spikes CSV (frame,time_s,<id>,...); default TRUTH folder's spikes.csv.")
@click.option("--pred-spikes", type=click.Path(dir_okay=False),
              help="Predicted spikes CSV; default PRED folder's spikes.csv.")
@click.option("--truth-traces", type=click.Path(dir_okay=False),
              help="Truth traces CSV; default TRUTH folder's traces.csv or calcium.csv.")
@click.option("--pred-traces", type=click.Path(dir_okay=False),
              help="Predicted traces CSV; default PRED folder's traces.csv or calcium.csv.")
@click.option("--bin", "bin_frames", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sum this many frames per bin before correlating spikes/traces.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def score_cmd(truth, pred, threshold, iou_threshold, truth_spikes, pred_spikes, truth_traces,
              pred_traces, bin_frames, as_json):
    """Score PRED neurons against TRUTH: Neurofinder metrics, IoU matching, correlations.

    TRUTH and PRED are each a Neurofinder regions.json, a label-image TIFF (0 = background), or a
    folder holding regions.json or truth/regions.json (a `calseg simulate` or `calseg run`
    output); a folder's spikes.csv and traces.csv/calcium.csv are then correlated too. When the
    truth folder has truth/motion.csv and the prediction folder motion.csv, the truth regions are
    first moved by the whole-pixel offset of the motion-corrected frame (its reference is built
    from the recording, so its origin is arbitrary).
    """
    from .score import format_table, score

    result = score(truth, pred, threshold=threshold, iou_threshold=iou_threshold,
                   truth_spikes=truth_spikes, pred_spikes=pred_spikes, truth_traces=truth_traces,
                   pred_traces=pred_traces, bin_frames=bin_frames)
    if as_json:
        _echo_json(_json_safe(result))
    else:
        click.echo(format_table(result))

# --------------------------------------------------------------------------- run / certify / deconvolve
# (section owned by the pipeline work)

class _Progress:
    """Progress on stderr: a rewriting line on a terminal, sparse plain log lines otherwise."""

    def __init__(self, quiet: bool):
        import time

        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = {}
        self.clock = time.monotonic

    def __call__(self, stage, done, total):
        if self.quiet:
            return
        now = self.clock()
        if self.tty:
            pct = 100.0 * done / max(total, 1)
            sys.stderr.write(f"\rcalseg: {stage:<8} {done}/{total} ({pct:4.0f}%)")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif done >= total or now - self.last.get(stage, 0) >= 10:
            self.last[stage] = now
            log.info("%s %d/%d", stage, done, total)


def _diameter(text):
    """'12' -> (12.0, 'px'); '15um' / '15µm' -> (15.0, 'um')."""
    t = str(text).strip().lower().replace("µ", "u")
    unit = "px"
    for suffix, u in (("um", "um"), ("px", "px")):
        if t.endswith(suffix):
            t, unit = t[: -len(suffix)], u
    try:
        return float(t), unit
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a diameter (e.g. 12, 12px or 15um)") from None


_RUN_OPTIONS = [
    # (cli name, settings key, click kwargs)
    ("--fps", "fps", dict(type=float, help="Frame rate in Hz (default: from the TIFF metadata).")),
    ("--cell-diameter", "cell_diameter", dict(type=str, help="Typical soma diameter: pixels (12) or µm (15um, needs a pixel size). Default 12 px.")),
    ("--pixel-size", "pixel_size", dict(type=float, help="µm per pixel (default: from the metadata).")),
    ("--indicator", "indicator", dict(type=str, help="Calcium indicator preset (gcamp6s, gcamp6f, gcamp7f, gcamp8m, ogb1, ...) setting the decay.")),
    ("--tau", "tau", dict(type=float, help="Calcium decay time in seconds (default: indicator, else estimated).")),
    ("--rise", "rise", dict(type=float, help="Calcium rise time in seconds (default: indicator, else none).")),
    ("--lam", "lam", dict(type=float, help="Regularisation λ in noise SDs (default: automatic).")),
    ("--lam-scale", "lam_scale", dict(type=float, help="Multiply the automatic λ (lower finds dimmer cells).")),
    ("--tile-size", "tile_size", dict(type=int, help="Tile side in pixels (default: about 9 cell diameters, fitted to the field of view).")),
    ("--tile-overlap", "tile_overlap", dict(type=int, help="Tile overlap in pixels (default: 1.5 diameters).")),
    ("--workers", "workers", dict(type=int, help="Worker processes for tiles (default: all cores, fewer if free memory is short).")),
    ("--scheduler", "scheduler", dict(type=str, metavar="ADDRESS", help="Run the tiles on this dask.distributed scheduler, e.g. tcp://host:8786 (needs calseg[dask]; workers must see the input files at the same paths).")),
    ("--max-memory", "max_memory", dict(type=str, metavar="SIZE", help="Memory budget, e.g. 4GB: batch sizes, workers and, if needed, the tile size are chosen to fit; a run that cannot fit is refused before it starts.")),
    ("--max-iter", "max_iter", dict(type=int, help="Solver iteration budget per tile.")),
    ("--channel", "channel", dict(type=int, help="Channel to use in multi-channel data (0-based).")),
    ("--plane", "plane", dict(type=int, help="Plane to use in multi-plane data (0-based).")),
    ("--seed", "seed", dict(type=int, help="Random seed.")),
    ("--motion-correction", "motion_correction", dict(type=click.Choice(["none", "rigid", "piecewise"]),
                                                      help="Motion correction before segmentation (default rigid).")),
]


def _run_options(f):
    for name, _key, kw in reversed(_RUN_OPTIONS):
        f = click.option(name, default=None, **kw)(f)
    f = click.option("--certify/--no-certify", "certify", default=None,
                     help="Compute the optimality certificate (default on).")(f)
    f = click.option("--grow/--no-grow", "grow_rank", default=None,
                     help="Add neurons the certificate finds missing (default on).")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="Settings file (TOML); command-line options override it.")(f)
    return f


def _settings_from(config_path, options):
    from .config import Settings

    settings = Settings.from_toml(config_path) if config_path else Settings()
    changes = {}
    for _name, key, _kw in _RUN_OPTIONS:
        if options.get(key) is not None:
            changes[key] = options[key]
    for key in ("certify", "grow_rank"):
        if options.get(key) is not None:
            changes[key] = options[key]
    if "cell_diameter" in changes:
        changes["cell_diameter"], changes["diameter_unit"] = _diameter(changes["cell_diameter"])
    return settings.replace(**changes) if changes else settings.validated()


@main.command("run", context_settings=CONTEXT)
@click.argument("movie", nargs=-1, required=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder (written atomically).")
@_run_options
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--export", "exports", default=None, metavar="FORMATS",
              help="Also write these formats, comma-separated: suite2p (suite2p/plane0/ for the Suite2p GUI), "
                   "nwb (calseg.nwb; needs pynwb). summary.png, report.html and rois.zip are always written.")
@click.option("--no-report", "no_report", is_flag=True, help="Do not write summary.png and report.html.")
@click.option("--keep-cache", "keep_cache", is_flag=True,
              help="Keep the raw cache OUT.cache/ written when the TIFF is compressed or many files "
                   "(a later run on the same input reuses it).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.pass_context
def run_cmd(ctx, movie, out, config_path, force, exports, no_report, keep_cache, as_json, **options):
    """Find the neurons of MOVIE and write masks, traces, spikes and a certificate to OUT.

    MOVIE is a TIFF (multi-page, BigTIFF, ImageJ, OME, ScanImage), a folder of single-frame TIFFs,
    several files or a glob, concatenated in natural order.
    """
    import time

    from .io.outputs import ResultFolder
    from .io.tiff import read_movie

    settings = _settings_from(config_path, options)
    from .export import check_exports, parse_exports

    exports = parse_exports(exports)
    check_exports(exports)
    ResultFolder(out, force=force).check()  # fail before any work
    t0 = time.perf_counter()
    paths = list(movie) if len(movie) > 1 else movie[0]
    mov = read_movie(paths, channel=settings.channel, plane=settings.plane,
                     fps=settings.fps, pixel_size=settings.pixel_size)
    from .io.cache import tile_cache
    from .memory import plan_for_movie
    from .pipeline import fingerprint, segment, write_result

    plan = plan_for_movie(mov, settings)  # refuses a run that cannot fit, before any work
    bar = _Progress(ctx.obj.get("quiet"))
    with tile_cache(mov, out, n_tiles=plan.n_tiles, keep=keep_cache,
                    progress=lambda d, n: bar("cache", d, n)) as work:
        result = segment(work, settings, progress=bar)
    extra = {"input": {"paths": [str(p) for p in mov.paths], "shape": list(mov.shape), "dtype": str(mov.dtype),
                       **fingerprint(mov.paths)},
             "raw_cache": str(work.paths[0]) if work is not mov else None,
             "wall_seconds": time.perf_counter() - t0}
    write_result(result, out, force=force, extra_info=extra, exports=exports, report=not no_report)
    cert = result.certificate
    summary = {"output": str(out), "n_neurons": result.n_neurons, "certificate": cert.get("status"),
               "relative_gap": cert.get("relative_gap"), "seconds": round(time.perf_counter() - t0, 2)}
    if as_json:
        _echo_json(summary)
    elif not ctx.obj.get("quiet"):
        gap = cert.get("relative_gap")
        gap_txt = f", relative gap {gap:.3g}" if gap is not None else ""
        click.echo(f"{result.n_neurons} neurons -> {out} (certificate: {cert.get('status')}{gap_txt}; "
                   f"{summary['seconds']} s)")


@main.command("certify", context_settings=CONTEXT)
@click.argument("result_dir", type=click.Path(file_okay=False))
@click.argument("movie", nargs=-1, required=True)
@click.option("--channel", type=int, default=None, help="Channel used by the run (0-based).")
@click.option("--plane", type=int, default=None, help="Plane used by the run (0-based).")
@click.option("--json", "as_json", is_flag=True, help="Print the full comparison as JSON.")
@click.pass_context
def certify_cmd(ctx, result_dir, movie, channel, plane, as_json):
    """Recompute RESULT_DIR's certificate from its saved factors and MOVIE alone, and compare.

    Exit code 0 when the recomputed certificate agrees with the saved one, 1 otherwise.
    """
    from .io.tiff import read_movie
    from .recheck import recertify

    paths = list(movie) if len(movie) > 1 else movie[0]
    mov = read_movie(paths, channel=channel, plane=plane)
    out = recertify(result_dir, mov, progress=_Progress(ctx.obj.get("quiet")))
    if as_json:
        _echo_json(out)
    else:
        click.echo(f"recomputed: {out['status']}, relative gap {out['relative_gap']:.4g} "
                   f"(saved: {out['saved_status']}, relative gap {out['saved_relative_gap']:.4g}) over "
                   f"{len(out['tiles'])} tile(s)")
        click.echo("agrees with the saved certificate" if out["agrees"] else
                   "DISAGREES with the saved certificate")
    if not out["agrees"]:
        ctx.exit(1)


@main.command("deconvolve", context_settings=CONTEXT)
@click.argument("traces", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Spikes CSV to write (same columns as the input).")
@click.option("--fps", type=float, required=True, help="Frame rate of the traces (Hz).")
@click.option("--tau", type=float, default=None, help="Decay time (s); default: indicator, else estimated per trace.")
@click.option("--rise", type=float, default=None, help="Rise time (s).")
@click.option("--indicator", type=str, default=None, help="Indicator preset setting tau/rise.")
@click.option("--lam", type=float, default=None, help="λ in noise SDs of a transient (larger: sparser spikes; default 2).")
@click.option("--smooth", type=float, default=None, metavar="SECONDS",
              help="Report a spike rate smoothed by a Gaussian of this SD instead of sparse spikes.")
@click.option("--force", is_flag=True, help="Overwrite OUT.")
@click.pass_context
def deconvolve_cmd(ctx, traces, out, fps, tau, rise, indicator, lam, smooth, force):
    """Infer spikes from TRACES.csv (one column per neuron) with calseg's temporal model.

    A first column named 'frame' and a 'time_s' column, as calseg writes them, are kept as they are.
    """
    from pathlib import Path

    from .config import INDICATORS
    from .deconvolve import DEFAULT_DECONV_LAM, deconvolve
    from .errors import ConfigError, OutputError
    from .io.tables import read_csv_table, write_csv_table

    if indicator is not None:
        key = indicator.lower()
        if key not in INDICATORS:
            raise ConfigError(f"--indicator {indicator!r} is unknown; known: {', '.join(sorted(INDICATORS))}")
        tau = INDICATORS[key][0] if tau is None else tau
        rise = INDICATORS[key][1] if rise is None else rise
    if Path(out).exists() and not force:
        raise OutputError(f"{out}: exists (use --force to overwrite)")
    table = read_csv_table(traces)
    spikes, _ = deconvolve(table.values, fps, tau=tau, rise=rise,
                           lam=DEFAULT_DECONV_LAM if lam is None else lam, smooth=smooth)
    write_csv_table(out, table.with_values(spikes))
    if not ctx.obj.get("quiet"):
        click.echo(f"{spikes.shape[1]} traces deconvolved -> {out}")


@main.command("config", context_settings=CONTEXT)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Check this settings file and print it merged with the defaults.")
def config_cmd(config_path):
    """Print calseg's settings as TOML (the defaults, or a checked settings file)."""
    from .config import Settings

    settings = Settings.from_toml(config_path) if config_path else Settings()
    click.echo(settings.to_toml(), nl=False)


# --------------------------------------------------------------------------- batch
# (section owned by the batch work: calseg/batch.py, calseg/locking.py)


@main.command("batch", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1)
@click.option("-o", "--output", "outroot", required=True, type=click.Path(file_okay=False),
              help="Output root: one folder per recording, plus batch.csv and batch.json.")
@click.option("--list", "list_files", multiple=True, type=click.Path(dir_okay=False),
              help="A file listing inputs, one per line (# comments; relative paths are relative "
                   "to the file's folder); same as @FILE. Repeatable.")
@_run_options
@click.option("--force", is_flag=True, help="Redo recordings whose outputs are complete and current.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the batch summary as JSON on stdout (and nothing else there).")
@click.pass_context
def batch_cmd(ctx, inputs, outroot, list_files, config_path, force, as_json, **options):
    """Process many recordings into OUTROOT/NAME folders; safe to rerun, kill, and overlap.

    INPUTS are TIFF files, folders, quoted globs ('data/*.tif') or @LISTFILE. A folder in the
    Neurofinder layout (images/*.tif) or of single-frame TIFFs is one recording; a folder of
    multi-frame TIFFs is one recording per file; a folder of such folders, one per subfolder.

    \b
    A recording is skipped when OUTROOT/NAME is complete and was made from the same input
    (fingerprint) with the same settings (--force redoes it). A lock in OUTROOT/.locks keeps two
    runs off the same recording (the second reports it as 'locked'). Results are written
    atomically, so a killed run leaves no half-written folder and the next run finishes the job.
    A bad recording is reported and the others still run. OUTROOT/batch.csv and batch.json list
    each recording's status (done, skipped, locked, failed), neurons, certificate and time.

    Exit code 0 when every recording is done or skipped, 1 otherwise.
    """
    import signal

    from .batch import find_recordings, run_batch

    if not inputs and not list_files:
        raise click.UsageError("give at least one input (file, folder, glob or @LISTFILE) or --list")
    settings = _settings_from(config_path, options)
    recordings = find_recordings(inputs, list_files=list_files, exclude=outroot)
    if not recordings:
        from .errors import InputError

        raise InputError("the inputs name no recordings")
    log.info("batch: %d recording(s) -> %s", len(recordings), outroot)
    bar = _Progress(ctx.obj.get("quiet"))

    def on_term(signum, frame):  # cron/systemd stop: clean up like Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        summary = run_batch(recordings, outroot, settings, force=force, debug=ctx.obj.get("debug"),
                            progress=lambda name, stage, d, t: bar(f"{name} {stage}", d, t))
    finally:
        signal.signal(signal.SIGTERM, old)
    if as_json:
        _echo_json(summary)
    elif not ctx.obj.get("quiet"):
        c = summary["counts"]
        parts = [f"{c[k]} {k}" for k in ("done", "skipped", "locked", "failed") if c.get(k)]
        click.echo(f"{summary['n_recordings']} recording(s): {', '.join(parts)} -> "
                   f"{outroot}/batch.csv")
    if summary["exit_code"]:
        ctx.exit(summary["exit_code"])


if __name__ == "__main__":  # pragma: no cover
    main()
