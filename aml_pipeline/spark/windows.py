"""The as-of window primitives of :mod:`aml_pipeline.features.windows`, on Spark.

Each history feature asks, for every event (a *query*: a key such as the sender, at time
t), a question about *history* rows with the same key and a time in ``[t - w, t)``.
Event times are microsecond longs (``_t``), so a window is a Spark range frame over
``_t``: ``rangeBetween(-w, -1)`` is exactly ``[t - w, t)`` and, because the frame is
defined by time and not by position, rows at the same instant never see each other
whatever their order (the same-instant rule).

Two evaluators (``engine.passes``): ``arrow`` (:func:`run_pass_arrow`, the default)
hash-partitions a pass's stacked rows by key and computes every window in Python over
Arrow batches with the polars engine's own primitives (:func:`evaluate_partition`);
``window`` (:func:`run_pass`, described next) uses Spark's Window operator. Both give the
same values, bit for bit.

A **pass** (:func:`run_pass`) stacks the frame's own rows (queries, and history where a
track says so) with history-only rows of other views of the events (e.g. payments
*received* by the sender, keyed by receiver), partitions by key, orders by ``_t`` and
evaluates every requested window expression in one Window operator; the frame's rows are
then kept with their new columns (no join back). Each pass costs a shuffle and a sort of
all stacked rows, so :func:`run_passes` merges the passes that several steps ask for on
the same key into one.

Exactness, as in polars:

- window **sums** are exact fixed-point sums: each value becomes the integer
  ``round_half_even(v * 2**60)``, held as four 32-bit limbs in longs (split exactly from
  the double: scaling by powers of two and removing leading bits are exact), and each
  limb is summed as a long; a window's limb sums are normalised (carries, in longs) and
  rounded once to the nearest double, ties to even, like polars' Int128 → Float64 cast,
  then divided by 2**60 (:func:`exact_to_double_stages`). Limb sums stay exact below 2**30 rows
  per account, and window sums below 10**38 / 2**60 (~8.6e19);
- window **counts and sums** are differences of two running totals,
  ``total(t' < t) - total(t' < t - w)``, which integer arithmetic makes exact: each row's
  inclusive running total (row frame, O(n)) is read at the last row before ``t`` and
  before ``t - w`` by one ``last(struct(...))`` per distinct lag holding every total of the
  pass, where Spark's bounded sliding frames would re-aggregate the whole frame for every
  row and a running frame per limb, window and flow would repeat the same scan. ``max`` (not invertible) is split at fixed time blocks into an ascending and
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
    #: Running totals up to and including each row (row frames), evaluated before ``windows``.
    cums: dict[str, Column] = field(default_factory=dict)
    #: lag -> fields read from the last row with ``_t < t - lag`` (one ``last(struct)`` per lag).
    lags: dict[int, dict[str, Column]] = field(default_factory=dict)
    #: Plain projections of the window columns, evaluated before ``stages``.
    diffs: dict[str, Column] = field(default_factory=dict)

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

    def _cum(self, name: str, aggregate: Column) -> str:
        """A running total over the rows up to and including this one, in the pass's order."""
        self.cums.setdefault(name, aggregate.over(self._spec().rowsBetween(Window.unboundedPreceding, Window.currentRow)))
        return name

    def _at(self, lag: int, name: str) -> Column:
        """Column ``name`` of the last row with ``_t < t - lag`` (null when there is none).

        For a running total that row's value is the total of *all* rows before ``t - lag``:
        the rows are sorted by ``_t``, so every such row comes at or before it.
        """
        self.lags.setdefault(lag, {}).setdefault(name, F.col(name))
        return F.col(f"_at_{lag}").getField(name)

    def _total_before(self, lag: int, cum: str) -> Column:
        return F.coalesce(self._at(lag, cum), F.lit(0).cast("long"))

    def count(self, value: str, width: int) -> Column:
        """The number of non-null ``value``s over ``[t - width, t)``: two running counts' difference."""
        out = f"_count_{value}_{width}"
        if out not in self.diffs:
            cum = self._cum(f"_cn_{value}", F.count(value))
            self.diffs[out] = self._total_before(0, cum) - self._total_before(width, cum)
        return F.col(out)

    def fixed_sum(self, fixed: str, width: int) -> Column:
        """The sum over ``[t - width, t)``: exact in fixed point, rounded once to a double.

        Each limb's window sum is the difference of two running limb sums (exact longs).
        Returns a reference to a column computed after the window (see :func:`run_pass`).
        """
        out = f"_sum_{fixed}_{width}"
        if f"{out}_{limb_names(fixed)[0]}" not in self.diffs:
            diffs = {}
            for limb in limb_names(fixed):
                cum = self._cum(f"_cs_{limb}", F.sum(limb))
                diffs[f"{out}_{limb}"] = self._total_before(0, cum) - self._total_before(width, cum)
            self.diffs.update(diffs)
            for level, stage in enumerate(exact_to_double_stages(list(diffs), out)):
                if level == len(self.stages):
                    self.stages.append({})
                self.stages[level].update(stage)
        return F.col(out)

    def lag_windows(self) -> dict[str, Column]:
        """One ``last(struct(...))`` per lag: every total (and ``max`` helper) read at ``t - lag``."""
        return {f"_at_{lag}": F.last(F.struct(*[c.alias(n) for n, c in fields.items()])).over(self.before(lag))
                for lag, fields in self.lags.items()}

    def helper_columns(self) -> set[str]:
        names = set(self.windows) | set(self.cums) | set(self.diffs) | {f"_at_{lag}" for lag in self.lags}
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
        j = self._at(width, n("g"))  # g of the last row before t - width
        if not self.stages:
            self.stages.append({})
        here = c("a").getField("b") == block
        previous = F.coalesce(j, c("first"))
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
    if p.cums:
        rows = rows.withColumns(p.cums)
    windows = {**{k: v for k, v in p.windows.items() if v is not None}, **p.lag_windows()}
    if windows:
        rows = rows.withColumns(windows)
    if p.diffs:
        rows = rows.withColumns(p.diffs)
    for stage in p.stages:
        rows = rows.withColumns(stage)
    out = rows.withColumns(outputs).filter(F.col(Q))
    return out.select(*keep, *outputs)


@dataclass
class View:
    """History rows of one flow of the events, keyed by one account: ``out`` by the sender,
    ``in`` by the receiver, with ``extra`` value columns computed from the event.

    Declarative (not a DataFrame) so that the passes merged on one key by
    :func:`run_passes` stack each flow once, with the union of the columns they ask for.
    """

    flow: str
    extra: dict[str, Column] = field(default_factory=dict)

    def rows(self, events: DataFrame) -> DataFrame:
        account = "src_account" if self.flow == "out" else "dst_account"
        return events.select(F.col(account).alias("_k0"), F.col(T), *[c.alias(n) for n, c in self.extra.items()])


@dataclass
class PassRequest:
    """One step's share of a pass: the arguments of :func:`run_pass`, with the key given by
    input column names (so requests on the same key can be merged) and history views
    declared as :class:`View` where possible."""

    keys: tuple[str, ...]
    build: Callable[[Pass], dict[str, Column]]
    own: dict[str, Column] = field(default_factory=dict)
    others: list = field(default_factory=list)  # View | DataFrame (keyed _k0.., _t, values)
    types: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    #: Requests merge only with requests of the same key *and* the same ``stack``. Every
    #: window expression of a pass is evaluated on every stacked row, so history tables far
    #: larger than the events (the graph's path intervals) get a pass of their own instead
    #: of multiplying the rolling windows' work (and the window max's second sort).
    stack: str = "events"


def _merge(into: dict, more: dict, what: str) -> None:
    """Merge name -> definition maps; one name must mean one thing in a merged pass."""
    for name, value in more.items():
        if name in into and str(into[name]) != str(value):
            raise ValueError(f"merged pass: {what} {name!r} is defined twice ({into[name]} and {value})")
        into[name] = value


def run_passes(frame: DataFrame, requests: list[PassRequest], events: DataFrame, evaluator: str = "arrow") -> DataFrame:
    """Run every request, one :func:`run_pass` per distinct key (and ``stack``): one shuffle and sort each.

    Requests on the same key (the sender's time since its previous activity, its rolling
    sums, its trailing mean, its graph degrees...) share one stacked frame: their own
    columns and history views are merged (a flow's view is stacked once, with all the value
    columns asked of it) and their window expressions are evaluated by one Window operator;
    window columns of the same name (e.g. the 7-day sum of what the sender sent, asked by
    the rolling, amount and graph steps) are computed once. Rows that a request did not
    ask for carry nulls in its value columns, which its counts, sums, maxima and running
    totals ignore, so each request gets exactly the values of its own pass.

    ``evaluator`` (``engine.passes``): ``arrow`` runs each pass with :func:`run_pass_arrow`
    (windows evaluated in Python over Arrow), ``window`` with :func:`run_pass` (Spark's
    Window operator).
    """
    run = {"arrow": run_pass_arrow, "window": run_pass}.get(evaluator)
    if run is None:
        raise ValueError(f"unknown pass evaluator {evaluator!r}; allowed: {', '.join(EVALUATORS)}")
    groups: dict[tuple[tuple[str, ...], str], list[PassRequest]] = {}
    for request in requests:
        groups.setdefault((tuple(request.keys), request.stack), []).append(request)
    # Passes over the event views (the rolling windows: most of the columns) run last, so
    # their many output columns do not ride through the other passes' shuffles and sorts.
    order = sorted(groups, key=lambda g: g[1] == "events")
    out = frame
    for keys, stack in order:
        group = groups[(keys, stack)]
        own: dict[str, Column] = {}
        types: dict[str, str] = {}
        fixed: dict[str, str] = {}
        views: dict[str, dict[str, Column]] = {}
        frames: list[DataFrame] = []
        for request in group:
            _merge(own, request.own, "own column")
            _merge(types, request.types, "value column")
            _merge(fixed, request.fixed, "fixed-point column")
            for other in request.others:
                if isinstance(other, View):
                    _merge(views.setdefault(other.flow, {}), other.extra, f"{other.flow} view column")
                else:
                    frames.append(other)
        others = [View(flow, extra).rows(events) for flow, extra in views.items()] + frames

        def build(p: Pass, group=group) -> dict[str, Column]:
            cols: dict[str, Column] = {}
            for request in group:
                _merge(cols, request.build(p), "output")
            return cols

        out = run(out, [F.col(k) for k in keys], own=own, others=others, types=types, build=build, fixed=fixed)
    return out


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


# ----------------------------------------------------------------------------- Arrow evaluation
#: Evaluators of a pass (``engine.passes``): ``arrow`` (default) evaluates the windows in
#: Python over Arrow, one hash shuffle per pass and no Spark sort; ``window`` uses Spark's
#: Window operator (a shuffle and a sort of the stacked rows, running frames).
EVALUATORS = ("arrow", "window")
#: The primitives of a pass and the Spark type of their result (None: the value column's).
PRIMITIVE_TYPES = {"count": "bigint", "sum": "double", "max": None, "latest": None, "running": "bigint"}
_NONE = -(2**63)  # no value yet, in a running max of longs


@dataclass
class ArrowPass:
    """The :class:`Pass` interface, recorded instead of compiled to Spark window columns.

    Each call registers one *primitive* (name -> kind, value column, width) and returns a
    reference to its column; :func:`run_pass_arrow` computes every primitive of the pass in
    one Python function per partition (:func:`evaluate_partition`). Names are those of
    :class:`Pass`, so a build function gives the same output expressions under both.
    """

    keys: list[str]
    #: fixed-point prefix -> value column (the inverse of run_pass's ``fixed``).
    sums_of: dict[str, str] = field(default_factory=dict)
    primitives: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    def _add(self, name: str, kind: str, value: str, width: int = 0) -> Column:
        self.primitives.setdefault(name, (kind, value, width))
        return F.col(name)

    def count(self, value: str, width: int) -> Column:
        return self._add(f"_count_{value}_{width}", "count", value, width)

    def fixed_sum(self, fixed: str, width: int) -> Column:
        if fixed not in self.sums_of:
            raise ValueError(f"fixed_sum({fixed!r}): no value column has fixed-point prefix {fixed!r} in this pass")
        return self._add(f"_sum_{fixed}_{width}", "sum", self.sums_of[fixed], width)

    def max(self, value: str, width: int) -> Column:
        return self._add(f"_max_{value}_{width}", "max", value, width)

    def latest(self, time: str) -> Column:
        return self._add(f"_latest_{time}", "latest", time)

    def running(self, delta: str) -> Column:
        return self._add(f"_running_{delta}", "running", delta)


def _group_codes(column) -> "np.ndarray":
    """Small non-negative int64 codes of an Arrow column's values (equal values, equal codes; null has one)."""
    import numpy as np
    import pyarrow.compute as pc

    values = pc.unique(column)
    codes = pc.index_in(column, value_set=values, skip_nulls=False)
    return np.asarray(codes.to_numpy(zero_copy_only=False), dtype=np.int64)


def evaluate_partition(table, keys: list[str], primitives: dict[str, tuple[str, str, int]], keep: list[str]):
    """Every primitive of a pass over one partition's stacked rows (a ``pyarrow.Table``).

    The rows are ordered by (key, ``_t``) in numpy (a stable sort by time, then radix passes
    over the keys' integer codes); for each row, the rows of its key strictly before its
    instant are the positions ``[start, hi)`` and those in ``[t - w, t)`` are ``[lo, hi)``,
    found as in the polars engine (:class:`~aml_pipeline.features.windows.Index`: one int64
    key per (group, time), window starts by shifted keys and merge searches). Then

    - ``count`` = non-null values in ``[lo, hi)`` (a running count's difference);
    - ``sum`` = the polars engine's exact sum: Int128 fixed-point running sums, the window's
      difference rounded once to Float64 (:func:`~aml_pipeline.features.windows.fixed_window_sums`);
    - ``max`` = the polars engine's range maximum (:class:`~aml_pipeline.features.windows.RangeMax`),
      null when the window has no value;
    - ``latest`` = the largest value in ``[start, hi)`` (a running max per key), null if none;
    - ``running`` = the sum of values (nulls as 0) in ``[start, hi)``.

    Returns the frame's own rows (``_q``), in their input order, with the ``keep`` columns
    and one column per primitive; history-only rows are dropped.
    """
    import numpy as np
    import polars as pl
    import pyarrow as pa

    from aml_pipeline.features.windows import Index, RangeMax, _Axis, _regroup, fixed_running_sums, fixed_window_sums, search

    n = table.num_rows
    t = np.asarray(table.column(T).to_numpy(), dtype=np.int64)
    codes = [_group_codes(table.column(key)) for key in keys]
    order = np.argsort(t, kind="stable")
    for c in reversed(codes):  # least significant first: sorted by (k0, k1, ..., t)
        order = _regroup(c, order)
    ts = t[order]
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
        for c in codes:
            c = c[order]
            change[1:] |= c[1:] != c[:-1]
    groups = np.cumsum(change) - 1
    index = Index(_Axis(ts), int(groups[-1]) + 1 if n else 1, groups, ts)
    pos = np.arange(n)

    def first_of_run(codes: np.ndarray) -> np.ndarray:
        first = pos.copy()
        if n:
            first[1:][codes[1:] == codes[:-1]] = 0
            np.maximum.accumulate(first, out=first)
        return first

    hi = first_of_run(index.keys)  # rows of the key strictly before the row's instant: [start, hi)
    start = first_of_run(groups)
    cache: dict[tuple, object] = {}

    def memo(key: tuple, build):
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def lo(width: int) -> np.ndarray:
        return memo(("lo", width), lambda: search(index.keys, index.shifted(index.keys, groups, ts, -width), "left"))

    def column(value: str):
        return memo(("col", value), lambda: table.column(value))

    def present(value: str) -> np.ndarray:
        return memo(("present", value), lambda: np.asarray(column(value).is_valid().to_numpy(zero_copy_only=False))[order])

    def counts(value: str, width: int) -> np.ndarray:
        cum = memo(("count", value), lambda: np.concatenate([[0], np.cumsum(present(value))]))
        return cum[hi] - cum[lo(width)]

    q = np.asarray(table.column(Q).to_numpy(zero_copy_only=False), dtype=bool)
    rows = np.flatnonzero(q)
    out = table.select(keep).take(pa.array(rows)) if rows.size < n else table.select(keep)

    def original(values: np.ndarray) -> np.ndarray:
        """Values computed in sorted order, for the frame's own rows in input order."""
        back = np.empty_like(values)
        back[order] = values
        return back[rows]

    for name, (kind, value, width) in primitives.items():
        mask = None
        if kind == "count":
            result = counts(value, width)
        elif kind == "sum":
            cum = memo(("sum", value), lambda value=value: fixed_running_sums(pl.Series(column(value)).gather(order)))
            result = fixed_window_sums(cum, lo(width), hi)
        elif kind == "max":
            def values_in_order(value=value):
                v = np.asarray(column(value).to_numpy(zero_copy_only=False), dtype=np.float64)[order]
                return np.where(present(value), v, -np.inf)
            result = memo(("rmq", value), lambda values_in_order=values_in_order: RangeMax(values_in_order)).maxima(lo(width), hi)
            mask = counts(value, width) == 0
        elif kind == "latest":
            def running_max(value=value):
                v = pl.Series(column(value)).gather(order).cast(pl.Int64).fill_null(_NONE)
                return pl.DataFrame({"g": groups, "v": v}).select(pl.col("v").cum_max().over("g")).to_series().to_numpy()
            cm = memo(("latest", value), running_max)
            got = cm[np.maximum(hi - 1, 0)] if n else np.zeros(0, dtype=np.int64)
            mask = (hi == start) | (got == _NONE)
            result = np.where(mask, 0, got)
        elif kind == "running":
            def running_sum(value=value):
                v = np.asarray(pl.Series(column(value)).gather(order).fill_null(0).cast(pl.Int64).to_numpy())
                return np.concatenate([[0], np.cumsum(v)])
            cum = memo(("running", value), running_sum)
            result = cum[hi] - cum[start]
        else:
            raise ValueError(f"unknown pass primitive {kind!r}")
        values = original(np.asarray(result))
        out = out.append_column(name, pa.array(values, mask=None if mask is None else original(mask)))
    return out


def _pass_function(keys: list[str], primitives: dict, keep: list[str], types: dict[str, "pa.DataType"]):
    """The ``mapInArrow`` function of a pass: all batches of a partition, one table out."""

    def run(batches):
        import pyarrow as pa

        batches = list(batches)
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        if table.num_rows == 0:
            return
        out = evaluate_partition(table, keys, primitives, keep)
        out = out.cast(pa.schema([pa.field(f.name, types.get(f.name, f.type)) for f in out.schema]))
        yield from out.to_batches(max_chunksize=65_536)

    return run


def run_pass_arrow(
    frame: DataFrame,
    keys: list[Column],
    own: dict[str, Column],
    others: list[DataFrame],
    types: dict[str, str],
    build: Callable[[Pass], dict[str, Column]],
    fixed: dict[str, str] | None = None,
) -> DataFrame:
    """:func:`run_pass` with the windows evaluated in Python over Arrow (``engine.passes: arrow``).

    The same stacked rows are hash-partitioned by key (one shuffle, no Spark sort) and each
    partition's rows go, as Arrow batches, to :func:`evaluate_partition` (``mapInArrow``),
    which adds the primitives the build asked for (:class:`ArrowPass`) to the frame's rows;
    the build's output expressions then apply to those columns, as after :func:`run_pass`.
    """
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import StructField, StructType, _parse_datatype_string

    names = key_names(len(keys))
    keep = frame.columns
    # One projection per stacked frame (each DataFrame call re-analyses the growing plan).
    added = {**{n: k for n, k in zip(names, keys)}, Q: F.lit(True),
             **{v: (own[v] if v in own else F.lit(None)).cast(t) for v, t in types.items()}}
    rows = frame.select(*[F.col(f"`{c}`") for c in keep if c not in added], *[c.alias(n) for n, c in added.items()])
    for extra in others:
        extra = extra.select(*names, T, F.lit(False).alias(Q),
                             *[(F.col(v) if v in extra.columns else F.lit(None)).cast(t).alias(v) for v, t in types.items()])
        rows = rows.unionByName(extra, allowMissingColumns=True)
    p = ArrowPass(names, sums_of={prefix: value for value, prefix in (fixed or {}).items()})
    outputs = build(p)
    value_types = {v: _parse_datatype_string(t) for v, t in types.items()}
    fields = [f for f in rows.schema.fields if f.name in keep]
    added = []
    for name, (kind, value, _) in p.primitives.items():
        kind_type = PRIMITIVE_TYPES[kind]
        dtype = _parse_datatype_string(kind_type) if kind_type else value_types[value]
        added.append(StructField(name, dtype, True))
    schema = StructType(fields + added)
    arrow_types = {f.name: to_arrow_type(f.dataType) for f in added}
    needed = [*keep, *names, Q, *sorted({value for _, value, _ in p.primitives.values()} - set(keep))]
    if T not in needed:
        needed.append(T)
    stacked = rows.select(*[F.col(f"`{c}`") for c in dict.fromkeys(needed)]).repartition(*names)
    out = stacked.mapInArrow(_pass_function(names, p.primitives, keep, arrow_types), schema)
    return out.withColumns(outputs).select(*[F.col(f"`{c}`") for c in keep], *outputs)
