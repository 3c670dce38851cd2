"""The rules, one module per rule, found by looking: every module of this package that
exposes ``RULE`` (see :mod:`worker.rules.base`) is a rule.

Adding a rule touches only its own files: ``worker/rules/<id>.py``, its ``[rules.<id>]``
mapping section, its tests and its doc page (the README's "Adding a rule" has the recipe).
A rule runs when its mapping section is present and enabled, in the order of the
mapping's ``precedence`` list and then by id (:func:`runnable`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from typing import Any

from worker.mapping import LoadedMapping, RuleSettings
from worker.rules.base import (
    AsOf,
    Batch,
    Evaluation,
    Rule,
    SkippedStep,
    Verdict,
    evaluate_rule,
)


def _discover() -> tuple[Rule[Any], ...]:
    found: dict[str, tuple[str, Rule[Any]]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        rule = getattr(module, "RULE", None)
        if not isinstance(rule, Rule):
            continue  # base, kit: helpers, not rules
        if rule.id in found:
            other = found[rule.id][0]
            raise RuntimeError(f"modules {other} and {info.name} both define rule {rule.id!r}")
        found[rule.id] = (info.name, rule)
    return tuple(rule for _, (_, rule) in sorted(found.items()))


ALL_RULES: tuple[Rule[Any], ...] = _discover()


def rule_models() -> Mapping[str, type[RuleSettings]]:
    return {rule.id: rule.settings_model for rule in ALL_RULES}


def runnable(rules: Iterable[Rule[Any]], mapping: LoadedMapping) -> list[Rule[Any]]:
    """The rules the mapping enables, in the order they run: its precedence, then by id."""
    rank = {rule_id: i for i, rule_id in enumerate(mapping.precedence)}
    enabled = [rule for rule in rules if mapping.enabled(rule.id)]
    return sorted(enabled, key=lambda rule: (rank.get(rule.id, len(rank)), rule.id))


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
    "runnable",
]
