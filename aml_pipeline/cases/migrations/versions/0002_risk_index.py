"""The queue's risk order as an index: (max_score, alert_count, total_amount) descending, then id.

The default queue (active cases, riskiest first) reads the first page of this index and
skips the few closed cases, instead of sorting every active case; measured by
bench/workbench.py (docs/benchmarks.md#workbench-benchworkbenchpy).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_cases_risk", "cases", [sa.text("max_score DESC"), sa.text("alert_count DESC"),
                                               sa.text("total_amount DESC"), "id"])


def downgrade() -> None:
    op.drop_index("ix_cases_risk", table_name="cases")
