"""A small sales org for the SOP 004 routing and SLA tests: the demo mapping's users, queues
and pools (the Ids the mapping names), leads built on demand, and a way to run the routing
rule and write its updates back the way Salesforce would."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from worker.actions import Action, CreateTask, SendEmail, UpdateRecord
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot, format_sf_datetime, full_record_id
from worker.rules import AsOf, Evaluation, evaluate_rule
from worker.rules.lead_routing import RULE, LeadRoutingSettings

CHICAGO = ZoneInfo("America/Chicago")
Raw = dict[str, Any]

# Users (the demo mapping's Ids)
SAM = "005Dm1500000001IAA"  # sales manager, West
NIA = "005Dm1500000002IAA"  # senior AE, West
LEO = "005Dm1500000003IAA"  # senior AE, West
AVA = "005Dm1500000004IAA"  # AE West, weight 2
BEN = "005Dm1500000005IAA"  # AE West
CARA = "005Dm1500000006IAA"  # AE West
OMAR = "005Dm1500000007IAA"  # sales manager, East
EVE = "005Dm1500000008IAA"  # senior AE, East
FINN = "005Dm1500000009IAA"  # AE East, part time (09:00-13:00)
GIA = "005Dm1500000010IAA"  # AE East
HANA = "005Dm1500000011IAA"  # SDR team lead
IVAN = "005Dm1500000012IAA"  # former rep (inactive)
JULES = "005Dm1500000013IAA"  # strategic accounts
KIM = "005Dm1500000014IAA"  # VP Sales

NAMES = {
    SAM: "Sam Ortiz",
    NIA: "Nia Brooks",
    LEO: "Leo Park",
    AVA: "Ava Chen",
    BEN: "Ben Diaz",
    CARA: "Cara Singh",
    OMAR: "Omar Haddad",
    EVE: "Eve Laurent",
    FINN: "Finn Walsh",
    GIA: "Gia Romano",
    HANA: "Hana Ito",
    IVAN: "Ivan Petrov",
    JULES: "Jules Moreau",
    KIM: "Kim Novak",
}
MANAGERS = {
    NIA: SAM,
    LEO: SAM,
    AVA: SAM,
    BEN: SAM,
    CARA: SAM,
    EVE: OMAR,
    FINN: OMAR,
    GIA: OMAR,
    HANA: KIM,
    IVAN: SAM,
    JULES: KIM,
    SAM: KIM,
    OMAR: KIM,
}

GROUPS = {
    "Lead_Intake": ("00GDm1500000001MAA", "Queue"),
    "SDR_Queue": ("00GDm1500000002MAA", "Queue"),
    "Marketing_Nurture": ("00GDm1500000003MAA", "Queue"),
    "Sales_Fallback": ("00GDm1500000004MAA", "Queue"),
    "Senior_West": ("00GDm1500000005MAA", "Regular"),
    "Reps_West": ("00GDm1500000006MAA", "Regular"),
    "Reps_West_Core": ("00GDm1500000007MAA", "Regular"),
    "Senior_East": ("00GDm1500000008MAA", "Regular"),
    "Reps_East": ("00GDm1500000009MAA", "Regular"),
}
INTAKE = GROUPS["Lead_Intake"][0]
MEMBERS = {
    "Senior_West": (NIA, LEO),
    # Ava and Ben through a nested group, Cara directly.
    "Reps_West": (GROUPS["Reps_West_Core"][0], CARA),
    "Reps_West_Core": (AVA, BEN),
    "Senior_East": (EVE,),
    "Reps_East": (FINN, GIA),
}

STAMP = "2026-01-05T09:00:00.000+0000"
_ids = itertools.count(1)


def sfid(prefix: str, n: int) -> str:
    """A demo Id of this rule: key prefix, Dm15, a number; unique in its first 15
    characters (Salesforce's Id: the last three only say which letters are upper case)."""
    return full_record_id(f"{prefix}Dm15{n:08d}")


def users(**changes: Raw) -> list[Raw]:
    out = []
    for uid, name in NAMES.items():
        first, last = name.split()
        raw = {
            "attributes": {"type": "User"},
            "Id": uid,
            "Name": name,
            "Email": f"{first.lower()}.{last.lower()}@example.com",
            "IsActive": uid != IVAN,
            "ManagerId": MANAGERS.get(uid),
            "SystemModstamp": STAMP,
        }
        raw.update(changes.get(uid, {}))
        out.append(raw)
    return out


def groups() -> list[Raw]:
    out: list[Raw] = [
        {
            "attributes": {"type": "Group"},
            "Id": gid,
            "Name": name.replace("_", " "),
            "DeveloperName": name,
            "Type": kind,
            "SystemModstamp": STAMP,
        }
        for name, (gid, kind) in GROUPS.items()
    ]
    n = itertools.count(1)
    for group, members in MEMBERS.items():
        for member in members:
            out.append(
                {
                    "attributes": {"type": "GroupMember"},
                    "Id": sfid("011", next(n)),
                    "GroupId": GROUPS[group][0],
                    "UserOrGroupId": member,
                    "SystemModstamp": STAMP,
                }
            )
    return out


def out_of_office(user: str, start: str, end: str | None, n: int = 1) -> Raw:
    return {
        "attributes": {"type": "OutOfOffice"},
        "Id": sfid("0Ha", n),
        "UserId": user,
        "StartDate": start,
        "EndDate": end,
        "IsEnabled": True,
        "Message": "Out of office",
        "SystemModstamp": STAMP,
    }


# Leads' fields by band with the demo score tables; band_lead adds the behaviour Tasks.
HOT = {  # D22 F30, and B30 from two Tasks: 82
    "Title": "VP Operations",
    "Email": "x@example.com",
    "Phone": "+1 415 555 0100",
    "Industry": "Technology",
    "NumberOfEmployees": 1500,
    "AnnualRevenue": 50_000_000,
}
WARM = {**HOT, "AnnualRevenue": None, "NumberOfEmployees": 300}  # D22 F18 + B20 = 60
QUALIFIED = {**WARM}  # 40 without behaviour
EARLY = {"Title": "Office Manager", "Email": "x@example.com", "Industry": "Technology"}  # 20
COLD = {"Title": "Intern"}  # 0


def lead(
    created: dt.datetime,
    state: str = "CA",
    owner: str = INTAKE,
    n: int | None = None,
    **fields: Any,
) -> Raw:
    n = next(_ids) if n is None else n
    rid = sfid("00Q", n)
    stamp = format_sf_datetime(created)
    return {
        "attributes": {"type": "Lead"},
        "Id": rid,
        "Name": f"Lead {n}",
        "Company": f"Company {n}",
        "RecordType": {"attributes": {"type": "RecordType"}, "DeveloperName": "Sales"},
        "State": state,
        "IsConverted": False,
        "OwnerId": owner,
        "Status": "Open - Not Contacted",
        "CreatedDate": stamp,
        "SystemModstamp": stamp,
        **fields,
    }


def demo_request(lead_raw: Raw, subject: str = "Web form: demo request") -> Raw:
    day = str(lead_raw["CreatedDate"])[:10]
    return {
        "attributes": {"type": "Task"},
        "Id": sfid("00T", next(_ids)),
        "WhoId": lead_raw["Id"],
        "Subject": subject,
        "ActivityDate": day,
        "Status": "Completed",
        "IsClosed": True,
        "CreatedDate": lead_raw["CreatedDate"],
        "SystemModstamp": lead_raw["CreatedDate"],
    }


def band_lead(band: str, created: dt.datetime, **kw: Any) -> list[Raw]:
    """A lead of ``band`` and the Tasks that score it there."""
    fields = {"Hot": HOT, "Warm": WARM, "Qualified": QUALIFIED, "Early": EARLY, "Cold": COLD}
    raw = lead(created, **{**fields[band], **kw})
    extra: list[Raw] = []
    if band == "Hot":  # D22 F30 B30 = 82
        extra = [demo_request(raw), demo_request(raw, "Pricing call")]
    elif band == "Warm":
        extra = [demo_request(raw)]
    return [raw, *extra]


def at(day: dt.date, hour: int, minute: int = 0) -> AsOf:
    return AsOf(dt.datetime.combine(day, dt.time(hour, minute), tzinfo=CHICAGO))


def settings_of(mapping: LoadedMapping) -> LeadRoutingSettings:
    found = mapping.rules["lead_routing"]
    assert isinstance(found, LeadRoutingSettings)
    return found


def route(mapping: LoadedMapping, records: Iterable[Raw], when: AsOf) -> dict[str, Evaluation]:
    snapshot = Snapshot.build(Record.from_json(r) for r in records)
    found = evaluate_rule(RULE, snapshot, when, settings_of(mapping), mapping.common)
    return {e.target.id: e for e in found}


def write_back(
    org: dict[str, Raw], evaluations: Iterable[Evaluation], when: AsOf, mapping: LoadedMapping
) -> list[Action]:
    """Apply the evaluations' actions to ``org`` as Salesforce would; the actions."""
    actions = [a for e in evaluations for a in e.actions]
    apply_actions(org, actions, when.instant, mapping.common.org.task_key_field)
    return actions


def owner_updates(actions: Sequence[Action]) -> list[UpdateRecord]:
    return [a for a in actions if isinstance(a, UpdateRecord)]


def tasks(actions: Sequence[Action]) -> list[CreateTask]:
    return [a for a in actions if isinstance(a, CreateTask)]


def emails(actions: Sequence[Action]) -> list[SendEmail]:
    return [a for a in actions if isinstance(a, SendEmail)]
