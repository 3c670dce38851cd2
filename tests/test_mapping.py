"""Mapping validation: every problem names the file and the key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from worker.declarations import Placeholders
from worker.errors import MappingError
from worker.mapping import load_mapping
from worker.rules import rule_models

from .conftest import DEFAULT_MAPPING


def broken(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_MAPPING.read_text(encoding="utf-8")
    assert old in text, old
    path = tmp_path / "org.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (
            "follow_up_every_days = 2",
            'follow_up_every_days = "two"',
            "rules.payment_followup.follow_up_every_days",
            "valid integer",
        ),
        (
            "follow_up_every_days = 2",
            "follow_up_every_dayz = 2",
            "rules.payment_followup.follow_up_every_dayz",
            "unknown key",
        ),
        (
            'close_date_field = "CloseDate"\n',
            "",
            "rules.payment_followup.close_date_field",
            "required key is missing",
        ),
        (
            'name = "SOP Worker demo org"',
            'name = "x"\ncolour = "blue"',
            "org.colour",
            "unknown key",
        ),
        (
            'closeout = "Step 3: Close Out the Opportunity"\n',
            "",
            "rules.payment_followup",
            "no label for step(s) closeout",
        ),
        (
            "final_attempt_day = 60",
            "final_attempt_day = 20",
            "rules.payment_followup",
            "final_attempt_day must be after start_after_days",
        ),
        (
            'time_zone = "America/Chicago"',
            'time_zone = "Mars/Olympus"',
            "org.time_zone",
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            'phone_region = "US"',
            'phone_region = "Narnia"',
            "org.phone_region",
            "not a country with a phone numbering plan: 'Narnia'",
        ),
        (
            "follow_up_every_days = 2",
            'follow_up_every_days = 2\nassignment_rule_steps = ["return_to_queue"]',
            "rules.payment_followup",
            "assignment_rule_steps: not a step of this rule: return_to_queue",
        ),
        (
            'initial_subject = "Payment follow-up #{attempt}: initial contact - {account}"',
            'initial_subject = "Payment follow-up #{attempt}: initial contact - {acount}"',
            "rules.payment_followup.initial_subject",
            "unknown placeholder(s) {acount} (this template can use {account}, {age}, {as_of}",
        ),
        (
            'log_line = "{date} Attempt {attempt}: {subject}"',
            'log_line = "{date} Attempt {attempt}: {subject} ({account})"',
            "rules.payment_followup.log_line",
            "unknown placeholder(s) {account}",
        ),
        (
            'closeout_note = "{as_of} Closed out',
            'closeout_note = "{as_of} {attempt} Closed out',
            "rules.payment_followup.closeout_note",
            "unknown placeholder(s) {attempt}",
        ),
        (
            'closeout_note = "{as_of} Closed out',
            'closeout_note = "{as_of Closed out',
            "rules.payment_followup.closeout_note",
            "malformed template",
        ),
        (
            'closeout_note = "{as_of} Closed out',
            'closeout_note = "{} Closed out',
            "rules.payment_followup.closeout_note",
            "a placeholder without a name",
        ),
        (
            'closeout_note = "{as_of} Closed out',
            'closeout_note = "{as_of:%Y} Closed out',
            "rules.payment_followup.closeout_note",
            "placeholder(s) as_of: write {name} without a format",
        ),
        (
            'subject = "Day 2: call {contact} (attempt #1)"',
            'subject = "Day 2: call {contact_name} (attempt #1)"',
            "rules.prospecting_cadence.cadence.call_1.subject",
            "unknown placeholder(s) {contact_name}",
        ),
        (
            'close_note = "Closed on {as_of} by SOP Worker',
            'close_note = "Closed on {as_of} for {contact} by SOP Worker',
            "rules.prospecting_cadence.close_note",
            "unknown placeholder(s) {contact}",
        ),
        (
            "[rules.payment_followup]\n",
            "[rules.payment_followups]\n",
            "rules.payment_followups",
            "unknown rule",
        ),
    ],
)
def test_problem_names_file_and_key(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    path = broken(tmp_path, old, new)
    with pytest.raises(MappingError) as info:
        load_mapping(path, rule_models())
    text = str(info.value)
    assert f"{path}: {key}" in text
    assert message in text


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[org\nname = 1", encoding="utf-8")
    with pytest.raises(MappingError, match=re.escape(f"{path}: not valid TOML")):
        load_mapping(path, rule_models())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="file not found"):
        load_mapping(tmp_path / "nope.toml", rule_models())


def test_default_mapping_loads_every_rule() -> None:
    loaded = load_mapping(DEFAULT_MAPPING, rule_models())
    assert set(loaded.rules) == set(rule_models())
    assert set(loaded.precedence) == set(rule_models())


def test_a_15_character_id_in_a_scope_filter_is_the_18_character_one(tmp_path: Path) -> None:
    path = broken(
        tmp_path,
        "[objects.Opportunity]\n",
        '[objects.Opportunity]\nfilters = { OwnerId = ["005M000000qfPyS"], StageName = ["x"] }\n',
    )
    loaded = load_mapping(path, rule_models())
    filters = loaded.common.objects["Opportunity"].filters
    assert filters["OwnerId"] == ("005M000000qfPySIAU",)
    assert filters["StageName"] == ("x",)


def test_a_scope_filter_id_that_is_not_an_id_names_the_key(tmp_path: Path) -> None:
    path = broken(
        tmp_path,
        "[objects.Opportunity]\n",
        '[objects.Opportunity]\nfilters = { OwnerId = ["005M00"] }\n',
    )
    with pytest.raises(MappingError) as info:
        load_mapping(path, rule_models())
    assert f"{path}: objects.Opportunity.filters" in str(info.value)
    assert "'005M00' is not a record Id" in str(info.value)


def _undeclared_templates(value: object, path: str) -> list[str]:
    """Key paths of text values with a {placeholder} that no Placeholders mark covers."""
    if isinstance(value, BaseModel):
        found = []
        for name, info in type(value).model_fields.items():
            if not any(isinstance(m, Placeholders) for m in info.metadata):
                found += _undeclared_templates(getattr(value, name), f"{path}.{name}")
        return found
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _undeclared_templates(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _undeclared_templates(v, f"{path}.{i}")]
    if isinstance(value, str) and re.search(r"\{[a-z_]+\}", value):
        return [path]
    return []


def test_every_template_in_the_mapping_is_checked_at_load() -> None:
    loaded = load_mapping(DEFAULT_MAPPING, rule_models())
    unchecked = [
        p
        for rule_id, section in loaded.rules.items()
        for p in _undeclared_templates(section, f"rules.{rule_id}")
    ]
    assert unchecked == []
