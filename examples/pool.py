"""Two buckets share a task pool on Redis: one spills when full, the other pulls and runs.

Run: REDIS_URL=redis://127.0.0.1:6379/0 python examples/pool.py

It needs a Redis server (and ``pip install 'gobucket[redis]'``). Without ``REDIS_URL``
it tries redis://127.0.0.1:6379/0. To start a throwaway server::

    redis-server --port 6379 --save '' --appendonly no     # or: docker run -p 6379:6379 redis

The two buckets stand for two processes (or two subnets, or two containers): they share
nothing but the pool. The first holds one task at a time, so most fills go to the pool;
the second takes them from the pool and runs them, time bombs at their original due time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from gobucket import BucketConfig, Executor, RedisTaskPool, TaskBucket, TaskContext, TaskType


class Worker(Executor):
    """Prints where each task ran; counts ends."""

    def __init__(self, node: str, done: threading.Semaphore) -> None:
        self.node = node
        self.done = done

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        late = time.time() - data["due"]
        print(f"{self.node}: {id} ran {late * 1e3:+.1f} ms from its due time")
        time.sleep(0.1)

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> None:
        self.done.release()


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    pool = RedisTaskPool(url, name=f"example-{os.getpid()}", timeout=1.0)
    try:
        pool.stats("mail")
    except Exception as error:
        print(f"no Redis at {url}: {error}\nStart one (see the docstring) or set REDIS_URL.")
        return 1
    done = threading.Semaphore(0)
    small = TaskBucket(
        BucketConfig(life_span=30, max_bucket=1, name="mail"), Worker("small", done), pool=pool
    )
    big = TaskBucket(
        BucketConfig(life_span=30, max_bucket=100, name="mail"), Worker("big", done), pool=pool
    )
    try:
        n = 8
        for i in range(n):
            due = time.time() + 1.0 + i * 0.1
            small.fill(TaskType.TIME_BOMB, f"mail::{i}", {"due": due}, run_after=due - time.time())
        stats = small.stats()
        print(f"small bucket: {stats.alive} alive, {stats.refused_full} spilled to the pool")
        for _ in range(n):
            if not done.acquire(timeout=30):
                print("timed out waiting for the tasks")
                return 1
        print("every task ended once")
    finally:
        small.close()
        big.close()
    print("pool after both closed:", pool.stats("mail"))  # every end acknowledged
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
