"""The group wire protocol: length-prefixed msgpack frames over TCP (see ``docs/wire.md``).

* :mod:`~gobucket.wire.frames` — framing and a decoder that distrusts every byte.
* :mod:`~gobucket.wire.protocol` — message types and their validation.
* :mod:`~gobucket.wire.noise` — the Noise_NNpsk0 handshake and the encrypted records.
* :mod:`~gobucket.wire.connection` — the handshake, and one connection on asyncio.
"""

from gobucket.wire.frames import FrameDecoder, FrameError, encode_frame
from gobucket.wire.protocol import PROTOCOL_VERSION, RefusalCode

__all__ = ["PROTOCOL_VERSION", "FrameDecoder", "FrameError", "RefusalCode", "encode_frame"]
