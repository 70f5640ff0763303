"""Bursts into the receiver: many distinct senders in a short time, with similar amounts.

Fan-in and the gather leg of scatter-gather look like a collection account suddenly fed by
many payers; a landlord or a biller is fed by many payers too, but spread over the month
and with amounts of any size. Per payment into account b at t and per window w, over b's
inflows in ``[t - w, t)`` (strictly earlier):

- ``dst_in_senders_{w}``: distinct senders;
- ``dst_in_spread_{w}``: the spread of their amounts, the standard deviation of
  ``ln(1 + amount)`` (a scale-free spread, close to the coefficient of variation when
  amounts are alike; null below two inflows). Low spread with many senders is the
  smurfing shape.

And per window of ``alike_windows``, how many earlier payments are *alike* this one
(within ``alike_band`` of its amount, ``(1 - band)·A <= x <= (1 + band)·A``), over the
latest ``max_rows`` of the window (cut at whole instants):

- ``dst_in_alike_{w}``: the receiver's inflows alike this payment (several payers sending
  one sum: collections, smurfing, bipartite layering);
- ``src_out_alike_{w}``: the sender's payments alike this one (one sum split into equal
  parts over several payees).

The log amounts are rounded to multiples of 2**-16 and summed as integers (wrapping
int64 running sums, exact modulo 2**64, as the window sums of :mod:`.windows`), so the
batch and per-event forms compute the same variance from the same integers whatever the
order of the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.windows import check_windows, since, tail_instants, timeline, window_rows
from aml_pipeline.timeutil import duration_us

#: Log amounts are kept in units of 2**-16 (about 1.5e-5).
SCALE = 65536.0


def spread(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """Population standard deviation from the count and the integer sums of the scaled
    values and of their squares (as floats); NaN below two values."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        var = np.maximum(ss / n - mean * mean, 0.0)
        return np.where(n >= 2, np.sqrt(var) / SCALE, np.nan)


@register
@dataclass
class InflowBurst(FeatureStep):
    """Columns ``dst_in_senders_{w}``, ``dst_in_spread_{w}`` per window, ``dst_in_alike_{w}``,
    ``src_out_alike_{w}`` per alike window."""

    windows: list[str] = field(default_factory=lambda: ["1h", "24h"])
    alike_windows: list[str] = field(default_factory=lambda: ["24h", "7d"])
    alike_band: float = 0.1
    max_rows: int = 50

    kind = "burst"
    engines = ("polars", "online", "spark")
    uses_history = True

    def __post_init__(self) -> None:
        check_windows(self.windows)
        check_windows(self.alike_windows, "alike_windows")
        if not 0 <= float(self.alike_band) < 1:
            raise ValueError("alike_band must be in [0, 1)")
        if int(self.max_rows) < 1:
            raise ValueError("max_rows must be >= 1")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account", "amount"]

    def output_columns(self) -> dict[str, pl.DataType]:
        cols: dict[str, pl.DataType] = {}
        for w in self.windows:
            cols |= {f"dst_in_senders_{w}": pl.Int64, f"dst_in_spread_{w}": pl.Float64}
        for w in self.alike_windows:
            cols |= {f"dst_in_alike_{w}": pl.Int64, f"src_out_alike_{w}": pl.Int64}
        return cols

    def history_window(self) -> str | None:
        return max([*self.windows, *self.alike_windows], key=duration_us)

    def ahead(self, tl) -> list:
        return [lambda: [tl.distinct("in", "dst", w) for w in self.windows]]

    def _sums(self, tl) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Running (count, sum, sum of squares) of the scaled log amounts in view ``in``."""

        def build():
            view = tl.view("in")
            amount = tl.values_series().gather(view.order)
            scaled = (amount.log1p() * SCALE).round(0)  # libm's log1p, as the per-event form
            present = scaled.is_not_null().to_numpy()
            q = scaled.fill_null(0).cast(pl.Int64).to_numpy()
            zero = np.zeros(1, dtype=np.int64)
            return (np.concatenate([zero, np.cumsum(present, dtype=np.int64)]),
                    np.concatenate([zero, np.cumsum(q)]), np.concatenate([zero, np.cumsum(q * q)]))

        return tl.memo(("log_sums", "in"), build)

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        tl = timeline(frame)
        tl.prefetch(self.ahead(tl))
        cn, cs, css = self._sums(tl)
        cols = []
        for w in self.windows:
            lo, hi = tl.window("in", "dst", w)
            n = (cn[hi] - cn[lo]).astype(np.float64)
            value = spread(n, (cs[hi] - cs[lo]).astype(np.float64), (css[hi] - css[lo]).astype(np.float64))
            cols += tl.columns("dst", {f"dst_in_senders_{w}": (tl.distinct("in", "dst", w), pl.Int64),
                                       f"dst_in_spread_{w}": (value, pl.Float64)})
        low, high = 1.0 - float(self.alike_band), 1.0 + float(self.alike_band)
        amounts = tl.values()
        for w in self.alike_windows:
            for side, flow, name in (("dst", "in", "dst_in_alike"), ("src", "out", "src_out_alike")):
                which, pos = window_rows(tl, flow, side, w, int(self.max_rows))
                q = tl.queries(side)
                x, a = amounts[tl.view(flow).order[pos]], amounts[q.rows][which]
                with np.errstate(invalid="ignore"):
                    alike = (x >= low * a) & (x <= high * a)
                cols += tl.columns(side, {f"{name}_{w}": (np.bincount(which[alike], minlength=q.rows.size), pl.Int64)})
        by_name = {c.name: c for c in cols}
        return frame.hstack([by_name[c] for c in self.output_columns()])

    def online(self, col: dict[str, int]):
        """The same columns for one event from its receiver's received rows."""
        T, S, A = col["event_time"], col["src_account"], col["amount"]
        windows = [(w, duration_us(w)) for w in self.windows]
        alike_windows = [(w, duration_us(w)) for w in self.alike_windows]
        low, high = 1.0 - float(self.alike_band), 1.0 + float(self.alike_band)
        cap = int(self.max_rows)

        def compute(ev, h, out: dict) -> None:
            rows = h.received.get(ev.dst, ())
            for w, width in windows:
                lo = ev.t - width
                recent = since(rows, lo, T)
                out[f"dst_in_senders_{w}"] = len({r[S] for r in recent})
                q = [round(math.log1p(r[A]) * SCALE) for r in recent if r[A] is not None]
                n, s, ss = len(q), sum(q), sum(v * v for v in q)
                out[f"dst_in_spread_{w}"] = _spread_one(n, s, ss)
            a = ev.amount
            for w, width in alike_windows:
                for name, rows in (("dst_in_alike", h.received.get(ev.dst, ())), ("src_out_alike", h.sent.get(ev.src, ()))):
                    kept = tail_instants(rows, ev.t - width, cap, T)
                    out[f"{name}_{w}"] = sum(1 for r in kept if r[A] is not None and low * a <= r[A] <= high * a)
        return compute


def _spread_one(n: int, s: int, ss: int) -> float | None:
    """:func:`spread` for one window, with the same float operations."""
    if n < 2:
        return None
    fn, fs, fss = float(n), float(_wrap(s)), float(_wrap(ss))
    mean = fs / fn
    return math.sqrt(max(fss / fn - mean * mean, 0.0)) / SCALE


def _wrap(x: int) -> int:
    """An integer as int64 holds it (the batch form's running sums wrap modulo 2**64)."""
    return (x + 2**63) % 2**64 - 2**63
