"""The as-of window primitives of :mod:`aml_pipeline.features.windows`, on Spark.

Each history feature asks, for every event (a *query*: a key such as the sender, at time
t), a question about *history* rows with the same key and a time in ``[t - w, t)``.
Event times are microsecond longs (``_t``), so a window is a Spark range frame over
``_t``: ``rangeBetween(-w, -1)`` is exactly ``[t - w, t)`` and, because the frame is
defined by time and not by position, rows at the same instant never see each other
whatever their order (the same-instant rule).

A **pass** (:func:`run_pass`) stacks the frame's own rows (queries, and history where a
track says so) with history-only rows of other views of the events (e.g. payments
*received* by the sender, keyed by receiver), partitions by key, orders by ``_t`` and
evaluates every requested window expression in one Window operator; the frame's rows are
then kept with their new columns (no join back).

Exactness, as in polars:

- window **sums** are exact fixed-point sums: each value becomes the integer
  ``round_half_even(v * 2**60)``, held as four 32-bit limbs in longs (split exactly from
  the double: scaling by powers of two and removing leading bits are exact), and each
  limb is summed as a long; a window's limb sums are normalised (carries, in longs) and
  rounded once to the nearest double, ties to even, like polars' Int128 → Float64 cast,
  then divided by 2**60 (:func:`exact_to_double_stages`). Limb sums stay exact below 2**30 rows
  per account, and window sums below 10**38 / 2**60 (~8.6e19);
- window **counts and sums** are differences of two running (unbounded-preceding) totals,
  ``total(t' < t) - total(t' < t - w)``, which integer arithmetic makes exact; running
  frames are O(n), where Spark's bounded sliding frames re-aggregate the whole frame for
  every row. ``max`` (not invertible) is split at fixed time blocks into an ascending and
  a descending running max (:meth:`Pass.max`), also without sliding frames;
- **interval counts** (``start < t <= end``) are running sums of +1 at each start and -1
  at each end, strictly before t.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from aml_pipeline.features.windows import FIXED_POINT

T = "_t"  # event time in microseconds since the epoch (long)
Q = "_q"  # True on the frame's own rows in a pass, False on history-only rows
DEC = "decimal(38,0)"
LIMBS = 4  # 32-bit limbs of a fixed-point value (128 bits)


def micros(column: Column | str) -> Column:
    return F.unix_micros(F.col(column) if isinstance(column, str) else column)


def ieee_divide(a: Column, b: Column) -> Column:
    """``a / b`` with IEEE 754 semantics, as polars divides: x / ±0 is ±inf, 0 / 0 and NaN / 0 are NaN.

    (Spark's ``/`` raises on a zero divisor in ANSI mode and returns null otherwise.) The
    sign of a zero divisor is read from its text, ``-0.0`` (Spark's ``atan2`` and
    ``signum`` do not tell the two zeros apart).
    """
    same_sign = (a > 0) == ~b.cast("string").startswith("-")
    by_zero = F.when(F.isnan(a) | (a == 0), F.lit(float("nan"))) \
        .when(same_sign, F.lit(float("inf"))).otherwise(F.lit(float("-inf")))
    return F.when(a.isNull() | b.isNull(), F.lit(None).cast("double")).when(b != 0, a / b).otherwise(by_zero)


def key_names(n: int) -> list[str]:
    return [f"_k{i}" for i in range(n)]


def fixed_point_limbs(value: Column) -> list[Column]:
    """``round_half_even(value * 2**60)`` as 32-bit limbs ``[y0, y1, y2, y3]`` (longs; null counts as 0).

    ``y = bround(v * 2**60)`` is an integer-valued double (scaling by a power of two is
    exact; rounding matters only below 2**-7). ``y3 = floor(y / 2**96)`` and the remainder
    ``y - y3 * 2**96`` are exact doubles (the remainder keeps a subset of y's significant
    bits), and so on down; so ``y = y3 * 2**96 + y2 * 2**64 + y1 * 2**32 + y0`` exactly,
    with ``0 <= y0, y1, y2 < 2**32``.
    """
    rest = F.bround(F.coalesce(value.cast("double"), F.lit(0.0)) * F.lit(FIXED_POINT), 0)
    limbs = []
    for k in range(LIMBS - 1, 0, -1):
        q = F.floor(rest / F.lit(float(2 ** (32 * k))))
        limbs.append(q.cast("long"))
        rest = rest - q.cast("double") * F.lit(float(2 ** (32 * k)))
    limbs.append(rest.cast("long"))
    return limbs[::-1]


def limb_names(fixed: str) -> list[str]:
    return [f"{fixed}{k}" for k in range(LIMBS)]


_MASK32 = (1 << 32) - 1
_P_FAST = float(2**42)


def exact_to_double_stages(limbs: list[str], out: str) -> list[dict[str, Column]]:
    """Projections that turn exact limb columns into ``out``: ``S = sum(limb_k * 2**(32k))``
    rounded once to a double, divided by 2**60.

    Limbs are exact longs (differences of running limb sums, any sign). Carries make them
    ``S = P * 2**64 + n1 * 2**32 + n0`` with ``0 <= n0, n1 < 2**32``. Then, in doubles,
    with no intermediate rounding that could matter:

    - ``a = P * 2**64`` is exact (|P| < 2**42 on this path);
    - ``q = RN(n1 * 2**32 + n0)`` rounds once, and its error ``e = Q - q`` is exact (a small
      integer, computed with exact subtractions);
    - ``r = RN(a + q)`` with the exact error ``err`` of that addition (Knuth's TwoSum);
    - ``S = r + (err + e)`` exactly, ``err + e`` being an exact small integer, so
      ``RN(r + (err + e)) = RN(S)``: one correctly rounded result (ties to even), as
      polars' Int128 → Float64 cast.

    Window sums beyond ~7e13 (|P| >= 2**42) take an exact ``DECIMAL(38,0)`` path instead.
    Each intermediate is a named column used once per expression (stacked expressions
    that repeat a subexpression would grow the plan exponentially).
    """
    c = lambda name: F.col(f"{out}__{name}")  # noqa: E731
    n = lambda name: f"{out}__{name}"  # noqa: E731
    d0, d1, d2, d3 = (F.col(x) for x in limbs)
    mask = F.lit(_MASK32).cast("long")
    two32 = F.lit(float(2**32))
    dec32 = F.lit(Decimal(2**32)).cast("decimal(11,0)")
    stages = [
        {n("n0"): d0.bitwiseAND(mask), n("c1"): d1 + F.shiftright(d0, 32)},
        {n("n1"): c("c1").bitwiseAND(mask), n("p"): d2 + F.shiftright(c("c1"), 32) + F.shiftleft(d3, 32)},
        {n("a"): c("p").cast("double") * F.lit(float(2**64)), n("h"): c("n1").cast("double") * two32,
         n("l"): c("n0").cast("double")},
        {n("q"): c("h") + c("l")},
        {n("e"): c("l") - (c("q") - c("h")), n("r"): c("a") + c("q")},
        {n("bv"): c("r") - c("a")},
        {n("av"): c("r") - c("bv")},
        {out: F.when(F.abs(c("p")) < F.lit(_P_FAST).cast("long"),
                     c("r") + (((c("a") - c("av")) + (c("q") - c("bv"))) + c("e")))
             .otherwise(((c("p").cast(DEC) * dec32 + c("n1").cast(DEC)).cast(DEC) * dec32 + c("n0").cast(DEC))
                        .cast(DEC).cast("double"))
             / F.lit(FIXED_POINT)},
    ]
    return stages


def stage_names(out: str) -> list[str]:
    return [f"{out}__{x}" for x in ("n0", "c1", "n1", "p", "a", "h", "l", "q", "e", "r", "bv", "av")]


@dataclass
class Pass:
    """Window expressions over one partitioning of the stacked rows.

    ``keys``: the partition columns (``_k0``, ``_k1``...); expressions built with the
    helpers below are evaluated for every stacked row and kept on the frame's rows.
    """

    keys: list[str]
    #: Window columns evaluated first, then ``stages`` of plain projections over them.
    windows: dict[str, Column] = field(default_factory=dict)
    stages: list[dict[str, Column]] = field(default_factory=list)
    #: Levels of window columns evaluated before ``windows`` (the descending frames of :meth:`max`).
    pre: list[dict[str, Column]] = field(default_factory=list)

    # -- frames -------------------------------------------------------------------------
    def _spec(self):
        return Window.partitionBy(*self.keys).orderBy(T)

    def before(self, lag: int = 0):
        """Rows with ``_t < t - lag`` (lag 0: strictly before the row's instant)."""
        return self._spec().rangeBetween(Window.unboundedPreceding, -(lag + 1))

    def within(self, width: int):
        """Rows with ``t - width <= _t < t``."""
        return self._spec().rangeBetween(-width, -1)

    # -- aggregates (each registered as a window column, returned by name) ----------------
    def _window(self, name: str, expr: Column) -> Column:
        self.windows.setdefault(name, expr)
        return F.col(name)

    def count(self, value: str, width: int) -> Column:
        return self._window(f"_count_{value}_{width}",
                            F.count(value).over(self.before()) - F.count(value).over(self.before(width)))

    def fixed_sum(self, fixed: str, width: int) -> Column:
        """The sum over ``[t - width, t)``: exact in fixed point, rounded once to a double.

        Returns a reference to a column computed after the window (see :func:`run_pass`).
        """
        out = f"_sum_{fixed}_{width}"
        zero = F.lit(0).cast("long")
        diffs = {}
        for limb in limb_names(fixed):
            diffs[f"{out}_{limb}"] = F.coalesce(F.sum(limb).over(self.before()), zero) - \
                F.coalesce(F.sum(limb).over(self.before(width)), zero)
        if out not in self.windows:
            self.windows.update(diffs)
            for level, stage in enumerate(exact_to_double_stages(list(diffs), out)):
                if level == len(self.stages):
                    self.stages.append({})
                self.stages[level].update(stage)
        return F.col(out)

    def helper_columns(self) -> set[str]:
        names = set(self.windows)
        for stage in [*self.pre, *self.stages]:
            names |= set(stage)
        return names

    def max(self, value: str, width: int) -> Column:
        """The max over ``[t - width, t)``, exact (a max is a max), without a sliding frame.

        Spark evaluates a bounded frame of a non-invertible aggregate by re-aggregating the
        row's whole window, O(n x events per window): slow for a merchant with thousands of
        payments a week. Here time is cut into blocks ``[b, b + width)`` (b a multiple of
        ``width``; van Herk / Gil-Werman): for ``t`` in block ``b``, ``[t - width, t)`` is the
        part of block ``b`` before ``t`` plus the part of block ``b - width`` from ``t - width``
        on. Both come from running maxima of ``(block, value)`` pairs, whose lexicographic
        max names the nearest block and its largest value:

        - ``a``: the max pair over rows before ``t`` (ascending running frame): its value if
          its block is ``b``;
        - ``g`` (computed first, in descending time): for each row, the max pair of
          ``(-block, value)`` over *later* instants: the nearest later block and its max
          after that instant; ``j`` is ``g`` of the last row before ``t - width``
          (ascending running frame ending at ``t - width``). Rows after that row and before
          ``t - width`` do not exist, so if ``g`` names block ``b - width``, its value is the
          max of that block from ``t - width`` on; with no row before ``t - width`` the
          partition's first block and its max stand in.

        Each is one aggregate per row over running frames (O(n)); the descending frame
        adds one sort per pass, whatever the number of windows. Rows at one instant share
        block and frames, so ties cannot change a result.
        """
        out = f"_max_{value}_{width}"
        if out in self.windows:
            return F.col(out)
        n = lambda name: f"{out}__{name}"  # noqa: E731
        c = lambda name: F.col(n(name))  # noqa: E731
        w = F.lit(width).cast("long")
        block = F.col(T) - F.pmod(F.col(T), w)
        later = Window.partitionBy(*self.keys).orderBy(F.col(T).desc())
        pair_later = F.struct((-block).alias("nb"), F.col(value).alias("v"))
        if not self.pre:
            self.pre.append({})
        self.pre[0].update({
            n("g"): F.max(pair_later).over(later.rangeBetween(Window.unboundedPreceding, -1)),
            n("first"): F.max(pair_later).over(later.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)),
        })
        self._window(n("a"), F.max(F.struct(block.alias("b"), F.col(value).alias("v"))).over(self.before()))
        self._window(n("j"), F.last(F.struct(c("g").alias("g"))).over(self.before(width)))
        if not self.stages:
            self.stages.append({})
        here = c("a").getField("b") == block
        previous = F.coalesce(c("j").getField("g"), c("first"))
        self.stages[0][out] = F.greatest(F.when(here, c("a").getField("v")),
                                         F.when(previous.getField("nb") == -(block - w), previous.getField("v")))
        self.windows.setdefault(out, None)  # registered: a later call reuses the column
        return F.col(out)

    def latest(self, time: str) -> Column:
        return self._window(f"_latest_{time}", F.max(time).over(self.before()))

    def running(self, delta: str) -> Column:
        return self._window(f"_running_{delta}", F.coalesce(F.sum(delta).over(self.before()), F.lit(0).cast("long")))


def run_pass(
    frame: DataFrame,
    keys: list[Column],
    own: dict[str, Column],
    others: list[DataFrame],
    types: dict[str, str],
    build: Callable[[Pass], dict[str, Column]],
    fixed: dict[str, str] | None = None,
) -> DataFrame:
    """Stack, window, keep the frame's rows: the building block of every history feature.

    ``keys``: the frame rows' partition key (e.g. the sender) as columns; ``own``: value
    columns the frame rows carry as history (e.g. the amount they sent); ``others``:
    history-only rows with ``_k0..``, ``_t`` and some of the value columns; ``types``: the
    type of every value column (missing ones are typed nulls); ``fixed``: value column →
    prefix of its fixed-point limbs (:func:`fixed_point_limbs`), added before the window; ``build``: the output
    columns, as window expressions of a :class:`Pass`. Returns ``frame`` with those columns.
    """
    names = key_names(len(keys))
    keep = frame.columns
    rows = frame.withColumns({**{n: k for n, k in zip(names, keys)}, Q: F.lit(True)})
    rows = rows.withColumns({v: (own[v] if v in own else F.lit(None)).cast(t) for v, t in types.items()})
    for extra in others:
        extra = extra.withColumn(Q, F.lit(False))
        extra = extra.withColumns({v: F.lit(None).cast(t) for v, t in types.items() if v not in extra.columns})
        rows = rows.unionByName(extra, allowMissingColumns=True)
    limbs = {}
    for v, f in (fixed or {}).items():
        limbs.update(zip(limb_names(f), fixed_point_limbs(F.col(v))))
    if limbs:
        rows = rows.withColumns(limbs)
    p = Pass(names)
    outputs = build(p)  # registers the sums' window columns and projection stages on p
    for level in p.pre:
        rows = rows.withColumns(level)
    if p.windows:
        rows = rows.withColumns({k: v for k, v in p.windows.items() if v is not None})
    for stage in p.stages:
        rows = rows.withColumns(stage)
    out = rows.withColumns(outputs).filter(F.col(Q))
    return out.select(*keep, *outputs)


def interval_changes(intervals: DataFrame, start: str, end: str, delta: str, keys: list[str]) -> DataFrame:
    """``(keys, start, end)`` intervals as change rows: +1 at ``start``, -1 at ``end``.

    A running sum of the changes strictly before t counts the intervals with
    ``start < t <= end`` (:meth:`Pass.running`).
    """
    change = F.inline(F.array(
        F.struct(F.col(start).alias(T), F.lit(1).cast("long").alias(delta)),
        F.struct(F.col(end).alias(T), F.lit(-1).cast("long").alias(delta)),
    ))
    return intervals.select(*keys, change)


def kth_smallest(frame: DataFrame, column: str, ks: list[int]) -> dict[int, object]:
    """The values at 0-based ranks ``ks`` of ``column`` sorted ascending (nulls dropped).

    Distributed: a global sort, then each partition numbers its rows; only the requested
    values come back to the driver.
    """
    wanted = set(ks)
    if not wanted:
        return {}
    ranked = frame.select(column).where(F.col(column).isNotNull()).orderBy(column).rdd.zipWithIndex()
    found = ranked.filter(lambda pair: pair[1] in wanted).map(lambda pair: (pair[1], pair[0][0])).collect()
    return dict(found)
