"""Browser tests drive Debian's Chromium through Playwright against the app served on loopback.

Without Chromium they skip, saying why; under CI (`WATTLEDGER_CI=1`, set by `.ci/run`) they fail
instead, so a CI machine never passes them by not running them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("WATTLEDGER_CHROMIUM", "/usr/bin/chromium"))
IN_CI = os.environ.get("WATTLEDGER_CI") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists() or IN_CI:
        return
    reason = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set WATTLEDGER_CHROMIUM)"
    for item in items:
        if "chromium_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"WATTLEDGER_CI is set and there is no Chromium at {CHROMIUM}")
    return CHROMIUM
