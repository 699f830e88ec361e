"""Peers that misbehave, seen from the node that overflows into them: refusals, silence,
garbage, lost connections, and stopping with fills in flight. No fill may hang or succeed
without a home; lost tasks are reported through ``on_peer_schedule_failed``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from helpers.cluster import BUCKET, HOLD, Cluster, addr_text, hold, peer_info, wait_peer_up
from helpers.fake_peer import FakePeer
from helpers.waiting import WAIT, outcome, wait_until

from gobucket import (
    DuplicateTaskError,
    InvalidArgumentError,
    NoPeerAvailableError,
    PeerLostTaskError,
    Placement,
    TaskBucketGroup,
)
from gobucket.wire.frames import encode_frame


@pytest.fixture
def fakes() -> Iterator[list[FakePeer]]:
    made: list[FakePeer] = []
    try:
        yield made
    finally:
        for fake in made:
            fake.close()


class Reports:
    """Collects on_peer_schedule_failed calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, str, BaseException]] = []

    def __call__(self, peer: str, bucket: str, task_id: str, error: BaseException) -> None:
        with self.lock:
            self.calls.append((peer, bucket, task_id, error))

    def for_task(self, task_id: str) -> list[tuple[str, str, str, BaseException]]:
        with self.lock:
            return [c for c in self.calls if c[2] == task_id]


def full_node(cluster: Cluster, *peers: tuple[str, int], **kwargs: Any) -> TaskBucketGroup:
    bucket = cluster.bucket(max_bucket=1)
    hold(bucket, 1)
    group = cluster.group(bucket, peers=list(peers), **kwargs)
    group.on_peer_schedule_failed = Reports()
    for address in peers:
        wait_peer_up(group, address)
    return group


def is_up(group: TaskBucketGroup, address: tuple[str, int]) -> bool:
    info = peer_info(group, address)
    return info is not None and info.up


def reports_of(group: TaskBucketGroup) -> Reports:
    reports = group.on_peer_schedule_failed
    assert isinstance(reports, Reports)
    return reports


def ack(message: dict[str, Any], ok: bool = True, code: str = "", text: str = "") -> dict[str, Any]:
    reply: dict[str, Any] = {"t": "ack", "rid": message["rid"], "ok": ok}
    if not ok:
        reply.update(code=code, msg=text)
    return reply


# --- a fake peer that answers as told -----------------------------------------------------


def test_fake_peer_ack_is_a_placement_on_it(cluster: Cluster, fakes: list[FakePeer]) -> None:
    fake = FakePeer(on_fill=ack)
    fakes.append(fake)
    group = full_node(cluster, fake.address)
    placement = group.fill(BUCKET, "to-fake", {"x": [1, 2]}, **HOLD, timeout=WAIT)
    assert placement == Placement(False, fake.node, BUCKET, "to-fake", fake.address)
    sent = fake.fills[0]
    assert sent["id"] == "to-fake" and sent["bucket"] == BUCKET
    assert sent["type"] == "time_bomb"
    assert (sent["run_after"], sent["life_span"]) == (60.0, 120.0)
    assert msgpack.unpackb(sent["data"], raw=False) == {"x": [1, 2]}


@pytest.mark.parametrize("code", ["full", "closed", "no_bucket", "internal", "made-up-code"])
def test_a_refusal_falls_through_to_the_next_peer(
    cluster: Cluster, fakes: list[FakePeer], code: str
) -> None:
    refuser = FakePeer(
        loads={BUCKET: [0, 1000]}, on_fill=lambda m: ack(m, ok=False, code=code, text="no")
    )
    fakes.append(refuser)
    b_bucket = cluster.bucket(max_bucket=5)
    b = cluster.group(b_bucket)
    group = full_node(cluster, refuser.address, b.address)
    placement = group.fill(BUCKET, "refused-once", None, **HOLD, timeout=WAIT)
    assert refuser.fill_count() == 1  # it looked roomiest, so it was asked first
    assert placement.node == b.node_id and "refused-once" in b_bucket
    assert reports_of(group).for_task("refused-once") == []  # placed: nothing to report


def test_a_duplicate_refusal_is_not_retried_elsewhere(
    cluster: Cluster, fakes: list[FakePeer]
) -> None:
    fake = FakePeer(loads={BUCKET: [0, 1000]}, on_fill=lambda m: ack(m, False, "duplicate"))
    fakes.append(fake)
    b_bucket = cluster.bucket(max_bucket=5)
    b = cluster.group(b_bucket)
    group = full_node(cluster, fake.address, b.address)
    with pytest.raises(DuplicateTaskError):
        group.fill(BUCKET, "dup-there", None, **HOLD, timeout=WAIT)
    assert len(b_bucket) == 0  # it lives on the fake already: never a second copy


def test_peer_lost_after_the_fill_was_sent_is_reported_not_retried(
    cluster: Cluster, fakes: list[FakePeer]
) -> None:
    silent = FakePeer(loads={BUCKET: [0, 1000]})  # takes fills, never answers them
    fakes.append(silent)
    b_bucket = cluster.bucket(max_bucket=5)
    b = cluster.group(b_bucket)
    group = full_node(cluster, silent.address, b.address)
    future = group.fill_async(BUCKET, "in-flight", None, **HOLD)
    wait_until(lambda: silent.fill_count() == 1, what="the fill to reach the silent peer")
    silent.drop_connections()
    result = outcome(future)
    assert isinstance(result, PeerLostTaskError), repr(result)
    assert "in-flight" not in b_bucket  # it may live on the lost peer: never sent twice
    wait_until(lambda: reports_of(group).for_task("in-flight"), what="the failure report")
    peer, bucket, task_id, error = reports_of(group).for_task("in-flight")[0]
    assert (peer, bucket, task_id) == (addr_text(silent.address), BUCKET, "in-flight")
    assert isinstance(error, PeerLostTaskError)


def test_a_peer_that_stops_answering_pings_fails_its_fills_in_flight(
    cluster: Cluster, fakes: list[FakePeer]
) -> None:
    silent = FakePeer()
    fakes.append(silent)
    group = full_node(cluster, silent.address)
    silent.answer_pings = False
    future = group.fill_async(BUCKET, "unanswered", None, **HOLD)
    result = outcome(future)  # 3 missed pings at 0.2 s: lost, not hanging
    assert isinstance(result, PeerLostTaskError | NoPeerAvailableError), repr(result)
    wait_until(
        lambda: reports_of(group).for_task("unanswered"), what="the unanswered fill reported"
    )


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x03\xc1\xc1\xc1",  # malformed msgpack
        b"\x7f\xff\xff\xff",  # an absurd frame length
        {"t": "pong", "seq": 1, "loads": {"sample": ["x", 1]}},  # invalid loads
        {
            "t": "fill",
            "rid": 1,
            "bucket": "s",
            "id": "x",
            "type": "i",
            "run_after": 0,
            "life_span": 1,
        },  # a request, from a server
        {"t": "gossip"},
    ],
    ids=["malformed", "huge", "bad-pong", "unexpected", "unknown"],
)
def test_a_peer_answering_garbage_is_dropped_and_its_fill_fails(
    cluster: Cluster, fakes: list[FakePeer], garbage: Any
) -> None:
    bad = FakePeer(loads={BUCKET: [0, 1000]}, on_fill=lambda m: garbage)
    fakes.append(bad)
    b_bucket = cluster.bucket(max_bucket=5)
    b = cluster.group(b_bucket)
    group = full_node(cluster, bad.address, b.address)
    result = outcome(group.fill_async(BUCKET, "garbled", None, **HOLD))
    assert isinstance(result, PeerLostTaskError), repr(result)
    assert "garbled" not in b_bucket
    # The link is dropped: the GroupActor marks the peer down (by message) and
    # re-dials it, which the fake accepts, so "down" may already be over: a second
    # handshake proves the drop as well.
    wait_until(
        lambda: bad.handshakes >= 2 or not is_up(group, bad.address),
        what="the garbling peer dropped",
    )
    # Keep it away (re-dialled, it would garble the next fill too), then the good
    # peer, unaffected, takes the next one.
    bad.close()
    wait_until(lambda: not is_up(group, bad.address), what="the garbling peer is down")
    placement = group.fill(BUCKET, "next", None, **HOLD, timeout=WAIT)
    assert placement.node == b.node_id


def test_ack_for_an_unknown_request_is_ignored(cluster: Cluster, fakes: list[FakePeer]) -> None:
    def confused(message: dict[str, Any]) -> bytes:
        stray = encode_frame({"t": "ack", "rid": 987654, "ok": True})
        return stray + encode_frame(ack(message))

    fake = FakePeer(on_fill=confused)
    fakes.append(fake)
    group = full_node(cluster, fake.address)
    placement = group.fill(BUCKET, "stray-ack", None, **HOLD, timeout=WAIT)
    assert placement.node == fake.node
    assert peer_info(group, fake.address).up  # type: ignore[union-attr]


def test_stop_with_fills_in_flight_resolves_every_one(
    cluster: Cluster, fakes: list[FakePeer]
) -> None:
    silent = FakePeer()
    fakes.append(silent)
    group = full_node(cluster, silent.address)
    futures = [group.fill_async(BUCKET, f"pending::{i}", None, **HOLD) for i in range(3)]
    wait_until(lambda: silent.fill_count() == 3, what="three fills in flight")
    group.stop()
    results = [outcome(f) for f in futures]  # none may hang
    assert all(isinstance(r, PeerLostTaskError | NoPeerAvailableError) for r in results), results


# --- the peer's room estimate -------------------------------------------------------------


def test_refused_fills_do_not_use_up_a_peers_room(cluster: Cluster) -> None:
    """A fill the peer refused (bad data) took no room there: the next valid fill fits."""
    b_bucket = cluster.bucket(max_bucket=1)
    b = cluster.group(b_bucket)
    group = full_node(cluster, b.address, ping_interval=30.0)  # one load report only
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidArgumentError):
        group.fill(BUCKET, "too-deep", deep, **HOLD, timeout=WAIT)
    assert len(b_bucket) == 0
    placement = group.fill(BUCKET, "fits", None, **HOLD, timeout=WAIT)
    assert placement.node == b.node_id and "fits" in b_bucket


def test_a_fill_too_big_to_send_does_not_use_up_a_peers_room(cluster: Cluster) -> None:
    b_bucket = cluster.bucket(max_bucket=1)
    b = cluster.group(b_bucket)
    group = full_node(cluster, b.address, ping_interval=30.0, max_frame=4096)
    with pytest.raises((NoPeerAvailableError, InvalidArgumentError)):
        group.fill(BUCKET, "too-big", b"x" * 10_000, **HOLD, timeout=WAIT)
    assert len(b_bucket) == 0
    placement = group.fill(BUCKET, "small", None, **HOLD, timeout=WAIT)
    assert placement.node == b.node_id and "small" in b_bucket
