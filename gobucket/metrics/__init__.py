"""Prometheus metrics for gobucket (the ``metrics`` extra: ``pip install 'gobucket[metrics]'``).

* :func:`serve` — serve ``/metrics`` over HTTP (``TaskBucketGroup(metrics_port=...)``
  does it for a group).
* :func:`register`, :func:`unregister` — expose a bucket or a group in a
  ``prometheus_client`` registry.

``import gobucket.metrics`` works without prometheus_client; the functions
raise ModuleNotFoundError naming the extra. See ``docs/metrics.md`` for every
metric.
"""

from gobucket.metrics.expose import INSTALL_HINT, MetricsServer, register, serve, unregister

__all__ = ["INSTALL_HINT", "MetricsServer", "register", "serve", "unregister"]
