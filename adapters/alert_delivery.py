"""Delivering alerts: signed webhooks and apprise services (`Senders`), one notice at a time.

The loop that decides what to send (`projections.alert_dispatch.AlertDispatcher`, the `alerts` part)
calls these and records every attempt.

Webhook signature: `X-WattLedger-Signature: sha256=<hex>`, the HMAC-SHA256 of
`<X-WattLedger-Timestamp>.<body>` under the target's secret; the timestamp is Unix seconds.

Faults caught (read from the libraries' code): httpx raises `httpx.HTTPError` subclasses (transport
errors, timeouts) from a request; apprise catches its services' own errors and answers a falsy
result, and raises `AppriseException` subclasses (a template or configuration it cannot use) and
`OSError`; a sealed secret the box cannot open (`SecretBoxError`, its key changed) is a failed
attempt too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import warnings
from datetime import datetime
from typing import Any
from uuid import UUID

import apprise
import httpx
import msgspec
import structlog

from adapters.faults import describe
from adapters.identity import SecretBoxError
from domain.alert import Phase
from domain.ports import Clock, SecretBox

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-WattLedger-Signature"
TIMESTAMP_HEADER = "X-WattLedger-Timestamp"
DELIVERY_HEADER = "X-WattLedger-Delivery"
USER_AGENT = "WattLedger-Alerts/1"
WEBHOOK_FAULTS: tuple[type[BaseException], ...] = (httpx.HTTPError,)
APPRISE_FAULTS: tuple[type[BaseException], ...] = (apprise.exception.AppriseException, OSError)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for a body sent at `timestamp` (Unix seconds, as text)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def signature_matches(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """Whether `signature` is the one `sign` gives (compared in constant time): what a receiver checks."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def accepts_apprise(url: str) -> bool:
    """Whether apprise knows the service an URL names (nothing is contacted)."""
    with warnings.catch_warnings():
        # apprise 2.3 loads its services on first use, importing `imghdr`, deprecated since Python 3.11.
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(apprise.Apprise().add(url))


async def knows_apprise_url(url: str) -> bool:
    """`accepts_apprise` in a worker thread: apprise loads its services on first use."""
    return await asyncio.to_thread(accepts_apprise, url)


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """What a webhook receives as JSON, and what an apprise message says."""

    delivery_id: UUID
    phase: Phase
    alert_id: UUID
    rule_id: UUID
    rule_name: str
    kind: str
    device_id: UUID | None
    part: str | None
    fired_at: datetime
    resolved_at: datetime | None
    detail: str

    @property
    def title(self) -> str:
        word = {"fired": "FIRING", "resolved": "RESOLVED", "test": "TEST"}[self.phase]
        return f"[WattLedger {word}] {self.rule_name}"

    @property
    def body(self) -> str:
        when = self.resolved_at if self.phase == "resolved" and self.resolved_at else self.fired_at
        return f"{self.detail} (since {when.isoformat()})" if self.detail else when.isoformat()


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    target_id: str
    type: str
    ok: bool
    status: int | None = None
    error: str | None = None


class Senders:
    """Sends one notice to one target; never raises for a target that fails (the outcome says so)."""

    def __init__(self, box: SecretBox, clock: Clock, *, timeout: float = 10.0,
                 client: httpx.AsyncClient | None = None) -> None:  # fmt: skip
        self.box = box
        self.clock = clock
        self.timeout = timeout
        self._client = client

    async def send(self, target: dict[str, Any], notice: Notice) -> Outcome:
        """The outcome of one send; a secret the box cannot open (its key changed) is a failed one."""
        try:
            if target["type"] == "webhook":
                return await self.webhook(target, notice)
            return await self.apprise(target, notice)
        except SecretBoxError as exc:
            return Outcome(target_id=target["target_id"], type=target["type"], ok=False, error=str(exc))

    async def webhook(self, target: dict[str, Any], notice: Notice) -> Outcome:
        body = msgspec.json.encode(notice)
        timestamp = str(int(self.clock.now().timestamp()))
        headers = {
            "Content-Type": "application/json", "User-Agent": USER_AGENT, TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.box.open(target["sealed"]), timestamp, body),
            DELIVERY_HEADER: str(notice.delivery_id),
        }  # fmt: skip
        try:
            if self._client is not None:
                response = await self._client.post(target["url"], content=body, headers=headers, timeout=self.timeout)
            else:
                async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
                    response = await client.post(target["url"], content=body, headers=headers)
        except WEBHOOK_FAULTS as exc:
            return Outcome(target_id=target["target_id"], type="webhook", ok=False, error=describe(exc)[:500])
        ok = 200 <= response.status_code < 300
        return Outcome(target_id=target["target_id"], type="webhook", ok=ok, status=response.status_code,
                       error=None if ok else f"answered {response.status_code}")  # fmt: skip

    async def apprise(self, target: dict[str, Any], notice: Notice) -> Outcome:
        url = self.box.open(target["sealed"])

        def notify() -> bool:
            if not accepts_apprise(url):
                return False
            sender = apprise.Apprise()
            sender.add(url)
            return bool(sender.notify(body=notice.body, title=notice.title, timeout=self.timeout))

        try:
            ok = await asyncio.to_thread(notify)
        except APPRISE_FAULTS as exc:
            return Outcome(target_id=target["target_id"], type="apprise", ok=False, error=describe(exc)[:500])
        return Outcome(target_id=target["target_id"], type="apprise", ok=ok,
                       error=None if ok else "the service did not take the notification")  # fmt: skip
