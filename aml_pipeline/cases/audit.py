"""The audit trail: every action on the case database, append-only.

Entries are written in the same transaction as the change they describe (a decision and
its audit entry land together or not at all). Nothing in this package updates or deletes
an entry; the ORM refuses to (``models.py``), and the database's own triggers refuse
UPDATE, DELETE (and on PostgreSQL TRUNCATE) from anyone (``migrations/versions/0001``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aml_pipeline.cases.db import CaseDB
from aml_pipeline.cases.lookup import resolve_user
from aml_pipeline.cases.models import AuditEvent, User
from aml_pipeline.timeutil import utcnow
from aml_pipeline.cases.views import AuditEntry, _jsonable

#: The name entries carry when no user acted (ingestion from a score file or a stream).
SYSTEM = "system"


def record(session: Session, action: str, *, user: Optional[User] = None, entity: str, entity_id: Any = None,
           case_id: Optional[int] = None, before: Any = None, after: Any = None, note: Optional[str] = None,
           actor: Optional[str] = None, at: Optional[datetime] = None) -> AuditEvent:
    """Add one entry to ``session`` (flushed with the change it describes)."""
    entry = AuditEvent(at=at or utcnow(), user_id=user.id if user is not None else None,
                       username=user.username if user is not None else (actor or SYSTEM), action=action,
                       case_id=case_id, entity=entity, entity_id=None if entity_id is None else str(entity_id),
                       before=_jsonable(before), after=_jsonable(after), note=note)
    session.add(entry)
    return entry


def audit_trail(db: CaseDB, case_id: Optional[int] = None, *, user: Any = None, action: Optional[str] = None,
                after_id: Optional[int] = None, limit: Optional[int] = None, newest_first: bool = False
                ) -> list[AuditEntry]:
    """Audit entries, oldest first (``newest_first=True`` reverses): all of them, or one
    case's (``case_id``), one user's (``user``: id, username or UserView), one action's;
    ``after_id`` pages forward from an entry."""
    q = sa.select(AuditEvent)
    if case_id is not None:
        q = q.where(AuditEvent.case_id == int(case_id))
    if user is not None:
        if isinstance(user, int):
            q = q.where(AuditEvent.user_id == user)
        else:
            q = q.where(AuditEvent.username == getattr(user, "username", user))
    if action is not None:
        q = q.where(AuditEvent.action == action)
    if after_id is not None:
        q = q.where(AuditEvent.id > int(after_id))
    q = q.order_by(AuditEvent.id.desc() if newest_first else AuditEvent.id)
    if limit is not None:
        q = q.limit(int(limit))
    with db.session() as s:
        return [AuditEntry.of(e) for e in s.scalars(q)]


def log_action(db: CaseDB, user: Any, action: str, *, entity: str = "session", entity_id: Any = None,
               case_id: Optional[int] = None, before: Any = None, after: Any = None,
               note: Optional[str] = None, actor: Optional[str] = None) -> AuditEntry:
    """Record an action taken outside this package (the workbench's log-in, log-out,
    failed log-in, label export...). ``user`` is a user (id, username, UserView) or None
    for an unknown one (then ``after`` may name who tried; ``actor`` names a program, e.g.
    ``task=labels``, instead of ``anonymous``)."""
    with db.session() as s:
        u = resolve_user(s, user, require_active=False) if user is not None else None
        entry = record(s, action, user=u, entity=entity, entity_id=entity_id, case_id=case_id, before=before,
                       after=after, note=note, actor=None if u else (actor or "anonymous"))
        s.flush()
        return AuditEntry.of(entry)
