"""Every message gobucket's actors exchange: small frozen values named for what happened.

A message's behaviour flags are its base classes, checked by type: a
:class:`~gobucket.actors.actor.Reentrant` message may be handled while a signal
handler interrupts its actor on this thread; a
:class:`~gobucket.actors.actor.MayDefer` message may be answered later. The
hook runners' own message, :class:`~gobucket.executors.runner.HookDone`, lives
with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import pykka

from gobucket.actors.actor import MayDefer, Reentrant
from gobucket.config import TaskType
from gobucket.types import Outcome

if TYPE_CHECKING:
    from gobucket.discovery.base import PeerEvent
    from gobucket.wire.protocol import Ack

__all__ = [
    "Answer",
    "AwaitEmpty",
    "AwaitPeers",
    "ChildFailed",
    "CloseBucket",
    "Contains",
    "Count",
    "Discovered",
    "DiscoveredCheck",
    "Drain",
    "DrainTask",
    "Expire",
    "FillReplied",
    "FillTask",
    "Fire",
    "GetPeers",
    "GetStats",
    "GetTaskStatus",
    "Panic",
    "PeerChanged",
    "RescueAll",
    "Retry",
    "RouteFill",
    "SetWatch",
    "Shed",
    "StopGroup",
    "Supervise",
    "TaskEnded",
    "TaskFailed",
    "TaskRef",
    "TryFill",
    "Unsupervise",
]


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
class SetWatch:
    """Report the ends of watched tasks to ``watch`` (a shared pool's puller); answered None."""

    watch: Any


@dataclass(frozen=True, slots=True)
class ReserveAll:
    """Reserve every live task for hand-off; answered with [(ref, future of record)].

    ``ids`` limits it to those tasks (the pool puts back only what it claimed).
    """

    ids: frozenset[str] | None = None


FIRE = Fire()
EXPIRE = Expire()
RETRY = Retry()
RESERVE = Reserve()
SHED = Shed()
DRAIN = Drain()
PANIC = Panic()


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
    watched: bool = False
    """Report this task's end to the bucket's :class:`~gobucket.actors.watch.EndWatch`
    (a task taken from a shared pool, acknowledged there once it ended)."""


class TryFill(FillTask):
    """Admit a task if there is room: answered None, or the error a FillTask would raise.

    The refusal (:class:`~gobucket.BucketFullError`, ...) is returned, not
    raised, so a caller that expects refusals (a group placing overflow on
    peers) pays no exception. Build it from a prepared fill: ``TryFill(*fill)``.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class DrainTask(MayDefer):
    """Drain a live task by id (answered True, or TaskNotFoundError)."""

    task_id: str


@dataclass(frozen=True, slots=True)
class RescueAll(Reentrant):
    """Send Panic (or, with ``shed``, Shed) to every live task.

    Answered with ``[(task id, task ref, future of its answer)]``.
    """

    shed: bool = False


Answer = tuple[str, pykka.ActorRef[Any], pykka.Future[Any]]
"""A task's id, its actor and the future of its answer to :class:`Panic` or :class:`Shed`."""


class TaskEnded(NamedTuple):
    """A TaskActor's end is done; the bucket frees its id (and answers ``reply``, if any)."""

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
class Contains(Reentrant):
    """Is this id alive?"""

    task_id: str


@dataclass(frozen=True, slots=True)
class TaskRef(Reentrant):
    """A pykka ref to a live task's actor (made on demand), or TaskNotFoundError."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Count(Reentrant):
    """How many tasks are alive?"""


@dataclass(frozen=True, slots=True)
class GetStats(Reentrant):
    """Snapshot the bucket's counters."""


@dataclass(frozen=True, slots=True)
class GetTaskStatus(Reentrant):
    """Snapshot one live task (answered with a :class:`~gobucket.TaskStatus`, or None)."""

    task_id: str


@dataclass(frozen=True, slots=True)
class AwaitEmpty(MayDefer):
    """Answered (True) once no task is alive."""


@dataclass(frozen=True, slots=True)
class CloseBucket(Reentrant):
    """Refuse further fills."""


# --- GroupActor -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteFill:
    """The local bucket was full: place this task on a peer (answered with a Placement)."""

    bucket: str
    task_id: str
    wire: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FillReplied:
    """A peer answered (or failed) a FILL this node sent."""

    route: int
    address: tuple[str, int]
    reply: Ack | BaseException


@dataclass(frozen=True, slots=True)
class PeerChanged:
    """The network side saw a peer come up, go down, report load, or refuse us."""

    address: tuple[str, int]
    kind: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Discovered:
    """A peer source reported a peer event."""

    event: PeerEvent


@dataclass(frozen=True, slots=True)
class DiscoveredCheck:
    """Timer: drop the discovered entry at ``address`` if it still has no link at ``due``."""

    address: tuple[str, int]
    due: float


@dataclass(frozen=True, slots=True)
class AwaitPeers(MayDefer):
    """Answer True once ``count`` peers are up (that reported ``bucket``'s load, if given).

    Answered False if the group stops first.
    """

    count: int
    bucket: str | None = None


@dataclass(frozen=True, slots=True)
class GetPeers(Reentrant):
    """Snapshot the peer table (answered with a list of PeerInfo)."""


@dataclass(frozen=True, slots=True)
class StopGroup:
    """Stop dialling peers; fail routes still waiting."""


# --- RootSupervisor -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Supervise:
    """Put a child under supervision (answered once registered)."""

    child: str
    factory: Callable[[], pykka.ActorRef[Any]]
    restarted: Callable[[pykka.ActorRef[Any], list[Answer]], None]
    gave_up: Callable[[BaseException, list[Answer]], None]
    max_restarts: int = 3
    window: float = 10.0


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A supervised child crashed; ``tasks`` are the ids and refs of its live tasks."""

    child: str
    error: BaseException | None
    tasks: list[tuple[str, pykka.ActorRef[Any]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Unsupervise:
    """Forget a child (it is stopping on purpose)."""

    child: str
