"""What gobucket relies on in pykka beyond its public API (see gobucket/actors/_pykka.py).

If one of these fails after a pykka upgrade, gobucket's actor plug-in must be
revisited before that pykka version is allowed in pyproject.toml.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pykka
from pykka import messages

from gobucket.actors import _pykka
from gobucket.actors._future import LatchFuture
from gobucket.actors.actor import RuntimeActor

WAIT = 5.0


def test_pykka_is_a_4_x_release():
    major, minor = (int(p) for p in version("pykka").split(".")[:2])
    assert major == 4 and minor >= 1


def test_the_three_documented_extension_points_exist():
    for name in ("_create_actor_inbox", "_create_future", "_start_actor_loop"):
        assert callable(getattr(pykka.Actor, name)), name
    # ActorRef.ask makes its future with _create_future; tell/ask put envelopes in the inbox.
    source = inspect.getsource(pykka.ActorRef)
    assert "_create_future" in source and "actor_inbox.put" in source


def test_envelopes_carry_a_message_and_a_reply_future():
    future = pykka.Future()
    envelope = _pykka.Envelope("hello", reply_to=future)
    assert (envelope.message, envelope.reply_to) == ("hello", future)
    assert _pykka.Envelope("x").reply_to is None


def test_stop_and_proxy_messages_are_the_ones_we_route():
    assert _pykka.ActorStop is messages._ActorStop
    assert {messages.ProxyCall, messages.ProxyGetAttr, messages.ProxySetAttr} < (
        _pykka.PYKKA_MESSAGES
    )
    assert "_ActorStop" in inspect.getsource(pykka.ActorRef.stop)


def test_handle_receive_answers_proxy_messages_and_stops_through_stop():
    source = inspect.getsource(pykka.Actor._handle_receive)
    assert "self._stop()" in source

    class Echo(RuntimeActor):
        value = 7

    ref = Echo.start()
    try:
        assert ref.proxy().value.get(timeout=WAIT) == 7
    finally:
        ref.stop(timeout=WAIT)
    assert not ref.is_alive()


def test_actor_init_sets_exactly_the_fields_init_actor_sets():
    class Plain(pykka.ThreadingActor):
        pass

    actor = Plain()
    assert set(vars(actor)) == {"actor_urn", "actor_inbox", "actor_stopped", "_actor_ref"}
    assert actor.actor_ref is actor._actor_ref
    ours = RuntimeActor.__new__(RuntimeActor)
    _pykka.init_actor(ours, "urn:x", object(), object())
    assert ours.actor_ref.actor_urn == "urn:x"


def test_future_init_sets_only_the_get_hook_fields():
    fields = pykka.Future().__dict__
    assert set(fields) == {"_get_hook", "_get_hook_result"}
    assert fields["_get_hook"] is None
    assert "_get_hook_result" in inspect.getsource(pykka.Future.get)


def test_a_latch_future_works_with_pykka_get_hooks():
    future: LatchFuture[int] = LatchFuture()
    doubled = future.map(lambda x: x * 2)
    future.set(21)
    assert doubled.get(timeout=WAIT) == 42
    assert pykka.get_all([doubled], timeout=WAIT) == [42]
