"""``task=promote``: move ``champion`` to the challenger only if it passes the gate.

``python -m aml_pipeline task=promote [input=<labelled parquet>] [promote.pr_auc_epsilon=0.02]``:
both registered versions (``@challenger``, ``@champion``) are re-scored on the same labelled
window, later than either's training (the test window of ``data/validated`` by default),
the gate of ``conf/promote/`` is applied (:mod:`aml_pipeline.lifecycle.gate`), and only a
passing challenger becomes the champion; the first one does when there is no champion yet.
The record goes to MLflow (a run, and tags on the versions) and ``reports/promote.json``.
A blocked promotion prints one line and exits with code 3; the alias stays where it was.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig

from aml_pipeline.engines import engine_of
from aml_pipeline.layout import Layout
from aml_pipeline.lifecycle.promote import PromotionBlocked, promote
from aml_pipeline.progress import status, table


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def run(cfg: DictConfig) -> dict:
    layout = Layout.of(cfg)
    rescorer = engine_of(cfg).rescorer(cfg)
    with status("promote: re-scoring challenger and champion on the judged window"):
        record = promote(cfg, layout.validated, rescorer)
    out = layout.reports_dir / "promote.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    ch, champ = record["challenger"], record.get("champion")
    rows = [("decision", record["decision"]),
            ("challenger", f"version {ch['version']}"),
            ("champion before / after", f"{record['champion_before'] or 'none'} / {record['champion_after'] or 'none'}")]
    if record.get("gate"):
        w = record["window"]
        rows.insert(1, ("window", f"{w['start'][:19]} .. {(w['end'] or '')[:19]}, {w['labelled']:,} labelled "
                                  f"({w['positives']:,} positive)"))
        f, g = ch["figures"], (champ or {}).get("figures") or {}
        rows += [("PR-AUC", f"{_fmt(f['pr_auc'])} vs {_fmt(g.get('pr_auc'))}"),
                 ("alerts", f"{f['alerts']:,} vs {g['alerts']:,}" if g else f"{f['alerts']:,}")]
        rows += [(f"  {c['name']}", ("pass" if c["passed"] else "not judged" if c["passed"] is None else "FAIL")
                  + f": {c['detail']}") for c in record["gate"]["checks"]]
        rows.append(("record", f"{out} (MLflow run {record['mlflow_run_id'][:12]})"))
    else:
        rows.append(("note", record["reason"]))
    table("promote", rows)
    if record["decision"] == "blocked":
        raise PromotionBlocked(f"promotion blocked: version {ch['version']} stays {cfg.promote.challenger}, "
                               f"{cfg.promote.champion} stays {record['champion_before'] or 'unset'}: {record['reason']}")
    return record
