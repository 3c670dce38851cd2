"""Every auth mode against the fake org, re-authentication, HTTPS and CA bundles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jwt
import pytest
import responses
import tenacity
from structlog.testing import capture_logs

from worker.errors import AuthError, FatalApiError
from worker.ports import OrgIdentity
from worker.records import id18
from worker.salesforce.auth import OAuthAuthenticator, identity_ids, jwt_audience
from worker.salesforce.client import SalesforceClient
from worker.salesforce.settings import AuthMode
from worker.salesforce.source import SalesforceSource

from .fakeorg import INSTANCE, LOGIN, ORG_ID, USER_ID, FakeOrg
from .sfhelpers import Sleeps, make_client, settings


def oauth_client(org: FakeOrg, **values: Any) -> SalesforceClient:
    values.setdefault("client_id", org.credentials.client_id)
    return SalesforceClient(
        settings(api_version=org.api_version, **values), wait=tenacity.wait_none(), sleep=Sleeps()
    )


def ping(client: SalesforceClient) -> Any:
    return client.get_json(client.data_path("limits"), kind="limits")


def test_token_mode_uses_the_token_and_never_calls_oauth(org: FakeOrg) -> None:
    client = make_client(org)
    assert ping(client)["DailyApiRequests"]["Max"] == 15_000
    assert org.oauth_requests == []
    assert client.calls_by_kind() == {"limits": 1}  # a ready token takes no OAuth request
    assert client.api_calls() == 1


def test_jwt_bearer_signs_a_short_lived_assertion(
    org: FakeOrg, rsa_keys: tuple[bytes, bytes], tmp_path: Path
) -> None:
    private, public = rsa_keys
    org.credentials.jwt_public_key = public
    key_file = tmp_path / "server.key"
    key_file.write_bytes(private)
    client = oauth_client(org, username=org.credentials.username, private_key_file=str(key_file))
    ping(client)
    assert client.instance_url == INSTANCE  # from the token response
    (form,) = org.oauth_requests
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = jwt.decode(form["assertion"], public, algorithms=["RS256"], audience=LOGIN)
    assert claims["iss"] == org.credentials.client_id
    assert claims["sub"] == org.credentials.username
    lifetime = claims["exp"] - dt.datetime.now(dt.UTC).timestamp()
    assert 0 < lifetime <= 180


def test_jwt_with_an_inline_key(org: FakeOrg, rsa_keys: tuple[bytes, bytes]) -> None:
    private, public = rsa_keys
    org.credentials.jwt_public_key = public
    client = oauth_client(org, username=org.credentials.username, private_key=private.decode())
    ping(client)
    assert len(org.oauth_requests) == 1


def test_jwt_signed_with_the_wrong_key_is_refused(
    org: FakeOrg, rsa_keys: tuple[bytes, bytes]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, public = rsa_keys
    org.credentials.jwt_public_key = public
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    client = oauth_client(org, username=org.credentials.username, private_key=other.decode())
    with pytest.raises(AuthError) as info:
        ping(client)
    assert info.value.error_code == "invalid_grant"
    assert "authentication failure" in str(info.value)


@pytest.mark.parametrize(
    ("login", "audience"),
    [
        ("https://login.salesforce.com", "https://login.salesforce.com"),
        ("https://test.salesforce.com", "https://test.salesforce.com"),
        ("https://acme.my.salesforce.com", "https://login.salesforce.com"),
        ("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
    ],
)
def test_jwt_audience(login: str, audience: str) -> None:
    assert jwt_audience(login) == audience


def test_client_credentials_post_to_the_my_domain(org: FakeOrg) -> None:
    client = oauth_client(
        org, client_secret=org.credentials.client_secret, login_url=org.credentials.my_domain
    )
    ping(client)
    (form,) = org.oauth_requests
    assert form == {
        "grant_type": "client_credentials",
        "client_id": org.credentials.client_id,
        "client_secret": org.credentials.client_secret,
    }


def test_refresh_token_flow(org: FakeOrg) -> None:
    client = oauth_client(org, refresh_token=org.credentials.refresh_token)
    ping(client)
    assert org.oauth_requests[0]["grant_type"] == "refresh_token"


def test_a_rotated_refresh_token_without_a_store_stops(org: FakeOrg) -> None:
    org.rotate_refresh_tokens = True
    client = oauth_client(org, refresh_token=org.credentials.refresh_token)
    with pytest.raises(AuthError, match="rotated"):
        ping(client)


def test_a_rotated_refresh_token_is_handed_to_the_store(org: FakeOrg) -> None:
    org.rotate_refresh_tokens = True
    stored: list[str] = []
    s = settings(client_id=org.credentials.client_id, refresh_token=org.credentials.refresh_token)
    client = SalesforceClient(s, wait=tenacity.wait_none(), store_refresh_token=stored.append)
    ping(client)
    assert stored == [org.credentials.refresh_token]
    org.expire_sessions()
    ping(client)  # renewal uses the rotated token
    assert org.oauth_requests[1]["refresh_token"] == stored[0]


def test_password_flow_works_and_warns(org: FakeOrg) -> None:
    c = org.credentials
    client = oauth_client(
        org,
        client_secret=c.client_secret,
        username=c.username,
        password=c.password,
        security_token=c.security_token,
    )
    with capture_logs() as logs:
        ping(client)
    assert org.oauth_requests[0]["password"] == c.password + c.security_token
    assert any(e["event"] == "salesforce.auth_deprecated" for e in logs)


def test_wrong_password_is_an_auth_error_without_the_secret(org: FakeOrg) -> None:
    client = oauth_client(
        org, client_secret="wrong-secret-value", username="u@example.com", password="hunter2"
    )
    with pytest.raises(AuthError) as info:
        ping(client)
    text = str(info.value)
    assert "hunter2" not in text
    assert "wrong-secret-value" not in text
    assert info.value.status == 400


def test_an_http_instance_url_from_the_token_endpoint_is_refused(org: FakeOrg) -> None:
    s = settings(client_id="x", client_secret="y", login_url="https://acme.my.salesforce.com")
    with responses.RequestsMock() as mock:
        mock.post(
            "https://acme.my.salesforce.com/services/oauth2/token",
            json={"access_token": "00Dx!AQ", "instance_url": "http://acme.my.salesforce.com"},
        )
        with pytest.raises(AuthError, match="https"):
            OAuthAuthenticator(s, AuthMode.CLIENT_CREDENTIALS).authenticate(
                __import__("requests").Session()
            )


def test_expired_session_is_renewed_once_and_the_call_replayed(
    org: FakeOrg, rsa_keys: tuple[bytes, bytes]
) -> None:
    private, public = rsa_keys
    org.credentials.jwt_public_key = public
    client = oauth_client(org, username=org.credentials.username, private_key=private.decode())
    ping(client)
    org.expire_sessions()  # e.g. the admin revoked sessions mid-run
    with capture_logs() as logs:
        assert ping(client)["DailyApiRequests"]
    assert len(org.oauth_requests) == 2
    assert [e["event"] for e in logs if e["event"] != "salesforce.request"] == [
        "salesforce.reauth",
        "salesforce.auth",
    ]
    assert client.api_calls() == 3  # ok, 401, replay


def test_a_second_rejection_after_renewal_is_an_auth_error(
    org: FakeOrg, rsa_keys: tuple[bytes, bytes]
) -> None:
    private, public = rsa_keys
    org.credentials.jwt_public_key = public
    client = oauth_client(org, username=org.credentials.username, private_key=private.decode())
    org.fail(
        kind="limits",
        status=401,
        error_code="INVALID_SESSION_ID",
        message="Session expired or invalid",
        times=2,
    )
    with pytest.raises(AuthError) as info:
        ping(client)
    assert info.value.error_code == "INVALID_SESSION_ID"
    assert len(org.oauth_requests) == 2  # first login, one renewal, no more


def test_a_bare_token_cannot_be_renewed(org: FakeOrg) -> None:
    client = make_client(org)
    org.expire_sessions()
    with pytest.raises(AuthError, match="cannot be renewed"):
        ping(client)
    assert org.call_count == 1
    assert org.oauth_requests == []


def test_requests_honours_a_custom_ca_bundle_and_timeouts(
    org: FakeOrg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    client = make_client(org, connect_timeout=3, read_timeout=7)
    ping(client)
    assert org._mock is not None
    sent = org._mock.calls[-1].request
    assert sent.req_kwargs["verify"] == str(bundle)  # type: ignore[attr-defined]
    assert sent.req_kwargs["timeout"] == (3.0, 7.0)  # type: ignore[attr-defined]


# -- which org and user a session belongs to -----------------------------------------------------
def test_an_oauth_session_says_its_org_and_user_without_a_call(
    org: FakeOrg, rsa_keys: tuple[bytes, bytes]
) -> None:
    private, public = rsa_keys
    org.credentials.jwt_public_key = public
    client = oauth_client(org, username=org.credentials.username, private_key=private.decode())
    found = client.identity("ACME")
    assert found == OrgIdentity(ORG_ID, "ACME", USER_ID, org.credentials.username)
    assert client.api_calls() == 0  # from the token response's identity URL
    assert org.calls == []


def test_a_flow_that_signs_in_by_no_name_leaves_the_username_out(org: FakeOrg) -> None:
    client = oauth_client(
        org, client_secret=org.credentials.client_secret, login_url=org.credentials.my_domain
    )
    assert client.identity("ACME") == OrgIdentity(ORG_ID, "ACME", USER_ID, None)
    assert client.api_calls() == 0


def test_a_ready_token_asks_userinfo_once_and_counts_it(org: FakeOrg) -> None:
    client = make_client(org)
    source = SalesforceSource(client, org_name="ACME")
    found = source.identity()
    assert found == OrgIdentity(ORG_ID, "ACME", USER_ID, org.credentials.username)
    assert source.identity() is found  # asked once per run
    assert client.calls_by_kind() == {"identity": 1}
    assert source.api_calls() == client.api_calls() == 1
    assert org.calls_by_kind == {"userinfo": 1}


def test_an_answer_without_an_org_id_is_an_error(org: FakeOrg) -> None:
    client = make_client(org)
    org.fail(kind="userinfo", status=200, body={"user_id": USER_ID})
    with pytest.raises(FatalApiError, match="did not say which org"):
        client.identity("ACME")


@pytest.mark.parametrize(
    ("url", "ids"),
    [
        (f"{LOGIN}/id/{ORG_ID}/{USER_ID}", (ORG_ID, USER_ID)),
        (f"{LOGIN}/id/{ORG_ID[:15]}/{USER_ID[:15]}", (ORG_ID, id18(USER_ID[:15]))),
        (f"{LOGIN}/id/{USER_ID}/{ORG_ID}", (None, None)),
        ("not a url", (None, None)),
        (None, (None, None)),
    ],
)
def test_identity_urls(url: str | None, ids: tuple[str | None, str | None]) -> None:
    assert identity_ids(url) == ids
