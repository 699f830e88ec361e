"""Arm rescue for a process: on an escaping exception, or on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal, Protocol

__all__ = ["install_signal_handlers", "rescue_on_error"]

logger = logging.getLogger("gobucket.recovery")


class _Rescuable(Protocol):
    def rescue(self) -> int: ...


def _rescue_all(targets: tuple[_Rescuable, ...]) -> int:
    total = 0
    for target in targets:
        try:
            total += target.rescue()
        except Exception:
            logger.exception("rescue of %r failed", target)
    return total


class rescue_on_error(contextlib.ContextDecorator):
    """Rescue every given bucket when an exception escapes (the seed's ``defer RecoverPanic``).

    Use as a context manager or a decorator::

        with rescue_on_error(bucket):
            serve()

        @rescue_on_error(bucket)
        def handler(): ...

    The exception is re-raised after the rescue.
    """

    def __init__(self, *targets: _Rescuable) -> None:
        self.targets = targets

    def __enter__(self) -> rescue_on_error:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None:
            rescued = _rescue_all(self.targets)
            logger.error("%s escaped: rescued %d task(s)", exc_type.__name__, rescued)
        return False


def install_signal_handlers(
    *targets: _Rescuable,
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    exit: bool = True,
) -> Callable[[], None]:
    """On each of ``signals``, rescue every target before the process exits.

    Must be called from the main thread. With ``exit`` (the default) the
    process then exits with status ``128 + signal``; otherwise the previous
    handler runs. Returns a function that restores the previous handlers.
    """
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        rescued = _rescue_all(targets)
        logger.warning("signal %d: rescued %d task(s)", signum, rescued)
        if exit:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)
        old = previous.get(signum)
        if callable(old):
            old(signum, frame)
        elif old == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for signum in signals:
        previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore
