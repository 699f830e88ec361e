"""RateLimitedLog: log each kind of message at most once per interval, counting the rest.

Used wherever a fault can repeat thousands of times a second (a saturated worker
pool, a peer that keeps refusing, ``accept()`` out of descriptors): the first
occurrence is logged at once, later ones are counted and the count is added to
the next line logged for the same key.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs each key at most once per ``interval`` seconds on ``logger``."""

    __slots__ = ("_interval", "_last", "_lock", "_logger", "_suppressed")

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(
        self,
        level: int,
        key: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than ``interval`` ago.

        Returns True if the line was logged.
        """
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, suppressed, now - last if last is not None else 0.0)
        self._logger.log(level, message, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, message: str, *args: object) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, key, message, *args)
