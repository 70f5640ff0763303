"""Streaming: the streaming scorer (Spark Structured Streaming over the online store).

The Kafka connector it reads and writes with (``format("aml_kafka")``) is the separate,
general-purpose :mod:`aml_pipeline.kafka`; the local brokers the tests, benchmarks and docs
start live in ``aml_pipeline.testing.broker`` (not in the wheel).
"""
