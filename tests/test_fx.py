"""One reporting currency (``features.fx``): the conversion by hand, the plan with fx against
the plan without it on amounts converted by hand (the definition of correct), the online
engines against the batch one, the bundle round trip and ``task=score`` against training."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
import polars as pl
import pytest

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.features.fx import FxTable
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.serving.scorer import BadRequest, DecisionLog, Scorer, make_engine
from aml_pipeline.store import warm_from_parquet
from aml_pipeline.store.engine import Event, OnlineFeatures, PolarsFeatures, gather, plan_needs
from aml_pipeline.timeutil import to_us
from aml_pipeline.store.memory import MemoryStore
from aml_pipeline.streaming.budget import AlertBudget
from aml_pipeline.streaming.job import fx_rules
from aml_pipeline.streaming.outputs import FileOutputs
from aml_pipeline.streaming.records import RawRecord
from aml_pipeline.streaming.scorer import StreamScorer
from aml_pipeline.streaming.spark_state import refuse_cross_account
from aml_pipeline.tasks import run_task
from aml_pipeline.ingest import ingest
from aml_pipeline.validation.rules import build_rules
from tests.conftest import compose_config
from tests.test_store import assert_same_features, request_values

#: Every currency the small simulated world uses, in US dollars (round figures, for tests).
RATES = {"EUR": 1.08, "GBP": 1.27, "CHF": 1.13, "AED": 0.2723, "SGD": 0.74, "MXN": 0.058, "HKD": 0.128}
FX = {"currency": "USD", "rates": RATES}
#: A plan with thresholds, windows and matching bands: every kind of amount use.
STEPS = {
    "time": {},
    "amount": {"trailing_window": "7d", "reporting_threshold": 10000.0, "band": 0.1},
    "rolling": {"windows": ["1h", "24h"], "sides": ["src", "dst"], "flows": ["in", "out"], "aggs": ["count", "sum", "max"]},
    "flow": {"windows": ["24h"], "lookback": "7d", "habit": "7d"},
    "structuring": {"windows": ["7d"], "reporting_threshold": 10000.0},
    "category_codes": {"columns": ["channel", "currency"]},
}


def _frame(rows):
    return pl.DataFrame(rows, schema={"event_id": pl.String, "amount": pl.Float64, "currency": pl.String}, orient="row")


# ----------------------------------------------------------------------------- by hand
def test_conversion_by_hand():
    fx = FxTable.from_config({"currency": "USD", "rates": {"EUR": 1.08, "GBP": 1.25}})
    frame = _frame([("a", 100.0, "EUR"), ("b", 200.0, "USD"), ("c", 10.0, "GBP")])
    assert fx.convert_frame(frame)["amount"].to_list() == [108.0, 200.0, 12.5]  # USD itself unchanged
    assert fx.convert_values({"amount": 100.0, "currency": "EUR", "x": 1}) == {"amount": 108.0, "currency": "EUR", "x": 1}
    assert fx.rates == {"EUR": 1.08, "GBP": 1.25, "USD": 1.0}
    assert FxTable.from_dict(json.loads(json.dumps(fx.to_dict()))) == fx


def test_unknown_currency_is_an_error_in_batch_and_per_event():
    fx = FxTable("USD", {"EUR": 1.08})
    frame = _frame([("a", 1.0, "JPY"), ("b", 1.0, "EUR"), ("c", 1.0, "JPY"), ("d", 1.0, "BTC")])
    with pytest.raises(UserError, match=r"JPY \(2\), BTC \(1\); add features\.fx\.rates\.JPY"):
        fx.convert_frame(frame)
    with pytest.raises(ValueError, match="currency='JPY' has no rate to USD"):
        fx.convert_values({"amount": 1.0, "currency": "JPY"})
    with pytest.raises(UserError, match=r"no rate to USD: no currency \(1\); map the source's currency column"):
        fx.convert_frame(_frame([("a", 1.0, None), ("b", 1.0, "EUR")]))


@pytest.mark.parametrize("cfg, key", [
    ({"currency": "USD", "rates": {"EUR": 0}}, "features.fx.rates.EUR"),
    ({"currency": "USD", "rates": {"EUR": -1.0}}, "features.fx.rates.EUR"),
    ({"currency": "USD", "rates": {"EUR": float("inf")}}, "features.fx.rates.EUR"),
    ({"currency": "USD", "rates": {"GBP": "1.2"}}, "features.fx.rates.GBP"),
    ({"currency": "USD", "rates": {"eur": 1.1}}, "features.fx.rates.eur"),
    ({"currency": "USD", "rates": {"USD": 2.0}}, "features.fx.rates.USD"),
    ({"currency": "dollars", "rates": {}}, "features.fx.currency"),
    ({"currency": "USD", "rate": {}}, "features.fx.rate"),
])
def test_bad_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        FxTable.from_config(cfg)


def test_composed_config_builds_the_plan():
    cfg = compose_config(["features=minimal", "features.fx={currency: USD, rates: {EUR: 1.08}}"])
    plan = FeaturePlan.from_features_config(cfg.features)
    assert plan.fx == FxTable("USD", {"EUR": 1.08})
    assert FeaturePlan.from_features_config(compose_config(["features=minimal"]).features).fx is None


# ----------------------------------------------------------------------------- the plan
@pytest.fixture(scope="module")
def world():
    """~800 simulated events in eight currencies, cut at 60 %."""
    cfg = compose_config(["source.n_accounts=200", "source.days=7", "source.laundering_rate=0.03"])
    frame = ingest(cfg).result.valid.sort("event_time", maintain_order=True)
    assert frame["currency"].n_unique() >= 5
    cut = frame["event_time"][int(frame.height * 0.6)]
    return frame, cut


def _converted(frame: pl.DataFrame) -> pl.DataFrame:
    """The amounts converted by hand, row by row."""
    rate = {**RATES, "USD": 1.0}
    return frame.with_columns(pl.Series("amount", [a * rate[c] for a, c in zip(frame["amount"], frame["currency"])]))


def test_plan_with_fx_equals_plan_on_amounts_converted_by_hand(world):
    frame, cut = world
    train, later = frame.filter(pl.col("event_time") < cut), frame.filter(pl.col("event_time") >= cut)
    with_fx, plain = FeaturePlan.from_config(STEPS, FX), FeaturePlan.from_config(STEPS)
    cols = plain.feature_columns()
    a, b = with_fx.fit_transform(train), plain.fit_transform(_converted(train))
    assert a.select(cols).equals(b.select(cols))
    assert a["amount"].equals(train["amount"])  # the rows keep their own amount
    a, b = with_fx.transform(later, history=train), plain.transform(_converted(later), history=_converted(train))
    assert a.select(cols).equals(b.select(cols))
    assert a["amount"].equals(later["amount"])
    # and the conversion matters: without it the features differ
    assert not plain.transform(later, history=train).select(cols).equals(b.select(cols))
    with pytest.raises(UserError, match=r"features\.fx: events in currencies with no rate to USD: MXN"):
        FeaturePlan.from_config(STEPS, {"currency": "USD", "rates": {k: v for k, v in RATES.items() if k != "MXN"}}
                                ).fit_transform(train)


def test_bundle_plan_round_trip_keeps_fx(world):
    frame, cut = world
    plan = FeaturePlan.from_config(STEPS, FX)
    plan.fit_transform(frame.filter(pl.col("event_time") < cut))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["fx"] == {"currency": "USD", "rates": dict(sorted({**RATES, "USD": 1.0}.items()))}
    again = FeaturePlan.from_dict(data)
    assert again.fx == plan.fx
    later = frame.filter(pl.col("event_time") >= cut)
    assert again.transform(later, history=frame).equals(plan.transform(later, history=frame))
    assert "fx" not in plan.without_fx().to_dict()  # off: absent, so older bundles load unchanged
    assert "currency" in plan.required_columns()


# ----------------------------------------------------------------------------- online engines
@pytest.mark.parametrize("engine", ["online", "polars"])
def test_online_engines_equal_batch(world, engine, tmp_path):
    """The store warmed from parquet and each event converted before it is built, as the
    service does: the same features as the batch plan with fx."""
    frame, cut = world
    plan = FeaturePlan.from_config(STEPS, FX)
    plan.fit_transform(frame.filter(pl.col("event_time") < cut))
    needs = plan_needs(plan)
    store = MemoryStore(needs.layout())
    path = tmp_path / "validated.parquet"
    frame.write_parquet(path)
    assert warm_from_parquet(store, path, cut, plan.fx) == frame.filter(pl.col("event_time") < cut).height
    columns = [c for c in frame.columns if c not in ("label", "typology", "instance_id")]
    compute = OnlineFeatures(plan) if engine == "online" else PolarsFeatures(plan, columns, needs.extra_columns)
    after = frame.filter(pl.col("event_time") >= cut)
    got = {}
    for row in after.head(after.height if engine == "online" else 30).iter_rows(named=True):
        ev = Event(plan.fx.convert_values(request_values(row)))
        decision, history = gather(store, needs, ev)
        assert decision is None
        got[ev.event_id] = compute.compute(ev, history)
        assert store.commit(ev.row(needs.extra_columns), None)
    exact, total = assert_same_features(plan, frame, got)
    assert total > 0 and exact == total
    with pytest.raises(ValueError, match="no rate"):
        plan.fx.convert_values({**request_values(after.row(0, named=True)), "currency": "JPY"})


# ----------------------------------------------------------------------------- scorers
@pytest.fixture(scope="module")
def fx_run(tmp_path_factory):
    """data -> features -> train with features.fx on a small world (a few seconds):
    the bundle, the feature table, the validated events and the training-time test scores."""
    root = tmp_path_factory.mktemp("fx_run")
    rates = "{" + ", ".join(f"{k}: {v}" for k, v in RATES.items()) + "}"
    args = ["source.n_accounts=200", "source.days=14", "source.laundering_rate=0.05", "features=streaming_local",
            "model.params.n_estimators=20", f"features.fx={{currency: USD, rates: {rates}}}",
            f"paths.data_dir={root / 'data'}", f"paths.models_dir={root / 'models'}", f"paths.reports_dir={root / 'reports'}"]
    for task in ("data", "features", "train"):
        run_task(compose_config([*args, f"task={task}"]))
    bundle = ModelBundle.load(root / "models" / "bundle")
    table = pl.read_parquet(root / "data/features/features.parquet")
    trained = bundle.score_features(table.filter(pl.col("split") == "test"), 5, "none")
    return SimpleNamespace(root=root, args=args, bundle=bundle, table=table, validated=root / "data/validated/transactions.parquet",
                           events=pl.read_parquet(root / "data/validated/transactions.parquet"), trained=trained,
                           expected=dict(zip(trained["event_id"], trained["score"])),
                           test_start=table.filter(pl.col("split") == "test")["event_time"].min())


def test_score_task_with_fx_bundle_scores_like_training(fx_run):
    assert fx_run.bundle.plan.fx == FxTable("USD", RATES)
    out = run_task(compose_config([*fx_run.args, "task=score", f"bundle={fx_run.root / 'models' / 'bundle'}",
                                   f"input={fx_run.validated}", f"output={fx_run.root / 'scores.parquet'}"]))
    scored = pl.read_parquet(out["output"])
    both = scored.join(fx_run.trained.select("event_id", pl.col("score").alias("trained")), on="event_id")
    assert both.height == fx_run.trained.height > 50
    assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-9) for a, b in zip(both["score"], both["trained"]))
    # the feature table keeps each event's own amount
    own = fx_run.table.join(fx_run.events.select("event_id", pl.col("amount").alias("given")), on="event_id")
    assert own["amount"].equals(own["given"], check_names=False)
    assert fx_run.events.filter(pl.col("currency") != "USD").height > 0


def test_service_with_fx_bundle_scores_like_training(fx_run, tmp_path):
    """The store warmed from parquet (converted), each request converted before its
    features, the decision log keeping the request's own amount; no rate: a 422."""
    bundle = fx_run.bundle
    needs = plan_needs(bundle.plan)
    store = MemoryStore(needs.layout())
    warm_from_parquet(store, fx_run.validated, fx_run.test_start, bundle.plan.fx)
    scorer = Scorer(bundle, store, needs, make_engine("online", bundle, needs, []), DecisionLog(tmp_path / "log.jsonl"))
    live = fx_run.events.filter(pl.col("event_time") >= fx_run.test_start).head(40)
    for row in live.iter_rows(named=True):
        decision = scorer.score(request_values(row))
        assert math.isclose(decision["score"], fx_run.expected[row["event_id"]], rel_tol=0, abs_tol=1e-9)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [d["event"]["amount"] for d in logged] == live["amount"].to_list()
    with pytest.raises(BadRequest, match="currency='JPY' has no rate to USD"):
        scorer.score({**request_values(live.row(0, named=True)), "event_id": "jpy", "currency": "JPY"})


def test_stream_with_fx_bundle_scores_like_training(fx_run, tmp_path):
    """The micro-batch scorer on the embedded store: the same scores as training, the
    alerts' own amounts, and a record in a currency with no rate dead-lettered (no_fx_rate)."""
    bundle = fx_run.bundle
    needs = plan_needs(bundle.plan)
    store = MemoryStore(needs.layout())
    warm_from_parquet(store, fx_run.validated, fx_run.test_start, bundle.plan.fx)
    currencies = [*compose_config([]).validation.currencies]
    assert "JPY" in currencies  # valid, but the bundle has no rate for it
    rules = build_rules(currencies, False) + fx_rules(bundle.plan)
    scorer = StreamScorer(bundle, store, needs, FileOutputs(tmp_path / "out"), rules, tmp_path / "state", 0,
                          AlertBudget("jurisdiction", "1d", 10_000), start_watermark_us=to_us(fx_run.test_start),
                          write_decisions=True, progress=False)
    live = fx_run.events.filter(pl.col("event_time") >= fx_run.test_start)
    lines = [json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in request_values(r).items()})
             for r in live.iter_rows(named=True)]
    lines.insert(3, lines[3].replace(live["event_id"][3], "in-yen").replace(f'"{live["currency"][3]}"', '"JPY"'))
    for i in range(0, len(lines), 100):
        scorer.process(i // 100, [RawRecord(t, {"file": "part-0.jsonl", "line": i + n + 1}) for n, t in enumerate(lines[i:i + 100])])
    scorer.flush()
    decisions = pl.concat([pl.read_parquet(p) for p in sorted((tmp_path / "out/decisions").glob("part-*.parquet"))])
    assert decisions.height == live.height
    assert all(math.isclose(s, fx_run.expected[e], rel_tol=0, abs_tol=1e-9)
               for e, s in zip(decisions["event_id"], decisions["score"]))
    dead = [json.loads(x) for p in sorted((tmp_path / "out/dead_letter").glob("*")) for x in p.read_text().splitlines()]
    assert [(d["event_id"], d["reasons"]) for d in dead] == [("in-yen", ["no_fx_rate"])]
    given = dict(zip(live["event_id"], live["amount"]))
    alerts = [json.loads(x) for p in sorted((tmp_path / "out/alerts").glob("*")) for x in p.read_text().splitlines()]
    assert alerts and all(a["amount"] == given[a["event_id"]] for a in alerts)  # the event's own amount


def test_state_spark_refuses_fx_by_name():
    steps = {"time": {}, "amount": {}}
    refuse_cross_account(FeaturePlan.from_config(steps))  # without fx: accepted
    with pytest.raises(UserError, match=r"deploy\.state=spark has no form of features\.fx"):
        refuse_cross_account(FeaturePlan.from_config(steps, FX))
