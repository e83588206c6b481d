"""`Table.copy_in` (a binary COPY) and `Table.write` (a COPY into a staging table, binary or else text) store
exactly what `Table.upsert` row by row stores, value for value."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import psycopg
from msgspec.structs import astuple

from projections.energy import BUCKETS, READINGS, BucketRow
from projections.tables import COPY_FROM, Table, building

T0 = datetime(2026, 3, 7, 22, 0, tzinfo=timezone.utc)


class Mixed(msgspec.Struct, kw_only=True):
    key: int
    device_id: uuid.UUID
    label: str
    at: datetime
    day: date | None
    reading: float | None
    is_on: bool
    count: int
    cost: Decimal
    detail: dict[str, Any]


MIXED = Table("wl_copy_in.mixed", Mixed, key="key")

ODD_FLOATS = [0.1 + 0.2, -0.0, float("inf"), float("-inf"), float("nan"), 5e-324, 1e300, None]
ODD_TEXT = ["plain", "tab\there", "new\nline", "back\\slash", "ünïcode ⚡", "", "\\N"]
ODD_COSTS = [Decimal("0"), Decimal("0.0012500"), Decimal("NaN"), Decimal("-12.5E-9"), Decimal("123456789012.000001")]


def mixed_rows() -> list[Mixed]:
    return [
        Mixed(key=i, device_id=uuid.UUID(int=i), label=ODD_TEXT[i % len(ODD_TEXT)],
              at=T0 + timedelta(microseconds=i), day=date(2026, 3, 7) if i % 2 else None,
              reading=ODD_FLOATS[i % len(ODD_FLOATS)], is_on=bool(i % 3), count=i * 10**12 - 7,
              cost=ODD_COSTS[i % len(ODD_COSTS)], detail={"i": i, "text": ODD_TEXT[i % len(ODD_TEXT)], "n": [1.5, None]})
        for i in range(40)
    ]  # fmt: skip


def stored(cur: psycopg.Cursor[Any], table: str, key: str) -> list[str]:
    """Every row as the server spells it back: equal spellings are equal stored values."""
    cur.execute(f"SELECT t::text FROM {table} t ORDER BY {key}")
    return [r[0] for r in cur.fetchall()]


def test_copy_in_stores_what_upsert_stores_for_every_column_type(database_url: str) -> None:
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS wl_copy_in CASCADE")
        cur.execute("CREATE SCHEMA wl_copy_in")
        MIXED.create(cur)
        cur.executemany(MIXED.upsert, [MIXED.values(r) for r in mixed_rows()])
        by_upsert = stored(cur, MIXED.name, "key")
        cur.execute(f"TRUNCATE {MIXED.name}")
        MIXED.copy_in(cur, [MIXED.values(r) for r in mixed_rows()])
        by_copy = stored(cur, MIXED.name, "key")
        cur.execute(
            f"SELECT count(*) FILTER (WHERE reading = 'NaN'), count(*) FILTER (WHERE cost = 'NaN'), "
            f"count(*) FILTER (WHERE cost::text = '0.0012500') FROM {MIXED.name}"
        )
        nan_readings, nan_costs, scaled = cur.fetchone() or (0, 0, 0)
        cur.execute("DROP SCHEMA wl_copy_in CASCADE")
    assert by_copy == by_upsert
    assert len(by_copy) == 40
    assert (nan_readings, nan_costs, scaled) == (5, 8, 8)


def test_energy_rows_copied_in_read_back_as_upserted(database_url: str) -> None:
    device = uuid.UUID(int=7)
    readings = [(device, "out\t1", T0 + timedelta(seconds=10 * i), "aa:bb\\", ODD_FLOATS[i % 8], 1000.0 + i,
                 bool(i % 2), ODD_FLOATS[(i + 3) % 8], ODD_FLOATS[(i + 5) % 8]) for i in range(24)]  # fmt: skip
    buckets = [BucketRow(device_id=device, channel="device", start=T0 + timedelta(minutes=5 * i), wh=0.1 * i,
                         on_s=299.9, power_min=ODD_FLOATS[i % 8], power_max=1e300, power_sum=3.25, count=i,
                         gap=bool(i % 2), cost=ODD_COSTS[i % 5]) for i in range(12)]  # fmt: skip
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS wl_copy_energy CASCADE")
        cur.execute("CREATE SCHEMA wl_copy_energy")
        with building("wl_copy_energy", [READINGS, BUCKETS]):
            spelled: dict[str, list[list[str]]] = {}
            for table, rows in ((READINGS, readings), (BUCKETS, [astuple(b) for b in buckets])):
                table.create(cur)
                cur.executemany(table.upsert, rows)
                upserted = stored(cur, table.name, table.key)
                cur.execute(f"TRUNCATE {table.name}")
                table.copy_in(cur, rows)
                spelled[table.bare] = [upserted, stored(cur, table.name, table.key)]
        cur.execute("DROP SCHEMA wl_copy_energy CASCADE")
    for upserted, copied in spelled.values():
        assert copied == upserted
        assert copied


def test_write_of_many_rows_stores_what_upsert_stores(database_url: str) -> None:
    many = [msgspec.structs.replace(r, key=r.key + 1000 * n) for n in range(2) for r in mixed_rows()]
    assert len(many) >= COPY_FROM
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS wl_copy_write CASCADE")
        cur.execute("CREATE SCHEMA wl_copy_write")
        with building("wl_copy_write", [MIXED]):
            MIXED.create(cur)
            cur.executemany(MIXED.upsert, [MIXED.values(r) for r in many])
            upserted = stored(cur, MIXED.name, "key")
            cur.execute(f"UPDATE {MIXED.name} SET label = 'stale', detail = '{{}}'")
            MIXED.write(cur, [MIXED.values(r) for r in many])
            written = stored(cur, MIXED.name, "key")
            binary = MIXED._binary_staging
        cur.execute("DROP SCHEMA wl_copy_write CASCADE")
    assert written == upserted
    assert len(written) == len(many)
    assert binary, "rows of their declared types are staged by binary COPY"


def test_write_of_rows_holding_a_uuids_text_falls_back_to_text_and_stores_the_same(database_url: str) -> None:
    """A row built in code may hold a UUID's text where its Struct declares a UUID: the binary staging copy
    refuses it, the text one stores it, and the table copies by text from then on."""
    table = Table("wl_copy_fallback.mixed", Mixed, key="key")
    typed = [table.values(msgspec.structs.replace(r, key=r.key + 1000 * n)) for n in range(2) for r in mixed_rows()]
    assert len(typed) >= COPY_FROM
    texts = [(*row[:1], str(row[1]), *row[2:]) for row in typed]
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS wl_copy_fallback CASCADE")
        cur.execute("CREATE SCHEMA wl_copy_fallback")
        table.create(cur)
        cur.executemany(table.upsert, typed)
        upserted = stored(cur, table.name, "key")
        cur.execute(f"TRUNCATE {table.name}")
        assert table._binary_staging
        table.write(cur, texts)
        fallen_back = not table._binary_staging
        written = stored(cur, table.name, "key")
        cur.execute("DROP SCHEMA wl_copy_fallback CASCADE")
    assert written == upserted
    assert fallen_back
