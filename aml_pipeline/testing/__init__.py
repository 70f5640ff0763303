"""Local servers the tests and benchmarks start: a Redis server, a Kafka broker (Apache
Kafka from Maven Central jars, or a Kafka-protocol stand-in), the online service as a
subprocess.

They are harnesses, not part of the product, so the wheel leaves this package out
(``[tool.setuptools.packages.find]`` in pyproject.toml); a clone has them for development:
``python -m aml_pipeline.testing.broker`` runs a local broker in the foreground.
"""
