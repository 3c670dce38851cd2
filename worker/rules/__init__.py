"""The rules, one module per SOP, run from one explicit ordered list.

To add a rule: write ``worker/rules/<name>.py`` exposing ``RULE`` (see
:mod:`worker.rules.base`), append it to :data:`ALL_RULES`, and give it a
``[rules.<id>]`` section in the mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.mapping import RuleSettings
from worker.rules import (
    collections,
    homecare_stages,
    lead_scoring,
    payment_followup,
    rejected_payments,
)
from worker.rules.base import (
    AsOf,
    Batch,
    Evaluation,
    Rule,
    SkippedStep,
    Verdict,
    evaluate_rule,
)

ALL_RULES: tuple[Rule[Any], ...] = (
    payment_followup.RULE,
    rejected_payments.RULE,
    homecare_stages.RULE,
    collections.RULE,
    lead_scoring.RULE,
)


def rule_models() -> Mapping[str, type[RuleSettings]]:
    return {rule.id: rule.settings_model for rule in ALL_RULES}


__all__ = [
    "ALL_RULES",
    "AsOf",
    "Batch",
    "Evaluation",
    "Rule",
    "SkippedStep",
    "Verdict",
    "evaluate_rule",
    "rule_models",
]
