"""Structured logging set-up: one pipeline for structlog and standard-library loggers alike."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from domain.text import escape_text
from infra.settings import mask_secrets

# Tracebacks keep their line structure; every other control character is escaped there too.
_MULTILINE_KEYS = frozenset({"exception", "stack"})
_HANDLER_NAME = "wattledger"


def _safe(value: Any, keep: str = "") -> Any:
    if isinstance(value, str):
        return escape_text(mask_secrets(value), keep=keep)
    if isinstance(value, dict):
        return {_safe(k): _safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_safe(v) for v in value)
    return value


def make_safe(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: no raw control character and no password in any key or string value."""
    return {
        _safe(key): _safe(value, "\n\t" if key in _MULTILINE_KEYS else "") for key, value in event_dict.items()
    }


def configure_logging(level: str = "info", *, json: bool = False) -> None:
    """Key-value logs to stderr; JSON lines when `json` is set. Safe to call again."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, timestamper],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            make_safe,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in ("kasa", "nats", "psycopg.pool", "uvicorn.access", "uvicorn.error", "pgserver", "httpx"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            make_safe,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
