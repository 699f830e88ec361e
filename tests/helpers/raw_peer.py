"""A bare TCP client speaking the group protocol by hand (to test the server's defences)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from typing import Any

from gobucket import TaskType
from gobucket.wire.frames import FrameDecoder, FrameError, encode_frame, pack
from gobucket.wire.noise import (
    Handshake,
    RecordReader,
    RecordWriter,
    derive_psk,
    prologue,
)
from gobucket.wire.protocol import PROTOCOL_VERSION
from helpers.cluster import BUCKET, SECRET
from helpers.waiting import WAIT


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
