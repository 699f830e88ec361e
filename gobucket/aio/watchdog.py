"""A loop-lag watchdog: warns when something blocks an event loop, naming the culprit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

__all__ = ["DEFAULT_LAG_WARNING", "LoopWatchdog", "unwatch_loop", "watch_loop"]

logger = logging.getLogger("gobucket.aio")

DEFAULT_LAG_WARNING = 0.1
"""Seconds a loop may go without running its callbacks before a warning (asyncio's
debug mode uses the same figure for a slow callback)."""


class LoopWatchdog:
    """Warns (logger ``gobucket.aio``) when ``loop`` is blocked for ``threshold`` seconds.

    The loop beats every ``threshold / 2`` seconds (a timer callback that
    only records the time); a daemon thread looks at the last beat as often.
    When the beat is late by ``threshold`` or more while the loop is running,
    something holds the loop: a coroutine that calls blocking code
    (``time.sleep``, a synchronous HTTP client, heavy CPU work). The thread
    logs a warning right then, naming the asyncio task that holds the loop
    (gobucket's async hooks run in tasks named after the hook, the task id and
    the bucket), and one more when the loop runs again, with how long it was
    held. Every other coroutine on that loop (all the async hooks, the
    application's requests) waited that long.

    Cost: one timer callback on the loop and one thread wake-up per half
    ``threshold``.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, threshold: float = DEFAULT_LAG_WARNING
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        self.loop = loop
        self.threshold = float(threshold)
        self.stalls = 0
        """How many stalls were warned about so far."""
        self.longest = 0.0
        """The longest stall seen so far, in seconds (measured once the loop ran again)."""
        self._interval = self.threshold / 2
        self._beat = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: float | None = None  # the last beat before the stall being reported
        self._culprit = ""

    def start(self) -> None:
        """Start beating on the loop and watching it (safe from any thread)."""
        if self._thread is not None:
            return
        self._beat = time.monotonic()
        self.loop.call_soon_threadsafe(self._tick)
        self._thread = threading.Thread(
            target=self._watch, name="gobucket-loop-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the thread ends within half a threshold)."""
        self._stop.set()
        timer, self._timer = self._timer, None
        if timer is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed already
                self.loop.call_soon_threadsafe(timer.cancel)

    def _tick(self) -> None:
        self._beat = time.monotonic()
        if not self._stop.is_set():
            self._timer = self.loop.call_later(self._interval, self._tick)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            if self.loop.is_closed():
                break
            self._check()
        self._check(final=True)

    def _check(self, *, final: bool = False) -> None:
        """Warn about a stall that began, or (once the loop beat again) how long it lasted."""
        beat = self._beat
        if self._warned is not None and beat != self._warned:
            held = max(0.0, beat - self._warned - self._interval)
            self.longest = max(self.longest, held)
            logger.warning(
                "the event loop ran again after being blocked for %.3f s by %s",
                held,
                self._culprit,
            )
            self._warned = None
        if final or self._warned is not None or not self.loop.is_running():
            return
        late = time.monotonic() - beat - self._interval
        if late >= self.threshold:
            self._warned = beat
            self._culprit = _running_task(self.loop)
            self.stalls += 1
            logger.warning(
                "the event loop has been blocked for %.3f s (warning at %.3f s) by %s: a "
                "coroutine is running blocking code, and every other coroutine on this "
                "loop waits; use await, asyncio.to_thread() or a plain def hook (run on "
                "gobucket's worker threads) for blocking work",
                late,
                self.threshold,
                self._culprit,
            )


def _running_task(loop: asyncio.AbstractEventLoop) -> str:
    """What holds the loop: the asyncio task running now on it, if any."""
    try:
        task = asyncio.current_task(loop)
    except RuntimeError:
        task = None
    if task is None:
        return "a callback (not a task)"
    name = task.get_name()
    if name.startswith("gobucket hook "):
        return name[len("gobucket ") :]
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", None) or repr(coro)
    return f"task {name!r} ({where})"


_lock = threading.Lock()
_watchdogs: dict[asyncio.AbstractEventLoop, tuple[LoopWatchdog, int]] = {}


def watch_loop(
    loop: asyncio.AbstractEventLoop, threshold: float = DEFAULT_LAG_WARNING
) -> LoopWatchdog:
    """The watchdog of ``loop`` (started; shared by every caller on that loop).

    Each call must be matched by one :func:`unwatch_loop`; the last one stops
    it. The first caller's ``threshold`` holds for the loop.
    """
    with _lock:
        for other in [other for other in _watchdogs if other.is_closed()]:
            _watchdogs.pop(other)[0].stop()
        entry = _watchdogs.get(loop)
        if entry is None:
            dog = LoopWatchdog(loop, threshold)
            dog.start()
            _watchdogs[loop] = (dog, 1)
            return dog
        _watchdogs[loop] = (entry[0], entry[1] + 1)
        return entry[0]


def unwatch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Release one :func:`watch_loop`; the last release stops the loop's watchdog."""
    with _lock:
        entry = _watchdogs.get(loop)
        if entry is None:
            return
        dog, count = entry
        if count > 1:
            _watchdogs[loop] = (dog, count - 1)
            return
        del _watchdogs[loop]
    dog.stop()
