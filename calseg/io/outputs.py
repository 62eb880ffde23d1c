"""Atomic result folders and the writers of calseg's output files.

A result folder is written into a hidden temporary sibling (``.NAME.partial-XXXX``) and renamed
into place only when every file is complete, so a crash, a kill or a full disk never leaves a
half-written ``OUT/``: either the previous folder (if any) or the complete new one is there.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import OutputError


class ResultFolder:
    """Context manager: ``with ResultFolder(out, force=...) as tmp: write into tmp``.

    On success the temporary folder replaces ``out``; on any error it is removed and ``out`` is
    left as it was.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False):
        self.out = Path(out)
        self.force = force
        self.tmp: Path | None = None

    def check(self) -> None:
        """Fail early (before any work) if ``out`` cannot be (re)placed."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not self.force:
            raise OutputError(f"{out}: output folder exists and is not empty (use --force to replace it)")
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.exists():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{out}: cannot create its parent folder ({exc.strerror})") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{out}: parent folder {parent} is not writable")

    def __enter__(self) -> Path:
        self.check()
        parent = self.out.parent if str(self.out.parent) else Path(".")
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=parent))
        except OSError as exc:
            raise OutputError(f"{self.out}: cannot write ({exc.strerror})") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                raise OutputError(f"{self.out}: cannot write ({exc.strerror or exc})") from None
            return False
        try:
            _respect_umask(self.tmp)
            old = None
            if self.out.exists():
                old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise OutputError(f"{self.out}: cannot move the finished results into place ({exc.strerror})") from None
        return False


def _respect_umask(folder: Path) -> None:
    """Give the finished folder and its files the permissions a plain mkdir/open would have
    (temporary folders and files are created private)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.write("\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def write_frame_table(path: Path, values: np.ndarray, names: list[str], fps: float | None,
                      *, fmt: str = "%.6g") -> None:
    """CSV with one row per frame: ``frame,time_s,<name1>,...``; ``values`` is (T, n)."""
    values = np.asarray(values)
    T = values.shape[0]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write(",".join(["frame", "time_s", *names]) + "\n")
        frames = np.arange(T)
        times = frames / fps if fps else np.full(T, np.nan)
        block = 4096
        for s in range(0, T, block):
            e = min(s + block, T)
            rows = np.column_stack([frames[s:e], times[s:e], values[s:e]]) if values.shape[1] else \
                np.column_stack([frames[s:e], times[s:e]])
            lines = []
            for r in rows:
                cells = [str(int(r[0])), "%.6f" % r[1] if np.isfinite(r[1]) else ""]
                cells += [fmt % v for v in r[2:]]
                lines.append(",".join(cells))
            fh.write("\n".join(lines) + "\n")


def write_table(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=columns)
        wr.writeheader()
        for r in rows:
            wr.writerow(r)
