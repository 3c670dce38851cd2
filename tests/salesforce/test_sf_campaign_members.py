"""CampaignMember creates through sObject Collections: one membership per person and
campaign, as Salesforce keeps it. A person already a member (added by marketing, an earlier
run, a retry after a lost answer) answers DUPLICATE_VALUE, which is the action done; a
membership Salesforce refuses for another reason fails that action alone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from worker.actions import AddCampaignMember, Outcome
from worker.mapping import LoadedMapping
from worker.pipeline import Pipeline, RunReport
from worker.records import RecordRef
from worker.rules import ALL_RULES
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource
from worker.store import Store

from .fakeorg import FakeOrg
from .sfhelpers import make_client

KEY_FIELD = "SOP_Worker_Key__c"
CAMPAIGN = "701Dm1650000001IAA"  # the mapping's nurture campaign


def member(org: FakeOrg, campaign: str, person: str, key: str) -> AddCampaignMember:
    opp = org.add("Opportunity", Name="Lost deal", StageName="Closed Lost")
    return AddCampaignMember(
        rule="closed_won_lost",
        sop="004.txt",
        step="Closed Lost: add to nurture campaign",
        target=RecordRef("Opportunity", opp),
        reason="test",
        key=key,
        campaign_id=campaign,
        member_id=person,
        status="Sent",
    )


def members(org: FakeOrg) -> list[tuple[str, str, str]]:
    """(campaign, person, status) of each CampaignMember."""
    return sorted(
        (m["CampaignId"], m.get("ContactId") or m["LeadId"], m["Status"])
        for m in org.of("CampaignMember")
    )


def test_members_are_added_once_and_a_member_already_is_done(org: FakeOrg) -> None:
    campaign = org.add("Campaign", Name="Lost-deal nurture", Status="In Progress")
    contact = org.add("Contact", LastName="Connor")
    lead = org.add("Lead", LastName="Reese", Company="Tech Noir")
    marketing = org.add("Contact", LastName="Dyson")
    org.add("CampaignMember", CampaignId=campaign, ContactId=marketing, Status="Responded")
    actions = [
        member(org, campaign, contact, "k-contact"),
        member(org, campaign, lead, "k-lead"),
        member(org, campaign, contact, "k-contact-again"),  # the same person, same request
        member(org, campaign, marketing, "k-marketing"),  # a member before the worker
    ]
    sink = SalesforceSink(make_client(org), task_key_field=KEY_FIELD)
    results = sink.write(actions)
    assert [r.outcome for r in results] == [Outcome.APPLIED] * 4
    assert results[0].sf_id
    assert results[1].sf_id
    for again in results[2:]:
        assert (
            again.message == "already a member of the campaign (DUPLICATE_VALUE); not added again"
        )
    assert members(org) == sorted(
        [
            (campaign, contact, "Sent"),
            (campaign, lead, "Sent"),
            (campaign, marketing, "Responded"),
        ]
    )
    assert org.calls_by_kind == {"composite": 1}
    assert sink.estimate_write_calls(actions) == 1
    rerun = sink.write(actions)  # a rerun that lost its ledger
    assert [r.outcome for r in rerun] == [Outcome.APPLIED] * 4
    assert len(org.of("CampaignMember")) == 3


def test_a_refused_membership_fails_alone_with_its_error_code(org: FakeOrg) -> None:
    campaign = org.add("Campaign", Name="Lost-deal nurture", Status="In Progress")
    contact = org.add("Contact", LastName="Connor")
    gone = org.add("Contact", LastName="Gone")
    org.get(gone)["IsDeleted"] = True  # type: ignore[index]
    sink = SalesforceSink(make_client(org), task_key_field=KEY_FIELD)
    results = sink.write(
        [
            member(org, "701Dm1650000009IAA", contact, "k-no-campaign"),
            member(org, campaign, gone, "k-deleted"),
            member(org, campaign, contact, "k-ok"),
        ]
    )
    assert [(r.outcome, r.error_code) for r in results] == [
        (Outcome.FAILED, "INVALID_CROSS_REFERENCE_KEY"),
        (Outcome.FAILED, "INVALID_CROSS_REFERENCE_KEY"),
        (Outcome.APPLIED, None),
    ]
    assert members(org) == [(campaign, contact, "Sent")]


def test_a_lost_answer_is_sent_again_without_a_second_member(org: FakeOrg) -> None:
    campaign = org.add("Campaign", Name="Lost-deal nurture", Status="In Progress")
    contact = org.add("Contact", LastName="Connor")
    org.fail(kind="composite", drop=True)  # applied, then the answer is lost
    (result,) = SalesforceSink(make_client(org), task_key_field=KEY_FIELD).write(
        [member(org, campaign, contact, "k1")]
    )
    assert result.outcome is Outcome.APPLIED
    assert "already a member" in (result.message or "")
    assert len(org.of("CampaignMember")) == 1
    assert org.calls_by_kind == {"composite": 2}  # the create and its replay


def test_a_lost_deals_primary_contact_joins_the_nurture_campaign_once(
    tmp_path: Path, mapping: LoadedMapping
) -> None:
    """closed_won_lost on a fake org, its database lost every day: the membership is read
    back from the org, so the contact is added on the first day only."""
    with FakeOrg(now=dt.datetime(2026, 11, 19, 15, 0, tzinfo=dt.UTC)) as org:
        org.add("Campaign", Id=CAMPAIGN, Name="Lost-deal nurture", Status="In Progress")
        rep = org.add("User", Name="Olivia Grant", IsActive=True)
        contact = org.add("Contact", FirstName="Sarah", LastName="Connor")
        opp = org.add(
            "Opportunity",
            Name="Cyberdyne - Analytics",
            Type="New Business",
            StageName="Closed Lost",
            CloseDate="2026-11-18",
            Amount=36000.0,
            Loss_Reason__c="Going with Another Company",
            OwnerId=rep,
        )
        org.add(
            "OpportunityHistory",
            OpportunityId=opp,
            StageName="Closed Lost",
            CreatedDate="2026-11-18T15:00:00.000+0000",
        )
        org.add("OpportunityContactRole", OpportunityId=opp, ContactId=contact, IsPrimary=True)
        rule = next(r for r in ALL_RULES if r.id == "closed_won_lost")

        def cycle(n: int) -> RunReport:
            org.now = max(org.now, dt.datetime(2026, 11, 19 + n, 15, 0, tzinfo=dt.UTC))
            client = make_client(org)
            with Store.open(tmp_path / f"day{n}.db") as store:  # a new database each day
                return Pipeline(
                    store=store,
                    source=SalesforceSource(client),
                    sink=SalesforceSink(client, task_key_field=KEY_FIELD),
                    ledger=store,
                    mapping=mapping,
                    rules=[rule],
                    clock=lambda: org.now,
                ).run(f"day{n}", org.now.date())

        first = cycle(0)
        # the loss interview, the follow-up reminder, the nurture campaign
        assert first.outcomes[("closed_won_lost", "applied")] == 3
        assert members(org) == [(CAMPAIGN, contact, "Sent")]
        cycle(1)
        assert len(org.of("CampaignMember")) == 1
