"""One cycle: source -> cache -> rules -> plan -> sink -> audit.

:class:`Pipeline` holds the pieces chosen at the edge (store, source, sink, mapping, rules,
clock) and runs the steps; each step reads like fetch, then save. Rules stay pure: the
pipeline loads the snapshot, passes the as-of date, and turns their evaluations into a plan.

Exactly-once, step by step:

1. ``reconcile``: ledger rows left ``sent`` by a run that died are checked against the org
   (by external-id key or a marker query) before anything is written again. An email the
   org shows no log of stays ``sent`` until its request cannot still be running in
   Salesforce (``REQUEST_TIME_LIMIT``), then is sent again.
2. ``pull``: per object, one incremental query on SystemModstamp from the watermark (the
   live source widens it by an overlap window); each page is committed, then its watermark,
   never past the run's start. Related objects read otherwise (field history on CreatedDate,
   queue members read whole) follow :func:`worker.schema.replication`.
3. ``plan``: rules over the cached snapshot, at the run's instant (:meth:`Pipeline.instant`);
   keys the ledger already applied are left out.
4. ``apply``: every action's target (the record the rule acted on) is read again once,
   before the first write; a target deleted, converted, or closed or otherwise changed
   since it was read (its SystemModstamp moved) makes its actions conflicts, planned afresh
   next cycle. The rest are written in batches, each batch marked ``sent`` with an intent
   audit row before the write and its outcomes recorded after.
5. Before the run ends, writes whose answer was lost are reconciled against the org as in
   step 1, and those found applied get their follow-up writes (a converted lead's new
   opportunity its mapped values). Only what is still unknown stays ``sent`` for the next
   run, and the run's status says ``unknown``.

Every run, plan and audit row records the org it was made on (:meth:`Pipeline.org`), and a
saved plan is applied only to that org.

Stopping: the edge hands in a stop token (set on SIGTERM/SIGINT). It is looked at between
pages, rules and write batches (the Salesforce client also refuses new requests once it is
set); the run then ends ``stopped``: pages committed so far keep their watermark, actions not
sent stay ``planned`` in the ledger, and the next run resumes.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import structlog

from worker import schema
from worker.actions import (
    STOPPED_API_LIMIT,
    STOPPED_AUTH,
    STOPPED_SIGNAL,
    Action,
    ActionResult,
    Outcome,
    SendEmail,
    stop_code,
)
from worker.business_hours import org_calendar
from worker.canary import Canary
from worker.errors import (
    ApiLimitError,
    AuthError,
    ConfigError,
    SalesforceError,
    SopWorkerError,
    StopRequested,
)
from worker.mapping import LoadedMapping
from worker.plan import Plan, build_plan
from worker.ports import (
    Ledger,
    ObjectQuery,
    OrgIdentity,
    Page,
    Progress,
    ProgressPort,
    Sink,
    Source,
    TargetState,
)
from worker.records import Record, RecordRef, Snapshot, format_sf_datetime, parse_sf_datetime
from worker.rules.base import AsOf, Evaluation, Rule, Verdict, evaluate_rule
from worker.store import AuditRow, LedgerEntry, Store, StoredSnapshot

log = structlog.get_logger()

# Actions handed to the sink at once: up to 25 collections of 200, five full composites.
# Each batch's last composite rounds up on its own, so a larger batch wastes fewer calls.
WRITE_BATCH = 5000
# Salesforce ends a request after 10 minutes: until then, one whose answer was lost may still
# commit. An email whose log the org does not show yet is sent again only after that.
REQUEST_TIME_LIMIT = dt.timedelta(minutes=10)
UNKNOWN = "unknown"  # an outcome (and a run status): the answer to a write was lost
WRITTEN_IN_RUN = "WRITTEN_IN_RUN"  # a merge deferred: another rule writes its records now
# Records stamped up to this long before the newest stamp the previous clean run had cached
# count as changed since it: a row Salesforce commits late carries an older stamp (the
# pull's SF_OVERLAP_SECONDS, 600 s by default, reads it again for the same reason).
HORIZON_OVERLAP = dt.timedelta(hours=1)
CLEAN = ("ok", "ok, with errors")  # a run's statuses whose every planned action was settled
Cursor = tuple[dt.datetime, str | None]  # (stamp, Id of the last record read at that stamp)


@dataclass
class RunReport:
    run_id: str
    as_of: dt.date
    dry_run: bool
    records_read: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    record_errors: int = 0
    api_calls: int = 0
    # The apply's API calls: as the plan priced them, and as made (the stamps re-read,
    # the writes, their reconcile).
    apply_calls_estimated: int | None = None
    apply_calls: int | None = None
    api_remaining: int | None = None
    stopped: str | None = None  # why the run stopped starting new work, if it did
    stop_reason: str | None = None  # STOPPED_API_LIMIT, STOPPED_AUTH or STOPPED_SIGNAL
    seconds: float = 0.0
    plan: Plan | None = None
    org: OrgIdentity | None = None
    rules_digest: str | None = None  # the rules and settings it evaluated with
    evaluated_to: dt.datetime | None = None  # the newest cached stamp when it evaluated
    # Seconds per step of the cycle (reconcile, pull, plan, apply) and, within the apply,
    # in the ledger's bookkeeping and in the sink's writes: where a slow cycle spends them.
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - started
            self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + spent

    def stop(self, reason: str, message: str) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.stopped = reason, message

    @property
    def status(self) -> str:
        """stopped, failed, unknown (writes whose answer was lost), "ok, with errors"
        (records skipped as unreadable) or ok."""
        if self.stop_reason:
            return "stopped"
        if self.failed:
            return "failed"
        if self.unknown:
            return UNKNOWN
        return "ok, with errors" if self.record_errors else "ok"

    @property
    def failed(self) -> int:
        return sum(n for (_, outcome), n in self.outcomes.items() if outcome == Outcome.FAILED)

    @property
    def unknown(self) -> int:
        """Writes whose answer was lost and which the run's own reconcile could not settle."""
        return sum(n for (_, outcome), n in self.outcomes.items() if outcome == UNKNOWN)

    def recount(self, rule: str, was: str, now: str) -> None:
        self.outcomes[(rule, was)] -= 1
        self.outcomes[(rule, now)] += 1
        if self.outcomes[(rule, was)] <= 0:
            del self.outcomes[(rule, was)]

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "org_id": self.org.org_id if self.org else None,
            "as_of": self.as_of.isoformat(),
            "dry_run": self.dry_run,
            "status": self.status,
            "records_read": dict(sorted(self.records_read.items())),
            "actions": {
                f"{rule}:{outcome}": n for (rule, outcome), n in sorted(self.outcomes.items())
            },
            "record_errors": self.record_errors,
            "unknown_outcomes": self.unknown,
            "api_calls": self.api_calls,
            "apply_calls": {"estimated": self.apply_calls_estimated, "made": self.apply_calls},
            "api_remaining": self.api_remaining,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "seconds": round(self.seconds, 3),
            "rules_digest": self.rules_digest,
            "evaluated_to": self.evaluated_to.isoformat() if self.evaluated_to else None,
            "phase_seconds": {k: round(v, 3) for k, v in self.phase_seconds.items()},
        }


@dataclass(frozen=True)
class Explanation:
    record_id: str
    record: Record | None
    name: str
    evaluations: tuple[Evaluation, ...]
    out_of_scope: tuple[str, ...]
    ledger: Mapping[str, Outcome]
    history: tuple[LedgerEntry, ...]
    audit: tuple[AuditRow, ...]


def fields_hash(fields: Iterable[str], filters: Mapping[str, Any]) -> str:
    text = ",".join(sorted(fields)) + "|" + repr(sorted(filters.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Pipeline:
    def __init__(
        self,
        *,
        store: Store,
        source: Source,
        sink: Sink,
        ledger: Ledger,
        mapping: LoadedMapping,
        rules: Sequence[Rule[Any]],
        clock: Callable[[], dt.datetime],
        stop: threading.Event | None = None,
        progress: ProgressPort | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.sink = sink
        self.ledger = ledger
        self.mapping = mapping
        self.rules = list(rules)
        self.clock = clock
        self.stop = stop or threading.Event()
        self.progress = progress

    def _check_stop(self, where: str) -> None:
        if self.stop.is_set():
            raise StopRequested(f"stop requested (SIGTERM/SIGINT) {where}; the next run resumes")

    def _report_progress(
        self,
        report: RunReport | None,
        phase: str,
        done: int,
        total: int | None,
        sent: int = 0,
    ) -> None:
        if self.progress is None:
            return
        read = sum(report.records_read.values()) if report else 0
        calls = self.source.api_calls() + self.sink.api_calls()
        self.progress(Progress(phase, done, total, read, sent, calls))

    def org(self) -> OrgIdentity:
        """The org the source reads: what plans, runs and audit rows record."""
        return self.source.identity()

    # -- 1. reconcile ---------------------------------------------------------------------------
    def reconcile(self, report: RunReport) -> None:
        """Ledger rows left ``sent`` (by a run that died, or whose answers were lost): what
        the org shows is recorded; what it does not show is planned again."""
        pending = self.ledger.unsettled()
        if not pending:
            return
        actions = [e.action for e in pending]
        settled, unknown = self._settle(actions, report)
        now = self.clock()
        updated = {e.key: e.updated_at for e in pending}
        in_flight = {
            a.key
            for a in unknown
            if isinstance(a, SendEmail)
            and now - dt.datetime.fromisoformat(updated[a.key]) < REQUEST_TIME_LIMIT
        }
        if in_flight:
            log.warning("ledger.email_may_be_in_flight", keys=sorted(in_flight))
        unknown = [a for a in unknown if a.key not in in_flight]
        self.ledger.record_results(
            {a.key: a for a in unknown},
            [
                ActionResult(a.key, Outcome.PLANNED, message="outcome unknown; safe to resend")
                for a in unknown
            ],
            report.run_id,
            now,
            event="reconciled",
        )
        log.info("ledger.reconciled", applied=len(settled), resend=len(unknown))

    def _settle(
        self, actions: Sequence[Action], report: RunReport
    ) -> tuple[list[ActionResult], list[Action]]:
        """Ask the org what became of these actions (the sink completes the follow-up
        writes of those found applied) and record what it shows. Returns (the results
        found, the actions the org shows no trace of)."""
        found = self.sink.reconcile(actions)
        settled = [r for r in found if r is not None]
        self.ledger.record_results(
            {a.key: a for a in actions}, settled, report.run_id, self.clock(), event="reconciled"
        )
        return settled, [a for a, r in zip(actions, found, strict=True) if r is None]

    def _finish_lost(self, lost: Sequence[Action], report: RunReport) -> None:
        """This run's own lost answers, checked before it ends. What the org shows is
        settled now, follow-ups included; the rest stays ``sent`` (outcome ``unknown``) for
        the next run's reconcile, which plans again what did not happen."""
        if not lost:
            return
        by_key = {a.key: a for a in lost}
        try:
            settled, unknown = self._settle(lost, report)
        except (ApiLimitError, AuthError):
            raise  # the run stops; the next one reconciles
        except SalesforceError as exc:
            log.error("apply.reconcile_failed", unknown=len(lost), error=str(exc))
            return
        for result in settled:
            report.recount(by_key[result.key].rule, UNKNOWN, _outcome_label(result.outcome))
        log.info("apply.reconciled", settled=len(settled), unknown=len(unknown))
        for action in unknown:
            log.error(
                "action.outcome_still_unknown",
                key=action.key,
                message="its answer was lost and the org shows no trace of it yet; the next "
                "run checks again",
            )

    # -- 2. pull ----------------------------------------------------------------------------
    def pull(self, report: RunReport, run_start: dt.datetime) -> None:
        queries = []
        hashes = {}
        marks: dict[str, Cursor] = {}  # where each object's read stands: (stamp, Id)
        for sobject, names in self.mapping.object_fields().items():
            section = self.mapping.common.objects.get(sobject)
            filters = dict(section.filters) if section else {}
            digest = fields_hash(names, filters)
            hashes[sobject] = digest
            replication = self.mapping.common.replication(sobject)
            mark = None if replication.full else self.store.watermark(sobject, digest)
            if mark is None:
                self.store.reset_cache(sobject)
            else:
                marks[sobject] = (mark.stamp, mark.after_id)
            queries.append(
                ObjectQuery(
                    sobject,
                    names,
                    filters,
                    mark.stamp if mark else None,
                    run_start,
                    replication,
                    after_id=mark.after_id if mark else None,
                    read_at=mark.read_at if mark else None,
                )
            )
            if replication.full:
                hashes.pop(sobject)  # read whole every time: no watermark to keep
        unsettled: dict[str, Cursor] = {}  # newest (stamp, Id) so far of an unordered read
        self._check_stop("before the pull")
        for page in read_ahead(self.source.fetch(queries), self.stop):
            page = _usable(page, report)
            name_field = self.mapping.common.name_field(page.sobject)
            saved = self.store.save_page(page, name_field, self.clock())
            newest = unsettled.pop(page.sobject, None)
            if saved:
                found = (parse_sf_datetime(saved[0]), saved[1])
                newest = found if newest is None else max(newest, found, key=_cursor_key)
            if newest is not None and not page.settled:
                unsettled[page.sobject] = newest
            elif page.sobject in hashes:
                # Never past the run's start: a record stamped later (clock skew, a write
                # landing during this read) is read again next cycle rather than missed.
                # A read that found nothing new keeps its cursor and notes when it ran; an
                # object found empty resumes from the run's start.
                cursor = newest or marks.get(page.sobject) or (run_start, None)
                if cursor[0] > run_start:
                    cursor = (run_start, None)
                marks[page.sobject] = cursor
                self.store.set_watermark(
                    page.sobject,
                    format_sf_datetime(cursor[0]),
                    hashes[page.sobject],
                    self.clock(),
                    after_id=cursor[1],
                    read_at=run_start,
                )
            report.records_read[page.sobject] += len(page.records)
            log.debug(
                "pull.page",
                sobject=page.sobject,
                records=len(page.records),
                deleted=len(page.deleted_ids),
            )
            read = sum(report.records_read.values())
            self._report_progress(report, "pull", read, None)
            self._check_stop("during the pull")
        self._check_stop("during the pull")  # the read ahead ends early on a stop

    # -- 3. plan ----------------------------------------------------------------------------
    def instant(self, as_of: dt.date) -> AsOf:
        """The evaluation instant of ``as_of``: the run's clock in the org's time zone, on
        ``as_of`` at that time of day when the as-of date is another day."""
        return AsOf.on(as_of, self.clock(), self.mapping.common.org.zone)

    def rules_digest(self) -> str:
        """What the rules decide with: their ids, settings and the org section. A run on
        other rules or settings is no horizon for an incremental pass."""
        text = json.dumps(
            [self.mapping.common.org.model_dump(mode="json")]
            + [[r.id, self.mapping.rules[r.id].model_dump(mode="json")] for r in self.rules],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def horizon(self, run_id: str | None = None) -> dt.datetime | None:
        """The previous evaluation's horizon (:attr:`Snapshot.changed_since`), in the org's
        own clock: the newest stamp the cache held when the newest run that wrote everything
        it planned evaluated (a run, not a dry run nor a canary, that ended ok, on this
        org, with these rules and settings), less :data:`HORIZON_OVERLAP`. None, a full
        pass, when there is none. A run that failed, stopped or lost an answer is no
        horizon, so what it left undone is decided again; what a run writes is stamped
        after the horizon it evaluated to, so it is decided again next run."""
        org_id = self.org().org_id
        digest = self.rules_digest()
        for row in self.store.runs(limit=100):
            if row["run_id"] == run_id or row["mode"] != "run" or row["status"] not in CLEAN:
                continue
            summary = json.loads(row["summary"] or "{}")
            if (
                summary.get("org_id") == org_id
                and summary.get("rules_digest") == digest
                and summary.get("evaluated_to")
                and not any(k.endswith(":held_back") for k in summary.get("actions", {}))
            ):
                return dt.datetime.fromisoformat(summary["evaluated_to"]) - HORIZON_OVERLAP
        return None

    def evaluate(
        self,
        as_of: AsOf,
        report: RunReport | None = None,
        snapshot: Snapshot | None = None,
        changed_since: dt.datetime | None = None,
    ) -> tuple[list[Evaluation], int]:
        """Every rule over the cached records (or over ``snapshot``: a simulated day's);
        ``changed_since`` the previous evaluation's horizon (:meth:`horizon`), None: a
        full pass."""
        stored: StoredSnapshot | None = None
        if snapshot is None:
            snapshot = stored = self.store.snapshot(self.mapping.object_fields(), changed_since)
        evaluations = list(self._evaluations(snapshot, as_of, report))
        return evaluations, len(stored.problems) if stored else 0

    def _evaluations(
        self, snapshot: Snapshot, as_of: AsOf, report: RunReport | None
    ) -> Iterator[Evaluation]:
        # Read from the store as the rules ask, never all at once: a cycle's memory stays
        # flat as the org grows; unreadable rows are logged as they are met.
        common = self.mapping.common
        if common.calendar_from_org:
            calendar = org_calendar(
                snapshot.of(schema.BUSINESS_HOURS), snapshot.of(schema.HOLIDAY), common.calendar
            )
            common = dataclasses.replace(common, calendar=calendar)
        for done, rule in enumerate(self.rules):
            self._check_stop("during planning")
            yield from evaluate_rule(rule, snapshot, as_of, self.mapping.rules[rule.id], common)
            self._report_progress(report, "plan", done + 1, len(self.rules))

    def plan(self, as_of: dt.date, report: RunReport | None = None) -> Plan:
        """The cycle's plan; the rules that can decide only what changed since the previous
        clean run (:meth:`horizon`) do."""
        at = self.instant(as_of)
        if report is not None:
            report.rules_digest = self.rules_digest()
            report.evaluated_to = self.store.newest_stamp()
        since = self.horizon(report.run_id if report else None)
        # Only what the plan is made of is kept: a verdict with nothing to do (done, not
        # due, out of scope) is counted by no one, and holding one per record would make
        # a cycle's memory grow with the org (``explain`` shows those).
        snapshot = self.store.snapshot(self.mapping.object_fields(), since)
        evaluations = [e for e in self._evaluations(snapshot, at, report) if _counts(e)]
        keys = [a.key for e in evaluations for a in e.actions]
        keys += [s.key for e in evaluations for s in e.skipped]
        plan = build_plan(
            evaluations,
            org=self.org(),
            mapping=self.mapping.path,
            as_of=at,
            generated_at=self.clock(),
            precedence=self.mapping.precedence,
            rule_order=[r.id for r in self.rules],
            ledger=self.store.ledger_status(keys),
            sops={r.id: self.mapping.rules[r.id].sop_file for r in self.rules},
        )
        usage = self.sink.usage() or self.source.usage()
        return dataclasses.replace(
            plan,
            api_calls=self.estimate_calls(plan.actions),
            remaining_daily=usage.remaining if usage else None,
        )

    def narrow(self, plan: Plan, *, rule: str | None, record_id: str | None) -> Plan:
        """The plan's part for one rule and/or one record, priced on its own."""
        if rule is None and record_id is None:
            return plan
        part = plan.narrowed(rule=rule, record_id=record_id)
        return dataclasses.replace(part, api_calls=self.estimate_calls(part.actions))

    def estimate_calls(self, actions: Sequence[Action]) -> int:
        """API calls :meth:`apply` will spend on these actions (the org unchanged since):
        the targets re-read once, then the write batches it sends them in."""
        return self.sink.estimate_calls(list(_batches(actions, WRITE_BATCH)))

    def explain(self, record_id: str, as_of: dt.date) -> Explanation:
        """Every rule's verdict on one record, with its past and next SOP steps."""
        record = self.store.cached_record(record_id)
        evaluations, _ = self.evaluate(self.instant(as_of))
        mine = [e for e in evaluations if e.target.id == record_id]
        seen = {e.rule for e in mine}
        out_of_scope = []
        if record is not None:
            for rule in self.rules:
                needs = self.mapping.rules[rule.id].needs()
                if (
                    rule.id not in seen
                    and record.sobject in needs
                    and record.sobject != schema.TASK
                ):
                    out_of_scope.append(rule.id)
        keys = [a.key for e in mine for a in e.actions]
        done = {e.key: e for e in self.store.ledger_entries(target_id=record_id)}
        name = record.text(self.mapping.common.name_field(record.sobject)) if record else None
        return Explanation(
            record_id,
            record,
            name or "",
            tuple(mine),
            tuple(out_of_scope),
            self.store.ledger_status(keys),
            tuple(done.values()),
            tuple(self.store.audit_rows(record_id=record_id)),
        )

    # -- 4. apply ---------------------------------------------------------------------------
    def apply(self, plan: Plan, report: RunReport) -> None:
        calls_before = self.sink.api_calls()
        try:
            with report.timed("apply"):
                self._apply(plan, report)
        finally:
            report.apply_calls = self.sink.api_calls() - calls_before

    def _apply(self, plan: Plan, report: RunReport) -> None:
        now = self.clock()
        # Missed catch-up steps and actions lost to a stronger rule are final: "skipped".
        passed_over = plan.skipped + plan.superseded
        self.ledger.record_skipped_steps(
            [(s.action, s.why) for s in passed_over], report.run_id, now
        )
        for skip in passed_over:
            report.outcomes[(skip.action.rule, Outcome.SKIPPED.value)] += 1
        # Deferred merges: a conflict, not final, so the next run plans them afresh.
        deferred = [
            ActionResult(d.action.key, Outcome.CONFLICT, error_code=WRITTEN_IN_RUN, message=d.why)
            for d in plan.deferred
        ]
        by_key = {d.action.key: d.action for d in plan.deferred}
        self.ledger.record_results(by_key, deferred, report.run_id, now)
        self._count(deferred, by_key, report)
        status = self.ledger.ledger_status(a.key for a in plan.actions)
        # Still ``sent`` after reconcile: an email that may still go out; never sent twice.
        done = (Outcome.APPLIED, Outcome.SKIPPED, Outcome.SENT)
        todo = [a for a in plan.actions if status.get(a.key) not in done]
        with report.timed("ledger"):
            self.ledger.record_planned(todo, report.run_id, now)
        report.apply_calls_estimated = self.estimate_calls(todo)
        todo = self._drop_conflicts(todo, report)
        by_key = {a.key: a for a in todo}
        lost: list[Action] = []
        batches = list(_batches(todo, WRITE_BATCH))
        left = len(todo)  # not yet sent
        if batches and self.stop.is_set():
            # Left planned in the ledger: the next run plans and sends them.
            self._stopped_applying(report, StopRequested().message, left)
            return
        # The next batch is written (in a thread: the sink waits on the org) while the last
        # one's results are recorded here; its ``sent`` rows are recorded before it goes,
        # and only the last batch's results are ever unrecorded when it does. The store
        # is used from this thread alone.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="apply-write") as pool:
            sending = self._send(pool, batches[0], report) if batches else None
            for i, batch in enumerate(batches):
                assert sending is not None
                results = sending.result()
                left -= len(batch)
                not_sent = [r for r in results if r.outcome is Outcome.PLANNED]
                stop = bool(not_sent) or self.stop.is_set()
                more = i + 1 < len(batches) and not stop
                sending = self._send(pool, batches[i + 1], report) if more else None
                with report.timed("ledger"):
                    self.ledger.record_results(by_key, results, report.run_id, self.clock())
                self._count(results, by_key, report)
                lost += [by_key[r.key] for r in results if r.outcome is Outcome.SENT]
                written = len(todo) - left - len(not_sent)
                self._report_progress(report, "write", written, len(todo), written)
                if not_sent:
                    # The sink stopped (API reserve reached, session lost, stop requested):
                    # start nothing new.
                    first = not_sent[0]
                    self._stopped_applying(
                        report,
                        first.message or "",
                        left + len(not_sent),
                        first.error_code or STOPPED_API_LIMIT,
                    )
                    return
                if stop and left:
                    # Left planned in the ledger: the next run plans and sends them.
                    self._stopped_applying(report, StopRequested().message, left)
                    return
        self._finish_lost(lost, report)

    def _send(
        self, pool: ThreadPoolExecutor, batch: list[Action], report: RunReport
    ) -> Future[list[ActionResult]]:
        """Record ``batch`` as sent (the intent, in the audit too), then write it in
        ``pool``'s thread. A stop or an exhausted session raised before anything of it went
        out answers every action ``planned``: the next run plans it again."""
        with report.timed("ledger"):
            self.ledger.mark_sent(batch, report.run_id, self.clock())

        def write() -> list[ActionResult]:
            try:
                with report.timed("write"):
                    return self.sink.write(batch)
            except (ApiLimitError, AuthError, StopRequested) as exc:
                return [
                    ActionResult(
                        a.key, Outcome.PLANNED, error_code=stop_code(exc), message=exc.message
                    )
                    for a in batch
                ]

        return pool.submit(contextvars.copy_context().run, write)

    @staticmethod
    def _stopped_applying(
        report: RunReport, message: str, not_sent: int, reason: str = STOPPED_SIGNAL
    ) -> None:
        report.stop(reason, message)
        # A requested stop is the operator's doing; running out of API or session is not.
        level = log.warning if reason == STOPPED_SIGNAL else log.error
        level("apply.stopped", reason=reason, message=message, not_sent=not_sent)

    @staticmethod
    def _count(
        results: Sequence[ActionResult], by_key: Mapping[str, Action], report: RunReport
    ) -> None:
        for result in results:
            report.outcomes[(by_key[result.key].rule, _outcome_label(result.outcome))] += 1
            if result.outcome is Outcome.FAILED:
                log.error(
                    "action.failed",
                    key=result.key,
                    error_code=result.error_code,
                    message=result.message,
                )
            elif result.outcome is Outcome.SENT:
                log.warning("action.outcome_unknown", key=result.key, message=result.message)

    def _drop_conflicts(self, actions: list[Action], report: RunReport) -> list[Action]:
        """Every action's target is read again before anything is written: one deleted,
        converted, or closed or otherwise changed since it was read (its SystemModstamp
        moved) is a ``conflict``, not written, and planned afresh next cycle.

        The check is made once, before the first write of this apply: the worker's own
        writes in it (a step's notes, then its Task or state change on the same record)
        never look like a person's edit, and one record's actions stand or fall together.
        """
        if not actions:
            return actions
        targets = {r.id: r for a in actions for r in a.checked_records()}
        current = self.sink.current_state(list(targets.values()))
        conflicts = [
            found
            for action in actions
            if (
                found := next(
                    (
                        c
                        for r in action.checked_records()
                        if (c := _conflict(action, current.get(r.id), r)) is not None
                    ),
                    None,
                )
            )
            is not None
        ]
        if conflicts:
            by_key = {a.key: a for a in actions}
            self.ledger.record_results(by_key, conflicts, report.run_id, self.clock())
            self._count(conflicts, by_key, report)
            log.info("apply.conflicts", actions=len(conflicts))
        skip = {r.key for r in conflicts}
        return [a for a in actions if a.key not in skip]

    # -- the cycle --------------------------------------------------------------------------
    def run(
        self, run_id: str, as_of: dt.date, *, pull: bool = True, canary: Canary | None = None
    ) -> RunReport:
        """One cycle: reconcile, pull, plan, apply. A dry run is the same cycle through the
        dry-run sink and ledger (see :mod:`worker.dryrun`). A canary applies the plan to a
        subset of its records (see :mod:`worker.canary`)."""
        dry_run = self.sink.dry_run
        report = RunReport(run_id=run_id, as_of=as_of, dry_run=dry_run)
        run_start = self.clock()
        with self._recorded(report, "dry-run" if dry_run else "run", run_start):
            self._record_org(report)
            with report.timed("reconcile"):
                self.reconcile(report)
            if pull:
                with report.timed("pull"):
                    self.pull(report, run_start)
            with report.timed("plan"):
                plan = self.plan(as_of, report)
            report.plan = plan
            report.record_errors += len(plan.errors)
            for problem in plan.errors:
                log.warning(
                    "rule.record_error",
                    rule=problem.rule,
                    record_id=problem.target.id,
                    problem=problem.why,
                )
            self.apply(self._canary(plan, canary, report), report)
        return report

    def apply_plan_file(self, run_id: str, plan: Plan, canary: Canary | None = None) -> RunReport:
        """Apply exactly a saved plan (after the same conflict checks), without planning.
        A plan made on another org is refused before anything is read or written."""
        here = self.org()
        if not plan.org.same_org(here):
            raise ConfigError(
                f"the plan was made on org {plan.org.label()}, not on this org "
                f"{here.label()}: make the plan on this org and apply that"
            )
        report = RunReport(run_id=run_id, as_of=plan.as_of, dry_run=False, plan=plan)
        with self._recorded(report, "apply", self.clock()):
            self._record_org(report)
            self.reconcile(report)
            self.apply(self._canary(plan, canary, report), report)
        return report

    def _canary(self, plan: Plan, canary: Canary | None, report: RunReport) -> Plan:
        """The canary's records only (see :mod:`worker.canary`); the actions held back are
        counted per rule as ``held_back``, neither written nor recorded."""
        if not canary:
            return plan
        chosen = canary.narrow(plan, self._owner_of)
        held = Counter(a.rule for a in plan.actions) - Counter(a.rule for a in chosen.actions)
        for rule, n in held.items():
            report.outcomes[(rule, "held_back")] += n
        log.info(
            "apply.canary",
            canary=canary.describe(),
            actions=len(chosen.actions),
            held_back=sum(held.values()),
        )
        return chosen

    def _owner_of(self, record_id: str) -> str | None:
        record = self.store.cached_record(record_id)
        return record.text(schema.OWNER_ID) if record else None

    def _record_org(self, report: RunReport) -> None:
        report.org = self.org()
        self.store.set_run_org(report.run_id, report.org.org_id)

    @contextmanager
    def _recorded(self, report: RunReport, kind: str, started_at: dt.datetime) -> Iterator[None]:
        """Around one run: its row in ``runs``, the stop signals, one ``run.summary``.

        Running out of API reserve or of a renewable session, or a requested stop, ends the
        run cleanly as ``stopped`` (the next run resumes); any other error is recorded as the
        run's status and re-raised.
        """
        started = time.monotonic()
        status: str | None = None
        with structlog.contextvars.bound_contextvars(run_id=report.run_id):
            self.store.begin_run(report.run_id, kind, report.as_of, started_at)
            try:
                yield
            except (ApiLimitError, AuthError) as exc:
                reason = STOPPED_API_LIMIT if isinstance(exc, ApiLimitError) else STOPPED_AUTH
                report.stop(reason, str(exc))
                log.error("run.stopped", reason=reason, message=str(exc))
            except StopRequested as exc:
                report.stop(STOPPED_SIGNAL, exc.message)
                log.warning("run.stopped", reason=STOPPED_SIGNAL, message=exc.message)
            except BaseException as exc:
                status = f"error: {type(exc).__name__}"
                if isinstance(exc, Exception) and not isinstance(exc, SopWorkerError):
                    log.exception("run.crashed")  # a bug: the CLI reports the worker's own
                raise
            finally:
                report.api_calls = self.source.api_calls() + self.sink.api_calls()
                usage = self.sink.usage() or self.source.usage()
                report.api_remaining = usage.remaining if usage else None
                report.seconds = time.monotonic() - started
                summary = {**report.summary(), "status": status or report.status}
                self.store.finish_run(report.run_id, summary["status"], summary, self.clock())
                log.info("run.summary", **summary)


def read_ahead(pages: Iterator[Page], stop: threading.Event, depth: int = 1) -> Iterator[Page]:
    """``pages`` as they come, asked for in a thread while the caller stores the last one:
    the next page's request is under way while a page is written to the cache, with at
    most ``depth`` pages waiting. On ``stop`` no further page is asked for; an error in
    the reading is raised to the caller at the page it stopped at; pages the caller did
    not take are dropped (the next cycle reads them again from the cursor kept)."""
    ahead: queue.Queue[tuple[Page | None, BaseException | None]] = queue.Queue(maxsize=depth)
    done = threading.Event()

    def produce() -> None:
        try:
            while not (stop.is_set() or done.is_set()):
                page = next(pages, None)
                if page is None:
                    break
                ahead.put((page, None))
            ahead.put((None, None))
        except BaseException as exc:  # handed to the caller, raised there
            ahead.put((None, exc))
        finally:
            if isinstance(pages, Generator):
                pages.close()

    reader = threading.Thread(
        target=contextvars.copy_context().run, args=(produce,), name="pull-read-ahead"
    )
    reader.start()
    try:
        while True:
            page, error = ahead.get()
            if error is not None:
                raise error
            if page is None:
                return
            yield page
    finally:
        done.set()
        while reader.is_alive():  # let a reader waiting on a full queue finish
            with suppress(queue.Empty):
                ahead.get(timeout=0.05)
        reader.join()


def _cursor_key(cursor: Cursor) -> tuple[dt.datetime, str]:
    return cursor[0], cursor[1] or ""


def _outcome_label(outcome: Outcome) -> str:
    """How a run counts an outcome: a write still ``sent`` when the sink answers is one
    whose answer was lost; ``planned`` is one the sink did not send (it stopped)."""
    if outcome is Outcome.SENT:
        return UNKNOWN
    return "not_sent" if outcome is Outcome.PLANNED else outcome.value


def _conflict(
    action: Action, now: TargetState | None, target: RecordRef | None = None
) -> ActionResult | None:
    """Why the action's target (or another record it checks: a merge's victim) no longer
    is the record it was planned on, if it is not."""
    target = target or action.target
    what = f"the {target.sobject}" if target is action.target else f"{target.sobject} {target.id}"
    if now is None:
        return ActionResult(
            action.key,
            Outcome.CONFLICT,
            error_code="ENTITY_IS_DELETED",
            message=f"{what} was deleted after it was read; not written",
        )
    moved = f"SystemModstamp {target.stamp} -> {now.stamp}"
    if now.converted:
        code, message = "LEAD_CONVERTED", f"{what} is converted (IsConverted); not written"
    elif target.stamp is None or now.stamp == target.stamp:
        return None
    elif now.closed:
        code, message = "RECORD_CLOSED", f"{what} was closed after it was read ({moved})"
    else:
        code, message = "RECORD_CHANGED", f"changed in Salesforce after it was read ({moved})"
        if target is not action.target:
            message = f"{what} {message}"
    if target is not action.target:
        message += f" (the {action.target.sobject} {action.target.id} is not merged with it)"
    return ActionResult(
        action.key, Outcome.CONFLICT, error_code=code, message=f"{message}; re-planned next cycle"
    )


def _counts(evaluation: Evaluation) -> bool:
    """Whether an evaluation makes part of a plan: actions, skips, suppressions, an error."""
    return bool(
        evaluation.actions
        or evaluation.skipped
        or evaluation.suppressed
        or evaluation.verdict is Verdict.ERROR
    )


def _batches(actions: Sequence[Action], size: int) -> Iterator[list[Action]]:
    """Batches of at most ``size`` actions (more only for one record's own), never splitting
    one record's actions: the sink orders a step's notes before its state change within a
    batch, which only helps if the two travel together."""
    batch: list[Action] = []
    for _, group in itertools.groupby(actions, key=lambda a: a.target.id):
        members = list(group)
        if batch and len(batch) + len(members) > size:
            yield batch
            batch = []
        batch.extend(members)
    if batch:
        yield batch


def _usable(page: Page, report: RunReport) -> Page:
    """The page without records that cannot be cached: no Id to key them on, or no stamp
    (SystemModstamp, or the object's own replication field) to order them by. Each is
    counted as a record error and logged."""
    kept = []
    stamp = page.stamp_field
    for raw in page.records:
        rid = raw.get(schema.ID)
        problem = None
        if not isinstance(rid, str) or not rid:
            problem = "no Id"
        else:
            try:
                parse_sf_datetime(str(raw.get(stamp) or ""))
            except ValueError:
                problem = f"{stamp} is not a datetime: {raw.get(stamp)!r}"
        if problem is None:
            kept.append(raw)
            continue
        report.record_errors += 1
        log.warning("pull.unusable_record", sobject=page.sobject, record_id=rid, problem=problem)
    if len(kept) == len(page.records):
        return page
    return dataclasses.replace(page, records=kept)
