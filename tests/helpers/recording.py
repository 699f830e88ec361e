"""Recording what hooks run: a thread-safe recorder and one executor that feeds it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from gobucket import Executor
from helpers.waiting import WAIT

END_HOOKS = ("on_finish", "on_execute_error", "on_task_exhausted", "on_panic")


class Recorder:
    """Records hook calls as (hook, task_id, data, extra, ctx) tuples; safe from any thread.

    ``times`` holds the ``time.monotonic()`` of each call, index for index with ``calls``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: list[tuple[str, str, Any, Any, Any]] = []
        self.times: list[float] = []

    def record(self, hook: str, ctx: Any, task_id: str, data: Any, extra: Any = None) -> None:
        now = time.monotonic()
        with self._cond:
            self.calls.append((hook, task_id, data, extra, ctx))
            self.times.append(now)
            self._cond.notify_all()

    def snapshot(self) -> list[tuple[str, str, Any, Any, Any]]:
        with self._cond:
            return list(self.calls)

    def hooks(self, task_id: str) -> list[str]:
        return [c[0] for c in self.snapshot() if c[1] == task_id]

    def ends(self, task_id: str) -> list[str]:
        return [h for h in self.hooks(task_id) if h in END_HOOKS]

    def ends_by_data(self, data: Any) -> list[str]:
        return [c[0] for c in self.snapshot() if c[2] == data and c[0] in END_HOOKS]

    def count(self, hook: str) -> int:
        return sum(1 for c in self.snapshot() if c[0] == hook)

    def first(self, hook: str, task_id: str) -> tuple[str, str, Any, Any, Any]:
        return next(c for c in self.snapshot() if c[0] == hook and c[1] == task_id)

    def ids(self, hook: str) -> list[str]:
        """The task ids ``hook`` ran for, in order."""
        return [c[1] for c in self.snapshot() if c[0] == hook]

    def timed(self, hook: str, task_id: str) -> tuple[Any, float] | None:
        """(data, monotonic time) of the first ``hook`` call for ``task_id``, or None."""
        with self._cond:
            for call, when in zip(self.calls, self.times, strict=True):
                if call[0] == hook and call[1] == task_id:
                    return call[2], when
        return None

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def wait_hook(self, hook: str, task_id: str, timeout: float = WAIT) -> bool:
        return self.wait_for(
            lambda: any(c[0] == hook and c[1] == task_id for c in self.calls), timeout
        )


class NullExecutor(Executor):
    """Runs nothing; tasks end at once (IMMEDIATE) or after ``run_after`` (TIME_BOMB)."""


class RecordingExecutor(Executor):
    """Records every hook in a :class:`Recorder`; ``execute`` (ctx, id, data) does the work
    of on_execute.

    ``recorder`` defaults to a fresh one of its own. ``after`` maps a hook name to a callable
    run after the call was recorded. The group and wire tests read the runs through
    :meth:`executed_ids`, :meth:`record` and :attr:`finished`.
    """

    def __init__(
        self,
        recorder: Recorder | None = None,
        execute: Callable[[Any, str, Any], Any] | None = None,
        after: dict[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.recorder = recorder if recorder is not None else Recorder()
        self.execute = execute
        self.after = after or {}

    def _hook(self, name: str, ctx: Any, id: str, data: Any, extra: Any = None) -> None:
        self.recorder.record(name, ctx, id, data, extra)
        fn = self.after.get(name)
        if fn is not None:
            fn(ctx, id, data)

    def on_execute(self, ctx: Any, id: str, data: Any) -> Any:
        self.recorder.record("on_execute", ctx, id, data)
        if self.execute is not None:
            return self.execute(ctx, id, data)
        return None

    def on_finish(self, ctx: Any, id: str, data: Any) -> None:
        self._hook("on_finish", ctx, id, data)

    def on_task_exhausted(self, ctx: Any, id: str, data: Any) -> None:
        self._hook("on_task_exhausted", ctx, id, data)

    def on_execute_error(self, ctx: Any, id: str, data: Any, error: BaseException) -> None:
        self._hook("on_execute_error", ctx, id, data, error)

    def on_panic(self, ctx: Any, id: str, data: Any) -> None:
        self._hook("on_panic", ctx, id, data)

    def executed_ids(self) -> list[str]:
        """Ids that on_execute ran for, in order."""
        return self.recorder.ids("on_execute")

    @property
    def finished(self) -> list[str]:
        """Ids that on_finish ran for, in order."""
        return self.recorder.ids("on_finish")

    def record(self, task_id: str) -> tuple[str, Any, float] | None:
        """(id, data, monotonic time) of the first on_execute for ``task_id``, or None."""
        timed = self.recorder.timed("on_execute", task_id)
        return None if timed is None else (task_id, timed[0], timed[1])
