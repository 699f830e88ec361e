"""Arm rescue for a process: on an escaping exception, or on SIGTERM/SIGINT.

Both paths shut their targets down the same way, and in this order:

1. every target refuses new fills at once (the door closes before the rescue,
   so a thread still filling cannot slip a task in behind it);
2. every live task is rescued through ``on_panic`` and written to the bucket's
   rescue sink (or its fallback file), until nothing is alive or ``timeout``
   seconds have passed.

The signal handler only starts this work on a thread of its own and returns:
it may have interrupted the main thread in the middle of a bucket's handler,
which must be free to finish for the rescue to go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal, Protocol

__all__ = ["EXIT_RESCUE_INCOMPLETE", "install_signal_handlers", "rescue_on_error"]

logger = logging.getLogger("gobucket.recovery")

EXIT_RESCUE_INCOMPLETE = 70
"""Exit status of the signal path when some live task was neither ended nor stored.

A complete rescue exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT),
as if the signal had killed the process; 70 (``EX_SOFTWARE``) tells a supervisor
(systemd, Kubernetes, a shell) that tasks may have been lost.
"""


class _Rescuable(Protocol):
    def rescue(self) -> int: ...


def _shutdown_one(target: Any, timeout: float) -> tuple[int, bool]:
    """Close one target's door and rescue it; return (tasks rescued, complete)."""
    shutdown = getattr(target, "_shutdown", None)
    if shutdown is None:  # anything else with a rescue() method
        return int(target.rescue()), True
    report = shutdown(0.0, False, timeout, hurry=True)
    return report.records, bool(report.complete)


def _shutdown_all(targets: tuple[_Rescuable, ...], timeout: float) -> tuple[int, bool]:
    """Shut every target down at once (each on its own thread); bounded by ``timeout``."""
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def run(target: Any) -> None:
        try:
            outcome = _shutdown_one(target, timeout)
        except Exception:
            logger.exception("rescue of %r failed", target)
            outcome = (0, False)
        with lock:
            results.append(outcome)

    threads = [
        threading.Thread(target=run, args=(t,), name="gobucket-rescue", daemon=True)
        for t in targets
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 1.0  # each target bounds itself; this is a backstop
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        rescued = sum(count for count, _ in results)
        complete = len(results) == len(threads) and all(ok for _, ok in results)
    return rescued, complete


class rescue_on_error(contextlib.ContextDecorator):
    """Shut the given buckets down when an exception escapes (the seed's ``defer RecoverPanic``).

    Use as a context manager or a decorator::

        with rescue_on_error(bucket):
            serve()

        @rescue_on_error(bucket)
        def handler(): ...

    On an exception (``KeyboardInterrupt`` included) each bucket refuses new
    fills, then every live task is rescued (bounded by ``timeout`` seconds);
    the exception is re-raised after the rescue. The buckets stay closed.
    """

    def __init__(self, *targets: _Rescuable, timeout: float = 10.0) -> None:
        self.targets = targets
        self.timeout = timeout

    def __enter__(self) -> rescue_on_error:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None:
            rescued, complete = _shutdown_all(self.targets, self.timeout)
            logger.error(
                "%s escaped: rescued %d task(s)%s",
                exc_type.__name__,
                rescued,
                "" if complete else "; some tasks could not be stored (see above)",
            )
        return False


def install_signal_handlers(
    *targets: _Rescuable,
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    exit: bool = True,
    timeout: float = 10.0,
) -> Callable[[], None]:
    """On each of ``signals``, shut every target down and rescue its tasks.

    Must be called from the main thread. On a signal, every target refuses new
    fills at once, then its live tasks are rescued (``on_panic``, rescue sink,
    fallback file) for at most ``timeout`` seconds. With ``exit`` (the default)
    the process then exits with ``128 + signal`` if every live task ended or
    was stored, else with :data:`EXIT_RESCUE_INCOMPLETE`; without ``exit`` the
    previous handler runs once the rescue is done (on the main thread, so
    SIGINT still raises ``KeyboardInterrupt`` there). A second signal during the
    rescue is ignored. Returns a function that restores the previous handlers.
    """
    previous: dict[int, Any] = {}
    state = {"rescuing": False}
    delegate: set[int] = set()

    def finish(signum: int) -> None:
        rescued, complete = _shutdown_all(targets, timeout)
        logger.warning(
            "signal %d: rescued %d task(s)%s",
            signum,
            rescued,
            "" if complete else "; some live tasks were neither ended nor stored",
        )
        if exit:
            _flush()
            os._exit(128 + signum if complete else EXIT_RESCUE_INCOMPLETE)
        state["rescuing"] = False
        delegate.add(signum)
        # Deliver the signal again, to the main thread: handler() runs there
        # (waking it from any wait) and hands it to the previous handler.
        main = threading.main_thread().ident
        if main is not None:
            signal.pthread_kill(main, signum)

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum in delegate:
            delegate.discard(signum)
            _run_previous(previous.get(signum), signum, frame)
            return
        if state["rescuing"]:
            logger.warning("signal %d: a rescue is already under way", signum)
            return
        state["rescuing"] = True
        # Not a daemon: an interpreter that is exiting waits for the rescue.
        threading.Thread(target=finish, args=(signum,), name="gobucket-signal-rescue").start()

    for signum in signals:
        previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore


def _run_previous(old: Any, signum: int, frame: FrameType | None) -> None:
    if callable(old):
        old(signum, frame)
    elif old == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
