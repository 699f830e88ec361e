"""Races between the ways a task ends: whatever wins, each task ends exactly once."""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time

import pytest
from helpers.recording import END_HOOKS, Recorder, RecordingExecutor
from helpers.waiting import WAIT

from gobucket import Executor, TaskNotFoundError, TaskType
from gobucket.actors.bucket import BucketActor


def assert_each_ended_once(recorder: Recorder, accepted: list[str], drained: set[str]) -> None:
    """Every accepted task (by its data token) has one end hook, or none if drained."""
    ends: dict[str, list[str]] = {token: [] for token in accepted}
    for hook, _, data, _, _ in recorder.snapshot():
        if hook in END_HOOKS:
            assert data in ends, f"end hook {hook} for a task never accepted: {data}"
            ends[data].append(hook)
    problems = {
        token: hooks
        for token, hooks in ends.items()
        if (token in drained and hooks) or (token not in drained and len(hooks) != 1)
    }
    assert problems == {}, f"{len(problems)} task(s) did not end exactly once: {problems}"


def run_threads(*targets) -> None:
    """Run each target on its own thread; re-raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def guard(target):
        def run() -> None:
            try:
                target()
            except BaseException as error:
                errors.append(error)

        return run

    threads = [threading.Thread(target=guard(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    if errors:
        raise errors[0]


def try_drain(bucket, task_id: str) -> bool:
    """Drain; False if the task is not alive. Any other error is a failure."""
    try:
        bucket.drain(task_id)
    except TaskNotFoundError:
        return False
    return True


def test_drain_racing_fire_ends_each_time_bomb_once(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder), life_span=3.0, max_bucket=10_000)
    accepted: list[str] = []
    drained: set[str] = set()
    for rnd in range(4):
        ids = [f"r{rnd}-{i}" for i in range(60)]
        for i, task_id in enumerate(ids):
            bucket.fill(TaskType.TIME_BOMB, task_id, task_id, run_after=0.002 + 0.0004 * i)
            accepted.append(task_id)
        time.sleep(0.005 * rnd)  # shift where the drains fall relative to the fires
        for task_id in ids:
            if try_drain(bucket, task_id):
                drained.add(task_id)
                assert task_id not in bucket
    assert bucket.join(WAIT), f"still alive: {len(bucket)}"
    assert_each_ended_once(recorder, accepted, drained)
    stats = bucket.stats()
    assert stats.drained == len(drained)
    assert stats.ended == len(accepted)


def test_drain_racing_finish_ends_each_task_once(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder), life_span=3.0, max_bucket=10_000)
    filled: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    accepted: list[str] = []
    drained: set[str] = set()

    def filler() -> None:
        for i in range(3000):
            task_id = f"t{i}"
            bucket.fill(TaskType.IMMEDIATE, task_id, task_id)
            accepted.append(task_id)
            filled.put(task_id)
        filled.put(None)

    def drainer() -> None:
        while (task_id := filled.get(timeout=WAIT)) is not None:
            if try_drain(bucket, task_id):
                drained.add(task_id)

    run_threads(filler, drainer)
    assert bucket.join(WAIT), f"still alive: {len(bucket)}"
    assert_each_ended_once(recorder, accepted, drained)
    assert bucket.stats().ended == len(accepted)


def test_exhaust_racing_finish_ends_each_task_once(make_bucket, recorder):
    rng = random.Random(1234)
    offsets = {}

    def execute(ctx, id, data):
        # Return right around the deadline: sometimes just before, sometimes just after.
        time.sleep(max(0.0, ctx.deadline - time.monotonic() + offsets[id]))

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute), max_bucket=10_000)
    accepted = []
    for i in range(14):  # fewer than the default runtime's 16 workers
        task_id = f"t{i}"
        offsets[task_id] = rng.uniform(-0.003, 0.003)
        bucket.fill(TaskType.IMMEDIATE, task_id, task_id, life_span=0.05 + 0.002 * i)
        accepted.append(task_id)
    assert bucket.join(WAIT)
    assert_each_ended_once(recorder, accepted, set())
    for task_id in accepted:
        assert recorder.ends(task_id)[0] in ("on_finish", "on_task_exhausted")


def test_exhaust_racing_finish_of_async_tasks_ends_each_once(make_bucket, recorder):
    rng = random.Random(99)

    class Racer(Executor):
        async def on_execute(self, ctx, id, data):
            await asyncio.sleep(max(0.0, ctx.deadline - time.monotonic() + data[1]))

        def on_finish(self, ctx, id, data):
            recorder.record("on_finish", ctx, id, data[0])

        def on_task_exhausted(self, ctx, id, data):
            recorder.record("on_task_exhausted", ctx, id, data[0])

    bucket = make_bucket(Racer(), max_bucket=10_000)
    accepted = []
    for i in range(100):
        task_id = f"a{i}"
        bucket.fill(
            TaskType.IMMEDIATE,
            task_id,
            (task_id, rng.uniform(-0.003, 0.003)),
            life_span=0.03 + 0.0005 * i,
        )
        accepted.append(task_id)
    assert bucket.join(WAIT)
    assert_each_ended_once(recorder, accepted, set())


def test_rescue_while_tasks_are_firing_ends_each_task_once(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder), life_span=3.0, max_bucket=10_000)
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def keep_filling() -> None:
        i = 0
        while not stop.is_set() and i < 300:
            task_id = f"late{i}"
            bucket.fill(TaskType.IMMEDIATE, task_id, task_id)
            with lock:
                accepted.append(task_id)
            i += 1

    for i in range(150):
        task_id = f"bomb{i}"
        bucket.fill(TaskType.TIME_BOMB, task_id, task_id, run_after=0.0002 * i)
        accepted.append(task_id)
    counts: dict[str, int] = {}

    def rescue() -> None:
        time.sleep(0.015)  # land the rescue among the fires
        counts["before"] = recorder.count("on_panic")
        counts["rescued"] = bucket.rescue()
        counts["after"] = recorder.count("on_panic")
        stop.set()

    run_threads(keep_filling, rescue)
    panics_before, rescued, panics_after = counts["before"], counts["rescued"], counts["after"]
    assert panics_before == 0
    assert panics_after == rescued  # rescue returned only after each on_panic returned
    assert bucket.join(WAIT), f"still alive: {len(bucket)}"
    with lock:
        assert_each_ended_once(recorder, list(accepted), set())


def test_drain_racing_rescue_ends_each_task_once(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder), life_span=3.0, max_bucket=10_000)
    ids = [f"t{i}" for i in range(300)]
    for task_id in ids:
        bucket.fill(TaskType.TIME_BOMB, task_id, task_id, run_after=2.0)
    drained: set[str] = set()
    result: list[int] = []
    barrier = threading.Barrier(2)

    def drain_all() -> None:
        barrier.wait(WAIT)
        for task_id in ids:
            if try_drain(bucket, task_id):
                drained.add(task_id)

    def rescue() -> None:
        barrier.wait(WAIT)
        result.append(bucket.rescue())

    run_threads(drain_all, rescue)
    assert bucket.join(WAIT), f"still alive: {len(bucket)}"
    assert_each_ended_once(recorder, ids, drained)
    assert result == [len(ids) - len(drained)]
    assert recorder.count("on_execute") == 0


def test_drain_of_a_task_that_ends_meanwhile_raises_task_not_found(
    monkeypatch, make_bucket, recorder
):
    # Pin one unlucky interleaving: the task ends (its end hook returns and its
    # actor stops) while the bucket is already handling the drain of its id.
    entered = threading.Event()
    release = threading.Event()
    executor = RecordingExecutor(
        recorder, after={"on_finish": lambda *a: (entered.set(), release.wait(WAIT))}
    )
    original = BucketActor._drain

    def drain_after_the_task_ended(self, task_id):
        task = self.tasks.get(task_id)
        if task_id == "x" and task is not None:
            release.set()  # on_finish returns now; the task ends and stops
            deadline = time.monotonic() + WAIT
            while task.is_alive() and time.monotonic() < deadline:
                time.sleep(0.005)  # its end runs on a worker thread
            assert not task.is_alive()
        return original(self, task_id)

    monkeypatch.setattr(BucketActor, "_drain", drain_after_the_task_ended)
    bucket = make_bucket(executor)
    bucket.fill(TaskType.IMMEDIATE, "x")
    assert entered.wait(WAIT)
    with pytest.raises(TaskNotFoundError):
        bucket.drain("x")
    assert bucket.join(WAIT)
    assert recorder.ends("x") == ["on_finish"]
    bucket.fill(TaskType.IMMEDIATE, "y")  # the bucket is open and working
    assert bucket.join(WAIT)
