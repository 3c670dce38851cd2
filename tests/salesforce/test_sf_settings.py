"""SF_* settings: defaults, environment and .env, https only, auth-mode resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.errors import ConfigError
from worker.salesforce.settings import AuthMode, SalesforceSettings, check_auth_config

from .sfhelpers import settings

JWT = {"client_id": "3MVG9x", "username": "u@example.com", "private_key": "-----BEGIN..."}
CLIENT_CREDENTIALS = {
    "client_id": "3MVG9x",
    "client_secret": "s",
    "login_url": "https://acme.my.salesforce.com",
}
REFRESH = {"client_id": "3MVG9x", "refresh_token": "5Aep"}
TOKEN = {"instance_url": "https://acme.my.salesforce.com", "access_token": "00Dx!AQ"}
PASSWORD = {"client_id": "3MVG9x", "client_secret": "s", "username": "u@x.com", "password": "p"}


def test_defaults_match_the_documented_values() -> None:
    s = settings()
    assert s.api_version == "66.0"
    assert s.login_url == "https://login.salesforce.com"
    assert s.timeout == (10.0, 120.0)
    assert (s.api_reserve_percent, s.bulk_threshold, s.max_attempts) == (20.0, 10_000, 5)
    assert (s.retry_max_seconds, s.overlap_seconds, s.auth) == (120.0, 600, AuthMode.AUTO)


def test_every_field_is_described() -> None:
    missing = [n for n, f in SalesforceSettings.model_fields.items() if not f.description]
    assert missing == []


def test_reads_sf_variables_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_INSTANCE_URL", "https://acme.my.salesforce.com/")
    monkeypatch.setenv("SF_ACCESS_TOKEN", "00Dx!secret")
    monkeypatch.setenv("SF_READ_TIMEOUT", "30")
    s = SalesforceSettings()
    assert s.instance_url == "https://acme.my.salesforce.com"
    assert s.access_token is not None
    assert s.access_token.get_secret_value() == "00Dx!secret"
    assert s.read_timeout == 30.0


def test_reads_a_dotenv_file_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SF_API_VERSION=65.0\nSF_PASSWORD=\nOTHER=1\n")
    s = SalesforceSettings()
    assert s.api_version == "65.0"
    assert s.password is None  # an empty line means unset


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("instance_url", "http://acme.my.salesforce.com"),
        ("login_url", "http://login.salesforce.com"),
        ("instance_url", "acme.my.salesforce.com"),
        ("api_version", "66"),
        ("api_reserve_percent", 120),
    ],
)
def test_rejects_bad_values(name: str, value: object) -> None:
    with pytest.raises(ValidationError):
        settings(**{name: value})


def test_version_with_a_v_prefix_is_accepted() -> None:
    assert settings(api_version="v65.0").api_version == "65.0"


def test_secrets_do_not_show_in_repr() -> None:
    s = settings(**PASSWORD, security_token="tok123")
    text = repr(s) + str(s.model_dump())
    assert "tok123" not in text
    assert "'p'" not in text


@pytest.mark.parametrize(
    ("values", "mode"),
    [
        (JWT, AuthMode.JWT),
        (CLIENT_CREDENTIALS, AuthMode.CLIENT_CREDENTIALS),
        (REFRESH, AuthMode.REFRESH_TOKEN),
        (TOKEN, AuthMode.TOKEN),
        (PASSWORD, AuthMode.PASSWORD),
        ({**TOKEN, **JWT}, AuthMode.JWT),  # renewable first
    ],
)
def test_auto_picks_a_complete_mode(values: dict[str, str], mode: AuthMode) -> None:
    assert check_auth_config(settings(**values)) is mode


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({"auth": "jwt", "client_id": "x", "username": "u"}, "SF_PRIVATE_KEY_FILE"),
        ({"auth": "jwt", "client_id": "x", "private_key": "k"}, "SF_USERNAME"),
        ({"auth": "client_credentials", "client_id": "x"}, "SF_CLIENT_SECRET"),
        ({"auth": "refresh_token", "client_id": "x"}, "SF_REFRESH_TOKEN"),
        ({"auth": "token", "access_token": "t"}, "SF_INSTANCE_URL"),
        ({"auth": "token", "instance_url": "https://a.my.salesforce.com"}, "SF_ACCESS_TOKEN"),
        ({"auth": "password", "client_id": "x", "client_secret": "s"}, "SF_USERNAME"),
    ],
)
def test_an_incomplete_mode_names_the_missing_variable(
    values: dict[str, str], missing: str
) -> None:
    with pytest.raises(ConfigError, match=missing):
        check_auth_config(settings(**values))


def test_nothing_configured_lists_the_options() -> None:
    with pytest.raises(ConfigError, match="SF_CLIENT_ID"):
        check_auth_config(settings())


def test_client_credentials_need_a_my_domain_login_url() -> None:
    values = {
        **CLIENT_CREDENTIALS,
        "login_url": "https://login.salesforce.com",
        "auth": "client_credentials",
    }
    with pytest.raises(ConfigError, match="My Domain"):
        check_auth_config(settings(**values))


def test_jwt_key_file_must_exist(tmp_path: Path) -> None:
    values = {"client_id": "x", "username": "u", "private_key_file": str(tmp_path / "nope.pem")}
    with pytest.raises(ConfigError, match="SF_PRIVATE_KEY_FILE"):
        check_auth_config(settings(**values))
