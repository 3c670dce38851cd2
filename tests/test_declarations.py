"""A rule's declarations (what doctor checks, what the pull reads) come from its settings'
annotations: a setting changed in the mapping changes them, with no list to keep in step."""

from __future__ import annotations

from typing import Annotated, ClassVar

import pytest
from pydantic import Field

from worker.declarations import FieldOf, FieldValues, ValuesOf, declarations
from worker.mapping import RuleSettings, StrictModel


class Step(StrictModel):
    field: Annotated[str | None, FieldOf("sobject", write=True)] = None
    value: Annotated[str | None, ValuesOf("field")] = None


class Example(RuleSettings):
    reads: ClassVar = {"sobject": ("OwnerId", "Account.Name"), "Task": ()}
    updates: ClassVar = {"Lead": ("Status",)}

    sobject: str = "Opportunity"
    stage_field: Annotated[str, FieldOf("sobject")] = "StageName"
    won_stages: Annotated[tuple[str, ...], ValuesOf("stage_field")] = ("Closed Won",)
    reason_field: Annotated[str | None, FieldOf("sobject", write=True)] = None
    reason: Annotated[str | None, ValuesOf("reason_field")] = None
    reply_field: Annotated[str, FieldOf("Task")] = "Type"
    lead_statuses: Annotated[tuple[str, ...], ValuesOf("Status", sobject="Lead")] = ("Open",)
    scope: Annotated[dict[str, tuple[str, ...]], FieldValues("sobject", write=True)] = Field(
        default_factory=lambda: {"Type": ("New Business",), "RecordType.DeveloperName": ("Sales",)}
    )
    steps_by_name: dict[str, Step] = Field(default_factory=dict)


def _settings(**values: object) -> Example:
    return Example.model_validate({"sop_file": "x.txt", "steps": {}, **values})


def test_settings_declare_the_fields_read_written_and_the_picklist_values() -> None:
    found = declarations(_settings(reason_field="Closed_Reason__c", reason="Unreachable"))
    assert found.needs == {
        "Opportunity": {
            "OwnerId",
            "Account.Name",
            "StageName",
            "Closed_Reason__c",
            "Type",
            "RecordType.DeveloperName",
        },
        "Task": {"Type"},
    }
    # A dotted path is read through a lookup: never an update, never a picklist.
    assert found.writes == {"Opportunity": {"Closed_Reason__c", "Type"}, "Lead": {"Status"}}
    assert found.picklists == {
        ("Opportunity", "StageName"): {"Closed Won"},
        ("Opportunity", "Closed_Reason__c"): {"Unreachable"},
        ("Lead", "Status"): {"Open"},
        ("Opportunity", "Type"): {"New Business"},
    }


def test_the_object_follows_the_setting_that_names_it() -> None:
    found = _settings(sobject="Payment__c").needs()
    assert "Payment__c" in found
    assert "Opportunity" not in found
    assert ("Payment__c", "StageName") in _settings(sobject="Payment__c").picklist_values()


def test_an_empty_setting_declares_nothing() -> None:
    found = declarations(_settings(reason_field=None, reason="Unreachable"))
    assert "Closed_Reason__c" not in found.needs["Opportunity"]
    assert not any(field is None for _, field in found.picklists)
    assert ("Opportunity", "Closed_Reason__c") not in found.picklists


def test_nested_sections_resolve_names_in_the_sections_around_them() -> None:
    found = declarations(
        _settings(
            sobject="Account",
            steps_by_name={"flag": {"field": "Sequence__c", "value": "Late"}, "none": {}},
        )
    )
    assert "Sequence__c" in found.needs["Account"]
    assert "Sequence__c" in found.writes["Account"]
    assert found.picklists[("Account", "Sequence__c")] == {"Late"}


def test_values_of_a_setting_that_names_no_field_is_a_programming_error() -> None:
    class Broken(RuleSettings):
        count: int = 1
        values: Annotated[tuple[str, ...], ValuesOf("count")] = ("a",)

    broken = Broken.model_validate({"sop_file": "x.txt", "steps": {}})
    with pytest.raises(TypeError, match="not marked FieldOf"):
        declarations(broken)
