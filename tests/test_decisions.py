"""Decision records (:mod:`aml_pipeline.decisions`): the builder on a case worked by hand,
then the same event decided by ``task=score``, the online service's scorer and the
streaming scorer, which must carry the same record.

The hand-made case: a stand-in model with fixed scores and contributions over five
feature columns, thresholds for one jurisdiction and ``"*"``; every expected top feature,
contribution, reason and alert is written out below.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from aml_pipeline.decisions import COLUMNS, TOP_FEATURES, DecisionBuilder
from aml_pipeline.features.reasons import one_line
from tests.conftest import compose_config

COLS = ["hour", "log_amount", "src_fwd_share_24h", "src_fwd_lag_24h", "cross_border"]
THRESHOLDS = {"US": {"threshold": 0.5}, "*": 0.8}
TRACE = {"model_name": "m", "model_version": "3", "run_id": "r1", "config_hash": "c0ffee", "bundle_hash": "b" * 64}


class HandModel:
    """Fixed scores and contributions per row (rows told apart by their ``hour``)."""

    def __init__(self, scores: dict[float, float], contrib: dict[float, list[float]] | None,
                 importance: dict[str, float] | None = None):
        self.scores, self.contrib, self.importance = scores, contrib, importance or {}

    def predict_proba(self, X):
        return np.array([self.scores[h] for h in X[:, 0]], dtype=np.float64)

    def contributions(self, X):
        return None if self.contrib is None else np.array([self.contrib[h] for h in X[:, 0]], dtype=np.float64)

    def feature_importance(self):
        return self.importance


def hand_frame() -> pl.DataFrame:
    t = datetime(2025, 1, 6, 3, tzinfo=timezone.utc)
    return pl.DataFrame({
        "event_id": ["a", "b", "c", "d"],
        "event_time": [t, t, t, t],
        "jurisdiction": ["US", "US", "GB", "US"],
        "channel": ["wire", "card", "wire", "cash"],
        "hour": [3.0, 4.0, 5.0, 6.0],
        "log_amount": [math.log1p(1950.0), None, 2.0, 1.0],  # b: missing (a null, not a NaN)
        "src_fwd_share_24h": [0.96, 0.5, float("nan"), 0.1],  # c: NaN reads as missing too
        "src_fwd_lag_24h": [2400.0, None, None, 60.0],
        "cross_border": [1.0, 0.0, 1.0, 0.0],
    })


#: hour -> score: a at its threshold (0.5, alert), b just below (no alert), c over US's but under "*" (0.8), d above.
SCORES = {3.0: 0.5, 4.0: 0.5 - 1e-12, 5.0: 0.79, 6.0: 0.9}
CONTRIB = {
    3.0: [0.1, 0.8, 1.2, -0.3, 0.8],  # |0.8| twice: log_amount before cross_border (column order)
    4.0: [0.0, 0.2, -0.5, 0.0, 0.0],
    5.0: [0.3, 0.0, 0.0, 0.0, 0.0],
    6.0: [-2.0, 0.0, 0.5, 0.1, 0.0],  # the strongest pushed the score down: told in no reason
}


def builder(explain: str = "alerts", top_k: int = 3, contrib=CONTRIB, importance=None) -> DecisionBuilder:
    return DecisionBuilder(HandModel(SCORES, contrib, importance), COLS, THRESHOLDS, TRACE, top_k, explain)


def tf(feature, value, contribution):
    return {"feature": feature, "value": value, "contribution": contribution}


def test_frame_by_hand():
    out = builder("alerts").frame(hand_frame())
    assert out.columns == [*COLUMNS, *COLS]
    assert out.schema["top_features"] == TOP_FEATURES and out.schema["reasons"] == pl.List(pl.String)
    assert out["threshold"].to_list() == [0.5, 0.5, 0.8, 0.5]  # GB has no entry: "*"
    assert out["alert"].to_list() == [True, False, False, True]  # score == threshold alerts; a hair below does not
    a, b, c, d = out.iter_rows(named=True)
    assert a["top_features"] == [tf("src_fwd_share_24h", 0.96, 1.2), tf("log_amount", math.log1p(1950.0), 0.8),
                                 tf("cross_border", 1.0, 0.8)]
    assert a["reasons"] == ["forwarded 96 % of the money it received in the last 24 h, 40 minutes after a matching inflow",
                            "an amount of 1,950", "a cross-border payment"]
    assert b["top_features"] is None and b["reasons"] is None and c["top_features"] is None  # not alerts
    assert d["top_features"] == [tf("hour", 6.0, -2.0), tf("src_fwd_share_24h", 0.1, 0.5), tf("src_fwd_lag_24h", 60.0, 0.1)]
    assert d["reasons"] == ["forwarded 10 % of the money it received in the last 24 h, 1 minute after a matching inflow",
                            "paid 1 minute after receiving a matching amount"]  # hour pushed down: no reason
    assert {k: a[k] for k in TRACE} == TRACE
    assert out.select(COLS).equals(hand_frame().select(COLS))  # the feature values follow the decision


def test_every_row_explained_and_missing_values_are_null():
    out = builder("all", top_k=2).frame(hand_frame())
    b, c = out.row(1, named=True), out.row(2, named=True)
    assert b["top_features"] == [tf("src_fwd_share_24h", 0.5, -0.5), tf("log_amount", None, 0.2)]
    assert b["reasons"] == ["log amount was unknown"]  # a missing value is said so; the negative one is not told
    assert c["top_features"] == [tf("hour", 5.0, 0.3), tf("log_amount", 2.0, 0.0)]
    assert c["reasons"] == ["made at 05:00 UTC"]  # a zero contribution did not raise the score: not told
    none = builder("none").frame(hand_frame())
    assert none["top_features"].null_count() == none["reasons"].null_count() == 4
    assert builder("alerts").frame(hand_frame().head(0)).columns == [*COLUMNS, *COLS]


def test_model_without_contributions_lists_its_most_important_features():
    importance = {"cross_border": 5.0, "hour": 5.0, "src_fwd_share_24h": 9.0}
    out = builder("all", top_k=9, contrib=None, importance=importance).frame(hand_frame())
    first = out["top_features"][0].to_list()
    assert [f["feature"] for f in first] == ["src_fwd_share_24h", "hour", "cross_border", "log_amount", "src_fwd_lag_24h"]
    assert all(f["contribution"] is None for f in first)  # top_k over the column count: every column
    assert out["top_features"][2].to_list()[0] == tf("src_fwd_share_24h", None, None)


@pytest.mark.parametrize("explain", ["all", "alerts", "none"])
@pytest.mark.parametrize("contrib", [CONTRIB, None])
def test_record_is_the_frame_s_row(explain, contrib):
    """The service's one-event record carries what the batch frame does for the same row."""
    build = builder(explain, contrib=contrib, importance={"cross_border": 1.0})
    frame = hand_frame()
    batch = build.frame(frame)
    for row, want in zip(frame.iter_rows(named=True), batch.iter_rows(named=True)):
        x = np.array([np.nan if row[c] is None else row[c] for c in COLS])
        score = SCORES[row["hour"]]
        got = build.record(row["event_id"], "t", row["jurisdiction"], score, build.threshold(row["jurisdiction"]), x,
                           {c: row[c] for c in COLS}, row)
        assert list(got) == ["event_id", "event_time", "score", "alert", "decision", "threshold", "jurisdiction",
                             "top_features", "reasons", *TRACE]
        assert got["decision"] == ("alert" if want["alert"] else "no_alert")
        for k in ("event_id", "score", "threshold", "alert", "top_features", "reasons", *TRACE):
            assert got[k] == want[k], (row["event_id"], k)
    with pytest.raises(ValueError, match="no threshold"):
        DecisionBuilder(HandModel(SCORES, CONTRIB), COLS, {"US": 0.5}, TRACE).threshold("GB")


def test_one_line_reasons_of_the_registered_model():
    assert one_line([tf("log_amount", 7.57558, 0.8), tf("hour", None, -0.25), tf("cross_border", 1.0, None)]) == \
        "log_amount=7.57558 (+0.800); hour=null (-0.250); cross_border=1"
    assert one_line(None) == ""


# ----------------------------------------------------------------------------- three scorers, one record
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """data -> features -> train on a small world (a few seconds), the bundle and the test window."""
    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.tasks import run_task

    root = tmp_path_factory.mktemp("decisions_run")
    args = ["source.n_accounts=200", "source.days=14", "source.laundering_rate=0.05", "features=streaming_local",
            "model.params.n_estimators=20", f"paths.data_dir={root / 'data'}", f"paths.models_dir={root / 'models'}",
            f"paths.reports_dir={root / 'reports'}"]
    for task in ("data", "features", "train"):
        run_task(compose_config([*args, f"task={task}"]))
    table = pl.read_parquet(root / "data/features/features.parquet")
    validated = root / "data/validated/transactions.parquet"
    return SimpleNamespace(root=root, args=args, bundle=ModelBundle.load(root / "models" / "bundle"),
                           validated=validated, events=pl.read_parquet(validated),
                           test_start=table.filter(pl.col("split") == "test")["event_time"].min())


def _request(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("label", "typology", "instance_id")}


def _same_top_features(got, want, where) -> None:
    assert [f["feature"] for f in got] == [f["feature"] for f in want], where
    for g, w in zip(got, want):
        for k in ("value", "contribution"):
            assert (g[k] is None) == (w[k] is None), (where, g, w)
            assert w[k] is None or math.isclose(g[k], w[k], rel_tol=1e-9, abs_tol=1e-12), (where, g, w)


def test_score_task_service_and_stream_carry_the_same_record(small_run, tmp_path):
    from aml_pipeline.serving.scorer import DecisionLog, Scorer, make_engine
    from aml_pipeline.store import warm_from_parquet
    from aml_pipeline.store.engine import plan_needs
    from aml_pipeline.store.memory import MemoryStore
    from aml_pipeline.streaming.budget import AlertBudget
    from aml_pipeline.streaming.outputs import FileOutputs, read_jsonl
    from aml_pipeline.streaming.records import RawRecord
    from aml_pipeline.streaming.scorer import StreamScorer
    from aml_pipeline.tasks import run_task
    from aml_pipeline.timeutil import to_us
    from aml_pipeline.validation.rules import build_rules

    run, bundle = small_run, small_run.bundle
    out = run_task(compose_config([*run.args, "task=score", f"bundle={run.root / 'models' / 'bundle'}",
                                   f"input={run.validated}", f"output={tmp_path / 'scores.parquet'}", "scoring.explain=all"]))
    reference = {r["event_id"]: r for r in pl.read_parquet(out["output"]).iter_rows(named=True)}
    live = run.events.filter(pl.col("event_time") >= run.test_start).sort("event_time", maintain_order=True).head(150)
    trace = bundle.trace

    # the online service's scorer, one event at a time
    needs = plan_needs(bundle.plan)
    store = MemoryStore(needs.layout())
    warm_from_parquet(store, run.validated, run.test_start)
    service = Scorer(bundle, store, needs, make_engine("online", bundle, needs, []), DecisionLog(tmp_path / "log.jsonl"),
                     explain="all")
    served = {r["event_id"]: service.score(_request(r)) for r in live.iter_rows(named=True)}

    # the streaming scorer, in micro-batches
    needs = plan_needs(bundle.plan)
    store = MemoryStore(needs.layout())
    warm_from_parquet(store, run.validated, run.test_start)
    currencies = list(compose_config([]).validation.currencies)
    stream = StreamScorer(bundle, store, needs, FileOutputs(tmp_path / "out"), build_rules(currencies, False),
                          tmp_path / "state", 0, AlertBudget("jurisdiction", "1d", 10_000),
                          start_watermark_us=to_us(run.test_start), explain="all", write_decisions=True, progress=False)
    lines = [json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in _request(r).items()})
             for r in live.iter_rows(named=True)]
    for i in range(0, len(lines), 50):
        stream.process(i // 50, [RawRecord(t, {"file": "part-0.jsonl", "line": i + n + 1})
                                 for n, t in enumerate(lines[i:i + 50])])
    stream.flush()
    parts = sorted((tmp_path / "out/decisions").glob("*.parquet"))
    streamed = {r["event_id"]: r for r in pl.concat([pl.read_parquet(p) for p in parts]).iter_rows(named=True)}
    alerts = {a["event_id"]: a for a in read_jsonl(tmp_path / "out/alerts")}

    assert len(served) == len(streamed) == live.height
    assert any(d["alert"] for d in served.values()) and any(not d["alert"] for d in served.values())
    for eid, want in ((e, reference[e]) for e in served):
        for got, where in ((served[eid], "service"), (streamed[eid], "stream"), (alerts.get(eid), "stream alert")):
            if got is None:
                assert where == "stream alert" and not want["alert"]
                continue
            assert math.isclose(got["score"], want["score"], rel_tol=0, abs_tol=1e-9), (where, eid)
            assert got["threshold"] == want["threshold"] and got["jurisdiction"] == want["jurisdiction"], (where, eid)
            assert got.get("alert", True) == want["alert"], (where, eid)
            assert got["reasons"] == want["reasons"], (where, eid)
            _same_top_features(got["top_features"], want["top_features"], (where, eid))
            assert {k: got[k] for k in trace} == {k: want[k] for k in trace} == trace, (where, eid)
        assert served[eid]["event_time"] == want["event_time"].isoformat() == alerts.get(eid, served[eid])["event_time"]
        assert streamed[eid]["event_time"] == want["event_time"]
    assert sum(bool(d["reasons"]) for d in served.values()) > live.height / 2
