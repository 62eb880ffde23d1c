"""Many recordings, one output folder each: safe to rerun, to kill and to run twice at once.

:func:`find_recordings` turns the inputs of ``calseg batch`` into recordings; :func:`run_batch`
processes them into ``OUTROOT/NAME/`` and writes ``OUTROOT/batch.csv`` and ``batch.json``.

Which inputs make which recordings
----------------------------------
* ``@FILE`` (or ``--list FILE``): each line of FILE is an input; blank lines and ``#`` comments
  are ignored; relative paths are relative to FILE's folder.
* a file: one recording (named after the file without ``.tif``/``.tiff``/``.ome``).
* a folder that holds an ``images/`` subfolder with TIFFs and no TIFFs of its own (the
  Neurofinder layout): one recording, named after the folder.
* a folder of TIFFs whose first readable file holds a single frame: one recording, the files
  being its frames in natural order (``image2`` before ``image10``), named after the folder (or
  after its parent when the folder is called ``images``).
* a folder of TIFFs holding several frames each: one recording per file.
* a folder with neither TIFFs nor ``images/``: each subfolder (one level down) by the two rules
  above.
* a glob (quote it, e.g. ``'data/*.tif'``): each match by the rules above.

Hidden files and folders, and anything inside OUTROOT, are ignored. An input that does not exist
or matches nothing is reported as a failed recording. Two recordings of one batch with the same
name are told apart by their parent folder's name (``day1_movie``, ``day2_movie``), and by a hash
of their path if that is not enough. A name thus depends only on the recording's path and on
which other recordings of the batch share it: rerunning the same inputs finds the same folders
(adding a second ``movie.tif`` later renames the first one's output, which is then redone).

What a run does with each recording
-----------------------------------
1. Lock ``OUTROOT/.locks/NAME.lock`` (:class:`calseg.locking.FileLock`); a recording locked by
   another live run is left to it (status ``locked``).
2. Skip it (status ``skipped``) when ``OUTROOT/NAME`` is complete — every file of
   :data:`calseg.pipeline.OUTPUT_FILES` present and ``run.json`` readable — and ``run.json``
   records the same input fingerprint and the same settings (``force`` redoes it).
3. Else read, segment and write ``OUTROOT/NAME`` atomically (status ``done``), or record the
   one-line error (status ``failed``) and go on with the next recording.

Temporary folders (``.NAME.partial-*``, ``.NAME.old-*``) left by a killed run are removed by the
next run (under the recording's lock). ``batch.csv``/``batch.json`` are rewritten after every
recording, so even a killed run leaves a summary (recordings not reached yet say ``pending``).
"""
from __future__ import annotations

import csv
import glob as _glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import CalsegError, InputError, OutputError
from .locking import FileLock, pid_alive

log = logging.getLogger("calseg")

__all__ = ["Recording", "Outcome", "find_recordings", "output_state", "run_batch",
           "write_summary", "clean_leftovers", "SUMMARY_COLUMNS"]

TIFF_SUFFIXES = (".tif", ".tiff")
LOCK_DIR = ".locks"
SUMMARY_CSV = "batch.csv"
SUMMARY_JSON = "batch.json"
SUMMARY_COLUMNS = ["name", "input", "output", "status", "n_neurons", "certificate",
                   "relative_gap", "seconds", "error"]
#: statuses that count as success for the exit code
OK_STATUSES = ("done", "skipped")
_GLOB_CHARS = re.compile(r"[*?\[]")
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:partial-[A-Za-z0-9_]{8}|old-\d+)$")
_RESERVED = {SUMMARY_CSV.casefold(), SUMMARY_JSON.casefold(), LOCK_DIR}


@dataclass(frozen=True)
class Recording:
    """One recording of a batch.

    Attributes
    ----------
    name : str
        Output folder name under OUTROOT (safe characters only, unique within the batch).
    source : str
        The input as found (a file or a folder path), for messages and the summary.
    files : tuple of Path
        Its TIFF files in reading order (empty when ``error`` is set).
    error : str or None
        Why the input cannot be used (then the recording is reported as failed).
    """

    name: str
    source: str
    files: tuple = ()
    error: str | None = None


@dataclass
class Outcome:
    """One row of the batch summary."""

    name: str
    input: str
    output: str
    status: str = "pending"
    n_neurons: int | None = None
    certificate: str | None = None
    relative_gap: float | None = None
    seconds: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


# --------------------------------------------------------------------------- discovery


def _natural_key(path) -> list:
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts]


def _tiffs_in(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    files = [f for f in entries if f.suffix.lower() in TIFF_SUFFIXES and not f.name.startswith(".")
             and f.is_file()]
    return sorted(files, key=_natural_key)


def _n_frames_at_least_two(path: Path) -> bool | None:
    """Whether a TIFF holds more than one frame (None: cannot tell, e.g. corrupt)."""
    import tifffile

    from .io.tiff import _quiet_tifffile  # keep tifffile's complaints about bad files off stderr

    try:
        with _quiet_tifffile(), tifffile.TiffFile(str(path)) as tf:
            ij = tf.imagej_metadata or {}
            if int(ij.get("images", 1) or 1) > 1:
                return True
            shaped = tf.shaped_metadata
            if shaped and "shape" in shaped[0]:
                shape = shaped[0]["shape"]
                if len(shape) >= 3 and int(shape[0]) > 1:
                    return True
            try:
                tf.pages[1]
            except IndexError:
                return False
            return True
    except Exception:  # noqa: BLE001 - a damaged file is reported when it is read
        return None


def _is_frame_sequence(tiffs: list[Path]) -> bool:
    """A folder's TIFFs are the frames of one recording when the first readable one is 1 frame."""
    for f in tiffs[:3]:
        many = _n_frames_at_least_two(f)
        if many is not None:
            return not many
    return False


def _inside(path: Path, root: Path | None) -> bool:
    if root is None:
        return False
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _folder_recordings(folder: Path, exclude: Path | None, depth: int = 0) -> list[tuple[str, str, list]]:
    """(base name, source, files) of the recordings in a folder, by the module's rules."""
    tiffs = [f for f in _tiffs_in(folder) if not _inside(f, exclude)]
    name = folder.resolve().name
    if name == "images" and folder.resolve().parent.name:
        name = folder.resolve().parent.name
    if not tiffs:
        images = folder / "images"
        if images.is_dir() and not _inside(images, exclude):
            frames = _tiffs_in(images)
            if frames:
                return [(name, str(folder), frames)]
        if depth == 0:
            found = []
            try:
                subs = sorted((d for d in folder.iterdir() if d.is_dir()
                               and not d.name.startswith(".")), key=_natural_key)
            except OSError as exc:
                return [(name, str(folder), f"cannot list the folder ({exc.strerror or exc})")]
            for d in subs:
                if not _inside(d, exclude) and d.resolve() != exclude:
                    found.extend(_folder_recordings(d, exclude, depth=1))
            if found:
                return found
            return [(name, str(folder), "folder holds no TIFF recordings (*.tif, *.tiff), "
                                        "nor an images/ subfolder")]
        return []
    if _is_frame_sequence(tiffs):
        return [(name, str(folder), tiffs)]
    return [(_stem(f), str(f), [f]) for f in tiffs]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.lower().endswith(".ome"):
        name = name[:-4]
    return name


def _safe(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".")
    name = name or "recording"
    if name.casefold() in _RESERVED:
        name += "-recording"
    return name


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: list file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the list file ({exc})") from None
    items = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if not line:
            continue
        p = Path(os.path.expanduser(line))
        items.append(str(p if p.is_absolute() else path.parent / p))
    return items


def find_recordings(inputs, *, list_files=(), exclude=None) -> list[Recording]:
    """Turn ``calseg batch`` inputs into recordings (rules in the module docstring).

    Parameters
    ----------
    inputs : sequence of str
        Files, folders, globs, or ``@LISTFILE``.
    list_files : sequence of path-like
        Further list files (``--list``).
    exclude : path-like, optional
        A folder whose contents are never inputs (the batch's OUTROOT).

    Returns
    -------
    list of Recording
        In the order given (files of one folder or glob in natural order), each file once,
        with unique names.

    Raises
    ------
    InputError
        A list file cannot be read, or nothing at all was given.
    """
    exclude = Path(exclude).resolve() if exclude is not None else None
    items: list[str] = []
    for raw in inputs:
        raw = str(raw)
        if raw.startswith("@") and len(raw) > 1 and not Path(raw).exists():
            items.extend(_read_list(Path(os.path.expanduser(raw[1:]))))
        else:
            items.append(raw)
    for lf in list_files:
        items.extend(_read_list(Path(lf)))
    if not items:
        raise InputError("no inputs given (name files, folders, globs or @LISTFILE)")

    found: list[tuple[str, str, list | str]] = []
    for item in items:
        p = Path(os.path.expanduser(item))
        if p.exists() or not _GLOB_CHARS.search(item):
            matches = [p]
        else:
            matches = sorted((Path(m) for m in _glob.glob(os.path.expanduser(item))
                              if not Path(m).name.startswith(".")), key=_natural_key)
            if not matches:
                found.append((_safe(Path(item).name), item, "no files match this pattern"))
                continue
        for m in matches:
            if _inside(m, exclude):
                continue
            if m.is_dir():
                found.extend(_folder_recordings(m, exclude))
            elif m.exists():
                found.append((_stem(m), str(m), [m]))
            else:
                found.append((_stem(m), str(m), "no such file or folder"))

    seen: set[str] = set()
    unique = []
    for base, source, files in found:
        if isinstance(files, list):
            key = "\0".join(str(f.resolve()) for f in files)
            if key in seen:
                continue
            seen.add(key)
        unique.append((_safe(base), source, files))
    return _name_uniquely(unique)


def _name_uniquely(found) -> list[Recording]:
    def parent_name(source):
        p = Path(source).resolve()
        parent = p.parent.name if p.parent.name not in ("", "images") else p.parent.parent.name
        return parent or "root"

    counts: dict[str, int] = {}
    for base, _s, _f in found:
        counts[base.casefold()] = counts.get(base.casefold(), 0) + 1
    names = []
    for base, source, _f in found:
        names.append(base if counts[base.casefold()] == 1 else _safe(f"{parent_name(source)}_{base}"))
    counts2: dict[str, int] = {}
    for n in names:
        counts2[n.casefold()] = counts2.get(n.casefold(), 0) + 1
    out = []
    for (base, source, files), n in zip(found, names):
        if counts2[n.casefold()] > 1:
            digest = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:8]
            n = f"{base}-{digest}"
        if isinstance(files, str):
            out.append(Recording(name=n, source=source, files=(), error=f"{source}: {files}"))
        else:
            out.append(Recording(name=n, source=source, files=tuple(Path(f) for f in files)))
    return out


# --------------------------------------------------------------------------- output state


def _normalise(obj):
    return json.loads(json.dumps(obj, default=str))


#: settings that decide only where and how fast tiles run, never the results
_EXECUTION_ONLY = ("workers", "scheduler")


def _result_settings(d) -> dict:
    return {k: v for k, v in _normalise(d or {}).items() if k not in _EXECUTION_ONLY}


def output_state(folder, files, settings) -> tuple[bool, str, dict]:
    """Whether ``folder`` holds a complete result for ``files`` made with ``settings``.

    Returns
    -------
    (complete, reason, run_info)
        ``complete`` is True only when every file of ``OUTPUT_FILES`` is there, ``run.json``
        parses, and it records the same input fingerprint and the same settings (``workers`` and
        ``scheduler`` aside: they never change results); ``reason``
        says why not; ``run_info`` is the parsed ``run.json`` (empty when unreadable).
    """
    from .pipeline import OUTPUT_FILES, fingerprint

    folder = Path(folder)
    if not folder.is_dir():
        return False, "no output yet", {}
    missing = [f for f in OUTPUT_FILES if not (folder / f).is_file()]
    if missing:
        return False, f"incomplete output (missing {', '.join(missing)})", {}
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        return False, "run.json is unreadable", {}
    try:
        now = fingerprint(files)
    except OSError:
        return False, "the input cannot be read", info
    old_input = info.get("input") or {}
    if old_input.get("sha256_head_tail") != now["sha256_head_tail"] or \
            _normalise(old_input.get("files")) != _normalise(now["files"]):
        return False, "input changed", info
    if _result_settings(info.get("settings")) != _result_settings(settings.to_dict()):
        return False, "settings changed", info
    return True, "output complete, input and settings unchanged", info


def _certificate_of(folder: Path) -> tuple[str | None, float | None]:
    try:
        cert = json.loads((folder / "certificate.json").read_text(encoding="utf-8"))
        return cert.get("status"), cert.get("relative_gap")
    except (OSError, ValueError, AttributeError):
        return None, None


def _is_ours_or_empty(folder: Path) -> bool:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    return not entries or (folder / "run.json").exists()


def clean_leftovers(outroot, name: str | None = None) -> list[Path]:
    """Remove ``.NAME.partial-*`` / ``.NAME.old-*`` folders left in OUTROOT by killed runs.

    With ``name``, only that recording's (the caller holds its lock); without, every leftover
    whose recording is not locked by a live run.
    """
    outroot = Path(outroot)
    removed = []
    try:
        entries = list(outroot.iterdir())
    except OSError:
        return removed
    for e in entries:
        m = _LEFTOVER.match(e.name)
        if not m or not e.is_dir():
            continue
        if name is not None:
            if m["name"] != name:
                continue
            shutil.rmtree(e, ignore_errors=True)
            removed.append(e)
            continue
        lock = FileLock(outroot / LOCK_DIR / f"{m['name']}.lock")
        if lock.acquire():
            _report_takeover(lock, m["name"])
            try:
                shutil.rmtree(e, ignore_errors=True)
                removed.append(e)
            finally:
                lock.release()
    for e in removed:
        log.info("removed %s (left by an interrupted run)", e.name)
    return removed


# --------------------------------------------------------------------------- the run


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, CalsegError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = "out of memory (try --max-memory or a smaller tile size)"
    elif isinstance(exc, OSError):
        text = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _process(rec: Recording, out: Path, settings, *, progress, segment_fn) -> Outcome:
    """Read, segment and write one recording (the caller holds its lock)."""
    from . import pipeline
    from .io.cache import tile_cache
    from .io.tiff import read_movie
    from .memory import plan_for_movie

    t0 = time.perf_counter()
    oc = Outcome(name=rec.name, input=rec.source, output=str(out))
    target = [str(f) for f in rec.files] if len(rec.files) > 1 else str(rec.files[0])
    with read_movie(target, channel=settings.channel, plane=settings.plane, fps=settings.fps,
                    pixel_size=settings.pixel_size) as mov:
        segment = segment_fn or pipeline.segment
        plan = plan_for_movie(mov, settings)  # refuses a run that cannot fit, before any work
        with tile_cache(mov, out, n_tiles=plan.n_tiles) as work:
            result = segment(work, settings, progress=progress)
        extra = {"input": {"paths": [str(p) for p in mov.paths], "shape": list(mov.shape),
                           "dtype": str(mov.dtype), **pipeline.fingerprint(rec.files)},
                 "wall_seconds": time.perf_counter() - t0,
                 "batch": {"name": rec.name, "pid": os.getpid(), "host": socket.gethostname(),
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
        pipeline.write_result(result, out, force=True, extra_info=extra)
    cert = result.certificate or {}
    oc.status = "done"
    oc.n_neurons = int(result.n_neurons)
    oc.certificate = cert.get("status")
    oc.relative_gap = cert.get("relative_gap")
    oc.seconds = round(time.perf_counter() - t0, 3)
    return oc


def run_batch(recordings, outroot, settings, *, force: bool = False, progress=None,
              segment_fn=None, debug: bool = False) -> dict:
    """Process ``recordings`` into ``OUTROOT/NAME`` folders (see the module docstring).

    Parameters
    ----------
    recordings : list of Recording
    outroot : path-like
        Created when missing.
    settings : Settings
        Used for every recording (and compared with each output's ``run.json``).
    force : bool
        Redo recordings whose outputs are complete and current.
    progress : callable(name, stage, done, total), optional
    segment_fn : callable, optional
        Replaces :func:`calseg.pipeline.segment` (tests).
    debug : bool
        Log the traceback of a recording that fails on an unexpected error.

    Returns
    -------
    dict
        The summary also written to ``OUTROOT/batch.json``: ``outroot``, ``started``,
        ``finished``, ``counts`` (per status), ``exit_code`` (0 when every recording is done or
        skipped, else 1) and ``recordings`` (one row per recording, ``SUMMARY_COLUMNS``).

    Raises
    ------
    OutputError
        OUTROOT cannot be created or written, or the summary cannot be written.
    """
    outroot = Path(outroot)
    _prepare_outroot(outroot)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    outcomes = [Outcome(name=r.name, input=r.source, output=str(outroot / r.name))
                for r in recordings]
    write_summary(outroot, outcomes, started=started)  # early: a full or read-only disk fails here
    clean_leftovers(outroot)
    n = len(recordings)
    current = None
    try:
        for i, (rec, oc) in enumerate(zip(recordings, outcomes), 1):
            current = oc
            tag = f"[{i}/{n}] {rec.name}"
            _run_one(rec, oc, outroot, settings, tag=tag, force=force, debug=debug,
                     progress=progress, segment_fn=segment_fn)
            current = None
            write_summary(outroot, outcomes, started=started)
    except BaseException:
        if current is not None and current.status == "pending":
            current.status = "interrupted"
            current.error = "the batch run was interrupted"
        try:
            write_summary(outroot, outcomes, started=started)
        except OutputError:
            pass
        raise
    summary = write_summary(outroot, outcomes, started=started)
    c = summary["counts"]
    parts = [f"{c[s]} {s}" for s in ("done", "skipped", "locked", "failed") if c.get(s)]
    log.info("batch: %d recording(s): %s (summary %s)", n, ", ".join(parts) or "nothing to do",
             outroot / SUMMARY_CSV)
    return summary


def _prepare_outroot(outroot: Path) -> None:
    if outroot.exists() and not outroot.is_dir():
        raise OutputError(f"{outroot}: exists and is not a folder")
    try:
        outroot.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{outroot}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(outroot, os.W_OK | os.X_OK):
        raise OutputError(f"{outroot}: output folder is not writable")


def _report_takeover(lock: FileLock, tag: str) -> None:
    """Log that a lock file left by a run that died (kill -9, power cut) was taken over."""
    prev = lock.previous
    if prev and prev.get("pid"):
        try:
            dead = prev.get("host") == socket.gethostname() and not pid_alive(int(prev["pid"]))
        except (TypeError, ValueError):
            dead = False
        log.info("%s: taking over from pid %s on %s (%s)", tag, prev.get("pid"), prev.get("host", "?"),
                 "no longer running" if dead else "its lock was released")


def _run_one(rec, oc, outroot, settings, *, tag, force, debug, progress, segment_fn) -> None:
    t0 = time.perf_counter()
    if rec.error:
        oc.status, oc.error = "failed", rec.error
        oc.seconds = 0.0
        log.error("%s: failed: %s", tag, rec.error)
        return
    lock = FileLock(outroot / LOCK_DIR / f"{rec.name}.lock")
    if not lock.acquire():
        oc.status = "locked"
        oc.error = f"being processed by {lock.describe_holder()}"
        oc.seconds = round(time.perf_counter() - t0, 3)
        log.info("%s: locked (%s); left to it", tag, oc.error)
        return
    try:
        _report_takeover(lock, tag)
        clean_leftovers(outroot, rec.name)
        out = outroot / rec.name
        complete, reason, info = output_state(out, rec.files, settings)
        if complete and not force:
            oc.status = "skipped"
            oc.n_neurons = info.get("n_neurons")
            oc.certificate, oc.relative_gap = _certificate_of(out)
            oc.seconds = round(time.perf_counter() - t0, 3)
            log.info("%s: skipped (%s)", tag, reason)
            return
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder")
        if out.is_dir() and not force and not _is_ours_or_empty(out):
            raise OutputError(f"{out}: exists and is not a calseg output folder (no run.json); "
                              "move it away or use --force to replace it")
        why = "forced" if complete else reason
        log.info("%s: running (%s) on %s", tag, why, rec.source)
        prog = (lambda stage, d, t: progress(rec.name, stage, d, t)) if progress else None
        done = _process(rec, out, settings, progress=prog, segment_fn=segment_fn)
        oc.status, oc.n_neurons, oc.certificate = done.status, done.n_neurons, done.certificate
        oc.relative_gap, oc.seconds = done.relative_gap, done.seconds
        gap = f", relative gap {oc.relative_gap:.3g}" if isinstance(oc.relative_gap, float) else ""
        log.info("%s: done: %s neurons, certificate %s%s, %.1f s -> %s", tag, oc.n_neurons,
                 oc.certificate, gap, oc.seconds, out)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad recording must not stop the others
        oc.status = "failed"
        oc.error = _one_line(exc)
        oc.seconds = round(time.perf_counter() - t0, 3)
        if debug:
            log.error("%s: traceback:\n%s", tag, "".join(traceback.format_exception(exc)).rstrip())
        elif not isinstance(exc, (CalsegError, MemoryError, OSError)):
            oc.error += " (rerun with --debug for the traceback)"
        log.error("%s: failed: %s", tag, oc.error)
    finally:
        lock.release()


# --------------------------------------------------------------------------- summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OutputError(f"{path}: cannot write the batch summary ({exc.strerror or exc})") from None


def write_summary(outroot, outcomes, *, started: str | None = None) -> dict:
    """Write ``batch.csv`` and ``batch.json`` into ``outroot`` (atomically) and return the dict."""
    outroot = Path(outroot)
    counts: dict[str, int] = {}
    for oc in outcomes:
        counts[oc.status] = counts.get(oc.status, 0) + 1
    rows = [oc.row() for oc in outcomes]
    summary = {
        "outroot": str(outroot),
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "n_recordings": len(outcomes),
        "counts": counts,
        "exit_code": 0 if all(oc.status in OK_STATUSES for oc in outcomes) else 1,
        "recordings": rows,
    }
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    wr.writeheader()
    for r in rows:
        wr.writerow({k: ("" if r[k] is None else r[k]) for k in SUMMARY_COLUMNS})
    _atomic_write(outroot / SUMMARY_CSV, buf.getvalue())
    _atomic_write(outroot / SUMMARY_JSON, json.dumps(summary, indent=2, default=str) + "\n")
    return summary
