"""From scores to cases to labels and back into training: reasons in plain words at
scoring time, ``task=cases`` on each kind of alert input, ``task=labels``, and
``source.labels=`` in ``task=data`` (respecting ``labelled_at``)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from aml_pipeline.cases import (approve, create_user, decide, export_labels, get_alert, get_case, ingest_alerts,
                                list_cases, open_db, reject)
from aml_pipeline.features.reasons import duration, reasons_and_hint, sentence
from aml_pipeline.labels import apply_labels, read_labels
from aml_pipeline.tasks import run_task
from tests.conftest import SMALL_RUN, compose_config, train_small_run

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)


# ------------------------------------------------------------------------- reasons
def test_reasons_read_like_sentences_with_sibling_values():
    words, hint = reasons_and_hint(
        [{"feature": "src_fwd_share_24h", "value": 0.96, "contribution": 2.1},
         {"feature": "hour", "value": 3, "contribution": -0.4},  # lowered the score: not a reason
         {"feature": "dst_in_senders_1h", "value": 12, "contribution": 0.8},
         {"feature": "dst_cash_band_count_7d", "value": 4, "contribution": 0.3},
         {"feature": "a_new_column", "value": 2.5, "contribution": 0.1}],
        {"src_fwd_lag_24h": 2400.0})
    assert words == ["forwarded 96 % of the money it received in the last 24 h, 40 minutes after a matching inflow",
                     "12 distinct accounts paid the receiver in the last hour",
                     "the receiver took 4 cash deposits just under the reporting threshold in the last 7 days",
                     "a_new_column was 2.5"]
    assert hint == "layering"  # the strongest feature's typology
    assert sentence("pair_prior_30d", 0)[0] == "the first payment between these accounts in the last 30 days"
    assert sentence("log_amount", None)[0] == "log amount was unknown"
    assert duration(90) == "1.5 minutes" and duration(7200) == "2 hours" and duration(86400 * 3) == "3 days"
    assert reasons_and_hint([], {}) == ([], None)


# ------------------------------------------------------------------------- labels
def test_labels_override_add_and_respect_labelled_at():
    events = pl.DataFrame({"event_id": ["a", "b", "c", "d"], "label": [1, 0, None, 0],
                           "typology": ["fan_in", None, None, None]}, schema_overrides={"label": pl.Int8})
    labels = pl.DataFrame({"event_id": ["a", "b", "c", "d", "d", "zz"], "label": [0, 1, 1, 1, 0, 1],
                           "labelled_at": [T0, T0, T0, T0, T0 + timedelta(days=2), T0]})
    out, stats = apply_labels(events, labels, T0 + timedelta(days=1))
    assert out["label"].to_list() == [0, 1, 1, 1] and out["typology"].to_list() == [None, None, None, None]
    assert out.schema == events.schema
    assert (stats["changed"], stats["added"], stats["given_later"], stats["not_in_data"]) == (3, 1, 1, 1)
    later, _ = apply_labels(events, labels, T0 + timedelta(days=3))
    assert later["label"].to_list() == [0, 1, 1, 0]  # d's latest label by then is 0


def _alert(eid, acct, hours, score=0.9):
    return {"event_id": eid, "event_time": T0 + timedelta(hours=hours), "src_account": acct, "dst_account": "X",
            "amount": 10.0, "score": score, "threshold": 0.5, "jurisdiction": "US"}


def test_export_labels_one_row_per_alert_and_settling_decision(tmp_path):
    db = open_db(tmp_path / "c.db")
    for name, role in (("ana", "analyst"), ("sam", "supervisor")):
        create_user(db, name, f"{name}-password", role)
    ingest_alerts(db, [_alert("a1", "A", 0), _alert("a2", "A", 1), _alert("b1", "B", 0), _alert("c1", "C", 0),
                       _alert("d1", "D", 0)])
    case = {c.subject_account: c.id for c in list_cases(db).items}
    decide(db, case["A"], "suspicious_escalate", user="ana")
    ingest_alerts(db, [_alert("a3", "A", 2)])  # joins after the escalation: not labelled by it
    decide(db, case["A"], "false_positive", user="sam")
    decide(db, case["B"], "sar_filed", user="ana")
    approve(db, case["B"], user="sam")
    decide(db, case["C"], "sar_filed", user="ana")  # pending: no label
    decide(db, case["D"], "sar_filed", user="ana")
    reject(db, case["D"], user="sam")  # rejected: no label
    frame = export_labels(db)
    assert frame.columns == ["event_id", "account", "label", "labelled_at", "source"]
    rows = {(r["event_id"], r["source"]): r["label"] for r in frame.iter_rows(named=True)}
    assert rows == {("a1", "workbench:suspicious_escalate"): 1, ("a2", "workbench:suspicious_escalate"): 1,
                    ("a1", "workbench:false_positive"): 0, ("a2", "workbench:false_positive"): 0,
                    ("a3", "workbench:false_positive"): 0, ("b1", "workbench:sar_filed"): 1}
    sar = frame.filter(pl.col("event_id") == "b1")
    assert sar["labelled_at"][0] == get_case(db, case["B"]).dispositions[0].checked_at  # when approved
    assert set(export_labels(db, label_escalated=False)["source"]) == {"workbench:false_positive", "workbench:sar_filed"}
    # what monitoring and training read: the latest label per event
    path = tmp_path / "labels.csv"
    frame.write_csv(path)
    known = read_labels(path)
    latest = known.sort("labelled_at").unique("event_id", keep="last")
    assert dict(latest.select("event_id", "label").iter_rows()) == {"a1": 0, "a2": 0, "a3": 0, "b1": 1}


# ------------------------------------------------------------------------- task=cases inputs
def test_task_cases_reads_a_stream_folder_and_a_decision_log(tmp_path):
    stream = tmp_path / "stream"
    for kind, rows in (("alerts", [_alert("s1", "A", 0), _alert("s2", "B", 1)]), ("deferred", [_alert("s3", "A", 2)])):
        (stream / kind).mkdir(parents=True)
        with open(stream / kind / "part-00000.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({**r, "event_time": r["event_time"].isoformat(), "source": {"partition": 0,
                                                                                               "offset": 7}}) + "\n")
    log = tmp_path / "decisions.jsonl"
    with open(log, "w") as f:
        f.write(json.dumps({"event_id": "l1", "event_time": T0.isoformat(), "score": 0.97, "alert": True,
                            "threshold": 0.5, "jurisdiction": "GB", "top_features": None, "reasons": ["said so"],
                            "event": {"src_account": "C", "dst_account": "D", "amount": 5.0}, "features": {"x": 1}})
                + "\n")
        f.write(json.dumps({"event_id": "l2", "event_time": T0.isoformat(), "score": 0.1, "alert": False,
                            "event": {"src_account": "C"}}) + "\n")
    db_url = f"sqlite:///{tmp_path / 'cases.db'}"
    first = run_task(compose_config(["task=cases", f"input={stream}", f"cases.db={db_url}"]))
    assert (first["alerts_added"], first["cases_opened"]) == (3, 2)
    again = run_task(compose_config(["task=cases", f"input={stream}", f"cases.db={db_url}"]))
    assert again["alerts_added"] == 0 and again["alerts_skipped"] == 3
    res = run_task(compose_config(["task=cases", f"input={log}", f"cases.db={db_url}"]))
    assert res["alerts_added"] == 1 and res["active_cases"] == 3
    db = open_db(db_url)
    assert get_alert(db, "s1").details["position"] == {"partition": 0, "offset": 7}
    assert get_alert(db, "l1").reasons == ["said so"] and get_alert(db, "l1").counterparty == "D"
    from aml_pipeline.errors import UserError

    with pytest.raises(UserError, match="follow"):
        run_task(compose_config(["task=cases", f"input={log}", f"cases.db={db_url}", "cases.follow=true"]))


# ------------------------------------------------------------------------- the whole loop
@pytest.mark.slow
def test_scores_to_cases_to_labels_to_a_retrain(tmp_path):
    paths, _, _ = train_small_run(tmp_path)
    data = tmp_path / "data"
    db_url = f"sqlite:///{data / 'cases.db'}"
    scored = run_task(compose_config([*SMALL_RUN, *paths, "task=score", f"bundle={tmp_path / 'models' / 'bundle'}",
                                      f"input={data / 'validated' / 'transactions.parquet'}"]))
    scores = pl.read_parquet(scored["output"])
    alerts = scores.filter(pl.col("alert"))
    assert alerts.height > 5
    assert alerts["reasons"].list.len().min() >= 1  # written at scoring time, for every alert
    assert scores.filter(~pl.col("alert"))["reasons"].null_count() == scores.height - alerts.height
    res = run_task(compose_config([*SMALL_RUN, *paths, "task=cases", f"cases.db={db_url}"]))
    assert res["alerts_added"] == alerts.height and res["cases_opened"] >= 1
    db = open_db(db_url)
    create_user(db, "ana", "ana-password")
    create_user(db, "sam", "sam-password", "supervisor")
    top, second = list_cases(db).items[:2]
    case = get_case(db, top.id)
    stored = {a.event_id: a.reasons for a in case.alerts}
    assert stored == {r["event_id"]: r["reasons"] for r in alerts.filter(pl.col("event_id").is_in(list(stored)))
                      .iter_rows(named=True)}  # what the scorer wrote, not a recomputation
    decide(db, top.id, "sar_filed", user="ana", note="layering")
    approve(db, top.id, user="sam")
    decide(db, second.id, "false_positive", user="ana")
    out = run_task(compose_config([*SMALL_RUN, *paths, "task=labels", f"cases.db={db_url}"]))
    labels = pl.read_parquet(out["output"])
    assert out["rows"] == top.alert_count + second.alert_count and set(labels["label"]) == {0, 1}
    # before the decisions: nothing known; now: every label applied
    cutoff = (labels["labelled_at"].min() - timedelta(seconds=1)).isoformat()
    run_task(compose_config([*SMALL_RUN, *paths, "task=data", f"source.labels={out['output']}",
                             f"source.labels_as_of={cutoff}"]))
    summary = json.loads((data / "validated" / "summary.json").read_text())
    assert summary["labels_file"]["events_matched"] == 0 and summary["labels_file"]["given_later"] == labels.height
    run_task(compose_config([*SMALL_RUN, *paths, "task=data", f"source.labels={out['output']}"]))
    summary = json.loads((data / "validated" / "summary.json").read_text())
    assert summary["labels_file"]["events_matched"] == labels.height
    valid = pl.read_parquet(data / "validated" / "transactions.parquet")
    given = dict(labels.select("event_id", "label").iter_rows())
    got = dict(valid.filter(pl.col("event_id").is_in(list(given))).select("event_id", "label").iter_rows())
    assert got == given
    # task=monitor judges precision over them (as of now: they were given today)
    report = run_task(compose_config([*SMALL_RUN, *paths, "task=monitor", f"bundle={tmp_path / 'models' / 'bundle'}",
                                      f"input={scored['output']}", f"monitor.labels={out['output']}",
                                      f"monitor.as_of={datetime.now(timezone.utc).isoformat()}",
                                      "monitor.fail_on_drift=false", "monitor.label_delay=1d",
                                      f"monitor.output={tmp_path / 'reports' / 'monitor'}"]))
    perf = report["performance"]
    assert perf["labels_known"] == labels["event_id"].n_unique() and perf["true_alerts"] >= 1
    for task in ("features", "train"):  # a retrain on them
        run_task(compose_config([*SMALL_RUN, *paths, f"task={task}"]))
    assert (tmp_path / "models" / "bundle" / "manifest.json").is_file()


def _write_part(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "event_time": r["event_time"].isoformat()}) + "\n")
    tmp.rename(folder / name)


def test_task_cases_follows_a_stream_folder(tmp_path):
    import threading

    stream = tmp_path / "stream"
    _write_part(stream / "alerts", "part-00000.jsonl", [_alert("f1", "A", 0)])
    later = threading.Timer(0.6, _write_part, (stream / "alerts", "part-00001.jsonl", [_alert("f2", "A", 1),
                                                                                      _alert("f3", "B", 1)]))
    later.start()
    db_url = f"sqlite:///{tmp_path / 'cases.db'}"
    res = run_task(compose_config(["task=cases", f"input={stream}", f"cases.db={db_url}", "cases.follow=true",
                                   "cases.poll_seconds=0.3", "cases.max_polls=8"]))
    later.join()
    assert (res["alerts_added"], res["active_cases"]) == (3, 2)


@pytest.mark.slow
def test_task_cases_reads_the_streams_kafka_topics(tmp_path, kafka_broker):
    """The streaming scorer's alerts and deferred topics, as KafkaOutputs writes them; offsets
    committed per batch, so a second run of the same group reads nothing new."""
    import uuid

    from aml_pipeline.streaming.outputs import KafkaOutputs

    topics = {"alerts": f"alerts-{uuid.uuid4().hex[:8]}", "deferred": f"deferred-{uuid.uuid4().hex[:8]}"}
    out = KafkaOutputs(kafka_broker, topics)
    out.write("0", "alerts", [{**_alert("k1", "A", 0), "source": {"topic": "in", "partition": 0, "offset": 3}},
                              _alert("k2", "B", 1)])
    out.write("0", "deferred", [{**_alert("k3", "A", 2), "deferred_reason": "over_budget"}])
    out.commit("0")
    out.close()
    db_url = f"sqlite:///{tmp_path / 'cases.db'}"
    args = ["task=cases", f"cases.db={db_url}", f"cases.kafka.bootstrap_servers={kafka_broker}",
            f"cases.kafka.topics=[{topics['alerts']},{topics['deferred']}]", f"cases.kafka.group_id=g-{tmp_path.name}",
            "cases.kafka.idle_seconds=20"]
    res = run_task(compose_config(args))
    assert (res["alerts_added"], res["active_cases"], res["kafka_records"]) == (3, 2, 3)
    db = open_db(db_url)
    assert get_alert(db, "k1").details["position"]["offset"] == 3
    assert get_alert(db, "k3").details["deferred_reason"] == "over_budget"
    again = run_task(compose_config([*args, "cases.kafka.idle_seconds=3"]))
    assert again.get("kafka_records", 0) == 0 and again["active_cases"] == 2
