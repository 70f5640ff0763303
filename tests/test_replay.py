"""``task=replay``: a validated data set published in event-time order, to Kafka (the
session's local Apache Kafka broker, ``kafka_broker``) or to JSON-lines files."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime

import pytest

from aml_pipeline.kafka import FORMAT, register
from tests.conftest import start_local_spark
from tests.kafka_topics import consume_all, fresh_topic


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """A session with our connector, to read what replay published with its timestamps."""
    session = start_local_spark(tmp_path_factory)
    register(session)
    return session


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """A small validated parquet (PaySim sample through task=data)."""
    from aml_pipeline.tasks import run_task
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF, DATA

    out = tmp_path_factory.mktemp("replay_data")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "task=data", "source=paysim", f"source.path={DATA / 'paysim_head3000.csv'}", f"paths.data_dir={out}"])
    GlobalHydra.instance().clear()
    run_task(cfg)
    return out / "validated" / "transactions.parquet"


def _replay(compose_cfg, validated, *overrides):
    from aml_pipeline.tasks import run_task

    return run_task(compose_cfg(["task=replay", f"input={validated}", *overrides]))


@pytest.mark.slow
def test_replay_publishes_every_row_in_event_time_order(compose_cfg, validated, kafka_broker):
    import polars as pl
    from datetime import datetime

    topic = fresh_topic("replay")
    events = pl.read_parquet(validated).sort(["event_time", "event_id"], maintain_order=True)
    before = datetime.now().timestamp()
    result = _replay(compose_cfg, validated, f"replay.bootstrap_servers={kafka_broker}", f"replay.topic={topic}")
    assert result["published"] == events.height
    got = consume_all(kafka_broker, topic)
    assert len(got) == events.height
    records = [json.loads(v) for _, _, _, v in got]
    assert [r["event_id"] for r in records] == events["event_id"].to_list()  # one partition: offset order = event-time order
    assert [k.decode() for _, _, k, _ in got] == events["src_account"].to_list()
    first = records[0]
    assert first["event_time"] == events["event_time"][0].strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    assert datetime.fromisoformat(first["published_at"]).timestamp() >= before - 1
    assert first["amount"] == events["amount"][0]


@pytest.mark.slow
def test_replay_timestamps_are_publish_time_and_rate_is_held(compose_cfg, validated, kafka_broker, spark):
    topic = fresh_topic("paced")
    start = time.time()
    _replay(compose_cfg, validated, f"replay.bootstrap_servers={kafka_broker}", f"replay.topic={topic}",
            "replay.rate=200", "replay.limit=100", "replay.partitions=2")
    took = time.time() - start
    assert 0.45 <= took < 10  # 100 events at 200/s: about half a second
    rows = (spark.read.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker)
            .option("subscribe", topic).load().collect())
    assert len(rows) == 100 and {r.partition for r in rows} <= {0, 1}
    for r in rows:
        published = json.loads(r.value)["published_at"]
        kafka_ms = int(r.timestamp.timestamp() * 1000)
        assert abs(kafka_ms - datetime.fromisoformat(published).timestamp() * 1000) <= 1  # CreateTime = publish time
        assert r.timestampType == 0


def test_replay_to_files(compose_cfg, validated, tmp_path):
    import polars as pl

    from aml_pipeline.tasks.replay import iter_lines

    _replay(compose_cfg, validated, "replay.target=file", f"replay.directory={tmp_path / 'in'}", "replay.batch_size=700")
    files = sorted((tmp_path / "in").glob("*.jsonl"))
    events = pl.read_parquet(validated)
    assert len(files) == -(-events.height // 700) and not list((tmp_path / "in").glob(".*"))
    ids = [json.loads(line)["event_id"] for line in iter_lines(tmp_path / "in")]
    assert ids == events.sort(["event_time", "event_id"], maintain_order=True)["event_id"].to_list()


def test_replay_reads_the_configured_source_when_nothing_is_validated(compose_cfg, tmp_path):
    from aml_pipeline.tasks import run_task
    from aml_pipeline.tasks.replay import iter_lines
    from tests.conftest import DATA

    result = run_task(compose_cfg(["task=replay", "source=paysim", f"source.path={DATA / 'paysim_head3000.csv'}",
                                   f"paths.data_dir={tmp_path / 'data'}", "replay.target=file", "replay.limit=50"]))
    lines = list(iter_lines(tmp_path / "data" / "stream" / "in"))  # replay.directory defaults under paths.data_dir
    assert result["published"] == len(lines) == 50
    times = [json.loads(x)["event_time"] for x in lines]
    assert times == sorted(times) and all(t.endswith("+00:00") for t in times)


@pytest.mark.slow
def test_replay_unreachable_broker_is_one_line_error(validated, tmp_path):
    from tests.conftest import run_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = run_cli(["task=replay", f"input={validated}", f"replay.bootstrap_servers=127.0.0.1:{port}"], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: replay: cannot reach Kafka at replay.bootstrap_servers=")
