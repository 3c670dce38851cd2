"""Canary apply: ``run`` and ``apply`` write to a subset of the plan's records first.

A record is in the canary when it passes every filter given: its owner (``--owner``: the
cached record's OwnerId), a stable sample (``--sample PERCENT``: the same records every time,
chosen by a hash of the record Id, so a second canary run widens nothing by chance), and
at most ``--limit`` records, in plan order. A record's actions (and its skipped or
superseded steps) stay together. The rest is not written and not recorded: the next run
plans it again, and applying the same plan file without the canary options applies it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from worker.plan import Plan

SAMPLE_BUCKETS = 10_000


def in_sample(record_id: str, percent: float) -> bool:
    """Whether the record falls in a ``percent`` sample: stable across runs and machines."""
    digest = hashlib.sha256(record_id.encode()).hexdigest()
    return int(digest[:8], 16) % SAMPLE_BUCKETS < percent * SAMPLE_BUCKETS / 100


@dataclass(frozen=True)
class Canary:
    limit: int | None = None
    owner: str | None = None
    sample: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.limit, self.owner, self.sample))

    def describe(self) -> str:
        parts = []
        if self.owner:
            parts.append(f"owner {self.owner}")
        if self.sample is not None:
            parts.append(f"a {self.sample:g}% sample by record Id")
        if self.limit is not None:
            parts.append(f"at most {self.limit} record(s)")
        return ", ".join(parts)

    def narrow(self, plan: Plan, owner_of: Callable[[str], str | None]) -> Plan:
        """The plan's part for the canary records; ``owner_of`` gives a record's OwnerId."""
        order: list[str] = []
        for rid in (
            *(a.target.id for a in plan.actions),
            *(s.action.target.id for s in (*plan.skipped, *plan.superseded, *plan.deferred)),
        ):
            if rid not in order:
                order.append(rid)
        chosen = [
            rid
            for rid in order
            if (self.sample is None or in_sample(rid, self.sample))
            and (self.owner is None or owner_of(rid) == self.owner)
        ]
        if self.limit is not None:
            chosen = chosen[: self.limit]
        keep = set(chosen)
        return dataclasses.replace(
            plan,
            actions=tuple(a for a in plan.actions if a.target.id in keep),
            skipped=tuple(s for s in plan.skipped if s.action.target.id in keep),
            superseded=tuple(s for s in plan.superseded if s.action.target.id in keep),
            deferred=tuple(s for s in plan.deferred if s.action.target.id in keep),
        )
