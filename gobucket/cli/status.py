"""``gobucket status HOST:PORT``: ask one running node what it holds and knows, as tables.

The node answers a STATUS request (see ``docs/wire.md``) over an authenticated
connection; this prints its buckets (counts, ends by outcome, recent end rates)
and every peer it knows (up or down, and why). ``--json`` prints the same as
one JSON object instead, for scripts.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from gobucket.types import BucketStats, NodeStatus, PeerInfo
from gobucket.wire.status import HandshakeRefusedError, StatusError, fetch_status

__all__ = [
    "BUCKET_COLUMNS",
    "PEER_COLUMNS",
    "buckets_table",
    "describe_error",
    "format_duration",
    "node_title",
    "peers_table",
    "run_status",
    "status_json",
    "status_view",
]

BUCKET_COLUMNS = (
    "bucket",
    "alive/max",
    "running",
    "queued",
    "finished",
    "errors",
    "exhausted",
    "panicked",
    "drained",
    "handed off",
    "ends/s 10s",
    "ends/s 60s",
    "pool r/d/c",
)
"""The columns of the buckets table (see ``docs/operations.md``)."""

PEER_COLUMNS = ("address", "node", "state", "source", "loads", "seen", "reason")
"""The columns of the peers table."""


def format_duration(seconds: float) -> str:
    """``12s``, ``3m05s``, ``2h01m``, ``3d04h``."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def node_title(status: NodeStatus) -> str:
    """One line: node id, cluster, address and uptime."""
    host, port = status.address
    return (
        f"node {status.node} · cluster {status.cluster} · {host}:{port} · "
        f"up {format_duration(status.uptime)}"
    )


def bucket_cells(stats: BucketStats) -> list[str]:
    """A bucket's row, in :data:`BUCKET_COLUMNS` order (without the bucket name)."""
    alive = f"{stats.alive}/{stats.max_bucket}" + (" closed" if stats.closed else "")
    return [
        alive,
        str(stats.running),
        str(stats.queued),
        str(stats.finished),
        str(stats.execute_errors),
        str(stats.exhausted),
        str(stats.panicked),
        str(stats.drained),
        str(stats.handed_off),
        f"{stats.end_rate_10s:.1f}",
        f"{stats.end_rate_60s:.1f}",
        _pool_cell(stats),
    ]


def _pool_cell(stats: BucketStats) -> str:
    """A shared pool's depth for the bucket: ready/delayed/claimed, or "-" when empty."""
    if not (stats.pool_ready or stats.pool_delayed or stats.pool_claimed):
        return "-"
    return f"{stats.pool_ready}/{stats.pool_delayed}/{stats.pool_claimed}"


def buckets_table(status: NodeStatus, title: str | None = "buckets") -> Table:
    """The node's buckets, one row each."""
    table = Table(title=title, title_justify="left")
    for column in BUCKET_COLUMNS:
        table.add_column(column, justify="left" if column == "bucket" else "right")
    for stats in status.buckets:
        table.add_row(stats.name, *bucket_cells(stats))
    return table


def _loads(peer: PeerInfo) -> str:
    return ",".join(f"{name}={a}/{m}" for name, (a, m) in sorted(peer.loads.items())) or "-"


def _seen(peer: PeerInfo, now: float) -> str:
    if peer.last_seen is None:
        return "never"
    return f"{format_duration(now - peer.last_seen)} ago"


def peers_table(status: NodeStatus, title: str | None = "peers") -> Table:
    """Every peer the node knows: up or down, from which source, and why it is down."""
    table = Table(title=title, title_justify="left")
    for column in PEER_COLUMNS:
        table.add_column(column, overflow="fold")
    now = time.monotonic()
    for peer in sorted(status.peers, key=lambda p: p.address):
        state = Text("up", style="green") if peer.up else Text("down", style="red")
        table.add_row(
            f"{peer.address[0]}:{peer.address[1]}",
            peer.node or "?",
            state,
            peer.source,
            _loads(peer),
            _seen(peer, now),
            peer.reason or "",
        )
    return table


def status_view(status: NodeStatus) -> Group:
    """What ``gobucket status`` prints: the title line, the buckets, the peers."""
    parts: list[Any] = [Text(node_title(status), style="bold"), buckets_table(status)]
    if status.peers:
        parts.append(peers_table(status))
    else:
        parts.append(Text("peers: none known"))
    return Group(*parts)


def status_json(status: NodeStatus) -> dict[str, Any]:
    """The status as plain JSON-ready values (``--json``)."""
    now = time.monotonic()
    return {
        "node": status.node,
        "cluster": status.cluster,
        "address": list(status.address),
        "uptime": status.uptime,
        "buckets": [
            {
                "name": b.name,
                "alive": b.alive,
                "max": b.max_bucket,
                "closed": b.closed,
                "running": b.running,
                "queued": b.queued,
                "overrunning": b.overrunning,
                "filled": b.filled,
                "ends": {
                    "finished": b.finished,
                    "execute_errors": b.execute_errors,
                    "exhausted": b.exhausted,
                    "panicked": b.panicked,
                    "drained": b.drained,
                    "handed_off": b.handed_off,
                },
                "refused": {"full": b.refused_full, "duplicate": b.refused_duplicate},
                "crashed": b.crashed,
                "end_rate_10s": b.end_rate_10s,
                "end_rate_60s": b.end_rate_60s,
                "pool": {
                    "ready": b.pool_ready,
                    "delayed": b.pool_delayed,
                    "claimed": b.pool_claimed,
                },
            }
            for b in status.buckets
        ],
        "peers": [
            {
                "address": list(p.address),
                "node": p.node,
                "up": p.up,
                "source": p.source,
                "reason": p.reason,
                "loads": {k: list(v) for k, v in p.loads.items()},
                "seen_ago": None if p.last_seen is None else max(0.0, now - p.last_seen),
            }
            for p in status.peers
        ],
    }


def describe_error(error: StatusError) -> str:
    """The error, with a hint of what to check when the handshake was refused."""
    text = str(error)
    if not isinstance(error, HandshakeRefusedError):
        return text
    lowered = text.lower()
    if "not_allowed" in lowered or "peer list" in lowered:
        hint = "a node without a secret lets in only the addresses on its peers list"
    elif "secret" in lowered:
        hint = "check the secret (--secret-file, $GOBUCKET_SECRET) and that the node has one"
    elif "cluster" in lowered:
        hint = "check --cluster"
    else:
        return text
    return f"{text}\n  hint: {hint}"


def run_status(
    address: str,
    secret: bytes | None,
    cluster: str,
    timeout: float,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Ask the node at ``address`` and print its status; 0, or 1 if it could not be had."""
    out = console or Console()
    try:
        status = fetch_status(address, secret, cluster, timeout=timeout)
    except StatusError as error:
        print(f"gobucket status: {describe_error(error)}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(json.dumps(status_json(status)) + "\n")
        sys.stdout.flush()
    else:
        out.print(status_view(status))
    return 0
