"""The case database's tables as SQLAlchemy ORM classes.

- ``users``: the workbench's people, with a role (``analyst`` or ``supervisor``) and a
  scrypt password hash (never the password).
- ``cases``: one account's alerts gathered for review, with the queue's sort keys kept
  on the row (highest score, number of alerts, total amount) so the queue is one indexed
  query, never an aggregate over alerts.
- ``alerts``: one scored event that crossed its threshold, with what the model saw then:
  score, threshold, model name/version, run id, config hash, top features with their
  values, and the reasons in plain words written at scoring time.
- ``dispositions``: decisions on a case (false positive, suspicious – escalate, SAR
  filed), and for a SAR its second user's approval or rejection (maker-checker).
- ``audit_events``: every action, append-only (who, when, what, before/after). The
  first migration also installs database triggers that refuse UPDATE and DELETE on it,
  and the ORM refuses them before they reach the database.

The schema is created and changed only by Alembic migrations (``migrations/``);
``tests/test_cases.py`` checks that these classes and the migrated database agree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from aml_pipeline.cases.errors import AuditIsAppendOnly
from aml_pipeline.timeutil import as_utc, utcnow


class UTCDateTime(sa.types.TypeDecorator):
    """A timezone-aware UTC instant on every engine: SQLite keeps no zone, so values are
    stored as naive UTC and come back aware; naive inputs are taken as UTC."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return as_utc(value)


class Base(DeclarativeBase):
    pass


# --------------------------------------------------------------------------- vocabularies
ROLES = ("analyst", "supervisor")
#: Case states. ``open``: new, nobody decided; ``escalated``: an analyst found it
#: suspicious and it waits for a SAR or a false-positive decision; ``pending_approval``: a
#: SAR was filed and waits for a second user; ``closed``: decided (false positive or SAR).
CASE_STATUSES = ("open", "escalated", "pending_approval", "closed")
#: Statuses that still take new alerts on their account (everything but closed).
ACTIVE_STATUSES = ("open", "escalated", "pending_approval")
DECISIONS = ("false_positive", "suspicious_escalate", "sar_filed")
DECISION_WORDS = {"false_positive": "false positive", "suspicious_escalate": "suspicious – escalate",
                  "sar_filed": "SAR filed"}
#: A disposition's own state: ``final`` needs nobody else; a SAR is ``pending`` until a
#: second user ``approved`` or ``rejected`` it.
DISPOSITION_STATES = ("final", "pending", "approved", "rejected")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16))
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (sa.CheckConstraint("role IN ('analyst', 'supervisor')", name="ck_users_role"),)


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_account: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(24), default="open")
    assignee_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("users.id"), nullable=True)
    #: Jurisdiction and typology hint of the case's highest-scoring alert.
    jurisdiction: Mapped[Optional[str]] = mapped_column(sa.String(16), nullable=True)
    typology_hint: Mapped[Optional[str]] = mapped_column(sa.String(64), nullable=True)
    #: The queue's sort keys, kept up to date as alerts join.
    max_score: Mapped[float] = mapped_column(sa.Float, default=0.0)
    alert_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    total_amount: Mapped[float] = mapped_column(sa.Float, default=0.0)
    #: Event times of the first and latest alert (what cases.period is measured against).
    first_alert_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_alert_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The final decision once closed (false_positive or sar_filed).
    disposition: Mapped[Optional[str]] = mapped_column(sa.String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)

    assignee: Mapped[Optional[User]] = relationship(foreign_keys=[assignee_id], lazy="joined")
    alerts: Mapped[list["Alert"]] = relationship(back_populates="case", order_by="Alert.event_time")
    dispositions: Mapped[list["Disposition"]] = relationship(back_populates="case", order_by="Disposition.id")

    __table_args__ = (
        sa.CheckConstraint("status IN ('open', 'escalated', 'pending_approval', 'closed')", name="ck_cases_status"),
        # The queue: status first (open cases), then the risk order.
        sa.Index("ix_cases_queue", "status", "max_score", "alert_count", "total_amount"),
        # The default queue's order (migration 0002): its first page is the index's first entries.
        sa.Index("ix_cases_risk", sa.desc("max_score"), sa.desc("alert_count"), sa.desc("total_amount"), "id"),
        sa.Index("ix_cases_subject_status", "subject_account", "status"),
        sa.Index("ix_cases_jurisdiction", "jurisdiction", "status", "max_score"),
        sa.Index("ix_cases_typology", "typology_hint", "status", "max_score"),
        sa.Index("ix_cases_assignee", "assignee_id", "status", "max_score"),
    )


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    case_id: Mapped[int] = mapped_column(sa.ForeignKey("cases.id"), index=True)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    subject_account: Mapped[str] = mapped_column(sa.String(128))
    counterparty: Mapped[Optional[str]] = mapped_column(sa.String(128), nullable=True)
    amount: Mapped[Optional[float]] = mapped_column(sa.Float, nullable=True)
    currency: Mapped[Optional[str]] = mapped_column(sa.String(8), nullable=True)
    channel: Mapped[Optional[str]] = mapped_column(sa.String(32), nullable=True)
    jurisdiction: Mapped[Optional[str]] = mapped_column(sa.String(16), nullable=True)
    score: Mapped[float] = mapped_column(sa.Float)
    threshold: Mapped[Optional[float]] = mapped_column(sa.Float, nullable=True)
    model_name: Mapped[Optional[str]] = mapped_column(sa.String(128), nullable=True)
    model_version: Mapped[Optional[str]] = mapped_column(sa.String(64), nullable=True)
    run_id: Mapped[Optional[str]] = mapped_column(sa.String(64), nullable=True)
    config_hash: Mapped[Optional[str]] = mapped_column(sa.String(128), nullable=True)
    bundle_hash: Mapped[Optional[str]] = mapped_column(sa.String(128), nullable=True)
    #: [{"feature", "value", "contribution"}, ...] as the scorer wrote them.
    top_features: Mapped[Optional[Any]] = mapped_column(sa.JSON, nullable=True)
    #: Plain-word sentences written at scoring time (aml_pipeline.reasons).
    reasons: Mapped[Optional[Any]] = mapped_column(sa.JSON, nullable=True)
    typology_hint: Mapped[Optional[str]] = mapped_column(sa.String(64), nullable=True)
    #: The rest of the event as scored (banks, countries, merchant, region, ...).
    details: Mapped[Optional[Any]] = mapped_column(sa.JSON, nullable=True)
    #: Where the alert came from (a score file, the stream's alert folder, ...).
    source: Mapped[Optional[str]] = mapped_column(sa.String(255), nullable=True)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    case: Mapped[Case] = relationship(back_populates="alerts")

    __table_args__ = (sa.Index("ix_alerts_subject_time", "subject_account", "event_time"),)


class Disposition(Base):
    __tablename__ = "dispositions"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(sa.ForeignKey("cases.id"), index=True)
    decision: Mapped[str] = mapped_column(sa.String(32))
    note: Mapped[str] = mapped_column(sa.Text, default="")
    state: Mapped[str] = mapped_column(sa.String(16))
    made_by_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    made_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    checked_by_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("users.id"), nullable=True)
    checked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    check_note: Mapped[Optional[str]] = mapped_column(sa.Text, nullable=True)
    #: The case's status before this decision (where a rejected SAR sends it back).
    status_before: Mapped[str] = mapped_column(sa.String(24))

    case: Mapped[Case] = relationship(back_populates="dispositions")
    made_by: Mapped[User] = relationship(foreign_keys=[made_by_id], lazy="joined")
    checked_by: Mapped[Optional[User]] = relationship(foreign_keys=[checked_by_id], lazy="joined")

    __table_args__ = (
        sa.CheckConstraint("decision IN ('false_positive', 'suspicious_escalate', 'sar_filed')",
                           name="ck_dispositions_decision"),
        sa.CheckConstraint("state IN ('final', 'pending', 'approved', 'rejected')", name="ck_dispositions_state"),
        # maker-checker, also in the database: nobody checks their own decision
        sa.CheckConstraint("checked_by_id IS NULL OR checked_by_id <> made_by_id", name="ck_dispositions_four_eyes"),
        sa.Index("ix_dispositions_made_at", "made_at"),
    )


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Null for the system (ingestion); username is copied so the entry reads on its own.
    user_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("users.id"), nullable=True)
    username: Mapped[str] = mapped_column(sa.String(64))
    action: Mapped[str] = mapped_column(sa.String(48))
    case_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("cases.id"), nullable=True)
    entity: Mapped[str] = mapped_column(sa.String(32))
    entity_id: Mapped[Optional[str]] = mapped_column(sa.String(64), nullable=True)
    before: Mapped[Optional[Any]] = mapped_column(sa.JSON, nullable=True)
    after: Mapped[Optional[Any]] = mapped_column(sa.JSON, nullable=True)
    note: Mapped[Optional[str]] = mapped_column(sa.Text, nullable=True)

    __table_args__ = (sa.Index("ix_audit_case", "case_id", "id"),)


@sa.event.listens_for(AuditEvent, "before_update")
def _no_audit_update(mapper, connection, target):  # pragma: no cover - raising is the point
    raise AuditIsAppendOnly(f"audit entry {target.id} cannot be changed: the audit trail is append-only")


@sa.event.listens_for(AuditEvent, "before_delete")
def _no_audit_delete(mapper, connection, target):  # pragma: no cover
    raise AuditIsAppendOnly(f"audit entry {target.id} cannot be deleted: the audit trail is append-only")
