"""Cross-border movement: where the money came from, and risky jurisdictions.

Laundering crosses borders more often than household payments do, but trade and family
remittances cross them too; what stands out is money arriving from several countries and
leaving again, or touching a jurisdiction on the bank's risk list. Per payment a -> b:

- ``cross_border``: 1 when the sender's and receiver's countries differ (null when either
  is unknown);
- ``risk_country``: 1 when either country is on ``risk_countries`` (the bank's list, ISO
  codes, e.g. FATF's call-for-action list);
- ``src_in_countries_{w}`` / ``dst_in_countries_{w}``: distinct countries the sender's /
  receiver's inflows came from in ``[t - w, t)`` (the last hop's origin), over the latest
  ``max_rows`` inflows (cut at whole instants);
- ``src_in_risk_{w}``: the sender's inflows from a risk-list country in the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.windows import check_windows, distinct_per_group, since, tail_instants, timeline, window_rows
from aml_pipeline.timeutil import duration_us


@register
@dataclass
class CrossBorder(FeatureStep):
    """Columns ``cross_border``, ``risk_country`` and per window the inflows' countries."""

    windows: list[str] = field(default_factory=lambda: ["7d"])
    risk_countries: list[str] = field(default_factory=list)
    max_rows: int = 200

    kind = "cross_border"
    engines = ("polars", "online", "spark")
    uses_history = True

    def __post_init__(self) -> None:
        check_windows(self.windows)
        if int(self.max_rows) < 1:
            raise ValueError("max_rows must be >= 1")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account", "src_country", "dst_country"]

    def output_columns(self) -> dict[str, pl.DataType]:
        cols: dict[str, pl.DataType] = {"cross_border": pl.Int64, "risk_country": pl.Int64}
        for w in self.windows:
            cols |= {f"src_in_countries_{w}": pl.Int64, f"dst_in_countries_{w}": pl.Int64, f"src_in_risk_{w}": pl.Int64}
        return cols

    def history_window(self) -> str | None:
        return max(self.windows, key=duration_us)

    # -- batch form ------------------------------------------------------------------------
    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        tl = timeline(frame)
        risk = [str(c) for c in self.risk_countries]
        src, dst = pl.col("src_country"), pl.col("dst_country")
        out = frame.with_columns(
            (src != dst).cast(pl.Int64).alias("cross_border"),
            (src.is_in(risk).fill_null(False) | dst.is_in(risk).fill_null(False)).cast(pl.Int64).alias("risk_country"),
        )
        origin = tl.frame["src_country"].cast(pl.String)
        codes = origin.cast(pl.Categorical).to_physical().cast(pl.Int64).fill_null(-1).to_numpy()
        risky = origin.is_in(risk).fill_null(False).to_numpy()
        view = tl.view("in")
        from_risk = np.concatenate([[0], np.cumsum(risky[view.order])])
        cols = []
        for w in self.windows:
            values = {}
            for side in ("src", "dst"):
                which, pos = window_rows(tl, "in", side, w, int(self.max_rows))
                n = tl.queries(side).rows.size
                cols += tl.columns(side, {f"{side}_in_countries_{w}": (distinct_per_group(which, codes[view.order[pos]], n), pl.Int64)})
            lo, hi = tl.window("in", "src", w)
            values[f"src_in_risk_{w}"] = (from_risk[hi] - from_risk[lo], pl.Int64)
            cols += tl.columns("src", values)
        by_name = {c.name: c for c in cols}
        return out.hstack([by_name[c] for c in self.output_columns() if c in by_name])

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event from its accounts' received rows."""
        T, C = col["event_time"], col["src_country"]
        risk = {str(c) for c in self.risk_countries}
        windows = [(w, duration_us(w)) for w in self.windows]
        cap = int(self.max_rows)

        def compute(ev, h, out: dict) -> None:
            sc, dc = ev.values.get("src_country"), ev.values.get("dst_country")
            out["cross_border"] = None if sc is None or dc is None else int(sc != dc)
            out["risk_country"] = int(sc in risk or dc in risk)
            for w, width in windows:
                lo = ev.t - width
                for side, acc in (("src", ev.src), ("dst", ev.dst)):
                    kept = tail_instants(h.received.get(acc, ()), lo, cap, T)
                    out[f"{side}_in_countries_{w}"] = len({r[C] for r in kept if r[C] is not None})
                out[f"src_in_risk_{w}"] = sum(1 for r in since(h.received.get(ev.src, ()), lo, T) if r[C] in risk)
        return compute
