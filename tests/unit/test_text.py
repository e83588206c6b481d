"""The one rule for free text (`domain.text`)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidText
from domain.text import check_optional_text, check_text, clean_text, escape_text, refused_character

ANY_TEXT = st.text(st.characters(codec="utf-8") | st.characters(), max_size=60)


@pytest.mark.parametrize("char", [
    "\x00", "\x01", "\x1b", "\t", "\n", "\r", "\x7f", "\x85", "\u2028", "\u2029", "\u202a", "\u202b", "\u202c",
    "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\ufeff", "\u00ad", "\ud800",
])  # fmt: skip
def test_control_format_and_separator_characters_are_refused_with_the_field_and_the_character(char: str) -> None:
    with pytest.raises(InvalidText, match=rf"^alias holds U\+{ord(char):04X} ") as refused:
        check_text(f"Lamp{char}", field="alias")
    assert refused.value.field == "alias" and refused.value.code == "INVALID_TEXT"


@pytest.mark.parametrize("text", ["Küche", "💡 Lamp", "👨\u200d👩\u200d👧", "می\u200cخواهم", "a\u00a0b", "e\u0301",
                                  "\ue000", "中文", " spaced ", ""])  # fmt: skip
def test_letters_emoji_joiners_spaces_and_private_use_pass(text: str) -> None:
    assert check_text(text, field="name") == text


def test_length_and_absence() -> None:
    assert check_optional_text(None, field="email") is None
    with pytest.raises(InvalidText, match="at most 3"):
        check_text("four", field="label", max_length=3)


@given(ANY_TEXT)
def test_text_is_refused_exactly_when_it_holds_a_refused_character(text: str) -> None:
    refused = [c for c in text if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"} and c not in "\u200c\u200d"]
    assert refused_character(text) == (refused[0] if refused else None)
    if refused:
        with pytest.raises(InvalidText):
            check_text(text, field="x")
    else:
        assert check_text(text, field="x") == text


@given(ANY_TEXT)
def test_cleaned_text_always_passes_and_text_that_passes_is_kept(text: str) -> None:
    cleaned = clean_text(text)
    assert check_text(cleaned, field="x") == cleaned
    assert "\x00" not in cleaned
    if refused_character(text) is None:
        assert cleaned == text


@given(ANY_TEXT)
def test_escaped_text_is_printable_and_holds_no_nul(text: str) -> None:
    escaped = escape_text(text)
    assert escaped.isprintable() and "\x00" not in escaped
    if text.isprintable():
        assert escaped == text
