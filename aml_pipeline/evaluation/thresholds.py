"""Choose alert thresholds per jurisdiction on the validation window, and apply them.

Regulators and alert-handling teams work per jurisdiction, so each jurisdiction gets its
own threshold chosen by a rule from ``thresholds`` config (:class:`~aml_pipeline.config.
ThresholdsConfig`):

* ``precision`` — the lowest threshold whose validation precision >= value (the most
  recall one can have at that precision);
* ``recall`` — the highest threshold whose validation recall >= value (the fewest alerts
  that still catch that share);
* ``fixed`` — value itself.

Pooling: a jurisdiction with fewer than ``min_positives`` validation positives (always at
least 1) has too few examples to estimate precision on, so its threshold is chosen on the
pooled validation scores of all jurisdictions, and its entry says ``"pooled": true``. The
``"*"`` entry (used for jurisdictions never seen in validation) is always pooled.

Fallback: when a target cannot be met (precision 0.99 never reached, or no positives at
all) there is ONE rule: take the threshold with the best F1 on the same scores (ties go to
the higher threshold, i.e. fewer alerts), and record ``"fallback": "best_f1"`` with a
``"note"`` a reviewer can read.

Thresholds are always exact validation score values (for ``fixed``, the configured value),
so ``score >= threshold`` on the validation scores reproduces the recorded precision,
recall and F1 exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from aml_pipeline.config import ThresholdTarget, option_value
from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.evaluation.metrics import PrTable, as_labels, as_scores, at_threshold, pr_table

#: Key of the threshold used for jurisdictions that have no entry of their own.
DEFAULT_KEY = "*"
FALLBACK_BEST_F1 = "best_f1"


@dataclass(frozen=True)
class Rule:
    """A validated threshold rule (target + value)."""

    target: ThresholdTarget
    value: float


def _get(obj, key: str, default=None):
    """Read ``key`` from a dict, DictConfig or dataclass alike."""
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    try:
        return obj[key] if key in obj else default  # DictConfig
    except TypeError:
        return getattr(obj, key, default)


def _parse_rule(raw, where: str) -> Rule:
    """Check one rule early so a typo names its config key instead of failing later."""
    target_raw = _get(raw, "target", ThresholdTarget.precision.value)
    target_raw = option_value(target_raw)
    try:
        target = ThresholdTarget(str(target_raw))
    except ValueError:
        allowed = ", ".join(t.value for t in ThresholdTarget)
        raise ConfigError(f"{where}.target: {target_raw!r} is not one of {allowed}") from None
    try:
        value = float(_get(raw, "value", 0.5))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.value: must be a number") from None
    if target is not ThresholdTarget.fixed and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}.value: a {target.value} target must be in [0, 1], got {value}")
    return Rule(target, value)


def parse_thresholds_config(cfg) -> tuple[Rule, dict[str, Rule], int]:
    """(default rule, rule by jurisdiction, min_positives) from a ThresholdsConfig-like."""
    default = _parse_rule(_get(cfg, "default", {}) or {}, "thresholds.default")
    jurisdictions = _get(cfg, "jurisdictions", {}) or {}
    rules = {str(k): _parse_rule(v, f"thresholds.jurisdictions.{k}") for k, v in jurisdictions.items()}
    min_positives = int(_get(cfg, "min_positives", 5))
    return default, rules, min_positives


def jurisdiction_labels(jurisdiction, n: int) -> np.ndarray:
    """Jurisdictions as a str array; None/NaN/empty become ``"*"`` (judged by the default)."""
    if jurisdiction is None:
        return np.full(n, DEFAULT_KEY, dtype=object).astype(str)
    arr = np.asarray(jurisdiction, dtype=object).reshape(-1)
    if arr.size == 1 and n != 1:
        arr = np.repeat(arr, n)
    missing = np.equal(arr, None) | (arr != arr) | (arr == "")
    return np.where(missing, DEFAULT_KEY, arr).astype(str)


def _index_for(table: PrTable, rule: Rule) -> int | None:
    """Row of the PR table meeting ``rule``, or None when the target is unattainable."""
    if not table.positives:
        return None
    if rule.target is ThresholdTarget.precision:
        ok = np.flatnonzero(table.precision >= rule.value)
        return int(ok[-1]) if ok.size else None  # thresholds decrease: last = lowest
    ok = np.flatnonzero(table.recall >= rule.value)
    return int(ok[0]) if ok.size else None  # first = highest


def _fallback_note(table: PrTable, rule: Rule, basis: str) -> str:
    if not table.positives:
        return (f"no positives in the {basis} validation scores, so a {rule.target.value} "
                f"target of {rule.value:g} cannot be met; used the best-F1 threshold "
                "(the highest score: fewest alerts) instead")
    best = float(table.precision.max()) if rule.target is ThresholdTarget.precision else 1.0
    return (f"{rule.target.value} >= {rule.value:g} is not reached at any threshold on the "
            f"{basis} validation scores (best {rule.target.value} {best:.4g}); "
            "used the best-F1 threshold instead")


def choose_one(score: np.ndarray, y: np.ndarray, rule: Rule, basis: str = "own") -> dict:
    """Threshold and achieved validation figures for one rule on one set of scores."""
    fallback = note = None
    if rule.target is ThresholdTarget.fixed:
        threshold = float(rule.value)
    else:
        table = pr_table(y, score)
        idx = _index_for(table, rule)
        if idx is None:
            idx = int(np.argmax(table.f1))  # first max = highest threshold among ties
            fallback, note = FALLBACK_BEST_F1, _fallback_note(table, rule, basis)
        threshold = float(table.thresholds[idx])
    achieved = at_threshold(y, score, threshold)
    return {
        "threshold": threshold,
        "target": rule.target.value,
        "value": float(rule.value),
        "precision": achieved["precision"],
        "recall": achieved["recall"],
        "f1": achieved["f1"],
        "alerts": achieved["alerts"],
        "fallback": fallback,
        "note": note,
    }


def choose_thresholds(score, y, jurisdiction, cfg) -> dict[str, dict]:
    """Pick a threshold for every jurisdiction on the VALIDATION window.

    Keys: every jurisdiction present in the validation data, every configured one, and
    ``"*"``. Each entry holds ``threshold, target, value, precision, recall, f1, alerts``
    (achieved on the scores the threshold was chosen on), ``n, positives`` (the
    jurisdiction's own validation rows and positives), ``basis_n, basis_positives`` (the
    rows actually used: all of validation when pooled), ``pooled, fallback, note``.
    """
    score, y = as_scores(score), as_labels(y)
    jur = jurisdiction_labels(jurisdiction, score.size)
    if not score.size == y.size == jur.size:
        raise ValueError("score, y and jurisdiction have different lengths")
    if score.size == 0:
        raise UserError("cannot choose thresholds: the validation window has no events")
    default, rules, min_positives = parse_thresholds_config(cfg)
    need = max(min_positives, 1)  # a jurisdiction without positives can never stand alone
    everything = np.ones(score.size, dtype=bool)
    out: dict[str, dict] = {}
    for key in sorted(set(np.unique(jur).tolist()) | set(rules) | {DEFAULT_KEY}):
        own = everything if key == DEFAULT_KEY else jur == key
        n, positives = int(own.sum()), int(y[own].sum())
        pooled = key == DEFAULT_KEY or positives < need
        basis = everything if pooled else own
        entry = choose_one(score[basis], y[basis], rules.get(key, default),
                           "pooled" if pooled else f"{key}")
        if pooled and key != DEFAULT_KEY:
            why = (f"pooled: {positives} validation positives < min_positives {need}; "
                   "threshold chosen on all jurisdictions' validation scores")
            entry["note"] = why if entry["note"] is None else f"{why}; {entry['note']}"
        entry.update(n=n, positives=positives, basis_n=int(basis.sum()),
                     basis_positives=int(y[basis].sum()), pooled=pooled)
        out[key] = entry
    return out


def _threshold_value(entry) -> float:
    return float(entry["threshold"] if isinstance(entry, Mapping) else entry)


def apply_thresholds(score, jurisdiction, thresholds: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(threshold per event, alert per event); unseen jurisdictions use ``"*"``.

    ``thresholds`` maps jurisdiction -> entry from :func:`choose_thresholds` (or a bare
    float). Vectorised: one lookup per distinct jurisdiction, then an index gather.
    """
    score = as_scores(score)
    jur = jurisdiction_labels(jurisdiction, score.size)
    if jur.size != score.size:
        raise ValueError("score and jurisdiction have different lengths")
    lookup = {str(k): _threshold_value(v) for k, v in thresholds.items()}
    uniq, inverse = np.unique(jur, return_inverse=True)
    unseen = [u for u in uniq.tolist() if u not in lookup]
    if unseen and DEFAULT_KEY not in lookup:
        raise ValueError(f"no threshold for {unseen} and no default '{DEFAULT_KEY}' entry")
    per_value = np.array([lookup.get(u, lookup.get(DEFAULT_KEY)) for u in uniq.tolist()],
                         dtype=np.float64)
    threshold = per_value[inverse.reshape(-1)] if uniq.size else np.zeros(0, dtype=np.float64)
    return threshold, score >= threshold
