"""AsyncTaskBucketGroup: a :class:`~gobucket.TaskBucketGroup` for asyncio code (it forwards)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import pykka

from gobucket.actors import messages as m
from gobucket.actors.group import ScheduleFailed
from gobucket.aio._bridge import ask_soon
from gobucket.aio.bucket import AsyncTaskBucket
from gobucket.bucket import TaskBucket
from gobucket.config import Duration, FillFields, TaskType
from gobucket.errors import (
    BucketClosedError,
    GoBucketError,
    InvalidArgumentError,
    NoPeerAvailableError,
)
from gobucket.group import TaskBucketGroup
from gobucket.types import PeerInfo, Placement

__all__ = ["AsyncTaskBucketGroup"]


class AsyncTaskBucketGroup:
    """A :class:`~gobucket.TaskBucketGroup` to use from asyncio code.

    Example::

        async with AsyncTaskBucket(config, Reminders()) as bucket:
            async with AsyncTaskBucketGroup({"reminders": bucket}, peers=["10.0.0.2:6666"],
                                            port=6666, secret=secret) as group:
                placement = await group.fill("reminders", "remind::42", {"to": "ann"})

    It forwards to a :class:`~gobucket.TaskBucketGroup` (:attr:`sync`): same
    arguments (``buckets`` may hold :class:`AsyncTaskBucket` or
    :class:`~gobucket.TaskBucket` values; every keyword option of
    ``TaskBucketGroup`` is accepted), same placement rules, same errors.
    :meth:`fill` never blocks the loop: a local fill answers at once, an
    overflow is asked of the group's actor with a future that calls back into
    the loop when the peer acknowledges (or is lost). Starting and stopping
    (binding, dialling, hand-off) run in :func:`asyncio.to_thread`.
    """

    def __init__(
        self,
        buckets: Mapping[str, AsyncTaskBucket | TaskBucket],
        peers: Iterable[str] = (),
        port: int = 6666,
        ping_interval: float = 1.0,
        secret: str | bytes | None = None,
        cluster: str = "default",
        **options: Any,
    ) -> None:
        if not isinstance(buckets, Mapping):
            raise InvalidArgumentError("buckets must be a non-empty mapping of name to TaskBucket")
        self._given = dict(buckets)
        self._sync = TaskBucketGroup(
            {
                name: bucket.sync if isinstance(bucket, AsyncTaskBucket) else bucket
                for name, bucket in buckets.items()
            },
            peers,
            port,
            ping_interval,
            secret,
            cluster,
            **options,
        )

    # life ------------------------------------------------------------------------------
    async def start(self) -> Self:
        """Bind, start serving and dialling peers (see ``TaskBucketGroup.start``). Returns self."""
        for bucket in self._given.values():
            if isinstance(bucket, AsyncTaskBucket):
                bucket._bind()  # peers' fills may come now: their async hooks run on this loop
        await asyncio.to_thread(self._sync.start)
        return self

    async def stop(
        self, *, handoff: bool = False, timeout: float = 30.0, grace: float = 30.0
    ) -> int:
        """Leave the group (see ``TaskBucketGroup.stop``); return how many tasks were handed off."""
        return await asyncio.to_thread(
            self._sync.stop, handoff=handoff, timeout=timeout, grace=grace
        )

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # the API -------------------------------------------------------------------------------
    @property
    def sync(self) -> TaskBucketGroup:
        """The :class:`~gobucket.TaskBucketGroup` this forwards to."""
        return self._sync

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._sync.node_id

    @property
    def cluster(self) -> str:
        """The cluster name."""
        return self._sync.cluster

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (after :meth:`start`)."""
        return self._sync.address

    @property
    def on_peer_schedule_failed(self) -> ScheduleFailed | None:
        """Called ``(peer, bucket, task id, error)`` when a task could not be placed on a peer."""
        return self._sync.on_peer_schedule_failed

    @on_peer_schedule_failed.setter
    def on_peer_schedule_failed(self, callback: ScheduleFailed | None) -> None:
        self._sync.on_peer_schedule_failed = callback

    def get_bucket(self, name: str) -> AsyncTaskBucket | TaskBucket:
        """The local bucket called ``name``, as it was given."""
        self._sync.get_bucket(name)  # raises the sync group's error for an unknown name
        return self._given[name]

    async def fill(
        self,
        bucket: str,
        id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
        timeout: float | None = None,
    ) -> Placement:
        """Fill locally, or on the peer with most room; await its acknowledgement.

        As ``TaskBucketGroup.fill``: the same placement and errors; with
        ``timeout``, :class:`pykka.Timeout` if no answer came in time (the task
        may still be placed, as with the sync fill). Cancelling the await does
        not withdraw a fill already sent to a peer.

        Raises:
            NoPeerAvailableError: the local bucket is full and no peer took the task.
            PeerLostTaskError: the chosen peer was lost before acknowledging.
            DuplicateTaskError, InvalidArgumentError: as for ``TaskBucket.fill``.
        """
        given = self._given.get(bucket)
        if isinstance(given, AsyncTaskBucket):
            given._bind()
        sync = self._sync
        local, fill, packed = sync._check_fill(bucket, id, data, task_type, run_after, life_span)
        refused: GoBucketError | None = None
        if not local.closed:  # the local attempt, as TaskBucketGroup.fill_async makes it
            try:
                refused = await ask_soon(local.actor_ref, m.TryFill(*fill))
            except pykka.ActorDeadError:
                refused = BucketClosedError(f"bucket {bucket!r} is shutting down")
            if refused is None:
                return Placement(True, sync.node_id, bucket, id, None)
        try:
            route = sync._overflow(bucket, local, fill, packed, refused)
        except NoPeerAvailableError as error:
            return await self._spill(bucket, fill, error)
        group = sync._group
        assert group is not None  # _overflow raised otherwise
        answer = ask_soon(group.ref, route)
        try:
            if timeout is None:
                placement: Placement = await answer
                return placement
            try:
                async with asyncio.timeout(timeout):
                    placement = await answer
                    return placement
            except TimeoutError:
                raise pykka.Timeout(f"{timeout} seconds") from None
        except NoPeerAvailableError as error:
            return await self._spill(bucket, fill, error)

    async def _spill(self, bucket: str, fill: FillFields, error: NoPeerAvailableError) -> Placement:
        """No peer took the fill: put it in the group's pool (on a thread), or re-raise."""
        if self._sync.pool is None:
            raise error
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._sync._spill, bucket, fill, error)

    async def wait_for_peers(
        self, count: int = 1, *, bucket: str | None = None, timeout: Duration | None = None
    ) -> bool:
        """As :meth:`TaskBucketGroup.wait_for_peers`, without blocking the loop (in a thread)."""
        return await asyncio.to_thread(
            self._sync.wait_for_peers, count, bucket=bucket, timeout=timeout
        )

    def peers(self) -> list[PeerInfo]:
        """What this node knows of each peer (a short read of the group's actor)."""
        return self._sync.peers()

    def loads(self) -> dict[str, list[int]]:
        """Each local bucket's ``[alive, max]`` (empty before :meth:`start`)."""
        return self._sync.loads()
