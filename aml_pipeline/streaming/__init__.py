"""Streaming: the Kafka connector (source and sink for Spark) and a local Kafka-protocol broker.

``aml_pipeline.streaming.kafka`` holds the connector, ``aml_pipeline.streaming.broker`` the
``LocalBroker`` used by tests, benchmarks and docs.
"""
