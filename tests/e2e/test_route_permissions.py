"""Every route of the app declares who may call it, and the one guard holds each request to that.

The routes come from the app's own route table, so a route added later is walked as soon as
it exists: one that declares nothing fails here, and is refused at run time.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import uuid4

import httpx
import msgspec
from litestar import Litestar, get
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from domain.access import ROLE_PERMISSIONS, SAFE_METHODS, Permission, Role, Scope, permissions_for

UNAUTHENTICATED_FIELDS = {"error", "message", "error_code", "timestamp", "redirect_to", "detail", "status_code"}
FORBIDDEN_FIELDS = {"error", "message", "error_code", "required_permission", "detail", "status_code"}
PUBLIC_ROUTES = {
    ("GET", "/api/health"),
    ("GET", "/api/auth/setup-required"),
    ("POST", "/api/auth/setup"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("GET", "/api/badge/{device:str}/status"),
    ("GET", "/api/badge/{device:str}/uptime/{duration:str}"),
    ("GET", "/api/badge/{device:str}/power"),
    ("GET", "/api/badge/{device:str}/cost/{period:str}"),
    ("GET", "/api/push/{token:str}"),
    ("POST", "/api/push/{token:str}"),
    ("POST", "/api/auth/web/refresh"),
    ("POST", "/api/auth/web/signout"),
    # The dashboard's page and files (outside the schema).
    ("GET", "/"),
    ("GET", "/static/{file_path:path}"),
    ("HEAD", "/static/{file_path:path}"),
    ("OPTIONS", "/static/{file_path:path}"),
}


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One method of one route, with its handler's declared access."""

    method: str
    path: str
    handler: HTTPRouteHandler

    @property
    def opt(self) -> dict[str, Any]:
        return self.handler.opt or {}

    @property
    def public(self) -> bool:
        return self.opt.get("public") is True

    @property
    def permission(self) -> Permission | None:
        permission = self.opt.get("permission")
        return permission if isinstance(permission, Permission) else None

    @property
    def generated(self) -> bool:
        """Litestar's own OPTIONS answer, added to every path."""
        return self.method == "OPTIONS" and not self.handler.include_in_schema

    @property
    def declares(self) -> bool:
        kinds = [self.public, self.permission is not None, self.opt.get("authenticated") is True]
        return kinds.count(True) == 1

    def url(self) -> str:
        """The path with each parameter filled in with a value of its type."""
        return re.sub(r"\{\w+:(\w+)\}", lambda m: str(uuid4()) if m[1] == "uuid" else "127.0.0.1:9", self.path)


def route_table(app: Litestar) -> list[Row]:
    rows = [
        Row(method=method, path=route.path, handler=handler)
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        for method in sorted(handler.http_methods)
    ]
    assert len(rows) > 40, rows
    return rows


def undeclared(app: Litestar) -> list[str]:
    return [f"{r.method} {r.path}" for r in route_table(app) if not r.generated and not r.declares]


async def call(http: httpx.AsyncClient, row: Row, **options: Any) -> httpx.Response:
    body = {"json": {}} if row.method in {"POST", "PATCH", "PUT"} else {}
    return await http.request(row.method, row.url(), **body, **options)


def assert_unauthenticated(response: httpx.Response, what: str, code: str = "AUTHENTICATION_REQUIRED") -> None:
    assert response.status_code == 401, (what, response.status_code, response.text)
    body = response.json()
    assert set(body) >= UNAUTHENTICATED_FIELDS, (what, body)
    assert (body["error_code"], body["status_code"], body["redirect_to"]) == (code, 401, "/login"), (what, body)
    assert body["error"].startswith("authentication_") and body["message"] and body["detail"], (what, body)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"]), body
    assert response.headers["www-authenticate"].startswith("Bearer"), what


def assert_forbidden(response: httpx.Response, what: str, required: Permission | None) -> None:
    assert response.status_code == 403, (what, response.status_code, response.text)
    body = response.json()
    assert set(body) >= FORBIDDEN_FIELDS, (what, body)
    assert (body["error"], body["error_code"], body["status_code"]) == (
        "authorization_failed", "INSUFFICIENT_PERMISSIONS", 403
    ), (what, body)  # fmt: skip
    assert body["required_permission"] == (required.value if required else None), (what, body)
    assert body["message"] and body["detail"], (what, body)


def test_every_route_declares_public_or_a_permission(api: Litestar) -> None:
    rows = route_table(api)
    assert undeclared(api) == []
    declared_public = {(r.method, r.path) for r in rows if r.public and not r.path.startswith("/schema")}
    assert declared_public == PUBLIC_ROUTES
    assert all(r.public for r in rows if r.path.startswith("/schema") and not r.generated)
    declared = {(r.method, r.path): r.permission for r in rows if r.permission}
    assert declared.items() >= {
        ("GET", "/api/devices"): Permission.DEVICES_VIEW,
        ("GET", "/api/device/{device:str}"): Permission.DEVICES_VIEW,
        ("GET", "/api/system/status"): Permission.DEVICES_VIEW,
        ("POST", "/api/devices/manual"): Permission.DEVICES_MANAGE,
        ("DELETE", "/api/devices/{device:str}"): Permission.DEVICES_MANAGE,
        ("POST", "/api/discover"): Permission.DEVICES_MANAGE,
        ("GET", "/api/users"): Permission.USERS_MANAGE,
        ("POST", "/api/users"): Permission.USERS_MANAGE,
        ("PATCH", "/api/users/{user_id:uuid}"): Permission.USERS_MANAGE,
        ("DELETE", "/api/users/{user_id:uuid}"): Permission.USERS_MANAGE,
        ("GET", "/api/auth/security-status"): Permission.SYSTEM_CONFIG,
    }.items()


async def test_a_route_that_declares_nothing_is_refused_even_to_an_administrator(
    api: Litestar, client: httpx.AsyncClient
) -> None:
    @get("/api/forgotten", sync_to_thread=False)
    def forgotten() -> dict[str, str]:
        return {"secret": "should never be served"}

    api.register(forgotten)
    assert undeclared(api) == ["GET /api/forgotten"]
    response = await client.get("/api/forgotten")
    assert response.status_code == 403, response.text
    assert response.json()["error_code"] == "ACCESS_NOT_DECLARED" and "secret" not in response.text
    assert (await client.get("/api/devices")).status_code == 200


async def test_every_route_but_the_public_ones_refuses_a_request_without_credentials(
    api: Litestar, anonymous: httpx.AsyncClient
) -> None:
    for row in route_table(api):
        what = f"{row.method} {row.path}"
        response = await call(anonymous, row)
        if row.public:
            assert response.status_code != 401, (what, response.text)
        else:
            assert_unauthenticated(response, what)
    assert (await anonymous.get("/schema")).status_code == 200
    assert (await anonymous.get("/schema/openapi.json")).status_code == 200


async def test_broken_credentials_are_refused_with_their_own_code(anonymous: httpx.AsyncClient) -> None:
    cases = {
        "TOKEN_INVALID": [{"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic cm9vdDpyb290"},
                          {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."}],
        "INVALID_API_KEY": [{"X-API-Key": "guessed"}, {"X-API-Key": f"wl_{uuid4().hex}_guessed"}],
    }  # fmt: skip
    for code, headers in cases.items():
        for header in headers:
            assert_unauthenticated(await anonymous.get("/api/devices", headers=header), str(header), code)


async def test_a_viewer_is_refused_every_route_that_needs_more(api: Litestar, viewer: httpx.AsyncClient) -> None:
    held = ROLE_PERMISSIONS[Role.VIEWER]
    walked = 0
    for row in route_table(api):
        if row.permission is None:
            continue
        response = await call(viewer, row)
        what = f"viewer {row.method} {row.path}"
        if row.permission in held:
            assert response.status_code not in (401, 403), (what, response.text)
        else:
            assert_forbidden(response, what, row.permission)
            walked += 1
    assert walked >= 7
    assert (await viewer.get("/api/devices")).status_code == 200


async def test_a_read_key_is_refused_every_write_route(api: Litestar, read_key: httpx.AsyncClient) -> None:
    allowed = permissions_for(Role.ADMIN, Scope.READ)
    writes = 0
    for row in route_table(api):
        if row.public or row.generated:
            continue
        response = await call(read_key, row)
        what = f"read key {row.method} {row.path}"
        if row.method not in SAFE_METHODS:
            needed = row.permission if row.permission not in allowed else None
            assert_forbidden(response, what, needed)
            writes += 1
        elif row.permission is not None and row.permission not in allowed:
            assert_forbidden(response, what, row.permission)
        else:
            assert response.status_code not in (401, 403), (what, response.text)
    assert writes >= 12
    assert (await read_key.get("/api/devices")).status_code == 200


async def test_every_operation_is_documented_with_an_id_a_description_and_its_credentials(
    anonymous: httpx.AsyncClient,
) -> None:
    schema = (await anonymous.get("/schema/openapi.json")).json()
    assert set(schema["components"]["securitySchemes"]) == {"BearerToken", "ApiKey"}
    operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert len(operations) >= 28
    for path, method, op in operations:
        assert op.get("operationId") and op.get("description"), (method, path)
        public = (method.upper(), path) in {(m, re.sub(r":\w+\}", "}", p)) for m, p in PUBLIC_ROUTES}
        assert (op.get("security") == [{}]) is public, (method, path, op.get("security"))

