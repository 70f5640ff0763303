"""The Spark engine against the polars engine: same events in, same values out.

Features: every step of every plan in ``conf/features/*.yaml`` (composed with Hydra, so
``paysim`` inherits ``default``) runs through ``aml_pipeline.engines.polars.build_features``
(polars) and ``aml_pipeline.spark.tasks.build_features`` (Spark) on two event sets:

- the simulator (``SyntheticSource(n_accounts=400, days=14, seed=3)``) plus crafted events
  for the awkward cases: several events at one instant, events exactly 1h / 24h / 7d after
  an earlier one (inside ``[t - w, t)``) and a microsecond more (outside), accounts with a
  single event, a labelled payment and the same sender exactly one label delay (1d) later
  and a microsecond more, a 3-cycle, a reciprocal payment, scatter-gather into a sink, a
  self-payment, half-cent rounding ties, an amount too small for the fixed point (a mean
  of 0, so ``amount_vs_src_mean`` is inf), and ids, channels, currencies and
  jurisdictions first seen in the test window (unseen by the encoders);
- the real PaySim slices in ``tests/data`` (the only source with balances, for ``balance``;
  2,708 events share the first instant).

Spark runs the plan's own polars steps per partition of accounts (3 partitions here, so
most events have their sender and receiver in different partitions and 2-hop paths cross
partitions), target encodings after them through their Spark form; every step runs on
both event sets, and once more applying a fitted plan with history rows.

A step configuration that appears in several plans runs once per event set (its values
depend only on its parameters and the events); configurations whose columns clash (two
``categories`` variants) run in separate plans. Each (event set, step) is one test: it
compares the fitted state (the plan JSON) and every output column and dtype, counts exact
for integers and nulls, floats within 1e-9 relative *and* bit for bit, and fails naming
the step, the column and the first differing event.

Validation: corrupted copies of a PaySim slice and of a CSV export, through both rule
compilations, give identical valid rows, quarantine rows (reasons, lines, original text)
and counts. The ``engine=spark`` hooks of ``task=data`` and ``task=features`` write the
same files as ``engine=polars``.

One local[2] SparkSession serves the module (whole-stage code generation is off: on
these small tables compiling generated code costs more than it saves; results do not
depend on it). The module takes a few minutes, hence ``slow``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

pytest.importorskip("pyspark")

from aml_pipeline import CONF_DIR
from aml_pipeline.config import register_configs  # noqa: E402
from aml_pipeline.errors import ConfigError  # noqa: E402
from aml_pipeline.features.plan import FeaturePlan  # noqa: E402
from aml_pipeline.features.windows import duration_us  # noqa: E402
from aml_pipeline.schema import conform  # noqa: E402
from aml_pipeline.sources.paysim import PaySimSource  # noqa: E402
from aml_pipeline.sources.synthetic import SyntheticSource  # noqa: E402
from aml_pipeline.sources.tabular import TabularSource  # noqa: E402
from aml_pipeline.split import assign  # noqa: E402
from aml_pipeline.engines.polars import build_features  # noqa: E402
from aml_pipeline.validation import build_rules, validate  # noqa: E402
from tests.conftest import start_local_spark  # noqa: E402
from tests.feature_kinds import Doubler, registered  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="the Spark engine needs Java 17"),
]

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
DATA = Path(__file__).resolve().parent / "data"
SPLIT = OmegaConf.create({"method": "fraction", "train": 0.6, "valid": 0.2, "valid_start": None, "test_start": None})
RULES = build_rules(["USD"], require_label=True)
REL = 1e-9

register_configs()


# ----------------------------------------------------------------------------- plans
def plan_configs() -> dict[str, dict]:
    """``features.steps`` of every plan, composed as the CLI composes them."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return {
                p.stem: OmegaConf.to_container(compose(config_name="config", overrides=[f"features={p.stem}"]).features.steps,
                                               resolve=True)
                for p in sorted((CONF / "features").glob("*.yaml"))
            }
    finally:
        GlobalHydra.instance().clear()


@dataclass
class StepCase:
    """One distinct step configuration and the plan steps that use it."""

    name: str  # unique name inside the test plans
    spec: dict
    kind: str
    columns: list[str]
    used_by: list[str] = field(default_factory=list)  # "plan.step"
    needs: list[str] = field(default_factory=list)


def step_cases() -> list[StepCase]:
    cases: dict[str, StepCase] = {}
    for plan, steps in plan_configs().items():
        for name, step in FeaturePlan.from_config(steps).steps:
            key = json.dumps([step.kind, step.params()], sort_keys=True, default=str)
            if key not in cases:
                unique = name if all(c.name != name for c in cases.values()) else f"{name}_{len(cases)}"
                spec = {"kind": step.kind, **step.params()}
                cases[key] = StepCase(unique, spec, step.kind, list(step.output_columns()), needs=step.required_columns())
            cases[key].used_by.append(f"{plan}.{name}")
    return list(cases.values())


def label_delay_cases() -> list[StepCase]:
    """Target encoding with labels known at once and a day late: the plans' 30d default is
    longer than the training window of these event sets (no training label arrives in it)."""
    cases = []
    for delay in ("0s", "1d"):
        spec = {"kind": "target_encoding", "columns": ["src_account", "dst_account"], "smoothing": 20.0, "label_delay": delay}
        [(name, step)] = FeaturePlan.from_config({f"te_delay_{delay}": spec}).steps
        cases.append(StepCase(name, {"kind": step.kind, **step.params()}, step.kind, list(step.output_columns()),
                              used_by=[f"label_delay={delay}"], needs=step.required_columns()))
    return cases


CASES = step_cases() + label_delay_cases()


def runs_for(cases: list[StepCase]) -> list[dict[str, dict]]:
    """Group the cases into as few plans as possible with no clashing output columns."""
    runs: list[tuple[set[str], dict[str, dict]]] = []
    for case in cases:
        for columns, steps in runs:
            if not columns & set(case.columns):
                columns |= set(case.columns)
                steps[case.name] = case.spec
                break
        else:
            runs.append((set(case.columns), {case.name: case.spec}))
    return [steps for _, steps in runs]


# ----------------------------------------------------------------------------- event sets
def at(day: int, clock: str = "00:00", us: int = 0) -> datetime:
    return datetime.fromisoformat(f"2025-01-{day:02d}T{clock}").replace(tzinfo=timezone.utc) + timedelta(microseconds=us)


# (event_id, time, src, dst, amount, label, extra columns)
CRAFTED = [
    # window edges: later payments exactly 1h, 24h and 7d after the first (inside), and 1us more (outside)
    ("x_edge_0", at(2, "10:00"), "X_EDGE", "X_EDGE_B", 100.0, 0, {}),
    ("x_edge_1h", at(2, "11:00"), "X_EDGE", "X_EDGE_B", 101.0, 0, {}),
    ("x_edge_1h_plus", at(2, "11:00", 1), "X_EDGE", "X_EDGE_B", 102.0, 0, {}),
    ("x_edge_24h", at(3, "10:00"), "X_EDGE", "X_EDGE_B", 103.0, 0, {}),
    ("x_edge_24h_plus", at(3, "10:00", 1), "X_EDGE_B", "X_EDGE", 104.0, 0, {}),
    ("x_edge_7d", at(9, "10:00"), "X_EDGE", "X_EDGE_B", 105.0, 0, {}),
    ("x_edge_7d_plus", at(9, "10:00", 1), "X_EDGE", "X_EDGE_B", 106.0, 0, {}),
    # one instant, several events between the same accounts (they must not see each other)
    ("x_same_1", at(4, "12:00"), "X_SAME", "X_SAME_B", 50.0, 0, {}),
    ("x_same_2", at(4, "12:00"), "X_SAME_B", "X_SAME", 60.0, 1, {}),
    ("x_same_3", at(4, "12:00"), "X_SAME_C", "X_SAME", 70.0, 0, {}),
    ("x_same_4", at(4, "12:00"), "X_SAME", "X_SAME_B", 80.0, 1, {}),
    ("x_same_after", at(4, "12:00", 1), "X_SAME", "X_SAME_C", 90.0, 0, {}),
    # a 3-cycle P -> Q -> R -> P, a reciprocal Q -> P, a self-payment, the cycle again
    ("x_cyc_1", at(5, "09:00"), "X_P", "X_Q", 1000.0, 1, {}),
    ("x_cyc_2", at(5, "09:30"), "X_Q", "X_R", 990.0, 1, {}),
    ("x_cyc_3", at(5, "10:00"), "X_R", "X_P", 980.0, 1, {}),
    ("x_cyc_4", at(5, "10:30"), "X_Q", "X_P", 10.0, 0, {}),
    ("x_self", at(5, "11:00"), "X_P", "X_P", 7.0, 0, {}),
    ("x_cyc_5", at(6, "10:00"), "X_P", "X_Q", 500.0, 1, {}),
    # scatter-gather into a sink; the sink's payment at the hops' instant must not count them
    ("x_sg_1", at(6, "08:00"), "X_SRC", "X_MULE1", 300.0, 1, {}),
    ("x_sg_2", at(6, "08:00"), "X_SRC", "X_MULE2", 300.0, 1, {}),
    ("x_sg_3", at(6, "09:00"), "X_MULE1", "X_SINK", 290.0, 1, {}),
    ("x_sg_4", at(6, "09:00"), "X_MULE2", "X_SINK", 290.0, 1, {}),
    ("x_sg_5", at(6, "09:00"), "X_SINK", "X_OUT", 580.0, 1, {}),
    ("x_sg_6", at(6, "10:00"), "X_SINK", "X_OUT", 5.0, 0, {}),
    # a label and the same sender exactly 1d later (label_delay 1d: not yet known) and 1us more (known)
    ("x_te_0", at(2, "06:00"), "X_TE", "X_TE_B", 10.0, 1, {}),
    ("x_te_1d", at(3, "06:00"), "X_TE", "X_TE_B", 11.0, 0, {}),
    ("x_te_1d_plus", at(3, "06:00", 1), "X_TE", "X_TE_B", 12.0, 0, {}),
    # accounts with a single event
    ("x_solo", at(7, "03:33:33"), "X_SOLO_A", "X_SOLO_B", 123.45, 0, {}),
    # half-cent ties (polars rounds half to even), an amount below the fixed point's
    # resolution (the next payment's trailing mean is 0: amount_vs_src_mean = inf)
    ("x_tie_1", at(3, "01:00"), "X_TINY", "X_TINY_B", 0.125, 0, {}),
    ("x_tie_2", at(3, "02:00"), "X_TINY", "X_TINY_B", 0.005, 0, {}),
    ("x_tiny", at(3, "03:00"), "X_TINY2", "X_TINY_B", 1e-20, 0, {}),
    ("x_tiny_next", at(3, "04:00"), "X_TINY2", "X_TINY_B", 2.5, 0, {}),
    # first seen in the test window: accounts, channel, currency, jurisdiction
    ("x_new_1", at(14, "12:00"), "X_NEW_A", "X_NEW_B", 42.0, 0, {"channel": "teleport", "currency": "XTS", "jurisdiction": "ZZ"}),
    ("x_new_2", at(14, "13:00"), "X_NEW_A", "X_SOLO_B", 43.0, 1, {}),
]
WINDOW_EDGES = {"1h": ("x_edge_0", "x_edge_1h"), "24h": ("x_edge_0", "x_edge_24h"), "7d": ("x_edge_0", "x_edge_7d")}


def crafted_events() -> pl.DataFrame:
    rows = []
    for eid, t, src, dst, amount, label, extra in CRAFTED:
        rows.append({"event_id": eid, "event_time": t, "src_account": src, "dst_account": dst, "amount": amount,
                     "currency": extra.get("currency", "USD"), "channel": extra.get("channel", "p2p"),
                     "jurisdiction": extra.get("jurisdiction", "US"), "label": label})
    frame = pl.DataFrame(rows).with_columns(pl.col("event_time").cast(pl.Datetime("us", "UTC")))
    return conform(frame, keep_extra=False)


def synthetic_events() -> pl.DataFrame:
    sim = conform(SyntheticSource(n_accounts=400, days=14, seed=3).read(), keep_extra=False)
    return pl.concat([sim, crafted_events()], how="vertical")


def paysim_events() -> pl.DataFrame:
    frames = [validate(PaySimSource(str(DATA / name)).read(), RULES).valid
              for name in ("paysim_head3000.csv", "paysim_random_head1000.csv")]
    return pl.concat(frames, how="vertical")


# ----------------------------------------------------------------------------- engines
@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    session = start_local_spark(tmp_path_factory, **{"spark.sql.codegen.wholeStage": False})
    yield session
    session.stop()


@dataclass
class EngineRun:
    """Both engines' outputs for every distinct step on one event set."""

    events: pl.DataFrame
    polars: dict[str, pl.DataFrame] = field(default_factory=dict)  # step name -> features
    spark: dict[str, pl.DataFrame] = field(default_factory=dict)
    polars_state: dict[str, dict] = field(default_factory=dict)
    spark_state: dict[str, dict] = field(default_factory=dict)
    bounds: list[tuple[dict, dict]] = field(default_factory=list)
    account_stats: list[dict] = field(default_factory=list)  # the account partitions' figures, per plan run


def run_engines(spark, events: pl.DataFrame, cases: list[StepCase], folder: Path, split=SPLIT,
                partitions: int | None = 3) -> EngineRun:
    from aml_pipeline.spark.tasks import build_features as spark_build_features

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.parquet"
    events.write_parquet(path)
    result = EngineRun(events)
    for i, steps in enumerate(runs_for(cases)):
        p_plan, s_plan = FeaturePlan.from_config(steps), FeaturePlan.from_config(steps)
        p_out, p_bounds = build_features(events, p_plan, split)
        s_df, s_bounds, engine = spark_build_features(spark.read.parquet(str(path)), s_plan, split,
                                                      str(folder / f"work{i}"), partitions)
        result.account_stats.append(dict(engine.account_stats))
        try:
            s_out = pl.from_arrow(s_df.toArrow())
        finally:
            engine.release()
        result.bounds.append((p_bounds, s_bounds))
        for name, step in p_plan.steps:
            result.polars[name] = p_out
            result.spark[name] = s_out
        result.polars_state.update({s["name"]: s for s in p_plan.to_dict()["steps"]})
        result.spark_state.update({s["name"]: s for s in s_plan.to_dict()["steps"]})
    return result


def missing_columns(events: pl.DataFrame, case: StepCase) -> list[str]:
    return [n for n in case.needs if n not in events.columns or events[n].null_count() == events.height]


@pytest.fixture(scope="module")
def synthetic_run(spark, tmp_path_factory) -> EngineRun:
    events = synthetic_events()
    usable = [c for c in CASES if not missing_columns(events, c)]
    return run_engines(spark, events, usable, tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def paysim_run(spark, tmp_path_factory) -> EngineRun:
    events = paysim_events()
    usable = [c for c in CASES if not missing_columns(events, c)]
    return run_engines(spark, events, usable, tmp_path_factory.mktemp("paysim"))


# ----------------------------------------------------------------------------- comparison
def _show(value) -> str:
    return repr(value) if not isinstance(value, float) else f"{value!r} ({value.hex()})"


def differences(case: StepCase, polars_out: pl.DataFrame, spark_out: pl.DataFrame) -> list[str]:
    """One line per column that differs: the step, the column, how many events, the first one."""
    problems = []
    cols = case.columns
    if spark_out.height != polars_out.height:
        return [f"step {case.name!r}: spark has {spark_out.height} events, polars {polars_out.height}"]
    left = polars_out.select("event_id", "event_time", *cols)
    right = spark_out.select("event_id", *cols).rename({c: f"{c}__spark" for c in cols})
    joined = left.join(right, on="event_id", how="left", maintain_order="left")
    for c in cols:
        a, b = joined[c], joined[f"{c}__spark"]
        if a.dtype != b.dtype:
            problems.append(f"step {case.name!r} column {c!r}: dtype polars {a.dtype}, spark {b.dtype}")
            continue
        pair = pl.DataFrame({"a": a, "b": b})
        x, y = pl.col("a"), pl.col("b")
        both_null = x.is_null() & y.is_null()
        if a.dtype.is_float():
            both_nan = (x.is_nan() & y.is_nan()).fill_null(False)
            same_bits = both_null | both_nan | (x.reinterpret(signed=True) == y.reinterpret(signed=True)).fill_null(False)
            close = both_null | both_nan | ((x == y) | ((x - y).abs() <= REL * pl.max_horizontal(x.abs(), y.abs()))).fill_null(False)
            bad, kind = pair.select(~close).to_series(), f"differ by more than {REL:g} relative (or in nulls)"
            if not bad.any():
                bad, kind = pair.select(~same_bits).to_series(), "agree within 1e-9 but are not bit-identical"
        else:
            bad, kind = pair.select(~(both_null | (x == y).fill_null(False))).to_series(), "differ (or differ in nulls)"
        if bad.any():
            i = int(bad.arg_max())
            problems.append(
                f"step {case.name!r} (used by {', '.join(case.used_by)}) column {c!r}: {int(bad.sum())} events {kind}; "
                f"first event {joined['event_id'][i]!r} at {joined['event_time'][i]}: polars {_show(a[i])}, spark {_show(b[i])}"
            )
    return problems


@pytest.mark.parametrize("dataset", ["synthetic", "paysim"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_step_parity(request, dataset: str, case: StepCase):
    run: EngineRun = request.getfixturevalue(f"{dataset}_run")
    if case.name not in run.polars:
        pytest.skip(f"{dataset} events have no {missing_columns(run.events, case)[0]} (covered on the other event set)")
    assert run.spark_state[case.name] == run.polars_state[case.name], (
        f"step {case.name!r}: fitted state differs\npolars: {run.polars_state[case.name]}\nspark:  {run.spark_state[case.name]}"
    )
    problems = differences(case, run.polars[case.name], run.spark[case.name])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dataset", ["synthetic", "paysim"])
def test_split_and_table_shape(request, dataset: str):
    run: EngineRun = request.getfixturevalue(f"{dataset}_run")
    for p_bounds, s_bounds in run.bounds:
        assert s_bounds == p_bounds
    for name in run.polars:
        p, s = run.polars[name], run.spark[name]
        assert s.columns == p.columns
        assert s.sort("event_time", "event_id").select(run.events.columns, "split").equals(p.select(run.events.columns, "split"))


@pytest.mark.parametrize("dataset", ["synthetic", "paysim"])
def test_account_partitions_ship_each_event_and_the_halo(request, dataset: str):
    """Every event reaches its sender's partition, and its receiver's when that is another
    one; the 2-hop paths' first hops arrive as history-only (halo) rows."""
    run: EngineRun = request.getfixturevalue(f"{dataset}_run")
    events = run.events
    for stats in filter(None, run.account_stats):  # a plan of target encodings alone has no partition steps
        assert stats["partitions"] == 3 and stats["events"] == events.height
        # every event once from its sender's partition, again from its receiver's when
        # that is another one, and the 2-hop halo as history-only rows
        assert events.height < stats["rows_shipped"] - stats["history_rows"] <= 2 * events.height
    if dataset == "synthetic":  # its 2-hop paths cross partitions: their first hops come as halo rows
        assert any(stats["history_rows"] > 0 for stats in run.account_stats)


def test_applying_a_polars_fitted_plan_with_history(spark, tmp_path):
    """A plan fitted by polars (a bundle's plan.json) applied by Spark to later events, with
    the training events as history-only rows: polars' ``plan.transform(later, history=train)``."""
    from aml_pipeline.spark.features import SparkFeatures

    events, _ = assign(synthetic_events().sort("event_time", "event_id"), SPLIT)
    train = events.filter(pl.col("split") == "train").drop("split")
    later = events.filter(pl.col("split") != "train").drop("split")
    steps = {c.name: c.spec for c in CASES if c.kind != "balance" and c.name in runs_for(CASES)[0]}
    fitted = FeaturePlan.from_config(steps)
    fitted.fit_transform(train)
    expected = FeaturePlan.from_dict(json.loads(json.dumps(fitted.to_dict()))).transform(later, history=train)
    train.write_parquet(tmp_path / "train.parquet")
    later.write_parquet(tmp_path / "later.parquet")
    plan = FeaturePlan.from_dict(json.loads(json.dumps(fitted.to_dict())))
    engine = SparkFeatures(plan, spark, workdir=str(tmp_path / "work"), account_partitions=3)
    out = engine.transform(spark.read.parquet(str(tmp_path / "later.parquet")), history=spark.read.parquet(str(tmp_path / "train.parquet")))
    got = pl.from_arrow(out.toArrow())
    engine.release()
    assert got.height == later.height
    assert plan.to_dict() == fitted.to_dict()  # applying never refits
    problems = [p for c in CASES if c.name in steps for p in differences(c, expected, got)]
    assert not problems, "\n".join(problems)


def test_every_plan_step_is_compared():
    compared = {u for c in CASES for u in c.used_by}
    for plan, steps in plan_configs().items():
        for name in steps:
            assert f"{plan}.{name}" in compared


def test_crafted_cases_are_present():
    """The awkward cases the harness claims to cover are really in the synthetic events."""
    events = synthetic_events()
    t = dict(zip(events["event_id"], events["event_time"]))
    for w, (first, later) in WINDOW_EDGES.items():
        assert t[later] - t[first] == timedelta(microseconds=duration_us(w)), w
    assert t["x_te_1d"] - t["x_te_0"] == timedelta(microseconds=duration_us("1d"))
    assert {c.spec["label_delay"] for c in CASES if c.kind == "target_encoding"} >= {"0s", "1d"}
    same = events.group_by("src_account", "event_time").len().filter(pl.col("len") > 1)
    assert same.height > 0  # several events of one account at one instant
    counts = pl.concat([events["src_account"], events["dst_account"]]).value_counts()
    assert counts.filter(pl.col("count") == 1).height > 0  # accounts with a single event
    events, _ = assign(events, SPLIT)
    train = events.filter(pl.col("split") == "train")
    test = events.filter(pl.col("split") == "test")
    for column in ("src_account", "channel", "currency", "jurisdiction"):
        assert not set(test[column]) <= set(train[column]), f"no {column} unseen in training"


# ----------------------------------------------------------------------------- features.fx
#: A plan whose values depend on amounts in every way: a threshold band, windows, matching.
FX_STEPS = {"time": {}, "amount": {"trailing_window": "24h", "reporting_threshold": 1000.0, "band": 0.2},
            "rolling": {"windows": ["1h", "24h"], "sides": ["src", "dst"], "flows": ["in", "out"], "aggs": ["sum", "max"]},
            "flow": {"windows": ["24h"], "lookback": "7d", "habit": "7d"}, "categories": {"kind": "category_codes"}}


def test_fx_conversion_spark_equals_polars(spark, tmp_path):
    """``features.fx``: Spark converts at its entry (a map lookup) and runs the account
    partitions without the conversion; polars converts in the plan. Fitted state and every
    column bit for bit, the rows keeping their own amount; then a fitted fx plan applied
    with history rows; a currency with no rate is refused naming it."""
    from aml_pipeline.errors import UserError
    from aml_pipeline.spark.features import SparkFeatures
    from aml_pipeline.spark.tasks import build_features as spark_build_features

    events = synthetic_events()
    codes = sorted(set(events["currency"]) - {"USD"})
    assert len(codes) >= 3
    fx = {"currency": "USD", "rates": {c: round(0.37 + 0.61 * i, 4) for i, c in enumerate(codes)}}
    events.write_parquet(tmp_path / "events.parquet")
    p_plan, s_plan = FeaturePlan.from_config(FX_STEPS, fx), FeaturePlan.from_config(FX_STEPS, fx)
    p_out, _ = build_features(events, p_plan, SPLIT)
    s_df, _, engine = spark_build_features(spark.read.parquet(str(tmp_path / "events.parquet")), s_plan, SPLIT,
                                           str(tmp_path / "work"), 3)
    s_out = pl.from_arrow(s_df.toArrow()).sort("event_time", "event_id")
    engine.release()
    assert s_plan.to_dict() == p_plan.to_dict() and "fx" in s_plan.to_dict()
    case = StepCase(name="fx", spec={}, kind="fx", columns=p_plan.feature_columns(), used_by=["fx"])
    assert not differences(case, p_out, s_out), "\n".join(differences(case, p_out, s_out))
    assert s_out.columns == p_out.columns
    assert s_out.select(events.columns).equals(p_out.select(events.columns))  # the events' own amounts
    # without the conversion the values differ: the test can fail
    plain, _ = build_features(events, FeaturePlan.from_config(FX_STEPS), SPLIT)
    assert differences(case, plain, s_out)
    # a fitted fx plan (a bundle's) applied with history rows
    train = p_out.filter(pl.col("split") == "train").select(events.columns)
    later = p_out.filter(pl.col("split") != "train").select(events.columns)
    train.write_parquet(tmp_path / "train.parquet")
    later.write_parquet(tmp_path / "later.parquet")
    expected = p_plan.transform(later, history=train)
    applied = SparkFeatures(FeaturePlan.from_dict(json.loads(json.dumps(p_plan.to_dict()))), spark,
                            workdir=str(tmp_path / "apply"), account_partitions=3)
    got = pl.from_arrow(applied.transform(spark.read.parquet(str(tmp_path / "later.parquet")),
                                          history=spark.read.parquet(str(tmp_path / "train.parquet"))).toArrow())
    applied.release()
    assert not differences(case, expected, got), "\n".join(differences(case, expected, got))
    short = FeaturePlan.from_config(FX_STEPS, {"currency": "USD", "rates": {c: r for c, r in fx["rates"].items() if c != codes[0]}})
    n = events.filter(pl.col("currency") == codes[0]).height
    with pytest.raises(UserError, match=rf"no rate to USD: {codes[0]} \({n}\); add features\.fx\.rates\.{codes[0]}"):
        SparkFeatures(short, spark).transform(spark.read.parquet(str(tmp_path / "events.parquet")))


# ----------------------------------------------------------------------------- refusal
def test_step_without_a_spark_form_runs_per_account_partition_unless_fitted(spark):
    """A stateless kind with no Spark form runs as its polars code per account partition;
    one with fitted state and no Spark fit is refused by name, before any work."""
    from dataclasses import dataclass

    from aml_pipeline.spark.features import SparkFeatures

    @dataclass
    class SparkDoubler(Doubler):
        kind = "spark_doubler_for_test"
        engines = ("polars", "spark")

    @dataclass
    class FittedDoubler(SparkDoubler):
        kind = "fitted_doubler_for_test"

        def fit(self, frame):
            self.factor_ = 2.0
            return self

    with registered(SparkDoubler, FittedDoubler):
        SparkFeatures(FeaturePlan.from_config({"time": {}, "twice": {"kind": SparkDoubler.kind}}), spark)
        plan = FeaturePlan.from_config({"time": {}, "twice": {"kind": FittedDoubler.kind}})
        with pytest.raises(ConfigError, match=r"^features\.steps\.twice \(fitted_doubler_for_test\): .*needs a Spark fit"):
            SparkFeatures(plan, spark)


# ----------------------------------------------------------------------------- validation
def _corrupted_paysim(folder: Path) -> Path:
    lines = (DATA / "paysim_head3000.csv").read_text().splitlines()[:61]
    header = lines[0].split(",")

    def put(line_no: int, column: str, value: str) -> None:
        parts = lines[line_no - 1].split(",")
        parts[header.index(column)] = value
        lines[line_no - 1] = ",".join(parts)

    for line_no, column, value in [
        (5, "amount", "12x.5"), (6, "amount", "-5"), (7, "amount", "nan"), (8, "amount", "inf"), (9, "amount", "0"),
        (10, "step", ""), (11, "step", "x"), (12, "nameOrig", ""), (13, "nameDest", "  "),
        (14, "nameDest", "\u00a0\t"), (15, "isFraud", "2"), (16, "isFraud", ""), (17, "oldbalanceOrg", "abc"),
        (18, "nameOrig", 'say "hi"\\'), (19, "amount", "1e400"), (22, "step", "9000000"), (23, "nameOrig", "C\x1f1"),
        (24, "amount", "1,234.50"),  # too many fields
    ]:
        put(line_no, column, value)
    lines[20] = ""  # a blank line
    lines[-1] = lines[-1][:23]  # the last line cut short, no final newline
    path = folder / "paysim_corrupted.csv"
    path.write_text("\n".join(lines))
    return path


def _corrupted_export(folder: Path) -> Path:
    path = folder / "export.csv"
    path.write_text(
        "id,t,a,b,x,cur,sar\n"
        "A,2025-01-01 10:00,p,q,1,USD,0\n"
        "B,2025-01-01 10:00,p,q,2,EUR,1\n"    # unknown currency
        "A,2025-01-02 10:00,p,q,3,USD,0\n"    # duplicate id (the first A stays valid)
        " ,2025-01-02 11:00,p,q,4,USD,0\n"    # blank id
        "C,not a time,p,,-1,,x\n"             # several rules at once
        "A,2025-01-03 10:00,p,q,5,usd,1\n"    # duplicate again, and lower-case currency
        "D,2025-01-03T12:00:00+02:00,p,q,6.5,USD,yes\n"
        "E,2025-01-04,r,s,7,USD,n\n"
    )
    return path


def _spark_validate(spark, staged: pl.DataFrame, rules, folder: Path):
    from aml_pipeline.spark.tasks import stage
    from aml_pipeline.spark.validation import ORDER, validate as spark_validate

    frame, _ = stage(spark, staged, folder)
    result = spark_validate(frame, rules)
    valid = pl.from_arrow(result.valid.orderBy(ORDER).drop(ORDER).toArrow())
    quarantine = pl.from_arrow(result.quarantine.orderBy(ORDER).drop(ORDER).toArrow())
    result.release()
    return result, valid, quarantine


@pytest.mark.parametrize("which", ["paysim", "export"])
def test_validation_parity(spark, tmp_path, which):
    if which == "paysim":
        path = _corrupted_paysim(tmp_path)
        staged, rules = PaySimSource(str(path)).read(), RULES
    else:
        path = _corrupted_export(tmp_path)
        src = TabularSource(str(path), columns={"event_id": "id", "event_time": "t", "src_account": "a", "dst_account": "b",
                                                "amount": "x", "currency": "cur", "label": "sar"})
        staged, rules = src.read(), build_rules(["USD"], src.has_labels)
    expected = validate(staged, rules)
    assert expected.rows_quarantined >= 5  # the corruptions did corrupt
    result, valid, quarantine = _spark_validate(spark, staged, rules, tmp_path)
    assert (result.rows_read, result.rows_valid, result.rows_quarantined) == \
        (expected.rows_read, expected.rows_valid, expected.rows_quarantined)
    assert result.reconciles()
    assert result.by_reason == expected.by_reason
    assert valid.equals(expected.valid), "valid rows differ"
    assert quarantine.schema == expected.quarantine.schema
    for i, (got, want) in enumerate(zip(quarantine.iter_rows(named=True), expected.quarantine.iter_rows(named=True))):
        assert got == want, f"quarantine row {i} (line {want['source_line']}): spark {got} != polars {want}"
    assert quarantine.height == expected.quarantine.height


# ----------------------------------------------------------------------------- task hooks
def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def test_tasks_with_engine_spark_write_the_polars_files(spark, tmp_path):
    """task=data and task=features with engine=spark write what engine=polars writes."""
    from aml_pipeline.tasks import data, features

    lines = (DATA / "paysim_random_head1000.csv").read_text().splitlines()[:601]
    header = lines[0].split(",")
    for n, column, value in [(3, "amount", "oops"), (4, "nameDest", " "), (5, "isFraud", "")]:
        parts = lines[n - 1].split(",")
        parts[header.index(column)] = value
        lines[n - 1] = ",".join(parts)
    source = tmp_path / "paysim_small.csv"
    source.write_text("\n".join(lines) + "\n")
    outputs = {}
    for engine in ("polars", "spark"):
        cfg = _compose([f"engine={engine}", "source=paysim", f"source.path={source}", "features=paysim",
                        f"paths.data_dir={tmp_path / engine / 'data'}", "engine.shuffle_partitions=2"])
        summary = data.run(cfg)
        bounds = features.run(cfg)
        outputs[engine] = (summary, bounds, tmp_path / engine / "data")
    (p_sum, p_bounds, p_dir), (s_sum, s_bounds, s_dir) = outputs["polars"], outputs["spark"]
    drop = ("seconds", "outputs", "events_per_second")
    assert {k: v for k, v in s_sum.items() if k not in drop} == {k: v for k, v in p_sum.items() if k not in drop}
    assert s_sum["rows_quarantined"] == 3
    assert {k: v for k, v in s_bounds.items() if k not in drop} == {k: v for k, v in p_bounds.items() if k not in drop}
    for layer in ("validated/transactions.parquet", "quarantine/quarantine.parquet", "features/features.parquet"):
        assert pl.read_parquet(s_dir / layer).equals(pl.read_parquet(p_dir / layer)), layer
    assert json.loads((s_dir / "features/plan.json").read_text()) == json.loads((p_dir / "features/plan.json").read_text())
    assert not list(s_dir.rglob("_spark")), "Spark staging folders left behind"


def test_engine_config_composes():
    from aml_pipeline.engines import engine_of
    from aml_pipeline.spark.session import REQUIRED_CONF, spark_conf

    cfg = _compose(["engine=spark", 'engine.master="spark://host:7077"', "+engine.conf.spark.executor.instances=4"])
    assert engine_of(cfg).name == "spark"
    conf = spark_conf(cfg.engine)
    assert conf["spark.master"] == "spark://host:7077"
    assert conf["spark.executor.instances"] == "4"
    assert conf["spark.sql.shuffle.partitions"] == str(cfg.engine.shuffle_partitions)
    for key, value in REQUIRED_CONF.items():
        assert conf[key] == value
    assert engine_of(_compose([])).name == "polars"
    with pytest.raises(Exception, match="engine.name"):
        _compose(["engine.name=flink"])
