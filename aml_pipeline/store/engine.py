"""Features of one event from the store's histories: the online engines.

Two engines compute a fitted :class:`~aml_pipeline.features.plan.FeaturePlan`'s columns
for one incoming event, given the rows an :class:`~aml_pipeline.store.base.OnlineStore`
holds for it (:func:`gather`):

- :class:`PolarsFeatures` runs the offline code itself,
  ``plan.transform(event_frame, history=history_frame)``. Exact by construction, but polars
  runs each of the plan's ~250 operations as its own query, ~45 ms per event whatever
  its size: too slow to serve a request.
- :class:`OnlineFeatures` computes the same definitions directly for one event in plain
  Python (~0.1-0.5 ms): each step's per-event form (``online()`` in its module of
  :mod:`aml_pipeline.features`), built on the per-event primitives of
  :mod:`aml_pipeline.features.windows`, over the few dozen rows of two accounts. It follows the offline code operation by operation
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

from dataclasses import dataclass
from datetime import timezone
from typing import Any

import polars as pl

from aml_pipeline.errors import UserError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.schema import ALL_COLUMNS, UTC_TIME
from aml_pipeline.features.windows import fixed_sum, since
from aml_pipeline.store.base import AMOUNT, CORE_COLUMNS, DST, SRC, T, OnlineStore, Row, StoreLayout
from aml_pipeline.timeutil import duration_us, from_us, to_us

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
    #: expand only the payers of each account's latest this many inflows (whole instants) in
    #: the expansion's span: the most any 2-hop step reads (None: every inflow's payers)
    expand_rows: int | None = None

    def layout(self) -> StoreLayout:
        return StoreLayout(self.window_us, self.extra_columns)


def plan_needs(plan: FeaturePlan) -> PlanNeeds:
    """Derive the store's window and expansion from the plan; refuse what it cannot serve."""
    window, expand, hubs, extra, rows = 0, 0, None, [], []
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
            rows.append(step.two_hop_rows())
    expand_rows = None if not rows or None in rows else max(rows)
    return PlanNeeds(window, expand, hubs or frozenset(), tuple(extra), expand_rows)


class History:
    """The rows one event's features may use, all strictly before the event."""

    __slots__ = ("sent", "received", "latest", "_sums")

    def __init__(self, sent: dict[str, list[Row]], received: dict[str, list[Row]], latest: dict[str, int | None]):
        self.sent, self.received, self.latest = sent, received, latest
        self._sums: dict[tuple, tuple[int, int]] = {}

    def window_sum(self, acc: str, flow: str, t: int, width: int) -> tuple[int, int]:
        """(rows, exact fixed-point sum of their amounts) of the account's sent (``out``)
        or received (``in``) rows in ``[t - width, t)``: several steps read the same
        windows (velocity, forwarding, pass-through), and a merchant's week of inflows is
        summed once per event. ``t`` is this history's event time."""
        key = (acc, flow, width)
        got = self._sums.get(key)
        if got is None:
            rows = since((self.sent if flow == "out" else self.received).get(acc, ()), t - width, T)
            got = self._sums[key] = (len(rows), fixed_sum(r[AMOUNT] for r in rows))
        return got

    def keep_sum(self, acc: str, flow: str, width: int, count: int, total: int) -> None:
        """Note a window's (rows, fixed-point sum) that a step computed its own way."""
        self._sums[(acc, flow, width)] = (count, total)

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
    reading = store.read_expanded(event.event_id, accounts, t - needs.window_us, t, expand, needs.hubs, needs.expand_rows)
    if reading.decision is not None:
        return reading.decision, None
    return None, History(reading.sent, reading.received, reading.latest)


class OnlineFeatures:
    """The plan's columns for one event from its :class:`History`, in plain Python: each
    step's own per-event form (``FeatureStep.online``, beside its batch form in
    :mod:`aml_pipeline.features`)."""

    name = "online"

    def __init__(self, plan: FeaturePlan):
        for name, step in plan.steps:
            if "online" not in step.engines or not callable(getattr(step, "online", None)):
                raise UserError(f"deploy.engine=online has no per-event form of features.steps.{name} ({step.kind}); "
                                "use deploy.engine=polars")
        self.plan = plan
        self.columns = plan.feature_columns()
        # Where each column sits in a stored row: the core five, then the plan's extra columns.
        layout = (*CORE_COLUMNS, *plan_needs(plan).extra_columns)
        col = {c: i for i, c in enumerate(layout)}
        self._steps = [step.online(col) for _, step in plan.steps]

    def compute(self, event: Event, history: History) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in self._steps:
            step(event, history, out)
        return out

    def prime(self, store: OnlineStore, needs: PlanNeeds, accounts: int) -> int:
        """Run every step once for each of the store's ``accounts`` busiest accounts, as if the
        account paid itself just after its newest event; nothing is appended or returned.

        Why: the steps' carried folds (:mod:`aml_pipeline.features.carried`) then hold those
        accounts' rows, and a merchant's first payments after a start or a restart cost what
        later ones do instead of a fold from its first row (1-3 ms each, in the tail of the
        first minutes). A fold checks on every request that the store still holds exactly
        the rows it went through, so a primed fold is used only where it is exact. A step
        that needs event fields a made-up event lacks is skipped. Returns the accounts primed."""
        blank = dict.fromkeys(ALL_COLUMNS)
        primed = 0
        for acc, newest in store.busiest(accounts):
            ev = Event({**blank, "event_id": f"_prime:{acc}", "event_time": from_us(newest + 1), "src_account": acc,
                        "dst_account": acc, "amount": 1.0})
            _, history = gather(store, needs, ev)
            if history is None:
                continue
            out: dict[str, Any] = {}
            for step in self._steps:
                try:
                    step(ev, history, out)
                except Exception:  # a field this made-up event lacks: that step is not primed
                    continue
            primed += 1
        return primed


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

    def prime(self, store: OnlineStore, needs: PlanNeeds, accounts: int) -> int:
        """Nothing to prime: this engine carries no folds from request to request."""
        return 0

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
