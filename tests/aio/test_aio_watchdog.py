"""The loop-lag watchdog on its own: any coroutine that blocks the loop is named; one
watchdog per loop, shared and released by count."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from helpers.waiting import wait_until

from gobucket.aio import LoopWatchdog, unwatch_loop, watch_loop


def test_a_blocking_coroutine_of_the_application_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gobucket.aio")

    async def handler() -> None:
        await asyncio.sleep(0)
        time.sleep(0.4)  # the blocking call

    async def scenario() -> LoopWatchdog:
        loop = asyncio.get_running_loop()
        dog = watch_loop(loop, 0.1)
        assert watch_loop(loop, 0.5) is dog  # shared: one per loop
        try:
            await asyncio.create_task(handler(), name="request-17")
            await asyncio.sleep(0.2)  # the loop runs again: the end of the stall is seen
        finally:
            unwatch_loop(loop)
            unwatch_loop(loop)
        return dog

    dog = asyncio.run(scenario())

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "gobucket.aio" and "'request-17'" in r.getMessage()
        ]

    messages = wait_until(lambda: len(warnings()) >= 2 and warnings(), what="both warnings")
    assert "has been blocked" in messages[0] and "handler" in messages[0]
    assert "ran again" in messages[1]
    assert dog.stalls >= 1  # (a loaded host may add stalls of its own)
    assert 0.2 <= wait_until(lambda: dog.longest) <= 5.0


def test_a_threshold_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            LoopWatchdog(loop, 0)
    finally:
        loop.close()
