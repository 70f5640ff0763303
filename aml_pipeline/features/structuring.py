"""Cash structuring: deposits kept just below the reporting threshold, spread over days.

A cash-intensive business banks its takings in amounts of every size; a structurer
splits one sum into deposits each a little under the threshold (85-99 % of it), over a
week or two, often at several branches or through several depositors. Per payment into
account b at t and per window w, over b's earlier *band deposits* in ``[t - w, t)``: cash
(``channel`` in ``cash_channels``, any case) of an amount in
``[threshold * (1 - band), threshold)``:

- ``dst_cash_band_count_{w}`` and ``dst_cash_band_sum_{w}``;
- ``dst_cash_band_senders_{w}``: distinct depositors (the sender of a cash deposit; the
  account itself when it deposits its own cash);
- ``dst_cash_band_branches_{w}``: distinct branches (``branch_column``, e.g. ``region``;
  omitted when the parameter is null).

Distinct depositors and branches are counted over the latest ``max_rows`` band deposits
(cut at whole instants, so arrival order never matters). Amounts are compared as given:
put the threshold in the currency of the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter

import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.carried import CarriedFolds, drop_before, skip
from aml_pipeline.features.windows import (check_windows, distinct_per_group, expand, fixed_running_sums,
                                           fixed_sum, fixed_to_float, fixed_window_sums, last_instants, run_starts,
                                           search, since, tail_instants, timeline)
from aml_pipeline.timeutil import duration_us


@register
@dataclass
class CashStructuring(FeatureStep):
    """Columns ``dst_cash_band_{count,sum,senders,branches}_{w}`` per window."""

    windows: list[str] = field(default_factory=lambda: ["7d", "14d"])
    reporting_threshold: float = 10_000.0
    band: float = 0.15
    cash_channels: list[str] = field(default_factory=lambda: ["cash_deposit", "cash", "cash_in"])
    branch_column: str | None = None
    max_rows: int = 200

    kind = "structuring"
    engines = ("polars", "online", "spark")
    uses_history = True

    def __post_init__(self) -> None:
        check_windows(self.windows)
        if not float(self.reporting_threshold) > 0:
            raise ValueError("reporting_threshold must be > 0")
        if not 0 < float(self.band) < 1:
            raise ValueError("band must be in (0, 1)")
        if not self.cash_channels:
            raise ValueError("cash_channels: name at least one channel, e.g. cash_deposit")
        if int(self.max_rows) < 1:
            raise ValueError("max_rows must be >= 1")

    def required_columns(self) -> list[str]:
        cols = ["event_time", "src_account", "dst_account", "amount", "channel"]
        return cols + ([self.branch_column] if self.branch_column else [])

    def output_columns(self) -> dict[str, pl.DataType]:
        cols: dict[str, pl.DataType] = {}
        for w in self.windows:
            cols |= {f"dst_cash_band_count_{w}": pl.Int64, f"dst_cash_band_sum_{w}": pl.Float64,
                     f"dst_cash_band_senders_{w}": pl.Int64}
            if self.branch_column:
                cols[f"dst_cash_band_branches_{w}"] = pl.Int64
        return cols

    def history_window(self) -> str | None:
        return max(self.windows, key=duration_us)

    def _bounds(self) -> tuple[float, float]:
        top = float(self.reporting_threshold)
        return top * (1 - float(self.band)), top


    # -- batch form ------------------------------------------------------------------------
    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        tl = timeline(frame)
        low, top = self._bounds()
        cash = [c.lower() for c in self.cash_channels]
        events = tl.frame
        flag = events.select(pl.col("channel").str.to_lowercase().is_in(cash)
                             & pl.col("amount").cast(pl.Float64).is_between(low, top, closed="left")).to_series()
        view, q = tl.view("in"), tl.queries("dst")
        in_view = flag.fill_null(False).to_numpy()[view.order]
        band_rows = view.order[in_view]  # band deposits by (receiver, time)
        keys = view.index.keys[in_view]
        cum = fixed_running_sums(events["amount"].gather(pl.Series(band_rows, dtype=pl.Int64)))
        starts = run_starts(keys)
        senders = tl.src[band_rows]
        branches = None
        if self.branch_column:
            codes = events[self.branch_column].cast(pl.String).cast(pl.Categorical).to_physical()
            branches = codes.cast(pl.Int64).fill_null(-1).to_numpy()[band_rows]
        hi = search(keys, q.keys, "left")
        cols = []
        for w in self.windows:
            lo = search(keys, tl.window_start("dst", w), "left")
            which, pos = expand(last_instants(starts, lo, hi, int(self.max_rows)), hi)
            values = {f"dst_cash_band_count_{w}": (hi - lo, pl.Int64),
                      f"dst_cash_band_sum_{w}": (fixed_window_sums(cum, lo, hi), pl.Float64),
                      f"dst_cash_band_senders_{w}": (distinct_per_group(which, senders[pos], q.rows.size), pl.Int64)}
            if branches is not None:
                values[f"dst_cash_band_branches_{w}"] = (distinct_per_group(which, branches[pos], q.rows.size), pl.Int64)
            cols += tl.columns("dst", values)
        return frame.hstack(cols)

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event from its receiver's received rows."""
        T, S, A, C = col["event_time"], col["src_account"], col["amount"], col["channel"]
        B = col[self.branch_column] if self.branch_column else None
        windows = [(w, duration_us(w)) for w in self.windows]
        cap = int(self.max_rows)
        cash = {c.lower() for c in self.cash_channels}
        low, top = self._bounds()
        widest = max(width for _, width in windows)

        def deposit(kept: list, r, _also) -> None:
            """Keep a received row that is a cash deposit in the band (the band first: it rules out most rows cheaply)."""
            if r[A] is not None and low <= r[A] < top and r[C] is not None and r[C].lower() in cash:
                kept.append(r)

        # each received row is judged once, the judgements carried from request to request
        # (rows before the widest window are never read: the head skips them)
        folds = CarriedFolds(list, deposit, head=skip)

        def compute(ev, h, out: dict) -> None:
            kept = folds.through(ev.dst, h.received.get(ev.dst, ()), ev.t, head_until=ev.t - widest)
            drop_before(kept, ev.t - widest, key=itemgetter(T))
            deposits = since(kept, ev.t - widest, T)
            for w, width in windows:
                lo = ev.t - width
                recent = since(deposits, lo, T)
                kept = tail_instants(recent, lo, cap, T)
                out[f"dst_cash_band_count_{w}"] = len(recent)
                out[f"dst_cash_band_sum_{w}"] = fixed_to_float(fixed_sum(r[A] for r in recent))
                out[f"dst_cash_band_senders_{w}"] = len({r[S] for r in kept})
                if B is not None:
                    out[f"dst_cash_band_branches_{w}"] = len({r[B] for r in kept if r[B] is not None})
        return compute
