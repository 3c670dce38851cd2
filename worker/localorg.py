"""A Salesforce org kept on disk: the demo org, test fixtures, and offline runs.

Layout of an org folder::

    manifest.json          {"name", "org_id", "as_of", "description"}: org_id is the org's
                           Organization Id (00D...), which plans, runs and audit rows
                           record (a plan applies only to its org); as_of is the org's own
                           "today", the default as-of date whenever this org is used
    records/*.json         REST query responses ({"totalSize", "done", "records": [...]}),
                           each record typed by attributes.type, any number of files

The same folder is both a :class:`~worker.ports.Source` and a :class:`~worker.ports.Sink`.
Writes never touch the fixture files: a working copy is made beside the SQLite database on
the first write and used from then on, so a cycle can be repeated day after day offline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from worker import schema
from worker.actions import (
    Action,
    ActionResult,
    AddCampaignMember,
    AddCaseComment,
    ConvertLead,
    CreateTask,
    Outcome,
    SendEmail,
    SubmitApproval,
    UpdateRecord,
)
from worker.errors import ConfigError
from worker.keys import comment_body, cut_text, key_marker, task_what_id, with_key_marker
from worker.ports import ApiUsage, ObjectQuery, OrgIdentity, Page, TargetState
from worker.records import RecordRef, format_sf_datetime, id18, parse_sf_datetime

MANIFEST = "manifest.json"
RECORDS_DIR = "records"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    org_id: str
    as_of: dt.date
    description: str = ""

    @field_validator("org_id")
    @classmethod
    def _organization_id(cls, value: str) -> str:
        if not value.startswith(schema.ORGANIZATION_ID_PREFIX):
            raise ValueError(
                f"an Organization Id starts with {schema.ORGANIZATION_ID_PREFIX}: {value!r}"
            )
        return id18(value)

    def identity(self) -> OrgIdentity:
        """The org; no user, since nobody signs in to a folder."""
        return OrgIdentity(self.org_id, self.name)


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"local org {folder}: no {MANIFEST}; is this an org folder?") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {key}: {first['msg']}") from None


def iter_raw_records(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of every response file under ``records/``, in file order."""
    base = Path(folder) / RECORDS_DIR
    if not base.is_dir():
        raise ConfigError(f"local org {folder}: no {RECORDS_DIR}/ folder")
    for path in sorted(base.glob("*.json")):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise ConfigError(f"{path}: expected a query response with a 'records' list")
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise ConfigError(f"{path}: records[{i}] is not a record (a JSON object)")
            yield record


# -- writing ---------------------------------------------------------------------------------

_PREFIXES = {sobject: prefix for prefix, sobject in schema.KEY_PREFIXES.items()}


def local_id(sobject: str, key: str) -> str:
    """A deterministic 18-character Id for a record the local org creates for ``key``."""
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:10].upper()
    return f"{_PREFIXES.get(sobject, '0Lo')}Lo{digest}AAA"


def apply_actions(
    records: dict[str, dict[str, Any]],
    actions: Sequence[Action],
    now: dt.datetime,
    task_key_field: str,
) -> list[ActionResult]:
    """Apply actions to an in-memory org (Id -> raw record) the way Salesforce would.

    Creates are keyed: a Task carrying an existing key updates that Task (an upsert), a
    CaseComment whose key marker already exists is not added again. Every write bumps the
    record's SystemModstamp to ``now``.
    """
    stamp = format_sf_datetime(now)
    results: list[ActionResult] = []
    for action in actions:
        try:
            results.append(_apply_one(records, action, stamp, now, task_key_field))
        except _LocalWriteError as exc:
            results.append(
                ActionResult(action.key, Outcome.FAILED, error_code=exc.code, message=exc.message)
            )
    return results


class _LocalWriteError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _apply_one(
    records: dict[str, dict[str, Any]],
    action: Action,
    stamp: str,
    now: dt.datetime,
    task_key_field: str,
) -> ActionResult:
    target = records.get(action.target.id)
    if isinstance(action, UpdateRecord):
        if target is None or target.get(schema.IS_DELETED):
            raise _LocalWriteError("ENTITY_IS_DELETED", "entity is deleted")
        if target.get(schema.IS_CONVERTED):
            raise _LocalWriteError(
                "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead"
            )
        target.update({name: cut_text(name, v, []) for name, v in action.values().items()})
        target[schema.SYSTEM_MODSTAMP] = stamp
        return ActionResult(action.key, Outcome.APPLIED, sf_id=action.target.id)
    if isinstance(action, CreateTask):
        fields: dict[str, Any] = {
            schema.SUBJECT: cut_text(schema.SUBJECT, action.subject, []),
            schema.DESCRIPTION: action.description,
            schema.ACTIVITY_DATE: action.due.isoformat(),
            schema.OWNER_ID: action.owner_id,
            schema.WHAT_ID: task_what_id(action.who_id, action.what_id),
            schema.WHO_ID: action.who_id,
            schema.IS_CLOSED: False,
            **action.fields,
        }
        return _create(
            records,
            "Task",
            action.key,
            fields,
            stamp,
            now,
            existing=_find_task(records, action.key, task_key_field),
        )
    if isinstance(action, AddCaseComment):
        marker = key_marker(action.key)
        for rec in records.values():
            if rec.get(schema.PARENT_ID) == action.target.id and marker in str(
                rec.get(schema.COMMENT_BODY) or ""
            ):
                return ActionResult(action.key, Outcome.APPLIED, sf_id=rec[schema.ID])
        return _create(
            records,
            "CaseComment",
            action.key,
            {
                schema.PARENT_ID: action.target.id,
                schema.COMMENT_BODY: comment_body(action.body, action.key, []),
                schema.IS_PUBLISHED: action.published,
            },
            stamp,
            now,
        )
    if isinstance(action, SendEmail):
        # emailSimple with logEmailOnSend logs the email on the record it names as a
        # completed Task (an org without Enhanced Email), the body, key marker included, in
        # its description. An email already logged went out: it is not sent again.
        if not action.log_on_id:
            raise _LocalWriteError("EMAIL_NOT_LOGGED", "an email must be logged on a record")
        logged = _find_task(records, action.key, "")
        if logged:
            return ActionResult(action.key, Outcome.APPLIED, sf_id=logged, message="already sent")
        body = with_key_marker(action.body, action.key)
        person = action.log_on_id.startswith((schema.CONTACT_ID_PREFIX, schema.LEAD_ID_PREFIX))
        return _create(
            records,
            "Task",
            action.key,
            {
                schema.SUBJECT: f"Email: {action.subject}"[: schema.SUBJECT_MAX_CHARS],
                schema.DESCRIPTION: f"To: {action.to_address}\n\n{body}"[
                    : schema.TASK_DESCRIPTION_MAX_CHARS
                ],
                schema.ACTIVITY_DATE: now.date().isoformat(),
                schema.WHO_ID if person else schema.WHAT_ID: action.log_on_id,
                schema.STATUS: "Completed",
                schema.IS_CLOSED: True,
                schema.TASK_SUBTYPE: "Email",
            },
            stamp,
            now,
        )
    if isinstance(action, ConvertLead):
        if target is None:
            raise _LocalWriteError("ENTITY_IS_DELETED", "entity is deleted")
        if target.get(schema.IS_CONVERTED):
            raise _LocalWriteError("CANNOT_UPDATE_CONVERTED_LEAD", "lead is already converted")
        name = " ".join(str(target.get(f) or "") for f in ("FirstName", "LastName")).strip()
        company = str(target.get("Company") or name or target[schema.ID])
        acc = _create(records, "Account", f"{action.key}:account", {"Name": company}, stamp, now)
        con = _create(
            records,
            "Contact",
            f"{action.key}:contact",
            {
                "FirstName": target.get("FirstName"),
                "LastName": target.get("LastName"),
                "AccountId": acc.sf_id,
            },
            stamp,
            now,
        )
        opp_id = None
        if action.create_opportunity:
            opp = _create(
                records,
                schema.OPPORTUNITY,
                f"{action.key}:opportunity",
                {
                    "Name": action.opportunity_name or company,
                    "AccountId": acc.sf_id,
                    schema.OWNER_ID: action.owner_id,
                    **action.opportunity_values,
                },
                stamp,
                now,
            )
            opp_id = opp.sf_id
        target.update(
            {
                schema.IS_CONVERTED: True,
                schema.STATUS: action.converted_status,
                "ConvertedAccountId": acc.sf_id,
                "ConvertedContactId": con.sf_id,
                "ConvertedOpportunityId": opp_id,
                schema.SYSTEM_MODSTAMP: stamp,
            }
        )
        return ActionResult(action.key, Outcome.APPLIED, sf_id=opp_id or acc.sf_id)
    if isinstance(action, SubmitApproval):
        return _submit(records, action, target, stamp, now)
    if isinstance(action, AddCampaignMember):
        return _add_member(records, action, stamp, now)
    raise _LocalWriteError("UNSUPPORTED", f"the local org cannot apply {action.kind}")


def _add_member(
    records: dict[str, dict[str, Any]], action: AddCampaignMember, stamp: str, now: dt.datetime
) -> ActionResult:
    """A CampaignMember, as Salesforce keeps it: one per person and campaign (a second is
    refused with DUPLICATE_VALUE: the person is a member already, the action is done)."""
    for rid in (action.campaign_id, action.member_id):
        found = records.get(rid)
        if found is None or found.get(schema.IS_DELETED):
            raise _LocalWriteError(
                "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id {rid}"
            )
    member = _find_member(records, action)
    if member:
        return ActionResult(
            action.key, Outcome.APPLIED, sf_id=member, message="already a member of the campaign"
        )
    person = schema.LEAD_ID if action.member_id.startswith(schema.LEAD_ID_PREFIX) else "ContactId"
    fields: dict[str, Any] = {"CampaignId": action.campaign_id, person: action.member_id}
    if action.status:
        fields[schema.STATUS] = action.status
    return _create(records, schema.CAMPAIGN_MEMBER, action.key, fields, stamp, now)


def _find_member(records: Mapping[str, Mapping[str, Any]], action: AddCampaignMember) -> str | None:
    for rid, rec in records.items():
        if (
            rec.get(schema.ATTRIBUTES, {}).get("type") == schema.CAMPAIGN_MEMBER
            and not rec.get(schema.IS_DELETED)
            and rec.get("CampaignId") == action.campaign_id
            and action.member_id in (rec.get(schema.LEAD_ID), rec.get("ContactId"))
        ):
            return rid
    return None


def _submit(
    records: dict[str, dict[str, Any]],
    action: SubmitApproval,
    target: dict[str, Any] | None,
    stamp: str,
    now: dt.datetime,
) -> ActionResult:
    """A submission as Salesforce records it: a Pending ProcessInstance on the target and
    its Started step holding the comments (key marker included). A record already pending
    is refused as Salesforce refuses it; one submitted with this key is not submitted again."""
    if target is None or target.get(schema.IS_DELETED):
        raise _LocalWriteError("ENTITY_IS_DELETED", "entity is deleted")
    found = _find_submission(records, action.key)
    if found:
        return ActionResult(action.key, Outcome.APPLIED, sf_id=found, message="already submitted")
    for rec in records.values():
        if (
            rec.get(schema.ATTRIBUTES, {}).get("type") == schema.PROCESS_INSTANCE
            and rec.get(schema.TARGET_OBJECT_ID) == action.target.id
            and rec.get(schema.STATUS) == "Pending"
        ):
            raise _LocalWriteError(
                "ALREADY_IN_PROCESS", "This record is currently in an approval process."
            )
    instance = _create(
        records,
        schema.PROCESS_INSTANCE,
        action.key,
        {schema.TARGET_OBJECT_ID: action.target.id, schema.STATUS: "Pending"},
        stamp,
        now,
    )
    _create(
        records,
        schema.PROCESS_INSTANCE_STEP,
        f"{action.key}:started",
        {
            schema.PROCESS_INSTANCE_ID: instance.sf_id,
            schema.STEP_STATUS: "Started",
            schema.COMMENTS: with_key_marker(action.comments, action.key),
            "ActorId": action.submitter_id,
            "OriginalActorId": action.submitter_id,
        },
        stamp,
        now,
    )
    return instance


def _find_submission(records: dict[str, dict[str, Any]], key: str) -> str | None:
    """The ProcessInstance whose submission carries ``key`` in its step's comments."""
    marker = key_marker(key)
    for rec in records.values():
        if rec.get(schema.ATTRIBUTES, {}).get(
            "type"
        ) == schema.PROCESS_INSTANCE_STEP and marker in str(rec.get(schema.COMMENTS) or ""):
            return str(rec.get(schema.PROCESS_INSTANCE_ID))
    return None


def _find_task(records: dict[str, dict[str, Any]], key: str, key_field: str) -> str | None:
    marker = key_marker(key)
    for rec in records.values():
        if rec.get(schema.ATTRIBUTES, {}).get("type") != "Task":
            continue
        if (key_field and rec.get(key_field) == key) or marker in str(
            rec.get(schema.DESCRIPTION) or ""
        ):
            return str(rec[schema.ID])
    return None


def _create(
    records: dict[str, dict[str, Any]],
    sobject: str,
    key: str,
    fields: dict[str, Any],
    stamp: str,
    now: dt.datetime,
    existing: str | None = None,
) -> ActionResult:
    rid = existing or local_id(sobject, key)
    if rid in records:
        records[rid].update(fields)
        records[rid][schema.SYSTEM_MODSTAMP] = stamp
        return ActionResult(key, Outcome.APPLIED, sf_id=rid)
    records[rid] = {
        schema.ATTRIBUTES: {"type": sobject},
        schema.ID: rid,
        schema.CREATED_DATE: format_sf_datetime(now),
        schema.IS_DELETED: False,
        **fields,
        schema.SYSTEM_MODSTAMP: stamp,
    }
    return ActionResult(key, Outcome.APPLIED, sf_id=rid)


# -- the org folder as source and sink -------------------------------------------------------


class LocalOrg:
    """An org folder as both :class:`~worker.ports.Source` and :class:`~worker.ports.Sink`.

    Reads come from the working copy when one exists, else from the fixture folder. The
    first write copies the fixture to ``work_dir`` and writes there, never into the fixture.
    Reads return only the queried fields, as Salesforce does, so a rule that reads a field
    the mapping did not ask for fails here as it would against a real org.
    """

    dry_run = False

    def __init__(
        self,
        fixture: str | Path,
        work_dir: str | Path,
        task_key_field: str = "",
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.fixture = Path(fixture)
        self._key_field = task_key_field
        self._clock = clock
        read_manifest(self.fixture)  # a bad manifest is an error now, not at the first read
        self.working = Path(work_dir) / "local-orgs" / self.fixture.resolve().name
        self.name = f"local org {self.fixture}"

    @property
    def folder(self) -> Path:
        return self.working if (self.working / MANIFEST).exists() else self.fixture

    # -- source ------------------------------------------------------------------------------
    def fetch(self, queries: Sequence[ObjectQuery]) -> Iterator[Page]:
        records = list(iter_raw_records(self.folder))
        for query in queries:
            rows, deleted = [], []
            for raw in records:
                if raw.get(schema.ATTRIBUTES, {}).get("type") != query.sobject:
                    continue
                if not _in_window(raw, query) or not _matches(raw, query.filters):
                    continue
                if raw.get(schema.IS_DELETED) and isinstance(raw.get(schema.ID), str):
                    deleted.append(raw[schema.ID])
                else:
                    rows.append(_project(raw, query.fields))
            stamp = query.replication.stamp
            rows.sort(key=lambda r: (str(r.get(stamp) or ""), str(r.get(schema.ID))))
            yield Page(query.sobject, rows, deleted, stamp_field=stamp)

    def identity(self) -> OrgIdentity:
        """The org named in the manifest (the working copy is a copy of the same org)."""
        return read_manifest(self.folder).identity()

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return None

    # -- sink --------------------------------------------------------------------------------
    def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
        wanted = {t.id for t in targets}
        return {
            str(raw[schema.ID]): TargetState(
                raw.get(schema.SYSTEM_MODSTAMP),
                closed=raw.get(schema.IS_CLOSED) is True,
                converted=raw.get(schema.IS_CONVERTED) is True,
            )
            for raw in iter_raw_records(self.folder)
            if raw.get(schema.ID) in wanted and not raw.get(schema.IS_DELETED)
        }

    def write(self, actions: Sequence[Action]) -> list[ActionResult]:
        self._ensure_working_copy()
        files, records = self._load_files()
        before = set(records)
        results = apply_actions(records, actions, self._clock(), self._key_field)
        created = [records[rid] for rid in records if rid not in before]
        self._save_files(files, created)
        return results

    def reconcile(self, actions: Sequence[Action]) -> list[ActionResult | None]:
        records = {str(r[schema.ID]): r for r in iter_raw_records(self.folder)}
        out: list[ActionResult | None] = []
        for action in actions:
            found = None
            target = records.get(action.target.id)
            if isinstance(action, UpdateRecord) and target is not None:
                values = action.values().items()
                found = action.target.id if all(target.get(k) == v for k, v in values) else None
            elif isinstance(action, (CreateTask, SendEmail)):
                found = _find_task(records, action.key, self._key_field)
            elif isinstance(action, SubmitApproval):
                found = _find_submission(records, action.key)
            elif isinstance(action, AddCampaignMember):
                found = _find_member(records, action)
            elif isinstance(action, AddCaseComment):
                marker = key_marker(action.key)
                found = next(
                    (
                        rid
                        for rid, r in records.items()
                        if marker in str(r.get(schema.COMMENT_BODY) or "")
                    ),
                    None,
                )
            out.append(ActionResult(action.key, Outcome.APPLIED, sf_id=found) if found else None)
        return out

    def estimate_calls(self, batches: Sequence[Sequence[Action]]) -> int:
        return 0

    def _ensure_working_copy(self) -> None:
        if (self.working / MANIFEST).exists():
            return
        self.working.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.working.with_name(self.working.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(self.fixture, tmp)
        tmp.replace(self.working)

    def _load_files(self) -> tuple[dict[Path, dict[str, Any]], dict[str, dict[str, Any]]]:
        files: dict[Path, dict[str, Any]] = {}
        records: dict[str, dict[str, Any]] = {}
        for path in sorted((self.working / RECORDS_DIR).glob("*.json")):
            body = json.loads(path.read_text(encoding="utf-8"))
            files[path] = body
            for raw in body["records"]:
                if isinstance(raw, dict) and isinstance(raw.get(schema.ID), str):
                    records[raw[schema.ID]] = raw  # same dict objects: edits land in `files`
        return files, records

    def _save_files(self, files: dict[Path, dict[str, Any]], created: list[dict[str, Any]]) -> None:
        if created:
            path = self.working / RECORDS_DIR / "zz-created-by-worker.json"
            body = files.setdefault(path, {"totalSize": 0, "done": True, "records": []})
            body["records"].extend(created)
        for path, body in files.items():
            body["totalSize"] = len(body["records"])
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
            tmp.replace(path)


def _in_window(raw: Mapping[str, Any], query: ObjectQuery) -> bool:
    """Incremental reads honour the lower bound only: a local org has its own dates (its
    manifest's as-of), so the real clock's upper bound would hide records dated after it."""
    stamp = raw.get(query.replication.stamp)
    if not isinstance(stamp, str) or query.since is None:
        return True
    return parse_sf_datetime(stamp) >= query.since


def _matches(raw: Mapping[str, Any], filters: Mapping[str, tuple[Any, ...]]) -> bool:
    return all(raw.get(name) in allowed for name, allowed in filters.items())


def _project(raw: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    keep = {f.split(".")[0] for f in fields}
    return {k: v for k, v in raw.items() if k in keep or k == schema.ATTRIBUTES}
