"""The HTTPS certificate and private key in the data directory: inspected, generated, uploaded, served.

Layout of `<data dir>/ssl/` (mode 0700; files 0600), outside anything the API serves:

- `cert.pem`: the certificate (its chain may follow it), `key.pem`: its private key. `serve`
  serves HTTPS with them when both are there and belong together (`server_pair`).
- `csr.pem`: the newest certificate signing request, `csr-key.pem`: the key made with it,
  waiting for its certificate. A certificate uploaded for that request installs the key with it,
  so a renewal never leaves a certificate beside a key it does not certify.
- `quarantine/`: uploads land here first, are checked (size, PEM, the pair), recorded in the log
  and only then moved into place (one `os.replace` each); a refused upload is deleted there.

A certificate upload may carry its key in the same request (`key`), which is how a new pair
replaces an installed one: each alone would not match the other half still installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import Final

import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from domain.certificates import (
    SSL_FILE_NAMES,
    CertificateFacts,
    CertificateHandlers,
    CertificateKeyMismatch,
    InvalidPem,
    SslFileNotFound,
)
from domain.text import check_text

__all__ = ["CertificateInfo", "CsrRequest", "CsrResult", "SslFilesView", "TlsFiles", "certificate_facts", "server_pair"]

CERT: Final = "cert.pem"
KEY: Final = "key.pem"
CSR: Final = "csr.pem"
CSR_KEY: Final = "csr-key.pem"
QUARANTINE: Final = "quarantine"
RSA_BITS: Final = 2048

ServerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CertificateInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The installed certificate: subject and issuer (RFC 4514), validity (UTC), SHA-256 fingerprint."""

    subject: str
    issuer: str
    valid_from: str
    valid_until: str
    fingerprint: str


class SslFilesView(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /api/ssl/files`: which files are there, the certificate's facts, whether the pair matches."""

    cert_exists: bool
    key_exists: bool
    csr_exists: bool
    cert_info: CertificateInfo | None
    pair_matches: bool | None
    """Whether the key belongs to the certificate; null unless both are there."""


class CsrRequest(msgspec.Struct, frozen=True, kw_only=True):
    common_name: str
    organization: str | None = None
    country: str | None = None
    state: str | None = None
    locality: str | None = None


class CsrResult(msgspec.Struct, frozen=True, kw_only=True):
    """The request (PEM) to send to a certificate authority; its key stays on the server."""

    message: str
    subject: str
    csr: str
    key_fingerprint: str


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _pem_text(data: bytes, what: str) -> None:
    if b"-----BEGIN " not in data:
        raise InvalidPem(f"the {what} is not PEM: no -----BEGIN line")
    try:
        data.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidPem(f"the {what} is not PEM: it holds bytes other than ASCII text") from None


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """The certificate and any chain after it. Raises InvalidPem."""
    _pem_text(data, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidPem("the certificate is not a PEM X.509 certificate") from None
    return chain


def load_key(data: bytes) -> ServerKey:
    """An unencrypted RSA or EC private key. Raises InvalidPem."""
    _pem_text(data, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidPem("the private key is encrypted: upload it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidPem("the private key is not a PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise InvalidPem("the private key must be an RSA or EC key")
    return key


def _public_der(key: object) -> bytes:
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_fingerprint(key: ServerKey) -> str:
    """SHA-256 (hex) of the key's public half, as a certificate for it carries it."""
    return hashlib.sha256(_public_der(key.public_key())).hexdigest()


def certifies(certificate: x509.Certificate, key: ServerKey) -> bool:
    return _public_der(certificate.public_key()) == _public_der(key.public_key())


def certificate_facts(certificate: x509.Certificate) -> CertificateFacts:
    return CertificateFacts(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        valid_from=certificate.not_valid_before_utc,
        valid_until=certificate.not_valid_after_utc,
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def _key_pem(key: ServerKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _subject(request: CsrRequest) -> x509.Name:
    fields = (
        (NameOID.COUNTRY_NAME, request.country), (NameOID.STATE_OR_PROVINCE_NAME, request.state),
        (NameOID.LOCALITY_NAME, request.locality), (NameOID.ORGANIZATION_NAME, request.organization),
        (NameOID.COMMON_NAME, request.common_name),
    )  # fmt: skip
    attributes = []
    for oid, value in fields:
        if value:
            check_text(value, field=oid._name)
            attributes.append(x509.NameAttribute(oid, value.upper() if oid == NameOID.COUNTRY_NAME else value))
    return x509.Name(attributes)


def make_csr(request: CsrRequest) -> tuple[ServerKey, x509.CertificateSigningRequest]:
    """A new RSA key and a SHA-256 signing request for it; the common name is also its DNS name."""
    name = _subject(request)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    with contextlib.suppress(ValueError):  # a common name that is no DNS name (e.g. an IP address) goes without
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(request.common_name)]),
                                        critical=False)  # fmt: skip
    return key, builder.sign(key, hashes.SHA256())


def server_pair(directory: Path) -> tuple[Path, Path] | None:
    """(certificate, key) to serve HTTPS with: both there, both readable, and belonging together."""
    cert, key = _read(directory / CERT), _read(directory / KEY)
    if cert is None or key is None:
        return None
    try:
        if certifies(load_certificates(cert)[0], load_key(key)):
            return directory / CERT, directory / KEY
    except InvalidPem:
        pass
    return None


class TlsFiles:
    """The HTTPS files of one data directory, each action recorded in the log with its actor."""

    def __init__(self, directory: Path, handlers: CertificateHandlers, *, max_bytes: int) -> None:
        self.directory = directory
        self.handlers = handlers
        self.max_bytes = max_bytes
        """The most an uploaded file may hold (the HTTP edge refuses more with 413)."""
        self._lock = asyncio.Lock()

    def status(self) -> SslFilesView:
        cert, key = _read(self.directory / CERT), _read(self.directory / KEY)
        info: CertificateInfo | None = None
        matches: bool | None = None
        chain: list[x509.Certificate] = []
        with contextlib.suppress(InvalidPem):
            chain = load_certificates(cert) if cert is not None else []
        if chain:
            facts = certificate_facts(chain[0])
            info = CertificateInfo(
                subject=facts.subject, issuer=facts.issuer, valid_from=facts.valid_from.isoformat(),
                valid_until=facts.valid_until.isoformat(), fingerprint=facts.fingerprint,
            )  # fmt: skip
            if key is not None:
                try:
                    matches = certifies(chain[0], load_key(key))
                except InvalidPem:
                    matches = False
        return SslFilesView(
            cert_exists=cert is not None, key_exists=key is not None, csr_exists=(self.directory / CSR).exists(),
            cert_info=info, pair_matches=matches,
        )  # fmt: skip

    async def generate_csr(self, request: CsrRequest, *, actor: str) -> CsrResult:
        """A new key and signing request; the key waits in `csr-key.pem` for its certificate.

        Raises InvalidText for a name field that breaks the rule for free text."""
        _subject(request)
        key, csr = await asyncio.to_thread(make_csr, request)
        fingerprint = key_fingerprint(key)
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        subject = csr.subject.rfc4514_string()
        async with self._lock:
            staged = [self._quarantined(_key_pem(key)), self._quarantined(csr_pem)]
            try:
                await self.handlers.csr_generated(subject, fingerprint, actor=actor)
                self._install(staged[0], CSR_KEY)
                self._install(staged[1], CSR)
            finally:
                self._discard(*staged)
        return CsrResult(
            message="Signing request created; its key stays on the server until its certificate is uploaded",
            subject=subject, csr=csr_pem.decode("ascii"), key_fingerprint=fingerprint,
        )  # fmt: skip

    async def upload_certificate(self, data: bytes, key_data: bytes | None, *, actor: str) -> SslFilesView:
        """Install a certificate: with the key given beside it, with the installed key, or with the key
        of the pending signing request, whichever it certifies; alone when no key is there at all.

        Raises InvalidPem, CertificateKeyMismatch; nothing changes then."""
        async with self._lock:
            staged = [self._quarantined(data)]
            if key_data is not None:
                staged.append(self._quarantined(key_data))
            try:
                chain = load_certificates(staged[0].read_bytes())
                leaf = chain[0]
                key_source, key = self._key_for(leaf, staged[1] if key_data is not None else None)
                fingerprint = key_fingerprint(key) if key is not None else hashlib.sha256(
                    _public_der(leaf.public_key())).hexdigest()  # fmt: skip
                await self.handlers.certificate_installed(certificate_facts(leaf), fingerprint, actor=actor)
                if key_source is not None and key_source != self.directory / KEY:
                    self._install(key_source, KEY)
                self._install(staged[0], CERT)
            finally:
                self._discard(*staged)
        return self.status()

    async def upload_key(self, data: bytes, *, actor: str) -> SslFilesView:
        """Install a private key; one that the installed certificate does not certify is refused (upload
        a new pair through `upload_certificate` with its key). Raises InvalidPem, CertificateKeyMismatch."""
        async with self._lock:
            staged = self._quarantined(data)
            try:
                key = load_key(staged.read_bytes())
                cert = _read(self.directory / CERT)
                chain: list[x509.Certificate] = []
                with contextlib.suppress(InvalidPem):
                    chain = load_certificates(cert) if cert is not None else []
                if chain and not certifies(chain[0], key):
                    raise CertificateKeyMismatch(
                        "the installed certificate does not certify this key; upload the certificate with its key "
                        "(POST /api/system/ssl/upload-cert with both files) to replace the pair"
                    )
                await self.handlers.key_installed(key_fingerprint(key), actor=actor)
                self._install(staged, KEY)
            finally:
                self._discard(staged)
        return self.status()

    async def download(self, filename: str, *, actor: str) -> bytes:
        """One of `SSL_FILE_NAMES`, read and recorded as downloaded. Raises SslFileNotFound."""
        if filename not in SSL_FILE_NAMES:
            raise SslFileNotFound(f"no SSL file {filename!r}; one of {', '.join(SSL_FILE_NAMES)}")
        data = _read(self.directory / filename)
        if data is None:
            raise SslFileNotFound(f"{filename} is not there yet")
        await self.handlers.downloaded(filename, actor=actor)
        return data

    def _key_for(self, leaf: x509.Certificate, given: Path | None) -> tuple[Path | None, ServerKey | None]:
        """Where the certificate's key is (`given`, installed or pending) and the key, or (None, None)
        when no key is there at all. Raises CertificateKeyMismatch, InvalidPem."""
        if given is not None:
            key = load_key(given.read_bytes())
            if not certifies(leaf, key):
                raise CertificateKeyMismatch("the certificate does not certify the key uploaded with it")
            return given, key
        installed = _read(self.directory / KEY)
        for path in (self.directory / KEY, self.directory / CSR_KEY):
            data = _read(path)
            if data is None:
                continue
            with contextlib.suppress(InvalidPem):
                key = load_key(data)
                if certifies(leaf, key):
                    return path, key
        if installed is not None:
            raise CertificateKeyMismatch(
                "the certificate does not certify the installed key nor the key of the pending signing request; "
                "upload it together with its key"
            )
        return None, None

    def _quarantined(self, data: bytes) -> Path:
        """`data` written to a new file under quarantine/ (0600)."""
        quarantine = self.directory / QUARANTINE
        quarantine.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        path = quarantine / f"{uuid.uuid4().hex}.upload"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return path

    def _install(self, source: Path, name: str) -> None:
        os.replace(source, self.directory / name)

    @staticmethod
    def _discard(*paths: Path) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

