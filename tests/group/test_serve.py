"""gobucket.serve: what a node answers its peers.

A FILL never makes the network loop wait for a busy bucket; its task data is
decoded once; every refusal keeps its code.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from helpers.cluster import BUCKET, Cluster, hold
from helpers.raw_peer import RawPeer
from helpers.recording import RecordingExecutor
from helpers.waiting import WAIT, wait_until

from gobucket import TaskBucket
from gobucket.serve import BucketServer
from gobucket.wire import frames, protocol
from gobucket.wire.connection import PeerHello
from gobucket.wire.frames import pack

PEER = PeerHello("peer", "default", 0)


@contextlib.contextmanager
def busy(bucket: TaskBucket) -> Iterator[None]:
    """The bucket's actor is taken by this thread, as while one of its handlers runs.

    Its run lock is held (never waited on by the runtime: a sender that finds it
    taken leaves its message queued). On the way out, asking the bucket handles
    what queued meanwhile, on this thread.
    """
    inbox: Any = bucket.actor_ref.actor_inbox
    assert inbox._run.acquire(False)
    try:
        yield
    finally:
        inbox._run.release()
        len(bucket)


def test_a_fill_into_a_busy_bucket_does_not_hold_up_the_network_loop(cluster: Cluster) -> None:
    slow = cluster.bucket(name="slow")
    other = cluster.bucket(name="other")
    server = cluster.group({"slow": slow, "other": other})
    fill = {"type": "time_bomb", "run_after": 60.0, "life_span": 120.0}
    with RawPeer(server.address) as raw:
        raw.handshake()
        with busy(slow):
            raw.send({"t": "fill", "rid": 1, "bucket": "slow", "id": "s", "data": None, **fill})
            # The loop goes on serving: the other bucket's fill is answered first.
            raw.send({"t": "fill", "rid": 2, "bucket": "other", "id": "o", "data": None, **fill})
            first = raw.recv(timeout=WAIT)
            assert first == {"t": "ack", "rid": 2, "ok": True}
        # Once the actor is free it takes the fill, and the answer goes out from the loop.
        second = raw.recv(timeout=WAIT)
        assert second == {"t": "ack", "rid": 1, "ok": True}
    assert "s" in slow and "o" in other


def test_a_busy_buckets_refusal_is_answered_when_it_comes(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=1)
    hold(bucket, 1)
    server = BucketServer({BUCKET: bucket}, frames.DEFAULT_MAX_FRAME)
    answers: list[tuple[bool, str, str]] = []
    done = threading.Event()

    def answer(ok: bool, code: str, text: str) -> None:
        answers.append((ok, code, text))
        done.set()

    with busy(bucket):
        server.serve_fill(PEER, protocol.Fill(1, BUCKET, "late", "immediate", 0.0, 5.0), answer)
        assert answers == []  # queued behind the busy actor; nobody waited
    assert done.wait(WAIT)
    assert answers[0][:2] == (False, "full")


UNUSUAL: list[Any] = [
    {1: b"\x00\xff", "nested": [[{"x": None}]], "big": 2**64 - 1, "neg": -(2**63)},
    [1.5, float("inf"), "ünïcødé", True, False, b""],
    "",
    0,
]


@pytest.mark.parametrize("data", UNUSUAL)
def test_task_data_is_decoded_once_and_arrives_as_sent(
    cluster: Cluster, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = RecordingExecutor()
    server = cluster.group(cluster.bucket(executor=executor))
    raw_data = pack(data)
    bodies: list[bytes] = []
    unpackb = msgpack.unpackb

    def counting(body: bytes, **options: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():  # not RawPeer's own
            bodies.append(bytes(body))
        return unpackb(body, **options)

    with RawPeer(server.address) as raw:
        raw.handshake()
        monkeypatch.setattr(frames.msgpack, "unpackb", counting)
        ack = raw.fill("odd", raw_data, type="immediate", run_after=0.0, life_span=5.0)
        monkeypatch.setattr(frames.msgpack, "unpackb", unpackb)
    assert ack == {"t": "ack", "rid": 1, "ok": True}
    # One decode of the FILL frame, one of its data: the data's own bytes, not a copy
    # (the handshake's last frame may be decoded meanwhile too).
    fill_frames = [body for body in bodies if b"\xa4fill" in body]
    assert len(fill_frames) == 1
    assert [body for body in bodies if body not in fill_frames and raw_data in body] == [raw_data]
    assert wait_until(lambda: executor.record("odd") is not None)
    record = executor.record("odd")
    assert record is not None and record[1] == data


def test_refusals_keep_their_codes(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=2)
    closed = cluster.bucket(name="closed")
    closed.close()
    server = BucketServer({BUCKET: bucket, "closed": closed}, frames.DEFAULT_MAX_FRAME)

    def serve(
        task_id: str, bucket: str = BUCKET, data: Any = None, **fields: Any
    ) -> tuple[bool, str]:
        spec: dict[str, Any] = {"task_type": "time_bomb", "run_after": 60.0, "life_span": 120.0}
        spec.update(fields)
        answers: list[tuple[bool, str, str]] = []
        fill = protocol.Fill(1, bucket, task_id, data=data, **spec)
        server.serve_fill(PEER, fill, lambda *a: answers.append(a))
        assert len(answers) == 1  # the bucket was free: answered before serve_fill returned
        ok, code, _text = answers[0]
        return ok, code

    assert serve("a") == (True, "")
    assert serve("a") == (False, "duplicate")
    assert serve("b", bucket="nope") == (False, "no_bucket")
    assert serve("b", data=b"\xc1") == (False, "bad_data")
    assert serve("b", data="not bytes") == (False, "bad_data")
    assert serve("b", task_type="someday") == (False, "bad_data")
    assert serve("b", run_after=5.0, life_span=1.0) == (False, "bad_data")
    assert serve("b", life_span=-1.0) == (False, "bad_data")
    assert serve("", life_span=5.0) == (False, "bad_data")
    assert serve("b", bucket="closed") == (False, "closed")
    assert serve("b") == (True, "")
    assert serve("c") == (False, "full")


def test_loads_report_a_closed_bucket_full(cluster: Cluster) -> None:
    bucket = cluster.bucket(max_bucket=3)
    hold(bucket, 1)
    closed = cluster.bucket(name="closed", max_bucket=4)
    closed.close()
    server = BucketServer({BUCKET: bucket, "closed": closed}, frames.DEFAULT_MAX_FRAME)
    assert server.loads() == {BUCKET: [1, 3], "closed": [4, 4]}


def test_loads_never_wait_for_a_busy_bucket(cluster: Cluster) -> None:
    # PONG reports loads from the network loop: a bucket whose actor is busy (say,
    # rescuing 100,000 tasks) must not stall every ping of the node.
    bucket = cluster.bucket(max_bucket=3)
    hold(bucket, 2)
    server = BucketServer({BUCKET: bucket}, frames.DEFAULT_MAX_FRAME)
    got: list[dict[str, list[int]]] = []
    with busy(bucket):
        reader = threading.Thread(target=lambda: got.append(server.loads()), daemon=True)
        reader.start()
        reader.join(WAIT)
        assert not reader.is_alive(), "loads() waited for the busy bucket's actor"
    assert got == [{BUCKET: [2, 3]}]
