"""The context handed to every executor hook."""

from __future__ import annotations

import threading
import time

from gobucket.config import TaskType

__all__ = ["TaskContext"]

_wake_lock = threading.Lock()


class TaskContext:
    """What a hook knows about its task.

    A long ``on_execute`` should look at :attr:`cancelled` (or wait on
    :meth:`wait_cancelled`) and stop early once the task was exhausted,
    drained or rescued: its result is dropped by then.

    Attributes:
        task_id: the task's id.
        bucket: the name of the bucket holding it.
        task_type: immediate or time bomb.
        filled_at: ``time.monotonic()`` when the task was accepted.
        deadline: ``time.monotonic()`` when its life span runs out.
        attempt: 1 on the first run of ``on_execute``, 2 on the first retry, ...
    """

    __slots__ = (
        "_cancelled",
        "_cancelled_at",
        "_event",
        "_started",
        "attempt",
        "bucket",
        "deadline",
        "filled_at",
        "task_id",
        "task_type",
    )

    def __init__(
        self,
        task_id: str,
        bucket: str,
        task_type: TaskType,
        filled_at: float,
        deadline: float,
    ) -> None:
        self.task_id = task_id
        self.bucket = bucket
        self.task_type = task_type
        self.filled_at = filled_at
        self.deadline = deadline
        self.attempt = 0
        self._cancelled = False
        self._cancelled_at = 0.0
        self._started = False  # this attempt's on_execute was taken by a worker
        self._event: threading.Event | None = None

    @property
    def id(self) -> str:
        """The task's id (same as :attr:`task_id`)."""
        return self.task_id

    @property
    def cancelled(self) -> bool:
        """True once the task was exhausted, drained or rescued."""
        return self._cancelled

    def remaining(self) -> float:
        """Seconds left of the task's life span (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block until the task is cancelled or ``timeout`` passes; return :attr:`cancelled`."""
        if self._cancelled:
            return True
        with _wake_lock:
            if self._event is None:
                self._event = threading.Event()
                if self._cancelled:
                    self._event.set()
        return self._event.wait(timeout)

    def _cancel(self) -> None:
        # The flag is written before the event is read, and wait_cancelled
        # reads the flag after it published the event: no lock needed here.
        self._cancelled_at = time.monotonic()
        self._cancelled = True
        event = self._event
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "live"
        return f"TaskContext({self.task_id!r}, bucket={self.bucket!r}, {state})"
