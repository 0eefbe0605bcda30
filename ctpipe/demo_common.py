"""What every ``make demo*`` shares: a console + log-file reporter and a follower for submitit jobs.

A demo is never silent for more than ``HEARTBEAT_S``: its own steps print a line, loops print progress
(:mod:`ctpipe.progress`), and while a submitit job runs its log lines are forwarded to the console (and a
"still running" line is printed when the job itself is quiet).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from ctpipe.progress import format_seconds

HEARTBEAT_S = 30.0


@dataclass
class DemoLog:
    """``say(message)`` prints ``[ctpipe <name>] message`` and appends it, time-stamped, to ``path``."""

    name: str
    path: Path
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    start: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def say(self, message: str) -> None:
        print(f"[ctpipe {self.name}] {message}", file=self.stream, flush=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def elapsed(self) -> str:
        return format_seconds(time.monotonic() - self.start)


class _Tail:
    """New complete lines of a growing text file."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "r", encoding="utf-8", errors="replace") as handle:
                handle.seek(self.offset)
                text = handle.read()
                self.offset = handle.tell()
        except FileNotFoundError:
            return []
        complete, newline, self.partial = (self.partial + text).rpartition("\n")
        if not newline:
            return []
        return [line.rstrip("\r") for line in complete.split("\n") if line.strip()]


def job_logs(job: Any) -> tuple[Path, Path]:
    """``(stdout, stderr)`` log files of a submitit job (the trainer logs to stderr)."""
    return Path(job.paths.stdout), Path(job.paths.stderr)


def follow_jobs(jobs: Sequence[Any], say: Callable[[str], None], heartbeat_s: float = HEARTBEAT_S,
                poll_s: float = 1.0, keep: Callable[[str], bool] = lambda line: True) -> None:
    """Forward the jobs' log lines (those ``keep`` accepts) to ``say`` until every job is done.

    When no line was forwarded for ``heartbeat_s``, says that the job is still running and where its log is.
    Results (and failures) are collected afterwards by :func:`ctpipe.launch.wait_all`.
    """
    tails = [(job, [_Tail(p) for p in job_logs(job)]) for job in jobs]
    start = last = time.monotonic()
    while True:
        done = all(job.done() for job in jobs)
        for job, job_tails in tails:
            for tail in job_tails:
                for line in tail.lines():
                    if keep(line):
                        say(f"  | {line}")
                        last = time.monotonic()
        if done:
            return
        now = time.monotonic()
        if now - last >= heartbeat_s:
            running = [job for job in jobs if not job.done()]
            logs = ", ".join(str(job_logs(job)[1]) for job in running)
            say(f"  still running after {format_seconds(now - start)}; job log: {logs}")
            last = now
        time.sleep(poll_s)


@contextmanager
def heartbeat(say: Callable[[str], None], what: str, interval_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Say ``still <what> after <elapsed>`` every ``interval_s`` while the block runs (in-process steps whose
    own log may pause longer, e.g. a validation pass on a loaded machine)."""
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(interval_s):
            say(f"  still {what} after {format_seconds(time.monotonic() - start)}")

    thread = threading.Thread(target=beat, name=f"heartbeat:{what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
