"""TaskBucketGroup: buckets shared by processes; overflow goes to the peer with most room."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

import pykka

from gobucket.actors import messages as m
from gobucket.actors._future import LatchFuture, done_future
from gobucket.actors.actor import call, queue_then
from gobucket.actors.group import GroupActor, RouteCounts, ScheduleFailed
from gobucket.actors.messages import AwaitPeers, Discovered, GetPeers, RouteFill, StopGroup
from gobucket.actors.runtime import ActorRuntime, default_runtime
from gobucket.actors.supervisor import Supervised
from gobucket.bucket import TaskBucket
from gobucket.config import Duration, FillFields, TaskType, to_seconds
from gobucket.discovery.base import PeerEvent, PeerSource, PeerUp
from gobucket.discovery.mdns import MdnsDiscovery
from gobucket.discovery.static import StaticDiscovery
from gobucket.errors import (
    BucketClosedError,
    BucketFullError,
    GoBucketError,
    InvalidArgumentError,
    NoPeerAvailableError,
    PoolFullError,
    PoolUnavailableError,
)
from gobucket.metrics import _live
from gobucket.metrics import expose as metrics
from gobucket.recovery.collect import RescueReport
from gobucket.recovery.record import RescuedTask
from gobucket.serve import BucketServer
from gobucket.types import PeerInfo, Placement
from gobucket.wire import protocol
from gobucket.wire.connection import Identity
from gobucket.wire.frames import DEFAULT_MAX_FRAME, pack
from gobucket.wire.node import NetworkNode

if TYPE_CHECKING:
    from gobucket.pool.pool import RedisTaskPool

__all__ = ["TaskBucketGroup"]

logger = logging.getLogger("gobucket.group")


class TaskBucketGroup:
    """Named buckets shared by several processes on a LAN.

    A fill goes to the local bucket first; when that is full, to the peer whose
    bucket of the same name has the most free room, and waits for that peer's
    acknowledgement. Every task ends up in exactly one place, or the fill
    raises (and ``on_peer_schedule_failed`` is called).

    Example::

        group = TaskBucketGroup({"sample": bucket}, peers=["10.0.0.2:6666"],
                                port=6666, secret="cluster-key")
        group.start()
        placement = group.fill("sample", "process::1", {"name": "Johnson"})

    Discovery (mDNS) is on when a ``secret`` is set and off otherwise.
    ``discovery=True`` without a secret raises :class:`InvalidArgumentError`
    unless ``insecure=True`` is passed as well (then it logs one warning): on a
    LAN, anyone can announce your cluster's name. A static ``peers`` list
    without a secret is checked by address only: for trusted networks.

    Args:
        buckets: the local buckets by name (every node should hold the same names).
        peers: static peers as ``"host:port"``; they are dialled and re-dialled.
        port: where to listen (0 picks a free port; see :attr:`address`).
        ping_interval: seconds between load pings; 3 missed pings mark a peer down.
        secret: a shared cluster secret (non-empty ``str`` or ``bytes``); peers must
            prove it (a Noise handshake) and all traffic is encrypted. Without one,
            only connections from addresses on ``peers`` are accepted, in clear
            (trusted networks only).
        cluster: the cluster name; nodes of other clusters are refused.
        host: the address to listen on.
        node_id: this node's id (a random one by default).
        max_frame: the largest wire frame accepted, in bytes.
        sources: extra peer sources (see :mod:`gobucket.discovery`).
        runtime: the actor runtime (the process default if omitted).
        discovery: announce this node and find peers by mDNS (zeroconf) as well as
            the static list. ``None`` (the default): on when a ``secret`` is set, off
            otherwise. ``True`` without a secret needs ``insecure=True``; ``False``
            keeps a purely static group.
        interfaces: the IPv4 addresses mDNS announces and listens on (all by default).
        insecure: allow ``discovery=True`` without a secret. Then any node that
            announces this cluster's name by mDNS may connect (its address joins the
            allow list), fill tasks here and be sent this node's overflow. Only for a
            network you fully trust; a warning is logged.
        metrics_port: serve Prometheus metrics of this node's buckets and peers on
            ``host:metrics_port`` (``/metrics``) from :meth:`start` to :meth:`stop`
            (0 picks a free port, see :attr:`metrics_address`). Needs the
            ``metrics`` extra (``pip install 'gobucket[metrics]'``); see
            :mod:`gobucket.metrics`.
        pool: a shared task pool (:class:`~gobucket.RedisTaskPool`) for every local
            bucket: a fill that finds the local bucket and every peer full goes
            to the pool (``placement.pool`` is True), and each local bucket takes
            tasks from the pool while it has room. See ``docs/pool.md``.
    """

    def __init__(
        self,
        buckets: Mapping[str, TaskBucket],
        peers: Iterable[str] = (),
        port: int = 6666,
        ping_interval: float = 1.0,
        secret: str | bytes | None = None,
        cluster: str = "default",
        *,
        host: str = "0.0.0.0",
        node_id: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        sources: Iterable[PeerSource] = (),
        runtime: ActorRuntime | None = None,
        discovery: bool | None = None,
        interfaces: Iterable[str] | None = None,
        debug: bool = False,
        insecure: bool = False,
        metrics_port: int | None = None,
        pool: RedisTaskPool | None = None,
    ) -> None:
        if not isinstance(buckets, Mapping) or not buckets:
            raise InvalidArgumentError("buckets must be a non-empty mapping of name to TaskBucket")
        for name, bucket in buckets.items():
            if not isinstance(name, str) or not name:
                raise InvalidArgumentError(f"bucket names must be non-empty strings: {name!r}")
            if not isinstance(bucket, TaskBucket):
                raise InvalidArgumentError(f"bucket {name!r} is not a TaskBucket")
        if isinstance(peers, str):
            raise InvalidArgumentError("peers must be a list of 'host:port' strings")
        if isinstance(interfaces, str):
            raise InvalidArgumentError("interfaces must be a list of IPv4 addresses")
        interfaces = list(interfaces) if interfaces is not None else None
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise InvalidArgumentError(f"port must be 0..65535, got {port!r}")
        if not ping_interval > 0:
            raise InvalidArgumentError("ping_interval must be > 0")
        if not isinstance(cluster, str) or not cluster:
            raise InvalidArgumentError("cluster must be a non-empty string")
        if secret is not None and (not isinstance(secret, str | bytes) or not secret):
            raise InvalidArgumentError("secret must be a non-empty str or bytes, or None")
        if discovery is not None and not isinstance(discovery, bool):
            raise InvalidArgumentError(f"discovery must be True, False or None, got {discovery!r}")
        if not isinstance(insecure, bool):
            raise InvalidArgumentError(f"insecure must be True or False, got {insecure!r}")
        if metrics_port is not None:
            if isinstance(metrics_port, bool) or not isinstance(metrics_port, int):
                raise InvalidArgumentError(f"metrics_port must be an int, got {metrics_port!r}")
            if not 0 <= metrics_port < 65536:
                raise InvalidArgumentError(f"metrics_port must be 0..65535, got {metrics_port!r}")
            metrics.require()  # fail here, not at start(), if the extra is missing
        if discovery is None:
            discovery = secret is not None  # on with a secret, off without one
        if discovery and secret is None and not insecure:
            raise InvalidArgumentError(
                "discovery=True needs a secret: without one, anyone on the LAN who announces "
                f"cluster {cluster!r} by mDNS would be let in, could fill tasks here and would "
                "be sent this node's overflow tasks. Set secret=... (the same on every node), "
                "or pass insecure=True on a network you fully trust, or use discovery=False "
                "with a static peers list"
            )
        try:
            static = StaticDiscovery(list(peers))
        except ValueError as error:
            raise InvalidArgumentError(str(error)) from None
        if debug:
            logging.getLogger("gobucket").setLevel(logging.DEBUG)
        self._buckets = dict(buckets)
        self.pool: RedisTaskPool | None = pool
        """The shared task pool overflow spills to (None: none)."""
        if pool is not None:
            for bucket in self._buckets.values():
                bucket._attach_pool(pool)
        self.cluster = cluster
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.ping_interval = float(ping_interval)
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._runtime = runtime or default_runtime()
        self._sources: list[PeerSource] = [static, *sources]
        self._loopback_discovery = any(str(a).startswith("127.") for a in (interfaces or ()))
        self.discovery: bool = discovery
        """Whether this node announces itself and browses by mDNS."""
        self.insecure: bool = insecure
        """Whether mDNS-discovered addresses join the no-secret allow list."""
        if discovery:
            self._sources.append(
                MdnsDiscovery(
                    cluster, self.node_id, lambda: self.address[1], tuple(buckets), interfaces
                )
            )
        self.on_peer_schedule_failed: ScheduleFailed | None = None
        # What this node answers its peers (fills, loads, the no-secret allow list).
        self._server = BucketServer(
            self._buckets,
            max_frame,
            (address[0] for address in static.addresses),
            group=lambda: None if self._group is None else self._group.ref,
        )
        self._network = NetworkNode(
            self._identity,
            self._secret,
            self._server,
            host,
            port,
            max_frame,
            ping_interval=self.ping_interval,
        )
        self._group: Supervised[GroupActor] | None = None  # the GroupActor, once started
        self._routed = RouteCounts()  # how overflow fills ended (read by gobucket.metrics)
        self._metrics_port = metrics_port
        self._metrics_host = host
        self._metrics: metrics.MetricsServer | None = None
        self._key = f"group:{self.node_id}"
        _live.track_group(self)  # so that gobucket.metrics.serve(port) can expose it
        self._known: dict[tuple[str, int], PeerUp] = {}
        self._started = False
        self._stopped = threading.Event()
        self._wake = threading.Event()  # set by stop() or a signal: serve_forever() returns
        self._lock = threading.Lock()
        if self._secret is None and discovery:
            logger.warning(
                "group %r runs mDNS discovery without a secret (insecure=True): anyone on the "
                "LAN who announces cluster %r can connect, fill tasks here and be sent this "
                "node's overflow tasks. Use a secret on any network you do not fully trust",
                cluster,
                cluster,
            )
        elif self._secret is None:
            logger.warning(
                "group %r runs without a secret: peers are not authenticated, only checked "
                "against the peer list (trusted networks only)",
                cluster,
            )

    # life ---------------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind, start serving and dialling peers, in the background. Returns self."""
        with self._lock:
            if self._started:
                return self
            self._started = True
        if self._metrics_port is not None:
            try:
                self._metrics = metrics.serve(
                    self._metrics_port, self._metrics_host, sources=[self]
                )
            except BaseException:
                with self._lock:
                    self._started = False
                raise
        try:
            self._network.start()
        except BaseException:
            if self._metrics is not None:
                self._metrics.stop()
                self._metrics = None
            raise
        self._group = Supervised(
            self._runtime.supervisor,
            self._key,
            self._spawn_group,
            gone=_group_gone,
            restarted=self._group_restarted,
            gave_up=self._group_gave_up,
        )
        for source in self._sources:
            source.start(self._on_peer_event)
        return self

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where the metrics endpoint listens (None without ``metrics_port`` or before start)."""
        return None if self._metrics is None else self._metrics.address

    def _spawn_group(self) -> pykka.ActorRef[GroupActor]:
        return GroupActor.start_on(
            self._runtime,
            self.node_id,
            self._network,
            self.ping_interval,
            lambda: self.on_peer_schedule_failed,
            self._key,
            self._routed,
        )

    def _group_restarted(self, fresh: pykka.ActorRef[Any], _panics: list[Any]) -> None:
        # A fresh GroupActor: tell it every peer the sources reported so far.
        for event in list(self._known.values()):
            with contextlib.suppress(pykka.ActorDeadError):
                fresh.tell(Discovered(event))

    def _group_gave_up(self, error: BaseException, _panics: list[Any]) -> None:
        logger.error("group %r stopped routing after repeated failures: %r", self.cluster, error)

    def serve_forever(self, *, grace: float = 30.0) -> None:
        """Start (if needed) and block until :meth:`stop` is called (like Go's StartWork).

        Called from the main thread, SIGINT (Ctrl-C) and SIGTERM end it
        cleanly: the group stops with hand-off (tasks that have not started go
        to peers), the local buckets are closed (running tasks get ``grace``
        seconds, then are rescued) and this returns, without a traceback. The
        previous signal handlers are restored.
        """
        self.start()
        signalled = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            signalled.set()
            self._wake.set()

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        stopped_here = False
        try:
            self._wake.wait()
            stopped_here = signalled.is_set()
        except KeyboardInterrupt:  # someone else's signal handler raised it
            stopped_here = True
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
        if stopped_here:
            logger.warning("group %r: signal received, shutting down", self.cluster)
        if stopped_here:
            self.stop(handoff=True, grace=grace)

    def stop(self, *, handoff: bool = False, timeout: float = 30.0, grace: float = 30.0) -> int:
        """Leave the group: stop discovery, close every connection and the server.

        Without ``handoff`` the local buckets stay open (the node only leaves
        the group). With ``handoff`` the node is shutting down: first each
        local bucket refuses new fills (group fills go to peers meanwhile),
        every live task that has not started is filled on a peer
        (acknowledged) with its remaining wait and life, then each bucket is
        closed (running tasks get ``grace`` seconds to end, the rest is rescued
        through ``on_panic`` and the rescue sink). Returns how many tasks were
        handed off. ``timeout`` bounds each wait for a peer's answer.
        """
        if self._stopped.is_set():
            return 0
        self._wake.set()  # serve_forever() returns
        handed = 0
        if handoff:
            for bucket in self._buckets.values():
                bucket._seal()
            for bucket in self._buckets.values():
                bucket._release_pool_tasks(timeout)
            if self._group is not None:
                handed = self._hand_off(timeout)
        self._stopped.set()
        for source in self._sources:
            # Goodbye first (mDNS), so peers drop this node as soon as its links close.
            leave = getattr(source, "leave", None)
            if leave is not None:
                try:
                    leave()
                except Exception:
                    logger.exception("peer source %r could not say goodbye", source)
        if self._group is not None:
            self._group.release()  # off supervision: a crash from here on is not restarted
            with contextlib.suppress(pykka.ActorDeadError):
                self._group.ask(StopGroup())
        self._network.stop()
        for source in self._sources:
            try:
                source.stop()
            except Exception:
                logger.exception("stopping peer source %r failed", source)
        if self._group is not None:
            self._group.ref.stop()
        if self._metrics is not None:
            self._metrics.stop()
        if handoff:
            for name, bucket in self._buckets.items():
                try:
                    bucket.close(grace=grace)
                except GoBucketError:
                    logger.exception("[%s] closing after hand-off", name)
        return handed

    def _shutdown(
        self, grace: float | None, wait_pending: bool, timeout: float | None, *, hurry: bool = False
    ) -> RescueReport:
        """Signal path: leave the group and rescue every local bucket (see recovery.arm)."""
        report = RescueReport()
        for bucket in self._buckets.values():
            bucket._seal()
        try:
            self.stop()
        except Exception:
            logger.exception("group %r: stopping failed", self.cluster)
        for bucket in self._buckets.values():
            report.merge(bucket._shutdown(grace, wait_pending, timeout, hurry=hurry))
        return report

    def _hand_off(self, timeout: float) -> int:
        """Move not-yet-started tasks to peers; rescue what no peer takes."""
        assert self._group is not None
        handed = 0
        for name, bucket in self._buckets.items():
            try:
                reserved: list[tuple[pykka.ActorRef[Any], pykka.Future[Any]]] = bucket._ask(
                    m.ReserveAll()
                )
            except GoBucketError:
                continue
            routes: list[tuple[pykka.ActorRef[Any], RescuedTask, pykka.Future[Any]]] = []
            for ref, reply in reserved:
                try:
                    record = reply.get(timeout=timeout)
                except Exception:
                    continue
                if not isinstance(record, RescuedTask):
                    continue  # running or ending: it finishes here
                wait = record.remaining_wait
                wire = protocol.fill(
                    name,
                    record.task_id,
                    pack(record.data),
                    (TaskType.TIME_BOMB if wait > 0 else TaskType.IMMEDIATE).value,
                    wait,
                    max(record.remaining_life, wait + 0.001),
                )
                routes.append(
                    (ref, record, self._group.ask_later(RouteFill(name, record.task_id, wire)))
                )
            unplaced: list[m.Answer] = []
            for ref, record, route in routes:
                try:
                    route.get(timeout=timeout)
                    placed = True
                except Exception:
                    placed = False
                try:
                    answer = ref.ask(m.Release(placed), block=False)
                except pykka.ActorDeadError:
                    continue
                if placed:
                    handed += 1
                else:
                    unplaced.append((record.task_id, ref, answer))
            rescued = bucket._collect(unplaced, time.monotonic() + timeout) if unplaced else None
            logger.info(
                "[%s] handed off %d task(s), rescued %d",
                name,
                handed,
                rescued.records if rescued else 0,
            )
        return handed

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # the API -------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (after :meth:`start`)."""
        return self._network.address

    def get_bucket(self, name: str) -> TaskBucket:
        """The local bucket called ``name``."""
        try:
            return self._buckets[name]
        except KeyError:
            raise GoBucketError(f"this group has no bucket named {name!r}") from None

    @overload
    def fill(
        self,
        bucket: str,
        id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
        timeout: float | None = None,
        block: Literal[True] = True,
    ) -> Placement: ...

    @overload
    def fill(
        self,
        bucket: str,
        id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
        timeout: float | None = None,
        block: Literal[False],
    ) -> pykka.Future[Placement]: ...

    @overload
    def fill(
        self,
        bucket: str,
        id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
        timeout: float | None = None,
        block: bool,
    ) -> Placement | pykka.Future[Placement]: ...

    def fill(
        self,
        bucket: str,
        id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
        timeout: float | None = None,
        block: bool = True,
    ) -> Placement | pykka.Future[Placement]:
        """Fill locally, or on the peer with most room; wait for its acknowledgement.

        Takes the arguments of ``TaskBucket.fill`` plus the bucket's name, and
        returns where the task lives now.

        Args:
            bucket: the name of a local bucket (the same name on every node).
            id, data, task_type, run_after, life_span: as for ``TaskBucket.fill``;
                ``data`` must be msgpack-able (it may travel to a peer).
            timeout: with ``block=True``, how long to wait for a peer's
                acknowledgement; past it ``pykka.Timeout`` is raised and the fill
                is *not* cancelled (it may still be placed). Ignored with
                ``block=False``.
            block: ``True`` (the default) waits and returns the
                :class:`Placement`. ``False`` returns a ``pykka.Future`` of it at
                once, exactly like :meth:`fill_async`: ``future.get(timeout=...)``
                waits for it, and the errors below that come from a peer are raised
                by ``get()``. A local fill's future is already resolved.

        Returns:
            The :class:`Placement` (``block=True``) or a ``pykka.Future`` of it
            (``block=False``).

        Raises:
            NoPeerAvailableError: the local bucket is full (or closed) and no peer
                took the task; also at once after :meth:`stop`.
            PeerLostTaskError: the chosen peer was lost before acknowledging (it
                may or may not have the task).
            DuplicateTaskError, InvalidArgumentError: as for ``TaskBucket.fill``,
                or refused by the peer.
            GoBucketError: no bucket of that name, or the local bucket is full and
                the group was not started.
        """
        future = self.fill_async(
            bucket, id, data, task_type=task_type, run_after=run_after, life_span=life_span
        )
        if not block:
            return future
        placement: Placement = future.get(timeout=timeout)
        return placement

    def fill_async(
        self,
        bucket: str,
        id: str,
        data: Any = None,
        *,
        task_type: TaskType = TaskType.IMMEDIATE,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
    ) -> pykka.Future[Placement]:
        """Like :meth:`fill` but returns a pykka future instead of waiting for a peer.

        Argument errors and local refusals other than "full" are raised at once.
        """
        local, fill, packed = self._check_fill(bucket, id, data, task_type, run_after, life_span)
        refused: GoBucketError | None = None
        if not local.closed:
            # TryFill answers a refusal instead of raising it: an overflowing fill
            # (the common case when the bucket is full) pays no exception.
            try:
                refused = call(local.actor_ref, m.TryFill(*fill))
            except pykka.ActorDeadError:
                refused = BucketClosedError(f"bucket {bucket!r} is shutting down")
            if refused is None:
                return done_future(Placement(True, self.node_id, bucket, id, None))
        if self.pool is None:
            route = self._overflow(bucket, local, fill, packed, refused)
            assert self._group is not None
            future: pykka.Future[Placement] = self._group.ask_later(route)
            return future
        try:
            route = self._overflow(bucket, local, fill, packed, refused)
        except NoPeerAvailableError as error:  # the group is stopped: the pool still may
            return done_future(self._spill(bucket, fill, error))
        except GoBucketError as error:
            if self._group is not None or not (
                refused is None or isinstance(refused, _PEER_MAY_TAKE)
            ):
                raise
            # Not started: no peers to try, straight to the pool.
            return done_future(self._spill(bucket, fill, error))
        assert self._group is not None
        return self._route_then_spill(route, fill)

    def _route_then_spill(self, route: RouteFill, fill: FillFields) -> pykka.Future[Placement]:
        """Ask the group to place ``route``; when no peer takes it, spill it to the pool
        (on an end worker: ``run_blocking``, never on the group actor's thread)."""
        assert self._group is not None
        out: LatchFuture[Placement] = LatchFuture()

        def spill() -> None:
            try:
                out.set(self._spill(route.bucket, fill, last))
            except BaseException as error:
                out.set_exception((type(error), error, error.__traceback__))

        last: GoBucketError = NoPeerAvailableError("no peer")

        def routed(answer: Any, error: BaseException | None) -> None:
            nonlocal last
            if error is None:
                out.set(answer)
            elif isinstance(error, NoPeerAvailableError):
                last = error
                self._runtime.run_blocking(spill)
            else:
                out.set_exception((type(error), error, error.__traceback__))

        queue_then(self._group.ref, route, routed)
        return out

    def _spill(self, bucket: str, fill: FillFields, refused: GoBucketError) -> Placement:
        """Put a fill no node took into the pool (blocking: never on an actor's thread).

        Raises:
            NoPeerAvailableError: the pool refused it too (the message says why).
            DuplicateTaskError: the pool holds a task with this id.
        """
        assert self.pool is not None
        task_type, task_id, data, run_after, life_span = fill
        try:
            self.pool.add(
                bucket,
                task_id,
                data,
                task_type=task_type,
                run_after=run_after,
                life_span=life_span,
            )
        except (PoolFullError, PoolUnavailableError) as error:
            raise NoPeerAvailableError(
                f"{refused}; and the task pool refused it: {error}"
            ) from error
        return Placement(False, f"pool:{self.pool.name}", bucket, task_id, None, pool=True)

    # The steps of a group fill, shared with the async face (gobucket.aio), which
    # asks TryFill and RouteFill with futures that call back instead of waiting.
    def _check_fill(
        self,
        bucket: str,
        id: str,
        data: Any,
        task_type: TaskType,
        run_after: Duration | None,
        life_span: Duration | None,
    ) -> tuple[TaskBucket, FillFields, bytes]:
        """The local bucket, the checked fill and its data packed for the wire (or raise)."""
        local = self.get_bucket(bucket)
        fill = local._make_fill(task_type, id, data, run_after, life_span)
        try:
            packed = pack(data)
        except (TypeError, ValueError, OverflowError) as error:
            raise InvalidArgumentError(
                f"task data cannot be sent to peers (msgpack: {error}); use plain "
                "dicts, lists, str, bytes, numbers, bools and None"
            ) from None
        return local, fill, packed

    def _overflow(
        self,
        bucket: str,
        local: TaskBucket,
        fill: FillFields,
        packed: bytes,
        refused: GoBucketError | None,
    ) -> RouteFill:
        """The RouteFill for a fill the local bucket ``refused`` (None: it is closed), or raise."""
        if refused is not None and not isinstance(refused, _PEER_MAY_TAKE):
            raise refused  # a duplicate id: no peer may run it either
        if self._group is None:
            raise GoBucketError("start() the group before filling it")
        message = m.FillTask(*fill)
        wire = protocol.fill(
            bucket,
            message.task_id,
            packed,
            message.task_type.value,
            message.run_after,
            message.life_span,
        )
        why = "is closed" if local.closed else "is full"
        if self._group.failure is not None:
            raise NoPeerAvailableError(
                f"task buffer exceeded: bucket {bucket!r} {why} and overflow routing "
                f"stopped after repeated failures ({self._group.failure!r})"
            )
        if self._stopped.is_set() or not self._group.ref.is_alive():
            raise NoPeerAvailableError(
                f"task buffer exceeded: bucket {bucket!r} {why} and the group is stopped"
            )
        return RouteFill(bucket, message.task_id, wire)

    def wait_for_peers(
        self,
        count: int = 1,
        *,
        bucket: str | None = None,
        timeout: Duration | None = None,
    ) -> bool:
        """Wait until ``count`` peers are connected; True, or False on ``timeout`` or stop.

        With ``bucket``, a peer counts once it has also reported its load for
        that bucket (so that overflow can be routed to it). Waits on the group's
        actor, which answers as peers come up: nothing polls.

        Raises:
            GoBucketError: the group was not started.
            InvalidArgumentError: a bad ``count``, ``bucket`` or ``timeout``.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidArgumentError(f"count must be an int >= 0, got {count!r}")
        if bucket is not None and not isinstance(bucket, str):
            raise InvalidArgumentError(f"bucket must be a str or None, got {bucket!r}")
        limit = None if timeout is None else to_seconds(timeout, "timeout")
        if self._group is None:
            raise GoBucketError("start() the group before waiting for its peers")
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            ref = self._group.ref
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready = bool(self._group.ask_later(AwaitPeers(count, bucket)).get(timeout=left))
            except pykka.Timeout:
                return False
            except pykka.ActorDeadError:
                ready = False
            if ready:
                return True
            if self._group.ref is ref or self._group.failure is not None:
                return False  # stopped (a restarted actor is asked again)

    def peers(self) -> list[PeerInfo]:
        """What this node knows of each peer: address, node id, loads, up/down, source."""
        if self._group is None:
            return []
        infos: list[PeerInfo] = self._group.ask(GetPeers())
        return infos

    # called by the network side ------------------------------------------------------------
    def _identity(self) -> Identity:
        return Identity(self.cluster, self.node_id, self.address[1], tuple(self._buckets))

    def _on_peer_event(self, event: PeerEvent) -> None:
        if (
            isinstance(event, PeerUp)
            and event.source != "static"
            and (event.source != "mdns" or self.insecure)
            and event.cluster == self.cluster
            and (not event.address[0].startswith("127.") or self._loopback_discovery)
        ):
            # No-secret allow list: a node reported by a source the user configured
            # may connect. An mDNS announcement proves nothing (anyone can send one),
            # so it counts only with insecure=True. A loopback address announced on a
            # LAN is meaningless: only trusted when this node runs discovery on loopback.
            self._server.admit(event.address[0])
        if isinstance(event, PeerUp):
            self._known[event.address] = event
        elif self._known.get(event.address) is not None and (
            self._known[event.address].source == event.source
        ):
            del self._known[event.address]
        if self._group is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._group.tell(Discovered(event))

    def loads(self) -> dict[str, list[int]]:
        """Each local bucket's ``[alive, max]`` (what PONG reports; empty before :meth:`start`)."""
        if self._group is None:
            return {}
        return self._server.loads()


def _group_gone(_failure: BaseException | None) -> pykka.ActorDeadError:
    """What a call to the GroupActor raises once it is gone for good (as pykka would)."""
    return pykka.ActorDeadError("the group's actor is stopped")


_PEER_MAY_TAKE = (BucketFullError, BucketClosedError)
