"""Public values gobucket hands back: a bucket's counters, how a task ended, where a
group placed a task and what a node knows of a peer.

Nothing here refers to an actor: these are plain, immutable snapshots safe to
keep and compare.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "BucketStats",
    "NodeStatus",
    "Outcome",
    "PeerInfo",
    "Placement",
    "PoolStats",
    "TaskState",
    "TaskStatus",
]


class Outcome(enum.Enum):
    """How a task ended."""

    FINISHED = "finished"
    EXECUTE_ERROR = "execute_error"
    EXHAUSTED = "exhausted"
    PANICKED = "panicked"
    DRAINED = "drained"
    HANDED_OFF = "handed_off"


@dataclass(frozen=True, slots=True)
class BucketStats:
    """A snapshot of a bucket's counters.

    ``alive`` tasks are in the bucket now; the others count ends and refusals
    since the bucket was made. ``running`` plain or async ``on_execute`` calls
    run now, ``queued`` ones wait for a free hook worker, and ``overrunning``
    ones still run although their task already ended (exhausted, drained or
    rescued); an overrunning task's id cannot be filled again until it returns.
    """

    name: str
    alive: int
    max_bucket: int
    filled: int
    finished: int
    execute_errors: int
    exhausted: int
    panicked: int
    drained: int
    refused_full: int
    refused_duplicate: int
    crashed: int
    closed: bool
    handed_off: int = 0
    running: int = 0
    queued: int = 0
    overrunning: int = 0
    end_rate_10s: float = 0.0
    """Tasks ended per second over the last 10 seconds (any end)."""
    end_rate_60s: float = 0.0
    """Tasks ended per second over the last 60 seconds (any end)."""
    pool_ready: int = 0
    """Tasks of this bucket's name waiting in its shared pool and due now (0 without a
    pool; refreshed about once a second by the pool's puller)."""
    pool_delayed: int = 0
    """Tasks of this bucket's name in the pool that are not due yet."""
    pool_claimed: int = 0
    """Tasks of this bucket's name claimed by some node (running or about to)."""

    @property
    def free(self) -> int:
        """How many more tasks the bucket would accept now."""
        return max(0, self.max_bucket - self.alive)

    @property
    def ended(self) -> int:
        """How many tasks have ended, by any of the five ends."""
        return self.finished + self.execute_errors + self.exhausted + self.panicked + self.drained


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task filled through a group now lives."""

    local: bool
    node: str
    bucket: str
    task_id: str
    address: tuple[str, int] | None = None
    pool: bool = False
    """True when the task went to the shared task pool (a
    :class:`~gobucket.RedisTaskPool`) because the local bucket and every peer were full."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The depth of one bucket's queue in a shared task pool, at one instant.

    ``ready`` tasks are due and unclaimed, ``delayed`` ones are unclaimed and
    due later, ``claimed`` ones are held by a node (running, or waiting there
    for their due time); ``pending`` is all three.
    """

    pool: str
    bucket: str
    ready: int
    delayed: int
    claimed: int

    @property
    def pending(self) -> int:
        """Every task of this bucket the pool holds (ready, delayed and claimed)."""
        return self.ready + self.delayed + self.claimed


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What a node knows of one peer."""

    address: tuple[str, int]
    node: str | None
    up: bool
    source: str
    loads: dict[str, tuple[int, int]]
    last_seen: float | None
    buckets: tuple[str, ...] = ()
    reason: str | None = None
    """Why the peer is down (``None`` while it is up): "cannot connect: connection
    refused", "handshake refused: ...", "missed 3 pings ...", "not connected yet"."""

    def free(self, bucket: str) -> int | None:
        """Free room in ``bucket`` by the latest report, or None if unknown."""
        load = self.loads.get(bucket)
        return None if load is None else max(0, load[1] - load[0])


class TaskState(enum.StrEnum):
    """Where a live task is in its life (see :class:`TaskStatus`)."""

    WAITING = "waiting"
    """A time bomb before its ``run_after`` elapsed: nothing has run yet."""
    RUNNING = "running"
    """``on_execute`` was submitted: it runs, or waits for a free hook worker."""
    RETRY_WAIT = "retry-wait"
    """``on_execute`` raised and the task waits out its backoff before the next attempt."""
    ENDING = "ending"
    """The task took its end (its end hook runs, or it is being handed off); it is
    still in the bucket until that is done."""


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A snapshot of one live task (what :meth:`TaskBucket.status` returns).

    ``attempt`` is the 1-based number of the current (or last) ``on_execute``
    attempt, 0 before the first. ``due_in`` is the number of seconds until the
    task's next ``on_execute`` attempt is due (its ``run_after``, or its retry
    backoff), 0.0 when it is running or ending. ``life_left`` is the number of
    seconds of its life span left (0.0 once it ran out).
    """

    id: str
    bucket: str
    state: TaskState
    attempt: int
    due_in: float
    life_left: float


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a running node answered a STATUS request (see ``docs/operations.md``).

    ``buckets`` are the node's local buckets' counters (their ``end_rate_*``
    fields hold the recent end rates); ``peers`` is every peer the node knows,
    with ``up`` and the ``reason`` it is down. A peer's ``last_seen`` is a
    ``time.monotonic()`` value of the process that parsed the answer.
    """

    node: str
    cluster: str
    address: tuple[str, int]
    buckets: tuple[BucketStats, ...]
    peers: tuple[PeerInfo, ...]
    uptime: float = 0.0
    """Seconds since the node's group started."""

    def bucket(self, name: str) -> BucketStats | None:
        """The counters of the bucket called ``name``, or None."""
        return next((b for b in self.buckets if b.name == name), None)
