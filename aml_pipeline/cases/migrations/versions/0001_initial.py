"""The case database: users, cases, alerts, dispositions and the append-only audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = "audit_events is append-only"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.CheckConstraint("role IN ('analyst', 'supervisor')", name="ck_users_role"),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject_account", sa.String(128), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("assignee_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("jurisdiction", sa.String(16), nullable=True),
        sa.Column("typology_hint", sa.String(64), nullable=True),
        sa.Column("max_score", sa.Float, nullable=False),
        sa.Column("alert_count", sa.Integer, nullable=False),
        sa.Column("total_amount", sa.Float, nullable=False),
        sa.Column("first_alert_at", sa.DateTime, nullable=False),
        sa.Column("last_alert_at", sa.DateTime, nullable=False),
        sa.Column("disposition", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("closed_at", sa.DateTime, nullable=True),
        sa.CheckConstraint("status IN ('open', 'escalated', 'pending_approval', 'closed')", name="ck_cases_status"),
    )
    op.create_index("ix_cases_queue", "cases", ["status", "max_score", "alert_count", "total_amount"])
    op.create_index("ix_cases_subject_status", "cases", ["subject_account", "status"])
    op.create_index("ix_cases_jurisdiction", "cases", ["jurisdiction", "status", "max_score"])
    op.create_index("ix_cases_typology", "cases", ["typology_hint", "status", "max_score"])
    op.create_index("ix_cases_assignee", "cases", ["assignee_id", "status", "max_score"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("event_time", sa.DateTime, nullable=False),
        sa.Column("subject_account", sa.String(128), nullable=False),
        sa.Column("counterparty", sa.String(128), nullable=True),
        sa.Column("amount", sa.Float, nullable=True),
        sa.Column("currency", sa.String(8), nullable=True),
        sa.Column("channel", sa.String(32), nullable=True),
        sa.Column("jurisdiction", sa.String(16), nullable=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("model_name", sa.String(128), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("config_hash", sa.String(128), nullable=True),
        sa.Column("bundle_hash", sa.String(128), nullable=True),
        sa.Column("top_features", sa.JSON, nullable=True),
        sa.Column("reasons", sa.JSON, nullable=True),
        sa.Column("typology_hint", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON, nullable=True),
        sa.Column("source", sa.String(255), nullable=True),
        sa.Column("ingested_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_alerts_case_id", "alerts", ["case_id"])
    op.create_index("ix_alerts_subject_time", "alerts", ["subject_account", "event_time"])
    op.create_table(
        "dispositions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("made_by_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("made_at", sa.DateTime, nullable=False),
        sa.Column("checked_by_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("checked_at", sa.DateTime, nullable=True),
        sa.Column("check_note", sa.Text, nullable=True),
        sa.Column("status_before", sa.String(24), nullable=False),
        sa.CheckConstraint("decision IN ('false_positive', 'suspicious_escalate', 'sar_filed')",
                           name="ck_dispositions_decision"),
        sa.CheckConstraint("state IN ('final', 'pending', 'approved', 'rejected')", name="ck_dispositions_state"),
        sa.CheckConstraint("checked_by_id IS NULL OR checked_by_id <> made_by_id", name="ck_dispositions_four_eyes"),
    )
    op.create_index("ix_dispositions_case_id", "dispositions", ["case_id"])
    op.create_index("ix_dispositions_made_at", "dispositions", ["made_at"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("action", sa.String(48), nullable=False),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=True),
        sa.Column("entity", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_audit_case", "audit_events", ["case_id", "id"])
    _append_only_triggers()


def _append_only_triggers() -> None:
    """The database itself refuses to change or delete an audit entry, whoever asks."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events "
                       f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")
    elif dialect == "postgresql":
        op.execute("CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   f"BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$")
        op.execute("CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events "
                   "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()")
        op.execute("CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_change ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    for table in ("audit_events", "dispositions", "alerts", "cases", "users"):
        op.drop_table(table)
