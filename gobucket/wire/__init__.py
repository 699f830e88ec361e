"""The group wire protocol: length-prefixed msgpack frames over TCP (see ``docs/wire.md``).

* :mod:`~gobucket.wire.frames` — framing and a decoder that distrusts every byte.
* :mod:`~gobucket.wire.protocol` — message types, validation, the HMAC handshake.
* :mod:`~gobucket.wire.connection` — one authenticated connection on asyncio.
"""

from gobucket.wire.frames import FrameDecoder, FrameError, encode_frame
from gobucket.wire.protocol import PROTOCOL_VERSION, RefusalCode

__all__ = ["PROTOCOL_VERSION", "FrameDecoder", "FrameError", "RefusalCode", "encode_frame"]
