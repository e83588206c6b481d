"""The legacy TP-Link Smart Home wire format, as Kasa IOT devices speak it.

A message is JSON text XORed with an autokey cipher: the key starts at 171 and
each ciphertext byte becomes the key for the next. Over TCP every message is
prefixed with its length as a 4-byte big-endian unsigned integer; UDP discovery
datagrams carry the ciphertext alone, without the prefix.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from adapters.errors import AdapterError

INITIAL_KEY = 171
HEADER_SIZE = 4
MAX_FRAME_SIZE = 1 << 20

_HEADER = struct.Struct(">I")
_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


class EmulatorError(AdapterError):
    """Base of every error the emulator package raises."""


class ProtocolError(EmulatorError):
    """Bytes that are not a well-formed legacy Kasa message."""


def encrypt(plaintext: bytes) -> bytes:
    """Encrypt with the autokey XOR cipher (unframed, as in UDP discovery)."""
    key = INITIAL_KEY
    out = bytearray(len(plaintext))
    for i, byte in enumerate(plaintext):
        key ^= byte
        out[i] = key
    return bytes(out)


def decrypt(ciphertext: bytes) -> bytes:
    """Invert `encrypt`."""
    key = INITIAL_KEY
    out = bytearray(len(ciphertext))
    for i, byte in enumerate(ciphertext):
        out[i] = key ^ byte
        key = byte
    return bytes(out)


def frame(plaintext: bytes) -> bytes:
    """Length-prefix and encrypt one message for the TCP stream."""
    if len(plaintext) > MAX_FRAME_SIZE:
        raise ProtocolError(f"message of {len(plaintext)} bytes exceeds {MAX_FRAME_SIZE}")
    return _HEADER.pack(len(plaintext)) + encrypt(plaintext)


class FrameDecoder:
    """Reassemble framed messages from a TCP byte stream cut at arbitrary points."""

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray()
        self._max_frame_size = max_frame_size

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the plaintext of every message now complete.

        Raises ProtocolError when a header announces a frame larger than allowed,
        after which the stream cannot be resynchronised and should be closed.
        """
        self._buffer += data
        messages: list[bytes] = []
        while len(self._buffer) >= HEADER_SIZE:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self._max_frame_size:
                raise ProtocolError(f"frame of {length} bytes exceeds {self._max_frame_size}")
            end = HEADER_SIZE + length
            if len(self._buffer) < end:
                break
            messages.append(decrypt(bytes(self._buffer[HEADER_SIZE:end])))
            del self._buffer[:end]
        return messages

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole message."""
        return len(self._buffer)


def encode_json(message: Any) -> bytes:
    """Serialise a JSON-compatible value the way the devices do (compact UTF-8)."""
    return _json_encoder.encode(message)


def decode_json(plaintext: bytes) -> Any:
    """Parse a decrypted message; raise ProtocolError when it is not JSON."""
    try:
        return _json_decoder.decode(plaintext)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
