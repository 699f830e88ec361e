"""Puller: one thread per (pool, bucket) that claims due tasks while the bucket has room,
fills them into it, renews its claims and acknowledges the tasks that ended.

Every Redis call of a pool-attached bucket runs here (or on the thread that fills
or closes the bucket), never on an actor's thread: the BucketActor only queues the
id of a pool task that ended (:class:`~gobucket.actors.watch.EndWatch`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka

from gobucket._ratelimit import RateLimitedLog
from gobucket.actors import messages as m
from gobucket.actors.watch import EndWatch
from gobucket.errors import BucketClosedError, GoBucketError
from gobucket.pool._record import PoolTask
from gobucket.recovery.record import RescuedTask
from gobucket.types import Outcome, PoolStats

if TYPE_CHECKING:
    from gobucket.pool.pool import RedisTaskPool

__all__ = ["Puller"]

logger = logging.getLogger("gobucket.pool")

_STATS_EVERY = 1.0  # seconds between refreshes of the depth shown in bucket.stats()
_MAX_BACKOFF = 5.0

Fill = Callable[[PoolTask], GoBucketError | None]
"""Fill a claimed task into the local bucket (watched): None, or the refusal."""
Reserve = Callable[[frozenset[str]], list[tuple[pykka.ActorRef[Any], pykka.Future[Any]]]]
"""Reserve the listed live tasks for hand-off (``ReserveAll(ids)`` to the bucket)."""


class Puller:
    """Takes ``bucket``'s tasks from ``pool`` while ``room()`` is positive.

    Args:
        pool: the pool.
        bucket: the bucket's name (its queue in the pool).
        room: how many tasks the bucket may take now (free room above the low
            watermark).
        fill: fills one claimed task into the bucket, watched by :attr:`watch`.
    """

    def __init__(
        self,
        pool: RedisTaskPool,
        bucket: str,
        room: Callable[[], int],
        fill: Fill,
    ) -> None:
        self.pool = pool
        self.bucket = bucket
        self.watch = EndWatch(self._ended)
        self.cached: PoolStats | None = None
        self._room = room
        self._fill = fill
        self._ends: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._to_ack: list[str] = []
        self._held: dict[str, str] = {}  # claimed id -> the claim's token
        self._lock = threading.Lock()
        self._claiming = True
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._log = RateLimitedLog(logger, 30.0)
        self._thread = threading.Thread(
            target=self._run, name=f"gobucket-pool-{bucket}", daemon=True
        )

    def start(self) -> None:
        """Start pulling (on the puller's own thread)."""
        self._thread.start()

    @property
    def held(self) -> int:
        """How many tasks this node holds claims on (running, waiting here, or unacknowledged)."""
        with self._lock:
            return len(self._held)

    # on the BucketActor's thread: never blocks ----------------------------------------------
    def _ended(self, task_id: str, _outcome: Outcome) -> None:
        self._ends.put(task_id)

    # the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        next_renew = next_reap = next_stats = 0.0
        timeout = self.pool.claim_timeout
        while not self._stop.is_set():
            got = 0
            try:
                self._flush_acks()
                now = time.monotonic()
                if now >= next_renew:
                    self._renew()
                    next_renew = now + timeout / 3
                if now >= next_reap:
                    reaped = self.pool._reap_expired(self.bucket)
                    if reaped:
                        logger.warning(
                            "task pool %r: %d expired claim(s) of bucket %r put back "
                            "(a node died or stalled; those tasks may run twice)",
                            self.pool.name,
                            reaped,
                            self.bucket,
                        )
                    next_reap = now + min(timeout / 4, 5.0)
                if now >= next_stats:
                    self.cached = self.pool.stats(self.bucket)
                    next_stats = now + _STATS_EVERY
                if self._claiming:
                    got = self._pull()
            except self.pool._errors as error:
                failures += 1
                self._log.log(
                    logging.WARNING,
                    "down",
                    "task pool %r unreachable (bucket %r): %s; retrying with backoff",
                    self.pool.name,
                    self.bucket,
                    error,
                )
                self._stop.wait(min(_MAX_BACKOFF, 0.05 * 2 ** min(failures, 7)))
                continue
            except Exception:
                logger.exception("task pool %r: puller of %r failed", self.pool.name, self.bucket)
                self._stop.wait(1.0)
                continue
            if failures:
                logger.warning(
                    "task pool %r reachable again (bucket %r)", self.pool.name, self.bucket
                )
                failures = 0
            if got < self.pool.batch:
                # Nothing more due now (or no room): wait, unless woken.
                self._wake.wait(self.pool.poll_interval)
                self._wake.clear()

    def _pull(self) -> int:
        room = min(self._room(), self.pool.batch)
        if room <= 0:
            return 0
        token, claimed = self.pool._claim_due(self.bucket, room)
        if not claimed:
            return 0
        with self._lock:
            for task, _ in claimed:
                self._held[task.task_id] = token
        back: list[tuple[str, str]] = []
        for task, _ in claimed:
            refused = self._fill(task)
            if refused is None:
                continue
            back.append((task.task_id, token))
            if isinstance(refused, BucketClosedError):
                self._claiming = False
            else:
                self._log.warning(
                    "refused",
                    "task pool %r: bucket %r refused task %r (%s); put back",
                    self.pool.name,
                    self.bucket,
                    task.task_id,
                    refused,
                )
        if back:
            self.pool._release_held(self.bucket, back)
            with self._lock:
                for task_id, _ in back:
                    self._held.pop(task_id, None)
            return 0  # the bucket could not take more: wait before claiming again
        return len(claimed)

    def _flush_acks(self) -> None:
        ends = self._ends
        while True:
            try:
                self._to_ack.append(ends.get_nowait())
            except queue.Empty:
                break
        if not self._to_ack:
            return
        with self._lock:
            pairs = [(i, self._held[i]) for i in self._to_ack if i in self._held]
        self.pool._ack_held(self.bucket, pairs)  # raises: kept for the next try
        with self._lock:
            for task_id in self._to_ack:
                self._held.pop(task_id, None)
        self._to_ack = []

    def _renew(self) -> None:
        with self._lock:
            pairs = list(self._held.items())
        lost = self.pool._renew_held(self.bucket, pairs)
        if lost:
            with self._lock:
                for task_id in lost:
                    self._held.pop(task_id, None)
            logger.warning(
                "task pool %r: this node lost its claim on %d task(s) of %r (put back after "
                "claim_timeout, or rescued into the pool); they may run twice",
                self.pool.name,
                len(lost),
                self.bucket,
            )

    # shutting down (on the closing thread) -----------------------------------------------------
    def stop_claiming(self) -> None:
        """Claim nothing more; keep renewing and acknowledging until :meth:`close`."""
        self._claiming = False
        self._wake.set()

    def put_back(self, reserve: Reserve, timeout: float) -> list[m.Answer]:
        """Put the claimed tasks that have not started back in the pool.

        Each is reserved (only waiting tasks can be), released in Redis, then
        ended here with no hook. Returns the answers of those that could not be
        put back (Redis down): they are rescued (``on_panic``, the sink); the
        caller collects them.
        """
        self.stop_claiming()
        with self._lock:
            ids = frozenset(self._held)
        if not ids:
            return []
        try:
            reserved = reserve(ids)
        except GoBucketError:
            return []
        waiting: list[tuple[pykka.ActorRef[Any], RescuedTask]] = []
        for ref, reply in reserved:
            try:
                record = reply.get(timeout=timeout)
            except Exception:
                continue
            if isinstance(record, RescuedTask):
                waiting.append((ref, record))
        if not waiting:
            return []
        with self._lock:
            pairs = [
                (r.task_id, self._held[r.task_id]) for _, r in waiting if r.task_id in self._held
            ]
        try:
            self.pool._release_held(self.bucket, pairs)
            placed = True
            with self._lock:
                for task_id, _ in pairs:
                    self._held.pop(task_id, None)
        except self.pool._errors as error:
            logger.error(
                "task pool %r: could not put back %d task(s) of %r (%s); rescuing them",
                self.pool.name,
                len(pairs),
                self.bucket,
                error,
            )
            placed = False
        unplaced: list[m.Answer] = []
        for ref, record in waiting:
            try:
                answer = ref.ask(m.Release(placed), block=False)
            except pykka.ActorDeadError:
                continue
            if not placed:
                unplaced.append((record.task_id, ref, answer))
        if placed:
            logger.info(
                "task pool %r: put back %d task(s) of %r", self.pool.name, len(waiting), self.bucket
            )
        return unplaced

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread, then acknowledge what ended meanwhile (once, best effort)."""
        self._claiming = False
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        try:
            self._flush_acks()
        except self.pool._errors as error:
            logger.error(
                "task pool %r: %d ended task(s) of %r not acknowledged (%s); they run again "
                "after claim_timeout",
                self.pool.name,
                len(self._to_ack),
                self.bucket,
                error,
            )
