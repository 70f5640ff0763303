"""``deploy.state=spark``: the streaming scorer with its state in Spark (``transformWithStateInPandas``).

Where ``state: store`` keeps the events it holds and the accounts' histories on the driver
and in the feature store, this mode keeps both in Spark's state store (RocksDB), inside
Spark's checkpoint, partitioned by account across the executors. The query:

1. **stage** (``mapInArrow`` over the whole micro-batch, one partition): the records are
   validated by :func:`.records.check`, the same rules as ``state: store``. Dead letters
   become rows of kind ``dead``; each valid event becomes one row per account it touches
   (``src`` and ``dst``; ``both`` for a payment to oneself), carrying the staged event as
   JSON (times as integer µs, floats as ``repr``: exact).
2. ``withWatermark`` on a copy of the event time that is **dropped** before the operator:
   Spark still advances its watermark (newest event time − ``allowed_lateness``, in ms),
   but the operator's input has no watermark column, so Spark does not drop late rows
   silently; :class:`AccountProcessor` compares each event with the watermark itself and
   emits the late ones (from the sender's side only, so each once).
3. ``groupBy(account).transformWithStateInPandas(AccountProcessor, timeMode=EventTime)``:
   per account, one ``ValueState``: the held events, the history (JSON lists; the history
   trimmed to the plan's longest window plus the account's newest event, which ``time``
   needs) and the account's one event-time timer, 1 ms after its earliest held event
   (with ``deploy.store.retention``, an idle account also has a timer at its newest event
   plus the retention, which clears its state). When
   the watermark passes it, the
   held events strictly before it are released, oldest first, and the columns of this
   account's side computed from the account's rows strictly before each event by
   :class:`~aml_pipeline.store.engine.OnlineFeatures`, the per-event code of the online
   service (tested against the plan's polars code to 1e-9; :func:`account_features`).
4. ``foreachBatch`` on the driver (:class:`SparkStateScorer`): the two halves of each
   released event (sender columns, receiver columns) are joined by event id and scored; alerts, the
   budget, the outputs, the counts and the state commit are :class:`.scorer.StreamScorer`'s.

Only columns that depend on the event and on one of its accounts' own history can be computed
this way; :func:`refuse_cross_account` refuses the rest at start-up (the graph step's 2-hop
paths and 3-cycles read other accounts' histories).

On exit (``once`` done, SIGTERM, SIGINT) the held events are released by a flush marker: a
file dropped in ``<checkpoint>/control`` (a second file source, unioned with the input) whose
time moves Spark's watermark past the newest event seen; the query is run once more with
``availableNow`` to apply it. That run first reads what is waiting in the input, so after a
stop with a backlog it scores the backlog, and the events newer than the marker stay held in
Spark's state (counted as pending; the next start releases them). The micro-batch running
when the signal comes runs to its end first; one Spark starts after it does nothing and is
read by that run (:func:`.job.micro_batch`). A micro-batch that fails fails the run.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from bisect import bisect_left
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import polars as pl
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf
from pyspark.sql.streaming import StatefulProcessor

from aml_pipeline.config import option_value
from aml_pipeline.errors import UserError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.jsonl import replace_durably
from aml_pipeline.registry import resolve_bundle
from aml_pipeline.schema import UTC_TIME
from aml_pipeline.serving.scorer import set_threads
from aml_pipeline.store import retention_us
from aml_pipeline.store.engine import Event, History, OnlineFeatures, plan_needs
from aml_pipeline.streaming.budget import AlertBudget
from aml_pipeline.streaming.checkpoint import settle as settle_checkpoint
from aml_pipeline.streaming.job import (await_query, check_shared_options, file_records, finish, kafka_records, kind,
                                        micro_batch, settle_connector, source_options, stream_outputs,
                                        stream_session, stream_source)
from aml_pipeline.streaming.records import DUPLICATE, STAGED_SCHEMA, RawRecord, check, dead_letter
from aml_pipeline.streaming.scorer import StateLog, StreamScorer, batch_tag
from aml_pipeline.timeutil import from_us, to_us
from aml_pipeline.validation.rules import build_rules, future_skew_us

ROCKSDB = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
#: Step kinds whose columns need only the event and one of its accounts' own history.
LOCAL_HISTORY_KINDS = ("time", "amount", "rolling")
#: The account key of rows that are not events (dead letters, the flush marker).
CONTROL_KEY = "\x00control"
STAGED = "account string, role string, kind string, event_id string, t long, wm timestamp, payload string"
OUTPUT = "kind string, event_id string, role string, t long, n long, payload string, features string"
_EVENT_COLUMNS = list(STAGED_SCHEMA)


# ----------------------------------------------------------------------------- what the plan may hold
def side_columns(plan: FeaturePlan) -> tuple[list[str], list[str]]:
    """(columns computed on the sender's side, on the receiver's side).

    Receiver columns are the ``dst_*`` ones of history steps; every other column depends on
    the event itself or on the sender's history (``src_*``, ``amount_vs_src_mean``)."""
    src, dst = [], []
    for _, step in plan.steps:
        for c in step.output_columns():
            (dst if step.uses_history and c.startswith("dst_") else src).append(c)
    return src, dst


def refuse_cross_account(plan: FeaturePlan) -> None:
    """One line naming the first step whose columns need another account's history (or the
    plan's currency conversion, which its per-account state has no form of)."""
    if plan.fx is not None:
        raise UserError("deploy.state=spark has no form of features.fx (one reporting currency): its per-account "
                        "state keeps amounts as received; use deploy.state=store (the default)")
    for name, step in plan.steps:
        if step.uses_history and step.kind not in LOCAL_HISTORY_KINDS and step.kind != "graph":
            raise UserError(f"deploy.state=spark has no form of features.steps.{name} ({step.kind}): its per-account "
                            "state keeps the core columns only; use deploy.state=store (the default)")
        if step.uses_history and step.kind not in LOCAL_HISTORY_KINDS:
            cols = list(step.output_columns())
            cross = [c for c in cols if c.startswith(("cycle3_", "dst_2hop_in_", "src_2hop_in_"))] or cols
            raise UserError(
                f"deploy.state=spark keeps one state per account: features.steps.{name} ({step.kind}) needs other "
                f"accounts' histories for {', '.join(cross)}; use deploy.state=store, or a plan without it "
                "(e.g. features=streaming_local)")


# ----------------------------------------------------------------------------- stage (executors)
def _payload(row: dict[str, Any], position: dict | None = None, record: str | None = None) -> str:
    out = {c: row.get(c) for c in _EVENT_COLUMNS}
    out["event_time"] = to_us(row["event_time"])
    if position is not None:
        out["_position"] = json.dumps(position, sort_keys=True)
        out["_record"] = record
    return json.dumps(out)


def make_stage(source: str, currencies: list[str], max_future_skew_us: int | None = None):
    """The ``mapInArrow`` function: one micro-batch's raw rows -> staged rows (:data:`STAGED`)."""

    def stage(batches: Iterator) -> Iterator:
        batches = list(batches)
        if not batches:  # a micro-batch without data (Spark runs them to move the watermark on)
            return
        table = pa.Table.from_batches(batches)
        if not table.num_rows:
            return
        records = (file_records if source == "file" else kafka_records)(table)
        skew = {} if max_future_skew_us is None else {"max_future_skew_us": max_future_skew_us}
        checked = check(records, build_rules(currencies, require_label=False, **skew), known_ids=set())
        cols: dict[str, list] = {k: [] for k in ("account", "role", "kind", "event_id", "t", "wm", "payload")}

        def add(account, role, kind, event_id, t_us, payload):
            for k, v in zip(cols, (account, role, kind, event_id, t_us, t_us, payload)):
                cols[k].append(v)

        for d in checked.dead:
            add(CONTROL_KEY, "", "dead", d.get("event_id"), 0, json.dumps(d, default=str))
        for row, pos, text in zip(checked.valid.iter_rows(named=True), checked.valid_positions, checked.valid_texts):
            payload = _payload(row, pos, text)
            t_us = json.loads(payload)["event_time"]
            if row["src_account"] == row["dst_account"]:
                add(row["src_account"], "both", "event", row["event_id"], t_us, payload)
            else:
                add(row["src_account"], "src", "event", row["event_id"], t_us, payload)
                add(row["dst_account"], "dst", "event", row["event_id"], t_us, payload)
        yield _staged_batch(cols)

    return stage


def _staged_batch(cols: dict[str, list]):
    return pa.RecordBatch.from_pydict({
        "account": pa.array(cols["account"], pa.string()), "role": pa.array(cols["role"], pa.string()),
        "kind": pa.array(cols["kind"], pa.string()), "event_id": pa.array(cols["event_id"], pa.string()),
        "t": pa.array(cols["t"], pa.int64()), "wm": pa.array(cols["wm"], pa.timestamp("us", tz="UTC")),
        "payload": pa.array(cols["payload"], pa.string())})


def stage_control(batches: Iterator) -> Iterator:
    """Flush markers (``{"flush_us": t}``) -> one control row whose time moves the watermark."""
    table = pa.Table.from_batches(list(batches))
    cols: dict[str, list] = {k: [] for k in ("account", "role", "kind", "event_id", "t", "wm", "payload")}
    for text in table.column("value").to_pylist():
        for line in text.splitlines():
            if line.strip():
                t = int(json.loads(line)["flush_us"])
                for k, v in zip(cols, (CONTROL_KEY, "", "flush", None, t, t, line)):
                    cols[k].append(v)
    if cols["t"]:
        yield _staged_batch(cols)


# ----------------------------------------------------------------------------- the stateful processor
def _frame(payloads: list[str]) -> pl.DataFrame:
    """Staged JSON payloads -> canonical events frame (plus ``_position``/``_record`` when present)."""
    rows = [json.loads(p) for p in payloads]
    extra = {c: pl.String for c in ("_position", "_record") if rows and c in rows[0]}
    schema = {**STAGED_SCHEMA, "event_time": pl.Int64, **extra}
    frame = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    return frame.with_columns(pl.col("event_time").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").cast(UTC_TIME))


def _history_row(payload: str) -> tuple:
    """A held event as a history row of the state: (t, event_id, src, dst, amount)."""
    row = json.loads(payload)
    return (row["event_time"], row["event_id"], row["src_account"], row["dst_account"], row["amount"])


def account_features(engine, account: str, history: list[tuple], due: list[tuple]) -> list[dict]:
    """The features of ``due`` events (held rows, oldest first) from ``account``'s history.

    Each event sees the account's rows strictly before it: the stored history plus the due
    events released with it that are earlier (same-instant events never see each other).
    ``engine`` is :class:`~aml_pipeline.store.engine.OnlineFeatures`, the per-event code the
    online service runs, given this account's rows only: the columns of this account's side
    are exact, the other side's are read from the other account's state (see
    :func:`side_columns`)."""
    rows = sorted([(r[1], r[0], r[2], r[3], r[4]) for r in history]
                  + [(e, t, s, d, a) for t, e, s, d, a in (_history_row(p) for _, _, _, p in due)],
                  key=lambda r: (r[1], r[0]))
    sent = [r for r in rows if r[2] == account]
    received = [r for r in rows if r[3] == account]
    times, sent_t, received_t = [r[1] for r in rows], [r[1] for r in sent], [r[1] for r in received]
    out = []
    for t, _, _, payload in due:
        values = json.loads(payload)
        values["event_time"] = from_us(values["event_time"])
        n = bisect_left(times, t)  # rows strictly before the event
        h = History({account: sent[:bisect_left(sent_t, t)]}, {account: received[:bisect_left(received_t, t)]},
                    {account: times[n - 1] if n else None})
        out.append(engine.compute(Event(values), h))
    return out


def make_processor(plan_dict: dict, window_us: int, start_watermark_us: int | None, retention_us: int = 0):
    """A :class:`~pyspark.sql.streaming.StatefulProcessor` for one account (see the module docstring).

    With ``retention_us``, an account holding no events whose newest row is older than the
    watermark minus the retention is cleared (one timer at newest + retention); it emits
    one ``evicted`` row, so the driver counts what Spark's state forgot."""
    out_cols = ["kind", "event_id", "role", "t", "n", "payload", "features"]

    class AccountProcessor(StatefulProcessor):
        def init(self, handle) -> None:
            self.handle = handle
            plan = FeaturePlan.from_dict(plan_dict)
            self.engine = OnlineFeatures(plan)
            self.src_cols, self.dst_cols = side_columns(plan)
            # one value per account (held events, history, the next timer): one read and at most
            # one write per call, where a ListState is read row by row through the state server
            self.state = handle.getValueState("account", "held string, history string, timer long")

        # -- helpers ----------------------------------------------------------------------
        def _load(self) -> tuple[list[tuple], list[tuple], int]:
            value = self.state.get()
            if not value:
                return [], [], -1
            return [tuple(r) for r in json.loads(value[0])], [tuple(r) for r in json.loads(value[1])], int(value[2])

        def _save(self, held: list[tuple], history: list[tuple], timer: int) -> None:
            if held or history:
                self.state.update((json.dumps(held), json.dumps(history), timer if held else -1))
            else:
                self.state.clear()

        @staticmethod
        def _out(rows: list[tuple]) -> Iterator[pd.DataFrame]:
            if rows:
                yield pd.DataFrame(rows, columns=out_cols)

        # -- the three callbacks ----------------------------------------------------------
        # One timer per account is enough: ``timer`` (ms) is always at or before the earliest
        # held event's time + 1 ms, so it fires no later than the first release is due; the
        # release registers the next one. Superseded timers fire later and find nothing due.
        def _idle_timer(self, history: list[tuple]) -> None:
            """The timer after which this account, if it stays idle, is forgotten."""
            if retention_us and history:
                self.handle.registerTimer((max(r[0] for r in history) + retention_us) // 1000 + 1)

        def handleInitialState(self, key, initialState, timerValues) -> None:
            held, history, timer = self._load()
            cols = [initialState[c] for c in ("t", "event_id", "src", "dst", "amount")]
            history = history + [(int(t), e, s, d, float(a)) for t, e, s, d, a in zip(*cols)]
            self._save(held, history, timer)
            self._idle_timer(history)

        def handleInputRows(self, key, rows, timerValues) -> Iterator[pd.DataFrame]:
            wm = timerValues.getCurrentWatermarkInMs() * 1000
            late_before = max(wm, start_watermark_us) if start_watermark_us is not None else wm
            held, history, timer = self._load()
            # ids this account still holds or remembers: the same set on the sender's and the
            # receiver's side, so both sides take the same decision
            known = {h[1] for h in held} | {r[1] for r in history if r[0] >= wm - window_us}
            out, new, n_in, newest = [], [], 0, None
            for pdf in rows:
                for row_kind, role, event_id, t, payload in zip(pdf["kind"], pdf["role"], pdf["event_id"], pdf["t"], pdf["payload"]):
                    t = int(t)
                    if row_kind == "dead":
                        out.append(("dead", event_id, "", t, 1, payload, None))
                        continue
                    if row_kind != "event":  # the flush marker: it only moved the watermark
                        continue
                    first_side = role in ("src", "both")  # the side that reports the event once
                    newest = t if newest is None else max(newest, t)
                    if event_id in known:  # validation before lateness, as in state: store
                        if first_side:
                            out.append(("duplicate", event_id, role, t, 1, payload, None))
                    elif t < late_before:
                        if first_side:
                            out.append(("late", event_id, role, late_before, 1, payload, None))
                    else:
                        known.add(event_id)
                        new.append((t, event_id, role, payload))
                        n_in += first_side
            if new:
                first = min(t for t, _, _, _ in new) // 1000 + 1  # > the watermark: t >= late_before
                if timer < 0 or first < timer:
                    self.handle.registerTimer(first)
                    timer = first
                self._save(held + new, history, timer)
            if newest is not None:
                out.append(("in", None, "", newest, n_in, None, None))
            return self._out(out)

        def handleExpiredTimer(self, key, timerValues, expiredTimerInfo) -> Iterator[pd.DataFrame]:
            wm = timerValues.getCurrentWatermarkInMs() * 1000
            held, history, timer = self._load()
            due = sorted((h for h in held if h[0] < wm), key=lambda h: (h[0], h[1]))
            if not due:  # a superseded timer, an earlier one of this batch released them, or the idle timer
                if retention_us and not held and history and max(r[0] for r in history) < wm - retention_us:
                    self.state.clear()  # idle longer than the retention: forgotten whole
                    return self._out([("evicted", None, "", wm, 1, None, None)])
                return self._out([])
            features = account_features(self.engine, key[0], history, due)
            out = []
            for (t, event_id, role, payload), values in zip(due, features):
                cols = self.src_cols + self.dst_cols if role == "both" else (self.src_cols if role == "src" else self.dst_cols)
                out.append(("half", event_id, role, t, 1, payload if role != "dst" else None,
                            json.dumps({c: values[c] for c in cols})))
            rest = [h for h in held if h[0] >= wm]
            if rest:  # every rest event is at or after the watermark: its timer is in the future
                timer = min(t for t, _, _, _ in rest) // 1000 + 1
                self.handle.registerTimer(timer)
            # keep what later events can still read: [watermark - window, ...) plus the newest row (time step)
            kept = history + [(t, *_history_row(p)[1:]) for t, _, _, p in due]
            newest = max(kept, key=lambda r: r[0])
            kept = [r for r in kept if r[0] >= wm - window_us or r is newest]
            self._save(rest, kept, timer)
            if not rest:
                self._idle_timer(kept)
            return self._out(out)

        def close(self) -> None:
            pass

    return AccountProcessor()


# ----------------------------------------------------------------------------- the driver's side
class SparkStateScorer(StreamScorer):
    """Scores what the operator released, with :class:`StreamScorer`'s alerts, budget,
    outputs, counts and state log. It holds no events and no store: those are in Spark."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held = 0  # events in Spark's state (as the operator reports them)
        self.orphans: dict[str, dict] = {}
        self.evicted_accounts = 0  # accounts Spark's state forgot (deploy.store.retention)
        self.expired_halves = 0  # unmatched halves dropped, older than the watermark minus the retention
        self.retention_us = 0

    def restore(self, rebuild_store: bool = False) -> int:
        state = self._load_state()
        if state is None:
            return -1
        self.held = int(state.get("held", 0))
        return self.batch_id

    def _commit(self, tag: str, released: pl.DataFrame) -> None:
        self.counts["pending"] = self.held
        state = {"batch_id": self.batch_id, "flushed": self.flushed, "watermark_us": self.watermark,
                 "max_seen_us": self.max_seen, "counts": self.counts, "budget": self.budget.state(),
                 "held": self.held, "committed_at": time.time()}
        self.log.commit(tag, state, released.clear(), self._empty_pending())

    def score(self, events: pl.DataFrame) -> pl.DataFrame:
        if not events.height:
            return pl.DataFrame()
        decisions = self.bundle.score_features(events, self.top_k, self.explain)
        self._lap("model")  # the features came from the operator (in read)
        return decisions

    def process_output(self, batch_id: int, table, read_seconds: float = 0.0) -> dict[str, int]:
        """One micro-batch of the operator's output (an Arrow table of :data:`OUTPUT`)."""
        t0 = time.perf_counter() - read_seconds
        if batch_id <= self.batch_id:
            return {}  # committed already: Spark replays a batch it had not recorded
        self._start_batch(read_seconds)  # read: Spark's job, which runs the stateful operator
        rows = table.to_pylist()
        dead = [json.loads(r["payload"]) for r in rows if r["kind"] == "dead"]
        for r in rows:
            if r["kind"] == "duplicate":
                p = json.loads(r["payload"])
                dead.append(dead_letter(RawRecord(p["_record"], json.loads(p["_position"])), [DUPLICATE], r["event_id"]))
        dead.sort(key=lambda d: (str(d.get("file") or d.get("topic") or ""), d.get("line") or d.get("partition") or 0,
                                 d.get("offset") or 0))
        late_rows = [r for r in rows if r["kind"] == "late"]
        late = []
        if late_rows:
            self.watermark = max(r["t"] for r in late_rows)
            late = self._late_records(_frame([r["payload"] for r in late_rows]))
        accepted = sum(r["n"] for r in rows if r["kind"] == "in")
        newest = [r["t"] for r in rows if r["kind"] == "in"]
        if newest:
            self.max_seen = max(newest) if self.max_seen is None else max(self.max_seen, max(newest))
            # Spark's watermark for the next micro-batch (milliseconds), for the summary
            w = (self.max_seen // 1000 - self.lateness_us // 1000) * 1000
            self.watermark = w if self.watermark is None else max(self.watermark, w)
        self.evicted_accounts += sum(r["n"] for r in rows if r["kind"] == "evicted")
        events = self._join_halves([r for r in rows if r["kind"] == "half"])
        self.held += accepted - events.height
        records_in = len(dead) + len(late) + accepted
        batch = {"records_in": records_in, "dead_lettered": len(dead), "late": len(late)}
        batch.update(self._emit(batch_tag(batch_id), batch_id, events, dead, late, records_in))
        self._report(batch_id, batch, time.perf_counter() - t0)
        return batch

    def _join_halves(self, halves: list[dict]) -> pl.DataFrame:
        """Released events with all their feature columns, oldest first; a half whose other
        half has not come (yet) waits in ``orphans`` (it should not happen: both sides
        release an event on the same watermark)."""
        for h in halves:
            o = self.orphans.setdefault(h["event_id"], {"features": {}, "payload": None, "sides": set(), "t": h["t"]})
            o["features"].update(json.loads(h["features"]))
            o["sides"] |= {"src", "dst"} if h["role"] == "both" else {h["role"]}
            if h["payload"] is not None:
                o["payload"] = h["payload"]
        done = [e for e, o in self.orphans.items() if o["sides"] == {"src", "dst"}]
        if self.retention_us and self.watermark is not None:  # bounded: a half that old never finds its pair
            stale = [e for e, o in self.orphans.items() if e not in done and o["t"] < self.watermark - self.retention_us]
            for e in stale:
                del self.orphans[e]
            if stale:
                self.expired_halves += len(stale)
                print(f"warning: {len(stale)} unmatched feature halves older than deploy.store.retention dropped "
                      f"(first event id {stale[0]!r})", file=sys.stderr, flush=True)
        if not done:
            return pl.DataFrame()
        ready = [self.orphans.pop(e) for e in done]
        events = _frame([o["payload"] for o in ready]).select(_EVENT_COLUMNS)
        schema = self.bundle.plan.output_schema()
        feats = pl.DataFrame([o["features"] for o in ready], schema=schema, orient="row")
        return pl.concat([events, feats], how="horizontal").sort(["event_time", "event_id"])

    def _emit(self, tag: str, batch_id: int, released: pl.DataFrame, dead: list[dict], late: list[dict],
              records_in: int) -> dict[str, int]:
        out = self._decide_and_write(tag, batch_id, released, dead, late, records_in)
        self.counts["batches"] += 1
        self.batch_id = batch_id
        self._commit(tag, released)
        self._lap("commit")
        return out

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(state="spark", held_in_spark_state=self.held, unmatched_halves=len(self.orphans))
        if self.retention_us:
            out.update(evicted_accounts=self.evicted_accounts, expired_halves=self.expired_halves)
        return out


# ----------------------------------------------------------------------------- building and running
def build(cfg: DictConfig):
    """(scorer, info): the checks of ``state: store`` plus the plan's refusal, before Spark starts."""
    d = cfg.deploy
    source = kind(cfg)
    lateness, until = check_shared_options(cfg)
    if source == "kafka":
        source_options(cfg)  # the records must enter Spark here: deploy.reader=ranges is refused
    if lateness % 1000:
        raise UserError(f"deploy.allowed_lateness={d.allowed_lateness!r}: Spark's watermark is in milliseconds")
    bundle = resolve_bundle(cfg.bundle, cfg)
    set_threads(bundle, int(d.model_threads))
    needs = plan_needs(bundle.plan)  # refuses steps that cannot run per event, or need unbounded history
    refuse_cross_account(bundle.plan)
    retention = retention_us(d.store, needs.layout(), lateness)
    outputs = stream_outputs(cfg)
    state_dir = Path(d.checkpoint) / "scorer"
    checkpoint = settle_checkpoint(cfg, bundle, source)  # deploy.reset, then the fingerprint recorded or compared
    fresh = StateLog(state_dir).load() is None
    scorer = SparkStateScorer(bundle, None, needs, outputs, [], state_dir, lateness,
                              AlertBudget(d.budget.key, d.budget.window, int(d.budget.cap)),
                              start_watermark_us=to_us(until) if until else None, explain=str(option_value(d.explain)),
                              top_k=int(d.top_k), write_decisions=bool(d.write_decisions),
                              stream=str(Path(d.checkpoint).resolve()), progress=bool(d.progress), snapshot_every=0)
    scorer.retention_us = retention
    last = scorer.restore()
    currencies = list(OmegaConf.to_container(cfg.validation.currencies, resolve=True))
    skew_us = future_skew_us(cfg.validation.get("max_future_skew", "1h"))
    return scorer, {"source": source, "fresh": fresh, "resumed_after_batch": last, "currencies": currencies, "skew_us": skew_us,
                    "window_us": needs.window_us, "retention_us": retention, "start_us": to_us(until) if until else None, "until": until,
                    "reset": checkpoint["reset"]}


def _initial_state(spark, cfg: DictConfig, until, columns: list[str]):
    """The warm-up file as the operator's initial state: each event once per account it touches."""
    if not cfg.deploy.warm_from:
        return None, 0
    frame = pl.read_parquet(cfg.deploy.warm_from)
    if until is not None:
        frame = frame.filter(pl.col("event_time") < until)
    frame = frame.select(pl.col(c) if c in frame.columns else pl.lit(None, t).alias(c) for c, t in STAGED_SCHEMA.items())
    rows = []
    for r in frame.select("event_id", "event_time", "src_account", "dst_account", "amount").iter_rows():
        e, t, src, dst, amount = r[0], to_us(r[1]), r[2], r[3], r[4]
        rows.append((src, t, e, src, dst, amount))
        if dst != src:
            rows.append((dst, t, e, src, dst, amount))
    df = spark.createDataFrame(rows, "account string, t long, event_id string, src string, dst string, amount double")
    return df.groupBy("account"), frame.height


def run(cfg: DictConfig) -> dict:
    """``task=stream deploy.state=spark``: build, run until done or stopped, flush, summarise."""
    d = cfg.deploy
    start = time.perf_counter()
    settle_connector(cfg)
    scorer, info = build(cfg)
    spark = stream_session(cfg)
    spark.conf.set("spark.sql.streaming.stateStore.providerClass", ROCKSDB)
    source = info["source"]
    control = Path(d.checkpoint).resolve() / "control"
    control.mkdir(parents=True, exist_ok=True)
    initial, warmed = _initial_state(spark, cfg, info["until"], _EVENT_COLUMNS) if info["fresh"] else (None, 0)
    failure: list[BaseException] = []
    busy = threading.Lock()
    stopped: list[int] = []  # the signals that asked for a stop

    def score_batch(df, batch_id: int) -> None:
        t0 = time.perf_counter()
        out = df.toArrow()  # evaluated once: the operator commits its state with this job
        scorer.process_output(batch_id, out, read_seconds=time.perf_counter() - t0)

    each_batch = micro_batch(score_batch, busy, stopped, failure)

    lateness_ms = scorer.lateness_us // 1000
    staged = (stream_source(spark, cfg, source).coalesce(1)
              .mapInArrow(make_stage(source, info["currencies"], info["skew_us"]), STAGED))
    marks = (spark.readStream.format("text").option("wholetext", "true").option("pathGlobFilter", "*.json")
             .load(str(control)).mapInArrow(stage_control, STAGED))
    processor = make_processor(scorer.bundle.plan.to_dict(), info["window_us"], info["start_us"], info["retention_us"])
    operated = (staged.unionByName(marks).withWatermark("wm", f"{lateness_ms} milliseconds").drop("wm")
                .groupBy("account")
                .transformWithStateInPandas(processor, OUTPUT, "Append", "EventTime", initialState=initial))

    def start_query(once: bool):
        w = (operated.writeStream.foreachBatch(each_batch)
             .option("checkpointLocation", str(Path(d.checkpoint).resolve() / "spark")).queryName("aml_stream_spark_state"))
        return (w.trigger(availableNow=True) if once else w.trigger(processingTime=str(d.trigger))).start()

    print(f"streaming {scorer.trace['model_name']} version {scorer.trace['model_version']} "
          f"(sha256 {(scorer.trace['bundle_hash'] or '')[:12]}) from {source} [state spark (RocksDB), "
          f"+{warmed:,} events warmed, resuming after batch {info['resumed_after_batch']}]", file=sys.stderr, flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    query = start_query(bool(d.once))
    await_query(query, stopped, failure, busy)
    if scorer.held and scorer.max_seen is not None:
        # flush: a marker whose time puts the watermark 1 ms past the newest event seen
        flush_ms = scorer.max_seen // 1000 + 1
        name = f"flush-{scorer.batch_id:012d}-{uuid.uuid4().hex[:8]}.json"
        replace_durably(control / name, json.dumps({"flush_us": (flush_ms + lateness_ms) * 1000}) + "\n")
        scorer.flushed = True
        signals, stopped[:] = list(stopped), []
        await_query(start_query(True), stopped, failure, busy)
        stopped[:0] = signals
        scorer.watermark = max(scorer.watermark or 0, flush_ms * 1000)  # where the marker put it
    return finish(cfg, scorer, source, "spark state (RocksDB)", stopped, start, query)
