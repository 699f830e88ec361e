"""The executor interface: the five hooks of a task's life (the user's side of the runners)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gobucket.errors import InvalidArgumentError

if TYPE_CHECKING:
    from gobucket.context import TaskContext
    from gobucket.executors.async_ import AsyncHookRunner

__all__ = ["Executor", "FunctionExecutor", "Hook", "HookTable"]

Hook = Callable[..., Any]


class Executor:
    """The hooks of a task's life; every hook defaults to doing nothing.

    Subclass it and override what you need. Any hook may be a plain method
    (it runs on a worker thread and may block) or ``async def`` (it runs on
    gobucket's event loop and is cancelled for real when the task is
    exhausted). ``data`` is whatever was filled with the task.

    Example::

        class Mailer(Executor):
            def on_execute(self, ctx, id, data):
                send_mail(data["to"])          # raise to end through on_execute_error

            def on_panic(self, ctx, id, data):
                redis.rpush("rescued", id)     # save it before the process dies
    """

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> Any:
        """Do the work: return to end by ``on_finish``, raise to end by ``on_execute_error``."""
        return None

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> Any:
        """Called after ``on_execute`` returned."""
        return None

    def on_task_exhausted(self, ctx: TaskContext, id: str, data: Any) -> Any:
        """Called when the life span ran out before ``on_execute`` returned."""
        return None

    def on_execute_error(self, ctx: TaskContext, id: str, data: Any, error: BaseException) -> Any:
        """Called after ``on_execute`` raised ``error`` (once retries, if any, are used up)."""
        return None

    def on_panic(self, ctx: TaskContext, id: str, data: Any) -> Any:
        """Called for every live task by ``rescue()``: save the task somewhere durable."""
        return None


class FunctionExecutor(Executor):
    """An executor built from plain functions (sync or ``async``); missing hooks do nothing.

    Example::

        executor = FunctionExecutor(on_execute=lambda ctx, id, data: print(id, data))
    """

    def __init__(
        self,
        on_execute: Hook | None = None,
        on_finish: Hook | None = None,
        on_task_exhausted: Hook | None = None,
        on_execute_error: Hook | None = None,
        on_panic: Hook | None = None,
    ) -> None:
        hooks = {
            "on_execute": on_execute,
            "on_finish": on_finish,
            "on_task_exhausted": on_task_exhausted,
            "on_execute_error": on_execute_error,
            "on_panic": on_panic,
        }
        for name, fn in hooks.items():
            if fn is not None:
                if not callable(fn):
                    raise InvalidArgumentError(f"{name} must be callable, got {fn!r}")
                setattr(self, name, fn)


class HookTable:
    """An executor's five hooks, each with whether it is a coroutine function.

    Hooks still equal to the :class:`Executor` defaults are recorded as
    ``None`` so that the runtime can skip them without a thread hop.
    ``async_runner`` is where the ``async def`` hooks run: ``None`` for the
    runtime's own event loop (an :class:`~gobucket.AsyncTaskBucket` sets the
    loop that opened it).
    """

    __slots__ = ("async_runner", "execute", "execute_error", "exhausted", "finish", "panic")

    def __init__(self, executor: Executor) -> None:
        if not isinstance(executor, Executor):
            missing = [
                n
                for n in (
                    "on_execute",
                    "on_finish",
                    "on_task_exhausted",
                    "on_execute_error",
                    "on_panic",
                )
                if not callable(getattr(executor, n, None))
            ]
            if missing:
                raise InvalidArgumentError(
                    f"executor {executor!r} lacks hooks {missing}; subclass gobucket.Executor"
                )
        self.execute = self._entry(executor, "on_execute")
        self.finish = self._entry(executor, "on_finish")
        self.exhausted = self._entry(executor, "on_task_exhausted")
        self.execute_error = self._entry(executor, "on_execute_error")
        self.panic = self._entry(executor, "on_panic")
        self.async_runner: AsyncHookRunner | None = None

    @staticmethod
    def _entry(executor: Any, name: str) -> tuple[Hook, bool] | None:
        fn = getattr(executor, name)
        base = getattr(Executor, name)
        if getattr(fn, "__func__", None) is base:
            return None
        return fn, inspect.iscoroutinefunction(fn)
