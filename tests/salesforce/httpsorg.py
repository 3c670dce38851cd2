"""A :class:`~.fakeorg.FakeOrg` served over real HTTPS on 127.0.0.1, for end-to-end tests of
the real CLI in a subprocess.

Each incoming request becomes a ``requests.PreparedRequest`` (method, full URL, headers,
body) handed to the org's own router (``FakeOrg._handle``, or ``_oauth`` for the token
endpoint) under one lock, and its ``(status, headers, body)`` is sent back. Faults injected
with :meth:`FakeOrg.fail` work as they do under ``responses``: an HTTP error is answered;
an ``exception`` fault (nothing applied) or a ``drop`` fault (applied, answer lost) closes
the connection without an answer, which is what the client then sees.

A throwaway self-signed certificate for IP 127.0.0.1 is made in a temporary folder; the
worker trusts it through ``REQUESTS_CA_BUNDLE=<server.ca_bundle>``.

:attr:`HttpsOrg.latency` holds every answer back that many seconds (a slow org, a long
way away); :attr:`HttpsOrg.after_write` runs right after a write request was applied and before its
answer is sent (e.g. to SIGKILL the client at that instant); if it returns True the answer
is not sent and the connection is closed.

Usage::

    with HttpsOrg(FakeOrg(), tmp_path) as server:
        env = {"SF_INSTANCE_URL": server.url, "REQUESTS_CA_BUNDLE": str(server.ca_bundle), ...}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .fakeorg import LIMIT_HEADER, FakeOrg, _kind, is_write_request

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Call:
    """One request the server answered (or dropped)."""

    method: str
    path: str
    kind: str
    write: bool  # see fakeorg.is_write_request
    status: int | None  # None: no answer was sent
    body: bytes = field(default=b"", repr=False)

    def subrequest_methods(self) -> list[str]:
        """The methods of a composite's subrequests ([] for anything else)."""
        if self.kind != "composite":
            return []
        try:
            subs = json.loads(self.body or b"{}").get("compositeRequest") or []
        except (ValueError, AttributeError):
            return []
        return [str(s.get("method", "GET")).upper() for s in subs]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem): a self-signed CA-capable certificate for IP 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sop-worker test org")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class _Drop(Exception):
    """Close the connection without an answer."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: HttpsOrg

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that rejects the certificate, or one killed mid-request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Salesforce
    timeout = 60  # an idle keep-alive connection is closed after this
    server: _Server

    def setup(self) -> None:
        owner = self.server.owner
        self.request = owner.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet

    def _serve(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, headers, payload = owner.dispatch(
                self.command, self.path, dict(self.headers.items()), body
            )
        except _Drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        try:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away (e.g. killed)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


class HttpsOrg:
    """Serve one FakeOrg over HTTPS on 127.0.0.1 (random port) in background threads."""

    def __init__(self, org: FakeOrg, cert_dir: Path) -> None:
        self.org = org
        self.cert, self.key = make_certificate(cert_dir)
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.load_cert_chain(self.cert, self.key)
        self.lock = threading.RLock()
        self.calls: list[Call] = []
        self.after_write: Callable[[Call], bool | None] | None = None
        self.latency = 0.0  # seconds added to each request before it is handled
        self._httpd = _Server((HOST, 0), _Handler)
        self._httpd.owner = self
        self.port = int(self._httpd.server_address[1])
        self.url = f"https://{HOST}:{self.port}"
        # The org answers on this URL (instance, login and My Domain alike).
        org.instance_url = org.login_url = org.credentials.my_domain = self.url
        self._thread: threading.Thread | None = None

    @property
    def ca_bundle(self) -> Path:
        return self.cert

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> HttpsOrg:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HttpsOrg:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- accounting ------------------------------------------------------------------------------
    def writes(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.write]

    def reset_calls(self) -> None:
        with self.lock:
            self.calls.clear()

    # -- one request ----------------------------------------------------------------------------
    def dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], str | bytes]:
        """Route one request to the org; raise _Drop to answer nothing."""
        if self.latency:
            time.sleep(self.latency)
        prepared = requests.Request(
            method, self.url + target, headers=headers, data=body or None
        ).prepare()
        path = urlsplit(target).path
        write = is_write_request(method, path, body)
        kind = "oauth" if "/oauth2/token" in path else _kind(method, path)
        with self.lock:
            try:
                if kind == "oauth":
                    status, out_headers, payload = self.org._oauth(prepared)
                else:
                    status, out_headers, payload = self.org._handle(prepared)
            except requests.RequestException:
                # An injected fault: ConnectionError (nothing applied) or ReadTimeout
                # (``drop``: applied, answer lost). Either way the client gets no answer.
                self.calls.append(Call(method, path, kind, write, None, body))
                raise _Drop from None
            call = Call(method, path, kind, write, status, body)
            self.calls.append(call)
            hook = self.after_write if write else None
        if hook is not None and hook(call):
            raise _Drop
        out = dict(out_headers)
        if LIMIT_HEADER in out:
            # Usage as of the answer: a hook may have spent the allowance meanwhile.
            with self.lock:
                out[LIMIT_HEADER] = self.org.limit_info()
        return status, out, payload
