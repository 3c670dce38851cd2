"""Lead conversion, merges and undeletes through the SOAP partner API: the only API with
``convertLead`` and ``merge`` (REST has neither; ``undelete`` goes with merge, to undo it).

simple-salesforce has no helper for them, so this module builds the envelopes (``POST /services/Soap/u/<version>``, the session id in
``SessionHeader``, ``AssignmentRuleHeader`` with ``useDefaultRule`` false so no assignment
rule runs on what the call writes, every value XML-escaped) and parses the answers: one
result per request in request order (``LeadConvertResult``, ``MergeResult``,
``UndeleteResult``), and the ``LimitInfoHeader``
that carries API usage on SOAP calls. A SOAP fault (HTTP 500) is turned into the same
error classes as REST errors, by its ``exceptionCode``.

The response is parsed with ElementTree: Python's expat refuses entity-expansion attacks,
and the body comes from the org over TLS.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import requests

from worker.errors import SalesforceError
from worker.ports import ApiUsage
from worker.salesforce.errors import RecordFailure, error_for
from worker.salesforce.soql import identifier

if TYPE_CHECKING:
    from worker.salesforce.client import SalesforceClient

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_NS = "urn:partner.soap.sforce.com"
FAULT_NS = "urn:fault.partner.soap.sforce.com"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SOBJECT_NS = "urn:sobject.partner.soap.sforce.com"
MERGEABLE = ("Lead", "Contact", "Account")  # the objects merge() takes
MERGE_MAX_RECORDS = 3  # per MergeRequest, the master included
MERGE_REQUESTS_PER_CALL = 200
UNDELETES_PER_CALL = 200
_NS = {"soapenv": SOAP_NS, "p": PARTNER_NS, "sf": FAULT_NS}


@dataclass(frozen=True)
class LeadConvertRequest:
    lead_id: str
    converted_status: str
    create_opportunity: bool = True
    opportunity_name: str | None = None
    owner_id: str | None = None


@dataclass(frozen=True)
class LeadConvertResult:
    lead_id: str | None
    success: bool
    account_id: str | None = None
    contact_id: str | None = None
    opportunity_id: str | None = None
    errors: tuple[RecordFailure, ...] = ()


def soap_path(api_version: str) -> str:
    return f"/services/Soap/u/{api_version}"


def soap_call(
    client: SalesforceClient, operation: str, body_factory: Callable[[str], str]
) -> requests.Response:
    """POST one SOAP ``operation`` (convertLead, merge, undelete): never resent on a lost
    answer (it is not idempotent), a fault raised as the SalesforceError it names."""
    return client.request(
        "POST",
        soap_path(client.api_version),
        kind="soap",
        body_factory=body_factory,
        headers={
            "Content-Type": "text/xml; charset=UTF-8",
            "SOAPAction": operation,
            "Accept": "text/xml",
        },
        idempotent=False,
        error_parser=soap_error,
    )


def _element(name: str, value: str | bool | None) -> str:
    if value is None:
        return ""
    text = ("true" if value else "false") if isinstance(value, bool) else escape(value)
    return f"<urn:{name}>{text}</urn:{name}>"


def convert_lead_envelope(session_id: str, converts: Sequence[LeadConvertRequest]) -> str:
    """The ``convertLead`` request. Elements follow the partner WSDL's sequence order."""
    items = []
    for c in converts:
        items.append(
            "<urn:leadConverts>"
            + _element("convertedStatus", c.converted_status)
            + _element("doNotCreateOpportunity", not c.create_opportunity)
            + _element("leadId", c.lead_id)
            + _element("opportunityName", c.opportunity_name if c.create_opportunity else None)
            + _element("overwriteLeadSource", False)
            + _element("ownerId", c.owner_id)
            + _element("sendNotificationEmail", False)
            + "</urn:leadConverts>"
        )
    return _envelope(session_id, "convertLead", "".join(items))


def _envelope(session_id: str, call: str, body: str) -> str:
    """A partner API call with the session, and no assignment rule run on what it writes."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:urn="{PARTNER_NS}" '
        f'xmlns:urn1="{SOBJECT_NS}" xmlns:xsi="{XSI_NS}">'
        "<soapenv:Header><urn:SessionHeader>"
        f"<urn:sessionId>{escape(session_id)}</urn:sessionId>"
        "</urn:SessionHeader>"
        "<urn:AssignmentRuleHeader><urn:useDefaultRule>false</urn:useDefaultRule>"
        "</urn:AssignmentRuleHeader></soapenv:Header>"
        f"<soapenv:Body><urn:{call}>{body}</urn:{call}></soapenv:Body>"
        "</soapenv:Envelope>"
    )


@dataclass(frozen=True)
class MergeRequest:
    """One ``MergeRequest``: the master (with the values the merge sets on it) and the one
    or two records merged into it."""

    sobject: str
    master_id: str
    victim_ids: tuple[str, ...]
    master_values: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeResult:
    master_id: str | None
    success: bool
    merged_ids: tuple[str, ...] = ()
    updated_related_ids: tuple[str, ...] = ()
    errors: tuple[RecordFailure, ...] = ()


def _sobject_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def merge_envelope(session_id: str, requests_: Sequence[MergeRequest]) -> str:
    """The ``merge`` request: each ``masterRecord`` an sObject (type, Id, the values to
    set; ``fieldsToNull`` for the ones to clear), then ``recordToMergeIds``."""
    items = []
    for r in requests_:
        if not 1 <= len(r.victim_ids) <= MERGE_MAX_RECORDS - 1:
            raise ValueError(f"a merge request takes 1 or 2 records besides the master: {r}")
        nulls = "".join(
            f"<urn1:fieldsToNull>{escape(k)}</urn1:fieldsToNull>"
            for k, v in r.master_values.items()
            if v is None or v == ""
        )
        values = "".join(
            f"<{identifier(k)}>{_sobject_value(v)}</{k}>"
            for k, v in r.master_values.items()
            if v is not None and v != ""
        )
        items.append(
            '<urn:request><urn:masterRecord xsi:type="urn1:sObject">'
            f"<urn1:type>{escape(r.sobject)}</urn1:type>{nulls}"
            f"<urn1:Id>{escape(r.master_id)}</urn1:Id>{values}</urn:masterRecord>"
            + "".join(
                f"<urn:recordToMergeIds>{escape(v)}</urn:recordToMergeIds>" for v in r.victim_ids
            )
            + "</urn:request>"
        )
    return _envelope(session_id, "merge", "".join(items))


def undelete_envelope(session_id: str, ids: Sequence[str]) -> str:
    return _envelope(
        session_id, "undelete", "".join(f"<urn:ids>{escape(i)}</urn:ids>" for i in ids)
    )


def _errors(node: ET.Element) -> tuple[RecordFailure, ...]:
    return tuple(
        RecordFailure(
            code=_text(err, "statusCode") or "UNKNOWN_ERROR",
            message=_text(err, "message") or "",
            fields=tuple(f.text or "" for f in err.findall("p:fields", _NS)),
        )
        for err in node.findall("p:errors", _NS)
    )


def parse_merge_response(content: bytes) -> tuple[list[MergeResult], ApiUsage | None]:
    """The ``MergeResult`` of each request in request order, and the API usage."""
    root = _parse(content)
    results = [
        MergeResult(
            master_id=_text(node, "id"),
            success=_text(node, "success") == "true",
            merged_ids=tuple(n.text or "" for n in node.findall("p:mergedRecordIds", _NS)),
            updated_related_ids=tuple(
                n.text or "" for n in node.findall("p:updatedRelatedIds", _NS)
            ),
            errors=_errors(node),
        )
        for node in root.iterfind(".//p:mergeResponse/p:result", _NS)
    ]
    return results, _usage(root)


def parse_undelete_response(
    content: bytes,
) -> tuple[list[tuple[str | None, bool, tuple[RecordFailure, ...]]], ApiUsage | None]:
    """(id, success, errors) of each ``UndeleteResult`` in request order, and the usage."""
    root = _parse(content)
    results = [
        (_text(node, "id"), _text(node, "success") == "true", _errors(node))
        for node in root.iterfind(".//p:undeleteResponse/p:result", _NS)
    ]
    return results, _usage(root)


def _text(node: ET.Element, name: str) -> str | None:
    child = node.find(f"p:{name}", _NS)
    if child is None or child.get(f"{{{XSI_NS}}}nil") == "true":
        return None
    return child.text or None


def _parse(content: bytes) -> ET.Element:
    try:
        return ET.fromstring(content)  # noqa: S314 - see the module docstring
    except ET.ParseError:
        raise SalesforceError("SOAP response is not XML") from None


def parse_convert_response(content: bytes) -> tuple[list[LeadConvertResult], ApiUsage | None]:
    """The results in request order, and the API usage from ``LimitInfoHeader``."""
    root = _parse(content)
    results = []
    for node in root.iterfind(".//p:convertLeadResponse/p:result", _NS):
        errors = _errors(node)
        results.append(
            LeadConvertResult(
                lead_id=_text(node, "leadId"),
                success=_text(node, "success") == "true",
                account_id=_text(node, "accountId"),
                contact_id=_text(node, "contactId"),
                opportunity_id=_text(node, "opportunityId"),
                errors=errors,
            )
        )
    return results, _usage(root)


def _usage(root: ET.Element) -> ApiUsage | None:
    for info in root.iterfind(".//p:LimitInfoHeader/p:limitInfo", _NS):
        if (_text(info, "type") or "") == "API REQUESTS":
            try:
                return ApiUsage(
                    used=int(_text(info, "current") or 0), limit=int(_text(info, "limit") or 0)
                )
            except ValueError:
                return None
    return None


def soap_error(response: requests.Response) -> SalesforceError:
    """A SOAP fault as the same error classes REST failures get."""
    code: str | None = None
    message = f"HTTP {response.status_code}"
    try:
        root = ET.fromstring(response.content)  # noqa: S314 - see the module docstring
    except ET.ParseError:
        root = None
    if root is not None:
        fault = root.find(".//soapenv:Fault", _NS)
        if fault is not None:
            exception_code = fault.find(".//sf:exceptionCode", _NS)
            faultcode = fault.findtext("faultcode") or ""
            code = (
                exception_code.text
                if exception_code is not None and exception_code.text
                else faultcode.split(":")[-1] or None
            )
            message = fault.findtext("faultstring") or message
    return error_for(
        status=response.status_code,
        error_code=code,
        message=message,
        url=soap_path("").rstrip("/"),
    )
