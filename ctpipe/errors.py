"""The base class of every error that is the user's to fix (a bad option, path, file or run folder).

``ctpipe``'s command line turns these into one line -- what is wrong, where, and how to fix it -- and a
non-zero exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Bad input: the message names the option or file, the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid; the message says where and how to fix it."""


class RunFolderError(UserError):
    """A run folder cannot be used as asked (not a folder, in use by another process, resume refused)."""


class DiskFullError(UserError, OSError):
    """No space left on the device that holds ``path``; nothing partial was left behind."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.ENOSPC, f"no space left on {path}: free space there (or write elsewhere) and "
                         "run the same command again; nothing partial was kept")
        self.path = str(path)

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(error: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when h5py or torch wrapped it in another exception."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28" in text:
            return True
        current = current.__cause__ or current.__context__
    return False
