"""One gobucket node in a child process, driven by JSON lines over stdin and stdout.

The one child-node program of the tests, the examples and the benchmarks. Run::

    python -m gobucket.testing.node --host 10.77.0.1 --cluster lab --secret s --max 1

It serves one bucket (``--bucket``, default ``sample``; tasks that arrive are long-lived
time bombs unless ``--run-after``/``--life-span`` say otherwise) in a started
``TaskBucketGroup``. mDNS discovery is on unless ``--no-discovery``, and needs
``--secret`` (or ``--secret-env NAME``, the secret read from that environment variable)
or ``--insecure``. ``--peer host:port`` (repeatable) adds static peers.

Every line it prints is one JSON object with an ``event`` key. First::

    {"event": "ready", "node": "<node id>", "address": ["<host>", <port>]}

then one line per command. Commands, one JSON object per line on stdin:

* ``{"cmd": "peers"}`` -> ``{"event": "peers", "peers": [{"address", "node", "up",
  "source", "loads"}, ...]}``
* ``{"cmd": "fill", "n": 100, "prefix": "t", "run_after": 60}`` -> ``{"event": "filled",
  "placed": {"local" | <node id>: count}, "raised": [...], "reported": [...]}``
  (``n`` group fills of time bombs with ids ``<prefix><i>`` and data ``{"i": i}``;
  ``reported`` lists the failures the group reported through ``on_peer_schedule_failed``)
* ``{"cmd": "count"}`` -> ``{"event": "count", "alive": <tasks in the bucket>}``
* ``{"cmd": "discovery"}`` -> ``{"event": "discovery", "stats": {...}, "known": [...]}``
  (the mDNS source's counters and the peers it knows now)
* ``{"cmd": "stop"}`` (or the end of stdin) -> ``{"event": "stopped"}``, and the process ends.

With ``--redis URL`` the group has a shared task pool (``--pool-name``,
``--claim-timeout``, ``--lookahead``): fills no node has room for go to the pool
(``placed`` counts them under ``"pool"``), and the bucket takes tasks from it.
``--rescue-to-pool`` makes the pool the bucket's rescue sink,
``--signals`` installs the SIGTERM/SIGINT rescue,
``--work S`` makes each ``on_execute`` take S seconds, and ``--report-ends`` prints
``{"event": "started", "id", "at"}`` when an ``on_execute`` starts and
``{"event": "ended", "id", "outcome", "at", "due"}`` when a task's end hook runs (``at``
and the task data's ``due`` are wall-clock times). A fill command's ``"run_after": 0``
fills immediate tasks. ``{"cmd": "ends"}`` -> ``{"event": "ends", "count": <ends>,
"first": <wall time>, "last": <wall time>, "lateness": [<seconds>, ...]}`` (lateness of
each ``on_execute`` start after the ``due`` in its data, when it has one).

Lines that are not JSON, and unknown commands, are ignored. ``--deadline S`` makes the
process exit by itself after S seconds whatever happens (a benchmark's safety net);
``--exit-fast`` skips closing the bucket at the end (pending time bombs need no rescue).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from gobucket import (
    BucketConfig,
    Executor,
    RedisTaskPool,
    TaskBucket,
    TaskBucketGroup,
    TaskContext,
    TaskType,
    install_signal_handlers,
)
from gobucket.discovery.mdns import MdnsDiscovery

__all__ = ["main", "parse_args", "peer_rows"]


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The node's command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m gobucket.testing.node")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--secret", default=None)
    parser.add_argument("--secret-env", default=None, help="read the secret from this variable")
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--max", type=int, default=1000)
    parser.add_argument("--bucket", default="sample")
    parser.add_argument("--run-after", type=float, default=60.0)
    parser.add_argument("--life-span", type=float, default=120.0)
    parser.add_argument("--ping", type=float, default=0.3)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--no-discovery", action="store_true")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow mDNS discovery without a secret (trusted networks only)",
    )
    parser.add_argument("--deadline", type=float, default=None, help="exit after this long")
    parser.add_argument("--exit-fast", action="store_true", help="do not close the bucket")
    parser.add_argument("--log-level", default=None, help="configure logging to stderr")
    parser.add_argument("--redis", default=None, help="a shared task pool on this Redis URL")
    parser.add_argument("--pool-name", default="gobucket")
    parser.add_argument("--claim-timeout", type=float, default=30.0)
    parser.add_argument("--lookahead", type=float, default=1.0)
    parser.add_argument("--rescue-to-pool", action="store_true")
    parser.add_argument("--signals", action="store_true", help="install the SIGTERM rescue")
    parser.add_argument("--work", type=float, default=0.0, help="seconds each on_execute takes")
    parser.add_argument("--report-ends", action="store_true")
    args = parser.parse_args(argv)
    if args.secret_env is not None:
        args.secret = os.environ[args.secret_env]
    return args


def peer_rows(group: TaskBucketGroup) -> list[dict[str, Any]]:
    """``group``'s peer table as JSON-ready dicts (what the ``peers`` command answers)."""
    return [
        {
            "address": list(p.address),
            "node": p.node,
            "up": p.up,
            "source": p.source,
            "loads": {k: list(v) for k, v in p.loads.items()},
        }
        for p in group.peers()
    ]


class _Reporter(Executor):
    """Counts ends, measures time-bomb lateness, optionally prints every start and end."""

    def __init__(self, work: float, report: bool) -> None:
        self.work = work
        self.report = report
        self.lock = threading.Lock()
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.lateness: list[float] = []

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        now = time.time()
        if isinstance(data, dict) and isinstance(data.get("due"), float):
            with self.lock:
                self.lateness.append(now - data["due"])
        if self.report:
            _emit({"event": "started", "id": id, "at": now})
        if self.work > 0:
            ctx.wait_cancelled(self.work)

    def _end(self, id: str, data: Any, outcome: str) -> None:
        now = time.time()
        with self.lock:
            self.count += 1
            self.first = now if self.first is None else self.first
            self.last = now
        if self.report:
            due = data.get("due") if isinstance(data, dict) else None
            _emit({"event": "ended", "id": id, "outcome": outcome, "at": now, "due": due})

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> None:
        self._end(id, data, "finished")

    def on_task_exhausted(self, ctx: TaskContext, id: str, data: Any) -> None:
        self._end(id, data, "exhausted")

    def on_execute_error(self, ctx: TaskContext, id: str, data: Any, error: BaseException) -> None:
        self._end(id, data, "execute_error")

    def on_panic(self, ctx: TaskContext, id: str, data: Any) -> None:
        if self.report:
            _emit({"event": "panicked", "id": id, "at": time.time()})

    def ends(self) -> dict[str, Any]:
        with self.lock:
            return {
                "event": "ends",
                "count": self.count,
                "first": self.first,
                "last": self.last,
                "lateness": list(self.lateness),
            }


class _Node:
    """The bucket, its group, and the answers to commands."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.bucket
        self.failures: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        config = BucketConfig(
            life_span=args.life_span, max_bucket=args.max, run_after=args.run_after, name=self.name
        )
        self.executor = _Reporter(args.work, args.report_ends)
        self.pool = (
            None
            if args.redis is None
            else RedisTaskPool(
                args.redis,
                name=args.pool_name,
                claim_timeout=args.claim_timeout,
                lookahead=args.lookahead,
                poll_interval=0.05,
            )
        )
        self.bucket = TaskBucket(
            config,
            self.executor,
            rescue_sink=self.pool if args.rescue_to_pool else None,
        )
        discovery = not args.no_discovery
        self.group = TaskBucketGroup(
            {self.name: self.bucket},
            peers=args.peer,
            port=args.port,
            ping_interval=args.ping,
            secret=args.secret,
            cluster=args.cluster,
            host=args.host,
            node_id=args.node_id,
            discovery=discovery,
            interfaces=[args.host] if discovery else None,
            insecure=args.insecure,
            pool=self.pool,
        )
        self.group.on_peer_schedule_failed = self._failed

    def _failed(self, peer: str, bucket_name: str, task_id: str, error: BaseException) -> None:
        with self.lock:
            self.failures.append({"peer": peer, "id": task_id, "error": repr(error)})

    def peers(self) -> dict[str, Any]:
        return {"event": "peers", "peers": peer_rows(self.group)}

    def fill(self, command: dict[str, Any]) -> dict[str, Any]:
        placed: dict[str, int] = {}
        raised: list[str] = []
        futures = []
        run_after = float(command.get("run_after", 60))
        kind = TaskType.TIME_BOMB if run_after > 0 else TaskType.IMMEDIATE
        for i in range(int(command.get("n", 1))):
            task_id = f"{command.get('prefix', 't')}{i}"
            data = {"i": i, "due": time.time() + run_after}
            try:
                future = self.group.fill_async(
                    self.name,
                    task_id,
                    data,
                    task_type=kind,
                    run_after=run_after if run_after > 0 else None,
                )
            except Exception as error:
                raised.append(f"{task_id}: {error!r}")
            else:
                futures.append((task_id, future))
        for task_id, future in futures:
            try:
                where = future.get(timeout=30)
            except Exception as error:
                raised.append(f"{task_id}: {error!r}")
            else:
                key = "local" if where.local else "pool" if where.pool else where.node
                placed[key] = placed.get(key, 0) + 1
        with self.lock:
            reported = list(self.failures)
        return {"event": "filled", "placed": placed, "raised": raised, "reported": reported}

    def discovery(self) -> dict[str, Any]:
        mdns = next((s for s in self.group._sources if isinstance(s, MdnsDiscovery)), None)
        return {
            "event": "discovery",
            "stats": mdns.stats() if mdns is not None else {},
            "known": [
                {"node": e.node, "address": list(e.address)}
                for e in (mdns.known_peers() if mdns is not None else [])
            ],
        }

    def serve(self) -> None:
        """Answer commands until ``stop`` or the end of stdin."""
        for line in sys.stdin:
            try:
                command = json.loads(line)
            except ValueError:
                continue
            if not isinstance(command, dict):
                continue
            cmd = command.get("cmd")
            if cmd == "peers":
                _emit(self.peers())
            elif cmd == "fill":
                _emit(self.fill(command))
            elif cmd == "count":
                _emit({"event": "count", "alive": len(self.bucket)})
            elif cmd == "ends":
                _emit(self.executor.ends())
            elif cmd == "discovery":
                _emit(self.discovery())
            elif cmd == "stop":
                break


def main(argv: list[str] | None = None) -> int:
    """Run the node until ``stop`` or end of input."""
    args = parse_args(argv)
    if args.deadline is not None:
        # Whatever happens to the parent, this process does not outlive its deadline.
        killer = threading.Timer(args.deadline, os._exit, args=(3,))
        killer.daemon = True
        killer.start()
    if args.log_level is not None:
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    node = _Node(args)
    if args.signals:
        install_signal_handlers(node.bucket)
    node.group.start()
    _emit({"event": "ready", "node": node.group.node_id, "address": list(node.group.address)})
    try:
        node.serve()
    finally:
        node.group.stop()
        if not args.exit_fast:
            node.bucket.close(grace=0)
    _emit({"event": "stopped"})
    if args.exit_fast:
        os._exit(0)  # skip closing (possibly tens of thousands of) pending task actors
    return 0


if __name__ == "__main__":
    sys.exit(main())
