"""Getting (and renewing) a Salesforce session: one :class:`Authenticator` per auth mode.

Every OAuth flow is one POST to ``<SF_LOGIN_URL>/services/oauth2/token``; the answer
carries the access token and the instance URL the worker must talk to. We send those
POSTs ourselves through the gateway's ``requests.Session`` rather than through
``simple_salesforce.SalesforceLogin`` because that helper takes no timeout, builds the
token URL from a ``domain`` word (``https://{domain}.salesforce.com``) and drops the
scheme from the instance URL; the wire format is the same.

- ``token``: a ready access token + instance URL; cannot be renewed.
- ``jwt``: a JWT signed with the app's private key (RS256), ``grant_type`` jwt-bearer.
- ``client_credentials``: consumer key + secret against the org's My Domain.
- ``refresh_token``: a stored refresh token. If Salesforce rotates it (the answer holds
  a new one) the old one is dead: the new one is handed to ``store_refresh_token``, and
  without such a store authentication fails, since the next run could not log in.
- ``password``: the legacy username-password flow (Salesforce is retiring it).

The token never leaves :class:`Grant` unmasked except to build a request header.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import requests
import structlog
from pydantic import SecretStr

from worker import schema
from worker.errors import AuthError, ConfigError
from worker.records import id18
from worker.salesforce.errors import certificate_rejected, parse_error_body, untrusted_certificate
from worker.salesforce.settings import (
    AuthMode,
    SalesforceSettings,
    check_auth_config,
    require_https,
)

log = structlog.get_logger(__name__)

TOKEN_ENDPOINT = "/services/oauth2/token"  # noqa: S105 - a URL path, not a secret
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME = dt.timedelta(minutes=3)  # Salesforce accepts at most 3 minutes


@dataclass(frozen=True)
class Grant:
    """A usable session: the bearer token and the org URL it is valid for, and, when the
    token response said (its ``id``, the identity URL ``.../id/<org Id>/<user Id>``), the
    org and user it belongs to; ``username`` when the flow signs in by name."""

    access_token: SecretStr
    instance_url: str
    mode: AuthMode
    org_id: str | None = None
    user_id: str | None = None
    username: str | None = None


class Authenticator(Protocol):
    """Obtains a session; ``renewable`` says whether calling again yields a fresh one."""

    mode: AuthMode
    renewable: bool

    def authenticate(self, http: requests.Session) -> Grant: ...


class StaticTokenAuthenticator:
    """``SF_ACCESS_TOKEN`` + ``SF_INSTANCE_URL``: used as is, never renewed."""

    mode = AuthMode.TOKEN
    renewable = False

    def __init__(self, access_token: SecretStr, instance_url: str) -> None:
        self._grant = Grant(
            access_token, require_https(instance_url, "SF_INSTANCE_URL"), AuthMode.TOKEN
        )

    def authenticate(self, http: requests.Session) -> Grant:
        return self._grant


class OAuthAuthenticator:
    """Any of the OAuth token-endpoint flows (JWT, client credentials, refresh, password)."""

    renewable = True

    def __init__(
        self,
        settings: SalesforceSettings,
        mode: AuthMode,
        *,
        store_refresh_token: Callable[[str], None] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        if mode in (AuthMode.AUTO, AuthMode.TOKEN):
            raise ValueError(f"OAuthAuthenticator does not handle {mode.value}")
        self.mode: AuthMode = mode
        self._settings = settings
        self._store_refresh_token = store_refresh_token
        self._refresh_token = settings.refresh_token
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    @property
    def token_url(self) -> str:
        return self._settings.login_url + TOKEN_ENDPOINT

    def authenticate(self, http: requests.Session) -> Grant:
        data, headers = self._request_body()
        try:
            response = http.post(
                self.token_url, data=data, headers=headers, timeout=self._settings.timeout
            )
        except requests.RequestException as exc:
            if certificate_rejected(exc):
                raise untrusted_certificate(self.token_url) from None
            # The exception text of a failed POST can carry the form body; keep its type only.
            raise AuthError(
                f"cannot reach {self.token_url}: {type(exc).__name__}", url=self.token_url
            ) from None
        body = _json_or_none(response)
        if response.status_code != 200 or not isinstance(body, Mapping):
            code, message, _ = parse_error_body(body if body is not None else response.content)
            raise AuthError(
                f"{self.mode.value} login refused: {message or 'no error description'}",
                status=response.status_code,
                error_code=code,
                url=self.token_url,
            )
        token = body.get("access_token")
        instance = body.get("instance_url")
        if not isinstance(token, str) or not isinstance(instance, str):
            raise AuthError(
                "token response has no access_token/instance_url", status=response.status_code
            )
        try:
            instance = require_https(instance, "instance_url (token response)")
        except ValueError as exc:
            raise AuthError(str(exc)) from None
        self._handle_rotation(body.get("refresh_token"))
        log.info("salesforce.auth", mode=self.mode.value, instance=urlsplit(instance).netloc)
        org_id, user_id = identity_ids(body.get("id"))
        by_name = self.mode in (AuthMode.JWT, AuthMode.PASSWORD)
        return Grant(
            SecretStr(token),
            instance,
            self.mode,
            org_id=org_id,
            user_id=user_id,
            username=self._settings.username if by_name else None,
        )

    # -- flows ---------------------------------------------------------------------------
    def _request_body(self) -> tuple[dict[str, str], dict[str, str]]:
        s = self._settings
        client_id = s.client_id or ""
        if self.mode is AuthMode.JWT:
            return {"grant_type": JWT_GRANT, "assertion": self._jwt_assertion()}, {}
        if self.mode is AuthMode.CLIENT_CREDENTIALS:
            return {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": _reveal(s.client_secret),
            }, {}
        if self.mode is AuthMode.REFRESH_TOKEN:
            data = {
                "grant_type": "refresh_token",
                "client_id": client_id,
                "refresh_token": _reveal(self._refresh_token),
            }
            if s.client_secret is not None:
                data["client_secret"] = _reveal(s.client_secret)
            return data, {}
        # AuthMode.PASSWORD: legacy; warn each time so it shows up in the logs.
        log.warning(
            "salesforce.auth_deprecated",
            mode=self.mode.value,
            hint="Salesforce is retiring the username-password flow; use JWT or client credentials",
        )
        return {
            "grant_type": "password",
            "client_id": client_id,
            "client_secret": _reveal(s.client_secret),
            "username": s.username or "",
            "password": _reveal(s.password) + _reveal(s.security_token),
        }, {}

    def _jwt_assertion(self) -> str:
        s = self._settings
        if s.private_key_file is not None:
            try:
                key = s.private_key_file.read_bytes()
            except OSError as exc:
                raise AuthError(f"cannot read SF_PRIVATE_KEY_FILE: {exc.strerror}") from None
        else:
            key = _reveal(s.private_key).encode()
        claims = {
            "iss": s.client_id,
            "sub": s.username,
            "aud": jwt_audience(s.login_url),
            "exp": int((self._clock() + JWT_LIFETIME).timestamp()),
        }
        try:
            return jwt.encode(claims, key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            # Never echo the key; say what kind of problem it is.
            raise AuthError(
                f"cannot sign the JWT with the private key: {type(exc).__name__}"
            ) from None

    def _handle_rotation(self, new_token: Any) -> None:
        if self.mode is not AuthMode.REFRESH_TOKEN or not isinstance(new_token, str):
            return
        if self._refresh_token is not None and new_token == self._refresh_token.get_secret_value():
            return
        if self._store_refresh_token is None:
            raise AuthError(
                "Salesforce rotated the refresh token and the old one is now invalid, but "
                "this worker has nowhere to keep the new one: turn off refresh token "
                "rotation for the app, or use JWT / client credentials"
            )
        self._store_refresh_token(new_token)
        self._refresh_token = SecretStr(new_token)
        log.info("salesforce.refresh_token_rotated", stored=True)


def identity_ids(identity_url: Any) -> tuple[str | None, str | None]:
    """(org Id, user Id) from an identity URL ``https://login.salesforce.com/id/<org>/<user>``;
    (None, None) when it is missing or not of that form."""
    if not isinstance(identity_url, str):
        return None, None
    parts = urlsplit(identity_url).path.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "id":
        return None, None
    return session_ids(parts[1], parts[2])


def session_ids(org_id: Any, user_id: Any) -> tuple[str | None, str | None]:
    """An org Id (``00D...``) and a user Id (``005...``) in their 18-character form, or
    (None, None) unless both are Ids of those kinds."""
    try:
        org, user = id18(str(org_id)), id18(str(user_id))
    except ValueError:
        return None, None
    if org.startswith(schema.ORGANIZATION_ID_PREFIX) and user.startswith(schema.USER_ID_PREFIX):
        return org, user
    return None, None


def jwt_audience(login_url: str) -> str:
    """The ``aud`` claim: the login server, never the My Domain (sandboxes use test)."""
    host = urlsplit(login_url).netloc.lower()
    if host == "test.salesforce.com" or ".sandbox." in host:
        return "https://test.salesforce.com"
    return "https://login.salesforce.com"


def build_authenticator(
    settings: SalesforceSettings, *, store_refresh_token: Callable[[str], None] | None = None
) -> Authenticator:
    """The authenticator the settings ask for (ConfigError when incomplete)."""
    mode = check_auth_config(settings)
    if mode is AuthMode.TOKEN:
        token, instance = settings.access_token, settings.instance_url
        if token is None or instance is None:  # check_auth_config guarantees both
            raise ConfigError("SF_AUTH=token needs SF_INSTANCE_URL and SF_ACCESS_TOKEN")
        return StaticTokenAuthenticator(token, instance)
    return OAuthAuthenticator(settings, mode, store_refresh_token=store_refresh_token)


def _reveal(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
