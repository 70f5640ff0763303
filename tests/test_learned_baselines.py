"""Learned baselines, lift, and instance- and account-level figures on hand-made frames.

The instance frame (nine test events) is small enough to check by hand:

    event  src dst label typology instance   op alert   score
    e0     A   B   1     fan_in   I1         yes        .90
    e1     C   B   1     fan_in   I1         no         .70
    e2     D   E   1     cycle    I2         no         .80
    e3     E   D   1     cycle    I2         no         .40
    e4     F   G   1     fan_in   I3         no         .30
    e5     H   K   0                         yes        .95
    e6     H   L   0                         yes        .85
    e7     B   M   0                         yes        .60
    e8     N   N   0                         yes        .50

Laundering accounts (either end of a label-1 event): A B C D E F G; the others are clean.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hydra.errors import ConfigCompositionException

from aml_pipeline.evaluation.instances import UNAVAILABLE, instance_figures, instance_report, threshold_at_precision
from aml_pipeline.evaluation.learned_baselines import (
    DEFAULT_EARLY_STOPPING,
    BaselineModel,
    CategoryCodes,
    baseline_table,
    fit_baseline,
    learned_baselines,
    window_frame,
)
from aml_pipeline.evaluation.report import evaluation_report, lift_line, summary_markdown
from aml_pipeline.models.weighting import InverseFrequency

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)

EVENTS = pl.DataFrame({
    "event_id": [f"e{i}" for i in range(9)],
    "src_account": ["A", "C", "D", "E", "F", "H", "H", "B", "N"],
    "dst_account": ["B", "B", "E", "D", "G", "K", "L", "M", "N"],
    "label": [1, 1, 1, 1, 1, 0, 0, 0, 0],
    "typology": ["fan_in", "fan_in", "cycle", "cycle", "fan_in", None, None, None, None],
    "instance_id": ["I1", "I1", "I2", "I2", "I3", None, None, None, None],
})
OP_ALERT = np.array([1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
SCORE = np.array([0.90, 0.70, 0.80, 0.40, 0.30, 0.95, 0.85, 0.60, 0.50])


# ----------------------------------------------------------------------------- instances
def test_instance_recall_and_clean_accounts_at_the_operating_point():
    f = instance_figures(EVENTS, OP_ALERT)
    assert (f["alerts"], f["precision"], f["recall"]) == (5, 0.2, 0.2)
    ir = f["instance_recall"]
    assert ir["overall"] == {"instances": 3, "detected": 1, "recall": pytest.approx(1 / 3)}  # only I1 (via e0)
    assert ir["per_typology"]["fan_in"] == {"instances": 2, "detected": 1, "recall": 0.5}
    assert ir["per_typology"]["cycle"] == {"instances": 1, "detected": 0, "recall": 0.0}
    a = f["accounts"]
    # alerted accounts: A1 B2 (e0, e7) H2 (e5, e6) K1 L1 M1 N1 (a self-transfer counts once)
    assert a["alerted_accounts"] == 7 and a["alerts_per_account_max"] == 2
    assert a["alerts_per_account_mean"] == pytest.approx(9 / 7)
    # e5, e6, e8 touch only clean accounts; e7 reaches B, which received laundering
    assert a["alerts_on_clean_accounts"] == 3 and a["clean_alert_share"] == pytest.approx(3 / 5)
    assert a["clean_accounts_alerted"] == 5 and a["laundering_accounts"] == 7  # H K L M N; A..G


def test_instance_report_at_the_test_threshold_reaching_a_precision():
    # by score: e5 e0 e6 e2 e1 | e7 e8 e3 e4 -> precision 0, 1/2, 1/3, 2/4, 3/5, 3/6, 3/7, 4/8, 5/9
    assert threshold_at_precision(EVENTS["label"], SCORE, 0.6) == 0.70
    assert threshold_at_precision(EVENTS["label"], SCORE, 0.99) is None
    r = instance_report(EVENTS, SCORE, OP_ALERT, precision=0.6)
    assert r["available"] and r["instances"] == 3 and r["note"] is None
    assert r["operating_point"] == instance_figures(EVENTS, OP_ALERT)
    at = r["at_precision"]
    assert at["threshold"] == 0.70 and at["target_precision"] == 0.6
    assert (at["alerts"], at["precision"], at["recall"]) == (5, 0.6, 0.6)
    assert at["instance_recall"]["overall"]["detected"] == 2  # I1 and I2; I3 (e4 at .30) missed
    assert at["instance_recall"]["per_typology"]["cycle"]["recall"] == 1.0
    a = at["accounts"]  # e5 e0 e6 e2 e1: H2 K1 A1 B2 L1 D1 E1 C1; clean: e5, e6
    assert (a["alerted_accounts"], a["alerts_per_account_max"], a["alerts_on_clean_accounts"], a["clean_accounts_alerted"]) == (8, 2, 2, 3)
    unreachable = instance_report(EVENTS, SCORE, OP_ALERT, precision=0.99)["at_precision"]
    assert unreachable == {"target_precision": 0.99, "threshold": None}


def test_sources_without_instance_ids_report_unavailable():
    for frame in (EVENTS.drop("instance_id"), EVENTS.with_columns(pl.lit(None, pl.String).alias("instance_id"))):
        r = instance_report(frame, SCORE, OP_ALERT)
        assert not r["available"] and r["note"] == UNAVAILABLE and r["instances"] is None
        assert r["operating_point"]["instance_recall"] is None
        assert r["operating_point"]["accounts"]["alerts_on_clean_accounts"] == 3  # accounts still judged
        assert "instance recall | not available" in summary_markdown(_report(instances=r), {})


# ----------------------------------------------------------------------------- report keys
def _report(learned=None, instances=None) -> dict:
    y = EVENTS["label"].to_numpy()
    return evaluation_report(y, SCORE, ["US"] * 9, EVENTS["typology"].to_numpy(), {"*": {"threshold": 0.5}}, [0.5],
                             baseline_score=np.linspace(0, 1, 9), learned=learned, instances=instances)


def test_report_holds_baselines_lift_and_instances():
    learned = {"raw": {"pr_auc": 0.4}, "raw_windows": {"pr_auc": 0.5, "valid_pr_auc": 0.55, "rounds": 12}}
    m = _report(learned, instance_report(EVENTS, SCORE, OP_ALERT))
    assert m["baselines"]["rules"] == m["baseline"] and m["baseline"]["pr_auc"] is not None  # old key kept
    assert m["lift"] == {"raw": pytest.approx(m["pr_auc"] / 0.4), "raw_windows": pytest.approx(m["pr_auc"] / 0.5)}
    label, text = lift_line(m)
    assert label == "lift over raw+windows"
    assert text == f"{m['pr_auc'] / 0.5:.2f}×  (raw+windows 0.5000, raw 0.4000, rules {m['baseline']['pr_auc']:.4f})"
    md = summary_markdown(m, {"experiment": "t"})
    assert f"**lift over raw+windows: {text}**" in md and "## Instances and accounts" in md
    assert "| instance recall, fan_in | 0.5000 (1/2) |" in md
    assert lift_line(_report()) is None and _report()["lift"] == {}


# ----------------------------------------------------------------------------- learned baselines
def _split_events(n: int = 900, seed: int = 0) -> pl.DataFrame:
    """Events over 30 days, the first 60% of time train, then 20% valid, 20% test; a wire
    over 5,000 is laundering with probability 0.7, anything else with 0.02."""
    rng = np.random.default_rng(seed)
    minutes = np.sort(rng.integers(0, 30 * 24 * 60, n))
    channel = rng.choice(["wire", "card", "cash"], n)
    amount = rng.lognormal(7.5, 1.0, n)
    p = np.where((channel == "wire") & (amount > 5000), 0.7, 0.02)
    label = (rng.random(n) < p).astype(np.int8)
    split = np.where(minutes < 18 * 24 * 60, "train", np.where(minutes < 24 * 24 * 60, "valid", "test"))
    return pl.DataFrame({
        "event_id": [f"x{i:04d}" for i in range(n)],
        "event_time": [T0 + timedelta(minutes=int(m)) for m in minutes],
        "src_account": [f"A{i:02d}" for i in rng.integers(0, 40, n)],
        "dst_account": [f"A{i:02d}" for i in rng.integers(0, 40, n)],
        "amount": amount, "channel": channel, "currency": rng.choice(["USD", "EUR"], n),
        "jurisdiction": rng.choice(["US", "GB"], n), "label": label, "split": split,
    })


SPEC = BaselineModel(params={"n_estimators": 60, "learning_rate": 0.1, "min_child_samples": 5, "num_threads": 1,
                             "deterministic": True, "force_row_wise": True, "verbosity": -1}, early_stopping_rounds=10)


def _model_text(events: pl.DataFrame, name: str = "raw") -> tuple[str, int | None]:
    table, numeric, categorical = baseline_table(events, name)
    fitted = fit_baseline(table, name, numeric, categorical, InverseFrequency(), SPEC)
    return fitted.model._model.model_to_string(), fitted.model.best_iteration


def test_test_labels_are_never_read_and_rounds_come_from_validation():
    events = _split_events()
    text, rounds = _model_text(events)
    is_test, is_valid = pl.col("split") == "test", pl.col("split") == "valid"
    shuffled = events.with_columns(pl.when(is_test).then(1 - pl.col("label")).otherwise(pl.col("label")).alias("label"))
    assert _model_text(shuffled) == (text, rounds)  # test labels flipped: the very same model
    inverted = events.with_columns(pl.when(is_valid).then(1 - pl.col("label")).otherwise(pl.col("label")).alias("label"))
    text_inv, rounds_inv = _model_text(inverted)
    assert rounds is not None and rounds_inv < rounds  # validation decides when to stop
    assert text_inv != text


def test_learned_baselines_blocks_and_scores():
    events = _split_events()
    blocks, scores = learned_baselines(events, ["raw", "raw_windows"], InverseFrequency(), SPEC, [0.5])
    raw, windows = blocks["raw"], blocks["raw_windows"]
    assert raw["features"] == ["amount", "hour", "weekday", "channel", "currency", "jurisdiction"]
    assert windows["features"][:3] == ["amount", "hour", "weekday"] and "src_out_count_24h" in windows["features"]
    assert "dst_in_sum_7d" in windows["features"] and len(windows["features"]) == 6 + 16
    assert not any("account" in f for f in windows["features"])  # ids never used
    assert raw["pr_auc"] > 0.3 and 1 <= raw["rounds"] <= 60 and raw["valid_pr_auc"] is not None
    assert set(raw["recall_at_precision"]) == {"0.5"}
    test_ids = events.filter(pl.col("split") == "test")["event_id"]
    assert scores["raw"]["event_id"].to_list() == test_ids.to_list()


def test_window_columns_see_only_strictly_earlier_events():
    t = [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=1), T0 + timedelta(days=7, hours=1)]
    events = pl.DataFrame({"event_id": ["a", "b", "c", "d"], "event_time": t, "src_account": ["S"] * 4,
                           "dst_account": ["R", "R", "Q", "R"], "amount": [10.0, 20.0, 40.0, 80.0]})
    w = window_frame(events)
    assert w["src_out_count_24h"].to_list() == [0, 1, 1, 0]  # b and c share an instant: neither sees the other
    assert w["src_out_sum_7d"].to_list() == [0.0, 10.0, 10.0, 60.0]  # exactly 7 d after b and c: they count
    assert w["dst_in_count_7d"].to_list() == [0, 1, 0, 1]  # R at d: b only (a is 7 d 1 h earlier)


def test_category_codes_are_learnt_on_train_and_unseen_values_are_missing():
    train = pl.DataFrame({"channel": ["wire", "card", "wire"], "region": [None, None, None]})
    codes = CategoryCodes(["channel", "region"]).fit(train)
    assert codes.codes_ == {"channel": {"card": 0, "wire": 1}}  # an all-null column is dropped
    out = codes.transform(pl.DataFrame({"channel": ["card", "cash", "wire"], "region": ["x", "y", "z"]}))
    assert out.columns == ["channel"] and out["channel"].to_list() == [0.0, None, 1.0]


def test_baseline_model_follows_the_configured_model(compose_cfg):
    lgbm = BaselineModel.from_config(compose_cfg(["model.params.num_leaves=7", "model.early_stopping_rounds=0"]).model)
    assert lgbm.params["num_leaves"] == 7 and lgbm.early_stopping_rounds == DEFAULT_EARLY_STOPPING
    other = BaselineModel.from_config(compose_cfg(["model=sklearn_lr", "seed=3"]).model, seed=3)
    assert other.params == {} and other.seed == 3


def test_baselines_see_the_plans_reporting_currency(compose_cfg, tmp_path):
    """With ``features.fx`` the baselines see converted amounts, exactly as if the amounts
    had been converted by hand, and ``task=evaluate`` passes the plan's table to them."""
    from aml_pipeline.errors import UserError
    from aml_pipeline.features.fx import FxTable
    from aml_pipeline.tasks.evaluate import learned

    events = _split_events()
    fx = FxTable("USD", {"EUR": 1.08})
    by_hand = events.with_columns(pl.when(pl.col("currency") == "EUR").then(pl.col("amount") * 1.08)
                                  .otherwise(pl.col("amount")).alias("amount"))
    converted, numeric, categorical = baseline_table(events, "raw_windows", fx)
    assert converted.equals(baseline_table(by_hand, "raw_windows")[0])
    assert (numeric, categorical) == baseline_table(by_hand, "raw_windows")[1:]
    plain = baseline_table(events, "raw_windows")[0]
    eur = (events["currency"] == "EUR").to_numpy()
    assert np.allclose(converted["amount"].to_numpy()[eur], 1.08 * plain["amount"].to_numpy()[eur])
    assert converted["amount"].to_numpy()[~eur].tolist() == plain["amount"].to_numpy()[~eur].tolist()
    assert not converted["src_out_sum_7d"].equals(plain["src_out_sum_7d"])  # the windows add converted amounts
    assert converted["currency"].to_list() == events["currency"].to_list()  # the currency stays a column

    spec = BaselineModel(params=SPEC.params, early_stopping_rounds=SPEC.early_stopping_rounds)
    blocks, scores = learned_baselines(events, ["raw_windows"], InverseFrequency(), spec, [0.5], fx=fx)
    hand_blocks, hand_scores = learned_baselines(by_hand, ["raw_windows"], InverseFrequency(), spec, [0.5])
    assert blocks == hand_blocks and scores["raw_windows"].equals(hand_scores["raw_windows"])
    with pytest.raises(UserError, match="EUR"):  # a currency with no rate is an error, never 1:1
        learned_baselines(events, ["raw"], InverseFrequency(), spec, [0.5], fx=FxTable("USD", {}))

    # the task's path: events without split, the split read from the feature table
    features = tmp_path / "features.parquet"
    events.select("event_id", "split").write_parquet(features)
    test = events.filter(pl.col("split") == "test")
    cfg = compose_cfg(["evaluation.baselines=[raw_windows]", "model.params.n_estimators=60", "model.params.num_threads=1"])
    task_blocks, task_scores = learned(cfg, events.drop("split"), features, test, fx)
    hand_task = learned(cfg, by_hand.drop("split"), features, test)
    assert task_blocks == hand_task[0] and np.array_equal(task_scores["raw_windows"], hand_task[1]["raw_windows"])
    assert task_blocks != learned(cfg, events.drop("split"), features, test)[0]


def test_evaluation_config_switch(compose_cfg):
    assert [b.value for b in compose_cfg([]).evaluation.baselines] == ["raw", "raw_windows"]
    assert list(compose_cfg(["evaluation=fast"]).evaluation.baselines) == []
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["evaluation.baselines=[raw,rules]"])
    cause = str(info.value.__cause__)
    assert "evaluation.baselines[1]" in cause and "raw, raw_windows" in cause
