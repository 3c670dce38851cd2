"""The two edges of the pipeline: where records come from and where actions go.

``source -> cache -> rules -> plan -> sink -> audit``

- A :class:`Source` fetches pages of raw records (REST JSON) for a set of object queries.
  The live org and a fixture org on disk both implement it.
- A :class:`Sink` writes actions and reports a typed result per action. The live org and
  the local org write; :class:`~worker.dryrun.DryRunSink` answers every action
  ``would_apply`` and writes nothing.
- A :class:`Ledger` records each action's progress (planned, sent, its outcome): the
  store's own, or, for a dry run, :class:`~worker.dryrun.ReadOnlyLedger`, which keeps nothing.

Both are driven by :mod:`worker.pipeline`, which owns the SQLite cache, the ledger and the
audit log; sources and sinks never touch the database. The pipeline tells the edge how far a
run has got through a :data:`ProgressPort`; the edge decides how to show it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from worker.actions import Action, ActionResult
from worker.records import RecordRef
from worker.schema import SYSTEM_MODSTAMP, USUAL, Replication

if TYPE_CHECKING:
    from collections.abc import Iterable

    from worker.actions import Outcome
    from worker.store import LedgerEntry


@dataclass(frozen=True)
class ObjectQuery:
    """What to read of one sObject: fields, scope filters, and the incremental window."""

    sobject: str
    fields: tuple[str, ...]
    filters: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    since: dt.datetime | None = None  # the watermark: the stamp of the last record read
    until: dt.datetime | None = None  # inclusive upper bound: the run's start time
    # Which field ``since`` and ``until`` bound and the read is ordered by, and whether the
    # object has IsDeleted (see worker.schema.replication).
    replication: Replication = USUAL
    # The cursor's Id: the last record read at ``since``, in (stamp, Id) order (None: read
    # from ``since`` inclusive), and when the read that reached it began. A live source
    # reads again only what a late commit could still hide among: rows stamped within its
    # overlap before ``read_at``.
    after_id: str | None = None
    read_at: dt.datetime | None = None


@dataclass(frozen=True)
class Page:
    """One page of one object's records. ``deleted_ids`` are rows seen with IsDeleted.

    ``settled``: every row stamped at or before this page's newest stamp (its
    ``stamp_field``: SystemModstamp, or CreatedDate for field history) has been
    delivered, so the watermark may move there once the page is committed. True for each
    page of a read ordered by SystemModstamp; an unordered read (Bulk API) marks only its
    last page, and the watermark moves once, to the newest stamp of the whole read.
    """

    sobject: str
    records: Sequence[Mapping[str, Any]]
    deleted_ids: Sequence[str] = ()
    settled: bool = True
    stamp_field: str = SYSTEM_MODSTAMP  # the field the read is ordered by (its replication)


@dataclass(frozen=True)
class ApiUsage:
    """The org's daily API allowance as last reported (``Sforce-Limit-Info``)."""

    used: int
    limit: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


@dataclass(frozen=True)
class OrgIdentity:
    """Which org a source reads, and as whom: what a plan records and ``apply`` checks.

    ``org_id`` is the Organization Id in its 18-character form (``00D...``); ``name`` the
    org's label (a local org's manifest name, else the mapping's ``org.name``). The user is
    recorded as far as it is known without spending an API call on it.
    """

    org_id: str
    name: str
    user_id: str | None = None
    username: str | None = None

    def same_org(self, other: OrgIdentity) -> bool:
        return self.org_id[:15] == other.org_id[:15]

    def label(self) -> str:
        return f"{self.name!r} ({self.org_id})"


@dataclass(frozen=True)
class TargetState:
    """A record as the org has it just before a write: its SystemModstamp, and whether it is
    closed (``IsClosed`` of a Case, Opportunity or Task) or converted (a Lead's
    ``IsConverted``)."""

    stamp: str | None
    closed: bool = False
    converted: bool = False


@dataclass(frozen=True)
class Progress:
    """How far a run has got, reported after each page, rule and write batch.

    ``done`` of ``total`` counts the phase's own unit: records read in ``pull`` (the total
    is not known ahead), rules evaluated in ``plan``, actions sent in ``write``.
    """

    phase: str  # "pull", "plan" or "write"
    done: int
    total: int | None
    records_read: int
    actions_sent: int
    api_calls: int


ProgressPort = Callable[[Progress], None]


class Source(Protocol):
    @property
    def name(self) -> str: ...

    def identity(self) -> OrgIdentity:
        """The org this source reads, from the org itself (cached after the first call)."""
        ...

    def fetch(self, queries: Sequence[ObjectQuery]) -> Iterator[Page]:
        """Yield pages for every query; the caller commits each page before the next."""
        ...

    def api_calls(self) -> int:
        """API calls spent so far by this source (0 for a local org)."""
        ...

    def usage(self) -> ApiUsage | None: ...


class Sink(Protocol):
    @property
    def name(self) -> str: ...

    # True for the dry-run sink. Labels only (the run's kind in ``runs``, its summary):
    # the pipeline applies through one path whatever the sink.
    dry_run: bool

    def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
        """Each target as the org has it now, by Id; a target missing from the answer is
        deleted (or was never there)."""
        ...

    def write(self, actions: Sequence[Action]) -> list[ActionResult]:
        """Apply actions; one result per action, in order. Must not raise per-record errors."""
        ...

    def reconcile(self, actions: Sequence[Action]) -> list[ActionResult | None]:
        """For actions whose earlier write had an unknown outcome: a result if the org shows
        the action took effect (or cannot have), ``None`` if it is safe to send again."""
        ...

    def estimate_calls(self, batches: Sequence[Sequence[Action]]) -> int:
        """API calls that applying these actions will spend: :meth:`current_state` of
        every target once, then one :meth:`write` per batch, in the batches given."""
        ...

    def api_calls(self) -> int: ...

    def usage(self) -> ApiUsage | None: ...


class Ledger(Protocol):
    """Where the pipeline records each action's way to its outcome (see
    :class:`worker.store.Store`, which also writes the audit rows beside it)."""

    def unsettled(self) -> list[LedgerEntry]:
        """Actions left ``sent``: their answer was lost, the org is asked what became of them."""
        ...

    def ledger_status(self, keys: Iterable[str]) -> dict[str, Outcome]: ...

    def record_skipped_steps(
        self, entries: Sequence[tuple[Action, str]], run_id: str, now: dt.datetime
    ) -> None: ...

    def record_planned(self, actions: Sequence[Action], run_id: str, now: dt.datetime) -> None: ...

    def mark_sent(self, actions: Sequence[Action], run_id: str, now: dt.datetime) -> None: ...

    def record_results(
        self,
        actions: Mapping[str, Action],
        results: Sequence[ActionResult],
        run_id: str,
        now: dt.datetime,
        event: str = "outcome",
    ) -> None: ...
