"""The source: Spark's readers of a Kafka topic (micro-batch and batch), planning offsets.

Offsets live in Spark's checkpoint as ``{"topic": {"partition": next_offset}}`` (Spark's own
JSON layout); each micro-batch reads exactly the range planned for it, and a replayed
micro-batch reads the same range again. No consumer group joins and no offset is committed
to Kafka. Who reads a micro-batch (``aml.reader``):

- ``driver`` (default, :class:`KafkaDriverStreamReader`): consumers (one per partition) kept
  open in the driver's source process for the whole query; a micro-batch's read costs no task,
  no Python worker and no connection. For low latency, at the rates one process reads.
- ``tasks`` (:class:`KafkaStreamReader`): one Spark task per Kafka partition and micro-batch,
  each with its own consumer (assign + seek); reads scale out with the executors, at the cost
  of a consumer and a fetch per partition and micro-batch.
- ``ranges`` (:class:`KafkaRangeStreamReader`): a micro-batch holds only its offset ranges,
  one row per partition (:data:`~aml_pipeline.kafka.schema.RANGES_SCHEMA`), and whoever
  consumes the micro-batch reads the records itself with a
  :class:`~aml_pipeline.kafka.reader.RangeFetcher`. The records then travel once, broker to
  consumer, instead of broker to the source's Python process to the JVM to the consumer's
  Python process.

Batch reads (:class:`KafkaBatchReader`) take the records between ``startingOffsets`` and
``endingOffsets``.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from pyspark.sql.datasource import (
    DataSourceReader,
    DataSourceStreamReader,
    InputPartition,
    SimpleDataSourceStreamReader,
)
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import StructType

from aml_pipeline.errors import ConfigError
from aml_pipeline.kafka.client import Broker
from aml_pipeline.kafka.offsets import TP, from_json, prorate, resolve, to_json
from aml_pipeline.kafka.options import POLL_TIMEOUT_MS, SourceOptions, opt, reader_mode
from aml_pipeline.kafka.reader import RangeReader
from aml_pipeline.kafka.schema import Columns, ranges_batch


class KafkaPartition(InputPartition):
    """One Kafka topic-partition's offset range ``[start, end)`` in one Spark task."""

    def __init__(self, topic: str, partition: int, start: int, end: int):
        super().__init__((topic, partition, start, end))
        self.topic, self.partition, self.start, self.end = topic, partition, start, end


def read_range(client: Mapping[str, str], part: KafkaPartition, schema: StructType,
               fail_on_data_loss: bool = True, poll_timeout_ms: int = POLL_TIMEOUT_MS) -> Iterator[Any]:
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


def _ranges_batch(parts: list[KafkaPartition]):
    return ranges_batch([(p.topic, p.partition, p.start, p.end) for p in parts])


class _StreamOffsets:
    """What the stream readers share: their options, the offset planning (the start, the
    broker's high watermarks, capped for availableNow, and each micro-batch's ranges) and a
    commit that has nothing to do (Spark's checkpoint holds the offsets)."""

    def __init__(self, options: Mapping[str, str], schema: StructType):
        self.opts = SourceOptions.parse(options)
        self.schema = schema
        self._broker: Broker | None = None
        self._target: dict[TP, int] | None = None

    def commit(self, end: dict) -> None:
        """Nothing to do: Spark's checkpoint holds the offsets."""

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = Broker(self.opts)
        return self._broker

    def initialOffset(self) -> dict:
        return to_json(resolve(self.opts.starting, self.broker.watermarks(), "startingOffsets"))

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = {tp: high for tp, (_, high) in self.broker.watermarks().items()}

    def _latest(self) -> dict[TP, tuple[int, int]]:
        marks = self.broker.watermarks()
        if self._target is not None:
            # availableNow: nothing past what existed when the query started.
            marks = {tp: (low, min(high, self._target.get(tp, low))) for tp, (low, high) in marks.items()}
        return marks

    def _plan(self, start: dict | None, max_rows: int | None) -> tuple[dict, dict]:
        """(begin, end) offsets of the next micro-batch after ``start``, at most ``max_rows`` records."""
        begin = from_json(start)
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
            end = prorate(begin, end, max_rows)
        return begin, end

    def _ranges(self, start: dict, end: dict) -> list[KafkaPartition]:
        """The non-empty ranges between two checkpointed offsets (a partition new since
        ``start``, or reset after data loss, reads from its earliest offset)."""
        begin, stop = from_json(start), from_json(end)
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
        return to_json(self._plan(start, limit.max_rows if isinstance(limit, ReadMaxRows) else None)[1])

    def reportLatestOffset(self) -> dict | None:
        marks = self.broker.watermarks()
        return to_json({tp: high for tp, (_, high) in marks.items()}) if marks else None

    def partitions(self, start: dict, end: dict) -> list[KafkaPartition]:
        return self._ranges(start, end)

    def read(self, partition: KafkaPartition) -> Iterator[Any]:
        return read_range(self.opts.client, partition, self.schema,
                          self.opts.fail_on_data_loss, self.opts.poll_timeout_ms)


class KafkaDriverStreamReader(_StreamOffsets, SimpleDataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batch reader, ``aml.reader=driver``: consumers kept open in the driver's source
    process for the whole query (one per partition, :class:`~aml_pipeline.kafka.reader.RangeReader`)
    read every micro-batch.

    Spark calls :meth:`read` when it plans a micro-batch; the records it returns are handed
    to the micro-batch as they are (Spark's simple stream reader). No task starts a Python
    worker or a consumer and no connection is opened, so a micro-batch's read costs a fetch
    round trip per partition: the mode for low latency. Between micro-batches the consumers
    fetch nothing, so the broker and the reader leave the cores to the query's own work. One
    process reads everything, which suits the rates one process sustains (tens of thousands
    of records per second); for more, ``aml.reader=tasks`` reads the partitions in parallel
    tasks. Offsets are checkpointed by Spark as in the other mode; a replayed micro-batch is
    read again by :meth:`readBetweenOffsets`.
    """

    def __init__(self, options: Mapping[str, str], schema: StructType):
        super().__init__(options, schema)
        self._reader: RangeReader | None = None
        # Spark creates this reader when the query starts: run the Arrow conversion once now
        # (its first cast imports pyarrow.compute and pandas: ~2 s), not while the first
        # micro-batch with records is being planned.
        Columns(schema).take()

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
        return iter(self._records(parts)), to_json(end)

    def readBetweenOffsets(self, start: dict, end: dict) -> Iterator[Any]:
        return iter(self._records(self._ranges(start, end)))

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().stop()


class KafkaRangeStreamReader(KafkaDriverStreamReader):
    """Micro-batch reader, ``aml.reader=ranges``: plans offsets like the driver reader, but a
    micro-batch's rows are its ranges (:data:`~aml_pipeline.kafka.schema.RANGES_SCHEMA`), not
    the records. The source's process opens no consumer; the micro-batch's consumer reads the
    records with a :class:`~aml_pipeline.kafka.reader.RangeFetcher`, exactly the planned ones,
    so a replayed micro-batch reads the same records again (Kafka keeps them within
    retention; ``failOnDataLoss`` applies there)."""

    def __init__(self, options: Mapping[str, str], schema: StructType):
        _StreamOffsets.__init__(self, options, schema)
        self._reader = None

    def _records(self, parts: list[KafkaPartition]) -> list:
        return [_ranges_batch(parts)] if parts else []


class KafkaBatchReader(DataSourceReader):
    """``spark.read``: the records between ``startingOffsets`` (default earliest) and
    ``endingOffsets`` (default latest), fixed when the query is planned."""

    def __init__(self, options: Mapping[str, str], schema: StructType):
        opts = dict(options)
        if opt(opts, "startingOffsets") is None:
            opts["startingOffsets"] = "earliest"
        self.opts = SourceOptions.parse(opts)
        if self.opts.starting == "latest":
            raise ConfigError("option startingOffsets cannot be 'latest' for a batch query")
        self.schema = schema
        self.ranges = reader_mode(opts) == "ranges"

    def partitions(self) -> list[KafkaPartition]:
        broker = Broker(self.opts)
        try:
            marks = broker.watermarks()
            begin = resolve(self.opts.starting, marks, "startingOffsets")
            end = resolve(self.opts.ending, marks, "endingOffsets")
        finally:
            broker.close()
        return [KafkaPartition(t, p, begin[(t, p)], e) for (t, p), e in sorted(end.items())
                if e > begin.get((t, p), e)]

    def read(self, partition: InputPartition) -> Iterator[Any]:
        if not isinstance(partition, KafkaPartition):  # no partitions planned: Spark sends a dummy
            return iter(())
        if self.ranges:
            return iter([_ranges_batch([partition])])
        return read_range(self.opts.client, partition, self.schema,
                          self.opts.fail_on_data_loss, self.opts.poll_timeout_ms)
