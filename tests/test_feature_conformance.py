"""Every feature kind, every engine it declares: the same values on randomised event streams.

The kinds come from the registry the plan builds steps from (``features.base.STEPS``), so a
new kind is picked up as soon as its module is imported by the plan. Each kind declares its
engines (``FeatureStep.engines``): ``polars`` (the batch ``transform``, the reference),
``online`` (``online()``, event by event through the real online store: memory backend,
as the service and the streaming scorer use it) and ``spark`` (the polars steps per account
partition, with the kind's own Spark form, ``spark_fit``/``spark_transform``, where needed). A kind
that declares none, or not ``polars``, fails; an engine a kind does not declare refuses it
by name in one line.

The streams are small and random (a few seeds, a few hundred events over ten days): about
thirty accounts reused so windows fill, a hub that pays many accounts, events at the same
instant, events exactly a window after an earlier one, forwarding chains (an account
passing on 85-100 % of what it just received), cash deposits just under the reporting
threshold, amounts with cents, balances, countries, labels and a self-payment. Each kind
runs with its default parameters, tightened where a small stream needs it (``PARAMS``).
The first 60 % of the events (cut at an instant) are the training window: polars fits on it
(``fit_transform``) and applies the fit to the rest with the training rows as history;
online the store is warmed with the training rows and every later event is scored in time
order; Spark fits and transforms every row in one run (the seeds' streams merged, 3
account partitions). Values must agree to 1e-9 (relative, or absolute below 1), nulls and
NaNs alike, and the fitted state exactly.
"""

from __future__ import annotations

import functools
import math
import random
import shutil
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.features.base import STEPS, FeatureStep
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.schema import conform
from aml_pipeline.store.engine import Event, OnlineFeatures, gather, plan_needs
from aml_pipeline.store.memory import MemoryStore
from tests.feature_kinds import Doubler, registered

ENGINES = ("polars", "online", "spark")
KINDS = sorted(STEPS)
SEEDS = (1, 2, 3)
TOL = 1e-9
#: Parameters that make a default step bite on a few hundred events: short label delay,
#: small caps (so "the latest N" cuts through same-instant ties), hubs that exist.
PARAMS: dict[str, dict] = {
    "target_encoding": {"label_delay": "2h", "smoothing": 2.0},
    "cross_border": {"risk_countries": ["KP", "IR"], "max_rows": 4},
    "graph": {"max_intermediary_degree": 10, "max_rows": 3},
    "paths": {"max_intermediary_degree": 10, "max_rows": 3},
    "flow": {"max_inflows": 3},
    "burst": {"max_rows": 4},
    "structuring": {"max_rows": 3},
    "bucketing": {"n_buckets": 5},
}
START = datetime(2025, 1, 6, tzinfo=timezone.utc)


# ----------------------------------------------------------------------------- streams
def stream(seed: int, n: int = 360) -> pl.DataFrame:
    """One random stream; its accounts are named after the seed, so streams can be merged."""
    rng = random.Random(seed)
    accounts = [f"S{seed}_A{i:02d}" for i in range(30)]
    hub = f"S{seed}_HUB"
    instants = sorted({rng.randrange(0, 10 * 24 * 60, 5) for _ in range(n // 2)})  # minutes; ~2 events each
    rows: list[dict] = []

    def add(minutes: float, src: str, dst: str, amount: float, channel: str | None = None) -> None:
        before = round(rng.choice([0.0, rng.uniform(0, 20_000)]), 2)
        rows.append({
            "event_id": f"e{seed}_{len(rows):04d}", "event_time": START + timedelta(minutes=minutes),
            "src_account": src, "dst_account": dst, "amount": amount,
            "currency": rng.choice(["USD", "USD", "EUR", "GBP"]),
            "channel": channel or rng.choice(["p2p", "wire", "card", "cash_deposit"]),
            "jurisdiction": rng.choice(["US", "GB"]), "label": int(rng.random() < 0.15),
            "src_country": rng.choice(["US", "US", "GB", "DE", "KP", "IR"]),
            "dst_country": rng.choice(["US", "GB", "DE", "IR"]),
            "src_balance_before": before,
            "src_balance_after": rng.choice([round(before - amount, 2), 0.0, before]),
            "dst_balance_before": round(rng.choice([0.0, rng.uniform(0, 5_000)]), 2),
            "dst_balance_after": round(rng.uniform(0, 25_000), 2),
        })

    while len(rows) < n:
        r = rng.random()
        if r < 0.25 and rows:  # forward part of a recent inflow, minutes to hours later
            prev = rows[rng.randrange(max(0, len(rows) - 20), len(rows))]
            minutes = (prev["event_time"] - START).total_seconds() / 60 + rng.choice([5, 30, 90, 600, 60 * 47])
            add(minutes, prev["dst_account"], rng.choice(accounts), round(prev["amount"] * rng.uniform(0.85, 1.0), 2))
        elif r < 0.33 and rows:  # the same sender exactly one window after an earlier payment
            prev = rng.choice(rows)
            minutes = (prev["event_time"] - START).total_seconds() / 60 + rng.choice([60, 24 * 60, 7 * 24 * 60])
            add(minutes, prev["src_account"], rng.choice(accounts), round(rng.uniform(1, 500), 2))
        elif r < 0.43:  # cash just under the reporting threshold
            add(rng.choice(instants), rng.choice(accounts), rng.choice(accounts[:6]), round(rng.uniform(8_400, 9_999.99), 2),
                "cash_deposit")
        elif r < 0.50:  # the hub pays many accounts
            add(rng.choice(instants), hub, rng.choice(accounts), round(rng.uniform(100, 3_000), 2))
        elif r < 0.55:
            whole = rng.choice([100, 1_000, 5_000, 50, 250, 1_250.5, 9_990])  # round, and nearly so
            add(rng.choice(instants), rng.choice(accounts), rng.choice(accounts), float(whole))
        else:
            src, dst = rng.sample(accounts, 2)
            add(rng.choice(instants), src, dst, round(math.exp(rng.gauss(5, 1.5)), 2))
    add(rng.choice(instants), accounts[0], accounts[0], 12.34)  # a self-payment
    frame = pl.DataFrame(rows).with_columns(pl.col("event_time").cast(pl.Datetime("us", "UTC")))
    return conform(frame).sort("event_time", "event_id")


def kind_step(kind: str) -> FeatureStep:
    return STEPS[kind](**PARAMS.get(kind, {}))


def plans(kinds: list[str]) -> list[list[str]]:
    """The kinds in as few plans as possible with no clashing output columns."""
    groups: list[tuple[set, list[str]]] = []
    for kind in kinds:
        columns = set(kind_step(kind).output_columns())
        for taken, group in groups:
            if not taken & columns:
                taken |= columns
                group.append(kind)
                break
        else:
            groups.append((columns, [kind]))
    return [group for _, group in groups]


def new_plan(kinds: list[str]) -> FeaturePlan:
    return FeaturePlan([(kind, kind_step(kind)) for kind in kinds])


@functools.cache
def reference(seeds: tuple[int, ...], kinds: tuple[str, ...]):
    """(events, cut, fitted plan, polars' training rows, polars' later rows) of the
    streams of ``seeds``, merged."""
    events = pl.concat([stream(seed) for seed in seeds]).sort("event_time", "event_id")
    cut = events["event_time"][int(events.height * 0.6)]
    train, later = events.filter(pl.col("event_time") < cut), events.filter(pl.col("event_time") >= cut)
    plan = new_plan(list(kinds))
    train_out = plan.fit_transform(train)
    later_out = plan.transform(later, history=train)
    return events, cut, plan, train_out, later_out


def declaring(engine: str) -> list[str]:
    return [k for k in KINDS if engine in STEPS[k].engines]


# ----------------------------------------------------------------------------- comparison
def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float) and math.isinf(a):
        return a == b
    return abs(a - b) <= TOL * max(1.0, abs(a))


def mismatches(plan: FeaturePlan, engine: str, expected: pl.DataFrame, got: dict[str, dict]) -> list[str]:
    """One line per (kind, column) that differs: the engine, how many events, the first one."""
    problems = []
    rows = {r["event_id"]: r for r in expected.iter_rows(named=True)}
    assert set(got) == set(rows), f"{engine}: {len(got)} events, polars {len(rows)}"
    for name, step in plan.steps:
        for c in step.output_columns():
            bad = [(eid, rows[eid][c], got[eid][c]) for eid in rows if not same(rows[eid][c], got[eid][c])]
            if bad:
                eid, want, have = bad[0]
                problems.append(f"kind {step.kind!r} column {c!r}: {engine} differs from polars on {len(bad)} of "
                                f"{len(rows)} events; first {eid}: polars {want!r}, {engine} {have!r}")
    return problems


# ----------------------------------------------------------------------------- declarations
def test_every_kind_declares_its_engines():
    assert len(KINDS) >= 14, KINDS  # the registry is filled by the plan's imports
    for kind in KINDS:
        engines = STEPS[kind].engines
        assert engines, f"feature kind {kind!r} declares no engines (FeatureStep.engines)"
        assert "polars" in engines, f"feature kind {kind!r}: every kind has its polars form, the reference"
        assert set(engines) <= set(ENGINES), f"feature kind {kind!r}: unknown engines {set(engines) - set(ENGINES)}"
        if "online" in engines:
            assert callable(getattr(STEPS[kind], "online", None)), f"feature kind {kind!r} declares online but has no online()"


def test_an_undeclared_engine_refuses_the_kind_by_name():
    with registered(Doubler):  # declares polars only; its online() is there but undeclared
        plan = FeaturePlan.from_config({"time": {}, "twice": {"kind": Doubler.kind}})
        with pytest.raises(UserError) as online:
            OnlineFeatures(plan)
        assert str(online.value) == ("deploy.engine=online has no per-event form of features.steps.twice "
                                     "(doubler_for_test); use deploy.engine=polars")
        pytest.importorskip("pyspark")
        from aml_pipeline.spark.features import SparkFeatures

        with pytest.raises(ConfigError) as spark:  # refused before any Spark session is needed
            SparkFeatures(plan)
        assert str(spark.value) == ("features.steps.twice (doubler_for_test): step kind 'doubler_for_test' "
                                    "does not run on Spark (its engines: polars); run it with engine=polars")
        assert "\n" not in str(online.value) + str(spark.value)


# ----------------------------------------------------------------------------- online
@pytest.mark.parametrize("seed", SEEDS)
def test_online_equals_polars(seed: int):
    """Every later event through the memory store and the online engine, in time order."""
    problems = []
    for kinds in plans(declaring("online")):
        events, cut, plan, _, later_out = reference((seed,), tuple(kinds))
        needs = plan_needs(plan)
        store = MemoryStore(needs.layout())
        train = events.filter(pl.col("event_time") < cut)
        store.warm(train.select(needs.layout().columns).with_columns(pl.col("event_time").dt.epoch("us")).iter_rows())
        engine = OnlineFeatures(plan)
        got = {}
        for row in events.filter(pl.col("event_time") >= cut).iter_rows(named=True):
            ev = Event(row)
            decision, history = gather(store, needs, ev)
            assert decision is None
            got[ev.event_id] = engine.compute(ev, history)
            assert store.commit(ev.row(needs.extra_columns), None)
        assert len(got) > 100
        problems += mismatches(plan, "online", later_out, got)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- spark
@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("the Spark engine needs Java 17")
    from tests.conftest import start_local_spark

    session = start_local_spark(tmp_path_factory, **{"spark.sql.codegen.wholeStage": False})
    yield session
    session.stop()


@pytest.mark.slow
def test_spark_equals_polars(spark, tmp_path):
    """Spark fits on the training window and computes every row (3 account partitions):
    the same fitted state, and every row's values, as polars. The seeds' streams run
    merged, as one Spark job: each Spark run costs seconds of fixed latency."""
    from pyspark.sql import functions as F

    from aml_pipeline.spark.features import SparkFeatures

    problems = []
    for i, kinds in enumerate(plans(declaring("spark"))):
        events, cut, fitted, train_out, later_out = reference(SEEDS, tuple(kinds))
        path = tmp_path / f"events{i}.parquet"
        events.write_parquet(path)
        plan = new_plan(kinds)
        engine = SparkFeatures(plan, spark, workdir=str(tmp_path / f"work{i}"), account_partitions=3)
        frame = spark.read.parquet(str(path))
        out = pl.from_arrow(engine.fit_transform(frame, F.col("event_time") < F.lit(cut)).toArrow())
        engine.release()
        for (name, step), (_, want) in zip(plan.steps, fitted.steps):
            if step.state() != want.state():
                problems.append(f"kind {step.kind!r}: Spark's fitted state differs from polars'")
        got = {r["event_id"]: r for r in out.iter_rows(named=True)}
        problems += mismatches(plan, "spark", pl.concat([train_out, later_out], how="diagonal_relaxed"), got)
    assert not problems, "\n".join(problems)
