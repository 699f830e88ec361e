"""The messages gobucket's actors exchange: small frozen dataclasses named for what happened."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

import pykka

from gobucket.config import TaskType

__all__ = [
    "Answer",
    "AwaitEmpty",
    "CloseBucket",
    "Contains",
    "Count",
    "Drain",
    "DrainTask",
    "Executed",
    "Expire",
    "FillTask",
    "Fire",
    "GetStats",
    "HookDone",
    "HookKind",
    "Outcome",
    "Panic",
    "RescueAll",
    "Retry",
    "Shed",
    "TaskEnded",
    "TaskFailed",
]


class Outcome(enum.Enum):
    """How a task ended."""

    FINISHED = "finished"
    EXECUTE_ERROR = "execute_error"
    EXHAUSTED = "exhausted"
    PANICKED = "panicked"
    DRAINED = "drained"
    HANDED_OFF = "handed_off"


class HookKind(enum.IntEnum):
    """Which hook a hook runner ran (carried back in :class:`HookDone`)."""

    EXECUTE = 0
    END = 1


# --- TaskActor --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fire:
    """``run_after`` elapsed: a waiting time bomb starts."""


@dataclass(frozen=True, slots=True)
class Expire:
    """The task's life span ran out."""


@dataclass(frozen=True, slots=True)
class Retry:
    """The backoff before another ``on_execute`` attempt elapsed."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop the task without a hook. ``reply`` is answered via the bucket when forwarded."""

    reply: pykka.Future[Any] | None = None


@dataclass(frozen=True, slots=True)
class Panic:
    """Rescue the task: run ``on_panic``.

    Answered at once with ``(record, ended)``: the task's
    :class:`~gobucket.RescuedTask` if this panic rescues it (None if it was
    already ending), and a future set once the task has ended (None if it had).
    """


@dataclass(frozen=True, slots=True)
class Shed:
    """Shutdown: rescue the task now if its work has not started, else leave it running.

    A waiting time bomb, a retry wait, or an ``on_execute`` still queued for a
    worker is rescued (answered like :class:`Panic`); anything else is answered None.
    """


@dataclass(frozen=True, slots=True)
class Reserve:
    """Hand-off: a task that has not started stops waiting and answers its record (or None)."""


@dataclass(frozen=True, slots=True)
class Release:
    """Hand-off result: ``placed`` ends the task here with no hook; else it is rescued.

    Answered once the task has ended (after ``on_panic`` when not placed).
    """

    placed: bool


@dataclass(frozen=True, slots=True)
class ReserveAll:
    """Reserve every live task for hand-off; answered with [(ref, future of record)]."""


class HookDone(NamedTuple):
    """A hook runner finished a hook; ``error`` is what it raised, if anything.

    (The messages on the hot path are NamedTuples: as immutable as a frozen
    dataclass, and four times cheaper to build.)
    """

    kind: HookKind
    error: BaseException | None = None


Executed = HookDone
"""``on_execute`` returned or raised (a :class:`HookDone` of kind ``EXECUTE``)."""

FIRE = Fire()
EXPIRE = Expire()
RETRY = Retry()
RESERVE = Reserve()
SHED = Shed()
DRAIN = Drain()
PANIC = Panic()
EXECUTED_OK = HookDone(HookKind.EXECUTE)
END_OK = HookDone(HookKind.END)


# --- BucketActor ------------------------------------------------------------------


class FillTask(NamedTuple):
    """Admit a task (answered with None, or an error).

    ``exhausted`` admits a task whose life span already ran out (a replayed
    record): it ends through ``on_task_exhausted`` at once.
    """

    task_type: TaskType
    task_id: str
    data: Any
    run_after: float
    life_span: float
    exhausted: bool = False


@dataclass(frozen=True, slots=True)
class DrainTask:
    """Drain a live task by id (answered True, or TaskNotFoundError)."""

    task_id: str
    may_defer = True  # forwarded to a busy TaskActor, answered later


@dataclass(frozen=True, slots=True)
class RescueAll:
    """Send Panic (or, with ``shed``, Shed) to every live task.

    Answered with ``[(task id, task ref, future of its answer)]``.
    """

    shed: bool = False
    reentrant = True  # safe to handle when a signal handler interrupts the bucket


Answer = tuple[str, pykka.ActorRef[Any], pykka.Future[Any]]
"""A task's id, its actor and the future of its answer to :class:`Panic` or :class:`Shed`."""


class TaskEnded(NamedTuple):
    """A TaskActor's end is done; the bucket frees its id."""

    task_id: str
    outcome: Outcome
    reply: pykka.Future[Any] | None = None


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """A TaskActor crashed; ``claimed`` is the end it had already taken, if any."""

    task_id: str
    claimed: Outcome | None
    error: BaseException | None
    data: Any = None
    task_type: TaskType = TaskType.IMMEDIATE
    remaining: float = 0.0


@dataclass(frozen=True, slots=True)
class Contains:
    """Is this id alive?"""

    reentrant = True  # safe to handle when a signal handler interrupts the bucket

    task_id: str


@dataclass(frozen=True, slots=True)
class Count:
    """How many tasks are alive?"""

    reentrant = True  # safe to handle when a signal handler interrupts the bucket


@dataclass(frozen=True, slots=True)
class GetStats:
    """Snapshot the bucket's counters."""

    reentrant = True  # safe to handle when a signal handler interrupts the bucket


@dataclass(frozen=True, slots=True)
class AwaitEmpty:
    """Answered (True) once no task is alive."""

    may_defer = True


@dataclass(frozen=True, slots=True)
class CloseBucket:
    """Refuse further fills."""

    reentrant = True  # only sets a flag: safe when a signal handler interrupts the bucket
