"""Results in the formats other tools read: ImageJ/Fiji ROIs, a Suite2p folder, NWB.

Each exporter takes a ``calseg run`` result folder (read through :mod:`calseg.export.folder`)
and writes next to it, atomically. The optional libraries each needs (roifile, pynwb) are
imported inside the exporter; :func:`check_exports` fails early, before any work, when one is
missing.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger("calseg")

#: Format name -> (module, function, what it writes, the library it needs, the pip extra)
EXPORTERS = {
    "rois": ("calseg.export.rois", "write_imagej_rois", "rois.zip", "roifile", "rois"),
    "suite2p": ("calseg.export.suite2p", "write_suite2p", "suite2p/plane0/", None, None),
    "nwb": ("calseg.export.nwb", "write_nwb", "calseg.nwb", "pynwb", "nwb"),
}

__all__ = ["EXPORTERS", "parse_exports", "check_exports", "write_exports", "write_extras"]


def parse_exports(text) -> tuple:
    """``"suite2p,nwb"`` (or a sequence of names) -> ``("suite2p", "nwb")``, validated.

    Raises
    ------
    ConfigError
        A name is not one of :data:`EXPORTERS`.
    """
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in EXPORTERS:
            raise ConfigError(f"--export {item!r} is unknown; choose from {', '.join(EXPORTERS)} "
                              "(comma-separated)")
        if name not in out:
            out.append(name)
    return tuple(out)


def check_exports(formats) -> None:
    """Raise ConfigError now if a library a requested format needs is not installed."""
    import importlib.util

    for name in parse_exports(formats):
        lib, extra = EXPORTERS[name][3], EXPORTERS[name][4]
        if lib and importlib.util.find_spec(lib) is None:
            raise ConfigError(f"--export {name} needs {lib}: pip install 'calseg[{extra}]'")


def write_exports(result_dir, formats) -> dict:
    """Write each requested format for a result folder.

    Parameters
    ----------
    result_dir : str or Path
        A ``calseg run`` result folder; every export is written inside it.
    formats : str or sequence of str
        Names from :data:`EXPORTERS` (``"rois"``, ``"suite2p"``, ``"nwb"``), or a comma-separated
        string of them.

    Returns
    -------
    dict
        Format name -> path written.
    """
    import importlib

    formats = parse_exports(formats)
    check_exports(formats)
    written = {}
    for name in formats:
        module, func = EXPORTERS[name][:2]
        written[name] = Path(getattr(importlib.import_module(module), func)(result_dir))
    return written


def write_extras(result_dir, exports=(), *, report: bool = True) -> dict:
    """Everything a result folder gets after its core files: the report, the ROIs, the exports.

    ``summary.png`` + ``report.html`` (unless ``report=False``) and ``rois.zip`` are always
    written; each is skipped with a warning (not an error) when its optional library (matplotlib,
    roifile) is missing. Then each format in ``exports`` is written; a missing library there is an
    error (call :func:`check_exports` before the run to fail early).

    Parameters
    ----------
    result_dir : str or Path
        A complete ``calseg run`` result folder.
    exports : str or sequence of str
        Extra formats: ``"suite2p"``, ``"nwb"`` (``"rois"`` is always written).
    report : bool, default True

    Returns
    -------
    dict
        Name -> path of each file or folder written (``"summary"``, ``"report"``, ``"rois"``,
        ``"suite2p"``, ``"nwb"``).
    """
    from .rois import write_imagej_rois

    exports = tuple(e for e in parse_exports(exports) if e != "rois")
    check_exports(exports)
    written = {}
    try:
        written["rois"] = write_imagej_rois(result_dir)
    except ConfigError as exc:
        log.warning("rois.zip not written: %s", exc)
    written.update(write_exports(result_dir, exports))
    if report:  # last, so that its list of files is complete
        from ..report import write_report

        try:
            written["summary"], written["report"] = write_report(result_dir)
        except ConfigError as exc:
            log.warning("summary.png and report.html not written: %s", exc)
    return written
