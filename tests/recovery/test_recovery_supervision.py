"""Supervision of BucketActors: restart after a failure, escalate past the intensity limit."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from gobucket import (
    BucketClosedError,
    BucketConfig,
    Executor,
    JsonlRescueSink,
    TaskBucket,
    TaskContext,
    TaskType,
)
from gobucket.actors import bucket as bucket_module
from gobucket.actors.bucket import BucketActor

WAIT = 10.0


class Panics(Executor):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.panicked: list[str] = []
        self.all_in = threading.Event()
        self.expect = 0

    def on_panic(self, ctx: TaskContext, id: str, data: Any) -> None:
        with self.lock:
            self.panicked.append(id)
            if len(self.panicked) >= self.expect:
                self.all_in.set()


def wait_until(predicate: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def faulty_remove(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the BucketActor crash when a task whose id starts with 'crash' ends."""
    original = BucketActor._remove

    def remove(self: BucketActor, task_id: str, outcome: Any) -> None:
        if task_id.startswith("crash"):
            raise RuntimeError("injected fault")
        original(self, task_id, outcome)

    monkeypatch.setattr(bucket_module.BucketActor, "_remove", remove)


def test_failed_bucket_actor_rescues_its_tasks_and_is_replaced(faulty_remove, tmp_path):
    executor = Panics()
    executor.expect = 5
    sink = JsonlRescueSink(tmp_path / "rescued.jsonl")
    bucket = TaskBucket(
        BucketConfig(life_span=30, run_after=20),
        executor,
        rescue_sink=sink,
        max_restarts=3,
        restart_window=60,
    )
    try:
        for i in range(5):
            bucket.fill(TaskType.TIME_BOMB, f"t{i}", {"i": i})
        old_ref = bucket.actor_ref
        bucket.fill(TaskType.IMMEDIATE, "crash-1")  # its end crashes the BucketActor
        assert executor.all_in.wait(WAIT)
        assert sorted(executor.panicked) == [f"t{i}" for i in range(5)]
        assert wait_until(lambda: bucket.actor_ref is not old_ref)
        assert wait_until(lambda: len(sink.read()) == 5)
        # The facade goes on working on the fresh actor.
        bucket.fill(TaskType.IMMEDIATE, "after")
        assert bucket.join(WAIT)
        assert bucket.stats().finished == 1
    finally:
        bucket.close(grace=0)


def test_too_many_failures_stop_the_bucket_with_a_clear_error(faulty_remove):
    bucket = TaskBucket(BucketConfig(life_span=30), Executor(), max_restarts=1, restart_window=60)
    try:
        bucket.fill(TaskType.IMMEDIATE, "crash-1")
        assert wait_until(lambda: "crash-1" not in bucket)
        bucket.fill(TaskType.IMMEDIATE, "crash-2")  # second failure within the window
        with pytest.raises(BucketClosedError, match="repeated failures"):
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                bucket.fill(TaskType.IMMEDIATE, f"probe-{time.monotonic()}")
                time.sleep(0.02)
    finally:
        bucket.close(grace=0)
