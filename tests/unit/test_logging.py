"""Log lines are safe to read: no raw control character and no password, whatever was logged."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from infra.logging import configure_logging, escape_text, make_safe

NASTY_PATH = "/api/device/\x00\x1b[31mred\x07\r\nfake=line\u2028\x7f"


@pytest.fixture
def configured() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "wattledger"]:
        root.removeHandler(handler)


def test_escape_text_leaves_printable_text_alone_and_escapes_the_rest() -> None:
    assert escape_text("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert escape_text("a\x00b\x1bc\u2028d\U000e0001") == "a\\x00b\\x1bc\\u2028d\\U000e0001"
    assert escape_text("tb\n  line", keep="\n") == "tb\n  line"


def test_processor_escapes_keys_and_nested_values_and_masks_passwords() -> None:
    event = make_safe(None, "info", {
        "event": "x", "path": NASTY_PATH, "k\x00ey": 1, "nested": {"a": ["\x1b"]},
        "url": "postgresql://u:topsecret@h/db",
    })  # fmt: skip
    rendered = repr(event)
    assert "\x00" not in rendered and "\x1b" not in rendered and "topsecret" not in rendered
    assert event["k\\x00ey"] == 1 and event["nested"] == {"a": ["\\x1b"]}
    assert event["path"] == "/api/device/\\x00\\x1b[31mred\\x07\\r\\nfake=line\\u2028\\x7f"


@pytest.mark.parametrize("as_json", [False, True])
def test_both_renderers_write_control_characters_escaped(
    configured: None, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    configure_logging("info", json=as_json)
    structlog.get_logger("test").info("api.path_refused", path=NASTY_PATH)
    logging.getLogger("psycopg.pool").warning("lost %s", "postgresql://u:topsecret@h/db \x00")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert not any(c in err for c in "\x00\x1b\x07\r\u2028\x7f") and "topsecret" not in err
    if as_json:
        assert json.loads(lines[0])["path"] == "/api/device/\\x00\\x1b[31mred\\x07\\r\\nfake=line\\u2028\\x7f"
        assert json.loads(lines[1])["event"] == "lost postgresql://u:***@h/db \\x00"
    else:
        # The console renderer quotes values holding spaces or "=" with repr(), which doubles backslashes.
        assert "/api/device/\\\\x00\\\\x1b[31mred\\\\x07\\\\r\\\\nfake=line\\\\u2028\\\\x7f" in lines[0]
        assert "lost postgresql://u:***@h/db \\x00" in lines[1]


def test_console_lines_show_single_escapes_for_unquoted_values(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info")
    structlog.get_logger("test").info("api.path_refused", path="/api/device/\x00\x1b[31m")
    err = capsys.readouterr().err
    assert "path=/api/device/\\x00\\x1b[31m\n" in err and "\x00" not in err


def test_tracebacks_keep_their_lines(configured: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    try:
        raise ValueError("bad \x1b value")
    except ValueError:
        structlog.get_logger("test").exception("failed")
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):\n" in err and "ValueError: bad \\x1b value" in err
