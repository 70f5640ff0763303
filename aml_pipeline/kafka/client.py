"""The confluent-kafka (librdkafka) clients the connector opens, and its view of the broker.

- :func:`consumer`: for metadata and for reading exact offset ranges; it never joins a
  group and never commits an offset (the checkpoint is the truth);
- :func:`producer`: idempotent, ``acks=all``;
- :class:`Broker`: which partitions the source's options select and their watermarks.

``client`` is always the librdkafka configuration from the ``kafka.*`` options
(:func:`aml_pipeline.kafka.options.client_config`): security settings
(``security.protocol``, ``sasl.*``, ``ssl.*``) reach every client the same way. A setting
librdkafka refuses is a :class:`~aml_pipeline.errors.ConfigError` naming it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Mapping

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from aml_pipeline.errors import ConfigError
from aml_pipeline.kafka.offsets import TP
from aml_pipeline.kafka.options import SourceOptions

#: What the sink's producer sets unless the ``kafka.*`` options say otherwise.
PRODUCER_DEFAULTS = {"acks": "all", "enable.idempotence": True, "linger.ms": 5}


def _invalid(exc: KafkaException) -> ConfigError:
    return ConfigError(f"invalid kafka.* option: {exc.args[0].str() if exc.args else exc}")


def consumer(client: Mapping[str, str], **extra: Any) -> Consumer:
    """A consumer for metadata and reads; never joins a group, never commits offsets.

    An assigned offset the broker no longer holds (retention, DeleteRecords) resets to the
    partition's earliest: the reader then sees the gap and applies ``failOnDataLoss``. With
    librdkafka's default (``latest``) it waited for records that were gone until
    ``kafkaConsumer.pollTimeoutMs`` (found against Apache Kafka's DeleteRecords)."""
    conf = {"group.id": f"aml-kafka-{uuid.uuid4().hex[:12]}", **client, **extra,
            "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest"}
    try:
        return Consumer(conf)
    except KafkaException as exc:
        raise _invalid(exc) from None


def producer(client: Mapping[str, str]) -> Producer:
    """An idempotent producer (:data:`PRODUCER_DEFAULTS`, then ``client``)."""
    try:
        return Producer({**PRODUCER_DEFAULTS, **client})
    except KafkaException as exc:
        raise _invalid(exc) from None


class Broker:
    """Driver-side view of the broker: which partitions exist and their watermarks."""

    def __init__(self, opts: SourceOptions):
        self.opts = opts
        self.consumer = consumer(opts.client)

    def close(self) -> None:
        self.consumer.close()

    def partitions(self) -> list[TP]:
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

    def watermarks(self, tps: list[TP] | None = None) -> dict[TP, tuple[int, int]]:
        """``{tp: (low, high)}`` for ``tps`` (default: every selected partition)."""
        timeout = self.opts.poll_timeout_ms / 1000
        tps = self.partitions() if tps is None else tps
        return {(t, p): self.consumer.get_watermark_offsets(TopicPartition(t, p), timeout=timeout)
                for t, p in tps}
