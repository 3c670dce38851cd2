"""A dry run's edges: a sink that writes nothing, a ledger that records nothing, and the
cache-only source, which reads nothing.

Dry run is not a flag checked here and there: it is decided once, in the wiring
(:func:`worker.app.open_app`), which hands the pipeline this sink and this ledger. The
pipeline has one apply path: the sink answers each action ``would_apply`` (nothing leaves
the process: the Salesforce client used for a dry run is also read-only at the transport,
see :mod:`worker.salesforce`), and the ledger keeps nothing of it, so a later real run plans
and sends the same actions. Likewise a command that uses the cache as it is (``explain
--no-pull``) is handed the cache-only source, so it needs no org and no credentials.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from worker.actions import Action, ActionResult, Outcome
from worker.errors import ConfigError, DryRunWriteError
from worker.ports import ApiUsage, ObjectQuery, OrgIdentity, Page, TargetState
from worker.records import RecordRef
from worker.store import LedgerEntry, Store


class DryRunSink:
    name = "dry run"
    dry_run = True

    def __init__(
        self,
        estimate: Callable[[Sequence[Sequence[Action]]], int] = lambda batches: 0,
        usage: Callable[[], ApiUsage | None] = lambda: None,
    ) -> None:
        self._estimate = estimate
        self._usage = usage

    def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
        """Each target as it was read: a dry run spends no call on the apply-time check, so
        it shows no conflicts (the real run checks)."""
        return {t.id: TargetState(t.stamp) for t in targets}

    def write(self, actions: Sequence[Action]) -> list[ActionResult]:
        """Nothing is written: every action would be applied."""
        return [ActionResult(a.key, Outcome.WOULD_APPLY) for a in actions]

    def reconcile(self, actions: Sequence[Action]) -> list[ActionResult | None]:
        raise DryRunWriteError("dry run: reconciling is part of applying")

    def estimate_calls(self, batches: Sequence[Sequence[Action]]) -> int:
        return self._estimate(batches)

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return self._usage()


class ReadOnlyLedger:
    """The ledger as a dry run sees it: what is already done is read from the store (so a
    dry run counts what a real run would send), and nothing is recorded."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def unsettled(self) -> list[LedgerEntry]:
        return []  # settling lost answers is part of applying

    def ledger_status(self, keys: Iterable[str]) -> dict[str, Outcome]:
        return self._store.ledger_status(keys)

    def record_skipped_steps(
        self, entries: Sequence[tuple[Action, str]], run_id: str, now: dt.datetime
    ) -> None:
        pass

    def record_planned(self, actions: Sequence[Action], run_id: str, now: dt.datetime) -> None:
        pass

    def mark_sent(self, actions: Sequence[Action], run_id: str, now: dt.datetime) -> None:
        pass

    def record_results(
        self,
        actions: Mapping[str, Action],
        results: Sequence[ActionResult],
        run_id: str,
        now: dt.datetime,
        event: str = "outcome",
    ) -> None:
        pass


class CacheOnlySource:
    """Reads nothing: the records are the cache's as it is."""

    name = "cache only"

    def identity(self) -> OrgIdentity:
        raise ConfigError("the cache is used as it is: no org was read, so its Id is not known")

    def fetch(self, queries: Sequence[ObjectQuery]) -> Iterator[Page]:
        return iter(())

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return None
