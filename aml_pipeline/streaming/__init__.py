"""Streaming: the Kafka connector (source and sink for Spark) and the streaming scorer.

``aml_pipeline.streaming.kafka`` holds the connector; the local brokers the tests,
benchmarks and docs start live in ``aml_pipeline.testing.broker`` (not in the wheel).
"""
