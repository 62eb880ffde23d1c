"""Per-neuron CSV tables a user brings (traces for ``calseg deconvolve``).

A table has a header row naming its columns and one row per frame. Columns named ``frame`` and
``time_s`` (as calseg writes them) are carried through unchanged; every other column is a
neuron. Empty cells and ``nan`` are missing values (e.g. padding of shorter recordings).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputError

_INDEX_COLUMNS = ("frame", "time_s")


@dataclass(frozen=True)
class Table:
    """index: dict name -> (T,) column kept as text; names: neuron columns; values: (T, n) float64."""

    index: dict
    names: list
    values: np.ndarray

    def with_values(self, values: np.ndarray) -> "Table":
        return replace(self, values=np.asarray(values))


def read_csv_table(path) -> Table:
    """Read a CSV of traces; raises InputError naming the file and the problem."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh)]
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a CSV file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as CSV text ({exc})") from None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: empty file, expected a header row and one row per frame")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise InputError(f"{path}: has a header but no rows")
    index_cols = [i for i, h in enumerate(header) if h in _INDEX_COLUMNS]
    data_cols = [i for i in range(len(header)) if i not in index_cols]
    if not data_cols:
        raise InputError(f"{path}: no trace columns (only {', '.join(header)})")
    values = np.full((len(body), len(data_cols)), np.nan)
    for t, r in enumerate(body):
        if len(r) > len(header):
            raise InputError(f"{path}: row {t + 2} has {len(r)} fields, the header has {len(header)}")
        for k, i in enumerate(data_cols):
            cell = r[i].strip() if i < len(r) else ""
            if cell == "" or cell.lower() == "nan":
                continue
            try:
                values[t, k] = float(cell)
            except ValueError:
                raise InputError(f"{path}: row {t + 2}, column {header[i]!r} holds {cell!r}, not a number") from None
    if np.isinf(values).any():
        raise InputError(f"{path}: holds infinite values")
    index = {header[i]: [r[i] if i < len(r) else "" for r in body] for i in index_cols}
    return Table(index=index, names=[header[i] for i in data_cols], values=values)


def write_csv_table(path, table: Table, *, fmt: str = "%.6g") -> None:
    """Write a table with the same index columns and names; NaN as empty cells."""
    path = Path(path)
    T = table.values.shape[0]
    try:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            wr = csv.writer(fh)
            wr.writerow([*table.index.keys(), *table.names])
            for t in range(T):
                cells = [col[t] for col in table.index.values()]
                cells += ["" if not np.isfinite(v) else fmt % v for v in table.values[t]]
                wr.writerow(cells)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
