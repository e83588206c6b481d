"""The streaming export writers: one interface, three formats, files only under their final name when done."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import openpyxl
import pytest

from adapters.export_files import open_writer, sha256_file

COLUMNS = ["id", "at", "price", "data", "note"]
ROWS = [
    [UUID(int=1), datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), Decimal("0.25"), {"a": [1, 2]}, "plain"],
    [UUID(int=2), None, 1.5, [], "bell\x07 and\nnewline"],
]


def test_jsonl_has_one_object_per_row_with_the_columns_as_keys(tmp_path: Path) -> None:
    with open_writer("jsonl", tmp_path, "out", COLUMNS) as writer:
        for row in ROWS:
            writer.write(row)
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines[0] == {"id": str(UUID(int=1)), "at": "2026-01-02T03:04:05Z", "price": 0.25, "data": {"a": [1, 2]},
                        "note": "plain"}  # fmt: skip
    assert lines[1]["note"] == "bell\x07 and\nnewline" and writer.rows == 2


def test_csv_quotes_what_needs_it_and_writes_structures_as_json(tmp_path: Path) -> None:
    with open_writer("csv", tmp_path, "out", COLUMNS) as writer:
        for row in ROWS:
            writer.write(row)
    with (tmp_path / "out.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == COLUMNS
    assert rows[1] == [str(UUID(int=1)), "2026-01-02T03:04:05Z", "0.25", '{"a":[1,2]}', "plain"]
    assert rows[2][1:] == ["", "1.5", "[]", "bell\x07 and\nnewline"]


def test_xlsx_rolls_over_to_a_new_sheet_and_cleans_what_xml_cannot_hold(tmp_path: Path) -> None:
    writer = open_writer("xlsx", tmp_path, "out", COLUMNS, sheet="log", xlsx_max_rows=1)
    for row in ROWS:
        writer.write(row)
    assert not (tmp_path / "out.xlsx").exists()
    (path,) = writer.close()
    book = openpyxl.load_workbook(path, read_only=True)
    assert [s.title for s in book.worksheets] == ["log", "log_2"]
    first, second = (list(s.iter_rows(values_only=True)) for s in book.worksheets)
    book.close()
    assert first[0] == second[0] == tuple(COLUMNS)
    assert first[1][2] == 0.25 and second[1][4] == "bell\\x07 and\nnewline"
    assert len(sha256_file(path)) == 64


def test_a_writer_left_by_an_error_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), open_writer("csv", tmp_path, "out", COLUMNS) as writer:
        writer.write(ROWS[0])
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    for fmt, stem, columns in (("pdf", "out", COLUMNS), ("csv", "../out", COLUMNS), ("csv", "out", [])):
        with pytest.raises(ValueError):
            open_writer(fmt, tmp_path, stem, columns)
    with open_writer("jsonl", tmp_path, "out", COLUMNS) as writer, pytest.raises(ValueError):
        writer.write([1, 2])
