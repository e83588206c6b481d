from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import SettingsError, load_settings, mask_secrets, nats_endpoint, postgres_endpoint


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


def test_start_up_waits_thirty_seconds_unless_told_otherwise() -> None:
    assert load_settings({}).startup_timeout == 30.0
    assert load_settings({"WATTLEDGER_STARTUP_TIMEOUT": "2"}).startup_timeout == 2.0
    with pytest.raises(SettingsError, match="WATTLEDGER_STARTUP_TIMEOUT"):
        load_settings({"WATTLEDGER_STARTUP_TIMEOUT": "forever"})


@pytest.mark.parametrize(
    ("env", "option"),
    [
        ({"DATABASE_URL": "mysql://user:topsecret@h/db"}, None),
        ({"DATABASE_URL": "host=h password=topsecret port"}, None),
        ({"DATABASE_URL": "password='top secret' host"}, None),
        ({"DATABASE_URL": "postgresql://u:x@h/db?password=topsecret&bogus=1"}, None),
        ({"NATS_URL": "http://wl:topsecret@h:4222"}, None),
        ({"NATS_URL": "topsecret@h:4222"}, None),
        ({}, "mysql://root:topsecret@db"),
    ],
)
def test_an_invalid_setting_never_shows_its_password(env: dict[str, str], option: str | None) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(env, database_url=option)
    message = str(error.value)
    assert "topsecret" not in message and "top secret" not in message
    assert "***" in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:topsecret@127.0.0.1:5432/db", "postgresql://u:***@127.0.0.1:5432/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("dbname=x password=topsecret host=h", "dbname=x password=*** host=h"),
        ("nats://topsecret@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("reconnecting to postgresql://user@host:5432/db", "reconnecting to postgresql://user@host:5432/db"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_mask_secrets_hides_passwords_and_tokens_only(text: str, shown: str) -> None:
    assert mask_secrets(text) == shown


def test_endpoints_name_host_and_port_without_credentials() -> None:
    assert postgres_endpoint("postgresql://u:topsecret@127.0.0.1:5999/db") == "127.0.0.1:5999"
    assert postgres_endpoint("host=/run/pg port=5433 password=topsecret") == "/run/pg:5433"
    assert postgres_endpoint("postgresql:///db") == "localhost:5432"
    assert nats_endpoint("nats://wl:topsecret@127.0.0.1:4999") == "127.0.0.1:4999"
    assert nats_endpoint("tls://nats.example") == "nats.example:4222"


def test_a_secret_key_is_taken_and_a_short_one_is_refused_without_showing_it() -> None:
    assert load_settings({}).secret_key is None
    assert load_settings({"WATTLEDGER_SECRET_KEY": "a box key long enough"}).secret_key == "a box key long enough"
    with pytest.raises(SettingsError) as error:
        load_settings({"WATTLEDGER_SECRET_KEY": "tooshort"})
    assert "WATTLEDGER_SECRET_KEY" in str(error.value) and "tooshort" not in str(error.value)


def test_no_proxy_header_is_believed_unless_proxies_are_named() -> None:
    assert load_settings({}).proxy_options() == {"proxy_headers": False, "forwarded_allow_ips": []}
    named = load_settings({"WATTLEDGER_TRUSTED_PROXIES": " 10.0.0.1, 192.168.0.7/24,::1 ,10.0.0.1/32"})
    assert named.trusted_proxies == ("10.0.0.1", "192.168.0.0/24", "::1")
    assert named.proxy_options() == {"proxy_headers": True, "forwarded_allow_ips": ["10.0.0.1", "192.168.0.0/24", "::1"]}


@pytest.mark.parametrize("text", ["*", "proxy.example.com", "10.0.0.0/33", "10.0.0.1,*"])
def test_a_trusted_proxy_must_be_an_address_or_network(text: str) -> None:
    with pytest.raises(SettingsError, match=r"^invalid WATTLEDGER_TRUSTED_PROXIES=[^\n]*$"):
        load_settings({"WATTLEDGER_TRUSTED_PROXIES": text})
