"""The opaque page cursors the API hands out: the last position a page returned, bound to the
filters it was made for, so a cursor cannot be replayed against other filters."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import msgspec

from adapters.history import EventFilter


class CursorError(ValueError):
    """A cursor that is not one of ours, or that was made for other filters."""


def fingerprint(*parts: object) -> str:
    """A short digest of filter values (Structs, strings...), bound into a cursor."""
    return hashlib.sha256(msgspec.json.encode(parts)).hexdigest()[:16]


def filter_fingerprint(where: EventFilter) -> str:
    """The fingerprint of an event filter's fields other than its position."""
    return fingerprint(msgspec.structs.replace(where, from_position=1))


def encode_cursor(position: int, fingerprint: str) -> str:
    """An opaque cursor: the last position returned and the fingerprint of the filters it belongs to."""
    raw = msgspec.json.encode({"p": position, "f": fingerprint})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> int:
    """The position a cursor continues after. Raises CursorError for a foreign or mangled cursor,
    or one made for other filters."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = msgspec.json.decode(raw, type=dict[str, Any])
        position, given = body["p"], body["f"]
    except (binascii.Error, ValueError, msgspec.DecodeError, KeyError, TypeError):
        raise CursorError("the cursor is not one this API gave out") from None
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise CursorError("the cursor is not one this API gave out")
    if given != fingerprint:
        raise CursorError("the cursor belongs to other filters; repeat the first request with these filters")
    return position
