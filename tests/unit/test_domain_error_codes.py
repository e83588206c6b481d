"""The catalogue of domain errors: a code answers one way, and every refusal with a client or unavailable status."""

from __future__ import annotations

import inspect
import domain.errors as errors
from api.errors import status_of
from domain.errors import DomainError


def _catalogue() -> list[type[DomainError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, DomainError) and c.__module__ == errors.__name__]  # fmt: skip


def test_errors_that_share_a_code_answer_alike() -> None:
    """A code names one answer: where two refusals share one (a removed device is not found), their
    statuses agree."""
    statuses: dict[str, set[int]] = {}
    for kind in _catalogue():
        statuses.setdefault(kind.code, set()).add(status_of(kind.__new__(kind)))
    assert len(statuses) > 20
    assert {code: s for code, s in statuses.items() if len(s) > 1} == {}


def test_every_refusal_answers_with_a_client_or_unavailable_status() -> None:
    refusals = [kind for kind in _catalogue() if kind is not DomainError]
    statuses = {kind.__name__: status_of(kind.__new__(kind)) for kind in refusals}
    assert {name: s for name, s in statuses.items() if not (400 <= s < 500 or s == 503)} == {}
