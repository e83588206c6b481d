"""The dashboard's session: the refresh token in an HttpOnly cookie scoped to its route, CSRF
double submit, rotation and reuse detection as for the JSON refresh, and the page's headers."""

from __future__ import annotations

import httpx
from litestar import Litestar

from api.headers import API_CSP, PAGE_CSP
from tests.harness import ADMIN, ADMIN_PASSWORD, error_of

COOKIE_LOGIN = {"X-Refresh-Delivery": "cookie"}


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


async def test_a_cookie_sign_in_keeps_the_refresh_token_from_script_and_refreshes_only_with_the_csrf_value(
    anonymous: httpx.AsyncClient,
) -> None:
    assert (await anonymous.post("/api/auth/setup", json={"username": ADMIN, "password": ADMIN_PASSWORD})).status_code == 201
    login = await anonymous.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD},
                                 headers=COOKIE_LOGIN)  # fmt: skip
    assert login.status_code == 200, login.text
    assert login.json()["refresh_token"] == "" and login.json()["access_token"]
    cookies = set_cookies(login)
    refresh_cookie = cookies["wl_refresh"].lower()
    assert "httponly" in refresh_cookie and "samesite=strict" in refresh_cookie
    assert "path=/api/auth/web/refresh" in refresh_cookie and "secure" not in refresh_cookie
    assert "httponly" not in cookies["wl_csrf"].lower() and "path=/" in cookies["wl_csrf"].lower()
    spent = anonymous.cookies.get("wl_refresh")
    csrf = anonymous.cookies.get("wl_csrf")
    assert spent and csrf

    assert error_of(await anonymous.post("/api/auth/web/refresh"), 403) == "CSRF_TOKEN_INVALID"
    wrong = await anonymous.post("/api/auth/web/refresh", headers={"X-CSRF-Token": csrf + "x"})
    assert error_of(wrong, 403) == "CSRF_TOKEN_INVALID"
    assert anonymous.cookies.get("wl_refresh") == spent  # a refused refresh spends nothing

    renewed = await anonymous.post("/api/auth/web/refresh", headers={"X-CSRF-Token": csrf})
    assert renewed.status_code == 200, renewed.text
    assert renewed.headers["cache-control"] == "no-store" and "refresh_token" not in renewed.json()
    token = renewed.json()["access_token"]
    me = await anonymous.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["username"] == ADMIN
    assert anonymous.cookies.get("wl_refresh") != spent

    # The spent token presented again ends the session, as the JSON refresh does.
    anonymous.cookies.set("wl_refresh", spent, path="/api/auth/web/refresh")
    reused = await anonymous.post("/api/auth/web/refresh", headers={"X-CSRF-Token": anonymous.cookies.get("wl_csrf") or ""})
    assert error_of(reused, 401) == "TOKEN_REUSED"
    assert (await anonymous.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401

    assert error_of(await anonymous.post("/api/auth/web/signout"), 403) == "CSRF_TOKEN_INVALID"
    cleared = await anonymous.post("/api/auth/web/signout", headers={"X-CSRF-Token": anonymous.cookies.get("wl_csrf") or ""})
    assert cleared.status_code == 200 and all("max-age=0" in c.lower() for c in set_cookies(cleared).values())
    no_cookie = await anonymous.post("/api/auth/web/refresh", headers={"X-CSRF-Token": "anything"})
    assert error_of(no_cookie, 403) == "CSRF_TOKEN_INVALID"


async def test_the_page_and_its_files_get_the_page_policy_and_the_api_keeps_its_own(
    api: Litestar, anonymous: httpx.AsyncClient,
) -> None:
    page = await anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert "script-src 'self';" in PAGE_CSP and "unsafe-inline" not in PAGE_CSP and "unsafe-eval" not in PAGE_CSP
    assert "<script>" not in page.text and " style=" not in page.text
    script = await anonymous.get("/static/js/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"] == PAGE_CSP
    assert (await anonymous.get("/static/../api/app.py")).status_code == 404
    assert (await anonymous.get("/api/health")).headers["content-security-policy"] == API_CSP
    # The JSON sign-in is unchanged without the header.
    assert (await anonymous.post("/api/auth/setup", json={"username": ADMIN, "password": ADMIN_PASSWORD})).status_code == 201
    login = await anonymous.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert login.json()["refresh_token"] and "set-cookie" not in login.headers
    # Over HTTPS both cookies are Secure.
    transport = httpx.ASGITransport(app=api, client=("127.0.0.1", 50000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://wattledger.test") as https:
        secured = await https.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD},
                                   headers=COOKIE_LOGIN)  # fmt: skip
    assert secured.status_code == 200, secured.text
    assert all("; secure" in c.lower() for c in set_cookies(secured).values()) and len(set_cookies(secured)) == 2
