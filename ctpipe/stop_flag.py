"""Preemption as a flag: a signal (SIGUSR2, SIGTERM) or code sets it; the trainer checks it after every step."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator, Sequence


class StopFlag:
    """Set by a signal (SIGUSR2, SIGTERM) or by code; the trainer checks it after every step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.previous_handlers: dict[int, Any] = {}

    def set(self, reason: str = "requested") -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @contextlib.contextmanager
    def installed(self, signals: Sequence[int] = (signal.SIGUSR2, signal.SIGTERM),
                  interrupt: type[BaseException] | None = None) -> Iterator["StopFlag"]:
        """Route ``signals`` to this flag for the duration of the block (main thread only).

        With ``interrupt``, a signal also raises that exception in the main thread: for work that never
        checks the flag (the final evaluation), where stopping at once beats being killed part-way.
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in signals}
        self.previous_handlers = dict(previous)

        def handler(signum: int, _frame: Any) -> None:
            self.set(signal.Signals(signum).name)
            if interrupt is not None:
                raise interrupt(f"stopped by {signal.Signals(signum).name}")

        for sig in signals:
            signal.signal(sig, handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
