"""Deciding on cases: assignment, dispositions and the maker-checker rule for SARs.

- ``false_positive``: final; the case closes.
- ``suspicious_escalate``: final; the case stays active as ``escalated`` (waiting for a
  SAR or a false-positive decision, typically by someone more senior).
- ``sar_filed``: needs a second user. It is recorded ``pending`` and the case waits as
  ``pending_approval``; a supervisor other than the maker approves it (the case closes
  with the SAR) or rejects it (the case goes back to its status before the SAR). The
  database itself refuses a checker equal to the maker (a CHECK constraint).

Every action writes its audit entry in the same transaction, with the state before and
after. Rows are locked while they change (``SELECT ... FOR UPDATE`` on PostgreSQL), so two
users deciding at once cannot both pass the checks.
"""

from __future__ import annotations

from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.orm import Session

from aml_pipeline.cases.audit import record
from aml_pipeline.cases.db import CaseDB, write_lock
from aml_pipeline.cases.errors import CaseError, InvalidTransition, NotFound, PermissionDenied
from aml_pipeline.cases.models import DECISION_WORDS, DECISIONS, Case, Disposition, User
from aml_pipeline.cases.lookup import resolve_user
from aml_pipeline.cases.views import CaseSummary, DispositionView
from aml_pipeline.timeutil import utcnow

MAX_NOTE = 10_000


def _lock(session: Session, case_id: int) -> None:
    """Before anything is read: PostgreSQL locks the case's row in :func:`_case_for_update`;
    SQLite takes its write lock now (:func:`~aml_pipeline.cases.db.write_lock`)."""
    write_lock(session)


def _case_for_update(session: Session, case_id: int) -> Case:
    c = session.scalar(sa.select(Case).where(Case.id == int(case_id)).with_for_update(of=Case))
    if c is None:
        raise NotFound(f"no case {case_id}")
    return c


def _state(c: Case) -> dict:
    return {"status": c.status, "disposition": c.disposition, "assignee_id": c.assignee_id}


def _note(note: Optional[str]) -> str:
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise CaseError(f"a note has at most {MAX_NOTE:,} characters (got {len(note):,})")
    return note


def assign(db: CaseDB, case_id: int, assignee: Any, *, user: Any) -> CaseSummary:
    """Give a case to ``assignee`` (a user, or None to release it). Anyone may take a case
    for themselves or release their own; a supervisor may assign or release any."""
    with db.session() as s:
        _lock(s, case_id)
        actor = resolve_user(s, user)
        c = _case_for_update(s, case_id)
        target: Optional[User] = resolve_user(s, assignee) if assignee is not None else None
        if actor.role != "supervisor":
            mine = target is not None and target.id == actor.id
            releasing_mine = target is None and c.assignee_id == actor.id
            if not (mine or releasing_mine):
                raise PermissionDenied(f"{actor.username} (analyst) may take a case for themselves or release "
                                       f"their own; assigning others is a supervisor's")
        if c.status == "closed":
            raise InvalidTransition(f"case {c.id} is closed")
        before = _state(c)
        c.assignee_id = target.id if target is not None else None
        c.updated_at = utcnow()
        s.flush()
        record(s, "assign", user=actor, entity="case", entity_id=c.id, case_id=c.id, before=before,
               after={**before, "assignee_id": c.assignee_id, "assignee": target.username if target else None})
        s.refresh(c)
        return CaseSummary.of(c)


def decide(db: CaseDB, case_id: int, decision: str, *, user: Any, note: str = "") -> DispositionView:
    """Record ``decision`` (false_positive, suspicious_escalate, sar_filed) on an active case.

    A SAR is pending until a second user approves it (:func:`approve`). Raises
    InvalidTransition on a closed case, on a case whose SAR waits for approval, or for an
    unknown decision."""
    if decision not in DECISIONS:
        raise InvalidTransition(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    with db.session() as s:
        _lock(s, case_id)
        actor = resolve_user(s, user)
        c = _case_for_update(s, case_id)
        if c.status == "closed":
            raise InvalidTransition(f"case {c.id} is closed ({DECISION_WORDS.get(c.disposition, c.disposition)})")
        if c.status == "pending_approval":
            raise InvalidTransition(f"case {c.id} has a SAR waiting for a second user's approval")
        before = _state(c)
        now = utcnow()
        d = Disposition(case_id=c.id, decision=decision, note=_note(note), made_by_id=actor.id, made_at=now,
                        state="pending" if decision == "sar_filed" else "final", status_before=c.status)
        if decision == "false_positive":
            c.status, c.disposition, c.closed_at = "closed", decision, now
        elif decision == "suspicious_escalate":
            c.status = "escalated"
        else:
            c.status = "pending_approval"
        c.updated_at = now
        s.add(d)
        s.flush()
        record(s, "decide", user=actor, entity="case", entity_id=c.id, case_id=c.id, before=before,
               after={**_state(c), "decision": decision, "disposition_id": d.id, "state": d.state}, note=d.note,
               at=now)
        s.flush()
        s.refresh(d)
        return DispositionView.of(d)


def _pending(s: Session, c: Case) -> Disposition:
    d = s.scalar(sa.select(Disposition).where(Disposition.case_id == c.id, Disposition.state == "pending")
                 .order_by(Disposition.id.desc()).with_for_update(of=Disposition))
    if d is None or c.status != "pending_approval":
        raise InvalidTransition(f"case {c.id} has no SAR waiting for approval")
    return d


def _check(db: CaseDB, case_id: int, user: Any, note: str, approve_it: bool) -> DispositionView:
    verb = "approve" if approve_it else "reject"
    with db.session() as s:
        _lock(s, case_id)
        actor = resolve_user(s, user)
        c = _case_for_update(s, case_id)
        d = _pending(s, c)
        if actor.role != "supervisor":
            raise PermissionDenied(f"only a supervisor may {verb} a SAR ({actor.username} is an {actor.role})")
        if actor.id == d.made_by_id:
            raise PermissionDenied(f"{actor.username} filed this SAR: a second user must {verb} it (maker-checker)")
        before = {**_state(c), "disposition_id": d.id, "state": d.state}
        now = utcnow()
        d.state, d.checked_by_id, d.checked_at, d.check_note = ("approved" if approve_it else "rejected"), actor.id, now, _note(note)
        if approve_it:
            c.status, c.disposition, c.closed_at = "closed", "sar_filed", now
        else:
            c.status = d.status_before
        c.updated_at = now
        s.flush()
        record(s, verb, user=actor, entity="disposition", entity_id=d.id, case_id=c.id, before=before,
               after={**_state(c), "disposition_id": d.id, "state": d.state}, note=d.check_note, at=now)
        s.flush()
        s.refresh(d)
        return DispositionView.of(d)


def approve(db: CaseDB, case_id: int, *, user: Any, note: str = "") -> DispositionView:
    """A second user (a supervisor, not the maker) approves the case's pending SAR: the
    case closes as SAR filed."""
    return _check(db, case_id, user, note, True)


def reject(db: CaseDB, case_id: int, *, user: Any, note: str = "") -> DispositionView:
    """A second user (a supervisor, not the maker) rejects the pending SAR: the case goes
    back to the status it had before the SAR was filed."""
    return _check(db, case_id, user, note, False)
