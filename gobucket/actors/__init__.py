"""The actors of gobucket and the runtime they share.

* :class:`~gobucket.actors.actor.RuntimeActor` — a pykka actor on the shared dispatchers.
* :class:`~gobucket.actors.runtime.ActorRuntime` — dispatchers, timers, hook runners, supervisor.
* :class:`~gobucket.actors.task.TaskActor` — one per task.
* :class:`~gobucket.actors.bucket.BucketActor` — one per bucket; supervises its TaskActors.
"""

from gobucket.actors.actor import RuntimeActor
from gobucket.actors.bucket import BucketActor
from gobucket.actors.runtime import ActorRuntime, default_runtime
from gobucket.actors.task import TaskActor

__all__ = [
    "ActorRuntime",
    "BucketActor",
    "RuntimeActor",
    "TaskActor",
    "default_runtime",
]
