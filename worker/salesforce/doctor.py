"""``sop-worker doctor``: does the org have everything the mapping needs?

:func:`run_doctor` checks, in order, stopping at the first step that cannot go on:

1. the ``SF_*`` auth settings are complete (a ConfigError becomes a finding);
2. authentication works;
3. ``GET /services/data/`` lists the pinned ``SF_API_VERSION``;
4. every needed object describes (one Composite call for up to 25 objects) and is
   queryable; every needed field exists (a field hidden by field-level security is absent
   from describe, so "missing" also covers "not readable"); fields the rules write are
   updateable; the Task key field is an External ID; every mapped picklist value exists
   and is active.

Each problem is a :class:`Finding` with the fix. The CLI prints them and exits 2 when
any has :attr:`Severity.ERROR`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from tenacity.wait import wait_base

from worker.errors import AuthError, ConfigError, SalesforceError
from worker.findings import Finding, FindingKind, Severity
from worker.salesforce.client import COMPOSITE_MAX_SUBREQUESTS, SalesforceClient, SubRequest
from worker.salesforce.reads import every_row
from worker.salesforce.settings import AuthMode, SalesforceSettings, check_auth_config
from worker.salesforce.soql import Select, select


@dataclass(frozen=True)
class _FieldInfo:
    name: str
    type: str
    updateable: bool
    external_id: bool
    relationship: str | None
    picklist: Mapping[str, bool]  # value -> active


def run_doctor(
    settings: SalesforceSettings,
    needs: Mapping[str, Iterable[str]],
    picklists: Mapping[tuple[str, str], Iterable[str]] | None = None,
    *,
    updates: Mapping[str, Iterable[str]] | None = None,
    task_key_field: str = "",
    converted_statuses: Iterable[str] = (),
    object_fixes: Mapping[str, str] | None = None,
    client: SalesforceClient | None = None,
    http: requests.Session | None = None,
    wait: wait_base | None = None,
) -> list[Finding]:
    """Check the org against what the mapping needs; an empty list means all is well.

    ``needs``: fields read per object; ``updates``: fields written per object;
    ``picklists``: (object, field) -> values the mapping uses; ``converted_statuses``: Lead
    statuses the worker converts leads into (each must be marked Converted, which describe
    does not show: one query on ``LeadStatus``); ``object_fixes``: how to fix a missing
    object that is a feature the org turns on (``OutOfOffice``: Chatter's Out of Office).
    """
    findings: list[Finding] = []
    try:
        mode = check_auth_config(settings)
    except ConfigError as exc:
        return [
            Finding(
                FindingKind.SETTINGS,
                str(exc),
                "set the variables named above (see docs/salesforce.md)",
            )
        ]
    if mode is AuthMode.PASSWORD:
        findings.append(
            Finding(
                FindingKind.DEPRECATED_AUTH,
                "SF_AUTH=password uses the username-password flow Salesforce is retiring",
                "switch to JWT bearer (SF_PRIVATE_KEY_FILE) or client credentials",
                Severity.WARNING,
            )
        )
    api = client or SalesforceClient(settings, http=http, wait=wait)
    try:
        versions = api.get_json("/services/data/", kind="versions")
    except AuthError as exc:
        findings.append(Finding(FindingKind.AUTH, f"authentication failed: {exc}", _auth_fix(mode)))
        return findings
    except SalesforceError as exc:
        findings.append(
            Finding(
                FindingKind.AUTH,
                f"cannot reach the org: {exc}",
                "check SF_INSTANCE_URL / SF_LOGIN_URL",
            )
        )
        return findings
    known = (
        [str(v.get("version")) for v in versions if isinstance(v, Mapping)]
        if isinstance(versions, list)
        else []
    )
    if settings.api_version not in known:
        latest = known[-1] if known else "?"
        findings.append(
            Finding(
                FindingKind.API_VERSION,
                f"the org does not offer API version {settings.api_version} (latest: {latest})",
                f"set SF_API_VERSION={latest}",
            )
        )
        return findings

    wanted: dict[str, set[str]] = {}
    for obj, names in needs.items():
        wanted.setdefault(obj, set()).update(names)
    for obj, names in (updates or {}).items():
        wanted.setdefault(obj, set()).update(names)
    for obj, fld in picklists or {}:
        wanted.setdefault(obj, set()).add(fld)
    if task_key_field:
        wanted.setdefault("Task", set()).add(task_key_field)

    try:
        described = _describe(api, sorted(wanted), findings, object_fixes or {})
    except AuthError as exc:
        # /services/data/ answers without a session: this is the first authenticated call.
        findings.append(Finding(FindingKind.AUTH, f"authentication failed: {exc}", _auth_fix(mode)))
        return findings
    for obj in sorted(wanted):
        fields = described.get(obj)
        if fields is None:
            continue
        for name in sorted(wanted[obj]):
            info = _field(fields, name)
            if info is None:
                findings.append(
                    Finding(
                        FindingKind.FIELD_MISSING,
                        f"{obj}.{name} is missing, or hidden from the integration user by "
                        "field-level security",
                        f"create {obj}.{name} (see salesforce/ for the worker's own fields) or "
                        "grant the integration user read access to it",
                        sobject=obj,
                        field=name,
                    )
                )
                continue
            if name in set((updates or {}).get(obj, ())) and not info.updateable:
                findings.append(
                    Finding(
                        FindingKind.FIELD_NOT_UPDATEABLE,
                        f"{obj}.{name} is not updateable by the integration user",
                        "grant edit access in field-level security (or pick a writable field "
                        "in the mapping)",
                        sobject=obj,
                        field=name,
                    )
                )
        if obj == "Task" and task_key_field:
            key = _field(fields, task_key_field)
            if key is not None and not key.external_id:
                findings.append(
                    Finding(
                        FindingKind.KEY_FIELD_NOT_EXTERNAL_ID,
                        f"Task.{task_key_field} is not an External ID, so Tasks cannot be "
                        "upserted on the action key",
                        "deploy salesforce/ (Text(80), External ID, Unique) or clear "
                        "org.task_key_field in the mapping",
                        sobject="Task",
                        field=task_key_field,
                    )
                )
    for (obj, fld), values in sorted((picklists or {}).items()):
        fields = described.get(obj)
        info = _field(fields, fld) if fields else None
        if info is None or info.type not in ("picklist", "multipicklist"):
            continue
        for value in sorted(set(values)):
            active = info.picklist.get(value)
            if active is None:
                findings.append(
                    Finding(
                        FindingKind.PICKLIST_VALUE_MISSING,
                        f"{obj}.{fld} has no picklist value {value!r}",
                        f"add {value!r} to {obj}.{fld} (Setup > Object Manager) or change "
                        "the mapping to a value the org uses",
                        sobject=obj,
                        field=fld,
                    )
                )
            elif not active:
                findings.append(
                    Finding(
                        FindingKind.PICKLIST_VALUE_INACTIVE,
                        f"{obj}.{fld} picklist value {value!r} is inactive",
                        f"activate {value!r} on {obj}.{fld}",
                        sobject=obj,
                        field=fld,
                    )
                )
    findings.extend(_check_converted(api, set(converted_statuses)))
    return findings


def _check_converted(api: SalesforceClient, wanted: set[str]) -> list[Finding]:
    """convertLead refuses a status that is not marked Converted (INVALID_STATUS)."""
    if not wanted:
        return []
    # convertLead's convertedStatus is a LeadStatus MasterLabel (the Lead Status value).
    soql = select(Select("LeadStatus", ("MasterLabel", "IsConverted")))
    converted = {
        str(row.get("MasterLabel")): row.get("IsConverted") is True
        for row in every_row(api, [soql], all_rows=False, kind="describe")
    }
    return [
        Finding(
            FindingKind.LEAD_STATUS_NOT_CONVERTED,
            f"Lead status {status!r} is not marked Converted, so convertLead refuses it",
            f"mark {status!r} Converted (Setup > Object Manager > Lead > Fields > Lead Status), "
            "or map converted_status to a status that is",
            sobject="Lead",
            field="Status",
        )
        for status in sorted(wanted)
        if status in converted and not converted[status]
    ]


def _describe(
    api: SalesforceClient, objects: list[str], findings: list[Finding], fixes: Mapping[str, str]
) -> dict[str, dict[str, _FieldInfo]]:
    out: dict[str, dict[str, _FieldInfo]] = {}
    for start in range(0, len(objects), COMPOSITE_MAX_SUBREQUESTS):
        batch = objects[start : start + COMPOSITE_MAX_SUBREQUESTS]
        subs = [
            SubRequest("GET", api.data_path(f"sobjects/{obj}/describe"), f"d{start + i}")
            for i, obj in enumerate(batch)
        ]
        responses = [
            (r.status, r.body) for r in api.composite(subs, kind="describe", idempotent=True)
        ]
        for obj, (status, body) in zip(batch, responses, strict=True):
            if status == 404:
                findings.append(
                    Finding(
                        FindingKind.OBJECT_MISSING,
                        f"the org has no object {obj} (or the integration user cannot see it)",
                        fixes.get(obj)
                        or f"check the object API name in the mapping, or grant access to {obj}",
                        sobject=obj,
                    )
                )
                continue
            if status >= 400 or not isinstance(body, Mapping):
                findings.append(
                    Finding(
                        FindingKind.OBJECT_NOT_READABLE,
                        f"cannot describe {obj} (HTTP {status})",
                        f"grant the integration user read access to {obj}",
                        sobject=obj,
                    )
                )
                continue
            if body.get("queryable") is False:
                findings.append(
                    Finding(
                        FindingKind.OBJECT_NOT_READABLE,
                        f"{obj} is not queryable by the integration user",
                        f"grant read access to {obj} in the integration user's permission set",
                        sobject=obj,
                    )
                )
            out[obj] = {
                str(f.get("name")): _field_info(f)
                for f in body.get("fields", [])
                if isinstance(f, Mapping)
            }
    return out


def _field_info(raw: Mapping[str, Any]) -> _FieldInfo:
    values = raw.get("picklistValues") or []
    return _FieldInfo(
        name=str(raw.get("name")),
        type=str(raw.get("type") or ""),
        updateable=bool(raw.get("updateable")),
        external_id=bool(raw.get("externalId")),
        relationship=raw.get("relationshipName") or None,
        picklist={
            str(v.get("value")): bool(v.get("active", True))
            for v in values
            if isinstance(v, Mapping)
        },
    )


def _field(fields: Mapping[str, _FieldInfo], name: str) -> _FieldInfo | None:
    """A field by API name (case-insensitive); ``Account.Name`` checks the relationship."""
    head = name.split(".", 1)[0].lower()
    for info in fields.values():
        if "." in name:
            if info.relationship and info.relationship.lower() == head:
                return info
        elif info.name.lower() == head:
            return info
    return None


def _auth_fix(mode: AuthMode) -> str:
    return {
        AuthMode.TOKEN: "get a fresh token (sf org display) and set SF_ACCESS_TOKEN",
        AuthMode.JWT: "check SF_CLIENT_ID, SF_USERNAME, the certificate uploaded to the app, "
        "and that the user is pre-authorized for the app",
        AuthMode.CLIENT_CREDENTIALS: "check SF_CLIENT_ID/SF_CLIENT_SECRET, that the app has "
        "a Run As user, and that SF_LOGIN_URL is the My Domain URL",
        AuthMode.REFRESH_TOKEN: "issue a new refresh token and set SF_REFRESH_TOKEN",
        AuthMode.PASSWORD: "check SF_USERNAME/SF_PASSWORD/SF_SECURITY_TOKEN",
    }.get(mode, "check the SF_* settings")
