"""Flow matching: does this payment forward money the sender has just received?

Layering moves money on quickly: a mule receives a sum and pays most of it (85-99 %, a fee
kept) onward within hours. A payment's amount alone cannot show that; the sender's recent
inflows can. Per payment a -> b of amount A at t and per window w, over a's inflows in
``[t - w, t)`` (strictly earlier, the same-instant rule):

- ``src_fwd_share_{w}``: A / (sum of a's inflows in the window): how much of what came in
  this payment takes out (null when nothing came in);
- ``src_fwd_matches_{w}``: how many of those inflows this payment could be passing on,
  i.e. ``band[0] * x <= A <= band[1] * x`` for an inflow of amount x;
- ``src_fwd_lag_{w}``: seconds since the latest such inflow (null when none): minutes or
  hours for a mule, days for a household paying bills from its salary;
- ``src_fwd_new_{w}``: how many of those matching inflows came from a payer that had not
  paid the sender in the ``lookback`` before (a one-off inflow passed on, where a person
  moving their salary on passes on a payment that recurs every month).
- ``src_fwd_drain_{w}``: (what the sender paid out in the window + this payment) / what it
  received in the window: near 0.85-1 when an account empties itself of a recent inflow
  over several payments (a fan-out hub splitting one large inflow), where no single
  payment matches it;
- ``dst_drain_{w}``: the same for the receiver, before this payment (what it paid out over
  what it received in the window): a receiver that passes money straight on is a mule
  or a layering account more often than a household is.

And over the ``habit`` window, how often each account has passed money on before: a
payment is a *forward* when it matches (``band``) one of its sender's inflows of the
first window before it (the latest ``max_inflows``):

- ``src_fwd_habit_{H}`` / ``dst_fwd_habit_{H}``: the sender's / receiver's forwards in
  ``[t - H, t)``. A mule forwards again and again; a receiver with that habit is where
  layered money is heading.

Only the latest ``max_inflows`` inflows of the window are matched (a busy merchant's
thousands of card receipts are not searched for every supplier payment); the cut is made
at whole instants, so the kept inflows never depend on arrival order.

Every engine computes the same values: the batch form below (numpy on the plan's shared
timeline), and :meth:`FlowMatching.online` for one event from the store's rows (the
online service and the streaming scorer); the Spark engine runs the batch form per
account partition.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np
import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.carried import CarriedFolds, drop_before, skip
from aml_pipeline.features.novelty import pair_prior
from aml_pipeline.features.windows import (check_windows, duration_in, expand, fixed_to_float,
                                           last_instants, last_per_group, run_starts, since, tail_instants, timeline,
                                           to_microseconds, window_rows)
from aml_pipeline.timeutil import duration_us


@register
@dataclass
class FlowMatching(FeatureStep):
    """Columns ``src_fwd_{share,matches,lag,new,drain}_{w}`` and ``dst_drain_{w}`` per window."""

    windows: list[str] = field(default_factory=lambda: ["24h", "7d"])
    band: list[float] = field(default_factory=lambda: [0.85, 1.0])
    max_inflows: int = 50
    lookback: str = "30d"
    habit: str = "30d"

    kind = "flow"
    engines = ("polars", "online", "spark")
    uses_history = True

    def __post_init__(self) -> None:
        check_windows(self.windows)
        check_windows([self.lookback], "lookback")
        check_windows([self.habit], "habit")
        if len(self.band) != 2 or not 0 < float(self.band[0]) <= float(self.band[1]):
            raise ValueError(f"band: give [low, high] with 0 < low <= high (got {self.band!r})")
        if int(self.max_inflows) < 1:
            raise ValueError("max_inflows must be >= 1")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account", "amount"]

    def output_columns(self) -> dict[str, pl.DataType]:
        cols: dict[str, pl.DataType] = {}
        for w in self.windows:
            cols |= {f"src_fwd_share_{w}": pl.Float64, f"src_fwd_matches_{w}": pl.Int64, f"src_fwd_lag_{w}": pl.Float64,
                     f"src_fwd_new_{w}": pl.Int64, f"src_fwd_drain_{w}": pl.Float64, f"dst_drain_{w}": pl.Float64}
        return cols | {f"src_fwd_habit_{self.habit}": pl.Int64, f"dst_fwd_habit_{self.habit}": pl.Int64}

    def history_window(self) -> str | None:
        # the matched inflows' own look-back, and the habit window's forwards' inflows
        reach = max(duration_us(self.lookback) + max(duration_us(w) for w in self.windows),
                    duration_us(self.habit) + duration_us(self.windows[0]))
        return f"{reach}us"

    def _forwards(self, tl) -> np.ndarray:
        """Per row of view ``out`` (every event seen from its sender): 1 when it matches one of
        the sender's latest inflows of the first window before it, else 0."""

        def build() -> np.ndarray:
            low, high = (float(b) for b in self.band)
            vin, vout = tl.view("in"), tl.view("out")
            keys = vout.index.keys  # the same key space as the in view's index
            hi = vin.index.before(keys)
            lo = vin.index.before(vin.index.shifted(keys, vout.acc, vout.t, -duration_in(self.windows[0], tl.unit)))
            starts = tl.memo(("run_starts", "in"), lambda: run_starts(vin.index.keys))
            which, pos = expand(last_instants(starts, lo, hi, int(self.max_inflows)), hi)
            amounts = tl.values()
            x, paid = amounts[vin.order[pos]], amounts[vout.order][which]
            with np.errstate(invalid="ignore"):
                match = (paid >= low * x) & (paid <= high * x)
            flag = np.zeros(keys.size, dtype=np.int64)
            flag[which[match]] = 1
            return np.concatenate([[0], np.cumsum(flag)])

        return tl.memo(("forwards", tuple(self.band), self.windows[0], int(self.max_inflows)), build)

    def ahead(self, tl) -> list:
        return [lambda: [tl.aggregate("in", "src", w, a) for w in self.windows for a in ("count", "sum")],
                lambda: [tl.aggregate("out", "src", w, "sum") for w in self.windows],
                lambda: [tl.aggregate(f, "dst", w, "sum") for w in self.windows for f in ("in", "out")]]

    # -- batch form ------------------------------------------------------------------------
    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        tl = timeline(frame)
        low, high = (float(b) for b in self.band)
        q, view = tl.queries("src"), tl.view("in")
        amounts = tl.values()
        # The latest inflows of the longest window: each shorter window is a suffix of them.
        which, pos = window_rows(tl, "in", "src", max(self.windows, key=duration_us), int(self.max_inflows))
        x, paid = amounts[view.order[pos]], amounts[q.rows][which]
        with np.errstate(invalid="ignore"):
            match = (paid >= low * x) & (paid <= high * x)
        one_off = pair_prior(tl, self.lookback)[view.order[pos]] == 0
        amount = frame["amount"].cast(pl.Float64).to_numpy()
        cols = []
        for w in self.windows:
            lo = tl.window("in", "src", w)[0]
            hit = match & (pos >= lo[which])
            count = np.bincount(which[hit], minlength=q.rows.size)
            last = last_per_group(which[hit], view.t[pos[hit]], q.rows.size, 0)
            lag = np.where(count > 0, to_microseconds(q.t - last, tl.unit) / 1e6, np.nan)
            n, total = tl.aggregate("in", "src", w, "count"), tl.aggregate("in", "src", w, "sum")
            with np.errstate(invalid="ignore", divide="ignore"):
                share = np.where((n > 0) & (total > 0), amount / np.where(total > 0, total, 1.0), np.nan)
                drain = np.where(total > 0, (tl.aggregate("out", "src", w, "sum") + amount) / np.where(total > 0, total, 1.0), np.nan)
                got = tl.aggregate("in", "dst", w, "sum")
                dst_drain = np.where(got > 0, tl.aggregate("out", "dst", w, "sum") / np.where(got > 0, got, 1.0), np.nan)
            cols += [tl.series(f"src_fwd_share_{w}", share, pl.Float64), tl.series(f"src_fwd_drain_{w}", drain, pl.Float64),
                     tl.series(f"dst_drain_{w}", dst_drain, pl.Float64)]
            new = np.bincount(which[hit & one_off], minlength=q.rows.size)
            cols += tl.columns("src", {f"src_fwd_matches_{w}": (count, pl.Int64), f"src_fwd_lag_{w}": (lag, pl.Float64),
                                       f"src_fwd_new_{w}": (new, pl.Int64)})
        forwards = self._forwards(tl)
        for side in ("src", "dst"):
            lo, hi = tl.window("out", side, self.habit)
            cols += tl.columns(side, {f"{side}_fwd_habit_{self.habit}": (forwards[hi] - forwards[lo], pl.Int64)})
        by_name = {c.name: c for c in cols}
        return frame.hstack([by_name[c] for c in self.output_columns()])

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event from its sender's received rows (``col``: where
        each column sits in a stored row)."""
        T, S, A = col["event_time"], col["src_account"], col["amount"]
        lookback = duration_us(self.lookback)
        low, high = (float(b) for b in self.band)
        cap = int(self.max_inflows)
        windows = [(w, duration_us(w)) for w in self.windows]
        first, habit = duration_us(self.windows[0]), duration_us(self.habit)
        reach = lookback + max(width for _, width in windows)  # a matched inflow's own look-back
        time_of = itemgetter(T)

        def matched(state: list, p, got) -> None:
            """One payment into the fold: its time, when it passes on one of the account's
            latest ``max_inflows`` inflows (whole instants) of the ``windows[0]`` before it."""
            paid = p[A]
            if paid is None:
                return
            # tail_instants(got[:k], p[T] - first, cap) by bisection on the rows' times, without copies
            k = bisect_left(got, p[T], key=time_of)
            i = bisect_left(got, p[T] - first, 0, k, key=time_of)
            if k - i > cap:
                i = bisect_left(got, got[k - cap][T], i, k - cap, key=time_of)
            for r in got[i:k]:  # a loop, not any(<generator>)
                x = r[A]
                if x is not None and low * x <= paid <= high * x:
                    state.append(p[T])
                    return

        habits = CarriedFolds(list, matched, head=skip)  # payments before the habit window: never read

        def forwards(acc: str, h, t: int) -> int:
            """The account's payments of the habit window that matched one of its inflows:
            each payment is judged once, and the judgements carried from request to request."""
            times = habits.through(acc, h.sent.get(acc, ()), t, since=t - habit - first, also=h.received.get(acc, ()),
                                   head_until=t - habit)
            drop_before(times, t - habit)
            return len(times) - bisect_left(times, t - habit)

        def compute(ev, h, out: dict) -> None:
            out[f"src_fwd_habit_{self.habit}"] = forwards(ev.src, h, ev.t)
            out[f"dst_fwd_habit_{self.habit}"] = forwards(ev.dst, h, ev.t)
            rows = h.received.get(ev.src, ())
            a, t = ev.amount, ev.t
            payers: dict | None = None  # per payer of the sender, its times: only when an inflow matches
            for w, width in windows:
                lo = t - width
                n, total = h.window_sum(ev.src, "in", t, width)
                total = fixed_to_float(total)
                out[f"src_fwd_share_{w}"] = a / total if n and total > 0 else None
                paid = fixed_to_float(h.window_sum(ev.src, "out", t, width)[1])
                out[f"src_fwd_drain_{w}"] = (paid + a) / total if total > 0 else None
                got = fixed_to_float(h.window_sum(ev.dst, "in", t, width)[1])
                gave = fixed_to_float(h.window_sum(ev.dst, "out", t, width)[1])
                out[f"dst_drain_{w}"] = gave / got if got > 0 else None
                hits = [r for r in tail_instants(rows, lo, cap, T)
                        if r[A] is not None and low * r[A] <= a <= high * r[A]]
                out[f"src_fwd_matches_{w}"] = len(hits)
                out[f"src_fwd_lag_{w}"] = (t - max(r[T] for r in hits)) / 1e6 if hits else None
                if hits and payers is None:
                    payers = {}
                    for r in since(rows, t - reach, T):
                        payers.setdefault(r[S], []).append(r[T])
                seen = [payers[r[S]] for r in hits] if hits else []
                out[f"src_fwd_new_{w}"] = sum(bisect_left(s, r[T]) == bisect_left(s, r[T] - lookback) for r, s in zip(hits, seen))
        return compute
