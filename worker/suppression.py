"""The one suppression check every rule goes through: no new call or email for a person who
may not be contacted that way.

A rule plans its actions; :func:`worker.rules.base.evaluate_rule` hands every evaluation to
:func:`suppress` before anything else sees it, so a rule never has to ask (rules added later
included). What the check decides, from the mapping's ``[suppression]`` section:

- which actions contact a person: a new Task whose ``[tasks] type_field`` or ``TaskSubtype``
  is one of ``call_task_types`` (a call) or ``email_task_types`` (an email), and every
  ``SendEmail``. Other Tasks (a reminder to the rep, a manager's escalation) contact no one.
- who a Task is for: its WhoId; without one, the record the rule acts on when it is a person
  (a Lead, a Contact), and for a call the person its ``person_field`` names (an
  Opportunity's or a Case's ContactId: the customer a payment follow-up calls). An email
  Task without a WhoId on another record is an internal notice (a won deal's) for no one.
  A ``SendEmail`` is for every person (``email_field``) whose address it is sent to: an
  alert to a rep is not an email to the lead.
- who is suppressed: a ``do_not_contact_statuses`` status (neither calls nor emails), a set
  ``call_opt_out`` checkbox (no call), a set ``email_opt_out`` checkbox (no email).

A suppressed action is kept in the evaluation's ``suppressed`` with the reason, and so in the
plan and in ``explain``; it is not recorded in the ledger, so a person who opts back in is
contacted again on the next run. An action of the same step that only logs the suppressed
one (its step key extends the suppressed one's: ``initial-log`` of ``initial``) goes with
it, so no attempt is logged that was not made.

A person whose record is not in the snapshot (an object no rule reads) is not known to be
suppressed: map the rules' reads so the persons they contact are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from worker import schema
from worker.actions import Action, CreateTask, SendEmail
from worker.mapping import OrgMapping, SuppressionSection
from worker.records import Record, Snapshot

Contact = Literal["call", "email"]


@dataclass(frozen=True)
class Suppressed:
    """An action the rule planned that the suppression check left out, and why."""

    action: Action
    why: str


class SuppressionCheck:
    """The check over one snapshot (the email index is built once, when first needed)."""

    def __init__(self, snapshot: Snapshot, org: OrgMapping) -> None:
        self.snapshot = snapshot
        self.org = org
        self.rules: SuppressionSection = org.suppression
        self._by_email: dict[str, list[Record]] | None = None

    def channel(self, action: Action) -> Contact | None:
        """Whether the action calls or emails someone."""
        if isinstance(action, SendEmail):
            return "email"
        if not isinstance(action, CreateTask):
            return None
        kinds = {
            action.fields.get(self.org.tasks.type_field),
            action.fields.get(schema.TASK_SUBTYPE),
        }
        if kinds & set(self.rules.call_task_types):
            return "call"
        if kinds & set(self.rules.email_task_types):
            return "email"
        return None

    def persons(self, action: Action) -> list[Record]:
        """The people the action contacts, as far as the snapshot knows them."""
        if isinstance(action, SendEmail):
            return self._addressed(action.to_address)
        if not isinstance(action, CreateTask):
            return []
        if action.who_id:
            return [r for r in (self.snapshot.get(action.who_id),) if r is not None]
        target = self.snapshot.get(action.target.id)
        if target is None:
            return []
        if target.sobject in self.rules.person_objects():
            return [target]
        lookup = self.rules.person_field.get(target.sobject)
        if lookup is None or self.channel(action) != "call":
            return []  # an email Task without a WhoId: an internal notice (a won deal's)
        person = self.snapshot.get(target.text(lookup))
        return [person] if person is not None else []

    def why_not(self, person: Record, channel: Contact) -> str | None:
        """Why ``person`` may not be contacted on ``channel``, or None."""
        who = f"{person.sobject} {person.id}"
        status_field = self.rules.status_field.get(person.sobject)
        status = person.text(status_field) if status_field else None
        if status and status in self.rules.do_not_contact_statuses:
            return f"{who} has {status_field} {status!r}: no call or email"
        opt_out = (self.rules.call_opt_out if channel == "call" else self.rules.email_opt_out).get(
            person.sobject
        )
        if opt_out and person.flag(opt_out):
            return f"{who} has {opt_out} set: no {channel}"
        return None

    def check(self, action: Action) -> str | None:
        """Why the action is suppressed, or None when it may go ahead."""
        channel = self.channel(action)
        if channel is None:
            return None
        for person in self.persons(action):
            why = self.why_not(person, channel)
            if why:
                return f"suppressed: {why}"
        return None

    def _addressed(self, address: str) -> list[Record]:
        if self._by_email is None:
            index: dict[str, list[Record]] = {}
            for sobject, name in self.rules.email_field.items():
                for record in self.snapshot.of(sobject):
                    email = (record.text(name) or "").strip().lower()
                    if email:
                        index.setdefault(email, []).append(record)
            self._by_email = index
        return self._by_email.get(address.strip().lower(), [])


def suppress(
    actions: Iterable[Action], check: Callable[[Action], str | None]
) -> tuple[tuple[Action, ...], tuple[Suppressed, ...]]:
    """(the actions that go ahead, those suppressed with why). An action logging a
    suppressed one (same record, its step key extending the suppressed one's) goes with it."""
    planned = list(actions)
    out: list[Suppressed] = []
    for action in planned:
        why = check(action)
        if why:
            out.append(Suppressed(action, why))
    if not out:
        return tuple(planned), ()
    dropped = {s.action.key for s in out}
    for action in planned:
        if action.key in dropped:
            continue
        for s in list(out):
            if _companion(action, s.action):
                out.append(Suppressed(action, f"goes with the suppressed {s.action.key}: {s.why}"))
                dropped.add(action.key)
                break
    return tuple(a for a in planned if a.key not in dropped), tuple(out)


def _companion(action: Action, suppressed: Action) -> bool:
    if action.target.id != suppressed.target.id or action.rule != suppressed.rule:
        return False
    step = _step_key(action.key)
    return step.startswith(_step_key(suppressed.key) + "-")


def _step_key(key: str) -> str:
    """The step part of a ``rule:step:recordId`` key."""
    return key.split(":", 1)[1].rsplit(":", 1)[0]
