"""Topics for the Kafka tests, written and read with plain confluent-kafka clients: what a
test checks the connector, the scorer or ``task=replay`` against."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def fresh_topic(prefix: str = "t") -> str:
    """A topic name no other test uses (the broker is shared by the session)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def produce(bootstrap: str, topic: str, records: list[tuple[str | None, str]], partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    errors = []
    for key, value in records:
        kwargs = {"partition": partition} if partition is not None else {}
        producer.produce(topic, key=key, value=value, on_delivery=lambda e, m: e and errors.append(e), **kwargs)
    assert producer.flush(30) == 0 and not errors


def consume_all(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every record of ``topic`` as (partition, offset, key, value), read with a plain consumer."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "check", "enable.auto.commit": False})
    out = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            while True:
                msg = consumer.poll(10)
                assert msg is not None, f"timed out reading {topic}-{p}"
                assert msg.error() is None, msg.error()
                out.append((p, msg.offset(), msg.key(), msg.value()))
                if msg.offset() >= high - 1:
                    break
    finally:
        consumer.close()
    return out


def create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # keep the client alive until the result
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(15)
