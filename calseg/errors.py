"""Exceptions and warnings raised by calseg.

Every error a user can cause is a :class:`CalsegError`; the CLI turns it into a one-line
message and exit code 1. Anything else is a bug and keeps its traceback under ``--debug``.
"""


class CalsegError(Exception):
    """Base class of all errors calseg reports to users."""


class InputError(CalsegError):
    """A recording, table or result folder cannot be used (missing, corrupt, wrong shape...)."""


class ConfigError(CalsegError):
    """A setting is unknown or outside the range it allows."""


class OutputError(CalsegError):
    """The output location cannot be written."""


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped on its iteration budget before meeting its tolerance."""
