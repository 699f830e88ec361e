"""Durations are bounded by MAX_DURATION: far-future ones are refused, never scheduled.

A time bomb or life span billions of seconds away used to pass validation and then
kill the process's only timer thread (its wait overflowed), so no timer in any bucket
ever fired again; one FILL frame from a peer did the same.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from helpers.cluster import Cluster
from helpers.raw_peer import RawPeer
from helpers.recording import Recorder, RecordingExecutor
from helpers.waiting import WAIT, wait_until

from gobucket import BucketConfig, InvalidArgumentError, TaskBucket, TaskType
from gobucket.config import MAX_DURATION, to_seconds

YEAR = 365.25 * 24 * 3600.0
TOO_LONG = "must be at most 315576000 seconds \\(10 years\\)"

HUGE: list[Any] = [timedelta.max, 1e12, 10**12, 10**400, MAX_DURATION * 1.000001]
"""Durations past the bound: the issue's ones, an int too large for a float, a hair over."""


def test_max_duration_is_ten_years() -> None:
    assert MAX_DURATION == 10 * YEAR == 315_576_000.0


def test_the_bound_itself_is_accepted_and_a_hair_over_is_refused() -> None:
    assert to_seconds(MAX_DURATION, "life_span") == MAX_DURATION
    assert to_seconds(timedelta(seconds=MAX_DURATION), "life_span") == MAX_DURATION
    with pytest.raises(InvalidArgumentError, match=f"run_after {TOO_LONG}, got 315576001"):
        to_seconds(int(MAX_DURATION) + 1, "run_after")


@pytest.mark.parametrize("huge", HUGE, ids=repr)
def test_huge_life_span_is_refused_at_fill(make_bucket: Any, recorder: Recorder, huge: Any) -> None:
    bucket: TaskBucket = make_bucket(RecordingExecutor(recorder))
    for task_type in TaskType:
        with pytest.raises(InvalidArgumentError, match=f"life_span {TOO_LONG}"):
            bucket.fill(task_type, "far", life_span=huge)
    assert "far" not in bucket
    assert len(bucket) == 0


@pytest.mark.parametrize("huge", HUGE, ids=repr)
def test_huge_run_after_is_refused_at_fill(make_bucket: Any, recorder: Recorder, huge: Any) -> None:
    bucket: TaskBucket = make_bucket(RecordingExecutor(recorder))
    with pytest.raises(InvalidArgumentError, match=f"run_after {TOO_LONG}"):
        bucket.fill(TaskType.TIME_BOMB, "far", run_after=huge)
    with pytest.raises(InvalidArgumentError, match=f"run_after {TOO_LONG}"):
        bucket.fill(TaskType.TIME_BOMB, "far", run_after=huge, life_span=MAX_DURATION)
    assert len(bucket) == 0


@pytest.mark.parametrize("huge", HUGE, ids=repr)
@pytest.mark.parametrize("field", ["life_span", "run_after", "retry_backoff"])
def test_huge_config_durations_are_refused(field: str, huge: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=f"{field} {TOO_LONG}"):
        BucketConfig(**{field: huge})


@pytest.mark.parametrize("huge", HUGE, ids=repr)
def test_huge_join_timeout_is_refused(make_bucket: Any, recorder: Recorder, huge: Any) -> None:
    bucket: TaskBucket = make_bucket(RecordingExecutor(recorder))
    with pytest.raises(InvalidArgumentError, match=f"timeout {TOO_LONG}"):
        bucket.join(timeout=huge)
    assert bucket.join(timeout=WAIT)  # still usable


def test_durations_just_under_the_bound_are_accepted(make_bucket: Any, recorder: Recorder) -> None:
    bucket: TaskBucket = make_bucket(
        RecordingExecutor(recorder), life_span=timedelta(days=365 * 9 + 300), run_after=9 * YEAR
    )
    bucket.fill(TaskType.TIME_BOMB, "config-far")
    bucket.fill(TaskType.TIME_BOMB, "fill-far", run_after=9 * YEAR, life_span=9.5 * YEAR)
    bucket.fill(TaskType.IMMEDIATE, "long-lived", life_span=MAX_DURATION)
    assert recorder.wait_hook("on_finish", "long-lived")
    assert "long-lived" not in bucket
    assert len(bucket) == 2
    for task_id in ("config-far", "fill-far"):
        bucket.drain(task_id)
        assert task_id not in bucket
    assert len(bucket) == 0
    assert recorder.hooks("config-far") == recorder.hooks("fill-far") == []


def test_timers_keep_firing_after_a_refused_far_future_fill(
    make_bucket: Any, recorder: Recorder
) -> None:
    """The issue's reproduction: the far fill is refused; other buckets' timers still fire."""
    far: TaskBucket = make_bucket(RecordingExecutor(recorder), name="far")
    for field in ("run_after", "life_span"):
        with pytest.raises(InvalidArgumentError):
            far.fill(TaskType.TIME_BOMB, "far", **{field: timedelta.max})
    fired_at: list[float] = []
    fired = threading.Event()
    release = threading.Event()

    def execute(ctx: Any, id: str, data: Any) -> None:
        if id == "expiring":
            release.wait(WAIT)  # runs past its life span
            return
        fired_at.append(time.monotonic())
        fired.set()

    near: TaskBucket = make_bucket(RecordingExecutor(recorder, execute), name="near")
    filled_at = time.monotonic()
    near.fill(TaskType.TIME_BOMB, "near", run_after=0.05, life_span=WAIT * 2)
    assert fired.wait(WAIT), "the time bomb never fired: the timer thread is dead"
    assert fired_at[0] >= filled_at + 0.05
    assert recorder.wait_hook("on_finish", "near")
    # A life span still runs out too.
    try:
        near.fill(TaskType.IMMEDIATE, "expiring", life_span=0.05)
        assert recorder.wait_hook("on_task_exhausted", "expiring")
    finally:
        release.set()


@pytest.mark.parametrize(
    "fields",
    [
        {"life_span": 1e12},
        {"life_span": timedelta.max.total_seconds()},
        {"life_span": 2**63 - 1},
        {"run_after": 1e12},
        {"run_after": 2**63 - 1, "life_span": 1e13},
        {"type": TaskType.IMMEDIATE.value, "run_after": 0.0, "life_span": 1e12},
    ],
    ids=repr,
)
def test_peer_fill_with_a_far_future_duration_is_refused(
    cluster: Cluster, fields: dict[str, Any]
) -> None:
    executor = RecordingExecutor()
    bucket = cluster.bucket(executor=executor)
    server = cluster.group(bucket)
    with RawPeer(server.address) as raw:
        raw.handshake()
        refused = raw.fill("far", None, rid=1, **fields)
        assert (refused["ok"], refused["code"], refused["rid"]) == (False, "bad_data", 1)
        assert "must be at most 315576000 seconds" in refused["msg"]
        assert "far" not in bucket
        # The connection stays up, and the node's timers still fire.
        accepted = raw.fill("near", None, rid=2, run_after=0.05, life_span=WAIT * 2)
        assert accepted == {"t": "ack", "rid": 2, "ok": True}
        wait_until(lambda: "near" in executor.executed_ids(), what="near fired")
        raw.ping(seq=3)


def test_peer_fill_with_a_task_id_over_one_kib_is_refused(cluster: Cluster) -> None:
    bucket = cluster.bucket(executor=RecordingExecutor())
    server = cluster.group(bucket)
    with RawPeer(server.address) as raw:
        raw.handshake()
        long_id = "x" * 1025
        refused = raw.fill(long_id, None, rid=1, run_after=0.0, life_span=WAIT)
        assert (refused["ok"], refused["code"]) == (False, "bad_data")
        assert "limit is 1024" in refused["msg"]
        assert long_id not in bucket
        accepted = raw.fill("y" * 1024, None, rid=2, run_after=0.0, life_span=WAIT)
        assert accepted["ok"] is True
