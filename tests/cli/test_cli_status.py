"""``gobucket status`` and ``gobucket top --once`` as subprocesses, against a static group of
three child-process nodes started here; output parsed, counts checked; the secret from
``--secret-file`` or ``GOBUCKET_SECRET``; clear errors (no traceback) for a wrong secret
and an unreachable node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.child_node import REPO_ROOT, ChildNode
from helpers.cluster import BUCKET, SECRET, Cluster, free_port, wait_peer_up
from helpers.waiting import WAIT, wait_until

from gobucket import TaskBucketGroup

pytestmark = pytest.mark.slow

IDS = ("node-a", "node-b", "node-c")
FILLED = 3  # time bombs filled on node-a (60 s away: they stay alive for the test)
MAX = 10


def gobucket(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``gobucket`` command (this tree's) with a wide, plain terminal."""
    run_env = {k: v for k, v in os.environ.items() if k != "GOBUCKET_SECRET"}
    run_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [run_env.get("PYTHONPATH")])]
    )
    run_env["COLUMNS"] = "220"  # rich wraps at 80 columns when stdout is not a terminal
    run_env.update(env or {})
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from gobucket.cli import main; sys.exit(main())",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO_ROOT),
        env=run_env,
        timeout=120,
    )


def table_rows(output: str, title: str) -> list[dict[str, str]]:
    """The rows of the rich table printed under the line ``title``, as column -> cell."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    header: list[str] = []
    rows: list[dict[str, str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("┃"):
            header = [cell.strip() for cell in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows.append(dict(zip(header, cells, strict=True)))
        elif line.startswith("└"):
            return rows
    raise AssertionError(f"table {title!r} never ended:\n{output}")


def peer_rows(child: ChildNode) -> list[dict[str, Any]]:
    child.send(cmd="peers")
    rows: list[dict[str, Any]] = child._read_event("peers", WAIT)["peers"]
    return rows


def all_up(child: ChildNode) -> bool:
    rows = peer_rows(child)
    return len(rows) == 2 and all(row["up"] and BUCKET in row["loads"] for row in rows)


class Group3:
    """Three child nodes, each listing the other two as static peers."""

    def __init__(self) -> None:
        ports = [free_port() for _ in IDS]
        self.children: list[ChildNode] = []
        for node_id, port in zip(IDS, ports, strict=True):
            peers = [f"--peer=127.0.0.1:{p}" for p in ports if p != port]
            self.children.append(
                ChildNode("--node-id", node_id, "--port", str(port), "--max", str(MAX), *peers)
            )
        for child in self.children:
            wait_until(lambda child=child: all_up(child), what="both peers up with their loads")
        first = self.children[0]
        first.send(cmd="fill", n=FILLED, prefix="cli-", run_after=60)
        placed = first._read_event("filled", WAIT)
        assert placed["placed"] == {"local": FILLED}, placed

    @property
    def first(self) -> str:
        host, port = self.children[0].address
        return f"{host}:{port}"

    def close(self) -> None:
        for child in self.children:
            child.close()


@pytest.fixture(scope="module")
def group3() -> Iterator[Group3]:
    group = Group3()
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")  # the trailing newline an editor leaves is dropped
    path.chmod(0o600)
    return path


def test_status_prints_the_nodes_buckets_and_peers(group3: Group3, secret_file: Path) -> None:
    result = gobucket("status", group3.first, "--secret-file", str(secret_file))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0].startswith(f"node node-a · cluster default · {group3.first} · up ")
    (bucket,) = table_rows(out, "buckets")
    assert bucket["bucket"] == BUCKET
    assert bucket["alive/max"] == f"{FILLED}/{MAX}"
    assert bucket["running"] == bucket["queued"] == bucket["finished"] == "0"
    peers = {row["node"]: row for row in table_rows(out, "peers")}
    assert set(peers) == {"node-b", "node-c"}
    for row in peers.values():
        assert (row["state"], row["source"], row["reason"]) == ("up", "static", "")
        assert row["loads"] == f"{BUCKET}=0/{MAX}"


def test_status_json_with_the_secret_in_the_environment(group3: Group3) -> None:
    result = gobucket("status", "--json", group3.first, env={"GOBUCKET_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["node"] == "node-a"
    (bucket,) = status["buckets"]
    assert (bucket["name"], bucket["alive"], bucket["max"]) == (BUCKET, FILLED, MAX)
    assert bucket["ends"]["finished"] == 0
    assert sorted(p["node"] for p in status["peers"] if p["up"]) == ["node-b", "node-c"]


def test_top_once_shows_the_whole_cluster(group3: Group3) -> None:
    result = gobucket("top", "--once", group3.first, env={"GOBUCKET_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    title = out.splitlines()[0]
    assert title.startswith(f"gobucket top · cluster default · via {group3.first} · ")
    assert "3 nodes, 3 answering" in title
    nodes = {row["node"]: row for row in table_rows(out, "nodes")}
    assert set(nodes) == set(IDS)
    assert all(row["answer"] == "ok" for row in nodes.values())
    assert nodes["node-a"]["alive/max"] == f"{FILLED}/{MAX}"
    assert nodes["node-b"]["alive/max"] == nodes["node-c"]["alive/max"] == f"0/{MAX}"
    assert all(row["peers up"] == "2/2" for row in nodes.values())
    buckets = table_rows(out, "buckets")
    assert sorted((row["node"], row["bucket"]) for row in buckets) == [
        (node, BUCKET) for node in IDS
    ]
    links = table_rows(out, "links")
    assert len(links) == 6  # each node's view of each of its two peers
    assert all(row["state"] == "up" for row in links)
    print(out)  # the capture for the report (pytest -s shows it)


def test_top_once_with_a_secret_file(group3: Group3, secret_file: Path) -> None:
    result = gobucket("top", "--once", "--secret-file", str(secret_file), group3.first)
    assert result.returncode == 0, result.stderr
    assert {row["node"] for row in table_rows(result.stdout, "nodes")} == set(IDS)


@pytest.mark.parametrize("command", [["status"], ["top", "--once"]])
def test_the_wrong_secret_is_a_clear_error(group3: Group3, command: list[str]) -> None:
    result = gobucket(*command, group3.first, env={"GOBUCKET_SECRET": "not-the-secret"})
    assert result.returncode == 1
    assert "handshake refused" in result.stderr
    assert "hint: check the secret" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["status"], ["top", "--once"]])
def test_an_unreachable_node_is_a_clear_error(command: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = gobucket(*command, address, env={"GOBUCKET_SECRET": SECRET})
    assert result.returncode == 1
    assert f"{address}: unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = gobucket("status", "--secret-file", str(missing), "127.0.0.1:1")
    assert result.returncode == 2
    assert f"cannot read --secret-file {missing}" in result.stderr
    assert "Traceback" not in result.stderr


def test_secret_and_secret_file_exclude_each_other(secret_file: Path) -> None:
    result = gobucket("status", "--secret", "x", "--secret-file", str(secret_file), "h:1")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_the_help_says_why_not_to_pass_the_secret_itself() -> None:
    for command in ("status", "top", "peers"):
        result = gobucket(command, "--help")
        assert result.returncode == 0
        text = " ".join(result.stdout.split())
        assert "--secret-file PATH" in text
        assert "GOBUCKET_SECRET" in text
        assert "ps" in text and "shell history" in text


def test_top_once_on_a_discovered_group(cluster: Cluster) -> None:
    """mDNS on loopback: the peers top asks come from the node's discovered peer table."""
    name = f"cli-{uuid.uuid4().hex[:8]}"  # a cluster of its own: no other test's nodes

    def node(node_id: str) -> TaskBucketGroup:
        return cluster.group(
            cluster.bucket(max_bucket=4),
            cluster=name,
            node_id=node_id,
            discovery=True,
            interfaces=["127.0.0.1"],
        )

    a, b = node("mdns-a"), node("mdns-b")
    wait_peer_up(a, b.address, timeout=30)
    wait_peer_up(b, a.address, timeout=30)
    via = f"127.0.0.1:{a.address[1]}"
    result = gobucket("top", "--once", "--cluster", name, via, env={"GOBUCKET_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    nodes = {row["node"]: row for row in table_rows(result.stdout, "nodes")}
    assert set(nodes) == {"mdns-a", "mdns-b"}
    assert all(row["answer"] == "ok" for row in nodes.values())
    links = table_rows(result.stdout, "links")
    assert {(row["from"], row["node"], row["source"]) for row in links} >= {
        ("mdns-a", "mdns-b", "mdns"),
        ("mdns-b", "mdns-a", "mdns"),
    }


def test_another_cluster_name_is_a_clear_error(group3: Group3, secret_file: Path) -> None:
    result = gobucket(
        "status", "--cluster", "elsewhere", "--secret-file", str(secret_file), group3.first
    )
    assert result.returncode == 1
    assert "handshake refused" in result.stderr
    assert "hint: check --cluster" in result.stderr
