"""examples/pool.py runs by itself against the redis-server the test starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.child_node import REPO_ROOT

pytestmark = pytest.mark.slow


def test_the_pool_example_runs_by_itself(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "examples/pool.py"],
        capture_output=True,
        text=True,
        cwd=str(REPO_ROOT),
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "spilled to the pool" in out.stdout and "every task ended once" in out.stdout
    assert "big: mail::" in out.stdout
    assert "ready=0, delayed=0, claimed=0" in out.stdout
