"""``task=evaluate``: judge the bundle on the test window, write reports, register in MLflow.

load bundle + test features → decisions with the bundle's own scorer → the rule baseline
on the same events (its high-amount cut fitted on the training window) → the learned
baselines (``evaluation.baselines``: LightGBM on raw columns, and with per-account windows,
trained on the same split) → instance- and account-level figures → metrics, PR curve,
feature importance, summary → an MLflow run holding all of it and the bundle, registered as
a model version with an alias. The test decisions go to ``data/scores/test.parquet``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import polars as pl
from omegaconf import DictConfig

from aml_pipeline.config import Explain, option_value

from aml_pipeline.build import build
from aml_pipeline.bundle import ModelBundle
from aml_pipeline.evaluation.baseline import fit_high_amount, rule_baseline
from aml_pipeline.evaluation.instances import instance_report
from aml_pipeline.evaluation.learned_baselines import BaselineModel, learned_baselines
from aml_pipeline.evaluation.report import evaluation_report, lift_line, write_reports
from aml_pipeline.evaluation.thresholds import apply_thresholds
from aml_pipeline.progress import status, table
from aml_pipeline.registry import log_and_register, tracking_on, write_registration
from aml_pipeline.sweep import job_registration
from aml_pipeline.layout import Layout, need


def baseline_scores(events: pl.DataFrame, valid_start: str, reporting_threshold: float) -> pl.DataFrame:
    """Rule baseline over all events (velocity sees the past), cut fitted on training events."""
    train = events.filter(pl.col("event_time") < datetime.fromisoformat(valid_start))
    return rule_baseline(events, high_amount=fit_high_amount(train), reporting_threshold=reporting_threshold)


def headline(metrics: dict) -> dict[str, float]:
    """The few numbers an MLflow run compares on (the full set is in metrics.json)."""
    op, base = metrics["operating_point"], metrics.get("baseline") or {}
    out = {"pr_auc": metrics["pr_auc"], "roc_auc": metrics["roc_auc"], "precision": op["precision"],
           "recall": op["recall"], "f1": op["f1"], "alert_rate": op["alert_rate"],
           "baseline_pr_auc": base.get("pr_auc"), "valid_pr_auc": metrics.get("valid_pr_auc")}
    baselines, lifts = metrics.get("baselines") or {}, metrics.get("lift") or {}
    for name in ("raw", "raw_windows"):
        out[f"{name}_pr_auc"] = (baselines.get(name) or {}).get("pr_auc")
        out[f"lift_{name}"] = lifts.get(name)
    instances = metrics.get("instances") or {}
    for key, point in (("instance_recall", instances.get("operating_point")),
                       (f"instance_recall_at_p{(instances.get('at_precision') or {}).get('target_precision')}",
                        instances.get("at_precision"))):
        out[key] = (((point or {}).get("instance_recall") or {}).get("overall") or {}).get("recall")
    out.update({f"recall_at_p{k}": v for k, v in metrics["recall_at_precision"].items()})
    return {k: v for k, v in out.items() if v is not None}


def model_params(cfg: DictConfig, bundle: ModelBundle) -> dict[str, object]:
    """The hyper-parameters the model was trained with and the weighting's, as MLflow params
    (``model.num_leaves``, ``weighting.positive_weight``): what runs are compared on."""
    out: dict[str, object] = {f"model.{k}": v for k, v in sorted((getattr(bundle.model, "params", None) or {}).items())}
    out["model.early_stopping_rounds"] = cfg.model.early_stopping_rounds
    out["model.best_iteration"] = bundle.metrics.get("best_iteration")
    out.update({f"weighting.{k}": v for k, v in cfg.weighting.items() if not str(k).startswith("_")})
    return {k: v for k, v in out.items() if v is not None}


def canonical_example(test: pl.DataFrame, bundle: ModelBundle) -> pl.DataFrame:
    """Five test transactions in the columns the bundle needs (the registered model's input);
    event_time as naive UTC, the only datetimes MLflow's signatures accept."""
    example = test.select([c for c in bundle.input_schema() if c in test.columns]).head(5)
    return example.with_columns(pl.col("event_time").dt.convert_time_zone("UTC").dt.replace_time_zone(None))


def learned(cfg: DictConfig, events: pl.DataFrame, features_path, test: pl.DataFrame, fx=None) -> tuple[dict, dict]:
    """The configured learned baselines: (name -> metrics, name -> scores in ``test``'s order);
    ``fx``: the plan's reporting currency, so they see the amounts the plan sees."""
    names = [str(option_value(n)) for n in cfg.evaluation.baselines]
    if not names:
        return {}, {}
    splits = pl.scan_parquet(features_path).select("event_id", "split").collect()
    frame = events.join(splits, on="event_id", how="inner").sort("event_time", "event_id")
    blocks, scores = learned_baselines(frame, names, build(cfg.weighting, "weighting"),
                                       BaselineModel.from_config(cfg.model, cfg.seed),
                                       list(cfg.thresholds.report_precisions), progress=status, fx=fx)
    order = test.select("event_id")
    return blocks, {n: order.join(s, on="event_id", how="left", maintain_order="left")["score"].to_numpy()
                    for n, s in scores.items()}


def instances(events: pl.DataFrame, test: pl.DataFrame, score, thresholds, precision: float) -> dict:
    """Instance- and account-level figures of the test window (accounts, instance ids from the events)."""
    cols = [c for c in ("src_account", "dst_account", "typology", "instance_id") if c in events.columns]
    frame = test.select("event_id", "label").join(events.select("event_id", *cols), on="event_id", how="left",
                                                  maintain_order="left")
    _, alert = apply_thresholds(score, test["jurisdiction"].to_numpy(), thresholds)
    return instance_report(frame, score, alert, precision)


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
    # the rules' threshold is the amount step's, in the plan's reporting currency when it has one
    ruled = bundle.plan.fx.convert_frame(events) if bundle.plan.fx is not None else events
    base = baseline_scores(ruled, bounds["valid_start"], float(threshold_cfg.get("reporting_threshold", 10_000.0)))
    base = test.select("event_id").join(base, on="event_id", how="left")
    y = test["label"].to_numpy()
    score = decisions["score"].to_numpy()
    learned_start = time.perf_counter()
    learned_blocks, learned_scores = learned(cfg, events, layout.features, test, bundle.plan.fx)
    learned_secs = time.perf_counter() - learned_start
    metrics = evaluation_report(y, score, test["jurisdiction"].to_numpy(), test["typology"].to_numpy(), bundle.thresholds,
                                list(cfg.thresholds.report_precisions), baseline_score=base["baseline_score"].to_numpy(),
                                learned=learned_blocks,
                                instances=instances(events, test, score, bundle.thresholds, cfg.evaluation.instance_precision))
    # What a sweep or `dvc exp show` chooses on: the validation window, never the test one.
    metrics["valid_pr_auc"] = bundle.metrics.get("valid_pr_auc")
    context = {"experiment": cfg.name, "source": cfg.source._target_.rsplit(".", 1)[-1], "model": bundle.model.name,
               "weighting": bundle.lineage.get("weighting"), "config_hash": bundle.lineage.get("config_hash"),
               "test window": f"{bounds['test_start'][:19]} on, {test.height:,} events"}
    reports = write_reports(layout.reports_dir, metrics, context, y, score, base["baseline_score"].to_numpy(),
                            bundle.model.feature_importance(), learned_scores=learned_scores)
    registration = {}
    if tracking_on(cfg):
        with status("evaluate: logging to MLflow and registering the bundle"):
            params = {"experiment": cfg.name, "model": bundle.model.name, "weighting": bundle.lineage.get("weighting"),
                      "features": ",".join(n for n, _ in bundle.plan.steps), "n_features": len(bundle.feature_columns()),
                      "split": f"{cfg.split.method}:{cfg.split.train}/{cfg.split.valid}", "seed": cfg.seed,
                      **model_params(cfg, bundle)}
            tags = {k: str(v) for k, v in bundle.lineage.items() if v is not None}
            registration = log_and_register(cfg, layout.bundle, bundle.bundle_hash, reports, params, headline(metrics),
                                            tags, input_example=canonical_example(test, bundle),
                                            **job_registration())  # in a sweep: no alias, nested under its run
        write_registration(layout.registration, registration)
        decisions = decisions.with_columns(pl.lit(str(registration["version"])).alias("model_version"),
                                           pl.lit(registration["run_id"]).alias("run_id"))
    scores_path = layout.data_dir / "scores" / "test.parquet"
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    decisions.write_parquet(scores_path)
    secs = time.perf_counter() - start
    _print(metrics, reports, registration, secs, learned_secs)
    return {"metrics": metrics, "reports": reports, "registration": registration}


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _share(part: dict | None) -> str:
    return "n/a" if not part else f"{part['recall']:.2f} ({part['detected']}/{part['instances']})"


def _instance_rows(block: dict | None) -> list[tuple[str, str]]:
    """Instance and account rows, each "operating point / test threshold at the target precision"."""
    if not block:
        return []
    op, at = block["operating_point"], block["at_precision"]
    at_t = "never reached" if at["threshold"] is None else f"t={at['threshold']:.4f}"
    rows = [("instances & accounts", f"operating point / precision {at['target_precision']:g} on test ({at_t})")]
    if block["available"]:
        op_ir, at_ir = op["instance_recall"], at.get("instance_recall") or {}
        rows.append(("instance recall", f"{_share(op_ir['overall'])} / {_share(at_ir.get('overall'))}"))
        rows += [(f"  instances {t}", f"{_share(v)} / {_share((at_ir.get('per_typology') or {}).get(t))}")
                 for t, v in sorted(op_ir["per_typology"].items())]
    else:
        rows.append(("instance recall", "n/a (the source gives no instance_id)"))

    def accounts(point: dict) -> tuple[str, str]:
        a = point.get("accounts")
        if not a or a["alerts_per_account_mean"] is None:
            return "n/a", "n/a"
        return (f"mean {a['alerts_per_account_mean']:.1f}, max {a['alerts_per_account_max']}",
                f"{a['alerts_on_clean_accounts']:,} of {point['alerts']:,} ({a['clean_accounts_alerted']:,} clean accounts)")

    (op_per, op_clean), (at_per, at_clean) = accounts(op), accounts(at)
    rows += [("alerts per alerted account", f"{op_per} / {at_per}"),
             ("alerts on clean accounts", f"{op_clean} / {at_clean}")]
    return rows


def _print(metrics: dict, reports: dict, registration: dict, secs: float, learned_secs: float = 0.0) -> None:
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
    lifted = lift_line(metrics)
    if lifted:
        rows.append(lifted)
    rows += [(f"recall @ precision {k}", _fmt(v)) for k, v in metrics["recall_at_precision"].items()]
    rows += [(f"  recall {t}", f"{v['recall']:.2f} ({v['detected']}/{v['positives']})")
             for t, v in sorted(metrics["per_typology_recall"].items())]
    rows += _instance_rows(metrics.get("instances"))
    rows.append(("reports", reports["summary"].rsplit("/", 1)[0] + "/ (" + ", ".join(p.rsplit("/", 1)[-1] for p in reports.values()) + ")"))
    if registration:
        rows.append(("registered", f"{registration['model_uri']} = version {registration['version']} (run {registration['run_id'][:12]})"))
    rows.append(("took", f"{secs:.1f}s" + (f" (learned baselines {learned_secs:.1f}s)" if learned_secs >= 0.05 else "")))
    table("evaluate (test window)", rows)
