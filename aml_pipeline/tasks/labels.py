"""``task=labels``: the case database's dispositions as a labels file.

Writes ``output=`` (default ``data/labels/labels.parquet``; a ``.csv`` name writes CSV)
with event_id, account, label, labelled_at and source, one row per alert and the decision
that settled it (docs/cases.md). Training takes it with ``source.labels=``, overriding or
adding to the source's labels as of ``source.labels_as_of``; ``task=monitor`` with
``monitor.labels=`` for precision over time. The export is recorded in the audit trail.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from aml_pipeline.cases import export_labels, log_action
from aml_pipeline.progress import table
from aml_pipeline.tasks.cases import open_case_db
from aml_pipeline.layout import Layout


def run(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    out = Path(cfg.output) if cfg.output else Layout.of(cfg).data_dir / "labels" / "labels.parquet"
    db = open_case_db(cfg)
    try:
        frame = export_labels(db, label_escalated=bool(cfg.cases.label_escalated))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            frame.write_csv(out)
        else:
            frame.write_parquet(out)
        positives = int((frame["label"] == 1).sum())
        log_action(db, None, "labels_exported", entity="labels", entity_id=out.name,
                   after={"rows": frame.height, "positives": positives, "output": str(out)}, actor="task=labels")
        url = db.url
    finally:
        db.close()
    table("labels", [
        ("labels", f"{frame.height:,} ({positives:,} positive, {frame.height - positives:,} negative) "
                   f"on {frame['event_id'].n_unique():,} events"),
        ("database", url),
        ("output", str(out)),
        ("took", f"{time.perf_counter() - start:.1f}s"),
    ])
    return {"rows": frame.height, "positives": positives, "output": str(out)}
