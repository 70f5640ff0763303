"""The Kafka connector (aml_pipeline.kafka) against a real local Apache Kafka broker
(KRaft, the session's ``kafka_broker``); the two broker wrappers' own tests also run noida-db.

Streaming reads must deliver every record exactly once into Spark across restarts from the
checkpoint; the sink must put back what it was given; bad options must fail naming the option.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from datetime import datetime

import pytest

from aml_pipeline.errors import ConfigError
from aml_pipeline.kafka import (
    FORMAT,
    SCHEMA,
    RangeFetcher,
    RangeReader,
    error_message,
    register,
    validate_sink_options,
    validate_source_options,
)
from aml_pipeline.kafka.offsets import prorate
from aml_pipeline.testing.broker import KafkaBroker, LocalBroker
from tests.conftest import spark_kafka_jars_or_fail, start_local_spark


def _topic(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def produce(bootstrap: str, topic: str, records: list[tuple[str | None, str]], partition: int | None = None) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    errors = []
    for key, value in records:
        kwargs = {"partition": partition} if partition is not None else {}
        producer.produce(topic, key=key, value=value, on_delivery=lambda e, m: e and errors.append(e), **kwargs)
    assert producer.flush(30) == 0 and not errors


def consume_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every record of ``topic`` as (partition, offset, key, value), read with a plain consumer."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "check", "enable.auto.commit": False})
    out = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            while True:
                msg = consumer.poll(10)
                assert msg is not None, f"timed out reading {topic}-{p}"
                assert msg.error() is None, msg.error()
                out.append((p, msg.offset(), msg.key(), msg.value()))
                if msg.offset() >= high - 1:
                    break
    finally:
        consumer.close()
    return out


def create(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep the client alive until the result
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(15)


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    session = start_local_spark(tmp_path_factory)
    register(spark=session)
    return session


def stream_to_parquet(spark, bootstrap: str, topic: str, out, checkpoint, fmt: str = FORMAT, **options):
    """``fmt``: our source (``aml_kafka``) or Spark's own (``kafka``; its jars are on the test
    JVM's classpath, see conftest)."""
    reader = (spark.readStream.format(fmt).option("kafka.bootstrap.servers", bootstrap)
              .option("subscribe", topic))
    for key, value in {"startingOffsets": "earliest", **options}.items():
        reader = reader.option(key, str(value))
    query = (reader.load().writeStream.format("parquet").option("path", str(out))
             .option("checkpointLocation", str(checkpoint)).trigger(availableNow=True).start())
    query.awaitTermination(300)
    assert query.exception() is None
    return query


# ----------------------------------------------------------------------------- options (fast)


def test_missing_bootstrap_names_the_option():
    with pytest.raises(ConfigError, match="kafka.bootstrap.servers"):
        validate_source_options({"subscribe": "x"})
    with pytest.raises(ConfigError, match="kafka.bootstrap.servers"):
        validate_sink_options({"topic": "x"})


@pytest.mark.parametrize("bad", ["newest", "{\"t\": {\"0\": \"x\"}}", "[1, 2]"])
def test_bad_starting_offsets_names_the_option(bad):
    with pytest.raises(ConfigError, match="startingOffsets"):
        validate_source_options({"kafka.bootstrap.servers": "h:1", "subscribe": "x", "startingOffsets": bad})


def test_other_option_errors():
    base = {"kafka.bootstrap.servers": "h:1"}
    with pytest.raises(ConfigError, match="subscribe"):
        validate_source_options(base)
    with pytest.raises(ConfigError, match="maxOffsetsPerTrigger"):
        validate_source_options({**base, "subscribe": "x", "maxOffsetsPerTrigger": "0"})
    with pytest.raises(ConfigError, match="failOnDataLoss"):
        validate_source_options({**base, "subscribe": "x", "failOnDataLoss": "maybe"})
    with pytest.raises(ConfigError, match="aml.reader must be one of driver, tasks, ranges, got 'executors'"):
        validate_source_options({**base, "subscribe": "x", "aml.reader": "executors"})
    with pytest.raises(ConfigError, match="option aml.prefetchRecords must be an integer >= 0, got '-1'"):
        validate_source_options({**base, "subscribe": "x", "aml.prefetchRecords": "-1"})
    assert validate_source_options({**base, "subscribe": "x", "aml.prefetchRecords": "0"}).prefetch_records == 0
    with pytest.raises(ConfigError, match="value"):
        validate_sink_options({**base, "topic": "x"}, ["key", "payload"])
    with pytest.raises(ConfigError, match="topic"):
        validate_sink_options(base, ["key", "value"])
    with pytest.raises(ConfigError, match="headers"):
        validate_sink_options({**base, "topic": "x"}, ["value", "headers"])
    opts = validate_source_options({**base, "subscribe": "a, b", "startingOffsets": '{"a": {"0": 5}}',
                                    "maxOffsetsPerTrigger": "10"})
    assert opts.subscribe == ("a", "b") and opts.starting == {"a": {"0": 5}} and opts.max_offsets_per_trigger == 10


def test_prorate_shares_the_limit_by_backlog():
    a, b, c = ("t", 0), ("t", 1), ("t", 2)
    start = {a: 0, b: 10, c: 5}
    end = {a: 60, b: 40, c: 5}  # backlogs 60, 30, 0
    assert prorate(start, end, 30) == {a: 20, b: 20, c: 5}
    assert prorate(start, end, 1000) == end
    capped = prorate(start, end, 7)
    assert sum(capped[tp] - start[tp] for tp in end) == 7


# ----------------------------------------------------------------------------- broker


#: The two local brokers: Apache Kafka (the tests' broker) and noida-db (no Java needed).
BROKERS = pytest.mark.parametrize("kind", ["KafkaBroker", "LocalBroker"])


@BROKERS
def test_local_broker_starts_creates_topics_and_stops(kind):
    with {"KafkaBroker": KafkaBroker, "LocalBroker": LocalBroker}[kind]({"a": 3, "b": 1}) as broker:
        port = broker.port
        produce(broker.bootstrap, "a", [(None, "x")] * 3)
        from confluent_kafka.admin import AdminClient

        topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
        assert len(topics["a"].partitions) == 3 and len(topics["b"].partitions) == 1
        proc, data = broker.proc, broker._data_dir
        assert broker.start_seconds < 60
    assert proc.poll() is not None and not data.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@BROKERS
def test_local_broker_dies_with_the_process_that_started_it(tmp_path, kind):
    """A test run killed with SIGKILL must not leave a broker behind."""
    import os
    import signal
    import subprocess
    import sys

    script = (f"from aml_pipeline.testing.broker import {kind}; import time\n"
              f"b = {kind}(data_dir={str(tmp_path / 'broker')!r}).start(); print(b.proc.pid, b.port, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid, port = map(int, parent.stdout.readline().split())
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the broker outlived the process that started it")


# ----------------------------------------------------------------------------- source (Spark)


#: Our source with each of its stream readers, and Spark's own connector ("spark").
READERS = pytest.mark.parametrize("reader", ["driver", "tasks", "spark"])


def _format(reader: str) -> tuple[str, dict]:
    """(format, options) of a READERS value."""
    if reader == "spark":
        spark_kafka_jars_or_fail()
        return "kafka", {}
    return FORMAT, {"aml.reader": reader}


@pytest.mark.slow
@READERS
def test_stream_reads_each_record_once_across_restarts(spark, kafka_broker, tmp_path, reader):
    fmt, options = _format(reader)
    topic = _topic("raw")
    create(kafka_broker, topic, 3)
    first = [(f"k{i % 11}", json.dumps({"i": i})) for i in range(300)]
    produce(kafka_broker, topic, first)
    out, ck = tmp_path / "out", tmp_path / "ck"

    stream_to_parquet(spark, kafka_broker, topic, out, ck, fmt, **options)
    rows = spark.read.parquet(str(out)).collect()
    assert len(rows) == 300
    assert sorted(json.loads(r.value)["i"] for r in rows) == list(range(300))
    by_part: dict[int, list[int]] = {}
    for r in rows:
        by_part.setdefault(r.partition, []).append(r.offset)
    assert len(by_part) == 3  # keys spread over the 3 partitions
    for offsets in by_part.values():
        assert sorted(offsets) == list(range(len(offsets)))  # contiguous, no gap, no duplicate
    assert {r.topic for r in rows} == {topic} and {r.timestampType for r in rows} == {0}
    assert all(r.key.decode().startswith("k") for r in rows)

    second = [(f"k{i % 11}", json.dumps({"i": i})) for i in range(300, 420)]
    produce(kafka_broker, topic, second)
    stream_to_parquet(spark, kafka_broker, topic, out, ck, fmt, **options)  # restart from the checkpoint
    rows = spark.read.parquet(str(out)).collect()
    assert len(rows) == 420
    assert sorted(json.loads(r.value)["i"] for r in rows) == list(range(420))
    assert len({(r.partition, r.offset) for r in rows}) == 420


@pytest.mark.slow
def test_ranges_reader_plans_ranges_that_tile_the_topic_and_the_fetcher_reads_them(spark, kafka_broker, tmp_path):
    """aml.reader=ranges: each micro-batch's rows are its offset ranges; across a restart they
    cover every offset exactly once, and RangeFetcher turns them into the records, in order."""
    topic = _topic("ranges")
    create(kafka_broker, topic, 3)
    produce(kafka_broker, topic, [(f"k{i % 7}", json.dumps({"i": i})) for i in range(200)])
    out, ck = tmp_path / "out", tmp_path / "ck"
    options = {"aml.reader": "ranges", "maxOffsetsPerTrigger": 60}
    stream_to_parquet(spark, kafka_broker, topic, out, ck, **options)
    produce(kafka_broker, topic, [(f"k{i % 7}", json.dumps({"i": i})) for i in range(200, 260)])
    query = stream_to_parquet(spark, kafka_broker, topic, out, ck, **options)  # restart from the checkpoint
    ranges = spark.read.parquet(str(out))
    assert ranges.columns == ["topic", "partition", "startOffset", "endOffset"]
    rows = ranges.collect()
    assert {r.topic for r in rows} == {topic} and all(r.endOffset > r.startOffset for r in rows)
    assert query.lastProgress["numInputRows"] <= 3  # a micro-batch holds a row per partition, not the records
    by_part: dict[int, list[tuple[int, int]]] = {}
    for r in rows:
        by_part.setdefault(r.partition, []).append((r.startOffset, r.endOffset))
    published = consume_all(kafka_broker, topic)
    for part, spans in by_part.items():
        spans.sort()
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap
        assert spans[-1][1] == 1 + max(o for p, o, _, _ in published if p == part)
    assert set(by_part) == {p for p, _, _, _ in published}

    fetcher = RangeFetcher({"kafka.bootstrap.servers": kafka_broker, "subscribe": topic, "aml.reader": "ranges"})
    try:
        import pyarrow as pa

        tables = []
        for r in sorted(rows, key=lambda r: r.startOffset) + [rows[0]]:  # the last: a replayed range, read again
            tables.append(fetcher.read(pa.Table.from_pylist([r.asDict()])))
    finally:
        fetcher.close()
    records = [(p, o, k, v) for t in tables[:-1]
               for p, o, k, v in zip(*(t.column(c).to_pylist() for c in ("partition", "offset", "key", "value")))]
    assert sorted(records) == sorted(published)
    replayed = tables[-1]
    assert replayed.column("offset").to_pylist() == list(range(rows[0].startOffset, rows[0].endOffset))
    assert replayed.schema.names == [f.name for f in SCHEMA.fields]

    batch = (spark.read.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker).option("subscribe", topic)
             .option("aml.reader", "ranges").load().collect())  # a batch read: one range per partition
    assert sorted((r.partition, r.startOffset, r.endOffset) for r in batch) == sorted(
        (p, 0, spans[-1][1]) for p, spans in by_part.items())


@pytest.mark.slow
def test_driver_reader_reads_an_uncommitted_micro_batch_again_after_a_failure(spark, kafka_broker, tmp_path):
    """A micro-batch planned (in the offset log) but not committed is read again on restart,
    between the same offsets, by a new source process (readBetweenOffsets)."""
    topic = _topic("again")
    create(kafka_broker, topic, 2)
    produce(kafka_broker, topic, [(f"k{i % 5}", f"v{i}") for i in range(60)])
    ck = tmp_path / "ck"

    def start(each_batch):
        return (spark.readStream.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker)
                .option("subscribe", topic).option("startingOffsets", "earliest").option("aml.reader", "driver")
                .option("maxOffsetsPerTrigger", 25).load().writeStream.foreachBatch(each_batch)
                .option("checkpointLocation", str(ck)).trigger(availableNow=True).start())

    first: list = []

    def fail(df, batch_id):
        first.append(sorted((r.partition, r.offset) for r in df.collect()))
        raise RuntimeError("micro-batch failed")

    with pytest.raises(Exception, match="micro-batch failed"):
        start(fail).awaitTermination(120)
    seen: list = []
    query = start(lambda df, batch_id: seen.append((batch_id, sorted((r.partition, r.offset) for r in df.collect()))))
    query.awaitTermination(120)
    assert query.exception() is None
    assert len(first[0]) == 25 and seen[0] == (0, first[0])  # the same records, as batch 0 again
    offsets = [o for _, batch in seen for o in batch]
    assert len(offsets) == len(set(offsets)) == 60


@pytest.mark.slow
def test_starting_offsets_latest_skips_what_was_there(spark, kafka_broker, tmp_path):
    topic = _topic("latest")
    produce(kafka_broker, topic, [(None, f"old{i}") for i in range(10)])
    out, ck = tmp_path / "out", tmp_path / "ck"
    stream_to_parquet(spark, kafka_broker, topic, out, ck, startingOffsets="latest")
    produce(kafka_broker, topic, [(None, f"new{i}") for i in range(5)])
    stream_to_parquet(spark, kafka_broker, topic, out, ck, startingOffsets="latest")
    values = sorted(r.value.decode() for r in spark.read.parquet(str(out)).collect())
    assert values == [f"new{i}" for i in range(5)]


@pytest.mark.slow
def test_topic_created_after_the_query_started_is_read_from_its_start(spark, kafka_broker, tmp_path):
    topic = _topic("later")
    out, ck = tmp_path / "out", tmp_path / "ck"
    stream_to_parquet(spark, kafka_broker, topic, out, ck, startingOffsets="latest")  # no such topic yet
    produce(kafka_broker, topic, [(None, f"v{i}") for i in range(4)])  # auto-created
    stream_to_parquet(spark, kafka_broker, topic, out, ck, startingOffsets="latest")
    assert sorted(r.value.decode() for r in spark.read.parquet(str(out)).collect()) == [f"v{i}" for i in range(4)]


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["driver", "tasks"])
def test_starting_offsets_json_and_max_offsets_per_trigger(spark, kafka_broker, tmp_path, reader):
    topic = _topic("json")
    create(kafka_broker, topic, 2)
    produce(kafka_broker, topic, [(None, f"a{i}") for i in range(100)], partition=0)
    produce(kafka_broker, topic, [(None, f"b{i}") for i in range(40)], partition=1)
    query = stream_to_parquet(spark, kafka_broker, topic, tmp_path / "out", tmp_path / "ck",
                              startingOffsets=json.dumps({topic: {"0": 30, "1": -2}}), maxOffsetsPerTrigger=25,
                              **{"aml.reader": reader})
    rows = spark.read.parquet(str(tmp_path / "out")).collect()
    assert sorted(r.value.decode() for r in rows) == sorted([f"a{i}" for i in range(30, 100)] + [f"b{i}" for i in range(40)])
    sizes = [p["numInputRows"] for p in query.recentProgress if p["numInputRows"]]
    assert sum(sizes) == 110 and max(sizes) <= 25 and len(sizes) >= 5


def test_range_reader_keeps_one_consumer_across_ranges_and_seeks_back_for_a_replay(kafka_broker):
    """The driver reader's consumer: consecutive ranges come from its position and from what
    it fetched past the last range; a range starting elsewhere (a replayed micro-batch) seeks."""
    from pyspark.sql.types import StructType

    topic = _topic("range")
    create(kafka_broker, topic, 2)
    produce(kafka_broker, topic, [(None, f"a{i}") for i in range(50)], partition=0)
    produce(kafka_broker, topic, [(None, f"b{i}") for i in range(30)], partition=1)
    reader = RangeReader({"bootstrap.servers": kafka_broker}, poll_timeout_ms=20_000)
    schema = StructType.fromJson(json.loads(SCHEMA.json()))

    def values(ranges):
        batches = list(reader.read({(topic, p): r for p, r in ranges.items()}, schema))
        return [(part, off, v.decode()) for b in batches
                for part, off, v in zip(b.column("partition").to_pylist(), b.column("offset").to_pylist(),
                                        b.column("value").to_pylist())]

    try:
        assert values({0: (0, 10), 1: (0, 0)}) == [(0, i, f"a{i}") for i in range(10)]
        consumer = reader.consumers[(topic, 0)]
        got = values({0: (10, 30), 1: (0, 5)})
        assert sorted(got) == [(0, i, f"a{i}") for i in range(10, 30)] + [(1, i, f"b{i}") for i in range(5)]
        assert reader.consumers[(topic, 0)] is consumer  # no new consumer for the next micro-batch
        reader.pause()  # between micro-batches: nothing fetched; the next range resumes from the stash and position
        assert not reader.assigned
        assert sorted(values({0: (30, 50), 1: (5, 30)})) == \
            [(0, i, f"a{i}") for i in range(30, 50)] + [(1, i, f"b{i}") for i in range(5, 30)]
        assert sorted(values({0: (20, 25), 1: (28, 30)})) == \
            [(0, i, f"a{i}") for i in range(20, 25)] + [(1, i, f"b{i}") for i in range(28, 30)]  # replay: seek back
        produce(kafka_broker, topic, [(None, "a50")], partition=0)
        assert values({0: (25, 26)}) == [(0, 25, "a25")]
        assert values({0: (50, 51)}) == [(0, 50, "a50")]  # a record produced after the consumer reached the end
    finally:
        reader.close()


def test_range_reader_keeps_what_it_fetched_ahead_when_it_pauses(kafka_broker):
    """Pausing keeps up to ``prefetch`` records the consumer fetched past the range (they
    would be discarded with its queue); the next ranges are served from them without
    fetching, and a replayed range still seeks back."""
    from pyspark.sql.types import StructType

    topic = _topic("prefetch")
    create(kafka_broker, topic, 1)
    produce(kafka_broker, topic, [(None, f"a{i}") for i in range(200)], partition=0)
    reader = RangeReader({"bootstrap.servers": kafka_broker}, poll_timeout_ms=20_000, prefetch=50)
    schema = StructType.fromJson(json.loads(SCHEMA.json()))
    tp = (topic, 0)

    def values(start, end):
        batches = list(reader.read({tp: (start, end)}, schema))
        return [(off, v.decode()) for b in batches for off, v in zip(b.column("offset").to_pylist(), b.column("value").to_pylist())]

    try:
        assert values(0, 10) == [(i, f"a{i}") for i in range(10)]
        reader.pause()
        # one fetch answered with more than the range: 50 of the rest kept, in order, and the consumer's position after them
        assert [m.offset() for m in reader.stash[tp]] == list(range(10, 60)) and reader.fetch[tp] == 60
        assert values(10, 40) == [(i, f"a{i}") for i in range(10, 40)]
        assert not reader.assigned  # served from what was kept: no fetch
        assert values(40, 200) == [(i, f"a{i}") for i in range(40, 200)]  # the kept 20, then fetched from offset 60
        reader.pause()
        assert values(5, 15) == [(i, f"a{i}") for i in range(5, 15)]  # a replay seeks back
    finally:
        reader.close()


@pytest.mark.slow
def test_batch_read_between_offsets(spark, kafka_broker):
    topic = _topic("batch")
    produce(kafka_broker, topic, [(f"k{i}", f"v{i}") for i in range(20)])
    df = (spark.read.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker).option("subscribe", topic)
          .option("startingOffsets", json.dumps({topic: {"0": 5}}))
          .option("endingOffsets", json.dumps({topic: {"0": 15}})).load())
    assert [r.value.decode() for r in df.orderBy("offset").collect()] == [f"v{i}" for i in range(5, 15)]


@pytest.mark.slow
def test_bad_options_fail_in_spark_naming_the_option(spark, kafka_broker):
    with pytest.raises(Exception, match="kafka.bootstrap.servers"):
        spark.readStream.format(FORMAT).option("subscribe", "x").load()
    with pytest.raises(Exception, match="startingOffsets") as caught:
        (spark.readStream.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker)
         .option("subscribe", "x").option("startingOffsets", "yesterday").load())
    assert error_message(caught.value).startswith("option startingOffsets must be 'earliest', 'latest' or JSON")
    df = spark.createDataFrame([("a", "b")], "value string, extra string")
    with pytest.raises(Exception, match="topic") as caught:
        df.select("value").write.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker).mode("append").save()
    assert error_message(caught.value) == "the Kafka sink needs the option topic or a 'topic' column"


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["driver", "spark"])
def test_recreated_topic_is_data_loss_unless_allowed(spark, kafka_broker, tmp_path, reader):
    from confluent_kafka.admin import AdminClient

    fmt, options = _format(reader)
    topic = _topic("loss")
    produce(kafka_broker, topic, [(None, f"old{i}") for i in range(10)])
    out, ck = tmp_path / "out", tmp_path / "ck"
    stream_to_parquet(spark, kafka_broker, topic, out, ck, fmt, **options)
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    admin.delete_topics([topic])[topic].result(15)
    create(kafka_broker, topic, 1)
    produce(kafka_broker, topic, [(None, f"new{i}") for i in range(3)])  # offsets 0..2 < checkpointed 10

    reader_ = spark.readStream.format(fmt).option("kafka.bootstrap.servers", kafka_broker).option("subscribe", topic)
    for k, v in options.items():
        reader_ = reader_.option(k, v)
    query = (reader_.load().writeStream.format("parquet").option("path", str(out))
             .option("checkpointLocation", str(ck)).trigger(availableNow=True).start())
    with pytest.raises(Exception, match="data loss|data may have been lost|offset was changed"):
        query.awaitTermination(300)

    stream_to_parquet(spark, kafka_broker, topic, out, ck, fmt, failOnDataLoss="false", **options)
    values = sorted(r.value.decode() for r in spark.read.parquet(str(out)).collect())
    old = [f"old{i}" for i in range(10)]
    if reader == "spark":
        # Spark's connector drops the range whose end (3) is before its start (10) and goes on
        # from the new end: the recreated topic's first records are skipped
        assert values == old
    else:  # ours reads the recreated topic from its earliest offset
        assert values == sorted(old + [f"new{i}" for i in range(3)])
    produce(kafka_broker, topic, [(None, "new3")])  # from here on both read on alike
    stream_to_parquet(spark, kafka_broker, topic, out, ck, fmt, failOnDataLoss="false", **options)
    assert sorted(r.value.decode() for r in spark.read.parquet(str(out)).collect()) == sorted(
        values + ["new3"])


# ----------------------------------------------------------------------------- sink (Spark)


@pytest.mark.slow
def test_batch_sink_writes_keys_and_values(spark, kafka_broker):
    topic = _topic("sink")
    df = spark.createDataFrame([(f"acct{i % 5}", json.dumps({"n": i})) for i in range(200)], "key string, value string")
    df.write.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker).option("topic", topic).mode("append").save()
    got = consume_all(kafka_broker, topic)
    assert sorted((k.decode(), v.decode()) for _, _, k, v in got) == sorted((f"acct{i % 5}", json.dumps({"n": i})) for i in range(200))


@pytest.mark.slow
def test_stream_sink_topic_column_and_binary_value(spark, kafka_broker, tmp_path):
    source, alerts, dead = _topic("src"), _topic("alerts"), _topic("dlq")
    produce(kafka_broker, source, [(f"k{i}", str(i)) for i in range(60)])
    df = (spark.readStream.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker)
          .option("subscribe", source).option("startingOffsets", "earliest").load()
          .selectExpr("key", "value",
                      f"CASE WHEN cast(cast(value AS string) AS int) % 3 = 0 THEN '{dead}' ELSE '{alerts}' END AS topic"))
    query = (df.writeStream.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker)
             .option("checkpointLocation", str(tmp_path / "ck")).trigger(availableNow=True).start())
    query.awaitTermination(300)
    assert query.exception() is None
    got_alerts = {(k.decode(), v.decode()) for _, _, k, v in consume_all(kafka_broker, alerts)}
    got_dead = {(k.decode(), v.decode()) for _, _, k, v in consume_all(kafka_broker, dead)}
    assert got_dead == {(f"k{i}", str(i)) for i in range(60) if i % 3 == 0}
    assert got_alerts == {(f"k{i}", str(i)) for i in range(60) if i % 3}
    both = (spark.read.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker)
            .option("subscribe", f"{alerts}, {dead}").load())
    assert both.count() == 60 and {r.topic for r in both.select("topic").distinct().collect()} == {alerts, dead}


# ----------------------------------------------------------------------------- task=replay


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

    topic = _topic("replay")
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
    topic = _topic("paced")
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
