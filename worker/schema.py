"""Salesforce's own standard field names: fixed by the platform, the same in every org.

Only the platform's schema lives here. Anything an org chooses (custom fields, picklist
values, which Task marks a reply) lives in ``mappings/``.
"""

from __future__ import annotations

from dataclasses import dataclass

ID = "Id"
SYSTEM_MODSTAMP = "SystemModstamp"
# The merge snapshot object shipped in salesforce/ (a merge's undo data, kept in the org).
MERGE_SNAPSHOT = "SOP_Merge_Snapshot__c"
MERGE_SNAPSHOT_KEY = "Merge_Key__c"  # Text(255), External ID, unique: the merge's action key
MERGE_SNAPSHOT_MASTER = "Master_Id__c"  # Text(18)
MERGE_SNAPSHOT_BODY = "Body__c"  # Long Text Area(131072): the snapshot as JSON
MERGE_SNAPSHOT_FIELDS = (MERGE_SNAPSHOT_KEY, MERGE_SNAPSHOT_MASTER, MERGE_SNAPSHOT_BODY)
IS_DELETED = "IsDeleted"
ATTRIBUTES = "attributes"

TASK = "Task"
CASE_COMMENT = "CaseComment"
LEAD = "Lead"
CASE = "Case"
OPPORTUNITY = "Opportunity"  # what convertLead creates
EMAIL_MESSAGE = "EmailMessage"  # an email the Send Email action logged (Enhanced Email)

# Task
WHAT_ID = "WhatId"
WHO_ID = "WhoId"
OWNER_ID = "OwnerId"
LEAD_ID = "LeadId"  # a CampaignMember's lead
SUBJECT = "Subject"
DESCRIPTION = "Description"
ACTIVITY_DATE = "ActivityDate"
STATUS = "Status"
PRIORITY = "Priority"
TASK_SUBTYPE = "TaskSubtype"
IS_CLOSED = "IsClosed"
CREATED_DATE = "CreatedDate"
COMPLETED_DATE = "CompletedDateTime"
REMINDER_DATETIME = "ReminderDateTime"  # when the owner's reminder fires, if IsReminderSet
IS_REMINDER_SET = "IsReminderSet"

# CaseComment
PARENT_ID = "ParentId"
COMMENT_BODY = "CommentBody"
IS_PUBLISHED = "IsPublished"

# Lead
IS_CONVERTED = "IsConverted"

# EmailMessage
RELATED_TO_ID = "RelatedToId"
TEXT_BODY = "TextBody"

# What says a record is finished, read again with its SystemModstamp just before a write:
# a target closed or converted since it was read is a conflict (see worker.pipeline).
STATE_FIELDS = {
    CASE: (IS_CLOSED,),
    OPPORTUNITY: (IS_CLOSED,),
    TASK: (IS_CLOSED,),
    LEAD: (IS_CONVERTED,),
}

# Limits the platform enforces on what the worker writes.
SUBJECT_MAX_CHARS = 255
COMMENT_BODY_MAX_BYTES = 4000
TASK_DESCRIPTION_MAX_CHARS = 32000

# Id prefixes (key prefixes) the worker needs to tell a Lead from a Contact in WhoId.
LEAD_ID_PREFIX = "00Q"
CONTACT_ID_PREFIX = "003"
# ... and to check the org and user a session or a plan names.
ORGANIZATION_ID_PREFIX = "00D"
USER_ID_PREFIX = "005"
CAMPAIGN_ID_PREFIX = "701"

# Key prefixes of the standard objects the worker touches (fixed by the platform).
KEY_PREFIXES = {
    "001": "Account",
    CONTACT_ID_PREFIX: "Contact",
    USER_ID_PREFIX: "User",
    "006": OPPORTUNITY,
    LEAD_ID_PREFIX: LEAD,
    "00T": TASK,
    "00U": "Event",
    "00a": CASE_COMMENT,
    "02s": EMAIL_MESSAGE,
    "500": CASE,
    CAMPAIGN_ID_PREFIX: "Campaign",
    "04g": "ProcessInstance",
    "04h": "ProcessInstanceStep",
    "00v": "CampaignMember",
}

# Objects a rule may read beside its own (related records, see docs/engine.md).
USER = "User"
GROUP = "Group"  # a queue is a Group with Type = 'Queue'
GROUP_MEMBER = "GroupMember"
LEAD_HISTORY = "LeadHistory"
OPPORTUNITY_HISTORY = "OpportunityHistory"
CAMPAIGN_MEMBER = "CampaignMember"
EVENT = "Event"
OUT_OF_OFFICE = "OutOfOffice"  # a user's out-of-office dates (Chatter settings)
BUSINESS_HOURS = "BusinessHours"
HOLIDAY = "Holiday"
CAMPAIGN = "Campaign"
OPPORTUNITY_CONTACT_ROLE = "OpportunityContactRole"
# Approvals: an instance per submission (its target and status), and its steps; the first
# step ("Started") holds the submitter's comments.
PROCESS_INSTANCE = "ProcessInstance"
PROCESS_INSTANCE_STEP = "ProcessInstanceStep"
TARGET_OBJECT_ID = "TargetObjectId"
PROCESS_INSTANCE_ID = "ProcessInstanceId"
STEP_STATUS = "StepStatus"
COMMENTS = "Comments"

# The field that names a record, for standard objects whose name field is not ``Name``
# (a field-history object has none either: its Id).
NAME_FIELDS = {
    TASK: SUBJECT,
    EVENT: SUBJECT,
    CASE: "CaseNumber",
    CASE_COMMENT: ID,
    EMAIL_MESSAGE: SUBJECT,
    GROUP_MEMBER: ID,
    OPPORTUNITY_HISTORY: ID,
    CAMPAIGN_MEMBER: ID,
    PROCESS_INSTANCE: ID,
    PROCESS_INSTANCE_STEP: ID,
    OPPORTUNITY_CONTACT_ROLE: ID,
    OUT_OF_OFFICE: ID,
}


def name_field(sobject: str) -> str:
    """The platform's name field of ``sobject``."""
    return NAME_FIELDS.get(sobject) or (ID if sobject.endswith("History") else "Name")


@dataclass(frozen=True)
class Replication:
    """How one object is read incrementally.

    ``stamp``: the datetime field reads are ordered by and resume from (SystemModstamp; a
    field-history object has only CreatedDate, its rows never change). ``deletes``: the
    object has ``IsDeleted``, so ``queryAll`` returns deleted rows flagged. ``full``: every
    pull reads the whole object again, because a row can vanish without a trace (a hard
    delete, no ``IsDeleted``): a removed queue member or holiday must leave the cache too.
    """

    stamp: str = SYSTEM_MODSTAMP
    deletes: bool = True
    full: bool = False

    def fields(self) -> tuple[str, ...]:
        """The fields every cached record of the object carries."""
        return (ID, self.stamp, IS_DELETED) if self.deletes else (ID, self.stamp)


USUAL = Replication()  # SystemModstamp, IsDeleted, incremental

# Objects that differ from the usual SystemModstamp + IsDeleted (object reference).
REPLICATION = {
    USER: Replication(deletes=False),  # users are deactivated (IsActive), never deleted
    GROUP: Replication(deletes=False, full=True),
    GROUP_MEMBER: Replication(deletes=False, full=True),
    OPPORTUNITY_HISTORY: Replication(),  # stage history: SystemModstamp and IsDeleted
    BUSINESS_HOURS: Replication(deletes=False),  # never deleted, only made inactive
    HOLIDAY: Replication(deletes=False, full=True),
    # A step is never deleted on its own (it has no IsDeleted); its instance has.
    PROCESS_INSTANCE_STEP: Replication(deletes=False),
}


def replication(sobject: str) -> Replication:
    """How ``sobject`` is read: :data:`REPLICATION`, else by CreatedDate for a field-history
    object (``LeadHistory``, ``Account__History``), else SystemModstamp with IsDeleted."""
    known = REPLICATION.get(sobject)
    if known is not None:
        return known
    if sobject.endswith("History"):
        return Replication(stamp=CREATED_DATE)
    return USUAL


TASK_FIELDS = (
    WHAT_ID,
    WHO_ID,
    OWNER_ID,
    SUBJECT,
    DESCRIPTION,
    ACTIVITY_DATE,
    STATUS,
    IS_CLOSED,
    TASK_SUBTYPE,
    CREATED_DATE,
)
CASE_COMMENT_FIELDS = (PARENT_ID, COMMENT_BODY, IS_PUBLISHED, CREATED_DATE)
# What a rule reads to find the emails it sent, when the org logs them as EmailMessages.
EMAIL_MESSAGE_FIELDS = (RELATED_TO_ID, TEXT_BODY, CREATED_DATE)
