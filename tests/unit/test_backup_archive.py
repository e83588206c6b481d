"""The backup archive file: members come back as written, and every kind of damage is named, not read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapters.backup_archive import (
    CHUNK,
    ArchiveError,
    ArchiveWriter,
    DamagedArchive,
    KdfParams,
    NewerFormat,
    TruncatedArchive,
    WrongPassphrase,
    read_members,
)

def write(path: Path, members: list[tuple[str, bytes]], *, passphrase: str = "correct horse", **options: object) -> Path:
    writer = ArchiveWriter(path, passphrase, kdf=KdfParams(log2n=10), **options)  # type: ignore[arg-type]
    for name, data in members:
        writer.write(name, data)
    writer.finish()
    return path


def members(path: Path, passphrase: str = "correct horse") -> list[tuple[str, bytes]]:
    return list(read_members(path, passphrase))


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    # Random bytes do not compress, so this spans several encrypted parts.
    return write(tmp_path / "a.wlbackup", [("snapshot", b"{}"), ("events", os.urandom(CHUNK + 5000)),
                                           ("events", b"more"), ("manifest", b"[1]")])


def test_members_come_back_in_order_and_whole(archive: Path) -> None:
    names = [name for name, _ in members(archive)]
    assert names == ["snapshot", "events", "events", "manifest"]
    assert members(archive)[2] == ("events", b"more")
    assert not archive.with_name(archive.name + ".part").exists()


def test_a_wrong_passphrase_is_named_as_such(archive: Path) -> None:
    with pytest.raises(WrongPassphrase, match="passphrase"):
        members(archive, "wrong horse")


def test_a_truncated_archive_is_refused_at_any_cut(archive: Path, tmp_path: Path) -> None:
    data = archive.read_bytes()
    for cut in (len(data) - 1, len(data) - 17, CHUNK // 2, 60):
        short = tmp_path / f"cut{cut}"
        short.write_bytes(data[:cut])
        with pytest.raises((TruncatedArchive, DamagedArchive)):
            members(short)


def test_a_cut_exactly_between_parts_is_still_truncated(tmp_path: Path, archive: Path) -> None:
    data = archive.read_bytes()
    first_part_end = 32 + 16 + 5 + CHUNK + 16
    short = tmp_path / "boundary"
    short.write_bytes(data[:first_part_end])
    with pytest.raises(TruncatedArchive, match="truncated"):
        members(short)


@pytest.mark.parametrize("where", [60, 5000, -20, -1])
def test_one_altered_byte_is_refused(archive: Path, tmp_path: Path, where: int) -> None:
    data = bytearray(archive.read_bytes())
    data[where] ^= 0x01
    altered = tmp_path / "altered"
    altered.write_bytes(bytes(data))
    with pytest.raises(DamagedArchive, match="altered|damaged"):
        members(altered)


@pytest.mark.parametrize("where", [9, 20, 40])
def test_an_altered_header_byte_is_refused(archive: Path, tmp_path: Path, where: int) -> None:
    data = bytearray(archive.read_bytes())
    data[where] ^= 0x01
    altered = tmp_path / "altered"
    altered.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="altered|damaged|newer"):
        members(altered)


def test_bytes_after_the_end_are_refused(archive: Path, tmp_path: Path) -> None:
    longer = tmp_path / "longer"
    longer.write_bytes(archive.read_bytes() + b"\x00")
    with pytest.raises(DamagedArchive, match="after its end"):
        members(longer)


def test_an_archive_of_a_newer_format_is_refused_before_decrypting(tmp_path: Path) -> None:
    path = write(tmp_path / "future", [("manifest", b"{}")], format_version=2)
    with pytest.raises(NewerFormat, match="newer"):
        members(path)


def test_a_file_that_is_not_an_archive_is_named(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(DamagedArchive, match="not a WattLedger backup"):
        members(other)


def test_an_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="passphrase"):
        ArchiveWriter(tmp_path / "x", "")
