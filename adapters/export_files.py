"""Streaming file writers for exports: JSON Lines, CSV and XLSX, each in constant memory.

One interface for every format: `open_writer(fmt, directory, stem, columns)` gives a
`RowWriter`; `write(row)` takes one row (a sequence of values in `columns` order) and
`close()` finishes the file and returns the paths written. Nothing is kept in memory
between rows: JSON Lines and CSV go straight to a buffered file, XLSX through
openpyxl's write-only mode, which streams each sheet to disk. An XLSX sheet holds at
most `XLSX_MAX_ROWS` data rows under its header; the next row starts a new sheet
(`data`, `data_2`, ...), each with the header again.

Values: None, bool, int, float and str stay as they are; datetimes are ISO 8601 (UTC
as `Z`), dates ISO, UUIDs and Decimals their text (XLSX keeps numbers as numbers,
Decimals included). Structured values (dicts, lists, Structs) are JSON objects in JSON
Lines and JSON text in a CSV or XLSX cell. No text cell is ever read as a formula by a
spreadsheet: in CSV, text starting with `=`, `+`, `-`, `@`, a tab or a carriage return is
prefixed with `'` (OWASP's rule for CSV injection); in XLSX every text cell is stored as
a string, those starting so marked quote-prefixed as well. Numbers are never prefixed. A file appears under its final name only
when `close()` succeeds: until then it is written as `<name>.part`, and `abort()` (or
leaving the `with` block by an exception) deletes it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, Protocol

import msgspec
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import Cell
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

__all__ = [
    "FORMATS",
    "XLSX_MAX_ROWS",
    "ExportFormat",
    "RowWriter",
    "open_writer",
    "sha256_file",
]

ExportFormat = Literal["jsonl", "csv", "xlsx"]
FORMATS: Final[tuple[ExportFormat, ...]] = ("jsonl", "csv", "xlsx")
SUFFIX: Final[dict[str, str]] = {"jsonl": ".jsonl", "csv": ".csv", "xlsx": ".xlsx"}
MEDIA_TYPES: Final[dict[str, str]] = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}

XLSX_MAX_ROWS: Final = 1_048_575
"""Data rows per XLSX sheet: Excel's 1,048,576 rows less the header."""
XLSX_MAX_CELL: Final = 32_767
"""Characters Excel shows in one cell; longer text is cut there and marked with `…`."""

_BUFFER = 1 << 20
_ENCODER = msgspec.json.Encoder(decimal_format="number")
# Characters XML 1.0 cannot carry, which openpyxl refuses in a cell.
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# What makes a spreadsheet read a cell's text as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Room for the `_<n>` of later sheets within Excel's 31 characters.
_SHEET_NAME = re.compile(r"[^\[\]:*?/\\']{1,24}")


class RowWriter(Protocol):
    """Writes rows to one export file; `rows` counts the rows written so far."""

    rows: int

    def write(self, row: Sequence[Any]) -> None:
        """Append one row, its values in the order of the writer's columns. Raises ValueError for
        a row of the wrong length; OSError when the disk refuses."""
        ...

    def close(self) -> list[Path]:
        """Finish the file(s) and move them to their final names; returns their paths."""
        ...

    def abort(self) -> None:
        """Stop and delete what was written; safe to call more than once and after close."""
        ...

    def __enter__(self) -> RowWriter: ...

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None: ...


def open_writer(
    fmt: str,
    directory: Path,
    stem: str,
    columns: Sequence[str],
    *,
    sheet: str = "data",
    xlsx_max_rows: int = XLSX_MAX_ROWS,
) -> RowWriter:
    """A writer of `<directory>/<stem>.<fmt>` with a header of `columns` (a key per value in JSON Lines).

    `sheet` names the XLSX sheets (`data`, `data_2`, ...), each holding up to `xlsx_max_rows`
    rows. Raises ValueError for an unknown format, an empty column list, a stem with a path
    separator in it or a sheet name Excel refuses; creates `directory` if it is missing.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    if not columns:
        raise ValueError("an export needs at least one column")
    if not stem or "/" in stem or "\\" in stem or stem in {".", ".."}:
        raise ValueError(f"invalid file stem {stem!r}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}{SUFFIX[fmt]}"
    if fmt == "jsonl":
        return _JsonLinesWriter(path, columns)
    if fmt == "csv":
        return _CsvWriter(path, columns)
    if not _SHEET_NAME.fullmatch(sheet) or not 1 <= xlsx_max_rows <= XLSX_MAX_ROWS:
        raise ValueError(f"invalid sheet {sheet!r} or rows per sheet {xlsx_max_rows}")
    return _XlsxWriter(path, columns, sheet=sheet, max_rows=xlsx_max_rows)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()


def _text(value: Any) -> Any:
    """A value as a text cell shows it: scalars plain, structured values as JSON text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (dict, list, tuple, msgspec.Struct)):
        return _ENCODER.encode(value).decode()
    return msgspec.to_builtins(value)


def looks_like_formula(text: str) -> bool:
    """Whether a spreadsheet would take this text for a formula (or the start of one)."""
    return text.startswith(_FORMULA_START)


def _csv_cell(value: Any) -> Any:
    """A value as a CSV cell holds it: numbers as they are, text that a spreadsheet would evaluate
    prefixed with `'`."""
    if isinstance(value, Decimal):
        return str(value)
    text = _text(value)
    if isinstance(text, str) and looks_like_formula(text):
        return "'" + text
    return text


class _FileWriter:
    """Shared bookkeeping: the `.part` file, the row count, close and abort."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.columns = tuple(columns)
        self.rows = 0
        self._done = False

    def _check(self, row: Sequence[Any]) -> None:
        if self._done:
            raise ValueError(f"{self.path.name} is already closed")
        if len(row) != len(self.columns):
            raise ValueError(f"a row of {len(row)} values for {len(self.columns)} columns")

    def _finish(self) -> list[Path]:
        os.replace(self.part, self.path)
        self._done = True
        return [self.path]

    def _discard(self) -> None:
        self._done = True
        self.part.unlink(missing_ok=True)

    def __enter__(self) -> RowWriter:
        return self  # type: ignore[return-value]

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if error is not None:
            self.abort()  # type: ignore[attr-defined]
        elif not self._done:
            self.close()  # type: ignore[attr-defined]


class _StreamWriter(_FileWriter):
    """A writer over one open `.part` file (`_file`), closed on close and abort."""

    _file: IO[Any]

    def close(self) -> list[Path]:
        if self._done:
            return [self.path]
        self._file.close()
        return self._finish()

    def abort(self) -> None:
        self._file.close()
        self._discard()


class _JsonLinesWriter(_StreamWriter):
    """One JSON object per line, its keys the columns in order; UTF-8, `\\n` line ends."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path, columns)
        self._file: IO[bytes] = self.part.open("wb", buffering=_BUFFER)

    def write(self, row: Sequence[Any]) -> None:
        self._check(row)
        self._file.write(_ENCODER.encode(dict(zip(self.columns, row))))
        self._file.write(b"\n")
        self.rows += 1


class _CsvWriter(_StreamWriter):
    """RFC 4180 CSV in UTF-8 with a header row; `\\r\\n` line ends, fields quoted when needed."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        super().__init__(path, columns)
        self._file: IO[str] = self.part.open("w", encoding="utf-8", newline="", buffering=_BUFFER)
        self._csv = csv.writer(self._file)
        self._csv.writerow([_csv_cell(column) for column in self.columns])

    def write(self, row: Sequence[Any]) -> None:
        self._check(row)
        self._csv.writerow([_csv_cell(value) for value in row])
        self.rows += 1


def _cell(sheet: WriteOnlyWorksheet, value: Any) -> Any:
    """A value as an XLSX cell holds it: numbers as numbers; text cleaned of what XML cannot carry, in a
    cell typed as a string, so that openpyxl never writes it as a formula (or an error value)."""
    if value is None or isinstance(value, (bool, int, float, Decimal)):
        return value
    text = value if isinstance(value, str) else _text(value)
    if not isinstance(text, str):
        return text
    if _XML_ILLEGAL.search(text):
        text = _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)
    if len(text) > XLSX_MAX_CELL:
        text = text[: XLSX_MAX_CELL - 1] + "…"
    cell: Cell = WriteOnlyCell(sheet, value=text)
    cell.data_type = "s"
    if looks_like_formula(text):
        # Excel keeps a quote-prefixed cell text even when it is edited.
        cell.quotePrefix = True
    return cell


class _XlsxWriter(_FileWriter):
    """A write-only openpyxl workbook: rows stream to disk; a new sheet after `XLSX_MAX_ROWS` rows."""

    def __init__(self, path: Path, columns: Sequence[str], *, sheet: str, max_rows: int) -> None:
        super().__init__(path, columns)
        self.sheet_title = sheet
        self.max_rows = max_rows
        self._book = Workbook(write_only=True)
        self._sheets = 0
        self._sheet_rows = 0
        self._sheet: WriteOnlyWorksheet = self._new_sheet()

    def _new_sheet(self) -> WriteOnlyWorksheet:
        self._sheets += 1
        title = self.sheet_title if self._sheets == 1 else f"{self.sheet_title}_{self._sheets}"
        sheet: WriteOnlyWorksheet = self._book.create_sheet(title)
        sheet.append([_cell(sheet, column) for column in self.columns])
        self._sheet_rows = 0
        return sheet

    def write(self, row: Sequence[Any]) -> None:
        self._check(row)
        if self._sheet_rows >= self.max_rows:
            self._sheet = self._new_sheet()
        self._sheet.append([_cell(self._sheet, value) for value in row])
        self._sheet_rows += 1
        self.rows += 1

    @property
    def sheets(self) -> int:
        return self._sheets

    def close(self) -> list[Path]:
        if self._done:
            return [self.path]
        with self.part.open("wb") as file:
            self._book.save(file)
        return self._finish()

    def abort(self) -> None:
        if not self._done:
            self._book.close()
        self._discard()

