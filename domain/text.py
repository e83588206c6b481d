"""The one rule for free text: names, labels, aliases, descriptions, e-mail addresses, keys.

Free text may hold any character but these:

- control characters (Unicode category Cc: NUL, escape, carriage return, line feed, DEL, …),
- format characters (Cf), such as the bidirectional overrides and isolates U+202A–U+202E and
  U+2066–U+2069 that make a name read differently from what it holds, except the zero-width
  joiner and non-joiner (U+200D, U+200C), which some scripts and emoji need,
- the line and paragraph separators U+2028 and U+2029, and lone surrogates.

NUL is the sharpest of them: PostgreSQL `text` and `jsonb` cannot hold it, so a NUL stored in
an event would stop every read model that copies the field. The others split log lines and
CSV rows, or hide what a person is shown.

`check_text` refuses such text (every command handler calls it for the free text it stores,
so REST, NATS and the CLI answer alike); `clean_text` drops those characters from text that
cannot be refused (names reported by devices, a browser's user agent, failure details);
`escape_text` makes any text safe to store and show as a diagnostic.
"""

from __future__ import annotations

import unicodedata

from domain.errors import InvalidText

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
ALLOWED_FORMAT = frozenset({"\u200c", "\u200d"})


def is_refused(char: str) -> bool:
    """Whether free text may not hold this one character."""
    return unicodedata.category(char) in REFUSED_CATEGORIES and char not in ALLOWED_FORMAT


def refused_character(text: str) -> str | None:
    """The first character of `text` that free text may not hold, or None."""
    if text.isprintable():
        # Printable text holds no character of the refused categories.
        return None
    return next((c for c in text if is_refused(c)), None)


def describe(char: str) -> str:
    """A character as a person can read it in an error: `U+0000 (NULL)`."""
    kinds = {"Cc": "a control character", "Cs": "a lone surrogate"}
    name = unicodedata.name(char, "") or kinds.get(unicodedata.category(char), "unnamed")
    return f"U+{ord(char):04X} ({name})"


def check_text(text: str, *, field: str, max_length: int | None = None) -> str:
    """`text` unchanged if it follows the rule (and is at most `max_length` long).

    Raises InvalidText naming `field` and the first character refused.
    """
    found = refused_character(text)
    if found is not None:
        raise InvalidText(
            f"{field} holds {describe(found)}: text may not hold control or format characters "
            "or line and paragraph separators",
            field=field,
        )
    if max_length is not None and len(text) > max_length:
        raise InvalidText(f"{field} has at most {max_length} characters", field=field)
    return text


def check_optional_text(text: str | None, *, field: str, max_length: int | None = None) -> str | None:
    """`check_text` for a field that may be absent (None passes)."""
    return None if text is None else check_text(text, field=field, max_length=max_length)


def clean_text(text: str) -> str:
    """`text` without the characters free text may not hold (for text that cannot be refused)."""
    if refused_character(text) is None:
        return text
    return "".join(c for c in text if not is_refused(c))


def escape_text(text: str, *, keep: str = "") -> str:
    """`text` with every character that is not printable (but those in `keep`) written as `\\n`,
    `\\r`, `\\t`, `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escape(c) for c in text)


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
