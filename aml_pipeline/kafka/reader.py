"""Reading exact offset ranges ``[start, end)`` with consumers: :class:`RangeReader`, and
:class:`RangeFetcher`, the consumer side of ``aml.reader=ranges``.

A range is read exactly: no consumer group, no committed offset, a gap inside the range is
data loss (``failOnDataLoss``), and a range that never fills up fails after
``kafkaConsumer.pollTimeoutMs``. Both work outside Spark too: give them the client config
(or the source options) and the ranges.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Iterator, Mapping

import pyarrow as pa
from confluent_kafka import TopicPartition
from pyspark.sql.types import StructType

from aml_pipeline.kafka.client import consumer
from aml_pipeline.kafka.offsets import TP
from aml_pipeline.kafka.options import POLL_TIMEOUT_MS, SourceOptions
from aml_pipeline.kafka.schema import ARROW_BATCH, SCHEMA, Columns


class RangeReader:
    """Reads offset ranges ``[start, end)`` of partitions, one consumer per partition.

    A Spark task uses one for its partition and closes it. The driver reader
    (:class:`aml_pipeline.kafka.source.KafkaDriverStreamReader`) keeps one open for the whole
    query: its consumers keep their connections and the reader their positions, so a
    micro-batch costs no connection and no metadata round trip; between micro-batches they
    fetch nothing (:meth:`pause`). Messages a consumer delivers past a range's end are kept
    (``stash``) and returned first by the next call; a range that does not start where the
    last one ended (a restart, a replayed batch) makes that partition's consumer seek.

    One consumer per partition, not one for all: each partition then has its own fetch
    queue, and the local Kafka-protocol broker the tests used stopped answering a consumer
    that fetched several large partitions in one request.
    """

    def __init__(self, client: Mapping[str, str], fail_on_data_loss: bool = True, poll_timeout_ms: int = POLL_TIMEOUT_MS,
                 prefetch: int = 0):
        self.client = dict(client)
        self.fail_on_data_loss = fail_on_data_loss
        self.poll_timeout_ms = poll_timeout_ms
        #: records per partition :meth:`pause` keeps of what the consumer fetched ahead
        self.prefetch = int(prefetch)
        self.consumers: dict[TP, Any] = {}
        #: Partitions whose consumer is assigned (fetching).
        self.assigned: set[TP] = set()
        #: tp -> offset the partition's consumer delivers next (after the stashed messages).
        self.fetch: dict[TP, int] = {}
        self.stash: dict[TP, list] = {}
        #: The last error a consumer's client reported (it retries by itself: a wrong SASL
        #: password or an unreachable broker shows only here), named when a read times out.
        self.client_error: str | None = None

    def _on_client_error(self, err) -> None:
        self.client_error = err.str()

    def pause(self) -> None:
        """Stop fetching until the next read (the consumers keep their connections and the
        reader its positions). An assigned consumer keeps a fetch request open on the broker
        all the time; on the 2-core test machine the local broker spent a third of a core
        on each, which the micro-batch's processing needs.

        Unassigning discards the messages the consumer fetched ahead of the range. Up to
        ``prefetch`` of them per partition are first moved to the stash, so the next ranges
        are served without fetching them again: a consumer fetches far ahead when there is a
        backlog (librdkafka keeps ``queued.min.messages``, 100,000 by default, queued per
        partition; the local test broker even answered each fetch with the whole rest of the
        partition), and without this every micro-batch paid for that fetch once more."""
        for tp in self.assigned:
            cons = self.consumers[tp]
            stash = self.stash.setdefault(tp, [])
            room = self.prefetch - len(stash)
            while room > 0:
                msgs = cons.consume(num_messages=min(room, 10_000), timeout=0)
                # up to the first error, if any (what follows it is fetched again)
                kept = list(itertools.takewhile(lambda m: m.error() is None, msgs))
                if kept:
                    stash.extend(kept)
                    self.fetch[tp] = kept[-1].offset() + 1
                    room -= len(kept)
                if not msgs or len(kept) < len(msgs):
                    break
            cons.unassign()
        self.assigned.clear()

    def close(self) -> None:
        for cons in self.consumers.values():
            cons.close()
        self.consumers.clear()
        self.assigned.clear()
        self.fetch.clear()
        self.stash.clear()

    def _next(self, tp: TP) -> int | None:
        """Offset of the next message this reader would return for ``tp`` (None: no consumer yet)."""
        if self.stash.get(tp):
            return self.stash[tp][0].offset()
        return self.fetch.get(tp)

    def _seek(self, tp: TP, start: int) -> None:
        """Make ``start`` the partition's next message: from the stash or the consumer's
        position when they continue there, else a seek (a new partition, a restart or a
        replayed batch)."""
        if self._next(tp) != start:
            self.stash.pop(tp, None)
            self.fetch[tp] = start
            self.assigned.discard(tp)

    def _fetching(self, tp: TP):
        """The partition's consumer, assigned from the offset after what it delivered (and stashed)."""
        if tp not in self.consumers:
            self.consumers[tp] = consumer(self.client, error_cb=self._on_client_error)
        if tp not in self.assigned:
            self.consumers[tp].assign([TopicPartition(tp[0], tp[1], self.fetch[tp])])
            self.assigned.add(tp)
        return self.consumers[tp]

    def read(self, ranges: dict[TP, tuple[int, int]], schema: StructType) -> Iterator[pa.RecordBatch]:
        """Yield the records of every range, as Arrow record batches (partition by partition, in offset order)."""
        out = Columns(schema)
        for tp, (start, end) in sorted(ranges.items()):
            if end > start:
                for _ in self._read_one(tp, start, end, out):
                    yield out.take()
        if len(out):
            yield out.take()

    def _read_one(self, tp: TP, start: int, end: int, out: Columns) -> Iterator[None]:
        """Add the records ``[start, end)`` of one partition to ``out``; yields when ``out`` is full."""
        self._seek(tp, start)
        expected = start

        def take(msg, off: int) -> None:
            nonlocal expected
            if off < expected:
                return  # delivered again after a seek
            if off >= end:
                if expected < end:  # the range's tail is gone (retention, compaction)
                    data_loss(self.fail_on_data_loss, tp, expected, off)
                    expected = end
                self.stash.setdefault(tp, []).append(msg)
                return
            if off != expected:
                data_loss(self.fail_on_data_loss, tp, expected, off)
            out.add(msg, tp[0], tp[1], off)
            expected = off + 1

        stashed, self.stash[tp] = self.stash.get(tp, []), []
        for i, msg in enumerate(stashed):  # what earlier calls fetched past their ranges, in offset order
            if msg.offset() >= end:
                self.stash[tp] = stashed[i:]  # the rest stays for the next ranges
                break
            take(msg, msg.offset())
            if len(out) >= ARROW_BATCH:
                yield None
        last_progress, self.client_error = time.monotonic(), None
        cons = self._fetching(tp) if expected < end else None
        while expected < end:
            msgs = cons.consume(num_messages=min(10_000, max(1, end - expected)), timeout=1.0)
            progressed = False
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if msg.topic() is None and not err.fatal():
                        # A client-level event, not about this partition: librdkafka looks up
                        # the group coordinator of every consumer (group.id is mandatory)
                        # though this one never joins or commits, and retries by itself.
                        # Seen as "FindCoordinator response error" on long reads.
                        self.client_error = err.str()
                        continue
                    raise RuntimeError(f"Kafka read of {tp[0]}-{tp[1]} failed: {err.str()}")
                progressed = True
                off = msg.offset()
                self.fetch[tp] = off + 1
                take(msg, off)
                if len(out) >= ARROW_BATCH:
                    yield None
            if progressed:
                last_progress = time.monotonic()
            elif (time.monotonic() - last_progress) * 1000 >= self.poll_timeout_ms:
                raise TimeoutError(f"no records from {tp[0]}-{tp[1]} at offset {expected} for {self.poll_timeout_ms} ms "
                                   f"(kafkaConsumer.pollTimeoutMs); planned range ends at {end}"
                                   + (f"; the client last reported: {self.client_error}" if self.client_error else ""))


def data_loss(fail: bool, tp: TP, expected: int, got: int) -> None:
    """Raise when the broker skipped offsets (``got`` > ``expected``) and ``fail`` (``failOnDataLoss``)."""
    if fail and got > expected:
        raise RuntimeError(
            f"data loss in {tp[0]}-{tp[1]}: expected offset {expected}, the broker "
            f"returned {got} (records deleted by retention or compaction?). Set failOnDataLoss=false "
            f"to read on past the gap.")


class RangeFetcher:
    """The consumer side of ``aml.reader=ranges``: reads the records of a micro-batch's offset
    ranges, in Spark's Kafka schema (:data:`~aml_pipeline.kafka.schema.SCHEMA`), with the
    source's own options (``kafka.*``, ``failOnDataLoss``, ``kafkaConsumer.pollTimeoutMs``,
    ``aml.prefetchRecords``).

    Its :class:`RangeReader` stays open between micro-batches (one consumer per partition,
    connected once; paused in between), as the driver reader's does in the source process.
    Close it when the query ends."""

    def __init__(self, options: Mapping[str, str]):
        opts = SourceOptions.parse(options)
        self.reader = RangeReader(opts.client, opts.fail_on_data_loss, opts.poll_timeout_ms, opts.prefetch_records)
        columns = Columns(SCHEMA)
        columns.take()  # the first Arrow cast's imports (~2 s), now rather than in the first micro-batch
        self.schema = columns.schema

    def read(self, ranges) -> pa.Table:
        """The records of ``ranges`` (an Arrow table or batch with the
        :data:`~aml_pipeline.kafka.schema.RANGES_SCHEMA` columns) as one Arrow table,
        partition by partition in offset order."""
        cols = [ranges.column(c).to_pylist() for c in ("topic", "partition", "startOffset", "endOffset")]
        wanted = {(t, int(p)): (int(s), int(e)) for t, p, s, e in zip(*cols)}
        try:
            batches = list(self.reader.read(wanted, SCHEMA))
        finally:
            self.reader.pause()
        return pa.Table.from_batches(batches, schema=self.schema)

    def close(self) -> None:
        self.reader.close()
