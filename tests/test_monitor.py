"""task=monitor: drift against the bundle's reference and performance over mature labels.

The distances, bins and label maturity are checked on small hand-made inputs whose
values can be worked out on paper. End to end, one small bundle is trained on the
simulator; the same world scored over the reference's dates shows no drift, and the same
world with ``source.shift`` (amounts x3, part of p2p to wire and of card to p2p, from
the validation window's first day on) is flagged, naming the amount and channel features
and not the ones the shift leaves alone.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.monitoring.distances import js_distance, psi
from aml_pipeline.monitoring.drift import Levels, categorical_drift, numeric_drift
from aml_pipeline.monitoring.histograms import categorical_reference, merge, merge_groups, numeric_reference
from aml_pipeline.monitoring.labels import performance
from aml_pipeline.timeutil import config_duration
from aml_pipeline.monitoring.window import read_window
from aml_pipeline.sources.synthetic import SyntheticSource
from aml_pipeline.tasks import run_task
from aml_pipeline.tasks.monitor import monitor
from tests.conftest import SMALL_RUN, compose_config, run_cli, train_small_run

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
SHIFT = ["source.shift.amount_scale=3", "source.shift.channels={p2p:wire,card:p2p}"]


# ----------------------------------------------------------------------------- by hand
def test_psi_and_js_distance_by_hand():
    # p = (1/2, 1/2), q = (1/4, 3/4):
    # PSI = (1/4 - 1/2) ln(1/2) + (3/4 - 1/2) ln(3/2) = 0.25 (ln 2 + ln 1.5) = 0.274653
    assert psi([50, 50], [25, 75]) == pytest.approx(0.25 * (math.log(2) + math.log(1.5)), abs=1e-12)
    # m = (3/8, 5/8); KL(p||m) = 1/2 log2(4/3) + 1/2 log2(4/5), KL(q||m) = 1/4 log2(2/3) + 3/4 log2(6/5)
    jsd = (0.5 * math.log2(4 / 3) + 0.5 * math.log2(4 / 5) + 0.25 * math.log2(2 / 3) + 0.75 * math.log2(6 / 5)) / 2
    assert js_distance([50, 50], [25, 75]) == pytest.approx(math.sqrt(jsd), abs=1e-12)
    assert js_distance([50, 50], [25, 75]) == pytest.approx(0.220896, abs=1e-6)
    # identical shares (counts differ): both 0; disjoint: JS is 1, PSI is finite thanks to the floor
    assert psi([2, 6, 2], [10, 30, 10]) == 0.0 and js_distance([2, 6, 2], [10, 30, 10]) == 0.0
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert psi([1, 0], [0, 1]) == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))
    # symmetric JS, asymmetric-looking inputs give the same PSI both ways (PSI is symmetric too)
    assert js_distance([1, 3], [3, 1]) == pytest.approx(js_distance([3, 1], [1, 3]))


def test_quantile_bins_missing_and_merging_by_hand():
    values = np.r_[np.arange(1.0, 101.0), [np.nan, np.nan]]
    ref = numeric_reference(values, bins=4)
    # quantiles of 1..100 at 1/4, 2/4, 3/4 (linear): 25.75, 50.5, 75.25; 25 values per bin
    assert ref["edges"] == [25.75, 50.5, 75.25] and ref["counts"] == [25, 25, 25, 25]
    assert ref["missing"] == 2 and ref["n"] == 102 and (ref["min"], ref["max"]) == (1.0, 100.0)
    # four equal fine bins merged into two groups of equal mass
    groups = merge_groups(ref["counts"], 2)
    assert groups.tolist() == [0, 0, 1, 1] and merge(ref["counts"], groups).tolist() == [50, 50]
    # a bin joins the group its middle falls in (cumulative share x k, floored); a point
    # mass larger than 1/k stays one bin, so fewer groups result, their ids consecutive:
    # middles 0.35, 0.75, 0.85, 0.95 -> 1, 3, 3, 3 -> [0, 1, 1, 1]
    assert merge_groups([70, 10, 10, 10], 4).tolist() == [0, 1, 1, 1]
    # middles 0.05, 0.15, 0.55, 0.95 -> 0, 0, 2, 3 -> [0, 0, 1, 2]
    assert merge_groups([10, 10, 70, 10], 4).tolist() == [0, 0, 1, 2]


def test_numeric_and_categorical_drift_by_hand():
    ref = numeric_reference(np.arange(1.0, 101.0), bins=4)
    same = numeric_drift(ref, np.arange(1.0, 101.0), bins=4)
    assert same["psi"] == 0.0 and same["js"] == 0.0 and same["out_of_range"] == 0.0
    # 100 values: half in the lowest quarter, 10 above the reference's max, 10 missing
    current = np.r_[np.full(50, 5.0), np.full(30, 60.0), np.full(10, 500.0), np.full(10, np.nan)]
    d = numeric_drift(ref, current, bins=4)
    assert d["histogram"]["current"] == [50, 0, 30, 10, 10] and d["histogram"]["reference"] == [25, 25, 25, 25, 0]
    assert d["out_of_range"] == pytest.approx(10 / 90) and d["missing_current"] == pytest.approx(0.1)
    assert d["psi"] == pytest.approx(psi([25, 25, 25, 25, 0], [50, 0, 30, 10, 10]))
    cref = categorical_reference([0, 0, 1, 1, 2, 2, 2, 2])
    c = categorical_drift(cref, [0, 1, 2, 2, 5, 5, None, 7])
    # 7 present values, 3 of them (5, 5, 7) never seen: novelty 3/7; missing 1/8
    assert c["novelty"] == pytest.approx(3 / 7) and c["new_values"] == ["5", "7"]
    assert c["missing_current"] == pytest.approx(1 / 8)
    assert c["histogram"]["labels"] == ["0", "1", "2", "<new>", "missing"]
    assert c["histogram"]["current"] == [1, 1, 2, 3, 1] and c["histogram"]["reference"] == [2, 2, 4, 0, 0]
    levels = Levels({"psi": (0.1, 0.25), "js": (0.1, 0.2), "missing": (0.05, 0.2), "out_of_range": (0.05, 0.2),
                     "novelty": (0.01, 0.05)})
    assert levels.status("psi", 0.09) == "ok" and levels.status("psi", 0.1) == "warn" and levels.status("psi", 0.3) == "alert"


def test_label_maturity_by_hand():
    """Four events on days 1, 10, 20, 40; judged on day 45 with a 30-day delay.

    Mature: day 1 (31 <= 45) and day 10 (40 <= 45); days 20 and 40 are immature (half the
    window). Day 1 is a positive labelled on day 25 (known); day 10's positive is labelled
    on day 50, after as_of, so it is not known and counts as negative; day 20's positive is
    known but immature, so left out. Alerts on days 1, 10, 20: over the mature events 2
    alerts, 1 true -> precision 1/2, recall 1/1."""
    day = lambda d: T0 + timedelta(days=d)  # noqa: E731
    window = pl.DataFrame({"event_id": ["a", "b", "c", "d"], "event_time": [day(1), day(10), day(20), day(40)],
                           "score": [0.9, 0.8, 0.7, 0.1], "alert": [True, True, True, False]})
    labels = pl.DataFrame({"event_id": ["a", "b", "c"], "label": [1, 1, 1],
                           "labelled_at": [day(25), day(50), day(22)]}).with_columns(pl.col("label").cast(pl.Int8))
    p = performance(window, labels, day(45), config_duration("30d", "monitor.label_delay"))
    assert (p["events"], p["immature_events"], p["immature_share"]) == (4, 2, 0.5)
    assert (p["mature_events"], p["positives"], p["alerts"], p["true_alerts"]) == (2, 1, 2, 1)
    assert p["precision"] == 0.5 and p["recall"] == 1.0 and p["labels_known"] == 2
    assert p["mature_until"] == day(15).isoformat()
    # a day later every label has arrived, but only what is mature counts: c (day 20) is not yet
    later = performance(window, labels, day(50), config_duration("30d", "monitor.label_delay"))
    assert later["mature_events"] == 3 and later["true_alerts"] == 3 and later["precision"] == 1.0
    assert later["labels_after_delay"] == 1  # b: labelled 40 days after it happened, past the 30-day delay
    assert config_duration("1d12h", "monitor.label_delay") == timedelta(hours=36)
    with pytest.raises(ConfigError, match="monitor.label_delay='30 days' is not a duration"):
        config_duration("30 days", "monitor.label_delay")


def test_shift_default_is_byte_identical_and_changes_only_what_it_says():
    kw = dict(n_accounts=300, days=10, seed=3, realism="realistic")
    plain = SyntheticSource(**kw).read()
    assert plain.equals(SyntheticSource(**kw, shift={"amount_scale": 1.0, "channels": None, "channel_share": 0.5,
                                                     "from_day": 0}).read())
    shifted = SyntheticSource(**kw, shift={"amount_scale": 2.0, "channels": {"p2p": "wire"}, "channel_share": 1.0,
                                           "from_day": 5}).read()
    j = plain.join(shifted, on="event_id", suffix="_s")
    assert j.height == plain.height and (j["event_time"] == j["event_time_s"]).all()
    cut = T0 + timedelta(days=5)
    before, after = j.filter(pl.col("event_time") < cut), j.filter(pl.col("event_time") >= cut)
    assert before["amount"].equals(before["amount_s"], check_names=False)
    assert (after["amount_s"] / after["amount"]).min() == pytest.approx(2.0, abs=0.01)
    assert after.filter(pl.col("channel") == "p2p")["channel_s"].unique().to_list() == ["wire"]
    assert before.filter(pl.col("channel") == "p2p")["channel_s"].unique().to_list() == ["p2p"]
    with pytest.raises(ConfigError, match="source.shift.channels.p2p: unknown channel 'fax'"):
        SyntheticSource(**kw, shift={"channels": {"p2p": "fax"}}).read()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small bundle, the same world scored, and the shifted world scored (from the
    validation window's first day on)."""
    root = tmp_path_factory.mktemp("monitor")
    paths, test_start, _ = train_small_run(root)
    split = json.loads((root / "data/features/split.json").read_text())
    bundle = root / "models/bundle"
    common = [*SMALL_RUN, *paths, "mlflow.enabled=false", f"bundle={bundle}"]
    run_task(compose_config([*common, "task=score", f"input={root / 'data/validated/transactions.parquet'}",
                             f"output={root / 'same.parquet'}"]))
    start_day = (datetime.fromisoformat(split["valid_start"]) - datetime.fromisoformat("2025-01-01T00:00:00+00:00")).days
    shifted_data = root / "shifted"
    run_task(compose_config([*SMALL_RUN, *SHIFT, f"source.shift.from_day={start_day}", f"paths.data_dir={shifted_data}",
                             "task=data"]))
    run_task(compose_config([*common, "task=score", f"input={shifted_data / 'validated/transactions.parquet'}",
                             f"output={root / 'shifted.parquet'}"]))
    window = [f"monitor.start={split['valid_start']}", f"monitor.end={test_start}"]
    return {"root": root, "common": common, "window": window, "bundle": bundle, "split": split}


def test_bundle_keeps_a_hashed_reference(world):
    manifest = json.loads((world["bundle"] / "manifest.json").read_text())
    assert "reference.json" in manifest["files"]
    ref = ModelBundle.load(world["bundle"]).reference
    assert ref["window"]["split"] == "valid" and ref["window"]["events"] == ref["score"]["n"] > 0
    assert set(ModelBundle.load(world["bundle"]).feature_columns()) <= set(ref["columns"])
    assert ref["columns"]["code_channel"]["kind"] == "categorical" and ref["columns"]["jurisdiction"]["kind"] == "categorical"
    assert ref["columns"]["log_amount"]["kind"] == "numeric" and len(ref["columns"]["log_amount"]["edges"]) > 10


def test_same_world_shows_no_drift(world):
    out = world["root"] / "reports/same"
    report = monitor(compose_config([*world["common"], *world["window"], "task=monitor",
                                     f"input={world['root'] / 'same.parquet'}", f"monitor.output={out}"]))
    assert report["drift_detected"] is False and report["exit_code"] == 0 and report["drifted"] == []
    assert report["window"]["events"] == report["reference"]["events"]  # the reference's own window, rescored
    columns = report["drift"]["columns"]
    assert max(r["psi"] for r in columns.values()) < 1e-9 and report["drift"]["score"]["psi"] < 1e-9
    assert report["alerts"]["alert_rate"] == pytest.approx(report["alerts"]["reference_alert_rate"])
    saved = json.loads((out / "monitor.json").read_text())
    assert saved["drift_detected"] is False and saved["exit_code"] == 0
    # every second event of the world: sampling noise only, below every warn level
    half = world["root"] / "half.parquet"
    pl.read_parquet(world["root"] / "same.parquet").sort("event_time", "event_id").gather_every(2).write_parquet(half)
    noisy = monitor(compose_config([*world["common"], *world["window"], "task=monitor", f"input={half}",
                                    f"monitor.output={out}/half"]))
    psis = [r["psi"] for r in noisy["drift"]["columns"].values()]
    assert noisy["drift_detected"] is False and noisy["warned"] == [] and 0 < max(psis) < 0.1


def test_shifted_world_is_flagged_with_its_features_named(world):
    out = world["root"] / "reports/shifted"
    res = run_cli(["task=monitor", *world["common"], *world["window"], f"input={world['root'] / 'shifted.parquet'}",
                   f"monitor.output={out}"], cwd=world["root"])
    assert res.returncode == 3, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: drift: ") and "crossed an alert level" in lines[0]
    report = json.loads((out / "monitor.json").read_text())
    assert report["drift_detected"] is True and report["exit_code"] == 3
    drifted = set(report["drifted"])
    assert {"log_amount", "code_channel"} <= drifted  # what the shift changed ...
    columns = report["drift"]["columns"]
    for untouched in ("hour", "weekday", "src_in_count_24h", "dst_out_count_7d", "jurisdiction"):
        assert columns[untouched]["psi"] < 1e-9 and untouched not in drifted  # ... and not what it left alone
    assert columns["log_amount"]["psi"] > 0.25 and columns["code_channel"]["statuses"]["psi"] == "alert"
    assert report["drift"]["score"]["psi"] > 0.01  # the scores moved too (how far depends on the model)
    page = (out / "monitor.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "DRIFT: " in page and "log_amount" in page
    for png in ("psi_per_feature.png", "score_distribution.png", "alert_rate.png", "precision_over_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # fail_on_drift=false: the same flag, exit 0
    quiet = monitor(compose_config([*world["common"], *world["window"], "task=monitor", "monitor.fail_on_drift=false",
                                    f"input={world['root'] / 'shifted.parquet'}", f"monitor.output={out}/quiet"]))
    assert quiet["drift_detected"] is True and quiet["exit_code"] == 0
    # too few events for monitor.min_events: measured and shown, not judged
    few = monitor(compose_config([*world["common"], *world["window"], "task=monitor", "monitor.min_events=100000",
                                  f"input={world['root'] / 'shifted.parquet'}", f"monitor.output={out}/few"]))
    assert few["judged"] is False and few["drift_detected"] is False and few["exit_code"] == 0
    assert few["drift"]["columns"]["log_amount"]["psi"] == pytest.approx(columns["log_amount"]["psi"])
    # excluding every drifted column (and the score) leaves nothing judged to flag
    excluded = ",".join(["score", *report["drifted"]])
    calm = monitor(compose_config([*world["common"], *world["window"], "task=monitor", f"monitor.exclude=[{excluded}]",
                                   f"input={world['root'] / 'shifted.parquet'}", f"monitor.output={out}/calm"]))
    assert calm["drift_detected"] is False and calm["drift"]["columns"]["log_amount"]["status"] == "excluded"


def test_performance_only_over_mature_labels(world):
    """Labels arrive 20 days after the event; judged 30 days (the delay) plus 2 days after
    the window's start, only the first 2 days of the window are mature."""
    root = world["root"]
    events = pl.read_parquet(root / "data/validated/transactions.parquet")
    labels = events.filter(pl.col("label") == 1).select(
        "event_id", "label", (pl.col("event_time") + pl.duration(days=20)).alias("labelled_at"))
    labels.write_csv(root / "labels.csv")
    start = datetime.fromisoformat(world["split"]["valid_start"])
    as_of = start + timedelta(days=32)
    report = monitor(compose_config([*world["common"], *world["window"], "task=monitor",
                                     f"input={root / 'same.parquet'}", f"monitor.labels={root / 'labels.csv'}",
                                     "monitor.label_delay=30d", f"monitor.as_of={as_of.isoformat()}",
                                     f"monitor.output={root / 'reports/labels'}"]))
    p = report["performance"]
    scored = pl.read_parquet(root / "same.parquet").filter(pl.col("event_time") >= start,
                                                           pl.col("event_time") < datetime.fromisoformat(
                                                               world["window"][1].split("=", 1)[1]))
    truth = scored.join(events.select("event_id", "label"), on="event_id")
    mature = truth.filter(pl.col("event_time") <= as_of - timedelta(days=30))
    assert 0 < mature.height < truth.height
    assert p["mature_events"] == mature.height and p["immature_events"] == truth.height - mature.height
    assert p["immature_share"] == pytest.approx(1 - mature.height / truth.height)
    alerts = mature.filter(pl.col("alert"))
    assert p["alerts"] == alerts.height and p["true_alerts"] == int(alerts["label"].sum())
    if alerts.height:
        assert p["precision"] == pytest.approx(alerts["label"].mean())
    days = [d for d in p["per_day"] if d["mature_share"] == 0]
    assert days and all(d["precision"] is None for d in days)  # immature days have no precision yet


def test_decision_log_lines_read_like_the_parquet(world, tmp_path):
    """The service's decision log (features nested under "features") gives the same window."""
    bundle = ModelBundle.load(world["bundle"])
    cols = bundle.feature_columns()
    scored = pl.read_parquet(world["root"] / "shifted.parquet").head(300)
    with open(tmp_path / "decisions.jsonl", "w") as f:
        for row in scored.to_dicts():
            record = {k: row[k] for k in ("event_id", "score", "alert", "threshold", "jurisdiction")}
            record["event_time"] = row["event_time"].isoformat()
            record["features"] = {c: (None if isinstance(row[c], float) and math.isnan(row[c]) else row[c]) for c in cols}
            f.write(json.dumps(record) + "\n")
    from_log = read_window(tmp_path / "decisions.jsonl", cols)
    from_parquet = read_window(world["root"] / "shifted.parquet", cols).head(300)
    assert from_log["event_id"].to_list() == from_parquet["event_id"].to_list()
    for c in ("score", "log_amount", "code_channel", "src_in_count_24h"):
        a = from_log[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
        b = from_parquet[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
        assert np.allclose(a, b, equal_nan=True), c


def test_bundle_without_reference_is_one_line(world, tmp_path):
    old = tmp_path / "old_bundle"
    shutil.copytree(world["bundle"], old)
    (old / "reference.json").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["reference.json"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert ModelBundle.load(old).reference is None  # an older bundle still loads and scores
    cfg = compose_config([*world["common"], "task=monitor", f"bundle={old}", f"input={world['root'] / 'same.parquet'}",
                          f"monitor.output={tmp_path / 'out'}"])
    with pytest.raises(UserError) as exc:
        monitor(cfg)
    assert exc.value.exit_code == 2 and str(exc.value) == (
        f"bundle {old} has no monitoring reference (reference.json): it predates task=monitor; retrain it with "
        f"task=train")


@pytest.mark.parametrize("override, message", [
    ("monitor.psi.warn=0.5", "monitor.psi.warn (0.5) must not exceed monitor.psi.alert (0.25)"),
    ("monitor.bins=1", "monitor.bins must be between 2 and 50"),
    ("monitor.min_events=0", "monitor.min_events must be >= 1"),
    ("monitor.label_delay=soon", "monitor.label_delay='soon' is not a duration"),
    ("monitor.exclude=[nope]", "monitor.exclude: 'nope' is not a monitored column"),
])
def test_bad_monitor_config_names_the_key(world, override, message):
    cfg = compose_config([*world["common"], "task=monitor", f"input={world['root'] / 'same.parquet'}", override,
                          f"monitor.output={world['root'] / 'reports/bad'}"])
    with pytest.raises(UserError) as exc:
        monitor(cfg)
    assert message in str(exc.value) and "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- shadow scoring
def _scorer(world, log_path, shadow_dir=None, shadow_uri="shadow"):
    """The service's scorer over a memory store warmed up to the test window, with a shadow."""
    from aml_pipeline.serving.scorer import DecisionLog, Scorer, make_engine, single_threaded
    from aml_pipeline.serving.server import request_columns
    from aml_pipeline.serving.shadow import Shadow
    from aml_pipeline.store import warm_from_parquet
    from aml_pipeline.timeutil import parse_time
    from aml_pipeline.store.engine import plan_needs
    from aml_pipeline.store.memory import MemoryStore

    live = ModelBundle.load(world["bundle"])
    single_threaded(live)
    needs = plan_needs(live.plan)
    store = MemoryStore(needs.layout())
    warm_from_parquet(store, world["root"] / "data/validated/transactions.parquet",
                      parse_time(world["split"]["test_start"], "test_start"))
    shadow = Shadow(ModelBundle.load(shadow_dir), live, shadow_uri) if shadow_dir else None
    scorer = Scorer(live, store, needs, make_engine("online", live, needs, request_columns(live)), DecisionLog(log_path),
                    shadow=shadow)
    scorer.warm_up()
    return scorer


def test_shadow_bundle_is_logged_never_alerts_and_monitor_reports_agreement(world, tmp_path):
    root = world["root"]
    # a challenger on the same features: smaller trees, faster learning, its own thresholds
    run_task(compose_config([*SMALL_RUN, f"paths.data_dir={root / 'data'}", f"paths.models_dir={root / 'models2'}",
                             f"paths.reports_dir={root / 'reports2'}", "model.params.num_leaves=4",
                             "model.params.learning_rate=0.3", "task=train"]))
    challenger = ModelBundle.load(root / "models2/bundle")
    test_start = datetime.fromisoformat(world["split"]["test_start"])
    events = (pl.read_parquet(root / "data/validated/transactions.parquet")
              .filter(pl.col("event_time") >= test_start).head(400))
    scorer = _scorer(world, tmp_path / "decisions.jsonl", root / "models2/bundle")
    responses = [scorer.score(row) for row in events.to_dicts()]
    scorer.log.close()
    assert not any(k.startswith("shadow") for k in responses[0])  # the response never carries the shadow
    logged = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert len(logged) == events.height
    assert [r["alert"] for r in logged] == [r["alert"] for r in responses]  # live alerts are the live bundle's
    # the shadow scored the live feature values: the challenger's own offline scores of those events
    features = pl.read_parquet(root / "data/features/features.parquet").filter(pl.col("event_id").is_in(events["event_id"].to_list()))
    offline = dict(zip(features["event_id"].to_list(), challenger.predict_features(features).tolist()))
    assert max(abs(r["shadow_score"] - offline[r["event_id"]]) for r in logged) < 1e-9
    assert {r["shadow_model_version"] for r in logged} == {"unregistered"}
    assert {r["shadow_bundle_hash"] for r in logged} == {challenger.bundle_hash}
    report = monitor(compose_config([*world["common"], "task=monitor", f"input={tmp_path / 'decisions.jsonl'}",
                                     "monitor.fail_on_drift=false", f"monitor.output={tmp_path / 'report'}"]))
    s = report["shadow"]
    live_alerts = sum(r["alert"] for r in logged)
    shadow_alerts = sum(r["shadow_alert"] for r in logged)
    both = sum(r["alert"] and r["shadow_alert"] for r in logged)
    assert (s["events"], s["live_alerts"], s["shadow_alerts"], s["both"]) == (events.height, live_alerts, shadow_alerts, both)
    assert s["alert_overlap"] == pytest.approx(both / (live_alerts + shadow_alerts - both))
    ranks = pl.DataFrame({"a": [r["score"] for r in logged], "b": [r["shadow_score"] for r in logged]})
    assert s["rank_correlation"] == pytest.approx(ranks.select(pl.corr("a", "b", method="spearman")).item())
    assert 0 < s["rank_correlation"] < 1
    assert "Shadow bundle" in (tmp_path / "report/monitor.html").read_text()


def test_shadow_with_another_plan_is_refused(world):
    from aml_pipeline.serving.shadow import Shadow

    live, other = ModelBundle.load(world["bundle"]), ModelBundle.load(world["bundle"])
    other.plan.steps = other.plan.steps[:-1]
    with pytest.raises(UserError, match="deploy.shadow=models:/x@y: its feature plan differs from the live bundle's"):
        Shadow(other, live, "models:/x@y")
    same = Shadow(ModelBundle.load(world["bundle"]), live, "same")  # itself as shadow: always agrees
    x = np.zeros(len(live.feature_columns()))
    assert same.decide(x, "US")["shadow_score"] == live.model.predict_one(x)


@pytest.mark.slow
def test_spark_trained_bundle_keeps_the_same_reference(world):
    """model=spark_gbt: the reference comes back from Spark and its feature histograms are
    the polars-trained bundle's (same validation rows, same features)."""
    root = world["root"]
    small = [o for o in SMALL_RUN if not o.startswith("model.")]  # LightGBM's parameters
    run_task(compose_config([*small, f"paths.data_dir={root / 'data'}", f"paths.models_dir={root / 'models_spark'}",
                             f"paths.reports_dir={root / 'reports_spark'}", "model=spark_gbt", "model.params.maxIter=5",
                             "engine.master='local[2]'", "engine.shuffle_partitions=2", "task=train"]))
    spark_ref = ModelBundle.load(root / "models_spark/bundle").reference
    polars_ref = ModelBundle.load(world["bundle"]).reference
    assert spark_ref["window"] == polars_ref["window"]
    for column in ("log_amount", "src_in_count_24h", "code_channel", "jurisdiction"):
        assert spark_ref["columns"][column] == polars_ref["columns"][column], column
    assert spark_ref["score"]["n"] == polars_ref["score"]["n"]
