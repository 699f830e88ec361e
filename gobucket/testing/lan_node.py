"""A gobucket node driven over stdin/stdout, for multi-process and LAN tests.

Run: ``python -m gobucket.testing.lan_node --host 10.77.0.1 --cluster lab --secret s --max 1``
(discovery needs ``--secret``, or ``--insecure``; ``--no-discovery`` keeps it static)

It prints one JSON line per event (``ready`` with its address, then one line
per command result) and reads commands, one JSON object per line:
``{"cmd": "peers"}``, ``{"cmd": "fill", "n": 100, "prefix": "t", "run_after": 30}``,
``{"cmd": "count"}``, ``{"cmd": "discovery"}`` (mDNS counters and the peers it
knows now), ``{"cmd": "stop"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from gobucket import BucketConfig, Executor, TaskBucket, TaskBucketGroup, TaskType
from gobucket.discovery.mdns import MdnsDiscovery

__all__ = ["main"]


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the node until ``stop`` or end of input."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--secret", default=None)
    parser.add_argument("--max", type=int, default=1000)
    parser.add_argument("--bucket", default="sample")
    parser.add_argument("--ping", type=float, default=0.3)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--no-discovery", action="store_true")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow mDNS discovery without --secret (trusted networks only)",
    )
    args = parser.parse_args(argv)

    failures: list[dict[str, Any]] = []
    lock = threading.Lock()
    bucket = TaskBucket(
        BucketConfig(life_span=120, max_bucket=args.max, run_after=60, name=args.bucket),
        Executor(),
    )
    group = TaskBucketGroup(
        {args.bucket: bucket},
        peers=args.peer,
        port=args.port,
        ping_interval=args.ping,
        secret=args.secret,
        cluster=args.cluster,
        host=args.host,
        discovery=not args.no_discovery,
        interfaces=[args.host],
        insecure=args.insecure,
    )

    def failed(peer: str, bucket_name: str, task_id: str, error: BaseException) -> None:
        with lock:
            failures.append({"peer": peer, "id": task_id, "error": repr(error)})

    group.on_peer_schedule_failed = failed
    group.start()
    _emit({"event": "ready", "node": group.node_id, "address": list(group.address)})
    for line in sys.stdin:
        try:
            command = json.loads(line)
        except ValueError:
            continue
        cmd = command.get("cmd")
        if cmd == "peers":
            _emit(
                {
                    "event": "peers",
                    "peers": [
                        {
                            "address": list(p.address),
                            "node": p.node,
                            "up": p.up,
                            "source": p.source,
                            "loads": {k: list(v) for k, v in p.loads.items()},
                        }
                        for p in group.peers()
                    ],
                }
            )
        elif cmd == "fill":
            placed: dict[str, int] = {}
            raised: list[str] = []
            futures = []
            for i in range(int(command.get("n", 1))):
                task_id = f"{command.get('prefix', 't')}{i}"
                try:
                    futures.append(
                        (
                            task_id,
                            group.fill_async(
                                args.bucket,
                                task_id,
                                {"i": i},
                                task_type=TaskType.TIME_BOMB,
                                run_after=float(command.get("run_after", 60)),
                            ),
                        )
                    )
                except Exception as error:
                    raised.append(f"{task_id}: {error!r}")
            for task_id, future in futures:
                try:
                    where = future.get(timeout=30)
                    key = "local" if where.local else where.node
                    placed[key] = placed.get(key, 0) + 1
                except Exception as error:
                    raised.append(f"{task_id}: {error!r}")
            with lock:
                reported = list(failures)
            _emit({"event": "filled", "placed": placed, "raised": raised, "reported": reported})
        elif cmd == "count":
            _emit({"event": "count", "alive": len(bucket)})
        elif cmd == "discovery":
            mdns = next((s for s in group._sources if isinstance(s, MdnsDiscovery)), None)
            _emit(
                {
                    "event": "discovery",
                    "stats": mdns.stats() if mdns is not None else {},
                    "known": [
                        {"node": e.node, "address": list(e.address)}
                        for e in (mdns.known_peers() if mdns is not None else [])
                    ],
                }
            )
        elif cmd == "stop":
            break
    group.stop()
    bucket.close(grace=0)
    _emit({"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
