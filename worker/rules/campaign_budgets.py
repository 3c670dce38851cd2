"""Campaign budget approvals by band (SOP 004, Campaign Execution SOP, 1. Campaign
Planning, "Approval Matrix": under $5K the marketing manager, $5K-$25K the director of
marketing, $25K-$100K the CMO, above $100K the CEO).

The same machinery as the discount approvals (:mod:`.deal_approvals`), over Campaigns and
their budget, with its own mapping section ``[rules.campaign_budgets]``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from worker.declarations import FieldValues
from worker.mapping import OrgMapping
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule
from worker.rules.deal_approvals import STEPS, ApprovalSettings, candidates, decide_approval

RULE_ID = "campaign_budgets"


class CampaignBudgetsSettings(ApprovalSettings):
    scope_key: ClassVar[str] = "campaign_scope"

    campaign_scope: Annotated[dict[str, tuple[str, ...]], FieldValues("sobject")] = Field(
        default_factory=dict,
        description="Campaign field (dotted paths allowed) -> allowed values, ANDed.",
    )


def decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: CampaignBudgetsSettings, org: OrgMapping
) -> Evaluation:
    return decide_approval(RULE_ID, record, snapshot, at, s, org)


RULE: Rule[CampaignBudgetsSettings] = Rule(
    id=RULE_ID,
    title="Campaign budget approvals by band",
    settings_model=CampaignBudgetsSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
