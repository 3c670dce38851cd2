"""doctor: settings, auth, API version, objects, fields, updateability, picklists."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import responses
import tenacity

from worker.findings import Finding, FindingKind, Severity
from worker.mapping import LoadedMapping
from worker.salesforce.client import SalesforceClient
from worker.salesforce.doctor import run_doctor
from worker.salesforce.wiring import doctor_inputs

from .fakeorg import FakeOrg, standard_fields
from .sfhelpers import load_fixture, make_client, settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "salesforce.md"
NEEDS = {"Opportunity": {"StageName", "Type", "Payment_Status__c", "NextStep", "Account.Name"}}
UPDATES = {"Opportunity": {"Payment_Status__c", "NextStep"}}
PICKLISTS = {
    ("Opportunity", "StageName"): {"Closed Won"},
    ("Opportunity", "Payment_Status__c"): {"Closed"},
}


def doctor(org: FakeOrg, **kw: Any) -> list[Finding]:
    client = make_client(org)
    args: dict[str, Any] = {"updates": UPDATES, "task_key_field": "SOP_Worker_Key__c"}
    args.update(kw)
    needs = args.pop("needs", NEEDS)
    picklists = args.pop("picklists", PICKLISTS)
    return run_doctor(client.settings, needs, picklists, client=client, **args)


def kinds(findings: list[Finding]) -> list[tuple[FindingKind, str | None, str | None]]:
    return [(f.kind, f.sobject, f.field) for f in findings]


def test_a_healthy_org_has_no_findings_in_two_calls(org: FakeOrg) -> None:
    assert doctor(org) == []
    assert org.calls_by_kind == {"versions": 1, "composite": 1}


def test_missing_field(org: FakeOrg) -> None:
    del org.schema["Opportunity"]["Payment_Status__c"]
    findings = doctor(org, picklists={})
    assert kinds(findings) == [(FindingKind.FIELD_MISSING, "Opportunity", "Payment_Status__c")]
    assert "field-level security" in findings[0].message
    assert "salesforce/" in findings[0].fix


def test_unknown_relationship(org: FakeOrg) -> None:
    findings = doctor(org, needs={"Opportunity": {"Bogus.Name"}}, updates={}, picklists={})
    assert kinds(findings) == [(FindingKind.FIELD_MISSING, "Opportunity", "Bogus.Name")]


def test_not_updateable(org: FakeOrg) -> None:
    findings = doctor(org, updates={"Opportunity": {"IsClosed"}}, picklists={})
    assert kinds(findings) == [(FindingKind.FIELD_NOT_UPDATEABLE, "Opportunity", "IsClosed")]


def test_missing_and_inactive_picklist_values(org: FakeOrg) -> None:
    fd = org.schema["Opportunity"]["StageName"]
    org.schema["Opportunity"]["StageName"] = dataclasses.replace(fd, picklist=("Closed Won",))
    findings = doctor(org, picklists={("Opportunity", "StageName"): {"Closed Won", "Won Big"}})
    assert kinds(findings) == [(FindingKind.PICKLIST_VALUE_MISSING, "Opportunity", "StageName")]
    assert "'Won Big'" in findings[0].message


def test_key_field_must_be_an_external_id(org: FakeOrg) -> None:
    fd = org.schema["Task"]["SOP_Worker_Key__c"]
    org.schema["Task"]["SOP_Worker_Key__c"] = dataclasses.replace(fd, external_id=False)
    findings = doctor(org)
    assert kinds(findings) == [(FindingKind.KEY_FIELD_NOT_EXTERNAL_ID, "Task", "SOP_Worker_Key__c")]


def test_unknown_object(org: FakeOrg) -> None:
    findings = doctor(org, needs={"Invoice__c": {"Name"}}, updates={}, picklists={})
    assert kinds(findings) == [(FindingKind.OBJECT_MISSING, "Invoice__c", None)]


def test_out_of_office_not_turned_on_says_where_to_turn_it_on(
    org: FakeOrg, mapping: LoadedMapping
) -> None:
    del org.schema["OutOfOffice"]  # an org without Chatter's Out of Office
    wanted = doctor_inputs(mapping)
    findings = doctor(
        org, needs=wanted.needs, updates={}, picklists={}, object_fixes=wanted.object_fixes
    )
    assert kinds(findings) == [(FindingKind.OBJECT_MISSING, "OutOfOffice", None)]
    assert "Setup > Chatter Settings" in findings[0].fix
    assert 'out_of_office = "events"' in findings[0].fix


def test_api_version_not_offered(org: FakeOrg) -> None:
    org.versions = ("63.0", "64.0", "65.0")
    findings = doctor(org)
    assert kinds(findings) == [(FindingKind.API_VERSION, None, None)]
    assert findings[0].fix == "set SF_API_VERSION=65.0"


def test_incomplete_settings_make_no_call(org: FakeOrg) -> None:
    findings = run_doctor(settings(auth="jwt", client_id="x"), NEEDS)
    assert [f.kind for f in findings] == [FindingKind.SETTINGS]
    assert "SF_USERNAME" in findings[0].message
    assert org.call_count == 0


def test_rejected_credentials(org: FakeOrg) -> None:
    client = make_client(org)
    org.expire_sessions()
    findings = run_doctor(client.settings, NEEDS, client=client)
    # /services/data/ answers without a session; the describe is the first rejected call
    assert [f.kind for f in findings] == [FindingKind.AUTH]
    assert "sf org display" in findings[0].fix


def test_password_flow_is_a_warning(org: FakeOrg) -> None:
    c = org.credentials
    s = settings(
        client_id=c.client_id,
        client_secret=c.client_secret,
        username=c.username,
        password=c.password,
        security_token=c.security_token,
    )
    findings = run_doctor(s, NEEDS, PICKLISTS, updates=UPDATES, wait=tenacity.wait_none())
    assert [(f.kind, f.severity) for f in findings] == [
        (FindingKind.DEPRECATED_AUTH, Severity.WARNING)
    ]


def test_recorded_describe_is_understood() -> None:
    acme = "https://acme.my.salesforce.com"
    describe = load_fixture("describe_task.json")
    with responses.RequestsMock() as mock:
        mock.get(f"{acme}/services/data/", json=load_fixture("versions.json"))
        mock.post(
            f"{acme}/services/data/v66.0/composite",
            json={
                "compositeResponse": [
                    {
                        "body": describe,
                        "httpHeaders": {},
                        "httpStatusCode": 200,
                        "referenceId": "d0",
                    }
                ]
            },
        )
        client = SalesforceClient(
            settings(instance_url=acme, access_token="00D!x"), wait=tenacity.wait_none()
        )
        findings = run_doctor(
            client.settings,
            {"Task": {"Subject", "WhatId", "CallDisposition"}},
            {("Task", "Status"): {"Completed", "Deferred"}},
            updates={"Task": {"Status"}},
            task_key_field="SOP_Worker_Key__c",
            client=client,
        )
    assert kinds(findings) == [
        (FindingKind.FIELD_MISSING, "Task", "CallDisposition"),
        (FindingKind.PICKLIST_VALUE_INACTIVE, "Task", "Status"),
    ]


def declared(mapping: LoadedMapping) -> dict[str, Any]:
    """doctor's arguments for the default mapping: every rule's needs, writes and picklist
    values, the objects' extra fields and filters, the [tasks] values, the Task key field."""
    needs: dict[str, set[str]] = {}
    updates: dict[str, set[str]] = {}
    picklists: dict[tuple[str, str], set[str]] = {}
    for rule in mapping.rules.values():
        for obj, fields in rule.needs().items():
            needs.setdefault(obj, set()).update(
                f for f in fields if not f.startswith("RecordType.")
            )
        for obj, fields in rule.writes().items():
            updates.setdefault(obj, set()).update(fields)
        for key, values in rule.picklist_values().items():
            picklists.setdefault(key, set()).update(values)
    for obj, section in mapping.common.objects.items():
        needs.setdefault(obj, set()).update(section.fields, section.filters)
    # The [tasks] section's values: every rule's Tasks carry them (no rule declares them).
    t = mapping.common.tasks
    for key, values in {
        ("Task", "Status"): {t.open_status, *t.completed_statuses},
        ("Task", "Priority"): {t.priority, t.high_priority},
        ("Task", t.type_field): {t.call_type, t.email_type},
        ("Task", "TaskSubtype"): {t.call_subtype, t.email_subtype, t.task_subtype},
    }.items():
        picklists.setdefault(key, set()).update(values)
    return {
        "needs": needs,
        "updates": updates,
        "picklists": picklists,
        "task_key_field": mapping.common.org.task_key_field,
    }


def test_the_shipped_metadata_covers_the_default_mapping(
    org: FakeOrg, mapping: LoadedMapping
) -> None:
    """Every field the mapping's rules need exists once salesforce/ is deployed (the fake
    org's custom fields are read from that metadata), every field they update is updateable,
    and every picklist value they use exists (on an org configured as the docs say)."""
    args = declared(mapping)
    findings = doctor(org, **args)
    assert findings == []
    assert any(f.endswith("__c") for fields in args["needs"].values() for f in fields)
    # the rules declare writes on every object they update, and values on custom picklists
    assert set(args["updates"]) == {"Account", "Campaign", "Case", "Lead", "Opportunity", "Task"}
    assert {key for key in args["picklists"] if key[1].endswith("__c")} >= {
        ("Opportunity", "Payment_Status__c"),
        ("Case", "Resolution__c"),
        ("Lead", "Closed_Reason__c"),
        ("Account", "Collections_Status__c"),
    }


def test_the_shipped_metadata_has_every_custom_picklist_value(
    org: FakeOrg, mapping: LoadedMapping
) -> None:
    """A custom picklist value the mapping uses but salesforce/ lacks is reported."""
    fd = org.schema["Opportunity"]["Loss_Reason__c"]
    org.schema["Opportunity"]["Loss_Reason__c"] = dataclasses.replace(
        fd, picklist=tuple(v for v in fd.picklist if v != "Below Hourly Minimum")
    )
    findings = doctor(org, **declared(mapping))
    assert kinds(findings) == [
        (FindingKind.PICKLIST_VALUE_MISSING, "Opportunity", "Loss_Reason__c")
    ]
    assert "'Below Hourly Minimum'" in findings[0].message


def documented_picklist_values() -> set[tuple[str, str, str]]:
    """docs/salesforce.md, "Picklist values the mapping expects": (object, field, value)."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### Picklist values the mapping expects", 1)[1].split("\n#", 1)[0]
    out = set()
    for obj, fld, rest in re.findall(r"^- `(\w+)\.(\w+)`: (.+)$", section, re.MULTILINE):
        out.update((obj, fld, value) for value in re.findall(r"`([^`]+)`", rest))
    return out


def test_a_new_org_lacks_exactly_the_documented_picklist_values(
    org: FakeOrg, mapping: LoadedMapping
) -> None:
    """On a new org with salesforce/ deployed, standard picklists hold only their
    out-of-the-box values: doctor reports exactly the values docs/salesforce.md tells the
    admin to add, and nothing else."""
    for obj, fields in standard_fields(out_of_box=True).items():
        for fd in fields:
            if fd.type == "picklist":
                org.schema[obj][fd.name] = fd
    findings = doctor(org, **declared(mapping))
    assert {f.kind for f in findings} == {FindingKind.PICKLIST_VALUE_MISSING}
    missing = set()
    for f in findings:
        assert f.sobject
        assert f.field
        value = ast.literal_eval(f.message.split(" has no picklist value ", 1)[1])
        missing.add((f.sobject, f.field, value))
    assert missing == documented_picklist_values()
    # standard fields only: every custom picklist value ships in salesforce/
    assert all(not fld.endswith("__c") for _, fld, _ in missing)


@pytest.mark.parametrize("obj", ["Account", "Case", "Lead", "Opportunity", "Task"])
def test_custom_fields_in_the_mapping_are_in_the_metadata(
    obj: str, org: FakeOrg, mapping: LoadedMapping
) -> None:
    wanted = {
        f
        for rule in mapping.rules.values()
        for f in rule.needs().get(obj, set())
        if f.endswith("__c")
    }
    if obj == "Task":
        wanted.add(mapping.common.org.task_key_field)
    shipped = {name for name in org.schema[obj] if name.endswith("__c")}
    assert wanted <= shipped


def test_a_converted_status_must_be_marked_converted(org: FakeOrg) -> None:
    findings = doctor(org, picklists={}, converted_statuses={"Qualified", "Closed - Converted"})
    assert findings == []
    calls = org.call_count
    findings = doctor(org, picklists={}, converted_statuses={"Working - Contacted"})
    assert kinds(findings) == [(FindingKind.LEAD_STATUS_NOT_CONVERTED, "Lead", "Status")]
    assert "mark 'Working - Contacted' Converted" in findings[0].fix
    assert org.call_count - calls == 3  # versions, describes, one LeadStatus query
