"""WorkLoad: what one bucket's ``on_execute`` calls are doing on the hook runners.

A bucket needs to know three things its actors cannot see by themselves:

* how many ``on_execute`` calls wait for a worker (*queued*) and how many run
  (*running*), so that saturation shows in ``stats()``;
* whether a task's ``on_execute`` has really started, so that a shutdown can
  rescue a task still queued for a worker at once instead of waiting for it;
* which ids still have an ``on_execute`` running after their task ended
  (*overrunning*: exhausted, drained or rescued while a plain hook could not be
  stopped), so that the same id is not filled and run twice at once.

The runner and the task's actor race on one question: "has this run started?"
The worker asks :meth:`WorkLoad.begin` before it calls the hook; the actor asks
:meth:`WorkLoad.cancel_unstarted` before it treats a run as never started.
Both answer under one small lock, so exactly one of them wins.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gobucket._ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from gobucket.context import TaskContext
    from gobucket.executors.runner import HookKind

__all__ = ["OVERRUN_WARNING", "HookObserver", "LoadSnapshot", "WorkLoad"]

OVERRUN_WARNING = 1.0
"""An ``on_execute`` returning this many seconds after its task ended is logged."""

logger = logging.getLogger("gobucket.executors")


class LoadSnapshot:
    """Counts read from a :class:`WorkLoad` at one instant."""

    __slots__ = ("overrunning", "queued", "running")

    def __init__(self, queued: int, running: int, overrunning: int) -> None:
        self.queued = queued
        self.running = running
        self.overrunning = overrunning


class HookObserver(Protocol):
    """Watches one bucket's hooks (metrics); set as :attr:`WorkLoad.observer` to enable.

    While no observer is set (the default), a task pays one ``None`` check per hook.
    """

    def timed(
        self, fn: Callable[..., Any], is_async: bool, kind: HookKind, due: float | None
    ) -> Callable[..., Any]:
        """``fn`` wrapped to record how long it runs (``is_async``: a coroutine function).

        ``due`` (monotonic seconds) is when a time bomb's first ``on_execute`` was
        due: the wrapper also records how late that call started.
        """
        ...


class WorkLoad:
    """One bucket's ``on_execute`` calls: queued, running, and overrunning ids.

    It outlives restarts of the bucket's actor (the facade owns it), so it also
    carries the bucket's optional :class:`HookObserver` (``observer``).
    """

    __slots__ = ("_lock", "_queued", "_running", "alive", "name", "observer", "warnings")

    def __init__(self, name: str) -> None:
        self.name = name
        self.observer: HookObserver | None = None
        self.alive: Callable[[], int] = _none_alive
        """How many tasks the bucket holds now: a read-only view of its actor's table,
        set by each BucketActor as it starts; readable from any thread without asking
        the actor (so a busy actor never blocks it)."""
        self._lock = threading.Lock()
        self._queued = 0
        self._running: dict[str, TaskContext] = {}
        self.warnings = RateLimitedLog(logger)

    def submitted(self) -> None:
        """An ``on_execute`` call was queued for a worker."""
        with self._lock:
            self._queued += 1

    def begin(self, ctx: TaskContext, *, queued: bool = True) -> bool:
        """A worker is about to call ``on_execute``; False if its task already ended.

        ``queued`` says the call was counted by :meth:`submitted`.
        """
        with self._lock:
            if queued:
                self._queued -= 1
            if ctx._cancelled:
                return False  # drained, exhausted or rescued while it waited
            ctx._started = True
            self._running[ctx.task_id] = ctx
            return True

    def end(self, ctx: TaskContext) -> None:
        """The ``on_execute`` call of ``ctx`` returned or raised."""
        with self._lock:
            if self._running.get(ctx.task_id) is ctx:
                del self._running[ctx.task_id]
        if ctx._cancelled:
            late = time.monotonic() - ctx._cancelled_at
            if late >= OVERRUN_WARNING:
                self.warnings.warning(
                    "overrun",
                    "[%s] the on_execute of task %s returned %.1f s after its task ended "
                    "(exhausted, drained or rescued); its id was reserved until then. Make "
                    "long hooks watch ctx.cancelled, or use async def hooks",
                    self.name,
                    ctx.task_id,
                    late,
                )

    def cancel_unstarted(self, ctx: TaskContext) -> bool:
        """Cancel ``ctx`` if its ``on_execute`` has not started; True if it was cancelled.

        After True, no worker will start it (``begin`` sees the cancel).
        """
        with self._lock:
            if ctx._started:
                return False
            ctx._cancel()
            return True

    def overrunning(self, task_id: str) -> TaskContext | None:
        """The context of ``task_id`` if its ``on_execute`` still runs after its task ended."""
        ctx = self._running.get(task_id)
        if ctx is not None and ctx._cancelled:
            return ctx
        return None

    def snapshot(self) -> LoadSnapshot:
        """The current counts."""
        with self._lock:
            running = list(self._running.values())
            queued = self._queued
        overrunning = sum(1 for ctx in running if ctx._cancelled)
        return LoadSnapshot(max(0, queued), len(running), overrunning)


def _none_alive() -> int:
    """No BucketActor has started yet."""
    return 0
