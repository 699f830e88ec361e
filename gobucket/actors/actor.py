"""gobucket's pykka plug-in: many pykka actors on a few shared dispatcher threads.

pykka's :class:`~pykka.ThreadingActor` gives every actor an OS thread. A bucket
can hold 100,000 pending tasks, so gobucket plugs its own actor class into
pykka's three documented extension points (``_create_actor_inbox``,
``_create_future``, ``_start_actor_loop``) and keeps pykka's
:class:`~pykka.ActorRef`, ``tell``, ``ask``, futures and proxies:

* Each actor has a :class:`Mailbox`. A message put into an idle mailbox either
  runs at once on the sending thread (see below) or schedules the mailbox on
  its runtime's dispatcher run queue; a dispatcher thread then runs the whole
  batch of messages waiting in it. An actor handles one message at a time, always.
* *Inline delivery*: when an actor is idle, an ``ask`` (the asker blocks
  anyway) or a ``tell`` from a runtime thread (see :mod:`gobucket._threads`)
  runs the handler on the sending thread, saving two thread switches.
  Handlers never block, so this is safe; nesting is bounded by
  :data:`MAX_INLINE_DEPTH`.
* Blocking work never runs on a dispatcher: hooks go to the hook runners in
  :mod:`gobucket.executors`.

The dispatcher threads, timers and hook runners an actor uses belong to its
:class:`~gobucket.actors.runtime.ActorRuntime` (``self.runtime``). This module
does not import the runtime (the runtime imports the supervisor, an actor):
:mod:`gobucket.actors.runtime` hands it the default runtime with
:func:`use_default_runtime`. What pykka's extension points do not cover is
in :mod:`gobucket.actors._pykka`.
"""

from __future__ import annotations

import itertools
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Self

import pykka

from gobucket._threads import _depth, _runtime_thread
from gobucket._threads import local as _local
from gobucket.actors._future import CallbackFuture, LatchFuture
from gobucket.actors._pykka import (
    PYKKA_MESSAGES,
    ActorStop,
    Envelope,
    handle_pykka_message,
    init_actor,
)

if TYPE_CHECKING:
    from types import TracebackType

    from gobucket.actors.runtime import ActorRuntime

__all__ = [
    "Deferred",
    "Mailbox",
    "MayDefer",
    "Reentrant",
    "RuntimeActor",
    "ask_then",
    "call",
    "fail_dead",
    "queue_then",
    "use_default_runtime",
]

logger = logging.getLogger("gobucket.runtime")

MAX_INLINE_DEPTH = 2
"""How deeply inline deliveries may nest on one thread before messages are queued."""

RELEASE_ROUNDS = 4
"""Batches of late messages a thread handles before it hands an actor to a dispatcher."""

_get_ident = threading.get_ident
_urns = itertools.count(1)
_default_runtime: Callable[[], ActorRuntime] | None = None


def use_default_runtime(factory: Callable[[], ActorRuntime]) -> None:
    """Where actors started without a runtime run (set by :mod:`gobucket.actors.runtime`)."""
    global _default_runtime
    _default_runtime = factory


class Reentrant:
    """Base of a message safe to handle while its actor is interrupted on this thread.

    A signal handler may run on a thread that is inside an actor's handler;
    such a thread may still :meth:`Mailbox.call` the actor with a message that
    only reads (or only sends), never one that changes what the interrupted
    handler is changing.
    """

    __slots__ = ()


class MayDefer:
    """Base of a message whose handler may answer later instead of returning a value.

    Its handler returns :class:`Deferred` (see :meth:`RuntimeActor.defer_reply`)
    when the answer depends on another actor; an inline :func:`call` then waits
    for the deferred reply.
    """

    __slots__ = ()


class _StopFlag(threading.Event):
    """A :class:`threading.Event` that allocates its condition only when waited on.

    pykka gives each actor an Event; a real one costs about 1 KB, which
    100,000 pending tasks cannot afford.
    """

    _guard = threading.Lock()

    def __init__(self) -> None:  # deliberately not calling super().__init__()
        self._flag = False
        self._cond_obj: threading.Condition | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        cond = self._cond_obj
        if cond is not None:
            with cond:
                cond.notify_all()

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        with self._guard:
            if self._cond_obj is None:
                self._cond_obj = threading.Condition(threading.Lock())
        cond = self._cond_obj
        with cond:
            return cond.wait_for(lambda: self._flag, timeout)


class Mailbox:
    """An actor's inbox on the shared runtime (pykka's ``ActorInbox`` protocol).

    Messages go into a list (``append`` and ``pop(0)`` are atomic). A *run
    lock*, only ever tried and never waited on, says who runs the actor: the
    thread that wins it handles every queued message in order, then lets go
    and looks again, so no message is stranded and an actor never runs on
    two threads. A sender that loses simply leaves its message behind.

    Nothing here blocks on a lock, so a signal handler that interrupts a
    thread in the middle of a delivery can never deadlock against it.
    """

    __slots__ = ("_actor", "_items", "_owner", "_run")

    def __init__(self) -> None:
        self._items: list[Envelope[Any]] = []
        self._run = threading.Lock()
        self._owner = 0
        self._actor: RuntimeActor | None = None

    def held_by_current_thread(self) -> bool:
        """True while this thread is inside one of the actor's handlers.

        That happens when a signal handler interrupts the main thread in the
        middle of an inline delivery; waiting for the actor would deadlock.
        """
        if not self._run.locked():
            return False
        return self._owner == _get_ident() or getattr(_local, "claim", None) is self

    # pykka's ActorInbox protocol -------------------------------------------------
    def put(self, envelope: Envelope[Any], /) -> None:
        """Deliver a message: run it inline when allowed, else leave it for a dispatcher.

        An asker (or a runtime thread) that finds the actor free runs it on its
        own thread: the messages already queued, then its own.
        """
        self._items.append(envelope)
        # "claim" covers the instant between taking the run lock and recording
        # the owner, in case a signal handler runs right there.
        _local.claim = self
        if not self._run.acquire(False):
            _local.claim = None
            return  # whoever runs the actor will find the message
        # The thread-locals are read once per delivery and handed down.
        depth = _depth()
        if (envelope.reply_to is not None or _runtime_thread()) and depth < MAX_INLINE_DEPTH:
            self._run_here(None, depth)
        else:
            actor = self._actor
            assert actor is not None
            actor.runtime.schedule(self)
            _local.claim = None

    def get(self) -> Envelope[Any]:
        """Take the oldest queued message (raises IndexError when there is none)."""
        return self._items.pop(0)

    def empty(self) -> bool:
        """True when no message is queued."""
        return not self._items

    # runtime side ----------------------------------------------------------------
    def call(self, message: Any, *, idle_only: bool = False) -> tuple[bool, Any]:
        """Handle ``message`` on this thread now, if the actor is not running elsewhere.

        This is ``ask`` without the future: messages already queued are handled
        first (order is kept), then ``message``, whose handler's return value is
        given back as ``(True, result)`` and whose exception propagates. When
        the actor is busy on another thread (or, with ``idle_only``, has
        anything queued) nothing happens and ``(False, None)`` is returned.
        """
        if self.held_by_current_thread():
            if isinstance(message, Reentrant):
                # A signal handler interrupted this thread inside the actor: a
                # message that only reads (or only sends) may still be handled.
                actor = self._actor
                assert actor is not None
                return True, actor._handle_direct(message)
            return False, None
        depth = _depth()
        if depth >= MAX_INLINE_DEPTH or (idle_only and self._items):
            return False, None
        _local.claim = self
        if not self._run.acquire(False):
            _local.claim = None
            return False, None
        return True, self._run_here(message, depth)

    def _run_here(self, message: Any, depth: int) -> Any:
        """Run the actor on this thread (the run lock is held), then let go."""
        actor = self._actor
        assert actor is not None
        self._owner = _get_ident()
        _local.claim = None
        _local.depth = depth + 1
        items = self._items
        try:
            while items:
                actor._process(items.pop(0))
            if message is not None:
                if actor.actor_stopped.is_set():
                    raise pykka.ActorDeadError(f"{actor} stopped before handling the message")
                if isinstance(message, MayDefer):
                    return actor._handle_call(message)
                return actor._handle_direct(message)
            return None
        finally:
            _local.depth = depth
            self._release(actor, RELEASE_ROUNDS)

    def _release(self, actor: RuntimeActor, rounds: int) -> None:
        """Let go of the actor; handle what arrived meanwhile or hand it to a dispatcher."""
        items = self._items
        run = self._run
        while True:
            _local.claim = self  # until the lock is released and not re-taken
            self._owner = 0
            run.release()
            if not items or not run.acquire(False):
                _local.claim = None
                return
            # Something arrived while we were letting go, and the actor is ours again.
            if rounds <= 0:
                actor.runtime.schedule(self)
                _local.claim = None
                return
            rounds -= 1
            self._owner = _get_ident()
            _local.claim = None
            try:
                batch = len(items)
                while batch > 0 and items:
                    actor._process(items.pop(0))
                    batch -= 1
            except BaseException:
                self._owner = 0
                run.release()
                raise

    def run_batch(self) -> None:
        """Run queued messages (called by a dispatcher thread, run lock held)."""
        actor = self._actor
        assert actor is not None
        self._owner = _get_ident()
        items = self._items
        batch = len(items) + 1
        while batch > 0 and items:
            actor._process(items.pop(0))
            batch -= 1
        self._release(actor, 0)


class Deferred:
    """What an inline call returns when the handler deferred its reply."""

    __slots__ = ("future",)

    def __init__(self, future: pykka.Future[Any]) -> None:
        self.future = future


def call(ref: pykka.ActorRef[Any], message: Any, timeout: float | None = None) -> Any:
    """Ask ``ref`` and wait: inline when the actor is free, through its mailbox otherwise."""
    inbox = ref.actor_inbox
    if type(inbox) is Mailbox and ref.is_alive():
        done, result = inbox.call(message)
        if done:
            if type(result) is Deferred:
                return result.future.get(timeout=timeout)
            return result
    return ref.ask(message, timeout=timeout)


def ask_then(
    ref: pykka.ActorRef[Any], message: Any, done: Callable[[Any, BaseException | None], None]
) -> None:
    """Ask ``ref`` without waiting: ``done(answer, error)`` is called once it answered.

    When the actor is free the message is handled inline and ``done`` is called
    before this returns; when it is busy on another thread the message is
    queued and ``done`` is called on the thread that handles it. Never blocks.
    ``message`` must not be :class:`MayDefer` (a deferred inline answer would
    need a wait).
    """
    assert not isinstance(message, MayDefer), "ask_then cannot follow a deferred answer"
    inbox = ref.actor_inbox
    if type(inbox) is Mailbox and ref.is_alive():
        try:
            handled, answer = inbox.call(message)
        except Exception as error:
            done(None, error)
            return
        if handled:
            done(answer, None)
            return
    if not ref.is_alive():
        done(None, pykka.ActorDeadError(f"{ref} not found"))
        return
    # A dead actor answers the queued message with ActorDeadError (_fail_dead).
    inbox.put(Envelope(message, reply_to=CallbackFuture(done)))


def queue_then(
    ref: pykka.ActorRef[Any], message: Any, done: Callable[[Any, BaseException | None], None]
) -> None:
    """Queue ``message`` for ``ref`` and call ``done(answer, error)`` once it is answered.

    Unlike :func:`ask_then` it never runs the handler inline, so ``message`` may
    be :class:`MayDefer` (the deferred answer calls ``done`` when it is set, on
    the thread that sets it). Never blocks.
    """
    if not ref.is_alive():
        done(None, pykka.ActorDeadError(f"{ref} not found"))
        return
    ref.actor_inbox.put(Envelope(message, reply_to=CallbackFuture(done)))


class RuntimeActor(pykka.Actor):
    """A pykka actor that runs on an :class:`ActorRuntime` instead of its own thread.

    Use it like any pykka actor (``start``, ``tell``, ``ask``, ``proxy``). Two
    differences: actors are not put in pykka's global ``ActorRegistry`` unless
    ``register = True`` (its list would make 100,000 short-lived actors
    quadratic), and the runtime is chosen with the ``runtime`` keyword of
    :meth:`start_on`.

    Subclasses handle messages in ``on_receive``; a handler may call
    :meth:`defer_reply` to answer an ``ask`` later.
    """

    register: ClassVar[bool] = False
    runtime: ActorRuntime
    _reply: pykka.Future[Any] | None

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        # pykka.Actor.__init__ made lighter: cheap URN, lazy stop event.
        inbox = Mailbox()
        inbox._actor = self
        init_actor(self, f"urn:gobucket:{next(_urns)}", inbox, _StopFlag())
        self._reply = None
        if not hasattr(self, "runtime"):
            assert _default_runtime is not None, "gobucket.actors.runtime sets it on import"
            self.runtime = _default_runtime()

    @classmethod
    def start_on(cls, runtime: ActorRuntime, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        """Start an actor of this class on ``runtime``."""
        obj = cls.__new__(cls)
        obj.runtime = runtime
        obj.__init__(*args, **kwargs)  # type: ignore[misc]
        return obj._launch()

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        """Start an actor on the default runtime (pykka's ``Actor.start``)."""
        obj = cls(*args, **kwargs)
        return obj._launch()

    def _launch(self) -> pykka.ActorRef[Self]:
        if self.register:
            pykka.ActorRegistry.register(self.actor_ref)
        self._start_actor_loop()
        return self.actor_ref

    @staticmethod
    def _create_actor_inbox() -> Mailbox:
        return Mailbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return LatchFuture()

    def _start_actor_loop(self) -> None:
        ok, _ = self.actor_inbox.call(_START, idle_only=True)  # type: ignore[attr-defined]
        if not ok:
            self.actor_ref.tell(_START)

    # message processing ------------------------------------------------------------
    def _process(self, envelope: Envelope[Any]) -> None:
        reply_to = envelope.reply_to
        if self.actor_stopped.is_set():
            fail_dead(self, reply_to, envelope.message)
            return
        self._reply = reply_to
        try:
            response = self._handle_direct(envelope.message)
        except Exception:
            self._reply = None
            if reply_to is not None:
                reply_to.set_exception()
            else:
                self._crash(*sys.exc_info())
            return
        except BaseException:
            self._reply = None
            if reply_to is not None:
                reply_to.set_exception()
            self._crash(*sys.exc_info())
            raise
        if self._reply is not None:
            self._reply = None
            reply_to.set(response)  # type: ignore[union-attr]

    def _handle_direct(self, message: Any) -> Any:
        if type(message) in PYKKA_MESSAGES:
            return handle_pykka_message(self, message)
        if message is _START:
            try:
                self.on_start()
            except Exception:
                self._crash(*sys.exc_info())
            return None
        return self.on_receive(message)

    def _handle_call(self, message: Any) -> Any:
        """Handle an inline call whose handler may defer its reply (``may_defer``)."""
        future: LatchFuture[Any] = LatchFuture()
        self._reply = future
        try:
            result = self._handle_direct(message)
        finally:
            deferred = self._reply is None
            self._reply = None
        return Deferred(future) if deferred else result

    def defer_reply(self) -> pykka.Future[Any] | None:
        """Take over the reply of the ``ask`` being handled; answer it later yourself."""
        reply, self._reply = self._reply, None
        return reply

    def _crash(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.actor_stopped.is_set():
            logger.error("error in stopped %s", self, exc_info=(exc_type, exc_value, tb))  # type: ignore[arg-type]
            return
        logger.error("unhandled error in %s", self, exc_info=(exc_type, exc_value, tb))  # type: ignore[arg-type]
        self._mark_stopped()
        try:
            self.on_failure(exc_type, exc_value, tb)
        except Exception:
            logger.exception("on_failure of %s raised", self)
        self._fail_pending()

    def _stop(self) -> None:
        """Stop now: later messages are answered with :class:`pykka.ActorDeadError`."""
        if self.actor_stopped.is_set():
            return
        self._mark_stopped()
        try:
            self.on_stop()
        except Exception:
            self._crash(*sys.exc_info())
        self._fail_pending()

    def _mark_stopped(self) -> None:
        if self.register:
            pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()

    def _fail_pending(self) -> None:
        inbox: Mailbox = self.actor_inbox  # type: ignore[assignment]
        while True:
            try:
                envelope = inbox.get()
            except IndexError:
                break
            fail_dead(self, envelope.reply_to, envelope.message)


class _Start:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<start>"


_START = _Start()


def fail_dead(actor: object, reply_to: pykka.Future[Any] | None, message: Any) -> None:
    """Answer a message the actor will never handle (an ask, or a tell carrying a reply)."""
    if reply_to is None:
        reply_to = getattr(message, "reply", None)
        if not isinstance(reply_to, pykka.Future):
            return
    try:
        if isinstance(message, ActorStop):
            reply_to.set(None)
        else:
            err = pykka.ActorDeadError(f"{actor} stopped before handling the message")
            reply_to.set_exception((type(err), err, None))
    except queue.Full:
        pass
