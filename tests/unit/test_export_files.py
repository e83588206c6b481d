"""The streaming export writers: one interface, three formats, files only under their final name when done."""

from __future__ import annotations

import csv
import zipfile
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


FORMULAS = ["=HYPERLINK(\"http://x.test\",\"click\")", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1", "#N/A"]


def test_csv_text_a_spreadsheet_would_evaluate_is_prefixed_and_numbers_are_not(tmp_path: Path) -> None:
    with open_writer("csv", tmp_path, "out", ["text", "int", "float", "decimal"]) as writer:
        for text in FORMULAS:
            writer.write([text, -1, -2.5, Decimal("-0.25")])
        writer.write(["plain - text", 0, 0.0, Decimal(0)])
    with (tmp_path / "out.csv").open(newline="") as file:
        rows = list(csv.reader(file))[1:]
    assert [r[0] for r in rows] == [*("'" + t for t in FORMULAS[:-1]), "#N/A", "plain - text"]
    assert all(r[1:] == ["-1", "-2.5", "-0.25"] for r in rows[:-1])


def test_xlsx_text_cells_are_strings_never_formulas(tmp_path: Path) -> None:
    with open_writer("xlsx", tmp_path, "out", ["=header", "number"]) as writer:
        for text in FORMULAS:
            writer.write([text, -1.5])
    path = tmp_path / "out.xlsx"
    with zipfile.ZipFile(path) as archive:
        sheet_xml = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet_xml and "<f " not in sheet_xml
    book = openpyxl.load_workbook(path)
    cells = list(book.worksheets[0].iter_rows())
    # XML reads a carriage return back as a line feed.
    expected = [(t.replace("\r", "\n"), "s") for t in ["=header", *FORMULAS]]
    assert [(c[0].value, c[0].data_type) for c in cells] == expected
    assert [c[0].quotePrefix for c in cells] == [True, True, True, True, True, True, True, False]
    assert all(c[1].value == -1.5 and c[1].data_type == "n" for c in cells[1:])
