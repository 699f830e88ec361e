"""What a node answers its peers: FILLs into the local BucketActors, loads, STATUS, the allow
list.

The network loop hands each FILL to :class:`BucketServer`, which checks it the
way a local fill is checked (:func:`~gobucket.config.make_fill`), asks the
bucket's actor without waiting (:func:`~gobucket.actors.actor.ask_then`) and
answers from the actor's reply: at once when the actor is free, else when it
gets to the fill, on its own thread. The loop never waits for a bucket, and the
task data is decoded once. A STATUS request is gathered the same way: each
bucket's actor and the GroupActor are asked without waiting, and the answer
goes out once the last of them replied. No actor stands in between: serving holds no state
but the bucket table and the allow list.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import pykka

from gobucket.actors.actor import ask_then
from gobucket.actors.messages import FillTask, GetPeers, GetStats
from gobucket.config import BucketConfig, FillFields, TaskType
from gobucket.errors import (
    BucketClosedError,
    BucketFullError,
    DuplicateTaskError,
    InvalidArgumentError,
)
from gobucket.types import BucketStats, PeerInfo
from gobucket.wire import protocol
from gobucket.wire.connection import PeerHello
from gobucket.wire.frames import FrameDecoder, FrameError
from gobucket.wire.protocol import RefusalCode

__all__ = ["Answer", "BucketServer", "ServedBucket", "StatusAnswer"]

logger = logging.getLogger("gobucket.group")

Answer = Callable[[bool, str, str], None]
"""Called with ``(accepted, refusal code, text)`` once a FILL is decided."""

StatusAnswer = Callable[[list[BucketStats], list[PeerInfo]], None]
"""Called with the buckets' counters and the peer table once a STATUS is gathered."""


class ServedBucket(Protocol):
    """What serving needs of a local bucket (a :class:`~gobucket.TaskBucket`)."""

    @property
    def config(self) -> BucketConfig:
        """The bucket's configuration (fill defaults, capacity)."""
        ...

    @property
    def closed(self) -> bool:
        """True once the bucket refuses fills."""
        ...

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The bucket's actor (now)."""
        ...

    def _alive_now(self) -> int:
        """How many tasks are alive, read without asking the bucket's actor."""
        ...

    def _with_pool(self, stats: BucketStats) -> BucketStats:
        """``stats`` with the depth of the bucket's shared pool, if it has one."""
        ...

    def _make_fill(
        self,
        task_type: TaskType,
        id: str,
        data: Any,
        run_after: float | None,
        life_span: float | None,
    ) -> FillFields:
        """Check a fill as a local one is checked (``make_fill`` with the bucket's sink)."""
        ...

    def _check_open(self) -> None:
        """Raise the bucket's :class:`BucketClosedError` when it refuses fills."""
        ...


class BucketServer:
    """Serves this node's buckets to its peers (the network node's ``ServeHandler``).

    Args:
        buckets: the local buckets by name.
        max_frame: the largest frame accepted; task data is decoded within its limits.
        hosts: hosts allowed to connect without a secret (the static peers).
        group: the node's GroupActor now (None before it started), asked for the
            peer table of a STATUS reply.
    """

    def __init__(
        self,
        buckets: Mapping[str, ServedBucket],
        max_frame: int,
        hosts: Iterable[str] = (),
        group: Callable[[], pykka.ActorRef[Any] | None] | None = None,
    ) -> None:
        self._buckets = dict(buckets)
        self._group = group
        self._decoder = FrameDecoder(max_frame)
        self._allowed: set[str] = set()
        for host in hosts:
            self.allow_address(host)

    # fills ---------------------------------------------------------------------------
    def serve_fill(self, peer: PeerHello, fill: protocol.Fill, answer: Answer) -> None:
        """Fill a task ``peer`` sent; ``answer`` it now or once the bucket's actor replied.

        Called on the network loop; never waits for the actor. ``answer`` is
        called on the loop (the actor was free, or the fill was refused before
        reaching it) or on the thread that ran the actor.
        """
        name = fill.bucket
        bucket = self._buckets.get(name)
        if bucket is None:
            answer(False, RefusalCode.NO_SUCH_BUCKET, f"no bucket named {name!r} here")
            return
        try:
            data = protocol.fill_data(fill.data, self._decoder)
            fields = bucket._make_fill(
                TaskType(fill.task_type), fill.task_id, data, fill.run_after, fill.life_span
            )
            bucket._check_open()
        except Exception as error:
            answer(*_refusal(name, error))
            return

        def replied(_result: Any, error: BaseException | None) -> None:
            if error is None:
                answer(True, "", "")
            else:
                answer(*_refusal(name, error))

        ask_then(bucket.actor_ref, FillTask(*fields), replied)

    # loads ---------------------------------------------------------------------------
    def loads(self) -> dict[str, list[int]]:
        """Each local bucket's ``[alive, max]`` (what PONG reports); a closed one is full."""
        loads: dict[str, list[int]] = {}
        for name, bucket in self._buckets.items():
            try:
                if bucket.closed:  # a closed bucket takes nothing: report it full
                    raise RuntimeError("closed")
                # Read without asking the actor: the network loop must not wait for a
                # busy bucket (a rescue of 100,000 tasks) to answer a ping.
                loads[name] = [bucket._alive_now(), bucket.config.max_bucket]
            except Exception:
                loads[name] = [bucket.config.max_bucket, bucket.config.max_bucket]
        return loads

    # status ----------------------------------------------------------------------------
    def serve_status(self, answer: StatusAnswer) -> None:
        """Gather every bucket's counters and the peer table; ``answer`` once all replied.

        Never waits: each actor is asked with ``ask_then``; ``answer`` runs on
        the thread of the last reply (maybe this one, before this returns). A
        bucket whose actor is gone is reported closed and empty; without a
        group actor the peer table is empty.
        """
        names = list(self._buckets)
        stats: dict[str, BucketStats] = {}
        peers: list[PeerInfo] = []
        lock = threading.Lock()
        waiting = [len(names) + 1]

        def one_done() -> None:
            with lock:
                waiting[0] -= 1
                if waiting[0]:
                    return
            answer([stats[name] for name in names], peers)

        for name in names:
            bucket = self._buckets[name]

            def got(result: Any, error: BaseException | None, name: str = name) -> None:
                if error is None and isinstance(result, BucketStats):
                    stats[name] = self._buckets[name]._with_pool(result)
                else:
                    stats[name] = _closed_stats(name, self._buckets[name])
                one_done()

            try:
                ref = bucket.actor_ref
            except Exception:  # gone for good
                got(None, RuntimeError("no actor"))
                continue
            ask_then(ref, GetStats(), got)

        def got_peers(result: Any, error: BaseException | None) -> None:
            if error is None and isinstance(result, list):
                peers.extend(p for p in result if isinstance(p, PeerInfo))
            one_done()

        group = self._group() if self._group is not None else None
        if group is None:
            got_peers([], None)
        else:
            ask_then(group, GetPeers(), got_peers)

    # the allow list --------------------------------------------------------------------
    def allow(self, host: str) -> bool:
        """Without a secret, only addresses on the allow list may connect."""
        return host in self._allowed or _strip_v4_mapped(host) in self._allowed

    def allow_address(self, host: str) -> None:
        """Add a host (every address it resolves to) to the allow list."""
        self._allowed.update(_resolve(host))

    def admit(self, address: str) -> None:
        """Add one address, as it is, to the allow list (a peer a source reported)."""
        self._allowed.add(address)


def _refusal(name: str, error: BaseException) -> tuple[bool, str, str]:
    """The refusal a FILL gets for ``error`` (raised checking it, or by the bucket's actor)."""
    if isinstance(error, DuplicateTaskError):
        return False, RefusalCode.DUPLICATE, str(error)
    if isinstance(error, BucketFullError):
        return False, RefusalCode.FULL, str(error)
    if isinstance(error, BucketClosedError):
        return False, RefusalCode.CLOSED, str(error)
    if isinstance(error, InvalidArgumentError | FrameError | ValueError):
        return False, RefusalCode.BAD_DATA, str(error)
    if isinstance(error, pykka.ActorDeadError):
        return False, RefusalCode.CLOSED, f"bucket {name!r} is closed"
    # never let a peer's fill break the server
    logger.error("serving a fill for %r failed", name, exc_info=error)
    return False, RefusalCode.INTERNAL, repr(error)


def _closed_stats(name: str, bucket: ServedBucket) -> BucketStats:
    """What STATUS reports of a bucket whose actor is gone: closed, nothing alive."""
    return BucketStats(
        name=name,
        alive=0,
        max_bucket=bucket.config.max_bucket,
        filled=0,
        finished=0,
        execute_errors=0,
        exhausted=0,
        panicked=0,
        drained=0,
        refused_full=0,
        refused_duplicate=0,
        crashed=0,
        closed=True,
    )


def _strip_v4_mapped(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") else host


def _resolve(host: str) -> set[str]:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        logger.warning("cannot resolve peer host %r", host)
        return {host}
    return {str(info[4][0]) for info in infos} | {host}
