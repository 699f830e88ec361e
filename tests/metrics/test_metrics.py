"""gobucket.metrics: a known workload, scraped over real HTTP, counted exactly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from typing import Any

import pytest
from helpers.child_node import REPO_ROOT
from helpers.cluster import HOLD, Cluster, addr_text, free_port, wait_peer_up
from helpers.waiting import WAIT, wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import gobucket.metrics
from gobucket import (
    BucketConfig,
    BucketFullError,
    DuplicateTaskError,
    Executor,
    InvalidArgumentError,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

N_OK = 10  # immediate tasks that finish
M_FAIL = 3  # immediate tasks whose on_execute raises
T_BOMBS = 4  # time bombs due 0.2 s after their fill
CAPACITY = 20
K_FULL = 5  # direct fills refused because the bucket is full
P_PEER = 3  # group fills that overflow to the peer
DRAINED = 2


class Jobs(Executor):
    """Fails tasks whose data is "fail"; every hook is defined (so each one is timed)."""

    def on_execute(self, ctx: Any, id: str, data: Any) -> None:
        if data == "fail":
            raise RuntimeError("planned failure")

    def on_finish(self, ctx: Any, id: str, data: Any) -> None:
        pass

    def on_execute_error(self, ctx: Any, id: str, data: Any, error: BaseException) -> None:
        pass

    def on_task_exhausted(self, ctx: Any, id: str, data: Any) -> None:
        pass

    def on_panic(self, ctx: Any, id: str, data: Any) -> None:
        pass


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.status == 200
        text = response.read().decode()
    return parse(text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have {sorted(k[0] for k in samples)}"
    return samples[key]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def url_of(address: tuple[str, int] | None) -> str:
    assert address is not None
    return f"http://127.0.0.1:{address[1]}/metrics"


def stats_reach(bucket: TaskBucket, **expected: int) -> Any:
    def reached() -> Any:
        stats = bucket.stats()
        return stats if all(getattr(stats, k) == v for k, v in expected.items()) else None

    return wait_until(reached, what=f"{bucket.name} stats {expected}")


def test_a_group_endpoint_counts_a_known_workload_exactly(cluster: Cluster) -> None:
    peer_bucket = cluster.bucket(max_bucket=50, name="jobs")
    peer = cluster.group({"jobs": peer_bucket})
    local = cluster.bucket(max_bucket=CAPACITY, name="jobs", executor=Jobs(), run_after=0.2)
    metrics_port = free_port()
    group = cluster.group({"jobs": local}, [peer.address], metrics_port=metrics_port)
    assert group.metrics_address is not None and group.metrics_address[1] == metrics_port
    wait_peer_up(group, peer.address, bucket="jobs")
    url = url_of(group.metrics_address)

    for i in range(N_OK):
        assert group.fill("jobs", f"ok-{i}", "ok", timeout=WAIT).local
    for i in range(M_FAIL):
        assert group.fill("jobs", f"fail-{i}", "fail", timeout=WAIT).local
    for i in range(T_BOMBS):
        placed = group.fill(
            "jobs", f"bomb-{i}", "ok", task_type=TaskType.TIME_BOMB, run_after=0.2, timeout=WAIT
        )
        assert placed.local
    stats_reach(local, finished=N_OK + T_BOMBS, execute_errors=M_FAIL, alive=0)

    holds = [f"hold-{i}" for i in range(CAPACITY)]
    for task_id in holds:
        local.fill(TaskType.TIME_BOMB, task_id, None, run_after=60.0, life_span=120.0)
    for i in range(K_FULL):
        with pytest.raises(BucketFullError):
            local.fill(TaskType.IMMEDIATE, f"refused-{i}", None)
    with pytest.raises(DuplicateTaskError):
        local.fill(TaskType.IMMEDIATE, holds[0], None)
    for i in range(P_PEER):
        placed = group.fill("jobs", f"over-{i}", None, timeout=WAIT, **HOLD)
        assert not placed.local and placed.address == peer.address
    for task_id in holds[:DRAINED]:
        local.drain(task_id)

    samples = scrape(url)

    fills = N_OK + M_FAIL + T_BOMBS + CAPACITY
    assert value(samples, "gobucket_fills_total", bucket="jobs", where="local") == fills
    assert value(samples, "gobucket_fills_total", bucket="jobs", where="peer") == P_PEER
    full = K_FULL + P_PEER  # an overflowing group fill is refused here first
    assert value(samples, "gobucket_fills_refused_total", bucket="jobs", reason="full") == full
    assert value(samples, "gobucket_fills_refused_total", bucket="jobs", reason="duplicate") == 1
    ends = {
        "finished": N_OK + T_BOMBS,
        "execute_error": M_FAIL,
        "exhausted": 0,
        "panicked": 0,
        "drained": DRAINED,
        "handed_off": 0,
    }
    for outcome, count in ends.items():
        got = value(samples, "gobucket_task_ends_total", bucket="jobs", outcome=outcome)
        assert got == count, outcome
    assert value(samples, "gobucket_tasks_alive", bucket="jobs") == CAPACITY - DRAINED
    assert value(samples, "gobucket_bucket_capacity", bucket="jobs") == CAPACITY
    assert value(samples, "gobucket_tasks_running", bucket="jobs") == 0
    assert value(samples, "gobucket_tasks_queued", bucket="jobs") == 0
    assert not any(n == "gobucket_overflow_failed_total" for n in names(samples))

    executed = N_OK + M_FAIL + T_BOMBS
    hook = "gobucket_hook_duration_seconds"
    assert value(samples, f"{hook}_count", bucket="jobs", hook="execute") == executed
    assert value(samples, f"{hook}_count", bucket="jobs", hook="end") == executed
    assert value(samples, f"{hook}_bucket", bucket="jobs", hook="end", le="+Inf") == executed
    late = "gobucket_time_bomb_lateness_seconds"
    assert value(samples, f"{late}_count", bucket="jobs") == T_BOMBS
    assert value(samples, f"{late}_bucket", bucket="jobs", le="+Inf") == T_BOMBS
    assert 0 <= value(samples, f"{late}_sum", bucket="jobs") < T_BOMBS * WAIT

    assert value(samples, "gobucket_peers_up") == 1
    assert value(samples, "gobucket_peers_known") == 1
    assert value(samples, "gobucket_peer_up", peer=addr_text(peer.address), peer_node=peer.node_id)

    group.stop()
    assert local._load.observer is None  # no watcher left: the hot path is back to a None check
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=WAIT)


def test_an_overflow_no_peer_takes_is_counted_by_reason(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=1, name="jobs")
    group = cluster.group({"jobs": bucket}, metrics_port=0)
    url = url_of(group.metrics_address)
    group.fill("jobs", "held", None, timeout=WAIT, **HOLD)
    with pytest.raises(gobucket.NoPeerAvailableError):
        group.fill("jobs", "over", None, timeout=WAIT, **HOLD)
    samples = scrape(url)
    assert value(samples, "gobucket_overflow_failed_total", bucket="jobs", reason="no_peer") == 1
    assert value(samples, "gobucket_fills_total", bucket="jobs", where="peer") == 0
    assert value(samples, "gobucket_peers_up") == 0


def test_a_standalone_bucket_in_a_registry_of_its_own(make_bucket: Any) -> None:
    class AsyncJobs(Executor):
        async def on_execute(self, ctx: Any, id: str, data: Any) -> None:
            await asyncio.sleep(0)

        async def on_finish(self, ctx: Any, id: str, data: Any) -> None:
            pass

    registry = CollectorRegistry()
    bucket = make_bucket(AsyncJobs(), name="alone", max_bucket=10)
    collector = gobucket.metrics.register(bucket, registry=registry)
    assert gobucket.metrics.register(bucket, registry=registry) is collector  # once only
    twin = make_bucket(AsyncJobs(), name="alone")
    with pytest.raises(ValueError, match="alone"):
        gobucket.metrics.register(twin, registry=registry)

    for i in range(3):
        bucket.fill(TaskType.IMMEDIATE, f"a-{i}", None)
    bucket.fill(TaskType.TIME_BOMB, "bomb", None, run_after=0.05)
    stats_reach(bucket, finished=4, alive=0)

    samples = parse(generate_latest(registry).decode())
    assert value(samples, "gobucket_fills_total", bucket="alone", where="local") == 4
    hook = "gobucket_hook_duration_seconds_count"
    assert value(samples, hook, bucket="alone", hook="execute") == 4  # async hooks are timed too
    assert value(samples, hook, bucket="alone", hook="end") == 4
    assert value(samples, "gobucket_time_bomb_lateness_seconds_count", bucket="alone") == 1
    assert ("gobucket_fills_total", frozenset({("bucket", "alone"), ("where", "peer")})) not in (
        samples
    )
    assert "gobucket_peers_up" not in names(samples)  # no group registered

    gobucket.metrics.unregister(bucket, registry=registry)
    assert bucket._load.observer is None
    assert "gobucket_fills_total" not in names(parse(generate_latest(registry).decode()))


def test_serve_exposes_its_sources_and_stops(make_bucket: Any) -> None:
    bucket = make_bucket(Executor(), name="served")
    bucket.fill(TaskType.IMMEDIATE, "x", None)
    stats_reach(bucket, finished=1)
    with gobucket.metrics.serve(0, "127.0.0.1", sources=[bucket]) as server:
        samples = scrape(server.url)
        assert value(samples, "gobucket_fills_total", bucket="served", where="local") == 1
        assert value(samples, "gobucket_task_ends_total", bucket="served", outcome="finished") == 1
        # A second endpoint for the same bucket has its own registry: no clash.
        with gobucket.metrics.serve(0, "127.0.0.1", sources=[bucket]) as second:
            assert value(scrape(second.url), "gobucket_tasks_alive", bucket="served") == 0
        assert bucket._load.observer is not None  # the first endpoint still watches it
    assert bucket._load.observer is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=WAIT)


def test_a_closed_bucket_keeps_its_last_counters(make_bucket: Any) -> None:
    registry = CollectorRegistry()
    bucket = make_bucket(Executor(), name="closing")
    gobucket.metrics.register(bucket, registry)
    bucket.fill(TaskType.IMMEDIATE, "x", None)
    stats_reach(bucket, finished=1)
    generate_latest(registry)  # read while open
    bucket.close()
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "gobucket_task_ends_total", bucket="closing", outcome="finished") == 1


@pytest.mark.parametrize("port", [-1, 65536, "9108", True])
def test_a_bad_metrics_port_is_refused(port: Any) -> None:
    bucket = TaskBucket(BucketConfig(name="bad"), Executor())
    try:
        with pytest.raises(InvalidArgumentError, match="metrics_port"):
            TaskBucketGroup({"bad": bucket}, port=0, discovery=False, metrics_port=port)
    finally:
        bucket.close()


def _run_hidden(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where prometheus_client cannot be imported."""
    hide = textwrap.dedent(
        """
        import sys
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "prometheus_client":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None
        sys.meta_path.insert(0, Hide())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", hide + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO_ROOT),
        env=_env(),
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def test_gobucket_imports_without_prometheus_client() -> None:
    done = _run_hidden(
        """
        import gobucket, gobucket.metrics
        from gobucket import BucketConfig, Executor, TaskBucket, TaskBucketGroup, TaskType
        assert "prometheus_client" not in sys.modules
        with TaskBucket(BucketConfig(), Executor()) as bucket:
            bucket.fill(TaskType.IMMEDIATE, "x", None)
            assert bucket.join(30)
        for attempt in (lambda: gobucket.metrics.serve(0),
                        lambda: TaskBucketGroup({"default": bucket}, port=0, metrics_port=0)):
            try:
                attempt()
            except ModuleNotFoundError as error:
                print("refused:", error)
        """
    )
    assert done.returncode == 0, done.stderr
    refusals = [line for line in done.stdout.splitlines() if line.startswith("refused:")]
    assert len(refusals) == 2
    assert all("pip install 'gobucket[metrics]'" in line for line in refusals)


def test_serve_without_sources_exposes_every_bucket_of_the_process() -> None:
    # In a child: serve(port) follows prometheus_client.REGISTRY for the whole process,
    # which must not leak into this test session's registry.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import urllib.request
                import gobucket.metrics
                from gobucket import BucketConfig, FunctionExecutor, TaskBucket, TaskType
                from prometheus_client.parser import text_string_to_metric_families

                def ends(url):
                    text = urllib.request.urlopen(url, timeout=30).read().decode()
                    return {
                        s.labels["bucket"]: s.value
                        for f in text_string_to_metric_families(text)
                        for s in f.samples
                        if s.name == "gobucket_task_ends_total"
                        and s.labels.get("outcome") == "finished"
                    }

                early = TaskBucket(BucketConfig(name="early"), FunctionExecutor())
                with gobucket.metrics.serve(0, "127.0.0.1") as server:
                    late = TaskBucket(BucketConfig(name="late"), FunctionExecutor())
                    for bucket, n in ((early, 3), (late, 2)):
                        for i in range(n):
                            bucket.fill(TaskType.IMMEDIATE, f"t{i}")
                        assert bucket.join(30)
                    print("ends", sorted(ends(server.url).items()))
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "ends [('early', 3.0), ('late', 2.0)]" in done.stdout, done.stdout
