"""The case database: alerts become cases that analysts decide, every action audited.

SQLite by default (embedded, nothing to start), PostgreSQL by URL; the schema is created
and upgraded by Alembic migrations when the database is opened. Everything the workbench
(``aml_pipeline/workbench/``), ``task=cases`` and ``task=labels`` need is imported from
here::

    from aml_pipeline.cases import open_db, create_user, authenticate, ingest_alerts, \\
        list_cases, get_case, assign, decide, approve, reject, audit_trail, log_action

    db = open_db("sqlite:///data/cases.db")           # or postgresql://user:pw@host/db; None = that default
    ana = create_user(db, "ana", "a long password", role="analyst")
    sup = create_user(db, "sam", "another password", role="supervisor")
    authenticate(db, "ana", "a long password")        # -> UserView, or None
    ingest_alerts(db, scores_frame, period="30d")       # -> IngestResult (idempotent by event id)
    page = list_cases(db, jurisdiction="GB", sort="risk", page=1, page_size=50)   # -> Page of CaseSummary
    case = get_case(db, page.items[0].id)             # -> CaseDetail: .case, .alerts, .dispositions, .audit
    decide(db, case.case.id, "suspicious_escalate", user=ana, note="...")        # -> DispositionView
    decide(db, case.case.id, "sar_filed", user=ana, note="...")  # pending: the case waits for a 2nd user
    approve(db, case.case.id, user=sup, note="...")   # a supervisor other than the maker; reject() sends it back
    audit_trail(db, case_id=case.case.id)             # -> [AuditEntry], oldest first
    export_labels(db)                                 # -> polars frame: event_id, account, label, labelled_at, source

Users are given as an id, a username or a :class:`UserView`. Errors are
:class:`CaseError` subclasses with one-line messages and an ``http_status``:
:class:`NotFound` (404), :class:`PermissionDenied` (403), :class:`InvalidTransition`
(409). Views are frozen dataclasses with ``to_dict()``; no session leaks out.

Decisions (``DECISIONS``): ``false_positive`` closes the case; ``suspicious_escalate``
keeps it active as ``escalated``; ``sar_filed`` waits as ``pending_approval`` until a
supervisor who is not its maker approves (closes, SAR filed) or rejects it (back to its
previous status). Case statuses: open, escalated, pending_approval, closed.
"""

from aml_pipeline.cases.audit import audit_trail, log_action
from aml_pipeline.cases.db import DEFAULT_URL, CaseDB, open_db
from aml_pipeline.cases.decisions import approve, assign, decide, reject
from aml_pipeline.cases.errors import AuditIsAppendOnly, CaseError, InvalidTransition, NotFound, PermissionDenied
from aml_pipeline.cases.ingest import ingest_alerts
from aml_pipeline.cases.labels import export_labels
from aml_pipeline.cases.models import ACTIVE_STATUSES, CASE_STATUSES, DECISION_WORDS, DECISIONS, ROLES
from aml_pipeline.cases.queries import SORTS, dispositions, facets, get_alert, get_case, list_cases
from aml_pipeline.cases.users import authenticate, create_user, get_user, list_users, set_active, set_password
from aml_pipeline.cases.views import (AlertView, AuditEntry, CaseDetail, CaseSummary, DispositionView, IngestResult,
                                      Page, UserView)

__all__ = [
    "ACTIVE_STATUSES", "CASE_STATUSES", "DECISIONS", "DECISION_WORDS", "DEFAULT_URL", "ROLES", "SORTS",
    "AlertView", "AuditEntry", "AuditIsAppendOnly", "CaseDB", "CaseDetail", "CaseError", "CaseSummary",
    "DispositionView", "IngestResult", "InvalidTransition", "NotFound", "Page", "PermissionDenied", "UserView",
    "approve", "assign", "audit_trail", "authenticate", "create_user", "decide", "dispositions", "export_labels",
    "facets",
    "get_alert", "get_case", "get_user", "ingest_alerts", "list_cases", "list_users", "log_action", "open_db",
    "reject", "set_active", "set_password",
]
