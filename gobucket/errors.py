"""Errors raised by gobucket, all under one base class, :class:`GoBucketError`."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BucketClosedError",
    "BucketFullError",
    "DuplicateTaskError",
    "GoBucketError",
    "InvalidArgumentError",
    "NoPeerAvailableError",
    "PeerLostTaskError",
    "PoolFullError",
    "PoolUnavailableError",
    "RescueTimeoutError",
    "SinkWriteError",
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
    """A task with this id is still alive in the bucket; the fill was refused.

    Also raised while the ``on_execute`` of an ended task with this id is still
    running (it overran its life span, or was drained or rescued): two runs of
    one id never overlap.
    """

    def __init__(self, task_id: str, bucket: str = "", reason: str = "") -> None:
        where = f" in bucket {bucket!r}" if bucket else ""
        super().__init__(
            reason.format(task=repr(task_id), where=where)
            if reason
            else f"task {task_id!r} is already alive{where}; drain it or wait for it to end "
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


class RescueTimeoutError(GoBucketError, TimeoutError):
    """A rescue ran past its bound; everything it had was written before this was raised.

    Attributes:
        rescued: tasks whose ``on_panic`` returned and whose record was stored.
        pending: tasks whose ``on_panic`` had not returned (their records were
            still stored when a sink is set) or that were still ending.
        pending_ids: the ids of those tasks.
    """

    def __init__(self, rescued: int, pending_ids: list[str], timeout: float | None) -> None:
        shown = ", ".join(repr(i) for i in pending_ids[:5])
        more = f" and {len(pending_ids) - 5} more" if len(pending_ids) > 5 else ""
        bound = f" within {timeout:g}s" if timeout is not None else ""
        super().__init__(
            f"rescue did not finish{bound}: {rescued} task(s) rescued, "
            f"{len(pending_ids)} still pending ({shown}{more}); a hanging on_panic or end "
            "hook is the usual cause"
        )
        self.rescued = rescued
        self.pending = len(pending_ids)
        self.pending_ids = list(pending_ids)


class SinkWriteError(GoBucketError):
    """A rescue sink could not store some records (the others were stored).

    Attributes:
        failed: the records that were not stored.
        written: how many records of the same write were stored.
    """

    def __init__(self, message: str, failed: list[Any], written: int = 0) -> None:
        super().__init__(message)
        self.failed = list(failed)
        self.written = written


class PoolFullError(BucketFullError):
    """A shared task pool refused a task: it holds its ``max_pending`` tasks of that bucket."""


class PoolUnavailableError(GoBucketError, ConnectionError):
    """A shared task pool could not be reached, or did not answer in time.

    Nothing was stored: a command the pool ran too late (a frozen or overloaded
    server) stores nothing (see ``docs/pool.md``).
    """
