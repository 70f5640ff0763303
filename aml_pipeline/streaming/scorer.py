"""The streaming scorer's micro-batch step (``state: store``), free of Spark.

Spark feeds :meth:`StreamScorer.process` from ``foreachBatch`` with the records of one
micro-batch (collected on the driver: they are few) and its batch id. For each batch:

1. **validate** with the batch path's rules (:mod:`.records`); failures, unparseable
   text and ids the stream accepted before go to the dead letters;
2. **lateness**: a valid event earlier than the watermark ``W`` (as it stood after the
   earlier batches; before any batch, ``warm_until``) goes to the late output; the others
   join the *pending* events;
3. **release**: ``W`` moves to the *slowest source partition's* newest event time minus
   ``allowed_lateness`` (each Kafka partition is in event-time order on its own, but one
   may be read ahead of another; a partition that delivered nothing for ``idle_timeout``
   seconds stops holding ``W`` back; the file source is one partition), and every pending
   event strictly before ``W`` is released, in event-time order. Any event accepted later is at or after ``W``, so when an event is
   scored, every event strictly before it that will ever be scored has already been scored
   or is scored with it: its features are exactly the offline ones (``task=score``), however
   the events were ordered across micro-batches within the allowed lateness;
4. **features**, vectorised: ``plan.transform(released, history=rows)``, the plan's own
   polars code, with ``rows`` the store's history of the released events' accounts (and
   of the accounts that paid them, for 2-hop paths), all strictly before the first
   released event; **scores and thresholds** by :meth:`ModelBundle.score_features`;
5. **alerts** get a deterministic ``alert_id``; the alert budget moves those over it to the
   deferred output (:mod:`.budget`);
6. **outputs** of the batch are written (:mod:`.outputs`), then the scorer's **state** is
   committed (:class:`StateLog`: watermark, pending events, counts, budget and the rows
   released, written atomically with the batch id), then the released rows are appended
   to the store.

A batch id at or below the committed one is a replay of a batch whose state is already
committed (Spark crashed before recording it): the store append is redone (idempotent by
event id) and nothing else happens. A replay of an uncommitted batch recomputes the same
outputs from the same state. Restart safety: see docs/streaming.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.decisions import ALERT_FIELDS
from aml_pipeline.errors import UserError
from aml_pipeline.jsonl import replace_durably
from aml_pipeline.schema import UTC_TIME
from aml_pipeline.store.base import T, OnlineStore
from aml_pipeline.store.engine import PlanNeeds
from aml_pipeline.streaming.budget import AlertBudget
from aml_pipeline.streaming.history import RecentRows
from aml_pipeline.streaming.outputs import Outputs
from aml_pipeline.streaming.records import STAGED_SCHEMA, RawRecord, check
from aml_pipeline.timeutil import from_us, to_us
from aml_pipeline.validation.rules import Rule

#: The stages of a micro-batch, as timed in the progress line and the summary.
STAGES = ("read", "validate", "features", "model", "outputs", "commit")
COUNTS = ("records_in", "scored", "dead_lettered", "late", "pending", "alerts", "deferred", "batches")
#: Event columns an alert carries besides its decision (so a reviewer needs no lookup).
ALERT_EVENT_COLUMNS = ("src_account", "dst_account", "amount", "currency", "channel", "merchant", "region")


def alert_id(event_id: str, model_name: str, model_version: str, bundle_hash: str | None) -> str:
    """Deterministic id of the alert a model version raises on an event (the dedup key)."""
    text = f"{event_id}\x1f{model_name}\x1f{model_version}\x1f{bundle_hash or ''}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class StateLog:
    """The scorer's own state next to Spark's checkpoint (``<checkpoint>/scorer``).

    ``state.json`` (replaced atomically, last) names the last committed batch; beside it,
    ``rows-<batch>.parquet`` holds the events each batch released into the store (a
    write-ahead log: the embedded store is rebuilt from the warm-up file plus these on
    restart; Redis needs only the last one redone) and ``pending-<batch>.parquet`` the
    events held for the watermark after it. Every ``snapshot_every`` batches the embedded
    store's rows (trimmed to the window) replace the warm-up file and the row logs so far
    (``snapshot-<batch>.parquet``), so a restart reads a bounded amount whatever the
    stream's age.

    Every file is written by :func:`aml_pipeline.jsonl.replace_durably` (fsync-ed, renamed,
    its directory fsync-ed), and the files ``state.json`` names are durable before it is
    replaced: a power loss at any point leaves a ``state.json`` whose files are whole.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Any] | None:
        p = self.dir / "state.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def rows_path(self, tag: str) -> Path:
        return self.dir / f"rows-{tag}.parquet"

    def commit(self, tag: str, state: dict[str, Any], rows: pl.DataFrame, pending: pl.DataFrame) -> None:
        if rows.height:
            replace_durably(self.rows_path(tag), rows.write_parquet)
        pending_name = f"pending-{tag}.parquet"
        replace_durably(self.dir / pending_name, pending.write_parquet)
        previous = self.load()
        carried = {"snapshot": previous["snapshot"]} if previous and previous.get("snapshot") else {}
        replace_durably(self.dir / "state.json",
                        json.dumps({**carried, **state, "tag": tag, "pending_file": pending_name}, sort_keys=True))
        if previous and previous.get("pending_file") not in (None, pending_name):
            (self.dir / previous["pending_file"]).unlink(missing_ok=True)

    def committed_rows(self, upto_tag: str) -> list[Path]:
        """The row logs of every committed batch, in commit order (tags sort as they were made)."""
        return [p for p in sorted(self.dir.glob("rows-*.parquet")) if p.stem[len("rows-"):] <= upto_tag]

    def snapshot(self, tag: str, rows: pl.DataFrame) -> None:
        """Record ``rows`` (the whole store after batch ``tag``) as the base of the next rebuild,
        then drop the row logs and the snapshot it replaces."""
        name = f"snapshot-{tag}.parquet"
        replace_durably(self.dir / name, rows.write_parquet)
        state = self.load() or {}
        replace_durably(self.dir / "state.json", json.dumps({**state, "snapshot": name}, sort_keys=True))
        for p in self.committed_rows(tag):
            p.unlink(missing_ok=True)
        for p in self.dir.glob("snapshot-*.parquet"):
            if p.name != name:
                p.unlink(missing_ok=True)


class StreamScorer:
    def __init__(self, bundle: ModelBundle, store: OnlineStore, needs: PlanNeeds, outputs: Outputs, rules: list[Rule],
                 state_dir: str | Path, allowed_lateness_us: int, budget: AlertBudget, start_watermark_us: int | None = None,
                 explain: str = "alerts", top_k: int = 5, write_decisions: bool = False, stream: str = "stream",
                 progress: bool = True, snapshot_every: int = 100, idle_timeout_s: float = 60.0):
        self.bundle = bundle
        self.store = store
        self.needs = needs
        self.outputs = outputs
        self.rules = rules
        self.log = StateLog(state_dir)
        self.lateness_us = int(allowed_lateness_us)
        self.budget = budget
        self.explain = explain
        self.top_k = int(top_k)
        self.write_decisions = write_decisions
        self.stream = stream
        self.progress = progress
        self.snapshot_every = int(snapshot_every)
        self.trace = bundle.trace
        outputs.set_trace(self.trace)
        #: the embedded store's rows as a frame for history reads (built on the first read)
        self.recent: RecentRows | None = None
        self.columnar = getattr(store, "backend", "") == "memory"
        #: Redis: the store's epoch recorded in the checkpoint (see :meth:`check_store`); None: not checked
        self.store_epoch: str | None = None
        self.batch_id = -1
        self.flushed = False
        self.watermark: int | None = start_watermark_us
        self.max_seen: int | None = None
        #: newest accepted event time per source partition, and when (wall clock) each last delivered
        self.partition_newest: dict[str, int] = {}
        self.partition_heard: dict[str, float] = {}
        self.idle_timeout_s = float(idle_timeout_s)
        self.counts = dict.fromkeys(COUNTS, 0)
        self.pending = self._empty_pending()
        #: wall-clock times (epoch s) of the first micro-batch's start and the latest one's end, and busy seconds
        self.first_batch_at: float | None = None
        self.last_batch_at: float | None = None
        self.busy_seconds = 0.0
        #: where the time of the current micro-batch went (read, validate, features, model,
        #: outputs, commit) and the totals of this run, in seconds
        self.stage_seconds: dict[str, float] = {}
        self.stage_totals: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._mark = time.perf_counter()
        #: deploy.shadow (a StreamShadow; its decisions of the current batch) and deploy.metrics_port (StreamMetrics)
        self.shadow: Any = None
        self._shadow_frame: pl.DataFrame | None = None
        self.metrics: Any = None

    # -- state ------------------------------------------------------------------------------
    @staticmethod
    def _empty_pending() -> pl.DataFrame:
        return pl.DataFrame(schema={**STAGED_SCHEMA, "_position": pl.String, "_record": pl.String})

    def restore(self, rebuild_store: bool) -> int:
        """Load the committed state; rebuild the embedded store from the row logs
        (``rebuild_store``) or redo the last batch's append (Redis). Returns the last batch id."""
        state = self._load_state()
        if state is None:
            return -1
        self.partition_newest = dict(state.get("partition_newest_us", {}))
        self.partition_heard = dict.fromkeys(self.partition_newest, time.time())  # a fresh grace period each
        self.pending = pl.read_parquet(self.log.dir / state["pending_file"])
        logs = self.log.committed_rows(state["tag"])
        if not rebuild_store:
            logs = [p for p in logs if p.stem.startswith(f"rows-{batch_tag(self.batch_id)}")]
        elif state.get("snapshot"):  # the store as it was at the snapshot (the caller did not warm it)
            self._append_rows(pl.read_parquet(self.log.dir / state["snapshot"]))
        for p in logs:
            self._append_rows(pl.read_parquet(p))
        self.store.set_last_batch(self.stream, self.batch_id)
        return self.batch_id

    def _load_state(self) -> dict[str, Any] | None:
        """The last committed state, with the fields every state mode keeps restored (None: fresh)."""
        state = self.log.load()
        if state is not None:
            self.batch_id = int(state["batch_id"])
            self.flushed = bool(state.get("flushed"))
            self.watermark = state.get("watermark_us")
            self.max_seen = state.get("max_seen_us")
            self.counts.update(state.get("counts", {}))
            self.budget.load(state.get("budget"))
        return state

    def _append_rows(self, rows: pl.DataFrame) -> None:
        if rows.height:
            cols = list(self.store.layout.columns)
            frame = rows.select(cols).with_columns(pl.col("event_time").dt.epoch("us"))
            if self.recent is not None:  # the columnar copy holds the rows; the store keeps their ids
                self.store.remember_ids(frame["event_id"].to_list(), frame["event_time"].to_list())
                self.recent.append(frame)
            else:
                self.store.warm(frame.iter_rows())

    def _commit(self, tag: str, released: pl.DataFrame) -> None:
        state = {"batch_id": self.batch_id, "flushed": self.flushed, "watermark_us": self.watermark,
                 "max_seen_us": self.max_seen, "partition_newest_us": self.partition_newest, "counts": self.counts, "budget": self.budget.state(),
                 "committed_at": time.time()}
        if released.height and self.bundle.plan.fx is not None:  # the store holds reporting-currency amounts
            released = self.bundle.plan.fx.convert_frame(released)
        rows = released.select(self.store.layout.columns) if released.height else released
        self.log.commit(tag, state, rows, self.pending)
        self._append_rows(rows)
        if self.recent is not None:
            self.recent.trim(self.watermark)
        self.store.set_last_batch(self.stream, self.batch_id)
        if (self.snapshot_every > 0 and hasattr(self.store, "sets") and not tag.endswith("-flush")
                and (self.batch_id + 1) % self.snapshot_every == 0):
            self.log.snapshot(tag, self._store_rows())

    def _store_rows(self) -> pl.DataFrame:
        """Every row the embedded store holds (each once), event time as a timestamp."""
        if self.recent is not None:
            return self.recent.frame.with_columns(
                pl.col("event_time").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").cast(UTC_TIME))
        rows: dict[str, Any] = {}
        for _, _, set_rows in self.store.sets():
            for r in set_rows:
                rows[r[0]] = r
        cols = self.store.layout.columns
        schema = {c: (pl.Int64 if c == "event_time" else STAGED_SCHEMA[c]) for c in cols}
        frame = pl.DataFrame(list(rows.values()), schema=schema, orient="row")
        return frame.with_columns(pl.col("event_time").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").cast(UTC_TIME))

    def check_store(self) -> None:
        """Redis: stop (one line) when the store no longer holds what this stream was scored
        against: its epoch is gone (FLUSHALL, a restart without persistence) or another.
        Called after the batch's reads and before its outputs, so a batch whose features saw
        an emptied store writes nothing and commits nothing; the next start is refused too."""
        if self.store_epoch is None:
            return
        now = self.store.epoch()
        if now != self.store_epoch:
            raise UserError(f"store {self.store.url} (prefix {self.store.prefix}) lost its data mid-stream (epoch "
                            f"{self.store_epoch[:8]}…, now {(now or 'none')[:8]}…: flushed, or restarted without "
                            f"persistence); stopped before batch {self.batch_id + 1} was scored on empty history. Restore "
                            "Redis's data, or start over with deploy.reset=true (the store is warmed again from "
                            "deploy.warm_from)")

    # -- one micro-batch --------------------------------------------------------------------
    def process(self, batch_id: int, records: list[RawRecord], read_seconds: float = 0.0) -> dict[str, int]:
        """Score one micro-batch (idempotent by batch id); returns this batch's counts.

        ``read_seconds``: how long the caller took to get the records (reported only)."""
        t0 = time.perf_counter() - read_seconds
        if batch_id <= self.batch_id:
            return {}  # committed already (restore redid its store append)
        self._start_batch(read_seconds)
        pending_ids = set(self.pending["event_id"].to_list())
        checked = check(records, self.rules, known_ids=pending_ids, is_known=self.store.known_ids)
        self._lap("validate")
        valid = checked.valid.with_columns(
            pl.Series("_position", [json.dumps(p, sort_keys=True) for p in checked.valid_positions], pl.String),
            pl.Series("_record", checked.valid_texts, pl.String))
        t_us = valid["event_time"].dt.epoch("us")
        late_mask = (t_us < self.watermark) if self.watermark is not None else pl.Series([False] * valid.height)
        late = valid.filter(late_mask)
        accepted = valid.filter(~late_mask)
        self._advance(pl.DataFrame({"partition": [source_partition(p) for p in checked.valid_positions], "t": t_us})
                      .filter(~late_mask))
        self.pending = pl.concat([self.pending, accepted], how="vertical")
        batch = {"records_in": len(records), "dead_lettered": len(checked.dead), "late": late.height}
        out = self._release(batch_tag(batch_id), batch_id, self.watermark, checked.dead, self._late_records(late), len(records))
        batch.update(out)
        self._report(batch_id, batch, time.perf_counter() - t0)
        return batch

    def _start_batch(self, read_seconds: float) -> None:
        """Start timing a micro-batch whose records took ``read_seconds`` to get."""
        self.stage_seconds = {"read": read_seconds}
        self._mark = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = time.time() - read_seconds

    def _advance(self, accepted: pl.DataFrame) -> None:
        """Move the watermark on after a batch: the slowest live partition's newest event time
        minus the allowed lateness (never backwards). ``accepted``: (partition, t) of the batch's
        accepted events. A partition silent for ``idle_timeout_s`` stops holding it back; when
        every partition is silent, the newest event time seen sets it."""
        now = time.time()
        for part, newest in accepted.group_by("partition").agg(pl.col("t").max()).iter_rows():
            self.partition_newest[part] = max(self.partition_newest.get(part, newest), int(newest))
            self.partition_heard[part] = now
            self.max_seen = int(newest) if self.max_seen is None else max(self.max_seen, int(newest))
        live = [t for p, t in self.partition_newest.items() if now - self.partition_heard.get(p, now) <= self.idle_timeout_s]
        basis = min(live) if live else self.max_seen
        if basis is not None:
            w = basis - self.lateness_us
            self.watermark = w if self.watermark is None else max(self.watermark, w)

    def flush(self) -> dict[str, int]:
        """Release every pending event (end of an ``once`` run, or a graceful stop): the
        watermark moves past the newest event seen, so anything at or before it is late."""
        if not self.pending.height:
            return {}
        t0 = time.perf_counter()
        self.stage_seconds = {}
        self._mark = t0
        self.watermark = (self.max_seen or 0) + 1
        self.flushed = True
        out = self._release(f"{batch_tag(self.batch_id)}-flush", self.batch_id, self.watermark, [], [], 0)
        self._report(self.batch_id, out, time.perf_counter() - t0, flush=True)
        return out

    def _release(self, tag: str, batch_id: int, watermark: int | None, dead: list[dict], late: list[dict],
                 records_in: int) -> dict[str, int]:
        if watermark is None:
            released, self.pending = self.pending.clear(), self.pending
        else:
            t = self.pending["event_time"].dt.epoch("us")
            released = self.pending.filter(t < watermark).sort(["event_time", "event_id"])
            self.pending = self.pending.filter(t >= watermark)
        out = self._decide_and_write(tag, batch_id, released, dead, late, records_in)
        c = self.counts
        c["pending"] = self.pending.height
        if not tag.endswith("-flush"):
            c["batches"] += 1
            self.batch_id = batch_id
        self._commit(tag, released)
        self._lap("commit")
        return out

    def _decide_and_write(self, tag: str, batch_id: int, released: pl.DataFrame, dead: list[dict], late: list[dict],
                          records_in: int) -> dict[str, int]:
        """Score the released events, write every output of the batch and count it all
        (the pending count, the batch id and the state commit are the caller's)."""
        self._shadow_frame = None
        decisions = self.score(released)
        self.check_store()  # every read of the batch is done; nothing is written yet
        alerts, deferred = self._alerts(released, decisions, batch_id, time.time())
        for r in dead:
            r["batch_id"] = batch_id
        o = self.outputs
        o.write(tag, "dead_letter", dead)
        o.write(tag, "late", late)
        o.write(tag, "alerts", alerts)
        o.write(tag, "deferred", deferred)
        if self.write_decisions:
            o.write_decisions(tag, decisions)
        o.commit(tag)
        if self.shadow is not None:  # its own sink, after the live outputs; it never raises
            self.shadow.write(tag, batch_id, self._shadow_frame)
        self._lap("outputs")
        c = self.counts
        c["records_in"] += records_in  # counted as read, independently of where records end up
        c["dead_lettered"] += len(dead)
        c["late"] += len(late)
        c["scored"] += released.height
        c["alerts"] += len(alerts)
        c["deferred"] += len(deferred)
        if self.metrics is not None:
            self.metrics.on_decisions(decisions, alerts, self._shadow_frame)
        return {"scored": released.height, "alerts": len(alerts), "deferred": len(deferred)}

    def warm_up(self, currency: str) -> None:
        """Run the feature, model and SHAP paths once on a made-up event (nothing is written or
        stored), so the first micro-batch does not pay for lazy set-up."""
        row = {c: None for c in STAGED_SCHEMA}
        row.update(event_id="_warm_up", event_time=datetime(2000, 1, 1, tzinfo=timezone.utc), src_account="_a",
                   dst_account="_b", amount=1.0, currency=currency, channel="unknown", jurisdiction="_")
        if self.columnar:  # the columnar history copy, built now rather than by the first batch
            self._recent_rows()
        if self.recent is not None and self.recent.frame.height:
            # the newest stored event's accounts, a second later: the plan runs with history as a batch does
            stored = self.recent.frame
            last = stored.row(int(stored["event_time"].arg_max()), named=True)
            row.update(src_account=last["src_account"], dst_account=last["dst_account"],
                       event_time=datetime.fromtimestamp((last["event_time"] + 1_000_000) / 1e6, tz=timezone.utc))
        frame = pl.DataFrame([row], schema=STAGED_SCHEMA, orient="row")
        try:
            features = self.features(frame)
            self.bundle.score_features(features.with_columns(pl.lit("*").alias("jurisdiction")), self.top_k, "all")
        except Exception:  # a plan needing columns the made-up event lacks: the first batch warms up instead
            pass

    # -- features, scores, alerts -----------------------------------------------------------
    def _recent_rows(self) -> RecentRows:
        """The columnar copy of the embedded store's rows (built from the store on first use)."""
        if self.recent is None:
            self.recent = RecentRows(self.store.layout, (r for _, _, rows in self.store.sets() for r in rows))
        return self.recent

    def history(self, events: pl.DataFrame) -> pl.DataFrame | None:
        """The store's rows the events' features need (all strictly before the first event)."""
        accounts = set(events["src_account"].to_list()) | set(events["dst_account"].to_list())
        first = to_us(events["event_time"].min())
        expand = first - self.needs.expand_us if self.needs.expand_us else None
        cols = self.store.layout.columns
        if self.columnar:
            frame = self._recent_rows().select(accounts, first, expand, self.needs.hubs).filter(
                ~pl.col("event_id").is_in(events["event_id"].implode()) & (pl.col("event_time") < first))
            if not frame.height:
                return None
        else:
            rows = self.store.history_rows(accounts, first, expand, self.needs.hubs)
            ids = set(events["event_id"].to_list())
            rows = [r for r in rows if r[0] not in ids and r[T] < first]
            if not rows:
                return None
            schema = {c: (pl.Int64 if c == "event_time" else STAGED_SCHEMA[c]) for c in cols}
            frame = pl.DataFrame(rows, schema=schema, orient="row")
        frame = frame.with_columns(pl.col("event_time").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").cast(UTC_TIME))
        return frame.select(pl.col(c) if c in cols else pl.lit(None, d).alias(c) for c, d in STAGED_SCHEMA.items())

    def features(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The plan's features of staged events, the store's rows as history."""
        plan = self.bundle.plan
        if plan.fx is None:
            return plan.transform(frame, history=self.history(frame))
        # Converted once here: the store's rows are in the reporting currency already, so the
        # plan runs without its conversion; the decisions keep the events' own amount.
        features = plan.without_fx().transform(plan.fx.convert_frame(frame), history=self.history(frame))
        return features.with_columns(frame["amount"])

    def score(self, events: pl.DataFrame) -> pl.DataFrame:
        if not events.height:
            return pl.DataFrame()
        frame = events.select(list(STAGED_SCHEMA))
        features = self.features(frame)
        self._lap("features")
        decisions = self.bundle.score_features(features, self.top_k, self.explain)
        if self.shadow is not None:  # the same feature values, its own model (timed with the live one's)
            self._shadow_frame = self.shadow.decide(features, decisions)
        self._lap("model")
        return decisions

    def _lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - self._mark
        self._mark = now

    def _alerts(self, events: pl.DataFrame, decisions: pl.DataFrame, batch_id: int,
                scored_at: float) -> tuple[list[dict], list[dict]]:
        if not decisions.height:
            return [], []
        flagged = decisions.filter(pl.col("alert"))
        if not flagged.height:
            return [], []
        ev = {r["event_id"]: r for r in events.filter(pl.col("event_id").is_in(flagged["event_id"].implode())).iter_rows(named=True)}
        key = self.budget.key
        kept, deferred = [], []
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(scored_at)) + f".{int(scored_at % 1 * 1e6):06d}+00:00"
        for d in flagged.select(ALERT_FIELDS).iter_rows(named=True):
            e = ev[d["event_id"]]
            record = {
                "alert_id": alert_id(d["event_id"], self.trace["model_name"], self.trace["model_version"], self.trace["bundle_hash"]),
                **d,
                **{c: e.get(c) for c in ALERT_EVENT_COLUMNS},
                **self.trace,
                "scored_at": when,
                "batch_id": batch_id,
                # where the event was read: topic, partition, offset (or file, line)
                "source": json.loads(e["_position"]) if e.get("_position") else None,
            }
            reason = self.budget.admit(e.get(key), to_us(d["event_time"]))
            if reason is None:
                kept.append(record)
            else:
                deferred.append({**record, "deferred_reason": reason, "budget_key": key,
                                 "budget_value": e.get(key)})
        return kept, deferred

    def _late_records(self, late: pl.DataFrame) -> list[dict]:
        out = []
        for r in late.iter_rows(named=True):
            out.append({"event_id": r["event_id"], "event_time": r["event_time"], "src_account": r.get("src_account"),
                        "reasons": ["late"],
                        "watermark": _iso(self.watermark), "allowed_lateness_us": self.lateness_us,
                        **json.loads(r["_position"]), "record": r["_record"]})
        return out

    # -- reporting ----------------------------------------------------------------------------
    def _report(self, batch_id: int, batch: dict[str, int], secs: float, flush: bool = False) -> None:
        self.last_batch_at = time.time()
        self.busy_seconds += secs
        for k, v in self.stage_seconds.items():
            self.stage_totals[k] += v
        if self.metrics is not None:
            self.metrics.on_batch(secs)
        if not self.progress:
            return
        c = self.counts
        what = "flush" if flush else f"batch {batch_id}"
        print(f"{what}: +{batch.get('records_in', 0):,} in | total in {c['records_in']:,} = scored {c['scored']:,} + "
              f"dead {c['dead_lettered']:,} + late {c['late']:,} + pending {c['pending']:,} | alerts {c['alerts']:,} "
              f"deferred {c['deferred']:,} | {secs * 1000:.0f} ms ("
              + " ".join(f"{k} {self.stage_seconds[k] * 1000:.0f}" for k in STAGES if k in self.stage_seconds) + ")",
              file=sys.stderr, flush=True)

    def summary(self) -> dict[str, Any]:
        c = dict(self.counts)
        return {
            "counts": c,
            "reconciles": c["records_in"] == c["scored"] + c["dead_lettered"] + c["late"] + c["pending"],
            "last_batch": self.batch_id,
            "watermark": _iso(self.watermark),
            "newest_event_time": _iso(self.max_seen),
            "partition_newest_event_time": {k: _iso(v) for k, v in sorted(self.partition_newest.items())},
            "allowed_lateness_us": self.lateness_us,
            "budget": {"key": self.budget.key, "window": self.budget.window, "cap": self.budget.cap},
            "first_batch_at": self.first_batch_at,  # this run's, epoch seconds
            "last_batch_at": self.last_batch_at,
            "busy_seconds": round(self.busy_seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_totals.items()},
            **{k: v for k, v in self.trace.items()},
        }


def source_partition(position: dict[str, Any]) -> str:
    """The source partition a record came from: ``topic:partition`` on Kafka; the file
    source is one partition (files are read oldest first)."""
    return f"{position['topic']}:{position['partition']}" if "partition" in position else "files"


def batch_tag(batch_id: int) -> str:
    """A micro-batch's id as the fixed-width text that names its files (so they sort in order)."""
    return f"{batch_id:012d}"


def _iso(t_us: int | None) -> str | None:
    if t_us is None:
        return None
    return from_us(int(t_us)).isoformat()
