"""Related records: a rule declares the other objects it reads (users and managers, queues
and their members, lead and opportunity history, campaign members, events) and the pull
reads each the way that object can be read: history on CreatedDate, no IsDeleted where the
object has none, queue members whole every time (a removed member leaves no row)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import pytest

from worker.dryrun import DryRunSink, ReadOnlyLedger
from worker.mapping import LoadedMapping, OrgMapping, RuleSettings, load_mapping
from worker.pipeline import Pipeline, RunReport
from worker.ports import ObjectQuery
from worker.records import Record, Snapshot
from worker.rules import AsOf, Evaluation, Rule, Verdict, rule_models
from worker.salesforce.source import SalesforceSource
from worker.store import Store

from ..conftest import DEFAULT_MAPPING
from .fakeorg import FakeOrg
from .sfhelpers import make_client

RELATED = {
    "User": {"Name", "IsActive", "ManagerId"},
    "Group": {"DeveloperName", "Type"},
    "GroupMember": {"GroupId", "UserOrGroupId"},
    "LeadHistory": {"LeadId", "Field", "OldValue", "NewValue", "CreatedDate"},
    "OpportunityHistory": {"OpportunityId", "StageName", "CreatedDate"},
    "CampaignMember": {"CampaignId", "LeadId", "Status"},
    "Event": {"WhoId", "StartDateTime"},
}


class ProbeSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = ("look",)

    def needs(self) -> dict[str, set[str]]:
        return {"Lead": {"Status"}, **RELATED}


def _candidates(snapshot: Snapshot, s: ProbeSettings, org: OrgMapping) -> Iterable[Record]:
    return snapshot.of("Lead")


def _decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: ProbeSettings, org: OrgMapping
) -> Evaluation:
    history = snapshot.children("LeadHistory", "LeadId", record.id)
    return Evaluation("probe", record.ref(), Verdict.NOT_DUE, f"{len(history)} changes")


PROBE: Rule[ProbeSettings] = Rule(
    id="probe",
    title="reads related records",
    settings_model=ProbeSettings,
    step_ids=("look",),
    candidates=_candidates,
    decide=_decide,
)


@pytest.fixture
def probe_mapping(tmp_path: Path) -> LoadedMapping:
    path = tmp_path / "m.toml"
    path.write_text(
        DEFAULT_MAPPING.read_text(encoding="utf-8")
        + '\n[objects.Group]\nfilters = { Type = ["Queue"] }\n'
        + '\n[rules.probe]\nsop_file = "004.txt"\nsteps = { look = "Route" }\n',
        encoding="utf-8",
    )
    return load_mapping(path, {**rule_models(), "probe": ProbeSettings})


@pytest.fixture
def seeded(org: FakeOrg) -> FakeOrg:
    manager = org.add("User", Name="Mia Manager", IsActive=True)
    org.add("User", Id="005000000000000REP", Name="Rex Rep", IsActive=True, ManagerId=manager)
    queue = org.add("Group", Id="00G000000000000QUE", DeveloperName="West", Type="Queue")
    org.add("Group", DeveloperName="Everyone", Type="Regular")
    org.add("GroupMember", Id="011000000000000GM1", GroupId=queue, UserOrGroupId=manager)
    org.add("GroupMember", GroupId=queue, UserOrGroupId="005000000000000REP")
    lead = org.add("Lead", Id="00Q000000000000LEA", LastName="Lee", Status="New Lead")
    for old, new in (("New Lead", "Contact Attempted"), ("Contact Attempted", "New Lead")):
        org.add("LeadHistory", LeadId=lead, Field="Status", OldValue=old, NewValue=new)
    opp = org.add("Opportunity", Name="Deal", StageName="Prospecting")
    org.add("OpportunityHistory", OpportunityId=opp, StageName="Prospecting")
    campaign = org.add("Campaign", Name="Webinar")
    org.add("CampaignMember", CampaignId=campaign, LeadId=lead, Status="Responded")
    org.add("Event", WhoId=lead, StartDateTime="2026-11-24T15:00:00.000+0000")
    return org


def pull(org: FakeOrg, store: Store, mapping: LoadedMapping) -> RunReport:
    client = make_client(org, overlap_seconds=0)
    pipeline = Pipeline(
        store=store,
        source=SalesforceSource(client),
        sink=DryRunSink(),
        ledger=ReadOnlyLedger(store),
        mapping=mapping,
        rules=[PROBE],
        clock=lambda: org.now,
    )
    report = RunReport("r", dt.date(2026, 11, 23), True)
    pipeline.pull(report, org.now)
    return report


def test_related_objects_are_read_each_as_it_can_be(
    seeded: FakeOrg, tmp_path: Path, probe_mapping: LoadedMapping
) -> None:
    org = seeded
    with Store.open(tmp_path / "w.db") as store:
        first = pull(org, store, probe_mapping)
        # Every query was accepted by an org that refuses unknown fields (no IsDeleted on
        # User or GroupMember, no SystemModstamp on LeadHistory).
        assert first.records_read["LeadHistory"] == 2
        assert first.records_read["Group"] == 1  # the queue only ([objects.Group] filters)
        assert first.records_read["GroupMember"] == 2
        assert first.records_read["User"] == 2
        for sobject in ("OpportunityHistory", "CampaignMember", "Event"):
            assert first.records_read[sobject] == 1

        org.add("LeadHistory", LeadId="00Q000000000000LEA", Field="Status", NewValue="x")
        org.delete("011000000000000GM1")  # a member leaves the queue: the row is gone
        org.edit("005000000000000REP", IsActive=False)
        second = pull(org, store, probe_mapping)
        # Incremental on CreatedDate: the new row only (the cursor resumes after the last
        # CreatedDate and Id read, as on SystemModstamp), not the whole history.
        assert second.records_read["LeadHistory"] == 1
        assert second.records_read["User"] == 1  # only the changed user
        assert second.records_read["GroupMember"] == 1  # read whole: the one left

        snapshot, problems = store.load_snapshot(["GroupMember", "User", "LeadHistory"])
    assert problems == []
    assert [m.id for m in snapshot.of("GroupMember")] != ["011000000000000GM1"]
    assert len(snapshot.of("GroupMember")) == 1
    assert snapshot.get("005000000000000REP").flag("IsActive") is False  # type: ignore[union-attr]
    assert len(snapshot.children("LeadHistory", "LeadId", "00Q000000000000LEA")) == 3


@pytest.mark.parametrize(
    ("sobject", "selected", "ordered_by"),
    [
        ("User", "SELECT Id, SystemModstamp, IsActive", "ORDER BY SystemModstamp, Id"),
        ("GroupMember", "SELECT Id, SystemModstamp, GroupId", "ORDER BY SystemModstamp, Id"),
        ("LeadHistory", "SELECT Id, CreatedDate, IsDeleted, Field,", "ORDER BY CreatedDate, Id"),
        (
            "OpportunityHistory",
            "SELECT Id, SystemModstamp, IsDeleted, CreatedDate, OpportunityId",
            "ORDER BY SystemModstamp, Id",
        ),
        (
            "Event",
            "SELECT Id, SystemModstamp, IsDeleted, StartDateTime",
            "ORDER BY SystemModstamp, Id",
        ),
    ],
)
def test_the_incremental_query_of_each_related_object(
    org: FakeOrg, probe_mapping: LoadedMapping, sobject: str, selected: str, ordered_by: str
) -> None:
    fields = tuple(sorted(RELATED[sobject]))
    replication = probe_mapping.common.replication(sobject)
    since = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    query = ObjectQuery(sobject, fields, {}, since, org.now, replication)
    soql = SalesforceSource(make_client(org, overlap_seconds=0)).soql(query)
    assert soql.startswith(selected)
    assert f"{replication.stamp} >= 2026-11-20T00:00:00Z" in soql
    assert soql.endswith(ordered_by)
    # The org answers it: every field named exists on the object.
    assert list(SalesforceSource(make_client(org)).fetch([query]))


def test_a_mapping_can_name_an_objects_replication_field(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        DEFAULT_MAPPING.read_text(encoding="utf-8")
        + '\n[objects.Audit_Log__c]\nreplication_key = "CreatedDate"\n',
        encoding="utf-8",
    )
    common = load_mapping(path, rule_models()).common
    assert common.replication("Audit_Log__c").stamp == "CreatedDate"
    assert common.replication("Account__History").stamp == "CreatedDate"
    assert common.replication("Account").stamp == "SystemModstamp"
    assert common.replication("GroupMember").full


# -- [calendar] source = "org": the org's BusinessHours and Holidays, pulled like the rest ----
class OpenSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = ("look",)

    def needs(self) -> dict[str, set[str]]:
        return {"Lead": {"Status"}}


def _opens(
    record: Record, snapshot: Snapshot, at: AsOf, s: OpenSettings, org: OrgMapping
) -> Evaluation:
    opens = org.calendar.next_open(at.instant).astimezone(dt.UTC)
    return Evaluation("opens", record.ref(), Verdict.NOT_DUE, f"opens {opens:%Y-%m-%d %H:%M}Z")


OPENS: Rule[OpenSettings] = Rule(
    id="opens",
    title="says when the business opens",
    settings_model=OpenSettings,
    step_ids=("look",),
    candidates=_candidates,  # type: ignore[arg-type]
    decide=_opens,
)


def test_the_calendar_can_come_from_the_orgs_business_hours(org: FakeOrg, tmp_path: Path) -> None:
    text = DEFAULT_MAPPING.read_text(encoding="utf-8")
    start = text.index("[calendar]")
    end = text.index("[tasks]")
    path = tmp_path / "m.toml"
    path.write_text(
        text[:start]
        + '[calendar]\nsource = "org"\n\n'
        + text[end:]
        + '\n[rules.opens]\nsop_file = "004.txt"\nsteps = { look = "Route" }\n',
        encoding="utf-8",
    )
    mapping = load_mapping(path, {**rule_models(), "opens": OpenSettings})
    hours = {
        f"{day}{edge}": value
        for day in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
        for edge, value in (("StartTime", "08:00:00.000Z"), ("EndTime", "18:00:00.000Z"))
    }
    org.add(
        "BusinessHours",
        Name="Default",
        IsActive=True,
        IsDefault=True,
        TimeZoneSidKey="America/New_York",
        **hours,
    )
    org.add("Holiday", Name="Day off", IsAllDay=True, IsRecurrence=False, ActivityDate="2026-11-24")
    org.add("Lead", LastName="Lee", Status="New Lead")
    # Monday 2026-11-23 18:30 in New York: closed there (the mapping's Chicago 9-17 would be
    # closed too, but open again at 09:00 Chicago on Tuesday); Tuesday is the org's holiday.
    org.now = dt.datetime(2026, 11, 23, 23, 30, tzinfo=dt.UTC)
    with Store.open(tmp_path / "w.db") as store:
        pipeline = Pipeline(
            store=store,
            source=SalesforceSource(make_client(org)),
            sink=DryRunSink(),
            ledger=ReadOnlyLedger(store),
            mapping=mapping,
            rules=[OPENS],
            clock=lambda: org.now,
        )
        result = pipeline.run("r", dt.date(2026, 11, 23))
        (evaluation,), _ = pipeline.evaluate(pipeline.instant(dt.date(2026, 11, 23)))
    assert result.records_read["BusinessHours"] == 1
    assert result.records_read["Holiday"] == 1
    assert evaluation.why == "opens 2026-11-25 13:00Z"  # Wednesday 08:00 in New York
