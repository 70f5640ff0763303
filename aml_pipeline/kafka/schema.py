"""The schemas a read produces, and Kafka messages turned into Arrow record batches in them.

:data:`SCHEMA` is Spark's Kafka source schema, column for column, so a query written for
``format("kafka")`` reads the same columns from ``format("aml_kafka")``.
:data:`RANGES_SCHEMA` is what a micro-batch holds with ``aml.reader=ranges``: its offset
ranges, not its records.
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

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
#: it covers, one per topic-partition with records (read them with
#: :class:`aml_pipeline.kafka.reader.RangeFetcher`).
RANGES_SCHEMA = StructType([
    StructField("topic", StringType(), False),
    StructField("partition", IntegerType(), False),
    StructField("startOffset", LongType(), False),
    StructField("endOffset", LongType(), False),
])

#: Records per Arrow batch handed on by a read.
ARROW_BATCH = 8192


class Columns:
    """Kafka messages -> Arrow record batches in Spark's Kafka schema."""

    def __init__(self, schema: StructType):
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

    def take(self) -> pa.RecordBatch:
        """The messages added since the last call, as one record batch."""
        arrays = []
        for field in self.schema:
            values = self.cols[field.name]
            if field.name == "timestamp":
                arrays.append(pa.array(values, type=pa.int64()).cast(field.type))
            else:
                arrays.append(pa.array(values, type=field.type))
        self._reset()
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def ranges_batch(ranges: list[tuple[str, int, int, int]]) -> pa.RecordBatch:
    """Offset ranges ``(topic, partition, start, end)`` as one Arrow record batch in :data:`RANGES_SCHEMA`."""
    return pa.RecordBatch.from_pylist(
        [{"topic": t, "partition": p, "startOffset": s, "endOffset": e} for t, p, s, e in ranges],
        schema=to_arrow_schema(RANGES_SCHEMA))
