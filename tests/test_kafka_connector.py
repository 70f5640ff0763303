"""The Kafka connector, aml_pipeline.kafka, on its own against a real local Apache Kafka broker
(KRaft, the session's ``kafka_broker``): topics are written and checked with plain
confluent-kafka clients, never with the connector itself.

Streaming reads must deliver every record exactly once into Spark across restarts from the
checkpoint; the sink must put back what it was given; bad options must fail naming the option;
the readers work outside Spark; the package stands alone (nothing of the AML pipeline above it).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from aml_pipeline.errors import ConfigError
from aml_pipeline.kafka import (
    FORMAT,
    SCHEMA,
    RangeFetcher,
    RangeReader,
    error_message,
    produce_batches,
    register,
    validate_sink_options,
    validate_source_options,
)
from aml_pipeline.kafka.offsets import prorate
from aml_pipeline.testing.broker import KafkaBroker
from tests.conftest import ROOT, spark_kafka_jars_or_fail, start_local_spark
from tests.kafka_topics import consume_all, create, fresh_topic, produce


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
    topic = fresh_topic("raw")
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
    topic = fresh_topic("ranges")
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
    topic = fresh_topic("again")
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
    topic = fresh_topic("latest")
    produce(kafka_broker, topic, [(None, f"old{i}") for i in range(10)])
    out, ck = tmp_path / "out", tmp_path / "ck"
    stream_to_parquet(spark, kafka_broker, topic, out, ck, startingOffsets="latest")
    produce(kafka_broker, topic, [(None, f"new{i}") for i in range(5)])
    stream_to_parquet(spark, kafka_broker, topic, out, ck, startingOffsets="latest")
    values = sorted(r.value.decode() for r in spark.read.parquet(str(out)).collect())
    assert values == [f"new{i}" for i in range(5)]


@pytest.mark.slow
def test_topic_created_after_the_query_started_is_read_from_its_start(spark, kafka_broker, tmp_path):
    topic = fresh_topic("later")
    out, ck = tmp_path / "out", tmp_path / "ck"
    stream_to_parquet(spark, kafka_broker, topic, out, ck, startingOffsets="latest")  # no such topic yet
    produce(kafka_broker, topic, [(None, f"v{i}") for i in range(4)])  # auto-created
    stream_to_parquet(spark, kafka_broker, topic, out, ck, startingOffsets="latest")
    assert sorted(r.value.decode() for r in spark.read.parquet(str(out)).collect()) == [f"v{i}" for i in range(4)]


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["driver", "tasks"])
def test_starting_offsets_json_and_max_offsets_per_trigger(spark, kafka_broker, tmp_path, reader):
    topic = fresh_topic("json")
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

    topic = fresh_topic("range")
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

    topic = fresh_topic("prefetch")
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
    topic = fresh_topic("batch")
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
    topic = fresh_topic("loss")
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
    topic = fresh_topic("sink")
    df = spark.createDataFrame([(f"acct{i % 5}", json.dumps({"n": i})) for i in range(200)], "key string, value string")
    df.write.format(FORMAT).option("kafka.bootstrap.servers", kafka_broker).option("topic", topic).mode("append").save()
    got = consume_all(kafka_broker, topic)
    assert sorted((k.decode(), v.decode()) for _, _, k, v in got) == sorted((f"acct{i % 5}", json.dumps({"n": i})) for i in range(200))


@pytest.mark.slow
def test_stream_sink_topic_column_and_binary_value(spark, kafka_broker, tmp_path):
    source, alerts, dead = fresh_topic("src"), fresh_topic("alerts"), fresh_topic("dlq")
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




# ----------------------------------------------------------------------------- on its own


def test_the_package_imports_nothing_of_the_pipeline_above_it():
    """aml_pipeline.kafka is general purpose: besides itself it may import aml_pipeline.errors
    only (checked in the source, and in a fresh interpreter's modules after the import)."""
    package = ROOT / "aml_pipeline" / "kafka"
    found = set()
    for path in package.glob("*.py"):
        found |= set(re.findall(r"^\s*(?:from|import) (aml_pipeline(?:\.\w+)*)", path.read_text(), re.M))
    assert {m for m in found if not m.startswith("aml_pipeline.kafka")} == {"aml_pipeline.errors"}
    code = ("import sys, aml_pipeline.kafka; "
            "print(sorted(m for m in sys.modules if m.startswith('aml_pipeline.') and not m.startswith('aml_pipeline.kafka')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['aml_pipeline.errors']"


def test_client_options_pass_through_and_managed_ones_are_refused():
    conf = validate_sink_options({"kafka.bootstrap.servers": "h:1", "kafka.security.protocol": "SASL_SSL",
                                  "kafka.sasl.mechanism": "SCRAM-SHA-512", "topic": "x"}, ["value"])
    assert conf == {"bootstrap.servers": "h:1", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}
    with pytest.raises(ConfigError, match="option kafka.enable.auto.commit is not supported: the connector manages it"):
        validate_source_options({"kafka.bootstrap.servers": "h:1", "kafka.enable.auto.commit": "true", "subscribe": "x"})
    with pytest.raises(ConfigError, match="invalid kafka.\\* option: .*security.protocol"):
        produce_batches({"bootstrap.servers": "h:1", "security.protocol": "carrier-pigeon"}, "x", iter(()))
    with pytest.raises(ConfigError, match="invalid kafka.\\* option: .*no.such.setting"):
        RangeFetcher({"kafka.bootstrap.servers": "h:1", "kafka.no.such.setting": "1", "subscribe": "x"}).read(
            _ranges([("x", 0, 0, 1)]))


def _ranges(rows: list[tuple[str, int, int, int]]):
    import pyarrow as pa

    return pa.Table.from_pylist([{"topic": t, "partition": p, "startOffset": s, "endOffset": e} for t, p, s, e in rows])


def _batch(rows: list[dict]):
    import pyarrow as pa

    return pa.RecordBatch.from_pylist(rows)


def test_produce_and_read_ranges_without_spark(kafka_broker):
    """The sink's producer and the fetcher's reader on their own: what produce_batches wrote
    (keys, partitions, a topic column) comes back from RangeFetcher range by range, in order."""
    topic, other = fresh_topic("plain"), fresh_topic("plain_other")
    create(kafka_broker, topic, 2)
    rows = [{"key": f"k{i}", "value": json.dumps({"i": i}), "partition": i % 2} for i in range(40)]
    assert produce_batches({"bootstrap.servers": kafka_broker}, topic, iter([_batch(rows[:25]), _batch(rows[25:])])) == 40
    assert produce_batches({"bootstrap.servers": kafka_broker}, None,
                           iter([_batch([{"value": b"raw", "topic": other}])])) == 1  # a topic column, binary value
    assert [(k, v) for _, _, k, v in consume_all(kafka_broker, other)] == [(None, b"raw")]
    published = consume_all(kafka_broker, topic)
    assert sorted((p, k.decode()) for p, _, k, _ in published) == sorted((i % 2, f"k{i}") for i in range(40))

    fetcher = RangeFetcher({"kafka.bootstrap.servers": kafka_broker, "subscribe": topic})
    try:
        first = fetcher.read(_ranges([(topic, 0, 0, 10), (topic, 1, 0, 5)]))
        rest = fetcher.read(_ranges([(topic, 0, 10, 20), (topic, 1, 5, 20)]))
    finally:
        fetcher.close()
    assert first.schema.names == [f.name for f in SCHEMA.fields]
    assert first.column("partition").to_pylist() == [0] * 10 + [1] * 5
    got = [(p, o, k, v) for t in (first, rest)
           for p, o, k, v in zip(*(t.column(c).to_pylist() for c in ("partition", "offset", "key", "value")))]
    assert sorted(got) == sorted(published)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SaslKafkaBroker(KafkaBroker):
    """The tests' Apache Kafka with a second listener that takes SASL/PLAIN (user ``alice``)."""

    def __init__(self):
        super().__init__(settings={"sasl.enabled.mechanisms": "PLAIN"})
        self.sasl_port: int | None = None

    def _command(self) -> list[str]:
        command = super()._command()  # writes server.properties: add the listener to it
        self.sasl_port = free_port()
        config = self._data_dir / "server.properties"
        props = dict(line.split("=", 1) for line in config.read_text().splitlines() if "=" in line)
        props["listeners"] += f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
        props["advertised.listeners"] += f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
        props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
        props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
            'org.apache.kafka.common.security.plain.PlainLoginModule required '
            'username="admin" password="admin-secret" user_admin="admin-secret" user_alice="alice-secret";')
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return command


@pytest.mark.slow
def test_sasl_options_reach_the_producer_and_the_readers(spark, tmp_path):
    """kafka.security.protocol / kafka.sasl.* go to every client the connector opens: the sink
    writes and both readers read through a listener that takes only SASL/PLAIN, and a wrong
    password fails with the broker's reason instead of hanging."""
    with SaslKafkaBroker() as broker:
        sasl = {"kafka.bootstrap.servers": f"127.0.0.1:{broker.sasl_port}", "kafka.security.protocol": "SASL_PLAINTEXT",
                "kafka.sasl.mechanism": "PLAIN", "kafka.sasl.username": "alice"}
        good = {**sasl, "kafka.sasl.password": "alice-secret"}
        topic = fresh_topic("sasl")
        create(broker.bootstrap, topic, 1)
        df = spark.createDataFrame([(f"k{i}", f"v{i}") for i in range(30)], "key string, value string")
        writer = df.write.format(FORMAT).option("topic", topic).mode("append")
        for k, v in good.items():
            writer = writer.option(k, v)
        writer.save()
        assert sorted(v.decode() for _, _, _, v in consume_all(broker.bootstrap, topic)) == sorted(f"v{i}" for i in range(30))

        reader = spark.read.format(FORMAT).option("subscribe", topic)
        for k, v in good.items():
            reader = reader.option(k, v)
        assert sorted(r.value.decode() for r in reader.load().collect()) == sorted(f"v{i}" for i in range(30))
        fetcher = RangeFetcher({**good, "subscribe": topic})
        try:
            assert fetcher.read(_ranges([(topic, 0, 0, 30)])).num_rows == 30
        finally:
            fetcher.close()

        wrong = RangeFetcher({**sasl, "kafka.sasl.password": "guess", "subscribe": topic,
                              "kafkaConsumer.pollTimeoutMs": "5000"})
        try:
            with pytest.raises(TimeoutError, match="Authentication failed"):
                wrong.read(_ranges([(topic, 0, 0, 30)]))
        finally:
            wrong.close()


@pytest.mark.slow
def test_the_docs_example_runs(spark, kafka_broker, capsys):
    """docs/kafka.md's example, as it is, on the tests' broker (its topics renamed fresh) and
    this module's session (the example's getOrCreate() returns it): it prints what it says."""
    page = (ROOT / "docs" / "kafka.md").read_text()
    example = re.search(r"## Example\n.*?```python\n(.*?)```", page, re.S).group(1)
    expected = re.search(r"print\(.*\)  # (.*)$", example, re.M).group(1)
    topic = fresh_topic("payments")
    code = example.replace("127.0.0.1:9092", kafka_broker).replace('"payments', f'"{topic}')
    assert code.count(kafka_broker) == 1 and code.count(topic) == 4
    exec(compile(code, "docs/kafka.md", "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out.strip().splitlines()[-1] == expected
