"""A standalone bucket: immediate and time-bomb tasks, a drain, and a rescue at the end.

Run: python examples/standalone.py
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gobucket import BucketConfig, Executor, TaskBucket, TaskContext, TaskType


class Greeter(Executor):
    """Says hello; a time bomb that is still waiting at the end is rescued."""

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        print(f"hello {data['name']} ({id}, {ctx.remaining():.1f}s of life left)")

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> None:
        print(f"finished {id}")

    def on_panic(self, ctx: TaskContext, id: str, data: Any) -> None:
        print(f"rescued {id}: would be saved to durable storage here")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    config = BucketConfig(life_span=5.0, max_bucket=1024, run_after=1.0)
    with TaskBucket(config, Greeter()) as bucket:
        bucket.fill(TaskType.IMMEDIATE, "process::1", {"name": "Johnson"})
        bucket.fill(TaskType.TIME_BOMB, "process::2", {"name": "Ada"}, run_after=0.5)
        bucket.fill(TaskType.TIME_BOMB, "process::3", {"name": "never"}, run_after=0.5)
        bucket.fill(TaskType.TIME_BOMB, "process::4", {"name": "later"}, run_after=4.0)
        bucket.drain("process::3")  # consumed elsewhere: it never runs
        time.sleep(1.0)
        print("alive:", len(bucket), "| rescued:", bucket.rescue())
        print(bucket.stats())


if __name__ == "__main__":
    main()
