"""A running group's server against raw sockets: handshake, fills, and every kind of abuse.

Each offender must get an ERROR frame (or be disconnected) while the node keeps serving a
good peer, which fills through it before and after.
"""

from __future__ import annotations

import logging
import socket
import struct
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from helpers.cluster import BUCKET, HOLD, SECRET, Cluster, hold, wait_peer_up
from helpers.raw_peer import RawPeer
from helpers.waiting import WAIT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gobucket import Placement, TaskBucket, TaskBucketGroup
from gobucket.wire.connection import PREAUTH_MAX_FRAME
from gobucket.wire.frames import encode_frame, pack
from gobucket.wire.noise import Handshake, derive_psk, prologue
from gobucket.wire.protocol import PROTOCOL_VERSION

SERVER_MAX_FRAME = 4096


@dataclass
class Served:
    """A server node, and a good peer whose local bucket is full (so it overflows to it)."""

    cluster: Cluster
    server: TaskBucketGroup
    server_bucket: TaskBucket
    good: TaskBucketGroup

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def good_fill(self) -> Placement:
        """The good peer's overflow still lands on the server."""
        task_id = "good-" + uuid.uuid4().hex[:8]
        placement = self.good.fill(BUCKET, task_id, {"n": 1}, timeout=WAIT, **HOLD)
        assert not placement.local
        assert placement.node == self.server.node_id
        assert task_id in self.server_bucket
        return placement


@pytest.fixture
def served(cluster: Cluster) -> Served:
    server_bucket = cluster.bucket(max_bucket=500)
    server = cluster.group(server_bucket, max_frame=SERVER_MAX_FRAME)
    good_bucket = cluster.bucket(max_bucket=1)
    hold(good_bucket, 1)
    good = cluster.group(good_bucket, peers=[server.address])
    wait_peer_up(good, server.address)
    result = Served(cluster, server, server_bucket, good)
    result.good_fill()
    return result


# --- the protocol, spoken correctly -------------------------------------------------------


def test_with_a_secret_the_server_waits_for_the_client(served: Served) -> None:
    with RawPeer(served.address) as raw, pytest.raises(AssertionError, match="in time"):
        raw.recv(timeout=0.3)  # nothing before the client's first Noise message


def test_server_answers_with_its_identity_inside_the_handshake(served: Served) -> None:
    with RawPeer(served.address) as raw:
        hello = raw.hello()
    assert hello is not None
    assert hello["t"] == "hello"
    assert hello["v"] == PROTOCOL_VERSION
    assert hello["cluster"] == "default"
    assert hello["node"] == served.server.node_id
    assert hello["port"] == served.address[1]
    assert hello["buckets"] == [BUCKET]


def test_without_a_secret_the_server_says_hello_first(cluster: Cluster) -> None:
    group = cluster.group(cluster.bucket(), secret=None, peers=["127.0.0.1:1"])
    with RawPeer(group.address) as raw:
        hello = raw.recv()
    assert hello is not None
    assert hello["t"] == "hello"
    assert hello["v"] == PROTOCOL_VERSION
    assert hello["node"] == group.node_id
    assert hello["auth"] is False
    assert isinstance(hello["nonce"], bytes) and len(hello["nonce"]) == 16


def test_each_connection_gets_a_fresh_ephemeral_key(served: Served) -> None:
    keys = set()
    for _ in range(3):
        with RawPeer(served.address) as raw:
            assert raw.hello() is not None
            assert raw.handshake_reply is not None
            keys.add(raw.handshake_reply["m"][:32])
    assert len(keys) == 3


def test_raw_client_handshake_ping_and_fill(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.handshake()
        pong = raw.ping(seq=41)
        alive = len(served.server_bucket)
        assert pong["loads"] == {BUCKET: [alive, 500]}
        ack = raw.fill("raw::1", pack({"name": "Johnson"}), rid=7)
        assert ack == {"t": "ack", "rid": 7, "ok": True}
        assert "raw::1" in served.server_bucket
        assert raw.ping(seq=42)["loads"] == {BUCKET: [alive + 1, 500]}


def test_raw_fill_refusals_are_negative_acks_and_keep_the_connection(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.handshake()
        assert raw.fill("raw::dup", None, rid=1)["ok"] is True
        duplicate = raw.fill("raw::dup", None, rid=2)
        assert (duplicate["ok"], duplicate["code"], duplicate["rid"]) == (False, "duplicate", 2)
        no_bucket = raw.fill("raw::2", None, rid=3, bucket="nope")
        assert (no_bucket["ok"], no_bucket["code"]) == (False, "no_bucket")
        bad_data = raw.fill("raw::3", b"\xc1", rid=4)
        assert (bad_data["ok"], bad_data["code"]) == (False, "bad_data")
        bad_type = raw.fill("raw::4", None, rid=5, type="someday")
        assert (bad_type["ok"], bad_type["code"]) == (False, "bad_data")
        bad_span = raw.fill("raw::5", None, rid=6, run_after=5.0, life_span=1.0)
        assert (bad_span["ok"], bad_span["code"]) == (False, "bad_data")
        negative = raw.fill("raw::6", None, rid=7, life_span=-1.0)
        assert (negative["ok"], negative["code"]) == (False, "bad_data")
        not_bytes = raw.fill("raw::7", "a string, not msgpack bytes", rid=8)  # type: ignore[arg-type]
        assert (not_bytes["ok"], not_bytes["code"]) == (False, "bad_data")
        raw.ping(seq=9)  # still connected
    for task_id in ("raw::2", "raw::3", "raw::4", "raw::5", "raw::6", "raw::7"):
        assert task_id not in served.server_bucket
    served.good_fill()


def test_raw_fill_into_a_full_bucket_is_refused_as_full(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=2)
    hold(bucket, 2)
    server = cluster.group(bucket)
    with RawPeer(server.address) as raw:
        raw.handshake()
        assert raw.ping()["loads"] == {BUCKET: [2, 2]}
        ack = raw.fill("raw::full", None)
        assert (ack["ok"], ack["code"]) == (False, "full")
    assert len(bucket) == 2


def test_pipelined_fills_are_each_acknowledged_in_order(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.handshake()
        frames = b"".join(
            encode_frame(
                {
                    "t": "fill",
                    "rid": rid,
                    "bucket": BUCKET,
                    "id": f"pipe::{rid}",
                    "data": pack(rid),
                    **{k: v for k, v in HOLD.items() if k != "task_type"},
                    "type": "time_bomb",
                }
            )
            for rid in range(1, 31)
        )
        raw.send_raw(frames)
        acks = [raw.recv() for _ in range(30)]
    assert [a["rid"] for a in acks if a is not None] == list(range(1, 31))
    assert all(a is not None and a["ok"] for a in acks)
    assert all(f"pipe::{rid}" in served.server_bucket for rid in range(1, 31))


# --- the handshake, abused ---------------------------------------------------------------


def test_wrong_secret_is_refused_with_an_auth_error(served: Served) -> None:
    with RawPeer(served.address) as raw:
        assert raw.hello(secret="wrong-key") is None
        raw.expect_refusal("auth")
    served.good_fill()


def test_reflecting_the_servers_own_message_is_refused(served: Served) -> None:
    with RawPeer(served.address) as first:
        assert first.hello() is not None
        assert first.handshake_reply is not None
        reflected = first.handshake_reply
    with RawPeer(served.address) as raw:
        raw.send(reflected)  # the server's message 2, offered back as a message 1
        raw.expect_refusal("auth")
    served.good_fill()


def test_skipping_the_key_confirmation_is_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        assert raw.hello() is not None
        raw.send_wire(encode_frame({"t": "ping", "seq": 1}))  # plaintext, not a record
        assert raw.messages_until_closed() == []  # closed without a word, no PONG
    served.good_fill()


def test_a_first_record_that_is_not_ready_is_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        assert raw.hello() is not None
        raw.send({"t": "ping", "seq": 1})  # encrypted, but not READY
        raw.expect_refusal("unexpected")
    served.good_fill()


def test_a_first_record_with_two_messages_is_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        assert raw.hello() is not None
        raw.send_raw(encode_frame({"t": "ready"}) + encode_frame({"t": "ping", "seq": 1}))
        raw.expect_refusal("bad_message")
    served.good_fill()


def test_fill_before_the_handshake_is_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.send({"t": "ping", "seq": 1})
        raw.expect_refusal("unexpected")
    served.good_fill()


def test_plaintext_frames_behind_the_first_message_are_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.send_wire(_first_message() + encode_frame({"t": "ping", "seq": 1}))
        raw.expect_refusal("unexpected")
    served.good_fill()


def _first_message(**fields: Any) -> bytes:
    """A client's first frame (message 1) made by hand; ``fields`` change its HELLO."""
    state = Handshake(
        True, derive_psk(SECRET.encode(), "default"), prologue(PROTOCOL_VERSION, "default")
    )
    hello = {"t": "hello", "v": PROTOCOL_VERSION, "cluster": "default", "node": "early", "port": 0}
    hello.update(fields)
    return encode_frame(
        {
            "t": "noise",
            "v": PROTOCOL_VERSION,
            "cluster": "default",
            "m": state.write_message(pack(hello)),
        }
    )


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"version": PROTOCOL_VERSION + 1}, "version"),
        ({"version": 1}, "version"),
        ({"cluster": "other-cluster"}, "cluster"),
        ({"v": 1}, "version"),  # inside the encrypted HELLO only
        ({"port": "6666"}, "bad_message"),
        ({"port": None}, "bad_message"),
    ],
    ids=["version", "old-version", "cluster", "inner-version", "bad-port", "no-port"],
)
def test_bad_hello_is_refused(served: Served, fields: dict[str, Any], code: str) -> None:
    with RawPeer(served.address) as raw:
        assert raw.hello(**fields) is None
        raw.expect_refusal(code)
    served.good_fill()


def test_a_hello_naming_another_cluster_inside_is_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.send_wire(_first_message(cluster="x"))  # the clear "cluster" is right
        raw.expect_refusal("cluster")
    served.good_fill()


def test_an_old_plaintext_hello_is_refused_as_the_wrong_version(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.send(
            {
                "t": "hello",
                "v": 1,
                "cluster": "default",
                "node": raw.node,
                "nonce": b"n" * 16,
                "port": 0,
                "auth": True,
            }
        )
        raw.expect_refusal("version")
    served.good_fill()


def test_a_plaintext_hello_to_a_node_with_a_secret_is_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.send(
            {"t": "hello", "v": PROTOCOL_VERSION, "cluster": "default", "node": raw.node, "port": 0}
        )
        error = raw.expect_refusal("auth")
    assert "no cluster secret" in error["msg"]
    served.good_fill()


@pytest.mark.parametrize("node", ["", "n" * 256, "é" * 300], ids=["empty", "long", "long-utf8"])
def test_hello_with_an_unreasonable_node_id_is_refused(served: Served, node: str) -> None:
    with RawPeer(served.address) as raw:
        assert raw.hello(node=node) is None
        raw.expect_refusal("bad_message")
    served.good_fill()


def test_hello_claiming_the_servers_own_node_id_is_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        assert raw.hello(node=served.server.node_id) is not None
        raw.send({"t": "ready"})
        raw.expect_refusal("self")
    served.good_fill()


def test_unknown_message_type_in_the_handshake_is_refused(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.send({"t": "gossip", "rumour": "x"})
        raw.expect_refusal("unknown_type")
    served.good_fill()


@pytest.mark.parametrize(
    "message",
    [
        {"t": "noise", "v": PROTOCOL_VERSION, "cluster": "default"},
        {"t": "noise", "v": PROTOCOL_VERSION, "m": b"x" * 64},
        {"t": "noise", "cluster": "default", "m": b"x" * 64},
        {"t": "noise", "v": PROTOCOL_VERSION, "cluster": "default", "m": "text"},
    ],
    ids=["no-message", "no-cluster", "no-version", "text-message"],
)
def test_noise_frame_with_missing_fields_is_refused(
    served: Served, message: dict[str, object]
) -> None:
    with RawPeer(served.address) as raw:
        raw.send(message)
        raw.expect_refusal("bad_message")
    served.good_fill()


@pytest.mark.parametrize("size", [0, 31, 47, 48, 300], ids=repr)
def test_noise_frame_with_garbage_is_refused(served: Served, size: int) -> None:
    with RawPeer(served.address) as raw:
        raw.send({"t": "noise", "v": PROTOCOL_VERSION, "cluster": "default", "m": bytes(size)})
        raw.expect_refusal("auth")
    served.good_fill()


@pytest.mark.parametrize("after_handshake", [False, True], ids=["before", "after"])
def test_oversized_frame_is_refused_from_its_header(served: Served, after_handshake: bool) -> None:
    limit = SERVER_MAX_FRAME if after_handshake else PREAUTH_MAX_FRAME
    with RawPeer(served.address) as raw:
        if after_handshake:
            raw.handshake()
        raw.send_raw(struct.pack(">I", limit + 1))  # the header alone is enough
        raw.expect_refusal("bad_frame")
    served.good_fill()


@pytest.mark.parametrize("after_handshake", [False, True], ids=["before", "after"])
def test_a_full_oversized_frame_is_refused(served: Served, after_handshake: bool) -> None:
    with RawPeer(served.address) as raw:
        if after_handshake:
            raw.handshake()
        raw.send(
            {
                "t": "fill",
                "rid": 1,
                "bucket": BUCKET,
                "id": "huge",
                "data": pack(b"x" * (SERVER_MAX_FRAME * 2)),
                "type": "immediate",
                "run_after": 0.0,
                "life_span": 5.0,
            }
        )
        messages = raw.messages_until_closed()
    assert not any(m.get("t") == "ack" for m in messages)
    assert "huge" not in served.server_bucket
    served.good_fill()


@pytest.mark.parametrize(
    "body",
    [b"\xc1\xc1\xc1", b"\x92\x01", pack([1, 2, 3]), pack("just a string"), b""],
    ids=["garbage", "truncated", "array", "string", "empty"],
)
@pytest.mark.parametrize("after_handshake", [False, True], ids=["before", "after"])
def test_malformed_frames_are_refused(served: Served, body: bytes, after_handshake: bool) -> None:
    with RawPeer(served.address) as raw:
        if after_handshake:
            raw.handshake()
        raw.send_raw(struct.pack(">I", len(body)) + body)
        raw.expect_refusal("bad_frame")
    served.good_fill()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"t": "gossip"}, "unknown_type"),
        (
            {
                "t": "hello",
                "v": 1,
                "cluster": "default",
                "node": "x",
                "nonce": b"n" * 16,
                "port": 1,
            },
            "unexpected",
        ),
        ({"t": "pong", "seq": 1, "loads": {}}, "unexpected"),
        ({"t": "ack", "rid": 1, "ok": True}, "unexpected"),
        ({"t": "ready"}, "unexpected"),
        ({"t": "noise", "v": PROTOCOL_VERSION, "cluster": "default", "m": b"x" * 48}, "unexpected"),
        ({"t": "auth", "proof": b"x" * 32}, "unknown_type"),  # version 1's, gone
        ({"t": "fill", "rid": "one", "bucket": BUCKET, "id": "x"}, "bad_message"),
        ({"t": "ping"}, "bad_message"),
    ],
    ids=["unknown", "hello", "pong", "ack", "ready", "noise", "auth", "bad-fill", "ping-no-seq"],
)
def test_bad_messages_after_the_handshake_are_refused(
    served: Served, message: dict[str, object], code: str
) -> None:
    with RawPeer(served.address) as raw:
        raw.handshake()
        raw.send(message)
        raw.expect_refusal(code)
    served.good_fill()


def test_a_client_error_frame_ends_its_connection_quietly(served: Served) -> None:
    with RawPeer(served.address) as raw:
        raw.handshake()
        raw.send({"t": "error", "code": "bye", "msg": "going away"})
        assert raw.messages_until_closed() == []
    served.good_fill()


def test_stalled_and_half_open_connections_do_not_block_a_good_peer(served: Served) -> None:
    stalled = [RawPeer(served.address) for _ in range(5)]
    try:
        stalled[0].send_raw(struct.pack(">I", 100) + b"\x81")  # half a frame, then nothing
        stalled[1].handshake()
        stalled[1].send_raw(struct.pack(">I", 200))  # header of a frame that never comes
        stalled[2].send_raw(b"\x00\x00")  # half a header
        stalled[3].handshake()  # authenticated and idle
        # stalled[4] never says anything at all
        for _ in range(3):
            served.good_fill()
        # an idle authenticated client is still served, too
        assert stalled[3].ping(seq=5)["loads"][BUCKET][1] == 500
    finally:
        for raw in stalled:
            raw.close()
    served.good_fill()


def test_many_offenders_at_once_do_not_stop_the_server(served: Served) -> None:
    offenders = [RawPeer(served.address) for _ in range(20)]
    try:
        for index, raw in enumerate(offenders):
            if index % 2:
                raw.send_raw(struct.pack(">I", 1 << 30))
            else:
                raw.send_raw(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        for raw in offenders:
            messages = raw.messages_until_closed()
            assert messages and messages[-1]["t"] == "error"
            assert messages[-1]["code"] == "bad_frame"
    finally:
        for raw in offenders:
            raw.close()
    served.good_fill()


# --- no secret: the peer list is the allow list -------------------------------------------


def test_without_secret_an_address_off_the_peer_list_is_refused_at_connect(
    cluster: Cluster,
) -> None:
    bucket = cluster.bucket(max_bucket=5)
    group = cluster.group(bucket, peers=["127.0.0.2:1"], secret=None)
    with RawPeer(group.address) as raw:
        messages = raw.messages_until_closed()
    assert [m["t"] for m in messages] == ["error"]  # not even a HELLO
    assert messages[0]["code"] == "not_allowed"
    assert len(bucket) == 0


def test_allow_checks_the_peer_list(cluster: Cluster) -> None:
    group = cluster.group(
        cluster.bucket(), peers=["127.0.0.2:1", "[::1]:2"], secret=None, start=False
    )
    server = group._server  # what the node answers its peers (gobucket.serve)
    assert server.allow("127.0.0.2")
    assert server.allow("::ffff:127.0.0.2")  # a v4-mapped address of a listed peer
    assert server.allow("::1")
    assert not server.allow("127.0.0.1")
    assert not server.allow("10.0.0.9")
    server.allow_address("10.0.0.9")
    assert server.allow("10.0.0.9")


def test_without_secret_a_listed_address_may_connect_and_fill(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=5)
    group = cluster.group(bucket, peers=["127.0.0.1:1"], secret=None)
    with RawPeer(group.address) as raw:
        hello = raw.handshake(secret=None)
        assert hello["auth"] is False
        assert raw.fill("open::1", pack([1, 2]))["ok"] is True
    assert "open::1" in bucket


def test_without_secret_a_client_demanding_auth_is_refused(cluster: Cluster) -> None:
    group = cluster.group(cluster.bucket(), peers=["127.0.0.1:1"], secret=None)
    with RawPeer(group.address) as raw:
        assert raw.hello(secret=SECRET) is None  # a Noise message 1: it has a secret
        error = raw.expect_refusal("auth")
    assert "has a cluster secret and this node has none" in error["msg"]


def test_without_secret_a_hello_claiming_auth_is_refused(cluster: Cluster) -> None:
    group = cluster.group(cluster.bucket(), peers=["127.0.0.1:1"], secret=None)
    with RawPeer(group.address) as raw:
        raw.hello(secret=None, auth=True)
        raw.expect_refusal("auth")


# --- fuzzing the socket -------------------------------------------------------------------


def _send_and_close(address: tuple[str, int], data: bytes, handshake: bool) -> None:
    raw = RawPeer(address, timeout=WAIT)
    try:
        if handshake:
            raw.handshake()
        raw.send_raw(data)
    except (ConnectionError, OSError):
        pass  # the server may hang up in the middle of our garbage: that is fine
    finally:
        raw.close()


@pytest.mark.parametrize("handshake", [False, True], ids=["before-handshake", "after-handshake"])
def test_fuzz_random_bytes_never_kill_the_server(
    served: Served, handshake: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gobucket")

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.builds(
                lambda n, body: struct.pack(">I", n) + body,
                st.integers(min_value=0, max_value=2**32 - 1),
                st.binary(max_size=64),
            ),
            st.builds(
                lambda body: struct.pack(">I", len(body)) + body,
                st.binary(max_size=128),
            ),
        )
    )
    def fuzz(data: bytes) -> None:
        _send_and_close(served.address, data, handshake)

    fuzz()
    served.good_fill()
    with RawPeer(served.address) as raw:
        raw.handshake()
        raw.ping()
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not crashes, [r.getMessage() for r in crashes]


def test_fuzz_random_messages_after_the_handshake_never_kill_the_server(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gobucket")
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63)
        | st.floats()
        | st.text(max_size=8)
        | st.binary(max_size=16)
    )
    values = st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=6,
    )
    keys = st.sampled_from(
        ["t", "rid", "seq", "bucket", "id", "data", "type", "run_after", "life_span", "ok"]
    )
    kinds = st.sampled_from(["fill", "ping", "pong", "ack", "hello", "noise", "ready", "x"])
    fill_like = st.fixed_dictionaries(
        {
            "t": st.just("fill"),
            "rid": st.integers(min_value=0, max_value=2**31),
            "bucket": st.sampled_from([BUCKET, "other", ""]),
            "id": st.text(max_size=6),
            "data": st.none() | st.binary(max_size=24) | values,
            "type": st.sampled_from(["immediate", "time_bomb", "later", ""]),
            "run_after": st.floats() | st.integers(min_value=-5, max_value=10),
            "life_span": st.floats() | st.integers(min_value=-5, max_value=10),
        }
    )

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        st.one_of(
            fill_like,
            st.dictionaries(keys, values, max_size=6).map(dict),
            kinds.map(lambda k: {"t": k}),
        )
    )
    def fuzz(message: dict[str, object]) -> None:
        with RawPeer(served.address) as raw:
            raw.handshake()
            raw.send(message)
            raw.send({"t": "ping", "seq": 99})
            # every frame is answered (ACK/PONG) or ends the connection with an ERROR
            replies = []
            while True:
                reply = raw.recv()
                if reply is None:
                    break
                replies.append(reply)
                if reply["t"] == "pong":
                    break
            assert replies, "the server hung up without a word"
            assert replies[-1]["t"] in {"pong", "error"}, replies

    fuzz()
    served.good_fill()
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not crashes, [r.getMessage() for r in crashes]


def test_server_survives_a_connect_and_immediate_reset(served: Served) -> None:
    for _ in range(10):
        sock = socket.create_connection(served.address, timeout=WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    served.good_fill()
    with RawPeer(served.address) as raw:
        raw.handshake()
        raw.ping()
