"""The data source Spark sees: ``format("aml_kafka")``, and :func:`register`, which adds it to a session."""

from __future__ import annotations

from pyspark.errors import PySparkNotImplementedError
from pyspark.sql.datasource import DataSource
from pyspark.sql.types import StructType

from aml_pipeline.kafka.options import SourceOptions, reader_mode
from aml_pipeline.kafka.schema import RANGES_SCHEMA, SCHEMA
from aml_pipeline.kafka.sink import KafkaBatchWriter, KafkaStreamWriter
from aml_pipeline.kafka.source import KafkaBatchReader, KafkaDriverStreamReader, KafkaRangeStreamReader, KafkaStreamReader

#: The short name the connector is registered under (``format(FORMAT)``).
FORMAT = "aml_kafka"


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
