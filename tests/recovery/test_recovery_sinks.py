"""Rescue sinks: JsonlRescueSink (append, fsync, torn last line) and RedisRescueSink (real
redis-server), and the RescuedTask record they store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import rescue_child
from helpers.redis_server import start_redis, stop_redis
from helpers.waiting import run_threads

import gobucket
from gobucket import JsonlRescueSink, RedisRescueSink, RescuedTask, TaskType
from gobucket.errors import SinkWriteError
from gobucket.recovery import sinks as sinks_module

CHILD = Path(rescue_child.__file__)
WAIT = 20.0

DATA = [
    {"i": 1, "blob": b"\x00\xffbytes", "nested": {"list": [1, 2.5, None, True, "x"]}},
    "plain string ünïcode",
    None,
    [1, [2, [3]]],
    12345678901234,
    b"raw bytes",
]


def records(bucket: str = "mail", prefix: str = "t", n: int = len(DATA)) -> list[RescuedTask]:
    out = []
    for i in range(n):
        bomb = i % 2 == 0
        out.append(
            RescuedTask(
                bucket,
                f"{prefix}{i}",
                TaskType.TIME_BOMB if bomb else TaskType.IMMEDIATE,
                DATA[i % len(DATA)],
                remaining_life=10.0 + i,
                remaining_wait=(1.5 + i) if bomb else 0.0,
            )
        )
    return out


def with_bad(good: list[RescuedTask], at: int) -> list[RescuedTask]:
    """``good`` with a record whose data no sink can encode (a set) inserted at ``at``."""
    bad = RescuedTask("mail", "bad", TaskType.IMMEDIATE, {1, 2}, remaining_life=5.0)
    return [*good[:at], bad, *good[at:]]


def ids(tasks: Sequence[RescuedTask]) -> list[str]:
    return [t.task_id for t in tasks]


def same_task(a: RescuedTask, b: RescuedTask) -> bool:
    return (
        a.bucket == b.bucket
        and a.task_id == b.task_id
        and a.task_type is b.task_type
        and a.data == b.data
        and a.remaining_life == b.remaining_life
        and a.remaining_wait == b.remaining_wait
        and a.rescued_at == b.rescued_at
        and a.due_at == b.due_at
        and a.deadline_at == b.deadline_at
    )


def test_sinks_are_importable_from_gobucket():
    assert gobucket.JsonlRescueSink is JsonlRescueSink
    assert gobucket.RedisRescueSink is RedisRescueSink
    assert gobucket.RescuedTask is RescuedTask
    assert callable(gobucket.replay)


def test_rescued_task_round_trips_through_its_dict():
    for task in records():
        raw = task.to_dict()
        json.dumps(raw)  # JSON-safe, bytes included
        again = RescuedTask.from_dict(raw, key="k")
        assert same_task(task, again)
        assert again.key == "k"


# JsonlRescueSink -------------------------------------------------------------------------


def test_jsonl_write_appends_and_read_returns_every_field(tmp_path):
    path = tmp_path / "rescued.jsonl"
    sink = JsonlRescueSink(path)
    first, second = records(prefix="a"), records(prefix="b", n=3)
    sink.write(first)
    sink.write(second)  # appended, not overwritten
    stored = sink.read()
    assert len(stored) == len(first) + len(second)
    for want, got in zip(first + second, stored, strict=True):
        assert same_task(want, got), (want, got)
    keys = [t.key for t in stored]
    assert all(keys) and len(set(keys)) == len(keys)
    lines = path.read_text().splitlines()
    assert len(lines) == len(stored)
    for line, task in zip(lines, first + second, strict=True):
        raw = json.loads(line)
        assert raw["bucket"] == "mail"
        assert raw["id"] == task.task_id
        assert raw["type"] == task.task_type.value
        assert raw["remaining_life"] == task.remaining_life
        assert raw["v"] == 2
        assert raw["due_at"] == task.due_at and raw["deadline_at"] == task.deadline_at
        assert ("data" in raw) != ("data_msgpack" in raw)


def test_jsonl_read_of_a_missing_file_is_empty_and_an_empty_write_makes_no_file(tmp_path):
    sink = JsonlRescueSink(tmp_path / "nothing.jsonl")
    assert sink.read() == []
    sink.write([])
    assert not (tmp_path / "nothing.jsonl").exists()
    sink.remove([])  # nothing to do


def test_jsonl_write_fsyncs_the_file_before_returning(tmp_path, monkeypatch):
    path = tmp_path / "rescued.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    JsonlRescueSink(path).write(records())
    assert path.stat().st_ino in synced


def test_jsonl_torn_last_line_is_skipped_and_later_writes_still_work(tmp_path):
    path = tmp_path / "rescued.jsonl"
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="a", n=3))
    # A crash in the middle of the last record's write: cut the file inside its line.
    raw = path.read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(raw[: last_start + (len(raw) - last_start) // 2])
    assert [t.task_id for t in sink.read()] == ["a0", "a1"]
    later = records(prefix="b", n=2)
    sink.write(later)
    assert [t.task_id for t in sink.read()] == ["a0", "a1", "b0", "b1"]
    # A fresh sink on the same file (the next process) reads the same.
    again = JsonlRescueSink(path)
    stored = again.read()
    assert [t.task_id for t in stored] == ["a0", "a1", "b0", "b1"]
    assert same_task(stored[2], later[0]) and same_task(stored[3], later[1])
    # remove() keeps every complete record but the removed one.
    again.remove([stored[0]])
    assert [t.task_id for t in again.read()] == ["a1", "b0", "b1"]


def test_jsonl_garbage_without_newline_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "rescued.jsonl"
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="a", n=1))
    with open(path, "ab") as handle:
        handle.write(b'{"bucket":"mail","id":"torn","ty')
    sink.write(records(prefix="b", n=1))
    assert [t.task_id for t in sink.read()] == ["a0", "b0"]


def test_jsonl_remove_forgets_only_the_given_tasks_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "rescued.jsonl"
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="a", n=5))
    stored = sink.read()
    sink.remove([stored[1], stored[3]])
    left = sink.read()
    assert [t.task_id for t in left] == ["a0", "a2", "a4"]
    assert [t.key for t in left] == [stored[0].key, stored[2].key, stored[4].key]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rescued.jsonl"]
    # Removing already-removed tasks is harmless.
    sink.remove([stored[1]])
    assert [t.task_id for t in sink.read()] == ["a0", "a2", "a4"]


def test_jsonl_the_same_id_written_twice_is_stored_twice_with_distinct_keys(tmp_path):
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write(records(prefix="same", n=1))
    sink.write(records(prefix="same", n=1))
    stored = sink.read()
    assert [t.task_id for t in stored] == ["same0", "same0"]
    sink.remove([stored[0]])
    assert [t.key for t in sink.read()] == [stored[1].key]


def test_jsonl_concurrent_writers_lose_nothing(tmp_path):
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            start.wait(WAIT)
            for k in range(20):
                sink.write(records(prefix=f"w{w}-{k}-", n=3))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    run_threads(writer, 6)
    assert not errors
    ids = [t.task_id for t in sink.read()]
    assert len(ids) == 6 * 20 * 3
    assert len(set(ids)) == len(ids)


def test_jsonl_lines_are_plain_json_people_and_jq_can_read(tmp_path):
    path = tmp_path / "r.jsonl"
    mail = {"to": "a@example.com", "n": [1, 2.5, None], "ok": True}
    JsonlRescueSink(path).write(
        [
            RescuedTask("mail", "plain", TaskType.IMMEDIATE, mail, remaining_life=5.0),
            RescuedTask("mail", "blob", TaskType.IMMEDIATE, {"b": b"\x00"}, remaining_life=5.0),
        ]
    )
    plain, blob = (json.loads(line) for line in path.read_text().splitlines())
    assert plain["v"] == 2 and plain["data"] == mail and "data_msgpack" not in plain
    assert "data" not in blob and isinstance(blob["data_msgpack"], str)
    assert [t.data for t in JsonlRescueSink(path).read()] == [mail, {"b": b"\x00"}]


# As gobucket 0.1 wrote it: no "v", data base64 msgpack of {"i": 1, "blob": b"\x00\x01"}.
V1_LINE = (
    '{"bucket":"mail","id":"old","type":"time_bomb","data":"gqFpAaRibG9ixAIAAQ==",'
    '"remaining_life":40.0,"remaining_wait":4.0,"rescued_at":2000.0,"key":"k-old"}'
)


def test_jsonl_reads_old_format_lines_next_to_new_ones_and_keeps_unknown_versions(tmp_path):
    path = tmp_path / "r.jsonl"
    future = '{"v":99,"bucket":"mail","id":"future","key":"k-future"}'
    path.write_text(V1_LINE + "\n" + future + "\n")
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="new", n=1))
    old, new = sink.read()  # the unknown version is skipped, not guessed at
    assert old.task_id == "old" and old.key == "k-old"
    assert old.data == {"i": 1, "blob": b"\x00\x01"}
    assert (old.due_at, old.deadline_at) == (2004.0, 2040.0)
    assert new.task_id == "new0" and new.data == DATA[0]
    sink.remove([old])
    assert [t.task_id for t in sink.read()] == ["new0"]
    sink.remove([new])  # every record read is gone: the file is compacted
    lines = path.read_text().splitlines()
    # A record this version cannot read stays, verbatim, for a version that can.
    assert lines == [future]


def test_jsonl_remove_appends_a_tombstone_instead_of_rewriting(tmp_path):
    path = tmp_path / "r.jsonl"
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="t", n=4))
    first, second, *_ = sink.read()
    size = path.stat().st_size
    sink.remove([first])
    text = path.read_text()
    assert text.startswith(path.read_text()[:size])  # appended, nothing rewritten
    assert '"removed":["' + first.key + '"]' in text.splitlines()[-1]
    assert [t.task_id for t in JsonlRescueSink(path).read()] == ["t1", "t2", "t3"]
    sink.remove([second])
    assert len(JsonlRescueSink(path).read()) == 2


def test_jsonl_replaying_a_large_file_takes_linear_time(tmp_path):
    path = tmp_path / "r.jsonl"
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="big", n=20_000))
    loaded = sink.read()
    started = time.monotonic()
    for start in range(0, len(loaded), 256):  # what replay() does
        sink.remove(loaded[start : start + 256])
    assert time.monotonic() - started < 10.0  # was ~20 s: a full rewrite per batch
    assert sink.read() == []
    assert path.read_text() == ""  # compacted once everything was removed


def test_jsonl_a_record_that_cannot_be_encoded_does_not_stop_the_others(tmp_path):
    path = tmp_path / "r.jsonl"
    sink = JsonlRescueSink(path)
    good = records(prefix="g")
    with pytest.raises(SinkWriteError) as caught:
        sink.write(with_bad(good, 2))
    assert ids(caught.value.failed) == ["bad"]
    assert caught.value.written == len(good)
    assert "'bad'" in str(caught.value)
    stored = sink.read()
    assert ids(stored) == ids(good)
    assert all(same_task(want, got) for want, got in zip(good, stored, strict=True))
    # Nothing encodable at all: nothing written, still reported.
    with pytest.raises(SinkWriteError) as caught:
        sink.write(with_bad([], 0))
    assert caught.value.written == 0 and ids(caught.value.failed) == ["bad"]
    assert len(sink.read()) == len(good)


def test_jsonl_timeout_is_an_attribute_with_a_default(tmp_path):
    assert JsonlRescueSink(tmp_path / "a.jsonl").timeout == 5.0
    assert JsonlRescueSink(tmp_path / "b.jsonl", timeout=1.5).timeout == 1.5


@pytest.mark.slow
def test_jsonl_survives_a_process_killed_in_the_middle_of_writing(tmp_path):
    path = tmp_path / "crash.jsonl"
    batch = 200
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "write-loop", "--jsonl", str(path), "--count", str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    acked = -1
    watchdog = threading.Timer(WAIT, proc.kill)  # bounds the blocking reads below
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF if the child dies early
            acked = int(line.split()[1])
            if acked >= 15:
                break
        assert acked >= 15, "the writer died early"
        proc.send_signal(signal.SIGKILL)  # while it keeps writing
        proc.wait(WAIT)
        for line in proc.stdout:  # batches acknowledged before the kill
            acked = max(acked, int(line.split()[1]))
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()
    sink = JsonlRescueSink(path)
    stored = sink.read()
    ids = {t.task_id for t in stored}
    assert len(ids) == len(stored)  # nothing doubled
    # Every acknowledged (fsynced) batch is there in full.
    for k in range(acked + 1):
        assert {f"w{k}-{n}" for n in range(batch)} <= ids, k
    # At most the batch in flight is partial; nothing beyond it exists.
    assert len(stored) <= (acked + 2) * batch
    # The file still takes writes, and they read back.
    sink.write(records(prefix="after", n=2))
    assert [t.task_id for t in sink.read()[-2:]] == ["after0", "after1"]


# RedisRescueSink --------------------------------------------------------------------------


def test_redis_sink_stores_every_field_in_a_hash(redis_url):
    import redis

    sink = RedisRescueSink(redis_url, "rescued:test")
    client = redis.Redis.from_url(redis_url)
    try:
        assert sink.read() == []
        first, second = records(prefix="a"), records(prefix="b", n=2)
        sink.write(first)
        sink.write(second)
        sink.write([])
        assert client.hlen("rescued:test") == len(first) + len(second)
        stored = {t.task_id: t for t in sink.read()}
        assert set(stored) == {t.task_id for t in first + second}
        for want in first + second:
            assert same_task(want, stored[want.task_id])
            assert stored[want.task_id].key
        # What is in Redis: one JSON record per field, with the documented fields.
        for value in client.hvals("rescued:test"):
            raw = json.loads(value)
            assert {"v", "bucket", "id", "type", "due_at", "deadline_at", "remaining_life"} <= set(
                raw
            )
    finally:
        client.close()
        sink.close()


def test_redis_sink_remove_forgets_only_the_given_tasks_and_keys_are_separate(
    redis_url,
):
    a = RedisRescueSink(redis_url, "rescued:a")
    b = RedisRescueSink(redis_url, "rescued:b")
    try:
        a.write(records(prefix="a", n=4))
        b.write(records(prefix="b", n=2))
        stored = sorted(a.read(), key=lambda t: t.task_id)
        a.remove([stored[0], stored[2]])
        a.remove([])
        assert sorted(t.task_id for t in a.read()) == ["a1", "a3"]
        assert sorted(t.task_id for t in b.read()) == ["b0", "b1"]
        # A second client on the same key (the next process) sees the same.
        again = RedisRescueSink(redis_url, "rescued:a")
        try:
            assert sorted(t.task_id for t in again.read()) == ["a1", "a3"]
        finally:
            again.close()
    finally:
        a.close()
        b.close()


def test_redis_sink_skips_an_invalid_record(redis_url):
    import redis

    sink = RedisRescueSink(redis_url, "rescued:bad")
    client = redis.Redis.from_url(redis_url)
    try:
        sink.write(records(prefix="ok", n=1))
        client.hset("rescued:bad", "junk", "{not json")
        assert [t.task_id for t in sink.read()] == ["ok0"]
    finally:
        client.close()
        sink.close()


def test_redis_a_record_that_cannot_be_encoded_does_not_stop_the_others(redis_url):
    sink = RedisRescueSink(redis_url, "rescued:bad-data")
    try:
        good = records(prefix="g")
        with pytest.raises(SinkWriteError) as caught:
            sink.write(with_bad(good, 1))
        assert ids(caught.value.failed) == ["bad"]
        assert caught.value.written == len(good)
        assert caught.value.__cause__ is None  # only the data failed: the sink is fine
        assert sorted(ids(sink.read())) == sorted(ids(good))
    finally:
        sink.close()


def test_redis_timeout_is_an_attribute_with_a_default(redis_url):
    default, short = RedisRescueSink(redis_url), RedisRescueSink(redis_url, timeout=0.5)
    try:
        assert default.timeout == 2.0 and short.timeout == 0.5
    finally:
        default.close()
        short.close()


def test_redis_a_chunk_that_runs_after_its_fence_stores_nothing(redis_url, monkeypatch):
    """The server runs a chunk after the client stopped waiting for it (here: the
    client's clock is 10 s behind, the same as a command held 10 s by a frozen server)."""
    sink = RedisRescueSink(redis_url, "rescued:fenced", timeout=1.0)
    try:
        monkeypatch.setattr(sinks_module, "_wall_clock", lambda: time.time() - 10.0)
        with pytest.raises(SinkWriteError, match="fence") as caught:
            sink.write(records())
        assert caught.value.written == 0
        assert ids(caught.value.failed) == ids(records())
        monkeypatch.undo()
        assert sink.read() == []
    finally:
        sink.close()


def test_redis_writes_in_chunks_and_stops_when_its_budget_is_spent(redis_url, monkeypatch):
    sink = RedisRescueSink(redis_url, "rescued:budget", timeout=1.0, chunk=2)
    calls = 0

    def clock() -> float:
        # The write's start and its first chunk see the real clock; then time jumps
        # past the write's budget (a slow chunk, as far as the sink can tell).
        nonlocal calls
        calls += 1
        return time.time() + (0.0 if calls <= 2 else 100.0)

    try:
        sink.write(records(prefix="ok", n=5))  # 3 chunks, well inside the budget
        monkeypatch.setattr(sinks_module, "_wall_clock", clock)
        batch = records(prefix="b", n=6)
        with pytest.raises(SinkWriteError, match="budget") as caught:
            sink.write(batch)
        assert caught.value.written == 2
        assert ids(caught.value.failed) == ids(batch[2:])
        monkeypatch.undo()
        assert sorted(ids(sink.read())) == sorted([*ids(records(prefix="ok", n=5)), "b0", "b1"])
    finally:
        sink.close()


# A Redis that dies or freezes ---------------------------------------------------------

SLACK = 1.5  # scheduling on a loaded 2-core machine, on top of the sink's own timeout


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server process this test may kill or stop; always continued and stopped."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        stop_redis(proc)


def timed_write(sink: RedisRescueSink, tasks: list[RescuedTask]) -> tuple[float, BaseException]:
    """Run ``sink.write`` on a thread; return how long it took and what it raised."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            sink.write(tasks)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    writer = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    writer.start()
    writer.join(WAIT)
    elapsed = time.monotonic() - start
    assert not writer.is_alive(), f"write() still blocked after {WAIT}s"
    assert outcome[0] is not None, "write() returned although Redis cannot have stored it"
    return elapsed, outcome[0]


def eval_calls(client: Any) -> int:
    stats = client.info("commandstats").get("cmdstat_eval", {})
    return int(stats.get("calls", 0))


def test_redis_sink_against_a_killed_server_raises_within_its_timeout(redis_server):
    proc, url = redis_server
    connected = RedisRescueSink(url, "rescued:killed", timeout=1.0)
    fresh = RedisRescueSink(url, "rescued:killed", timeout=1.0)
    try:
        assert connected.read() == []  # a pooled connection to the server that dies
        proc.kill()
        proc.wait(WAIT)
        for sink in (connected, fresh):
            batch = records(prefix="k")
            elapsed, error = timed_write(sink, batch)
            assert isinstance(error, SinkWriteError), repr(error)
            assert error.written == 0 and ids(error.failed) == ids(batch)
            assert error.__cause__ is not None  # the sink failed, not the data
            assert elapsed < sink.timeout + SLACK, elapsed
    finally:
        connected.close()
        fresh.close()


def test_redis_sink_against_a_frozen_server_raises_in_time_and_the_late_write_never_lands(
    redis_server,
):
    import redis

    proc, url = redis_server
    sink = RedisRescueSink(url, "rescued:frozen", timeout=1.0)
    probe = redis.Redis.from_url(url, socket_timeout=WAIT)
    try:
        assert sink.read() == []  # connected: the write is sent, the server just sits on it
        evals_before = eval_calls(probe)
        batch = records(prefix="f")
        proc.send_signal(signal.SIGSTOP)
        try:
            elapsed, error = timed_write(sink, batch)
        finally:
            proc.send_signal(signal.SIGCONT)
        assert isinstance(error, SinkWriteError), repr(error)
        assert error.written == 0 and ids(error.failed) == ids(batch)
        assert error.__cause__ is not None  # the sink failed, not the data
        assert elapsed < sink.timeout + SLACK, elapsed
        # Resumed, the server runs the command it received while frozen: wait until it
        # did, then check it stored nothing (the caller has written these elsewhere).
        deadline = time.monotonic() + WAIT
        while eval_calls(probe) < evals_before + 1:
            assert time.monotonic() < deadline, "the server never ran the late write"
            time.sleep(0.02)  # polling another process's counter; the deadline decides
        assert probe.hlen("rescued:frozen") == 0
        # And the sink works again once the server does.
        sink.write(batch)
        assert sorted(ids(sink.read())) == sorted(ids(batch))
    finally:
        probe.close()
        sink.close()
