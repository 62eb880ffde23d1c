"""Advisory per-recording locks, so that overlapping batch runs never work on the same recording.

A lock is the file ``LOCKDIR/NAME.lock`` held with ``fcntl.flock(LOCK_EX | LOCK_NB)``. The kernel
releases a flock when its holder exits for any reason (including SIGKILL), so a lock left behind
by a killed run is never "stale" in the sense of blocking anyone: the next run simply locks the
leftover file again (and logs whose it was). The file holds JSON describing the holder
(``pid``, ``host``, ``started``, ``argv``) for the messages of runs that find it locked.

Releasing unlinks the file while still holding the lock; an acquirer therefore checks, after
locking, that the file it locked is still the one at the path (same device and inode) and retries
otherwise, so two processes can never both believe they hold the same lock.

Locks are advisory and local to what ``flock`` covers: processes on one machine, and NFSv4
clients (Linux emulates ``flock`` with NFS byte-range locks). A file system without lock support
raises :class:`~calseg.errors.OutputError`.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import OutputError

__all__ = ["FileLock", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_json(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        obj = json.loads(data.decode("utf-8")) if data.strip() else None
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


class FileLock:
    """Non-blocking exclusive lock on ``path`` (see the module docstring).

    Parameters
    ----------
    path : path-like
        The lock file; its folder is created when missing.

    Attributes
    ----------
    holder : dict or None
        After a failed :meth:`acquire`: what the current holder wrote (pid, host, started), when
        readable.
    previous : dict or None
        After a successful :meth:`acquire`: what a former holder left in the file (a run that
        died without releasing), else None.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fd: int | None = None
        self.holder: dict | None = None
        self.previous: dict | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; return whether it was taken (never waits)."""
        if self.fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this object")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.path.parent}: cannot create the lock folder "
                              f"({exc.strerror or exc})") from None
        for _attempt in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create the lock file "
                                  f"({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    self.holder = _read_json(fd)
                    os.close(fd)
                    return False
                os.close(fd)
                raise OutputError(f"{self.path}: cannot lock ({exc.strerror or exc}); the file "
                                  "system of the output folder may not support locks") from None
            try:
                st_path = os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)  # released (unlinked) between our open and our flock: try again
                continue
            st_fd = os.fstat(fd)
            if (st_fd.st_dev, st_fd.st_ino) != (st_path.st_dev, st_path.st_ino):
                os.close(fd)
                continue
            self.previous = _read_json(fd)
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[:8]}
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
            except OSError:
                pass  # the description is informative only; the flock is what counts
            self.fd = fd
            self.holder = info
            return True
        raise OutputError(f"{self.path}: could not take the lock (the file keeps being replaced)")

    def release(self) -> None:
        """Give the lock up and remove the file (safe to call when not held)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def describe_holder(self) -> str:
        """'pid 123 on host, since 2026-...' from :attr:`holder`, or a generic phrase."""
        h = self.holder or {}
        if not h.get("pid"):
            return "another calseg run"
        where = f" on {h['host']}" if h.get("host") else ""
        since = f" since {h['started']}" if h.get("started") else ""
        return f"pid {h['pid']}{where}{since}"

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
