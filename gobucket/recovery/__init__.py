"""Recovery: rescue sinks that outlive the process, replay, and arming rescue.

* :class:`RescuedTask` — what is stored of a rescued task.
* :class:`JsonlRescueSink`, :class:`RedisRescueSink` — durable sinks.
* :func:`replay` — fill rescued tasks back (at least once).
* :class:`rescue_on_error`, :func:`install_signal_handlers` — arm rescue for a process.
"""

from gobucket.recovery.arm import EXIT_RESCUE_INCOMPLETE, install_signal_handlers, rescue_on_error
from gobucket.recovery.collect import DEFAULT_FALLBACK_PATH
from gobucket.recovery.record import RescuedTask
from gobucket.recovery.replay import replay
from gobucket.recovery.sinks import JsonlRescueSink, RedisRescueSink, RescueSink

__all__ = [
    "DEFAULT_FALLBACK_PATH",
    "EXIT_RESCUE_INCOMPLETE",
    "JsonlRescueSink",
    "RedisRescueSink",
    "RescueSink",
    "RescuedTask",
    "install_signal_handlers",
    "replay",
    "rescue_on_error",
]
