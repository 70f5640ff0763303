"""The case database's dispositions as labels: what training and monitoring learn from.

One row per alert and decision that settles it, at the instant it was settled:

| decision | label | labelled_at |
|---|---|---|
| false positive | 0 | when it was decided |
| suspicious – escalate | 1 (``label_escalated``) | when it was decided |
| SAR filed | 1 | when the second user approved it |

A pending or rejected SAR gives no label. A case's decision labels the alerts that were in
the case when it was made (an alert that joined later was not seen by the decider). An
event may have several rows (escalated, then judged a false positive): readers take the
latest one known at their instant (:func:`aml_pipeline.labels.known_by`), so a retrain or a
monitor run "as of" a past date sees only what was known then.
"""

from __future__ import annotations

import polars as pl
import sqlalchemy as sa

from aml_pipeline.cases.db import CaseDB
from aml_pipeline.cases.models import Alert, Disposition
from aml_pipeline.labels import EXPORT_COLUMNS
from aml_pipeline.schema import UTC_TIME

LABEL_OF = {"false_positive": 0, "suspicious_escalate": 1, "sar_filed": 1}
SCHEMA = {"event_id": pl.String, "account": pl.String, "label": pl.Int8, "labelled_at": UTC_TIME, "source": pl.String}


def export_labels(db: CaseDB, *, label_escalated: bool = True) -> pl.DataFrame:
    """The labels file's rows (``EXPORT_COLUMNS``), ordered by labelled_at then event id."""
    settled = sa.or_(
        sa.and_(Disposition.state == "final", Disposition.decision == "false_positive"),
        sa.and_(Disposition.state == "approved", Disposition.decision == "sar_filed"),
        *([sa.and_(Disposition.state == "final", Disposition.decision == "suspicious_escalate")]
          if label_escalated else []),
    )
    q = (sa.select(Alert.event_id, Alert.subject_account, Disposition.decision, Disposition.made_at,
                   Disposition.checked_at)
         .join(Disposition, Disposition.case_id == Alert.case_id)
         .where(settled, Alert.ingested_at <= Disposition.made_at))
    with db.session() as s:
        rows = [{"event_id": eid, "account": acct, "label": LABEL_OF[decision],
                 "labelled_at": checked if decision == "sar_filed" else made, "source": f"workbench:{decision}"}
                for eid, acct, decision, made, checked in s.execute(q)]
    frame = pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
    return frame.sort("labelled_at", "event_id").select(EXPORT_COLUMNS)
