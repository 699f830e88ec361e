"""Benchmark of the standalone gobucket TaskBucket against its peers.

Run ``python benchmarks/bench_bucket.py`` (add ``--quick`` for a smaller run).
Each measurement runs in its own subprocess (the script re-invokes itself with
``--section NAME``) so that RSS figures start from a clean process; the parent
collects one JSON object from each child, prints a table and writes
``benchmarks/results/bench_bucket.json``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from _common import RESULTS_DIR, make_table, percentile, wide_console, write_results

RESULTS = RESULTS_DIR / "bench_bucket.json"
MARKER = "BENCH_JSON:"

# Sizes: (full, quick).
SIZES: dict[str, tuple[int, int]] = {
    "imm_gobucket": (100_000, 30_000),
    "imm_threadpool": (100_000, 30_000),
    "imm_apscheduler": (20_000, 5_000),
    "imm_naive": (3_000, 1_000),
    "tb_gobucket": (100_000, 30_000),
    "tb_naive": (2_000, 1_000),
    "aps_pending": (100_000, 30_000),
    "drain_gobucket": (100_000, 30_000),
}
TB_SPREAD = 5.0  # time bombs come due evenly over this many seconds
PENDING_AFTER = 60.0  # run_after of tasks that must stay pending

GC_LEAD = 1.5  # extra lead in tb_gobucket for the gc.collect() timings before the first due
THREADPOOL_WORKERS = 16

# Targets of issue 11 ("How fast").
TARGET_IMM_VS_THREADPOOL = 1.0
TARGET_IMM_VS_APS = 5.0
TARGET_TB_FILL_RATE = 150_000.0
TARGET_RSS_PER_TASK = 1024.0
TARGET_LATE_MAX_MS = 20.0
TARGET_P99_MS = 2.0
TARGET_DRAIN_VS_APS = 2.0


# --------------------------------------------------------------------------- helpers
def rss() -> int:
    """Resident set size of this process after a full collection, in bytes."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class Counter:
    """A thread-safe completion counter that sets an Event at ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.target:
                self.done.set()

    def reset(self, target: int) -> None:
        with self._lock:
            self.count = 0
            self.target = target
            self.done.clear()


# --------------------------------------------------------------------------- gobucket
def _gobucket_executor(on_execute: Callable[..., Any], on_finish: Callable[..., Any]) -> Any:
    from gobucket import Executor

    class BenchExecutor(Executor):
        def on_execute(self, ctx: Any, id: str, data: Any) -> None:
            on_execute(id, data)

        def on_finish(self, ctx: Any, id: str, data: Any) -> None:
            on_finish(id, data)

    return BenchExecutor()


def section_imm_gobucket(n: int) -> dict[str, Any]:
    from gobucket import BucketConfig, TaskBucket, TaskType

    finished = Counter(0)
    executor = _gobucket_executor(lambda _id, _data: None, lambda _id, _data: finished.hit())
    bucket = TaskBucket(BucketConfig(life_span=60.0, max_bucket=2 * n, run_after=0.0), executor)
    # Warm-up: start the runtime threads and hook workers.
    warm = 2_000
    finished.reset(warm)
    for i in range(warm):
        bucket.fill(TaskType.IMMEDIATE, f"warm-{i}", i)
    bucket.join(30.0)

    finished.reset(n)
    fill = bucket.fill
    immediate = TaskType.IMMEDIATE
    t0 = time.perf_counter()
    for i in range(n):
        fill(immediate, f"imm-{i}", i)
    t_filled = time.perf_counter()
    emptied = bucket.join(120.0)
    t1 = time.perf_counter()
    left = len(bucket)
    stats = bucket.stats()
    bucket.close(grace=5.0)
    return {
        "n": n,
        "seconds": t1 - t0,
        "rate": n / (t1 - t0),
        "fill_seconds": t_filled - t0,
        "fill_rate": n / (t_filled - t0),
        "finished": finished.count,
        "emptied": emptied,
        "left_in_bucket": left,
        "stats": repr(stats),
    }


def section_imm_threadpool(n: int) -> dict[str, Any]:
    """The floor for a Python hand-off: ThreadPoolExecutor(16), submit + done callback."""
    from concurrent.futures import ThreadPoolExecutor

    done = Counter(0)

    def noop(_i: int) -> None:
        return None

    def callback(_future: Any) -> None:
        done.hit()

    pool = ThreadPoolExecutor(THREADPOOL_WORKERS)
    warm = 2_000
    done.reset(warm)
    for i in range(warm):
        pool.submit(noop, i).add_done_callback(callback)
    done.done.wait(30.0)

    done.reset(n)
    submit = pool.submit
    t0 = time.perf_counter()
    for i in range(n):
        submit(noop, i).add_done_callback(callback)
    t_submitted = time.perf_counter()
    completed = done.done.wait(120.0)
    t1 = time.perf_counter()
    count = done.count
    pool.shutdown(wait=True)
    return {
        "n": n,
        "workers": THREADPOOL_WORKERS,
        "seconds": t1 - t0,
        "rate": count / (t1 - t0),
        "submit_rate": n / (t_submitted - t0),
        "completed": count,
        "all_completed": completed,
    }


def section_tb_gobucket(n: int) -> dict[str, Any]:
    from gobucket import BucketConfig, TaskBucket, TaskType

    late: list[float] = []
    finished = Counter(n)
    now = time.monotonic

    def on_execute(_id: str, due: float) -> None:
        late.append(now() - due)

    executor = _gobucket_executor(on_execute, lambda _id, _data: finished.hit())
    bucket = TaskBucket(BucketConfig(life_span=60.0, max_bucket=n + 1_000, run_after=1.0), executor)
    # Warm-up (runtime, timer thread, hook workers), then forget its lateness.
    finished.reset(200)
    for i in range(200):
        bucket.fill(TaskType.TIME_BOMB, f"warm-{i}", now() + 0.01, run_after=0.01, life_span=5.0)
    bucket.join(30.0)
    late.clear()
    finished.reset(n)

    # Absolute due times: lead + spread*i/n after the start, so the last fill is
    # done before the first task comes due and the RSS sample sees them all pending.
    # GC_LEAD: room for the gc.collect() timings below, all before the first due time.
    lead = 2.0 + n / 12_000 + GC_LEAD  # fills ran at ~25,000/s on 2 cores; leave room
    base = rss()
    objects_base = len(gc.get_objects())
    fill = bucket.fill
    bomb = TaskType.TIME_BOMB
    start = now()
    step = TB_SPREAD / n
    for i in range(n):
        due = start + lead + i * step
        after = max(0.0, due - now())
        fill(bomb, f"tb-{i}", due, run_after=after, life_span=after + 5.0)
    filled_at = now()
    alive_before = len(bucket)
    grown = rss() - base
    objects_grown = len(gc.get_objects()) - objects_base
    gc_times = []
    for _ in range(3):  # a full collection with every bomb pending
        g0 = time.perf_counter()
        gc.collect()
        gc_times.append(time.perf_counter() - g0)
    measured_at = now()
    first_due = start + lead
    all_pending_at_sample = measured_at < first_due

    emptied = bucket.join(lead + TB_SPREAD + 60.0)
    done_at = now()
    stats = bucket.stats()
    bucket.close(grace=5.0)
    values = sorted(late)
    return {
        "n": n,
        "fill_seconds": filled_at - start,
        "fill_rate": n / (filled_at - start),
        "alive_after_fill": alive_before,
        "all_pending_at_rss_sample": all_pending_at_sample,
        "rss_growth": grown,
        "rss_per_task": grown / n,
        "gc_tracked_growth": objects_grown,
        "gc_tracked_per_task": objects_grown / n,
        "gc_full_collect_ms": [t * 1e3 for t in gc_times],
        "gc_full_collect_max_ms": max(gc_times) * 1e3,
        "executed": len(late),
        "finished": finished.count,
        "lost": n - len(late),
        "emptied": emptied,
        "last_done_after_last_due_s": done_at - (start + lead + TB_SPREAD),
        "late_p50_ms": percentile(values, 0.50) * 1e3,
        "late_p99_ms": percentile(values, 0.99) * 1e3,
        "late_max_ms": (values[-1] if values else float("nan")) * 1e3,
        "late_min_ms": (values[0] if values else float("nan")) * 1e3,
        "late_mean_ms": (statistics.fmean(values) if values else float("nan")) * 1e3,
        "stats": repr(stats),
    }


def section_drain_gobucket(n: int) -> dict[str, Any]:
    from gobucket import BucketConfig, TaskBucket, TaskType

    executed = Counter(n)
    executor = _gobucket_executor(lambda _id, _data: executed.hit(), lambda _id, _data: None)
    bucket = TaskBucket(
        BucketConfig(life_span=PENDING_AFTER + 60.0, max_bucket=n + 1_000, run_after=1.0),
        executor,
    )
    fill = bucket.fill
    bomb = TaskType.TIME_BOMB
    t0 = time.perf_counter()
    for i in range(n):
        fill(bomb, f"tb-{i}", i, run_after=PENDING_AFTER)
    t_filled = time.perf_counter()
    alive_before = len(bucket)
    drain = bucket.drain
    errors = 0
    t1 = time.perf_counter()
    for i in range(n):
        try:
            drain(f"tb-{i}")
        except Exception:
            errors += 1
    t2 = time.perf_counter()
    alive_after = len(bucket)
    stats = bucket.stats()
    bucket.close(grace=5.0)
    return {
        "n": n,
        "fill_rate": n / (t_filled - t0),
        "alive_before_drain": alive_before,
        "drain_seconds": t2 - t1,
        "rate": n / (t2 - t1),
        "drain_errors": errors,
        "alive_after_drain": alive_after,
        "executed": executed.count,
        "stats": repr(stats),
    }


# --------------------------------------------------------------------------- naive pykka bucket
class NaiveBucket:
    """A bucket built the obvious way: one pykka.ThreadingActor (one OS thread) per task.

    A task's actor waits out its ``run_after`` on an Event (so a drain can wake
    it), then runs ``on_execute`` and ``on_finish`` and stops itself.
    """

    def __init__(self, on_execute: Callable[..., Any], on_finish: Callable[..., Any]) -> None:
        import pykka

        self._tasks: dict[str, tuple[Any, threading.Event]] = {}
        self._lock = threading.Lock()
        self._empty = threading.Condition(self._lock)
        bucket = self

        class NaiveTaskActor(pykka.ThreadingActor):
            use_daemon_thread = True

            def __init__(self, id: str, data: Any, run_after: float, cancel: threading.Event):
                super().__init__()
                self.id, self.data, self.run_after, self.cancel = id, data, run_after, cancel

            def on_start(self) -> None:
                self.actor_ref.tell("run")

            def on_receive(self, message: Any) -> None:
                if self.run_after > 0 and self.cancel.wait(self.run_after):
                    return  # drained; the drainer stops us
                if not self.cancel.is_set():
                    on_execute(self.id, self.data)
                    on_finish(self.id, self.data)
                bucket._forget(self.id)
                self.stop()

        self._actor_class = NaiveTaskActor

    def fill(self, id: str, data: Any, run_after: float = 0.0) -> None:
        cancel = threading.Event()
        with self._lock:
            if id in self._tasks:
                raise KeyError(id)
            self._tasks[id] = (None, cancel)
        ref = self._actor_class.start(id, data, run_after, cancel)
        with self._lock:
            if id in self._tasks:
                self._tasks[id] = (ref, cancel)

    def drain(self, id: str) -> None:
        with self._lock:
            ref, cancel = self._tasks.pop(id)
            if not self._tasks:
                self._empty.notify_all()
        cancel.set()
        if ref is not None:
            ref.stop(block=False)

    def _forget(self, id: str) -> None:
        with self._lock:
            self._tasks.pop(id, None)
            if not self._tasks:
                self._empty.notify_all()

    def join(self, timeout: float) -> bool:
        with self._empty:
            return self._empty.wait_for(lambda: not self._tasks, timeout)

    def __len__(self) -> int:
        return len(self._tasks)


def section_imm_naive(n: int) -> dict[str, Any]:
    finished = Counter(n)
    bucket = NaiveBucket(lambda _id, _data: None, lambda _id, _data: finished.hit())
    finished.reset(100)
    for i in range(100):
        bucket.fill(f"warm-{i}", i)
    bucket.join(30.0)
    finished.reset(n)
    t0 = time.perf_counter()
    for i in range(n):
        bucket.fill(f"imm-{i}", i)
    emptied = bucket.join(120.0)
    t1 = time.perf_counter()
    return {
        "n": n,
        "seconds": t1 - t0,
        "rate": n / (t1 - t0),
        "finished": finished.count,
        "emptied": emptied,
    }


def section_tb_naive(n: int) -> dict[str, Any]:
    executed = Counter(n)
    bucket = NaiveBucket(lambda _id, _data: executed.hit(), lambda _id, _data: None)
    for i in range(20):  # warm-up: import and start pykka's machinery
        bucket.fill(f"warm-{i}", i)
    bucket.join(30.0)
    executed.reset(n)
    base = rss()
    t0 = time.perf_counter()
    for i in range(n):
        bucket.fill(f"tb-{i}", i, run_after=PENDING_AFTER)
    t_filled = time.perf_counter()
    time.sleep(0.5)  # let every actor thread start and block
    grown = rss() - base
    alive = len(bucket)
    threads = threading.active_count()
    t1 = time.perf_counter()
    for i in range(n):
        bucket.drain(f"tb-{i}")
    bucket.join(30.0)  # ...and until every actor let go of its task
    t2 = time.perf_counter()
    return {
        "n": n,
        "fill_rate": n / (t_filled - t0),
        "rss_growth": grown,
        "rss_per_task": grown / n,
        "alive": alive,
        "threads": threads,
        "drain_rate": n / (t2 - t1),
        "executed": executed.count,
    }


# --------------------------------------------------------------------------- APScheduler 3
def _scheduler() -> Any:
    from apscheduler.schedulers.background import BackgroundScheduler

    # misfire_grace_time=None: a job that starts late still runs (none may be skipped).
    sched = BackgroundScheduler(
        job_defaults={"misfire_grace_time": None, "coalesce": False, "max_instances": 1}
    )
    sched.start()
    return sched


def section_imm_apscheduler(n: int) -> dict[str, Any]:
    done = Counter(n)
    sched = _scheduler()
    hit = done.hit
    done.reset(200)
    for i in range(200):
        sched.add_job(hit, id=f"warm-{i}")  # no trigger: a date trigger for now
    done.done.wait(30.0)
    done.reset(n)
    timeout = 90.0
    t0 = time.perf_counter()
    for i in range(n):
        sched.add_job(hit, id=f"imm-{i}")
    t_added = time.perf_counter()
    completed = done.done.wait(timeout)
    t1 = time.perf_counter()
    count = done.count
    sched.shutdown(wait=False)
    return {
        "n": n,
        "seconds": t1 - t0,
        "rate": count / (t1 - t0),
        "add_rate": n / (t_added - t0),
        "completed": count,
        "all_completed": completed,
    }


def section_aps_pending(n: int) -> dict[str, Any]:
    ran = Counter(n)
    sched = _scheduler()
    hit = ran.hit
    for i in range(100):  # warm-up
        sched.add_job(hit, id=f"warm-{i}")
    time.sleep(0.5)
    base = rss()
    when = datetime.now(UTC) + timedelta(seconds=PENDING_AFTER)
    t0 = time.perf_counter()
    for i in range(n):
        sched.add_job(hit, "date", run_date=when, id=f"tb-{i}")
    t_added = time.perf_counter()
    grown = rss() - base
    pending = len(sched.get_jobs())
    t1 = time.perf_counter()
    deadline = t1 + 60.0
    removed = 0
    for i in range(n):
        sched.remove_job(f"tb-{i}")
        removed += 1
        if (removed & 1023) == 0 and time.perf_counter() > deadline:
            break
    t2 = time.perf_counter()
    left = len(sched.get_jobs())
    sched.shutdown(wait=False)
    return {
        "n": n,
        "add_rate": n / (t_added - t0),
        "rss_growth": grown,
        "rss_per_job": grown / n,
        "pending": pending,
        "removed": removed,
        "remove_seconds": t2 - t1,
        "remove_rate": removed / (t2 - t1),
        "left": left,
        "ran": ran.count - 100,
    }


SECTIONS: dict[str, Callable[[int], dict[str, Any]]] = {
    "imm_gobucket": section_imm_gobucket,
    "imm_threadpool": section_imm_threadpool,
    "imm_apscheduler": section_imm_apscheduler,
    "imm_naive": section_imm_naive,
    "tb_gobucket": section_tb_gobucket,
    "tb_naive": section_tb_naive,
    "aps_pending": section_aps_pending,
    "drain_gobucket": section_drain_gobucket,
}


# --------------------------------------------------------------------------- parent
def run_child(name: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name]
    if quick:
        cmd.append("--quick")
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {exc.timeout}s"}
    elapsed = time.perf_counter() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            result: dict[str, Any] = json.loads(line[len(MARKER) :])
            result["wall_seconds"] = elapsed
            if proc.returncode != 0:
                result["exit_code"] = proc.returncode
            if proc.stderr.strip():
                result["stderr"] = proc.stderr.strip()[-2000:]
            return result
    return {
        "error": f"exit code {proc.returncode}, no result",
        "stderr": proc.stderr.strip()[-2000:],
        "wall_seconds": elapsed,
    }


def fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}/s"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} B" if abs(value) < 10_240 else f"{value / 1024:,.1f} KB"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}x"


def get(res: dict[str, Any], key: str) -> float | None:
    value = res.get(key)
    return float(value) if isinstance(value, int | float) else None


def div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summary(values: list[float | None]) -> tuple[float, float, float] | None:
    """(min, median, max) of the rounds that gave a number; None if none did."""
    nums = [v for v in values if v is not None]
    if not nums:
        return None
    return min(nums), statistics.median(nums), max(nums)


def fmt_summary(values: list[float | None], fmt: Callable[[float | None], str]) -> str:
    """``min / median / max`` of the rounds (one value if there is one round)."""
    s = summary(values)
    if s is None:
        return "n/a"
    if len(values) == 1:
        return fmt(s[1])
    return " / ".join(fmt(v) for v in s)


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f} ms"


def fmt_count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def verdict(met: tuple[bool | None, int, int], target: str) -> str:
    """Met on the median of the rounds, with how many single rounds met it."""
    ok, hits, rounds = met
    if target == "-":
        return "-"
    if ok is None:
        return "[yellow]n/a[/]"
    word = "[green]met[/]" if ok else "[red]NOT met[/]"
    return f"{word} ({hits}/{rounds} rounds)"


def _imm_rate(r: dict[str, dict[str, Any]]) -> float | None:
    gi = r["imm_gobucket"]
    ok = gi.get("finished") == gi.get("n") and gi.get("left_in_bucket") == 0
    return get(gi, "rate") if ok else None


def _drain_rate(r: dict[str, dict[str, Any]]) -> float | None:
    dr = r["drain_gobucket"]
    ok = dr.get("drain_errors") == 0 and dr.get("alive_after_drain") == 0
    return get(dr, "rate") if ok else None


def _tb(key: str) -> Callable[[dict[str, dict[str, Any]]], float | None]:
    return lambda r: get(r["tb_gobucket"], key)


def _n(section: str, key: str = "n") -> Callable[[dict[str, dict[str, Any]]], Any]:
    return lambda r: r[section].get(key, "?")


Metric = Callable[[dict[str, dict[str, Any]]], float | None]


def _against(section: str, key: str, ours: Metric, lower_is_better: bool = False) -> dict[str, Any]:
    """A row's peer value (``key`` of ``section``) and gobucket's advantage over it."""

    def peer(r: dict[str, dict[str, Any]]) -> float | None:
        return get(r[section], key)

    if lower_is_better:
        return {"peer_value": peer, "ratio": lambda r: div(peer(r), ours(r))}
    return {"peer_value": peer, "ratio": lambda r: div(ours(r), peer(r))}


NAIVE = "naive: ThreadingActor per task"

# One table row per entry: the figure, gobucket's value, a peer, the advantage (computed
# within each round), the target and what it applies to ("ratio" or "value").
FIGURES: list[dict[str, Any]] = [
    {
        "figure": "1. immediate, full path",
        "n": _n("imm_gobucket"),
        "value": _imm_rate,
        "fmt": fmt_rate,
        "peer": "ThreadPoolExecutor(16) submit + done callback",
        "peer_n": _n("imm_threadpool"),
        **_against("imm_threadpool", "rate", _imm_rate),
        "target": f"≥ {TARGET_IMM_VS_THREADPOOL:.1f}x ThreadPoolExecutor",
        "on": "ratio",
        "ok": lambda x: x >= TARGET_IMM_VS_THREADPOOL,
    },
    {
        "figure": "1. immediate, full path",
        "value": _imm_rate,
        "fmt": fmt_rate,
        "peer": "APScheduler 3 BackgroundScheduler",
        "peer_n": _n("imm_apscheduler"),
        **_against("imm_apscheduler", "rate", _imm_rate),
        "target": f"≥ {TARGET_IMM_VS_APS:.0f}x APScheduler",
        "on": "ratio",
        "ok": lambda x: x >= TARGET_IMM_VS_APS,
    },
    {
        "figure": "1. immediate, full path",
        "value": _imm_rate,
        "fmt": fmt_rate,
        "peer": NAIVE,
        "peer_n": _n("imm_naive"),
        **_against("imm_naive", "rate", _imm_rate),
    },
    {
        "figure": "2. time-bomb fill rate (tb_gobucket)",
        "n": _n("tb_gobucket"),
        "value": _tb("fill_rate"),
        "fmt": fmt_rate,
        "target": f"≥ {TARGET_TB_FILL_RATE:,.0f}/s",
        "on": "value",
        "ok": lambda x: x >= TARGET_TB_FILL_RATE,
    },
    {
        "figure": "2. time-bomb fill rate (drain_gobucket, run_after 60 s)",
        "n": _n("drain_gobucket"),
        "value": lambda r: get(r["drain_gobucket"], "fill_rate"),
        "fmt": fmt_rate,
    },
    {
        "figure": "3. RSS per pending time bomb",
        "n": _n("tb_gobucket"),
        "value": _tb("rss_per_task"),
        "fmt": fmt_bytes,
        "peer": NAIVE,
        "peer_n": _n("tb_naive"),
        **_against("tb_naive", "rss_per_task", _tb("rss_per_task"), lower_is_better=True),
        "target": f"≤ {TARGET_RSS_PER_TASK / 1024:.0f} KB",
        "on": "value",
        "ok": lambda x: x <= TARGET_RSS_PER_TASK,
    },
    {
        "figure": "3. RSS per pending time bomb",
        "value": _tb("rss_per_task"),
        "fmt": fmt_bytes,
        "peer": "APScheduler 3 date job 60 s out",
        "peer_n": _n("aps_pending"),
        **_against("aps_pending", "rss_per_job", _tb("rss_per_task"), lower_is_better=True),
    },
    {
        "figure": "4. time bombs lost",
        "n": _n("tb_gobucket"),
        "value": _tb("lost"),
        "fmt": lambda v: "n/a" if v is None else f"{v:,.0f}",
        "target": "0 lost",
        "on": "value",
        "ok": lambda x: x == 0,
    },
    {
        "figure": f"4. lateness max, due over {TB_SPREAD:.0f} s",
        "n": _n("tb_gobucket"),
        "full_n": SIZES["tb_gobucket"][0],
        "value": _tb("late_max_ms"),
        "fmt": fmt_ms,
        "target": f"≤ {TARGET_LATE_MAX_MS:.0f} ms",
        "on": "value",
        "ok": lambda x: x <= TARGET_LATE_MAX_MS,
    },
    {
        "figure": "4. lateness p99",
        "value": _tb("late_p99_ms"),
        "fmt": fmt_ms,
        "target": f"≤ {TARGET_P99_MS:.0f} ms",
        "on": "value",
        "ok": lambda x: x <= TARGET_P99_MS,
    },
    {"figure": "4. lateness p50", "value": _tb("late_p50_ms"), "fmt": fmt_ms},
    {
        "figure": "5. full gc.collect() with all pending (max of 3)",
        "n": _n("tb_gobucket"),
        "value": _tb("gc_full_collect_max_ms"),
        "fmt": fmt_ms,
    },
    {
        "figure": "5. GC-tracked objects per pending task",
        "n": _n("tb_gobucket"),
        "value": _tb("gc_tracked_per_task"),
        "fmt": fmt_count,
    },
    {
        "figure": "6. drain pending time bombs",
        "n": _n("drain_gobucket"),
        "value": _drain_rate,
        "fmt": fmt_rate,
        "peer": "APScheduler 3 remove_job",
        "peer_n": _n("aps_pending", "removed"),
        **_against("aps_pending", "remove_rate", _drain_rate),
        "target": f"≥ {TARGET_DRAIN_VS_APS:.0f}x APScheduler",
        "on": "ratio",
        "ok": lambda x: x >= TARGET_DRAIN_VS_APS,
    },
    {
        "figure": "6. drain pending time bombs",
        "value": _drain_rate,
        "fmt": fmt_rate,
        "peer": NAIVE,
        "peer_n": _n("tb_naive"),
        **_against("tb_naive", "drain_rate", _drain_rate),
    },
]


def _label(n: Any, quick: bool, full_n: int | None) -> str:
    text = f"N={n:,}" if isinstance(n, int) else f"N={n}"
    if quick and full_n is not None and n != full_n:
        text += f" (quick; target is for {full_n:,})"
    return text


def build_rows(rounds: list[dict[str, dict[str, Any]]], quick: bool) -> list[dict[str, Any]]:
    """One row per FIGURES entry: min / median / max over rounds; ratios within a round."""
    rows: list[dict[str, Any]] = []
    first = rounds[0]
    for spec in FIGURES:
        values = [spec["value"](r) for r in rounds]
        ratios = [spec["ratio"](r) for r in rounds] if "ratio" in spec else []
        figure = spec["figure"]
        if "n" in spec:
            figure += f", {_label(spec['n'](first), quick, spec.get('full_n'))}"
        peer, peer_value = "-", "-"
        if "peer" in spec:
            peer = f"{spec['peer']}, {_label(spec['peer_n'](first), quick, None)}"
            peer_value = fmt_summary([spec["peer_value"](r) for r in rounds], spec["fmt"])
        target = spec.get("target", "-")
        met: tuple[bool | None, int, int] = (None, 0, len(rounds))
        if target != "-":
            judged = ratios if spec["on"] == "ratio" else values
            s = summary(judged)
            hits = sum(1 for v in judged if v is not None and spec["ok"](v))
            met = (None if s is None else bool(spec["ok"](s[1])), hits, len(rounds))
        rows.append(
            {
                "figure": figure,
                "gobucket": fmt_summary(values, spec["fmt"]),
                "gobucket_rounds": values,
                "peer": peer,
                "peer_value": peer_value,
                "ratio": fmt_summary(ratios, fmt_ratio) if ratios else "-",
                "ratio_rounds": ratios,
                "target": target,
                "met": met[0],
                "rounds_met": met[1],
                "rounds": met[2],
            }
        )
    return rows


def anomalies(r: dict[str, dict[str, Any]]) -> list[str]:
    notes: list[str] = []
    for name, res in r.items():
        if "error" in res:
            notes.append(f"{name}: {res['error']}")
        if res.get("exit_code"):
            notes.append(f"{name}: child exited with code {res['exit_code']}")
        if res.get("stderr"):
            first = res["stderr"].splitlines()[-1]
            notes.append(f"{name}: wrote to stderr (last line: {first})")
    gi = r["imm_gobucket"]
    if "n" in gi and (gi.get("finished") != gi["n"] or gi.get("left_in_bucket")):
        notes.append(
            f"imm_gobucket: {gi.get('finished')} of {gi['n']} on_finish calls, "
            f"{gi.get('left_in_bucket')} left in bucket, join emptied={gi.get('emptied')}"
        )
    tp = r["imm_threadpool"]
    if "n" in tp and not tp.get("all_completed"):
        notes.append(f"imm_threadpool: only {tp.get('completed')} of {tp['n']} callbacks ran")
    ga = r["imm_apscheduler"]
    if "n" in ga and not ga.get("all_completed"):
        notes.append(f"imm_apscheduler: only {ga.get('completed')} of {ga['n']} jobs ran")
    tb = r["tb_gobucket"]
    if "n" in tb:
        if tb.get("lost") or tb.get("finished") != tb["n"]:
            notes.append(
                f"tb_gobucket: {tb.get('executed')} on_execute / {tb.get('finished')} on_finish "
                f"of {tb['n']}; emptied={tb.get('emptied')}"
            )
        if tb.get("alive_after_fill") != tb["n"]:
            notes.append(f"tb_gobucket: {tb.get('alive_after_fill')} alive after fill")
        if not tb.get("all_pending_at_rss_sample"):
            notes.append("tb_gobucket: some time bombs came due before the RSS/GC samples ended")
        p99 = tb.get("late_p99_ms")
        if isinstance(p99, float) and p99 > TARGET_LATE_MAX_MS:
            notes.append(
                f"tb_gobucket: tasks came due at {tb['n'] / TB_SPREAD:,.0f}/s; lateness p99 "
                f"{p99:,.0f} ms, the last task ended {tb.get('last_done_after_last_due_s', 0):.2f}"
                " s after the last due time (large means the bucket fell behind)"
            )
        if (tb.get("late_min_ms") or 0) < 0:
            notes.append(f"tb_gobucket: a task ran {-tb['late_min_ms']:.3f} ms early")
    dr = r["drain_gobucket"]
    if "n" in dr and (dr.get("drain_errors") or dr.get("alive_after_drain") or dr.get("executed")):
        notes.append(
            f"drain_gobucket: {dr.get('drain_errors')} drain errors, "
            f"{dr.get('alive_after_drain')} alive after, {dr.get('executed')} executed"
        )
    ap = r["aps_pending"]
    if "n" in ap and ap.get("removed") != ap["n"]:
        notes.append(f"aps_pending: removal stopped at {ap.get('removed')} (time limit)")
    return notes


def main_parent(quick: bool, rounds: int) -> int:
    console = wide_console(150)
    results: list[dict[str, dict[str, Any]]] = []
    total0 = time.perf_counter()
    for k in range(rounds):
        # Alternate the order round by round so every peer sees the same load on average.
        order = list(SECTIONS) if k % 2 == 0 else list(reversed(SECTIONS))
        round_results: dict[str, dict[str, Any]] = {}
        for name in order:
            console.print(f"[dim]round {k + 1}/{rounds}: {name} ...[/]", end=" ")
            round_results[name] = run_child(name, quick)
            console.print(f"[dim]{round_results[name].get('wall_seconds', 0):.1f}s[/]")
        results.append({name: round_results[name] for name in SECTIONS})
    total = time.perf_counter() - total0

    rows = build_rows(results, quick)
    spread = "min / median / max of " if rounds > 1 else ""
    table = make_table(
        f"gobucket standalone benchmark ({'quick' if quick else 'full'}, {rounds} round(s), "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}); cells: "
        f"{spread}{rounds} round(s), advantages taken within a round; Met judged on the median",
        [
            ("Figure", "left"),
            ("gobucket", "right"),
            ("Peer", "left"),
            ("Peer value", "right"),
            ("Advantage", "right"),
            ("Target", "left"),
            ("Met", "left"),
        ],
    )
    for row in rows:
        table.add_row(
            row["figure"],
            row["gobucket"],
            row["peer"],
            row["peer_value"],
            row["ratio"],
            row["target"],
            verdict((row["met"], row["rounds_met"], row["rounds"]), row["target"]),
        )
    console.print(table)
    notes = [f"round {k + 1}: {note}" for k, res in enumerate(results) for note in anomalies(res)]
    for note in notes:
        console.print(f"[red]anomaly:[/] {note}")
    console.print(f"[dim]total {total:.1f}s[/]")

    payload = {
        "mode": "quick" if quick else "full",
        "rounds": rounds,
        "total_seconds": total,
        "targets": {
            "immediate_vs_threadpool": TARGET_IMM_VS_THREADPOOL,
            "immediate_vs_apscheduler": TARGET_IMM_VS_APS,
            "time_bomb_fill_rate": TARGET_TB_FILL_RATE,
            "rss_per_pending_task_bytes": TARGET_RSS_PER_TASK,
            "lateness_max_ms": TARGET_LATE_MAX_MS,
            "lateness_p99_ms": TARGET_P99_MS,
            "drain_vs_apscheduler": TARGET_DRAIN_VS_APS,
        },
        "rows": rows,
        "anomalies": notes,
        "round_results": results,
    }
    write_results(RESULTS, payload)
    console.print(f"[dim]results written to {RESULTS}[/]")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="run every section this many times (default 3)"
    )
    parser.add_argument("--section", choices=sorted(SECTIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.section is None:
        return main_parent(args.quick, args.rounds)
    full, quick = SIZES[args.section]
    result = SECTIONS[args.section](quick if args.quick else full)
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
