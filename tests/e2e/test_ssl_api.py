"""The SSL routes through the app: uploads are limited, checked and recorded with their actor; only three
names download; and `serve` answers over HTTPS with an uploaded pair."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import msgspec
import pytest
from cryptography import x509

from domain.certificates import SslFiles
from infra.bootstrap import Runtime
from infra.serving import serve_api
from infra.settings import Settings
from tests.harness import SignedIn, error_of, free_port
from tests.kit import eventually, self_signed

LIMIT_MB = 0.004
"""About 4 KB: a certificate and a key fit, a padded file does not."""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, max_upload_size_mb=LIMIT_MB)


def events_of(runtime: Runtime, kind: type) -> list[object]:
    events = [runtime.app.mapper.to_domain_event(n) for n in runtime.app.recorder.select_notifications(1, 1000)]
    return [e for e in events if isinstance(e, kind)]


async def test_uploads_are_limited_checked_and_recorded_and_only_three_names_download(
    admin: tuple[SignedIn, httpx.AsyncClient], viewer: httpx.AsyncClient, runtime: Runtime
) -> None:
    signed_in, client = admin
    cert, key = self_signed("plugs.home")
    assert (await viewer.get("/api/ssl/files")).status_code == 403
    empty = (await client.get("/api/ssl/files")).json()
    assert (empty["cert_exists"], empty["key_exists"], empty["cert_info"]) == (False, False, None)

    padded = cert + b"#" * 5000
    assert error_of(await client.post("/api/system/ssl/upload-cert", files={"file": ("cert.pem", padded)}),
                    413) == "PAYLOAD_TOO_LARGE"  # fmt: skip
    assert error_of(await client.post("/api/system/ssl/upload-key", files={"file": ("key.pem", b"MZ\x90\x00")}),
                    400) == "INVALID_PEM"  # fmt: skip
    assert (await client.post("/api/system/ssl/upload-cert", files={"other": ("c.pem", cert)})).status_code in (400, 422)
    assert (await client.post("/api/system/ssl/upload-cert", content=b"x" * 100_000,
                              headers={"Content-Type": "multipart/form-data; boundary=b"})).status_code == 413
    assert events_of(runtime, SslFiles.Event) == [] and not (runtime.settings.ssl_dir / "cert.pem").exists()

    installed = await client.post("/api/system/ssl/upload-cert", files={"file": ("c.pem", cert), "key": ("k.pem", key)})
    assert installed.status_code == 200, installed.text
    shown = (await client.get("/api/ssl/files")).json()
    assert shown["cert_exists"] and shown["key_exists"] and shown["pair_matches"] is True
    assert (shown["cert_info"]["subject"], shown["cert_info"]["issuer"]) == ("CN=plugs.home", "CN=plugs.home")
    assert shown["cert_info"]["valid_from"].startswith("2026-01-01")
    _, other_key = self_signed("other")
    assert error_of(await client.post("/api/system/ssl/upload-key", files={"file": ("k.pem", other_key)}),
                    422) == "CERT_KEY_MISMATCH"  # fmt: skip
    assert (runtime.settings.ssl_dir / "key.pem").read_bytes() == key

    csr = await client.post("/api/ssl/generate-csr", json={"common_name": "plugs.home", "country": "NL"})
    assert csr.status_code == 200, csr.text
    assert x509.load_pem_x509_csr(csr.json()["csr"].encode()).is_signature_valid
    assert "PRIVATE KEY" not in csr.text
    assert (await client.post("/api/ssl/generate-csr", json={"common_name": "x", "country": "Netherlands"})
            ).status_code == 422  # fmt: skip
    download = await client.get("/api/ssl/download/csr.pem")
    assert download.status_code == 200 and download.content == csr.json()["csr"].encode()
    assert download.headers["content-disposition"] == 'attachment; filename="csr.pem"'
    assert (await client.get("/api/ssl/download/cert.pem")).content == cert
    for attempt in ("..%2Fkey.pem", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "csr-key.pem", "..%5ckey.pem",
                    "quarantine", "cert.pem%00", "../../etc/passwd"):
        response = await client.get(f"/api/ssl/download/{attempt}")
        assert response.status_code in (400, 404), (attempt, response.status_code)
        assert b"PRIVATE KEY" not in response.content, attempt
    actors = {(type(e).__name__, getattr(e, "actor")) for e in events_of(runtime, SslFiles.Event)}
    me = f"user:{signed_in.user_id}"
    assert actors == {("Opened", me), ("CertificateInstalled", me), ("CsrGenerated", me), ("FileDownloaded", me)}


async def test_serve_answers_over_https_with_an_uploaded_pair(client: httpx.AsyncClient, runtime: Runtime) -> None:
    cert, key = self_signed("127.0.0.1")
    uploaded = await client.post("/api/system/ssl/upload-cert", files={"file": ("c.pem", cert), "key": ("k.pem", key)})
    assert uploaded.status_code == 200, uploaded.text
    port = free_port()
    runtime.settings = msgspec.structs.replace(runtime.settings, host="127.0.0.1", port=port)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_api(runtime, stop))
    trusted = ssl.create_default_context(cadata=cert.decode())
    try:
        async with httpx.AsyncClient(verify=trusted, timeout=5) as https:

            async def health() -> httpx.Response | None:
                try:
                    return await https.get(f"https://127.0.0.1:{port}/api/health")
                except httpx.ConnectError:
                    return None

            answer = await eventually(health, what="the API answering over HTTPS")
            assert answer.status_code == 200 and answer.json()["status"] in ("healthy", "degraded")
            assert answer.headers["strict-transport-security"].startswith("max-age=")
        async with httpx.AsyncClient(timeout=5) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/api/health")
        async with httpx.AsyncClient(verify=True, timeout=5) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"https://127.0.0.1:{port}/api/health")
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=15)
