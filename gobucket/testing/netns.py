"""A small virtual LAN on one Linux machine: network namespaces joined by a bridge.

Needs root and iproute2. Every namespace and link made is removed on exit,
even when the body fails. Addresses live only inside the namespaces.

Example::

    with VirtualLan(hosts=3) as lan:
        proc = lan.popen(0, ["python", "-m", "gobucket.testing.node", ...])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from types import TracebackType
from typing import Any, Self

__all__ = ["VirtualLan", "netns_available"]


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=20)


def netns_available() -> tuple[bool, str]:
    """Can this process build namespaces? Returns (yes, reason if not)."""
    if shutil.which("ip") is None:
        return False, "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    name = f"gbprobe{uuid.uuid4().hex[:6]}"
    try:
        result = _ip("netns", "add", name, check=False)
        if result.returncode != 0:
            return False, f"ip netns add failed: {result.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return True, ""


class VirtualLan:
    """``hosts`` namespaces on one bridge, host i at ``10.<net>.0.<i+1>/24``."""

    def __init__(self, hosts: int = 3, net: int = 77) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.net = net
        self.bridge_ns = f"gb{self.tag}br"
        self.namespaces = [f"gb{self.tag}h{i}" for i in range(hosts)]
        self.addresses = [f"10.{net}.0.{i + 1}" for i in range(hosts)]
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _build(self) -> None:
        _ip("netns", "add", self.bridge_ns)
        self._made.append(self.bridge_ns)
        br = self.bridge_ns
        _ip("link", "add", "br0", "type", "bridge", ns=br)
        _ip("link", "set", "br0", "type", "bridge", "mcast_snooping", "0", ns=br)
        _ip("link", "set", "br0", "up", ns=br)
        _ip("link", "set", "lo", "up", ns=br)
        for index, (ns, address) in enumerate(zip(self.namespaces, self.addresses, strict=True)):
            _ip("netns", "add", ns)
            self._made.append(ns)
            inner, outer = f"gb{self.tag}i{index}", f"gb{self.tag}o{index}"
            # Both ends are created inside the bridge namespace, then one is moved.
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer, ns=br)
            _ip("link", "set", inner, "netns", ns, ns=br)
            _ip("link", "set", outer, "master", "br0", ns=br)
            _ip("link", "set", outer, "up", ns=br)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("link", "set", inner, "name", "eth0", ns=ns)
            _ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "multicast", "on", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("route", "add", "224.0.0.0/4", "dev", "eth0", ns=ns)

    def popen(self, host: int, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside host ``host``'s namespace (killed on close)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespaces[host], *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill started processes and delete every namespace (links go with them)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._procs.clear()
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
