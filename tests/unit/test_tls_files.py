"""The HTTPS files: a signing request matches its key, only a matching pair is installed, only PEM is
accepted, only three names are served, and each action is an event with its actor and no secret."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.contract import event_data
from adapters.tls_files import CsrRequest, TlsFiles, certifies, load_key, server_pair
from domain.certificates import CertificateKeyMismatch, InvalidPem, SslFileNotFound, SslFiles
from domain.errors import InvalidText
from tests.kit import MemoryStore, self_signed
from domain.certificates import CertificateHandlers
from projections.audit_words import Names, describe

ACTOR = "user:4f0c"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def tls(tmp_path: Path, store: MemoryStore) -> TlsFiles:
    return TlsFiles(tmp_path / "ssl", CertificateHandlers(store), max_bytes=64 * 1024)


def files_of(tls: TlsFiles) -> dict[str, bytes]:
    """Every file under the directory, quarantine included, by relative path."""
    if not tls.directory.exists():
        return {}
    return {str(p.relative_to(tls.directory)): p.read_bytes() for p in tls.directory.rglob("*") if p.is_file()}


async def test_a_signing_request_parses_matches_its_key_and_is_recorded_without_the_key(
    tls: TlsFiles, store: MemoryStore
) -> None:
    result = await tls.generate_csr(
        CsrRequest(common_name="wattledger.local", organization="Home", country="de", locality="Berlin"), actor=ACTOR
    )
    csr = x509.load_pem_x509_csr(result.csr.encode())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == result.subject == "CN=wattledger.local,O=Home,L=Berlin,C=DE"
    stored = files_of(tls)
    assert stored["csr.pem"] == result.csr.encode() and "key.pem" not in stored
    pending_key = load_key(stored["csr-key.pem"])
    assert csr.public_key().public_numbers() == pending_key.public_key().public_numbers()  # type: ignore[union-attr]
    assert (tls.directory / "csr-key.pem").stat().st_mode & 0o777 == 0o600
    assert tls.directory.stat().st_mode & 0o777 == 0o700
    [event] = store.of_type(SslFiles.CsrGenerated)
    assert (event.actor, event.subject, event.key_fingerprint) == (ACTOR, result.subject, result.key_fingerprint)
    published = msgspec.json.encode(event_data(event))
    assert b"PRIVATE" not in published and stored["csr-key.pem"] not in published
    assert not (tls.directory / "quarantine").exists() or not any((tls.directory / "quarantine").iterdir())


async def test_the_certificate_for_a_signing_request_installs_its_key_with_it(tls: TlsFiles, store: MemoryStore) -> None:
    await tls.generate_csr(CsrRequest(common_name="plugs.example"), actor=ACTOR)
    pending = (tls.directory / "csr-key.pem").read_bytes()
    certificate, _ = self_signed("plugs.example", key_pem=pending)
    view = await tls.upload_certificate(certificate, None, actor=ACTOR)
    assert view.cert_exists and view.key_exists and view.pair_matches is True
    assert view.cert_info is not None and view.cert_info.subject == "CN=plugs.example"
    assert view.cert_info.valid_from.startswith("2026-01-01")
    assert (tls.directory / "key.pem").read_bytes() == pending and not (tls.directory / "csr-key.pem").exists()
    assert server_pair(tls.directory) == (tls.directory / "cert.pem", tls.directory / "key.pem")
    [installed] = store.of_type(SslFiles.CertificateInstalled)
    assert installed.actor == ACTOR and installed.subject == "CN=plugs.example"


async def test_a_mismatched_pair_is_refused_and_changes_nothing(tls: TlsFiles, store: MemoryStore) -> None:
    first_cert, first_key = self_signed("first")
    await tls.upload_certificate(first_cert, first_key, actor=ACTOR)
    before, events = files_of(tls), len(store.all_events())
    other_cert, other_key = self_signed("other")
    with pytest.raises(CertificateKeyMismatch):
        await tls.upload_certificate(first_cert, other_key, actor=ACTOR)
    with pytest.raises(CertificateKeyMismatch):
        await tls.upload_key(other_key, actor=ACTOR)
    with pytest.raises(CertificateKeyMismatch):
        await tls.upload_certificate(other_cert, None, actor=ACTOR)
    assert files_of(tls) == before and len(store.all_events()) == events
    replaced = await tls.upload_certificate(other_cert, other_key, actor=ACTOR)
    assert replaced.pair_matches is True and replaced.cert_info is not None and replaced.cert_info.subject == "CN=other"
    assert [e.key_fingerprint for e in store.of_type(SslFiles.CertificateInstalled)][-1] != ""


@pytest.mark.parametrize(
    "upload",
    [
        b"not a certificate at all",
        b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n\u00e9\n-----END CERTIFICATE-----\n".encode(),
    ],
)
async def test_anything_but_a_pem_certificate_is_refused(tls: TlsFiles, store: MemoryStore, upload: bytes) -> None:
    with pytest.raises(InvalidPem):
        await tls.upload_certificate(upload, None, actor=ACTOR)
    with pytest.raises(InvalidPem):
        await tls.upload_key(upload, actor=ACTOR)
    assert {k for k in files_of(tls) if not k.startswith("quarantine")} == set() and store.all_events() == []
    assert files_of(tls) == {}


async def test_an_encrypted_or_unsupported_key_is_refused(tls: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))  # fmt: skip
    with pytest.raises(InvalidPem, match="encrypted"):
        await tls.upload_key(encrypted, actor=ACTOR)
    certificate, _ = self_signed("x")
    with pytest.raises(InvalidPem):
        await tls.upload_key(certificate, actor=ACTOR)
    assert files_of(tls) == {}


@pytest.mark.parametrize(
    "name", ["../key.pem", "csr-key.pem", "quarantine", "./cert.pem", "cert.pem/../key.pem", "", "KEY.PEM", "key.pem\x00"]
)
async def test_only_the_three_names_are_served(tls: TlsFiles, store: MemoryStore, name: str) -> None:
    cert, key = self_signed("served")
    await tls.upload_certificate(cert, key, actor=ACTOR)
    await tls.generate_csr(CsrRequest(common_name="next"), actor=ACTOR)
    events = len(store.all_events())
    with pytest.raises(SslFileNotFound):
        await tls.download(name, actor=ACTOR)
    assert len(store.all_events()) == events
    assert await tls.download("key.pem", actor=ACTOR) == key
    [downloaded] = store.of_type(SslFiles.FileDownloaded)
    assert (downloaded.filename, downloaded.actor) == ("key.pem", ACTOR)


async def test_a_file_not_there_yet_is_not_found_and_a_name_breaking_the_text_rule_is_refused(tls: TlsFiles) -> None:
    with pytest.raises(SslFileNotFound):
        await tls.download("cert.pem", actor=ACTOR)
    with pytest.raises(InvalidText):
        await tls.generate_csr(CsrRequest(common_name="evil\u202ename"), actor=ACTOR)
    assert files_of(tls) == {} and tls.status().cert_exists is False


def test_a_pair_that_does_not_match_is_not_served(tmp_path: Path) -> None:
    cert, _ = self_signed("a")
    _, key = self_signed("b")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    assert server_pair(tmp_path) is None
    assert not certifies(x509.load_pem_x509_certificate(cert), load_key(key))


async def test_the_audit_log_tells_each_action_in_words(tls: TlsFiles, store: MemoryStore) -> None:
    cert, key = self_signed("plugs.home")
    await tls.upload_certificate(cert, key, actor=ACTOR)
    await tls.download("cert.pem", actor=ACTOR)
    names = Names(rows={}, changed=set())
    words = [describe(event, names)[0] for event in store.all_events()[1:]]
    assert words == [
        "installed the HTTPS certificate CN=plugs.home (issued by CN=plugs.home, valid until 2035-12-30)",
        "downloaded cert.pem",
    ]
