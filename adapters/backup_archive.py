"""The backup archive file: named members, compressed, then encrypted with a key made from a passphrase.

Layout (format 1), all integers big-endian:

    header   b"WLBACKUP" | format u16 | kdf u8 (1: scrypt) | log2(n) u8 | r u8 | p u8 | salt 16 bytes
    check    16 bytes: the AES-GCM tag of nothing, under the key, with the header as associated data
    chunks   final u8 | length u32 | AES-GCM(key, nonce = index u88 || final u8, aad = header)

The key is scrypt(passphrase, salt) with a fresh random salt per archive, so the chunk index
makes every nonce unique. The check tells a wrong passphrase apart from damage; a chunk
that does not authenticate is damage; a stream without its final chunk is truncated; bytes
after it are damage too. Decrypted, the chunks are one zlib stream of frames
(`kind u8 | name length u16 | name | data length u32 | data`): member frames (kind 1), a
member's data being the concatenation of its frames, and one end frame (kind 2).

Writing and reading both stream: memory stays at a chunk and a frame whatever the size.
"""

from __future__ import annotations

import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from adapters.errors import AdapterError

__all__ = [
    "FORMAT_VERSION",
    "ArchiveError",
    "ArchiveWriter",
    "DamagedArchive",
    "KdfParams",
    "NewerFormat",
    "TruncatedArchive",
    "WrongPassphrase",
    "read_members",
]

FORMAT_VERSION: Final = 1
MAGIC: Final = b"WLBACKUP"
CHUNK: Final = 1 << 20
MAX_FRAME: Final = 64 << 20
_HEADER = struct.Struct(">8sHBBBB16s")
_CHUNK_HEAD = struct.Struct(">BI")
_FRAME_HEAD = struct.Struct(">BHI")
_MEMBER, _END = 1, 2
_TAG = 16
_SCRYPT = 1


class ArchiveError(AdapterError):
    """An archive that cannot be read; the message says why in a line an operator can act on."""


class WrongPassphrase(ArchiveError):
    pass


class DamagedArchive(ArchiveError):
    pass


class TruncatedArchive(DamagedArchive):
    pass


class NewerFormat(ArchiveError):
    pass


class KdfParams:
    """scrypt's cost (n = 2**log2n, r, p) and salt; the defaults take about 32 MiB and a tenth of a second."""

    __slots__ = ("log2n", "p", "r", "salt")

    def __init__(self, *, log2n: int = 15, r: int = 8, p: int = 1, salt: bytes | None = None) -> None:
        self.log2n, self.r, self.p = log2n, r, p
        self.salt = salt if salt is not None else secrets.token_bytes(16)

    def key(self, passphrase: str) -> bytes:
        return Scrypt(salt=self.salt, length=32, n=2**self.log2n, r=self.r, p=self.p).derive(passphrase.encode())


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _check_nonce() -> bytes:
    return b"\xff" * 12


class ArchiveWriter:
    """Writes one archive to `<path>.part` and renames it to `path` on `finish`; `abort` removes it."""

    def __init__(
        self, path: Path, passphrase: str, *, level: int = 6, kdf: KdfParams | None = None,
        format_version: int = FORMAT_VERSION,
    ) -> None:  # fmt: skip
        if not passphrase:
            raise ValueError("an archive needs a passphrase")
        kdf = kdf or KdfParams()
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._header = _HEADER.pack(MAGIC, format_version, _SCRYPT, kdf.log2n, kdf.r, kdf.p, kdf.salt)
        self._aead = AESGCM(kdf.key(passphrase))
        self._zip = zlib.compressobj(level)
        self._pending = bytearray()
        self._index = 0
        self._file: IO[bytes] = open(self.part, "wb")  # noqa: SIM115 - closed by finish or abort
        self._file.write(self._header)
        self._file.write(self._aead.encrypt(_check_nonce(), b"", self._header))

    def write(self, name: str, data: bytes) -> None:
        """Append `data` to member `name` (a member may be written in many pieces, one after another)."""
        encoded = name.encode()
        if len(data) > MAX_FRAME:
            for start in range(0, len(data), MAX_FRAME):
                self.write(name, data[start : start + MAX_FRAME])
            return
        self._put(_FRAME_HEAD.pack(_MEMBER, len(encoded), len(data)) + encoded)
        self._put(data)

    def _put(self, plain: bytes) -> None:
        self._pending += self._zip.compress(plain)
        while len(self._pending) >= CHUNK:
            self._seal(bytes(self._pending[:CHUNK]), final=False)
            del self._pending[:CHUNK]

    def _seal(self, plain: bytes, *, final: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index, final), plain, self._header)
        self._file.write(_CHUNK_HEAD.pack(1 if final else 0, len(sealed)))
        self._file.write(sealed)
        self._index += 1

    def finish(self) -> int:
        """Close the stream with its end frame and final chunk, sync, and put the file in place; its size."""
        self._pending += self._zip.compress(_FRAME_HEAD.pack(_END, 0, 0)) + self._zip.flush()
        while len(self._pending) > CHUNK:
            self._seal(bytes(self._pending[:CHUNK]), final=False)
            del self._pending[:CHUNK]
        self._seal(bytes(self._pending), final=True)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.part, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        self._file.close()
        self.part.unlink(missing_ok=True)


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise TruncatedArchive("the archive ends early: it is truncated (an incomplete copy or download?)")
    return data


def _open(stream: IO[bytes], passphrase: str) -> tuple[bytes, AESGCM]:
    header = stream.read(_HEADER.size)
    if len(header) < len(MAGIC) or header[: len(MAGIC)] != MAGIC:
        raise DamagedArchive("this is not a WattLedger backup archive")
    if len(header) < _HEADER.size:
        raise TruncatedArchive("the archive ends inside its header: it is truncated")
    _, version, kdf, log2n, r, p, salt = _HEADER.unpack(header)
    if version > FORMAT_VERSION:
        raise NewerFormat(
            f"the archive has format {version}, made by a newer WattLedger; this one reads format {FORMAT_VERSION}"
            " and older: restore it with a newer version"
        )
    if version < 1 or kdf != _SCRYPT or not (10 <= log2n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        raise DamagedArchive("the archive's header is damaged")
    aead = AESGCM(KdfParams(log2n=log2n, r=r, p=p, salt=salt).key(passphrase))
    try:
        aead.decrypt(_check_nonce(), _read_exact(stream, _TAG), header)
    except InvalidTag:
        raise WrongPassphrase("the passphrase does not open this archive (or its header was altered)") from None
    return header, aead


def _plain_chunks(stream: IO[bytes], header: bytes, aead: AESGCM) -> Iterator[bytes]:
    index = 0
    while True:
        head = stream.read(_CHUNK_HEAD.size)
        if not head:
            raise TruncatedArchive("the archive ends before its last part: it is truncated")
        if len(head) < _CHUNK_HEAD.size:
            head += _read_exact(stream, _CHUNK_HEAD.size - len(head))
        final, length = _CHUNK_HEAD.unpack(head)
        if final not in (0, 1) or not _TAG <= length <= CHUNK + _TAG:
            raise DamagedArchive(f"part {index + 1} of the archive is damaged (altered or corrupted)")
        sealed = _read_exact(stream, length)
        try:
            yield aead.decrypt(_nonce(index, bool(final)), sealed, header)
        except InvalidTag:
            raise DamagedArchive(
                f"part {index + 1} of the archive fails its check: the archive was altered or corrupted"
            ) from None
        index += 1
        if final:
            if stream.read(1):
                raise DamagedArchive("the archive has data after its end: it was altered")
            return


def read_members(path: Path, passphrase: str) -> Iterator[tuple[str, bytes]]:
    """Each piece of each member in archive order, as `(name, data)`, checked as it is read.

    Raises DamagedArchive, TruncatedArchive, WrongPassphrase or NewerFormat; a piece is only
    handed out once the part holding it has authenticated."""
    with open(path, "rb") as stream:
        header, aead = _open(stream, passphrase)
        unzip = zlib.decompressobj()
        buffer = bytearray()
        ended = False
        for plain in _plain_chunks(stream, header, aead):
            data = plain
            while data:
                try:
                    buffer += unzip.decompress(data, CHUNK)
                except zlib.error:
                    raise DamagedArchive("the archive's compressed stream is damaged") from None
                data = unzip.unconsumed_tail
                while not ended and len(buffer) >= _FRAME_HEAD.size:
                    kind, name_len, data_len = _FRAME_HEAD.unpack_from(buffer)
                    if kind not in (_MEMBER, _END) or data_len > MAX_FRAME:
                        raise DamagedArchive("the archive's content is damaged")
                    size = _FRAME_HEAD.size + name_len + data_len
                    if len(buffer) < size:
                        break
                    if kind == _END:
                        ended = True
                        del buffer[: _FRAME_HEAD.size]
                        break
                    name = bytes(buffer[_FRAME_HEAD.size : _FRAME_HEAD.size + name_len]).decode("utf-8", "replace")
                    piece = bytes(buffer[_FRAME_HEAD.size + name_len : size])
                    del buffer[:size]
                    yield name, piece
        if not ended or buffer or not unzip.eof:
            raise DamagedArchive("the archive's content does not end where it should")
