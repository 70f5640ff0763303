"""One comparison table for a sweep (``-m``): every job's overrides and test metrics, ranked.

Hydra calls :class:`SweepSummary` when a multirun ends; it reads each job's
``reports/metrics.json`` and ``.hydra/overrides.yaml`` under the sweep folder and writes
``sweep_summary.csv`` and ``sweep_summary.md`` there, best PR-AUC first. A job that
failed (no metrics) is listed last with its status, never silently dropped.
``task=sweep_summary input=<sweep folder>`` rebuilds the table for an existing folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aml_pipeline.errors import UserError
from aml_pipeline.progress import out

COLUMNS = ["pr_auc", "roc_auc", "precision", "recall", "f1", "alert_rate", "baseline_pr_auc"]


def _row(job: Path) -> dict[str, Any]:
    overrides_file = job / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    row: dict[str, Any] = {"job": job.name, "overrides": " ".join(o for o in overrides or [] if not o.startswith("task="))}
    metrics_file = job / "reports" / "metrics.json"
    if not metrics_file.exists():
        return {**row, "status": "failed (no metrics)"}
    m = json.loads(metrics_file.read_text())
    op, base = m.get("operating_point") or {}, m.get("baseline") or {}
    values = {"pr_auc": m.get("pr_auc"), "roc_auc": m.get("roc_auc"), "precision": op.get("precision"),
              "recall": op.get("recall"), "f1": op.get("f1"), "alert_rate": op.get("alert_rate"),
              "baseline_pr_auc": base.get("pr_auc")}
    return {**row, "status": "ok", **values}


def summarise(sweep_dir: Path) -> pl.DataFrame:
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name))
    if not jobs:
        raise UserError(f"{sweep_dir} holds no sweep jobs (folders with a .hydra/ inside)")
    schema = {"job": pl.String, "overrides": pl.String, "status": pl.String, **{c: pl.Float64 for c in COLUMNS}}
    table = pl.DataFrame([_row(j) for j in jobs], schema=schema)
    table = table.sort(["pr_auc"], descending=True, nulls_last=True).with_row_index("rank", offset=1)
    table.write_csv(sweep_dir / "sweep_summary.csv")
    (sweep_dir / "sweep_summary.md").write_text(_markdown(table, sweep_dir))
    return table


def _markdown(table: pl.DataFrame, sweep_dir: Path) -> str:
    head = ["rank", "overrides", *COLUMNS, "status"]
    lines = [f"# Sweep summary: {sweep_dir}", "", "Ranked by test PR-AUC.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.iter_rows(named=True):
        cells = [str(r["rank"]), f"`{r['overrides']}`"] + [("" if r[c] is None else f"{r[c]:.4f}") for c in COLUMNS] + [r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback: write the comparison table when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        table = summarise(sweep_dir)
        out.print(f"sweep summary ({table.height} jobs, best PR-AUC first): {sweep_dir / 'sweep_summary.md'}")
        for r in table.head(10).iter_rows(named=True):
            pr = "n/a" if r["pr_auc"] is None else f"{r['pr_auc']:.4f}"
            out.print(f"  {r['rank']:>2}. PR-AUC {pr}  {r['overrides']}  [{r['status']}]")


def summarise_folder(cfg: DictConfig) -> pl.DataFrame:
    if not cfg.input:
        raise UserError("task=sweep_summary needs input=<sweep folder> (e.g. multirun/2025-01-01/12-00-00)")
    folder = Path(cfg.input)
    if not folder.is_dir():
        raise UserError(f"input={folder}: no such folder")
    return summarise(folder)
