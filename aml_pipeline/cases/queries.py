"""Reading cases: the queue (``list_cases``) and one case with its evidence (``get_case``)."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from aml_pipeline.cases.db import CaseDB
from aml_pipeline.cases.errors import CaseError, NotFound
from aml_pipeline.cases.models import ACTIVE_STATUSES, CASE_STATUSES, Alert, AuditEvent, Case, Disposition, User
from aml_pipeline.cases.views import AlertView, AuditEntry, CaseDetail, CaseSummary, DispositionView, Page

#: Queue orders. "risk" (the default): highest score first, then more alerts, then more money.
SORTS = {
    "risk": (Case.max_score.desc(), Case.alert_count.desc(), Case.total_amount.desc(), Case.id),
    "score": (Case.max_score.desc(), Case.id),
    "alerts": (Case.alert_count.desc(), Case.max_score.desc(), Case.id),
    "amount": (Case.total_amount.desc(), Case.max_score.desc(), Case.id),
    "newest": (Case.last_alert_at.desc(), Case.id.desc()),
    "oldest": (Case.first_alert_at, Case.id),
}
MAX_PAGE_SIZE = 500
#: ``assignee=`` value that selects cases nobody has taken.
UNASSIGNED = "none"


def _statuses(status: Any) -> Optional[list[str]]:
    """None/"active" → the active statuses; "all" → no filter; a status or a list of them."""
    if status is None or status == "active":
        return list(ACTIVE_STATUSES)
    if status == "all":
        return None
    wanted = [status] if isinstance(status, str) else list(status)
    bad = [s for s in wanted if s not in CASE_STATUSES]
    if bad:
        raise CaseError(f"status {bad[0]!r} is not one of active, all, {', '.join(CASE_STATUSES)}")
    return wanted


def _assignee_filter(session, assignee: Any):
    if assignee == UNASSIGNED:
        return Case.assignee_id.is_(None)
    key = getattr(assignee, "id", assignee)
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    if isinstance(key, int):
        return Case.assignee_id == key
    uid = session.scalar(sa.select(User.id).where(User.username == key))
    return Case.assignee_id == (uid if uid is not None else -1)


def _values(v: Any) -> Optional[list]:
    if v is None or v == "" or v == []:
        return None
    return [v] if isinstance(v, str) else list(v)


def list_cases(db: CaseDB, *, status: Any = "active", jurisdiction: Any = None, typology: Any = None,
               assignee: Any = None, account: Optional[str] = None, sort: str = "risk", page: int = 1,
               page_size: int = 50) -> Page:
    """One page of the queue.

    ``status``: "active" (open, escalated, pending approval; the default), "all", one status
    or a list; ``jurisdiction`` / ``typology`` (the typology hint): a value or a list;
    ``assignee``: a user (id, username, view) or ``"none"`` for unassigned; ``account``: the
    subject account; ``sort``: risk (default), score, alerts, amount, newest, oldest;
    ``page`` counts from 1.
    """
    if sort not in SORTS:
        raise CaseError(f"sort {sort!r} is not one of {', '.join(SORTS)}")
    page, page_size = max(1, int(page)), min(max(1, int(page_size)), MAX_PAGE_SIZE)
    with db.session() as s:
        where = []
        statuses = _statuses(status)
        if statuses is not None:
            where.append(Case.status == statuses[0] if len(statuses) == 1 else Case.status.in_(statuses))
        for column, value in ((Case.jurisdiction, jurisdiction), (Case.typology_hint, typology)):
            vals = _values(value)
            if vals is not None:
                where.append(column == vals[0] if len(vals) == 1 else column.in_(vals))
        if assignee not in (None, ""):
            where.append(_assignee_filter(s, assignee))
        if account:
            where.append(Case.subject_account == account)
        total = s.scalar(sa.select(sa.func.count()).select_from(Case).where(*where))
        rows = s.scalars(sa.select(Case).where(*where).order_by(*SORTS[sort])
                         .offset((page - 1) * page_size).limit(page_size))
        return Page([CaseSummary.of(c) for c in rows], int(total or 0), page, page_size)


def get_case(db: CaseDB, case_id: int) -> CaseDetail:
    """A case with its alerts (by event time), its dispositions and its audit trail."""
    with db.session() as s:
        c = s.scalar(sa.select(Case).where(Case.id == int(case_id))
                     .options(selectinload(Case.alerts), selectinload(Case.dispositions)))
        if c is None:
            raise NotFound(f"no case {case_id}")
        audit = s.scalars(sa.select(AuditEvent).where(AuditEvent.case_id == c.id).order_by(AuditEvent.id))
        return CaseDetail(CaseSummary.of(c), [AlertView.of(a) for a in c.alerts],
                          [DispositionView.of(d) for d in c.dispositions], [AuditEntry.of(e) for e in audit])


def get_alert(db: CaseDB, alert: Any) -> AlertView:
    """An alert by its id (int) or its event id (str)."""
    with db.session() as s:
        if isinstance(alert, int):
            a = s.get(Alert, alert)
        else:
            a = s.scalar(sa.select(Alert).where(Alert.event_id == str(alert)))
        if a is None:
            raise NotFound(f"no alert {alert!r}")
        return AlertView.of(a)


def facets(db: CaseDB, status: Any = "active") -> dict[str, list[str]]:
    """The values the queue's filters can take among cases of ``status``: jurisdictions,
    typology hints, statuses and assignees (for the workbench's filter menus)."""
    with db.session() as s:
        statuses = _statuses(status)
        where = [Case.status.in_(statuses)] if statuses is not None else []

        def distinct(col) -> list[str]:
            return sorted(v for v in s.scalars(sa.select(col).where(*where).distinct()) if v is not None)

        assignees = sorted(s.scalars(sa.select(User.username).join(Case, Case.assignee_id == User.id)
                                     .where(*where).distinct()))
        return {"jurisdiction": distinct(Case.jurisdiction), "typology": distinct(Case.typology_hint),
                "status": list(CASE_STATUSES), "assignee": assignees}


def dispositions(db: CaseDB, *, since: Any = None, decisions: Iterable[str] | None = None) -> list[DispositionView]:
    """Every disposition (oldest first), optionally made since an instant or of some decisions."""
    with db.session() as s:
        q = sa.select(Disposition).order_by(Disposition.id)
        if since is not None:
            q = q.where(Disposition.made_at >= since)
        if decisions is not None:
            q = q.where(Disposition.decision.in_(list(decisions)))
        return [DispositionView.of(d) for d in s.scalars(q)]
