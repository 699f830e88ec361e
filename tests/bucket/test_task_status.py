"""``TaskBucket.status(id)``: one task's state through its life, and the bucket's end rates.

Timers that would move the task on are set far away (60 s); the test moves the task by
telling it the timer's message through its ref (``Fire``, ``Retry``), so nothing depends
on how fast a loaded machine is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers.waiting import WAIT, wait_until

from gobucket import (
    Executor,
    InvalidArgumentError,
    TaskBucket,
    TaskContext,
    TaskState,
    TaskStatus,
    TaskType,
)
from gobucket.actors import bucket as bucket_actor
from gobucket.actors import messages as m


class GatedExecutor(Executor):
    """``on_execute`` waits for its attempt's gate; attempt 1 raises; ``on_finish`` waits too."""

    def __init__(self) -> None:
        self.attempt_gates = {1: threading.Event(), 2: threading.Event()}
        self.finish_gate = threading.Event()

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        assert self.attempt_gates[ctx.attempt].wait(WAIT)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> None:
        assert self.finish_gate.wait(WAIT)

    def open_all(self) -> None:
        for gate in (*self.attempt_gates.values(), self.finish_gate):
            gate.set()


def _state_is(bucket: TaskBucket, task_id: str, state: TaskState) -> Callable[[], Any]:
    def check() -> TaskStatus | None:
        status = bucket.status(task_id)
        return status if status is not None and status.state is state else None

    return check


def test_a_task_through_its_life(make_bucket: Callable[..., TaskBucket]) -> None:
    executor = GatedExecutor()
    bucket = make_bucket(
        executor, name="life", life_span=120.0, run_after=60.0, max_retries=1, retry_backoff=60.0
    )
    try:
        bucket.fill(TaskType.TIME_BOMB, "t1", {"n": 1})

        waiting = bucket.status("t1")
        assert waiting is not None
        assert (waiting.id, waiting.bucket) == ("t1", "life")
        assert waiting.state is TaskState.WAITING
        assert waiting.attempt == 0
        assert 30.0 < waiting.due_in <= 60.0
        assert 90.0 < waiting.life_left <= 120.0
        assert waiting.due_in < waiting.life_left

        bucket.task_ref("t1").tell(m.FIRE)  # run_after "elapsed"
        running = wait_until(_state_is(bucket, "t1", TaskState.RUNNING), what="running")
        assert running.attempt == 1
        assert running.due_in == 0.0

        executor.attempt_gates[1].set()  # attempt 1 raises: a retry waits 60 s
        retrying = wait_until(_state_is(bucket, "t1", TaskState.RETRY_WAIT), what="retry-wait")
        assert retrying.attempt == 1
        assert 30.0 < retrying.due_in <= 60.0

        bucket.task_ref("t1").tell(m.RETRY)  # the backoff "elapsed"
        again = wait_until(_state_is(bucket, "t1", TaskState.RUNNING), what="attempt 2")
        assert again.attempt == 2
        assert again.due_in == 0.0

        executor.attempt_gates[2].set()  # attempt 2 succeeds: on_finish holds it ending
        ending = wait_until(_state_is(bucket, "t1", TaskState.ENDING), what="ending")
        assert ending.attempt == 2
        assert ending.due_in == 0.0
        assert 0.0 < ending.life_left <= 120.0

        executor.finish_gate.set()
        wait_until(lambda: bucket.status("t1") is None, what="the task gone")
        assert "t1" not in bucket
        assert bucket.stats().finished == 1
    finally:
        executor.open_all()


def test_status_of_an_unknown_or_drained_task_is_none(
    make_bucket: Callable[..., TaskBucket],
) -> None:
    bucket = make_bucket(Executor(), life_span=120.0, run_after=60.0)
    assert bucket.status("nobody") is None
    bucket.fill(TaskType.TIME_BOMB, "d1")
    assert bucket.status("d1") is not None
    bucket.drain("d1")
    assert bucket.status("d1") is None


def test_status_checks_the_id(make_bucket: Callable[..., TaskBucket]) -> None:
    bucket = make_bucket(Executor())
    with pytest.raises(InvalidArgumentError):
        bucket.status("")


def test_status_is_a_frozen_value(make_bucket: Callable[..., TaskBucket]) -> None:
    bucket = make_bucket(Executor(), life_span=120.0, run_after=60.0)
    bucket.fill(TaskType.TIME_BOMB, "f1")
    status = bucket.status("f1")
    assert isinstance(status, TaskStatus)
    with pytest.raises(AttributeError):
        status.state = TaskState.RUNNING  # type: ignore[misc]
    assert status.state == "waiting"  # a str enum: prints and compares as its text


def test_a_closed_bucket_has_no_task_status(make_bucket: Callable[..., TaskBucket]) -> None:
    bucket = make_bucket(Executor(), life_span=120.0, run_after=60.0)
    bucket.fill(TaskType.TIME_BOMB, "c1")
    bucket.close(grace=0)
    assert bucket.status("c1") is None


def test_end_rates_count_recent_ends(make_bucket: Callable[..., TaskBucket]) -> None:
    bucket = make_bucket(Executor(), life_span=120.0, run_after=60.0)
    assert bucket.stats().end_rate_10s == 0.0
    for i in range(20):
        bucket.fill(TaskType.TIME_BOMB, f"r{i}")
    for i in range(20):
        bucket.drain(f"r{i}")
    stats = bucket.stats()
    assert stats.drained == 20
    # 20 ends within the bucket's first seconds: spread over at most its age (>= 1 s).
    assert 0.0 < stats.end_rate_10s <= 20.0
    assert 0.0 < stats.end_rate_60s <= 20.0
    assert stats.end_rate_60s <= stats.end_rate_10s


def test_the_end_ring_forgets_seconds_older_than_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(bucket_actor, "_monotonic", lambda: clock[0])
    ring = bucket_actor._EndRing()
    clock[0] = 1030.5  # the ring is 30.5 s old
    for _ in range(30):
        ring.count()
    assert ring.rate(10) == pytest.approx(3.0)
    assert ring.rate(60) == pytest.approx(30 / 30.5)
    clock[0] = 1045.5  # 15 s later: out of the 10 s window, still in the minute
    assert ring.rate(10) == 0.0
    assert ring.rate(60) == pytest.approx(30 / 45.5)
    clock[0] = 1089.0  # just inside the minute (the current second is one of the 60)
    assert ring.rate(60) == pytest.approx(0.5)
    clock[0] = 1090.0  # 60 s later: forgotten
    assert ring.rate(60) == 0.0
    ring.count()
    clock[0] = 1500.0  # a long silence clears the whole ring at once
    assert ring.rate(60) == 0.0
