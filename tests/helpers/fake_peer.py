"""A hand-written group server whose answers a test controls."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

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
from helpers.cluster import BUCKET, SECRET


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
