"""gobucket for asyncio services: the async face of buckets and groups.

:class:`AsyncTaskBucket` and :class:`AsyncTaskBucketGroup` forward to
:class:`~gobucket.TaskBucket` and :class:`~gobucket.TaskBucketGroup` without
blocking the caller's event loop; ``async def`` hooks of an async bucket run on
that loop, and a :class:`LoopWatchdog` warns when something blocks it. See
``docs/asyncio.md``.
"""

from gobucket.aio.bucket import AsyncTaskBucket
from gobucket.aio.group import AsyncTaskBucketGroup
from gobucket.aio.watchdog import DEFAULT_LAG_WARNING, LoopWatchdog, unwatch_loop, watch_loop

__all__ = [
    "DEFAULT_LAG_WARNING",
    "AsyncTaskBucket",
    "AsyncTaskBucketGroup",
    "LoopWatchdog",
    "unwatch_loop",
    "watch_loop",
]
