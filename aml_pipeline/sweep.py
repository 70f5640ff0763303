"""One comparison table for a sweep (``-m``): every job ranked by its validation PR-AUC.

Hydra calls :class:`SweepSummary` when a multirun ends; it reads each job's validation
metrics from its bundle (``models/bundle/manifest.json``, written by ``task=train``), its
test metrics from ``reports/metrics.json`` and its ``.hydra/overrides.yaml`` under the sweep
folder, and writes ``sweep_summary.csv`` and ``sweep_summary.md`` there, best validation
PR-AUC first. The test columns are shown, never used to choose: a model picked for its
test score has seen the test window, and its test numbers are no longer an estimate of
what it will do next. A job that failed (no metrics) is listed last with its status,
never silently dropped. ``task=sweep_summary input=<sweep folder>`` rebuilds the table for
an existing folder.

:func:`job_objective` makes a sweep job's return value its validation PR-AUC, the number
Hydra's optimising sweepers (``+hparams_search=lightgbm_optuna``) maximise.
"""

from __future__ import annotations

import atexit
import json
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from aml_pipeline.errors import UserError
from aml_pipeline.optional import installed
from aml_pipeline.progress import out

RANK_BY = "valid_pr_auc"
VALID_COLUMNS = ["valid_pr_auc", "valid_roc_auc"]
TEST_COLUMNS = ["test_pr_auc", "test_roc_auc", "test_precision", "test_recall", "test_f1", "test_alert_rate",
                "test_baseline_pr_auc"]
COLUMNS = VALID_COLUMNS + TEST_COLUMNS
RANKING_NOTE = ("Ranked by validation PR-AUC. The test columns are for reference only and never used to choose: "
                "choosing on them would make the test window part of model selection and its numbers optimistic.")


def validation_metrics(job: Path) -> dict[str, Any]:
    """A job's validation metrics, as ``task=train`` recorded them in the bundle's manifest."""
    manifest = job / "models" / "bundle" / "manifest.json"
    if not manifest.exists():
        return {}
    return json.loads(manifest.read_text()).get("metrics") or {}


def _row(job: Path) -> dict[str, Any]:
    overrides_file = job / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    row: dict[str, Any] = {"job": job.name, "overrides": " ".join(o for o in overrides or [] if not o.startswith("task="))}
    valid = validation_metrics(job)
    row.update({"valid_pr_auc": valid.get("valid_pr_auc"), "valid_roc_auc": valid.get("valid_roc_auc")})
    metrics_file = job / "reports" / "metrics.json"
    if not metrics_file.exists():
        return {**row, "status": "failed (no metrics)"}
    m = json.loads(metrics_file.read_text())
    op, base = m.get("operating_point") or {}, m.get("baseline") or {}
    values = {"test_pr_auc": m.get("pr_auc"), "test_roc_auc": m.get("roc_auc"), "test_precision": op.get("precision"),
              "test_recall": op.get("recall"), "test_f1": op.get("f1"), "test_alert_rate": op.get("alert_rate"),
              "test_baseline_pr_auc": base.get("pr_auc")}
    status = "ok" if row["valid_pr_auc"] is not None else "no validation PR-AUC (not ranked)"
    return {**row, "status": status, **values}


def summarise(sweep_dir: Path) -> pl.DataFrame:
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name))
    if not jobs:
        raise UserError(f"{sweep_dir} holds no sweep jobs (folders with a .hydra/ inside)")
    schema = {"job": pl.String, "overrides": pl.String, "status": pl.String, **{c: pl.Float64 for c in COLUMNS}}
    table = pl.DataFrame([_row(j) for j in jobs], schema=schema)
    # Failed jobs and jobs without a validation PR-AUC go last, whatever their test score.
    table = (table.with_columns((pl.col("status") != "ok").alias("_last"))
             .sort(["_last", RANK_BY], descending=[False, True], nulls_last=True, maintain_order=True)
             .drop("_last").with_row_index("rank", offset=1))
    table.write_csv(sweep_dir / "sweep_summary.csv")
    (sweep_dir / "sweep_summary.md").write_text(_markdown(table, sweep_dir))
    return table


def _markdown(table: pl.DataFrame, sweep_dir: Path) -> str:
    head = ["rank", "overrides", *COLUMNS, "status"]
    lines = [f"# Sweep summary: {sweep_dir}", "", RANKING_NOTE, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.iter_rows(named=True):
        cells = [str(r["rank"]), f"`{r['overrides']}`"] + [("" if r[c] is None else f"{r[c]:.4f}") for c in COLUMNS] + [r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


#: In a sweep folder: the id of the MLflow run the jobs' runs nest under.
PARENT_RUN_FILE = "mlflow_parent_run.txt"


def _registry():
    """:mod:`aml_pipeline.registry`, for a sweep that logs to MLflow.

    Imported here, not at the top, for start-up time: the command line imports this module
    (for :func:`job_objective`) before every task, and the registry loads the model bundle's
    stack (LightGBM, scikit-learn, SHAP), which a sweep's callbacks need only with MLflow on."""
    from aml_pipeline import registry  # start-up time, see above

    return registry


def _multirun_dir() -> Path | None:
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def job_registration() -> dict[str, Any]:
    """How a job registers its version: outside a sweep, as configured (``{}``); in a sweep,
    with no alias (the sweep moves it to its best job by validation PR-AUC when it ends)
    and nested under the sweep's parent run."""
    sweep_dir = _multirun_dir()
    if sweep_dir is None:
        return {}
    parent = sweep_dir / PARENT_RUN_FILE
    return {"alias": None, "parent_run_id": parent.read_text().strip() if parent.is_file() else None}


def best_job(table: pl.DataFrame, sweep_dir: Path) -> tuple[dict, dict] | None:
    """The best-ranked job by validation PR-AUC that registered a version: (table row, registration)."""
    for r in table.iter_rows(named=True):
        reg = sweep_dir / r["job"] / "models" / "registered.json"
        if r["status"] == "ok" and reg.is_file():
            return r, json.loads(reg.read_text())
    return None


class SweepSummary(Callback):
    """Hydra callback: group the jobs' MLflow runs under one parent run; when the multirun
    ends, write the comparison table and point the alias at the best job by validation PR-AUC
    (not the last to finish, as when each job moved it).

    A sweep that ends any other way (a job's error ends the multirun, Ctrl-C) never reaches
    ``on_multirun_end``: the parent run is then closed at interpreter exit as FAILED, tagged
    with why, instead of staying RUNNING in MLflow forever."""

    def __init__(self) -> None:
        self._open: tuple[DictConfig, str] | None = None  # (config, parent run id) until the sweep's end

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _mlflow_on(config):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        run_id = _registry().start_parent_run(config, f"sweep {sweep_dir.name}",
                                              {"aml.record": "sweep", "sweep_dir": str(sweep_dir)})
        (sweep_dir / PARENT_RUN_FILE).write_text(run_id + "\n")
        self._open = (config, run_id)
        atexit.register(self._fail_if_open)

    def _fail_if_open(self) -> None:
        """At exit: a parent run the sweep's end did not close is closed as FAILED."""
        if self._open is None:
            return
        config, run_id = self._open
        self._open = None
        try:
            _registry().end_parent_run(config, run_id, {}, {"aml.sweep_outcome": "the sweep ended before its summary "
                                                            "(a job failed or it was interrupted)"}, [], status="FAILED")
        except Exception as exc:  # the tracking store is gone: nothing left to close
            out.print(f"sweep: could not mark MLflow run {run_id} FAILED: {exc}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        table = summarise(sweep_dir)
        out.print(f"sweep summary ({table.height} jobs, best validation PR-AUC first; test shown, not used to choose): "
                  f"{sweep_dir / 'sweep_summary.md'}")
        for r in table.head(10).iter_rows(named=True):
            out.print(f"  {r['rank']:>2}. valid PR-AUC {_fmt(r['valid_pr_auc'])}  (test {_fmt(r['test_pr_auc'])})  "
                      f"{r['overrides']}  [{r['status']}]")
        parent = sweep_dir / PARENT_RUN_FILE
        if _mlflow_on(config) and parent.is_file():
            self._alias_best(config, table, sweep_dir, parent.read_text().strip())
            self._open = None

    @staticmethod
    def _alias_best(config: DictConfig, table: pl.DataFrame, sweep_dir: Path, parent_run_id: str) -> None:
        registry = _registry()
        best = best_job(table, sweep_dir)
        tags: dict[str, Any] = {}
        if best is not None:
            row, reg = best
            alias = config.mlflow.alias
            registry.set_alias(config, alias, reg["version"], {"sweep_dir": str(sweep_dir), "sweep_job": row["job"]})
            tags = {"best_job": row["job"], "best_version": reg["version"], "best_overrides": row["overrides"]}
            out.print(f"models:/{reg['name']}@{alias} = version {reg['version']} (job {row['job']}, "
                      f"best validation PR-AUC {_fmt(row['valid_pr_auc'])})")
        registry.end_parent_run(config, parent_run_id, {"best_valid_pr_auc": best[0]["valid_pr_auc"] if best else None},
                                tags, [sweep_dir / "sweep_summary.md", sweep_dir / "sweep_summary.csv"])


def _mlflow_on(config: DictConfig) -> bool:
    try:
        return bool(config.mlflow.enabled) and installed("mlflow")  # each job says when it is not
    except Exception:  # a config without the mlflow group (a tool composing only parts)
        return False


def job_objective(result: object) -> object:
    """A sweep job's return value: its validation PR-AUC (None when it has none).

    Hydra's sweepers read the task function's return value; an optimising sweeper maximises
    it, so it must be the validation number, never a test one. Outside a sweep the task's
    own result is returned unchanged.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return result
    return validation_metrics(Path(HydraConfig.get().runtime.output_dir)).get(RANK_BY)


def summarise_folder(cfg: DictConfig) -> pl.DataFrame:
    if not cfg.input:
        raise UserError("task=sweep_summary needs input=<sweep folder> (e.g. multirun/2025-01-01/12-00-00)")
    folder = Path(cfg.input)
    if not folder.is_dir():
        raise UserError(f"input={folder}: no such folder")
    return summarise(folder)
