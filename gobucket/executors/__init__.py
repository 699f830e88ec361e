"""Executors (the hooks of a task's life) and the runners that call them off the dispatchers.

* :mod:`~gobucket.executors.base` — :class:`Executor`, :class:`FunctionExecutor`,
  :class:`HookTable`: the user's hooks.
* :mod:`~gobucket.executors.runner` — the runner interface (:class:`HookRunner`),
  ``report`` (tell an actor a hook ended).
* :mod:`~gobucket.executors.thread` — a bounded worker pool for plain ``def`` hooks
  (and ``run_blocking`` for other blocking work).
* :mod:`~gobucket.executors.async_` — one event loop for ``async def`` hooks.
* :mod:`~gobucket.executors.load` — a bucket's count of queued and running ``on_execute`` calls.
"""

from gobucket.executors.base import Executor, FunctionExecutor, HookTable
from gobucket.executors.runner import HookRunner

__all__ = ["Executor", "FunctionExecutor", "HookRunner", "HookTable"]
