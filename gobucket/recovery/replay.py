"""replay(): fill rescued tasks back, at least once, on their original wall-clock schedule."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from gobucket.config import TaskType
from gobucket.errors import BucketFullError, DuplicateTaskError, GoBucketError, SinkWriteError

if TYPE_CHECKING:
    from gobucket.recovery.record import RescuedTask
    from gobucket.recovery.sinks import RescueSink

__all__ = ["replay"]

logger = logging.getLogger("gobucket.recovery")

_REMOVE_BATCH = 256


class ReplayBucket(Protocol):
    """What replay needs of a :class:`~gobucket.TaskBucket` (typed here, not imported:
    recovery sits below the facades)."""

    @property
    def name(self) -> str: ...

    def fill(
        self,
        task_type: TaskType,
        id: str,
        data: Any = None,
        *,
        run_after: float | None = None,
        life_span: float | None = None,
    ) -> None: ...

    def _fill_exhausted(self, task_type: TaskType, task_id: str, data: Any) -> None: ...


class ReplayGroup(Protocol):
    """What replay needs of a :class:`~gobucket.TaskBucketGroup`."""

    def get_bucket(self, name: str) -> ReplayBucket: ...

    def fill(
        self,
        bucket: str,
        id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: float | None = None,
        life_span: float | None = None,
    ) -> Any: ...


def _split(target: ReplayBucket | ReplayGroup) -> tuple[ReplayBucket | None, ReplayGroup | None]:
    """``(bucket, None)`` for a bucket, ``(None, group)`` for a group (it has ``get_bucket``)."""
    if hasattr(target, "get_bucket"):
        return None, cast("ReplayGroup", target)
    return target, None


def replay(
    sink: RescueSink,
    target: ReplayBucket | ReplayGroup | None = None,
    *,
    into: RescueSink | None = None,
) -> int:
    """Fill every task stored in ``sink`` back into ``target``; return how many were filled.

    ``replay(sink, into=pool)`` instead moves every record into another sink —
    a :class:`~gobucket.RedisTaskPool`, where live nodes pick them up on their
    original wall-clock schedule — and returns how many were moved; each is
    removed from ``sink`` once ``into`` stored it (at least once, as below).

    Time is wall-clock time: a record carries its absolute ``due_at`` and
    ``deadline_at``, and the time the process was down counts. For each task,
    at the moment it is filled:

    * its life span ran out (``deadline_at`` passed) → it is filled as exhausted
      and ends through ``on_task_exhausted`` at once (counted as filled) — never
      dropped silently;
    * a time bomb still due in the future → a time bomb that runs at its
      original ``due_at``;
    * otherwise (immediate, started, or due during the downtime) → it runs now;

    and its life span ends at its original ``deadline_at`` in every case.

    Each task is removed from the sink only once ``target`` accepted it, so a
    crash during replay loses nothing — but a task filled just before such a
    crash is replayed again next time: delivery is **at least once**. A task
    whose id is already alive counts as delivered and is removed. Tasks for
    another bucket name than a plain ``TaskBucket``'s are left in the sink.
    Replay stops (leaving the rest stored) when the target is full.
    """
    if into is not None:
        if target is not None:
            raise TypeError("replay() takes a target or into=, not both")
        return _move(sink, into)
    if target is None:
        raise TypeError("replay() needs a target bucket or group, or into=")
    bucket, _ = _split(target)
    filled = 0
    delivered: list[RescuedTask] = []
    try:
        for task in sink.read():
            if bucket is not None and task.bucket != bucket.name:
                continue
            try:
                _fill(target, task)
            except DuplicateTaskError:
                delivered.append(task)
                continue
            except BucketFullError:
                logger.warning("replay stopped: the target is full")
                break
            except GoBucketError:
                logger.exception("replay could not fill task %r; left in the sink", task.task_id)
                continue
            filled += 1
            delivered.append(task)
            if len(delivered) >= _REMOVE_BATCH:
                sink.remove(delivered)
                delivered = []
    finally:
        if delivered:
            sink.remove(delivered)
    return filled


def _fill(target: ReplayBucket | ReplayGroup, task: RescuedTask) -> None:
    """Fill one record into ``target`` on its wall-clock schedule (raises as ``fill`` does)."""
    single, group = _split(target)

    now = time.time()
    due_at = task.due_at if task.due_at is not None else task.rescued_at + task.remaining_wait
    deadline_at = (
        task.deadline_at if task.deadline_at is not None else task.rescued_at + task.remaining_life
    )
    life = deadline_at - now
    wait = due_at - now if task.task_type is TaskType.TIME_BOMB else 0.0
    # A time bomb whose deadline comes before its due time would have been exhausted
    # before it ran (only hand-made records do this): the same outcome, now.
    if life <= 0 or (wait > 0 and life <= wait):
        if single is not None:
            bucket = single
        else:
            assert group is not None
            bucket = group.get_bucket(task.bucket)
        bucket._fill_exhausted(task.task_type, task.task_id, task.data)
        return
    kind = TaskType.TIME_BOMB if wait > 0 else TaskType.IMMEDIATE
    run_after = wait if wait > 0 else None
    if single is not None:
        single.fill(kind, task.task_id, task.data, run_after=run_after, life_span=life)
    else:
        assert group is not None
        group.fill(
            task.bucket,
            task.task_id,
            task.data,
            task_type=kind,
            run_after=run_after,
            life_span=life,
        )


def _move(sink: RescueSink, into: RescueSink) -> int:
    """Write ``sink``'s records to ``into`` in batches; remove from ``sink`` what was stored."""
    records = sink.read()
    moved = 0
    for start in range(0, len(records), _REMOVE_BATCH):
        batch = records[start : start + _REMOVE_BATCH]
        try:
            into.write(batch)
        except SinkWriteError as error:
            failed = {id(task) for task in error.failed}
            stored = [task for task in batch if id(task) not in failed]
            if stored:
                sink.remove(stored)
            moved += len(stored)
            logger.error("replay: %d record(s) left in the sink: %s", len(failed), error)
            continue
        sink.remove(batch)
        moved += len(batch)
    return moved
