"""Settings of a calseg run: one frozen dataclass, one constraints table, one validation.

Every option of ``calseg run`` is a field of :class:`Settings`. Values are checked once, at the
boundary (:meth:`Settings.validated`), against :data:`CONSTRAINTS`; a bad value raises
:class:`~calseg.errors.ConfigError` naming the key, the value and what is allowed. Settings load from
and dump to TOML (``calseg config`` prints the defaults) and JSON (``run.json``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: Calcium indicators: decay time constant (s, to 1/e) and rise time (s). Values are typical
#: single-spike kinetics in mouse cortex at room-to-body temperature (Chen et al. 2013 for GCaMP6;
#: Dana et al. 2019 for jGCaMP7; Zhang et al. 2023 for jGCaMP8; OGB-1 from Theis et al. 2016 data).
INDICATORS: dict[str, tuple[float, float]] = {
    "gcamp6s": (1.2, 0.07),
    "gcamp6m": (0.8, 0.05),
    "gcamp6f": (0.4, 0.03),
    "gcamp7s": (1.0, 0.06),
    "gcamp7f": (0.45, 0.03),
    "gcamp8s": (0.6, 0.01),
    "gcamp8m": (0.3, 0.007),
    "gcamp8f": (0.15, 0.007),
    "gcamp5g": (0.74, 0.05),
    "ogb1": (0.6, 0.01),
}

MOTION_MODES = ("none", "rigid", "piecewise")


@dataclass(frozen=True)
class Settings:
    """Every setting of a calseg run (defaults are principled; most users set only fps and diameter).

    Parameters
    ----------
    fps : float or None
        Frame rate (Hz). None: from the recording's metadata (an error if absent there too).
    cell_diameter : float
        Typical soma diameter, in pixels (or µm when ``diameter_unit="um"``; the recording's pixel
        size, or ``pixel_size``, converts it). Sets tile size, TV weight and mask filtering.
    diameter_unit : {"px", "um"}
    pixel_size : float or None
        µm per pixel; overrides metadata.
    indicator : str or None
        Calcium indicator preset (see ``INDICATORS``) setting ``tau``/``rise`` when those are None.
    tau : float or None
        Calcium decay time (s). None: from ``indicator``, else estimated from the recording.
    rise : float or None
        Rise time (s); None: from ``indicator``, else no rise (pure exponential decay).
    lam : float or None
        Regularisation weight λ in units of the per-pixel noise SD; None: ``lam_scale`` x default.
    lam_scale : float
        Multiplier on the default λ (lower finds dimmer neurons, higher is stricter).
    spatial : (α, β, γ)
        Weights of ℓ2, ℓ1 and total variation in the footprint norm ‖·‖_Z.
    temporal : (α, β)
        Weights of ℓ2 and ℓ1 in the spike-train norm ‖·‖_A.
    workers : int or None
        Local worker processes for the tiles (None: all cores, fewer if free memory is short).
    scheduler : str or None
        Address of a ``dask.distributed`` scheduler (``tcp://host:8786``); the tiles then run on
        its workers (needs the ``dask`` extra). Results are the same wherever tiles run.
    max_memory : str or None
        Memory budget of the run, e.g. ``"4GB"``: batch sizes, workers and, if needed, the tile
        size are chosen to fit it, and a run that cannot fit is refused before it starts
        (:mod:`calseg.memory`).
    """

    fps: float | None = None
    cell_diameter: float = 12.0
    diameter_unit: str = "px"
    pixel_size: float | None = None
    indicator: str | None = None
    tau: float | None = None
    rise: float | None = None
    lam: float | None = None
    lam_scale: float = 1.0
    spatial: tuple[float, float, float] = (1.0, 1.0, 0.6)
    temporal: tuple[float, float] = (1.0, 1.0)
    n_background: int = 5
    n_neuropil: int = 2
    connectivity: int = 8
    tile_size: int | None = None
    tile_overlap: int | None = None
    max_iter: int = 200
    # relative objective decrease over 5 iterations at which a tile's solver stops; the objective
    # is mostly noise energy, so it must be small enough for dim cells to finish growing. With
    # one step size per column (calseg.solver.bcd) they grow at their own rate: realistic
    # simulations combined 0.488 at 1e-4, 0.484 at 5e-5 (25 % more iterations); standard, easy
    # and hard unchanged. (With one step for all columns: 0.46 at 1e-4, 0.49 at 5e-5.)
    tol: float = 1e-4
    certify: bool = True
    grow_rank: bool = True
    # rank-growth rounds per tile: 3 when tiles were 6 cell diameters wide, 6 for tiles of 9
    # (twice the area, as many unseeded cells to grow per area; standard 512x512x600: 178 -> 180
    # cells found, old geometry 182, no slower)
    max_grow: int = 6
    certificate_tol: float = 1e-3
    mask_threshold: float = 0.2
    min_area_fraction: float = 0.15
    max_area_fraction: float = 4.0
    motion_correction: str = "rigid"
    workers: int | None = None
    scheduler: str | None = None
    max_memory: str | None = None
    channel: int | None = None
    plane: int | None = None
    seed: int = 0

    # ------------------------------------------------------------------ validation
    def validated(self) -> "Settings":
        """Return self after checking every field against :data:`CONSTRAINTS`."""
        for f in fields(self):
            value = getattr(self, f.name)
            rule = CONSTRAINTS.get(f.name)
            if rule is None:
                continue
            problem = rule(value)
            if problem:
                raise ConfigError(f"setting '{f.name}' = {value!r} is not allowed: {problem}")
        if self.indicator is not None and self.indicator.lower() not in INDICATORS:
            raise ConfigError(f"setting 'indicator' = {self.indicator!r} is unknown; "
                              f"known indicators: {', '.join(sorted(INDICATORS))}")
        return self

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes`` applied and validated (unknown keys rejected)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **_coerce(changes)).validated()

    # ------------------------------------------------------------------ derived values
    def decay(self) -> tuple[float | None, float | None]:
        """(tau, rise) in seconds from explicit values or the indicator preset (None: estimate)."""
        tau, rise = self.tau, self.rise
        if self.indicator is not None:
            itau, irise = INDICATORS[self.indicator.lower()]
            tau = itau if tau is None else tau
            rise = irise if rise is None else rise
        return tau, rise

    def diameter_px(self, pixel_size: float | None) -> float:
        """Cell diameter in pixels, converting from µm with ``pixel_size`` when needed."""
        if self.diameter_unit == "px":
            return float(self.cell_diameter)
        ps = self.pixel_size or pixel_size
        if not ps:
            raise ConfigError("cell diameter is given in µm but the pixel size is unknown: "
                              "pass --pixel-size (µm per pixel) or give the diameter in pixels")
        return float(self.cell_diameter) / float(ps)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "settings") -> "Settings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**_coerce(data)).validated()

    @classmethod
    def from_toml(cls, path: str | Path) -> "Settings":
        import tomllib

        path = Path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: settings file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        data = data.get("calseg", data)
        return cls.from_dict(data, source=str(path))

    def to_toml(self) -> str:
        lines = ["# calseg settings (calseg config prints these defaults)", "[calseg]"]
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                lines.append(f"# {f.name} = (unset: automatic)")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


_TUPLES = {"spatial": 3, "temporal": 2}


def _coerce(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key, n in _TUPLES.items():
        if key in out and out[key] is not None:
            v = out[key]
            if not isinstance(v, (list, tuple)) or len(v) != n:
                raise ConfigError(f"setting '{key}' = {v!r} is not allowed: expected {n} numbers")
            out[key] = tuple(float(x) for x in v)
    return out


# ---------------------------------------------------------------------- constraints table
def _num(lo=None, hi=None, *, optional=False, integer=False, lo_open=False):
    def check(v):
        if v is None:
            return None if optional else "a value is required"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "expected a number"
        if integer and not float(v).is_integer():
            return "expected an integer"
        if not math.isfinite(v):
            return "expected a finite number"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None
    return check


def _choice(options, *, optional=False):
    def check(v):
        if v is None and optional:
            return None
        if v not in options:
            return f"allowed: {', '.join(map(str, options))}"
        return None
    return check


def _weights(n):
    def check(v):
        if not isinstance(v, tuple) or len(v) != n:
            return f"expected {n} numbers"
        if any(not math.isfinite(x) or x < 0 for x in v):
            return "weights must be finite and >= 0"
        if v[0] <= 0 and v[1] <= 0:
            return "the l2 or the l1 weight must be > 0"
        return None
    return check


def _bool(v):
    return None if isinstance(v, bool) else "expected true or false"


def _address(v):
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip() or any(c.isspace() for c in v):
        return "expected a scheduler address such as tcp://host:8786"
    return None


def _memory(v):
    if v is None:
        return None
    try:
        parse_bytes(v)
    except ValueError as exc:
        return str(exc)
    return None


CONSTRAINTS = {
    "fps": _num(0, 10000, optional=True, lo_open=True),
    "cell_diameter": _num(1, 500, lo_open=False),
    "diameter_unit": _choice(("px", "um")),
    "pixel_size": _num(0, 1000, optional=True, lo_open=True),
    "tau": _num(0, 100, optional=True, lo_open=True),
    "rise": _num(0, 10, optional=True),
    "lam": _num(0, None, optional=True, lo_open=True),
    "lam_scale": _num(0, 1000, lo_open=True),
    "spatial": _weights(3),
    "temporal": _weights(2),
    "n_background": _num(0, 50, integer=True),
    "n_neuropil": _num(0, 20, integer=True),
    "connectivity": _choice((4, 8)),
    "tile_size": _num(8, 4096, optional=True, integer=True),
    "tile_overlap": _num(0, 2048, optional=True, integer=True),
    "max_iter": _num(1, 100000, integer=True),
    "tol": _num(0, 1, lo_open=True),
    "certify": _bool,
    "grow_rank": _bool,
    "max_grow": _num(0, 1000, integer=True),
    "certificate_tol": _num(0, 1, lo_open=True),
    "mask_threshold": _num(0, 1, lo_open=True),
    "min_area_fraction": _num(0, 100),
    "max_area_fraction": _num(0, 1000, lo_open=True),
    "motion_correction": _choice(MOTION_MODES),
    "workers": _num(1, 1024, optional=True, integer=True),
    "scheduler": _address,
    "max_memory": _memory,
    "channel": _num(0, 1000, optional=True, integer=True),
    "plane": _num(0, 1000, optional=True, integer=True),
    "seed": _num(0, 2**32 - 1, integer=True),
}

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "t": 1e12, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'4GB' -> 4e9, '512MiB' -> 536870912, 1000 -> 1000. Raises ValueError on nonsense."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError("a memory size must be > 0")
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    if unit not in _UNITS or not num:
        raise ValueError(f"cannot read {text!r} as a memory size (e.g. 4GB, 512MiB)")
    value = float(num) * _UNITS[unit]
    if value <= 0:
        raise ValueError("a memory size must be > 0")
    return int(value)
