"""examples/asyncio_service.py runs to completion by itself: it schedules, cancels, rescues
on shutdown and replays on the next start."""

from __future__ import annotations

import pytest
from helpers.child_node import python_child

pytestmark = pytest.mark.slow


def test_the_asyncio_service_example_runs_by_itself() -> None:
    child = python_child("examples/asyncio_service.py")
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "409 Conflict" in out and "cancelled call" in out and "404 Not Found" in out
    first, second = out.split("second run:")
    assert "sent: reminder tea: put the kettle on" in first
    assert "report rescued" in first and "sent: reminder report" not in first
    assert "1 reminder(s) replayed" in second
    assert "sent: reminder report: send the report" in second
    assert "call" not in second  # a cancelled reminder is never sent
