"""The sink: Spark's writers to Kafka (streaming and batch), at-least-once.

Columns ``value`` (string or binary, required), ``key`` (optional), ``topic`` (optional; the
``topic`` option wins, as in Spark) and ``partition`` (optional). Each task produces its rows
with an idempotent producer (``acks=all``), flushes before it reports success and raises on
any delivery error, so Spark retries it. After a crash Spark replays the micro-batch that was
written but not committed, and its records are produced again: consumers deduplicate, e.g.
by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from pyspark.sql.datasource import DataSourceArrowWriter, DataSourceStreamArrowWriter, WriterCommitMessage
from pyspark.sql.types import StructType

from aml_pipeline.kafka.client import producer
from aml_pipeline.kafka.options import check_sink_columns, client_config, opt


@dataclass
class ProducedCommit(WriterCommitMessage):
    """What one task produced (records)."""

    records: int


def produce_batches(client: Mapping[str, str], topic: str | None, batches: Iterator[Any]) -> int:
    """Produce every row of the Arrow batches; flush; raise on any delivery error.

    Returns the number of records the broker acknowledged."""
    prod = producer(client)
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
                    prod.produce(target, **kwargs)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    prod.poll(0.1)
            prod.poll(0)
            sent += 1
            if errors:
                break
        if errors:
            break
    remaining = prod.flush(120)
    if errors:
        raise RuntimeError(f"Kafka delivery failed for {len(errors)} record(s), first: {errors[0]}")
    if remaining:
        raise RuntimeError(f"Kafka delivery timed out: {remaining} of {sent} record(s) not acknowledged")
    return acked[0]


class _SinkMixin:
    def _setup(self, options: Mapping[str, str], schema: StructType) -> None:
        self.client = client_config(options)
        self.topic = opt(options, "topic")
        check_sink_columns(schema.fieldNames(), self.topic)

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
