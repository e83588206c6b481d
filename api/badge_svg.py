"""Flat two-part SVG badges (label | value), in the shields.io style status pages embed.

Every text is escaped for XML here: a label may hold a device's alias, which is device input.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

GREEN = "#4c1"
RED = "#e05d44"
BLUE = "#007ec6"
GREY = "#9f9f9f"
LABEL_GREY = "#555"
MAX_TEXT = 48

_QUOTES = {'"': "&quot;", "'": "&apos;"}


def _width(text: str) -> int:
    """An estimate of the text's width in 11 px Verdana, with padding."""
    return 10 + sum(7 if c.isupper() or c in "mwMW%@" else 6 for c in text)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def badge(label: str, value: str, color: str) -> bytes:
    """The SVG of one badge; `label` and `value` are plain text (escaped here)."""
    label, value = _clip(label), _clip(value)
    left, right = _width(label), _width(value)
    total = left + right
    label_xml, value_xml = escape(label, _QUOTES), escape(value, _QUOTES)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" '
        f'aria-label="{label_xml}: {value_xml}">'
        f"<title>{label_xml}: {value_xml}</title>"
        f'<rect width="{left}" height="20" fill="{LABEL_GREY}"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{color}"/>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="{left / 2:g}" y="14">{label_xml}</text>'
        f'<text x="{left + right / 2:g}" y="14">{value_xml}</text>'
        f"</g></svg>"
    )
    return svg.encode()
