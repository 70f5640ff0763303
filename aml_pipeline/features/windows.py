"""As-of window primitives every history-based feature is built from.

Each primitive answers, for *queries* (account, time), a question about *history* rows
(account, time, value) with the same account and a time in ``[t - window, t)``: strictly
before the query's instant, so events at the same instant never see each other. In a
plan, every event is history, and the events to be scored (``_is_query``) are the queries;
a streaming micro-batch brings history it will not score. Other engines implement the
same primitives.

**Engine.** A :class:`Timeline` holds one frame's events as numpy arrays and sorts them
once per *view*: ``out`` (each event seen from its sender, sorted by sender, time) and
``in`` (from its receiver). Every step of one plan transform shares that timeline
(:func:`shared_timelines`), so the whole plan sorts the events a handful of times instead
of once per window and aggregate. In a view, one account's history in ``[a, b)`` is a
contiguous slice, and a single int64 key per row, ``account * m + coordinate(time)``,
makes "rows strictly before (account, time)" one binary search (:class:`Index`). So a
window is two positions ``lo, hi`` and

- count = ``hi - lo``;
- sum = ``cum[hi] - cum[lo]`` on 128-bit fixed-point running sums (exact, see
  :data:`FIXED_POINT`);
- max = a range maximum: two lookups in a sparse table's short-run levels, and for a
  long window also two in a sparse table over 16-row blocks (:meth:`_View.maxima`);
- the account's previous event = row ``hi - 1``.

Queries are taken in the sorted order of their own side's view, so the needles of every
search are sorted and it is a merge (:func:`search`); each window aggregate goes back to row order (one gather)
as soon as it is computed, while it is still in cache, and only that row-order array is
kept: it becomes the frame column without a copy. Pairs (sender, receiver) get the same
treatment for the graph features.

In a plan transform with history, the timeline holds every event but the steps see only
the events to be scored (:func:`scored_events`): history rows take part in every window
and cost no columns. Independent pieces (per side and flow, per graph feature) run on a
small thread pool; numpy and polars release the GIL in their loops. A plan also starts
the pieces that need no fitted state (:meth:`FeatureStep.ahead`) on a background thread
before its first step, so they overlap the steps' sequential parts (:meth:`Timeline.ahead`).

Values are bit-for-bit those of the polars formulation this replaced (rolling windows
``closed="left"`` per account, exact fixed-point sums, interval counts for distinct
counterparties), which tests/test_features.py and tests/test_feature_leakage.py check
against hand-worked values and brute force.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
import threading
from bisect import bisect_left
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable

import numpy as np
import polars as pl

from aml_pipeline.features.base import DST, IS_QUERY, SRC
from aml_pipeline.timeutil import duration_us

AGGS = ("count", "sum", "mean", "max")
SIDES = ("src", "dst")
FLOWS = ("in", "out")
#: The view sorted by a side's account: a sender's (src) own payments are its out-flow.
SIDE_VIEW = {"src": "out", "dst": "in"}

#: Window sums are exact sums of the values rounded to multiples of 2**-60; values and
#: window sums below 2**127 / 2**60 = 2**67 (~1.5e20) fit in 128 bits, and the rounding
#: (< 1e-18 absolute) is far below a float's resolution for any amount above ~0.01. A float
#: running sum would depend on the order in which same-instant events were added and on
#: which older events had already left the window (last-bit drift), so arrival order and
#: the length of history a streaming batch brings would change the features. A window sum
#: here is the difference of two running sums; they may wrap around 2**128, but the
#: difference is exact modulo 2**128, hence exact, since the window sum itself fits.
FIXED_POINT = 2.0**60

#: Windows made only of fixed-length units (a day is 24 h in UTC); others ("1mo") are
#: calendar offsets and take polars' own date arithmetic.
_FIXED_WINDOW = re.compile(r"(\d+(ns|us|ms|s|m|h|d|w))+")


def duration_in(window: str, unit: str) -> int:
    """``duration_us(window)`` in a datetime's time unit (its physical integer)."""
    us = duration_us(window)
    return us * 1000 if unit == "ns" else us // 1000 if unit == "ms" else us


def to_microseconds(span: np.ndarray, unit: str) -> np.ndarray:
    """Physical time differences in ``unit`` as whole microseconds (polars' total_microseconds)."""
    return span // 1000 if unit == "ns" else span * 1000 if unit == "ms" else span


# --------------------------------------------------------------------------- sorting
#: Below this many needles a plain binary search is cheaper than a merge.
_MERGE_MIN = 50_000


def search(a: np.ndarray, v: np.ndarray, side: str = "left") -> np.ndarray:
    """``np.searchsorted(a, v, side)``, by a merge when ``v`` is sorted too (it almost always
    is here: queries come in key order).

    numpy's stable sort of int64 is a timsort, which merges the two sorted runs of
    ``[v, a]`` (``[a, v]`` for "right") in linear time; needle i's position in the merged
    order, less i, counts the rows before it. Measured 25-40% cheaper than 1M binary
    searches over 1M keys. Unsorted needles (checked, O(n)) take the binary search.
    """
    if v.size < _MERGE_MIN or a.dtype != np.int64 or v.dtype != np.int64 or not bool((v[1:] >= v[:-1]).all()):
        return np.searchsorted(a, v, side)
    if side == "left":  # a needle sorts before rows equal to it
        is_needle = np.argsort(np.concatenate([v, a]), kind="stable") < v.size
    else:  # after them
        is_needle = np.argsort(np.concatenate([a, v]), kind="stable") >= a.size
    return np.flatnonzero(is_needle) - np.arange(v.size)


def _regroup(keys: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``order`` re-sorted stably by ``keys[order]``: rows grouped by key, earlier order kept.

    A least-significant-digit radix sort on 16-bit digits (numpy's stable sort of uint16
    is a counting sort): account codes are small non-negative integers, and one or two
    O(n) passes beat a comparison sort of composite keys.
    """
    k = keys[order]
    top = int(k.max()) if k.size else 0
    shift = 0
    while True:
        p = np.argsort((k >> shift).astype(np.uint16), kind="stable")
        order, k = order[p], k[p]
        shift += 16
        if top >> shift == 0:
            return order


class _Axis:
    """Order-preserving int64 coordinates of times, so that (group, time) fits one int64.

    Raw coordinates are offsets from the earliest event, clipped to one step outside the
    events' range: ``c(x) = clip(x - first + 1, 0, R - 1)``, events in ``[1, R - 2]`` (a
    time before all events compares with every event time like any other such time).
    When the keys would overflow 63 bits, a coordinate is a half-rank among the events'
    instants, ``#(instants < x) + #(instants <= x)``, which orders any time against any
    event time exactly as the times themselves do. Every comparison the primitives make
    has an event time on one side.
    """

    def __init__(self, times: np.ndarray):
        self.times = times
        self.first = int(times.min()) if times.size else 0
        self.raw_size = (int(times.max()) - self.first + 3) if times.size else 3
        self._instants: np.ndarray | None = None

    def ranked(self, n_groups: int) -> bool:
        return max(n_groups, 1) * 2 * self.raw_size >= 2**63

    @property
    def instants(self) -> np.ndarray:
        if self._instants is None:
            self._instants = np.unique(self.times)
        return self._instants

    def size(self, ranked: bool) -> int:
        return 2 * len(self.instants) + 1 if ranked else 2 * self.raw_size

    def coords(self, x: np.ndarray, ranked: bool) -> np.ndarray:
        if ranked:
            return np.searchsorted(self.instants, x, "left") + np.searchsorted(self.instants, x, "right")
        return np.clip(x - (self.first - 1), 0, self.raw_size - 1)


class Index:
    """Rows sorted by (group, time), with one sorted int64 key per row for binary search.

    ``key = group * m + coordinate(time)``. With raw coordinates ``m = 2R``: the upper half
    of each group's range holds no key, so an event's key moved by ``d`` (clamped to
    ``|d| <= R - 1``) still sorts against every row exactly as (group, time + d) does: it
    cannot reach the previous group's keys (at most ``g*m - R - 2``) nor the next group's
    (at least ``g*m + 2R + 1``), and a clamped shift already lies beyond every event time.
    So a window's start is one subtraction (:meth:`shifted`), not a new key.
    """

    def __init__(self, axis: _Axis, n_groups: int, groups: np.ndarray, times: np.ndarray):
        self.axis = axis
        self.ranked = axis.ranked(n_groups)
        self.m = axis.size(self.ranked)
        self.keys = self.key(groups, times)

    def key(self, groups: np.ndarray, times: np.ndarray) -> np.ndarray:
        return groups * self.m + self.axis.coords(times, self.ranked)

    def shifted(self, keys: np.ndarray, groups: np.ndarray, times: np.ndarray, delta: int) -> np.ndarray:
        """Keys of (group, time + delta), given the keys of (group, time) for event times."""
        if self.ranked:
            return self.key(groups, times + delta)
        limit = self.axis.raw_size - 1
        return keys + max(-limit, min(limit, delta))

    def before(self, keys: np.ndarray) -> np.ndarray:
        """Position of the first row at or after each key: the rows strictly before it."""
        return search(self.keys, keys, "left")


class _View:
    """The events seen from one account: ``out`` from the sender, ``in`` from the receiver.

    ``order`` lists the frame's rows by (account, time); ``acc``, ``cp``, ``t`` are the
    account, counterparty and time in that order. Values and their running sums and
    range-maximum table are built on first use.
    """

    def __init__(self, tl: "Timeline", flow: str):
        key, cp = (tl.src, tl.dst) if flow == "out" else (tl.dst, tl.src)
        self.tl, self.flow = tl, flow
        self.order = _regroup(key, tl.time_order)
        self.acc, self.cp, self.t = key[self.order], cp[self.order], tl.t[self.order]
        self.index = Index(tl.axis, tl.n_accounts, self.acc, self.t)
        self._range = RangeMax(self._max_values)

    # counts of non-null values: row counts unless the value column has nulls
    def counts(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        if not self.tl.values_have_nulls:
            return hi - lo
        present = self.tl.memo(("present", self.flow), lambda: np.concatenate([[0], np.cumsum(~self.tl.value_nulls[self.order])]))
        return present[hi] - present[lo]

    def sums(self, lo: np.ndarray, hi: np.ndarray, side: str) -> np.ndarray:
        """Exact window sums (see :data:`FIXED_POINT`), as floats."""
        return fixed_window_sums(self.tl.memo(("cum", self.flow), self._running_sums), lo, hi)

    def _running_sums(self) -> pl.Series:
        return fixed_running_sums(self.tl.values_series().gather(_positions(self.order)))

    def maxima(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """max(values[lo:hi]) per window (NaN when empty): :class:`RangeMax` over the view's values."""
        return self._range.maxima(lo, hi)

    def _max_values(self) -> np.ndarray:
        values = self.tl.values()[self.order]
        if self.tl.values_have_nulls:
            values = np.where(self.tl.value_nulls[self.order], -np.inf, values)
        return values


def fixed_running_sums(values: pl.Series) -> pl.Series:
    """Running sums of ``values`` (nulls as 0) in fixed point (:data:`FIXED_POINT`), Int128,
    with a leading 0: the sum of rows ``[lo, hi)`` is ``cum[hi] - cum[lo]``."""
    fixed = (values.cast(pl.Float64).fill_null(0.0) * FIXED_POINT).round(0).cast(pl.Int128)
    return pl.concat([pl.Series([0], dtype=pl.Int128), fixed.cum_sum()], rechunk=True)


def fixed_window_sums(cum: pl.Series, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Exact sums of rows ``[lo, hi)`` from :func:`fixed_running_sums`, each rounded once
    from Int128 to Float64, then divided by :data:`FIXED_POINT` (exact: a power of two)."""
    c = pl.lit(cum)
    diff = pl.select((c.gather(_positions(hi)) - c.gather(_positions(lo))).cast(pl.Float64) / FIXED_POINT)
    return diff.to_series().to_numpy()


class RangeMax:
    """Range maxima over one array of values (nulls given as -inf), built on first use.

    ``values`` is a function returning the array, so building it waits for the first query.
    """

    def __init__(self, values: Callable[[], np.ndarray]):
        self._values = values
        self._max: list[np.ndarray] | None = None
        self._block_max: np.ndarray | None = None
        self._lock = threading.Lock()

    def maxima(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """max(values[lo:hi]) per window (NaN when empty), from a sparse table over short runs
        and one over blocks.

        Level k (k <= :data:`_SHORT_LEVELS`) holds the maximum of each run of 2**k rows, so a
        window shorter than 2 * :data:`_BLOCK` rows is the union of two runs of its level,
        floor(log2(length)): two lookups. A longer window is the union of its first and last
        :data:`_BLOCK` rows (two lookups in the top level) and of the whole blocks of
        :data:`_BLOCK` aligned rows between them, whose maximum is two lookups in a sparse
        table over block maxima (1/16 of the rows). A full sparse table would need one
        array of every row per doubling up to the longest window (14 for a busy receiver's
        week): memory that every run must page in. Queries are visited level by level,
        each in increasing position, so lookups stream through one level at a time.
        """
        length = hi - lo
        out = np.full(length.size, np.nan)
        longest = int(length.max()) if length.size else 0
        if longest <= 0:
            return out
        levels = self._levels(min(longest, 2 * _BLOCK - 1))
        # floor(log2(length)), capped: every long window gets level _SHORT_LEVELS + 1;
        # empty windows get 255 and sort last
        capped = min(longest, 2 * _BLOCK)
        log2 = np.full(capped + 1, 255, dtype=np.uint8)
        log2[1:] = np.frexp(np.arange(1, capped + 1))[1] - 1
        level = log2[np.minimum(length, capped)]
        by_level = np.argsort(level, kind="stable")  # a counting sort on uint8
        bounds = np.concatenate([[0], np.cumsum(np.bincount(level, minlength=256))])
        for k, table in enumerate(levels):
            at = by_level[bounds[k] : bounds[k + 1]]
            if at.size:
                out[at] = np.maximum(table[lo[at]], table[hi[at] - (1 << k)])
        at = by_level[bounds[_SHORT_LEVELS + 1] : bounds[_SHORT_LEVELS + 2]]
        if at.size:
            a, b = lo[at], hi[at]
            edges = np.maximum(levels[_SHORT_LEVELS][a], levels[_SHORT_LEVELS][b - _BLOCK])
            first, stop = -(-a // _BLOCK), b // _BLOCK  # the whole blocks [first, stop), at least one
            span = stop - first
            k = (np.frexp(span)[1] - 1).astype(np.intp)
            blocks = self._blocks()
            out[at] = np.maximum(edges, np.maximum(blocks[k, first], blocks[k, stop - (1 << k)]))
        return out

    def _levels(self, longest: int) -> list[np.ndarray]:
        """The short runs' levels up to ``longest``, grown under a lock (threads share them)."""
        with self._lock:
            if self._max is None:
                self._max = [self._values()]
            levels = self._max
            while 1 << len(levels) <= longest:
                half = 1 << (len(levels) - 1)
                levels.append(np.maximum(levels[-1][:-half], levels[-1][half:]))
            return levels[: max(longest, 1).bit_length()]

    def _blocks(self) -> np.ndarray:
        """Sparse table over the maxima of aligned blocks of :data:`_BLOCK` rows: row k,
        column j is the maximum of blocks j .. j + 2**k - 1 (-inf past the end)."""
        top = self._levels(_BLOCK)[_SHORT_LEVELS]
        with self._lock:
            if self._block_max is None:
                nb = self._max[0].size // _BLOCK
                table = np.full((max(nb, 1).bit_length(), nb), -np.inf)
                table[0] = top[: nb * _BLOCK : _BLOCK]
                for k in range(1, table.shape[0]):
                    half = 1 << (k - 1)
                    np.maximum(table[k - 1, : nb - half], table[k - 1, half:], out=table[k, : nb - half])
                self._block_max = table
            return self._block_max


#: Short runs: sparse-table levels 0.._SHORT_LEVELS; longer windows go through blocks of
#: _BLOCK = 2**_SHORT_LEVELS rows (see RangeMax.maxima).
_SHORT_LEVELS = 4
_BLOCK = 1 << _SHORT_LEVELS


_INDEX = np.uint32 if pl.get_index_type() == pl.UInt32 else np.uint64


def _positions(a: np.ndarray) -> pl.Series:
    """Row positions as a polars index series (a numpy cast, then zero-copy: ~10x cheaper
    than letting polars convert int64 positions with a checked cast)."""
    return pl.Series(a.astype(_INDEX))


_THREADS = min(os.cpu_count() or 1, 4)
#: Below this many events a thread pool costs more than it saves.
_PARALLEL_EVENTS = 100_000


def _workers() -> int:
    """Threads for independent pieces: every core when one is idle, else one.

    On a machine another job already keeps busy (1-minute load average within half a core
    of the core count) extra threads only add contention: measured 15-50% slower there.
    """
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1) - 0.5
    except OSError:
        busy = False
    return 1 if busy else _THREADS


class _Memo:
    __slots__ = ("lock", "done", "value")

    def __init__(self) -> None:
        self.lock, self.done, self.value = threading.Lock(), False, None


@dataclass
class Queries:
    """The events to be scored, sorted by one side's (account, time).

    ``rows`` are their positions in the frame, ``keys`` their :class:`Index` keys in the
    side's view (all views over accounts share one key space).
    """

    side: str
    rows: np.ndarray
    acc: np.ndarray
    t: np.ndarray
    keys: np.ndarray


class Timeline:
    """One frame's events as account timelines, sorted once and shared by every step.

    Built from a prepared frame (``_src``/``_dst`` integer account codes, ``event_time``,
    optionally ``amount`` and ``_is_query``). Everything derived (views, windows,
    aggregates) is memoised, so steps asking for the same window share the work: the
    amount step's trailing mean and the graph's pass-through reuse the rolling sums.
    """

    def __init__(self, frame: pl.DataFrame):
        et = frame["event_time"]
        if et.null_count():
            raise ValueError("event_time has nulls; the window features need a time for every event")
        self.frame = frame
        self.event_time = et
        self.unit, self.tz = et.dtype.time_unit, et.dtype.time_zone  # type: ignore[attr-defined]
        self.n = frame.height
        self.t = et.to_physical().to_numpy().astype(np.int64, copy=False)
        if frame[SRC].null_count() or frame[DST].null_count():
            raise ValueError("src_account / dst_account have nulls; the window features need both accounts of every event")
        self.src = frame[SRC].to_numpy().astype(np.int64, copy=False)
        self.dst = frame[DST].to_numpy().astype(np.int64, copy=False)
        self.n_accounts = int(max(self.src.max(), self.dst.max())) + 1 if self.n else 1
        query = frame[IS_QUERY].to_numpy() if IS_QUERY in frame.columns else None
        self.query = None if query is None or query.all() else query
        self.axis = _Axis(self.t)
        # Events usually arrive in time order; then the views need only the radix passes.
        sorted_in_time = self.n < 2 or bool((self.t[1:] >= self.t[:-1]).all())
        self.time_order = np.arange(self.n) if sorted_in_time else np.argsort(self.t, kind="stable")
        self._memo: dict[tuple, _Memo] = {}
        self._lock = threading.Lock()
        #: The frame the steps see and the rows of ``frame`` it holds: all of them, or only
        #: the scored ones (:meth:`scored_frame`).
        self.step_frame, self.step_rows = frame, None

    # -- identity (for sharing within a plan transform) --------------------------------
    def matches(self, frame: pl.DataFrame) -> bool:
        """True if ``frame`` has the same events as the steps' frame (steps only add columns)."""
        if frame.height != self.step_frame.height:
            return False
        cols = ["event_time", SRC, DST] + [c for c in ("amount", IS_QUERY) if c in self.step_frame.columns]
        return all(c in frame.columns and frame[c].equals(self.step_frame[c]) for c in cols)

    def scored_frame(self) -> pl.DataFrame:
        """The scored events alone, for the steps to work on; the timeline keeps every event.

        History rows take part in every window through the timeline, but no step needs to
        compute or carry columns for them: they would be dropped at the end anyway.
        """
        if self.query is not None:
            self.step_rows = np.flatnonzero(self.query)
            self.step_frame = self.frame.filter(pl.col(IS_QUERY))
        return self.step_frame

    def memo(self, key: tuple, build: Callable[[], Any]) -> Any:
        """``build()`` once per key, also when threads of :meth:`prefetch` ask at once."""
        with self._lock:
            entry = self._memo.get(key)
            if entry is None:
                entry = self._memo[key] = _Memo()
        with entry.lock:
            if not entry.done:
                entry.value, entry.done = build(), True
        return entry.value

    def prefetch(self, tasks: list[Callable[[], Any]]) -> None:
        """Run independent computations (each filling the memo) on the idle cores.

        numpy and polars release the GIL in their loops, so on an otherwise idle 2-core
        machine the pieces run side by side; results are memoised and each is computed
        exactly as alone, so nothing changes but the time.
        """
        self.map(lambda task: task(), tasks)

    def ahead(self, tasks: list[Callable[[], Any]]) -> None:
        """Start independent computations now on a background thread (inside
        :func:`shared_timelines`), so that a plan's later steps' windows are computed while
        its earlier steps run their sequential parts (polars expressions, hstacks) and the
        second core would otherwise wait. Results land in the memo, where the step finds
        them (or waits for the one being built); values are those computed in place.
        Skipped where :meth:`map` would use one thread.
        """
        holder = _AHEAD.get()
        if holder is None or self.n < _PARALLEL_EVENTS or _workers() < 2:
            return
        for task in tasks:
            holder.submit(task)

    # -- values ------------------------------------------------------------------------
    def values_series(self) -> pl.Series:
        return self.frame["amount"].cast(pl.Float64)

    @property
    def value_nulls(self) -> np.ndarray:
        return self.memo(("value_nulls",), lambda: self.values_series().is_null().to_numpy())

    @property
    def values_have_nulls(self) -> bool:
        return bool(self.frame["amount"].null_count())

    def values(self) -> np.ndarray:
        """The amounts as floats (nulls as NaN); refuses non-finite amounts."""

        def build() -> np.ndarray:
            v = self.values_series().to_numpy()
            if (~np.isfinite(v) & ~self.value_nulls).any():
                raise ValueError("amount has non-finite values; window sums and maxima need finite amounts")
            return v

        return self.memo(("values",), build)

    # -- views and queries ---------------------------------------------------------------
    def view(self, flow: str) -> _View:
        return self.memo(("view", flow), lambda: _View(self, flow))

    def queries(self, side: str) -> Queries:
        def build() -> Queries:
            v = self.view(SIDE_VIEW[side])
            if self.query is None:
                return Queries(side, v.order, v.acc, v.t, v.index.keys)
            sel = self.query[v.order]
            return Queries(side, v.order[sel], v.acc[sel], v.t[sel], v.index.keys[sel])

        return self.memo(("queries", side), build)

    def pairs(self, flow: str) -> np.ndarray:
        """Rows grouped by (account, counterparty) of ``flow``, in time order within a pair.

        A stable regroup by the account of the other view's (counterparty, time) order.
        """
        other = "in" if flow == "out" else "out"
        key = self.src if flow == "out" else self.dst
        return self.memo(("pairs", flow), lambda: _regroup(key, self.view(other).order))

    # -- windows -------------------------------------------------------------------------
    def before(self, flow: str, side: str) -> np.ndarray:
        """Per query of ``side``: position in view ``flow`` of the first row at or after it.

        In the side's own view a query is one of the rows, and the answer is the first row
        of its run of equal keys (same account and instant): no search needed.
        """

        def build() -> np.ndarray:
            view, q = self.view(flow), self.queries(side)
            if SIDE_VIEW[side] != flow:
                return view.index.before(q.keys)
            keys = view.index.keys
            first = np.arange(keys.size)
            if keys.size:
                first[1:][keys[1:] == keys[:-1]] = 0
                np.maximum.accumulate(first, out=first)
            return first if self.query is None else first[self.query[view.order]]

        return self.memo(("before", flow, side), build)

    def window_start(self, side: str, window: str) -> np.ndarray:
        """Index keys of each query's (account, ``t - window``) in the account views.

        Fixed windows shift the query's own key; calendar windows ("1mo", or days outside
        UTC) take polars' calendar arithmetic, as its rolling windows do. Not memoised: it
        serves one search per view (:meth:`window`), and keeping it would only cost memory.
        """
        q, index = self.queries(side), self.view(SIDE_VIEW[side]).index
        if _FIXED_WINDOW.fullmatch(window) and self.tz in (None, "UTC"):
            return index.shifted(q.keys, q.acc, q.t, -duration_in(window, self.unit))
        start = self.event_time.gather(q.rows).dt.offset_by("-" + window)
        return index.key(q.acc, start.to_physical().to_numpy().astype(np.int64, copy=False))

    def window(self, flow: str, side: str, window: str) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi): the rows of view ``flow`` in each query's ``[t - window, t)``."""
        lo = self.memo(("lo", flow, side, window), lambda: self.view(flow).index.before(self.window_start(side, window)))
        return lo, self.before(flow, side)

    def aggregate(self, flow: str, side: str, window: str, agg: str) -> np.ndarray:
        """count / sum / mean / max of ``flow``'s amounts in each query's window, in the
        steps' row order (as :meth:`columns` puts them; NaN for unscored rows in a padded frame).

        An empty window has count 0, sum 0, mean and max NaN (null once in a frame). Each
        result is computed in the side's sorted order and put in row order right away, while
        it is still in cache; only the row-order array is kept (it becomes the frame column
        without a copy), so steps asking for the same window share it.
        """
        if agg not in AGGS:
            raise ValueError(f"unknown aggregate {agg!r}; allowed: {', '.join(AGGS)}")

        def build() -> np.ndarray:
            if agg == "mean":
                n = self.aggregate(flow, side, window, "count")
                s = self.aggregate(flow, side, window, "sum")
                with np.errstate(invalid="ignore"):
                    return s / n  # an empty window has sum 0 and count 0: NaN
            lo, hi = self.window(flow, side, window)
            view = self.view(flow)
            if agg == "count":
                return self.reorder(side, view.counts(lo, hi))
            self.values()  # refuses non-finite amounts
            if agg == "sum":
                return self.reorder(side, view.sums(lo, hi, side))
            top = view.maxima(lo, hi)
            if self.values_have_nulls:  # a window of null amounts only has no maximum
                top[view.counts(lo, hi) == 0] = np.nan
            return self.reorder(side, top)

        return self.memo(("agg", flow, side, window, agg, self.step_rows is None), build)

    def previous_time(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """(time, found): the latest time strictly before each query at which its account
        took part in any event, as sender or receiver (the row before the query in each
        view); ``found`` is False where there is none."""

        def build() -> tuple[np.ndarray, np.ndarray]:
            q = self.queries(side)
            best = np.zeros(q.rows.size, dtype=np.int64)
            found = np.zeros(q.rows.size, dtype=bool)
            for flow in ("out", "in"):
                view, hi = self.view(flow), self.before(flow, side)
                p = np.maximum(hi - 1, 0)
                ok = (hi > 0) & (view.acc[p] == q.acc) if view.acc.size else np.zeros_like(found)
                prev = view.t[p] if view.t.size else best
                best = np.where(ok & (~found | (prev > best)), prev, best)
                found |= ok
            return best, found

        return self.memo(("prev", side), build)

    def distinct(self, flow: str, side: str, window: str) -> np.ndarray:
        """Distinct counterparties in view ``flow`` over ``[t - window, t)`` (fixed width).

        A contact (account, cp, s) is the latest with cp before t iff the next contact with
        the same cp is at or after t, so it counts for every t in (s, min(next, s + window)]:
        an interval. The count at t is (#starts before t) - (#ends before t), both for the
        query's account: starts are the view's rows (less repeated instants of a pair), so a
        running count at ``before`` gives them; ends need one sort.
        """

        def build() -> tuple[np.ndarray, np.ndarray]:
            view, p = self.view(flow), self.pairs(flow)
            key, cp = (self.src, self.dst) if flow == "out" else (self.dst, self.src)
            kk, cc, tt = key[p], cp[p], self.t[p]
            same = (kk[1:] == kk[:-1]) & (cc[1:] == cc[:-1])
            last = np.ones(self.n, dtype=bool)
            last[:-1] = ~(same & (tt[1:] == tt[:-1]))  # one contact per pair and instant
            nxt = np.full(self.n, np.iinfo(np.int64).max)
            nxt[:-1] = np.where(same, tt[1:], nxt[:-1])
            end = np.minimum(nxt, tt + duration_in(window, self.unit))[last]
            ends = np.sort(view.index.key(kk[last], end))
            kept = np.zeros(self.n, dtype=bool)
            kept[p[last]] = True
            starts = np.concatenate([[0], np.cumsum(kept[view.order])])
            return starts, ends

        starts, ends = self.memo(("distinct", flow, window), build)
        return starts[self.before(flow, side)] - search(ends, self.queries(side).keys, "left")

    # -- results -------------------------------------------------------------------------
    def scored(self, order: str) -> np.ndarray:
        """The scored events' rows in a named order, the order results are computed in.

        ``src`` / ``dst``: by that side's account, then time (:meth:`queries`);
        ``pairs_out`` / ``pairs_in``: by (sender, receiver) / (receiver, sender), then time.
        """

        def build() -> np.ndarray:
            rows = self.pairs(order.removeprefix("pairs_"))
            return rows if self.query is None else rows[self.query[rows]]

        return self.queries(order).rows if order in SIDES else self.memo(("scored", order), build)

    def columns(self, order: str, values: dict[str, tuple[np.ndarray, pl.DataType]]) -> list[pl.Series]:
        """Frame columns from values computed for :meth:`scored` events in ``order``."""
        return self.map(lambda item: self.series(item[0], self.reorder(order, item[1][0]), item[1][1]), list(values.items()))

    def series(self, name: str, col: np.ndarray, dtype: pl.DataType) -> pl.Series:
        """A frame column from values already in row order (shares their memory); NaN is null."""
        series = pl.Series(name, col, nan_to_null=col.dtype.kind == "f")
        return series if series.dtype == dtype else series.cast(dtype)

    def reorder(self, order: str, v: np.ndarray) -> np.ndarray:
        """Values computed for :meth:`scored` events in ``order``, in the steps' row order.

        One numpy gather through the inverse permutation (measured ~3x faster than a polars
        gather here); every event that is not scored (history only) reads a NaN placed
        after the values.
        """
        inverse = self.memo(("inverse", order, self.step_rows is None), lambda: self._inverse(self.scored(order)))
        if self.query is not None and self.step_rows is None:  # unscored rows in the steps' frame
            return np.append(v.astype(np.float64), np.nan)[inverse]
        return v[inverse]

    def map(self, fn: Callable[[Any], Any], items: list) -> list:
        """``[fn(x) for x in items]`` on all cores (numpy and polars release the GIL)."""
        workers = _workers() if self.n >= _PARALLEL_EVENTS else 1
        if len(items) < 2 or workers < 2:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))

    def _inverse(self, rows: np.ndarray) -> np.ndarray:
        """For each row of the steps' frame, its position in ``rows`` (``rows.size`` where absent)."""
        inverse = np.full(self.n, rows.size, dtype=np.int64)
        inverse[rows] = np.arange(rows.size)
        return inverse if self.step_rows is None else inverse[self.step_rows]


# ---------------------------------------------------------------- sharing within a transform
_SHARED: contextvars.ContextVar[list[Timeline] | None] = contextvars.ContextVar("aml_timelines", default=None)


class _Ahead:
    """One background thread for work started ahead of the step that needs it (lazily made)."""

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None

    def submit(self, task: Callable[[], Any]) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="features-ahead")
        self.pool.submit(contextvars.copy_context().run, _quietly, task)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _quietly(task: Callable[[], Any]) -> None:
    """Run ``task`` for its memo entries. A failure is left to the step that needs the
    result: its own call rebuilds the entry (a failed build stores nothing) and raises."""
    try:
        task()
    except Exception:  # noqa: BLE001 - re-raised by the step that needs the result
        pass


_AHEAD: contextvars.ContextVar[_Ahead | None] = contextvars.ContextVar("aml_ahead", default=None)


@contextlib.contextmanager
def shared_timelines():
    """Within this block, steps given the same events share one :class:`Timeline`.

    A plan's steps each receive the frame with the previous steps' columns added; the
    events (times, accounts, amounts) are the same, so the sorts and windows are too.
    Work started with :meth:`Timeline.ahead` is finished (or cancelled) on leaving.
    """
    ahead = _Ahead()
    token, ahead_token = _SHARED.set([]), _AHEAD.set(ahead)
    try:
        yield
    finally:
        ahead.close()
        _AHEAD.reset(ahead_token)
        _SHARED.reset(token)


def scored_events(frame: pl.DataFrame) -> pl.DataFrame:
    """Inside :func:`shared_timelines`: the frame's scored rows, whose steps' windows still
    see every row of ``frame`` (see :meth:`Timeline.scored_frame`)."""
    if IS_QUERY not in frame.columns or _SHARED.get() is None or frame[IS_QUERY].all():
        return frame
    return timeline(frame).scored_frame()


def timeline(frame: pl.DataFrame) -> Timeline:
    """The frame's timeline: shared inside :func:`shared_timelines`, else a fresh one."""
    cache = _SHARED.get()
    if cache is None:
        return Timeline(frame)
    for tl in cache:
        if tl.matches(frame):
            return tl
    tl = Timeline(frame)
    cache.append(tl)
    return tl


# ---------------------------------------------------------------- rows of each window
def run_starts(keys: np.ndarray) -> np.ndarray:
    """Per position of sorted ``keys``: the first position of its run of equal keys (the
    rows of one account at one instant share a key)."""
    first = np.arange(keys.size)
    if keys.size:
        first[1:][keys[1:] == keys[:-1]] = 0
        np.maximum.accumulate(first, out=first)
    return first


def last_instants(starts: np.ndarray, lo: np.ndarray, hi: np.ndarray, cap: int) -> np.ndarray:
    """Window starts moved up so each window ``[lo, hi)`` keeps only its latest ``cap`` rows,
    plus every other row at the instant of the earliest one kept.

    A cap bounds the work a busy account costs; cutting at whole instants keeps it
    independent of the order in which same-instant events arrive, so every engine keeps
    the same rows (:func:`tail_instants` is the per-event form). ``starts`` is
    :func:`run_starts` of the rows' keys.
    """
    cut = hi - cap
    inside = cut > lo
    moved = starts[np.where(inside, cut, 0)] if starts.size else np.zeros_like(lo)
    return np.where(inside, np.maximum(lo, moved), lo)


def expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (window, position) pair of the windows ``[lo, hi)``: window numbers ascending
    and positions ascending within a window."""
    n = np.maximum(hi - lo, 0)
    which = np.repeat(np.arange(lo.size), n)
    pos = np.arange(which.size) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
    return which, pos


def last_per_group(which: np.ndarray, values: np.ndarray, groups: int, fill) -> np.ndarray:
    """The last of ``values`` for each group number in ``which`` (sorted ascending), ``fill``
    for groups with none."""
    out = np.full(groups, fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
    if which.size:
        last = np.r_[which[1:] != which[:-1], True]
        out[which[last]] = values[last]
    return out


def distinct_pairs(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """The ``major`` of each distinct (major, minor) pair of non-negative integers, ascending.

    One sort of ``major * span + minor`` where that fits in 63 bits (a 2-D ``np.unique``
    sorts rows as opaque bytes, ~5x slower), else a lexsort."""
    if not major.size:
        return np.zeros(0, np.int64)
    major, minor = major.astype(np.int64, copy=False), minor.astype(np.int64, copy=False)
    span = int(minor.max()) + 1
    if int(major.max()) < (1 << 62) // span:
        return np.unique(major * span + minor) // span
    order = np.lexsort((minor, major))
    major, minor = major[order], minor[order]
    return major[np.r_[True, (major[1:] != major[:-1]) | (minor[1:] != minor[:-1])]]


def distinct_per_group(which: np.ndarray, codes: np.ndarray, groups: int) -> np.ndarray:
    """Distinct non-negative ``codes`` per group number (negative codes are nulls)."""
    keep = codes >= 0
    return np.bincount(distinct_pairs(which[keep], codes[keep]), minlength=groups)


def since(rows, lo: int, t: int = 1):
    """Of time-ordered ``rows`` (time at index ``t``), those at or after ``lo``: the same rows
    as ``[r for r in rows if r[t] >= lo]`` found by bisection. A request reads its accounts'
    rows over the plan's widest window (weeks) while most columns look at hours or days, so
    scanning every row for each window was most of the per-event work."""
    return rows[bisect_left(rows, lo, key=itemgetter(t)):]


def before(rows, hi: int, t: int = 1):
    """Of time-ordered ``rows``, those strictly before ``hi`` (by bisection)."""
    return rows[:bisect_left(rows, hi, key=itemgetter(t))]


def tail_instants(rows: list, lo: int, cap: int, t: int = 1) -> list:
    """Per-event form of :func:`last_instants`: of time-ordered ``rows`` (time at index ``t``),
    those at or after ``lo``, the latest ``cap`` of them plus the rest of the earliest
    kept instant."""
    i = bisect_left(rows, lo, key=itemgetter(t))  # where since(rows, lo, t) starts
    if len(rows) - i > cap:
        j = len(rows) - cap
        first = rows[j][t]
        while j > i and rows[j - 1][t] == first:
            j -= 1
        i = j
    return rows[i:]


def fixed_sum(values) -> int:
    """Exact sum of amounts in units of 2**-60 (as :func:`fixed_running_sums`; Python rounds
    half to even as polars does); :func:`fixed_to_float` turns it back into a float."""
    return sum(round(v * FIXED_POINT) for v in values)


def fixed_to_float(total: int) -> float:
    """A fixed-point sum back to float: ``.cast(Float64) / 2**60`` (int -> float rounds to nearest)."""
    return float(total) / FIXED_POINT


def ieee_divide(a: float, b: float) -> float:
    """``a / b`` as polars divides floats (IEEE: inf or NaN where Python raises)."""
    try:
        return a / b
    except ZeroDivisionError:
        return math.nan if a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1.0, b)


def window_rows(tl: Timeline, flow: str, side: str, window: str, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """(query number in ``side``'s order, position in view ``flow``) for the rows of each
    query's ``[t - window, t)``, only the latest ``cap`` (whole instants, :func:`last_instants`)."""
    lo, hi = tl.window(flow, side, window)
    starts = tl.memo(("run_starts", flow), lambda: run_starts(tl.view(flow).index.keys))
    return expand(last_instants(starts, lo, hi, cap), hi)


def check_windows(windows: list[str], name: str = "windows") -> None:
    """Refuse a window that is not a positive fixed duration (24h, 7d), naming the parameter."""
    if not windows:
        raise ValueError(f"{name}: give at least one window such as 24h or 7d")
    for w in windows:
        try:
            ok = bool(_FIXED_WINDOW.fullmatch(str(w))) and duration_us(w) > 0
        except Exception:
            ok = False
        if not ok:
            raise ValueError(f"{name}: {w!r} is not a fixed duration such as 1h, 24h or 7d")
