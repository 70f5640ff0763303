"""``task=cases`` from Kafka: the streaming scorer's alert topics, read with a consumer group.

Each batch of records is ingested in one transaction, then its offsets are committed: a
crash between the two reads the batch again, which ingestion (idempotent by event id)
turns into nothing. Without ``cases.follow`` the reader stops once every assigned
partition is read to its end (or after ``cases.kafka.idle_seconds`` without a record);
with it, it keeps reading until ``cases.max_polls`` polls or a stop signal.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional

from aml_pipeline.cases.inputs import alert_row
from aml_pipeline.errors import UserError
from aml_pipeline.optional import require


def consume(bootstrap_servers: str, topics: list[str], group_id: str, on_rows: Callable[[list[dict], str], None], *,
            follow: bool = False, poll_seconds: float = 1.0, max_polls: Optional[int] = None,
            idle_seconds: float = 10.0, batch_size: int = 1000, config: Optional[dict] = None) -> dict:
    """Read ``topics`` and hand each batch of alert rows to ``on_rows(rows, source)``;
    returns counts (records, batches, undecodable records skipped)."""
    # the stream extra's Kafka client, needed only here: a missing one is one line
    require("confluent_kafka", why="task=cases from Kafka (cases.kafka.bootstrap_servers)")
    from confluent_kafka import Consumer, KafkaError, KafkaException

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group_id, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "enable.partition.eof": True, **(config or {})})
    counts = {"records": 0, "batches": 0, "undecodable": 0}
    at_end: set[tuple[str, int]] = set()
    polls, last_record = 0, time.monotonic()
    try:
        consumer.subscribe(list(topics))
        while True:
            messages = consumer.consume(batch_size, timeout=poll_seconds if follow else min(poll_seconds, 1.0))
            polls += 1
            rows, sources, got = [], set(), 0
            for m in messages:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add((m.topic(), m.partition()))
                        continue
                    if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        continue  # a topic the scorer has not written yet
                    raise UserError(f"cases.kafka: {err.str()}")
                at_end.discard((m.topic(), m.partition()))
                counts["records"] += 1
                got += 1
                try:
                    row = alert_row(json.loads(m.value()))
                except (TypeError, ValueError):
                    counts["undecodable"] += 1
                    continue
                if row is not None:
                    rows.append(row)
                    sources.add(m.topic())
            if rows:
                on_rows(rows, "kafka:" + ",".join(sorted(sources)))
            if got:  # offsets after the batch landed (nothing to commit on end-of-partition events)
                consumer.commit(asynchronous=False)
                counts["batches"] += 1
                last_record = time.monotonic()
            if follow:
                if max_polls is not None and polls >= int(max_polls):
                    break
                continue
            assigned = {(p.topic, p.partition) for p in consumer.assignment()}
            if assigned and assigned <= at_end:
                break
            if time.monotonic() - last_record > idle_seconds:
                break
    except KafkaException as exc:
        raise UserError(f"cases.kafka: {exc}") from None
    finally:
        consumer.close()
    return counts
