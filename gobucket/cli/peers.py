"""``gobucket peers``: browse the LAN for gobucket nodes and show their buckets and loads."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from gobucket.discovery.mdns import browse
from gobucket.wire.connection import CLIENT, Connection, Identity, handshake

__all__ = ["peers_table", "probe_loads", "run_peers"]


async def _probe(
    host: str, port: int, cluster: str, secret: bytes | None, timeout: float
) -> dict[str, list[int]] | str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as error:
        return f"unreachable ({error.__class__.__name__})"
    conn = Connection(reader, writer)
    try:
        me = Identity(cluster, f"cli-{uuid.uuid4().hex[:8]}", 0)
        await handshake(conn, me, secret, CLIENT, timeout)
        conn.send({"t": "ping", "seq": 1})
        await conn.flush()
        while True:
            message = await conn.read(timeout)
            if message["t"] == "pong":
                loads: dict[str, list[int]] = message["loads"]
                return loads
    except Exception as error:
        return f"refused ({error})"
    finally:
        conn.close()


def probe_loads(
    host: str, port: int, cluster: str, secret: bytes | None = None, timeout: float = 2.0
) -> dict[str, list[int]] | str:
    """Ask one node for its loads (a handshake and a ping); a reason string if refused."""
    return asyncio.run(_probe(host, port, cluster, secret, timeout))


def peers_table(nodes: list[dict[str, Any]], secret: bytes | None) -> Table:
    """A table of browsed nodes with their loads."""
    table = Table(title=f"gobucket nodes on the LAN ({len(nodes)})")
    for column in ("node", "cluster", "address", "buckets", "loads (alive/max)"):
        table.add_column(column)
    for node in nodes:
        loads = probe_loads(node["address"], node["port"], node["cluster"], secret)
        if isinstance(loads, dict):
            shown = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(loads.items()))
        else:
            shown = f"[dim]{loads}[/dim]"
        table.add_row(
            node["node"],
            node["cluster"],
            f"{node['address']}:{node['port']}",
            ", ".join(node["buckets"]),
            shown,
        )
    return table


def run_peers(
    cluster: str | None,
    watch: bool,
    secret: str | bytes | None,
    timeout: float,
    interfaces: list[str] | None,
) -> int:
    """Browse and print; with ``watch``, refresh until Ctrl-C.

    ``secret`` (from ``--secret-file``, ``$GOBUCKET_SECRET`` or ``--secret``) lets
    it read each node's loads.
    """
    console = Console()
    key = secret.encode() if isinstance(secret, str) else (secret or None)
    if not watch:
        console.print(peers_table(browse(cluster, timeout, interfaces), key))
        return 0
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while True:
                live.update(peers_table(browse(cluster, timeout, interfaces), key))
                time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
