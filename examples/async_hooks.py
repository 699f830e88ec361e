"""Async hooks: an ``async def`` on_execute is cancelled for real when its life span runs out.

Run: python examples/async_hooks.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from gobucket import BucketConfig, FunctionExecutor, TaskBucket, TaskContext, TaskType


async def fetch(ctx: TaskContext, id: str, data: Any) -> None:
    try:
        await asyncio.sleep(data["seconds"])  # stands for a slow HTTP call
        print(f"{id}: fetched")
    except asyncio.CancelledError:
        print(f"{id}: cancelled after its life span ran out")
        raise


def exhausted(ctx: TaskContext, id: str, data: Any) -> None:
    print(f"{id}: exhausted")


def main() -> None:
    executor = FunctionExecutor(on_execute=fetch, on_task_exhausted=exhausted)
    with TaskBucket(BucketConfig(life_span=1.0, run_after=0.0), executor) as bucket:
        bucket.fill(TaskType.IMMEDIATE, "quick", {"seconds": 0.1})
        bucket.fill(TaskType.IMMEDIATE, "slow", {"seconds": 10})
        bucket.join(timeout=5)


if __name__ == "__main__":
    main()
