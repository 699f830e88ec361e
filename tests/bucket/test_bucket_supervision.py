"""Supervision: a TaskActor whose own code fails is noticed by its BucketActor."""

from __future__ import annotations

import logging

import pytest
from helpers.recording import RecordingExecutor
from helpers.waiting import WAIT

from gobucket import TaskType
from gobucket.actors.task import TaskActor
from gobucket.errors import TaskActorCrashedError


class ActorBug(RuntimeError):
    pass


def fail_for(monkeypatch, method: str, task_id: str) -> None:
    """Make ``TaskActor.<method>`` raise ActorBug for one task id, once."""
    original = getattr(TaskActor, method)
    fired = []

    def faulty(self, *args, **kwargs):
        if self.task_id == task_id and not fired:
            fired.append(True)
            raise ActorBug(f"injected fault in {method}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TaskActor, method, faulty)


@pytest.mark.parametrize(
    ("task_type", "run_after"), [(TaskType.IMMEDIATE, None), (TaskType.TIME_BOMB, 0.05)]
)
def test_crash_before_on_execute_ends_the_task_through_on_execute_error(
    monkeypatch, make_bucket, recorder, caplog, task_type, run_after
):
    fail_for(monkeypatch, "_execute", "bad")
    bucket = make_bucket(RecordingExecutor(recorder))
    with caplog.at_level(logging.ERROR):
        bucket.fill(task_type, "bad", {"k": 1}, run_after=run_after)
        bucket.fill(task_type, "good", run_after=run_after)
        assert bucket.join(WAIT)
    assert recorder.hooks("bad") == ["on_execute_error"]
    _, _, data, error, ctx = recorder.first("on_execute_error", "bad")
    assert data == {"k": 1}
    assert ctx.task_id == "bad"
    assert isinstance(error, TaskActorCrashedError)
    assert isinstance(error.__cause__, ActorBug)
    assert recorder.hooks("good") == ["on_execute", "on_finish"]
    assert "bad" not in bucket
    stats = bucket.stats()
    assert stats.crashed == 1
    assert stats.execute_errors == 1
    assert stats.finished == 1
    assert any(isinstance(r.exc_info and r.exc_info[1], ActorBug) for r in caplog.records)


def test_crash_while_handling_the_result_of_on_execute_still_gives_one_end(
    monkeypatch, make_bucket, recorder
):
    fail_for(monkeypatch, "_on_executed", "bad")
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.IMMEDIATE, "bad")
    assert bucket.join(WAIT)
    assert recorder.hooks("bad") == ["on_execute", "on_execute_error"]
    assert isinstance(recorder.first("on_execute_error", "bad")[3], TaskActorCrashedError)
    assert bucket.stats().crashed == 1


def test_crash_after_the_end_hook_ran_frees_the_id_without_a_second_end(
    monkeypatch, make_bucket, recorder
):
    fail_for(monkeypatch, "_on_end_done", "bad")
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.IMMEDIATE, "bad")
    assert bucket.join(WAIT)
    assert recorder.ends("bad") == ["on_finish"]
    assert "bad" not in bucket
    assert bucket.stats().crashed == 1


def test_id_of_a_crashed_task_can_be_filled_again(monkeypatch, make_bucket, recorder):
    fail_for(monkeypatch, "_execute", "bad")
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.IMMEDIATE, "bad", 1)
    assert bucket.join(WAIT)
    bucket.fill(TaskType.IMMEDIATE, "bad", 2)  # the fault fires once only
    assert bucket.join(WAIT)
    assert recorder.ends_by_data(1) == ["on_execute_error"]
    assert recorder.ends_by_data(2) == ["on_finish"]


def test_rescue_after_a_crash_still_reaches_every_other_task(monkeypatch, make_bucket, recorder):
    fail_for(monkeypatch, "_execute", "bad")
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.IMMEDIATE, "bad")
    for i in range(3):
        bucket.fill(TaskType.TIME_BOMB, f"w{i}", run_after=1.0)
    assert recorder.wait_hook("on_execute_error", "bad")
    assert bucket.rescue() == 3
    assert bucket.join(WAIT)
    for i in range(3):
        assert recorder.ends(f"w{i}") == ["on_panic"]
    assert recorder.ends("bad") == ["on_execute_error"]
