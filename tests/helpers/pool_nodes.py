"""Buckets attached to one shared task pool in this process, and a log of their ends."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from gobucket import BucketConfig, Executor, RedisTaskPool, TaskBucket, TaskContext
from helpers.waiting import WAIT

BUCKET = "jobs"


class EndLog:
    """Every start and end of every node's tasks: (node, id, outcome, wall time)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ends: list[tuple[str, str, str, float]] = []
        self.starts: dict[str, float] = {}
        self.data: dict[str, Any] = {}

    def started(self, task_id: str, data: Any = None) -> None:
        with self.cond:
            self.starts.setdefault(task_id, time.time())
            self.data.setdefault(task_id, data)

    def ended(self, node: str, task_id: str, outcome: str) -> None:
        with self.cond:
            self.ends.append((node, task_id, outcome, time.time()))
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT * 3) -> list[tuple[str, str, str, float]]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.ends) >= count, timeout):
                raise AssertionError(f"{len(self.ends)} of {count} tasks ended in {timeout}s")
            return list(self.ends)

    def per_id(self) -> Counter[str]:
        with self.cond:
            return Counter(task_id for _, task_id, _, _ in self.ends)


class LoggingExecutor(Executor):
    """Logs starts and ends to an :class:`EndLog` under the node's name."""

    def __init__(self, log: EndLog, node: str, work: float = 0.0) -> None:
        self.log = log
        self.node = node
        self.work = work

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        self.log.started(id, data)
        if self.work:
            ctx.wait_cancelled(self.work)

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> None:
        self.log.ended(self.node, id, "finished")

    def on_task_exhausted(self, ctx: TaskContext, id: str, data: Any) -> None:
        self.log.ended(self.node, id, "exhausted")

    def on_execute_error(self, ctx: TaskContext, id: str, data: Any, error: BaseException) -> None:
        self.log.ended(self.node, id, "error")


def make_pool(url: str, **options: Any) -> RedisTaskPool:
    """A pool that polls often (tests wait less); ``options`` override."""
    settings: dict[str, Any] = {"poll_interval": 0.02, "claim_timeout": 5.0, "timeout": 2.0}
    settings.update(options)
    return RedisTaskPool(url, **settings)


def pool_bucket(
    pool: RedisTaskPool,
    log: EndLog,
    node: str,
    *,
    max_bucket: int = 10,
    work: float = 0.0,
    life_span: float = 30.0,
    **options: Any,
) -> TaskBucket:
    """A bucket named :data:`BUCKET` attached to ``pool`` whose hooks log to ``log``."""
    config = BucketConfig(life_span=life_span, max_bucket=max_bucket, name=BUCKET)
    return TaskBucket(config, LoggingExecutor(log, node, work), pool=pool, **options)
