"""TaskBucketGroup's facade: construction, life, local-first fills, overflow to a peer,
time bombs over the wire, bad data, duplicates, NoPeerAvailableError, peers(), callbacks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pykka
import pytest
from helpers.cluster import (
    BUCKET,
    HOLD,
    Cluster,
    addr_text,
    free_port,
    hold,
    peer_info,
    wait_peer_load,
    wait_peer_up,
)
from helpers.recording import NullExecutor, RecordingExecutor
from helpers.waiting import WAIT, wait_until

from gobucket import (
    BucketConfig,
    BucketFullError,
    DuplicateTaskError,
    GoBucketError,
    InvalidArgumentError,
    NoPeerAvailableError,
    PeerInfo,
    Placement,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)


class Pair:
    """Node A (local bucket full) overflowing to node B."""

    def __init__(
        self, cluster: Cluster, b_max: int = 10, b_executor: Any = None, **a_kwargs: Any
    ) -> None:
        self.b_executor = b_executor or RecordingExecutor()
        self.b_bucket = cluster.bucket(max_bucket=b_max, executor=self.b_executor)
        self.b = cluster.group(self.b_bucket)
        self.a_bucket = cluster.bucket(max_bucket=1)
        self.held = hold(self.a_bucket, 1)
        self.a = cluster.group(self.a_bucket, peers=[self.b.address], **a_kwargs)
        wait_peer_up(self.a, self.b.address)


# --- construction -------------------------------------------------------------------------


@pytest.fixture
def spare_bucket() -> Iterator[TaskBucket]:
    bucket = TaskBucket(BucketConfig(max_bucket=1, name=BUCKET), NullExecutor())
    yield bucket
    bucket.close(grace=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"peers": "127.0.0.1:6666"},
        {"peers": ["127.0.0.1"]},
        {"peers": ["127.0.0.1:0"]},
        {"peers": ["not an address:x"]},
        {"port": -1},
        {"port": 65536},
        {"port": "6666"},
        {"ping_interval": 0},
        {"ping_interval": -1.0},
        {"cluster": ""},
    ],
)
def test_constructor_refuses_bad_arguments(
    spare_bucket: TaskBucket, kwargs: dict[str, Any]
) -> None:
    args: dict[str, Any] = {"port": 0, "discovery": False, **kwargs}
    with pytest.raises(InvalidArgumentError):
        TaskBucketGroup({BUCKET: spare_bucket}, **args)


def test_constructor_refuses_bad_bucket_maps(spare_bucket: TaskBucket) -> None:
    for buckets in ({}, [(BUCKET, spare_bucket)], {BUCKET: object()}, {"": spare_bucket}):
        with pytest.raises(InvalidArgumentError):
            TaskBucketGroup(buckets, port=0, discovery=False)  # type: ignore[arg-type]


def test_start_binds_and_reports_the_address(cluster: Cluster) -> None:
    group = cluster.group(cluster.bucket(), start=False)
    assert group.peers() == []
    assert group.start() is group
    host, port = group.address
    assert host == "127.0.0.1"
    assert port > 0
    assert group.start().address == (host, port)  # a second start changes nothing
    with socket.create_connection(group.address, timeout=WAIT):
        pass


def test_get_bucket_returns_the_local_bucket(cluster: Cluster) -> None:
    bucket = cluster.bucket()
    other = cluster.bucket(name="other")
    group = cluster.group({BUCKET: bucket, "other": other})
    assert group.get_bucket(BUCKET) is bucket
    assert group.get_bucket("other") is other
    with pytest.raises(GoBucketError):
        group.get_bucket("missing")
    with pytest.raises(GoBucketError):
        group.fill("missing", "x", None)


def test_loads_reports_alive_and_max_per_bucket(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=7)
    group = cluster.group(bucket)
    hold(bucket, 3)
    assert group.loads() == {BUCKET: [3, 7]}


def test_context_manager_starts_and_stops(cluster: Cluster) -> None:
    bucket = cluster.bucket()
    group = TaskBucketGroup({BUCKET: bucket}, port=0, secret="k", host="127.0.0.1", discovery=False)
    with group as entered:
        assert entered is group
        address = group.address
        assert address[1] > 0
        assert group.fill(BUCKET, "cm::1", None).local
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2.0).close()
    assert not bucket.closed  # stop leaves the buckets open
    group.stop()  # idempotent


# --- local first ------------------------------------------------------------------------


def test_fill_goes_to_the_local_bucket_while_it_has_room(cluster: Cluster) -> None:
    recorder = RecordingExecutor()
    local = cluster.bucket(max_bucket=2, executor=recorder)
    peer_bucket = cluster.bucket(max_bucket=10)
    peer = cluster.group(peer_bucket)
    group = cluster.group(local, peers=[peer.address])
    wait_peer_up(group, peer.address)
    placement = group.fill(BUCKET, "process::1", {"name": "Johnson"})
    assert placement == Placement(True, group.node_id, BUCKET, "process::1", None)
    wait_until(lambda: recorder.record("process::1"), what="the local task to run")
    assert recorder.record("process::1")[1] == {"name": "Johnson"}  # type: ignore[index]
    assert len(peer_bucket) == 0


def test_fill_async_of_a_local_fill_is_already_resolved(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=2)
    group = cluster.group(bucket)
    future = group.fill_async(BUCKET, "async::1", [1, 2], **HOLD)
    assert isinstance(future, pykka.Future)
    placement = future.get(timeout=0)
    assert placement.local and placement.task_id == "async::1"
    assert "async::1" in bucket


def test_local_duplicate_is_refused_at_once(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=2)
    group = cluster.group(bucket)
    group.fill(BUCKET, "dup", None, **HOLD)
    with pytest.raises(DuplicateTaskError):
        group.fill(BUCKET, "dup", None, **HOLD)
    assert len(bucket) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task_type": TaskType.TIME_BOMB, "run_after": 3.0, "life_span": 3.0},
        {"task_type": TaskType.IMMEDIATE, "run_after": 1.0},
        {"life_span": 0},
        {"life_span": -1},
        {"task_type": "sometime"},
    ],
)
def test_bad_fill_arguments_raise_at_once(cluster: Cluster, kwargs: dict[str, Any]) -> None:
    pair = Pair(cluster)
    with pytest.raises(InvalidArgumentError):
        pair.a.fill_async(BUCKET, "bad::args", None, **kwargs)
    assert "bad::args" not in pair.b_bucket


@pytest.mark.parametrize("task_id", ["", None, 5])
def test_bad_task_id_raises_at_once(cluster: Cluster, task_id: Any) -> None:
    group = cluster.group(cluster.bucket())
    with pytest.raises(InvalidArgumentError):
        group.fill(BUCKET, task_id, None)


# --- data that msgpack cannot carry -------------------------------------------------------


@pytest.mark.parametrize(
    "data", [object(), {1, 2}, {"nested": {"a", "b"}}, [threading.Lock()], 2**70]
)
@pytest.mark.parametrize("local_full", [False, True], ids=["local-room", "local-full"])
def test_data_msgpack_cannot_carry_is_refused_at_once(
    cluster: Cluster, data: Any, local_full: bool
) -> None:
    peer_bucket = cluster.bucket(max_bucket=5)
    peer = cluster.group(peer_bucket)
    local = cluster.bucket(max_bucket=1)
    if local_full:
        hold(local, 1)
    group = cluster.group(local, peers=[peer.address])
    wait_peer_up(group, peer.address)
    with pytest.raises(InvalidArgumentError):
        group.fill_async(BUCKET, "unsendable", data)
    assert "unsendable" not in local
    assert "unsendable" not in peer_bucket
    assert len(local) == (1 if local_full else 0)


# --- overflow to a peer -------------------------------------------------------------------


def test_overflow_goes_to_the_peer_and_waits_for_its_ack(cluster: Cluster) -> None:
    pair = Pair(cluster)
    data = {"name": "Johnson", "tags": ["a", "b"], "blob": b"\x00\xff", "n": 3, "f": 1.5}
    placement = pair.a.fill(BUCKET, "process::1", data, timeout=WAIT)
    assert placement == Placement(False, pair.b.node_id, BUCKET, "process::1", pair.b.address)
    assert placement.node != pair.a.node_id
    # acknowledged means accepted: it is already in the peer's bucket or has run there
    record = wait_until(lambda: pair.b_executor.record("process::1"), what="the remote run")
    assert record[1] == data
    assert "process::1" not in pair.a_bucket


def test_overflow_time_bomb_runs_on_the_peer_after_run_after(cluster: Cluster) -> None:
    pair = Pair(cluster)
    started = time.monotonic()
    placement = pair.a.fill(
        BUCKET, "bomb::1", {"k": 1}, task_type=TaskType.TIME_BOMB, run_after=0.5, life_span=3.0
    )
    assert not placement.local
    assert "bomb::1" in pair.b_bucket or pair.b_executor.record("bomb::1")
    record = wait_until(lambda: pair.b_executor.record("bomb::1"), what="the time bomb")
    assert record[2] - started >= 0.45, "the remote time bomb ran before run_after"
    assert record[1] == {"k": 1}
    wait_until(lambda: "bomb::1" in pair.b_executor.finished, what="on_finish on the peer")


def test_overflow_time_bomb_accepts_timedeltas(cluster: Cluster) -> None:
    pair = Pair(cluster)
    placement = pair.a.fill(
        BUCKET,
        "bomb::td",
        None,
        task_type=TaskType.TIME_BOMB,
        run_after=timedelta(milliseconds=200),
        life_span=timedelta(seconds=3),
        timeout=WAIT,
    )
    assert placement.node == pair.b.node_id
    wait_until(lambda: pair.b_executor.record("bomb::td"), what="the time bomb to run")


@pytest.mark.parametrize(
    "data",
    [
        None,
        True,
        0,
        2**64 - 1,
        -(2**63),
        1e308,
        -0.5,
        "",
        "ünïcødé ✓",
        b"",
        b"\x00" * 1000,
        [],
        {},
        {"a": {"b": {"c": [1, [2, [3]]]}}},
        {"bytes": b"\xff", "str": "\xff"},
        {1: "int keys survive"},
    ],
)
def test_task_data_survives_the_wire(cluster: Cluster, data: Any) -> None:
    pair = Pair(cluster)
    pair.a.fill(BUCKET, "data", data, timeout=WAIT)
    record = wait_until(lambda: pair.b_executor.record("data"), what="the remote run")
    assert record[1] == data
    assert type(record[1]) is type(data)


def test_a_large_payload_crosses_in_one_piece(cluster: Cluster) -> None:
    pair = Pair(cluster)
    blob = bytes(range(256)) * 2048  # 512 KiB, many TCP reads
    pair.a.fill(BUCKET, "blob", {"blob": blob}, timeout=WAIT)
    record = wait_until(lambda: pair.b_executor.record("blob"), what="the remote run")
    assert record[1] == {"blob": blob}


def test_overflow_keeps_the_life_span_on_the_peer(cluster: Cluster) -> None:
    pair = Pair(cluster)
    pair.a.fill(BUCKET, "short", None, task_type=TaskType.TIME_BOMB, run_after=0.2, life_span=60)
    pair.a.fill(BUCKET, "long", None, **HOLD)
    assert "long" in pair.b_bucket
    wait_until(lambda: pair.b_executor.record("short"), what="the short bomb to run")
    assert pair.b_executor.record("long") is None


def test_fill_async_resolves_to_the_peers_placement(cluster: Cluster) -> None:
    pair = Pair(cluster)
    futures = [pair.a.fill_async(BUCKET, f"async::{i}", i, **HOLD) for i in range(5)]
    placements = [f.get(timeout=WAIT) for f in futures]
    assert [p.task_id for p in placements] == [f"async::{i}" for i in range(5)]
    assert all(not p.local and p.node == pair.b.node_id for p in placements)
    assert len(pair.b_bucket) == 5


def test_remote_duplicate_is_refused_and_not_placed_twice(cluster: Cluster) -> None:
    pair = Pair(cluster)
    pair.a.fill(BUCKET, "twice", None, **HOLD)
    with pytest.raises(DuplicateTaskError):
        pair.a.fill(BUCKET, "twice", None, **HOLD, timeout=WAIT)
    assert len(pair.b_bucket) == 1


def test_data_the_peer_cannot_decode_is_refused_not_lost(cluster: Cluster) -> None:
    pair = Pair(cluster)
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidArgumentError):
        pair.a.fill(BUCKET, "deep", deep, **HOLD, timeout=WAIT)
    assert "deep" not in pair.b_bucket


# --- nowhere to go --------------------------------------------------------------------------


def test_no_peer_and_local_full_raises_no_peer_available(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=1)
    hold(bucket, 1)
    group = cluster.group(bucket)
    with pytest.raises(NoPeerAvailableError) as info:
        group.fill(BUCKET, "nowhere", None, timeout=WAIT)
    assert isinstance(info.value, BucketFullError)
    assert "nowhere" not in bucket


def test_peer_full_by_its_report_raises_no_peer_available(cluster: Cluster) -> None:
    pair = Pair(cluster, b_max=2)
    hold(pair.b_bucket, 2)
    wait_peer_load(pair.a, pair.b.address, (2, 2))
    with pytest.raises(NoPeerAvailableError):
        pair.a.fill(BUCKET, "nowhere", None, timeout=WAIT)
    assert "nowhere" not in pair.b_bucket and len(pair.b_bucket) == 2


def test_peer_fills_up_then_no_peer_available(cluster: Cluster) -> None:
    pair = Pair(cluster, b_max=3)
    outcomes: list[Any] = []
    for i in range(5):
        try:
            outcomes.append(pair.a.fill(BUCKET, f"t{i}", None, **HOLD, timeout=WAIT))
        except NoPeerAvailableError as error:
            outcomes.append(error)
    assert all(isinstance(o, Placement) and not o.local for o in outcomes[:3])
    assert all(isinstance(o, NoPeerAvailableError) for o in outcomes[3:])
    assert len(pair.b_bucket) == 3


def test_fill_before_start_with_local_full_does_not_succeed(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=1)
    hold(bucket, 1)
    group = cluster.group(bucket, start=False)
    with pytest.raises(GoBucketError):
        group.fill(BUCKET, "early", None, timeout=WAIT)
    assert "early" not in bucket


def test_fill_after_stop_with_local_room_still_fills_locally(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=2)
    group = cluster.group(bucket)
    group.stop()
    assert group.fill(BUCKET, "after", None, **HOLD).local
    assert "after" in bucket


def test_fill_after_stop_with_local_full_raises_no_peer_available(cluster: Cluster) -> None:
    """A stopped group has nowhere to send overflow: NoPeerAvailableError, as documented."""
    pair = Pair(cluster)
    pair.a.stop()
    with pytest.raises(NoPeerAvailableError):
        pair.a.fill(BUCKET, "after-stop", None, timeout=WAIT)
    assert "after-stop" not in pair.b_bucket


def test_a_stopped_peer_is_marked_down_and_gets_nothing(cluster: Cluster) -> None:
    pair = Pair(cluster)
    pair.b.stop()
    wait_until(
        lambda: (info := peer_info(pair.a, pair.b.address)) is not None and not info.up,
        what="the stopped peer to be marked down",
    )
    with pytest.raises(NoPeerAvailableError):
        pair.a.fill(BUCKET, "to-the-void", None, timeout=WAIT)
    assert "to-the-void" not in pair.b_bucket


def test_a_stopped_peers_entry_forgets_its_loads(cluster: Cluster) -> None:
    pair = Pair(cluster)
    assert peer_info(pair.a, pair.b.address).loads  # type: ignore[union-attr]
    pair.b.stop()
    info = wait_until(
        lambda: (i := peer_info(pair.a, pair.b.address)) is not None and not i.up and i,
        what="the stopped peer to be marked down",
    )
    assert info.loads == {}
    assert info.free(BUCKET) is None


def test_a_node_listing_itself_never_overflows_to_itself(cluster: Cluster) -> None:
    port = free_port()
    bucket = cluster.bucket(max_bucket=1)
    hold(bucket, 1)
    group = cluster.group(bucket, peers=[("127.0.0.1", port)], port=port)
    wait_until(lambda: peer_info(group, ("127.0.0.1", port)), what="the self entry")
    with pytest.raises(NoPeerAvailableError):
        group.fill(BUCKET, "self", None, **HOLD, timeout=WAIT)
    assert not any(i.up for i in group.peers())
    assert len(bucket) == 1


def test_a_static_peer_that_comes_back_is_dialled_again(cluster: Cluster) -> None:
    first = cluster.bucket(max_bucket=5)
    b = cluster.group(first)
    address = b.address
    a_bucket = cluster.bucket(max_bucket=1)
    hold(a_bucket, 1)
    a = cluster.group(a_bucket, peers=[address])
    wait_peer_up(a, address)
    b.stop()
    wait_until(lambda: not peer_info(a, address).up, what="peer down")  # type: ignore[union-attr]
    second = cluster.bucket(max_bucket=5)
    again = TaskBucketGroup(
        {BUCKET: second},
        port=address[1],
        ping_interval=0.2,
        secret="cluster-key",
        host="127.0.0.1",
        discovery=False,
    )
    cluster.groups.append(again)
    again.start()
    info = wait_peer_up(a, address)
    assert info.node == again.node_id
    placement = a.fill(BUCKET, "back", None, **HOLD, timeout=WAIT)
    assert placement.node == again.node_id and "back" in second


# --- peers() and the failure callback ------------------------------------------------------


def test_peers_describes_each_peer(cluster: Cluster) -> None:
    pair = Pair(cluster, b_max=6)
    hold(pair.b_bucket, 2)
    info = wait_peer_load(pair.a, pair.b.address, (2, 6))
    assert isinstance(info, PeerInfo)
    assert info.address == pair.b.address
    assert info.node == pair.b.node_id
    assert info.up is True
    assert info.source == "static"
    assert info.buckets == (BUCKET,)
    assert info.loads == {BUCKET: (2, 6)}
    assert info.free(BUCKET) == 4
    assert info.free("unknown") is None
    assert info.last_seen is not None and time.monotonic() - info.last_seen < WAIT
    assert len(pair.a.peers()) == 1


def test_last_seen_advances_with_each_load_report(cluster: Cluster) -> None:
    pair = Pair(cluster)
    first = wait_peer_up(pair.a, pair.b.address).last_seen
    assert first is not None
    wait_until(
        lambda: (peer_info(pair.a, pair.b.address).last_seen or 0) > first,  # type: ignore[union-attr]
        what="a newer load report",
    )


def test_peers_lists_an_unreachable_static_peer_as_down(cluster: Cluster) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    group = cluster.group(cluster.bucket(), peers=[f"127.0.0.1:{free_port}"])
    info = wait_until(lambda: peer_info(group, ("127.0.0.1", free_port)), what="the peer entry")
    assert info.up is False and info.node is None and info.loads == {}


def test_peer_refusal_calls_on_peer_schedule_failed(cluster: Cluster) -> None:
    # A long ping interval keeps A's view of B stale: B looks empty but is full.
    pair = Pair(cluster, b_max=2, ping_interval=30.0)
    reports: list[tuple[str, str, str, BaseException]] = []
    done = threading.Event()

    def failed(peer: str, bucket: str, task_id: str, error: BaseException) -> None:
        reports.append((peer, bucket, task_id, error))
        done.set()

    pair.a.on_peer_schedule_failed = failed
    hold(pair.b_bucket, 2)
    with pytest.raises(NoPeerAvailableError) as info:
        pair.a.fill(BUCKET, "refused", None, **HOLD, timeout=WAIT)
    assert "full" in str(info.value)
    assert done.wait(WAIT)
    assert len(reports) == 1
    peer, bucket, task_id, error = reports[0]
    assert (peer, bucket, task_id) == (addr_text(pair.b.address), BUCKET, "refused")
    assert isinstance(error, NoPeerAvailableError)
    assert "refused" not in pair.b_bucket


def test_a_raising_callback_does_not_break_the_group(cluster: Cluster) -> None:
    pair = Pair(cluster, b_max=1, ping_interval=30.0)
    calls: list[str] = []

    def failed(peer: str, bucket: str, task_id: str, error: BaseException) -> None:
        calls.append(task_id)
        raise RuntimeError("callback bug")

    pair.a.on_peer_schedule_failed = failed
    hold(pair.b_bucket, 1)
    for task_id in ("x1", "x2"):
        with pytest.raises(NoPeerAvailableError):
            pair.a.fill(BUCKET, task_id, None, **HOLD, timeout=WAIT)
    wait_until(lambda: len(calls) == 2, what="both callbacks")
    assert peer_info(pair.a, pair.b.address) is not None  # the group still answers
    pair.a_bucket.drain(pair.held[0])
    assert pair.a.fill(BUCKET, "x3", None, **HOLD, timeout=WAIT).local


# --- security at the group level ------------------------------------------------------------


def _refusals(caplog: pytest.LogCaptureFixture) -> int:
    """How many handshakes the dialling side saw refused."""
    return sum(1 for r in caplog.records if "refused the handshake" in r.getMessage())


@pytest.mark.parametrize(
    ("a_kwargs", "b_kwargs"),
    [
        ({"secret": "cluster-key"}, {"secret": "another-key"}),
        ({"secret": None}, {"secret": "cluster-key"}),
        ({"secret": "cluster-key"}, {"secret": None, "peers": ["127.0.0.1:1"]}),
        ({"cluster": "blue"}, {"cluster": "green"}),
        ({"secret": None}, {"secret": None, "peers": ["127.0.0.2:1"]}),
    ],
    ids=["wrong-secret", "no-secret-vs-secret", "secret-vs-no-secret", "cluster", "not-listed"],
)
def test_a_refused_peer_never_comes_up_and_takes_no_overflow(
    cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
    a_kwargs: dict[str, Any],
    b_kwargs: dict[str, Any],
) -> None:
    caplog.set_level("DEBUG", logger="gobucket")
    b_bucket = cluster.bucket(max_bucket=10)
    b = cluster.group(b_bucket, **b_kwargs)
    a_bucket = cluster.bucket(max_bucket=1)
    hold(a_bucket, 1)
    a = cluster.group(a_bucket, peers=[b.address], **a_kwargs)
    # two refused handshakes (the first, and a re-dial): positive evidence of refusal
    wait_until(lambda: _refusals(caplog) >= 2, what="refused handshakes")
    info = peer_info(a, b.address)
    assert info is not None and info.up is False and info.node is None
    with pytest.raises(NoPeerAvailableError):
        a.fill(BUCKET, "overflow", None, **HOLD, timeout=WAIT)
    assert len(b_bucket) == 0
    assert not any(i.up for i in b.peers())


def test_nodes_without_secret_listing_each_other_can_overflow(cluster: Cluster) -> None:
    b_bucket = cluster.bucket(max_bucket=5)
    b = cluster.group(b_bucket, secret=None, peers=["127.0.0.1:1"])
    a_bucket = cluster.bucket(max_bucket=1)
    hold(a_bucket, 1)
    a = cluster.group(a_bucket, secret=None, peers=[b.address])
    wait_peer_up(a, b.address)
    placement = a.fill(BUCKET, "open", None, **HOLD, timeout=WAIT)
    assert placement.node == b.node_id and "open" in b_bucket


def test_bytes_secret_works_like_str_secret(cluster: Cluster) -> None:
    b_bucket = cluster.bucket(max_bucket=5)
    b = cluster.group(b_bucket, secret=b"cluster-key")
    a_bucket = cluster.bucket(max_bucket=1)
    hold(a_bucket, 1)
    a = cluster.group(a_bucket, secret="cluster-key", peers=[b.address])
    wait_peer_up(a, b.address)
    assert a.fill(BUCKET, "bytes", None, **HOLD, timeout=WAIT).node == b.node_id


# --- waiting for peers ----------------------------------------------------------------------


def test_wait_for_peers_returns_once_a_peer_reported_the_bucket(cluster: Cluster) -> None:
    b = cluster.group(cluster.bucket())
    # a's peer b comes up while a waits: the GroupActor answers as it learns of it
    a = cluster.group(cluster.bucket(max_bucket=1), peers=[b.address])
    assert a.wait_for_peers(bucket=BUCKET, timeout=WAIT)
    info = peer_info(a, b.address)
    assert info is not None and info.up and info.free(BUCKET) is not None
    assert a.wait_for_peers(0, timeout=0)  # nothing to wait for


def test_wait_for_peers_gives_up_after_its_timeout_and_on_stop(cluster: Cluster) -> None:
    lonely = cluster.group(cluster.bucket(), peers=[addr_text(("127.0.0.1", free_port()))])
    assert lonely.wait_for_peers(timeout=0.2) is False
    answers: list[bool] = []
    waiter = threading.Thread(target=lambda: answers.append(lonely.wait_for_peers(timeout=WAIT)))
    waiter.start()
    wait_until(lambda: waiter.is_alive(), what="the waiter is waiting")
    lonely.stop()
    waiter.join(WAIT)
    assert not waiter.is_alive() and answers == [False]


def test_wait_for_peers_refuses_bad_arguments_and_an_unstarted_group(cluster: Cluster) -> None:
    group = cluster.group(cluster.bucket(), start=False)
    with pytest.raises(GoBucketError, match="start"):
        group.wait_for_peers(timeout=0)
    started = cluster.group(cluster.bucket(name="other"))
    for bad in ({"count": -1}, {"count": 1.5}, {"count": True}, {"bucket": 3}, {"timeout": -1}):
        with pytest.raises(InvalidArgumentError):
            started.wait_for_peers(**bad)
