"""One training process per run folder: a lock file created exclusively, with a stale-lock rule.

``RUN/run.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFSv3+/Lustre/GPFS)
and holds who took it: host, pid, SLURM job id, start time. The holder refreshes its modification time
every ``stale_s / 6`` seconds. A second process is refused with the holder's identity, unless the lock is
stale:

* the holder ran on this host and its pid no longer exists (a killed process), or
* the holder is an earlier start of this very SLURM job (a requeued job keeps its job id, and SLURM never
  runs two starts of one job at once), or
* the lock has not been refreshed for ``stale_s`` seconds (a holder on another node that died; default
  900 s, ``CTPIPE_RUN_LOCK_STALE_S``).

A stale lock is moved aside under a unique name before a new one is created, so of two processes that find
the same stale lock only one takes it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from ctpipe.errors import DiskFullError, RunFolderError, is_disk_full

LOCK_NAME = "run.lock"
DEFAULT_STALE_S = 900.0


class RunLockedError(RunFolderError):
    """Another process holds the run folder."""


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """``ARRAYJOB_TASK`` for an array task, else ``SLURM_JOB_ID``; None outside SLURM."""
    environ = os.environ if environ is None else environ
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID") or None


def stale_after_s(environ: Mapping[str, str] | None = None) -> float:
    environ = os.environ if environ is None else environ
    value = environ.get("CTPIPE_RUN_LOCK_STALE_S", "")
    try:
        return float(value) if value else DEFAULT_STALE_S
    except ValueError:
        raise RunFolderError(f"CTPIPE_RUN_LOCK_STALE_S={value!r} is not a number of seconds") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    job_id: str | None
    started: float
    token: str

    @classmethod
    def me(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), slurm_job_id(), time.time(), uuid.uuid4().hex)

    def describe(self) -> str:
        job = f", SLURM job {self.job_id}" if self.job_id else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}{job}, since {since}"


def _read_holder(path: Path) -> Holder | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return Holder(str(data["host"]), int(data["pid"]), data.get("job_id"), float(data["started"]),
                      str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stale_reason(holder: Holder | None, age_s: float, me: Holder, stale_s: float) -> str | None:
    """Why the lock of ``holder`` (last refreshed ``age_s`` ago) may be taken over by ``me``; None if not."""
    if holder is not None and holder.host == me.host and holder.pid != me.pid and not _pid_alive(holder.pid):
        return f"its process (pid {holder.pid} on {holder.host}) no longer exists"
    if holder is not None and holder.job_id and holder.job_id == me.job_id and holder.token != me.token:
        return f"it was taken by an earlier start of this SLURM job ({holder.job_id})"
    if age_s > stale_s:
        return f"it was last refreshed {age_s:.0f} s ago (stale after {stale_s:.0f} s)"
    return None


class RunLock:
    """The lock of one run folder; use :func:`hold_run_lock`."""

    def __init__(self, run_dir: str | os.PathLike[str], stale_s: float | None = None, name: str = LOCK_NAME,
                 what: str = "", advice: str = "") -> None:
        self.path = Path(run_dir) / name
        self.what = what or f"run folder {Path(run_dir)}"
        self.advice = advice or "use another --run-dir (sbatch: another RUN_NAME)"
        self.stale_s = stale_after_s() if stale_s is None else stale_s
        self.me = Holder.me()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: str | None = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({**self.me.__dict__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:  # e.g. a full disk: never leave an empty lock behind
            self.path.unlink(missing_ok=True)
            if is_disk_full(error):
                raise DiskFullError(self.path) from error
            raise
        return True

    def _break(self, holder: Holder | None) -> bool:
        """Move a stale lock aside; False when another process replaced it meanwhile."""
        aside = self.path.with_name(f".{LOCK_NAME}.stale.{self.me.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else moved it: just try to create ours
        moved = _read_holder(aside)
        if holder is not None and (moved is None or moved.token != holder.token):
            with contextlib.suppress(OSError):  # a fresh lock of someone else: put it back
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def acquire(self) -> None:
        unwritten = False  # the last look found a fresh lock whose holder has not written who it is yet
        for _ in range(5):
            if self._create():
                self._start_heartbeat()
                return
            holder = _read_holder(self.path)
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                continue
            unwritten = holder is None and age < 60.0
            if unwritten:  # being written right now
                time.sleep(0.2)
                continue
            reason = stale_reason(holder, age, self.me, self.stale_s)
            if reason is None:
                who = holder.describe() if holder is not None else "an unknown process"
                raise RunLockedError(
                    f"{self.what} is in use by {who} ({self.path}); wait until it ends, or {self.advice}. If that "
                    f"process is gone for sure, delete {self.path}")
            if self._break(holder):
                self.took_over = reason
        if unwritten:
            raise RunLockedError(
                f"{self.what} is in use: another process created {self.path} but has not written who it is yet (a "
                f"process starting right now, or one stopped mid-start); wait until it ends, or {self.advice}. If no "
                f"other process uses it, delete {self.path}")
        raise RunLockedError(f"could not take the lock {self.path}: other processes keep replacing it; "
                             "is another job starting on this run folder?")

    def _start_heartbeat(self) -> None:
        interval = max(self.stale_s / 6.0, 0.5)

        def beat() -> None:
            while not self._stop.wait(interval):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name="ctpipe-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        holder = _read_holder(self.path)
        if holder is not None and holder.token == self.me.token:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold_run_lock(run_dir: str | os.PathLike[str], stale_s: float | None = None, name: str = LOCK_NAME,
                  what: str = "", advice: str = "") -> Iterator[RunLock]:
    """Hold ``run_dir``'s lock (``name``) for the block (the folder must exist)."""
    lock = RunLock(run_dir, stale_s, name, what, advice)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()



def prep_task_lock(out: str | os.PathLike[str], task_index: int, n_tasks: int) -> contextlib.AbstractContextManager[RunLock]:
    """The lock of one prep array task, beside ``out`` (``out`` itself stays untouched until the prep has
    checked its inputs): the same task started twice at once is refused, not interleaved."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    return hold_run_lock(out.parent, name=f".{out.name}.prep-task-{task_index:05d}-of-{n_tasks:05d}.lock",
                         what=f"prep task {task_index} of {n_tasks} for {out}",
                         advice="let it finish (a re-run afterwards skips what it completed)")


F = TypeVar("F", bound=Callable[..., Any])


def one_run_per_prep_task(prep: F) -> F:
    """Run ``prep(src, out, ..., task_index=, n_tasks=)`` holding its task's lock (see :func:`prep_task_lock`)."""
    signature = inspect.signature(prep)

    @functools.wraps(prep)
    def locked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        with prep_task_lock(given["out"], int(given["task_index"]), int(given["n_tasks"])):
            return prep(*args, **kwargs)

    return locked  # type: ignore[return-value]
