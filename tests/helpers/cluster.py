"""Helpers for the group and wire tests: polling waits, a cluster builder, a raw protocol peer,
and child-process nodes.

Nothing here sleeps for a fixed time to let something happen: every wait polls a condition
every few tens of milliseconds up to a generous deadline.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pykka

from gobucket import (
    BucketConfig,
    Executor,
    PeerInfo,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
)
from gobucket.wire.frames import FrameDecoder, FrameError, encode_frame, pack
from gobucket.wire.noise import (
    Handshake,
    HandshakeError,
    RecordReader,
    RecordWriter,
    derive_psk,
    prologue,
)
from gobucket.wire.protocol import PROTOCOL_VERSION

T = TypeVar("T")

WAIT = 10.0
"""Generous deadline for anything we wait on."""

POLL = 0.03
"""How often a condition is checked while waiting."""

SECRET = "cluster-key"
BUCKET = "sample"

HOLD: dict[str, Any] = {"task_type": TaskType.TIME_BOMB, "run_after": 60.0, "life_span": 120.0}
"""Fill keyword arguments for a task that keeps its slot for the whole test."""

NODE_SCRIPT = Path(__file__).parent / "nodes" / "group_node.py"
REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    predicate: Callable[[], T], timeout: float = WAIT, interval: float = POLL, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that, or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def future_done(future: pykka.Future[Any]) -> bool:
    """True once ``future`` holds a value or an exception (never blocks)."""
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return False
    except BaseException:
        return True
    return True


def outcome(future: pykka.Future[Any], timeout: float = WAIT) -> Any:
    """The value of ``future`` or the exception it holds (fails the test if it never ends)."""
    try:
        return future.get(timeout=timeout)
    except pykka.Timeout:
        raise AssertionError(f"a fill future did not resolve within {timeout}s") from None
    except Exception as error:
        return error


def addr_text(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def hold(bucket: TaskBucket, count: int, prefix: str = "hold") -> list[str]:
    """Fill ``count`` long-lived time bombs directly into ``bucket`` (to make it full)."""
    ids = [f"{prefix}-{uuid.uuid4().hex[:8]}-{i}" for i in range(count)]
    for task_id in ids:
        bucket.fill(TaskType.TIME_BOMB, task_id, None, run_after=60.0, life_span=120.0)
    return ids


def peer_info(group: TaskBucketGroup, address: tuple[str, int]) -> PeerInfo | None:
    """What ``group`` knows of the peer at ``address`` (None if it does not know it)."""
    for info in group.peers():
        if tuple(info.address) == tuple(address):
            return info
    return None


def wait_peer_up(
    group: TaskBucketGroup,
    address: tuple[str, int],
    bucket: str | None = BUCKET,
    timeout: float = WAIT,
) -> PeerInfo:
    """Wait until ``group`` sees the peer up and (unless ``bucket`` is None) with its load."""

    def ready() -> PeerInfo | None:
        info = peer_info(group, address)
        if info is None or not info.up:
            return None
        if bucket is not None and bucket not in info.loads:
            return None
        return info

    return wait_until(ready, timeout, what=f"peer {address} up with loads")


def wait_peer_load(
    group: TaskBucketGroup, address: tuple[str, int], load: tuple[int, int], bucket: str = BUCKET
) -> PeerInfo:
    """Wait until ``group``'s latest report from the peer shows ``load`` = (alive, max)."""

    def ready() -> PeerInfo | None:
        info = peer_info(group, address)
        if info is not None and info.up and info.loads.get(bucket) == tuple(load):
            return info
        return None

    return wait_until(ready, what=f"peer {address} reporting {load} for {bucket!r}")


class NullExecutor(Executor):
    """Runs nothing; tasks end at once (IMMEDIATE) or after ``run_after`` (TIME_BOMB)."""


class RecordingExecutor(Executor):
    """Records ``on_execute``/``on_finish`` calls with a timestamp; thread safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executed: list[tuple[str, Any, float]] = []
        self.finished: list[str] = []

    def on_execute(self, ctx: Any, id: str, data: Any) -> None:
        with self.lock:
            self.executed.append((id, data, time.monotonic()))

    def on_finish(self, ctx: Any, id: str, data: Any) -> None:
        with self.lock:
            self.finished.append(id)

    def executed_ids(self) -> list[str]:
        with self.lock:
            return [e[0] for e in self.executed]

    def record(self, task_id: str) -> tuple[str, Any, float] | None:
        with self.lock:
            return next((e for e in self.executed if e[0] == task_id), None)


class Cluster:
    """Builds buckets and groups for one test and tears all of them down afterwards."""

    def __init__(self) -> None:
        self.buckets: list[TaskBucket] = []
        self.groups: list[TaskBucketGroup] = []

    def bucket(
        self,
        max_bucket: int = 8,
        *,
        name: str = BUCKET,
        executor: Executor | None = None,
        life_span: float = 120.0,
        run_after: float = 60.0,
    ) -> TaskBucket:
        config = BucketConfig(
            max_bucket=max_bucket, name=name, life_span=life_span, run_after=run_after
        )
        bucket = TaskBucket(config, executor or NullExecutor())
        self.buckets.append(bucket)
        return bucket

    def group(
        self,
        buckets: dict[str, TaskBucket] | TaskBucket,
        peers: Iterable[str | tuple[str, int]] = (),
        *,
        secret: str | bytes | None = SECRET,
        ping_interval: float = 0.2,
        cluster: str = "default",
        host: str = "127.0.0.1",
        port: int = 0,
        start: bool = True,
        **kwargs: Any,
    ) -> TaskBucketGroup:
        if isinstance(buckets, TaskBucket):
            buckets = {BUCKET: buckets}
        peer_list = [p if isinstance(p, str) else addr_text(p) for p in peers]
        # Static peers only: mDNS would let nodes of other tests on this host join in.
        kwargs.setdefault("discovery", False)
        group = TaskBucketGroup(
            buckets,
            peers=peer_list,
            port=port,
            ping_interval=ping_interval,
            secret=secret,
            cluster=cluster,
            host=host,
            **kwargs,
        )
        self.groups.append(group)
        if start:
            group.start()
        return group

    def close(self) -> None:
        errors: list[BaseException] = []
        for group in reversed(self.groups):
            try:
                group.stop()
            except BaseException as error:  # keep tearing down the rest
                errors.append(error)
        for bucket in self.buckets:
            try:
                bucket.close(grace=0)
            except BaseException as error:
                errors.append(error)
        if errors:
            raise errors[0]


class RawPeer:
    """A bare TCP client speaking the group protocol by hand (to test the server's defences).

    With a secret, :meth:`hello` runs the Noise handshake itself; from then on
    :meth:`send` and :meth:`send_raw` write plaintext frames/bytes inside encrypted
    records and :meth:`recv` decrypts, while :meth:`send_wire` writes bytes to the
    socket as they are.
    """

    def __init__(self, address: tuple[str, int], timeout: float = WAIT) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.timeout = timeout
        self.decoder = FrameDecoder(1 << 24)
        self.ready: list[dict[str, Any]] = []
        self.eof = False
        self.nonce = os.urandom(16)
        self.node = "raw-" + uuid.uuid4().hex[:8]
        self.server_hello: dict[str, Any] | None = None
        self.handshake_reply: dict[str, Any] | None = None  # the server's NOISE frame
        self.sealer: RecordWriter | None = None
        self.records: RecordReader | None = None

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(encode_frame(message, 1 << 24))

    def send_raw(self, data: bytes) -> None:
        """Plaintext stream bytes (encrypted once the Noise handshake is done)."""
        self.send_wire(self.sealer.seal(data) if self.sealer is not None else data)

    def send_wire(self, data: bytes) -> None:
        """Bytes to the socket as they are."""
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, or None once the server closed the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.ready:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame from the server in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.eof = True
                continue
            if self.records is not None:
                self.records.feed(data)
                data = self.records.open_all()
            self.ready.extend(self.decoder.feed(data))
        return self.ready.pop(0)

    def messages_until_closed(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every frame the server sends until it closes (fails if it stays open)."""
        out: list[dict[str, Any]] = []
        while True:
            message = self.recv(timeout)
            if message is None:
                return out
            out.append(message)

    def expect_refusal(self, code: str | None = None) -> dict[str, Any]:
        """Read until the server's ERROR frame and the close that follows it; return the ERROR."""
        messages = self.messages_until_closed()
        errors = [m for m in messages if m.get("t") == "error"]
        assert errors, f"the server closed without an ERROR frame: {messages}"
        assert messages[-1] is errors[-1], f"the server sent more after its ERROR: {messages}"
        if code is not None:
            assert errors[-1]["code"] == code, errors[-1]
        return errors[-1]

    def hello(
        self,
        *,
        secret: str | bytes | None = SECRET,
        cluster: str = "default",
        version: int = PROTOCOL_VERSION,
        node: str | None = None,
        **extra: Any,
    ) -> dict[str, Any] | None:
        """Say our HELLO; return the server's, or None if it refused (its ERROR stays queued).

        Without a secret the server speaks first and both HELLOs are plaintext. With
        one, ours travels in the first Noise message (``extra`` fields go inside it),
        and the server's comes back in the second; encryption starts then.
        """
        if node is not None:
            self.node = node
        message: dict[str, Any] = {
            "t": "hello",
            "v": version,
            "cluster": cluster,
            "node": self.node,
            "port": 0,
            "buckets": [BUCKET],
        }
        if secret is None:
            server = self.recv()
            assert server is not None and server["t"] == "hello", server
            self.server_hello = server
            message.update(nonce=self.nonce, auth=False)
            message.update(extra)
            self.send(message)
            return server
        message.update(extra)
        key = secret.encode() if isinstance(secret, str) else secret
        state = Handshake(True, derive_psk(key, cluster), prologue(version, cluster))
        payload = state.write_message(pack(message))
        self.send({"t": "noise", "v": version, "cluster": cluster, "m": payload})
        reply = self.recv()
        if reply is None or reply.get("t") != "noise":
            if reply is not None:
                self.ready.insert(0, reply)
            return None
        self.handshake_reply = reply
        server = self.decoder.decode_body(state.read_message(reply["m"]))
        send, receive = state.split()
        self.sealer, self.records = RecordWriter(send), RecordReader(receive)
        self.records.feed(self.decoder.take_buffered())
        self.server_hello = server
        return server

    def handshake(
        self, secret: str | bytes | None = SECRET, cluster: str = "default"
    ) -> dict[str, Any]:
        """A full, correct client handshake; returns the server's HELLO."""
        server = self.hello(secret=secret, cluster=cluster)
        assert server is not None, f"the server refused the handshake: {self.ready}"
        if secret is not None:
            self.send({"t": "ready"})  # the first record: proves we hold the keys
        else:
            ready = self.recv()
            assert ready is not None and ready["t"] == "ready", ready
        return server

    def ping(self, seq: int = 1) -> dict[str, Any]:
        self.send({"t": "ping", "seq": seq})
        reply = self.recv()
        assert reply is not None and reply["t"] == "pong" and reply["seq"] == seq, reply
        return reply

    def fill(self, task_id: str, data: bytes | None, rid: int = 1, **fields: Any) -> dict[str, Any]:
        message: dict[str, Any] = {
            "t": "fill",
            "rid": rid,
            "bucket": BUCKET,
            "id": task_id,
            "data": data,
            "type": TaskType.TIME_BOMB.value,
            "run_after": 60.0,
            "life_span": 120.0,
        }
        message.update(fields)
        self.send(message)
        reply = self.recv()
        assert reply is not None, "the server closed instead of acknowledging a fill"
        return reply


def frame_error_free(decoder: FrameDecoder, data: bytes) -> bool:
    """Feed ``data``; True if the decoder accepted it, False if it raised FrameError."""
    try:
        decoder.feed(data)
    except FrameError:
        return False
    return True


class ChildNode:
    """A group node in a child process (``tests/nodes/group_node.py``) on loopback."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(NODE_SCRIPT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO_ROOT),
            env=env,
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.stderr: list[str] = []
        self.pumps = [
            threading.Thread(target=self._pump_out, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for pump in self.pumps:
            pump.start()
        self.address = ("127.0.0.1", self._read_port())

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.stderr.append(line)

    def _read_port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"child node printed no port; stderr: {self.stderr[-20:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.kill()
                raise AssertionError(f"child node exited early; stderr: {self.stderr[-20:]}")
            if line.startswith("PORT "):
                return int(line.split()[1])

    def alive_tasks(self, timeout: float = WAIT) -> int:
        """Ask the child how many tasks its bucket holds."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("LEN\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the child node did not answer LEN")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the child node exited; stderr: {self.stderr[-20:]}")
            if line.startswith("LEN "):
                return int(line.split()[1])

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL (and SIGCONT first, in case it was stopped); reap it."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
            except ProcessLookupError:
                pass
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL always works
            self.proc.wait(10)

    def close(self) -> None:
        """Ask it to stop (stdin EOF); kill it if it does not."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for pump in self.pumps:
            pump.join(5)


class FakePeer:
    """A hand-written group server (threads, blocking sockets) whose answers a test controls.

    It completes the handshake, answers PINGs with ``loads`` (unless ``answer_pings`` is
    False), records every FILL and replies with ``on_fill(message)`` (None: no reply).
    """

    def __init__(
        self,
        secret: str | bytes | None = SECRET,
        cluster: str = "default",
        loads: dict[str, list[int]] | None = None,
        on_fill: Callable[[dict[str, Any]], dict[str, Any] | bytes | None] | None = None,
    ) -> None:
        self.key = secret.encode() if isinstance(secret, str) else secret
        self.cluster = cluster
        self.loads = loads if loads is not None else {BUCKET: [0, 100]}
        self.on_fill = on_fill or (lambda message: None)
        self.answer_pings = True
        self.node = "fake-" + uuid.uuid4().hex[:8]
        self.fills: list[dict[str, Any]] = []
        self.handshakes = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = ("127.0.0.1", self.server.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.closed = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def fill_count(self) -> int:
        with self.lock:
            return len(self.fills)

    def close(self) -> None:
        self.closed = True
        self.threads[0].join(5)  # the accept loop: no new connection after this
        with contextlib.suppress(OSError):
            self.server.close()
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        for thread in self.threads:
            thread.join(5)

    def drop_connections(self) -> None:
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        self.server.settimeout(0.05)  # so that close() is noticed promptly
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self.lock:
                self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder(1 << 24)
        ready: list[dict[str, Any]] = []
        crypto: list[Any] = []  # [RecordWriter, RecordReader] once the handshake is done

        def read() -> dict[str, Any] | None:
            while not ready:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return None
                if not data:
                    return None
                if crypto:
                    crypto[1].feed(data)
                    data = crypto[1].open_all()
                ready.extend(decoder.feed(data))
            return ready.pop(0)

        def send(message: dict[str, Any] | bytes) -> None:
            data = message if isinstance(message, bytes) else encode_frame(message, 1 << 24)
            conn.sendall(crypto[0].seal(data) if crypto else data)

        hello = {
            "t": "hello",
            "v": PROTOCOL_VERSION,
            "cluster": self.cluster,
            "node": self.node,
            "port": self.address[1],
            "buckets": list(self.loads),
        }
        try:
            if self.key is None:
                send({**hello, "nonce": os.urandom(16), "auth": False})
                first = read()
                if first is None or first.get("t") != "hello":
                    return
                send({"t": "ready"})
            else:
                first = read()
                if first is None or first.get("t") != "noise":
                    return
                psk = derive_psk(self.key, self.cluster)
                state = Handshake(False, psk, prologue(PROTOCOL_VERSION, self.cluster))
                state.read_message(first["m"])
                second = state.write_message(pack(hello))
                send({"t": "noise", "v": PROTOCOL_VERSION, "cluster": self.cluster, "m": second})
                tx, rx = state.split()
                crypto.extend([RecordWriter(tx), RecordReader(rx)])
                crypto[1].feed(decoder.take_buffered())
                confirm = read()
                if confirm is None or confirm.get("t") != "ready":
                    return
            with self.lock:
                self.handshakes += 1
            while True:
                message = read()
                if message is None:
                    return
                if message.get("t") == "ping" and self.answer_pings:
                    send({"t": "pong", "seq": message["seq"], "loads": self.loads})
                elif message.get("t") == "fill":
                    with self.lock:
                        self.fills.append(message)
                    reply = self.on_fill(message)
                    if reply is not None:
                        send(reply)
        except (OSError, FrameError, HandshakeError):
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()
