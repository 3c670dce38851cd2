"""No secret in logs, errors or fixtures; the SOAP convertLead envelope and its parsing."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import requests
from structlog.testing import capture_logs

from worker.errors import AuthError, SalesforceError
from worker.logs import redact_secrets
from worker.ports import ApiUsage, ObjectQuery
from worker.salesforce.soap import (
    LeadConvertRequest,
    convert_lead_envelope,
    parse_convert_response,
    soap_error,
)
from worker.salesforce.source import SalesforceSource
from worker.salesforce.wiring import load_salesforce_settings
from worker.store import Store

from .fakeorg import FakeOrg
from .sfhelpers import FIXTURES, make_client
from .test_sf_sink import sink_for, task, update

SESSION_ID = re.compile(r"00D[A-Za-z0-9]{12,15}![A-Za-z0-9._-]{10,}")
BEARER = re.compile(r"Bearer\s+\S{8,}")


def test_fixtures_hold_no_tokens() -> None:
    files = [p for p in FIXTURES.rglob("*") if p.is_file()]
    assert len(files) >= 20
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not SESSION_ID.search(text), path
        assert not BEARER.search(text), path
        assert "refresh_token" not in text, path


def test_a_whole_cycle_logs_no_secret(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    client = make_client(org)
    token = client.settings.access_token.get_secret_value()  # type: ignore[union-attr]
    org.fail(kind="composite", status=503)  # so a retry is logged too
    with capture_logs() as logs:
        list(SalesforceSource(client).fetch([ObjectQuery("Opportunity", ("Name",))]))
        sink = sink_for(org)
        sink.write([update("Opportunity", opp, "k", NextStep="x"), task(opp, "t")])
        org.expire_sessions()
        with pytest.raises(AuthError) as info:
            sink.write([update("Opportunity", opp, "k2", NextStep="y")])
    text = repr(logs) + str(info.value)
    assert any(e["event"] == "salesforce.retry" for e in logs)
    assert token not in text
    assert not SESSION_ID.search(text)
    assert not BEARER.search(text)


def test_envelope_escapes_values_and_carries_the_session() -> None:
    xml = convert_lead_envelope(
        "00Dx!<&>",
        [
            LeadConvertRequest(
                "00Q000000000001AAA", "Closed - Converted", True, "Tom & Jerry <LLC>", None
            )
        ],
    )
    assert "<urn:sessionId>00Dx!&lt;&amp;&gt;</urn:sessionId>" in xml
    assert "<urn:opportunityName>Tom &amp; Jerry &lt;LLC&gt;</urn:opportunityName>" in xml
    assert "<urn:doNotCreateOpportunity>false</urn:doNotCreateOpportunity>" in xml
    assert "ownerId" not in xml  # unset values are left out
    no_opp = convert_lead_envelope("s", [LeadConvertRequest("00Q1", "X", False, "ignored")])
    assert "opportunityName" not in no_opp
    assert "<urn:doNotCreateOpportunity>true</urn:doNotCreateOpportunity>" in no_opp


def test_recorded_convert_response() -> None:
    results, usage = parse_convert_response((FIXTURES / "convertLead_response.xml").read_bytes())
    assert usage == ApiUsage(1203, 15000)
    ok, bad = results
    assert ok.success
    assert ok.opportunity_id == "006000000000009AAA"
    assert ok.account_id == "001000000000001AAA"
    assert not bad.success
    assert bad.lead_id is None
    assert [(e.code, e.message) for e in bad.errors] == [
        ("INVALID_STATUS", "invalid convertedStatus: Qualified")
    ]


def test_soap_fault_becomes_the_matching_error() -> None:
    response = requests.Response()
    response.status_code = 500
    response._content = (FIXTURES / "soap_fault_invalid_session.xml").read_bytes()
    err = soap_error(response)
    assert isinstance(err, AuthError)
    assert err.error_code == "INVALID_SESSION_ID"
    response._content = b"<html>not soap</html"
    assert soap_error(response).error_code is None


def test_soap_session_rejected_without_renewal(org: FakeOrg) -> None:
    lead = org.add("Lead", LastName="L", Company="Acme")
    from worker.actions import ConvertLead
    from worker.records import RecordRef

    sink = sink_for(org)
    sink.current_state([RecordRef("Lead", lead)])
    org.expire_sessions()

    from .test_sf_sink import META

    with pytest.raises(AuthError, match="cannot be renewed"):
        sink.write(
            [
                ConvertLead(
                    **META, target=RecordRef("Lead", lead), key="c", converted_status="Qualified"
                )
            ]
        )


def test_non_xml_soap_answer_is_an_error() -> None:
    with pytest.raises(SalesforceError, match="not XML"):
        parse_convert_response(b"oops")


def test_soap_call_renews_an_expired_session_and_rebuilds_the_envelope(
    org: FakeOrg, rsa_keys: tuple[bytes, bytes]
) -> None:
    from worker.actions import ConvertLead, Outcome
    from worker.records import RecordRef
    from worker.salesforce.sink import SalesforceSink

    from .test_sf_auth import oauth_client
    from .test_sf_sink import META

    private, public = rsa_keys
    org.credentials.jwt_public_key = public
    client = oauth_client(org, username=org.credentials.username, private_key=private.decode())
    lead = org.add("Lead", LastName="L", Company="Acme")
    sink = SalesforceSink(client)
    sink.current_state([RecordRef("Lead", lead)])
    org.expire_sessions()
    action = ConvertLead(
        **META, target=RecordRef("Lead", lead), key="c", converted_status="Qualified"
    )
    (result,) = sink.write([action])
    assert result.outcome is Outcome.APPLIED
    assert len(org.oauth_requests) == 2
    assert org.calls_by_kind["soap"] == 2  # the fault, then the replay with the new session


def test_configured_secret_values_are_scrubbed_from_log_events_and_stored_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {
        "SF_CLIENT_SECRET": "client+secret/value=",
        "SF_PASSWORD": "hunter2 hunter2",
        "SF_SECURITY_TOKEN": "SECTOKEN123",
        "SF_REFRESH_TOKEN": "5Aep861refresh",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    load_salesforce_settings()  # registers the secret values, once
    echo = (
        "proxy: bad request client_secret=client%2Bsecret%2Fvalue%3D&password=hunter2+hunter2"
        "SECTOKEN123&refresh_token=5Aep861refresh (raw: client+secret/value=)"
    )
    event = redact_secrets(None, "error", {"event": "run.stopped", "message": echo})
    with Store.memory() as store:
        store.begin_run("r1", "run", dt.date(2026, 11, 23), dt.datetime.now(dt.UTC))
        store.finish_run("r1", "stopped", {"stopped": echo}, dt.datetime.now(dt.UTC))
        stored = repr(store.runs())
    for text in (str(event), stored):
        assert "proxy: bad request" in text
        for value in (*values.values(), "client%2Bsecret%2Fvalue%3D", "hunter2+hunter2"):
            assert value not in text
