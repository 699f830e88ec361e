"""Light actors: an actor that is one slotted object, for the 100,000 tasks of a bucket.

A :class:`~gobucket.actors.actor.RuntimeActor` is a pykka actor: a
:class:`pykka.ActorRef`, a mailbox with a lock, a stop flag and a URN, all
tied together in reference cycles. That is fine for a bucket, too much for
each of its tasks. A :class:`LightActor` keeps the actor's promise (its
messages are handled one at a time, never on two threads at once, in the
order each sender sent them) with none of that:

* **Claiming.** The actors that share a :class:`Board` (a bucket's tasks)
  share one dict. A thread that delivers a message puts a fresh *claim* in it
  with ``dict.setdefault`` (atomic under the GIL): ``[thread id]``. If its
  claim went in, the actor was idle and is now this thread's: it runs the
  handler right here, then the messages that queued meanwhile, then takes its
  claim out. If another claim was there, the actor is busy: the message is
  appended to that claim (a list) and the sender goes on; the owner will
  handle it. So the happy path allocates one two-slot list and queues nothing.
* **No lock.** Nothing here waits for a lock, so a signal handler that
  interrupts a thread anywhere (even between two of these steps) cannot
  deadlock against it; :meth:`LightActor.held_by_current_thread` says when the
  interrupted thread itself owns the actor (waiting for it would never end).
* **Letting go.** The owner takes its claim out of the dict, then looks at it
  once more: a message that slipped in meanwhile is either re-claimed (the
  owner goes on) or, if a new owner already claimed the actor, delivered to
  that owner like any other message. A sender whose claim list was let go
  before it appended takes its message back out (``list.remove``; exactly one
  of sender and owner gets it) and delivers it again.
* **On demand.** :meth:`LightActor.actor_ref` builds a real
  :class:`pykka.ActorRef` around a tiny shim when someone outside asks for
  one; the actor itself never points to it, so no cycle is made.

A handler's exception crashes the actor (:meth:`LightActor.on_failure`), as
with pykka; a crashed or stopped actor answers later asks with
:class:`pykka.ActorDeadError`.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

import pykka

from gobucket.actors._future import LatchFuture
from gobucket.actors._pykka import PYKKA_MESSAGES, ActorStop, Envelope
from gobucket.actors.actor import fail_dead

if TYPE_CHECKING:
    from types import TracebackType

    from gobucket.actors._pykka import OptExcInfo

__all__ = ["LIGHT_SLOTS", "Board", "LightActor"]

logger = logging.getLogger("gobucket.runtime")

_get_ident = threading.get_ident
_urns = itertools.count(1)

Board = dict[Any, list[Any]]
"""The claims of the light actors sharing it: actor → ``[owner thread id, *queued]``."""


LIGHT_SLOTS = ("__weakref__", "_board", "_stopped")
"""The slots a :class:`LightActor` subclass declares."""


class _Ask:
    """A queued message whose sender waits for the answer (identity-compared on purpose)."""

    __slots__ = ("message", "reply")

    def __init__(self, message: Any, reply: pykka.Future[Any]) -> None:
        self.message = message
        self.reply = reply


class LightActor:
    """An actor that is a single slotted object; see the module docstring.

    Subclasses declare the slots :data:`LIGHT_SLOTS` (this class has none of
    its own, so that a light actor may also derive from another slotted
    class: a task is its own context), set ``_board`` (shared with their
    peers) and ``_stopped`` (False) in ``__init__``, and handle messages in
    :meth:`on_receive`.
    """

    __slots__ = ()

    _board: Board
    _stopped: bool

    # senders' side ---------------------------------------------------------------------
    def tell(self, message: Any) -> None:
        """Deliver ``message`` (handled here and now when the actor is idle).

        Raises:
            pykka.ActorDeadError: the actor has stopped.
        """
        if self._stopped:
            raise pykka.ActorDeadError(f"{self} stopped")
        self._deliver(message)

    def ask(self, message: Any, *, block: bool = True, timeout: float | None = None) -> Any:
        """Deliver ``message`` and return its answer (with ``block=False``: its future)."""
        reply: LatchFuture[Any] = LatchFuture()
        if self._stopped:
            fail_dead(self, reply, message)
        else:
            self._deliver(_Ask(message, reply))
        return reply if not block else reply.get(timeout=timeout)

    def call(self, message: Any) -> tuple[bool, Any]:
        """Handle ``message`` on this thread now, if the actor is idle.

        Returns ``(True, answer)``, or ``(False, None)`` when the actor is busy
        (or owned by this very thread, interrupted by a signal handler). A
        handler's exception crashes the actor (see :meth:`on_failure`) and
        propagates.

        Raises:
            pykka.ActorDeadError: the actor has stopped.
        """
        if self._stopped:
            raise pykka.ActorDeadError(f"{self} stopped")
        claim = [_get_ident()]
        if self._board.setdefault(self, claim) is not claim:
            return False, None
        reply: LatchFuture[Any] = LatchFuture()
        self._run(_Ask(message, reply), claim)
        return True, reply.get(timeout=0)

    def held_by_current_thread(self) -> bool:
        """True when this thread owns the actor (a signal handler interrupted it there)."""
        claim = self._board.get(self)
        return claim is not None and claim[0] == _get_ident()

    def is_alive(self) -> bool:
        """False once the actor has stopped."""
        return not self._stopped

    def actor_ref(self) -> pykka.ActorRef[Any]:
        """A real :class:`pykka.ActorRef` to this actor (a new one per call).

        ``tell``, ``ask`` and ``stop`` work as with any pykka actor (what
        ``stop`` means is up to :meth:`on_stop_request`); proxies are not
        supported.
        """
        return pykka.ActorRef(Light(self))

    # delivery ------------------------------------------------------------------------
    def _deliver(self, item: Any) -> None:
        board = self._board
        claim = [_get_ident()]
        while True:
            owned = board.setdefault(self, claim)
            if owned is claim:
                self._run(item, claim)
                return
            owned.append(item)
            if board.get(self) is owned:
                return  # its owner will handle it
            # Its owner let go as we appended: take the message back, unless it did.
            try:
                owned.remove(item)
            except ValueError:
                return

    def _run(self, item: Any, claim: list[Any]) -> None:
        """Handle ``item``, then everything queued, then let go (the claim is ours)."""
        try:
            error = self._handle(item)
            while True:
                while len(claim) > 1:
                    try:
                        late = claim.pop(1)
                    except IndexError:  # a sender took its message back meanwhile
                        break
                    error = error or self._handle(late)
                if not self._let_go(claim):
                    break
        except BaseException:
            # Interrupted between two handlers (a KeyboardInterrupt from a signal):
            # the actor must not stay claimed by a thread that left.
            self._abandon(claim)
            raise
        if error is not None:
            raise error

    def _abandon(self, claim: list[Any]) -> None:
        """Let go of the actor at once and pass on whatever queued in ``claim``."""
        board = self._board
        if board.get(self) is claim:
            del board[self]
        self._pass_on(claim)

    def _pass_on(self, claim: list[Any]) -> None:
        """Deliver again what queued in a claim we no longer hold."""
        while len(claim) > 1:
            try:
                item = claim.pop(1)
            except IndexError:  # a sender took its message back meanwhile
                break
            self._deliver(item)

    def _let_go(self, claim: list[Any]) -> bool:
        """Take our claim out; True if we claimed the actor again for late messages."""
        board = self._board
        del board[self]
        if len(claim) == 1:
            return False
        if board.setdefault(self, claim) is claim:
            return True
        self._pass_on(claim)  # someone else owns the actor now: they get the late messages
        return False

    def _handle(self, item: Any) -> BaseException | None:
        """Handle one message; return a BaseException (not an Exception) to re-raise."""
        reply: pykka.Future[Any] | None = None
        message = item
        if type(item) is _Ask:
            reply = item.reply
            message = item.message
        if self._stopped:
            fail_dead(self, reply, message)
            return None
        try:
            if type(message) in PYKKA_MESSAGES:
                answer = self._pykka_message(message)
            else:
                answer = self.on_receive(message)
        except Exception:
            if reply is not None:
                reply.set_exception()
            self._crash(sys.exc_info())
            return None
        except BaseException as error:
            if reply is not None:
                reply.set_exception()
            self._crash(sys.exc_info())
            return error
        if reply is not None:
            reply.set(answer)
        return None

    def _pykka_message(self, message: Any) -> Any:
        if isinstance(message, ActorStop):
            self.on_stop_request()
            return None
        raise TypeError(f"{type(self).__name__} is a light actor: pykka proxies are not supported")

    def _crash(self, exc_info: OptExcInfo) -> None:
        """A handler raised: log it, stop, and call :meth:`on_failure` (once)."""
        if self._stopped:
            logger.error("error in stopped %s", self, exc_info=exc_info)  # type: ignore[arg-type]
            return
        logger.error("unhandled error in %s", self, exc_info=exc_info)  # type: ignore[arg-type]
        self._stopped = True  # type: ignore[misc]  # the slot is the subclass's (LIGHT_SLOTS)
        try:
            self.on_failure(*exc_info)
        except Exception:
            logger.exception("on_failure of %s raised", self)

    # for subclasses ------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        """Handle a message; the return value answers an ask."""
        raise TypeError(f"{type(self).__name__} cannot handle {message!r}")

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Called once when a handler raised; the actor is stopped by then."""

    def on_stop_request(self) -> None:
        """What a pykka ``stop()`` through :meth:`actor_ref` does (default: stop)."""
        self._stopped = True  # type: ignore[misc]  # the slot is the subclass's (LIGHT_SLOTS)


class Light:
    """What a :class:`pykka.ActorRef` reads of an actor, for a light actor.

    It is the ref's "actor" (its class makes the futures), inbox (``put``) and
    stop flag (``is_set``) at once.
    """

    __slots__ = ("__weakref__", "actor", "actor_urn")

    def __init__(self, actor: LightActor) -> None:
        self.actor = actor
        self.actor_urn = f"urn:gobucket:{type(actor).__name__}:{next(_urns)}"

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        """pykka's ref makes its asks' futures with the actor class's ``_create_future``."""
        return LatchFuture()

    @property
    def actor_inbox(self) -> Light:
        return self

    @property
    def actor_stopped(self) -> Light:
        return self

    def put(self, envelope: Envelope[Any], /) -> None:
        """pykka's ``ActorInbox.put``: deliver the envelope's message (and reply)."""
        actor = self.actor
        reply = envelope.reply_to
        if actor._stopped:
            fail_dead(actor, reply, envelope.message)
            return
        actor._deliver(envelope.message if reply is None else _Ask(envelope.message, reply))

    def held_by_current_thread(self) -> bool:
        """See :meth:`LightActor.held_by_current_thread`."""
        return self.actor.held_by_current_thread()

    def is_set(self) -> bool:
        """The actor has stopped."""
        return self.actor._stopped
