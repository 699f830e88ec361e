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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from gobucket.actors import messages as m
from gobucket.actors.actor import RuntimeActor
from gobucket.actors.messages import Answer

__all__ = ["ChildFailed", "RootSupervisor", "Supervise"]

logger = logging.getLogger("gobucket.supervisor")


@dataclass(frozen=True, slots=True)
class Supervise:
    """Put a child under supervision (answered once registered)."""

    child: str
    factory: Callable[[], pykka.ActorRef[Any]]
    restarted: Callable[[pykka.ActorRef[Any], list[Answer]], None]
    gave_up: Callable[[BaseException, list[Answer]], None]
    max_restarts: int = 3
    window: float = 10.0


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A supervised child crashed; ``tasks`` are the ids and refs of its live tasks."""

    child: str
    error: BaseException | None
    tasks: list[tuple[str, pykka.ActorRef[Any]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Unsupervise:
    """Forget a child (it is stopping on purpose)."""

    child: str


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
