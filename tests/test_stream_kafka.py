"""The streaming scorer on Apache Kafka (the session's KRaft broker) with both Kafka
connectors: Spark's own (``deploy.connector=spark``: spark-sql-kafka-0-10, jars resolved with
mvn) and ours (``deploy.connector=python``: a PySpark data source on confluent-kafka).

The same records (the test window's events out of order, malformed records, duplicates, late
events, bytes that are not UTF-8) go through ``task=stream deploy=kafka`` with each connector;
each run must score every event exactly as ``task=score`` does and reconcile its counts, and
the two runs must publish the same alerts, deferred alerts, dead letters (with their topic,
partition and offset) and late events. Then, per connector: a scorer killed with SIGKILL
mid-stream restarts from its checkpoint without losing or changing an alert; offsets lost to
retention fail the query unless ``failOnDataLoss=false``; and with neither the connector's jars
nor mvn at hand, ``auto`` falls back to ours and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import ROOT, cli_env, run_cli, spark_kafka_jars_or_fail
from tests.test_stream import (  # noqa: F401  (run: the module's trained bundle and stream records)
    _consume_all,
    _create_topics,
    kill_after_batches,
    assert_parity,
    kafka_round_trip,
    run,
    shadow_bundle,
    stream_args,
)

CONNECTORS = ("spark", "python")


@pytest.fixture(scope="module")
def output_broker():
    """A second Apache Kafka broker for the output topics (``deploy.output_bootstrap_servers``)."""
    from aml_pipeline.testing.broker import KafkaBroker

    with KafkaBroker() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="module")
def kafka_runs(run, kafka_broker, output_broker, shadow_bundle):
    """One uninterrupted run per connector, each on its own topics (computed when first asked for);
    the python connector's with a shadow bundle (deploy.shadow), whose topic is read back too."""
    done: dict[str, tuple] = {}

    def get(connector: str):
        if connector not in done:
            if connector == "spark":
                spark_kafka_jars_or_fail()
            tag = f"{connector}_{uuid.uuid4().hex[:8]}"
            args = stream_args(run, f"kafka_{connector}", "deploy.once=true", "deploy.max_records_per_batch=150",
                               f"deploy.connector={connector}",
                               *([f"deploy.shadow={shadow_bundle}"] if connector == "python" else []))
            done[connector] = (*kafka_round_trip(run, kafka_broker, args, tag, output_broker=output_broker), tag)
        return done[connector]

    return get


def _unique(records: list[dict], key: str) -> dict[str, dict]:
    """Records by ``key``; the outputs are at-least-once, so a key may repeat, with the same record."""
    out: dict[str, dict] = {}
    for r in records:
        k = r[key]
        if k in out:
            same = {"scored_at": None, "batch_id": None, "_headers": None}
            assert {**out[k], **same} == {**r, **same}, k
        out[k] = r
    return out


@pytest.mark.slow
@pytest.mark.parametrize("connector", CONNECTORS)
def test_kafka_stream_matches_offline_and_reconciles(run, kafka_runs, kafka_broker, output_broker, connector):
    """Every event scored as offline, counts reconcile (checked in kafka_round_trip), the
    connector the notice names is the one asked for, outputs on the second broker only."""
    from confluent_kafka.admin import AdminClient

    records, summary, got, tag = kafka_runs(connector)
    assert summary["connector"] == connector
    assert f"kafka connector: {connector} (deploy.connector={connector}" in summary["_stderr"]
    assert summary["reader"] == ("ranges" if connector == "python" else None)
    on_input = set(AdminClient({"bootstrap.servers": kafka_broker}).list_topics(timeout=30).topics)
    assert f"input_{tag}" in on_input and not {f"{k}_{tag}" for k in got} & on_input
    assert {d["record"] for d in got["dead_letter"] if d["record"] is not None} == set(run.expected["dead"])


@pytest.mark.slow
def test_kafka_shadow_topic_has_one_decision_per_scored_event(run, kafka_runs):
    """deploy.shadow on Kafka: the challenger's decisions go to their own topic (keyed and
    labelled by event id), one per scored event; without a shadow that topic stays empty."""
    _, summary, got, _ = kafka_runs("python")
    shadow = got["shadow"]
    assert {r["event_id"] for r in shadow} == {d["event_id"] for d in got["decisions"]}
    assert len({r["event_id"] for r in shadow}) == summary["counts"]["scored"]
    assert all(r["_key"] == r["event_id"] == r["_headers"]["aml.id"] and r["_headers"]["aml.kind"] == "shadow"
               for r in shadow)
    assert all(r["bundle_hash"] == run.bundle.bundle_hash != r["shadow_bundle_hash"] for r in shadow)
    assert summary["shadow"]["failures"] == 0 and kafka_runs("spark")[2]["shadow"] == []


@pytest.mark.slow
@pytest.mark.parametrize("connector", CONNECTORS)
def test_outputs_are_keyed_by_account_with_headers(run, kafka_runs, connector):
    """Alerts, deferred alerts and late events are keyed by the sending account (decisions, which
    do not carry it, by event id);
    headers name the record (aml.id), the reason, the model and bundle hash and where the
    event was read; dead letters carry Kafka Connect's DLQ headers with their offset."""
    records, _, got, tag = kafka_runs(connector)
    model = f"{run.bundle.trace['model_name']}:{run.bundle.trace['model_version']}"
    for kind in ("alerts", "deferred", "late"):
        assert got[kind] and all(r["_key"] == r["src_account"] for r in got[kind]), kind
    assert all(r["_key"] == r["event_id"] == r["_headers"]["aml.id"] for r in got["decisions"])  # no account in them
    for kind in ("alerts", "deferred"):
        for a in got[kind]:
            h = a["_headers"]
            assert h["aml.kind"] == kind and h["aml.id"] == a["alert_id"] and h["aml.model"] == model
            assert h["aml.bundle_hash"] == run.bundle.bundle_hash
            src = a["source"]
            assert src["topic"] == f"input_{tag}" and h["aml.source.offset"] == str(src["offset"])
            assert h["aml.source.partition"] == str(src["partition"])
            assert json.loads(records[src["partition"] + 2 * src["offset"]])["event_id"] == a["event_id"]
            if kind == "deferred":
                assert h["aml.reason"] == a["deferred_reason"]
    for d in got["dead_letter"]:
        h = d["_headers"]
        assert h["aml.kind"] == "dead_letter" and h["aml.reason"] == ",".join(d["reasons"])
        assert (h["__connect.errors.topic"], h["__connect.errors.partition"], h["__connect.errors.offset"]) == (
            d["topic"], str(d["partition"]), str(d["offset"]))
        assert h["__connect.errors.exception.message"] == ",".join(d["reasons"])
        assert h["aml.bundle_hash"] == run.bundle.bundle_hash
    assert all(x["_headers"]["aml.reason"] == "late" and x["_headers"]["aml.id"] == x["event_id"] for x in got["late"])


@pytest.mark.slow
@pytest.mark.parametrize("connector", CONNECTORS)
def test_dead_letters_keep_their_offsets_and_the_budget_defers(run, kafka_runs, connector):
    """Each dead letter names the partition and offset its record was produced at (record i went
    to partition i % 2, so it sits at offset i // 2), with the original text; the budget (cap 5 a
    day per jurisdiction) deferred alerts with their reason; late events are the expected ones."""
    records, summary, got, _ = kafka_runs(connector)
    for d in got["dead_letter"]:
        i = d["partition"] + 2 * d["offset"]
        assert d["batch_id"] is not None and d["reasons"]
        if d["record"] is not None:
            assert records[i].decode() == d["record"], d
        else:
            assert records[i] == b"\xff\xfe not utf-8"
    for x in got["late"]:
        assert records[x["partition"] + 2 * x["offset"]].decode() == x["record"] and x["reasons"] == ["late"]
    assert got["deferred"] and all("alert budget: jurisdiction=" in a["deferred_reason"] for a in got["deferred"])
    c = summary["counts"]
    assert (c["alerts"], c["deferred"]) == (len(_unique(got["alerts"], "alert_id")), len(_unique(got["deferred"], "alert_id")))


@pytest.mark.slow
def test_both_connectors_publish_the_same_outputs(kafka_runs):
    """Spark's connector and ours: the same counts, alerts, deferred alerts (with reasons),
    dead letters (reasons and positions) and late events."""
    a, b = kafka_runs("spark"), kafka_runs("python")
    ca, cb = a[1]["counts"], b[1]["counts"]
    assert {**ca, "batches": 0} == {**cb, "batches": 0}
    for kind in ("alerts", "deferred"):
        ga, gb = _unique(a[2][kind], "alert_id"), _unique(b[2][kind], "alert_id")
        assert set(ga) == set(gb) and len(ga) > 0, kind
        strip = ("scored_at", "batch_id", "_key", "_headers")

        def same(r: dict) -> dict:  # each run read its own input topic: compare partition and offset
            return {**{f: v for f, v in r.items() if f not in strip},
                    "source": {f: v for f, v in r["source"].items() if f != "topic"}}

        assert {k: same(r) for k, r in ga.items()} == {k: same(r) for k, r in gb.items()}, kind

    def positions(got, kind):
        return sorted((d["partition"], d["offset"], tuple(d["reasons"]), d.get("event_id")) for d in got[kind])

    assert positions(a[2], "dead_letter") == positions(b[2], "dead_letter")
    assert positions(a[2], "late") == positions(b[2], "late")
    drop = ("_key", "_headers", "scored_at", "batch_id")
    da = pl.DataFrame(a[2]["decisions"], infer_schema_length=None).drop(*drop, strict=False)
    db = pl.DataFrame(b[2]["decisions"], infer_schema_length=None).drop(*drop, strict=False)
    assert da.sort("event_id").equals(db.sort("event_id").select(da.columns))


# ----------------------------------------------------------------------------- kill and restart
def _produce(bootstrap: str, topic: str, values: list[bytes], partitions: int = 2) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=i % partitions)
    assert producer.flush(30) == 0


def _kafka_args(run, name: str, bootstrap: str, topics: dict, connector: str, *extra: str) -> list[str]:
    args = [a for a in stream_args(run, name, *extra) if not a.startswith(("deploy=", "deploy.input=", "deploy.output="))]
    return [*args, "deploy=kafka", f"deploy.bootstrap_servers={bootstrap}", f"deploy.connector={connector}",
            *[f"deploy.topics.{k}={t}" for k, t in topics.items()]]


@pytest.mark.slow
@pytest.mark.parametrize("connector", CONNECTORS)
def test_killed_scorer_on_kafka_restarts_without_losing_alerts(run, kafka_runs, kafka_broker, connector):
    """SIGKILL (the scorer and its JVM) after its 4th micro-batch of 150 records, restart with
    micro-batches of 400: Spark replays the uncommitted micro-batch from its checkpoint's
    offsets, and the alerts, deferred alerts and counts equal the uninterrupted run's."""
    records, whole, whole_got, _ = kafka_runs(connector)
    tag = f"kill_{connector}_{uuid.uuid4().hex[:8]}"
    topics = {k: f"{k}_{tag}" for k in ("input", "alerts", "dead_letter", "deferred", "late", "decisions")}
    _create_topics(kafka_broker, {topics["input"]: 2, **{t: 1 for k, t in topics.items() if k != "input"}})
    _produce(kafka_broker, topics["input"], records)
    name = f"kafka_killed_{connector}"
    base = run.dir / name
    args = _kafka_args(run, name, kafka_broker, topics, connector, "deploy.once=true", "deploy.max_records_per_batch=150")
    killed_at = kill_after_batches(args, run.dir, base / "checkpoint")
    assert killed_at >= 4 and not (base / "reports/stream_summary.json").exists()
    r = run_cli([*args, "deploy.max_records_per_batch=400"], cwd=run.dir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"resuming after batch {killed_at}" in r.stderr
    got = {k: _consume_all(kafka_broker, t) for k, t in topics.items() if k != "input"}
    for kind in ("alerts", "deferred"):
        assert set(_unique(got[kind], "alert_id")) == set(_unique(whole_got[kind], "alert_id")), kind
    summary = json.loads((base / "reports/stream_summary.json").read_text())
    assert summary["counts"] == {**whole["counts"], "batches": summary["counts"]["batches"]}
    decisions = pl.DataFrame(list(_unique(got["decisions"], "event_id").values()), infer_schema_length=None).drop("_key", "_headers")
    assert set(decisions["event_id"].to_list()) == set(run.window["event_id"].to_list())
    assert_parity(run, decisions)


# ----------------------------------------------------------------------------- lost offsets
@pytest.mark.slow
@pytest.mark.parametrize("connector", CONNECTORS)
def test_offsets_lost_to_retention_fail_unless_allowed(run, kafka_broker, connector):
    """The scorer reads the first records; then the log's start moves past its checkpointed
    offset (Kafka's DeleteRecords, what retention does): the next run fails, naming the data
    loss; with ``failOnDataLoss=false`` it reads on from the log's new start and counts exactly
    the records still there."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    if connector == "spark":
        spark_kafka_jars_or_fail()
    tag = f"loss_{connector}_{uuid.uuid4().hex[:8]}"
    topics = {k: f"{k}_{tag}" for k in ("input", "alerts", "dead_letter", "deferred", "late", "decisions")}
    _create_topics(kafka_broker, {t: 1 for t in topics.values()})
    lines = [t.encode() for f in run.files for t in f if t.startswith('{"event_id": "synthetic')]
    first, second = lines[:120], lines[120:240]
    _produce(kafka_broker, topics["input"], first, partitions=1)
    name = f"kafka_loss_{connector}"
    args = _kafka_args(run, name, kafka_broker, topics, connector, "deploy.once=true")
    r = run_cli(args, cwd=run.dir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run.dir / name / "reports/stream_summary.json").read_text())
    assert summary["counts"]["records_in"] == 120
    _produce(kafka_broker, topics["input"], second, partitions=1)  # offsets 120..239
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    lost = 150  # offsets 120..149 go before the scorer reads them
    for f in admin.delete_records([TopicPartition(topics["input"], 0, lost)]).values():
        assert f.result(30).low_watermark == lost
    r = run_cli(args, cwd=run.dir, timeout=900)
    err = r.stderr.lower()
    assert r.returncode != 0 and ("data loss" in err or "data may have been lost" in err), r.stderr[-3000:]
    r = run_cli([*args, "+deploy.options.failOnDataLoss=false"], cwd=run.dir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run.dir / name / "reports/stream_summary.json").read_text())
    c = summary["counts"]
    assert c["records_in"] == 120 + (240 - lost) and summary["reconciles"] is True
    positions = {d["offset"] for d in _consume_all(kafka_broker, topics["dead_letter"])}
    positions |= {d["offset"] for d in _consume_all(kafka_broker, topics["late"])}
    assert not positions & set(range(120, lost))  # nothing of the lost range was read


# ----------------------------------------------------------------------------- without the jars
@pytest.mark.slow
def test_auto_falls_back_to_our_connector_without_the_jars(run, kafka_broker, tmp_path):
    """No cached connector jars (an empty AML_CACHE_DIR) and no mvn on PATH: deploy.connector=auto
    says why it uses ours, and scores; deploy.connector=spark refuses in one line."""
    tag = f"nojar_{uuid.uuid4().hex[:8]}"
    topics = {k: f"{k}_{tag}" for k in ("input", "alerts", "dead_letter", "deferred", "late", "decisions")}
    _create_topics(kafka_broker, {t: 1 for t in topics.values()})
    lines = [t.encode() for f in run.files for t in f if t.startswith('{"event_id": "synthetic')][:100]
    _produce(kafka_broker, topics["input"], lines, partitions=1)
    # a PATH with every command of this machine's but mvn (bash, java, ... stay for Spark's scripts)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        for f in Path(d).glob("*") if Path(d).is_dir() else []:
            target = bin_dir / f.name
            if not f.name.startswith("mvn") and not target.exists() and not target.is_symlink():
                target.symlink_to(f)
    env = {**cli_env(), "PYTHONPATH": str(ROOT), "AML_CACHE_DIR": str(tmp_path / "empty-cache"), "PATH": str(bin_dir)}
    name = "kafka_nojar"
    args = _kafka_args(run, name, kafka_broker, topics, "auto", "deploy.once=true")
    r = subprocess.run([sys.executable, "-m", "aml_pipeline", *args], cwd=run.dir, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    notice = [line for line in r.stderr.splitlines() if line.startswith("kafka connector:")]
    assert len(notice) == 1 and notice[0].startswith("kafka connector: python (deploy.connector=auto and "
                                                     "spark-sql-kafka-0-10_2.13 is not available: ")
    assert "mvn is not installed" in notice[0]
    summary = json.loads((run.dir / name / "reports/stream_summary.json").read_text())
    assert summary["connector"] == "python" and summary["reader"] == "ranges"
    assert summary["counts"]["records_in"] == 100 and summary["reconciles"] is True
    spark_args = [a for a in args if not a.startswith("deploy.connector=")] + ["deploy.connector=spark"]
    r = subprocess.run([sys.executable, "-m", "aml_pipeline", *spark_args],
                       cwd=run.dir, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: deploy.connector=spark: spark-sql-kafka-0-10_2.13 is not available (")
