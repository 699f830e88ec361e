"""Buckets and groups for one test (torn down after it), and waits on what a group sees."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from gobucket import (
    BucketConfig,
    Executor,
    PeerInfo,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)
from helpers.recording import NullExecutor
from helpers.waiting import WAIT, wait_until

SECRET = "cluster-key"
BUCKET = "sample"

HOLD: dict[str, Any] = {"task_type": TaskType.TIME_BOMB, "run_after": 60.0, "life_span": 120.0}
"""Fill keyword arguments for a task that keeps its slot for the whole test."""


def addr_text(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hold(bucket: TaskBucket, count: int, prefix: str = "hold") -> list[str]:
    """Fill ``count`` long-lived time bombs directly into ``bucket`` (to make it full)."""
    ids = [f"{prefix}-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
    for task_id in ids:
        bucket.fill(TaskType.TIME_BOMB, task_id, None, run_after=60.0, life_span=120.0)
    return ids


def peer_info(group: TaskBucketGroup, address: tuple[str, int]) -> PeerInfo | None:
    """What ``group`` knows of the peer at ``address`` (None if it does not know it)."""
    for info in group.peers():
        if tuple(info.address) == tuple(address):
            return info
    return None


def wait_peer_up(
    group: TaskBucketGroup,
    address: tuple[str, int],
    bucket: str | None = BUCKET,
    timeout: float = WAIT,
) -> PeerInfo:
    """Wait until ``group`` sees the peer up and (unless ``bucket`` is None) with its load."""

    def ready() -> PeerInfo | None:
        info = peer_info(group, address)
        if info is None or not info.up:
            return None
        if bucket is not None and bucket not in info.loads:
            return None
        return info

    return wait_until(ready, timeout, what=f"peer {address} up with loads")


def wait_peer_load(
    group: TaskBucketGroup, address: tuple[str, int], load: tuple[int, int], bucket: str = BUCKET
) -> PeerInfo:
    """Wait until ``group``'s latest report from the peer shows ``load`` = (alive, max)."""

    def ready() -> PeerInfo | None:
        info = peer_info(group, address)
        if info is not None and info.up and info.loads.get(bucket) == tuple(load):
            return info
        return None

    return wait_until(ready, what=f"peer {address} reporting {load} for {bucket!r}")


class Cluster:
    """Builds buckets and groups for one test and tears all of them down afterwards."""

    def __init__(self) -> None:
        self.buckets: list[TaskBucket] = []
        self.groups: list[TaskBucketGroup] = []

    def bucket(
        self,
        max_bucket: int = 8,
        *,
        name: str = BUCKET,
        executor: Executor | None = None,
        life_span: float = 120.0,
        run_after: float = 60.0,
    ) -> TaskBucket:
        config = BucketConfig(
            max_bucket=max_bucket, name=name, life_span=life_span, run_after=run_after
        )
        bucket = TaskBucket(config, executor or NullExecutor())
        self.buckets.append(bucket)
        return bucket

    def group(
        self,
        buckets: dict[str, TaskBucket] | TaskBucket,
        peers: Iterable[str | tuple[str, int]] = (),
        *,
        secret: str | bytes | None = SECRET,
        ping_interval: float = 0.2,
        cluster: str = "default",
        host: str = "127.0.0.1",
        port: int = 0,
        start: bool = True,
        **kwargs: Any,
    ) -> TaskBucketGroup:
        if isinstance(buckets, TaskBucket):
            buckets = {BUCKET: buckets}
        peer_list = [p if isinstance(p, str) else addr_text(p) for p in peers]
        # Static peers only: mDNS would let nodes of other tests on this host join in.
        kwargs.setdefault("discovery", False)
        group = TaskBucketGroup(
            buckets,
            peers=peer_list,
            port=port,
            ping_interval=ping_interval,
            secret=secret,
            cluster=cluster,
            host=host,
            **kwargs,
        )
        self.groups.append(group)
        if start:
            group.start()
        return group

    def close(self) -> None:
        errors: list[BaseException] = []
        for group in reversed(self.groups):
            try:
                group.stop()
            except BaseException as error:  # keep tearing down the rest
                errors.append(error)
        for bucket in self.buckets:
            try:
                bucket.close(grace=0)
            except BaseException as error:
                errors.append(error)
        if errors:
            raise errors[0]


def close_all(buckets: list[TaskBucket], wait_for: float = 20.0, **close: Any) -> None:
    """Close every bucket (``close(**close)``) on a daemon thread.

    A library bug that hangs close() must fail the test, not hang the session.
    """
    hung = []
    for bucket in buckets:
        closer = threading.Thread(target=bucket.close, kwargs=close, daemon=True)
        closer.start()
        closer.join(wait_for)
        if closer.is_alive():
            hung.append(bucket)
    assert not hung, f"close() hung for {hung}"
