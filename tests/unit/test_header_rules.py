"""Which security headers an answer carries, by path and scheme."""

from __future__ import annotations

import pytest

from api.headers import API_CSP, HSTS, PAGE_CSP, SCHEMA_CSP, security_headers


@pytest.mark.parametrize("path", ["/api/devices", "/api/health", "/no/such/path", "/schemas", "/staticx", "/api/static/x"])
def test_api_answers_may_be_neither_sniffed_framed_nor_loaded(path: str) -> None:
    assert security_headers(path, "http") == {
        "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Content-Security-Policy": API_CSP,
    }  # fmt: skip


@pytest.mark.parametrize("path", ["/", "/static/app.css", "/static/js/main.js"])
def test_the_dashboard_runs_only_its_own_files(path: str) -> None:
    policy = security_headers(path, "http")["Content-Security-Policy"]
    assert policy == PAGE_CSP
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("path", ["/schema", "/schema/", "/schema/swagger", "/schema/openapi.json"])
def test_the_schema_pages_get_their_own_policy(path: str) -> None:
    assert security_headers(path, "http")["Content-Security-Policy"] == SCHEMA_CSP
    assert "frame-ancestors 'none'" in SCHEMA_CSP


def test_hsts_only_over_https() -> None:
    assert security_headers("/api/devices", "https")["Strict-Transport-Security"] == HSTS
    assert "Strict-Transport-Security" not in security_headers("/api/devices", "http")


@pytest.mark.parametrize(("path", "stored"), [
    ("/api/auth/login", False), ("/api/auth/sessions", False), ("/api/auth/me", False), ("/api/users", False),
    ("/api/users/1", False), ("/api/keys", False), ("/api/keys/1", False), ("/api/devices", True),
    ("/api/authors", True),
])  # fmt: skip
def test_account_answers_are_never_stored(path: str, stored: bool) -> None:
    assert ("Cache-Control" not in security_headers(path, "http")) is stored
