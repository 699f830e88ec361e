"""PoolTask: one task as a pool stores it (a msgpack record), with wall-clock times."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgpack

from gobucket.config import TaskType
from gobucket.errors import InvalidArgumentError
from gobucket.wire.frames import pack

__all__ = ["PoolTask", "decode", "encode"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class PoolTask:
    """A task in the pool: its data and its wall-clock due time and deadline (unix seconds)."""

    task_id: str
    task_type: TaskType
    data: Any
    due_at: float
    deadline_at: float

    def plan(self, now: float | None = None) -> tuple[TaskType, float, float, bool]:
        """How to fill it locally now: (type, run_after, life_span, exhausted).

        A time bomb keeps its due time (``run_after = due - now``); the life span
        ends at the original deadline; a task whose deadline passed (or comes
        before its due time) is filled exhausted.
        """
        now = time.time() if now is None else now
        life = self.deadline_at - now
        wait = self.due_at - now if self.task_type is TaskType.TIME_BOMB else 0.0
        if life <= 0 or (wait > 0 and life <= wait):
            return self.task_type, 0.0, 0.0, True
        if wait > 0:
            return TaskType.TIME_BOMB, wait, life, False
        return TaskType.IMMEDIATE, 0.0, life, False


def encode(task: PoolTask) -> bytes:
    """The record stored in the pool's ``tasks`` hash.

    Raises:
        InvalidArgumentError: msgpack cannot store the task's data.
    """
    try:
        packed = pack([_VERSION, task.task_type.value, task.data, task.due_at, task.deadline_at])
        msgpack.unpackb(packed, raw=False, strict_map_key=False)  # it must read back too
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidArgumentError(
            f"task data of type {type(task.data).__name__} cannot be stored in a task pool "
            f"(msgpack: {error}); use plain dicts, lists, str, bytes, numbers, bools and None"
        ) from None
    return packed


def decode(task_id: str, record: bytes) -> PoolTask:
    """Read a record written by :func:`encode` (raises ValueError if it is not one)."""
    raw = msgpack.unpackb(record, raw=False, strict_map_key=False)
    if not isinstance(raw, list) or len(raw) < 5 or raw[0] != _VERSION:
        raise ValueError(f"not a pool record of version {_VERSION}")
    return PoolTask(task_id, TaskType(raw[1]), raw[2], float(raw[3]), float(raw[4]))
