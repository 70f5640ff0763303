"""What the case database hands out: plain frozen dataclasses, detached from any session,
so the workbench's templates and JSON answers read them without touching the database.
Each has ``to_dict()`` (JSON-ready: instants as ISO 8601 strings)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Optional

from aml_pipeline.cases.models import DECISION_WORDS, Alert, AuditEvent, Case, Disposition, User


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _View:
    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class UserView(_View):
    id: int
    username: str
    role: str
    active: bool
    created_at: datetime

    @property
    def is_supervisor(self) -> bool:
        return self.role == "supervisor"

    @classmethod
    def of(cls, u: User) -> "UserView":
        return cls(u.id, u.username, u.role, bool(u.active), u.created_at)


@dataclass(frozen=True)
class AlertView(_View):
    id: int
    event_id: str
    case_id: int
    event_time: datetime
    subject_account: str
    counterparty: Optional[str]
    amount: Optional[float]
    currency: Optional[str]
    channel: Optional[str]
    jurisdiction: Optional[str]
    score: float
    threshold: Optional[float]
    model_name: Optional[str]
    model_version: Optional[str]
    run_id: Optional[str]
    config_hash: Optional[str]
    bundle_hash: Optional[str]
    #: [{"feature": str, "value": float | None, "contribution": float | None}, ...]
    top_features: list = field(default_factory=list)
    #: Plain-word sentences, as written when the event was scored.
    reasons: list = field(default_factory=list)
    typology_hint: Optional[str] = None
    details: dict = field(default_factory=dict)
    source: Optional[str] = None
    ingested_at: Optional[datetime] = None

    @classmethod
    def of(cls, a: Alert) -> "AlertView":
        return cls(a.id, a.event_id, a.case_id, a.event_time, a.subject_account, a.counterparty, a.amount,
                   a.currency, a.channel, a.jurisdiction, a.score, a.threshold, a.model_name, a.model_version,
                   a.run_id, a.config_hash, a.bundle_hash, list(a.top_features or []), list(a.reasons or []),
                   a.typology_hint, dict(a.details or {}), a.source, a.ingested_at)


@dataclass(frozen=True)
class DispositionView(_View):
    id: int
    case_id: int
    decision: str
    #: The decision in words: "false positive", "suspicious – escalate", "SAR filed".
    decision_words: str
    note: str
    #: final | pending (a SAR waiting for its second user) | approved | rejected
    state: str
    made_by_id: int
    made_by: str
    made_at: datetime
    checked_by_id: Optional[int]
    checked_by: Optional[str]
    checked_at: Optional[datetime]
    check_note: Optional[str]

    @classmethod
    def of(cls, d: Disposition) -> "DispositionView":
        return cls(d.id, d.case_id, d.decision, DECISION_WORDS[d.decision], d.note or "", d.state, d.made_by_id,
                   d.made_by.username, d.made_at, d.checked_by_id, d.checked_by.username if d.checked_by else None,
                   d.checked_at, d.check_note)


@dataclass(frozen=True)
class CaseSummary(_View):
    """One row of the queue."""

    id: int
    subject_account: str
    status: str
    assignee_id: Optional[int]
    assignee: Optional[str]
    jurisdiction: Optional[str]
    typology_hint: Optional[str]
    max_score: float
    alert_count: int
    total_amount: float
    first_alert_at: datetime
    last_alert_at: datetime
    disposition: Optional[str]
    created_at: datetime
    updated_at: datetime
    closed_at: Optional[datetime]

    @classmethod
    def of(cls, c: Case) -> "CaseSummary":
        return cls(c.id, c.subject_account, c.status, c.assignee_id, c.assignee.username if c.assignee else None,
                   c.jurisdiction, c.typology_hint, c.max_score, c.alert_count, c.total_amount, c.first_alert_at,
                   c.last_alert_at, c.disposition, c.created_at, c.updated_at, c.closed_at)


@dataclass(frozen=True)
class AuditEntry(_View):
    id: int
    at: datetime
    user_id: Optional[int]
    username: str
    action: str
    case_id: Optional[int]
    entity: str
    entity_id: Optional[str]
    before: Optional[dict]
    after: Optional[dict]
    note: Optional[str]

    @classmethod
    def of(cls, e: AuditEvent) -> "AuditEntry":
        return cls(e.id, e.at, e.user_id, e.username, e.action, e.case_id, e.entity, e.entity_id, e.before, e.after,
                   e.note)


@dataclass(frozen=True)
class CaseDetail(_View):
    """A case with its evidence: alerts (by event time), dispositions and audit trail (oldest first)."""

    case: CaseSummary
    alerts: list[AlertView]
    dispositions: list[DispositionView]
    audit: list[AuditEntry]

    @property
    def pending(self) -> Optional[DispositionView]:
        """The SAR waiting for a second user's approval, if any."""
        return next((d for d in reversed(self.dispositions) if d.state == "pending"), None)

    @property
    def top_alert(self) -> Optional[AlertView]:
        return max(self.alerts, key=lambda a: a.score, default=None)


@dataclass(frozen=True)
class Page(_View):
    """One page of the queue: ``items`` plus where it sits in the whole."""

    items: list[CaseSummary]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def has_prev(self) -> bool:
        return self.page > 1


@dataclass(frozen=True)
class IngestResult(_View):
    alerts_read: int
    alerts_added: int
    #: Already in the database (same event id): ingestion is idempotent.
    alerts_skipped: int
    cases_opened: int
    cases_updated: int
    case_ids: list[int] = field(default_factory=list)
