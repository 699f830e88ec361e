"""Retries: BucketConfig(max_retries=N, retry_backoff=s) and ctx.attempt."""

from __future__ import annotations

import contextlib
import threading
import time

import pykka
import pytest
from helpers.recording import RecordingExecutor
from helpers.waiting import WAIT

from gobucket import (
    ActorRuntime,
    BucketConfig,
    FunctionExecutor,
    InvalidArgumentError,
    TaskBucket,
    TaskType,
)
from gobucket.actors.messages import Retry

EPS = 0.002  # float rounding of the 1 ms timer wheel; timers never fire early


class Attempts:
    """on_execute that records (attempt, start, end) and raises until ``succeed_on``."""

    def __init__(self, succeed_on: int | None = None) -> None:
        self.succeed_on = succeed_on
        self.lock = threading.Lock()
        self.runs: list[tuple[int, float, float]] = []
        self.ctxs: list[object] = []

    def __call__(self, ctx, id, data):
        start = time.monotonic()
        attempt = ctx.attempt
        with self.lock:
            self.ctxs.append(ctx)
            self.runs.append((attempt, start, time.monotonic()))
        if attempt != self.succeed_on:
            raise ValueError(f"attempt {attempt}")
        return "ok"

    def attempts(self) -> list[int]:
        with self.lock:
            return [r[0] for r in self.runs]


def test_config_defaults_keep_the_seed_behaviour():
    config = BucketConfig()
    assert config.max_retries == 0
    assert config.retry_backoff == 0.1


def test_without_retries_a_raising_on_execute_ends_in_on_execute_error_after_one_try(
    make_bucket, recorder
):
    work = Attempts()
    bucket = make_bucket(RecordingExecutor(recorder, execute=work))
    bucket.fill(TaskType.IMMEDIATE, "t", "d")
    assert recorder.wait_hook("on_execute_error", "t")
    assert bucket.join(WAIT)
    assert work.attempts() == [1]
    assert recorder.ends("t") == ["on_execute_error"]
    error = recorder.first("on_execute_error", "t")[3]
    assert isinstance(error, ValueError) and str(error) == "attempt 1"


def test_a_failing_task_is_retried_with_doubling_backoff_then_ends_in_on_execute_error(
    make_bucket, recorder
):
    work = Attempts()
    bucket = make_bucket(
        RecordingExecutor(recorder, execute=work),
        life_span=20.0,
        max_retries=3,
        retry_backoff=0.1,
    )
    bucket.fill(TaskType.IMMEDIATE, "t", {"k": 1})
    assert recorder.wait_hook("on_execute_error", "t", timeout=WAIT)
    assert bucket.join(WAIT)
    assert work.attempts() == [1, 2, 3, 4]
    assert recorder.hooks("t").count("on_execute") == 4
    assert recorder.ends("t") == ["on_execute_error"]
    error = recorder.first("on_execute_error", "t")[3]
    assert str(error) == "attempt 4"  # the last error is reported
    # Each retry waits at least backoff * 2**(n-1) after the previous try ended.
    runs = work.runs
    for n, expected in enumerate((0.1, 0.2, 0.4), start=1):
        gap = runs[n][1] - runs[n - 1][2]
        assert gap >= expected - EPS, (n, gap)
    # One context for the whole task: the attempt counter lives on it.
    assert all(ctx is work.ctxs[0] for ctx in work.ctxs)


def test_a_retry_that_succeeds_ends_in_on_finish(make_bucket, recorder):
    work = Attempts(succeed_on=2)
    bucket = make_bucket(
        RecordingExecutor(recorder, execute=work), life_span=20.0, max_retries=5, retry_backoff=0.05
    )
    bucket.fill(TaskType.TIME_BOMB, "t", run_after=0.05)
    assert recorder.wait_hook("on_finish", "t")
    assert bucket.join(WAIT)
    assert work.attempts() == [1, 2]
    assert recorder.ends("t") == ["on_finish"]
    assert bucket.stats().execute_errors == 0


def test_async_on_execute_is_retried_too(make_bucket):
    attempts: list[int] = []
    done = threading.Event()
    outcome: dict[str, object] = {}

    async def on_execute(ctx, id, data):
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("not yet")

    def on_finish(ctx, id, data):
        outcome["end"] = "finish"
        done.set()

    def on_execute_error(ctx, id, data, error):
        outcome["end"] = "error"
        done.set()

    executor = FunctionExecutor(
        on_execute=on_execute, on_finish=on_finish, on_execute_error=on_execute_error
    )
    bucket = make_bucket(executor, life_span=20.0, max_retries=2, retry_backoff=0.02)
    bucket.fill(TaskType.IMMEDIATE, "a")
    assert done.wait(WAIT)
    assert bucket.join(WAIT)
    assert attempts == [1, 2, 3]
    assert outcome == {"end": "finish"}


def test_a_retry_that_would_land_after_the_life_span_is_not_attempted(make_bucket, recorder):
    work = Attempts()
    bucket = make_bucket(
        RecordingExecutor(recorder, execute=work),
        life_span=10.0,
        max_retries=3,
        retry_backoff=30.0,  # the first retry would be due long after the life span
    )
    bucket.fill(TaskType.IMMEDIATE, "t")
    assert recorder.wait_hook("on_execute_error", "t")
    errored_at = time.monotonic()
    assert bucket.join(WAIT)
    assert work.attempts() == [1]
    assert recorder.ends("t") == ["on_execute_error"]
    ctx = recorder.first("on_execute_error", "t")[4]
    assert errored_at < ctx.deadline  # at once, not after the life span ran out


def test_exhaustion_during_a_retry_wait_ends_the_task_with_on_task_exhausted(recorder):
    """The retry is due inside the life span but its timer is late (a loaded machine):
    the life span runs out while the task waits, so it ends by on_task_exhausted and
    the late retry never runs on_execute again."""
    runtime = ActorRuntime(dispatchers=1, workers=2, name="retry-late")
    real_schedule = runtime.timers.schedule
    held: list[tuple[float, object, object]] = []

    def late_retries(due, target, message):
        if isinstance(message, Retry):
            held.append((due, target, message))
            return real_schedule(due + 3600.0, target, message)  # far too late
        return real_schedule(due, target, message)

    runtime.timers.schedule = late_retries  # type: ignore[method-assign]
    work = Attempts()
    bucket = TaskBucket(
        BucketConfig(life_span=0.5, max_retries=2, retry_backoff=0.05),
        RecordingExecutor(recorder, execute=work),
        runtime=runtime,
    )
    try:
        bucket.fill(TaskType.IMMEDIATE, "t")
        assert recorder.wait_hook("on_task_exhausted", "t")
        assert bucket.join(WAIT)
        assert recorder.ends("t") == ["on_task_exhausted"]
        assert work.attempts() == [1]
        ctx = recorder.first("on_task_exhausted", "t")[4]
        assert len(held) == 1
        due, target, message = held[0]
        assert due < ctx.deadline  # it was a retry inside the life span
        # Deliver the late retry now: the ended task must not run on_execute again.
        with contextlib.suppress(pykka.ActorDeadError):  # its actor may be gone already
            target.ask(message, timeout=WAIT)  # type: ignore[attr-defined]
        assert ctx.attempt == 1
        assert work.attempts() == [1]
        assert ctx.cancelled
    finally:
        bucket.close(grace=0)
        runtime.shutdown()


def test_retries_do_not_apply_to_a_task_that_succeeds(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder), max_retries=3)
    bucket.fill(TaskType.IMMEDIATE, "ok")
    assert recorder.wait_hook("on_finish", "ok")
    assert bucket.join(WAIT)
    assert recorder.first("on_execute", "ok")[4].attempt == 1
    assert recorder.hooks("ok").count("on_execute") == 1


def test_max_retries_must_be_a_non_negative_int():
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(InvalidArgumentError):
            BucketConfig(max_retries=bad)
    with pytest.raises(InvalidArgumentError):
        BucketConfig(retry_backoff=-0.1)
