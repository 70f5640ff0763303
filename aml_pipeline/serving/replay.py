"""Re-score logged decisions: any alert can be reproduced from the decision log alone.

Every decision the service takes is a JSON line holding the event, all its feature values,
the score, the threshold and the bundle hash. :func:`rescore` feeds the logged feature
vector to the same bundle's model (single-row path, as the service does) and re-applies
the thresholds; with the bundle the line names, score and threshold come out identical.

CLI: ``python -m aml_pipeline task=serve bundle=<ref> deploy.replay=<event id|alerts|all>``
prints one line per decision and exits 2 when any differs (or the bundle is another one).
``deploy.decision_log=<stream output>/decisions`` re-scores the streaming scorer's
decisions (``deploy.write_decisions=true``) the same way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.errors import UserError
from aml_pipeline.evaluation.thresholds import apply_thresholds
from aml_pipeline.jsonl import read_lines, rotated_files


def read_decisions(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every logged decision, the rotated files first (oldest first); a torn last line of a
    file (a write cut short) is skipped with one warning, any other bad line is an error.

    ``path`` may also be the streaming scorer's ``decisions`` output (a folder of parquet
    or JSON-lines parts, ``deploy.write_decisions``), so every stream alert can be
    re-scored the same way."""
    p = Path(path)
    if p.is_dir():
        parts = sorted(p.glob("part-*.parquet"))
        if parts:
            for f in parts:
                yield from pl.read_parquet(f).iter_rows(named=True)
            return
        files = sorted(p.glob("part-*.jsonl"))
        if not files:
            raise UserError(f"decision log {p}: the folder holds no part-*.parquet or part-*.jsonl (a stream's decisions output)")
    else:
        files = rotated_files(p)
        if not p.is_file():
            raise UserError(f"decision log {p}: no such file (deploy.decision_log)")
    for f in files:
        for n, line in enumerate(read_lines(f), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"decision log {f}, line {n}: not JSON ({exc.msg})") from None


def rescore(bundle: ModelBundle, record: dict[str, Any]) -> dict[str, Any]:
    """Score a logged decision's features again; ``same`` when score and threshold are identical."""
    cols = bundle.feature_columns()
    features = record.get("features") or {c: record[c] for c in cols if c in record}  # the stream's: flat
    missing = [c for c in cols if c not in features]
    result = {"event_id": record.get("event_id"), "logged_score": record.get("score"),
              "logged_threshold": record.get("threshold"), "logged_alert": record.get("alert"),
              "bundle_matches": record.get("bundle_hash") == bundle.bundle_hash}
    if missing:
        return {**result, "score": None, "threshold": None, "alert": None, "same": False,
                "note": f"feature {missing[0]!r} not in the log line"}
    x = np.array([math.nan if features[c] is None else float(features[c]) for c in cols], dtype=np.float64)
    score = float(bundle.model.predict_one(x))
    threshold, alert = apply_thresholds(np.array([score]), np.array([record.get("jurisdiction")], dtype=object),
                                        bundle.thresholds)
    same = score == record.get("score") and float(threshold[0]) == record.get("threshold") and result["bundle_matches"]
    return {**result, "score": score, "threshold": float(threshold[0]), "alert": bool(alert[0]), "same": bool(same),
            "note": None if result["bundle_matches"] else "logged by another bundle"}


def select(records: Iterator[dict[str, Any]], which: str) -> list[dict[str, Any]]:
    which = str(which)
    if which == "all":
        return list(records)
    if which == "alerts":
        return [r for r in records if r.get("alert")]
    return [r for r in records if r.get("event_id") == which]


def replay(bundle: ModelBundle, path: str | Path, which: str) -> list[dict[str, Any]]:
    chosen = select(read_decisions(path), which)
    if not chosen:
        raise UserError(f"decision log {path}: no decision matches deploy.replay={which!r} (an event id, alerts or all)")
    return [rescore(bundle, r) for r in chosen]
