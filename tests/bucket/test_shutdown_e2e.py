"""Issue 8, "nothing accepted is ever lost": shutdown end to end.

Child processes (``tests/helpers/shutdown_child.py``) are signalled while they work, and
every task they accepted must have ended exactly once or be stored exactly once (rescue
sink or fallback file), including while Redis is frozen or killed. A last, in-process
soak fills 1,000,000 tasks and checks every one ends exactly once.

Every test prints what it measured (run ``pytest -s`` to see it).
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import shutdown_child
from helpers.child_process import ChildProcess, spawner
from helpers.redis_server import start_redis, stop_redis
from helpers.shutdown_child import BOMB_LIFE, BOMB_WAIT, NAME, bomb_data

from gobucket import (
    ActorRuntime,
    BucketConfig,
    Executor,
    JsonlRescueSink,
    RedisRescueSink,
    TaskBucket,
    TaskNotFoundError,
    TaskType,
)
from gobucket import replay as replay_sink

pytestmark = pytest.mark.slow

CHILD = Path(shutdown_child.__file__)
WAIT = 60.0  # generous: a loaded 2-core machine
SIGNAL_TIMEOUT = 10.0  # install_signal_handlers' default rescue bound
EXIT_MARGIN = 5.0  # process start-up, scheduling and os._exit on a loaded machine
CHURN_EXIT_WAIT = 20.0
CHURN_READY = 20_000  # acknowledged fills before the signal (about 3 s of filling)
SIGTERM_EXIT = 128 + signal.SIGTERM
RESCUE_LOG = re.compile(
    r"rescued (\d+) task\(s\): (\d+) in the sink, (\d+) in the fallback, (\d+) lost, "
    r"(\d+) pending"
)


class Child(ChildProcess):
    """A shutdown_child.py process."""

    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__(CHILD, args, log)

    def rescue_counts(self) -> dict[str, int]:
        """Sum of the bucket's "rescued N task(s): S in the sink, F in the fallback..." lines."""
        total = dict.fromkeys(("rescued", "sink", "fallback", "lost", "pending"), 0)
        for match in RESCUE_LOG.finditer(self.stderr()):
            for key, value in zip(total, match.groups(), strict=True):
                total[key] += int(value)
        return total


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[list[str]], Child]]:
    with spawner(Child, tmp_path) as start:
        yield start


@pytest.fixture
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A redis-server this test may freeze or kill: (process, url)."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped server ignores SIGTERM until resumed
        stop_redis(proc)


def lines_of(path: Path) -> list[tuple[str, str]]:
    """(tag, rest) of each line of an event log (missing file: none)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        tag, _, rest = line.partition(" ")
        out.append((tag, rest))
    return out


def duplicates(ids: list[str]) -> list[str]:
    return sorted(i for i, n in collections.Counter(ids).items() if n > 1)


def proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def freeze_or_kill(proc: subprocess.Popen[bytes], how: str) -> None:
    """SIGSTOP (return once it is stopped) or SIGKILL (return once it is dead)."""
    if how == "STOP":
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + WAIT
        while proc_state(proc.pid) not in ("T", "t"):  # the signal is asynchronous
            assert time.monotonic() < deadline, "redis-server did not stop"
            time.sleep(0.001)
    else:
        proc.kill()
        proc.wait(WAIT)


def evals_run(client: Any) -> int:
    """How many EVAL commands the server ran (fenced ones included)."""
    return int(client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0))


def resume_and_settle(proc: subprocess.Popen[bytes], url: str) -> Any:
    """SIGCONT Redis; return a client once every command sent to it while frozen has run.

    The child's connections are closed (it exited); Redis runs what they had sent
    before it notices the close, so once no other client is listed, all of it ran.
    """
    import redis

    os.kill(proc.pid, signal.SIGCONT)
    client = redis.Redis.from_url(url, socket_timeout=WAIT)
    me = client.client_id()
    deadline = time.monotonic() + WAIT
    while any(int(c["id"]) != me for c in client.client_list()):
        assert time.monotonic() < deadline, f"clients still listed: {client.client_list()}"
        time.sleep(0.01)
    return client


def replay_exactly_once(sinks: list[Any], expected: set[str]) -> dict[str, Any]:
    """Replay ``sinks`` into a fresh bucket here: each id filled exactly once, sinks emptied."""
    bucket = TaskBucket(
        BucketConfig(name=NAME, life_span=BOMB_LIFE, run_after=BOMB_WAIT, max_bucket=10**6),
        Executor(),
    )
    try:
        started = time.monotonic()
        filled = [replay_sink(sink, bucket) for sink in sinks]
        seconds = time.monotonic() - started
        # replay() counts an id that is already alive as delivered, not filled: a
        # record stored twice would make the total fall short of len(expected).
        assert sum(filled) == len(expected), (filled, len(expected))
        assert len(bucket) == len(expected)
        missing = [i for i in sorted(expected) if i not in bucket]
        assert not missing, f"{len(missing)} not replayed: {missing[:10]}"
        assert all(sink.read() == [] for sink in sinks), "replay left records behind"
        return {"replayed": filled, "replay_s": round(seconds, 2)}
    finally:
        closer = threading.Thread(target=bucket.close, kwargs={"grace": 0}, daemon=True)
        closer.start()
        closer.join(WAIT)
        assert not closer.is_alive(), "close() hung"


# 1. SIGTERM while 4 threads fill at full speed ---------------------------------------
@pytest.mark.parametrize("kind", ["jsonl", "redis"])
def test_sigterm_during_four_fillers_accounts_for_every_accepted_task(
    spawn: Callable[[list[str]], Child],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kind: str,
) -> None:
    out = tmp_path / "events"
    out.mkdir()
    fallback = tmp_path / "fallback.jsonl"
    if kind == "jsonl":
        path = tmp_path / "rescued.jsonl"
        sink: Any = JsonlRescueSink(path)
        args = ["--jsonl", str(path)]
    else:
        url = request.getfixturevalue("redis_url")
        sink = RedisRescueSink(url, "e2e:shutdown")
        args = ["--redis", url, "--key", "e2e:shutdown"]
    try:
        child = spawn(
            [
                *("churn", "--out", str(out), "--fallback", str(fallback), "--threads", "4"),
                *("--ready", str(CHURN_READY), "--seed", "8", *args),
            ]
        )
        ready = child.wait_for(lambda line: line.startswith("ready"))
        child.signal(signal.SIGTERM)  # the 4 fillers are still filling at full speed
        code = child.finish(CHURN_EXIT_WAIT)
        in_sink = [t.task_id for t in sink.read()]
    finally:
        if isinstance(sink, RedisRescueSink):
            sink.close()
    in_fallback = [t.task_id for t in JsonlRescueSink(fallback).read()]
    rescue = child.rescue_counts()

    attempted: set[str] = set()
    acked: set[str] = set()
    drained: list[str] = []
    misses = 0
    unexpected: list[str] = []
    open_drains: list[str] = []  # a drain in flight at exit: it may have succeeded unrecorded
    for t in range(4):
        events = lines_of(out / f"filler-{t}")
        for tag, rest in events:
            if tag == "a":
                attempted.add(rest)
            elif tag == "k":
                acked.add(rest)
            elif tag == "D":
                drained.append(rest)
            elif tag == "m":
                misses += 1
            elif tag == "!":
                unexpected.append(f"filler {t}: {rest}")
        if events and events[-1][0] == "d":
            open_drains.append(events[-1][1])
    hook_ends = lines_of(out / "ends")
    ended_by_hook = [rest for _, rest in hook_ends]
    by_hook = collections.Counter(tag for tag, _ in hook_ends)
    panicked = [rest for _, rest in lines_of(out / "panics")]
    stored = in_sink + in_fallback
    ended = set(ended_by_hook) | set(drained)
    counts = {
        "exit": code,
        "exit_s": round(child.exit_seconds or -1, 2),
        "ready": ready,
        "attempted": len(attempted),
        "acked": len(acked),
        "on_finish": by_hook["f"],
        "on_execute_error": by_hook["e"],
        "on_task_exhausted": by_hook["x"],
        "drained": len(drained),
        "drain_misses": misses,
        "on_panic": len(panicked),
        "in_sink": len(in_sink),
        "in_fallback": len(in_fallback),
        "rescue_log": rescue,
        "open_drains": len(open_drains),
    }
    print(f"\n[churn/{kind}] {counts}")

    assert code == SIGTERM_EXIT, f"exit {code}; {counts}; stderr:\n{child.stderr()}"
    assert not unexpected, (unexpected[:5], counts)
    assert len(acked) >= CHURN_READY, counts
    assert panicked, f"nothing was alive at the signal: not a test of the rescue; {counts}"
    # Each task ended at most once, and by a hook its kind allows.
    assert not duplicates(ended_by_hook + drained), (
        duplicates(ended_by_hook + drained)[:10],
        counts,
    )
    wrong = [f"{tag} {i}" for tag, i in hook_ends if (tag == "e") != i.endswith("r")]
    wrong += [i for i in drained if not i.endswith("b")]
    assert not wrong, (wrong[:10], counts)
    # Stored at most once, and only what was rescued through on_panic (and all of it).
    assert not duplicates(stored), (duplicates(stored)[:10], counts)
    assert not duplicates(panicked), (duplicates(panicked)[:10], counts)
    assert set(stored) == set(panicked), (sorted(set(stored) ^ set(panicked))[:10], counts)
    # None both ended and stored.
    both = ended & set(stored)
    assert not both, (sorted(both)[:10], counts)
    # Every acknowledged fill ended or is stored (a drain whose return the filler had no
    # time to write down before the exit is the only excuse).
    lost = acked - ended - set(stored) - set(open_drains)
    assert not lost, (f"{len(lost)} acknowledged task(s) lost", sorted(lost)[:10], counts)
    # Nothing ended or stored that was never filled.
    phantom = (ended | set(stored)) - attempted
    assert not phantom, (sorted(phantom)[:10], counts)
    # Only the fill in flight in each filler when the door closed is neither acked nor
    # refused with an error; at most one per thread.
    assert len(attempted - acked) <= 4, (sorted(attempted - acked), counts)
    assert rescue["lost"] == 0 and rescue["pending"] == 0, counts
    assert rescue["sink"] + rescue["fallback"] == len(stored), counts


# 2. Stuck on_execute calls do not stop ends, exhaustion or the rescue -----------------
STUCK = 20  # more than the 16 workers: 16 block, 4 wait for a worker forever
EXHAUST = 50
SHORT_LIFE = 0.5
STUCK_BOMBS = 500


def test_sigterm_rescues_tasks_stuck_in_on_execute_and_exhaustion_is_on_time(
    spawn: Callable[[list[str]], Child], tmp_path: Path
) -> None:
    out = tmp_path / "events"
    out.mkdir()
    path = tmp_path / "rescued.jsonl"
    fallback = tmp_path / "fallback.jsonl"
    child = spawn(
        [
            *("stuck", "--out", str(out), "--jsonl", str(path), "--fallback", str(fallback)),
            *("--stuck", str(STUCK), "--exhaust", str(EXHAUST), "--short-life", str(SHORT_LIFE)),
            *("--count", str(STUCK_BOMBS)),
        ]
    )
    blocked = child.wait_for(lambda line: line.startswith("blocked"))
    line = child.wait_for(lambda line: line.startswith("exhausted"))
    child.wait_for(lambda line: line == "ready")
    _, exhausted, _, late_max, _, alive = line.split()
    code = sigterm_and_finish(child)
    stored = [t.task_id for t in JsonlRescueSink(path).read()]
    in_fallback = [t.task_id for t in JsonlRescueSink(fallback).read()]
    ends = lines_of(out / "ends")
    panicked = [rest for _, rest in lines_of(out / "panics")]
    expected = {f"stuck-{i}" for i in range(STUCK)} | {f"bomb-{i}" for i in range(STUCK_BOMBS)}
    counts = {
        "exit": code,
        "exit_s": round(child.exit_seconds or -1, 2),
        "blocked": blocked,
        "exhausted": int(exhausted),
        "exhausted_late_max_s": float(late_max),
        "alive_before_signal": int(alive),
        "on_panic": len(panicked),
        "in_sink": len(stored),
        "in_fallback": len(in_fallback),
        "rescue_log": child.rescue_counts(),
    }
    print(f"\n[stuck] {counts}")

    # Before the signal: every short-lived task queued behind the stuck ones ended
    # through on_task_exhausted, on time (not before its life span; at most 1 s late).
    assert int(exhausted) == EXHAUST, counts
    assert -0.01 <= float(late_max) <= 1.0, counts
    assert sorted(ends) == sorted(("x", f"exh-{i}") for i in range(EXHAUST)), counts
    assert int(alive) == len(expected), counts
    # The signal: exit 143 within the rescue bound, every live task stored exactly once,
    # the stuck ones included (rescued while their on_execute still blocks).
    assert code == SIGTERM_EXIT, f"exit {code}; {counts}; stderr:\n{child.stderr()}"
    assert (child.exit_seconds or 0) < SIGNAL_TIMEOUT + EXIT_MARGIN, counts
    all_stored = stored + in_fallback
    assert not duplicates(all_stored), (duplicates(all_stored)[:10], counts)
    assert set(all_stored) == expected, (sorted(expected ^ set(all_stored))[:10], counts)
    assert sorted(panicked) == sorted(expected), counts


# 3. Redis frozen or killed during a SIGTERM rescue of 20,000 pending time bombs -------
PENDING = 20_000
REDIS_TIMEOUT = 1.0
CHUNK = 1000  # gobucket.recovery.collect.CHUNK: records per sink write


def pending_child(
    spawn: Callable[[list[str]], Child], tmp_path: Path, url: str, *extra: str
) -> tuple[Child, Path, Path]:
    out = tmp_path / "events"
    out.mkdir()
    fallback = tmp_path / "fallback.jsonl"
    child = spawn(
        [
            *("pending", "--out", str(out), "--redis", url, "--key", "e2e:frozen"),
            *("--redis-timeout", str(REDIS_TIMEOUT), "--fallback", str(fallback)),
            *("--count", str(PENDING), *extra),
        ]
    )
    child.wait_for(lambda line: line.startswith("ready"), timeout=WAIT * 2)
    return child, out, fallback


def sigterm_and_finish(child: Child) -> int:
    """SIGTERM ``child``; its exit code (it must end within the rescue bound and a margin)."""
    child.signal(signal.SIGTERM)
    return child.finish(SIGNAL_TIMEOUT + EXIT_MARGIN)


def read_fallback(fallback: Path) -> tuple[JsonlRescueSink, list[Any], list[str]]:
    """The fallback file as a sink, the tasks it holds and their ids."""
    sink = JsonlRescueSink(fallback)
    tasks = sink.read()
    return sink, tasks, [t.task_id for t in tasks]


def assert_bounded_exit(child: Child, code: int, counts: dict[str, Any]) -> None:
    """The SIGTERM exit code, within the rescue bound (plus a margin)."""
    assert code == SIGTERM_EXIT, f"exit {code}; {counts}; stderr:\n{child.stderr()}"
    assert (child.exit_seconds or 0) < SIGNAL_TIMEOUT + EXIT_MARGIN, (
        f"the rescue was bounded by {SIGNAL_TIMEOUT}s; {counts}; stderr:\n{child.stderr()}"
    )


def check_stored_bombs(tasks: list[Any]) -> None:
    for task in tasks:
        i = int(task.task_id.split("-")[1])
        assert task.bucket == NAME and task.task_type is TaskType.TIME_BOMB
        assert task.data == bomb_data(i)
        assert 0 < task.remaining_wait <= BOMB_WAIT < task.remaining_life <= BOMB_LIFE


@pytest.mark.parametrize("how", ["STOP", "KILL"])
def test_redis_frozen_or_killed_before_sigterm_everything_goes_to_the_fallback(
    spawn: Callable[[list[str]], Child],
    tmp_path: Path,
    redis_proc: tuple[Any, str],
    how: str,
) -> None:
    proc, url = redis_proc
    child, out, fallback = pending_child(spawn, tmp_path, url)
    freeze_or_kill(proc, how)  # Redis is frozen (or dead) before the rescue starts
    code = sigterm_and_finish(child)
    rescue = child.rescue_counts()
    fallback_sink, in_fallback, fallback_ids = read_fallback(fallback)
    panicked = [rest for _, rest in lines_of(out / "panics")]
    expected = {f"bomb-{i}" for i in range(PENDING)}
    counts: dict[str, Any] = {
        "redis": how,
        "exit": code,
        "exit_s": round(child.exit_seconds or -1, 2),
        "rescue_log": rescue,
        "in_fallback": len(fallback_ids),
        "on_panic": len(panicked),
    }
    sinks: list[Any] = [fallback_sink]
    redis_sink = None
    try:
        if how == "STOP":
            client = resume_and_settle(proc, url)
            # The chunk sent to the frozen server ran when it resumed: fenced, none stored.
            counts["redis_evals_run"] = evals_run(client)
            counts["redis_hlen_after_resume"] = client.hlen("e2e:frozen")
            client.close()
            redis_sink = RedisRescueSink(url, "e2e:frozen")
            sinks.append(redis_sink)
        print(f"\n[redis {how} before SIGTERM] {counts}")
        assert_bounded_exit(child, code, counts)
        assert rescue == {
            "rescued": PENDING,
            "sink": 0,
            "fallback": PENDING,
            "lost": 0,
            "pending": 0,
        }, counts
        assert not duplicates(fallback_ids), (duplicates(fallback_ids)[:10], counts)
        assert set(fallback_ids) == expected, counts
        check_stored_bombs(in_fallback)
        if how == "STOP":
            # One chunk went out on the open connection to the frozen server; it ran once
            # Redis resumed, long after the child gave up on it, and stored nothing.
            assert counts["redis_evals_run"] == 1, counts
            assert counts["redis_hlen_after_resume"] == 0, counts
        counts.update(replay_exactly_once(sinks, expected))
        print(f"[redis {how} before SIGTERM] replay: {counts['replayed']} in {counts['replay_s']}s")
    finally:
        if redis_sink is not None:
            redis_sink.close()


@pytest.mark.parametrize("how", ["STOP", "KILL"])
def test_redis_stopped_in_the_middle_of_the_rescue_splits_records_without_overlap(
    spawn: Callable[[list[str]], Child],
    tmp_path: Path,
    redis_proc: tuple[Any, str],
    how: str,
) -> None:
    proc, url = redis_proc
    child, out, fallback = pending_child(
        spawn, tmp_path, url, "--stop-pid", str(proc.pid), "--stop-signal", how
    )
    code = sigterm_and_finish(child)  # the child's sink stops Redis before its second write
    rescue = child.rescue_counts()
    fallback_sink, in_fallback, fallback_ids = read_fallback(fallback)
    first_write = (
        (out / "first-write").read_text().split() if (out / "first-write").exists() else []
    )
    expected = {f"bomb-{i}" for i in range(PENDING)}
    counts: dict[str, Any] = {
        "redis": how,
        "exit": code,
        "exit_s": round(child.exit_seconds or -1, 2),
        "rescue_log": rescue,
        "first_write": len(first_write),
        "in_fallback": len(fallback_ids),
    }
    redis_sink = None
    try:
        sinks: list[Any] = [fallback_sink]
        in_redis: list[str] = []
        if how == "STOP":
            client = resume_and_settle(proc, url)
            counts["redis_evals_run"] = evals_run(client)  # the stored chunk, the fenced one
            client.close()
            redis_sink = RedisRescueSink(url, "e2e:frozen")
            redis_tasks = redis_sink.read()
            check_stored_bombs(redis_tasks)
            in_redis = [t.task_id for t in redis_tasks]
            counts["in_redis_after_resume"] = len(in_redis)
            sinks.insert(0, redis_sink)
        else:
            assert proc.poll() is not None, "redis-server should be dead"
            in_redis = first_write  # stored before the kill; gone with the server
        print(f"\n[redis {how} mid-rescue] {counts}")
        assert_bounded_exit(child, code, counts)
        # The first chunk landed in Redis, the rest in the fallback; none in both.
        assert len(first_write) == CHUNK, counts
        assert rescue == {
            "rescued": PENDING,
            "sink": CHUNK,
            "fallback": PENDING - CHUNK,
            "lost": 0,
            "pending": 0,
        }, counts
        assert sorted(in_redis) == sorted(first_write), counts
        if how == "STOP":
            assert counts["redis_evals_run"] == 2, counts
        assert not duplicates(fallback_ids), (duplicates(fallback_ids)[:10], counts)
        both = set(in_redis) & set(fallback_ids)
        assert not both, (f"{len(both)} record(s) in Redis and in the fallback", counts)
        assert set(in_redis) | set(fallback_ids) == expected, counts
        check_stored_bombs(in_fallback)
        if how == "STOP":
            counts.update(replay_exactly_once(sinks, expected))
        else:
            counts.update(replay_exactly_once(sinks, expected - set(first_write)))
        print(f"[redis {how} mid-rescue] replay: {counts['replayed']} in {counts['replay_s']}s")
    finally:
        if redis_sink is not None:
            redis_sink.close()


# 4. Soak: 1,000,000 tasks from 4 threads, then a rescue; every one ends exactly once --
SOAK_TASKS = 1_000_000
SOAK_THREADS = 4
SOAK_LIFE = 120.0  # long enough that nothing is exhausted by waiting in a loaded queue


class SoakExecutor(Executor):
    """Ends go to one list per hook (``list.append`` is atomic: no lock on the hot path).

    Ids end with their kind: ``i`` immediate, ``b`` time bomb, ``r`` raises, ``x``
    outlives its short life span (on_execute waits until the task is cancelled).
    """

    def __init__(self) -> None:
        self.finished: list[str] = []
        self.errors: list[str] = []
        self.exhausted: list[str] = []
        self.panicked: list[str] = []

    def on_execute(self, ctx: Any, id: str, data: Any) -> None:
        kind = id[-1]
        if kind == "r":
            raise ValueError(id)
        if kind == "x":
            ctx.wait_cancelled(5.0)  # its life span (0.05 s) runs out first

    def on_finish(self, ctx: Any, id: str, data: Any) -> None:
        self.finished.append(id)

    def on_execute_error(self, ctx: Any, id: str, data: Any, error: BaseException) -> None:
        self.errors.append(id)

    def on_task_exhausted(self, ctx: Any, id: str, data: Any) -> None:
        self.exhausted.append(id)

    def on_panic(self, ctx: Any, id: str, data: Any) -> None:
        self.panicked.append(id)


@pytest.mark.timeout(900)
def test_soak_a_million_tasks_from_four_threads_each_ends_exactly_once() -> None:
    runtime = ActorRuntime(workers=16, name="soak")
    executor = SoakExecutor()
    bucket = TaskBucket(
        BucketConfig(name="soak", life_span=SOAK_LIFE, run_after=0.05, max_bucket=4 * SOAK_TASKS),
        executor,
        runtime=runtime,
    )
    acked: list[list[str]] = [[] for _ in range(SOAK_THREADS)]
    drained: list[list[str]] = [[] for _ in range(SOAK_THREADS)]
    misses = [0] * SOAK_THREADS
    errors: list[BaseException] = []
    per_thread = SOAK_TASKS // SOAK_THREADS

    def filler(t: int) -> None:
        rng = random.Random(4242 + t)
        mine, gone, bombs = acked[t], drained[t], []
        try:
            for n in range(per_thread):
                roll = rng.random()
                if roll < 0.001:
                    bucket.fill(TaskType.IMMEDIATE, f"{t}-{n}x", n, life_span=0.05)
                    mine.append(f"{t}-{n}x")
                elif roll < 0.1:
                    bucket.fill(TaskType.IMMEDIATE, f"{t}-{n}r", n)
                    mine.append(f"{t}-{n}r")
                elif roll < 0.4:
                    tid = f"{t}-{n}b"
                    bucket.fill(TaskType.TIME_BOMB, tid, n, run_after=rng.uniform(0.001, 0.3))
                    mine.append(tid)
                    bombs.append(tid)
                    if rng.random() < 0.2:  # drain one of our bombs (it may have run)
                        victim = bombs.pop(rng.randrange(len(bombs)))
                        try:
                            bucket.drain(victim)
                        except TaskNotFoundError:
                            misses[t] += 1
                        else:
                            gone.append(victim)
                    if len(bombs) > 1000:
                        del bombs[:500]
                else:
                    bucket.fill(TaskType.IMMEDIATE, f"{t}-{n}i", n)
                    mine.append(f"{t}-{n}i")
        except BaseException as error:
            errors.append(error)

    try:
        threads = [
            threading.Thread(target=filler, args=(t,), daemon=True) for t in range(SOAK_THREADS)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(800)
        filled_s = time.monotonic() - started
        assert not any(thread.is_alive() for thread in threads), "fillers hung"
        assert not errors, errors[:3]
        alive_at_close = len(bucket)
        rescued = bucket.close(grace=0, timeout=120)
        total_s = time.monotonic() - started
    finally:
        closer = threading.Thread(target=bucket.close, kwargs={"grace": 0}, daemon=True)
        closer.start()
        closer.join(WAIT)
        runtime.shutdown()

    accepted = [i for ids in acked for i in ids]
    gone_ids = [i for ids in drained for i in ids]
    ends: collections.Counter[str] = collections.Counter()
    for ids in (
        executor.finished,
        executor.errors,
        executor.exhausted,
        executor.panicked,
        gone_ids,
    ):
        ends.update(ids)
    missing = [i for i in accepted if i not in ends]
    doubled = sorted(i for i, n in ends.items() if n > 1)
    phantom = set(ends) - set(accepted)
    counts = {
        "accepted": len(accepted),
        "filled_s": round(filled_s, 1),
        "fill_rate_per_s": round(len(accepted) / filled_s),
        "total_s": round(total_s, 1),
        "end_rate_per_s": round(len(accepted) / total_s),
        "on_finish": len(executor.finished),
        "on_execute_error": len(executor.errors),
        "on_task_exhausted": len(executor.exhausted),
        "on_panic": len(executor.panicked),
        "drained": len(gone_ids),
        "drain_misses": sum(misses),
        "alive_at_close": alive_at_close,
        "rescued_by_close": rescued,
        "missing": len(missing),
        "doubled": len(doubled),
    }
    print(f"\n[soak] {counts}")
    assert len(accepted) == SOAK_TASKS == len(set(accepted)), counts
    assert not missing, (missing[:10], counts)
    assert not doubled, (doubled[:10], counts)
    assert not phantom, (sorted(phantom)[:10], counts)
    # Each end is one its kind allows.
    assert all(i[-1] in "ib" for i in executor.finished), counts
    assert all(i[-1] == "r" for i in executor.errors), counts
    assert all(i[-1] == "b" for i in gone_ids), counts
    assert rescued == len(executor.panicked), counts
