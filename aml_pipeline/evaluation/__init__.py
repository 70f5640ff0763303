"""Judging a scorer: metrics, per-jurisdiction thresholds, a rule baseline, and reports.

* :mod:`.metrics` — PR-AUC, ROC-AUC, precision/recall at a threshold, recall at a target
  precision, recall per typology; pure numpy functions sharing one alert rule
  (``score >= threshold``) and one set of conventions for undefined values.
* :mod:`.thresholds` — choose a threshold per jurisdiction on the validation window
  (precision / recall / fixed targets, pooling for jurisdictions with few positives, one
  best-F1 fallback for unattainable targets) and apply them to new scores.
* :mod:`.baseline` — three transparent rules (high amount, velocity, structuring) scored
  on the canonical columns, so every report shows what the model adds over them.
* :mod:`.learned_baselines` — LightGBM on the raw columns (``raw``) and with per-account
  24 h / 7 d windows (``raw_windows``), trained on the same split with rounds chosen on
  validation, so every report states the model's lift over what a team trains first.
  Imported where used (it pulls in LightGBM and the feature plan).
* :mod:`.instances` — instance recall per typology (by ``instance_id``), alerts per
  account and alerts on accounts with no laundering, at the operating point and at the
  test threshold reaching a target precision.
* :mod:`.report` — assemble ``metrics.json`` and write the PR curve, feature importance
  and markdown summary into ``reports/``.

Thresholds are chosen on validation and judged on test; nothing here ever looks at the
test labels to pick an operating point.
"""

from aml_pipeline.evaluation.baseline import BASELINE_THRESHOLD, fit_high_amount, rule_baseline
from aml_pipeline.evaluation.metrics import (
    alert_metrics,
    at_threshold,
    per_typology_recall,
    pr_auc,
    recall_at_precision,
    roc_auc,
)
from aml_pipeline.evaluation.report import evaluation_report, write_reports
from aml_pipeline.evaluation.thresholds import DEFAULT_KEY, apply_thresholds, choose_thresholds

__all__ = [
    "BASELINE_THRESHOLD",
    "DEFAULT_KEY",
    "alert_metrics",
    "apply_thresholds",
    "at_threshold",
    "choose_thresholds",
    "evaluation_report",
    "fit_high_amount",
    "per_typology_recall",
    "pr_auc",
    "recall_at_precision",
    "roc_auc",
    "rule_baseline",
    "write_reports",
]
