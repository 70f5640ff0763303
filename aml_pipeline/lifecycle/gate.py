"""The promotion gate: is the challenger at least as good as the champion on the same window?

Pure functions of scores and labels, so the rules can be read and tested apart from MLflow.
:func:`figures` gives one model's numbers on the judged window (PR-AUC, alerts, precision
per jurisdiction, each judged by that model's own thresholds); :func:`judge` applies the
three checks of ``conf/promote/`` and says which failed, in words a reviewer can read:

- **PR-AUC**: the challenger's may be at most ``pr_auc_epsilon`` below the champion's;
- **alert volume**: the challenger's alert count within ``±alert_volume_tolerance`` of the
  champion's (a model that doubles the alerts swamps the reviewers even if it ranks well);
- **jurisdiction precision**: every jurisdiction with a precision target still meets it
  (``regression``: blocked where the challenger misses it and the champion met it, or
  raised too few alerts to show it missed; ``strict``: wherever the challenger misses it).
  Jurisdictions where the challenger raises fewer than ``min_alerts`` alerts are listed as
  not judged: a precision of 2 out of 3 says little.

With no champion there is nothing to compare with: only the strict jurisdiction check
can block, and the first challenger that passes becomes the champion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aml_pipeline.config import option_value
from aml_pipeline.evaluation.metrics import pr_auc, roc_auc
from aml_pipeline.evaluation.thresholds import DEFAULT_KEY, apply_thresholds, jurisdiction_labels


def precision_targets(thresholds: dict[str, dict]) -> dict[str, float]:
    """Jurisdiction key -> precision target, for the entries chosen by a precision rule."""
    return {str(k): float(v["value"]) for k, v in thresholds.items()
            if isinstance(v, dict) and v.get("target") == "precision" and v.get("value") is not None}


def figures(y: np.ndarray, score: np.ndarray, jurisdiction: np.ndarray, thresholds: dict[str, dict]) -> dict[str, Any]:
    """One model's numbers on the judged window, alerts decided by its own thresholds."""
    y = np.asarray(y, dtype=np.int64)
    _, alert = apply_thresholds(score, jurisdiction, thresholds)
    jur = jurisdiction_labels(jurisdiction, y.size)
    keys = np.where(np.isin(jur, [k for k in thresholds if k != DEFAULT_KEY]), jur, DEFAULT_KEY)
    per: dict[str, dict] = {}
    for key in sorted(set(keys.tolist())):
        m = keys == key
        alerts, hits = int(alert[m].sum()), int((alert[m] & (y[m] == 1)).sum())
        per[key] = {"events": int(m.sum()), "positives": int(y[m].sum()), "alerts": alerts, "true_alerts": hits,
                    "precision": hits / alerts if alerts else None}
    alerts, hits = int(alert.sum()), int((alert & (y == 1)).sum())
    return {"pr_auc": pr_auc(y, score), "roc_auc": roc_auc(y, score), "alerts": alerts, "true_alerts": hits,
            "alert_rate": alerts / y.size if y.size else None, "precision": hits / alerts if alerts else None,
            "recall": hits / int(y.sum()) if y.sum() else None, "jurisdictions": per}


def _check(name: str, passed: bool | None, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "detail": detail}


def _pr_auc_check(ch: dict, champ: dict | None, epsilon: float) -> dict[str, Any]:
    if champ is None:
        return _check("pr_auc", True, f"no champion: challenger PR-AUC {_f(ch['pr_auc'])} (nothing to compare with)")
    a, b = ch["pr_auc"], champ["pr_auc"]
    if a is None or b is None:
        return _check("pr_auc", False, "PR-AUC undefined on the window (it needs both classes among the labelled events)")
    ok = a >= b - epsilon
    return _check("pr_auc", ok, f"challenger {a:.4f} vs champion {b:.4f} ({a - b:+.4f}; may be at most {epsilon:g} lower)")


def _volume_check(ch: dict, champ: dict | None, tolerance: float) -> dict[str, Any]:
    if champ is None:
        return _check("alert_volume", True, f"no champion: challenger raises {ch['alerts']:,} alerts")
    a, b = ch["alerts"], champ["alerts"]
    change = (a - b) / b if b else (0.0 if a == 0 else float("inf"))
    ok = abs(change) <= tolerance
    return _check("alert_volume", ok, f"challenger {a:,} alerts vs champion {b:,} ({change:+.1%}; allowed ±{tolerance:.0%})")


def _jurisdiction_checks(ch: dict, champ: dict | None, targets: dict[str, float], mode: str, slack: float,
                         min_alerts: int) -> list[dict[str, Any]]:
    """One check per jurisdiction with a precision target and events in the window.

    A challenger with fewer than ``min_alerts`` alerts there is not judged. In regression
    mode a champion with too few alerts to show that it missed counts as having met the
    target (the gate errs toward blocking); with no champion nothing can regress."""
    if mode == "off":
        return []
    out = []
    for key, target in sorted(targets.items()):
        c = ch["jurisdictions"].get(key)
        if c is None:
            continue  # no event of this jurisdiction in the window
        o = champ["jurisdictions"].get(key) if champ else None
        name = f"precision[{key}]"
        if c["alerts"] < min_alerts:
            out.append(_check(name, None, f"{c['alerts']} challenger alerts < min_alerts {min_alerts}"))
            continue
        c_ok = c["precision"] >= target - slack
        said = f"challenger {c['precision']:.3f} on {c['alerts']} alerts"
        if o is not None:
            said += f", champion {'n/a' if o['precision'] is None else format(o['precision'], '.3f')} on {o['alerts']}"
        said += f" (target {target:g})"
        if mode == "strict":
            out.append(_check(name, c_ok, said))
            continue
        if champ is None:
            o_ok = False
        elif o is None or o["alerts"] < min_alerts:
            o_ok = True  # too few champion alerts to show it missed: the challenger must meet the target
        else:
            o_ok = o["precision"] >= target - slack
        if c_ok or o_ok:
            out.append(_check(name, c_ok, said))
        else:
            out.append(_check(name, True, said + "; missed, but the champion misses it too"))
    return out


def judge(ch: dict, champ: dict | None, targets: dict[str, float], cfg) -> dict[str, Any]:
    """The gate's outcome: passed, every check with its detail, and the failures in one line.

    ``targets``: jurisdiction -> precision target (the challenger's, :func:`precision_targets`)."""
    mode = str(option_value(cfg.jurisdiction_precision))
    checks = [_pr_auc_check(ch, champ, float(cfg.pr_auc_epsilon)),
              _volume_check(ch, champ, float(cfg.alert_volume_tolerance)),
              *_jurisdiction_checks(ch, champ, targets, mode, float(cfg.precision_slack),
                                    int(cfg.min_alerts))]
    failed = [c for c in checks if c["passed"] is False]
    return {"passed": not failed, "checks": checks,
            "reason": "; ".join(f"{c['name']}: {c['detail']}" for c in failed) or None}


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
