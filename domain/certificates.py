"""The HTTPS certificate and key as facts of the log: who generated a signing request, installed a
certificate or a key, or downloaded one of the files, and what it was.

The files themselves live in the data directory (`adapters.tls_files`); no event holds a key or
any part of one, only fingerprints (SHA-256 of the certificate, and of the public key, which
anyone the server talks to sees). One singleton aggregate, `SslFiles`, records every action.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidRequest, NotFound, Unprocessable
from domain.ports import EventStore
from domain.retry import retrying

SSL_FILES_ID: UUID = uuid5(NAMESPACE_URL, "https://wattledger.invalid/ssl-files")

SSL_FILE_NAMES = ("cert.pem", "key.pem", "csr.pem")
"""The only files `GET /api/ssl/download/{filename}` serves."""


class InvalidPem(InvalidRequest):
    """An upload that is not the PEM it should be (a certificate, or an unencrypted private key)."""

    code = "INVALID_PEM"


class CertificateKeyMismatch(Unprocessable):
    """The certificate and the private key do not belong together; nothing was installed."""

    code = "CERT_KEY_MISMATCH"


class SslFileNotFound(NotFound):
    """A file name outside `SSL_FILE_NAMES`, or one of them not there yet."""

    code = "SSL_FILE_NOT_FOUND"


class CertificateFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a certificate says about itself, and its SHA-256 fingerprint (hex)."""

    subject: str
    issuer: str
    valid_from: datetime
    valid_until: datetime
    fingerprint: str


class SslFiles(Aggregate):
    """Every recorded action on the HTTPS files of this installation."""

    class Opened(Aggregate.Created):
        actor: str

    class CsrGenerated(Aggregate.Event):
        subject: str
        key_fingerprint: str
        actor: str

    class CertificateInstalled(Aggregate.Event):
        subject: str
        issuer: str
        valid_from: datetime
        valid_until: datetime
        fingerprint: str
        key_fingerprint: str
        actor: str

    class KeyInstalled(Aggregate.Event):
        key_fingerprint: str
        actor: str

    class FileDownloaded(Aggregate.Event):
        filename: str
        actor: str

    @staticmethod
    def create_id(**_: object) -> UUID:
        return SSL_FILES_ID

    @event(Opened)
    def __init__(self, *, actor: str) -> None:
        self.certificate: str | None = None
        self.key: str | None = None

    def csr_generated(self, subject: str, key_fingerprint: str, *, actor: str) -> None:
        self._csr_generated(subject=subject, key_fingerprint=key_fingerprint, actor=actor)

    def certificate_installed(self, facts: CertificateFacts, key_fingerprint: str, *, actor: str) -> None:
        self._certificate_installed(
            subject=facts.subject, issuer=facts.issuer, valid_from=facts.valid_from, valid_until=facts.valid_until,
            fingerprint=facts.fingerprint, key_fingerprint=key_fingerprint, actor=actor,
        )  # fmt: skip

    def key_installed(self, key_fingerprint: str, *, actor: str) -> None:
        self._key_installed(key_fingerprint=key_fingerprint, actor=actor)

    def downloaded(self, filename: str, *, actor: str) -> None:
        """Raises SslFileNotFound for a name outside `SSL_FILE_NAMES`."""
        if filename not in SSL_FILE_NAMES:
            raise SslFileNotFound(f"no SSL file {filename!r}; one of {', '.join(SSL_FILE_NAMES)}")
        self._downloaded(filename=filename, actor=actor)

    @event(CsrGenerated)
    def _csr_generated(self, subject: str, key_fingerprint: str, actor: str) -> None:
        pass

    @event(CertificateInstalled)
    def _certificate_installed(
        self, subject: str, issuer: str, valid_from: datetime, valid_until: datetime, fingerprint: str,
        key_fingerprint: str, actor: str,
    ) -> None:  # fmt: skip
        self.certificate = fingerprint
        self.key = key_fingerprint

    @event(KeyInstalled)
    def _key_installed(self, key_fingerprint: str, actor: str) -> None:
        self.key = key_fingerprint

    @event(FileDownloaded)
    def _downloaded(self, filename: str, actor: str) -> None:
        pass


_Change = Callable[[SslFiles], None]


class CertificateHandlers:
    """Records each action on the HTTPS files, over the store port only; the files are the adapter's."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def csr_generated(self, subject: str, key_fingerprint: str, *, actor: str) -> int:
        return await self._record(lambda files: files.csr_generated(subject, key_fingerprint, actor=actor), actor)

    async def certificate_installed(self, facts: CertificateFacts, key_fingerprint: str, *, actor: str) -> int:
        """`key_fingerprint`: the public key the certificate certifies (the key installed with it, if one was)."""
        return await self._record(lambda files: files.certificate_installed(facts, key_fingerprint, actor=actor), actor)

    async def key_installed(self, key_fingerprint: str, *, actor: str) -> int:
        return await self._record(lambda files: files.key_installed(key_fingerprint, actor=actor), actor)

    async def downloaded(self, filename: str, *, actor: str) -> int:
        return await self._record(lambda files: files.downloaded(filename, actor=actor), actor)

    async def _record(self, change: _Change, actor: str) -> int:
        async def attempt() -> int:
            files = await self.store.aggregate(SSL_FILES_ID, SslFiles) or SslFiles(actor=actor)
            change(files)
            return await self.store.save(files)

        return await retrying(attempt)
