"""Discovery on a real (virtual) LAN: network namespaces joined by a bridge, mDNS multicast.

Three nodes of cluster "lab" (one per namespace) and a node of cluster "other"
in a fourth. Skipped with the reason where namespaces cannot be made.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gobucket.testing import VirtualLan, netns_available

AVAILABLE, WHY = netns_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(not AVAILABLE, reason=f"cannot build network namespaces: {WHY}"),
]

PORT = 7300


class Node:
    """A lan_node child process and its JSON line protocol."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        ready = self.read("ready")
        self.node_id: str = ready["node"]

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def read(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"node exited before {event!r}: rc={self.proc.poll()}")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == event:
                return message
        raise AssertionError(f"no {event!r} within {timeout}s")

    def peers(self) -> list[dict[str, Any]]:
        self.send(cmd="peers")
        peers: list[dict[str, Any]] = self.read("peers")["peers"]
        return peers


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def lan() -> Iterator[tuple[VirtualLan, list[Node]]]:
    with VirtualLan(hosts=4) as net:

        def start(host: int, cluster: str, size: int) -> Node:
            proc = net.popen(
                host,
                [
                    sys.executable,
                    "-m",
                    "gobucket.testing.lan_node",
                    "--host",
                    net.addresses[host],
                    "--port",
                    str(PORT),
                    "--cluster",
                    cluster,
                    "--secret",
                    "lab-secret",
                    "--max",
                    str(size),
                    "--ping",
                    "0.3",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            return Node(proc)

        nodes = [
            start(0, "lab", 1),
            start(1, "lab", 5000),
            start(2, "lab", 5000),
            start(3, "other", 100000),
        ]
        try:
            yield net, nodes
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.proc.kill()


def test_nodes_find_each_other_overflow_flows_and_a_killed_node_is_reported(
    lan: tuple[VirtualLan, list[Node]],
) -> None:
    _net, (a, b, c, stranger) = lan

    def lab_peers_up(node: Node) -> set[str]:
        return {p["node"] for p in node.peers() if p["up"] and p["loads"]}

    # Found by multicast (no static peers were given), each within the lab cluster only.
    wait_for(lambda: lab_peers_up(a) == {b.node_id, c.node_id})
    assert all(p["source"] == "mdns" for p in a.peers())
    assert stranger.node_id not in {p["node"] for p in a.peers()}

    # Overflow flows: A holds 1 task, the rest go to B and C; the other cluster is never used.
    a.send(cmd="fill", n=200, prefix="first", run_after=60)
    first = a.read("filled")
    assert first["raised"] == [] and first["reported"] == []
    assert sum(first["placed"].values()) == 200
    assert set(first["placed"]) <= {"local", b.node_id, c.node_id}
    assert first["placed"].get(b.node_id, 0) + first["placed"].get(c.node_id, 0) >= 199
    stranger.send(cmd="count")
    assert stranger.read("count")["alive"] == 0

    # Kill C in the middle of a burst: every task is placed, raised, or reported.
    a.send(cmd="fill", n=3000, prefix="burst", run_after=60)
    c.proc.send_signal(signal.SIGKILL)
    burst = a.read("filled", timeout=60)
    placed = sum(burst["placed"].values())
    raised_ids = {r.split(":")[0] for r in burst["raised"]}
    reported_ids = {r["id"] for r in burst["reported"] if r["id"].startswith("burst")}
    assert placed + len(raised_ids) == 3000
    assert reported_ids <= raised_ids  # what was reported also failed for the caller
    # C is dropped (marked down or forgotten) within a few ping intervals.
    wait_for(lambda: c.node_id not in lab_peers_up(a), timeout=10)
    assert stranger.node_id not in {p["node"] for p in a.peers()}
