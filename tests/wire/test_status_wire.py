"""STATUS on the wire: the request and its reply round trip, what a running node answers,
and who is refused (no handshake, another secret, another cluster)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers.cluster import BUCKET, SECRET, Cluster, free_port, hold, wait_peer_up
from helpers.raw_peer import RawPeer
from helpers.waiting import WAIT, wait_until

from gobucket import BucketStats, NodeStatus, PeerInfo, StatusError, TaskType, fetch_status
from gobucket.wire import protocol
from gobucket.wire.frames import FrameDecoder, encode_frame
from gobucket.wire.protocol import MessageType, ProtocolError
from gobucket.wire.status import HandshakeRefusedError, NodeUnreachableError

STATS = BucketStats(
    name="mail",
    alive=3,
    max_bucket=10,
    filled=9,
    finished=2,
    execute_errors=1,
    exhausted=1,
    panicked=0,
    drained=1,
    refused_full=4,
    refused_duplicate=5,
    crashed=0,
    closed=False,
    handed_off=1,
    running=2,
    queued=1,
    overrunning=0,
    end_rate_10s=0.5,
    end_rate_60s=0.25,
)


def _through_the_wire(message: dict[str, Any]) -> dict[str, Any]:
    """Encode a message as a frame and read it back as a server would."""
    decoded = FrameDecoder(1 << 20).feed(encode_frame(message))
    assert len(decoded) == 1
    return decoded[0]


# --- the messages -------------------------------------------------------------------------


def test_status_request_round_trip() -> None:
    message = _through_the_wire(protocol.status(7))
    assert protocol.validate(message) is MessageType.STATUS
    assert protocol.parse(message) == protocol.StatusRequest(7)


def test_status_reply_round_trip() -> None:
    now = time.monotonic()
    up = PeerInfo(("10.0.0.2", 6666), "n2", True, "static", {"mail": (1, 10)}, now - 2.0, ("mail",))
    down = PeerInfo(
        ("10.0.0.3", 6666), None, False, "mdns", {}, None, (), "cannot connect: connection refused"
    )
    message = _through_the_wire(
        protocol.status_reply(3, "n1", "lab", 12.5, [STATS], [up, down], now)
    )
    assert protocol.validate(message) is MessageType.STATUS_REPLY
    reply = protocol.parse(message)
    assert isinstance(reply, protocol.StatusReply)
    assert reply.rid == 3
    status = reply.status
    assert (status.node, status.cluster, status.uptime) == ("n1", "lab", 12.5)
    assert status.buckets == (STATS,)
    assert status.bucket("mail") == STATS
    assert status.bucket("nothing") is None
    first, second = status.peers
    assert first.address == ("10.0.0.2", 6666)
    assert (first.node, first.up, first.source, first.reason) == ("n2", True, "static", None)
    assert first.loads == {"mail": (1, 10)}
    assert first.buckets == ("mail",)
    assert first.last_seen is not None
    assert 1.5 < time.monotonic() - first.last_seen < 2.0 + WAIT  # "seen 2 s ago"
    assert (second.node, second.up, second.source) == (None, False, "mdns")
    assert second.reason == "cannot connect: connection refused"
    assert second.last_seen is None


def _raw_bucket(**change: Any) -> dict[str, Any]:
    """A well-formed bucket of a STATUS_REPLY, with ``change`` applied."""
    fields = {"name": "m", "max": 1, "alive": 0, "filled": 0, "running": 0, "queued": 0}
    return {**fields, "overrunning": 0, "ends": {}, **change}


@pytest.mark.parametrize(
    "change",
    [
        {"buckets": [5]},
        {"buckets": [{"name": "mail"}]},
        {"buckets": [_raw_bucket(alive=-1)]},
        {"buckets": [_raw_bucket(rate_10s=float("nan"))]},
        {"buckets": [_raw_bucket(closed="no")]},
        {"buckets": [_raw_bucket(ends={"finished": 1.5})]},
        {"peers": [{"address": ["h"], "up": True, "source": "static"}]},
        {"peers": [{"address": ["h", 1], "up": "yes", "source": "static"}]},
        {"peers": [{"address": ["h", 1], "up": True, "source": "static", "loads": {"m": [1]}}]},
        {"uptime": -1.0},
    ],
)
def test_a_malformed_status_reply_is_refused(change: dict[str, Any]) -> None:
    message = {**protocol.status_reply(1, "n1", "lab", 1.0, [STATS], [], 0.0), **change}
    with pytest.raises(ProtocolError) as info:
        protocol.validate(message)
        protocol.parse(message)
    assert info.value.code == "bad_message"


def test_a_well_formed_raw_bucket_parses() -> None:
    message = protocol.status_reply(1, "n1", "lab", 1.0, [], [], 0.0)
    message["buckets"] = [_raw_bucket()]
    reply = protocol.parse(message)
    assert isinstance(reply, protocol.StatusReply)
    assert reply.status.buckets[0].name == "m"


# --- a running node -----------------------------------------------------------------------


def test_a_node_answers_its_buckets_and_peers(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=5)
    other = cluster.bucket(max_bucket=7, name="other")
    peer_bucket = cluster.bucket(max_bucket=3)
    peer = cluster.group(peer_bucket)
    dead = ("127.0.0.1", free_port())  # nothing listens there
    node = cluster.group(
        {BUCKET: bucket, "other": other}, peers=[peer.address, dead], node_id="node-a"
    )
    wait_peer_up(node, peer.address)
    hold(bucket, 3)
    bucket.fill(TaskType.TIME_BOMB, "drained-1", run_after=60.0, life_span=120.0)
    bucket.drain("drained-1")

    status = wait_until(
        lambda: (
            (s := fetch_status(node.address, SECRET, timeout=WAIT))
            and all(p.reason != "not connected yet" for p in s.peers)
            and s
        ),
        what="a status with every peer tried",
    )
    assert isinstance(status, NodeStatus)
    assert status.node == "node-a"
    assert status.cluster == "default"
    assert status.address == node.address
    assert status.uptime > 0
    sample = status.bucket(BUCKET)
    assert sample is not None
    assert (sample.alive, sample.max_bucket, sample.filled, sample.drained) == (3, 5, 4, 1)
    assert sample.end_rate_60s > 0
    assert status.bucket("other") == BucketStats(name="other", **_empty(7))
    peers = {p.address: p for p in status.peers}
    assert peers[peer.address].up
    assert peers[peer.address].node == peer.node_id
    assert peers[peer.address].source == "static"
    assert peers[peer.address].reason is None
    assert not peers[dead].up
    assert peers[dead].reason is not None and "cannot connect" in peers[dead].reason


def _empty(max_bucket: int) -> dict[str, Any]:
    return {
        "alive": 0,
        "max_bucket": max_bucket,
        "filled": 0,
        "finished": 0,
        "execute_errors": 0,
        "exhausted": 0,
        "panicked": 0,
        "drained": 0,
        "refused_full": 0,
        "refused_duplicate": 0,
        "crashed": 0,
        "closed": False,
    }


def test_status_before_the_handshake_is_refused(cluster: Cluster) -> None:
    node = cluster.group(cluster.bucket())
    with RawPeer(node.address) as raw:
        raw.send({"t": "status", "rid": 1})
        messages = raw.messages_until_closed()
    assert messages, "the server closed without saying why"
    assert all(m["t"] == "error" for m in messages), messages  # no status_reply
    assert "expected noise" in messages[-1]["msg"]


def test_status_after_a_full_handshake_is_answered(cluster: Cluster) -> None:
    node = cluster.group(cluster.bucket(), node_id="node-raw")
    with RawPeer(node.address) as raw:
        raw.handshake()
        raw.send({"t": "status", "rid": 42})
        reply = raw.recv()
    assert reply is not None and reply["t"] == "status_reply", reply
    assert reply["rid"] == 42
    assert reply["node"] == "node-raw"


def test_the_wrong_secret_is_refused(cluster: Cluster) -> None:
    node = cluster.group(cluster.bucket())
    with pytest.raises(HandshakeRefusedError, match=r"handshake refused.*secret"):
        fetch_status(node.address, "not-the-secret", timeout=WAIT)
    with pytest.raises(HandshakeRefusedError, match="cluster"):
        fetch_status(node.address, SECRET, "another-cluster", timeout=WAIT)
    with pytest.raises(HandshakeRefusedError):
        fetch_status(node.address, None, timeout=WAIT)


def test_without_a_secret_only_listed_addresses_may_ask(cluster: Cluster) -> None:
    listed = cluster.group(cluster.bucket(), peers=["127.0.0.1:1"], secret=None)
    assert fetch_status(listed.address, None, timeout=WAIT).node == listed.node_id
    unlisted = cluster.group(cluster.bucket(), peers=["127.0.0.2:1"], secret=None)
    with pytest.raises(HandshakeRefusedError):
        fetch_status(unlisted.address, None, timeout=WAIT)


def test_an_unreachable_node_says_so() -> None:
    with pytest.raises(NodeUnreachableError, match="unreachable"):
        fetch_status(("127.0.0.1", free_port()), SECRET, timeout=WAIT)
    assert issubclass(NodeUnreachableError, StatusError)
