"""A Kafka source and sink for Spark, built on PySpark's Python data source API.

Why our own connector: Spark's Kafka connector is a Maven artifact, and a deployment without
Maven access cannot load it. This one needs only ``confluent-kafka`` (librdkafka) and keeps
Spark's option names and output schema, so a deployment that has the jars switches to
``format("kafka")`` by configuration alone.

Source (``spark.readStream.format("aml_kafka")``): the offsets live in Spark's checkpoint as
``{"topic": {"partition": next_offset}}`` (Spark's own JSON layout) and each micro-batch reads
exactly the offset range planned for it. Who reads is our one extra option, ``aml.reader``:

- ``driver`` (default, :class:`KafkaDriverStreamReader`): consumers (one per partition) kept
  open in the driver's source process for the whole query; a micro-batch's read costs no task,
  no Python worker and no connection. For low latency, at the rates one process reads.
- ``tasks`` (:class:`KafkaStreamReader`): one Spark task per Kafka partition and micro-batch,
  each with its own consumer (assign + seek); reads scale out with the executors, at the cost
  of a consumer and a fetch per partition and micro-batch.
- ``ranges`` (:class:`KafkaRangeStreamReader`): a micro-batch holds only its offset ranges,
  one row per partition (:data:`RANGES_SCHEMA`), and whoever consumes the micro-batch reads
  the records itself with a :class:`RangeFetcher` (the streaming scorer, on the driver). The
  records then travel once, broker to consumer, instead of broker to the source's Python
  process to the JVM to the consumer's Python process.

No consumer group offsets are committed: the checkpoint is the truth, which makes the
source exactly-once into Spark. Batch reads (``spark.read``) use ``startingOffsets`` /
``endingOffsets``.

Sink (``writeStream.format("aml_kafka")`` / ``write.format("aml_kafka")``): columns ``value``
(string or binary, required), ``key`` (optional), ``topic`` (optional; the ``topic`` option
wins, as in Spark) and ``partition`` (optional). Each task flushes its producer before it
reports success and raises on any delivery error. The sink is **at-least-once**: after a crash
Spark replays the micro-batch and its records are produced again, so consumers deduplicate
by key (alerts carry the event id).

Usage::

    from aml_pipeline.streaming.kafka import register
    register(spark)                      # idempotent
    df = (spark.readStream.format("aml_kafka")
          .option("kafka.bootstrap.servers", "127.0.0.1:9092")
          .option("subscribe", "transactions_raw")
          .option("startingOffsets", "earliest")
          .load())
    (alerts.writeStream.format("aml_kafka")
        .option("kafka.bootstrap.servers", "127.0.0.1:9092")
        .option("topic", "aml_alerts")
        .option("checkpointLocation", "...").start())
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from pyspark.errors import PySparkNotImplementedError
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    DataSourceStreamArrowWriter,
    DataSourceStreamReader,
    InputPartition,
    SimpleDataSourceStreamReader,
    WriterCommitMessage,
)
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from aml_pipeline.errors import ConfigError

#: The short name the connector is registered under (``format(FORMAT)``).
FORMAT = "aml_kafka"

#: Spark's Kafka source schema, column for column.
SCHEMA = StructType([
    StructField("key", BinaryType(), True),
    StructField("value", BinaryType(), True),
    StructField("topic", StringType(), True),
    StructField("partition", IntegerType(), True),
    StructField("offset", LongType(), True),
    StructField("timestamp", TimestampType(), True),
    StructField("timestampType", IntegerType(), True),
])

#: ``aml.reader=ranges``: a micro-batch's rows are the offset ranges ``[startOffset, endOffset)``
#: it covers, one per topic-partition with records (read them with :class:`RangeFetcher`).
RANGES_SCHEMA = StructType([
    StructField("topic", StringType(), False),
    StructField("partition", IntegerType(), False),
    StructField("startOffset", LongType(), False),
    StructField("endOffset", LongType(), False),
])

#: Spark's special offsets in ``startingOffsets`` / ``endingOffsets`` JSON.
EARLIEST, LATEST = -2, -1

#: Client settings Spark's connector manages itself and refuses as ``kafka.*`` options.
_MANAGED = {"key.deserializer", "value.deserializer", "key.serializer", "value.serializer",
            "enable.auto.commit", "auto.offset.reset", "interceptor.classes"}

#: Records per Arrow batch handed to Spark by a reading task.
_ARROW_BATCH = 8192
#: Records per partition the driver reader keeps of what its consumer fetched past a
#: micro-batch's range (``aml.prefetchRecords``), rather than let the pause discard them.
PREFETCH_RECORDS = 20_000

Offsets = dict[str, dict[str, int]]


# --------------------------------------------------------------------------- options


def _opt(options: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """Option lookup ignoring case (Spark passes options case-insensitively)."""
    low = name.lower()
    for key, value in options.items():
        if key.lower() == low:
            return value
    return default


def client_config(options: Mapping[str, str]) -> dict[str, str]:
    """The ``kafka.*`` options without their prefix: librdkafka settings, passed through.

    ``kafka.bootstrap.servers`` is required, as in Spark."""
    conf = {k[len("kafka."):]: str(v) for k, v in options.items() if k.lower().startswith("kafka.")}
    if not conf.get("bootstrap.servers"):
        raise ConfigError("option kafka.bootstrap.servers is required (e.g. 127.0.0.1:9092)")
    for key in conf:
        if key in _MANAGED:
            raise ConfigError(f"option kafka.{key} is not supported: the connector manages it")
    return conf


def _bool(options: Mapping[str, str], name: str, default: bool) -> bool:
    text = _opt(options, name)
    if text is None:
        return default
    if str(text).strip().lower() in ("true", "false"):
        return str(text).strip().lower() == "true"
    raise ConfigError(f"option {name} must be true or false, got {text!r}")


#: ``aml.reader``: who reads a micro-batch's records (our option; Spark's connector has none).
READERS = ("driver", "tasks", "ranges")


def reader_mode(options: Mapping[str, str]) -> str:
    """``driver`` (default: consumers kept open in the driver, :class:`KafkaDriverStreamReader`),
    ``tasks`` (a Spark task per partition and micro-batch, :class:`KafkaStreamReader`) or
    ``ranges`` (rows are offset ranges, :class:`KafkaRangeStreamReader`)."""
    mode = str(_opt(options, "aml.reader", "driver")).strip().lower()
    if mode not in READERS:
        raise ConfigError(f"option aml.reader must be one of {', '.join(READERS)}, got {mode!r}")
    return mode


def _int_option(options: Mapping[str, str], name: str, minimum: int, default: int | None = None) -> int | None:
    """An integer option of at least ``minimum`` (``default`` when not given)."""
    text = _opt(options, name)
    if text is None:
        return default
    try:
        value = int(str(text))
    except ValueError:
        value = minimum - 1
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"option {name} must be {what}, got {text!r}")
    return value


def _positive_int(options: Mapping[str, str], name: str) -> int | None:
    return _int_option(options, name, 1)


def _offsets_spec(options: Mapping[str, str], name: str, default: str) -> str | Offsets:
    """``earliest`` | ``latest`` | Spark's JSON ``{"topic": {"0": 23, "1": -2}}``."""
    text = str(_opt(options, name, default)).strip()
    if text.lower() in ("earliest", "latest"):
        return text.lower()
    try:
        spec = json.loads(text)
        if not isinstance(spec, dict) or not spec:
            raise ValueError
        return {str(t): {str(int(p)): int(o) for p, o in parts.items()} for t, parts in spec.items()}
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(
            f"option {name} must be 'earliest', 'latest' or JSON like "
            f"{{\"topic\": {{\"0\": 42, \"1\": -2}}}}, got {text!r}") from None


@dataclass(frozen=True)
class SourceOptions:
    """The source's options, checked (Spark's names)."""

    client: dict[str, str]
    subscribe: tuple[str, ...]
    pattern: str | None
    assign: dict[str, tuple[int, ...]] | None
    starting: str | Offsets
    ending: str | Offsets
    max_offsets_per_trigger: int | None
    fail_on_data_loss: bool
    poll_timeout_ms: int
    prefetch_records: int = PREFETCH_RECORDS

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> "SourceOptions":
        client = client_config(options)
        subscribe = tuple(t.strip() for t in str(_opt(options, "subscribe", "")).split(",") if t.strip())
        pattern = _opt(options, "subscribePattern")
        assign_text = _opt(options, "assign")
        assign = None
        if assign_text is not None:
            try:
                raw = json.loads(assign_text)
                assign = {str(t): tuple(int(p) for p in ps) for t, ps in raw.items()}
            except (ValueError, TypeError, AttributeError):
                raise ConfigError(f"option assign must be JSON like {{\"topic\": [0, 1]}}, got {assign_text!r}") from None
        given = [n for n, v in (("subscribe", subscribe), ("subscribePattern", pattern), ("assign", assign)) if v]
        if len(given) != 1:
            raise ConfigError("exactly one of the options subscribe, subscribePattern, assign is required"
                              + (f" (got {', '.join(given)})" if given else ""))
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"option subscribePattern is not a valid regex: {exc}") from None
        reader_mode(options)
        ending = _offsets_spec(options, "endingOffsets", "latest")
        if ending == "earliest":
            raise ConfigError("option endingOffsets cannot be 'earliest'")
        return cls(
            client=client, subscribe=subscribe, pattern=pattern, assign=assign,
            starting=_offsets_spec(options, "startingOffsets", "latest"),
            ending=ending,
            max_offsets_per_trigger=_positive_int(options, "maxOffsetsPerTrigger"),
            fail_on_data_loss=_bool(options, "failOnDataLoss", True),
            poll_timeout_ms=_positive_int(options, "kafkaConsumer.pollTimeoutMs") or 120_000,
            prefetch_records=_int_option(options, "aml.prefetchRecords", 0, PREFETCH_RECORDS),
        )


def validate_source_options(options: Mapping[str, str]) -> SourceOptions:
    """Check source options on the driver before Spark sees them (one-line ConfigError)."""
    return SourceOptions.parse(options)


def validate_sink_options(options: Mapping[str, str], columns: list[str] | None = None) -> dict[str, str]:
    """Check sink options (and the DataFrame's columns when given); returns the client config."""
    conf = client_config(options)
    if columns is not None:
        _check_sink_columns(columns, _opt(options, "topic"))
    return conf


def error_message(exc: BaseException) -> str:
    """One line for a connector error that Spark wrapped in its own exception and traceback:
    the connector's ``ConfigError`` / ``RuntimeError`` text when there is one."""
    text = str(exc)
    found = re.search(r"(?:aml_pipeline\.errors\.\w+|RuntimeError|TimeoutError): (.+)", text)
    return found.group(1).strip() if found else (text.strip().splitlines() or [type(exc).__name__])[0]


def _check_sink_columns(columns: list[str], topic: str | None) -> None:
    names = {c.lower() for c in columns}
    if "value" not in names:
        raise ConfigError(f"the Kafka sink needs a 'value' column (string or binary); got {sorted(columns)}")
    if not topic and "topic" not in names:
        raise ConfigError("the Kafka sink needs the option topic or a 'topic' column")
    if "headers" in names:
        raise ConfigError("the Kafka sink does not write a 'headers' column yet; drop it (or use Spark's format(\"kafka\"))")
    unknown = names - {"key", "value", "topic", "partition"}
    if unknown:
        raise ConfigError(f"the Kafka sink takes columns key, value, topic, partition; "
                          f"unexpected: {sorted(unknown)} (select or to_json them first)")


# --------------------------------------------------------------------------- broker queries


def _consumer(client: Mapping[str, str], **extra: Any):
    """A consumer for metadata and reads; never joins a group, never commits offsets.

    An assigned offset the broker no longer holds (retention, DeleteRecords) resets to the
    partition's earliest: the reader then sees the gap and applies ``failOnDataLoss``. With
    librdkafka's default (``latest``) it waited for records that were gone until
    ``kafkaConsumer.pollTimeoutMs`` (found against Apache Kafka's DeleteRecords)."""
    from confluent_kafka import Consumer, KafkaException

    conf = {"group.id": f"aml-kafka-{uuid.uuid4().hex[:12]}", **client, **extra,
            "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest"}
    try:
        return Consumer(conf)
    except KafkaException as exc:
        raise ConfigError(f"invalid kafka.* option: {exc.args[0].str() if exc.args else exc}") from None


class _Broker:
    """Driver-side view of the broker: which partitions exist and their watermarks."""

    def __init__(self, opts: SourceOptions):
        self.opts = opts
        self.consumer = _consumer(opts.client)

    def close(self) -> None:
        self.consumer.close()

    def partitions(self) -> list[tuple[str, int]]:
        """Topic-partitions selected by subscribe / subscribePattern / assign (missing topics: none)."""
        timeout = self.opts.poll_timeout_ms / 1000
        if self.opts.assign is not None:
            return sorted((t, p) for t, ps in self.opts.assign.items() for p in ps)
        if self.opts.pattern is not None:
            rx = re.compile(self.opts.pattern)
            metas = [tm for t, tm in self.consumer.list_topics(timeout=timeout).topics.items()
                     if rx.fullmatch(t) and not t.startswith("__")]
        else:
            # One metadata request per subscribed topic, not the whole cluster's topic list;
            # a topic that does not exist yet has no partitions (it is picked up once it does).
            metas = [self.consumer.list_topics(t, timeout=timeout).topics.get(t) for t in self.opts.subscribe]
        out = []
        for tm in metas:
            if tm is not None and tm.error is None:
                out.extend((tm.topic, p) for p in tm.partitions)
        return sorted(out)

    def watermarks(self, tps: list[tuple[str, int]] | None = None) -> dict[tuple[str, int], tuple[int, int]]:
        from confluent_kafka import TopicPartition

        timeout = self.opts.poll_timeout_ms / 1000
        tps = self.partitions() if tps is None else tps
        return {(t, p): self.consumer.get_watermark_offsets(TopicPartition(t, p), timeout=timeout)
                for t, p in tps}


def _to_json(offsets: Mapping[tuple[str, int], int]) -> Offsets:
    out: Offsets = {}
    for (topic, part), off in sorted(offsets.items()):
        out.setdefault(topic, {})[str(part)] = int(off)
    return out


def _from_json(offsets: Mapping[str, Mapping[str, int]] | None) -> dict[tuple[str, int], int]:
    return {(t, int(p)): int(o) for t, parts in (offsets or {}).items() for p, o in parts.items()}


def _resolve(spec: str | Offsets, marks: dict[tuple[str, int], tuple[int, int]], name: str) -> dict[tuple[str, int], int]:
    """Turn ``earliest`` / ``latest`` / JSON into concrete offsets for the partitions in ``marks``."""
    if spec == "earliest":
        return {tp: low for tp, (low, _) in marks.items()}
    if spec == "latest":
        return {tp: high for tp, (_, high) in marks.items()}
    given = _from_json(spec)  # type: ignore[arg-type]
    missing = sorted(set(marks) - set(given))
    if missing:
        raise ConfigError(f"option {name} must list every partition of the subscribed topics; "
                          f"missing {', '.join(f'{t}-{p}' for t, p in missing)}")
    out = {}
    for tp, off in given.items():
        low, high = marks.get(tp, (0, 0))
        out[tp] = low if off == EARLIEST else high if off == LATEST else off
    return out


def _prorate(start: dict[tuple[str, int], int], end: dict[tuple[str, int], int], limit: int) -> dict[tuple[str, int], int]:
    """Cap the range at ``limit`` records, shared between partitions by their backlog (as Spark)."""
    lag = {tp: max(0, end[tp] - start.get(tp, end[tp])) for tp in end}
    total = sum(lag.values())
    if total <= limit:
        return end
    take = {tp: (n * limit) // total for tp, n in lag.items()}
    left = limit - sum(take.values())
    for tp in sorted(lag, key=lambda k: (-(lag[k] - take[k]), k)):
        if left <= 0:
            break
        if take[tp] < lag[tp]:
            take[tp] += 1
            left -= 1
    return {tp: start.get(tp, end[tp]) + take[tp] for tp in end}


# --------------------------------------------------------------------------- reading


class KafkaPartition(InputPartition):
    """One Kafka topic-partition's offset range ``[start, end)`` in one Spark task."""

    def __init__(self, topic: str, partition: int, start: int, end: int):
        super().__init__((topic, partition, start, end))
        self.topic, self.partition, self.start, self.end = topic, partition, start, end


def read_range(client: Mapping[str, str], part: KafkaPartition, schema: StructType,
               fail_on_data_loss: bool = True, poll_timeout_ms: int = 120_000) -> Iterator[Any]:
    """Yield the records ``[start, end)`` of one partition as Arrow record batches (a Spark
    task's read: its own consumer, closed at the end).

    Raises when the broker no longer holds ``start`` (retention) or skips offsets inside the
    range and ``failOnDataLoss`` is true; otherwise reads what is there."""
    if part.end <= part.start:
        return
    reader = RangeReader(client, fail_on_data_loss, poll_timeout_ms)
    try:
        yield from reader.read({(part.topic, part.partition): (part.start, part.end)}, schema)
    finally:
        reader.close()


class _Columns:
    """Kafka messages -> Arrow record batches in Spark's Kafka schema."""

    def __init__(self, schema: StructType):
        from pyspark.sql.pandas.types import to_arrow_schema

        self.schema = to_arrow_schema(schema, timezone="UTC")
        self._reset()

    def _reset(self) -> None:
        self.cols: dict[str, list] = {n: [] for n in self.schema.names}

    def add(self, msg, topic: str, partition: int, offset: int) -> None:
        ts_type, ts = msg.timestamp()
        c = self.cols
        c["key"].append(msg.key())
        c["value"].append(msg.value())
        c["topic"].append(topic)
        c["partition"].append(partition)
        c["offset"].append(offset)
        c["timestamp"].append(ts * 1000 if ts_type else None)
        c["timestampType"].append(ts_type - 1 if ts_type else -1)

    def __len__(self) -> int:
        return len(self.cols["offset"])

    def take(self):
        import pyarrow as pa

        arrays = []
        for field in self.schema:
            values = self.cols[field.name]
            if field.name == "timestamp":
                arrays.append(pa.array(values, type=pa.int64()).cast(field.type))
            else:
                arrays.append(pa.array(values, type=field.type))
        self._reset()
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


class RangeReader:
    """Reads offset ranges ``[start, end)`` of partitions, one consumer per partition.

    A Spark task uses one for its partition and closes it. The driver reader
    (:class:`KafkaDriverStreamReader`) keeps one open for the whole query: its consumers
    keep their connections and the reader their positions, so a micro-batch costs no
    connection and no metadata round trip; between micro-batches they fetch nothing
    (:meth:`pause`). Messages a consumer delivers past a range's end are kept (``stash``)
    and returned first by the next call; a range that does not start where the last one
    ended (a restart, a replayed batch) makes that partition's consumer seek.

    One consumer per partition, not one for all: each partition then has its own fetch
    queue, and the local Kafka-protocol broker the tests use stops answering a consumer
    that fetches several large partitions in one request.
    """

    def __init__(self, client: Mapping[str, str], fail_on_data_loss: bool = True, poll_timeout_ms: int = 120_000,
                 prefetch: int = 0):
        self.client = dict(client)
        self.fail_on_data_loss = fail_on_data_loss
        self.poll_timeout_ms = poll_timeout_ms
        #: records per partition :meth:`pause` keeps of what the consumer fetched ahead
        self.prefetch = int(prefetch)
        self.consumers: dict[tuple[str, int], Any] = {}
        #: Partitions whose consumer is assigned (fetching).
        self.assigned: set[tuple[str, int]] = set()
        #: tp -> offset the partition's consumer delivers next (after the stashed messages).
        self.fetch: dict[tuple[str, int], int] = {}
        self.stash: dict[tuple[str, int], list] = {}

    def pause(self) -> None:
        """Stop fetching until the next read (the consumers keep their connections and the
        reader its positions). An assigned consumer keeps a fetch request open on the broker
        all the time; on the 2-core test machine the local broker spends a third of a core
        on each, which the micro-batch's scoring needs.

        Unassigning discards the messages the consumer fetched ahead of the range. Up to
        ``prefetch`` of them per partition are first moved to the stash, so the next ranges
        are served without fetching them again: a consumer fetches far ahead when there is a
        backlog (librdkafka keeps ``queued.min.messages``, 100,000 by default, queued per
        partition; the local test broker even answers each fetch with the whole rest of the
        partition), and without this every micro-batch paid for that fetch once more."""
        for tp in self.assigned:
            consumer = self.consumers[tp]
            stash = self.stash.setdefault(tp, [])
            room = self.prefetch - len(stash)
            while room > 0:
                msgs = consumer.consume(num_messages=min(room, 10_000), timeout=0)
                # up to the first error, if any (what follows it is fetched again)
                kept = list(itertools.takewhile(lambda m: m.error() is None, msgs))
                if kept:
                    stash.extend(kept)
                    self.fetch[tp] = kept[-1].offset() + 1
                    room -= len(kept)
                if not msgs or len(kept) < len(msgs):
                    break
            consumer.unassign()
        self.assigned.clear()

    def close(self) -> None:
        for consumer in self.consumers.values():
            consumer.close()
        self.consumers.clear()
        self.assigned.clear()
        self.fetch.clear()
        self.stash.clear()

    def _next(self, tp: tuple[str, int]) -> int | None:
        """Offset of the next message this reader would return for ``tp`` (None: no consumer yet)."""
        if self.stash.get(tp):
            return self.stash[tp][0].offset()
        return self.fetch.get(tp)

    def _seek(self, tp: tuple[str, int], start: int) -> None:
        """Make ``start`` the partition's next message: from the stash or the consumer's
        position when they continue there, else a seek (a new partition, a restart or a
        replayed batch)."""
        if self._next(tp) != start:
            self.stash.pop(tp, None)
            self.fetch[tp] = start
            self.assigned.discard(tp)

    def _fetching(self, tp: tuple[str, int]):
        """The partition's consumer, assigned from the offset after what it delivered (and stashed)."""
        from confluent_kafka import TopicPartition

        if tp not in self.consumers:
            self.consumers[tp] = _consumer(self.client)
        if tp not in self.assigned:
            self.consumers[tp].assign([TopicPartition(tp[0], tp[1], self.fetch[tp])])
            self.assigned.add(tp)
        return self.consumers[tp]

    def read(self, ranges: dict[tuple[str, int], tuple[int, int]], schema: StructType) -> Iterator[Any]:
        """Yield the records of every range, as Arrow record batches (partition by partition, in offset order)."""
        out = _Columns(schema)
        for tp, (start, end) in sorted(ranges.items()):
            if end > start:
                for _ in self._read_one(tp, start, end, out):
                    yield out.take()
        if len(out):
            yield out.take()

    def _read_one(self, tp: tuple[str, int], start: int, end: int, out: "_Columns") -> Iterator[None]:
        """Add the records ``[start, end)`` of one partition to ``out``; yields when ``out`` is full."""
        self._seek(tp, start)
        expected = start

        def take(msg, off: int) -> None:
            nonlocal expected
            if off < expected:
                return  # delivered again after a seek
            if off >= end:
                if expected < end:  # the range's tail is gone (retention, compaction)
                    _data_loss(self.fail_on_data_loss, tp, expected, off)
                    expected = end
                self.stash.setdefault(tp, []).append(msg)
                return
            if off != expected:
                _data_loss(self.fail_on_data_loss, tp, expected, off)
            out.add(msg, tp[0], tp[1], off)
            expected = off + 1

        stashed, self.stash[tp] = self.stash.get(tp, []), []
        for i, msg in enumerate(stashed):  # what earlier calls fetched past their ranges, in offset order
            if msg.offset() >= end:
                self.stash[tp] = stashed[i:]  # the rest stays for the next ranges
                break
            take(msg, msg.offset())
            if len(out) >= _ARROW_BATCH:
                yield None
        last_progress, client_error = time.monotonic(), None
        consumer = self._fetching(tp) if expected < end else None
        while expected < end:
            msgs = consumer.consume(num_messages=min(10_000, max(1, end - expected)), timeout=1.0)
            progressed = False
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if msg.topic() is None and not err.fatal():
                        # A client-level event, not about this partition: librdkafka looks up
                        # the group coordinator of every consumer (group.id is mandatory)
                        # though this one never joins or commits, and retries by itself.
                        # Seen as "FindCoordinator response error" on long reads.
                        client_error = err.str()
                        continue
                    raise RuntimeError(f"Kafka read of {tp[0]}-{tp[1]} failed: {err.str()}")
                progressed = True
                off = msg.offset()
                self.fetch[tp] = off + 1
                take(msg, off)
                if len(out) >= _ARROW_BATCH:
                    yield None
            if progressed:
                last_progress = time.monotonic()
            elif (time.monotonic() - last_progress) * 1000 >= self.poll_timeout_ms:
                raise TimeoutError(f"no records from {tp[0]}-{tp[1]} at offset {expected} for {self.poll_timeout_ms} ms "
                                   f"(kafkaConsumer.pollTimeoutMs); planned range ends at {end}"
                                   + (f"; the client last reported: {client_error}" if client_error else ""))


def _data_loss(fail: bool, tp: tuple[str, int], expected: int, got: int) -> None:
    if fail and got > expected:
        raise RuntimeError(
            f"data loss in {tp[0]}-{tp[1]}: expected offset {expected}, the broker "
            f"returned {got} (records deleted by retention or compaction?). Set failOnDataLoss=false "
            f"to read on past the gap.")


class _StreamOffsets:
    """What both stream readers share: their options, the offset planning (the start, the
    broker's high watermarks, capped for availableNow, and each micro-batch's ranges) and a
    commit that has nothing to do (Spark's checkpoint holds the offsets)."""

    def __init__(self, options: Mapping[str, str], schema: StructType):
        self.opts = SourceOptions.parse(options)
        self.schema = schema
        self._broker: _Broker | None = None
        self._target: dict[tuple[str, int], int] | None = None

    def commit(self, end: dict) -> None:
        """Nothing to do: Spark's checkpoint holds the offsets."""

    @property
    def broker(self) -> _Broker:
        if self._broker is None:
            self._broker = _Broker(self.opts)
        return self._broker

    def initialOffset(self) -> dict:
        return _to_json(_resolve(self.opts.starting, self.broker.watermarks(), "startingOffsets"))

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = {tp: high for tp, (_, high) in self.broker.watermarks().items()}

    def _latest(self) -> dict[tuple[str, int], tuple[int, int]]:
        marks = self.broker.watermarks()
        if self._target is not None:
            # availableNow: nothing past what existed when the query started.
            marks = {tp: (low, min(high, self._target.get(tp, low))) for tp, (low, high) in marks.items()}
        return marks

    def _plan(self, start: dict | None, max_rows: int | None) -> tuple[dict, dict]:
        """(begin, end) offsets of the next micro-batch after ``start``, at most ``max_rows`` records."""
        begin = _from_json(start)
        marks = self._latest()
        end = {}
        for tp, (low, high) in marks.items():
            if tp in begin and high < begin[tp]:
                if self.opts.fail_on_data_loss:
                    raise RuntimeError(
                        f"data loss in {tp[0]}-{tp[1]}: the broker's end offset {high} is before the "
                        f"checkpointed offset {begin[tp]} (topic recreated?). Set failOnDataLoss=false "
                        f"to restart this partition from its earliest offset.")
                begin[tp] = low
            end[tp] = high
            begin.setdefault(tp, low)  # a partition that appeared since: from its earliest
        for tp, off in begin.items():
            end.setdefault(tp, off)  # a partition that vanished keeps its offset
        if max_rows:
            end = _prorate(begin, end, max_rows)
        return begin, end

    def _ranges(self, start: dict, end: dict) -> list[KafkaPartition]:
        """The non-empty ranges between two checkpointed offsets (a partition new since
        ``start``, or reset after data loss, reads from its earliest offset)."""
        begin, stop = _from_json(start), _from_json(end)
        new = [tp for tp in stop if tp not in begin]
        if new:
            marks = self.broker.watermarks(new)
            begin.update({tp: marks[tp][0] for tp in new})
        out = []
        for (topic, part), e in sorted(stop.items()):
            s = begin[(topic, part)]
            if e < s:  # reset after data loss with failOnDataLoss=false
                s = self.broker.watermarks([(topic, part)])[(topic, part)][0]
            if e > s:
                out.append(KafkaPartition(topic, part, s, e))
        return out

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None


class KafkaStreamReader(_StreamOffsets, DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batch reader, ``aml.reader=tasks``: each micro-batch reads every Kafka partition's
    range in a Spark task of its own (reads scale out with the executors); offsets are the
    broker's high watermarks, capped by read limits."""

    def __getstate__(self) -> dict:
        # The reader is pickled to executors for read(); the broker handle stays behind.
        state = dict(self.__dict__)
        state["_broker"] = None
        return state

    def getDefaultReadLimit(self) -> ReadLimit:
        n = self.opts.max_offsets_per_trigger
        return ReadMaxRows(n) if n else ReadAllAvailable()

    def latestOffset(self, start: dict | None = None, limit: ReadLimit | None = None) -> dict:
        return _to_json(self._plan(start, limit.max_rows if isinstance(limit, ReadMaxRows) else None)[1])

    def reportLatestOffset(self) -> dict | None:
        marks = self.broker.watermarks()
        return _to_json({tp: high for tp, (_, high) in marks.items()}) if marks else None

    def partitions(self, start: dict, end: dict) -> list[KafkaPartition]:
        return self._ranges(start, end)

    def read(self, partition: KafkaPartition) -> Iterator[Any]:
        return read_range(self.opts.client, partition, self.schema,
                          self.opts.fail_on_data_loss, self.opts.poll_timeout_ms)


class KafkaDriverStreamReader(_StreamOffsets, SimpleDataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batch reader, ``aml.reader=driver``: consumers kept open in the driver's source
    process for the whole query (one per partition, :class:`RangeReader`) read every micro-batch.

    Spark calls :meth:`read` when it plans a micro-batch; the records it returns are handed
    to the micro-batch as they are (Spark's simple stream reader). No task starts a Python
    worker or a consumer and no connection is opened, so a micro-batch's read costs a fetch
    round trip per partition: the mode for low latency. Between micro-batches the consumers
    fetch nothing, so the broker and the reader leave the cores to the scoring. One process
    reads everything, which suits the rates one process sustains (tens of thousands of
    records per second); for more, ``aml.reader=tasks`` reads the partitions in parallel
    tasks. Offsets are checkpointed by Spark as in the other mode; a replayed micro-batch is
    read again by :meth:`readBetweenOffsets`.
    """

    def __init__(self, options: Mapping[str, str], schema: StructType):
        super().__init__(options, schema)
        self._reader: RangeReader | None = None
        # Spark creates this reader when the query starts: run the Arrow conversion once now
        # (its first cast imports pyarrow.compute and pandas: ~2 s), not while the first
        # micro-batch with records is being planned.
        _Columns(schema).take()

    @property
    def reader(self) -> RangeReader:
        if self._reader is None:
            self._reader = RangeReader(self.opts.client, self.opts.fail_on_data_loss, self.opts.poll_timeout_ms,
                                       self.opts.prefetch_records)
        return self._reader

    def _records(self, parts: list[KafkaPartition]) -> list:
        try:
            return list(self.reader.read({(p.topic, p.partition): (p.start, p.end) for p in parts}, self.schema))
        finally:
            self.reader.pause()  # nothing fetched while the micro-batch is processed

    def read(self, start: dict) -> tuple[Iterator[Any], dict]:
        begin, end = self._plan(start, self.opts.max_offsets_per_trigger)
        parts = [KafkaPartition(t, p, begin[(t, p)], e) for (t, p), e in sorted(end.items()) if e > begin[(t, p)]]
        return iter(self._records(parts)), _to_json(end)

    def readBetweenOffsets(self, start: dict, end: dict) -> Iterator[Any]:
        return iter(self._records(self._ranges(start, end)))

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().stop()


class KafkaRangeStreamReader(KafkaDriverStreamReader):
    """Micro-batch reader, ``aml.reader=ranges``: plans offsets like the driver reader, but a
    micro-batch's rows are its ranges (:data:`RANGES_SCHEMA`), not the records. The source's
    process opens no consumer; the micro-batch's consumer reads the records with a
    :class:`RangeFetcher`, exactly the planned ones, so a replayed micro-batch reads the same
    records again (Kafka keeps them within retention; ``failOnDataLoss`` applies there)."""

    def __init__(self, options: Mapping[str, str], schema: StructType):
        _StreamOffsets.__init__(self, options, schema)
        self._reader = None

    def _records(self, parts: list[KafkaPartition]) -> list:
        return [ranges_batch(parts)] if parts else []


def ranges_batch(parts: list[KafkaPartition]):
    """Offset ranges as one Arrow record batch in :data:`RANGES_SCHEMA`."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    return pa.RecordBatch.from_pylist(
        [{"topic": p.topic, "partition": p.partition, "startOffset": p.start, "endOffset": p.end} for p in parts],
        schema=to_arrow_schema(RANGES_SCHEMA))


class RangeFetcher:
    """The consumer side of ``aml.reader=ranges``: reads the records of a micro-batch's offset
    ranges, in Spark's Kafka schema (:data:`SCHEMA`), with the source's own options
    (``kafka.*``, ``failOnDataLoss``, ``kafkaConsumer.pollTimeoutMs``, ``aml.prefetchRecords``).

    Its :class:`RangeReader` stays open between micro-batches (one consumer per partition,
    connected once; paused in between), as the driver reader's does in the source process.
    Close it when the query ends."""

    def __init__(self, options: Mapping[str, str]):
        opts = SourceOptions.parse(options)
        self.reader = RangeReader(opts.client, opts.fail_on_data_loss, opts.poll_timeout_ms, opts.prefetch_records)
        columns = _Columns(SCHEMA)
        columns.take()  # the first Arrow cast's imports (~2 s), now rather than in the first micro-batch
        self.schema = columns.schema

    def read(self, ranges) -> Any:
        """The records of ``ranges`` (an Arrow table or batch with the :data:`RANGES_SCHEMA`
        columns) as one Arrow table, partition by partition in offset order."""
        import pyarrow as pa

        cols = [ranges.column(c).to_pylist() for c in ("topic", "partition", "startOffset", "endOffset")]
        wanted = {(t, int(p)): (int(s), int(e)) for t, p, s, e in zip(*cols)}
        try:
            batches = list(self.reader.read(wanted, SCHEMA))
        finally:
            self.reader.pause()
        return pa.Table.from_batches(batches, schema=self.schema)

    def close(self) -> None:
        self.reader.close()


class KafkaBatchReader(DataSourceReader):
    """``spark.read``: the records between ``startingOffsets`` (default earliest) and
    ``endingOffsets`` (default latest), fixed when the query is planned."""

    def __init__(self, options: Mapping[str, str], schema: StructType):
        opts = dict(options)
        if _opt(opts, "startingOffsets") is None:
            opts["startingOffsets"] = "earliest"
        self.opts = SourceOptions.parse(opts)
        if self.opts.starting == "latest":
            raise ConfigError("option startingOffsets cannot be 'latest' for a batch query")
        self.schema = schema
        self.ranges = reader_mode(opts) == "ranges"

    def partitions(self) -> list[KafkaPartition]:
        broker = _Broker(self.opts)
        try:
            marks = broker.watermarks()
            begin = _resolve(self.opts.starting, marks, "startingOffsets")
            end = _resolve(self.opts.ending, marks, "endingOffsets")
        finally:
            broker.close()
        return [KafkaPartition(t, p, begin[(t, p)], e) for (t, p), e in sorted(end.items())
                if e > begin.get((t, p), e)]

    def read(self, partition: InputPartition) -> Iterator[Any]:
        if not isinstance(partition, KafkaPartition):  # no partitions planned: Spark sends a dummy
            return iter(())
        if self.ranges:
            return iter([ranges_batch([partition])])
        return read_range(self.opts.client, partition, self.schema,
                          self.opts.fail_on_data_loss, self.opts.poll_timeout_ms)


# --------------------------------------------------------------------------- writing


@dataclass
class ProducedCommit(WriterCommitMessage):
    """What one task produced (records, per topic)."""

    records: int


def produce_batches(client: Mapping[str, str], topic: str | None, batches: Iterator[Any]) -> int:
    """Produce every row of the Arrow batches; flush; raise on any delivery error.

    Returns the number of records the broker acknowledged."""
    from confluent_kafka import KafkaException, Producer

    conf = {"acks": "all", "enable.idempotence": True, "linger.ms": 5, **client}
    try:
        producer = Producer(conf)
    except KafkaException as exc:
        raise ConfigError(f"invalid kafka.* option: {exc.args[0].str() if exc.args else exc}") from None
    errors: list[str] = []
    acked = [0]

    def on_delivery(err, msg) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}: {err.str()}")
        else:
            acked[0] += 1

    sent = 0
    for batch in batches:
        names = {n.lower(): n for n in batch.schema.names}
        values = batch.column(names["value"]).to_pylist()
        keys = batch.column(names["key"]).to_pylist() if "key" in names else None
        topics = batch.column(names["topic"]).to_pylist() if "topic" in names and not topic else None
        parts = batch.column(names["partition"]).to_pylist() if "partition" in names else None
        for i, value in enumerate(values):
            target = topic or (topics[i] if topics else None)
            if not target:
                raise ValueError("a row has a null topic and the option topic is not set")
            kwargs: dict[str, Any] = {"value": value, "on_delivery": on_delivery}
            if keys is not None and keys[i] is not None:
                kwargs["key"] = keys[i]
            if parts is not None and parts[i] is not None:
                kwargs["partition"] = int(parts[i])
            while True:
                try:
                    producer.produce(target, **kwargs)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            producer.poll(0)
            sent += 1
            if errors:
                break
        if errors:
            break
    remaining = producer.flush(120)
    if errors:
        raise RuntimeError(f"Kafka delivery failed for {len(errors)} record(s), first: {errors[0]}")
    if remaining:
        raise RuntimeError(f"Kafka delivery timed out: {remaining} of {sent} record(s) not acknowledged")
    return acked[0]


class _SinkMixin:
    def _setup(self, options: Mapping[str, str], schema: StructType) -> None:
        self.client = client_config(options)
        self.topic = _opt(options, "topic")
        _check_sink_columns(schema.fieldNames(), self.topic)

    def write(self, iterator: Iterator[Any]) -> ProducedCommit:
        return ProducedCommit(produce_batches(self.client, self.topic, iterator))


class KafkaStreamWriter(_SinkMixin, DataSourceStreamArrowWriter):
    """Streaming sink, at-least-once: a replayed micro-batch is produced again."""

    def __init__(self, options: Mapping[str, str], schema: StructType):
        self._setup(options, schema)

    def commit(self, messages, batchId: int) -> None:
        """Every task flushed before reporting success: nothing left to do."""

    def abort(self, messages, batchId: int) -> None:
        """Records already delivered stay in the topic (at-least-once)."""


class KafkaBatchWriter(_SinkMixin, DataSourceArrowWriter):
    """Batch sink (``df.write.format("aml_kafka").mode("append")``)."""

    def __init__(self, options: Mapping[str, str], schema: StructType):
        self._setup(options, schema)


# --------------------------------------------------------------------------- data source


class KafkaDataSource(DataSource):
    """Kafka source and sink with Spark's option names; ``format("aml_kafka")``."""

    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> StructType:
        # Only reads ask for the schema: checking the source options here makes a malformed
        # option fail at load(), naming it, instead of when the query runs.
        SourceOptions.parse(self.options)
        return RANGES_SCHEMA if reader_mode(self.options) == "ranges" else SCHEMA

    def reader(self, schema: StructType) -> KafkaBatchReader:
        return KafkaBatchReader(self.options, schema)

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        if reader_mode(self.options) in ("driver", "ranges"):
            # PySpark falls back to simpleStreamReader() when streamReader() is not implemented.
            raise PySparkNotImplementedError(errorClass="NOT_IMPLEMENTED", messageParameters={"feature": "streamReader"})
        return KafkaStreamReader(self.options, schema)

    def simpleStreamReader(self, schema: StructType) -> KafkaDriverStreamReader:
        if reader_mode(self.options) == "ranges":
            return KafkaRangeStreamReader(self.options, schema)
        return KafkaDriverStreamReader(self.options, schema)

    def writer(self, schema: StructType, overwrite: bool) -> KafkaBatchWriter:
        return KafkaBatchWriter(self.options, schema)

    def streamWriter(self, schema: StructType, overwrite: bool) -> KafkaStreamWriter:
        return KafkaStreamWriter(self.options, schema)


def register(spark) -> str:
    """Register the connector with ``spark`` once per session; returns the format name."""
    registered = getattr(spark, "_aml_kafka_registered", False)
    if not registered:
        spark.dataSource.register(KafkaDataSource)
        try:
            spark._aml_kafka_registered = True
        except AttributeError:  # a session object that takes no attributes: registering twice is harmless
            pass
    return FORMAT
