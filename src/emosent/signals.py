"""SIGTERM and SIGINT as a clean stop: an exception in the main process, so `finally` blocks and
Lightning's teardown run and the command can say what was kept."""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing import AuthenticationError

_received: list[int] = []


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Raise Interrupted in the main process on SIGTERM or SIGINT; a second signal stops at once.
    Data loader workers (forked, so they inherit the handler) ignore them: the main process shuts
    them down."""
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            return
        _received.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise Interrupted(signum)

    def quiet_workers(exc_type, exc, tb):
        # A loader worker's tensor-passing thread (multiprocessing.resource_sharer) loses its peer
        # when the main process stops: that is expected, not worth a traceback over our message.
        if os.getpid() != main_pid and issubclass(exc_type, (ConnectionError, EOFError, AuthenticationError)):
            return
        sys.__excepthook__(exc_type, exc, tb)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    sys.excepthook = quiet_workers  # inherited by the forked workers


def received() -> int | None:
    """The first stop signal received, if any."""
    return _received[0] if _received else None


def raise_if_interrupted() -> None:
    """For loops to call between units of work: the handler's exception can be swallowed where it
    lands (a `__del__`, a library's broad `except`); the signal is not forgotten."""
    if _received:
        raise Interrupted(_received[0])
