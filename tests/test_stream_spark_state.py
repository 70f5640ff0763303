"""``deploy.state=spark``: the streaming scorer with its state in Spark (transformWithStateInPandas,
RocksDB), as users run it (``python -m aml_pipeline task=stream deploy.state=spark``).

A small quickstart run with ``features=streaming_local`` (the default plan without the graph
step, whose 2-hop paths need other accounts' histories) gives the bundle; ``task=score`` over
all its events is the reference. The test window goes through the stream as in
``tests/test_stream.py``: out of order within and across micro-batches (within the allowed
lateness), with malformed records, a duplicate and late events. Every event must get the
reference's feature values and score to 1e-9, on files and on the local Kafka broker, and
every record must be scored, dead-lettered or late, and counted.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import polars as pl
import pytest

from aml_pipeline.errors import UserError
from aml_pipeline.streaming.outputs import read_jsonl
from tests.conftest import SMALL_RUN, compose_config, run_cli
from tests.test_stream import _stream_files, assert_parity, decisions_of, kafka_round_trip, write_files

LOCAL = [*SMALL_RUN, "features=streaming_local"]
LATENESS = "1d"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """data -> features -> train with the per-account plan (no MLflow), the task=score reference, the stream's files."""
    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.tasks import run_task

    d = tmp_path_factory.mktemp("spark_state_run")
    paths = [f"paths.data_dir={d / 'data'}", f"paths.models_dir={d / 'models'}", f"paths.reports_dir={d / 'reports'}"]
    for task in ("data", "features", "train"):
        run_task(compose_config([*LOCAL, *paths, f"task={task}"]))
    test_start = json.loads((d / "data/features/split.json").read_text())["test_start"]
    validated = d / "data/validated/transactions.parquet"
    run_task(compose_config([*LOCAL, *paths, "task=score", f"bundle={d / 'models/bundle'}", f"input={validated}",
                             f"output={d / 'reference.parquet'}", "scoring.explain=none"]))
    ref = pl.read_parquet(d / "reference.parquet")
    start = pl.Series([test_start]).str.to_datetime(time_zone="UTC")[0]
    window = pl.read_parquet(validated).filter(pl.col("event_time") >= start)
    files, expected = _stream_files(window)
    bundle = ModelBundle.load(d / "models/bundle")
    assert not any(c.startswith(("cycle3_", "dst_2hop", "src_2hop")) for c in bundle.feature_columns())
    return SimpleNamespace(dir=d, bundle_dir=d / "models/bundle", validated=validated, test_start=test_start,
                           ref={r["event_id"]: r for r in ref.iter_rows(named=True)}, window=window, files=files,
                           expected=expected, columns=bundle.feature_columns(), bundle=bundle)


def spark_args(run, name: str, *extra: str) -> list[str]:
    base = run.dir / name
    return ["task=stream", "deploy=file", "deploy.state=spark", f"bundle={run.bundle_dir}", "engine.master='local[2]'",
            "engine.shuffle_partitions=2", f"paths.data_dir={base / 'data'}", f"paths.reports_dir={base / 'reports'}",
            f"deploy.input={base / 'in'}", f"deploy.output={base / 'out'}", f"deploy.checkpoint={base / 'checkpoint'}",
            f"deploy.warm_from={run.validated}", f"deploy.warm_until='{run.test_start}'",
            f"deploy.allowed_lateness={LATENESS}", "deploy.write_decisions=true",
            "deploy.budget.key=jurisdiction", "deploy.budget.window=1d", "deploy.budget.cap=5", *extra]


# ----------------------------------------------------------------------------- fast
def test_default_plan_is_refused_naming_the_graph_step():
    from aml_pipeline.features.plan import FeaturePlan
    from aml_pipeline.streaming.spark_state import refuse_cross_account, side_columns

    default = FeaturePlan.from_config(compose_config([]).features.steps)
    with pytest.raises(UserError) as err:
        refuse_cross_account(default)
    msg = str(err.value)
    assert "\n" not in msg and "features.steps.graph (graph)" in msg and "deploy.state=store" in msg
    assert "cycle3_7d" in msg and "dst_2hop_in_7d" in msg and "src_2hop_in_7d" in msg
    local = FeaturePlan.from_config(compose_config(["features=streaming_local"]).features.steps)
    refuse_cross_account(local)  # nothing to refuse
    src, dst = side_columns(local)
    assert set(src) | set(dst) == set(local.feature_columns()) and not set(src) & set(dst)
    assert "dst_in_sum_24h" in dst and "dst_secs_since_prev" in dst and "amount_vs_src_mean" in src and "hour" in src


def test_staging_a_micro_batch_without_data_yields_nothing():
    """Spark runs micro-batches without data to move the watermark on (a processing-time
    trigger with the stream idle); the staging function then gets no Arrow batch at all."""
    from aml_pipeline.streaming.spark_state import make_stage

    currencies = list(compose_config([]).validation.currencies)
    for source in ("kafka", "file"):
        assert list(make_stage(source, currencies)(iter([]))) == []


# ----------------------------------------------------------------------------- on Spark
@pytest.fixture(scope="module")
def file_run(run):
    base = run.dir / "files"
    records = write_files(base / "in", run.files)
    r = run_cli(spark_args(run, "files", "deploy.once=true", "deploy.max_files_per_trigger=2"), cwd=run.dir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return SimpleNamespace(out=base / "out", records=records, stderr=r.stderr,
                           summary=json.loads((base / "reports/stream_summary.json").read_text()))


@pytest.mark.slow
def test_spark_state_on_files_matches_offline_and_reconciles(run, file_run):
    decisions = decisions_of(file_run.out)
    assert set(decisions["event_id"].to_list()) == set(run.window["event_id"].to_list())
    assert_parity(run, decisions)
    s = file_run.summary
    c = s["counts"]
    dead = read_jsonl(file_run.out / "dead_letter")
    late = read_jsonl(file_run.out / "late")
    assert c["records_in"] == file_run.records == decisions.height + len(dead) + len(late)
    assert (c["scored"], c["dead_lettered"], c["late"], c["pending"]) == (decisions.height, len(dead), len(late), 0)
    assert s["reconciles"] is True and s["state"] == "spark" and s["unmatched_halves"] == 0
    assert c["batches"] >= 5
    # the stages are timed per micro-batch: together they fit in the scorer's busy time
    assert set(s["stage_seconds"]) >= {"read", "model", "outputs", "commit"}
    assert 0 < sum(s["stage_seconds"].values()) <= s["busy_seconds"] + 0.01
    # the micro-batches really brought events after later ones (within the lateness)
    assert "state spark (RocksDB)" in file_run.stderr
    by_text = {d["record"]: d for d in dead}
    assert set(by_text) == set(run.expected["dead"])
    for text, reasons in run.expected["dead"].items():
        assert by_text[text]["reasons"] == reasons, (text, by_text[text])
    assert sorted(x["event_id"] for x in late) == run.expected["late"]
    assert all(x["reasons"] == ["late"] and x["watermark"] and x["record"] and x["file"] for x in late)
    # alerts and deferrals: every alerting decision is one or the other
    alerts, deferred = read_jsonl(file_run.out / "alerts"), read_jsonl(file_run.out / "deferred")
    assert {a["event_id"] for a in alerts} | {a["event_id"] for a in deferred} == set(
        decisions.filter(pl.col("alert"))["event_id"].to_list())
    assert (c["alerts"], c["deferred"]) == (len(alerts), len(deferred)) and deferred


@pytest.mark.slow
def test_spark_state_keeps_its_state_in_the_checkpoint_with_rocksdb(run, file_run):
    ck = run.dir / "files/checkpoint/spark"
    assert (ck / "state").is_dir() and any((ck / "state").rglob("*.zip")), "RocksDB snapshots in Spark's checkpoint"
    offsets = sorted((ck / "offsets").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    conf = json.loads(offsets[-1].read_text().splitlines()[1])["conf"]
    assert conf["spark.sql.streaming.stateStore.providerClass"].endswith("RocksDBStateStoreProvider")


@pytest.mark.slow
def test_spark_state_on_kafka_matches_offline_and_reconciles(run, file_run, kafka_broker):
    records, summary, got = kafka_round_trip(
        run, kafka_broker, spark_args(run, "kafka", "deploy.once=true", "deploy.max_records_per_batch=150"),
        f"sp_{os.getpid()}_{int(time.time())}")
    for kind in ("alerts", "deferred"):  # the same decisions as over files: same alert ids
        assert {a["alert_id"] for a in got[kind]} == {a["alert_id"] for a in read_jsonl(file_run.out / kind)}


def _committed(base) -> int:
    """The last micro-batch the scorer committed under ``base`` (-1: none yet)."""
    try:
        return json.loads((base / "checkpoint/scorer/state.json").read_text())["batch_id"]
    except (OSError, ValueError):
        return -1


def _started_until_committed(run, base, args: list[str], batch: int, files: list[list[str]] | None = None, **popen):
    """``task=stream`` on the test files (or ``files``) under ``base``, returned still running
    once the scorer has committed micro-batch ``batch``."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    write_files(base / "in", run.files if files is None else files)
    with open(base / "stderr.log", "w") as err:  # a file, not a pipe: nothing blocks on a full pipe
        proc = subprocess.Popen([sys.executable, "-m", "aml_pipeline", *args], cwd=run.dir,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                stderr=err, **popen)
    deadline = time.monotonic() + 600
    while _committed(base) < batch and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None or _committed(base) < batch:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the scorer ended or stalled before micro-batch {batch}: "
                             f"{(base / 'stderr.log').read_text()[-3000:]}")
    return proc


@pytest.mark.slow
def test_spark_state_killed_mid_stream_restarts_from_its_checkpoint(run, file_run):
    """SIGKILL (scorer and JVM) after a few micro-batches, restart: Spark's state comes back from
    the checkpoint (eight files per micro-batch from then on), no batch is counted twice, and the
    alerts and counts are the uninterrupted run's."""
    import signal

    base = run.dir / "killed"
    args = spark_args(run, "killed", "deploy.once=true", "deploy.max_files_per_trigger=1")
    proc = _started_until_committed(run, base, args, 3, start_new_session=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _committed(base)
    assert 3 <= killed_at < len(run.files) - 1
    r = run_cli([*args, "deploy.max_files_per_trigger=8"], cwd=run.dir, timeout=900)  # batched differently
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"resuming after batch {killed_at}" in r.stderr
    summary = json.loads((base / "reports/stream_summary.json").read_text())
    assert summary["reconciles"] is True and summary["unmatched_halves"] == 0
    keep = ("records_in", "scored", "dead_lettered", "late", "pending", "alerts", "deferred")
    assert {k: summary["counts"][k] for k in keep} == {k: file_run.summary["counts"][k] for k in keep}
    for kind in ("alerts", "deferred"):
        assert sorted(a["alert_id"] for a in read_jsonl(base / "out" / kind)) == sorted(
            a["alert_id"] for a in read_jsonl(file_run.out / kind))
    assert_parity(run, decisions_of(base / "out"))


@pytest.mark.slow
def test_spark_state_stops_cleanly_on_sigterm_mid_stream(run):
    """SIGTERM while micro-batches run (a processing-time trigger, one file per micro-batch):
    the micro-batch the stop interrupts is not a failure; the release runs (it reads what waits
    in the source first, then moves the watermark), the summary is written and reconciles, and
    the exit code is 0."""
    import signal

    base = run.dir / "sigterm"
    args = spark_args(run, "sigterm", "deploy.trigger='1 second'", "deploy.max_files_per_trigger=1")
    files = run.files[:6]  # files still wait when the stop comes: the release must read them
    proc = _started_until_committed(run, base, args, 2, files=files)
    try:
        proc.send_signal(signal.SIGTERM)  # the next micro-batch is already running (a file waits for each)
        proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (base / "stderr.log").read_text()[-4000:]
    summary = json.loads((base / "reports/stream_summary.json").read_text())
    c = summary["counts"]
    assert summary["stopped_by"] == "SIGTERM" and summary["reconciles"] is True
    assert c["pending"] == summary["held_in_spark_state"] and summary["unmatched_halves"] == 0
    assert c["records_in"] == sum(len(f) for f in files) and c["scored"] > 0  # the release read the rest of the files
