"""Every self-contained example runs to completion (as a newcomer would run it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.child_node import REPO_ROOT

# lan_cluster.py needs multicast between namespaces and asyncio_service.py has its own
# test (tests/aio/test_aio_example.py); the rest run on their own, on loopback.
SELF_CONTAINED = [
    ("standalone.py", "rescued"),
    ("async_hooks.py", "exhausted"),
    ("group_two_nodes.py", "node B"),
    ("metrics.py", "gobucket_task_ends_total"),
    ("node_status.py", "STATUS of node A"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("script", "expected"), SELF_CONTAINED, ids=[s for s, _ in SELF_CONTAINED])
def test_example_runs_to_completion(script: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=str(REPO_ROOT),
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout, done.stdout
