"""Shared helpers: a thread-safe hook recorder, a recording executor, a bucket factory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from group_helpers import Cluster

from gobucket import BucketConfig, Executor, TaskBucket

END_HOOKS = ("on_finish", "on_execute_error", "on_task_exhausted", "on_panic")
WAIT = 10.0  # generous timeout for anything we wait on


class Recorder:
    """Records hook calls as (hook, task_id, data, extra, ctx) tuples; safe from any thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: list[tuple[str, str, Any, Any, Any]] = []

    def record(self, hook: str, ctx: Any, task_id: str, data: Any, extra: Any = None) -> None:
        with self._cond:
            self.calls.append((hook, task_id, data, extra, ctx))
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


class RecordingExecutor(Executor):
    """Records every hook; ``execute`` (ctx, id, data) does the work of on_execute.

    ``after`` maps a hook name to a callable run after the call was recorded.
    """

    def __init__(
        self,
        recorder: Recorder,
        execute: Callable[[Any, str, Any], Any] | None = None,
        after: dict[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.recorder = recorder
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


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_bucket() -> Iterator[Callable[..., TaskBucket]]:
    """Build buckets (``make_bucket(executor, **config)``); all are closed after the test."""
    buckets: list[TaskBucket] = []

    def make(executor: Executor, *, runtime: Any = None, **config: Any) -> TaskBucket:
        config.setdefault("life_span", 2.0)
        config.setdefault("run_after", 0.1)
        bucket = TaskBucket(BucketConfig(**config), executor, runtime=runtime)
        buckets.append(bucket)
        return bucket

    yield make
    close_all(buckets, grace=2.0)


def close_all(buckets: list[TaskBucket], wait_for: float = 20.0, **close: Any) -> None:
    """Close every bucket (``close(**close)``) on a daemon thread.

    A library bug that hangs close() must fail the test, not hang the session.
    """
    hung = []
    for bucket in buckets:
        closer = threading.Thread(target=bucket.close, kwargs=close, daemon=True)
        closer.start()
        closer.join(wait_for)
        if closer.is_alive():
            hung.append(bucket)
    assert not hung, f"close() hung for {hung}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Groups and buckets built for one test, all stopped and closed after it."""
    built = Cluster()
    try:
        yield built
    finally:
        built.close()
