"""A Kafka source and sink for Spark, on PySpark's Python data source API and confluent-kafka.

General purpose: nothing here knows about transactions, alerts or the scorer, and the package
imports nothing from the rest of ``aml_pipeline`` but :mod:`aml_pipeline.errors`. It needs
the ``stream`` extra (PySpark >= 4.2 for ``pyspark.sql.datasource``, pyarrow, confluent-kafka)
and no jars: Spark's own Kafka connector is a Maven artifact, and a deployment without Maven
access cannot load it. Spark's option names and Spark's Kafka schema are kept, so a query
switches between ``format("aml_kafka")`` and ``format("kafka")`` by configuration alone.
docs/kafka.md is the user's page.

Usage::

    from aml_pipeline.kafka import register
    register(spark)                      # idempotent; returns "aml_kafka"
    df = (spark.readStream.format("aml_kafka")
          .option("kafka.bootstrap.servers", "127.0.0.1:9092")
          .option("subscribe", "payments")
          .option("startingOffsets", "earliest")
          .load())                       # key, value, topic, partition, offset, timestamp, timestampType
    (df.selectExpr("key", "upper(cast(value AS string)) AS value")
       .writeStream.format("aml_kafka")
       .option("kafka.bootstrap.servers", "127.0.0.1:9092")
       .option("topic", "payments_upper")
       .option("checkpointLocation", "...").start())

Guarantees: the source is exactly-once into Spark (the offsets live only in Spark's
checkpoint; each micro-batch reads exactly its planned range, a replayed one the same range
again); the sink is at-least-once (a replayed micro-batch is produced again).

Modules, each with one job:

- :mod:`.options`: the options (Spark's names, plus ``aml.reader`` and ``aml.prefetchRecords``),
  checked, each error a one-line
  :class:`~aml_pipeline.errors.ConfigError` naming the option;
- :mod:`.offsets`: Spark's JSON offsets, ``earliest`` / ``latest`` resolved, a limit shared
  between partitions;
- :mod:`.client`: the confluent-kafka consumer and producer, the broker's partitions and watermarks;
- :mod:`.schema`: Spark's Kafka schema, the ranges schema, messages to Arrow record batches;
- :mod:`.reader`: exact offset ranges read with consumers (:class:`RangeReader`,
  :class:`RangeFetcher`), usable outside Spark;
- :mod:`.source`: Spark's stream readers (``aml.reader`` = ``driver``, ``tasks``, ``ranges``)
  and the batch reader;
- :mod:`.sink`: Spark's stream and batch writers;
- :mod:`.datasource`: ``format("aml_kafka")`` and :func:`register`.

Public names: :data:`FORMAT`, :func:`register`, :class:`KafkaDataSource`, :data:`SCHEMA`,
:data:`RANGES_SCHEMA`, :data:`EARLIEST`, :data:`LATEST`, :data:`READERS`,
:class:`SourceOptions`, :func:`validate_source_options`, :func:`validate_sink_options`,
:func:`client_config`, :func:`error_message`, :class:`RangeReader`, :class:`RangeFetcher`,
:func:`produce_batches`.
"""

from aml_pipeline.kafka.datasource import FORMAT, KafkaDataSource, register
from aml_pipeline.kafka.offsets import EARLIEST, LATEST
from aml_pipeline.kafka.options import (
    READERS,
    SourceOptions,
    client_config,
    error_message,
    validate_sink_options,
    validate_source_options,
)
from aml_pipeline.kafka.reader import RangeFetcher, RangeReader
from aml_pipeline.kafka.schema import RANGES_SCHEMA, SCHEMA
from aml_pipeline.kafka.sink import produce_batches

__all__ = [
    "EARLIEST",
    "FORMAT",
    "LATEST",
    "RANGES_SCHEMA",
    "READERS",
    "SCHEMA",
    "KafkaDataSource",
    "RangeFetcher",
    "RangeReader",
    "SourceOptions",
    "client_config",
    "error_message",
    "produce_batches",
    "register",
    "validate_sink_options",
    "validate_source_options",
]
