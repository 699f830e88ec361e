"""gobucket: in-memory background jobs as actors.

Fill a :class:`TaskBucket` with tasks that run now or after a delay, drain any
of them before they run, and rescue them all through ``on_panic`` when the
process is going down. See the README for a tour.
"""

from gobucket.actors.runtime import ActorRuntime, default_runtime
from gobucket.aio import AsyncTaskBucket, AsyncTaskBucketGroup
from gobucket.bucket import MAX_TASK_ID, TaskBucket
from gobucket.config import MAX_DURATION, BucketConfig, TaskType
from gobucket.context import TaskContext
from gobucket.errors import (
    BucketClosedError,
    BucketFullError,
    DuplicateTaskError,
    GoBucketError,
    InvalidArgumentError,
    NoPeerAvailableError,
    PeerLostTaskError,
    PoolFullError,
    PoolUnavailableError,
    RescueTimeoutError,
    SinkWriteError,
    TaskActorCrashedError,
    TaskNotFoundError,
)
from gobucket.executors.base import Executor, FunctionExecutor
from gobucket.group import TaskBucketGroup
from gobucket.pool import RedisTaskPool
from gobucket.recovery import (
    DEFAULT_FALLBACK_PATH,
    EXIT_RESCUE_INCOMPLETE,
    JsonlRescueSink,
    RedisRescueSink,
    RescuedTask,
    RescueSink,
    install_signal_handlers,
    replay,
    rescue_on_error,
)
from gobucket.types import (
    BucketStats,
    NodeStatus,
    Outcome,
    PeerInfo,
    Placement,
    PoolStats,
    TaskState,
    TaskStatus,
)
from gobucket.wire.status import StatusError, fetch_status

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_FALLBACK_PATH",
    "EXIT_RESCUE_INCOMPLETE",
    "MAX_DURATION",
    "MAX_TASK_ID",
    "ActorRuntime",
    "AsyncTaskBucket",
    "AsyncTaskBucketGroup",
    "BucketClosedError",
    "BucketConfig",
    "BucketFullError",
    "BucketStats",
    "DuplicateTaskError",
    "Executor",
    "FunctionExecutor",
    "GoBucketError",
    "InvalidArgumentError",
    "JsonlRescueSink",
    "NoPeerAvailableError",
    "NodeStatus",
    "Outcome",
    "PeerInfo",
    "PeerLostTaskError",
    "Placement",
    "PoolFullError",
    "PoolStats",
    "PoolUnavailableError",
    "RedisRescueSink",
    "RedisTaskPool",
    "RescueSink",
    "RescueTimeoutError",
    "RescuedTask",
    "SinkWriteError",
    "StatusError",
    "TaskActorCrashedError",
    "TaskBucket",
    "TaskBucketGroup",
    "TaskContext",
    "TaskNotFoundError",
    "TaskState",
    "TaskStatus",
    "TaskType",
    "__version__",
    "default_runtime",
    "fetch_status",
    "install_signal_handlers",
    "replay",
    "rescue_on_error",
]
