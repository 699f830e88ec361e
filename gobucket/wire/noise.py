"""Noise_NNpsk0_25519_ChaChaPoly_SHA256, and the encrypted record layer of the wire.

The handshake is the Noise Protocol Framework's ``NNpsk0`` pattern, written
strictly from the specification (revision 34, https://noiseprotocol.org/noise.html)
with the primitives of the ``cryptography`` package (X25519, ChaCha20-Poly1305)
and of the standard library (SHA-256, HMAC)::

    NNpsk0:
      -> psk, e        (the initiator's payload is encrypted under a PSK-derived key)
      <- e, ee         (the responder's payload is encrypted under psk + both ephemerals)

:class:`Handshake` is a sans-IO handshake state (section 5.3); the tests check it
against the Noise test vectors and against the ``noiseprotocol`` package.
After the handshake, :meth:`Handshake.split` gives one :class:`CipherState` per
direction, and :class:`RecordWriter` / :class:`RecordReader` carry a byte stream
as Noise transport messages: each one a 2-byte big-endian length and at most
65,535 bytes of ChaCha20-Poly1305 ciphertext (tag included), with the Noise
nonce (32 zero bits and a 64-bit little-endian counter, one per direction).

:func:`derive_psk` and :func:`prologue` are gobucket's key schedule: see
``docs/wire.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "MAX_MESSAGE",
    "MAX_RECORD_PLAINTEXT",
    "PROTOCOL_NAME",
    "TAG_LEN",
    "CipherState",
    "Handshake",
    "HandshakeError",
    "RecordError",
    "RecordReader",
    "RecordWriter",
    "derive_psk",
    "prologue",
]

PROTOCOL_NAME = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
"""The Noise protocol name; hashed into the handshake state first of all."""

HASH_LEN = 32
DH_LEN = 32
KEY_LEN = 32
TAG_LEN = 16
MAX_MESSAGE = 65535
"""Largest Noise message (handshake message or transport record), tag included."""

MAX_RECORD_PLAINTEXT = MAX_MESSAGE - TAG_LEN
"""Most plaintext bytes one record carries (65,519)."""

_MAX_NONCE = 2**64 - 1  # reserved by the spec: a CipherState never uses it
_NONCE = struct.Struct("<4xQ")  # 32 zero bits, then the counter as 64-bit little-endian
_LENGTH = struct.Struct(">H")

PSK_SALT = b"gobucket wire psk v2"
"""HKDF salt of :func:`derive_psk`."""


class HandshakeError(Exception):
    """A handshake message was malformed or did not authenticate (wrong key, tampered)."""


class RecordError(ConnectionError):
    """A transport record was malformed, too large, or did not authenticate.

    The stream cannot be trusted any more: the connection must be closed and
    nothing it carried after the last good record may be acted upon.
    """


def derive_psk(secret: bytes, cluster: str) -> bytes:
    """The 32-byte Noise PSK of a cluster: HKDF-SHA256 of the user's secret.

    ``salt`` is :data:`PSK_SALT`, ``info`` is ``b"gobucket cluster " + cluster``
    (UTF-8), so one secret gives unrelated keys in different clusters.
    """
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=PSK_SALT,
        info=b"gobucket cluster " + cluster.encode("utf-8"),
    )
    return hkdf.derive(secret)


def prologue(version: int, cluster: str) -> bytes:
    """The Noise prologue: ``b"gobucket/<version>\\x00<cluster>"``; both sides must agree."""
    return b"gobucket/%d\x00" % version + cluster.encode("utf-8")


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    """The Noise HKDF (spec section 4.3): HMAC-SHA256 extract, then 2 or 3 outputs."""
    temp_key = hmac.digest(chaining_key, ikm, "sha256")
    out: list[bytes] = []
    previous = b""
    for index in range(1, outputs + 1):
        previous = hmac.digest(temp_key, previous + bytes((index,)), "sha256")
        out.append(previous)
    return out


class CipherState:
    """A ChaCha20-Poly1305 key and its 64-bit nonce counter (spec section 5.1)."""

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("a cipher key is 32 bytes")
        self._aead = ChaCha20Poly1305(key)
        self.n = 0

    def encrypt(self, plaintext: bytes | memoryview, ad: bytes = b"") -> bytes:
        """EncryptWithAd: ciphertext and tag under the next nonce."""
        n = self.n
        if n >= _MAX_NONCE:
            raise RecordError("nonce space exhausted: the connection must be renewed")
        self.n = n + 1
        return self._aead.encrypt(_NONCE.pack(n), plaintext, ad)

    def decrypt(self, ciphertext: bytes | memoryview, ad: bytes = b"") -> bytes:
        """DecryptWithAd; raises :class:`InvalidTag` and leaves the counter as it was."""
        n = self.n
        if n >= _MAX_NONCE:
            raise RecordError("nonce space exhausted: the connection must be renewed")
        plaintext = self._aead.decrypt(_NONCE.pack(n), ciphertext, ad)
        self.n = n + 1
        return plaintext


class Handshake:
    """One side of a ``Noise_NNpsk0_25519_ChaChaPoly_SHA256`` handshake (sans I/O).

    The initiator calls :meth:`write_message` then :meth:`read_message`; the
    responder :meth:`read_message` then :meth:`write_message`. Afterwards
    :attr:`handshake_hash` is the transcript hash ``h`` and :meth:`split` gives
    the transport ciphers. ``ephemeral`` (32 private key bytes) is for test
    vectors only: a real handshake must use a fresh key.

    Raises:
        HandshakeError: a received message is malformed or does not decrypt.
    """

    def __init__(
        self, initiator: bool, psk: bytes, prologue: bytes, ephemeral: bytes | None = None
    ) -> None:
        if len(psk) != 32:
            raise ValueError("the PSK is 32 bytes")
        self.initiator = initiator
        self._psk = psk
        # InitializeSymmetric: the name is longer than HASHLEN, so h = HASH(name).
        self._h = hashlib.sha256(PROTOCOL_NAME).digest()
        self._ck = self._h
        self._cipher: CipherState | None = None
        self._mix_hash(prologue)
        self._e = (
            X25519PrivateKey.from_private_bytes(ephemeral)
            if ephemeral is not None
            else X25519PrivateKey.generate()
        )
        self._re: X25519PublicKey | None = None
        self._step = 0  # messages done; 2 = complete
        self._failed = False

    # SymmetricState (spec section 5.2) ----------------------------------------------------
    def _mix_hash(self, data: bytes) -> None:
        self._h = hashlib.sha256(self._h + data).digest()

    def _mix_key(self, ikm: bytes) -> None:
        self._ck, temp_k = _hkdf(self._ck, ikm, 2)
        self._cipher = CipherState(temp_k)

    def _mix_key_and_hash(self, ikm: bytes) -> None:
        self._ck, temp_h, temp_k = _hkdf(self._ck, ikm, 3)
        self._mix_hash(temp_h)
        self._cipher = CipherState(temp_k)

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self._cipher is not None  # NNpsk0 has a key before any payload
        ciphertext = self._cipher.encrypt(plaintext, self._h)
        self._mix_hash(ciphertext)
        return ciphertext

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        assert self._cipher is not None
        try:
            plaintext = self._cipher.decrypt(ciphertext, self._h)
        except InvalidTag:
            raise HandshakeError("handshake message did not authenticate") from None
        self._mix_hash(ciphertext)
        return plaintext

    # tokens ------------------------------------------------------------------------------
    def _write_e(self) -> bytes:
        public = self._e.public_key().public_bytes_raw()
        self._mix_hash(public)
        self._mix_key(public)  # a PSK handshake also mixes "e" into the key (section 9.2)
        return public

    def _read_e(self, message: bytes) -> None:
        public = message[:DH_LEN]
        self._re = X25519PublicKey.from_public_bytes(public)
        self._mix_hash(public)
        self._mix_key(public)

    def _ee(self) -> None:
        assert self._re is not None
        try:
            shared = self._e.exchange(self._re)
        except ValueError:  # a low-order point: the shared secret would be all zeros
            raise HandshakeError("the peer's ephemeral key is invalid") from None
        self._mix_key(shared)

    # messages ----------------------------------------------------------------------------
    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise HandshakeError("the handshake already failed")
        if self._step >= 2:
            raise RuntimeError("the handshake is already complete")
        initiator_turn = self._step == 0
        if (initiator_turn == self.initiator) != writing:
            raise RuntimeError("not this side's turn to " + ("write" if writing else "read"))

    def write_message(self, payload: bytes) -> bytes:
        """The next handshake message of this side, carrying ``payload`` encrypted."""
        self._check_turn(writing=True)
        if self._step == 0:  # -> psk, e
            self._mix_key_and_hash(self._psk)
            out = self._write_e()
        else:  # <- e, ee
            out = self._write_e()
            self._ee()
        out += self._encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise ValueError("handshake payload too long")
        self._step += 1
        return out

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's handshake message; return its decrypted payload."""
        self._check_turn(writing=False)
        if not isinstance(message, bytes) or not DH_LEN + TAG_LEN <= len(message) <= MAX_MESSAGE:
            self._failed = True
            raise HandshakeError("handshake message of a wrong size")
        try:
            if self._step == 0:  # -> psk, e
                self._mix_key_and_hash(self._psk)
                self._read_e(message)
            else:  # <- e, ee
                self._read_e(message)
                self._ee()
            payload = self._decrypt_and_hash(message[DH_LEN:])
        except HandshakeError:
            self._failed = True
            raise
        self._step += 1
        return payload

    @property
    def complete(self) -> bool:
        """Both messages were written or read."""
        return self._step == 2

    @property
    def handshake_hash(self) -> bytes:
        """``h``: the hash of the whole transcript (valid once :attr:`complete`)."""
        return self._h

    def split(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` transport ciphers of this side (Split(), section 5.2)."""
        if not self.complete:
            raise RuntimeError("the handshake is not complete")
        k1, k2 = _hkdf(self._ck, b"", 2)
        initiator_to_responder, responder_to_initiator = CipherState(k1), CipherState(k2)
        if self.initiator:
            return initiator_to_responder, responder_to_initiator
        return responder_to_initiator, initiator_to_responder


class RecordWriter:
    """Turns a plaintext byte stream into records: ``u16be length || ciphertext``."""

    __slots__ = ("_cipher",)

    def __init__(self, cipher: CipherState) -> None:
        self._cipher = cipher

    def seal(self, data: bytes) -> bytes:
        """Records carrying ``data`` (one per 65,519 bytes; nothing for empty data)."""
        encrypt = self._cipher.encrypt
        if len(data) <= MAX_RECORD_PLAINTEXT:
            if not data:
                return b""
            ciphertext = encrypt(data)
            return _LENGTH.pack(len(ciphertext)) + ciphertext
        view = memoryview(data)
        parts: list[bytes] = []
        for start in range(0, len(data), MAX_RECORD_PLAINTEXT):
            ciphertext = encrypt(view[start : start + MAX_RECORD_PLAINTEXT])
            parts.append(_LENGTH.pack(len(ciphertext)))
            parts.append(ciphertext)
        return b"".join(parts)


class RecordReader:
    """Splits received bytes into records and opens them, strictly in order.

    A record that is shorter than a tag, longer than ``max_record``, or that
    does not authenticate under the next nonce (tampered, replayed, reordered,
    dropped, injected) raises :class:`RecordError`, and so does every call after it.
    """

    __slots__ = ("_buffer", "_cipher", "_failed", "max_record")

    def __init__(self, cipher: CipherState, max_record: int = MAX_MESSAGE) -> None:
        self._cipher = cipher
        self._buffer = bytearray()
        self._failed = False
        self.max_record = max_record

    @property
    def buffered(self) -> int:
        """Received bytes not yet opened."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add received bytes (opened by :meth:`next_record` / :meth:`open_all`)."""
        self._buffer += data

    def _record_length(self, offset: int) -> int | None:
        if self._failed:
            raise RecordError("the record stream already failed")
        if len(self._buffer) - offset < 2:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer, offset)
        if length < TAG_LEN or length > self.max_record:
            self._failed = True
            raise RecordError(f"record of {length} bytes is out of bounds")
        if len(self._buffer) - offset - 2 < length:
            return None
        return int(length)

    def _open(self, ciphertext: bytes | memoryview) -> bytes:
        try:
            return self._cipher.decrypt(ciphertext)
        except InvalidTag:
            self._failed = True
            raise RecordError(
                "a record did not authenticate (tampered, replayed, reordered or injected)"
            ) from None

    def next_record(self) -> bytes | None:
        """The plaintext of the next complete record, or None until one is buffered."""
        length = self._record_length(0)
        if length is None:
            return None
        ciphertext = bytes(self._buffer[2 : 2 + length])
        del self._buffer[: 2 + length]
        return self._open(ciphertext)

    def open_all(self) -> bytes:
        """The plaintext of every complete record buffered, joined."""
        buffer = self._buffer
        offset = 0
        parts: list[bytes] = []
        with memoryview(buffer) as view:
            while True:
                length = self._record_length(offset)
                if length is None:
                    break
                parts.append(self._open(view[offset + 2 : offset + 2 + length]))
                offset += 2 + length
        if offset:
            del buffer[:offset]
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)
