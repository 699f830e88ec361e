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
from typing import Any

from gobucket import BucketConfig, Executor, TaskBucket, TaskBucketGroup, TaskType
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


class _Node:
    """The bucket, its group, and the answers to commands."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.bucket
        self.failures: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        config = BucketConfig(
            life_span=args.life_span, max_bucket=args.max, run_after=args.run_after, name=self.name
        )
        self.bucket = TaskBucket(config, Executor())
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
        for i in range(int(command.get("n", 1))):
            task_id = f"{command.get('prefix', 't')}{i}"
            try:
                future = self.group.fill_async(
                    self.name, task_id, {"i": i}, task_type=TaskType.TIME_BOMB, run_after=run_after
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
                key = "local" if where.local else where.node
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
