"""The Prometheus collector: reads a node's buckets and peers at scrape time.

Nothing is counted twice: counters come from each bucket's own counters
(``TaskBucket.stats()``), the group's overflow counts and peer table; only
the histograms (hook duration, time-bomb lateness) are recorded as tasks run,
by a :class:`~gobucket.metrics._probe.BucketProbe` set on the bucket while at
least one collector watches it.

This module imports ``prometheus_client`` (the ``metrics`` extra); import it
through :mod:`gobucket.metrics`, which says what to install when it is missing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gobucket.bucket import TaskBucket
from gobucket.errors import GoBucketError
from gobucket.executors.runner import HookKind
from gobucket.metrics._live import live_sources
from gobucket.metrics._probe import BucketProbe
from gobucket.types import BucketStats, Outcome

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from gobucket.actors.group import RouteCounts
    from gobucket.group import TaskBucketGroup
    from gobucket.types import PeerInfo

__all__ = ["GoBucketCollector", "collector_for"]

logger = logging.getLogger("gobucket.metrics")

_HOOK_LABEL = {HookKind.EXECUTE: "execute", HookKind.END: "end"}


@dataclass
class _Bucket:
    """One watched bucket: its label, the bucket (weakly), its probe, its last stats."""

    label: str
    bucket: weakref.ref[TaskBucket]
    probe: BucketProbe
    routed: RouteCounts | None = None  # its group's overflow counts
    last: BucketStats | None = None


@dataclass
class _Group:
    group: weakref.ref[TaskBucketGroup]
    labels: list[str] = field(default_factory=list)


class GoBucketCollector(Collector):
    """Every gobucket metric of the buckets and groups added to it (one per registry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._groups: list[_Group] = []
        self._follow = False

    def follow_process(self) -> None:
        """Watch every bucket and group of this process, now and at each scrape."""
        self._follow = True
        self._adopt()

    def _adopt(self) -> None:
        """Add the live buckets and groups not watched yet (groups first; clashes skipped)."""
        groups, buckets = live_sources()
        in_groups = {id(b) for g in groups for b in g._buckets.values()}
        buckets = [b for b in buckets if id(b) not in in_groups]
        chosen: list[TaskBucket | TaskBucketGroup] = [*groups, *buckets]
        for source in chosen:
            with contextlib.suppress(ValueError):  # a name taken by another live bucket
                self.add(source)

    # sources ---------------------------------------------------------------------------
    def add(self, source: TaskBucket | TaskBucketGroup) -> None:
        """Watch a bucket or a group (its buckets, its overflow and its peers).

        Adding the same source again does nothing; another bucket whose label
        (its name, or its name in the group) is taken raises ValueError.
        """
        with self._lock:
            if isinstance(source, TaskBucket):
                self._add_bucket(source.name, source, None)
                return
            if any(g.group() is source for g in self._groups):
                return
            buckets: dict[str, TaskBucket] = source._buckets
            routed: RouteCounts = source._routed
            taken = [n for n in buckets if self._taken(n, buckets[n])]
            if taken:
                raise ValueError(f"bucket(s) {taken} are already registered in this registry")
            entry = _Group(weakref.ref(source))
            for name, bucket in buckets.items():
                self._add_bucket(name, bucket, routed)
                entry.labels.append(name)
            self._groups.append(entry)

    def _taken(self, label: str, bucket: TaskBucket) -> bool:
        entry = self._buckets.get(label)
        return entry is not None and entry.bucket() is not None

    def _add_bucket(self, label: str, bucket: TaskBucket, routed: RouteCounts | None) -> None:
        entry = self._buckets.get(label)
        if entry is not None:
            held = entry.bucket()
            if held is bucket:
                if routed is not None:
                    entry.routed = routed
                return
            if held is not None:
                raise ValueError(
                    f"a bucket labelled {label!r} is already registered in this registry"
                )
            _detach(entry)  # the bucket it watched is gone
        load = bucket._load  # the facade's WorkLoad: it outlives restarts of the actor
        with _probe_lock:
            probe = load.observer if isinstance(load.observer, BucketProbe) else BucketProbe()
            probe.users += 1
            load.observer = probe
        self._buckets[label] = _Bucket(label, weakref.ref(bucket), probe, routed)

    def remove(self, source: TaskBucket | TaskBucketGroup) -> None:
        """Stop watching a source (hook timings stop unless another registry watches it)."""
        with self._lock:
            if isinstance(source, TaskBucket):
                labels = [e.label for e in self._buckets.values() if e.bucket() is source]
            else:
                groups = [g for g in self._groups if g.group() is source]
                self._groups = [g for g in self._groups if g.group() is not source]
                labels = [label for g in groups for label in g.labels]
            for label in labels:
                entry = self._buckets.pop(label, None)
                if entry is not None:
                    _detach(entry)

    @property
    def empty(self) -> bool:
        """True when no source is watched."""
        with self._lock:
            return not self._buckets and not self._groups

    # prometheus_client.registry.Collector ---------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        """The metric names (empty families), so a registry can check for clashes."""
        return list(_Families().all())

    def collect(self) -> Iterable[Metric]:
        """Read every watched bucket and group now."""
        if self._follow:
            self._adopt()
        with self._lock:
            buckets = list(self._buckets.values())
            groups = [g.group() for g in self._groups]
        out = _Families()
        for entry in buckets:
            _collect_bucket(out, entry)
        live = [g for g in groups if g is not None]
        if live:
            _collect_peers(out, live)
        return list(out.all(peers=bool(live)))


class _Families:
    """The families of one scrape."""

    def __init__(self) -> None:
        self.fills = CounterMetricFamily(
            "gobucket_fills",
            "Fills accepted. where=local: by this node's bucket (its own fills and fills "
            "peers sent here); where=peer: this node's overflow placed on a peer (acknowledged).",
            labels=["bucket", "where"],
        )
        self.refused = CounterMetricFamily(
            "gobucket_fills_refused",
            "Fills this node's bucket refused, by reason (full, duplicate). A group fill "
            "refused as full here may still be placed on a peer.",
            labels=["bucket", "reason"],
        )
        self.overflow_failed = CounterMetricFamily(
            "gobucket_overflow_failed",
            "Overflow fills of this node that no peer took, by reason (no_peer, peer_lost, "
            "duplicate, bad_data, error).",
            labels=["bucket", "reason"],
        )
        self.ends = CounterMetricFamily(
            "gobucket_task_ends",
            "Tasks ended, by outcome (finished, execute_error, exhausted, panicked, "
            "drained, handed_off).",
            labels=["bucket", "outcome"],
        )
        self.crashes = CounterMetricFamily(
            "gobucket_task_actor_crashes",
            "Task actors that crashed (their task still got one end).",
            labels=["bucket"],
        )
        self.alive = GaugeMetricFamily(
            "gobucket_tasks_alive", "Tasks in the bucket now.", labels=["bucket"]
        )
        self.capacity = GaugeMetricFamily(
            "gobucket_bucket_capacity", "The bucket's max_bucket.", labels=["bucket"]
        )
        self.running = GaugeMetricFamily(
            "gobucket_tasks_running", "on_execute calls running now.", labels=["bucket"]
        )
        self.queued = GaugeMetricFamily(
            "gobucket_tasks_queued",
            "on_execute calls waiting for a free hook worker.",
            labels=["bucket"],
        )
        self.overrunning = GaugeMetricFamily(
            "gobucket_tasks_overrunning",
            "on_execute calls still running after their task ended.",
            labels=["bucket"],
        )
        self.lateness = HistogramMetricFamily(
            "gobucket_time_bomb_lateness_seconds",
            "Seconds a time bomb's first on_execute started after its due time.",
            labels=["bucket"],
        )
        self.hooks = HistogramMetricFamily(
            "gobucket_hook_duration_seconds",
            "Seconds a hook ran; hook=execute (on_execute) or end (on_finish, "
            "on_execute_error, on_task_exhausted, on_panic).",
            labels=["bucket", "hook"],
        )
        self.pool = GaugeMetricFamily(
            "gobucket_pool_tasks",
            "Tasks of the bucket's name in its shared task pool, by state "
            "(ready, delayed, claimed); only for buckets attached to a pool.",
            labels=["bucket", "state"],
        )
        self.peers_up = GaugeMetricFamily("gobucket_peers_up", "Peers connected and answering.")
        self.peers_known = GaugeMetricFamily(
            "gobucket_peers_known", "Peers this node knows (up or down)."
        )
        self.peer_up = GaugeMetricFamily(
            "gobucket_peer_up",
            "1 while the peer is up, 0 while it is down.",
            labels=["peer", "peer_node"],
        )

    def all(self, peers: bool = True) -> Iterator[Metric]:
        yield from (self.fills, self.refused, self.overflow_failed, self.ends, self.crashes)
        yield from (self.alive, self.capacity, self.running, self.queued, self.overrunning)
        yield from (self.lateness, self.hooks, self.pool)
        if peers:
            yield from (self.peers_up, self.peers_known, self.peer_up)


def _collect_bucket(out: _Families, entry: _Bucket) -> None:
    bucket = entry.bucket()
    if bucket is not None:
        try:
            entry.last = bucket.stats()
        except GoBucketError:
            pass  # closed: its last counters stand
        except Exception:
            logger.exception("[%s] metrics could not read the bucket's stats", entry.label)
    stats = entry.last
    name = entry.label
    if stats is not None:
        out.fills.add_metric([name, "local"], stats.filled)
        out.refused.add_metric([name, "full"], stats.refused_full)
        out.refused.add_metric([name, "duplicate"], stats.refused_duplicate)
        ends = {
            Outcome.FINISHED: stats.finished,
            Outcome.EXECUTE_ERROR: stats.execute_errors,
            Outcome.EXHAUSTED: stats.exhausted,
            Outcome.PANICKED: stats.panicked,
            Outcome.DRAINED: stats.drained,
            Outcome.HANDED_OFF: stats.handed_off,
        }
        for outcome, count in ends.items():
            out.ends.add_metric([name, outcome.value], count)
        out.crashes.add_metric([name], stats.crashed)
        out.alive.add_metric([name], stats.alive)
        out.capacity.add_metric([name], stats.max_bucket)
        out.running.add_metric([name], stats.running)
        out.queued.add_metric([name], stats.queued)
        out.overrunning.add_metric([name], stats.overrunning)
        if bucket is not None and bucket.pool is not None:
            out.pool.add_metric([name, "ready"], stats.pool_ready)
            out.pool.add_metric([name, "delayed"], stats.pool_delayed)
            out.pool.add_metric([name, "claimed"], stats.pool_claimed)
    if entry.routed is not None:
        routed = entry.routed.snapshot().items()
        counts = {result: n for (label, result), n in routed if label == name}
        out.fills.add_metric([name, "peer"], counts.pop("placed", 0))
        for reason, count in sorted(counts.items()):
            out.overflow_failed.add_metric([name, reason], count)
    buckets, total = entry.probe.lateness.snapshot()
    out.lateness.add_metric([name], buckets, total)
    for kind, histogram in entry.probe.hooks.items():
        buckets, total = histogram.snapshot()
        out.hooks.add_metric([name, _HOOK_LABEL[kind]], buckets, total)


def _collect_peers(out: _Families, groups: list[TaskBucketGroup]) -> None:
    infos: list[PeerInfo] = []
    for group in groups:
        try:
            infos.extend(group.peers())
        except Exception:  # stopped, or its actor is restarting: no peers to report
            logger.debug("metrics could not read the peers of group %r", group.cluster)
    up = 0
    for info in infos:
        up += info.up
        address = f"{info.address[0]}:{info.address[1]}"
        out.peer_up.add_metric([address, info.node or ""], 1.0 if info.up else 0.0)
    out.peers_up.add_metric([], up)
    out.peers_known.add_metric([], len(infos))


_probe_lock = threading.Lock()  # a bucket may be watched by the collectors of several registries


def _detach(entry: _Bucket) -> None:
    with _probe_lock:
        entry.probe.users -= 1
        bucket = entry.bucket()
        if entry.probe.users <= 0 and bucket is not None and bucket._load.observer is entry.probe:
            bucket._load.observer = None


# one collector per registry ------------------------------------------------------------------
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, GoBucketCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def collector_for(registry: CollectorRegistry, *, create: bool = True) -> GoBucketCollector | None:
    """The gobucket collector of ``registry`` (made and registered once, if ``create``)."""
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None and create:
            collector = GoBucketCollector()
            registry.register(collector)
            _collectors[registry] = collector
        return collector
