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
            click.echo(f"calseg: error: {exc}", err=True)
            ctx.exit(1)
        except MemoryError:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo("calseg: error: out of memory (try --max-memory or a smaller tile size)", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("calseg: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug: say so in one line unless asked for the traceback
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"calseg: internal error: {type(exc).__name__}: {exc} "
                       "(rerun with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="calseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug log lines.")
@click.option("-q", "--quiet", is_flag=True, help="Only print errors.")
@click.pass_context
def main(ctx, debug, quiet):
    """calseg: neurons, traces and spikes from calcium-imaging recordings.

    Every result carries a certificate: a bound on its distance from the global optimum of the
    convex problem behind the factorization.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.INFO)
    logging.basicConfig(level=level, format="calseg: %(message)s", stream=sys.stderr)


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
    from .io.tiff import estimate_run_memory, read_movie, value_range

    items = movie[0] if len(movie) == 1 else list(movie)
    with read_movie(items, channel=channel, plane=plane, fps=fps, pixel_size=pixel_size) as mv:
        lo, hi = value_range(mv)
        mem = estimate_run_memory(mv.shape, stored_itemsize=mv.dtype.itemsize)
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
        ("run memory", f"~{size(report['estimated_run_memory'])} (estimate, 1 worker)"),
    ]
    if report["duration_s"]:
        lines.insert(6, ("duration", f"{report['duration_s']:.1f} s"))
    for note in report["notes"][:5]:
        lines.append(("note", note))
    for k, v in lines:
        click.echo(f"{k + ':':<14}{v}")

# --------------------------------------------------------------------------- simulate
# (section owned by the simulator work: calseg/simulate.py)

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
    output); a folder's spikes.csv and traces.csv/calcium.csv are then correlated too.
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


if __name__ == "__main__":  # pragma: no cover
    main()
