"""Features of one event from the store's histories: the online engines.

Two engines compute a fitted :class:`~aml_pipeline.features.plan.FeaturePlan`'s columns
for one incoming event, given the rows an :class:`~aml_pipeline.store.base.OnlineStore`
holds for it (:func:`gather`):

- :class:`PolarsFeatures` runs the offline code itself,
  ``plan.transform(event_frame, history=history_frame)``. Exact by construction, but polars
  runs each of the plan's ~250 operations as its own query, ~45 ms per event whatever
  its size: too slow to serve a request.
- :class:`OnlineFeatures` computes the same definitions directly for one event in plain
  Python (~0.1-0.5 ms): the as-of primitives of :mod:`aml_pipeline.features.windows` over
  the few dozen rows of two accounts. It follows the offline code operation by operation
  where the last bit can depend on it: window sums are the same 128-bit fixed-point sums
  (units of 2**-60) converted to float the same way, ratios and logs are the same IEEE
  operations, amounts are rounded half-to-even like polars. The parity tests compare both
  engines, and the service against ``task=score``, to 1e-9 (in practice bit for bit).

The same-instant rule holds because every row the store returns is strictly earlier than
the event (``[t - window, t)``): events at the event's own instant are never read,
whatever order they arrived in.

What the store must return (:class:`PlanNeeds`): the two accounts' rows within the
longest bounded window, each account's previous event time (``time``; unbounded), and
for steps that follow 2-hop paths (``two_hop``: the graph and paths steps) the received
rows of the accounts that paid either account within the step's reach (paths
``a -> x -> account`` need ``x``'s incoming payments), except hubs, which those steps
never count through.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Callable

import polars as pl

from aml_pipeline.errors import UserError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.features.windows import FIXED_POINT, fixed_sum, fixed_to_float
from aml_pipeline.schema import ALL_COLUMNS, UTC_TIME
from aml_pipeline.store.base import AMOUNT, CORE_COLUMNS, DST, SRC, T, OnlineStore, Row, StoreLayout
from aml_pipeline.timeutil import duration_us, from_us, to_us

_NO_ROWS: list = []


class Event:
    """One transaction to score: canonical values plus its time in µs."""

    __slots__ = ("event_id", "t", "time", "src", "dst", "amount", "values")

    def __init__(self, values: dict[str, Any]):
        ts = values["event_time"]
        if ts.tzinfo is None:
            raise ValueError("event_time must be timezone-aware")
        ts = ts.astimezone(timezone.utc)
        self.values = {**values, "event_time": ts}
        self.event_id = values["event_id"]
        self.t = to_us(ts)
        self.time = ts
        self.src = values["src_account"]
        self.dst = values["dst_account"]
        self.amount = float(values["amount"])

    def row(self, extra_columns: tuple[str, ...]) -> tuple:
        return (self.event_id, self.t, self.src, self.dst, self.amount, *(self.values.get(c) for c in extra_columns))


# ------------------------------------------------------------------------------ what to read
@dataclass(frozen=True)
class PlanNeeds:
    """What a plan needs from the store for one event."""

    window_us: int  # the two accounts' rows in [t - window, t)
    expand_us: int  # received rows of in-neighbours in [t - expand, t); 0 = no expansion
    hubs: frozenset[str]  # accounts never expanded (hubs of every graph step)
    extra_columns: tuple[str, ...]  # row columns beyond the core five that history steps read

    def layout(self) -> StoreLayout:
        return StoreLayout(self.window_us, self.extra_columns)


def plan_needs(plan: FeaturePlan) -> PlanNeeds:
    """Derive the store's window and expansion from the plan; refuse what it cannot serve."""
    window, expand, hubs, extra = 0, 0, None, []
    for name, step in plan.steps:
        if not step.per_event:
            raise UserError(f"features.steps.{name} ({step.kind}) cannot be computed event by event; "
                            "the online service cannot serve this plan")
        if not step.uses_history:
            continue
        for c in step.required_columns():
            if c not in CORE_COLUMNS and c not in extra:
                extra.append(c)
        w = step.history_window()
        if w is None:
            if step.kind != "time":
                raise UserError(f"features.steps.{name} ({step.kind}) needs unbounded history; the online store keeps "
                                "a bounded window (plus each account's previous event, for time)")
            continue
        window = max(window, duration_us(w))
        hop = step.two_hop()
        if hop is not None:
            expand = max(expand, duration_us(hop[0]))
            step_hubs = frozenset(hop[1])
            hubs = step_hubs if hubs is None else hubs & step_hubs
    return PlanNeeds(window, expand, hubs or frozenset(), tuple(extra))


class History:
    """The rows one event's features may use, all strictly before the event."""

    __slots__ = ("sent", "received", "latest")

    def __init__(self, sent: dict[str, list[Row]], received: dict[str, list[Row]], latest: dict[str, int | None]):
        self.sent, self.received, self.latest = sent, received, latest

    def rows(self) -> list[Row]:
        """Every distinct row (by event id), for the polars engine's history frame."""
        seen: dict[Any, Row] = {}
        for table in (self.sent, self.received):
            for rows in table.values():
                for r in rows:
                    seen.setdefault(r[0], r)
        return list(seen.values())


def gather(store: OnlineStore, needs: PlanNeeds, event: Event) -> tuple[dict | None, History | None]:
    """(stored decision, None) for a known event id, else (None, the event's history)."""
    t = event.t
    accounts = (event.src,) if event.src == event.dst else (event.src, event.dst)
    expand = t - needs.expand_us if needs.expand_us else None
    reading = store.read_expanded(event.event_id, accounts, t - needs.window_us, t, expand, needs.hubs)
    if reading.decision is not None:
        return reading.decision, None
    return None, History(reading.sent, reading.received, reading.latest)


# ------------------------------------------------------------------------------ exact arithmetic
def _div(a: float, b: float) -> float:
    """IEEE division (polars gives inf/NaN where Python raises)."""
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def _window_stats(rows: list[Row], t: int, widths: list[int]) -> list[tuple[int, int, float | None]]:
    """(count, fixed-point sum, max) of amounts of rows in [t - w, t) per width (ascending)."""
    out: list[tuple[int, int, float | None]] = []
    n, s, mx = 0, 0, None
    i = len(rows) - 1
    fx = FIXED_POINT
    for w in widths:
        lo = t - w
        while i >= 0:
            r = rows[i]
            if r[T] < lo:
                break
            a = r[AMOUNT]
            n += 1
            s += round(a * fx)  # the offline (a * 2**60).round(0).cast(Int128); Python rounds half to even too
            if mx is None or a > mx:
                mx = a
            i -= 1
        out.append((n, s, mx))
    return out


# ------------------------------------------------------------------------------ steps, one event
def _time(step) -> Callable:
    def compute(ev: Event, h: History, out: dict) -> None:
        out["hour"] = ev.time.hour
        out["weekday"] = ev.time.isoweekday()
        for side, acc in (("src", ev.src), ("dst", ev.dst)):
            prev = h.latest.get(acc)
            out[f"{side}_secs_since_prev"] = None if prev is None else (ev.t - prev) / 1e6
    return compute


def _amount(step) -> Callable:
    width = duration_us(step.trailing_window)
    threshold = step.reporting_threshold
    lo = step.reporting_threshold * (1 - step.band)

    def compute(ev: Event, h: History, out: dict) -> None:
        a = ev.amount
        cents = round(a * 100)
        out["log_amount"] = math.log1p(a)
        out["round_100"] = int(cents % 10_000 == 0)
        out["round_1000"] = int(cents % 100_000 == 0)
        out["whole_amount"] = int(cents % 100 == 0)
        out["near_threshold"] = int(a >= lo and a < threshold)
        n, s, _ = _window_stats(h.sent.get(ev.src, _NO_ROWS), ev.t, [width])[0]
        out["amount_vs_src_mean"] = _div(a, fixed_to_float(s) / n) if n else None
    return compute


def _rolling(step) -> Callable:
    order = sorted(range(len(step.windows)), key=lambda i: duration_us(step.windows[i]))
    widths = [duration_us(step.windows[i]) for i in order]
    names = [step.windows[i] for i in order]

    def compute(ev: Event, h: History, out: dict) -> None:
        for side in step.sides:
            acc = ev.src if side == "src" else ev.dst
            for flow in step.flows:
                rows = (h.sent if flow == "out" else h.received).get(acc, _NO_ROWS)
                for w, (n, s, mx) in zip(names, _window_stats(rows, ev.t, widths)):
                    total = fixed_to_float(s)
                    for agg in step.aggs:
                        key = f"{side}_{flow}_{agg}_{w}"
                        if agg == "count":
                            out[key] = n
                        elif agg == "sum":
                            out[key] = total
                        elif agg == "mean":
                            out[key] = total / n if n > 0 else None
                        else:
                            out[key] = mx
    return compute


def _graph(step) -> Callable:
    w = step.window
    width = duration_us(w)
    hubs = frozenset(getattr(step, "hubs_", []) or [])

    def two_hop(h: History, target: str, lo: int, origin: str | None) -> tuple[int, int]:
        """Paths a -> x -> target visible now; and how many start at ``origin`` (3-cycles).

        A second hop x -> target at s2 (lo < s2 < t) counts the first hops a -> x with
        lo <= s1 < s2 (s2 - s1 < window follows from s1 >= t - window and s2 < t), a being
        neither target nor x. Rows are time-ordered, so each second hop costs two bisections
        on x's times, minus the (rare) excluded first hops before it.
        """
        by_x: dict[str, list[int]] = {}
        for e2 in h.received.get(target, _NO_ROWS):
            x = e2[SRC]
            if e2[T] > lo and x != target and x not in hubs:
                by_x.setdefault(x, []).append(e2[T])
        paths = cycles = 0
        received = h.received
        for x, seconds in by_x.items():
            rows = received.get(x, _NO_ROWS)
            if not rows:
                continue
            if len(seconds) == 1:  # the common case: one scan, stopping at the second hop
                s2 = seconds[0]
                for r in rows:
                    s1 = r[T]
                    if s1 >= s2:
                        break
                    if s1 >= lo:
                        a = r[SRC]
                        if a != target and a != x:
                            paths += 1
                            if a == origin:
                                cycles += 1
                continue
            times = [r[T] for r in rows]
            srcs = [r[SRC] for r in rows]
            i0 = bisect_left(times, lo)
            excluded = [i for i, a in enumerate(srcs) if a == target or a == x]
            starts = [i for i, a in enumerate(srcs) if a == origin] if origin not in (None, x, target) else []
            for s2 in seconds:
                k = bisect_left(times, s2)
                if k <= i0:
                    continue
                paths += (k - i0) - (bisect_left(excluded, k) - bisect_left(excluded, i0))
                if starts:
                    cycles += bisect_left(starts, k) - bisect_left(starts, i0)
        return paths, cycles

    def compute(ev: Event, h: History, out: dict) -> None:
        lo = ev.t - width
        for side, acc in (("src", ev.src), ("dst", ev.dst)):
            for flow, table, cp in (("in", h.received, SRC), ("out", h.sent, DST)):
                out[f"{side}_{flow}_degree_{w}"] = len({r[cp] for r in table.get(acc, _NO_ROWS) if r[T] >= lo})
        sent = fixed_sum(r[AMOUNT] for r in h.sent.get(ev.src, _NO_ROWS) if r[T] >= lo)
        got = fixed_to_float(fixed_sum(r[AMOUNT] for r in h.received.get(ev.src, _NO_ROWS) if r[T] >= lo))
        out[f"src_pass_through_{w}"] = _div(fixed_to_float(sent) + ev.amount, got) if got > 0 else None
        out[f"reciprocal_{w}"] = sum(1 for r in h.received.get(ev.src, _NO_ROWS) if r[T] >= lo and r[SRC] == ev.dst)
        src_paths, cycles = two_hop(h, ev.src, lo, ev.dst)
        dst_paths, _ = two_hop(h, ev.dst, lo, None)
        out[f"cycle3_{w}"] = cycles
        out[f"dst_2hop_in_{w}"] = dst_paths
        out[f"src_2hop_in_{w}"] = src_paths
    return compute


def _category_codes(step) -> Callable:
    maps = {c: {v: i for i, v in enumerate(step.vocab_[c])} for c in step.columns}

    def compute(ev: Event, h: History, out: dict) -> None:
        for c, m in maps.items():
            out[f"code_{c}"] = m.get(ev.values.get(c), -1)
    return compute


def _target_encoding(step) -> Callable:
    tables = {c: dict(step.tables_[c]) for c in step.columns}
    prior = step.prior_

    def compute(ev: Event, h: History, out: dict) -> None:
        for c, m in tables.items():
            out[f"te_{c}"] = m.get(ev.values.get(c), prior)
    return compute


def _bucketing(step) -> Callable:
    edges = {c: list(step.edges_[c]) for c in step.columns}

    def compute(ev: Event, h: History, out: dict) -> None:
        for c, es in edges.items():
            v = ev.values.get(c)
            out[f"bucket_{c}"] = None if v is None else sum(1 for e in es if v >= e)
    return compute


def _and(x: bool | None, y: bool | None) -> bool | None:
    """Kleene AND, as polars combines booleans with nulls."""
    if x is False or y is False:
        return False
    if x is None or y is None:
        return None
    return True


def _balance(step) -> Callable:
    def compute(ev: Event, h: History, out: dict) -> None:
        v = ev.values
        a = ev.amount
        sb, sa, db, da = (v.get(c) for c in ("src_balance_before", "src_balance_after", "dst_balance_before", "dst_balance_after"))
        out["src_balance_error"] = None if sb is None or sa is None else sb - a - sa
        out["dst_balance_error"] = None if db is None or da is None else db + a - da
        emptied = _and(None if sa is None else sa == 0, None if sb is None else sb > 0)
        out["src_emptied"] = None if emptied is None else int(emptied)
        out["dst_was_empty"] = None if db is None else int(db == 0)
        out["amount_to_src_balance"] = a / sb if sb is not None and sb > 0 else None
    return compute


#: Per-event implementations by step kind, for the steps written before a step kept its
#: per-event form beside its batch form (``FeatureStep.online``); a kind with neither is
#: served by deploy.engine=polars.
ONLINE_STEPS: dict[str, Callable] = {
    "time": _time,
    "amount": _amount,
    "rolling": _rolling,
    "graph": _graph,
    "category_codes": _category_codes,
    "target_encoding": _target_encoding,
    "bucketing": _bucketing,
    "balance": _balance,
}


class OnlineFeatures:
    """The plan's columns for one event from its :class:`History`, in plain Python."""

    name = "online"

    def __init__(self, plan: FeaturePlan):
        missing = [f"{n} ({s.kind})" for n, s in plan.steps if s.kind not in ONLINE_STEPS and not hasattr(s, "online")]
        if missing:
            raise UserError(f"deploy.engine=online has no per-event implementation of features.steps.{missing[0]}; "
                            "use deploy.engine=polars")
        self.plan = plan
        self.columns = plan.feature_columns()
        # Where each column sits in a stored row: the core five, then the plan's extra columns.
        layout = (*CORE_COLUMNS, *plan_needs(plan).extra_columns)
        col = {c: i for i, c in enumerate(layout)}
        self._steps = [s.online(col) if hasattr(s, "online") else ONLINE_STEPS[s.kind](s) for _, s in plan.steps]

    def compute(self, event: Event, history: History) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in self._steps:
            step(event, history, out)
        return out


class PolarsFeatures:
    """``plan.transform(event, history=rows)``: the offline code, one event at a time."""

    name = "polars"

    def __init__(self, plan: FeaturePlan, event_columns: list[str], extra_columns: tuple[str, ...]):
        # The event (converted before it is built) and the store's rows are already in the
        # reporting currency: the plan must not convert them again.
        self.plan = plan.without_fx()
        self.columns = plan.feature_columns()
        self.schema = {c: ALL_COLUMNS.get(c, pl.String) for c in event_columns}
        self.schema["event_time"] = UTC_TIME
        self.stored = (*CORE_COLUMNS, *extra_columns)

    def frame(self, rows: list[dict]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema=self.schema, orient="row")

    def compute(self, event: Event, history: History) -> dict[str, Any]:
        events = self.frame([event.values])
        hist_rows = []
        for r in history.rows():
            d = dict.fromkeys(self.schema)
            d.update(zip(self.stored, r))
            d["event_time"] = from_us(r[T])
            hist_rows.append(d)
        # the latest event of an account whose window is empty: only its time matters (time step)
        present = {a for r in history.rows() for a in (r[SRC], r[DST])}
        for acc, t in history.latest.items():
            if t is not None and acc not in present:
                d = dict.fromkeys(self.schema)
                d.update(event_id=f"_latest:{acc}", event_time=from_us(t), src_account=acc, dst_account=acc, amount=0.0)
                hist_rows.append(d)
        features = self.plan.transform(events, history=self.frame(hist_rows) if hist_rows else None)
        return features.select(self.columns).row(0, named=True)
