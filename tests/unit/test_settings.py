from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import SettingsError, load_settings


def test_defaults_match_the_documented_ones() -> None:
    settings = load_settings({})
    assert (settings.port, settings.polling_interval, settings.data_dir) == (5272, 60.0, Path("data"))
    assert settings.embedded


def test_command_line_options_override_the_environment() -> None:
    settings = load_settings({"WATTLEDGER_PORT": "8000"}, port="9000", polling_interval="1")
    assert (settings.port, settings.polling_interval) == (9000, 1.0)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"WATTLEDGER_PORT": "abc"}, "WATTLEDGER_PORT"),
        ({"WATTLEDGER_PORT": "70000"}, "WATTLEDGER_PORT"),
        ({"WATTLEDGER_POLLING_INTERVAL": "0.2"}, "WATTLEDGER_POLLING_INTERVAL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"NATS_URL": "127.0.0.1:4222"}, "NATS_URL"),
        ({"WATTLEDGER_DISCOVERY_TARGET": "everywhere"}, "WATTLEDGER_DISCOVERY_TARGET"),
        ({"WATTLEDGER_TIMEZONE": "Mars/Olympus"}, "WATTLEDGER_TIMEZONE"),
    ],
)
def test_an_invalid_setting_is_named_in_one_line(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(env)
    message = str(error.value)
    assert name in message and "\n" not in message
