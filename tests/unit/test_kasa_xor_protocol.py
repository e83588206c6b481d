"""The legacy Kasa wire format: XOR autokey cipher and length-prefixed framing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kasa.transports.xortransport import XorEncryption

from adapters.emulator.protocol import (
    FrameDecoder,
    ProtocolError,
    decode_json,
    decrypt,
    encode_json,
    encrypt,
    frame,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(deadline=None)
@given(st.binary())
def test_decrypt_inverts_encrypt(plaintext: bytes) -> None:
    assert decrypt(encrypt(plaintext)) == plaintext


@settings(deadline=None)
@given(st.binary())
def test_encryption_preserves_length(plaintext: bytes) -> None:
    assert len(encrypt(plaintext)) == len(plaintext)


@settings(deadline=None)
@given(st.text())
def test_frames_are_byte_identical_to_python_kasa_requests(text: str) -> None:
    assert frame(text.encode()) == XorEncryption.encrypt(text)


@settings(deadline=None)
@given(st.text())
def test_unframed_ciphertext_is_what_python_kasa_sends_for_discovery(text: str) -> None:
    assert encrypt(text.encode()) == XorEncryption.encrypt(text)[4:]


@settings(deadline=None)
@given(st.text())
def test_python_kasa_decrypts_what_the_emulator_encrypts(text: str) -> None:
    assert XorEncryption.decrypt(encrypt(text.encode())) == text


@settings(deadline=None)
@given(st.binary())
def test_frame_header_is_big_endian_plaintext_length(plaintext: bytes) -> None:
    (length,) = struct.unpack(">I", frame(plaintext)[:4])
    assert length == len(plaintext)


@settings(deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.data())
def test_decoder_reassembles_messages_cut_at_any_points(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    received: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        received += decoder.feed(stream[start:cut])
        start = cut
    assert received == messages
    assert decoder.pending == 0


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(1, 3))
def test_decoder_holds_an_incomplete_frame_until_the_rest_arrives(
    message: bytes, missing: int
) -> None:
    whole = frame(message)
    missing = min(missing, len(whole))
    decoder = FrameDecoder()
    assert decoder.feed(whole[:-missing]) == []
    assert decoder.feed(whole[-missing:]) == [message]


def test_decoder_refuses_a_frame_longer_than_its_limit() -> None:
    decoder = FrameDecoder(max_frame_size=16)
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", 17) + b"x")


@settings(deadline=None)
@given(json_values)
def test_json_survives_encode_encrypt_decrypt_decode(value: object) -> None:
    assert decode_json(decrypt(encrypt(encode_json(value)))) == value


def test_garbage_plaintext_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_json(b"{not json")
