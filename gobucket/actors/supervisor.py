"""The root supervisor of a runtime: restarts failed BucketActors, OTP style.

A BucketActor that fails (an exception in its own code, not in a hook) tells
the supervisor from ``on_failure`` with the refs of its live tasks. The
supervisor rescues those tasks through ``on_panic`` (the write to a rescue
sink, if any, happens on a worker thread), then starts a fresh BucketActor
from the child's factory and hands it to the facade, which goes on working.
More than ``max_restarts`` failures within ``window`` seconds escalate: the
bucket is stopped for good and callers get a clear error.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pykka

from gobucket.actors import messages as m
from gobucket.actors.actor import RuntimeActor, call
from gobucket.actors.messages import Answer, ChildFailed, Supervise, Unsupervise

__all__ = ["RootSupervisor", "Supervised"]

logger = logging.getLogger("gobucket.supervisor")


@dataclass
class _Child:
    spec: Supervise
    restarts: collections.deque[float] = field(default_factory=collections.deque)


class RootSupervisor(RuntimeActor):
    """One per runtime; supervises its buckets with a one-for-one strategy."""

    def __init__(self) -> None:
        super().__init__()
        self.children: dict[str, _Child] = {}

    def on_receive(self, message: Any) -> Any:
        """Handle Supervise, Unsupervise and ChildFailed."""
        if isinstance(message, Supervise):
            self.children[message.child] = _Child(message)
            return None
        if isinstance(message, Unsupervise):
            self.children.pop(message.child, None)
            return None
        if isinstance(message, ChildFailed):
            self._on_failed(message)
            return None
        return super().on_receive(message)

    def _on_failed(self, msg: ChildFailed) -> None:
        child = self.children.get(msg.child)
        if child is None:
            return
        spec = child.spec
        # Rescue what the dead actor held: each task runs on_panic.
        panics = []
        for task_id, ref in msg.tasks:
            try:
                panics.append((task_id, ref, ref.ask(m.PANIC, block=False)))
            except pykka.ActorDeadError:
                continue
        now = time.monotonic()
        child.restarts.append(now)
        while child.restarts and child.restarts[0] < now - spec.window:
            child.restarts.popleft()
        if len(child.restarts) > spec.max_restarts:
            del self.children[msg.child]
            logger.error(
                "%s failed %d times within %.0fs: giving up, it is stopped",
                msg.child,
                len(child.restarts),
                spec.window,
            )
            spec.gave_up(msg.error or RuntimeError("actor failed"), panics)
            return
        logger.warning(
            "%s failed (%r): restarting it (%d/%d within %.0fs)",
            msg.child,
            msg.error,
            len(child.restarts),
            spec.max_restarts,
            spec.window,
        )
        try:
            fresh = spec.factory()
        except Exception as error:
            logger.exception("restarting %s failed", msg.child)
            del self.children[msg.child]
            spec.gave_up(error, panics)
            return
        spec.restarted(fresh, panics)


A = TypeVar("A", bound=pykka.Actor)


class Supervised(Generic[A]):
    """A handle on a supervised actor that survives the actor's restarts.

    Every call a facade makes to its supervised actor goes through one of
    these. It starts the actor with ``spawn``, puts it under ``supervisor``
    and, when the supervisor replaces a failed actor, swaps in the fresh one.
    :meth:`ask` that meets a dead actor waits (up to ``restart_wait``
    seconds) for its replacement and asks again; when none comes (the
    supervisor gave up, or the handle was :meth:`retire`-d) it raises what
    ``gone`` makes of the last failure.

    Args:
        supervisor: the runtime's :class:`RootSupervisor`.
        key: the child's unique name at the supervisor.
        spawn: starts a fresh actor (also used for restarts).
        gone: builds the error raised when the actor is gone for good; given
            the failure that made the supervisor give up, or None.
        restarted: told the fresh ref and the rescued tasks' answers after a restart.
        gave_up: told the last error and the rescued tasks' answers when the
            supervisor stops restarting.
        max_restarts, window: more than ``max_restarts`` failures within
            ``window`` seconds make the supervisor give up.
    """

    def __init__(
        self,
        supervisor: pykka.ActorRef[RootSupervisor],
        key: str,
        spawn: Callable[[], pykka.ActorRef[A]],
        *,
        gone: Callable[[BaseException | None], Exception],
        restarted: Callable[[pykka.ActorRef[A], list[Answer]], None] | None = None,
        gave_up: Callable[[BaseException, list[Answer]], None] | None = None,
        max_restarts: int = 3,
        window: float = 10.0,
        restart_wait: float = 5.0,
    ) -> None:
        self._supervisor = supervisor
        self._key = key
        self._gone = gone
        self._on_restarted = restarted
        self._on_gave_up = gave_up
        self._restart_wait = restart_wait
        self._swapped = threading.Condition()  # notified when the actor is swapped or gone
        self._failure: BaseException | None = None
        self._retired = False
        self._ref: pykka.ActorRef[A] = spawn()
        call(
            supervisor,
            Supervise(key, spawn, self._restarted, self._gave_up, max_restarts, window),
        )

    @property
    def ref(self) -> pykka.ActorRef[A]:
        """The actor's current ref (changes when the supervisor restarts it)."""
        return self._ref

    @property
    def failure(self) -> BaseException | None:
        """The failure that made the supervisor give up, if it did."""
        return self._failure

    def ask(self, message: Any) -> Any:
        """Ask the actor (inline when it is idle); across a restart, ask the fresh one.

        Raises:
            pykka.ActorDeadError: another actor the handler asked was gone.
            Exception: what ``gone`` makes, once no fresh actor will come.
        """
        while True:
            ref = self._ref
            try:
                return call(ref, message)
            except pykka.ActorDeadError:
                if ref.is_alive():
                    raise  # another actor (not ours) was gone: not ours to handle
                self._await_restart(ref)

    def ask_later(self, message: Any) -> pykka.Future[Any]:
        """Queue ``message`` and return the future of the answer (no restart handling)."""
        return self._ref.ask(message, block=False)

    def tell(self, message: Any) -> None:
        """Send ``message`` to the current actor, without an answer."""
        self._ref.tell(message)

    def retire(self) -> None:
        """From now on a dead actor is gone for good: :meth:`ask` does not wait for a restart."""
        with self._swapped:
            self._retired = True
            self._swapped.notify_all()

    def release(self) -> None:
        """Take the actor off supervision (it keeps running; :meth:`ask` no longer waits)."""
        self.retire()
        call(self._supervisor, Unsupervise(self._key))

    def stop(self) -> None:
        """Take the actor off supervision and stop it."""
        self.release()
        self._ref.stop()

    def _restarted(self, fresh: pykka.ActorRef[A], panics: list[Answer]) -> None:
        with self._swapped:
            self._ref = fresh
            self._swapped.notify_all()
        if self._on_restarted is not None:
            self._on_restarted(fresh, panics)

    def _gave_up(self, error: BaseException, panics: list[Answer]) -> None:
        with self._swapped:
            self._failure = error
            self._retired = True
            self._swapped.notify_all()
        if self._on_gave_up is not None:
            self._on_gave_up(error, panics)

    def _await_restart(self, dead: pykka.ActorRef[Any]) -> None:
        """The actor died under us: return once the supervisor replaced it, or raise."""
        with self._swapped:
            self._swapped.wait_for(
                lambda: self._ref is not dead or self._retired, timeout=self._restart_wait
            )
            if self._ref is not dead:
                return
        raise self._gone(self._failure) from None
