"""RedisTaskPool: one shared queue of tasks per bucket name, on a Redis server."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from gobucket.config import TaskType
from gobucket.errors import (
    DuplicateTaskError,
    InvalidArgumentError,
    PoolFullError,
    PoolUnavailableError,
    SinkWriteError,
)
from gobucket.pool import _scripts
from gobucket.pool._record import PoolTask, decode, encode
from gobucket.recovery.record import RescuedTask
from gobucket.types import PoolStats

if TYPE_CHECKING:
    import redis

__all__ = ["RedisTaskPool"]

logger = logging.getLogger("gobucket.pool")

_ADDED, _DUPLICATE, _FULL = 0, 1, 2
_FENCED = -1
_REAP_BATCH = 1000
_MISSING_EXTRA = (
    "RedisTaskPool needs the redis client: pip install 'gobucket[redis]' (or pip install redis)"
)


def _import_redis() -> Any:
    try:
        import redis
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(_MISSING_EXTRA, name="redis") from error
    return redis


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class RedisTaskPool:
    """A task pool on Redis shared by every node attached to it, one queue per bucket name.

    Give it to a bucket or a group (``TaskBucket(..., pool=pool)``,
    ``TaskBucketGroup(..., pool=pool)``): a fill that finds no room (locally,
    and on every peer of a group) goes to the pool, and every attached node
    takes tasks from the pool while its bucket has room, running each at its
    original wall-clock due time. A task is acknowledged (deleted) only once
    its end hook has returned; the claim of a node that died is taken over by
    another node after ``claim_timeout``. It is also a
    :class:`~gobucket.RescueSink`: ``rescue_sink=pool`` puts rescued tasks back
    in the pool, where any live node picks them up. See ``docs/pool.md``.

    Example::

        pool = RedisTaskPool("redis://127.0.0.1:6379/0", name="myapp")
        bucket = TaskBucket(config, executor, pool=pool, rescue_sink=pool)

    Args:
        url: a Redis URL (``redis://host:6379/0``).
        name: the pool's namespace: every key starts with it. Nodes that share
            tasks use the same name (and the same bucket names).
        max_pending: the most tasks one bucket's queue may hold (ready, delayed
            and claimed); a fill past it is refused (:class:`PoolFullError`).
            0: no limit.
        claim_timeout: seconds a claim lasts without its node renewing it
            (the node renews every third of it). After that, another node puts
            the task back and runs it: a task whose node died runs again.
        timeout: seconds to wait for Redis per command (connect and reply). A
            write the server runs later than that stores nothing.
        lookahead: seconds before its due time a time bomb is claimed (it then
            waits on the claiming node's own timer, which is what keeps it on time).
        poll_interval: seconds a puller waits between claims when the pool has
            nothing due for it.
        batch: the most tasks claimed at once.
        low_watermark: the fraction of a bucket's ``max_bucket`` a puller keeps
            free for local fills (it claims only while more room than that is free).
        node_id: this process's name in claim tokens (random by default).

    Raises:
        ModuleNotFoundError: redis-py is not installed (``pip install 'gobucket[redis]'``).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "gobucket",
        max_pending: int = 1_000_000,
        claim_timeout: float = 30.0,
        timeout: float = 2.0,
        lookahead: float = 1.0,
        poll_interval: float = 0.1,
        batch: int = 500,
        low_watermark: float = 0.1,
        node_id: str | None = None,
    ) -> None:
        redis_module = _import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a non-empty string")
        if not isinstance(max_pending, int) or max_pending < 0:
            raise InvalidArgumentError(f"max_pending must be an int >= 0, not {max_pending!r}")
        for label, value in (
            ("claim_timeout", claim_timeout),
            ("timeout", timeout),
            ("poll_interval", poll_interval),
        ):
            if not value > 0:
                raise InvalidArgumentError(f"{label} must be > 0, not {value!r}")
        if not lookahead >= 0:
            raise InvalidArgumentError(f"lookahead must be >= 0, not {lookahead!r}")
        if not isinstance(batch, int) or batch < 1:
            raise InvalidArgumentError(f"batch must be an int >= 1, not {batch!r}")
        if not 0 <= low_watermark < 1:
            raise InvalidArgumentError(f"low_watermark must be in [0, 1), not {low_watermark!r}")
        self.url = url
        self.name = name
        self.max_pending = max_pending
        self.claim_timeout = float(claim_timeout)
        self.timeout = float(timeout)
        """How long a rescue waits for one :meth:`write` (the RescueSink contract)."""
        self.lookahead = float(lookahead)
        self.poll_interval = float(poll_interval)
        self.batch = batch
        self.low_watermark = float(low_watermark)
        self.node_id = node_id or uuid.uuid4().hex[:12]
        # What "Redis is unreachable" looks like (TimeoutError is an OSError).
        self._errors: tuple[type[Exception], ...] = (
            redis_module.RedisError,
            OSError,
            PoolUnavailableError,
        )
        # No retries: a retried write could land after we reported it failed.
        self._client: redis.Redis = redis_module.Redis.from_url(
            url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        register = self._client.register_script
        self._add = register(_scripts.ADD)
        self._put = register(_scripts.PUT)
        self._claim = register(_scripts.CLAIM)
        self._ack = register(_scripts.ACK)
        self._release = register(_scripts.RELEASE)
        self._renew = register(_scripts.RENEW)
        self._reap = register(_scripts.REAP)
        self._stats = register(_scripts.STATS)
        self._tokens = 0
        self._noted: set[str] = set()

    # keys ----------------------------------------------------------------------------
    def _keys(self, bucket: str, *names: str) -> list[str]:
        # One hash tag per bucket: a bucket's keys share a Redis Cluster slot.
        return [f"{self.name}:{{{bucket}}}:{n}" for n in names]

    def _buckets_key(self) -> str:
        return f"{self.name}:buckets"

    def _unavailable(self, doing: str, error: BaseException) -> PoolUnavailableError:
        return PoolUnavailableError(
            f"task pool {self.name!r} at {self._where()} is unreachable while {doing} "
            f"({type(error).__name__}: {error}); nothing was stored"
        )

    def _where(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    def _fence(self) -> float:
        # The server stores nothing past the moment we stop waiting (less a quarter, for
        # the reply's way back and clock skew).
        return time.time() + self.timeout * 0.75

    # filling -------------------------------------------------------------------------
    def add(
        self,
        bucket: str,
        task_id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: float = 0.0,
        life_span: float,
    ) -> None:
        """Put one task in ``bucket``'s queue; it is due ``run_after`` seconds from now.

        The caller has checked the arguments (a bucket's fill does). ``life_span``
        counts from now, like a fill's.

        Raises:
            DuplicateTaskError: the pool holds a task with this id (not stored).
            PoolFullError: the queue holds ``max_pending`` tasks (not stored).
            PoolUnavailableError: Redis did not answer within ``timeout`` (not stored).
            InvalidArgumentError: msgpack cannot store ``data``.
        """
        now = time.time()
        wait = run_after if task_type is TaskType.TIME_BOMB else 0.0
        task = PoolTask(task_id, task_type, data, now + wait, now + life_span)
        code = self.add_many(bucket, [task])[0]
        if code == _DUPLICATE:
            raise DuplicateTaskError(task_id, bucket, "task {task} is already in the task pool")
        if code == _FULL:
            raise PoolFullError(
                f"task pool {self.name!r} holds its maximum of {self.max_pending} tasks "
                f"for bucket {bucket!r}"
            )

    def add_many(self, bucket: str, tasks: Sequence[PoolTask]) -> list[int]:
        """Put several tasks in one round trip; one code per task (0 stored, 1 duplicate
        id, 2 over ``max_pending``). For bulk loads and benchmarks.

        Raises:
            PoolUnavailableError: Redis did not answer in time (none stored).
            InvalidArgumentError: a task's data cannot be stored (none sent).
        """
        args: list[Any] = [self._fence(), self.max_pending]
        for task in tasks:
            args += [task.task_id, _ms(task.due_at), encode(task)]
        try:
            codes = self._add(keys=self._keys(bucket, "due", "sched", "tasks"), args=args)
            self._note_bucket(bucket)
        except self._errors as error:
            raise self._unavailable("adding tasks", error) from error
        if codes == _FENCED:
            raise PoolUnavailableError(
                f"task pool {self.name!r} at {self._where()} ran the fill after its "
                f"{self.timeout:g}s timeout (a frozen or overloaded server, or its clock is "
                "ahead of ours); nothing was stored"
            )
        return [int(code) for code in codes]

    def _note_bucket(self, bucket: str) -> None:
        # The set of bucket names (for read()): one SADD per bucket and process.
        if bucket not in self._noted:
            self._client.sadd(self._buckets_key(), bucket)
            self._noted.add(bucket)

    def stats(self, bucket: str) -> PoolStats:
        """How many tasks of ``bucket`` the pool holds: ready, delayed, claimed.

        Raises:
            PoolUnavailableError: Redis did not answer in time.
        """
        try:
            ready, delayed, claimed = self._stats(
                keys=self._keys(bucket, "due", "claims"), args=[_ms(time.time())]
            )
        except self._errors as error:
            raise self._unavailable("reading its depth", error) from error
        return PoolStats(self.name, bucket, int(ready), int(delayed), int(claimed))

    # what a puller does (raises redis errors; the puller backs off) ------------------------
    def _new_token(self) -> str:
        self._tokens += 1
        return f"{self.node_id}#{self._tokens}"

    def _claim_due(self, bucket: str, limit: int) -> tuple[str, list[tuple[PoolTask, int]]]:
        """Claim up to ``limit`` tasks due within ``lookahead``: (token, [(task, due_ms)])."""
        now = time.time()
        token = self._new_token()
        raw = self._claim(
            keys=self._keys(bucket, "due", "tasks", "claims", "owner"),
            args=[_ms(now + self.lookahead), limit, token, _ms(now + self.claim_timeout)],
        )
        flat = msgpack.unpackb(raw, raw=True) if raw else []
        out: list[tuple[PoolTask, int]] = []
        for i in range(0, len(flat), 3):
            task_id = flat[i].decode()
            try:
                out.append((decode(task_id, flat[i + 1]), int(float(flat[i + 2]))))
            except (ValueError, TypeError) as error:
                logger.error(
                    "task pool %r: unreadable record %r skipped: %s", self.name, task_id, error
                )
        return token, out

    def _ack_held(self, bucket: str, held: Sequence[tuple[str, str]]) -> int:
        """Delete tasks that ended, each only while ``(id, token)`` still holds it."""
        if not held:
            return 0
        keys = self._keys(bucket, "tasks", "sched", "claims", "owner")
        packed = msgpack.packb([x for pair in held for x in pair], use_bin_type=False)
        return int(self._ack(keys=keys, args=[packed]))

    def _release_held(self, bucket: str, held: Sequence[tuple[str, str]]) -> int:
        """Put claimed tasks back, unclaimed, at their original due time."""
        if not held:
            return 0
        keys = self._keys(bucket, "due", "sched", "claims", "owner")
        return int(self._release(keys=keys, args=[x for pair in held for x in pair]))

    def _renew_held(self, bucket: str, held: Sequence[tuple[str, str]]) -> list[str]:
        """Extend the claims still held; the ids whose claim was lost."""
        if not held:
            return []
        expiry = _ms(time.time() + self.claim_timeout)
        lost = self._renew(
            keys=self._keys(bucket, "claims", "owner"),
            args=[expiry, *[x for pair in held for x in pair]],
        )
        return [item.decode() for item in lost]

    def _reap_expired(self, bucket: str) -> int:
        """Put back the tasks of claims that expired (a dead or stalled node's)."""
        keys = self._keys(bucket, "due", "sched", "claims", "owner")
        return int(self._reap(keys=keys, args=[_ms(time.time()), _REAP_BATCH]))

    # RescueSink ------------------------------------------------------------------------
    def write(self, tasks: Sequence[RescuedTask]) -> None:
        """Put rescued tasks in the pool with their wall-clock due time and deadline.

        A task of the same id in the pool is replaced (its claim, if any, dropped):
        a rescued task the pool had handed out goes back to it. Fenced like a fill:
        a write the server runs after ``timeout`` stores nothing.

        Raises:
            SinkWriteError: some records were not stored (their data cannot be
                stored, or Redis failed); ``__cause__`` is Redis's error.
        """
        by_bucket: dict[str, list[tuple[RescuedTask, bytes]]] = {}
        bad: list[RescuedTask] = []
        for task in tasks:
            assert task.due_at is not None and task.deadline_at is not None
            entry = PoolTask(task.task_id, task.task_type, task.data, task.due_at, task.deadline_at)
            try:
                by_bucket.setdefault(task.bucket, []).append((task, encode(entry)))
            except InvalidArgumentError as error:
                logger.error(
                    "task pool %r: cannot store task %r: %s", self.name, task.task_id, error
                )
                bad.append(task)
        written = 0
        failure: BaseException | None = None
        for bucket, entries in by_bucket.items():
            if failure is not None:
                bad.extend(task for task, _ in entries)
                continue
            args: list[Any] = [self._fence()]
            for task, record in entries:
                assert task.due_at is not None
                args += [task.task_id, _ms(task.due_at), record]
            keys = self._keys(bucket, "due", "sched", "tasks", "claims", "owner")
            try:
                if self._put(keys=keys, args=args) == _FENCED:
                    raise TimeoutError("Redis ran the write after its fence; nothing stored")
                self._note_bucket(bucket)
            except self._errors as error:
                failure = error
                bad.extend(task for task, _ in entries)
                continue
            written += len(entries)
        if bad:
            cause = repr(failure) if failure is not None else "data not storable"
            raise SinkWriteError(
                f"task pool {self.name!r}: {len(bad)} record(s) not stored ({cause}); "
                f"{written} stored",
                failed=bad,
                written=written,
            ) from failure

    def read(self) -> list[RescuedTask]:
        """Every unclaimed task in the pool, as rescue records (``key`` is ``bucket/id``)."""
        out: list[RescuedTask] = []
        now = time.time()
        client: Any = self._client
        for raw_bucket in client.smembers(self._buckets_key()):
            bucket = raw_bucket.decode()
            due_key, tasks_key = self._keys(bucket, "due", "tasks")
            ids = client.zrange(due_key, 0, -1)
            if not ids:
                continue
            records = client.hmget(tasks_key, ids)
            for raw_id, record in zip(ids, records, strict=True):
                if record is None:
                    continue
                task = decode(raw_id.decode(), record)
                out.append(
                    RescuedTask(
                        bucket,
                        task.task_id,
                        task.task_type,
                        task.data,
                        remaining_life=task.deadline_at - now,
                        remaining_wait=max(0.0, task.due_at - now),
                        rescued_at=now,
                        key=f"{bucket}/{task.task_id}",
                        due_at=task.due_at,
                        deadline_at=task.deadline_at,
                    )
                )
        return out

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        """Delete tasks read by :meth:`read` (unless a node claimed them since)."""
        for task in tasks:
            due, sched, records = self._keys(task.bucket, "due", "sched", "tasks")
            if self._client.zrem(due, task.task_id):
                pipe = self._client.pipeline(transaction=False)
                pipe.zrem(sched, task.task_id)
                pipe.hdel(records, task.task_id)
                pipe.execute()

    def close(self) -> None:
        """Close the Redis connections (attached buckets stop pulling when they close)."""
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisTaskPool({self.url!r}, name={self.name!r})"
