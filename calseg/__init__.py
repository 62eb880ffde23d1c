"""calseg: neurons from calcium-imaging recordings, with a certificate of optimality.

Attributes are imported lazily so that ``import calseg`` (and ``calseg --help``) stays fast and
never loads numba until a numerical routine is actually used.
"""
from ._version import __version__

_LAZY = {
    "read_movie": ("calseg.io.tiff", "read_movie"),
    "Movie": ("calseg.io.tiff", "Movie"),
    "simulate": ("calseg.simulate", "simulate"),
    "score": ("calseg.score", "score"),
    "factorize": ("calseg.factorize", "factorize"),
    "Factorization": ("calseg.factorize", "Factorization"),
    "Certificate": ("calseg.certify.gap", "Certificate"),
    "Settings": ("calseg.config", "Settings"),
    "segment": ("calseg.pipeline", "segment"),
    "Result": ("calseg.pipeline", "Result"),
    "deconvolve": ("calseg.deconvolve", "deconvolve"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'calseg' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
