"""Evaluation: metrics, thresholds, rule baseline and reports on hand-checkable data.

The main score set (Y, S) is small enough to verify by eye. Sorted by score it reads

    score  .9 .8 .7 .6 .5 .4 .3 .2
    label   1  1  0  1  0  0  0  0

so "alert when score >= t" gives, for t = .9 .8 .7 .6 .5 ...:
precision 1, 1, 2/3, 3/4, 3/5, ...   recall 1/3, 2/3, 2/3, 1, 1, ...
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from aml_pipeline.config import ThresholdRule, ThresholdsConfig, ThresholdTarget
from aml_pipeline.errors import ConfigError
from aml_pipeline.evaluation.baseline import BASELINE_THRESHOLD, fit_high_amount, rule_baseline, velocity_counts
from aml_pipeline.evaluation.metrics import (
    alert_metrics,
    at_threshold,
    per_typology_recall,
    pr_auc,
    recall_at_precision,
    roc_auc,
)
from aml_pipeline.evaluation.report import evaluation_report, json_ready, summary_markdown, write_reports
from aml_pipeline.evaluation.thresholds import apply_thresholds, choose_thresholds

Y = np.array([1, 1, 0, 1, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cfg(target: str, value: float, **kw) -> dict:
    return {"default": {"target": target, "value": value}, "jurisdictions": {}, "min_positives": 1, **kw}


def one(target: str, value: float) -> dict:
    """Threshold entry for a single jurisdiction 'US' holding all of (Y, S)."""
    return choose_thresholds(S, Y, ["US"] * len(S), cfg(target, value))["US"]


# ----------------------------------------------------------------------------- metrics
def test_at_threshold_counts():
    m = at_threshold(Y, S, 0.6)
    assert (m["tp"], m["fp"], m["fn"], m["alerts"]) == (3, 1, 0, 4)
    assert m["precision"] == 0.75 and m["recall"] == 1.0 and m["alert_rate"] == 0.5
    assert m["f1"] == pytest.approx(6 / 7)


def test_zero_alerts_precision_is_zero_and_no_positives_recall_is_none():
    m = at_threshold(Y, S, 2.0)
    assert m["alerts"] == 0 and m["precision"] == 0.0 and m["recall"] == 0.0
    m = at_threshold(np.zeros(3, int), [0.1, 0.5, 0.9], 0.5)
    assert m["recall"] is None and m["f1"] is None and m["precision"] == 0.0


def test_aucs_and_single_class():
    assert pr_auc(Y, S) == pytest.approx((1 + 1 + 0.75) / 3)  # AP = mean precision at each positive
    assert roc_auc(Y, S) == pytest.approx(14 / 15)  # 14 of 15 (pos, neg) pairs ordered correctly
    assert pr_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert roc_auc([1, 1], [0.1, 0.2]) is None


def test_recall_at_precision():
    got = recall_at_precision(Y, S, [0.5, 0.75, 0.8, 1.0])
    assert got == {"0.5": 1.0, "0.75": 1.0, "0.8": pytest.approx(2 / 3), "1.0": pytest.approx(2 / 3)}
    # Top score negative: best precision anywhere is 2/3, so 0.9 is unattainable.
    y2 = np.array([0, 1, 1, 0, 1, 0, 0, 0])
    assert recall_at_precision(y2, S, [0.9])["0.9"] is None


def test_per_typology_recall_counts():
    y = [1, 1, 1, 1, 0, 0]
    alert = [True, False, True, True, True, False]
    typ = np.array(["fan_in", "fan_in", "cycle", None, "cycle", None], dtype=object)
    assert per_typology_recall(y, alert, typ) == {
        "fan_in": {"positives": 2, "detected": 1, "recall": 0.5},
        "cycle": {"positives": 1, "detected": 1, "recall": 1.0},  # the negative "cycle" is ignored
        "unknown": {"positives": 1, "detected": 1, "recall": 1.0},
    }


# ----------------------------------------------------------------------------- thresholds
def test_precision_target():
    e = one("precision", 0.75)
    assert e["threshold"] == 0.6 and e["precision"] == 0.75 and e["recall"] == 1.0
    assert e["fallback"] is None and e["note"] is None and e["pooled"] is False


def test_precision_target_099_reached_at_08():
    # Precision 1.0 at .9 and .8: the lowest such threshold (most recall) is .8.
    e = one("precision", 0.99)
    assert e["threshold"] == 0.8 and e["precision"] == 1.0 and e["recall"] == pytest.approx(2 / 3)


def test_unattainable_precision_falls_back_to_best_f1():
    # Top score negative: precision .9 is never reached. F1 = 2TP/(alerts+3) per threshold:
    # .9:0 .8:.4 .7:.667 .6:.571 .5:.75 .4:.667 ... -> best-F1 threshold .5 (P .6, R 1).
    y2 = np.array([0, 1, 1, 0, 1, 0, 0, 0])
    e = choose_thresholds(S, y2, ["US"] * 8, cfg("precision", 0.9))["US"]
    assert e["threshold"] == 0.5 and e["fallback"] == "best_f1"
    assert e["precision"] == 0.6 and e["recall"] == 1.0 and e["f1"] == 0.75
    assert "not reached" in e["note"] and "best-F1" in e["note"]


def test_recall_target_and_fixed():
    e = one("recall", 0.6)
    assert e["threshold"] == 0.8 and e["recall"] == pytest.approx(2 / 3) and e["precision"] == 1.0
    e = one("fixed", 0.55)
    assert e["threshold"] == 0.55 and e["alerts"] == 4 and e["precision"] == 0.75 and e["fallback"] is None


def _per_jurisdiction_data():
    """US = (Y, S) (3 positives); DE = 2 rows with 1 positive, too few on its own.

    Pooled, sorted:  .95 .9 .8 .7 .6 .5 .4 .35 .3 .2
             label:   0   1  1  0  1  0  0  1   0  0      (4 positives)
    """
    score = np.r_[S, 0.35, 0.95]
    y = np.r_[Y, 1, 0]
    jur = ["US"] * 8 + ["DE", "DE"]
    config = {
        "default": {"target": "precision", "value": 0.75},
        "jurisdictions": {"DE": {"target": "recall", "value": 0.5}, "GB": {"target": "fixed", "value": 0.45}},
        "min_positives": 2,
    }
    return score, y, jur, config


def test_per_jurisdiction_with_pooling_and_fallback():
    score, y, jur, config = _per_jurisdiction_data()
    th = choose_thresholds(score, y, jur, config)
    assert set(th) == {"US", "DE", "GB", "*"}
    # US stands alone (3 positives >= 2): precision .75 on its own scores -> .6.
    assert th["US"]["threshold"] == 0.6 and not th["US"]["pooled"] and th["US"]["n"] == 8
    # DE has 1 positive < 2: pooled; recall >= .5 on pooled scores -> .8 (own scores would give .35).
    de = th["DE"]
    assert de["pooled"] and de["threshold"] == 0.8 and de["recall"] == 0.5
    assert (de["n"], de["positives"], de["basis_n"], de["basis_positives"]) == (2, 1, 10, 4)
    assert "min_positives" in de["note"]
    # GB is configured but absent: pooled, fixed .45 -> 6 alerts, 3 true.
    assert th["GB"]["pooled"] and th["GB"]["threshold"] == 0.45 and th["GB"]["precision"] == 0.5
    # "*": default precision .75 on pooled scores is unattainable (max 2/3) -> best F1 = 2/3,
    # tied between .6 and .35; the tie goes to the higher threshold.
    star = th["*"]
    assert star["pooled"] and star["fallback"] == "best_f1" and star["threshold"] == 0.6
    assert star["f1"] == pytest.approx(2 / 3)


def test_thresholds_reproduce_their_figures_exactly():
    """score >= threshold on the basis scores gives exactly the recorded figures."""
    rng = np.random.default_rng(7)
    score = np.round(rng.random(400), 2)  # many ties on purpose
    y = (rng.random(400) < 0.15 + 0.6 * score**3).astype(int)
    jur = rng.choice(["US", "DE", "FR"], 400)
    for target, value in [("precision", 0.3), ("precision", 0.55), ("precision", 0.999),
                          ("recall", 0.5), ("recall", 0.9), ("fixed", 0.37)]:
        th = choose_thresholds(score, y, jur, cfg(target, value, min_positives=5))
        for key, e in th.items():
            basis = np.ones(400, bool) if e["pooled"] else jur == key
            m = at_threshold(y[basis], score[basis], e["threshold"])
            assert (m["precision"], m["recall"], m["f1"]) == (e["precision"], e["recall"], e["f1"])
            if target == "fixed":
                continue
            assert e["threshold"] in set(score[basis].tolist())
            if e["fallback"]:
                continue
            s_b, y_b = score[basis], y[basis]
            if target == "precision":  # no lower score value also meets the target
                lower = [t for t in set(s_b.tolist()) if t < e["threshold"]]
                assert all(at_threshold(y_b, s_b, t)["precision"] < value for t in lower)
            else:  # no higher score value also meets the target
                higher = [t for t in set(s_b.tolist()) if t > e["threshold"]]
                assert all(at_threshold(y_b, s_b, t)["recall"] < value for t in higher)


def test_apply_thresholds_unseen_jurisdiction_uses_default():
    score, y, jur, config = _per_jurisdiction_data()
    th = choose_thresholds(score, y, jur, config)
    thr, alert = apply_thresholds([0.6, 0.79, 0.45, 0.6, 0.59], ["US", "DE", "GB", "FR", None], th)
    assert thr.tolist() == [0.6, 0.8, 0.45, 0.6, 0.6]
    assert alert.tolist() == [True, False, True, True, False]
    with pytest.raises(ValueError, match="no threshold"):
        apply_thresholds([0.5], ["FR"], {"US": 0.5})


def test_config_objects_and_bad_target():
    typed = ThresholdsConfig(default=ThresholdRule(ThresholdTarget.precision, 0.75), min_positives=1)
    assert choose_thresholds(S, Y, ["US"] * 8, typed)["US"]["threshold"] == 0.6
    assert choose_thresholds(S, Y, ["US"] * 8, OmegaConf.structured(typed))["US"]["threshold"] == 0.6
    with pytest.raises(ConfigError, match=r"thresholds.jurisdictions.DE.target"):
        choose_thresholds(S, Y, ["US"] * 8, {"jurisdictions": {"DE": {"target": "precison", "value": 0.5}}})


# ----------------------------------------------------------------------------- baseline
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _events() -> pl.DataFrame:
    """Sender a: two events at T0 (same instant), then T0+1h, T0+24h, T0+25h; b once. Shuffled."""
    rows = [  # event_id, hours after T0, sender, amount, expected velocity count
        ("a1", 0, "a", 9_000.00, 0),    # structuring lower edge (inclusive)
        ("a2", 0, "a", 8_999.99, 0),    # just below the band; same instant as a1: sees nothing
        ("a3", 1, "a", 9_999.99, 2),    # structuring upper edge (exclusive threshold not reached)
        ("a4", 24, "a", 10_000.0, 3),   # at the reporting threshold: not structuring; [T0, T0+24h)
        ("a5", 25, "a", 120.0, 2),      # [T0+1h, T0+25h): a3, a4
        ("b1", 1, "b", 50_000.0, 0),    # high amount; a's events do not count for b
    ]
    order = [3, 0, 5, 2, 4, 1]
    rows = [rows[i] for i in order]
    return pl.DataFrame({
        "event_id": [r[0] for r in rows],
        "event_time": [T0 + timedelta(hours=r[1]) for r in rows],
        "src_account": [r[2] for r in rows],
        "amount": [r[3] for r in rows],
        "expected_velocity": [r[4] for r in rows],
    })


def test_velocity_counts_left_closed_and_same_instant():
    ev = _events()
    assert velocity_counts(ev, "24h").to_list() == ev["expected_velocity"].to_list()


def test_rule_baseline_rules_and_edges():
    ev = _events()
    out = rule_baseline(ev, high_amount=20_000.0, velocity_count=2)
    assert out["event_id"].to_list() == ev["event_id"].to_list()  # input order kept
    fired = dict(zip(out["event_id"].to_list(), out["rules_fired"].to_list()))
    assert fired == {
        "a1": ["structuring"], "a2": [], "a3": ["velocity", "structuring"],
        "a4": ["velocity"], "a5": ["velocity"], "b1": ["high_amount"],
    }
    score = dict(zip(out["event_id"].to_list(), out["baseline_score"].to_list()))
    assert score["a3"] == 2 / 3 and score["a2"] == 0.0 and score["b1"] == BASELINE_THRESHOLD


def test_rule_baseline_default_high_amount_is_995th_percentile():
    ev = _events()
    cut = fit_high_amount(ev)
    assert 10_000.0 < cut < 50_000.0  # linear 99.5th percentile of 6 amounts sits below the max
    out = rule_baseline(ev, velocity_count=99)
    hits = out.filter(pl.col("rules_fired").list.contains("high_amount"))["event_id"].to_list()
    assert hits == ["b1"]


# ----------------------------------------------------------------------------- report
def _report_inputs():
    score, y, jur, config = _per_jurisdiction_data()
    th = choose_thresholds(score, y, jur, config)
    typ = np.array(["fan_in", "cycle", None, "fan_in", None, None, None, None, "structuring", None], dtype=object)
    base = np.array([1, 0, 0, 1, 1, 0, 0, 0, 2, 0]) / 3
    return score, y, jur, typ, th, base


def test_evaluation_report_keys_and_operating_point():
    score, y, jur, typ, th, base = _report_inputs()
    m = evaluation_report(y, score, jur, typ, th, [0.5, 0.9], base, base >= BASELINE_THRESHOLD)
    for key in ("pr_auc", "roc_auc", "recall_at_precision", "operating_point", "per_jurisdiction",
                "per_typology_recall", "thresholds", "baseline", "n_events", "n_positive"):
        assert key in m
    # US alerts at >= .6 (.9 .8 .7 .6), DE at >= .8 (.95): 5 alerts, 3 true, 1 positive (.35) missed.
    op = m["operating_point"]
    assert (op["alerts"], op["tp"], op["fn"]) == (5, 3, 1) and op["alert_rate"] == 0.5
    assert m["per_jurisdiction"]["DE"]["threshold"] == 0.8 and m["per_jurisdiction"]["DE"]["alerts"] == 1
    assert m["per_typology_recall"]["structuring"] == {"positives": 1, "detected": 0, "recall": 0.0}
    b = m["baseline"]
    assert b["operating_point"]["alerts"] == 4 and b["per_typology_recall"]["structuring"]["detected"] == 1
    assert set(b) >= {"pr_auc", "roc_auc", "operating_point", "per_typology_recall", "recall_at_precision"}
    assert (m["n_events"], m["n_positive"]) == (10, 4)


def test_json_ready_rounds_and_nulls():
    got = json_ready({"a": float("nan"), "b": np.float32(0.1234567891), "c": np.int64(3), 4: [np.inf, True]})
    assert got == {"a": None, "b": 0.123457, "c": 3, "4": [None, True]}


def test_write_reports_files(tmp_path):
    score, y, jur, typ, th, base = _report_inputs()
    m = evaluation_report(y, score, jur, typ, th, [0.5, 0.9], base, None)
    m["extra_nan"] = float("nan")
    context = {"experiment": "unit", "model": "lightgbm", "weighting": "balanced", "data_rows": 10, "run_id": "r1"}
    paths = write_reports(tmp_path / "reports", m, context, y, score, base, {"amount": 3.0, "velocity": 1.5})
    assert set(paths) == {"metrics", "pr_curve", "feature_importance", "summary"}
    text = (tmp_path / "reports" / "metrics.json").read_text()
    loaded = json.loads(text)
    assert loaded["extra_nan"] is None and "NaN" not in text
    assert list(loaded) == sorted(loaded)
    assert loaded["thresholds"]["DE"]["precision"] == 0.666667
    for name in ("pr_curve", "feature_importance"):
        data = open(paths[name], "rb").read()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000
    md = open(paths["summary"]).read()
    for needle in ("PR-AUC", "rule baseline", "best_f1", "structuring", "run_id", "`DE`"):
        assert needle in md


def test_empty_importance_and_summary_without_baseline(tmp_path):
    score, y, jur, typ, th, _ = _report_inputs()
    m = evaluation_report(y, score, jur, typ, th, [0.5], None, None)
    assert m["baseline"] is None
    paths = write_reports(tmp_path, m, {"experiment": "x"}, y, score, None, {})
    data = open(paths["feature_importance"], "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 2_000
    assert "—" in summary_markdown(m, {"experiment": "x"})
    assert alert_metrics([1, 0], [False, False])["precision"] == 0.0
