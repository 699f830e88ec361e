"""EndWatch: the tasks whose end a BucketActor reports to someone (a pool's puller).

Only tasks admitted with ``FillTask(..., watched=True)`` are watched: the ends of
every other task cost one truthiness check.
"""

from __future__ import annotations

from collections.abc import Callable

from gobucket.types import Outcome

__all__ = ["EndWatch"]


class EndWatch:
    """Ids whose end is reported through ``ended(task_id, outcome)``.

    ``ended`` runs on the BucketActor's thread, right after the task's id was
    freed: it must not block (a pool's puller queues the id for its own thread).
    The BucketActor adds and removes ids; this object outlives actor restarts.
    """

    __slots__ = ("ended", "ids")

    def __init__(self, ended: Callable[[str, Outcome], None]) -> None:
        self.ids: set[str] = set()
        self.ended = ended
