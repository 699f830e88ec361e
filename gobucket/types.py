"""Public values gobucket hands back: a bucket's counters and how a task ended.

(Values about the group, :class:`~gobucket.Placement` and
:class:`~gobucket.PeerInfo`, live here too.) Nothing here refers to an actor:
these are plain, immutable snapshots safe to keep and compare.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BucketStats", "Outcome"]


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
