"""Errors raised by gobucket, all under one base class, :class:`GoBucketError`."""

from __future__ import annotations

__all__ = [
    "BucketClosedError",
    "BucketFullError",
    "DuplicateTaskError",
    "GoBucketError",
    "InvalidArgumentError",
    "NoPeerAvailableError",
    "PeerLostTaskError",
    "TaskActorCrashedError",
    "TaskNotFoundError",
]


class GoBucketError(Exception):
    """Base class of every error gobucket raises on purpose."""


class InvalidArgumentError(GoBucketError, ValueError, TypeError):
    """An argument is out of range or of the wrong type; nothing was changed.

    It is also a :class:`ValueError` and a :class:`TypeError`, so code that
    guards against either keeps working.
    """


class DuplicateTaskError(GoBucketError):
    """A task with this id is still alive in the bucket; the fill was refused."""

    def __init__(self, task_id: str, bucket: str = "") -> None:
        where = f" in bucket {bucket!r}" if bucket else ""
        super().__init__(
            f"task {task_id!r} is already alive{where}; drain it or wait for it to end "
            "before filling the same id again"
        )
        self.task_id = task_id


class BucketFullError(GoBucketError):
    """The bucket holds ``max_bucket`` live tasks; the fill was refused.

    The Go original called this "task buffer exceeded".
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)


class TaskNotFoundError(GoBucketError, LookupError):
    """No live task has this id (it never existed, already ended, or is ending)."""

    def __init__(self, task_id: str, reason: str = "is not alive") -> None:
        super().__init__(f"task {task_id!r} {reason}")
        self.task_id = task_id


class BucketClosedError(GoBucketError, RuntimeError):
    """The bucket was closed (or stopped after repeated failures) and takes no more work."""


class TaskActorCrashedError(GoBucketError):
    """The actor running a task failed; the task was ended through ``on_execute_error``."""


class NoPeerAvailableError(BucketFullError):
    """A group fill found the local bucket full and no peer with room (nothing was placed)."""


class PeerLostTaskError(GoBucketError, ConnectionError):
    """A peer was lost after a task was sent to it and before it acknowledged it.

    The peer may or may not have taken the task; it was not sent anywhere else
    (that could run it twice). The group also reports it through
    ``on_peer_schedule_failed``.
    """
