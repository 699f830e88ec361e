"""The buckets and groups of this process, for ``gobucket.metrics.serve(port)``.

Plain Python (no prometheus_client): the facades note themselves here as they
are made, held weakly, so metrics served later can find them.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gobucket.bucket import TaskBucket
    from gobucket.group import TaskBucketGroup

__all__ = ["live_sources", "track_bucket", "track_group"]

_buckets: weakref.WeakSet[TaskBucket] = weakref.WeakSet()
_groups: weakref.WeakSet[TaskBucketGroup] = weakref.WeakSet()
_lock = threading.Lock()


def track_bucket(bucket: TaskBucket) -> None:
    """Note a new bucket (held weakly: this keeps nothing alive)."""
    with _lock:
        _buckets.add(bucket)


def track_group(group: TaskBucketGroup) -> None:
    """Note a new group (held weakly)."""
    with _lock:
        _groups.add(group)


def live_sources() -> tuple[list[TaskBucketGroup], list[TaskBucket]]:
    """The groups and the buckets of this process that are still referenced."""
    with _lock:
        return list(_groups), list(_buckets)
