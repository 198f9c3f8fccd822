"""Signals during a command: SIGTERM and SIGINT become a flag the training loop reads at a step
boundary (`stop_signals` / `stop_requested`), or an `Interrupted` exception that unwinds through
`finally` blocks, so temporary files are removed and locks released (`terminate_raises`)."""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT ended a command cleanly; `code` is the exit status (128 + signal number).

    A KeyboardInterrupt, so that `except Exception` does not swallow it, atomic writes on its way
    remove their temporary files, and notebooks and callers treat it as Ctrl-C."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.code = signum, 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


_STOP: dict[str, int | None] = {"signum": None}


def stop_requested() -> int | None:
    """The signal number of a SIGTERM/SIGINT received inside `stop_signals`, else None."""
    return _STOP["signum"]


@contextlib.contextmanager
def stop_signals(enabled: bool = True):
    """For the body, SIGTERM and SIGINT only set stop_requested(); the first one restores the
    previous handlers, so a second signal acts at once. Main thread only (elsewhere: no change)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(signum, frame):
        _STOP["signum"] = signum
        for s, handler in previous.items():
            signal.signal(s, handler)

    _STOP["signum"] = None
    for s in previous:
        signal.signal(s, handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _STOP["signum"] = None


@contextlib.contextmanager
def terminate_raises():
    """For the body, SIGTERM raises Interrupted (as SIGINT raises KeyboardInterrupt), so `finally`
    blocks remove temporary files and release locks. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Interrupted(f"interrupted by {signal_name(signum)}: stopped before finishing; earlier files are "
                          "intact", signum)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
