"""The encrypted wire: the Noise_NNpsk0 handshake, encrypted records, and attacks on them.

Unit level: the handshake against the Noise test vectors and the ``noiseprotocol``
package, the key schedule, the record layer, and fuzzing of both. Socket level: a man
in the middle without the secret (a relaying proxy) between two honest nodes, raw
attackers, trickling and oversized pre-authentication connections, and mismatched
secrets and clusters. Every attack must end with the connection closed and nothing run.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from helpers.cluster import BUCKET, HOLD, SECRET, Cluster, hold, wait_peer_up
from helpers.raw_peer import RawPeer
from helpers.recording import RecordingExecutor
from helpers.waiting import WAIT, outcome, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gobucket import PeerLostTaskError, Placement, TaskBucket, TaskBucketGroup, TaskType
from gobucket.wire.connection import PREAUTH_MAX_FRAME
from gobucket.wire.frames import FrameDecoder, encode_frame, pack
from gobucket.wire.noise import (
    MAX_MESSAGE,
    MAX_RECORD_PLAINTEXT,
    PROTOCOL_NAME,
    PSK_SALT,
    CipherState,
    Handshake,
    HandshakeError,
    RecordError,
    RecordReader,
    RecordWriter,
    derive_psk,
    prologue,
)
from gobucket.wire.protocol import PROTOCOL_VERSION

PSK = bytes(range(32))
PROLOGUE = prologue(PROTOCOL_VERSION, "default")

# --- the handshake against the Noise test vectors ---------------------------------------------

# The Noise_NNpsk0_25519_ChaChaPoly_SHA256 vector of the "cacophony" test vectors (the
# reference vectors of the Noise specification's Haskell implementation).
VECTOR: dict[str, Any] = {
    "prologue": "4a6f686e2047616c74",
    "psk": "54686973206973206d7920417573747269616e20706572737065637469766521",
    "init_ephemeral": "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a",
    "resp_ephemeral": "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b",
    "handshake_hash": "f4d03dc34495c95729ea6de9e1b59004b59733102488b3e24bc441e0be208eaf",
    "messages": [
        (
            "4c756477696720766f6e204d69736573",
            "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
            "79b962b8aff8485742ac32f905ba45369e2465fb59e138a93d67a0d1266b6a54",
        ),
        (
            "4d757272617920526f746862617264",
            "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
            "d6062704d5a9c422a8e834423f8c1feada7e8d0d910a1a2cd030fb584221e3",
        ),
        ("462e20412e20486179656b", "e632c3763d7669067383433197a3baddf146e9e70ad4b4e9e59e0f"),
        ("4361726c204d656e676572", "64c6bee32ea91c8474bb4c21d7a700109ad45af77b29764ba5eb1e"),
        (
            "4a65616e2d426170746973746520536179",
            "e2fa0bed0603b62d3ccac2ecabbf3fe33f3e86514909b323361626266cb2471cc8",
        ),
        (
            "457567656e2042f6686d20766f6e2042617765726b",
            "0c01dc9cec1fe4ddd692e8dd32188aa351088dc91183639a53b57aa4692b5ebdef8b8ca111",
        ),
    ],
}


def test_handshake_reproduces_the_noise_test_vector() -> None:
    h = bytes.fromhex
    psk, pro = h(VECTOR["psk"]), h(VECTOR["prologue"])
    initiator = Handshake(True, psk, pro, ephemeral=h(VECTOR["init_ephemeral"]))
    responder = Handshake(False, psk, pro, ephemeral=h(VECTOR["resp_ephemeral"]))
    messages = [(h(p), h(c)) for p, c in VECTOR["messages"]]
    (p0, c0), (p1, c1) = messages[:2]
    assert initiator.write_message(p0) == c0
    assert responder.read_message(c0) == p0
    assert responder.write_message(p1) == c1
    assert initiator.read_message(c1) == p1
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash == responder.handshake_hash == h(VECTOR["handshake_hash"])
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    for index, (payload, ciphertext) in enumerate(messages[2:]):
        send, receive = (i_send, r_recv) if index % 2 == 0 else (r_send, i_recv)
        assert send.encrypt(payload) == ciphertext
        assert receive.decrypt(ciphertext) == payload


@pytest.mark.filterwarnings("ignore:One of ephemeral keypairs is already set")
def test_handshake_matches_the_noiseprotocol_package() -> None:
    noise_connection = pytest.importorskip("noise.connection")
    for _ in range(5):
        psk, pro = os.urandom(32), os.urandom(20)
        e_i, e_r = os.urandom(32), os.urandom(32)
        payloads = [os.urandom(n) for n in (0, 70, 300)]
        theirs = []
        for initiator, ephemeral in ((True, e_i), (False, e_r)):
            conn = noise_connection.NoiseConnection.from_name(PROTOCOL_NAME)
            conn.set_as_initiator() if initiator else conn.set_as_responder()
            conn.set_psks(psk=psk)
            conn.set_prologue(pro)
            conn.set_keypair_from_private_bytes(noise_connection.Keypair.EPHEMERAL, ephemeral)
            conn.start_handshake()
            theirs.append(conn)
        their_i, their_r = theirs
        ours_i = Handshake(True, psk, pro, ephemeral=e_i)
        ours_r = Handshake(False, psk, pro, ephemeral=e_r)
        message1 = ours_i.write_message(payloads[1])
        assert bytes(their_i.write_message(payloads[1])) == message1
        assert bytes(their_r.read_message(message1)) == payloads[1]
        assert ours_r.read_message(message1) == payloads[1]
        message2 = ours_r.write_message(payloads[2])
        assert bytes(their_r.write_message(payloads[2])) == message2
        assert ours_i.read_message(message2) == payloads[2]
        assert bytes(their_i.read_message(message2)) == payloads[2]
        assert ours_i.handshake_hash == bytes(their_i.get_handshake_hash())
        send, receive = ours_i.split()
        for payload in payloads:
            assert bytes(their_r.decrypt(send.encrypt(payload))) == payload
            assert receive.decrypt(bytes(their_r.encrypt(payload))) == payload


def _pair(psk_i: bytes = PSK, psk_r: bytes = PSK, pro_i: bytes = PROLOGUE, pro_r: bytes = PROLOGUE):
    return Handshake(True, psk_i, pro_i), Handshake(False, psk_r, pro_r)


def test_fresh_ephemerals_make_every_handshake_different() -> None:
    first = [_pair()[0].write_message(b"same") for _ in range(20)]
    assert len(set(first)) == 20


@pytest.mark.parametrize(
    ("psk_r", "pro_r"),
    [
        (bytes(32), PROLOGUE),
        (PSK, prologue(PROTOCOL_VERSION, "other")),
        (PSK, prologue(3, "default")),
    ],
    ids=["other-psk", "other-cluster", "other-version"],
)
def test_a_different_key_cluster_or_version_fails_the_first_message(
    psk_r: bytes, pro_r: bytes
) -> None:
    initiator, responder = _pair(psk_r=psk_r, pro_r=pro_r)
    with pytest.raises(HandshakeError):
        responder.read_message(initiator.write_message(b"hello"))


def test_a_first_message_replayed_yields_keys_the_replayer_cannot_use() -> None:
    """A recorded message 1 decrypts again (it is a 0-RTT message), but the transport keys
    also need the initiator's ephemeral private key: the replayer's records fail."""
    initiator, responder = _pair()
    message1 = initiator.write_message(b"hello")
    responder.read_message(message1)
    initiator.read_message(responder.write_message(b"world"))
    recorded_ready = initiator.split()[0].encrypt(b"ready")
    replayed = Handshake(False, PSK, PROLOGUE)
    assert replayed.read_message(message1) == b"hello"
    replayed.write_message(b"world")
    receive = replayed.split()[1]
    with pytest.raises(InvalidTag):
        receive.decrypt(recorded_ready)


def test_a_reflected_message_is_refused() -> None:
    """Message 2 sent back to its writer, or to another responder, is not a message 1."""
    initiator, responder = _pair()
    responder.read_message(initiator.write_message(b"hello"))
    message2 = responder.write_message(b"world")
    with pytest.raises(HandshakeError):
        Handshake(False, PSK, PROLOGUE).read_message(message2)


def test_handshake_order_is_enforced() -> None:
    initiator, responder = _pair()
    with pytest.raises(RuntimeError):
        initiator.read_message(b"x" * 64)
    with pytest.raises(RuntimeError):
        responder.write_message(b"")
    with pytest.raises(RuntimeError):
        initiator.split()


def test_a_failed_handshake_stays_failed() -> None:
    initiator, responder = _pair()
    message1 = bytearray(initiator.write_message(b"hello"))
    message1[40] ^= 1
    with pytest.raises(HandshakeError):
        responder.read_message(bytes(message1))
    with pytest.raises(HandshakeError):
        responder.read_message(b"x" * 64)


def test_a_low_order_ephemeral_is_refused() -> None:
    initiator, responder = _pair()
    responder.read_message(initiator.write_message(b"hello"))
    message2 = responder.write_message(b"")
    forged = bytes(32) + message2[32:]  # the all-zero point: DH gives all zeros
    with pytest.raises(HandshakeError):
        initiator.read_message(forged)


# --- the key schedule -------------------------------------------------------------------------


def _rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def test_psk_is_hkdf_sha256_of_the_secret_salted_and_bound_to_the_cluster() -> None:
    psk = derive_psk(b"cluster-key", "default")
    assert psk == _rfc5869(b"cluster-key", PSK_SALT, b"gobucket cluster default")
    assert len(psk) == 32
    assert derive_psk(b"cluster-key", "other") != psk
    assert derive_psk(b"cluster-key2", "default") != psk
    assert derive_psk(b"", "default") != derive_psk(b"\x00", "default")


def test_prologue_names_gobucket_the_version_and_the_cluster() -> None:
    assert prologue(2, "default") == b"gobucket/2\x00default"
    assert prologue(2, "é") == b"gobucket/2\x00\xc3\xa9"


# --- records ----------------------------------------------------------------------------------


def _ciphers() -> tuple[CipherState, CipherState]:
    key = os.urandom(32)
    return CipherState(key), CipherState(key)


def test_records_round_trip_and_split_at_the_noise_limit() -> None:
    send, receive = _ciphers()
    writer, reader = RecordWriter(send), RecordReader(receive)
    data = os.urandom(MAX_RECORD_PLAINTEXT * 2 + 10)
    records = writer.seal(data)
    assert len(records) == len(data) + 3 * (2 + 16)
    assert struct.unpack_from(">H", records)[0] == MAX_MESSAGE
    reader.feed(records)
    assert reader.open_all() == data
    assert writer.seal(b"") == b""


def test_record_nonce_is_noise_format_counter() -> None:
    key = os.urandom(32)
    send = CipherState(key)
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    send.encrypt(b"first")
    second = send.encrypt(b"second")
    nonce = b"\x00" * 4 + (1).to_bytes(8, "little")
    assert ChaCha20Poly1305(key).decrypt(nonce, second, b"") == b"second"


def _stream(count: int = 3) -> tuple[bytes, list[bytes], bytes]:
    """A record stream, its records, and the key that reads it."""
    key = os.urandom(32)
    writer = RecordWriter(CipherState(key))
    records = [writer.seal(f"record {i} ".encode() * (i + 1)) for i in range(count)]
    return b"".join(records), records, key


@pytest.mark.parametrize(
    "order",
    [[0, 2], [1, 0, 2], [0, 0, 1], [0, 1, 1], [1], [0, 2, 1]],
    ids=["dropped", "reordered", "duplicated", "replayed-last", "first-dropped", "swapped"],
)
def test_dropped_reordered_or_duplicated_records_fail(order: list[int]) -> None:
    _, records, key = _stream()
    reader = RecordReader(CipherState(key))
    reader.feed(b"".join(records[i] for i in order))
    with pytest.raises(RecordError):
        reader.open_all()
    with pytest.raises(RecordError):  # and it stays failed
        reader.open_all()


def test_a_record_from_another_connection_fails() -> None:
    stream, _, _ = _stream()
    reader = RecordReader(CipherState(os.urandom(32)))
    reader.feed(stream)
    with pytest.raises(RecordError):
        reader.next_record()


def test_a_bit_flip_at_every_position_of_a_record_stream_fails() -> None:
    stream, _, key = _stream()
    for position in range(len(stream)):
        for bit in range(8):
            corrupted = bytearray(stream)
            corrupted[position] ^= 1 << bit
            reader = RecordReader(CipherState(key))
            reader.feed(bytes(corrupted) + bytes(MAX_MESSAGE + 2))  # completes any length
            with pytest.raises(RecordError):
                reader.open_all()


def test_every_truncation_of_a_record_stream_only_waits() -> None:
    stream, records, key = _stream()
    reader = RecordReader(CipherState(key))
    reader.feed(stream)
    plaintexts = [reader.next_record() for _ in records]
    for cut in range(len(stream)):
        reader = RecordReader(CipherState(key))
        reader.feed(stream[:cut])
        opened = reader.open_all()
        whole = 0
        size = 0
        for record in records:
            if size + len(record) > cut:
                break
            size += len(record)
            whole += 1
        assert opened == b"".join(p for p in plaintexts[:whole] if p is not None)
        assert reader.buffered == cut - size


@pytest.mark.parametrize("length", [0, 1, 15, PREAUTH_MAX_FRAME + 1])
def test_records_out_of_bounds_fail_from_their_header(length: int) -> None:
    reader = RecordReader(CipherState(os.urandom(32)), max_record=PREAUTH_MAX_FRAME)
    reader.feed(struct.pack(">H", length))
    with pytest.raises(RecordError):
        reader.next_record()


# --- fuzzing the handshake and the records ------------------------------------------------------


def _valid_handshake() -> tuple[bytes, bytes, bytes, bytes]:
    """Message 1 and 2 of a handshake made with fixed ephemerals (so it can be re-run)."""
    e_i, e_r = os.urandom(32), os.urandom(32)
    initiator = Handshake(True, PSK, PROLOGUE, ephemeral=e_i)
    responder = Handshake(False, PSK, PROLOGUE, ephemeral=e_r)
    message1 = initiator.write_message(pack({"t": "hello", "node": "n1"}))
    responder.read_message(message1)
    message2 = responder.write_message(pack({"t": "hello", "node": "n2"}))
    return message1, message2, e_i, e_r


def test_a_bit_flip_at_every_position_of_both_handshake_messages_fails() -> None:
    message1, message2, e_i, _ = _valid_handshake()
    for position in range(len(message1)):
        for bit in range(8):
            corrupted = bytearray(message1)
            corrupted[position] ^= 1 << bit
            with pytest.raises(HandshakeError):
                Handshake(False, PSK, PROLOGUE).read_message(bytes(corrupted))
    for position in range(len(message2)):
        for bit in range(8):
            corrupted = bytearray(message2)
            corrupted[position] ^= 1 << bit
            initiator = Handshake(True, PSK, PROLOGUE, ephemeral=e_i)
            initiator.write_message(pack({"t": "hello", "node": "n1"}))
            with pytest.raises(HandshakeError):
                initiator.read_message(bytes(corrupted))


def test_every_truncation_of_both_handshake_messages_fails() -> None:
    message1, message2, e_i, _ = _valid_handshake()
    for cut in range(len(message1)):
        with pytest.raises(HandshakeError):
            Handshake(False, PSK, PROLOGUE).read_message(message1[:cut])
    for cut in range(len(message2)):
        initiator = Handshake(True, PSK, PROLOGUE, ephemeral=e_i)
        initiator.write_message(pack({"t": "hello", "node": "n1"}))
        with pytest.raises(HandshakeError):
            initiator.read_message(message2[:cut])


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=400),
    st.booleans(),
)
def test_fuzz_random_handshake_messages_only_raise_handshake_error(
    data: bytes, second: bool
) -> None:
    if second:
        state = Handshake(True, PSK, PROLOGUE)
        state.write_message(b"")
    else:
        state = Handshake(False, PSK, PROLOGUE)
    with pytest.raises(HandshakeError):
        state.read_message(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_handshake_messages_only_raise_handshake_error(data: st.DataObject) -> None:
    message1, _, _, _ = _valid_handshake()
    mutated = bytearray(message1)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    tail = data.draw(st.binary(max_size=8))
    with pytest.raises(HandshakeError):
        Handshake(False, PSK, PROLOGUE).read_message(bytes(mutated[:cut]) + tail)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_fuzz_random_bytes_never_open_as_records(chunks: list[bytes]) -> None:
    reader = RecordReader(CipherState(PSK))
    try:
        for chunk in chunks:
            reader.feed(chunk)
            assert reader.open_all() == b""  # incomplete: nothing yet
    except RecordError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_and_cut_record_streams_fail_or_wait(data: st.DataObject) -> None:
    """Bit flips anywhere, then a cut anywhere: the reader raises RecordError, or it waits
    with every record that holds a change unopened; it never returns altered data."""
    stream, _, key = _stream()
    genuine = RecordReader(CipherState(key))
    genuine.feed(stream)
    plaintext = genuine.open_all()
    mutated = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 3))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] ^= data.draw(st.integers(1, 255))
    if mutated == stream:
        return  # the flips cancelled out
    first_change = next(i for i in range(len(stream)) if mutated[i] != stream[i])
    cut = data.draw(st.integers(0, len(mutated)))
    reader = RecordReader(CipherState(key))
    reader.feed(bytes(mutated[:cut]))
    try:
        opened = reader.open_all()
    except RecordError:
        return
    assert plaintext.startswith(opened)
    assert cut - reader.buffered <= first_change  # no record with a change was opened


# --- a man in the middle ------------------------------------------------------------------------


Hook = Callable[["Session", str, bytes], list[bytes]]


class Session:
    """One connection through the proxy: what went each way, and a way to inject bytes."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.lock = threading.Lock()
        self.captured: dict[str, bytearray] = {"c2s": bytearray(), "s2c": bytearray()}
        self.records: dict[str, list[bytes]] = {"c2s": [], "s2c": []}
        self.server_closed = threading.Event()
        self.client_closed = threading.Event()

    def inject(self, direction: str, data: bytes) -> None:
        with self.lock:
            (self.server if direction == "c2s" else self.client).sendall(data)

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class MitmProxy:
    """An attacker without the secret between a dialling node and ``upstream``.

    It relays every byte, records both directions, and (with ``records``) cuts each
    direction into its handshake frame and then its encrypted records, so that a test's
    ``hook(session, direction, record)`` may drop, repeat, reorder or alter records.
    """

    def __init__(self, upstream: tuple[str, int], records: bool = True) -> None:
        self.upstream = upstream
        self.parse = records
        self.hook: Hook | None = None
        self.sessions: list[Session] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.address: tuple[str, int] = ("127.0.0.1", self.listener.getsockname()[1])
        self.closed = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def close(self) -> None:
        self.closed = True
        self.threads[0].join(5)
        with contextlib.suppress(OSError):
            self.listener.close()
        for session in list(self.sessions):
            session.close()
        for thread in self.threads[1:]:
            thread.join(5)

    def latest(self) -> Session:
        return self.sessions[-1]

    def captured(self) -> bytes:
        return b"".join(bytes(s.captured["c2s"]) + bytes(s.captured["s2c"]) for s in self.sessions)

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=WAIT)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            session = Session(client, server)
            self.sessions.append(session)
            for direction, src, dst in (("c2s", client, server), ("s2c", server, client)):
                thread = threading.Thread(
                    target=self._pump, args=(session, direction, src, dst), daemon=True
                )
                self.threads.append(thread)
                thread.start()

    def _pump(
        self, session: Session, direction: str, src: socket.socket, dst: socket.socket
    ) -> None:
        buffer = bytearray()
        first_done = False
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            session.captured[direction] += data
            if not self.parse:
                out = [data]
            else:
                buffer += data
                out = []
                while True:
                    header = 2 if first_done else 4
                    if len(buffer) < header:
                        break
                    length = int.from_bytes(buffer[:header], "big")
                    if len(buffer) < header + length:
                        break
                    chunk = bytes(buffer[: header + length])
                    del buffer[: header + length]
                    if not first_done:
                        first_done = True
                        out.append(chunk)
                        continue
                    session.records[direction].append(chunk)
                    hook = self.hook
                    out.extend(hook(session, direction, chunk) if hook else [chunk])
            try:
                with session.lock:
                    for piece in out:
                        dst.sendall(piece)
            except OSError:
                break
        (session.server_closed if direction == "s2c" else session.client_closed).set()
        session.close()


@dataclass
class Relayed:
    """Honest node V dials honest node L, but through the attacker's proxy."""

    cluster: Cluster
    proxy: MitmProxy
    l_group: TaskBucketGroup
    l_bucket: TaskBucket
    l_executor: RecordingExecutor
    v_group: TaskBucketGroup

    def fill(self, task_id: str, **kwargs: Any) -> Any:
        return self.v_group.fill_async(BUCKET, task_id, {"n": 1}, **(kwargs or HOLD))

    def up(self) -> None:
        wait_peer_up(self.v_group, self.proxy.address)


@pytest.fixture
def relayed(cluster: Cluster) -> Iterator[Relayed]:
    executor = RecordingExecutor()
    l_bucket = cluster.bucket(max_bucket=100, executor=executor)
    # Pings are rare, so that the records after the first PING are the test's fills (and
    # L, which closes a client silent for a few of its own ping intervals, waits as long).
    l_group = cluster.group(l_bucket, ping_interval=10.0)
    proxy = MitmProxy(l_group.address)
    v_bucket = cluster.bucket(max_bucket=1)
    hold(v_bucket, 1)
    v_group = cluster.group(v_bucket, peers=[proxy.address], ping_interval=10.0)
    result = Relayed(cluster, proxy, l_group, l_bucket, executor, v_group)
    result.up()
    try:
        yield result
    finally:
        proxy.hook = None
        proxy.close()


def _forged_fill(task_id: str = "evil") -> bytes:
    return encode_frame(
        {
            "t": "fill",
            "rid": 999,
            "bucket": BUCKET,
            "id": task_id,
            "data": pack("attacker"),
            "type": "immediate",
            "run_after": 0,
            "life_span": 60,
        }
    )


def _other_session_record(address: tuple[str, int]) -> bytes:
    """A genuine encrypted FILL of "evil", made on another connection by a key holder."""
    with RawPeer(address) as raw:
        raw.handshake()
        assert raw.sealer is not None
        return raw.sealer.seal(_forged_fill())  # never sent on this connection


@pytest.mark.parametrize(
    "injected", ["plaintext-fill", "forged-record", "other-session-record", "replayed-record"]
)
def test_relay_attack_an_injected_frame_runs_nothing_and_closes(
    relayed: Relayed, injected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The attacker relays the handshake between V and L (it cannot do more without the
    secret) and then injects its own FILL towards L: L closes, nothing is filled."""
    caplog.set_level(logging.WARNING, logger="gobucket")
    session = relayed.proxy.latest()
    frame = _forged_fill()
    data = {
        "plaintext-fill": frame,
        "forged-record": struct.pack(">H", len(frame) + 16) + os.urandom(len(frame) + 16),
        "other-session-record": _other_session_record(relayed.l_group.address),
        "replayed-record": session.records["c2s"][-1],  # V's last record (its PING), again
    }[injected]
    session.inject("c2s", data)
    wait_until(session.server_closed.is_set, what="L to close the tampered connection")
    assert "evil" not in relayed.l_bucket
    assert "evil" not in relayed.l_executor.executed_ids()
    closings = [
        r.getMessage() for r in caplog.records if "closing the connection" in r.getMessage()
    ]
    assert any("did not authenticate" in m or "out of bounds" in m for m in closings), closings
    # only that connection was hurt: V re-dials and overflows to L as before
    relayed.up()
    placement = outcome(relayed.fill("after"))
    assert isinstance(placement, Placement) and placement.node == relayed.l_group.node_id


@pytest.mark.parametrize("forged", ["plaintext-ack", "forged-record"])
def test_relay_attack_a_forged_ack_is_not_believed(relayed: Relayed, forged: str) -> None:
    """The attacker swallows L's real ACK and hands V its own: V closes and reports the
    fill lost (L may hold it), never placed on the attacker's word."""
    acks = b"".join(encode_frame({"t": "ack", "rid": rid, "ok": True}) for rid in range(1, 20))
    fake = acks if forged == "plaintext-ack" else struct.pack(">H", 64) + os.urandom(64)
    swallowed: list[bytes] = []

    def hook(session: Session, direction: str, record: bytes) -> list[bytes]:
        if direction == "s2c" and not swallowed:
            swallowed.append(record)
            return [fake]
        return [record]

    relayed.proxy.hook = hook
    result = outcome(relayed.fill("acked-by-whom"))
    assert isinstance(result, PeerLostTaskError), repr(result)
    assert swallowed


@pytest.mark.parametrize("where", ["first-ciphertext-byte", "middle", "last-tag-byte"])
def test_a_flipped_byte_in_a_relayed_record_closes_and_fills_nothing(
    relayed: Relayed, where: str
) -> None:
    def hook(session: Session, direction: str, record: bytes) -> list[bytes]:
        if direction != "c2s":
            return [record]
        relayed.proxy.hook = None
        position = {"first-ciphertext-byte": 2, "middle": len(record) // 2}.get(
            where, len(record) - 1
        )
        corrupted = bytearray(record)
        corrupted[position] ^= 0x01
        return [bytes(corrupted)]

    session = relayed.proxy.latest()
    relayed.proxy.hook = hook
    result = outcome(relayed.fill("flipped"))
    assert isinstance(result, PeerLostTaskError), repr(result)
    assert session.server_closed.wait(WAIT)
    assert "flipped" not in relayed.l_bucket


@pytest.mark.parametrize("mode", ["dropped", "reordered", "duplicated"])
def test_dropped_reordered_or_duplicated_relayed_records_close_and_run_nothing_more(
    relayed: Relayed, mode: str
) -> None:
    """Two fills in two records, A then B: drop A, or send B before A (A dropped, then
    resent), or send A twice. L closes at the first record out of place."""
    held: list[bytes] = []
    seen_a = threading.Event()

    def hook(session: Session, direction: str, record: bytes) -> list[bytes]:
        if direction != "c2s":
            return [record]
        if not held:
            held.append(record)
            seen_a.set()
            return [record, record] if mode == "duplicated" else []
        relayed.proxy.hook = None
        return [record] if mode == "dropped" else [record, held[0]]

    session = relayed.proxy.latest()
    relayed.proxy.hook = hook
    immediate = {"task_type": TaskType.IMMEDIATE, "life_span": 30.0}
    first = relayed.fill("A", **immediate)
    assert seen_a.wait(WAIT)
    second = relayed.fill("B", **immediate) if mode != "duplicated" else None
    assert session.server_closed.wait(WAIT)
    if mode == "duplicated":
        assert isinstance(outcome(first), Placement)  # A itself was genuine, once
        wait_until(lambda: "A" in relayed.l_executor.executed_ids(), what="A to run")
        time.sleep(0.2)  # a second run would have been started by now
        assert relayed.l_executor.executed_ids().count("A") == 1
    else:
        assert isinstance(outcome(first), PeerLostTaskError)
        assert second is not None and isinstance(outcome(second), PeerLostTaskError)
        assert relayed.l_executor.executed_ids() == []
        assert "A" not in relayed.l_bucket and "B" not in relayed.l_bucket


def test_a_recorded_session_replayed_to_a_fresh_connection_fills_nothing(
    relayed: Relayed,
) -> None:
    placement = outcome(relayed.fill("recorded"))
    assert isinstance(placement, Placement)
    session = relayed.proxy.latest()
    recorded = bytes(session.captured["c2s"])  # NOISE frame, then READY, PING, FILL records
    first = 4 + int.from_bytes(recorded[:4], "big")
    relayed.l_bucket.drain("recorded")
    assert "recorded" not in relayed.l_bucket
    # all at once: records may not follow message 1 before message 2 came back
    with socket.create_connection(relayed.l_group.address, timeout=WAIT) as sock:
        sock.sendall(recorded)
        frames = FrameDecoder(1 << 20).feed(_read_until_closed(sock))
    assert [f["t"] for f in frames] == ["error"], frames
    # as a client would: message 1, wait for message 2, then the records
    with socket.create_connection(relayed.l_group.address, timeout=WAIT) as sock:
        sock.sendall(recorded[:first])
        decoder = FrameDecoder(1 << 20)
        frames = []
        while not frames:
            frames = decoder.feed(sock.recv(65536))
        assert [f["t"] for f in frames] == ["noise"]  # a fresh message 2 ...
        sock.sendall(recorded[first:])
        assert _read_until_closed(sock) == b""  # ... then the close, without a word
    assert "recorded" not in relayed.l_bucket
    assert "recorded" not in relayed.l_executor.executed_ids()


def _read_until_closed(sock: socket.socket, timeout: float = WAIT) -> bytes:
    deadline = time.monotonic() + timeout
    out = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("the server kept the connection open")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


@pytest.mark.parametrize("secret", [SECRET, None], ids=["secret", "no-secret"])
def test_task_ids_and_data_never_cross_the_wire_in_clear(
    cluster: Cluster, secret: str | None
) -> None:
    marker = "MARKER-" + uuid.uuid4().hex
    l_bucket = cluster.bucket(max_bucket=100)
    l_group = cluster.group(l_bucket, secret=secret, peers=["127.0.0.1:1"])
    proxy = MitmProxy(l_group.address, records=secret is not None)
    try:
        v_bucket = cluster.bucket(max_bucket=1)
        hold(v_bucket, 1)
        v_group = cluster.group(v_bucket, peers=[proxy.address], secret=secret)
        wait_peer_up(v_group, proxy.address)
        for i in range(5):
            data = {"note": marker, "blob": marker.encode(), "list": [marker] * 3}
            v_group.fill(BUCKET, f"{marker}-{i}", data, timeout=WAIT, **HOLD)
        duplicate = outcome(v_group.fill_async(BUCKET, f"{marker}-0", None, **HOLD))
        assert isinstance(duplicate, Exception)  # its refusal text names the id, too
        v_group.stop()
        wait_until(lambda: all(s.client_closed.is_set() for s in proxy.sessions))
        captured = proxy.captured()
    finally:
        proxy.close()
    assert len(l_bucket) == 5
    if secret is None:  # the control: a plaintext wire shows it all
        assert marker.encode() in captured
        return
    for needle in (marker, v_group.node_id, l_group.node_id, BUCKET):
        assert needle.encode() not in captured, needle


# --- unauthenticated connections: one deadline, a small limit -----------------------------------


def _trickle(address: tuple[str, int], data: bytes, closed_after: list[float]) -> None:
    start = time.monotonic()
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.settimeout(0.5)
        for byte in data:
            try:
                sock.sendall(bytes((byte,)))
                while True:  # read whatever the server says; b"" is its close
                    if not sock.recv(4096):
                        closed_after.append(time.monotonic() - start)
                        return
            except TimeoutError:
                continue
            except OSError:
                closed_after.append(time.monotonic() - start)
                return
    closed_after.append(float("inf"))


def test_trickling_preauth_connections_are_closed_at_the_handshake_deadline(
    cluster: Cluster,
) -> None:
    """1 byte every 0.5 s of a valid first message: closed 5 s after connecting, however
    the bytes trickle (the deadline covers the whole handshake, not each read)."""
    with_secret = cluster.group(cluster.bucket(max_bucket=10))
    without = cluster.group(cluster.bucket(max_bucket=10), secret=None, peers=["127.0.0.1:1"])
    key = SECRET.encode()
    state = Handshake(True, derive_psk(key, "default"), prologue(PROTOCOL_VERSION, "default"))
    hello = {"t": "hello", "v": PROTOCOL_VERSION, "cluster": "default", "node": "slow", "port": 0}
    noise = encode_frame(
        {
            "t": "noise",
            "v": PROTOCOL_VERSION,
            "cluster": "default",
            "m": state.write_message(pack(hello)),
        }
    )
    plain = encode_frame({**hello, "buckets": [BUCKET] * 40})
    closed_after: list[float] = []
    threads = [
        threading.Thread(target=_trickle, args=(group.address, data, closed_after))
        for group, data in ((with_secret, noise), (without, plain))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(closed_after) == 6
    assert all(4.0 <= t <= 5.0 + 1.5 for t in closed_after), closed_after


@pytest.mark.parametrize("secret", [SECRET, None], ids=["secret", "no-secret"])
def test_a_preauth_frame_over_the_small_limit_is_refused_at_once(
    cluster: Cluster, secret: str | None
) -> None:
    group = cluster.group(cluster.bucket(), secret=secret, peers=["127.0.0.1:1"])
    started = time.monotonic()
    with RawPeer(group.address) as raw:
        raw.send_wire(struct.pack(">I", PREAUTH_MAX_FRAME + 1))  # the header alone
        raw.expect_refusal("bad_frame")
    assert time.monotonic() - started < 2.0


def test_a_preauth_record_over_the_small_limit_is_refused_at_once(cluster: Cluster) -> None:
    """After message 2 the server waits for the client's first record: a header announcing
    more than the pre-authentication limit closes the connection at once, silently."""
    bucket = cluster.bucket()
    group = cluster.group(bucket)
    started = time.monotonic()
    with RawPeer(group.address) as raw:
        assert raw.hello() is not None
        raw.send_wire(struct.pack(">H", PREAUTH_MAX_FRAME + 1))
        assert raw.messages_until_closed() == []
    assert time.monotonic() - started < 2.0


def test_large_frames_after_the_handshake_span_several_records(cluster: Cluster) -> None:
    bucket = cluster.bucket()
    group = cluster.group(bucket)
    with RawPeer(group.address) as raw:
        raw.handshake()
        data = pack(os.urandom(200_000))
        assert raw.fill("big", data)["ok"] is True
    assert "big" in bucket


# --- secrets and clusters that do not match -------------------------------------------------------


@pytest.mark.parametrize(
    ("a_kwargs", "b_kwargs", "server_says", "client_says"),
    [
        (
            {"secret": "cluster-key"},
            {"secret": "another-key"},
            "could not prove the cluster secret",
            "refused the handshake (auth): the peer could not prove the cluster secret",
        ),
        (
            {"secret": None},
            {"secret": "cluster-key"},
            "has no cluster secret and this node has one",
            "peer refused: the peer has no cluster secret and this node has one",
        ),
        (
            {"secret": "cluster-key"},
            {"secret": None, "peers": ["127.0.0.1:1"]},
            "has a cluster secret and this node has none",
            "has no cluster secret and this node has one",
        ),
        (
            {"cluster": "blue"},
            {"cluster": "green"},
            "peer is in cluster 'blue'",
            "refused the handshake (cluster): peer is in cluster 'blue'",
        ),
    ],
    ids=["wrong-secret", "no-secret-vs-secret", "secret-vs-no-secret", "cluster"],
)
def test_mismatched_secrets_and_clusters_are_refused_with_a_clear_log_line(
    cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
    a_kwargs: dict[str, Any],
    b_kwargs: dict[str, Any],
    server_says: str,
    client_says: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gobucket")  # the dialler may log refusals at debug
    b_bucket = cluster.bucket(max_bucket=10)
    b = cluster.group(b_bucket, **b_kwargs)
    a_bucket = cluster.bucket(max_bucket=1)
    a = cluster.group(a_bucket, peers=[b.address], **a_kwargs)

    def said(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    wait_until(lambda: said(server_says) and said(client_says), what="both log lines")
    assert not any(i.up for i in a.peers())
    assert not any(i.up for i in b.peers())


def test_an_unauthenticated_self_error_does_not_stop_the_dialling(cluster: Cluster) -> None:
    """Before the handshake an ERROR frame can come from anyone on the path: a forged
    "self" must not make the node give up on an address (only a proven one may)."""
    accepted: list[int] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def forge() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(1)
            with conn, contextlib.suppress(OSError):
                conn.settimeout(WAIT)
                conn.recv(65536)  # the client's first message, then the forged refusal
                conn.sendall(encode_frame({"t": "error", "code": "self", "msg": "itself"}))
                conn.recv(65536)  # until the client hangs up

    thread = threading.Thread(target=forge, daemon=True)
    thread.start()
    try:
        cluster.group(cluster.bucket(), peers=[listener.getsockname()])
        wait_until(lambda: len(accepted) >= 2, what="a second dial after the forged error")
    finally:
        stop.set()
        thread.join(5)
        listener.close()


# --- socket-level fuzzing of the handshake and of the records -------------------------------------


def _first_frame(node: str = "fuzzer") -> bytes:
    state = Handshake(True, derive_psk(SECRET.encode(), "default"), PROLOGUE)
    hello = {"t": "hello", "v": PROTOCOL_VERSION, "cluster": "default", "node": node, "port": 0}
    message = state.write_message(pack(hello))
    return encode_frame({"t": "noise", "v": PROTOCOL_VERSION, "cluster": "default", "m": message})


@pytest.fixture
def server(cluster: Cluster) -> tuple[TaskBucketGroup, TaskBucket]:
    bucket = cluster.bucket(max_bucket=100)
    return cluster.group(bucket), bucket


def test_fuzz_flipped_first_messages_are_all_refused(
    server: tuple[TaskBucketGroup, TaskBucket], caplog: pytest.LogCaptureFixture
) -> None:
    group, _ = server
    caplog.set_level(logging.WARNING, logger="gobucket")
    frame = _first_frame()

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.integers(0, len(frame) - 1), st.integers(0, 7))
    def fuzz(position: int, bit: int) -> None:
        corrupted = bytearray(frame)
        corrupted[position] ^= 1 << bit
        with socket.create_connection(group.address, timeout=WAIT) as sock:
            sock.sendall(bytes(corrupted))
            sock.shutdown(socket.SHUT_WR)  # EOF: a frame cut short ends at once, too
            answer = FrameDecoder(1 << 20).feed(_read_until_closed(sock))
        assert all(m.get("t") == "error" for m in answer), answer

    fuzz()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    with RawPeer(group.address) as raw:
        raw.handshake()
        raw.ping()


@pytest.mark.parametrize("which", ["first-record", "later-record"])
def test_fuzz_flipped_records_close_without_an_answer(
    server: tuple[TaskBucketGroup, TaskBucket], which: str
) -> None:
    group, bucket = server

    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        with RawPeer(group.address) as raw:
            assert raw.hello() is not None and raw.sealer is not None
            if which == "later-record":
                raw.send({"t": "ready"})
                raw.ping(1)
                message = {
                    "t": "fill",
                    "rid": 2,
                    "bucket": BUCKET,
                    "id": "fuzzed",
                    "type": "immediate",
                    "run_after": 0,
                    "life_span": 5,
                }
            else:
                message = {"t": "ready"}
            record = bytearray(raw.sealer.seal(encode_frame(message)))
            position = data.draw(st.integers(2, len(record) - 1))
            record[position] ^= 1 << data.draw(st.integers(0, 7))
            raw.send_wire(bytes(record))
            assert raw.messages_until_closed() == []
        assert "fuzzed" not in bucket

    fuzz()
