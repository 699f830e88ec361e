"""Races on one task: drain, finish, expire and panic from four threads at once (hypothesis).

Each example fills one task whose ``on_execute`` waits for a gate, then four
threads hit it at once, each after its own small delay: one drains it through
the bucket, one lets it finish (fires it, opens the gate), one tells it
``Expire`` and one asks it ``Panic`` through its pykka ref. Whatever the
interleaving, the task ends exactly once: by one end hook, or drained (no hook).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from helpers.cluster import close_all
from helpers.recording import END_HOOKS, Recorder, RecordingExecutor
from helpers.waiting import WAIT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gobucket import BucketConfig, TaskBucket, TaskNotFoundError, TaskType
from gobucket.actors import messages as m

ACTIONS = ("drain", "finish", "expire", "panic")


class Gated(RecordingExecutor):
    """``on_execute`` waits until the task's gate (its data) opens."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder, execute=lambda ctx, id, gate: gate.wait(WAIT))


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[TaskBucket, Recorder]]:
    recorder = Recorder()
    bucket = TaskBucket(
        BucketConfig(name="races", life_span=30.0, run_after=20.0, max_bucket=10_000),
        Gated(recorder),
    )
    yield bucket, recorder
    close_all([bucket], grace=0)


_counter = iter(range(1_000_000))


def _hit(bucket: TaskBucket, task_id: str, ref: Any, gate: threading.Event, action: str) -> bool:
    """Do ``action`` to the task; True for a drain that took effect."""
    try:
        if action == "drain":
            bucket.drain(task_id)
            return True
        if action == "finish":
            gate.set()
            ref.tell(m.FIRE)  # a time bomb starts now (ignored once running or ended)
        elif action == "expire":
            ref.tell(m.EXPIRE)
        else:
            ref.ask(m.PANIC, block=False)
    except (TaskNotFoundError, pykka.ActorDeadError):
        pass  # the task ended first
    return False


def run_race(
    bucket: TaskBucket, recorder: Recorder, order: list[str], delays: list[int], immediate: bool
) -> None:
    task_id = f"race-{next(_counter)}"
    gate = threading.Event()
    if immediate:
        bucket.fill(TaskType.IMMEDIATE, task_id, gate)
    else:
        bucket.fill(TaskType.TIME_BOMB, task_id, gate)
    ref = bucket.task_ref(task_id)
    barrier = threading.Barrier(len(order))
    drained: list[bool] = []

    def act(action: str, delay: int) -> Callable[[], None]:
        def run() -> None:
            barrier.wait(WAIT)
            if delay:
                time.sleep(delay * 0.0003)
            drained.append(_hit(bucket, task_id, ref, gate, action))

        return run

    threads = [threading.Thread(target=act(a, d)) for a, d in zip(order, delays, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    gate.set()  # whatever happened, a running on_execute may return now
    assert recorder.wait_for(lambda: task_id not in bucket), f"{task_id} never ended"
    ends = recorder.ends(task_id)
    if any(drained):
        assert ends == [], f"{task_id} drained and ended by {ends}"
    else:
        assert len(ends) == 1, f"{task_id} ended by {ends} ({order}, {delays})"
    assert drained.count(True) <= 1
    assert not ref.is_alive()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    order=st.permutations(ACTIONS),
    delays=st.lists(st.integers(0, 4), min_size=4, max_size=4),
    immediate=st.booleans(),
)
def test_drain_finish_expire_and_panic_race_to_exactly_one_end(shared, order, delays, immediate):
    bucket, recorder = shared
    run_race(bucket, recorder, list(order), delays, immediate)


def test_after_the_races_the_stats_add_up(shared):
    bucket, recorder = shared
    for i in range(40):  # a few more, in case this test runs alone
        run_race(bucket, recorder, list(ACTIONS), [i % 3, i % 5, i % 2, 0], bool(i % 2))
    assert bucket.join(WAIT)
    stats = bucket.stats()
    ended = (
        stats.finished
        + stats.execute_errors
        + stats.exhausted
        + stats.panicked
        + stats.drained
        + stats.handed_off
    )
    assert stats.alive == 0
    assert ended == stats.filled
    assert stats.finished == recorder.count("on_finish")
    assert stats.exhausted == recorder.count("on_task_exhausted")
    assert stats.panicked == recorder.count("on_panic")
    assert stats.execute_errors == recorder.count("on_execute_error") == 0
    hooks = sum(recorder.count(h) for h in END_HOOKS)
    assert hooks + stats.drained == stats.filled
    # Drained or exhausted on_execute calls return once their gate opened.
    assert recorder.wait_for(lambda: bucket.stats().running == 0)
    assert bucket.stats().queued == 0
