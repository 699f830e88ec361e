"""Benchmark of the shared task pool on Redis, beside the direct LAN overflow, in one run.

Run ``python benchmarks/bench_pool.py`` (``--quick`` for a smaller run; ``--redis URL``
to use a running server, otherwise a ``redis-server`` found on PATH is started on a
free loopback port, persistence off).

Each round starts one child node (``python -m gobucket.testing.node --redis URL``,
driven through ``benchmarks/_common.py``): a group with one big bucket attached to the
pool. Then, in that round:

(a) spill and pull: the parent puts N immediate tasks in the pool with pipelining
    (``RedisTaskPool.add_many``, 500 a round trip); the child claims them in batches,
    runs them and acknowledges them. Tasks/s from the first fill to the last end hook
    in the child (wall clock, one machine);
(b) lateness of pooled time bombs: M time bombs due 1.5-2.5 s later go to the pool;
    the child claims them ahead (``lookahead``) and runs them on its own timer.
    p50/p99 of (on_execute start - original due time), and how many ran early;
(c) the direct LAN overflow, for comparison: a ``TaskBucketGroup`` whose bucket is full
    overflows N immediate tasks to the child as a peer (``fill_async``, pipelined);
    tasks/s from the first fill to the last end in the child.
(d) for reference, one spill at a time: ``TaskBucket.fill`` on a full bucket with a
    pool (one Redis round trip per fill), fills/s.

Three rounds; each figure is shown as min / median / max beside its target (judged on
the median), with the core count. Results go to ``benchmarks/results/bench_pool.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    NodeProcess,
    make_table,
    overflow_group,
    percentile,
    wide_console,
    write_results,
)

RESULTS = RESULTS_DIR / "bench_pool.json"
SECRET_ENV = "GOBUCKET_BENCH_SECRET"
BUCKET = "bench"
ROUNDS = 3
CHILD_DEADLINE = 240.0

# Sizes: (full, quick).
N_SPILL = (30_000, 5_000)
N_BOMBS = (2_000, 500)
N_LAN = (20_000, 5_000)
N_SINGLE = (3_000, 1_000)
CHUNK = 500

TARGET_RATE = 20_000.0
TARGET_P99_MS = 50.0


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """A throwaway redis-server on a free port (persistence off)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.redis_server import start_redis as start

    proc, url = start(workdir)
    return proc, url


def start_child(url: str, pool_name: str, secret: str) -> NodeProcess:
    options = [
        *("--host", "127.0.0.1", "--bucket", BUCKET, "--max", "1000000", "--ping", "1.0"),
        *("--secret-env", SECRET_ENV, "--node-id", "child", "--no-discovery"),
        *("--redis", url, "--pool-name", pool_name, "--claim-timeout", "30"),
        *("--life-span", "600", "--deadline", str(CHILD_DEADLINE), "--exit-fast"),
        *("--log-level", "ERROR"),
    ]
    log = Path(tempfile.mkdtemp(prefix="gb-bench-pool-")) / "child.log"
    child = NodeProcess.start(options, log, env={**os.environ, SECRET_ENV: secret})
    try:
        child.read("ready", 30.0)
    except BaseException:
        child.end()
        raise
    return child


def ends(child: NodeProcess) -> dict[str, Any]:
    child.send(cmd="ends")
    return child.read("ends", 30.0)


def wait_ends(child: NodeProcess, count: int, timeout: float = 120.0) -> dict[str, Any]:
    """Poll the child's end count (every 20 ms) until it reaches ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = ends(child)
        if seen["count"] >= count:
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {seen['count']} of {count} tasks ended: {child.tail()}")
        time.sleep(0.02)


def one_round(url: str, quick: bool, number: int) -> dict[str, Any]:
    from gobucket import BucketConfig, Executor, TaskBucket, TaskType
    from gobucket.pool import RedisTaskPool
    from gobucket.pool._record import PoolTask

    pick = 1 if quick else 0
    pool_name = f"bench{number}-{secrets.token_hex(3)}"
    secret = secrets.token_hex(16)
    pool = RedisTaskPool(url, name=pool_name)
    child = start_child(url, pool_name, secret)
    out: dict[str, Any] = {}
    try:
        # (a) spill and pull, pipelined
        n = N_SPILL[pick]
        base = ends(child)["count"]
        t0 = time.time()
        for start in range(0, n, CHUNK):
            now = time.time()
            batch = [
                PoolTask(f"a{i}", TaskType.IMMEDIATE, {"i": i}, now, now + 600)
                for i in range(start, min(n, start + CHUNK))
            ]
            codes = pool.add_many(BUCKET, batch)
            assert not any(codes), "the pool refused a task"
        filled = time.time()
        done = wait_ends(child, base + n)
        out["spill"] = {
            "n": n,
            "fill_seconds": filled - t0,
            "seconds": done["last"] - t0,
            "rate": n / (done["last"] - t0),
        }
        # (b) lateness of pooled time bombs
        m = N_BOMBS[pick]
        base_count, base_late = done["count"], len(done["lateness"])
        now = time.time()
        bombs = []
        for i in range(m):
            due = now + 1.5 + i / m
            bombs.append(PoolTask(f"b{i}", TaskType.TIME_BOMB, {"i": i, "due": due}, due, due + 60))
        for start in range(0, m, CHUNK):
            pool.add_many(BUCKET, bombs[start : start + CHUNK])
        done = wait_ends(child, base_count + m)
        late = [x * 1e3 for x in done["lateness"][base_late:]]
        out["bombs"] = {
            "n": m,
            "p50_ms": percentile(late, 0.5),
            "p99_ms": percentile(late, 0.99),
            "max_ms": max(late),
            "early": sum(1 for x in late if x < 0),
            "min_ms": min(late),
        }
        # (c) direct LAN overflow to the same child, as a peer
        n_lan = N_LAN[pick]
        assert child.address is not None
        group = overflow_group(BUCKET, child.address[1], secret, child.tail)
        try:
            base = ends(child)["count"]
            t0 = time.time()
            futures = [group.fill_async(BUCKET, f"c{i}", {"i": i}) for i in range(n_lan)]
            remote = sum(not f.get(timeout=60).local for f in futures)
            done = wait_ends(child, base + n_lan)
            out["lan"] = {
                "n": n_lan,
                "remote": remote,
                "seconds": done["last"] - t0,
                "rate": n_lan / (done["last"] - t0),
            }
        finally:
            group.stop()
            group.get_bucket(BUCKET).close(grace=0)
        # (d) one spill at a time through a full bucket with the pool
        n_single = N_SINGLE[pick]
        single = TaskBucket(
            BucketConfig(max_bucket=1, name="single", life_span=7200, run_after=3600),
            Executor(),
            pool=RedisTaskPool(url, name=pool_name, low_watermark=0.0),
        )
        try:
            single.fill(TaskType.TIME_BOMB, "blocker")
            t0 = time.perf_counter()
            for i in range(n_single):
                single.fill(TaskType.TIME_BOMB, f"d{i}", {"i": i})
            out["single"] = {"n": n_single, "rate": n_single / (time.perf_counter() - t0)}
        finally:
            single.close(grace=0)
    finally:
        child.stop()
        shutil.rmtree(child.log.parent, ignore_errors=True)
        with contextlib.suppress(Exception):
            keys = list(pool._client.scan_iter(f"{pool_name}:*"))
            if keys:
                pool._client.delete(*keys)
        pool.close()
    return out


def spread(values: list[float], fmt: str) -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def report(rounds: list[dict[str, Any]], quick: bool, total: float) -> int:
    def col(section: str, key: str) -> list[float]:
        return [float(r[section][key]) for r in rounds]

    spill, lan, single = col("spill", "rate"), col("lan", "rate"), col("single", "rate")
    p50, p99 = col("bombs", "p50_ms"), col("bombs", "p99_ms")
    early = sum(int(r["bombs"]["early"]) for r in rounds)
    rate_ok = statistics.median(spill) >= TARGET_RATE
    p99_ok = statistics.median(p99) <= TARGET_P99_MS and early == 0
    cores = os.cpu_count()

    def met(flag: bool | None) -> str:
        return "-" if flag is None else ("[green]met[/]" if flag else "[red]not met[/]")

    table = make_table(
        f"gobucket task pool on Redis vs LAN overflow ({'quick' if quick else 'full'}, "
        f"{len(rounds)} rounds, {cores} cores): min / median / max",
        [("figure", "left"), ("value", "right"), ("target", "right"), ("", "left")],
    )
    rows = [
        (
            f"(a) pool spill+pull, fill to end in another process (N={rounds[0]['spill']['n']:,})",
            spread(spill, "{:,.0f}/s"),
            f"≥ {TARGET_RATE:,.0f}/s",
            rate_ok,
        ),
        ("(b) pooled time bombs, lateness p50", spread(p50, "{:.1f} ms"), "", None),
        (
            "(b) pooled time bombs, lateness p99",
            spread(p99, "{:.1f} ms"),
            f"≤ {TARGET_P99_MS:g} ms",
            p99_ok,
        ),
        ("(b) ran before their due time", f"{early}", "0", early == 0),
        (
            f"(c) LAN overflow to a peer, fill to end (N={rounds[0]['lan']['n']:,})",
            spread(lan, "{:,.0f}/s"),
            "(comparison)",
            None,
        ),
        ("(d) one spill at a time (TaskBucket.fill, full)", spread(single, "{:,.0f}/s"), "", None),
    ]
    for figure, value, target, flag in rows:
        table.add_row(figure, value, target, met(flag))
    console = wide_console(120)
    console.print(table)
    console.print(f"[dim]Total run {total:.1f} s; judged on the median.[/]")
    payload = {
        "mode": "quick" if quick else "full",
        "total_seconds": total,
        "cores": cores,
        "targets": {"pool_rate": TARGET_RATE, "bomb_p99_ms": TARGET_P99_MS},
        "met": {"pool_rate": rate_ok, "bomb_p99": p99_ok},
        "rows": [{"figure": f, "value": v, "target": t, "met": flag} for f, v, t, flag in rows],
        "rounds": rounds,
    }
    write_results(RESULTS, payload)
    console.print(f"[dim]results written to {RESULTS}[/]")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a shorter run")
    parser.add_argument("--redis", default=None, help="a running Redis (default: start one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="gb-bench-redis-"))
    proc: subprocess.Popen[bytes] | None = None
    url = args.redis
    started = time.monotonic()
    try:
        if url is None:
            proc, url = start_redis(workdir)
        rounds = [one_round(url, args.quick, number) for number in range(ROUNDS)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return report(rounds, args.quick, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
