"""Registering buckets and groups with Prometheus, and serving ``/metrics`` over HTTP.

Everything here needs ``prometheus_client`` (``pip install 'gobucket[metrics]'``);
it is imported on first use, so ``import gobucket`` works without it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.registry import CollectorRegistry

    from gobucket.bucket import TaskBucket
    from gobucket.group import TaskBucketGroup
    from gobucket.metrics.collector import GoBucketCollector

__all__ = [
    "INSTALL_HINT",
    "MetricsServer",
    "register",
    "require",
    "serve",
    "unregister",
]

INSTALL_HINT = "pip install 'gobucket[metrics]'"
"""What to install for :mod:`gobucket.metrics`."""


def require() -> ModuleType:
    """Import ``prometheus_client``, or raise ModuleNotFoundError saying which extra to install."""
    try:
        import prometheus_client
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"gobucket.metrics needs prometheus_client, which is not installed: {INSTALL_HINT}",
            name="prometheus_client",
        ) from error
    return prometheus_client


def _collector_module() -> ModuleType:
    require()
    # The collector imports prometheus_client (an optional extra) at module level.
    # why: loaded only once metrics are asked for, so gobucket imports without the extra
    from gobucket.metrics import collector

    return collector


def _registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is not None:
        return registry
    default: CollectorRegistry = require().REGISTRY
    return default


def register(
    source: TaskBucket | TaskBucketGroup, registry: CollectorRegistry | None = None
) -> GoBucketCollector:
    """Expose ``source`` (a bucket, or a group with its buckets and peers) in ``registry``.

    ``registry`` defaults to ``prometheus_client.REGISTRY`` (what
    ``prometheus_client.start_http_server`` and :func:`serve` without a registry
    expose). Each registry gets one gobucket collector, registered once; buckets
    are labelled by name (a group's by their name in the group), and a second
    bucket with a name already registered there raises ValueError. Registering
    the same source again does nothing. Hook timings are recorded from now on.

    Raises:
        ModuleNotFoundError: prometheus_client is not installed.
    """
    collector: GoBucketCollector = _collector_module().collector_for(_registry(registry))
    collector.add(source)
    return collector


def unregister(
    source: TaskBucket | TaskBucketGroup, registry: CollectorRegistry | None = None
) -> None:
    """Stop exposing ``source`` in ``registry`` (the default registry if None)."""
    collector: GoBucketCollector | None = _collector_module().collector_for(
        _registry(registry), create=False
    )
    if collector is not None:
        collector.remove(source)


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (from :func:`serve`); :meth:`stop` ends it."""

    def __init__(
        self,
        server: WSGIServer,
        thread: threading.Thread,
        registry: CollectorRegistry,
        sources: list[TaskBucket | TaskBucketGroup],
    ) -> None:
        self._server = server
        self._thread = thread
        self.registry = registry
        """The registry this endpoint exposes."""
        self._sources = sources
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (port 0 picks a free one)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return self.address[1]

    @property
    def url(self) -> str:
        """``http://host:port/metrics`` (``0.0.0.0`` shown as ``127.0.0.1``)."""
        host, port = self.address
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{port}/metrics"

    def stop(self) -> None:
        """Close the endpoint and stop exposing the sources :func:`serve` registered."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
        for source in self._sources:
            unregister(source, self.registry)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}{' stopped' if self._stopped else ''}>"


def serve(
    port: int,
    addr: str = "0.0.0.0",
    *,
    registry: CollectorRegistry | None = None,
    sources: Iterable[TaskBucket | TaskBucketGroup] = (),
) -> MetricsServer:
    """Serve Prometheus metrics over HTTP on ``addr:port`` (``/metrics``; port 0: a free one).

    * ``serve(port)``: every bucket and group of this process, including the
      ones made later, in ``prometheus_client.REGISTRY`` (with anything else
      registered there, such as the process metrics of prometheus_client).
      Buckets are labelled by name; when two live buckets share a name the
      first one seen is exposed (give them distinct names, or use ``sources``).
    * ``serve(port, sources=[...])``: just those buckets or groups, in a
      dedicated registry, so two endpoints never clash.
    * ``serve(port, registry=r)``: ``r`` as it is (with ``sources``, those are
      added to it).

    Returns a :class:`MetricsServer`; its ``stop()`` closes the endpoint.

    Raises:
        ModuleNotFoundError: prometheus_client is not installed.
        OSError: the port is taken.
    """
    prometheus = require()
    chosen = list(sources)
    everything = registry is None and not chosen
    if registry is None:
        registry = prometheus.CollectorRegistry() if chosen else prometheus.REGISTRY
    assert registry is not None
    for source in chosen:
        register(source, registry)
    if everything:
        collector: GoBucketCollector | None = _collector_module().collector_for(registry)
        assert collector is not None
        collector.follow_process()
    try:
        server, thread = prometheus.start_http_server(port, addr, registry)
    except BaseException:
        for source in chosen:
            unregister(source, registry)
        raise
    return MetricsServer(server, thread, registry, chosen)
