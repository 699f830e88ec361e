"""What a bucket records only while metrics are on: hook durations and time-bomb lateness.

Pure Python (no prometheus_client): a :class:`BucketProbe` is the bucket's
:class:`~gobucket.executors.load.HookObserver`. Each hook call it wraps adds
one observation to a small fixed-bucket histogram under a lock; a collector
reads the histograms at scrape time.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gobucket.executors.runner import HookKind

__all__ = [
    "HOOK_DURATION_BUCKETS",
    "LATENESS_BUCKETS",
    "BucketProbe",
    "Histogram",
    "HistogramSnapshot",
]

LATENESS_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the time-bomb lateness histogram (+Inf is added)."""

HOOK_DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) of the hook duration histogram (+Inf is added)."""


HistogramSnapshot = tuple[list[tuple[str, float]], float]
"""``([(upper bound as text, cumulative count), ...], sum)``, the last bound ``+Inf``."""


class Histogram:
    """Counts of observations per bucket, and their sum; thread-safe."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Add one observation."""
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        """Cumulative bucket counts (Prometheus style) and the sum."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return buckets, total


class BucketProbe:
    """One bucket's hook timings (a :class:`~gobucket.executors.load.HookObserver`).

    ``users`` counts the collectors that read it; the last one to leave takes
    it off the bucket, so a bucket nobody watches pays nothing.
    """

    __slots__ = ("hooks", "lateness", "users")

    def __init__(self) -> None:
        self.lateness = Histogram(LATENESS_BUCKETS)
        self.hooks = {kind: Histogram(HOOK_DURATION_BUCKETS) for kind in HookKind}
        self.users = 0

    def timed(
        self, fn: Callable[..., Any], is_async: bool, kind: HookKind, due: float | None
    ) -> Callable[..., Any]:
        """``fn`` wrapped to observe its duration (and lateness, when ``due`` is set)."""
        histogram = self.hooks[kind]
        lateness = self.lateness if due is not None else None
        if is_async:
            return _timed_async(fn, histogram, lateness, due)
        return _timed(fn, histogram, lateness, due)


def _timed(
    fn: Callable[..., Any], histogram: Histogram, lateness: Histogram | None, due: float | None
) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        started = time.monotonic()
        if lateness is not None and due is not None:
            lateness.observe(max(0.0, started - due))
        try:
            return fn(*args)
        finally:
            histogram.observe(time.monotonic() - started)

    return run


def _timed_async(
    fn: Callable[..., Awaitable[Any]],
    histogram: Histogram,
    lateness: Histogram | None,
    due: float | None,
) -> Callable[..., Awaitable[Any]]:
    async def run(*args: Any) -> Any:
        started = time.monotonic()
        if lateness is not None and due is not None:
            lateness.observe(max(0.0, started - due))
        try:
            return await fn(*args)
        finally:
            histogram.observe(time.monotonic() - started)

    return run
