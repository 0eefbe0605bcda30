"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written file: either the old content or the complete new one. The file ends
with the permissions a plain ``open(target, "w")`` would have given it: those of the file it replaces, else
``0o666`` less the process umask (so collaborators on a shared project folder can read it when the umask
says so). A full disk raises :class:`ctpipe.errors.DiskFullError` naming the target, with nothing left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ctpipe.errors import DiskFullError, is_disk_full


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it to read it)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_write_mode(target: Path) -> int:
    """The mode ``open(target, "w")`` would leave: the existing file's, else 0o666 less the umask."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def no_space_left(folder: Path, probe_bytes: int = 1 << 16) -> bool:
    """True when ``folder``'s file system (or the user's quota there) cannot take ``probe_bytes`` more."""
    probe = folder / f".ctpipe-space-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as error:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        os.write(fd, b"\0" * probe_bytes)
        os.fsync(fd)
    except OSError as error:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()
    return False


def check_free_space(target: str | os.PathLike[str], needed_bytes: int) -> None:
    """Refuse to start a write of about ``needed_bytes`` that cannot fit (a library that meets a full disk
    half-way may leave a mess, e.g. HDF5)."""
    folder = Path(target).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed_bytes:
        raise DiskFullError(f"{folder} ({free} bytes free, {Path(target).name} needs about {needed_bytes})")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is fsynced and renamed onto ``target``.

    On an exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), plain_write_mode(target))
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as error:
        # before the temporary file is removed (that frees space): libraries such as torch.save report a
        # full disk without its errno, so a failed write is checked against the file system itself
        full = isinstance(error, OSError | RuntimeError) and not isinstance(error, DiskFullError) and (
            is_disk_full(error) or no_space_left(target.parent))
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if full:
            raise DiskFullError(target) from error
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def atomic_write_frame(frame: Any, target: str | os.PathLike[str], **to_csv: Any) -> Path:
    """Write a pandas DataFrame as CSV (``index=False`` unless ``to_csv`` says otherwise), atomically."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, **{"index": False, **to_csv})
    return Path(target)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), imported on first use."""
    import matplotlib  # lazy: matplotlib is heavy and its Agg backend is chosen only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: see above

    return plt


def atomic_write_png(fig: Any, target: str | os.PathLike[str], dpi: int) -> Path:
    """Lay out a matplotlib figure, write it as a PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return Path(target)
