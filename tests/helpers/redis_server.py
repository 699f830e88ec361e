"""A real redis-server for the recovery tests (no mocks).

The ``redis_url`` fixture (in ``tests/conftest.py``) calls :func:`start_redis`: it starts
``redis-server`` (found on PATH) on a free loopback port, with persistence off, waits until
it answers PING, yields its URL and stops it afterwards (:func:`stop_redis`). It skips the
test with a clear reason only when ``redis-server`` is not installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_TIMEOUT = 20.0  # generous: a loaded CI machine may be slow to start the server
ATTEMPTS = 3  # another process may grab the free port between probe and bind


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10.0)


def _wait_for_ping(proc: subprocess.Popen[bytes], url: str) -> bool:
    """True once the server answers PING; False if it exited (e.g. the port was taken)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.exceptions.ConnectionError:
                pass
            # Polling a process that gives no readiness signal of its own; the
            # deadline above, not this interval, decides success.
            time.sleep(0.02)
    finally:
        client.close()
    raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT}s")


def start_redis(
    workdir: Path, *, appendonly: bool = False, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a redis-server on a free loopback port; return the process and its URL.

    ``appendonly`` turns AOF persistence on (``appendfsync always``) in ``workdir``, so
    a server SIGKILLed and started again on the same ``workdir`` (and ``port``) keeps
    every write it acknowledged.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis client (pip install redis) is not installed")
    log = workdir / "redis.log"
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else []
    persistence = persistence or ["--appendonly", "no"]
    for _ in range(ATTEMPTS):
        listen = port if port is not None else _free_port()
        with open(log, "ab") as out:  # a file, not a pipe: a full pipe would block the server
            proc = subprocess.Popen(
                [
                    binary,
                    "--save",
                    "",
                    *persistence,
                    "--port",
                    str(listen),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(workdir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"redis://127.0.0.1:{listen}/0"
        try:
            if _wait_for_ping(proc, url):
                return proc, url
        except BaseException:
            stop_redis(proc)
            raise
        stop_redis(proc)
    raise RuntimeError(f"redis-server failed to start: {log.read_text(errors='replace')}")
