"""replay(): fill rescued tasks back, at least once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gobucket.config import TaskType
from gobucket.errors import BucketFullError, DuplicateTaskError, GoBucketError

if TYPE_CHECKING:
    from gobucket.bucket import TaskBucket
    from gobucket.group import TaskBucketGroup
    from gobucket.recovery.record import RescuedTask
    from gobucket.recovery.sinks import RescueSink

__all__ = ["replay"]

logger = logging.getLogger("gobucket.recovery")


def replay(sink: RescueSink, target: TaskBucket | TaskBucketGroup) -> int:
    """Fill every task stored in ``sink`` back into ``target``; return how many were filled.

    Each task is removed from the sink only once ``target`` accepted it, so a
    crash during replay loses nothing — but a task filled just before such a
    crash is replayed again next time: delivery is **at least once**. A task
    whose id is already alive counts as delivered and is removed. Tasks for
    another bucket name than a plain ``TaskBucket``'s are left in the sink.
    Replay stops (leaving the rest stored) when the target is full.
    """
    from gobucket.bucket import TaskBucket

    filled = 0
    delivered: list[RescuedTask] = []
    try:
        for task in sink.read():
            run_after = task.remaining_wait if task.task_type is TaskType.TIME_BOMB else 0.0
            task_type = TaskType.TIME_BOMB if run_after > 0 else TaskType.IMMEDIATE
            life = max(task.remaining_life, run_after + 0.001, 0.001)
            try:
                if isinstance(target, TaskBucket):
                    if task.bucket != target.name:
                        continue
                    target.fill(
                        task_type,
                        task.task_id,
                        task.data,
                        run_after=run_after or None,
                        life_span=life,
                    )
                else:
                    target.fill(
                        task.bucket,
                        task.task_id,
                        task.data,
                        task_type=task_type,
                        run_after=run_after or None,
                        life_span=life,
                    )
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
            if len(delivered) >= 256:
                sink.remove(delivered)
                delivered = []
    finally:
        if delivered:
            sink.remove(delivered)
    return filled
