"""Bucket configuration, task types, durations, and the one check of every fill."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from gobucket.errors import InvalidArgumentError

__all__ = [
    "MAX_DURATION",
    "MAX_TASK_ID",
    "BucketConfig",
    "Duration",
    "FillFields",
    "TaskType",
    "make_fill",
    "to_seconds",
    "validate_task_id",
]

Duration = float | int | timedelta
"""A length of time: seconds as a number, or a :class:`datetime.timedelta`."""

MAX_DURATION: float = 315_576_000.0
"""The longest duration accepted anywhere, in seconds: 10 Julian years.

Every duration checked by :func:`to_seconds` (``run_after``, ``life_span``,
``retry_backoff``, ``TaskBucket.join``'s ``timeout``) above it is refused with
:class:`~gobucket.InvalidArgumentError`, at the call or, for a peer's FILL
frame, with a ``bad_data`` refusal. A bound of years keeps every due time far
inside what the timer thread and the platform's waits can represent (waits
overflow past about 292 years; ``timedelta.max`` is 2.7 million years).
"""


class TaskType(enum.Enum):
    """When a filled task runs."""

    IMMEDIATE = "immediate"
    """Run ``on_execute`` at once (the seed's ``ImmidiateTask``)."""

    TIME_BOMB = "time_bomb"
    """Wait ``run_after`` first, then run ``on_execute`` (the seed's ``TimeBombTask``)."""


def to_seconds(value: Duration, name: str, *, allow_zero: bool = True) -> float:
    """Convert a duration to float seconds.

    Refuses non-numbers, NaN, infinities, negatives (and zero unless
    ``allow_zero``) and anything above :data:`MAX_DURATION`, with an
    :class:`~gobucket.InvalidArgumentError` naming ``name``.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(
            f"{name} must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond ~1.8e308: too long even to print in full
            raise _too_long(name, "an integer too large for a float") from None
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidArgumentError(f"{name} must be finite, got {seconds!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{name} must be {bound} seconds, got {seconds!r}")
    if seconds > MAX_DURATION:
        raise _too_long(name, f"{seconds!r} seconds")
    return seconds


def _too_long(name: str, got: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{name} must be at most {MAX_DURATION:.0f} seconds (10 years), got {got}"
    )


@dataclass(frozen=True, slots=True)
class BucketConfig:
    """How a :class:`~gobucket.TaskBucket` behaves.

    Durations are seconds (``float``/``int``) or :class:`datetime.timedelta`,
    at most :data:`~gobucket.config.MAX_DURATION` (10 years); they are
    normalised to float seconds on construction.

    Example::

        BucketConfig(life_span=5.0, max_bucket=1024, run_after=1.0, verbose=True)

    Attributes:
        life_span: how long a task may live, counted from its fill; when it runs
            out first the task ends through ``on_task_exhausted``.
        max_bucket: how many tasks may be alive at once; one more is refused
            with :class:`~gobucket.BucketFullError`.
        run_after: how long a ``TaskType.TIME_BOMB`` task waits before it runs.
            It must be shorter than ``life_span`` for time bombs to be accepted.
        verbose: log each task's life on the ``gobucket`` logger (INFO).
        name: the bucket's name, used in logs, stats and groups.
        max_retries: how many times ``on_execute`` is tried again after it raised,
            before ``on_execute_error`` (0 keeps the seed's behaviour).
        retry_backoff: seconds before the first retry; doubles on each further one.
    """

    life_span: float = 5.0
    max_bucket: int = 1024
    run_after: float = 1.0
    verbose: bool = False
    name: str = "default"
    max_retries: int = 0
    retry_backoff: float = field(default=0.1)

    def __post_init__(self) -> None:
        life = to_seconds(self.life_span, "life_span", allow_zero=False)
        after = to_seconds(self.run_after, "run_after")
        backoff = to_seconds(self.retry_backoff, "retry_backoff")
        if isinstance(self.max_bucket, bool) or not isinstance(self.max_bucket, int):
            raise InvalidArgumentError(
                f"max_bucket must be an int, not {type(self.max_bucket).__name__}"
            )
        if self.max_bucket < 1:
            raise InvalidArgumentError(f"max_bucket must be >= 1, got {self.max_bucket}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise InvalidArgumentError("max_retries must be an int")
        if self.max_retries < 0:
            raise InvalidArgumentError(f"max_retries must be >= 0, got {self.max_retries}")
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError("name must be a non-empty string")
        object.__setattr__(self, "life_span", life)
        object.__setattr__(self, "run_after", after)
        object.__setattr__(self, "retry_backoff", backoff)
        object.__setattr__(self, "verbose", bool(self.verbose))


MAX_TASK_ID = 1024
"""The longest task id accepted, in bytes of UTF-8 (at ``fill`` and over the wire)."""


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a non-empty string of at most 1 KiB, else raise."""
    if not isinstance(task_id, str):
        raise InvalidArgumentError(f"task id must be a str, not {type(task_id).__name__}")
    if not task_id:
        raise InvalidArgumentError("task id must be a non-empty string")
    if len(task_id) > MAX_TASK_ID // 4 and len(task_id.encode("utf-8", "surrogatepass")) > (
        MAX_TASK_ID
    ):
        raise InvalidArgumentError(
            f"task id is {len(task_id.encode('utf-8', 'surrogatepass'))} bytes long; "
            f"the limit is {MAX_TASK_ID} bytes (UTF-8)"
        )
    return task_id


FillFields = tuple[TaskType, str, Any, float, float]
"""A checked fill: task type, id, data, ``run_after`` and ``life_span`` in seconds
(the fields of the BucketActor's ``FillTask`` message, in order)."""


def make_fill(
    config: BucketConfig,
    task_type: TaskType,
    task_id: str,
    data: Any = None,
    *,
    run_after: Duration | None = None,
    life_span: Duration | None = None,
    check_data: Callable[[Any], object] | None = None,
) -> FillFields:
    """Check a fill's arguments against ``config``; return the fill's fields.

    The one check of every fill, local (``TaskBucket.fill``) or from a peer
    (:mod:`gobucket.serve`). ``run_after`` and ``life_span`` default to the
    config's; ``check_data`` (the rescue sink's storability check, when the
    bucket has a sink) raises for data the bucket could not rescue.

    Raises:
        InvalidArgumentError: a bad type, id or duration, or data ``check_data`` refuses.
    """
    if not isinstance(task_type, TaskType):
        try:
            task_type = TaskType(task_type)
        except ValueError:
            raise InvalidArgumentError(f"task_type must be a TaskType, not {task_type!r}") from None
    validate_task_id(task_id)
    life = (
        config.life_span
        if life_span is None
        else to_seconds(life_span, "life_span", allow_zero=False)
    )
    if task_type is TaskType.TIME_BOMB:
        after = config.run_after if run_after is None else to_seconds(run_after, "run_after")
        if life <= after:
            raise InvalidArgumentError(
                f"life_span ({life}s) must be longer than run_after ({after}s) for a "
                "time bomb, or it would be exhausted before it runs"
            )
    else:
        if run_after is not None and to_seconds(run_after, "run_after") != 0:
            raise InvalidArgumentError(
                "run_after applies to TaskType.TIME_BOMB only; an IMMEDIATE task runs now"
            )
        after = 0.0
    if check_data is not None:
        check_data(data)
    return (task_type, task_id, data, after, life)
