"""Closed Won and Closed Lost actions (SOP 004, Sales Process SOP, "Stage 6: Closed
Won/Lost"): what the worker can do of the six actions on each side.

Won ("1. Update CRM immediately 2. Send internal win notification 3. Schedule kickoff call
4. Introduce Customer Success 5. Request referrals 6. Celebrate!"): the internal win
notification (an email through Salesforce's email action when ``[org]
email_action_enabled``, else a Task for the owner to send it), a Task for the CSM
(``csm_field``) to schedule the kickoff call, a Task for the owner to introduce Customer
Success, and a referral request Task due ``referral_after_days`` after the win. "Update
CRM" is the stage itself; "Celebrate!" is the team's.

Lost ("1. Conduct loss interview 2. Document reasons 3. Set follow-up reminder 4. Add to
nurture campaign 5. Request feedback 6. Learn and improve"): a loss interview Task, a Task
asking for the reason when ``loss_reason_field`` is blank, a follow-up reminder Task due
``followup_after_days`` after the loss, and the primary contact (the contact role with
``IsPrimary``) added to the ``nurture_campaign_id`` campaign, unless the org shows them a
member already.

The day a deal closed is the day it entered its closed stage by ``OpportunityHistory``; a
deal whose close is not in the history read, or older than ``recent_days``, is left alone,
so a first run does not act on every deal ever closed. A won deal whose Close Date is still in the future
and has no history of the win, or that has no CSM, is an error for that record: said, not
guessed. Each action is keyed once per deal (``closed_won_lost:<step>:<id>``), its state
read from the org's Tasks and logged emails.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Annotated, ClassVar

from pydantic import Field, field_validator

from worker import schema
from worker.actions import Action, AddCampaignMember
from worker.declarations import FieldOf, FieldValues, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.mapping import OrgMapping, RuleSettings
from worker.records import Record, Snapshot, full_record_id
from worker.rules.base import AsOf, Evaluation, Rule, Verdict
from worker.rules.kit import (
    Emit,
    primary_contact_id,
    render,
    worker_emails,
    worker_tasks,
)
from worker.rules.opportunity_stages import stage_entered

RULE_ID = "closed_won_lost"
WON_STEPS = ("notify", "kickoff", "introduce_cs", "referral")
LOST_STEPS = ("loss_interview", "loss_reason", "followup", "nurture")
STEPS = WON_STEPS + LOST_STEPS

_VALUES = frozenset({"name", "account", "amount", "closed", "owner", "csm", "reason"})
_Text = Annotated[str, Placeholders(_VALUES)]


class ClosedWonLostSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar = {
        "sobject": (schema.OWNER_ID, "Amount", "CloseDate", "Account.Name", "Owner.Name"),
        schema.OPPORTUNITY_HISTORY: ("OpportunityId", "StageName", schema.CREATED_DATE),
        schema.OPPORTUNITY_CONTACT_ROLE: ("OpportunityId", "ContactId", "IsPrimary"),
        schema.CAMPAIGN_MEMBER: ("CampaignId", "ContactId"),
    }

    sobject: str = "Opportunity"
    opportunity_scope: Annotated[dict[str, tuple[str, ...]], FieldValues("sobject")] = Field(
        default_factory=dict
    )
    stage_field: Annotated[str, FieldOf("sobject")] = "StageName"
    won_stage: Annotated[str, ValuesOf("stage_field")] = "Closed Won"
    lost_stage: Annotated[str, ValuesOf("stage_field")] = "Closed Lost"
    csm_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Opportunity field holding the CSM's User Id."
    )
    loss_reason_field: Annotated[str, FieldOf("sobject")]
    recent_days: int = Field(default=14, ge=0)
    referral_after_days: int = Field(ge=0)
    followup_after_days: int = Field(ge=0)
    notify_address: str = Field(description="Where the internal win notification goes.")
    notify_subject: _Text
    notify_body: _Text
    kickoff_subject: _Text
    kickoff_description: _Text
    introduce_subject: _Text
    introduce_description: _Text
    referral_subject: _Text
    referral_description: _Text
    interview_subject: _Text
    interview_description: _Text
    reason_subject: _Text
    reason_description: _Text
    followup_subject: _Text
    followup_description: _Text
    nurture_campaign_id: str = Field(
        description="Campaign Id of the lost-deal nurture campaign the primary contact joins."
    )
    nurture_member_status: Annotated[str, ValuesOf("Status", sobject=schema.CAMPAIGN_MEMBER)] = (
        Field(default="", description="The membership's Status; empty: the campaign's default.")
    )

    @field_validator("nurture_campaign_id")
    @classmethod
    def _campaign(cls, value: str) -> str:
        if not value.startswith(schema.CAMPAIGN_ID_PREFIX):
            raise ValueError(f"not a Campaign Id: {value!r}")
        return full_record_id(value)


def candidates(
    snapshot: Snapshot, settings: ClosedWonLostSettings, org: OrgMapping
) -> Iterable[Record]:
    return snapshot.where(settings.sobject, settings.opportunity_scope)


def decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: ClosedWonLostSettings, org: OrgMapping
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, record)
    stage = record.text(s.stage_field)
    if stage not in (s.won_stage, s.lost_stage):
        return _eval(emit, Verdict.EXCLUDED, f"excluded because {s.stage_field}={stage!r}")
    won = stage == s.won_stage
    entered = stage_entered(record, snapshot, s.stage_field)
    closed = entered.astimezone(org.org.zone).date() if entered else None
    if closed is None:
        close_date = record.date("CloseDate")
        if won and close_date is not None and close_date > at.date:
            return _eval(
                emit,
                Verdict.ERROR,
                f"won, but CloseDate {close_date} is in the future and the stage history has "
                f"no win: correct the Close Date",
            )
        return _eval(
            emit,
            Verdict.EXCLUDED,
            f"excluded because it was {stage} before the stage history read (no "
            f"OpportunityHistory row for it)",
        )
    age = (at.date - closed).days
    if age > s.recent_days:
        return _eval(
            emit,
            Verdict.EXCLUDED,
            f"excluded because it closed on {closed}, more than {s.recent_days} days ago",
        )
    done = set(worker_tasks(snapshot, record.id, RULE_ID, org)) | set(
        worker_emails(snapshot, record.id, RULE_ID)
    )
    owner = record.text(schema.OWNER_ID)
    csm = record.text(s.csm_field)
    values: dict[str, object] = {
        "name": emit.target.name or record.id,
        "account": record.text("Account.Name") or emit.target.name or record.id,
        "amount": record.text("Amount") or "(no amount)",
        "closed": closed.isoformat(),
        "owner": record.text("Owner.Name") or owner,
        "csm": csm,
        "reason": record.text(s.loss_reason_field) or "(not documented)",
    }
    where = f"rules.{RULE_ID}"
    actions: list[Action] = []
    notes: list[str] = []

    def task(step: str, subject: str, description: str, due: dt.date, **kw: object) -> None:
        if emit.key(step) in done:
            return
        actions.append(
            emit.task(
                step,
                subject=render(subject, values, f"{where}.{step}_subject", record.id),
                description=render(description, values, f"{where}.{step}_description", record.id),
                reason=f"{stage} on {closed}",
                due=due,
                **kw,  # type: ignore[arg-type]
            )
        )

    if won:
        if not csm:
            raise RecordError(record.id, s.csm_field, "won, but no CSM to hand the deal to")
        if emit.key("notify") not in done:
            subject = render(s.notify_subject, values, f"{where}.notify_subject", record.id)
            body = render(s.notify_body, values, f"{where}.notify_body", record.id)
            if org.org.email_action_enabled:
                actions.append(
                    emit.email(
                        "notify",
                        to_address=s.notify_address,
                        subject=subject,
                        body=body,
                        reason=f"{stage} on {closed}",
                    )
                )
            else:
                actions.append(
                    emit.task(
                        "notify",
                        subject=f"Send: {subject}",
                        description=f"To: {s.notify_address}\n\n{body}",
                        reason=f"{stage} on {closed}; the email action is off",
                        due=at.date,
                        channel="email",
                    )
                )
        task("kickoff", s.kickoff_subject, s.kickoff_description, at.date, owner_id=csm)
        task("introduce_cs", s.introduce_subject, s.introduce_description, at.date)
        referral_on = closed + dt.timedelta(days=s.referral_after_days)
        task("referral", s.referral_subject, s.referral_description, max(referral_on, at.date))
    else:
        task("loss_interview", s.interview_subject, s.interview_description, at.date)
        if not record.text(s.loss_reason_field):
            task("loss_reason", s.reason_subject, s.reason_description, at.date)
        followup_on = closed + dt.timedelta(days=s.followup_after_days)
        task("followup", s.followup_subject, s.followup_description, max(followup_on, at.date))
        nurture = _nurture(emit, record, snapshot, s, f"{stage} on {closed}")
        if isinstance(nurture, str):
            notes.append(nurture)
        elif nurture is not None and emit.key("nurture") not in done:
            actions.append(nurture)
    why = f"{stage} on {closed} ({age} days ago)" + "".join(f"; {n}" for n in notes)
    return _eval(emit, Verdict.ACT if actions else Verdict.DONE, why, actions)


def _nurture(
    emit: Emit, record: Record, snapshot: Snapshot, s: ClosedWonLostSettings, reason: str
) -> AddCampaignMember | str | None:
    """The primary contact added to the nurture campaign; what stops it, as a note; None
    when the org shows them a member already."""
    contact = primary_contact_id(snapshot, record.id)
    if contact is None:
        return "no primary contact (OpportunityContactRole.IsPrimary) for the nurture campaign"
    members = snapshot.children(schema.CAMPAIGN_MEMBER, "ContactId", contact)
    if any(m.text("CampaignId") == s.nurture_campaign_id for m in members):
        return None
    return emit.add_campaign_member(
        "nurture",
        campaign_id=s.nurture_campaign_id,
        member_id=contact,
        status=s.nurture_member_status or None,
        reason=f"{reason}: its primary contact joins the lost-deal nurture campaign",
    )


def _eval(emit: Emit, verdict: Verdict, why: str, actions: Iterable[Action] = ()) -> Evaluation:
    return Evaluation(RULE_ID, emit.target, verdict, why, actions=tuple(actions))


RULE: Rule[ClosedWonLostSettings] = Rule(
    id=RULE_ID,
    title="Closed Won and Closed Lost actions",
    settings_model=ClosedWonLostSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
