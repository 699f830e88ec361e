"""Property: under any sequence of fills, drains, rescues and waits, every accepted
task ends exactly once (one end hook, or drained) and the bucket empties."""

from __future__ import annotations

import time

from helpers.recording import END_HOOKS, Recorder, RecordingExecutor
from helpers.waiting import WAIT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gobucket import (
    BucketConfig,
    BucketFullError,
    DuplicateTaskError,
    TaskBucket,
    TaskNotFoundError,
    TaskType,
)

IDS = [f"id{i}" for i in range(6)]
BEHAVIOURS = ["ok", "raise", "slow"]

ms = st.integers(min_value=0, max_value=50).map(lambda n: n / 1000)

fill = st.tuples(
    st.just("fill"),
    st.sampled_from(IDS),
    st.sampled_from([TaskType.IMMEDIATE, TaskType.TIME_BOMB]),
    ms,  # run_after (time bombs)
    ms,  # life span beyond run_after
    st.sampled_from(BEHAVIOURS),
)
drain = st.tuples(st.just("drain"), st.sampled_from(IDS))
rescue = st.tuples(st.just("rescue"))
wait = st.tuples(st.just("wait"), st.integers(min_value=0, max_value=30))
operations = st.lists(st.one_of(fill, fill, drain, rescue, wait), min_size=1, max_size=25)


def execute(ctx, id, data):
    behaviour = data[1]
    if behaviour == "raise":
        raise RuntimeError("task failed")
    if behaviour == "slow":
        ctx.wait_cancelled(0.08)


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations, max_bucket=st.integers(min_value=1, max_value=8))
def test_every_accepted_task_ends_exactly_once_and_the_bucket_empties(ops, max_bucket):
    recorder = Recorder()
    bucket = TaskBucket(
        BucketConfig(life_span=0.05, run_after=0.0, max_bucket=max_bucket),
        RecordingExecutor(recorder, execute=execute),
    )
    accepted: list[tuple[str, int]] = []  # data tokens: (id, serial)
    latest: dict[str, tuple[str, int]] = {}  # the newest accepted token per id
    drained: set[tuple[str, int]] = set()
    rescued_total = 0
    try:
        for serial, op in enumerate(ops):
            kind = op[0]
            if kind == "fill":
                _, task_id, task_type, run_after, extra, behaviour = op
                token = (task_id, serial)
                kwargs = {"life_span": run_after + extra + 0.001}
                if task_type is TaskType.TIME_BOMB:
                    kwargs["run_after"] = run_after
                try:
                    bucket.fill(task_type, task_id, (token, behaviour), **kwargs)
                except (DuplicateTaskError, BucketFullError):
                    continue
                accepted.append(token)
                latest[task_id] = token
            elif kind == "drain":
                task_id = op[1]
                try:
                    bucket.drain(task_id)
                except TaskNotFoundError:
                    continue
                assert task_id in latest, "drained an id that was never accepted"
                drained.add(latest[task_id])
            elif kind == "rescue":
                rescued = bucket.rescue(timeout=WAIT)
                rescued_total += rescued
                # rescue returns only once every on_panic has returned
                assert recorder.count("on_panic") == rescued_total
            else:
                time.sleep(op[1] / 1000)

        assert bucket.join(WAIT), f"bucket never emptied: {len(bucket)} alive"
        assert len(bucket) == 0

        ends: dict[tuple[str, int], list[str]] = {token: [] for token in accepted}
        for hook, _, data, _, _ in recorder.snapshot():
            if hook in END_HOOKS:
                assert data[0] in ends, f"{hook} for a task that was never accepted"
                ends[data[0]].append(hook)
        for token, hooks in ends.items():
            if token in drained:
                assert hooks == [], f"drained task {token} also ended by {hooks}"
            else:
                assert len(hooks) == 1, f"task {token} ended {len(hooks)} times: {hooks}"
        assert recorder.count("on_panic") == rescued_total

        stats = bucket.stats()
        assert stats.filled == len(accepted)
        assert stats.ended == len(accepted)
        assert stats.drained == len(drained)
        assert stats.alive == 0
    finally:
        bucket.close(grace=0)
