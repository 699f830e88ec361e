"""``gobucket top HOST:PORT``: the whole cluster one node knows, live, refreshed each second.

Each frame asks the node for its status, then (at once, in parallel) every peer
it lists; a peer that does not answer is shown with the reason. It works the
same for static groups and discovered (mDNS) ones: the peers come from the
node's own peer table. ``--once`` prints one frame and exits (scripts, tests).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gobucket.cli.status import BUCKET_COLUMNS, bucket_cells, describe_error, format_duration
from gobucket.types import NodeStatus
from gobucket.wire.status import StatusError, fetch_status_async

__all__ = ["NODE_COLUMNS", "NodeAnswer", "gather_cluster", "run_top", "top_view"]

NODE_COLUMNS = (
    "node",
    "address",
    "answer",
    "uptime",
    "alive/max",
    "running",
    "queued",
    "ends/s 10s",
    "ends/s 60s",
    "peers up",
)
"""The columns of the nodes table (see ``docs/operations.md``)."""

LINK_COLUMNS = ("from", "to", "node", "state", "source", "reason")
"""The columns of the links table: each answering node's view of each of its peers."""


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """One node of a frame: its status, or why it gave none."""

    address: tuple[str, int]
    status: NodeStatus | None
    error: str | None = None
    node: str | None = None
    """The node's id as its status says, or as the asked node's peer table knows it."""


async def _ask(
    address: tuple[str, int], secret: bytes | None, cluster: str, timeout: float, node: str | None
) -> NodeAnswer:
    try:
        status = await fetch_status_async(address, secret, cluster, timeout=timeout)
    except StatusError as error:
        return NodeAnswer(address, None, error.reason, node)
    except ValueError as error:
        return NodeAnswer(address, None, str(error), node)
    return NodeAnswer(address, status, None, status.node)


async def gather_cluster(
    address: str | tuple[str, int], secret: bytes | None, cluster: str, timeout: float
) -> list[NodeAnswer]:
    """Ask the node at ``address``, then every peer it lists; the asked node comes first.

    Raises:
        StatusError: the asked node itself gave no status.
    """
    first = await fetch_status_async(address, secret, cluster, timeout=timeout)
    seen = {first.address}
    targets: list[tuple[tuple[str, int], str | None]] = []
    for peer in sorted(first.peers, key=lambda p: p.address):
        if peer.address not in seen and peer.node != first.node:
            seen.add(peer.address)
            targets.append((peer.address, peer.node))
    rest = await asyncio.gather(*(_ask(a, secret, cluster, timeout, n) for a, n in targets))
    return [NodeAnswer(first.address, first, None, first.node), *rest]


def _address(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _nodes_table(answers: list[NodeAnswer]) -> Table:
    table = Table(title="nodes", title_justify="left")
    for column in NODE_COLUMNS:
        table.add_column(
            column, justify="left" if column in {"node", "address", "answer"} else "right"
        )
    for answer in answers:
        status = answer.status
        if status is None:
            table.add_row(
                answer.node or "?",
                _address(answer.address),
                Text("no answer", style="red"),
                *(["-"] * (len(NODE_COLUMNS) - 3)),
            )
            continue
        buckets = status.buckets
        up = sum(1 for p in status.peers if p.up)
        table.add_row(
            status.node,
            _address(answer.address),
            Text("ok", style="green"),
            format_duration(status.uptime),
            f"{sum(b.alive for b in buckets)}/{sum(b.max_bucket for b in buckets)}",
            str(sum(b.running for b in buckets)),
            str(sum(b.queued for b in buckets)),
            f"{sum(b.end_rate_10s for b in buckets):.1f}",
            f"{sum(b.end_rate_60s for b in buckets):.1f}",
            f"{up}/{len(status.peers)}",
        )
    return table


def _buckets_table(answers: list[NodeAnswer]) -> Table:
    table = Table(title="buckets", title_justify="left")
    table.add_column("node")
    for column in BUCKET_COLUMNS:
        table.add_column(column, justify="left" if column == "bucket" else "right")
    for answer in answers:
        if answer.status is None:
            continue
        for stats in answer.status.buckets:
            table.add_row(answer.status.node, stats.name, *bucket_cells(stats))
    return table


def _links_table(answers: list[NodeAnswer]) -> Table:
    table = Table(title="links", title_justify="left")
    for column in LINK_COLUMNS:
        table.add_column(column, overflow="fold")
    for answer in answers:
        if answer.status is None:
            continue
        for peer in sorted(answer.status.peers, key=lambda p: p.address):
            table.add_row(
                answer.status.node,
                _address(peer.address),
                peer.node or "?",
                Text("up", style="green") if peer.up else Text("down", style="red"),
                peer.source,
                peer.reason or "",
            )
    return table


def _errors(answers: list[NodeAnswer]) -> list[Text]:
    return [
        Text(f"{_address(a.address)} ({a.node or '?'}): {a.error}", style="red")
        for a in answers
        if a.status is None
    ]


def top_view(answers: list[NodeAnswer], via: str, when: float | None = None) -> Group:
    """One frame: a title line, the nodes, their buckets, their links, who did not answer."""
    first = answers[0].status if answers else None
    cluster = first.cluster if first is not None else "?"
    answering = sum(1 for a in answers if a.status is not None)
    clock = time.strftime("%H:%M:%S", time.localtime(when))
    title = (
        f"gobucket top · cluster {cluster} · via {via} · "
        f"{len(answers)} nodes, {answering} answering · {clock}"
    )
    return Group(
        Text(title, style="bold"),
        _nodes_table(answers),
        _buckets_table(answers),
        _links_table(answers),
        *_errors(answers),
    )


def _frame(address: str, secret: bytes | None, cluster: str, timeout: float) -> Group | Text:
    try:
        answers = asyncio.run(gather_cluster(address, secret, cluster, timeout))
    except StatusError as error:
        clock = time.strftime("%H:%M:%S")
        return Text(f"gobucket top · {clock} · {describe_error(error)}\n(retrying)", style="red")
    return top_view(answers, address)


def run_top(
    address: str,
    secret: bytes | None,
    cluster: str,
    timeout: float,
    once: bool = False,
    interval: float = 1.0,
    console: Console | None = None,
) -> int:
    """Show the cluster known to the node at ``address``: once, or live until Ctrl-C.

    Returns 0, or 1 when ``once`` and the node itself gave no status.
    """
    out = console or Console()
    if once:
        try:
            answers = asyncio.run(gather_cluster(address, secret, cluster, timeout))
        except StatusError as error:
            print(f"gobucket top: {describe_error(error)}", file=sys.stderr)
            return 1
        out.print(top_view(answers, address))
        return 0
    try:
        with Live(console=out, auto_refresh=False) as live:
            while True:
                started = time.monotonic()
                live.update(_frame(address, secret, cluster, timeout), refresh=True)
                time.sleep(max(0.05, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
