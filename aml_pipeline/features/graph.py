"""Counterparty and graph signals over a window: the shape of money movement.

Single-transaction features cannot see typologies; their shape can. Over each window,
strictly before the event:

- ``{side}_{flow}_degree_{w}``: distinct counterparties (fan-in / fan-out degree) of the
  sender and receiver, both directions;
- ``src_pass_through_{w}``: (money the sender sent, including this payment) / (money it
  received): ≈ 1 for a mule that forwards what it gets;
- ``reciprocal_{w}``: earlier payments from the receiver back to the sender (2-cycles);
- ``cycle3_{w}``: earlier 2-hop paths receiver → x → sender in time order, so this
  payment closes a 3-cycle;
- ``dst_2hop_in_{w}`` / ``src_2hop_in_{w}``: earlier time-ordered 2-hop paths a → x → account
  ending at the receiver / sender: high for the sink of scatter-gather and for layering.
  Only paths whose second hop is one of the account's latest ``max_rows`` inflows of the
  window count (cut at whole instants, as the movement steps cut theirs), and ``cycle3``
  closes only those into the sender: a merchant paid by a thousand customers then costs
  the same bounded work as anyone, in every engine, while a laundering sink, paid by a
  few dozen at most, keeps every path.

A 2-hop path a → x → b is two payments a → x at s1 and x → b at s2 between three distinct
accounts with s1 < s2 and s2 − s1 < window; it is visible to an event at t when s2 < t
and s1 ≥ t − window (both hops inside the window). Paths through a *hub* are left out: an account that paid more than
``max_intermediary_degree`` distinct counterparties in the training window (employers,
payment processors). Hubs are legitimate, counting through them would swamp the signal
and the memory, and fixing the hub list at fit time keeps every engine identical.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import numpy as np
import polars as pl

from aml_pipeline.features.base import DST, SRC, FeatureStep, register
from aml_pipeline.features.windows import (FLOWS, SIDES, Index, Timeline, duration_in, fixed_to_float,
                                           ieee_divide, search, since, tail_instants, timeline)
from aml_pipeline.timeutil import duration_us


def _pair_index(tl: Timeline) -> tuple[np.ndarray, np.ndarray, Index]:
    """Events grouped by ordered pair (sender, receiver), in time order within a pair.

    Returns the rows in that order, the sorted distinct pair labels ``src * n + dst`` and
    an index over (pair, time), so "payments a -> b in [s, t)" is two binary searches.
    """

    def build() -> tuple[np.ndarray, np.ndarray, Index]:
        rows = tl.pairs("out")
        labels = tl.src[rows] * tl.n_accounts + tl.dst[rows]
        new = np.r_[True, labels[1:] != labels[:-1]] if labels.size else np.zeros(0, dtype=bool)
        return rows, labels[new], Index(tl.axis, int(new.sum()), np.cumsum(new) - 1, tl.t[rows])

    return tl.memo(("pair_index",), build)


def _lookup(labels: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which x are in the sorted ``labels``, their positions there) for unsorted ``x``.

    Most pairs looked up never paid each other, so a hashed bitmap of ``labels`` (~8 bits
    per label) rules almost all of them out with one lookup each; only the candidates are
    binary searched (random binary searches of millions of keys cost ~7x more).
    """
    bits = max(10, int(8 * max(labels.size, 1)).bit_length())
    mult, shift = np.uint64(0x9E3779B97F4A7C15), np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[(labels.astype(np.uint64) * mult) >> shift] = True
    candidates = np.flatnonzero(table[(x.astype(np.uint64) * mult) >> shift])
    pos = np.minimum(np.searchsorted(labels, x[candidates]), max(labels.size - 1, 0))
    hit = labels[pos] == x[candidates] if labels.size else np.zeros(candidates.size, dtype=bool)
    return candidates[hit], pos[hit]


def hub_accounts(frame: pl.DataFrame, max_degree: int) -> list[str]:
    """The senders that paid more than ``max_degree`` distinct receivers in ``frame``,
    sorted: the intermediaries no 2-hop path goes through (:class:`CounterpartyGraph`,
    :class:`~aml_pipeline.features.paths.TemporalPaths`)."""
    if SRC in frame.columns and DST in frame.columns:
        # A plan's frame: count distinct receivers per sender on the shared timeline
        # (its pairs are grouped already), instead of grouping the account names.
        tl = timeline(frame)
        rows = tl.pairs("out")
        src, dst = tl.src[rows], tl.dst[rows]
        new_pair = np.r_[True, (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])] if rows.size else np.zeros(0, dtype=bool)
        degree = np.bincount(src[new_pair], minlength=tl.n_accounts)
        hubs = tl.frame.filter(pl.col(SRC).is_in(np.flatnonzero(degree > max_degree).tolist()))
        return sorted(hubs["src_account"].unique().to_list())
    degree = frame.group_by("src_account").agg(pl.col("dst_account").n_unique().alias("n"))
    return sorted(degree.filter(pl.col("n") > max_degree)["src_account"].to_list())


def spark_hubs(train, max_degree: int, ctx) -> list[str]:
    """:func:`hub_accounts` in Spark (the Spark engine's fit of the graph and paths steps):
    the same sorted senders, from a Spark DataFrame of the training rows. ``ctx``: the
    Spark engine's :class:`~aml_pipeline.spark.features.Context` (pyspark is not imported here)."""
    F = ctx.functions
    degree = train.groupBy("src_account").agg(F.countDistinct("dst_account").alias("n"))
    hubs = [r[0] for r in degree.filter(F.col("n") > max_degree).select("src_account").collect()]
    return sorted(hubs)


def hub_mask(tl: Timeline, hubs: list[str]) -> np.ndarray:
    """Per account code of ``tl``: True for a hub (fitted by name; only senders can be
    intermediaries). Memoised per hub list; read from every event of the timeline, history
    included: the steps may see only the scored ones."""

    def build() -> np.ndarray:
        is_hub = np.zeros(tl.n_accounts, dtype=bool)
        is_hub[tl.frame.filter(pl.col("src_account").is_in(hubs))[SRC].to_numpy()] = True
        return is_hub

    return tl.memo(("hubs", tuple(hubs)), build)


@register
@dataclass
class CounterpartyGraph(FeatureStep):
    """Degrees, pass-through, 2- and 3-cycles and 2-hop in-paths over ``window`` (the paths
    through each account's latest ``max_rows`` inflows)."""

    window: str = "7d"
    max_intermediary_degree: int = 50
    max_rows: int = 50

    kind = "graph"
    engines = ("polars", "online", "spark")
    uses_history = True

    def __post_init__(self) -> None:
        try:
            ok = duration_us(self.window) > 0
        except Exception:
            ok = False
        if not ok:
            raise ValueError(f"window: {self.window!r} is not a duration such as 24h or 7d")
        if self.max_intermediary_degree < 1:
            raise ValueError("max_intermediary_degree must be >= 1")
        if int(self.max_rows) < 1:
            raise ValueError("max_rows must be >= 1")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account", "amount"]

    def output_columns(self) -> dict[str, pl.DataType]:
        w = self.window
        cols: dict[str, pl.DataType] = {f"{s}_{f}_degree_{w}": pl.Int64 for s in SIDES for f in FLOWS}
        cols[f"src_pass_through_{w}"] = pl.Float64
        cols[f"reciprocal_{w}"] = pl.Int64
        cols[f"cycle3_{w}"] = pl.Int64
        cols[f"dst_2hop_in_{w}"] = pl.Int64
        cols[f"src_2hop_in_{w}"] = pl.Int64
        return cols

    def history_window(self) -> str | None:
        return self.window

    def two_hop(self) -> tuple[str, list[str]] | None:
        return self.window, list(getattr(self, "hubs_", []) or [])

    def two_hop_rows(self) -> int | None:
        return int(self.max_rows)

    def fit(self, frame: pl.DataFrame) -> "CounterpartyGraph":
        self.hubs_ = hub_accounts(frame, self.max_intermediary_degree)
        return self

    def spark_fit(self, train, ctx) -> dict:
        """:meth:`fit` in Spark (the hubs, before the account partitions run)."""
        return {"hubs_": spark_hubs(train, self.max_intermediary_degree, ctx)}

    # -- pieces (numpy on the shared timeline; rows in the order each piece sorts them) ----
    def _reciprocal(self, tl: Timeline, width: int) -> np.ndarray:
        """Per event a -> b at t: earlier payments b -> a in [t - window, t) (``pairs_in`` order)."""
        _, labels, index = _pair_index(tl)
        rows = tl.scored("pairs_in")  # by (receiver, sender, time): the reversed labels, ascending
        back = tl.dst[rows] * tl.n_accounts + tl.src[rows]
        g = np.minimum(search(labels, back), max(labels.size - 1, 0))
        found = labels[g] == back if labels.size else np.zeros(rows.size, dtype=bool)
        t = tl.t[rows]
        at = index.key(g, t)
        count = index.before(at) - index.before(index.shifted(at, g, t, -width))
        return np.where(found, count, 0)

    def _two_hop_paths(self, tl: Timeline, width: int, is_hub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Time-ordered 2-hop paths a -> x -> b within the window, hubs excluded.

        Returned as (first hop, second hop) positions in the ``in`` and ``out`` views. For
        each first hop a -> x at s1, the second hops are x's payments in (s1, s1 + window):
        one contiguous slice of the ``out`` view, found by binary search and expanded, so
        no join ever pairs hops that are too far apart.

        With history rows beside the scored ones (the stream's micro-batches, the online
        polars engine) only paths ending at an account of a scored event are ever read (the
        counts into it, the cycles its payment closes), so first hops with no such second
        hop are not expanded and the other paths are dropped: the same counts, from a
        fraction of the paths when the history holds weeks of the accounts' payers.
        """
        vin, vout = tl.view("in"), tl.view("out")
        x, a, s1 = vin.acc, vin.cp, vin.t
        lo = search(vout.index.keys, vin.index.keys, "right")  # strictly after s1
        hi = vout.index.before(vout.index.key(x, s1 + width))  # strictly before s1 + window
        # a -> x must be a real hop (no self-payment) through a non-hub
        count = np.where(~is_hub[x] & (a != x), np.maximum(hi - lo, 0), 0)
        wanted = None
        if tl.query is not None:
            wanted = np.zeros(tl.n_accounts, dtype=bool)
            wanted[tl.src[tl.query]] = True
            wanted[tl.dst[tl.query]] = True
            ends_wanted = np.concatenate([[0], np.cumsum(wanted[vout.cp])])
            count = np.where(ends_wanted[np.maximum(hi, lo)] > ends_wanted[lo], count, 0)
        first = np.repeat(np.arange(tl.n), count)
        second = np.arange(first.size) - np.repeat(np.cumsum(count) - count - lo, count)
        # Three distinct accounts: a == b is a 2-cycle (reciprocal_), x == b a self-payment.
        b = vout.cp[second]
        keep = (b != vout.acc[second]) & (a[first] != b)
        if wanted is not None:
            keep &= wanted[b]
        return first[keep], second[keep]

    def _last_visible(self, tl: Timeline, first: np.ndarray, second: np.ndarray, width: int) -> np.ndarray:
        """Per path a -> x -> b: the last instant an event of b counts it, s2 < t <= this.

        Its first hop must lie inside the window (t <= s1 + window), and its second hop
        among b's latest ``max_rows`` inflows before t, which it stops being once b has
        received ``max_rows`` more rows after the instant of s2: from just after the time
        of the (max_rows)-th row past that instant's run (never, if b has none such).
        """
        vin, vout = tl.view("in"), tl.view("out")

        def build() -> np.ndarray:
            keys = vin.index.keys
            runs = np.flatnonzero(keys[1:] != keys[:-1]) + 1  # where each (account, instant) run starts
            run_end = np.append(runs, keys.size)[np.searchsorted(runs, np.arange(keys.size), "right")]
            cut = run_end + int(self.max_rows) - 1
            inside = cut < keys.size
            inside[inside] = vin.acc[cut[inside]] == vin.acc[inside]
            last = np.full(keys.size, np.iinfo(np.int64).max // 4, dtype=np.int64)
            last[inside] = vin.t[cut[inside]]
            by_row = np.empty(tl.n, dtype=np.int64)
            by_row[vin.order] = last
            return by_row

        until = tl.memo(("last_second_hop", int(self.max_rows)), build)
        return np.minimum(vin.t[first] + width, until[vout.order[second]])

    def _paths_into(self, tl: Timeline, first: np.ndarray, second: np.ndarray, width: int) -> dict[str, np.ndarray]:
        """Per side: paths ending at the side's account visible at t (s2 < t <= the path's
        :meth:`_last_visible`).

        Count = (paths whose second hop is before t) - (paths last visible before t), for
        the account: the first is a running sum, in the ``in`` view, of the number of paths
        each payment ends; the second needs one sort of the paths' ends.
        """
        vin, vout = tl.view("in"), tl.view("out")
        ending = np.bincount(vout.order[second], minlength=tl.n)[vin.order]
        started = np.concatenate([[0], np.cumsum(ending)])
        ends = np.sort(vin.index.key(vout.cp[second], self._last_visible(tl, first, second, width)))
        return {side: started[tl.before("in", side)] - search(ends, tl.queries(side).keys, "left") for side in SIDES}

    def _cycles(self, tl: Timeline, first: np.ndarray, second: np.ndarray, width: int) -> np.ndarray:
        """Per event u -> v at t: paths v -> x -> u visible at t, this payment closing them
        (``pairs_out`` order)."""
        vin, vout = tl.view("in"), tl.view("out")
        rows, labels, index = _pair_index(tl)
        closes = vout.cp[second] * tl.n_accounts + vin.cp[first]  # (b, a): the payment b -> a closes it
        found, g = _lookup(labels, closes)
        first, second = first[found], second[found]
        starts = np.sort(index.key(g, vout.t[second]))
        ends = np.sort(index.key(g, self._last_visible(tl, first, second, width)))
        keys = index.keys if tl.query is None else index.keys[tl.query[rows]]
        return search(starts, keys, "left") - search(ends, keys, "left")

    def _reciprocal_memo(self, tl: Timeline, width: int) -> np.ndarray:
        return tl.memo(("reciprocal", width), lambda: self._reciprocal(tl, width))

    # -- transform ----------------------------------------------------------------------
    def ahead(self, tl: Timeline) -> list:
        """The pieces that do not depend on the fitted hub list."""
        w = self.window
        width = duration_in(w, tl.unit)
        return [
            lambda: [tl.distinct(f, s, w) for f in FLOWS for s in SIDES],
            lambda: [tl.aggregate(f, "src", w, "sum") for f in FLOWS],
            lambda: self._reciprocal_memo(tl, width),
        ]

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        w = self.window
        tl = timeline(frame)
        width = duration_in(w, tl.unit)
        key = (width, int(self.max_rows), tuple(self.hubs_))

        def paths() -> tuple[np.ndarray, np.ndarray]:
            return tl.memo(("paths", *key), lambda: self._two_hop_paths(tl, width, hub_mask(tl, self.hubs_)))

        def reciprocal() -> np.ndarray:
            return self._reciprocal_memo(tl, width)

        def cycles() -> np.ndarray:
            return tl.memo(("cycles", *key), lambda: self._cycles(tl, *paths(), width))

        def into() -> dict[str, np.ndarray]:
            return tl.memo(("into", *key), lambda: self._paths_into(tl, *paths(), width))

        # Independent pieces on all cores (cycles and into wait for the paths they share).
        tl.prefetch([*self.ahead(tl), cycles, into])
        by_side = {
            side: {f"{side}_{flow}_degree_{w}": (tl.distinct(flow, side, w), pl.Int64) for flow in FLOWS}
            | {f"{side}_2hop_in_{w}": (into()[side], pl.Int64)}
            for side in SIDES
        }
        # pass-through = (sent + this payment) / received, over the sender's window
        cols = {c.name: c for side, values in by_side.items() for c in tl.columns(side, values)}
        cols |= {c: tl.series(c, tl.aggregate(f, "src", w, "sum"), pl.Float64) for c, f in (("_sent", "out"), ("_got", "in"))}
        cols |= {c.name: c for c in tl.columns("pairs_in", {f"reciprocal_{w}": (reciprocal(), pl.Int64)})}
        cols |= {c.name: c for c in tl.columns("pairs_out", {f"cycle3_{w}": (cycles(), pl.Int64)})}
        ratio = pl.when(pl.col("_got") > 0).then((pl.col("_sent") + pl.col("amount")) / pl.col("_got"))
        name = f"src_pass_through_{w}"
        cols[name] = frame.select(pl.col("amount"), cols["_sent"], cols["_got"]).select(ratio.alias(name)).to_series()
        return frame.hstack([cols[c] for c in self.output_columns()])

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event from its accounts' rows and the received rows of
        the accounts that paid them (the store's 1-hop expansion, hubs left out)."""
        T, S, D = col["event_time"], col["src_account"], col["dst_account"]
        w = self.window
        width = duration_us(w)
        cap = int(self.max_rows)
        hubs = frozenset(getattr(self, "hubs_", []) or [])

        def two_hop(h, target: str, lo: int, origin: str | None) -> tuple[int, int]:
            """Paths a -> x -> target visible now; and how many start at ``origin`` (3-cycles).

            A second hop x -> target at s2, one of target's latest ``max_rows`` inflows at or
            after lo, counts the first hops a -> x with lo <= s1 < s2 (s2 - s1 < window
            follows from s1 >= t - window and s2 < t), a being neither target nor x. Rows are
            time-ordered, so each second hop costs two bisections on x's times, minus the
            (rare) excluded first hops before it.
            """
            by_x: dict[str, list[int]] = {}
            for e2 in tail_instants(h.received.get(target, ()), lo, cap, T):
                x = e2[S]
                if x != target and x not in hubs:
                    by_x.setdefault(x, []).append(e2[T])
            paths = cycles = 0
            received = h.received
            for x, seconds in by_x.items():
                rows = received.get(x, ())
                if not rows:
                    continue
                if len(seconds) == 1:  # the common case: one scan, stopping at the second hop
                    s2 = seconds[0]
                    for r in since(rows, lo, T):
                        if r[T] >= s2:
                            break
                        a = r[S]
                        if a != target and a != x:
                            paths += 1
                            if a == origin:
                                cycles += 1
                    continue
                rows = since(rows, lo, T)  # the first hops start at lo
                times = [r[T] for r in rows]
                srcs = [r[S] for r in rows]
                excluded = [i for i, a in enumerate(srcs) if a == target or a == x]
                starts = [i for i, a in enumerate(srcs) if a == origin] if origin not in (None, x, target) else []
                for s2 in seconds:
                    k = bisect_left(times, s2)
                    if k == 0:
                        continue
                    paths += k - bisect_left(excluded, k)
                    if starts:
                        cycles += bisect_left(starts, k)
            return paths, cycles

        def compute(ev, h, out: dict) -> None:
            lo = ev.t - width
            for side, acc in (("src", ev.src), ("dst", ev.dst)):
                for flow, table, cp in (("in", h.received, S), ("out", h.sent, D)):
                    out[f"{side}_{flow}_degree_{w}"] = len({r[cp] for r in since(table.get(acc, ()), lo, T)})
            src_got = since(h.received.get(ev.src, ()), lo, T)
            sent = h.window_sum(ev.src, "out", ev.t, width)[1]
            got = fixed_to_float(h.window_sum(ev.src, "in", ev.t, width)[1])
            out[f"src_pass_through_{w}"] = ieee_divide(fixed_to_float(sent) + ev.amount, got) if got > 0 else None
            out[f"reciprocal_{w}"] = sum(1 for r in src_got if r[S] == ev.dst)
            src_paths, cycles = two_hop(h, ev.src, lo, ev.dst)
            dst_paths, _ = two_hop(h, ev.dst, lo, None)
            out[f"cycle3_{w}"] = cycles
            out[f"dst_2hop_in_{w}"] = dst_paths
            out[f"src_2hop_in_{w}"] = src_paths
        return compute
