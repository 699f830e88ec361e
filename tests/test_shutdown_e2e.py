"""Issue 8, "nothing accepted is ever lost": shutdown end to end.

Child processes (``tests/nodes/shutdown_child.py``) are signalled while they work, and
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
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gobucket import (
    ActorRuntime,
    BucketConfig,
    Executor,
    JsonlRescueSink,
    RedisRescueSink,
    TaskBucket,
    TaskNotFoundError,
    TaskType,
    install_signal_handlers,
)
from gobucket import replay as replay_sink
from tests.nodes.shutdown_child import BOMB_LIFE, BOMB_WAIT, NAME, bomb_data
from tests.redis_fixture import _stop, redis_url, start_redis  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

CHILD = Path(__file__).parent / "nodes" / "shutdown_child.py"
WAIT = 60.0  # generous: a loaded 2-core machine
SIGNAL_TIMEOUT = 10.0  # install_signal_handlers' default rescue bound
EXIT_MARGIN = 5.0  # process start-up, scheduling and os._exit on a loaded machine
CHURN_EXIT_WAIT = 20.0
SIGTERM_EXIT = 128 + signal.SIGTERM
RESCUE_LOG = re.compile(
    r"rescued (\d+) task\(s\): (\d+) in the sink, (\d+) in the fallback, (\d+) lost, "
    r"(\d+) pending"
)
install_signal_handlers  # noqa: B018  (what the child calls; named here for readers)


class Child:
    """A shutdown_child.py process whose stdout lines are collected by a reader thread."""

    def __init__(self, args: list[str], log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in kill()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, stderr=self._log
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.signalled_at: float | None = None
        self.exit_seconds: float | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode().rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = WAIT) -> str:
        """Wait for a stdout line matching ``predicate``; fail if the child ends first."""
        seen = 0
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self._eof:
                    pytest.fail(f"child ended without the expected line; stderr:\n{self.stderr()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"child did not print the expected line in {timeout}s; "
                        f"stderr:\n{self.stderr()}"
                    )
                self._cond.wait(left)

    def signal(self, signum: int) -> None:
        self.signalled_at = time.monotonic()
        self.proc.send_signal(signum)

    def finish(self, timeout: float) -> int:
        """Wait for the child to exit; fail (after killing it) if it takes longer."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the child did not exit within {timeout}s of the signal (hung); "
                f"stderr:\n{self.stderr()}"
            )
        finally:
            self.kill()
        if self.signalled_at is not None:
            self.exit_seconds = time.monotonic() - self.signalled_at
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self._reader.join(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")

    def rescue_counts(self) -> dict[str, int]:
        """Sum of the bucket's "rescued N task(s): S in the sink, F in the fallback..." lines."""
        total = dict.fromkeys(("rescued", "sink", "fallback", "lost", "pending"), 0)
        for match in RESCUE_LOG.finditer(self.stderr()):
            for key, value in zip(total, match.groups(), strict=True):
                total[key] += int(value)
        return total


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[list[str]], Child]]:
    children: list[Child] = []

    def start(args: list[str]) -> Child:
        child = Child(args, tmp_path / f"child-{len(children)}.stderr")
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


@pytest.fixture
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """A redis-server this test may freeze or kill: (process, url)."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a stopped server ignores SIGTERM until resumed
        _stop(proc)


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
            ["churn", "--out", str(out), "--fallback", str(fallback), "--threads", "4"]
            + ["--ready", "4000", "--seed", "8", *args]
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
    assert len(acked) >= 4000, counts
    assert panicked, f"nothing was alive at the signal: not a test of the rescue; {counts}"
    # Each task ended at most once, and by a hook its kind allows.
    assert not duplicates(ended_by_hook + drained), (duplicates(ended_by_hook + drained)[:10], counts)
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
