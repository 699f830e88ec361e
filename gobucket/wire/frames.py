"""Length-prefixed msgpack frames, and a decoder that distrusts every byte.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of
one msgpack value, which must be a map (a message). The decoder refuses frames
over ``max_frame`` bytes before reading them, values nested deeper than
``max_depth``, map keys that are neither strings nor integers, and anything
msgpack cannot parse; each refusal is a :class:`FrameError`, after which the
connection is closed. With a cluster secret the frames travel inside encrypted
records (:mod:`gobucket.wire.noise`): this decoder then reads the decrypted stream.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

__all__ = [
    "CONTAINERS_PER_BYTE",
    "DEFAULT_MAX_FRAME",
    "MAX_DEPTH",
    "FrameDecoder",
    "FrameError",
    "encode_frame",
    "pack",
]

DEFAULT_MAX_FRAME = 1 << 20
"""Largest frame accepted by default (1 MiB)."""

MAX_DEPTH = 32
"""Deepest nesting of lists and maps accepted in a frame."""

CONTAINERS_PER_BYTE = 1 / 16
"""Lists and maps a frame may hold per byte of ``max_frame`` (65,536 for 1 MiB)."""

MIN_CONTAINERS = 1024

_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """A frame was malformed, too large or too deep; the connection must be closed."""


def pack(value: Any) -> bytes:
    """msgpack-encode ``value`` (raises TypeError/ValueError for what msgpack cannot carry)."""
    return msgpack.packb(value, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def encode_frame(message: dict[str, Any], max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame: length prefix and the msgpack body of ``message``."""
    body = pack(message)
    if len(body) > max_frame:
        raise FrameError(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return _HEADER.pack(len(body)) + body


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise FrameError(f"frame nested deeper than {MAX_DEPTH}")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise FrameError("map keys must be strings or integers")
            if isinstance(item, dict | list):
                _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                _check_depth(item, depth + 1)


class FrameDecoder:
    """Feed bytes in as they arrive; take out whole messages.

    Example::

        decoder = FrameDecoder()
        for message in decoder.feed(data):
            handle(message)
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 16:
            raise ValueError("max_frame must be at least 16 bytes")
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer)

    def take_buffered(self) -> bytes:
        """Remove and return the bytes received after the last whole frame.

        Used when the stream changes format (plaintext handshake, then encrypted
        records): what arrived behind the handshake belongs to the new format.
        """
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add received bytes; return every message completed by them, in order.

        Raises:
            FrameError: the stream is not valid; stop reading it.
        """
        buffer = self._buffer
        buffer += data
        messages: list[dict[str, Any]] = []
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            (length,) = _HEADER.unpack_from(buffer, offset)
            if length > self.max_frame:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
            if size - offset - 4 < length:
                break
            body = bytes(buffer[offset + 4 : offset + 4 + length])
            offset += 4 + length
            messages.append(self.decode_body(body))
        if offset:
            del buffer[:offset]
        return messages

    def decode_body(self, body: bytes) -> dict[str, Any]:
        """Decode one frame body into a message map.

        At most :data:`CONTAINERS_PER_BYTE` ``* max_frame`` lists and maps are
        built (at least 1,024): a frame of a million empty arrays is refused
        after a few milliseconds instead of costing the loop a third of a second.
        """
        value = self._unpack(body, 0)
        if not isinstance(value, dict):
            raise FrameError(f"a frame must hold a map, not {type(value).__name__}")
        _check_depth(value)
        return value

    def decode_value(self, body: bytes) -> Any:
        """Decode one msgpack value carried inside a message (a FILL's task data).

        The limits are those of :meth:`decode_body` for the value as the field
        of a one-field map (one container fewer, nesting counted from depth 1),
        so what a peer may send did not change when the data stopped being
        decoded wrapped in such a map.
        """
        value = self._unpack(body, 1)
        if isinstance(value, dict | list):
            _check_depth(value, 1)
        return value

    def _unpack(self, body: bytes, reserved: int) -> Any:
        """msgpack-decode ``body`` within the limits; ``reserved`` containers are not available."""
        limit = self.max_frame
        left = max(MIN_CONTAINERS, int(limit * CONTAINERS_PER_BYTE)) - reserved

        def counted(container: Any) -> Any:
            nonlocal left
            left -= 1
            if left < 0:
                raise FrameError(
                    f"frame holds more than {limit * CONTAINERS_PER_BYTE:.0f} lists/maps"
                )
            return container

        try:
            return msgpack.unpackb(
                body,
                raw=False,
                strict_map_key=False,
                use_list=True,
                max_str_len=limit,
                max_bin_len=limit,
                max_array_len=limit // 2,
                max_map_len=limit // 4,
                max_ext_len=0,
                timestamp=0,
                list_hook=counted,
                object_hook=counted,
            )
        except FrameError:
            raise
        except Exception as error:  # msgpack raises several types, all mean "malformed"
            raise FrameError(f"malformed msgpack: {error.__class__.__name__}: {error}") from None
