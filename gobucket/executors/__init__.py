"""Executors (the hooks of a task's life) and the runners that call them off the dispatchers.

* :mod:`~gobucket.executors.base` — :class:`Executor`, :class:`FunctionExecutor`,
  the runner interface.
* :mod:`~gobucket.executors.thread` — a bounded worker pool for plain ``def`` hooks.
* :mod:`~gobucket.executors.async_` — one event loop for ``async def`` hooks.
"""

from gobucket.executors.base import Executor, FunctionExecutor, HookRunner, HookTable

__all__ = ["Executor", "FunctionExecutor", "HookRunner", "HookTable"]
