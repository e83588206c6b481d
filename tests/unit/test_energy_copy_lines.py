"""Bucket rows written by COPY: the fast spelling of bucket rows gives the lines of the general one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast

import psycopg
from msgspec.structs import astuple

from projections.energy import BUCKETS, HOURS, BucketRow, _copy, _copy_buckets

T0 = datetime(2026, 3, 7, 22, 0, tzinfo=timezone.utc)


class _Copy:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def write_row(self, row: tuple[Any, ...]) -> None:  # pragma: no cover - every value here has a spelling
        raise AssertionError(f"a row left to write_row: {row}")


class _Cursor:
    """Keeps what a COPY statement was sent, instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    @contextmanager
    def copy(self, statement: str) -> Iterator[_Copy]:
        copy = _Copy()
        yield copy
        self.sent.append((statement, copy.text))


def rows() -> list[BucketRow]:
    first, second = uuid.UUID(int=1), uuid.UUID(int=2)
    return [
        BucketRow(device_id=first, channel="device", start=T0, wh=0.1 + 0.2, on_s=300.0, power_min=None,
                  power_max=None, power_sum=0.0, count=0, gap=True, cost=Decimal("0")),
        BucketRow(device_id=first, channel="device", start=T0 + timedelta(minutes=5), wh=12.5, on_s=299.9,
                  power_min=-0.0, power_max=1e300, power_sum=3.25, count=7, gap=False, cost=Decimal("0.0012500")),
        BucketRow(device_id=second, channel="out\t1\\x", start=T0, wh=1e-9, on_s=0.0, power_min=5.0,
                  power_max=5.0, power_sum=35.0, count=1, gap=False, cost=Decimal("NaN")),
    ]  # fmt: skip


def test_bucket_and_hour_rows_are_spelled_as_the_general_copy_spells_them() -> None:
    for table in (BUCKETS, HOURS):
        fast, general = _Cursor(), _Cursor()
        _copy_buckets(cast(psycopg.Cursor[Any], fast), table, rows())
        _copy(cast(psycopg.Cursor[Any], general), table, [astuple(r) for r in rows()])
        assert fast.sent == general.sent
        assert fast.sent[0][1].count("\n") == 3


def test_no_rows_send_no_copy() -> None:
    cursor = _Cursor()
    _copy_buckets(cast(psycopg.Cursor[Any], cursor), BUCKETS, [])
    assert cursor.sent == []
