"""Where the streaming scorer's results go: alerts, dead letters, deferred alerts, late events
(and, on request, every decision with its features).

Every micro-batch's results are written as one unit named by the batch id, *before* the
scorer commits its state. A batch replayed after a crash is computed again from the same
state and inputs, so it produces the same records (same ``alert_id``):

- :class:`FileOutputs` writes ``<output>/<kind>/part-<batch>.jsonl`` through a temporary
  file and an atomic rename (both fsync-ed: :func:`aml_pipeline.jsonl.replace_durably`), so
  a replay replaces the file: exactly once per batch;
- :class:`KafkaOutputs` produces to one topic per kind, keyed by the sending account (one
  account's records stay in one partition, in order), with headers naming the record
  (``aml.id``: ``alert_id`` or event id), the reason, the model and bundle hash and the
  source position (Kafka Connect's dead-letter headers too, on dead letters), through an
  idempotent producer; it waits for the broker's acknowledgements before the scorer
  commits: at least once, a replay may publish a record twice with the same ``aml.id``
  (consumers deduplicate on it).
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from confluent_kafka import Producer

from aml_pipeline.jsonl import replace_durably

KINDS = ("alerts", "dead_letter", "deferred", "late", "decisions")


def _default(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).isoformat()
    if isinstance(v, date):
        return v.isoformat()
    return str(v)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def dumps(record: dict[str, Any]) -> str:
    """Compact JSON; NaN and infinities (not JSON) become null."""
    try:
        return json.dumps(record, separators=(",", ":"), default=_default, allow_nan=False)
    except ValueError:
        return json.dumps(_clean(record), separators=(",", ":"), default=_default)


class Outputs:
    """Interface: ``write(tag, kind, records)`` for each kind, then ``commit(tag)``."""

    def write(self, tag: str, kind: str, records: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def write_decisions(self, tag: str, decisions: pl.DataFrame) -> None:
        self.write(tag, "decisions", decisions.to_dicts())

    def commit(self, tag: str) -> None:
        """Make the batch's records durable (flush, wait for acknowledgements)."""

    def set_trace(self, trace: dict[str, Any]) -> None:
        """The model's lineage (name, version, run id, config and bundle hash), for outputs
        that label every record with it (:class:`KafkaOutputs`' headers)."""

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return type(self).__name__


class FileOutputs(Outputs):
    """JSON lines per kind and batch: ``<root>/<kind>/part-<tag>.jsonl`` (decisions: parquet)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)

    def write(self, tag: str, kind: str, records: list[dict[str, Any]]) -> None:
        path = self.root / kind / f"part-{tag}.jsonl"
        if not records:
            if path.exists():  # a replay that now has nothing for this kind (cannot happen, but stay exact)
                path.unlink()
            return
        replace_durably(path, "".join(dumps(r) + "\n" for r in records))

    def write_decisions(self, tag: str, decisions: pl.DataFrame) -> None:
        if decisions.height:
            replace_durably(self.root / "decisions" / f"part-{tag}.parquet", decisions.write_parquet)

    def describe(self) -> str:
        return str(self.root)


def read_jsonl(directory: str | Path) -> list[dict[str, Any]]:
    """Every record of one kind written by :class:`FileOutputs` (tests, tools)."""
    out = []
    for p in sorted(Path(directory).glob("part-*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines() if line]
    return out


#: Kafka Connect's dead-letter headers (``errors.deadletterqueue.context.headers.enable``),
#: set on our dead letters too, so tools written for Connect's DLQ read them.
CONNECT_DLQ = "__connect.errors."


def record_key(kind: str, record: dict[str, Any]) -> str | None:
    """The Kafka key of an output record: the sending account (a dead letter's only when its
    record had one), else the event id."""
    return record.get("src_account") or record.get("event_id")


def record_headers(kind: str, record: dict[str, Any], trace: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Headers of an output record: ``aml.kind``; ``aml.id`` (``alert_id``, else the event id:
    the deduplication key); ``aml.reason`` (the deferral's reason, or the dead letter's or late
    event's reason codes, comma-separated); ``aml.model`` (name:version) and
    ``aml.bundle_hash``; ``aml.source.*`` (topic, partition, offset, or file, line: where the
    event was read). Dead letters also carry Kafka Connect's ``__connect.errors.topic``,
    ``.partition``, ``.offset``, ``.exception.class.name`` and ``.exception.message``."""
    h: list[tuple[str, str]] = [("aml.kind", kind)]
    ident = record.get("alert_id") or record.get("event_id")
    if ident:
        h.append(("aml.id", str(ident)))
    reason = record.get("deferred_reason") or ",".join(record.get("reasons") or [])
    if reason:
        h.append(("aml.reason", reason))
    name, version = record.get("model_name") or trace.get("model_name"), record.get("model_version") or trace.get("model_version")
    if name:
        h.append(("aml.model", f"{name}:{version}"))
    bundle = record.get("bundle_hash") or trace.get("bundle_hash")
    if bundle:
        h.append(("aml.bundle_hash", str(bundle)))
    source = record.get("source") if isinstance(record.get("source"), dict) else {
        k: record[k] for k in ("topic", "partition", "offset", "file", "line") if record.get(k) is not None}
    h += [(f"aml.source.{k}", str(v)) for k, v in source.items() if v is not None]
    if kind == "dead_letter":
        h += [(f"{CONNECT_DLQ}{k}", str(source[k])) for k in ("topic", "partition", "offset") if k in source]
        h += [(f"{CONNECT_DLQ}exception.class.name", "aml_pipeline.validation"),
              (f"{CONNECT_DLQ}exception.message", reason)]
    return [(k, v.encode()) for k, v in h]


class KafkaOutputs(Outputs):
    """One topic per kind (``deploy.topics``), produced with confluent-kafka: keyed by
    :func:`record_key`, labelled by :func:`record_headers`, idempotent (``acks=all``)."""

    def __init__(self, bootstrap_servers: str, topics: dict[str, str], config: dict[str, Any] | None = None):
        self.topics = topics
        conf = {"bootstrap.servers": bootstrap_servers, "linger.ms": 5, "enable.idempotence": True,
                "acks": "all", **(config or {})}
        self.producer = Producer(conf)
        self._errors: list[str] = []
        self.trace: dict[str, Any] = {}

    def set_trace(self, trace: dict[str, Any]) -> None:
        self.trace = dict(trace)

    def _report(self, err, msg) -> None:
        if err is not None:
            self._errors.append(str(err))

    def write(self, tag: str, kind: str, records: list[dict[str, Any]]) -> None:
        topic = self.topics[kind]
        for r in records:
            key = record_key(kind, r)
            headers = record_headers(kind, r, self.trace)
            while True:
                try:
                    self.producer.produce(topic, value=dumps(r).encode(), key=None if key is None else str(key).encode(),
                                          headers=headers, on_delivery=self._report)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.producer.poll(0)

    def commit(self, tag: str) -> None:
        left = self.producer.flush(60)
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"kafka: batch {tag}: {left} record(s) not acknowledged; errors: {errors[:3]}")

    def close(self) -> None:
        self.producer.flush(30)

    def describe(self) -> str:
        return ", ".join(f"{k}->{v}" for k, v in self.topics.items())
