"""Assemble the evaluation metrics and write the report files a reviewer reads.

``reports/`` gets four files per evaluation:

* ``metrics.json`` — every number (model and baselines side by side), sorted keys,
  floats rounded to 6 digits, NaN/inf as null, so diffs between runs are readable;
* ``pr_curve.png`` — the model's and the baselines' precision-recall curves with the
  operating points actually used;
* ``feature_importance.png`` — the classifier's importances (or a figure saying there are
  none, so the file set never depends on the classifier);
* ``summary.md`` — a one-page markdown summary of the above.

Baselines in ``metrics.json``: ``baselines`` holds ``rules`` (the three-rule baseline) and
the learned ones (``raw``, ``raw_windows``; :mod:`.learned_baselines`), and ``lift`` the
model's test PR-AUC divided by each learned baseline's. ``baseline`` (singular) is the
rule block again under the key earlier reports used, so ``dvc metrics diff`` across
revisions and the sweep table keep reading ``baseline.pr_auc``. ``instances`` holds the
instance- and account-level figures (:mod:`.instances`).

Plots use matplotlib's object API (``Figure`` + Agg canvas) rather than ``pyplot``: no
display is needed and no global backend or figure state is touched.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from enum import Enum
from pathlib import Path

import numpy as np

from aml_pipeline.evaluation.baseline import BASELINE_THRESHOLD
from aml_pipeline.evaluation.metrics import (
    alert_metrics,
    as_labels,
    as_scores,
    per_typology_recall,
    pr_auc,
    pr_table,
    recall_at_precision,
    roc_auc,
)
from aml_pipeline.evaluation.thresholds import DEFAULT_KEY, apply_thresholds, jurisdiction_labels
from aml_pipeline.optional import install_hint, installed

#: Display names of the baselines, in report order.
BASELINE_LABELS = {"raw_windows": "raw+windows", "raw": "raw", "rules": "rules"}


def lift(plan_pr_auc: float | None, learned: Mapping[str, Mapping]) -> dict[str, float | None]:
    """Model test PR-AUC / each learned baseline's test PR-AUC (None when undefined)."""
    out = {}
    for name, block in learned.items():
        base = (block or {}).get("pr_auc")
        out[name] = None if plan_pr_auc is None or not base else float(plan_pr_auc) / float(base)
    return out


def lift_line(metrics: Mapping) -> tuple[str, str] | None:
    """(``lift over raw+windows``, ``1.42×  (raw+windows 0.6123, raw 0.4011, rules 0.0047)``):
    the lift over the strongest learned baseline reported (raw_windows, else raw) and every
    baseline's test PR-AUC; None when no learned baseline ran."""
    baselines = metrics.get("baselines") or {}
    lifts = metrics.get("lift") or {}
    head = next((n for n in ("raw_windows", "raw") if n in lifts), None)
    if head is None:
        return None
    value = lifts[head]
    parts = [f"{BASELINE_LABELS.get(n, n)} {_fmt((baselines.get(n) or {}).get('pr_auc'))}"
             for n in BASELINE_LABELS if baselines.get(n) is not None]
    return f"lift over {BASELINE_LABELS[head]}", f"{'—' if value is None else f'{value:.2f}×'}  ({', '.join(parts)})"

REPORT_FILES = {
    "metrics": "metrics.json",
    "pr_curve": "pr_curve.png",
    "feature_importance": "feature_importance.png",
    "summary": "summary.md",
}


# ----------------------------------------------------------------------------- metrics
def _per_jurisdiction(y, score, alert, jur, threshold) -> dict[str, dict]:
    """Operating figures of each jurisdiction present in the evaluated data."""
    out = {}
    for key in np.unique(jur).tolist():
        m = jur == key
        out[key] = {
            **alert_metrics(y[m], alert[m]),
            "n": int(m.sum()),
            "positives": int(y[m].sum()),
            "threshold": float(threshold[m][0]),
            "pr_auc": pr_auc(y[m], score[m]),
        }
    return out


def _baseline_block(y, typology, baseline_score, baseline_alert, report_precisions) -> dict | None:
    """The same headline metrics for the rule baseline (None when no baseline was given)."""
    if baseline_score is None:
        return None
    bscore = as_scores(baseline_score)
    balert = (bscore >= BASELINE_THRESHOLD) if baseline_alert is None else np.asarray(baseline_alert, bool)
    return {
        "pr_auc": pr_auc(y, bscore),
        "roc_auc": roc_auc(y, bscore),
        "recall_at_precision": recall_at_precision(y, bscore, report_precisions),
        "operating_point": alert_metrics(y, balert),
        "per_typology_recall": per_typology_recall(y, balert, typology),
    }


def evaluation_report(y, score, jurisdiction, typology, thresholds: Mapping, report_precisions,
                      baseline_score=None, baseline_alert=None, learned: Mapping[str, Mapping] | None = None,
                      instances: Mapping | None = None) -> dict:
    """The metrics dict written to ``reports/metrics.json``.

    ``operating_point`` applies the per-jurisdiction ``thresholds`` (unseen jurisdictions
    use ``"*"``), so it is the alert volume and quality the bank would actually get.
    ``baseline_alert`` defaults to "any rule fired" on ``baseline_score``. ``learned`` maps
    a learned baseline's name to its block (:func:`.learned_baselines.learned_baselines`);
    ``instances`` is :func:`.instances.instance_report`'s block.
    """
    y, score = as_labels(y), as_scores(score)
    jur = jurisdiction_labels(jurisdiction, score.size)
    threshold, alert = apply_thresholds(score, jur, thresholds)
    report_precisions = [float(p) for p in report_precisions]
    model_pr_auc = pr_auc(y, score)
    rules = _baseline_block(y, typology, baseline_score, baseline_alert, report_precisions)
    learned = {str(k): dict(v) for k, v in (learned or {}).items()}
    return {
        "n_events": int(y.size),
        "n_positive": int(y.sum()),
        "pr_auc": model_pr_auc,
        "roc_auc": roc_auc(y, score),
        "report_precisions": report_precisions,
        "recall_at_precision": recall_at_precision(y, score, report_precisions),
        "operating_point": alert_metrics(y, alert),
        "per_jurisdiction": _per_jurisdiction(y, score, alert, jur, threshold),
        "per_typology_recall": per_typology_recall(y, alert, typology),
        "thresholds": {str(k): dict(v) if isinstance(v, Mapping) else {"threshold": float(v)}
                       for k, v in thresholds.items()},
        "baseline": rules,
        "baselines": {"rules": rules, **learned},
        "lift": lift(model_pr_auc, learned),
        "instances": dict(instances) if instances is not None else None,
    }


# ----------------------------------------------------------------------------- json
def json_ready(obj):
    """A JSON-safe copy: floats rounded to 6 digits, NaN/inf -> None, numpy -> python."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, np.ndarray)):
        return [json_ready(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Enum):
        return json_ready(obj.value)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return round(obj, 6) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_metrics_json(path, metrics: Mapping) -> Path:
    path = Path(path)
    path.write_text(json.dumps(json_ready(metrics), sort_keys=True, indent=2, allow_nan=False) + "\n")
    return path


# ----------------------------------------------------------------------------- plots
def plots_installed() -> bool:
    """Whether matplotlib (the ``plots`` extra) is there; without it a report is written
    without its pictures, and one line on stderr says so (once per process)."""
    if installed("matplotlib"):
        return True
    global _SAID_NO_PLOTS
    if not _SAID_NO_PLOTS:
        print(f"plots: matplotlib is not installed, so the reports have no pictures ({install_hint('plots')})",
              file=sys.stderr)
        _SAID_NO_PLOTS = True
    return False


_SAID_NO_PLOTS = False


def new_figure(width=7.0, height=5.0):
    """A figure and its one axes: the one place matplotlib is imported (the monitor's report too).

    Lazily: matplotlib is the ``plots`` extra (callers check :func:`plots_installed` first)
    and slow to import."""
    from matplotlib.figure import Figure  # the plots extra

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def _message_figure(path, title: str, message: str) -> Path:
    fig, ax = new_figure(6.0, 3.0)
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    fig.savefig(path, dpi=110)
    return Path(path)


def _curve(y, score):
    """(recall, precision) step points of the PR curve from our own PR table."""
    table = pr_table(y, score)
    recall = np.r_[0.0, table.recall]
    precision = np.r_[table.precision[0] if table.precision.size else 1.0, table.precision]
    return recall, precision


def _threshold_points(thresholds) -> dict[str, float]:
    """label -> threshold, grouping jurisdictions that share a threshold value."""
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        return {"threshold": float(thresholds)}
    by_value: dict[float, list[str]] = {}
    for key, entry in thresholds.items():
        value = float(entry["threshold"] if isinstance(entry, Mapping) else entry)
        by_value.setdefault(value, []).append(str(key))
    items = sorted(by_value.items())[:12]  # more would be unreadable
    return {f"t={v:.3g} ({', '.join(keys[:4])}{'…' if len(keys) > 4 else ''})": v for v, keys in items}


def plot_pr_curve(path, y, score, baseline_score=None, thresholds=None, operating_points=None,
                  learned_scores: Mapping | None = None) -> Path:
    """PNG of the PR curves of the model (and baseline) with operating points.

    ``thresholds`` (jurisdiction -> entry or float, or one float) are marked at their
    pooled precision/recall on ``score``; ``operating_points`` (label -> dict with
    precision and recall) are marked as given, which is how per-jurisdiction thresholds,
    whose combined effect is not one point on the pooled curve, are shown.
    ``learned_scores`` (name -> test scores) adds the learned baselines' curves.
    """
    y, score = as_labels(y), as_scores(score)
    if y.size == 0 or y.sum() == 0:
        return _message_figure(path, "Precision-recall curve", "Not defined: no positive labels.")
    fig, ax = new_figure()
    recall, precision = _curve(y, score)
    ax.step(recall, precision, where="post", label=f"model (AP {_fmt(pr_auc(y, score))})", color="C0")
    if baseline_score is not None:
        b_recall, b_precision = _curve(y, baseline_score)
        ax.step(b_recall, b_precision, where="post", marker=".", color="C1",
                label=f"rule baseline (AP {_fmt(pr_auc(y, baseline_score))})")
    for i, (name, other) in enumerate((learned_scores or {}).items()):
        o_recall, o_precision = _curve(y, other)
        ax.step(o_recall, o_precision, where="post", linestyle="--", color=("C7", "C8", "C9")[i % 3],
                label=f"{BASELINE_LABELS.get(name, name)} LightGBM (AP {_fmt(pr_auc(y, other))})")
    ax.axhline(y.mean(), color="grey", linestyle=":", linewidth=1, label=f"prevalence {y.mean():.4f}")
    for i, (label, value) in enumerate(_threshold_points(thresholds).items()):
        alert = score >= value
        m = alert_metrics(y, alert)
        ax.plot([m["recall"]], [m["precision"]], marker="o", linestyle="none", color=f"C{(i + 2) % 10}",
                label=label)
    for i, (label, point) in enumerate((operating_points or {}).items()):
        if point and point.get("recall") is not None:
            ax.plot([point["recall"]], [point["precision"]], marker="*", markersize=14, linestyle="none",
                    color=("C3", "C1", "C4", "C5")[i % 4], markeredgecolor="black", label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 0.04), fontsize=8)  # the corner the curves leave empty
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_feature_importance(path, importance: Mapping[str, float] | None, top: int = 25) -> Path:
    """Horizontal bar PNG of the ``top`` features by |importance| (largest at the top)."""
    items = [(str(k), float(v)) for k, v in (importance or {}).items() if v is not None and math.isfinite(float(v))]
    if not items:
        return _message_figure(path, "Feature importance", "Not available for this classifier.")
    items = sorted(items, key=lambda kv: abs(kv[1]), reverse=True)[:top]
    names, values = [k for k, _ in reversed(items)], [v for _, v in reversed(items)]
    fig, ax = new_figure(7.0, max(2.5, 0.28 * len(items) + 1.2))
    ax.barh(np.arange(len(items)), values, color="C0")
    ax.set_yticks(np.arange(len(items)), labels=names, fontsize=8)
    ax.set(xlabel="importance", title=f"Feature importance (top {len(items)})")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


# ----------------------------------------------------------------------------- markdown
def _fmt(x, kind: str = "num") -> str:
    """Numbers for humans: 4 decimals, thousands separators for counts, — for undefined."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if kind == "pct":
        return f"{x:.3%}"
    if isinstance(x, (bool, np.bool_, str)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    return f"{x:.4f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _headline(metrics: Mapping) -> list[str]:
    base = metrics.get("baseline") or {}
    model_op, base_op = metrics.get("operating_point") or {}, base.get("operating_point") or {}
    rows = [["PR-AUC (average precision)", _fmt(metrics.get("pr_auc")), _fmt(base.get("pr_auc"))],
            ["ROC-AUC", _fmt(metrics.get("roc_auc")), _fmt(base.get("roc_auc"))]]
    base_rap = base.get("recall_at_precision") or {}
    for key, value in (metrics.get("recall_at_precision") or {}).items():
        rows.append([f"recall @ precision ≥ {key}", _fmt(value), _fmt(base_rap.get(key))])
    rows += [
        ["operating point: precision", _fmt(model_op.get("precision")), _fmt(base_op.get("precision"))],
        ["operating point: recall", _fmt(model_op.get("recall")), _fmt(base_op.get("recall"))],
        ["operating point: alert rate", _fmt(model_op.get("alert_rate"), "pct"), _fmt(base_op.get("alert_rate"), "pct")],
        ["operating point: alerts", _fmt(model_op.get("alerts")), _fmt(base_op.get("alerts"))],
    ]
    return _table(["metric", "model", "rule baseline"], rows)


def _thresholds_table(metrics: Mapping) -> list[str]:
    rows = []
    for key, e in sorted((metrics.get("thresholds") or {}).items()):
        target = f"{e.get('target', '?')} {e.get('value', '')}".strip() if "target" in e else "—"
        rows.append([f"`{key}`", target, _fmt(e.get("threshold")), _fmt(e.get("precision")),
                     _fmt(e.get("recall")), "yes" if e.get("pooled") else "no",
                     e.get("fallback") or "—", e.get("note") or ""])
    header = ["jurisdiction", "target", "threshold", "valid precision", "valid recall", "pooled", "fallback", "note"]
    return _table(header, rows)


def _jurisdiction_table(metrics: Mapping) -> list[str]:
    rows = [[f"`{k}`", _fmt(e.get("n")), _fmt(e.get("positives")), _fmt(e.get("threshold")),
             _fmt(e.get("alerts")), _fmt(e.get("precision")), _fmt(e.get("recall"))]
            for k, e in sorted((metrics.get("per_jurisdiction") or {}).items())]
    return _table(["jurisdiction", "events", "positives", "threshold", "alerts", "precision", "recall"], rows)


def _typology_table(metrics: Mapping) -> list[str]:
    base = (metrics.get("baseline") or {}).get("per_typology_recall") or {}
    rows = [[k, _fmt(e["positives"]), _fmt(e["detected"]), _fmt(e["recall"]),
             _fmt((base.get(k) or {}).get("recall"))]
            for k, e in sorted((metrics.get("per_typology_recall") or {}).items())]
    return _table(["typology", "positives", "model detected", "model recall", "baseline recall"], rows)


def _learned_table(metrics: Mapping) -> list[str]:
    baselines = metrics.get("baselines") or {}
    precisions = [str(float(p)) for p in metrics.get("report_precisions") or []]
    lifts = metrics.get("lift") or {}
    rows = [["model", _fmt(metrics.get("pr_auc")), _fmt(metrics.get("roc_auc")),
             *[_fmt((metrics.get("recall_at_precision") or {}).get(k)) for k in precisions], "—", "—", "—"]]
    for name in BASELINE_LABELS:
        b = baselines.get(name)
        if b is None:
            continue
        rap = b.get("recall_at_precision") or {}
        lift_value = lifts.get(name)
        rows.append([BASELINE_LABELS[name], _fmt(b.get("pr_auc")), _fmt(b.get("roc_auc")), *[_fmt(rap.get(k)) for k in precisions],
                     _fmt(b.get("valid_pr_auc")), _fmt(b.get("rounds")), "—" if lift_value is None else f"{lift_value:.2f}×"])
    header = ["scorer", "test PR-AUC", "test ROC-AUC", *[f"recall @ P≥{k}" for k in precisions],
              "valid PR-AUC", "rounds", "model's lift"]
    return _table(header, rows)


def _share(part: Mapping | None) -> str:
    if not part:
        return "—"
    return f"{_fmt(part.get('recall'))} ({part.get('detected', 0):,}/{part.get('instances', 0):,})"


def _instances_table(block: Mapping) -> list[str]:
    op, at = block.get("operating_point") or {}, block.get("at_precision") or {}
    target = at.get("target_precision")
    at_head = f"test threshold for precision ≥ {target:g} (t={_fmt(at.get('threshold'))})" if target is not None else "—"
    rows = [["alerts", _fmt(op.get("alerts")), _fmt(at.get("alerts"))],
            ["transaction precision", _fmt(op.get("precision")), _fmt(at.get("precision"))],
            ["transaction recall", _fmt(op.get("recall")), _fmt(at.get("recall"))]]
    if block.get("available"):
        op_ir, at_ir = op.get("instance_recall") or {}, at.get("instance_recall") or {}
        rows.append(["instance recall, all typologies", _share(op_ir.get("overall")), _share(at_ir.get("overall"))])
        for typ in sorted(set(op_ir.get("per_typology") or {}) | set(at_ir.get("per_typology") or {})):
            rows.append([f"instance recall, {typ}", _share((op_ir.get("per_typology") or {}).get(typ)),
                         _share((at_ir.get("per_typology") or {}).get(typ))])
    else:
        rows.append(["instance recall", "not available", block.get("note") or ""])
    op_acc, at_acc = op.get("accounts") or {}, at.get("accounts") or {}
    for key, label in (("alerted_accounts", "alerted accounts"), ("alerts_per_account_mean", "alerts per alerted account (mean)"),
                       ("alerts_per_account_max", "alerts per alerted account (max)"),
                       ("alerts_on_clean_accounts", "alerts on clean accounts"), ("clean_alert_share", "share of alerts on clean accounts"),
                       ("clean_accounts_alerted", "clean accounts alerted")):
        kind = "pct" if key == "clean_alert_share" else "num"
        rows.append([label, _fmt(op_acc.get(key), kind), _fmt(at_acc.get(key), kind)])
    return _table(["figure", "operating point", at_head], rows)


def summary_markdown(metrics: Mapping, context: Mapping) -> str:
    """A one-page markdown report: context, model vs baseline, thresholds, typologies."""
    title = context.get("experiment") or context.get("name") or "evaluation"
    lines = [f"# AML evaluation — {title}", ""]
    lines += [f"- **{k}**: {_cell(v)}" for k, v in context.items()]
    lines += ["", f"Test window: {_fmt(metrics.get('n_events'))} events, "
                  f"{_fmt(metrics.get('n_positive'))} positives.", ""]
    lines += ["## Model vs rule baseline", ""] + _headline(metrics)
    lines += ["", "Operating point = per-jurisdiction thresholds chosen on validation; "
                  "baseline alerts when any rule fires.", ""]
    lifted = lift_line(metrics)
    if lifted:
        lines += ["## Learned baselines and lift", "", f"**{lifted[0]}: {lifted[1]}**", ""] + _learned_table(metrics)
        lines += ["", "Learned baselines: LightGBM on the raw columns (raw) and with per-account 24h/7d in/out "
                      "counts and sums (raw+windows), trained on the same training window with the rounds chosen "
                      "on validation. Lift = the model's test PR-AUC / the baseline's.", ""]
    if metrics.get("instances"):
        lines += ["## Instances and accounts", ""] + _instances_table(metrics["instances"])
        lines += ["", "Instance recall: share of laundering instances (by instance_id) with at least one alert. "
                      "An alert counts for its sender and its receiver; clean accounts took part in no "
                      "laundering in the test window. The precision column's threshold is chosen on test "
                      "(a bench figure, not an operating point).", ""]
    lines += ["## Thresholds by jurisdiction (chosen on validation)", ""] + _thresholds_table(metrics)
    lines += ["", f"`{DEFAULT_KEY}` applies to jurisdictions not seen in validation.", ""]
    lines += ["## Test results by jurisdiction", ""] + _jurisdiction_table(metrics)
    lines += ["", "## Recall by typology", ""] + _typology_table(metrics)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- files
def write_reports(reports_dir, metrics: Mapping, context: Mapping, y, score, baseline_score=None,
                  importance: Mapping[str, float] | None = None, learned_scores: Mapping | None = None) -> dict[str, str]:
    """Write the four report files into ``reports_dir``; returns name -> path.

    The PR plot marks the model's real operating point (per-jurisdiction thresholds) and
    the baseline's, taken from ``metrics``, rather than re-deriving them.
    """
    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / file for name, file in REPORT_FILES.items()}
    write_metrics_json(paths["metrics"], metrics)
    points = {"model operating point": metrics.get("operating_point")}
    if metrics.get("baseline"):
        points["baseline (any rule fired)"] = metrics["baseline"].get("operating_point")
    if plots_installed():
        plot_pr_curve(paths["pr_curve"], y, score, baseline_score=baseline_score, operating_points=points,
                      learned_scores=learned_scores)
        plot_feature_importance(paths["feature_importance"], importance)
    else:
        del paths["pr_curve"], paths["feature_importance"]
    paths["summary"].write_text(summary_markdown(metrics, context), encoding="utf-8")
    return {name: str(p) for name, p in paths.items()}
