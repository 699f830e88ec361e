"""Every use of pykka's private API, in one place (pykka>=4.1,<5).

gobucket plugs into pykka through its three documented extension points,
``Actor._create_actor_inbox``, ``Actor._create_future`` and
``Actor._start_actor_loop`` (see :mod:`gobucket.actors.actor`). What those do
not cover is gathered here, each with the reason it is needed;
``tests/actors/test_pykka_contract.py`` fails loudly if a pykka release changes any of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka
from pykka import messages as _messages

# Private: the ActorInbox protocol hands the inbox pykka's envelopes (``message``,
# ``reply_to``); the Mailbox reads them. pykka does not export the class.
from pykka._envelope import Envelope

# Private: what ``ActorRef.stop()`` sends. A stopped actor answers it with ``None``
# (pykka's own actors do the same) instead of ``ActorDeadError``.
from pykka.messages import _ActorStop as ActorStop

if TYPE_CHECKING:
    # Private typing names, for annotations only.
    from pykka._future import GetHookFunc as GetHookFunc
    from pykka._types import OptExcInfo as OptExcInfo

__all__ = [
    "PYKKA_MESSAGES",
    "ActorStop",
    "Envelope",
    "handle_pykka_message",
    "init_actor",
    "init_future",
    "set_get_hook_unset",
]

PYKKA_MESSAGES = frozenset(
    {ActorStop, _messages.ProxyCall, _messages.ProxyGetAttr, _messages.ProxySetAttr}
)
"""pykka's own messages (stop and the proxy's calls), handed to :func:`handle_pykka_message`."""


def handle_pykka_message(actor: pykka.Actor, message: Any) -> Any:
    """Private: ``Actor._handle_receive`` answers stop and proxy messages.

    Our actors replace pykka's actor loop, so they call it themselves; for a
    stop it calls ``actor._stop()``, which :class:`~gobucket.actors.actor.RuntimeActor`
    overrides.
    """
    return actor._handle_receive(message)


def init_actor(actor: pykka.Actor, urn: str, inbox: Any, stopped: Any) -> None:
    """Private: set the fields ``pykka.Actor.__init__`` sets, without calling it.

    Its ``uuid4`` URN and ``threading.Event`` cost more than a short-lived
    task actor can afford (100,000 pending tasks). ``actor_ref`` reads ``_actor_ref``.
    """
    actor.actor_urn = urn
    actor.actor_inbox = inbox
    actor.actor_stopped = stopped
    actor._actor_ref = pykka.ActorRef(actor)


def init_future(future: pykka.Future[Any]) -> None:
    """Private: the field ``pykka.Future.__init__`` sets that ``Future.get`` reads.

    :class:`~gobucket.actors._future.LatchFuture` skips that ``__init__`` (a
    microsecond paid on every ask); ``_get_hook_result`` is set only when a get
    hook is (:func:`set_get_hook_unset`).
    """
    future._get_hook = None


def set_get_hook_unset(future: pykka.Future[Any]) -> None:
    """Private: give ``future`` pykka's "no result yet" marker before ``set_get_hook``."""
    future._get_hook_result = pykka.Future().__dict__["_get_hook_result"]
