"""The HTTPS certificate and key (administrators only): inspect, generate a signing request, download,
upload. Each action is recorded in the log with its actor (`adapters.tls_files`, `domain.certificates`).

The routes come as one router (`ssl_router`) that carries its own dependency (`tls`) and a request
body limit fitted to the upload limit, so the body is refused before it is read whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar import Controller, Response, Router, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody, MultipartBody

from adapters.tls_files import CsrRequest, CsrResult, SslFilesView, TlsFiles
from domain.access import Permission, Principal

MULTIPART_OVERHEAD = 64 * 1024
"""Bytes a multipart body may hold beyond its files (boundaries, part headers)."""

ADMIN = {"permission": Permission.SYSTEM_CONFIG}
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
LongName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class CsrBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The subject of the signing request; `common_name` is the server's name (also its DNS name)."""

    common_name: Name
    organization: Name | None = None
    country: Annotated[str, msgspec.Meta(pattern="^[A-Za-z]{2}$")] | None = None
    state: LongName | None = None
    locality: LongName | None = None


@dataclass
class CertificateUpload:
    """`file`: the certificate (PEM, its chain may follow); `key`: its private key, to replace a pair at once."""

    file: UploadFile
    key: UploadFile | None = None


@dataclass
class KeyUpload:
    """`file`: the private key (PEM, unencrypted RSA or EC)."""

    file: UploadFile


async def _contents(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(status_code=413, detail=f"{upload.filename or 'the file'} is larger than {limit} bytes")
    return data


class SslController(Controller):
    path = "/api"
    tags = ["system"]

    @get("/ssl/files", operation_id="getSslFiles", opt=ADMIN)
    async def files(self, tls: NamedDependency[TlsFiles]) -> SslFilesView:
        """Whether the certificate, its key and a signing request are there; the certificate's subject, issuer
        and validity (`cert_info`), and whether the key belongs to it (`pair_matches`)."""
        return tls.status()

    @post("/ssl/generate-csr", operation_id="generateCsr", status_code=200, opt=ADMIN)
    async def generate_csr(
        self, data: JSONBody[CsrBody], principal: NamedDependency[Principal], tls: NamedDependency[TlsFiles]
    ) -> CsrResult:
        """A new 2048-bit RSA key and a signing request for it (`csr`, also `GET /api/ssl/download/csr.pem`). The
        key stays on the server; the certificate the authority issues for it, uploaded with
        `POST /api/system/ssl/upload-cert`, installs the two together. 422 for a field out of its
        schema, 400 `INVALID_TEXT`."""
        request = CsrRequest(common_name=data.common_name, organization=data.organization, country=data.country,
                             state=data.state, locality=data.locality)  # fmt: skip
        return await tls.generate_csr(request, actor=principal.actor)

    @get("/ssl/download/{filename:str}", operation_id="downloadSslFile", opt=ADMIN)
    async def download(
        self, filename: FromPath[str], principal: NamedDependency[Principal], tls: NamedDependency[TlsFiles]
    ) -> Response[bytes]:
        """`cert.pem`, `key.pem` or `csr.pem`, and no other name. 404 `SSL_FILE_NOT_FOUND` for any other name
        or a file not there yet."""
        content = await tls.download(filename, actor=principal.actor)
        return Response(
            content, media_type="application/x-pem-file",
            headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
        )  # fmt: skip

    @post("/system/ssl/upload-cert", operation_id="uploadSslCertificate", status_code=200, opt=ADMIN)
    async def upload_certificate(
        self, data: MultipartBody[CertificateUpload], principal: NamedDependency[Principal],
        tls: NamedDependency[TlsFiles],
    ) -> SslFilesView:
        """Installs a certificate (`file`) for the installed key, for the key of the pending signing request,
        or for the key sent beside it (`key`). Checked in quarantine first: 413 over the upload limit,
        400 `INVALID_PEM`, 422 `CERT_KEY_MISMATCH`; nothing changes then."""
        certificate = await _contents(data.file, tls.max_bytes)
        key = await _contents(data.key, tls.max_bytes) if data.key is not None else None
        return await tls.upload_certificate(certificate, key, actor=principal.actor)

    @post("/system/ssl/upload-key", operation_id="uploadSslKey", status_code=200, opt=ADMIN)
    async def upload_key(
        self, data: MultipartBody[KeyUpload], principal: NamedDependency[Principal], tls: NamedDependency[TlsFiles]
    ) -> SslFilesView:
        """Installs a private key (`file`) that the installed certificate certifies (or with none installed).
        413 over the upload limit, 400 `INVALID_PEM`, 422 `CERT_KEY_MISMATCH`; nothing changes then."""
        return await tls.upload_key(await _contents(data.file, tls.max_bytes), actor=principal.actor)


def ssl_router(tls: TlsFiles) -> Router:
    """The SSL routes over `tls`, with a body limit of two files and the multipart overhead."""
    return Router(
        path="/", route_handlers=[SslController],
        dependencies={"tls": Provide(lambda: tls, sync_to_thread=False)},
        request_max_body_size=2 * tls.max_bytes + MULTIPART_OVERHEAD,
    )  # fmt: skip
