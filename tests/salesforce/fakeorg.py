"""An in-memory Salesforce org behind ``responses``: the gateway's end-to-end test double.

It answers the REST resources the gateway uses with the real API's shapes:

- ``POST <login>/services/oauth2/token`` (JWT bearer, client credentials, refresh token,
  password), ``GET /services/data/`` (versions), ``/limits``;
- ``query``/``queryAll`` (SOQL parsed and checked by :mod:`fakesoql`; unknown fields,
  unfilterable long text and malformed SOQL are refused as Salesforce refuses them),
  paging through ``nextRecordsUrl`` every ``page_size`` rows;
- ``composite`` (at most 25 subrequests, 5 of them collections or queries), sObject
  Collections create/update/upsert with ``allOrNone`` semantics and per-record errors;
- ``sobjects`` (global describe) and ``sobjects/<Object>/describe``;
- ``sobjects/<Object>/updated`` and ``.../deleted`` (Get Updated / Get Deleted: the Ids
  stamped between two minutes, seconds ignored, 30 and 15 days back at most);
- ``actions/standard/emailSimple``, logging each email sent with ``logEmailOnSend`` on its
  ``relatedRecordId`` as Salesforce does: a completed Task (TaskSubtype ``Email``, Subject
  ``Email: <subject>``, the body in its Description) or, with ``enhanced_email``, an
  EmailMessage (the body in ``TextBody``) and a Task without the body as its activity;
  SOAP ``convertLead``; Bulk API 2.0 query jobs;
- ``process/approvals`` (actionType ``Submit``) against the approval processes a test
  defines with :meth:`FakeOrg.define_approval`: a record that fails the process's entry
  criteria is refused with ``NO_APPLICABLE_PROCESS``, one already pending with
  ``ALREADY_IN_PROCESS``; a submission leaves a Pending ``ProcessInstance`` and its Started
  ``ProcessInstanceStep`` holding the submitter's comments. The requests of a call that
  succeed are committed and the others answered with their error (per request in a 200 when
  the call held several; a call of one refused request is an HTTP 400 with the error list).

Assignment rules, as a production org runs them: :meth:`FakeOrg.assign` activates a rule
for Lead, Case or Account, and ``default_case_owner`` is the Support Settings' Default Case
Owner. Every REST create or update of such a record runs the rule unless its request says
``Sforce-Auto-Assign: FALSE`` (absent means TRUE); a Case with no active rule goes to the
Default Case Owner. A Composite subrequest is governed by its own ``httpHeaders`` only (it
inherits just ``Accept``, ``Authorization`` and ``Content-Type``, which it may not set).
With ``task_trigger_updates_case`` a Task written on a Case updates that Case (a trigger),
under the header of the Task's request. Each reassignment is kept in ``reassigned``.
SOAP calls run no assignment rule without an ``AssignmentRuleHeader``.

Every instance call is counted (``calls``, ``calls_by_kind``) and answered with a
``Sforce-Limit-Info`` header; when the daily allowance is spent it answers
``REQUEST_LIMIT_EXCEEDED``. Faults are injected with :meth:`FakeOrg.fail` (an HTTP error,
a connection error, or a response dropped after the write was applied) and
:meth:`FakeOrg.lock` (per-record ``UNABLE_TO_LOCK_ROW``); ``fail(write=True)`` hits only
calls that write (:func:`is_write_request`), not the reads that share their resource.

Use it as a context manager (it starts its own ``responses.RequestsMock``)::

    with FakeOrg() as org:
        org.add("Opportunity", Name="Acme", StageName="Prospecting")
        client = SalesforceClient(org.settings(), wait=tenacity.wait_none())
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import io
import itertools
import json
import re
import secrets
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit
from xml.sax.saxutils import escape

import jwt
import requests
import responses

from worker.salesforce.settings import SalesforceSettings

from .fakesoql import Query, SoqlError, get_path, parse

INSTANCE = "https://fake-org.my.salesforce.com"
LOGIN = "https://login.salesforce.com"
ORG_ID = "00DFAKE000000012DA"  # 18 characters, as the identity URL and UserInfo give it
LIMIT_HEADER = "Sforce-Limit-Info"
USERINFO = "/services/oauth2/userinfo"
USER_ID = "005000000000000001"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_NS = "urn:partner.soap.sforce.com"

PREFIXES = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Opportunity": "006",
    "Lead": "00Q",
    "Task": "00T",
    "Event": "00U",
    "CaseComment": "00a",
    "EmailMessage": "02s",
    "Case": "500",
    "LeadStatus": "01J",
    "Group": "00G",
    "GroupMember": "011",
    "LeadHistory": "017",
    "OpportunityHistory": "008",
    "CampaignMember": "00v",
    "OpportunityContactRole": "00K",
    "Campaign": "701",
    "BusinessHours": "01m",
    "Holiday": "0C0",
    "ProcessDefinition": "04a",
    "ProcessInstance": "04g",
    "ProcessInstanceStep": "04h",
    "ProcessInstanceWorkitem": "04i",
    "SOP_Merge_Snapshot__c": "a0A",
}
APPROVAL_STATUSES = (
    "Approved",
    "Fault",
    "Held",
    "NoResponse",
    "Pending",
    "Reassigned",
    "Rejected",
    "Removed",
    "Started",
)


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str = "string"
    length: int = 255
    updateable: bool = True
    createable: bool = True
    filterable: bool = True
    external_id: bool = False
    unique: bool = False
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    relationship: str | None = None
    reference_to: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.name.replace("__c", "").replace("_", " "),
            "type": self.type,
            "length": self.length
            if self.type in ("string", "textarea", "picklist", "email")
            else 0,
            "updateable": self.updateable,
            "createable": self.createable,
            "filterable": self.filterable,
            "externalId": self.external_id,
            "unique": self.unique,
            "nillable": self.name != "Id",
            "custom": self.name.endswith("__c"),
            "restrictedPicklist": self.restricted,
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
                for v in self.picklist
            ],
            "relationshipName": self.relationship,
            "referenceTo": list(self.reference_to),
        }


def _f(name: str, type_: str = "string", **kw: Any) -> FieldDef:
    return FieldDef(name, type_, **kw)


def _ref(name: str, to: str | tuple[str, ...], rel: str | None = None) -> FieldDef:
    targets = (to,) if isinstance(to, str) else to
    return FieldDef(name, "reference", 18, relationship=rel, reference_to=targets)


def master_record(sobject: str) -> FieldDef:
    """``MasterRecordId``: on a record deleted by a merge, the record it was merged into."""
    return dataclasses.replace(
        _ref("MasterRecordId", sobject, "MasterRecord"), updateable=False, createable=False
    )


_SYSTEM = (
    _f("Id", "id", length=18, updateable=False, createable=False),
    _f("IsDeleted", "boolean", updateable=False, createable=False),
    _f("SystemModstamp", "datetime", updateable=False, createable=False),
    _f("CreatedDate", "datetime", updateable=False, createable=False),
    _f("LastModifiedDate", "datetime", updateable=False, createable=False),
)
# Where an object's system fields differ from those five (object reference): User, Group,
# GroupMember, BusinessHours and Holiday have no IsDeleted (users and business hours are
# deactivated, the others deleted for good: queryAll never returns them); GroupMember has
# Id, SystemModstamp and its two lookups only; a field-history object (LeadHistory) has
# CreatedDate but no SystemModstamp or LastModifiedDate, its rows never change.
NO_IS_DELETED = frozenset(
    {"User", "Group", "GroupMember", "BusinessHours", "Holiday", "ProcessInstanceStep"}
)
SYSTEM_OMITTED = {
    **{obj: frozenset({"IsDeleted"}) for obj in NO_IS_DELETED},
    "ProcessInstanceStep": frozenset({"IsDeleted", "LastModifiedDate"}),
    "GroupMember": frozenset({"IsDeleted", "CreatedDate", "LastModifiedDate"}),
    "LeadHistory": frozenset({"SystemModstamp", "LastModifiedDate"}),
}


def system_fields(sobject: str) -> tuple[FieldDef, ...]:
    omitted = SYSTEM_OMITTED.get(sobject, frozenset())
    return tuple(f for f in _SYSTEM if f.name not in omitted)


TASK_STATUSES = ("Not Started", "In Progress", "Completed")
TASK_DESCRIPTION_MAX = 32000
EMAIL_BODY_MAX = 32000  # EmailMessage TextBody / HtmlBody
# The picklist values whose CaseStatus / OpportunityStage / TaskStatus row has IsClosed: the
# record's read-only IsClosed follows its Status or StageName, as in a new org.
CLOSED_VALUES = {
    "Case": ("Status", ("Closed",)),
    "Opportunity": ("StageName", ("Closed Won", "Closed Lost")),
    "Task": ("Status", ("Completed",)),
}
CONVERTED_STATUSES = ("Closed - Converted", "Qualified")
METADATA = (
    Path(__file__).resolve().parents[2]
    / "salesforce"
    / "force-app"
    / "main"
    / "default"
    / "objects"
)
_MD = "{http://soap.sforce.com/2006/04/metadata}"


def standard_fields(*, out_of_box: bool = False) -> dict[str, tuple[FieldDef, ...]]:
    """The standard fields the worker reads and writes, per object.

    A standard picklist holds the values a new org has out of the box, then, unless
    ``out_of_box``, the values the demo org's admin added: those the default mapping expects
    (docs/salesforce.md, "Picklist values the mapping expects") and ``New Business``, an
    Opportunity type the tests use for records out of every rule's scope.
    """

    def values(standard: tuple[str, ...], added: tuple[str, ...] = ()) -> tuple[str, ...]:
        return standard if out_of_box else (*standard, *added)

    stages = values(
        (
            "Prospecting",
            "Qualification",
            "Needs Analysis",
            "Value Proposition",
            "Id. Decision Makers",
            "Perception Analysis",
            "Proposal/Price Quote",
            "Negotiation/Review",
            "Closed Won",
            "Closed Lost",
        ),
        ("Assessment Pending", "Assessment Scheduled"),
    )
    opportunity_types = values(
        (
            "Existing Customer - Upgrade",
            "Existing Customer - Replacement",
            "Existing Customer - Downgrade",
            "New Customer",
        ),
        ("New Business", "Payment", "Home Care"),
    )
    lead_statuses = values(
        (
            "Open - Not Contacted",
            "Working - Contacted",
            "Closed - Converted",
            "Closed - Not Converted",
        ),
        (
            "New Lead",
            "Contact Attempted",
            "Contact Successful - Pending Qualification",
            "Qualified",
            "No Response",
            "Do Not Contact",
        ),
    )
    case_statuses = values(("New", "Working", "Escalated", "Closed"), ("Homeowner Responded",))
    task_statuses = (*TASK_STATUSES, "Waiting on someone else", "Deferred")
    task_types = values(
        ("Call", "Email", "Meeting", "Other"), ("Customer Response", "Inbound Email")
    )
    # Standard values of a new org (Setup > Object Manager shows them).
    lead_sources = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")
    industries = (
        "Agriculture", "Apparel", "Banking", "Biotechnology", "Chemicals", "Communications",
        "Construction", "Consulting", "Education", "Electronics", "Energy", "Engineering",
        "Entertainment", "Environmental", "Finance", "Food & Beverage", "Government",
        "Healthcare", "Hospitality", "Insurance", "Machinery", "Manufacturing", "Media",
        "Not For Profit", "Other", "Recreation", "Retail", "Shipping", "Technology",
        "Telecommunications", "Transportation", "Utilities",
    )  # fmt: skip
    campaign_types = (
        "Advertisement", "Banner Ads", "Conference", "Direct Mail", "Email", "Partners",
        "Public Relations", "Referral Program", "Telemarketing", "Trade Show", "Webinar",
        "Other",
    )  # fmt: skip
    owner = _ref("OwnerId", "User", "Owner")
    return {
        "Account": (
            _f("Name"),
            _f("Phone", "phone", length=40),
            _f("Website", "url", length=255),
            _f("BillingCountry", length=80),
            owner,
            master_record("Account"),
        ),
        "Contact": (
            _f("FirstName"),
            _f("LastName"),
            _f("Name", updateable=False, createable=False),
            _f("Email", "email"),
            _f("Phone", "phone", length=40),
            _ref("AccountId", "Account", "Account"),
            master_record("Contact"),
            _f("DoNotCall", "boolean"),
            _f("HasOptedOutOfEmail", "boolean"),
        ),
        "User": (
            _f("Name"),
            _f("Email", "email"),
            _f("IsActive", "boolean"),
            _f("TimeZoneSidKey", "picklist", picklist=("America/Chicago", "America/New_York")),
            _ref("ManagerId", "User", "Manager"),
            _ref("UserRoleId", "UserRole", "UserRole"),
        ),
        "Group": (
            _f("Name"),
            _f("DeveloperName"),
            _f("Type", "picklist", picklist=("Regular", "Queue", "Role", "Organization")),
            _f("Email", "email"),
        ),
        "GroupMember": (
            _ref("GroupId", "Group", "Group"),
            _ref("UserOrGroupId", ("User", "Group"), "UserOrGroup"),
        ),
        "LeadHistory": (
            _ref("LeadId", "Lead", "Lead"),
            _f("Field", "picklist", picklist=("Status", "Owner", "created")),
            _f("DataType", "picklist", picklist=("Text", "EntityId", "DynamicEnum")),
            _f("OldValue", "anyType", filterable=False),
            _f("NewValue", "anyType", filterable=False),
        ),
        "OpportunityHistory": (
            _ref("OpportunityId", "Opportunity", "Opportunity"),
            _f("StageName", "picklist", picklist=stages, updateable=False, createable=False),
            _f("Amount", "currency", updateable=False, createable=False),
            _f("CloseDate", "date", updateable=False, createable=False),
            _f("Probability", "percent", updateable=False, createable=False),
        ),
        "Campaign": (
            _f("Name"),
            _f("IsActive", "boolean"),
            _f("Type", "picklist", picklist=campaign_types),
            _f(
                "Status",
                "picklist",
                picklist=("Planned", "In Progress", "Completed", "Aborted"),
            ),
            _f("BudgetedCost", "currency"),
            owner,
        ),
        # Approval history: read only (the process/approvals resource writes it).
        "ProcessInstance": (
            _ref("TargetObjectId", ("Opportunity", "Campaign", "Account"), "TargetObject"),
            _ref("ProcessDefinitionId", "ProcessDefinition", "ProcessDefinition"),
            _ref("SubmittedById", "User", "SubmittedBy"),
            _f(
                "Status",
                "picklist",
                picklist=APPROVAL_STATUSES,
                restricted=True,
                updateable=False,
                createable=False,
            ),
            _f("CompletedDate", "datetime", updateable=False, createable=False),
        ),
        "ProcessInstanceStep": (
            _ref("ProcessInstanceId", "ProcessInstance", "ProcessInstance"),
            _ref("ActorId", ("User", "Group"), "Actor"),
            _ref("OriginalActorId", ("User", "Group"), "OriginalActor"),
            _f(
                "StepStatus",
                "picklist",
                picklist=APPROVAL_STATUSES,
                restricted=True,
                updateable=False,
                createable=False,
            ),
            _f("Comments", length=4000, updateable=False, createable=False),
        ),
        "CampaignMember": (  # its lookups are set on create only (object reference)
            dataclasses.replace(_ref("CampaignId", "Campaign", "Campaign"), updateable=False),
            dataclasses.replace(_ref("LeadId", "Lead", "Lead"), updateable=False),
            dataclasses.replace(_ref("ContactId", "Contact", "Contact"), updateable=False),
            _f("Status", "picklist", picklist=("Sent", "Responded")),
            _f("HasResponded", "boolean", updateable=False, createable=False),
            _f("FirstRespondedDate", "date", updateable=False, createable=False),
        ),
        "OpportunityContactRole": (
            _ref("OpportunityId", "Opportunity", "Opportunity"),
            _ref("ContactId", "Contact", "Contact"),
            _f(
                "Role",
                "picklist",
                picklist=(
                    "Business User",
                    "Decision Maker",
                    "Economic Buyer",
                    "Economic Decision Maker",
                    "Evaluator",
                    "Executive Sponsor",
                    "Influencer",
                    "Technical Buyer",
                    "Other",
                ),
            ),
            _f("IsPrimary", "boolean"),
        ),
        "Event": (
            _f("Subject", "combobox"),
            _f(
                "Type",
                "picklist",
                picklist=values(
                    ("Call", "Email", "Meeting", "Other"),
                    ("Discovery Call", "Demo", "Proposal Review", "Kickoff"),
                ),
            ),
            _f("StartDateTime", "datetime"),
            _f("EndDateTime", "datetime"),
            _f("ActivityDateTime", "datetime"),
            _f("DurationInMinutes", "int"),
            _f("ShowAs", "picklist", picklist=("Busy", "OutOfOffice", "Free")),
            _ref("WhatId", ("Opportunity", "Account", "Case"), "What"),
            _ref("WhoId", ("Lead", "Contact"), "Who"),
            owner,
        ),
        "BusinessHours": (
            _f("Name"),
            _f("IsActive", "boolean"),
            _f("IsDefault", "boolean"),
            _f("TimeZoneSidKey", "picklist", picklist=("America/Chicago", "America/New_York")),
            *(
                _f(f"{day}{edge}Time", "time")
                for day in (
                    "Monday",
                    "Tuesday",
                    "Wednesday",
                    "Thursday",
                    "Friday",
                    "Saturday",
                    "Sunday",
                )
                for edge in ("Start", "End")
            ),
        ),
        "Holiday": (
            _f("Name"),
            _f("Description"),
            _f("ActivityDate", "date"),
            _f("IsAllDay", "boolean"),
            _f("StartTimeInMinutes", "int"),
            _f("EndTimeInMinutes", "int"),
            _f("IsRecurrence", "boolean"),
            _f("RecurrenceType", "picklist", picklist=("RecursYearly", "RecursYearlyNth")),
            _f("RecurrenceInterval", "int"),
            _f("RecurrenceDayOfWeekMask", "int"),
            _f("RecurrenceDayOfMonth", "int"),
            _f("RecurrenceInstance", "picklist", picklist=("First", "Fourth", "Last")),
            _f("RecurrenceMonthOfYear", "picklist", picklist=("July", "November", "December")),
            _f("RecurrenceStartDate", "date"),
            _f("RecurrenceEndDateOnly", "date"),
        ),
        "Opportunity": (
            _f("Name"),
            _f("StageName", "picklist", picklist=stages),
            _f("Type", "picklist", picklist=opportunity_types),
            _f("CloseDate", "date"),
            _f("Amount", "currency"),
            _f("NextStep"),
            _f("IsClosed", "boolean", updateable=False, createable=False),
            _ref("AccountId", "Account", "Account"),
            # The primary contact (API 46.0 and later), set from its OpportunityContactRole.
            _ref("ContactId", "Contact", "Contact"),
            owner,
        ),
        "Lead": (
            _f("FirstName"),
            _f("LastName"),
            _f("Phone", "phone", length=40),
            _f("MobilePhone", "phone", length=40),
            _f("Name", updateable=False, createable=False),
            _f("Company"),
            _f("Title", length=128),
            _f("Email", "email"),
            _f("LeadSource", "picklist", picklist=lead_sources),
            _f("Industry", "picklist", picklist=industries),
            _f("NumberOfEmployees", "int"),
            _f("AnnualRevenue", "currency"),
            _f("City"),
            _f("State", length=80),
            _f("Country", length=80),
            _f("PostalCode"),
            _f("DoNotCall", "boolean"),
            _f("HasOptedOutOfEmail", "boolean"),
            _f("Status", "picklist", picklist=lead_statuses, restricted=True),
            _f("IsConverted", "boolean", updateable=False, createable=False),
            _ref("ConvertedAccountId", "Account", "ConvertedAccount"),
            _ref("ConvertedContactId", "Contact", "ConvertedContact"),
            _ref("ConvertedOpportunityId", "Opportunity", "ConvertedOpportunity"),
            _ref("RecordTypeId", "RecordType", "RecordType"),
            _ref("OwnerId", ("User", "Group"), "Owner"),  # a user or a queue
            master_record("Lead"),
        ),
        "OutOfOffice": (
            _ref("UserId", "User", "User"),
            _f("StartDate", "datetime"),
            _f("EndDate", "datetime"),
            _f("IsEnabled", "boolean"),
            _f("Message", length=60),
        ),
        "LeadStatus": (
            _f("MasterLabel", updateable=False, createable=False),
            _f("IsConverted", "boolean", updateable=False, createable=False),
        ),
        "Case": (
            _f("Subject"),
            _f("CaseNumber", updateable=False, createable=False),
            _f("Status", "picklist", picklist=case_statuses),
            _f("IsClosed", "boolean", updateable=False, createable=False),
            _f("ContactEmail", "email", updateable=False, createable=False),
            _f("ContactPhone", "phone", length=40, updateable=False, createable=False),
            _ref("ContactId", "Contact", "Contact"),
            _ref("AccountId", "Account", "Account"),
            owner,
        ),
        "Task": (
            _f("Subject", "combobox"),
            _f("Description", "textarea", length=TASK_DESCRIPTION_MAX, filterable=False),
            _f("ActivityDate", "date"),
            _f("Status", "picklist", picklist=task_statuses, restricted=True),
            _f("Priority", "picklist", picklist=("High", "Normal", "Low")),
            _f("Type", "picklist", picklist=task_types),
            _f("TaskSubtype", "picklist", picklist=("Task", "Call", "Email"), updateable=False),
            _f("CallDisposition"),
            _f("CompletedDateTime", "datetime", updateable=False, createable=False),
            _f("ReminderDateTime", "datetime"),
            _f("IsReminderSet", "boolean"),
            _f("IsClosed", "boolean", updateable=False, createable=False),
            _ref("WhatId", ("Opportunity", "Account", "Case", "Campaign"), "What"),
            _ref("WhoId", ("Lead", "Contact"), "Who"),
            owner,
        ),
        "CaseComment": (
            _ref("ParentId", "Case", "Parent"),
            _f("CommentBody", "textarea", length=4000, filterable=False),
            _f("IsPublished", "boolean"),
        ),
        "EmailMessage": (
            _f("Subject", length=3000),
            _f("TextBody", "textarea", length=EMAIL_BODY_MAX, filterable=False),
            _f("HtmlBody", "textarea", length=EMAIL_BODY_MAX, filterable=False),
            _f("ToAddress", length=4000),
            _f("FromAddress", "email"),
            _f("Status", "picklist", picklist=("0", "1", "2", "3", "4", "5")),
            _f("Incoming", "boolean"),
            _f("MessageDate", "datetime"),
            _ref("RelatedToId", ("Account", "Case", "Opportunity"), "RelatedTo"),
            _ref("ActivityId", "Task", "Activity"),
        ),
    }


def metadata_fields(folder: Path = METADATA) -> dict[str, tuple[FieldDef, ...]]:
    """The custom fields shipped under salesforce/, as the org has them once deployed.
    (Activity fields appear on Task.)"""
    out: dict[str, list[FieldDef]] = {}
    for path in sorted(folder.glob("*/fields/*.field-meta.xml")):
        root = ET.parse(path).getroot()  # noqa: S314 - our own repository files

        def text(tag: str, root: ET.Element = root) -> str | None:
            node = root.find(_MD + tag)
            return node.text if node is not None else None

        kind = text("type") or "Text"
        name = text("fullName") or path.name.split(".")[0]
        values = tuple(v.text or "" for v in root.iter(_MD + "fullName") if v.text != name)
        sf_type, extra = {
            "Text": ("string", {"length": int(text("length") or 255)}),
            "LongTextArea": (
                "textarea",
                {"length": int(text("length") or 32000), "filterable": False},
            ),
            "Checkbox": ("boolean", {}),
            "Picklist": ("picklist", {"picklist": values, "restricted": True}),
            "Date": ("date", {}),
            "DateTime": ("datetime", {}),
            "Number": ("double", {}),
            "Currency": ("currency", {}),
            "Percent": ("percent", {}),
            "Lookup": (
                "reference",
                {
                    "relationship": (text("relationshipName") or "") + "__r",
                    "reference_to": (text("referenceTo") or "",),
                },
            ),
        }[kind]
        obj = path.parent.parent.name
        out.setdefault("Task" if obj == "Activity" else obj, []).append(
            FieldDef(
                name,
                sf_type,
                external_id=text("externalId") == "true",
                unique=text("unique") == "true",
                **extra,  # type: ignore[arg-type]
            )
        )
    return {k: tuple(v) for k, v in out.items()}


def default_schema() -> dict[str, dict[str, FieldDef]]:
    """Standard fields plus the custom fields deployed from salesforce/."""
    custom = metadata_fields()
    standard = standard_fields()
    objects = {**standard, **{obj: () for obj in custom if obj not in standard}}
    return {
        obj: {f.name: f for f in (*system_fields(obj), *fields, *custom.get(obj, ()))}
        for obj, fields in objects.items()
    }


@dataclass
class Credentials:
    client_id: str = "3MVG9FAKECONSUMERKEY"
    client_secret: str = "fake-consumer-secret"
    username: str = "worker@example.com"
    password: str = "fake-password"
    security_token: str = "FAKESECTOKEN"
    refresh_token: str = "5Aep861FAKEREFRESH"
    jwt_public_key: bytes | None = None
    my_domain: str = INSTANCE


@dataclass
class Fault:
    """Fail matching calls: answer ``status``/``error_code``, raise ``exception`` before the
    call is applied, or (``drop``) apply it and then lose the answer (a read timeout)."""

    kind: str | None = None
    method: str | None = None
    skip: int = 0
    times: int = 1
    status: int = 503
    error_code: str | None = "SERVER_UNAVAILABLE"
    message: str = "Server temporarily unavailable"
    exception: type[Exception] | None = None
    drop: bool = False
    body: Any = None
    seen: int = 0
    write: bool | None = None  # True: only calls that write (see is_write_request)

    def matches(self, kind: str, method: str, write: bool = False) -> bool:
        return (
            (self.kind is None or self.kind == kind)
            and (self.method is None or self.method == method)
            and (self.write is None or self.write == write)
        )


@dataclass(frozen=True)
class ApprovalProcess:
    """An active approval process: its object and entry criteria (record -> bool)."""

    name: str
    sobject: str
    entry: Callable[[Mapping[str, Any]], bool]
    id: str


@dataclass
class Synthetic:
    """Records made on demand, for large benches: only edited rows are stored."""

    count: int
    make: Callable[[int, str], dict[str, Any]]  # (index, Id) -> fields


@dataclass
class _Cursor:
    ids: list[str]
    fields: tuple[str, ...]
    sobject: str
    resource: str
    offset: int = 0


@dataclass
class _Job:
    id: str
    query: Query
    all_rows: bool
    polls: int = 0
    ids: list[str] = field(default_factory=list)


class FakeOrg:
    """One in-memory org."""

    def __init__(
        self,
        *,
        instance_url: str = INSTANCE,
        login_url: str = LOGIN,
        api_version: str = "66.0",
        daily_limit: int = 15_000,
        used: int = 0,
        page_size: int = 2000,
        now: dt.datetime | None = None,
        credentials: Credentials | None = None,
        keep_calls: bool = True,
        job_polls_needed: int = 1,
    ) -> None:
        self.instance_url = instance_url
        self.login_url = login_url
        self.api_version = api_version
        self.versions = ("64.0", "65.0", api_version)
        self.daily_limit = daily_limit
        self.used = used
        self.page_size = page_size
        self.now = now or dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
        self.credentials = credentials or Credentials()
        self.keep_calls = keep_calls
        self.job_polls_needed = job_polls_needed
        self.rotate_refresh_tokens = False
        self.schema = default_schema()
        self.records: dict[str, dict[str, dict[str, Any]]] = {obj: {} for obj in self.schema}
        self._seed_lead_statuses()
        self.synthetic: dict[str, Synthetic] = {}
        self.tokens: set[str] = set()
        self.calls: list[tuple[str, str, str]] = []  # (method, path, kind) of instance calls
        self.write_calls: list[tuple[str, str, str]] = []
        self.calls_by_kind: Counter[str] = Counter()
        self.oauth_requests: list[dict[str, str]] = []
        self.faults: list[Fault] = []
        self.locks: dict[str, int] = {}
        self.validations: list[Callable[[str, Mapping[str, Any]], tuple[str, str] | None]] = []
        self.emails_sent: list[dict[str, Any]] = []
        # The org's Enhanced Email setting: logged emails become EmailMessages, not Tasks.
        self.enhanced_email = False
        self.composite_sizes: list[int] = []
        self.assignment_rules: dict[str, str] = {}  # sObject -> owner its active rule assigns
        self.default_case_owner: str | None = None
        self.task_trigger_updates_case = False
        self.reassigned: list[tuple[str, Any, str]] = []  # (record Id, owner before, after)
        self.approval_processes: dict[str, ApprovalProcess] = {}
        self.approval_requests: list[dict[str, Any]] = []  # every Submit request received
        self.merges_received = 0  # MergeRequests received, in every merge() call
        self._cursors: dict[str, _Cursor] = {}
        self._jobs: dict[str, _Job] = {}
        self._counter = itertools.count(1)
        self._mock: responses.RequestsMock | None = None

    def _seed_lead_statuses(self) -> None:
        """LeadStatus rows for the Lead Status picklist: which values convert a lead."""
        stamp = self.now.strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        for i, label in enumerate(self.schema["Lead"]["Status"].picklist):
            rid = f"01J{i:012d}AAA"
            self.records["LeadStatus"][rid] = {
                "Id": rid,
                "IsDeleted": False,
                "CreatedDate": stamp,
                "SystemModstamp": stamp,
                "MasterLabel": label,
                "IsConverted": label in CONVERTED_STATUSES,
            }

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FakeOrg:
        self._mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        self.install(self._mock)
        self._mock.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._mock is not None:
            self._mock.stop()
            self._mock.reset()
            self._mock = None

    def install(self, mock: responses.RequestsMock) -> None:
        """Register the org's callbacks on an existing ``responses`` mock."""
        self._mock = mock
        # Token endpoints first: the My Domain is also the instance host.
        for host in dict.fromkeys((self.login_url, self.credentials.my_domain)):
            mock.add_callback(
                "POST",
                re.compile(re.escape(host) + r"/services/oauth2/token.*"),
                callback=self._oauth,
            )
        instance = re.compile(re.escape(self.instance_url) + r"/.*")
        for method in ("GET", "POST", "PATCH", "DELETE", "PUT"):
            mock.add_callback(method, instance, callback=self._handle)

    # -- settings helpers ---------------------------------------------------------------------------
    def settings(self, **overrides: Any) -> SalesforceSettings:
        """Settings for a bare-token session on this org (no .env, no environment)."""
        values: dict[str, Any] = {
            "instance_url": self.instance_url,
            "access_token": self.issue_token(),
            "auth": "token",
            "api_version": self.api_version,
        }
        values.update(overrides)
        return SalesforceSettings(_env_file=None, **values)

    def issue_token(self) -> str:
        token = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(24)}"
        self.tokens.add(token)
        return token

    def expire_sessions(self) -> None:
        self.tokens.clear()

    # -- data -----------------------------------------------------------------------------------
    def stamp(self) -> str:
        """Advance the org clock one second and return it in REST format."""
        self.now += dt.timedelta(seconds=1)
        return self.now.strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    def new_id(self, sobject: str) -> str:
        # 3-char key prefix + 12 unique chars + a 3-char suffix, like an 18-character id
        return PREFIXES.get(sobject, "a00") + f"{900_000_000_000 + next(self._counter):012d}AAA"

    def add(self, sobject: str, **fields: Any) -> str:
        rid = fields.pop("Id", None) or self.new_id(sobject)
        stamp = fields.pop("SystemModstamp", None) or self.stamp()
        record = {
            "Id": rid,
            "IsDeleted": False,
            "CreatedDate": fields.pop("CreatedDate", stamp),
            "SystemModstamp": stamp,
            "LastModifiedDate": stamp,
        }
        for name in SYSTEM_OMITTED.get(sobject, ()):  # the object has no such field
            del record[name]
        if sobject == "Lead":
            record["IsConverted"] = False
        record.update(fields)
        if "IsClosed" not in fields:
            _derive_closed(sobject, record)
        self.records[sobject][rid] = record
        return rid

    def add_synthetic(
        self, sobject: str, count: int, make: Callable[[int, str], dict[str, Any]]
    ) -> None:
        self.synthetic[sobject] = Synthetic(count, make)

    def synthetic_id(self, sobject: str, index: int) -> str:
        return PREFIXES.get(sobject, "a00") + f"{index:012d}AAA"

    def get(self, record_id: str) -> dict[str, Any] | None:
        for sobject in self.records:
            found = self._load(sobject, record_id)
            if found is not None:
                return found
        return None

    def edit(self, record_id: str, **fields: Any) -> None:
        """A person's edit in the UI: fields change and SystemModstamp moves."""
        sobject = self._sobject_of(record_id)
        record = self._materialize(sobject, record_id)
        record.update(fields)
        if "IsClosed" not in fields:
            _derive_closed(sobject, record)
        record["SystemModstamp"] = record["LastModifiedDate"] = self.stamp()

    def delete(self, record_id: str) -> None:
        """To the recycle bin (queryAll shows it with IsDeleted), or gone for good from an
        object without IsDeleted (a GroupMember, a Holiday)."""
        sobject = self._sobject_of(record_id)
        record = self._materialize(sobject, record_id)
        if sobject in NO_IS_DELETED:
            del self.records[sobject][record_id]
            return
        record["IsDeleted"] = True
        record["SystemModstamp"] = self.stamp()

    def of(self, sobject: str, *, deleted: bool = False) -> list[dict[str, Any]]:
        return [r for r in self._iter(sobject) if deleted or not r.get("IsDeleted")]

    # -- faults -------------------------------------------------------------------------------------
    def fail(self, **kwargs: Any) -> Fault:
        fault = Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def lock(self, record_id: str, times: int = 1) -> None:
        """The next ``times`` writes of this record fail with UNABLE_TO_LOCK_ROW."""
        self.locks[record_id] = times

    def assign(self, sobject: str, owner_id: str) -> None:
        """An active assignment rule: each Lead/Case/Account written through REST without
        ``Sforce-Auto-Assign: FALSE`` is given to ``owner_id`` (a user or a queue)."""
        assert sobject in ASSIGNABLE, sobject
        self.assignment_rules[sobject] = owner_id

    def define_approval(
        self,
        name: str,
        sobject: str,
        entry: Callable[[Mapping[str, Any]], bool] = lambda record: True,
    ) -> str:
        """An active approval process named ``name`` (its developer name) on ``sobject``,
        whose entry criteria ``entry`` are checked on every submission."""
        process_id = self.new_id("ProcessDefinition")
        self.approval_processes[name] = ApprovalProcess(name, sobject, entry, process_id)
        return process_id

    def validate(self, rule: Callable[[str, Mapping[str, Any]], tuple[str, str] | None]) -> None:
        """A validation rule: (sobject, record after the write) -> (errorCode, message)."""
        self.validations.append(rule)

    # -- accounting --------------------------------------------------------------------------------
    @property
    def call_count(self) -> int:
        return len(self.calls)

    def writes(self) -> list[tuple[str, str, str]]:
        """The calls that changed data (see :func:`is_write_request`)."""
        return list(self.write_calls)

    # == HTTP ======================================================================================
    def limit_info(self) -> str:
        """The ``Sforce-Limit-Info`` value as of now."""
        return f"api-usage={self.used}/{self.daily_limit}"

    def _headers(self) -> dict[str, str]:
        return {
            LIMIT_HEADER: self.limit_info(),
            "Content-Type": "application/json;charset=UTF-8",
        }

    def _reply(
        self, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], str | bytes]:
        out = self._headers()
        out.update(headers or {})
        if isinstance(body, (str, bytes)):
            return status, out, body
        return status, out, "" if body is None else json.dumps(body)

    def _handle(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str | bytes]:
        if not self.keep_calls and self._mock is not None:
            self._mock.calls.reset()  # a bench must not hold every response ever sent
        method = request.method or "GET"
        parts = urlsplit(request.url or "")
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        kind = _kind(method, path)
        self.calls.append((method, path, kind))
        self.calls_by_kind[kind] += 1
        if is_write_request(method, path, request.body):
            self.write_calls.append((method, path, kind))
        if self.used >= self.daily_limit:
            return self._reply(
                403,
                [
                    {
                        "message": "TotalRequests Limit exceeded.",
                        "errorCode": "REQUEST_LIMIT_EXCEEDED",
                    }
                ],
            )
        self.used += 1
        body_text = _text(request.body)
        soap = path.startswith("/services/Soap/")
        if not self._authorized(request, body_text, soap):
            if soap:
                return self._reply(
                    500,
                    _soap_fault(
                        "INVALID_SESSION_ID",
                        "Invalid Session ID found in SessionHeader: Illegal Session",
                    ),
                    {"Content-Type": "text/xml"},
                )
            return self._reply(
                401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
            )
        fault = self._fault(kind, method, is_write_request(method, path, body_text))
        if fault is not None and not fault.drop:
            if fault.exception is not None:
                raise fault.exception("injected fault")
            body = (
                fault.body
                if fault.body is not None
                else (
                    [{"message": fault.message, "errorCode": fault.error_code}]
                    if fault.error_code
                    else ""
                )
            )
            return self._reply(fault.status, body)
        try:
            if soap:
                status, body, headers = self._soap(body_text)
            else:
                status, body, headers = self._route(method, path, query, body_text, request.headers)
        except SoqlError as exc:
            status, body, headers = 400, [{"message": exc.message, "errorCode": exc.code}], {}
        if fault is not None and fault.drop:
            raise requests.ReadTimeout("injected: response lost after the write was applied")
        return self._reply(status, body, headers)

    def _authorized(self, request: requests.PreparedRequest, body: str, soap: bool) -> bool:
        if path_is_public(urlsplit(request.url or "").path):
            return True
        if soap:
            match = re.search(r"<(?:\w+:)?sessionId>([^<]*)</", body)
            return bool(match) and _xml_unescape(match.group(1)) in self.tokens  # type: ignore[union-attr]
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    def _fault(self, kind: str, method: str, write: bool = False) -> Fault | None:
        for fault in self.faults:
            if fault.times <= 0 or not fault.matches(kind, method, write):
                continue
            fault.seen += 1
            if fault.seen <= fault.skip:
                continue
            fault.times -= 1
            return fault
        return None

    # -- routing ------------------------------------------------------------------------------------
    def _route(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: str,
        headers: Mapping[str, str],
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and path == USERINFO:
            return 200, self._userinfo(), {}
        if path.rstrip("/") == "/services/data":
            return (
                200,
                [
                    {"label": f"v{v}", "url": f"/services/data/v{v}", "version": v}
                    for v in self.versions
                ],
                {},
            )
        prefix = f"/services/data/v{self.api_version}/"
        if not path.startswith(prefix):
            return (
                404,
                [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
                {},
            )
        rest = path[len(prefix) :].strip("/")
        payload = json.loads(body) if body else None
        if method == "POST" and rest == "composite":
            return self._composite(payload)
        if rest.startswith("jobs/query"):
            return self._bulk(method, rest, query, payload)
        status, out = self._resource(method, rest, query, payload, headers)
        return status, out, {}

    def _resource(
        self,
        method: str,
        rest: str,
        query: Mapping[str, str],
        payload: Any,
        headers: Mapping[str, str],
    ) -> tuple[int, Any]:
        """Everything a composite subrequest may also reach."""
        if method == "GET" and rest in ("query", "queryAll"):
            return 200, self._run_query(query.get("q", ""), all_rows=rest == "queryAll")
        if method == "GET" and re.fullmatch(r"(query|queryAll)/[\w-]+", rest):
            return 200, self._next_page(rest.split("/", 1)[1])
        if method == "GET" and rest == "limits":
            return 200, {
                "DailyApiRequests": {
                    "Max": self.daily_limit,
                    "Remaining": self.daily_limit - self.used,
                }
            }
        if method == "GET" and rest == "sobjects":
            return 200, {
                "encoding": "UTF-8",
                "maxBatchSize": 200,
                "sobjects": [
                    {"name": o, "keyPrefix": PREFIXES.get(o), "queryable": True, "label": o}
                    for o in self.schema
                ],
            }
        match = re.fullmatch(r"sobjects/(\w+)/describe", rest)
        if method == "GET" and match:
            return self._describe(match.group(1))
        match = re.fullmatch(r"sobjects/(\w+)/(updated|deleted)", rest)
        if method == "GET" and match:
            return self._replicated(match.group(1), match.group(2) == "deleted", query)
        if rest == "composite/sobjects" and method in ("POST", "PATCH"):
            return self._collection(method, None, payload, _auto_assign(headers))
        if rest == "composite/sobjects" and method == "DELETE":
            return self._delete_collection(query)
        match = re.fullmatch(r"composite/sobjects/(\w+)/(\w+)", rest)
        if method == "PATCH" and match:
            return self._collection(
                "UPSERT", (match.group(1), match.group(2)), payload, _auto_assign(headers)
            )
        if method == "POST" and rest == "actions/standard/emailSimple":
            return self._email(payload)
        if method == "POST" and rest == "process/approvals":
            return self._approvals(payload)
        return 404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]

    # -- oauth ----------------------------------------------------------------------------------------
    def _oauth(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        form = {k: v[0] for k, v in parse_qs(_text(request.body)).items()}
        self.oauth_requests.append(form)
        self.calls_by_kind["oauth"] += 1
        c = self.credentials
        grant = form.get("grant_type")
        host = urlsplit(request.url or "").scheme + "://" + urlsplit(request.url or "").netloc
        ok = False
        new_refresh: str | None = None
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            ok = self._jwt_ok(form.get("assertion", ""))
        elif grant == "client_credentials":
            ok = (
                host == c.my_domain
                and form.get("client_id") == c.client_id
                and form.get("client_secret") == c.client_secret
            )
            if host != c.my_domain:
                return (
                    400,
                    {"Content-Type": "application/json"},
                    json.dumps(
                        {
                            "error": "invalid_grant",
                            "error_description": "request not supported on this domain",
                        }
                    ),
                )
        elif grant == "refresh_token":
            ok = (
                form.get("client_id") == c.client_id
                and form.get("refresh_token") == c.refresh_token
            )
            if ok and self.rotate_refresh_tokens:
                new_refresh = c.refresh_token = f"5Aep861{secrets.token_urlsafe(12)}"
        elif grant == "password":
            ok = (
                form.get("client_id") == c.client_id
                and form.get("client_secret") == c.client_secret
                and form.get("username") == c.username
                and form.get("password") == c.password + c.security_token
            )
        if not ok:
            return (
                400,
                {"Content-Type": "application/json"},
                json.dumps(
                    {"error": "invalid_grant", "error_description": "authentication failure"}
                ),
            )
        body = {
            "access_token": self.issue_token(),
            "instance_url": self.instance_url,
            "id": f"{self.login_url}/id/{ORG_ID}/{USER_ID}",
            "token_type": "Bearer",
            "issued_at": str(int(self.now.timestamp() * 1000)),
            "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        if new_refresh:
            body["refresh_token"] = new_refresh
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    def _userinfo(self) -> dict[str, Any]:
        """OpenID Connect UserInfo for the session's user (the integration user)."""
        return {
            "sub": f"{self.login_url}/id/{ORG_ID}/{USER_ID}",
            "user_id": USER_ID,
            "organization_id": ORG_ID,
            "preferred_username": self.credentials.username,
            "nickname": "worker",
            "name": "SOP Worker Integration",
            "email": self.credentials.username,
            "email_verified": True,
            "active": True,
            "user_type": "STANDARD",
        }

    def _jwt_ok(self, assertion: str) -> bool:
        c = self.credentials
        if c.jwt_public_key is None:
            return False
        try:
            claims = jwt.decode(
                assertion,
                c.jwt_public_key,
                algorithms=["RS256"],
                audience=["https://login.salesforce.com", "https://test.salesforce.com"],
                options={"verify_exp": False},
            )
        except jwt.PyJWTError:
            return False
        return bool(claims.get("iss") == c.client_id and claims.get("sub") == c.username)

    # -- query ---------------------------------------------------------------------------------------
    def _check_query(self, q: Query) -> dict[str, FieldDef]:
        fields = self._schema(q.sobject)
        for name in (*q.fields, *q.where_fields, *(n for n, _ in q.order_by)):
            head = name.split(".", 1)[0]
            if "." in name:
                if not any((f.relationship or "").lower() == head.lower() for f in fields.values()):
                    raise SoqlError(
                        "INVALID_FIELD", f"Didn't understand relationship '{head}' in field path."
                    )
                continue
            if head.lower() not in {k.lower() for k in fields}:
                raise SoqlError(
                    "INVALID_FIELD",
                    f"\n{name}\n^\nERROR at Row:1:Column:1\nNo such column '{name}' on entity "
                    f"'{q.sobject}'. If you are attempting to use a custom field, be sure to "
                    "append the '__c' after the custom field name.",
                )
        for name in q.where_fields:
            fd = next((f for k, f in fields.items() if k.lower() == name.lower()), None)
            if fd is not None and not fd.filterable:
                raise SoqlError(
                    "INVALID_FIELD", f"field '{fd.name}' can not be filtered in a query call"
                )
        return fields

    def _schema(self, sobject: str) -> dict[str, FieldDef]:
        match = next((o for o in self.schema if o.lower() == sobject.lower()), None)
        if match is None:
            raise SoqlError("INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
        return self.schema[match]

    def _matching(self, q: Query, all_rows: bool) -> list[str]:
        ids = []
        keyed = []
        name = self._schema_name(q.sobject)
        rows = (
            self._iter(q.sobject)
            if q.ids is None
            else (r for rid in sorted(q.ids) if (r := self._load(name, rid)) is not None)
        )
        for record in rows:
            if record.get("IsDeleted") and not all_rows:
                continue
            if q.where is not None and not q.where(record):
                continue
            if q.order_by:
                keyed.append(
                    (tuple(_sort_key(get_path(record, n)) for n, _ in q.order_by), record["Id"])
                )
            else:
                ids.append(record["Id"])
        if q.order_by:
            # one direction per query is all the gateway uses
            reverse = q.order_by[0][1]
            keyed.sort(reverse=reverse)
            ids = [rid for _, rid in keyed]
        return ids[: q.limit] if q.limit is not None else ids

    def _run_query(self, soql: str, *, all_rows: bool) -> dict[str, Any]:
        q = parse(soql)
        self._check_query(q)
        ids = self._matching(q, all_rows)
        cursor = _Cursor(
            ids, q.fields, self._schema_name(q.sobject), "queryAll" if all_rows else "query"
        )
        return self._page(cursor, new=True)

    def _page(self, cursor: _Cursor, *, new: bool) -> dict[str, Any]:
        start = cursor.offset
        chunk = cursor.ids[start : start + self.page_size]
        cursor.offset = start + len(chunk)
        body: dict[str, Any] = {
            "totalSize": len(cursor.ids),
            "done": cursor.offset >= len(cursor.ids),
            "records": [self._project(cursor.sobject, rid, cursor.fields) for rid in chunk],
        }
        if not body["done"]:
            if new:
                locator = f"01gFAKE{next(self._counter):010d}"
                self._cursors[locator] = cursor
            else:
                locator = next(k for k, v in self._cursors.items() if v is cursor)
            body["nextRecordsUrl"] = (
                f"/services/data/v{self.api_version}/{cursor.resource}/{locator}-{cursor.offset}"
            )
        return body

    def _next_page(self, token: str) -> dict[str, Any]:
        locator, _, offset = token.rpartition("-")
        cursor = self._cursors.get(locator)
        if cursor is None or str(cursor.offset) != offset:
            raise SoqlError("INVALID_QUERY_LOCATOR", "invalid query locator")
        body = self._page(cursor, new=False)
        if body["done"]:
            del self._cursors[locator]
        return body

    def _project(self, sobject: str, rid: str, fields: Sequence[str]) -> dict[str, Any]:
        record = self._load(sobject, rid) or {}
        out: dict[str, Any] = {
            "attributes": {
                "type": sobject,
                "url": f"/services/data/v{self.api_version}/sobjects/{sobject}/{rid}",
            }
        }
        for name in fields:
            if "." in name:
                head, tail = name.split(".", 1)
                parent = get_path(record, head)
                if parent is None:
                    # Not stored nested: follow the lookup field whose relationship it is.
                    ref = next(
                        (
                            f
                            for f in self._schema(sobject).values()
                            if f.relationship and f.relationship.lower() == head.lower()
                        ),
                        None,
                    )
                    parent_id = record.get(ref.name) if ref else None
                    if parent_id:
                        parent = self._load(self._sobject_of(parent_id), parent_id)
                if parent is None:
                    out[head] = None
                    continue
                node = out.setdefault(head, {"attributes": {"type": "User"}})
                if node is not None:
                    node[tail] = get_path(parent, tail)
                continue
            key = next((k for k in self._schema(sobject) if k.lower() == name.lower()), name)
            out[key] = record.get(key)
        return out

    def _schema_name(self, sobject: str) -> str:
        return next(o for o in self.schema if o.lower() == sobject.lower())

    # -- describe --------------------------------------------------------------------------------------
    def _describe(self, sobject: str) -> tuple[int, Any]:
        match = next((o for o in self.schema if o.lower() == sobject.lower()), None)
        if match is None:
            return 404, [
                {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}
            ]
        return 200, {
            "name": match,
            "label": match,
            "keyPrefix": PREFIXES.get(match),
            "queryable": True,
            "createable": True,
            "updateable": True,
            "fields": [f.describe() for f in self.schema[match].values()],
        }

    # -- composite ------------------------------------------------------------------------------------
    def _composite(self, payload: Any) -> tuple[int, Any, dict[str, str]]:
        subs = payload.get("compositeRequest") if isinstance(payload, Mapping) else None
        if not isinstance(subs, list) or not subs:
            return (
                400,
                [{"errorCode": "JSON_PARSER_ERROR", "message": "compositeRequest is required"}],
                {},
            )
        if len(subs) > 25:
            return (
                400,
                [
                    {
                        "errorCode": "LIMIT_EXCEEDED",
                        "message": "Composite takes at most 25 subrequests",
                    }
                ],
                {},
            )
        heavy = sum(1 for s in subs if _heavy(str(s.get("url", ""))))
        if heavy > 5:
            return (
                400,
                [
                    {
                        "errorCode": "LIMIT_EXCEEDED",
                        "message": "Composite takes at most 5 sObject Collections or queries",
                    }
                ],
                {},
            )
        for sub in subs:
            sub_headers = sub.get("httpHeaders") or {}
            if not isinstance(sub_headers, Mapping) or any(
                str(h).lower() in INHERITED_HEADERS for h in sub_headers
            ):
                return (
                    400,
                    [
                        {
                            "errorCode": "INVALID_HEADER",
                            "message": "a subrequest inherits Accept, Authorization and "
                            "Content-Type from the composite request and may not set them",
                        }
                    ],
                    {},
                )
        self.composite_sizes.append(len(subs))
        out: list[dict[str, Any]] = []
        for sub in subs:
            url = _resolved(str(sub.get("url", "")), {str(o["referenceId"]): o for o in out})
            if url is None:
                out.append(
                    {
                        "body": [
                            {
                                "errorCode": "PROCESSING_HALTED",
                                "message": "Invalid reference specified. No value for "
                                f"{sub.get('url')} found.",
                            }
                        ],
                        "httpHeaders": {},
                        "httpStatusCode": 400,
                        "referenceId": sub.get("referenceId"),
                    }
                )
                continue
            parts = urlsplit(url)
            prefix = f"/services/data/v{self.api_version}/"
            rest = parts.path[len(prefix) :].strip("/") if parts.path.startswith(prefix) else "?"
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            try:
                status, body = self._resource(
                    str(sub.get("method")),
                    rest,
                    query,
                    sub.get("body"),
                    sub.get("httpHeaders") or {},
                )
            except SoqlError as exc:
                status, body = 400, [{"message": exc.message, "errorCode": exc.code}]
            out.append(
                {
                    "body": body,
                    "httpHeaders": {},
                    "httpStatusCode": status,
                    "referenceId": sub.get("referenceId"),
                }
            )
        return 200, {"compositeResponse": out}, {}

    # -- collections -----------------------------------------------------------------------------------
    def _collection(
        self, op: str, upsert: tuple[str, str] | None, payload: Any, auto_assign: bool
    ) -> tuple[int, Any]:
        records = payload.get("records") if isinstance(payload, Mapping) else None
        if not isinstance(records, list):
            return 400, [{"errorCode": "JSON_PARSER_ERROR", "message": "records is required"}]
        if len(records) > 200:
            return 400, [
                {
                    "errorCode": "EXCEEDED_ID_LIMIT",
                    "message": "record limit reached. cannot submit more than 200 records into this call",
                }
            ]
        all_or_none = bool(payload.get("allOrNone", False))
        if upsert is not None:
            sobject, ext = upsert
            fd = self.schema.get(sobject, {}).get(ext)
            if fd is None or not fd.external_id:
                return 400, [
                    {
                        "errorCode": "INVALID_FIELD",
                        "message": f"Field name provided, {ext} is not an External ID or indexed field for {sobject}",
                    }
                ]
        # An Id twice in one list is refused, each time it appears ("duplicate id in list");
        # the other records go on under allOrNone false.
        ids = Counter(
            r.get("Id") for r in records if isinstance(r, Mapping) and isinstance(r.get("Id"), str)
        )
        staged: list[tuple[str, dict[str, Any], bool] | list[dict[str, Any]]] = []
        members: set[tuple[Any, Any]] = set()  # CampaignMembers of this request
        for raw in records:
            rid = raw.get("Id") if isinstance(raw, Mapping) else None
            if isinstance(rid, str) and ids[rid] > 1:
                staged.append(
                    [
                        {
                            "statusCode": "INVALID_FIELD",
                            "message": f"duplicate id in list: {rid}",
                            "fields": [],
                        }
                    ]
                )
                continue
            s = self._stage(op, upsert, raw)
            if not isinstance(s, list) and s[2] and s[1]["attributes"]["type"] == "CampaignMember":
                pair = (s[1].get("CampaignId"), s[1].get("LeadId") or s[1].get("ContactId"))
                if pair in members:
                    s = [_ALREADY_A_MEMBER]
                members.add(pair)
            staged.append(s)
        failed = any(isinstance(s, list) for s in staged)
        results = []
        for s in staged:
            if isinstance(s, list):
                results.append({"success": False, "errors": s})
            elif all_or_none and failed:
                results.append(
                    {
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
                                "fields": [],
                            }
                        ],
                    }
                )
            else:
                rid, record, created = s
                self._commit(rid, record, auto_assign=auto_assign)
                item: dict[str, Any] = {"id": rid, "success": True, "errors": []}
                if upsert is not None:
                    item["created"] = created
                results.append(item)
        return 200, results

    def _delete_collection(self, query: Mapping[str, str]) -> tuple[int, Any]:
        """``DELETE composite/sobjects?ids=...``: at most 200 Ids, each to the recycle bin."""
        ids = [i for i in query.get("ids", "").split(",") if i]
        if not ids or len(ids) > 200:
            return 400, [{"errorCode": "INVALID_ID_FIELD", "message": "1 to 200 ids are required"}]
        out = []
        for rid in ids:
            try:
                sobject = self._sobject_of(rid)
            except KeyError:
                sobject = ""
            record = self._load(sobject, rid) if sobject else None
            if record is None or record.get("IsDeleted"):
                out.append(
                    {
                        "id": rid,
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "ENTITY_IS_DELETED",
                                "message": "entity is deleted",
                                "fields": [],
                            }
                        ],
                    }
                )
                continue
            self.delete(rid)
            out.append({"id": rid, "success": True, "errors": []})
        return 200, out

    def _stage(
        self, op: str, upsert: tuple[str, str] | None, raw: Any
    ) -> tuple[str, dict[str, Any], bool] | list[dict[str, Any]]:
        def error(code: str, message: str, fields: Sequence[str] = ()) -> list[dict[str, Any]]:
            return [{"statusCode": code, "message": message, "fields": list(fields)}]

        if not isinstance(raw, Mapping):
            return error("JSON_PARSER_ERROR", "record is not an object")
        attrs = raw.get("attributes") or {}
        sobject = attrs.get("type") if isinstance(attrs, Mapping) else None
        if upsert is not None:
            sobject = sobject or upsert[0]
        if not sobject or sobject not in self.schema:
            return error("INVALID_TYPE", "sObject type is missing or unknown")
        values = {k: v for k, v in raw.items() if k != "attributes"}
        fields = self.schema[sobject]
        existing: dict[str, Any] | None = None
        created = False
        if op == "PATCH":
            rid = values.pop("Id", None)
            if not rid:
                return error("MISSING_ARGUMENT", "Id not specified in an update call")
            existing = self._load(sobject, rid)
            if existing is None:
                return error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
            if existing.get("IsDeleted"):
                return error("ENTITY_IS_DELETED", "entity is deleted")
        elif op == "POST":
            if "Id" in values:
                return error("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
            rid = self.new_id(sobject)
            created = True
        else:
            assert upsert is not None
            key = values.get(upsert[1])
            if not key:
                return error("MISSING_ARGUMENT", f"{upsert[1]} not specified")
            matches = [
                r for r in self._iter(sobject) if r.get(upsert[1]) == key and not r.get("IsDeleted")
            ]
            if len(matches) > 1:
                return error(
                    "DUPLICATE_EXTERNAL_ID",
                    f"{upsert[1]}: more than one record found for external id field",
                    [upsert[1]],
                )
            if matches:
                existing = matches[0]
                rid = existing["Id"]
            else:
                rid = self.new_id(sobject)
                created = True
        if self.locks.get(rid, 0) > 0:
            self.locks[rid] -= 1
            return error(
                "UNABLE_TO_LOCK_ROW",
                "unable to obtain exclusive access to this record or 1 records",
            )
        if sobject == "Lead" and existing is not None and existing.get("IsConverted"):
            return error("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
        for name, value in values.items():
            fd = fields.get(name)
            if fd is None:
                return error(
                    "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}", [name]
                )
            if (existing is not None and not fd.updateable) or (
                existing is None and not fd.createable
            ):
                return error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {name}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                    [name],
                )
            if (
                isinstance(value, str)
                and fd.type in ("string", "textarea", "combobox")
                and len(value) > fd.length
            ):
                return error(
                    "STRING_TOO_LONG",
                    f"{name}: data value too large: {value[:20]}... (max length={fd.length})",
                    [name],
                )
            if (
                fd.type == "picklist"
                and fd.restricted
                and value is not None
                and value not in fd.picklist
            ):
                return error(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{name}: bad value for restricted picklist field: {value}",
                    [name],
                )
            if (
                fd.type == "date"
                and value is not None
                and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(value))
            ):
                return error(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    f"{name}: value not of required type: {value}",
                    [name],
                )
        merged = dict(existing or {})
        merged.update(values)
        if sobject == "Task":
            who = merged.get("WhoId")
            if isinstance(who, str) and who.startswith("00Q") and merged.get("WhatId"):
                return error(
                    "FIELD_INTEGRITY_EXCEPTION",
                    "Related To ID: id value of incorrect type",
                    ["WhatId"],
                )
        if sobject == "CampaignMember" and existing is None:
            # One membership per person and campaign (CampaignMember, object reference).
            person = merged.get("LeadId") or merged.get("ContactId")
            missing = [
                f
                for f, v in (("CampaignId", merged.get("CampaignId")), ("LeadId", person))
                if not v
            ]
            if missing:
                return error(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    missing,
                )
            for value in (merged["CampaignId"], person):
                try:
                    ref = self._load(self._sobject_of(str(value)), str(value))
                except KeyError:
                    ref = None
                if ref is None or ref.get("IsDeleted"):
                    return error(
                        "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}"
                    )
            if any(
                r.get("CampaignId") == merged["CampaignId"]
                and person in (r.get("LeadId"), r.get("ContactId"))
                and not r.get("IsDeleted")
                for r in self._iter("CampaignMember")
            ):
                return [_ALREADY_A_MEMBER]
        if sobject == "CaseComment":
            if not merged.get("ParentId"):
                return error(
                    "REQUIRED_FIELD_MISSING",
                    "Required fields are missing: [ParentId]",
                    ["ParentId"],
                )
            if len(str(merged.get("CommentBody") or "").encode()) > 4000:
                return error(
                    "STRING_TOO_LONG",
                    "Body: data value too large (max length=4000)",
                    ["CommentBody"],
                )
        for rule in self.validations:
            problem = rule(sobject, merged)
            if problem:
                return error(problem[0], problem[1])
        merged["attributes"] = {"type": sobject}
        return rid, merged, created

    def _replicated(self, sobject: str, deleted: bool, query: Mapping[str, str]) -> tuple[int, Any]:
        """sObject Get Updated / Get Deleted: the Ids stamped (SystemModstamp) between two
        minutes, seconds ignored; the start must precede the end, and reach back no more
        than 30 days (15 for deletions)."""
        if sobject not in self.schema:
            return 404, [{"errorCode": "NOT_FOUND", "message": f"sObject type {sobject}"}]

        def refused(message: str) -> tuple[int, Any]:
            return 400, [{"errorCode": "INVALID_REPLICATION_DATE", "message": message}]

        try:
            start, end = (
                dt.datetime.fromisoformat(query[k]).astimezone(dt.UTC).replace(second=0)
                for k in ("start", "end")
            )
        except (KeyError, ValueError):
            return refused("start and end must be ISO 8601 date/times")
        start, end = start.replace(microsecond=0), end.replace(microsecond=0)
        if start >= end:
            return refused("startDate must chronologically precede endDate")
        if start < self.now - dt.timedelta(days=15 if deleted else 30):
            return refused("startDate is too far in the past")
        found = [
            record
            for record in self._iter(sobject)
            if bool(record.get("IsDeleted")) == deleted
            and isinstance(record.get("SystemModstamp"), str)
            and start <= _parse_stamp(record["SystemModstamp"]) < end
        ]
        covered = min(end, self.now.replace(second=0, microsecond=0))
        if not deleted:
            return 200, {"ids": [r["Id"] for r in found], "latestDateCovered": _rest(covered)}
        return 200, {
            "deletedRecords": [{"id": r["Id"], "deletedDate": r["SystemModstamp"]} for r in found],
            "earliestDateAvailable": _rest(self.now - dt.timedelta(days=15)),
            "latestDateCovered": _rest(covered),
        }

    def _commit(self, rid: str, record: dict[str, Any], *, auto_assign: bool) -> None:
        sobject = record.pop("attributes")["type"]
        stamp = self.stamp()
        base = self._load(sobject, rid)
        if base is None:
            record.setdefault("CreatedDate", stamp)
            record["IsDeleted"] = False
            if sobject == "Lead":
                record.setdefault("IsConverted", False)
        record["Id"] = rid
        record["SystemModstamp"] = record["LastModifiedDate"] = stamp
        _derive_closed(sobject, record)
        self.records[sobject][rid] = record
        if auto_assign:
            self._run_assignment(sobject, record)
        what = record.get("WhatId")
        if sobject == "Task" and self.task_trigger_updates_case and isinstance(what, str):
            case = self.records["Case"].get(what)
            if case is not None:  # the trigger's update runs under the Task request's header
                case["SystemModstamp"] = case["LastModifiedDate"] = self.stamp()
                if auto_assign:
                    self._run_assignment("Case", case)

    def _run_assignment(self, sobject: str, record: dict[str, Any]) -> None:
        owner = self.assignment_rules.get(sobject)
        if owner is None and sobject == "Case":
            owner = self.default_case_owner  # even with no active rule
        if owner is None or sobject not in ASSIGNABLE or record.get("OwnerId") == owner:
            return
        self.reassigned.append((record["Id"], record.get("OwnerId"), owner))
        record["OwnerId"] = owner
        record.pop("Owner", None)  # the nested parent named the previous owner

    # -- email ------------------------------------------------------------------------------------------
    def _email(self, payload: Any) -> tuple[int, Any]:
        inputs = payload.get("inputs") if isinstance(payload, Mapping) else None
        if not isinstance(inputs, list):
            return 400, [{"errorCode": "JSON_PARSER_ERROR", "message": "inputs is required"}]
        results = []
        any_failed = False
        for item in inputs:
            address = str(item.get("emailAddresses") or "")
            if "@" not in address or not item.get("emailSubject") or not item.get("emailBody"):
                any_failed = True
                results.append(
                    {
                        "actionName": "emailSimple",
                        "errors": [
                            {
                                "statusCode": "INVALID_EMAIL_ADDRESS",
                                "message": f"Email address is invalid: {address}",
                                "fields": [],
                            }
                        ],
                        "isSuccess": False,
                        "outputValues": None,
                        "version": 1,
                    }
                )
                continue
            self.emails_sent.append(dict(item))
            if item.get("logEmailOnSend") is True and item.get("relatedRecordId"):
                self._log_email(item)
            results.append(
                {
                    "actionName": "emailSimple",
                    "errors": None,
                    "isSuccess": True,
                    "outputValues": None,
                    "version": 1,
                }
            )
        return (400 if any_failed else 200), results

    def _approvals(self, payload: Any) -> tuple[int, Any]:
        requests_ = payload.get("requests") if isinstance(payload, Mapping) else None
        if not isinstance(requests_, list) or not requests_:
            return 400, [{"errorCode": "JSON_PARSER_ERROR", "message": "requests is required"}]
        results = [self._submit(r if isinstance(r, Mapping) else {}) for r in requests_]
        if len(results) == 1 and results[0]["success"] is not True:
            error = results[0]["errors"][0]
            return 400, [{"errorCode": error["statusCode"], "message": error["message"]}]
        # Bulk answers need not follow the requests' order (the reference's example does
        # not): each names its record in entityId.
        return 200, results[::-1]

    def _submit(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self.approval_requests.append(dict(request))
        rid = str(request.get("contextId") or "")

        def refused(code: str, message: str) -> dict[str, Any]:
            return {
                "actorIds": None,
                "entityId": rid or None,
                "errors": [{"statusCode": code, "message": message, "fields": []}],
                "instanceId": None,
                "instanceStatus": None,
                "newWorkitemIds": None,
                "success": False,
            }

        if request.get("actionType") != "Submit":
            return refused("INVALID_OPERATION", "only Submit is supported by this org")
        record = self.get(rid) if rid else None
        if record is None or record.get("IsDeleted"):
            return refused("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        sobject = self._sobject_of(rid)
        name = request.get("processDefinitionNameOrId")
        process = next(
            (
                p
                for p in self.approval_processes.values()
                if p.sobject == sobject and (name is None or name in (p.name, p.id))
            ),
            None,
        )
        skip = request.get("skipEntryCriteria") in (True, "true") and name is not None
        if process is None or not (skip or process.entry(record)):
            return refused("NO_APPLICABLE_PROCESS", "No applicable approval process was found.")
        if any(
            i["TargetObjectId"] == rid and i["Status"] == "Pending"
            for i in self.records["ProcessInstance"].values()
        ):
            return refused("ALREADY_IN_PROCESS", "Cannot submit object already in process.")
        submitter = request.get("contextActorId") or USER_ID
        approvers = [str(a) for a in request.get("nextApproverIds") or []]
        instance = self.add(
            "ProcessInstance",
            TargetObjectId=rid,
            ProcessDefinitionId=process.id,
            SubmittedById=submitter,
            Status="Pending",
            CompletedDate=None,
        )
        self.add(
            "ProcessInstanceStep",
            ProcessInstanceId=instance,
            StepStatus="Started",
            Comments=str(request.get("comments") or "")[:4000] or None,
            ActorId=submitter,
            OriginalActorId=submitter,
        )
        return {
            "actorIds": approvers,
            "entityId": rid,
            "errors": None,
            "instanceId": instance,
            "instanceStatus": "Pending",
            "newWorkitemIds": [self.new_id("ProcessInstanceWorkitem")],
            "success": True,
        }

    def decide_approval(self, instance_id: str, status: str, comments: str = "") -> None:
        """An approver approves or rejects: the instance ends and a step records it."""
        self.edit(instance_id, Status=status, CompletedDate=self.stamp())
        self.add(
            "ProcessInstanceStep",
            ProcessInstanceId=instance_id,
            StepStatus=status,
            Comments=comments or None,
        )

    def _log_email(self, item: Mapping[str, Any]) -> None:
        """What ``logEmailOnSend`` leaves on the related record, in the send's transaction.
        Long text is cut at its field's length, as Salesforce stores it."""
        subject = str(item.get("emailSubject") or "")
        body = str(item.get("emailBody") or "")
        related = str(item["relatedRecordId"])
        lookup = "WhoId" if related.startswith(("003", "00Q")) else "WhatId"
        task = {
            "Subject": f"Email: {subject}"[:255],
            "Status": "Completed",
            "IsClosed": True,
            "TaskSubtype": "Email",
            "ActivityDate": self.now.date().isoformat(),
            "OwnerId": USER_ID,
            lookup: related,
        }
        if not self.enhanced_email:
            description = (
                f"Additional To: {item.get('emailAddresses')}\nCC: \nBCC: \nAttachment: \n\n"
                f"Subject: {subject}\nBody:\n{body}"
            )
            self.add("Task", Description=description[:TASK_DESCRIPTION_MAX], **task)
            return
        activity = self.add("Task", **task)
        self.add(
            "EmailMessage",
            Subject=subject,
            TextBody=body[:EMAIL_BODY_MAX],
            ToAddress=item.get("emailAddresses"),
            Status="3",  # Sent
            Incoming=False,
            MessageDate=self.now.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
            RelatedToId=related,
            ActivityId=activity,
        )

    # -- SOAP convertLead -------------------------------------------------------------------------------
    def _soap(self, body: str) -> tuple[int, Any, dict[str, str]]:
        root = ET.fromstring(body)  # noqa: S314 - our own test traffic
        ns = {"s": SOAP_NS, "p": PARTNER_NS}
        for call, handler in (("merge", self._merge), ("undelete", self._undelete)):
            node = root.find(f".//s:Body/p:{call}", ns)
            if node is not None:
                results = handler(node)
                if isinstance(results, str):  # a fault
                    return 500, results, {"Content-Type": "text/xml"}
                return (
                    200,
                    self._soap_answer(call, results),
                    {"Content-Type": "text/xml; charset=utf-8"},
                )
        converts = root.findall(".//p:convertLead/p:leadConverts", ns)
        if root.find(".//p:convertLead", ns) is None:
            return (
                500,
                _soap_fault("INVALID_OPERATION", "only convertLead, merge and undelete are faked"),
                {"Content-Type": "text/xml"},
            )
        results = []
        for lc in converts:

            def text(name: str, lc: ET.Element = lc) -> str | None:
                node = lc.find(f"p:{name}", ns)
                return node.text if node is not None else None

            lead_id = text("leadId") or ""
            lead = self.records["Lead"].get(lead_id)
            status = text("convertedStatus")
            if lead is None:
                results.append(
                    _convert_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
                )
                continue
            if lead.get("IsConverted"):
                results.append(
                    _convert_error(
                        "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead"
                    )
                )
                continue
            if status not in CONVERTED_STATUSES:
                results.append(
                    _convert_error("INVALID_STATUS", f"invalid convertedStatus: {status}")
                )
                continue
            account = self.add("Account", Name=lead.get("Company") or lead.get("LastName"))
            contact = self.add("Contact", LastName=lead.get("LastName"), AccountId=account)
            opp = None
            if text("doNotCreateOpportunity") != "true":
                opp = self.add(
                    "Opportunity",
                    Name=text("opportunityName") or lead.get("Company"),
                    AccountId=account,
                    StageName="Prospecting",
                )
            lead.update(
                IsConverted=True,
                Status=status,
                ConvertedAccountId=account,
                ConvertedContactId=contact,
                ConvertedOpportunityId=opp,
            )
            lead["SystemModstamp"] = self.stamp()
            results.append(
                "<result>"
                f"<accountId>{account}</accountId><contactId>{contact}</contactId>"
                f"<leadId>{lead_id}</leadId>"
                + (
                    f"<opportunityId>{opp}</opportunityId>"
                    if opp
                    else '<opportunityId xsi:nil="true"/>'
                )
                + "<success>true</success></result>"
            )
        return (
            200,
            self._soap_answer("convertLead", results),
            {"Content-Type": "text/xml; charset=utf-8"},
        )

    def _soap_answer(self, call: str, results: Sequence[str]) -> str:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns="{PARTNER_NS}" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            "<soapenv:Header><LimitInfoHeader><limitInfo>"
            f"<current>{self.used}</current><limit>{self.daily_limit}</limit><type>API REQUESTS</type>"
            "</limitInfo></LimitInfoHeader></soapenv:Header>"
            f"<soapenv:Body><{call}Response>"
            + "".join(results)
            + f"</{call}Response></soapenv:Body></soapenv:Envelope>"
        )

    # -- SOAP merge() and undelete() -------------------------------------------------------------

    def _merge(self, call: ET.Element) -> list[str] | str:
        """merge(): each request its own transaction (reference: "merge()", "MergeResult").
        Lead, Contact and Account only; at most three records a request, the master
        included; at most 200 requests a call. The master takes the values set in
        ``masterRecord`` (validation rules run on it: a duplicate rule's
        ``DUPLICATES_DETECTED`` fails that request); the victims' children move to the
        master (a campaign member of a campaign the master is already in is deleted); the
        victims go to the recycle bin, ``IsDeleted`` with ``MasterRecordId``."""
        ns = {"p": PARTNER_NS, "o": "urn:sobject.partner.soap.sforce.com"}
        requests_ = call.findall("p:request", ns)
        if len(requests_) > 200:
            return _soap_fault("LIMIT_EXCEEDED", "merge() takes at most 200 merge requests")
        out = []
        for request in requests_:
            self.merges_received += 1
            master_node = request.find("p:masterRecord", ns)
            victims = [n.text or "" for n in request.findall("p:recordToMergeIds", ns)]
            out.append(self._merge_one(master_node, victims, ns))
        return out

    def _merge_one(
        self, master_node: ET.Element | None, victims: list[str], ns: Mapping[str, str]
    ) -> str:
        def refused(code: str, message: str) -> str:
            return (
                f"<result><errors><message>{escape(message)}</message>"
                f"<statusCode>{code}</statusCode></errors>"
                '<id xsi:nil="true"/><success>false</success></result>'
            )

        if master_node is None or not victims:
            return refused("MISSING_ARGUMENT", "masterRecord and recordToMergeIds are required")
        sobject = master_node.findtext("o:type", "", ns)
        master_id = master_node.findtext("o:Id", "", ns)
        if sobject not in ("Lead", "Contact", "Account"):
            return refused("INVALID_TYPE", f"merge() does not take {sobject} records")
        if len(victims) + 1 > 3:
            # The limit is documented; the status code Salesforce gives it is assumed here.
            return refused(
                "LIMIT_EXCEEDED", "up to three records can be merged, the master included"
            )
        if master_id in victims or len(set(victims)) != len(victims):
            return refused("INVALID_ID_FIELD", "a record cannot be merged with itself")
        records = {rid: self._load(sobject, rid) for rid in (master_id, *victims)}
        for rid, record in records.items():
            if record is None:
                return refused("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id {rid}")
            if record.get("IsDeleted"):
                return refused("ENTITY_IS_DELETED", f"entity is deleted: {rid}")
            if record.get("IsConverted"):
                return refused("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead")
        values: dict[str, Any] = {}
        fields = self.schema[sobject]
        for node in master_node:
            name = node.tag.split("}", 1)[-1]
            if name in ("type", "Id"):
                continue
            if name == "fieldsToNull":
                values[node.text or ""] = None
                continue
            fd = fields.get(name)
            if fd is None or not fd.updateable:
                return refused("INVALID_FIELD", f"No such column '{name}' on {sobject}")
            text = node.text or ""
            values[name] = text == "true" if fd.type == "boolean" else text
        master = self._materialize(sobject, master_id)
        after = {**master, **values}
        for rule in self.validations:
            problem = rule(sobject, after)
            if problem:
                return refused(problem[0], problem[1])
        master.update(values)
        master["SystemModstamp"] = master["LastModifiedDate"] = self.stamp()
        moved: list[str] = []
        for victim in victims:
            moved += self._reparent(victim, master_id)
            record = self._materialize(sobject, victim)
            record.update(IsDeleted=True, MasterRecordId=master_id)
            record["SystemModstamp"] = self.stamp()
        return (
            f"<result><id>{master_id}</id>"
            + "".join(f"<mergedRecordIds>{v}</mergedRecordIds>" for v in victims)
            + "<success>true</success>"
            + "".join(f"<updatedRelatedIds>{m}</updatedRelatedIds>" for m in moved)
            + "</result>"
        )

    def _reparent(self, victim: str, master: str) -> list[str]:
        moved = []
        for sobject, name in (
            ("Task", "WhoId"),
            ("Task", "WhatId"),
            ("Event", "WhoId"),
            ("Event", "WhatId"),
            ("CampaignMember", "LeadId"),
            ("CampaignMember", "ContactId"),
            ("Contact", "AccountId"),
            ("Opportunity", "AccountId"),
        ):
            for child in list(self.of(sobject)):
                if child.get(name) != victim:
                    continue
                if sobject == "CampaignMember" and any(
                    m.get(name) == master and m.get("CampaignId") == child.get("CampaignId")
                    for m in self.of(sobject)
                ):
                    del self.records[sobject][child["Id"]]  # the master is a member already
                    continue
                record = self._materialize(sobject, child["Id"])
                record[name] = master
                record["SystemModstamp"] = record["LastModifiedDate"] = self.stamp()
                moved.append(child["Id"])
        return moved

    def _undelete(self, call: ET.Element) -> list[str] | str:
        """undelete(): records in the recycle bin come back (their children re-parented by
        a merge do not); one result per Id."""
        ns = {"p": PARTNER_NS}
        ids = [n.text or "" for n in call.findall("p:ids", ns)]
        if len(ids) > 200:
            return _soap_fault("LIMIT_EXCEEDED", "undelete() takes at most 200 ids")
        out = []
        for rid in ids:
            try:
                sobject = self._sobject_of(rid)
            except KeyError:
                sobject = ""
            record = self._load(sobject, rid) if sobject else None
            if record is None:
                out.append(
                    "<result><errors><message>invalid cross reference id</message>"
                    "<statusCode>INVALID_CROSS_REFERENCE_KEY</statusCode></errors>"
                    '<id xsi:nil="true"/><success>false</success></result>'
                )
                continue
            if not record.get("IsDeleted"):
                out.append(
                    "<result><errors><message>Entity is not in the recycle bin</message>"
                    "<statusCode>UNDELETE_FAILED</statusCode></errors>"
                    f"<id>{rid}</id><success>false</success></result>"
                )
                continue
            record = self._materialize(sobject, rid)
            record["IsDeleted"] = False
            record["SystemModstamp"] = record["LastModifiedDate"] = self.stamp()
            out.append(f"<result><id>{rid}</id><success>true</success></result>")
        return out

    def empty_recycle_bin(self, older_than: dt.timedelta = dt.timedelta(days=15)) -> None:
        """Salesforce purges the recycle bin's records after 15 days: gone from queryAll."""
        for stored in self.records.values():
            for rid, record in list(stored.items()):
                stamp = record.get("SystemModstamp")
                if (
                    record.get("IsDeleted")
                    and isinstance(stamp, str)
                    and _parse_stamp(stamp) < self.now - older_than
                ):
                    del stored[rid]

    # -- Bulk API 2.0 ------------------------------------------------------------------------------------
    def _bulk(
        self, method: str, rest: str, query: Mapping[str, str], payload: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and rest == "jobs/query":
            operation = payload.get("operation")
            if operation not in ("query", "queryAll"):
                return (
                    400,
                    [{"errorCode": "INVALIDJOB", "message": "operation must be query or queryAll"}],
                    {},
                )
            q = parse(str(payload.get("query")))
            if q.order_by:
                # Salesforce allows it but warns it disables PK chunking; the gateway must not.
                return (
                    400,
                    [
                        {
                            "errorCode": "INVALIDJOB",
                            "message": "fake org: no ORDER BY in bulk queries",
                        }
                    ],
                    {},
                )
            self._check_query(q)
            job = _Job(f"750FAKE{next(self._counter):011d}", q, operation == "queryAll")
            self._jobs[job.id] = job
            return 200, self._job_info(job, "UploadComplete"), {}
        match = re.fullmatch(r"jobs/query/(\w+)(/results)?", rest)
        found = self._jobs.get(match.group(1)) if match else None
        if found is None or match is None:
            return (
                404,
                [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
                {},
            )
        job = found
        if not match.group(2):
            job.polls += 1
            state = "JobComplete" if job.polls >= self.job_polls_needed else "InProgress"
            if state == "JobComplete" and not job.ids:
                job.ids = self._matching(job.query, job.all_rows)
            return 200, self._job_info(job, state), {}
        max_records = int(query.get("maxRecords", "50000"))
        offset = int(base64.b64decode(query["locator"]).decode()) if query.get("locator") else 0
        chunk = job.ids[offset : offset + max_records]
        nxt = offset + len(chunk)
        locator = base64.b64encode(str(nxt).encode()).decode() if nxt < len(job.ids) else "null"
        sobject = self._schema_name(job.query.sobject)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(job.query.fields)
        for rid in chunk:
            record = self._load(sobject, rid) or {}
            writer.writerow([_csv_value(get_path(record, f)) for f in job.query.fields])
        headers = {
            "Content-Type": "text/csv",
            "Sforce-Locator": locator,
            "Sforce-NumberOfRecords": str(len(chunk)),
        }
        return 200, out.getvalue(), headers

    def _job_info(self, job: _Job, state: str) -> dict[str, Any]:
        return {
            "id": job.id,
            "operation": "queryAll" if job.all_rows else "query",
            "object": job.query.sobject,
            "createdById": USER_ID,
            "state": state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        }

    # -- storage --------------------------------------------------------------------------------------
    def _iter(self, sobject: str) -> Iterator[dict[str, Any]]:
        name = self._schema_name(sobject)
        stored = self.records[name]
        synth = self.synthetic.get(name)
        if synth is not None:
            for i in range(synth.count):
                rid = self.synthetic_id(name, i)
                yield stored.get(rid) or self._make(name, synth, i, rid)
        for rid, record in stored.items():
            if synth is None or not _is_synthetic_id(rid, synth.count):
                yield record

    def _make(self, sobject: str, synth: Synthetic, index: int, rid: str) -> dict[str, Any]:
        record = {"Id": rid, "IsDeleted": False}
        record.update(synth.make(index, rid))
        return record

    def _load(self, sobject: str, rid: str) -> dict[str, Any] | None:
        stored = self.records.get(sobject, {}).get(rid)
        if stored is not None:
            return stored
        synth = self.synthetic.get(sobject)
        if (
            synth is not None
            and _is_synthetic_id(rid, synth.count)
            and rid == self.synthetic_id(sobject, int(rid[3:15]))
        ):
            return self._make(sobject, synth, int(rid[3:15]), rid)
        return None

    def _materialize(self, sobject: str, rid: str) -> dict[str, Any]:
        record = self._load(sobject, rid)
        if record is None:
            raise KeyError(rid)
        self.records[sobject][rid] = record
        return record

    def _sobject_of(self, rid: str) -> str:
        for sobject, prefix in PREFIXES.items():
            if rid.startswith(prefix) and self._load(sobject, rid) is not None:
                return sobject
        raise KeyError(rid)


# Salesforce's answer to a second membership of one person in one campaign.
_ALREADY_A_MEMBER = {
    "statusCode": "DUPLICATE_VALUE",
    "message": "Already a campaign member.",
    "fields": [],
}
ASSIGNABLE = ("Account", "Case", "Lead")  # the objects Sforce-Auto-Assign governs
INHERITED_HEADERS = frozenset({"accept", "authorization", "content-type"})


def _auto_assign(headers: Mapping[str, Any]) -> bool:
    """Whether a request runs assignment rules: unless ``Sforce-Auto-Assign`` is FALSE
    (case-insensitive; absent means TRUE, an AssignmentRule Id runs that rule)."""
    value = next((v for k, v in headers.items() if str(k).lower() == "sforce-auto-assign"), None)
    return value is None or str(value).strip().upper() != "FALSE"


def _derive_closed(sobject: str, record: dict[str, Any]) -> None:
    if sobject in CLOSED_VALUES:
        field_name, closed = CLOSED_VALUES[sobject]
        record["IsClosed"] = record.get(field_name) in closed


def _parse_stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


def _rest(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def path_is_public(path: str) -> bool:
    # /services/data/ (the versions list) answers without a session.
    return path.rstrip("/") == "/services/data"


def _is_synthetic_id(rid: str, count: int) -> bool:
    tail = rid[3:15]
    return tail.isdigit() and int(tail) < count


def _kind(method: str, path: str) -> str:
    if path.startswith("/services/Soap/"):
        return "soap"
    if path == USERINFO:
        return "userinfo"
    rest = re.sub(r"^/services/data/v[\d.]+/?", "", path).strip("/")
    if path.rstrip("/") == "/services/data":
        return "versions"
    if rest in ("query", "queryAll"):
        return "query"
    if rest.startswith(("query/", "queryAll/")):
        return "query_more"
    if rest == "composite":
        return "composite"
    if rest.startswith("composite/sobjects"):
        return "collections"
    if rest.startswith("jobs/"):
        return "bulk"
    if rest.startswith("actions/"):
        return "email"
    if rest.startswith("process/approvals"):
        return "approval"
    if rest.startswith("sobjects"):
        return "describe"
    if rest == "limits":
        return "limits"
    return f"{method.lower()}:{rest}"


def is_write_request(method: str, path: str, body: str | bytes | None) -> bool:
    """Whether a call changes data: a composite with a non-GET subrequest, a PATCH/POST to
    sObject Collections, SOAP convertLead, an invocable action (emailSimple). Queries,
    describes, Bulk query jobs and OAuth token requests only read."""
    method = method.upper()
    if method in ("GET", "HEAD") or "/oauth2/" in path:
        return False
    text = _text(body)
    if path.startswith("/services/Soap/"):
        return any(f"{call}>" in text for call in ("convertLead", "merge", "undelete"))
    kind = _kind(method, path)
    if kind == "composite":
        try:
            subs = json.loads(text or "{}").get("compositeRequest") or []
        except (ValueError, AttributeError):
            return True
        return any(str(s.get("method", "GET")).upper() != "GET" for s in subs)
    if kind in ("collections", "email", "approval"):
        return True
    if kind == "bulk":
        return False  # a query job reads
    return method in ("POST", "PATCH", "PUT", "DELETE")


def _heavy(url: str) -> bool:
    """A subrequest that counts against a Composite's five: a query, a Query More (the next
    page of one, by its URL or by a reference to an earlier answer's ``nextRecordsUrl``),
    or an sObject Collection."""
    if "nextRecordsUrl}" in url:
        return True
    path = urlsplit(url).path
    return bool(re.search(r"/(query|queryAll)(/[^/]+)?/?$|/composite/sobjects", path))


_REFERENCE = re.compile(r"@\{(\w+)\.([^}]+)\}")


def _resolved(url: str, answered: Mapping[str, Mapping[str, Any]]) -> str | None:
    """``url`` with each ``@{ref.path}`` replaced by that value of the earlier answer
    ``ref`` (``.`` for a field, ``[n]`` for an item); None when one cannot be resolved: the
    answer failed, or holds no such value (a ``nextRecordsUrl`` after the last page)."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        answer = answered.get(match.group(1))
        node: Any = answer.get("body") if answer and answer["httpStatusCode"] < 300 else None
        for part in re.findall(r"[^.\[\]]+", match.group(2)):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, Mapping):
                node = node.get(part)
            else:
                node = None
        if node is None or isinstance(node, (Mapping, list)):
            missing = True
            return ""
        return str(node)

    out = _REFERENCE.sub(value, url)
    return None if missing else out


def _sort_key(value: Any) -> tuple[int, str]:
    return (0, "") if value is None else (1, str(value))


def _text(body: Any) -> str:
    if body is None:
        return ""
    if isinstance(body, bytes):
        return body.decode("utf-8")
    return str(body)


def _xml_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000", value
    ):
        return value[:-5] + "Z"  # Bulk API writes datetimes as ...000Z
    return str(value)


def _soap_fault(code: str, message: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:sf="urn:fault.partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>sf:{code}</faultcode><faultstring>{code}: {escape(message)}</faultstring>"
        '<detail><sf:UnexpectedErrorFault xsi:type="sf:UnexpectedErrorFault">'
        f"<sf:exceptionCode>{code}</sf:exceptionCode><sf:exceptionMessage>{escape(message)}</sf:exceptionMessage>"
        "</sf:UnexpectedErrorFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )


def _convert_error(code: str, message: str) -> str:
    return (
        '<result><accountId xsi:nil="true"/><contactId xsi:nil="true"/>'
        f"<errors><message>{escape(message)}</message><statusCode>{code}</statusCode></errors>"
        '<leadId xsi:nil="true"/><opportunityId xsi:nil="true"/><success>false</success></result>'
    )


def unquote_soql(url: str) -> str:
    """The SOQL inside a query URL (for assertions)."""
    return unquote_plus(urlsplit(url).query.partition("q=")[2])


__all__ = [
    "INSTANCE",
    "LOGIN",
    "Credentials",
    "FakeOrg",
    "Fault",
    "FieldDef",
    "is_write_request",
    "unquote_soql",
]
