"""A child process for the shutdown end-to-end tests (``tests/test_shutdown_e2e.py``).

Every mode builds one bucket with a rescue sink (``--jsonl PATH`` or ``--redis URL
--key KEY``) and a fallback file (``--fallback PATH``), calls
``install_signal_handlers(bucket)``, prints ``ready`` and waits for the test's signal.
The signal handler rescues every live task and exits (143 for SIGTERM). Everything the
test checks afterwards is written with ``os.write`` to files opened ``O_APPEND`` (one
line per event, no buffering), so ``os._exit`` loses none of it.

Modes (the first argument):

``churn``
    ``--threads`` filler threads fill at full speed a seeded random mix of immediate
    tasks, tasks whose ``on_execute`` raises, and time bombs (``run_after`` 0.01 to 2 s);
    each filler also drains some of its own time bombs. Ids are ``t<thread>-<n><tag>``,
    the tag ``i`` (immediate), ``r`` (raises) or ``b`` (time bomb). Per filler, ``--out/filler-<t>``
    gets ``a <id>`` before each fill, ``k <id>`` after it returned, ``d <id>`` before a
    drain, ``D <id>`` after it returned, ``m <id>`` when it raised TaskNotFoundError,
    and ``! <error>`` for anything unexpected. The end hooks append to ``--out/ends``:
    ``f``/``e``/``x <id>`` (on_finish / on_execute_error / on_task_exhausted); on_panic
    appends ``p <id>`` to ``--out/panics``. ``ready`` is printed once ``--ready``
    fills were acknowledged; the fillers go on until the door closes.

``stuck``
    Fills ``--stuck`` immediate tasks whose ``on_execute`` blocks forever
    (``stuck-<i>``), waits until the worker pool is busy with them, then ``--exhaust``
    immediate tasks with a ``--short-life`` life span (``exh-<i>``) that queue behind
    them and must end through ``on_task_exhausted`` on time, and ``--count`` pending time
    bombs (``bomb-<i>``). Prints ``exhausted <n> late_max <s>`` (how late the last
    ``on_task_exhausted`` came, after the life span) before ``ready``.

``pending``
    Fills ``--count`` pending time bombs ``bomb-<i>`` (run after 200 s); with Redis, reads
    the sink once so that its connection is open before the signal. With
    ``--stop-pid PID --stop-signal STOP|KILL`` the rescue sink is wrapped so that its
    second ``write()`` first stops (or kills) that process — Redis — and waits until it
    is stopped (or dead) before delegating; the ids the first write stored are
    appended to ``--out/first-write``.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gobucket import (
    BucketClosedError,
    BucketConfig,
    BucketFullError,
    Executor,
    JsonlRescueSink,
    RedisRescueSink,
    RescuedTask,
    TaskBucket,
    TaskNotFoundError,
    TaskType,
    install_signal_handlers,
)

NAME = "shutdown"
LONG_LIFE = 60.0  # nothing ends by exhaustion in churn / stuck / pending unless meant to
BOMB_WAIT = 200.0  # pending time bombs (stuck, pending)
BOMB_LIFE = 300.0
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def say(line: str) -> None:
    # os.write, not print: nothing buffered can be lost by os._exit.
    os.write(1, (line + "\n").encode())


def log_err(line: str) -> None:
    os.write(2, (line + "\n").encode())


def open_log(path: str) -> int:
    return os.open(path, FLAGS, 0o600)


def bomb_data(i: int) -> dict[str, Any]:
    return {"i": i, "blob": bytes([i % 256]) * 3, "tags": ["x", i, None]}


def fill_bombs(bucket: TaskBucket, count: int) -> None:
    """Fill ``count`` pending time bombs ``bomb-<i>`` (data ``bomb_data(i)``)."""
    for i in range(count):
        bucket.fill(
            TaskType.TIME_BOMB, f"bomb-{i}", bomb_data(i), run_after=BOMB_WAIT, life_span=BOMB_LIFE
        )


class _StopRedisOnSecondWrite:
    """Delegates to a sink; its second ``write()`` first stops (or kills) a process."""

    def __init__(self, inner: Any, pid: int, signum: int, record: str) -> None:
        self.inner = inner
        self.timeout = inner.timeout
        self._pid = pid
        self._signum = signum
        self._record = record
        self._calls = 0
        self._lock = threading.Lock()

    def write(self, tasks: Sequence[RescuedTask]) -> None:
        with self._lock:
            self._calls += 1
            call = self._calls
        if call == 2:
            os.kill(self._pid, self._signum)
            _wait_stopped(self._pid, self._signum)
            log_err(f"child: sent signal {self._signum} to redis {self._pid} before write 2")
        self.inner.write(tasks)
        if call == 1:
            fd = open_log(self._record)
            try:
                os.write(fd, "".join(f"{t.task_id}\n" for t in tasks).encode())
            finally:
                os.close(fd)

    def read(self) -> list[RescuedTask]:
        return list(self.inner.read())

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        self.inner.remove(tasks)


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return "gone"


def _wait_stopped(pid: int, signum: int, timeout: float = 10.0) -> None:
    """Return once ``pid`` is stopped (SIGSTOP) or dead (SIGKILL); the signal is async."""
    wanted = ("T", "t") if signum == signal.SIGSTOP else ("Z", "X", "gone")
    deadline = time.monotonic() + timeout
    while _proc_state(pid) not in wanted:
        if time.monotonic() > deadline:
            log_err(f"child: process {pid} not stopped after {timeout}s")
            return
        time.sleep(0.001)


def make_sink(args: argparse.Namespace) -> Any:
    if args.jsonl:
        return JsonlRescueSink(args.jsonl)
    sink: Any = RedisRescueSink(args.redis, args.key, timeout=args.redis_timeout)
    if args.stop_pid:
        signum = signal.SIGSTOP if args.stop_signal == "STOP" else signal.SIGKILL
        sink = _StopRedisOnSecondWrite(
            sink, args.stop_pid, signum, os.path.join(args.out, "first-write")
        )
    return sink


def make_bucket(args: argparse.Namespace, executor: Executor) -> TaskBucket:
    return TaskBucket(
        BucketConfig(name=NAME, life_span=LONG_LIFE, run_after=1.0, max_bucket=1_000_000),
        executor,
        rescue_sink=make_sink(args),
        rescue_fallback=args.fallback,
    )


def wait_for_signal() -> None:
    while True:
        signal.pause()


# churn ---------------------------------------------------------------------------------
class ChurnExecutor(Executor):
    """Writes every end to ``ends`` (one line each) and every on_panic to ``panics``."""

    def __init__(self, out: str) -> None:
        self.ends = open_log(os.path.join(out, "ends"))
        self.panics = open_log(os.path.join(out, "panics"))

    def on_execute(self, ctx: Any, id: str, data: Any) -> None:
        if data["k"] == "raise":
            raise ValueError(f"task {id} fails on purpose")

    def on_finish(self, ctx: Any, id: str, data: Any) -> None:
        os.write(self.ends, f"f {id}\n".encode())

    def on_execute_error(self, ctx: Any, id: str, data: Any, error: BaseException) -> None:
        os.write(self.ends, f"e {id}\n".encode())

    def on_task_exhausted(self, ctx: Any, id: str, data: Any) -> None:
        os.write(self.ends, f"x {id}\n".encode())

    def on_panic(self, ctx: Any, id: str, data: Any) -> None:
        os.write(self.panics, f"p {id}\n".encode())


def churn(args: argparse.Namespace) -> None:
    bucket = make_bucket(args, ChurnExecutor(args.out))
    install_signal_handlers(bucket)
    acked = [0] * args.threads
    ready = threading.Event()

    def filler(t: int) -> None:
        rng = random.Random(args.seed * 1000 + t)
        fd = open_log(os.path.join(args.out, f"filler-{t}"))
        bombs: list[str] = []
        n = 0
        try:
            while True:
                n += 1
                roll = rng.random()
                if roll < 0.45:
                    kind, data, after, tag = TaskType.IMMEDIATE, {"k": "ok"}, None, "i"
                elif roll < 0.55:
                    kind, data, after, tag = TaskType.IMMEDIATE, {"k": "raise"}, None, "r"
                else:
                    kind, data, after, tag = (
                        TaskType.TIME_BOMB,
                        {"k": "ok"},
                        rng.uniform(0.01, 2.0),
                        "b",
                    )
                tid = f"t{t}-{n}{tag}"  # the tag says which end it may take
                os.write(fd, f"a {tid}\n".encode())
                try:
                    bucket.fill(kind, tid, data, run_after=after)
                except BucketClosedError:
                    return  # the door closed: this filler stops
                except BucketFullError:
                    os.write(fd, f"! full {tid}\n".encode())
                    continue
                os.write(fd, f"k {tid}\n".encode())
                acked[t] += 1
                if n % 100 == 0 and sum(acked) >= args.ready:
                    ready.set()
                if kind is TaskType.TIME_BOMB:
                    bombs.append(tid)
                if bombs and rng.random() < 0.1:
                    pick = rng.randrange(len(bombs))
                    bombs[pick], bombs[-1] = bombs[-1], bombs[pick]
                    victim = bombs.pop()
                    os.write(fd, f"d {victim}\n".encode())
                    try:
                        bucket.drain(victim)
                    except TaskNotFoundError:
                        os.write(fd, f"m {victim}\n".encode())
                        continue
                    except BucketClosedError:
                        return
                    os.write(fd, f"D {victim}\n".encode())
        except BaseException as error:
            os.write(fd, f"! {error!r}\n".encode())
            raise

    threads = [
        threading.Thread(target=filler, args=(t,), name=f"filler-{t}", daemon=True)
        for t in range(args.threads)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    ready.wait()
    elapsed = time.monotonic() - started
    say(f"ready acked {sum(acked)} in {elapsed:.2f}s")
    wait_for_signal()


# stuck ---------------------------------------------------------------------------------
class StuckExecutor(Executor):
    """``stuck-*`` block forever in on_execute; ``exh-*`` ends are timed."""

    def __init__(self, out: str) -> None:
        self.panics = open_log(os.path.join(out, "panics"))
        self.ends = open_log(os.path.join(out, "ends"))
        self.started = threading.Semaphore(0)
        self.filled_at: dict[str, float] = {}
        self.late: dict[str, float] = {}
        self.exhausted = threading.Condition()
        self.short_life = 0.0

    def on_execute(self, ctx: Any, id: str, data: Any) -> None:
        if id.startswith("stuck-"):
            self.started.release()
            threading.Event().wait()  # forever; only os._exit ends it

    def on_finish(self, ctx: Any, id: str, data: Any) -> None:
        os.write(self.ends, f"f {id}\n".encode())

    def on_execute_error(self, ctx: Any, id: str, data: Any, error: BaseException) -> None:
        os.write(self.ends, f"e {id}\n".encode())

    def on_task_exhausted(self, ctx: Any, id: str, data: Any) -> None:
        now = time.monotonic()
        os.write(self.ends, f"x {id}\n".encode())
        with self.exhausted:
            self.late[id] = now - self.filled_at[id] - self.short_life
            self.exhausted.notify_all()

    def on_panic(self, ctx: Any, id: str, data: Any) -> None:
        os.write(self.panics, f"p {id}\n".encode())


def stuck(args: argparse.Namespace) -> None:
    executor = StuckExecutor(args.out)
    executor.short_life = args.short_life
    bucket = make_bucket(args, executor)
    install_signal_handlers(bucket)
    for i in range(args.stuck):
        bucket.fill(TaskType.IMMEDIATE, f"stuck-{i}", {"i": i})
    workers = bucket._runtime.threads.workers
    for _ in range(min(workers, args.stuck)):  # every worker is blocked now
        if not executor.started.acquire(timeout=30.0):
            log_err("child: the stuck on_execute calls did not start")
            sys.exit(3)
    say(f"blocked {min(workers, args.stuck)} of {workers} workers")
    for i in range(args.exhaust):
        tid = f"exh-{i}"
        with executor.exhausted:
            executor.filled_at[tid] = time.monotonic()
        bucket.fill(TaskType.IMMEDIATE, tid, {"i": i}, life_span=args.short_life)
    fill_bombs(bucket, args.count)
    with executor.exhausted:
        executor.exhausted.wait_for(
            lambda: len(executor.late) == args.exhaust, timeout=args.short_life + 30.0
        )
        late = dict(executor.late)
    worst = max(late.values(), default=float("nan"))
    say(f"exhausted {len(late)} late_max {worst:.3f} alive {len(bucket)}")
    say("ready")
    wait_for_signal()


# pending -------------------------------------------------------------------------------
class PanicLog(Executor):
    def __init__(self, out: str) -> None:
        self.panics = open_log(os.path.join(out, "panics"))

    def on_panic(self, ctx: Any, id: str, data: Any) -> None:
        os.write(self.panics, f"p {id}\n".encode())


def pending(args: argparse.Namespace) -> None:
    bucket = make_bucket(args, PanicLog(args.out))
    install_signal_handlers(bucket)
    started = time.monotonic()
    fill_bombs(bucket, args.count)
    if args.redis:
        # Use the connection once, as a real process would have: the rescue's first
        # command then goes out on it at once, even to a frozen server.
        stored = bucket.rescue_sink.read()  # type: ignore[union-attr]
        say(f"redis connected, {len(stored)} stored")
    say(f"ready filled {args.count} in {time.monotonic() - started:.2f}s")
    wait_for_signal()


def main() -> None:
    # A test that finds this child hung sends SIGUSR1 for every thread's stack.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("churn", "stuck", "pending"))
    parser.add_argument("--out", required=True, help="a directory for the event logs")
    parser.add_argument("--jsonl")
    parser.add_argument("--redis")
    parser.add_argument("--key", default="gobucket:shutdown")
    parser.add_argument("--redis-timeout", type=float, default=2.0)
    parser.add_argument("--fallback", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ready", type=int, default=4000)
    parser.add_argument("--stuck", type=int, default=20)
    parser.add_argument("--exhaust", type=int, default=50)
    parser.add_argument("--short-life", type=float, default=0.5)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--stop-pid", type=int, default=0)
    parser.add_argument("--stop-signal", choices=("STOP", "KILL"), default="STOP")
    args = parser.parse_args()
    if not args.jsonl and not args.redis:
        parser.error("give --jsonl PATH or --redis URL")
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(relativeCreated)8.0f ms %(levelname)s %(name)s: %(message)s",
    )
    {"churn": churn, "stuck": stuck, "pending": pending}[args.mode](args)


if __name__ == "__main__":
    main()
