"""``task=evaluate``: judge the bundle on the test window, write reports, register in MLflow.

load bundle + test features → decisions with the bundle's own scorer → the rule baseline
on the same events (its high-amount cut fitted on the training window) → metrics, PR curve,
feature importance, summary → an MLflow run holding all of it and the bundle, registered as
a model version with an alias. The test decisions go to ``data/scores/test.parquet``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import polars as pl
from omegaconf import DictConfig

from aml_pipeline.config import Explain

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.evaluation.baseline import fit_high_amount, rule_baseline
from aml_pipeline.evaluation.report import evaluation_report, write_reports
from aml_pipeline.progress import status, table
from aml_pipeline.registry import log_and_register, write_registration
from aml_pipeline.tasks.layout import Layout, need


def baseline_scores(events: pl.DataFrame, valid_start: str, reporting_threshold: float) -> pl.DataFrame:
    """Rule baseline over all events (velocity sees the past), cut fitted on training events."""
    train = events.filter(pl.col("event_time") < datetime.fromisoformat(valid_start))
    return rule_baseline(events, high_amount=fit_high_amount(train), reporting_threshold=reporting_threshold)


def headline(metrics: dict) -> dict[str, float]:
    """The few numbers an MLflow run compares on (the full set is in metrics.json)."""
    op, base = metrics["operating_point"], metrics.get("baseline") or {}
    out = {"pr_auc": metrics["pr_auc"], "roc_auc": metrics["roc_auc"], "precision": op["precision"],
           "recall": op["recall"], "f1": op["f1"], "alert_rate": op["alert_rate"],
           "baseline_pr_auc": base.get("pr_auc")}
    out.update({f"recall_at_p{k}": v for k, v in metrics["recall_at_precision"].items()})
    return {k: v for k, v in out.items() if v is not None}


def run(cfg: DictConfig) -> dict:
    layout = Layout.of(cfg)
    start = time.perf_counter()
    bundle = ModelBundle.load(need(layout.bundle, "train"))
    bounds = json.loads(need(layout.split, "features").read_text())
    # only the test window is read (the feature table of a Spark run may be large)
    test = pl.scan_parquet(need(layout.features, "features")).filter(pl.col("split") == "test").collect()
    with status(f"evaluate: scoring {test.height:,} test events"):
        decisions = bundle.score_features(test, cfg.scoring.top_k, Explain(cfg.scoring.explain).value)
    events = pl.read_parquet(need(layout.validated, "data"))
    threshold_cfg = cfg.features.steps.get("amount", {}) or {}
    base = baseline_scores(events, bounds["valid_start"], float(threshold_cfg.get("reporting_threshold", 10_000.0)))
    base = test.select("event_id").join(base, on="event_id", how="left")
    y = test["label"].to_numpy()
    score = decisions["score"].to_numpy()
    metrics = evaluation_report(y, score, test["jurisdiction"].to_numpy(), test["typology"].to_numpy(), bundle.thresholds,
                                list(cfg.thresholds.report_precisions), baseline_score=base["baseline_score"].to_numpy())
    context = {"experiment": cfg.name, "source": cfg.source._target_.rsplit(".", 1)[-1], "model": bundle.model.name,
               "weighting": bundle.lineage.get("weighting"), "config_hash": bundle.lineage.get("config_hash"),
               "test window": f"{bounds['test_start'][:19]} on, {test.height:,} events"}
    reports = write_reports(layout.reports_dir, metrics, context, y, score, base["baseline_score"].to_numpy(),
                            bundle.model.feature_importance())
    registration = {}
    if cfg.mlflow.enabled:
        with status("evaluate: logging to MLflow and registering the bundle"):
            params = {"experiment": cfg.name, "model": bundle.model.name, "weighting": bundle.lineage.get("weighting"),
                      "features": ",".join(n for n, _ in bundle.plan.steps), "n_features": len(bundle.feature_columns()),
                      "split": f"{cfg.split.method}:{cfg.split.train}/{cfg.split.valid}", "seed": cfg.seed}
            tags = {k: str(v) for k, v in bundle.lineage.items() if v is not None}
            registration = log_and_register(cfg, layout.bundle, bundle.bundle_hash, reports, params, headline(metrics),
                                            tags, input_example=test.select(bundle.feature_columns()).head(5))
        write_registration(layout.registration, registration)
        decisions = decisions.with_columns(pl.lit(str(registration["version"])).alias("model_version"),
                                           pl.lit(registration["run_id"]).alias("run_id"))
    scores_path = layout.data_dir / "scores" / "test.parquet"
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    decisions.write_parquet(scores_path)
    secs = time.perf_counter() - start
    _print(metrics, reports, registration, secs)
    return {"metrics": metrics, "reports": reports, "registration": registration}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _print(metrics: dict, reports: dict, registration: dict, secs: float) -> None:
    op, base = metrics["operating_point"], metrics.get("baseline") or {}
    bop = base.get("operating_point") or {}
    rows = [
        ("test events", f"{metrics['n_events']:,} ({metrics['n_positive']:,} positive)"),
        ("PR-AUC", f"{_fmt(metrics['pr_auc'])}   (rule baseline {_fmt(base.get('pr_auc'))})"),
        ("ROC-AUC", f"{_fmt(metrics['roc_auc'])}   (rule baseline {_fmt(base.get('roc_auc'))})"),
        ("alerts: precision / recall", f"{_fmt(op['precision'])} / {_fmt(op['recall'])}   "
                                       f"(rule baseline {_fmt(bop.get('precision'))} / {_fmt(bop.get('recall'))})"),
        ("alert rate", f"{op['alert_rate']:.4%}"),
    ]
    rows += [(f"recall @ precision {k}", _fmt(v)) for k, v in metrics["recall_at_precision"].items()]
    rows += [(f"  recall {t}", f"{v['recall']:.2f} ({v['detected']}/{v['positives']})")
             for t, v in sorted(metrics["per_typology_recall"].items())]
    rows.append(("reports", reports["summary"].rsplit("/", 1)[0] + "/ (metrics.json, pr_curve.png, feature_importance.png, summary.md)"))
    if registration:
        rows.append(("registered", f"{registration['model_uri']} = version {registration['version']} (run {registration['run_id'][:12]})"))
    rows.append(("took", f"{secs:.1f}s"))
    table("evaluate (test window)", rows)
