"""Progress of long loops: a tqdm bar on a terminal, otherwise a log line with rate and ETA every 30 s.

Batch logs (SLURM, submitit, ``make demo > log``) get a line when the loop starts, at least every
``interval_s`` while it runs -- written by a small daemon thread, so one slow item does not make the log go
quiet -- and one when it ends. ``CTPIPE_PROGRESS=bar|log|off`` overrides the choice; lines go to stderr so a
command's stdout (e.g. ``--json``) stays machine-readable.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, TextIO, TypeVar

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
MODE_ENV = "CTPIPE_PROGRESS"
MODES = ("bar", "log", "off")

T = TypeVar("T")


def choose_mode(stream: TextIO, mode: str | None = None) -> str:
    """``mode``, else ``$CTPIPE_PROGRESS``, else ``bar`` on a terminal and ``log`` elsewhere."""
    chosen = mode or os.environ.get(MODE_ENV, "").strip().lower() or None
    if chosen is None:
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "log"
    if chosen not in MODES:
        raise ValueError(f"{MODE_ENV}={chosen!r}: choose one of {', '.join(MODES)} (or leave it unset)")
    return chosen


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def singular(unit: str) -> str:
    """``batches`` -> ``batch``, ``volumes`` -> ``volume`` (for ``s/<unit>`` and the tqdm bar)."""
    if unit.endswith(("ches", "shes", "sses")):
        return unit[:-2]
    return unit[:-1] if unit.endswith("s") and len(unit) > 1 else unit


def status_line(desc: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
    """``desc: 3/10 volumes (30%), 0.25 volumes/s, elapsed 12 s, ETA 28 s``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    count = f"{done}/{total} {unit}" if total is not None else f"{done} {unit}"
    pct = f" ({100.0 * done / total:.0f}%)" if total else ""
    speed = f"{rate:.3g} {unit}/s" if rate >= 0.1 or rate == 0 else f"{1.0 / rate:.3g} s/{singular(unit)}"
    eta = ""
    if total is not None and done < total:
        eta = f", ETA {format_seconds((total - done) / rate)}" if rate > 0 else ", ETA unknown"
    return f"{desc}: {count}{pct}, {speed}, elapsed {format_seconds(elapsed)}{eta}"


class Progress:
    """Count items of a long loop; ``with Progress(n, "prep", "files") as p: ... p.update()``."""

    def __init__(self, total: int | None, desc: str, unit: str = "items", interval_s: float = LOG_INTERVAL_S,
                 stream: TextIO | None = None, mode: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.mode = choose_mode(self.stream, mode)
        self.interval_s = interval_s
        self.clock = clock
        self.done = 0
        self._start = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        if self.mode == "bar":
            self._bar = tqdm(total=total, desc=desc, unit=singular(unit), file=self.stream)
        elif self.mode == "log":
            self._write(status_line(desc, 0, total, unit, 0.0))
            self._thread = threading.Thread(target=self._heartbeat, name=f"progress:{desc}", daemon=True)
            self._thread.start()

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                line = status_line(self.desc, self.done, self.total, self.unit, self.clock() - self._start)
            self._write(line)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            elapsed = self.clock() - self._start
            self._write(f"{self.desc}: done, {self.done} {self.unit} in {format_seconds(elapsed)}")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], desc: str, unit: str = "items", total: int | None = None,
          interval_s: float = LOG_INTERVAL_S, stream: TextIO | None = None, mode: str | None = None) -> Iterator[T]:
    """Yield ``items`` while counting them (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, interval_s, stream, mode) as progress:
        for item in items:
            yield item
            progress.update()


class RateLog:
    """Decides when a progress line is due (every ``every`` items, and at least every ``interval_s`` seconds)
    and formats rate and ETA, so batch logs are never silent for long on slow steps."""

    def __init__(self, total: int, done: int, every: int, interval_s: float) -> None:
        self.total, self.start_done, self.done = total, done, done
        self.every, self.interval_s = max(every, 1), interval_s
        self.start = self.last = time.monotonic()

    def step(self, n: int = 1) -> bool:
        """Count ``n`` items; True when a line is due."""
        self.done += n
        now = time.monotonic()
        due = self.done % self.every == 0 or now - self.last >= self.interval_s
        if due:
            self.last = now
        return due

    def rate_eta(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{rate:.3g} it/s eta {_hms(eta)}"


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
