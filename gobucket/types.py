"""Public values gobucket hands back: a bucket's counters, how a task ended, where a
group placed a task and what a node knows of a peer.

Nothing here refers to an actor: these are plain, immutable snapshots safe to
keep and compare.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BucketStats", "Outcome", "PeerInfo", "Placement"]


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
