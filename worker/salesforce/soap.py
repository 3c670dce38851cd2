"""Lead conversion through the SOAP partner API: the only API that converts leads.

REST has no convertLead resource and simple-salesforce has no helper, so this module
builds the envelope (``POST /services/Soap/u/<version>``, the session id in
``SessionHeader``, ``AssignmentRuleHeader`` with ``useDefaultRule`` false so no assignment
rule runs on what the conversion writes, every value XML-escaped) and parses the answer: one
``LeadConvertResult`` per ``LeadConvert`` in request order, and the ``LimitInfoHeader``
that carries API usage on SOAP calls. A SOAP fault (HTTP 500) is turned into the same
error classes as REST errors, by its ``exceptionCode``.

The response is parsed with ElementTree: Python's expat refuses entity-expansion attacks,
and the body comes from the org over TLS.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

import requests

from worker.errors import SalesforceError
from worker.ports import ApiUsage
from worker.salesforce.errors import RecordFailure, error_for

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_NS = "urn:partner.soap.sforce.com"
FAULT_NS = "urn:fault.partner.soap.sforce.com"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
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
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:urn="{PARTNER_NS}">'
        "<soapenv:Header><urn:SessionHeader>"
        f"<urn:sessionId>{escape(session_id)}</urn:sessionId>"
        "</urn:SessionHeader>"
        "<urn:AssignmentRuleHeader><urn:useDefaultRule>false</urn:useDefaultRule>"
        "</urn:AssignmentRuleHeader></soapenv:Header>"
        "<soapenv:Body><urn:convertLead>" + "".join(items) + "</urn:convertLead></soapenv:Body>"
        "</soapenv:Envelope>"
    )


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
        errors = tuple(
            RecordFailure(
                code=_text(err, "statusCode") or "UNKNOWN_ERROR",
                message=_text(err, "message") or "",
                fields=tuple(f.text or "" for f in err.findall("p:fields", _NS)),
            )
            for err in node.findall("p:errors", _NS)
        )
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
